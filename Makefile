# SSD object-detection service for KServe. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
# Extra pytest arguments, e.g. `make test PYTEST_ARGS="-k anchors"`.
PYTEST_ARGS ?=
# Set RUN_SLOW=1 to include tests marked `slow` (they are skipped by default).
RUN_SLOW ?= 0
# `make test` shuffles the tests (pytest-random-order: modules in a random order, and the tests within
# each module) with this seed: a test that passes only after another one fails here. The seed is fixed,
# so CI runs one reproducible order; `make test TEST_ORDER_SEED=$RANDOM` tries another (pytest prints
# the seed it used), `make test TEST_ORDER_SEED=` keeps the file order.
TEST_ORDER_SEED ?= 26
MODEL_DIR ?=
PORT ?= 8080

.PHONY: help install system-deps serve test test-all fuzz dashboard-png lint format clean

help: ## Show this help (the targets of each mk/<topic>.mk under its name)
	@awk 'BEGIN {FS = ":.*## "} FNR == 1 && FILENAME != "Makefile" {printf "%s:\n", FILENAME} \
		/^[a-zA-Z0-9_.-]+:.*## / {printf "  \033[36m%-24s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[test]'
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install the package with test extras

serve: $(STAMP) ## Serve the model (default: the shipped demo model; MODEL_DIR=... for another) on PORT (default 8080)
	$(PY) -m predictor --http_port $(PORT) $(if $(MODEL_DIR),--model_dir $(MODEL_DIR),)

system-deps: ## Install the Debian packages the tests need when missing: bubblewrap, prometheus (apt, as root or with sudo)
	@missing="$$(command -v bwrap >/dev/null || echo bubblewrap) $$(command -v promtool >/dev/null || echo prometheus)"; \
	missing="$$(echo $$missing)"; [ -z "$$missing" ] || { \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
		elif command -v sudo >/dev/null; then sudo apt-get update -qq && sudo apt-get install -y -qq --no-install-recommends $$missing; \
		else echo "the tests need the Debian packages: $$missing (bubblewrap: pod contract; prometheus: real scrape, promtool)" >&2; exit 1; fi; }

test: $(STAMP) system-deps ## Install everything and run the whole test suite (what CI runs)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest $(if $(filter 1,$(RUN_SLOW)),,-m 'not slow') \
		$(if $(TEST_ORDER_SEED),-p random_order --random-order-bucket=module --random-order-seed=$(TEST_ORDER_SEED),) \
		$(PYTEST_ARGS)

test-all: ## Run the test suite including slow tests
	$(MAKE) test RUN_SLOW=1

fuzz: $(STAMP) ## Fuzz the request codecs and image decoder (hypothesis, 2000 examples per property)
	HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest -q tests/test_fuzz.py

dashboard-png: $(STAMP) system-deps ## Re-plot docs/operations-dashboard.png: the Grafana dashboard's queries on a real Prometheus scrape (matplotlib)
	SSD_DASHBOARD_PNG=docs/operations-dashboard.png $(PY) -m pytest -q tests/test_prometheus.py -k dashboard_plot

lint: $(STAMP) ## ruff lint and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check predictor tests bench

format: $(STAMP) ## Apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format predictor tests bench

clean: ## Remove build outputs and caches (keeps .venv)
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache .hypothesis out

-include mk/*.mk
