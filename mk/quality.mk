# Test quality: mutation testing (included by the top Makefile).

# Targets of `make mutation` (names from TARGETS in scripts/mutation_testing.py); empty: all of them.
MUTATION_ONLY ?=
# Scratch folder of an earlier run of older tests (`scripts/mutation_testing.py run --tests-rev REV --out DIR`):
# rewrite docs/mutation/baseline.json from it. Empty: keep the committed baseline.
MUTATION_BASELINE ?=

.PHONY: mutation mutation-report

mutation: $(STAMP) ## Mutation testing (mutmut; hours on 2 shared cores) of box coding, anchors, post-processing, wire formats, request parsing, images, batcher, admission -> docs/mutation/*.json, docs/mutation-testing.md
	$(PIP) install --quiet -e '.[mutation]'
	$(PY) scripts/mutation_testing.py run $(if $(MUTATION_ONLY),--only $(MUTATION_ONLY),)
	$(PY) scripts/mutation_testing.py report --check $(if $(MUTATION_BASELINE),--baseline $(MUTATION_BASELINE),)

mutation-report: $(STAMP) ## Rewrite docs/mutation-testing.md from the committed results docs/mutation/*.json (no mutmut run)
	$(PY) scripts/mutation_testing.py report --check $(if $(MUTATION_BASELINE),--baseline $(MUTATION_BASELINE),)
