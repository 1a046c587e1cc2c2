# Cold-start benchmark (included by the top Makefile; BENCH_OUT comes from mk/bench.mk).

# Models and repeats of `make bench-cold-start`; COLD_START_ARGS adds flags, e.g.
# "--baseline ../old-checkout --no_pyc" to measure another source tree or a run without byte-code.
COLD_START_MODELS ?= demo,ssd300
COLD_START_REPEATS ?= 3
COLD_START_ARGS ?=

.PHONY: bench-cold-start

bench-cold-start: $(STAMP) ## Cold start, process spawn to ready: imports, model load, warm-up per bucket (demo, SSD300)
	$(PY) -m bench.cold_start --models $(COLD_START_MODELS) --repeats $(COLD_START_REPEATS) \
		--out_dir $(BENCH_OUT) $(COLD_START_ARGS)
	$(PY) -m bench.results --out_dir $(BENCH_OUT) --tables cold-start
