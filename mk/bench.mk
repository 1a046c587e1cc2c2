# Benchmarks (see bench/README.md). Included by the top Makefile; VENV, PY, PIP, PYTHON and STAMP come from it.

# Where results go (JSON, PNG, logs, benchmark model directories, ONNX files).
BENCH_OUT ?= bench/out
# Models to benchmark: ssd300 (SSD300-VGG16, seeded random weights) and/or demo (the shipped demo model).
BENCH_MODELS ?= ssd300,demo
# A Python venv with JAX (CPU is enough) for trying the GPU check on this machine.
JAX_VENV ?= /tmp/jaxvenv
BENCH_STAMP := $(VENV)/.bench-installed
# Rewrites the named generated tables of bench/RESULTS.md (and docs/benchmarks.md) from the JSON in BENCH_OUT.
RESULTS_TABLES = $(PY) -m bench.results --out_dir $(BENCH_OUT) --tables

# Overload benchmark: closed-loop clients of the first capacity estimate (then an open-loop search),
# offered load factor, seconds per phase, capacity/overload rounds side by side.
OVERLOAD_CLIENTS ?= 32
OVERLOAD_FACTOR ?= 4
OVERLOAD_SECONDS ?= 10
OVERLOAD_ROUNDS ?= 2
# Hostile-bodies benchmark: concurrent clients, body size (MiB), allowed peak RSS growth (MiB).
HOSTILE_CLIENTS ?= 24
HOSTILE_BODY_MIB ?= 40
HOSTILE_MAX_GROWTH_MIB ?= 512

# Cold start (`make bench-cold-start`): models and repeats; COLD_START_ARGS adds flags, e.g.
# "--baseline ../old-checkout --no_pyc" to measure another source tree or a run without byte-code.
COLD_START_MODELS ?= demo,ssd300
COLD_START_REPEATS ?= 3
COLD_START_ARGS ?=
# Soak (`make soak`; afterwards its table in bench/RESULTS.md is rewritten from SOAK_OUT), 10000 requests: with 3000 the memory is still reaching its high-water mark (see
# bench/RESULTS.md). Requests to send, client threads, time cap (s), allowed RSS growth from ready to the
# end (%), and where the JSON goes.
SOAK_REQUESTS ?= 10000
SOAK_CONCURRENCY ?= 8
SOAK_MAX_SECONDS ?= 800
SOAK_MAX_RSS_GROWTH_PCT ?= 5
SOAK_OUT ?= bench/out/soak.json

.PHONY: bench bench-install bench-model bench-postprocess bench-onnx bench-served bench-report bench-overload \
	bench-hostile gpu-check-prepare gpu-check-cpu gpu-check bench-pipeline bench-draft bench-client-downscale \
	bench-cold-start soak bench-results gpu-check-report bench-onnx-detector bench-plan bench-simulate \
	bench-tf-variants simulate-day

$(BENCH_STAMP): pyproject.toml | $(STAMP)
	$(PIP) install --quiet -e '.[test,bench]'
	@touch $@

bench-install: $(BENCH_STAMP) ## Install the benchmark extras (tf2onnx, onnx, onnxruntime, matplotlib, py-spy)

bench: $(BENCH_STAMP) ## All CPU benchmarks: raw model, ONNX Runtime peer, served V1/V2/gRPC; ratios + plot (~10 min)
	$(PY) -m bench.run_all --models $(BENCH_MODELS) --out_dir $(BENCH_OUT)
	$(RESULTS_TABLES) raw-model onnx-peer served ratios summary readme-performance

bench-model: $(BENCH_STAMP) ## Raw model benchmark: run_batch and network alone, batch 1-32, GFLOP/s vs matmul peak
	$(PY) -m bench.raw_model --models $(BENCH_MODELS) --out_dir $(BENCH_OUT)
	$(RESULTS_TABLES) raw-model

bench-postprocess: $(BENCH_STAMP) ## Post-processing variants vs the network: ms/image, share of the call, same detections (demo 1-32, SSD300 1/8)
	$(PY) -m bench.postprocess_variants --models $(BENCH_MODELS) --out_dir $(BENCH_OUT)
	$(RESULTS_TABLES) postprocess-variants

bench-onnx: $(BENCH_STAMP) ## ONNX Runtime peer of the network (uses bench-model's JSON for ours/ORT)
	$(PY) -m bench.onnx_peer --models $(BENCH_MODELS) --out_dir $(BENCH_OUT)
	$(RESULTS_TABLES) onnx-peer

bench-tf-variants: $(BENCH_STAMP) ## Network alone at batch 1-8: TF thread pools, call modes, XLA, oneDNN off vs ORT; TF vs --runtime onnxruntime (~6 min)
	$(PY) -m bench.tf_variants --models $(BENCH_MODELS) --out_dir $(BENCH_OUT)
	$(RESULTS_TABLES) tf-variants

bench-onnx-detector: $(BENCH_STAMP) ## The whole detector exported to ONNX: ORT vs TF agreement and time per call, batch 1 and 8
	$(PY) -m bench.onnx_detector --models $(BENCH_MODELS) --out_dir $(BENCH_OUT)

bench-served: $(BENCH_STAMP) ## End to end against a real server on loopback: V1, V2 REST, gRPC at concurrency 1/4/16
	$(PY) -m bench.served --models $(BENCH_MODELS) --out_dir $(BENCH_OUT)
	$(RESULTS_TABLES) served

bench-report: $(BENCH_STAMP) ## Re-print the ratios, redraw the plot and rewrite the ratio tables from the JSON in BENCH_OUT
	$(PY) -m bench.run_all --report_only --out_dir $(BENCH_OUT)
	$(RESULTS_TABLES) ratios summary readme-performance

bench-results: $(STAMP) ## Rewrite every generated table of bench/RESULTS.md and docs/benchmarks.md whose JSON is in BENCH_OUT
	$(PY) -m bench.results --out_dir $(BENCH_OUT)

bench-overload: $(STAMP) ## Overload a real server (MODEL_DIR=... or demo) at 4x its measured capacity: goodput, p99 admitted, 503 share
	$(PY) -m bench.overload $(if $(MODEL_DIR),--model_dir $(MODEL_DIR),) --clients $(OVERLOAD_CLIENTS) \
		--factor $(OVERLOAD_FACTOR) --seconds $(OVERLOAD_SECONDS) --rounds $(OVERLOAD_ROUNDS) --out $(BENCH_OUT)/overload.json; \
		rc=$$?; $(RESULTS_TABLES) overload=$(BENCH_OUT)/overload.json && exit $$rc

bench-simulate: $(STAMP) ## The fleet simulator against 1, 2 and 3 real replicas (demo): step, ramp, overload; p50/p95/throughput/503s
	$(PY) -m bench.simulate_check --replicas 1 --call_load --out $(BENCH_OUT)/simulate_check.json --write_plan_inputs; rc1=$$?; \
	$(PY) -m bench.simulate_check --replicas 2 --out $(BENCH_OUT)/simulate_check_2.json; rc2=$$?; \
	$(PY) -m bench.simulate_check --replicas 3 --out $(BENCH_OUT)/simulate_check_3.json; rc3=$$?; \
	$(RESULTS_TABLES) simulate-check simulate-check-2 simulate-check-3 && exit $$((rc1 | rc2 | rc3))

simulate-day: $(BENCH_STAMP) ## The planner's search over a simulated day with bursts: docs/simulator-day.png, ci/simulated-day-values.yaml
	$(PY) -m bench.simulate_day

bench-hostile: $(STAMP) ## 24 clients POST 40 MiB bodies at once to a real server: peak RSS growth, statuses, serves after
	$(PY) -m bench.hostile $(if $(MODEL_DIR),--model_dir $(MODEL_DIR),) --clients $(HOSTILE_CLIENTS) \
		--body_mib $(HOSTILE_BODY_MIB) --max_growth_mib $(HOSTILE_MAX_GROWTH_MIB) --out $(BENCH_OUT)/hostile.json; \
		rc=$$?; $(RESULTS_TABLES) hostile=$(BENCH_OUT)/hostile.json && exit $$rc

gpu-check-prepare: $(STAMP) ## Put the Keras wheel + deps for the GPU check into bench/.wheels (carry it along)
	$(PY) -m bench.gpu_prepare

gpu-check-cpu: gpu-check-prepare ## Try the GPU check here on the CPU, tiny settings (JAX venv in JAX_VENV)
	test -x $(JAX_VENV)/bin/python || { $(PYTHON) -m venv $(JAX_VENV) && $(JAX_VENV)/bin/pip install --quiet jax; }
	PYTHON=$(JAX_VENV)/bin/python GPU_CHECK_DEPS=$(JAX_VENV)/keras-deps bash bench/gpu_check.sh --tiny --models demo

gpu-check: ## Run the GPU check (on the GPU machine, after gpu-check-prepare here); JSON into env OUT
	bash bench/gpu_check.sh

gpu-check-report: $(STAMP) ## Rewrite the GPU table of bench/RESULTS.md from the GPU check's JSON, copied to BENCH_OUT/gpu_check.json
	$(RESULTS_TABLES) gpu-check

bench-pipeline: $(BENCH_STAMP) ## CPU ms per image per pipeline stage (VGA/1080p/12MP JPEG, PNG) vs bare Pillow decode+resize; served rate
	$(PY) -m bench.pipeline --out_dir $(BENCH_OUT)
	$(RESULTS_TABLES) pipeline-stages pipeline-per-core pipeline-served pipeline-sizing

bench-draft: $(BENCH_STAMP) ## Effect of --jpeg_draft on SSD300 detections (IoU, score deltas) and on the demo model's mAP
	$(PY) -m bench.draft_effect --out_dir $(BENCH_OUT)
	$(RESULTS_TABLES) draft-effect

bench-client-downscale: $(BENCH_STAMP) ## ssd-detect --downscale: detections, upload bytes and server CPU per image
	$(PY) -m bench.client_downscale --out_dir $(BENCH_OUT)
	$(RESULTS_TABLES) client-downscale

bench-plan: $(STAMP) ## Capacity planner accuracy: sweep the demo model, plan, re-measure the chosen setting (p95 within 25%; quiet machine)
	$(PY) -m bench.plan_accuracy --out_dir $(BENCH_OUT)

bench-cold-start: $(STAMP) ## Cold start, process spawn to ready: imports, model load, warm-up per bucket (demo, SSD300)
	$(PY) -m bench.cold_start --models $(COLD_START_MODELS) --repeats $(COLD_START_REPEATS) \
		--out_dir $(BENCH_OUT) $(COLD_START_ARGS)
	$(RESULTS_TABLES) cold-start

soak: $(STAMP) ## Soak a real server on loopback (MODEL_DIR=... or the demo model): mixed valid/invalid/large requests, 0 5xx, RSS growth
	$(PY) -m bench.soak $(if $(MODEL_DIR),--model_dir $(MODEL_DIR),) --requests $(SOAK_REQUESTS) \
		--concurrency $(SOAK_CONCURRENCY) --max_seconds $(SOAK_MAX_SECONDS) \
		--max_rss_growth_pct $(SOAK_MAX_RSS_GROWTH_PCT) --out $(SOAK_OUT); \
		rc=$$?; $(RESULTS_TABLES) soak=$(SOAK_OUT) && exit $$rc
