# Test quality: mutation testing (included by the top Makefile).

# Targets of `make mutation` (names from TARGETS in scripts/mutation_testing.py); empty: all of them.
MUTATION_ONLY ?=
# Results of an earlier run to compare with (`scripts/mutation_testing.py run --tests-rev REV --out DIR`).
MUTATION_BASELINE ?=

.PHONY: mutation mutation-report

mutation: $(STAMP) ## Mutation testing (mutmut; ~1.5 h on 2 shared cores) of box coding, anchors, post-processing, codecs -> docs/mutation-testing.md
	$(PIP) install --quiet -e '.[mutation]'
	$(PY) scripts/mutation_testing.py run $(if $(MUTATION_ONLY),--only $(MUTATION_ONLY),)
	$(PY) scripts/mutation_testing.py report --check $(if $(MUTATION_BASELINE),--baseline $(MUTATION_BASELINE),)

mutation-report: $(STAMP) ## Rewrite docs/mutation-testing.md from the last `make mutation` results (build/mutation)
	$(PY) scripts/mutation_testing.py report --check $(if $(MUTATION_BASELINE),--baseline $(MUTATION_BASELINE),)
