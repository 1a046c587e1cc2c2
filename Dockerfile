# syntax=docker/dockerfile:1
# SSD object-detection predictor for KServe.
#
#   make image                    # GPU image ssd-predictor:<version> (docker or podman, BuildKit)
#   make image VARIANT=cpu        # CPU-only image ssd-predictor:<version>-cpu
#
# GPU variant: NVIDIA's CUDA + cuDNN runtime image. TensorFlow 2.21 needs CUDA 12 >= 12.5 and
# cuDNN 9 >= 9.3; the CUDA 12.6.3 runtime image ships cuDNN 9.5, so the plain `tensorflow` wheel finds
# its libraries in the base image instead of pulling ~3 GB of nvidia-* wheels a second time. XLA
# (--xla) also needs ptxas and libdevice, which the runtime image lacks: they come from the
# nvidia-cuda-nvcc-cu12 wheel of the same CUDA release (in the GPU lock file). The host needs an NVIDIA
# driver supporting CUDA 12.6 (>= 560, or >= 525 with forward compatibility) and the NVIDIA container
# toolkit / GPU operator.
# CPU variant: plain Ubuntu 24.04 with the same Python and `tensorflow-cpu` of the same version.
#
# Layers, from the least to the most often changed: base image -> Python -> the locked dependencies
# (requirements/runtime-<variant>.lock, hash-pinned, byte-compiled; rebuilt only when the lock or the
# base changes) -> the app wheel (--no-deps, byte-compiled; a code change ships only this small layer).
# Stages: base-<variant> -> base (Python) -> build (wheel), deps (locked venv) -> runtime.

ARG VARIANT=gpu
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04
ARG CPU_IMAGE=ubuntu:24.04

FROM ${CUDA_IMAGE} AS base-gpu
# XLA's GPU toolchain from the nvidia-cuda-nvcc-cu12 wheel: libdevice (--xla_gpu_cuda_data_dir) and
# ptxas (PATH). Python 3.12 is Ubuntu 24.04's (requirements/lock.py resolves for it).
ENV XLA_FLAGS=--xla_gpu_cuda_data_dir=/opt/venv/lib/python3.12/site-packages/nvidia/cuda_nvcc \
    PATH=/opt/venv/lib/python3.12/site-packages/nvidia/cuda_nvcc/bin:${PATH}
FROM ${CPU_IMAGE} AS base-cpu

# ---- Python 3.12 from the distribution, on the variant's base --------------------------------------
# The tag is set by the base-gpu / base-cpu stages above (CUDA_IMAGE, CPU_IMAGE).
# hadolint ignore=DL3006
FROM base-${VARIANT} AS base
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# Distribution packages follow the base image's release; pinning their exact versions would break
# the build at every Ubuntu security update.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# ---- build the package wheel from the source tree ---------------------------------------------------
FROM base AS build
WORKDIR /src
# The build tools (setuptools, wheel) come hash-pinned from requirements/build.lock, not fetched
# unpinned by build isolation.
COPY requirements/build.lock /tmp/build.lock
RUN --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    python3 -m venv /opt/build \
    && /opt/build/bin/pip install --require-hashes --no-deps --only-binary=:all: -r /tmp/build.lock
COPY pyproject.toml README.md ./
COPY predictor ./predictor
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --no-cache-dir --wheel-dir /dist .

# ---- the locked runtime dependencies, byte-compiled ------------------------------------------------
FROM base AS deps
ARG VARIANT
COPY requirements/runtime-${VARIANT}.lock /tmp/runtime.lock
# Byte-code is compiled here, at build time: the root filesystem is read-only at run time, and
# without .pyc files every cold start would compile TensorFlow's Python sources again.
RUN --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --require-hashes --no-deps --only-binary=:all: -r /tmp/runtime.lock \
    && /opt/venv/bin/python -m compileall -q -j 0 --invalidation-mode unchecked-hash /opt/venv \
    && rm /tmp/runtime.lock

# ---- runtime: non-root, read-only friendly (everything writable lives under /tmp) -------------------
FROM base AS runtime
ARG VARIANT
ARG VERSION=0.1.0
ARG TENSORFLOW_VERSION=2.21.0
ARG KSERVE_VERSION=0.21.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="ssd-predictor" \
      org.opencontainers.image.description="SSD object detection served by KServe (V1, V2 REST and gRPC)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      io.kserve.predictor.variant="${VARIANT}" \
      io.kserve.predictor.tensorflow-version="${TENSORFLOW_VERSION}" \
      io.kserve.predictor.kserve-version="${KSERVE_VERSION}"
# Ubuntu 24.04 images come with a user "ubuntu" holding uid/gid 1000: replace it by the service user.
RUN (userdel --remove ubuntu 2>/dev/null || true) \
    && (groupdel ubuntu 2>/dev/null || true) \
    && groupadd --gid 1000 predictor \
    && useradd --uid 1000 --gid 1000 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin predictor
# Layer 1 (large, changes with the lock): the dependencies.
COPY --from=deps /opt/venv /opt/venv
# Layer 2 (small, changes with the code): the app wheel alone, byte-compiled.
RUN --mount=type=bind,from=build,source=/dist,target=/dist \
    /opt/venv/bin/pip install --no-deps --no-index --no-cache-dir /dist/ssd_predictor-*.whl \
    && /opt/venv/bin/python -m compileall -q --invalidation-mode unchecked-hash \
        /opt/venv/lib/python3.12/site-packages/predictor \
    && /opt/venv/bin/python -c "import predictor.serving.options"
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    KERAS_HOME=/tmp/.keras \
    MPLCONFIGDIR=/tmp/matplotlib \
    TF_FORCE_GPU_ALLOW_GROWTH=true \
    TF_CPP_MIN_LOG_LEVEL=1
WORKDIR /tmp
USER 1000:1000
# 8080: HTTP (V1 and V2 REST, /metrics); 8081: gRPC (V2).
EXPOSE 8080 8081
ENTRYPOINT ["python", "-m", "predictor"]
