# Test quality: mutation testing (included by the top Makefile).

# Targets of `make mutation` (names from TARGETS in scripts/mutation_testing.py); empty: all of them.
MUTATION_ONLY ?=

.PHONY: mutation mutation-report

mutation: $(STAMP) ## Mutation testing (mutmut, ~1 h on 2 cores) of box coding, anchors, post-processing, codecs -> docs/mutation-testing.md
	$(PIP) install --quiet -e '.[mutation]'
	$(PY) scripts/mutation_testing.py run $(if $(MUTATION_ONLY),--only $(MUTATION_ONLY),)
	$(PY) scripts/mutation_testing.py report --check

mutation-report: $(STAMP) ## Rewrite docs/mutation-testing.md from the last `make mutation` results (build/mutation)
	$(PY) scripts/mutation_testing.py report --check
