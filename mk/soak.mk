# Soak test (see bench/soak.py). Included by the top Makefile; PY and STAMP come from it.
# Afterwards the soak table of bench/RESULTS.md is rewritten from SOAK_OUT (bench/results.py).

# 10000 requests: with 3000 the memory is still reaching its high-water mark (see bench/RESULTS.md).
# Requests to send, client threads, time cap (s), allowed RSS growth from ready to the end (%), and where the JSON goes.
SOAK_REQUESTS ?= 10000
SOAK_CONCURRENCY ?= 8
SOAK_MAX_SECONDS ?= 800
SOAK_MAX_RSS_GROWTH_PCT ?= 5
SOAK_OUT ?= bench/out/soak.json

.PHONY: soak

soak: $(STAMP) ## Soak a real server on loopback (MODEL_DIR=... or the demo model): mixed valid/invalid/large requests, 0 5xx, RSS growth
	$(PY) -m bench.soak $(if $(MODEL_DIR),--model_dir $(MODEL_DIR),) --requests $(SOAK_REQUESTS) \
		--concurrency $(SOAK_CONCURRENCY) --max_seconds $(SOAK_MAX_SECONDS) \
		--max_rss_growth_pct $(SOAK_MAX_RSS_GROWTH_PCT) --out $(SOAK_OUT); \
		rc=$$?; $(PY) -m bench.results --tables soak=$(SOAK_OUT) && exit $$rc
