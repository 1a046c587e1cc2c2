# Container image targets (included by the top Makefile; IMAGE, TAG, VARIANT and IMAGE_TAG come from
# mk/deploy.mk). `make image-check` needs no container engine.

# Container engine: empty picks docker when its daemon answers, else podman (same CLI).
DOCKER ?=
# Git revision recorded in the image's org.opencontainers.image.revision label.
REVISION ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
# The runtime lock file of the variant (installed by the Dockerfile's deps stage).
LOCK := requirements/runtime-$(VARIANT).lock
# Versions for the image labels, read from the lock (tensorflow-cpu in the CPU lock).
lock_version = $(shell sed -n 's/^$(1)==\([^ ]*\).*/\1/p' $(LOCK) | head -n1)

.PHONY: image push image-check lock

define pick_engine
engine="$(DOCKER)"; \
if [ -z "$$engine" ]; then \
	if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then engine=docker; \
	elif command -v podman >/dev/null 2>&1; then engine=podman; \
	else echo "no container engine: no docker daemon answers and podman is not installed (or set DOCKER=...);" \
		"'make image-check' checks the Dockerfile without one" >&2; exit 1; fi; \
fi
endef

image: ## Build the predictor image IMAGE:TAG (VARIANT=gpu, or cpu for IMAGE:TAG-cpu) with docker or podman
	@$(pick_engine); set -x; \
	DOCKER_BUILDKIT=1 $$engine build --build-arg VARIANT=$(VARIANT) \
		--build-arg VERSION=$(TAG) --build-arg REVISION=$(REVISION) \
		--build-arg TENSORFLOW_VERSION=$(or $(call lock_version,tensorflow),$(call lock_version,tensorflow-cpu)) \
		--build-arg KSERVE_VERSION=$(call lock_version,kserve) \
		-t $(IMAGE):$(IMAGE_TAG) .

push: ## Push the image built by `make image` to its registry
	@$(pick_engine); set -x; $$engine push $(IMAGE):$(IMAGE_TAG)

image-check: $(STAMP) ## Check the Dockerfile without an engine: hadolint, layer/lock/label rules, build context
	$(VENV)/bin/hadolint --failure-threshold info Dockerfile
	$(PY) -m pytest -q -p no:cacheprovider tests/test_deploy_image.py

lock: $(STAMP) ## Regenerate requirements/runtime-{cpu,gpu}.lock (hash-pinned, from PyPI) after changing dependencies
	$(PY) requirements/lock.py
