# syntax=docker/dockerfile:1
# SSD object-detection predictor for KServe.
#
#   docker build -t ssd-predictor:0.1.0 .                              # GPU image (default)
#   docker build --build-arg VARIANT=cpu -t ssd-predictor:0.1.0-cpu .  # CPU-only image
#
# GPU variant: NVIDIA's CUDA + cuDNN runtime image. TensorFlow 2.21's `tensorflow[and-cuda]` extra needs
# CUDA 12 >= 12.5 and cuDNN 9 >= 9.3; the CUDA 12.6.3 runtime image ships cuDNN 9.5, which satisfies
# both, so the plain `tensorflow` wheel finds its libraries in the base image instead of pulling ~3 GB
# of nvidia-* wheels a second time. The host needs an NVIDIA driver supporting CUDA 12.6 (>= 560, or
# >= 525 with CUDA forward compatibility) and the NVIDIA container toolkit / GPU operator.
# CPU variant: plain Ubuntu 24.04 with the same Python, so both variants run the same code.
# Stages: base-<variant> -> base (Python) -> build (wheel) -> venv (installed wheel) -> runtime.

ARG VARIANT=gpu
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04
ARG CPU_IMAGE=ubuntu:24.04

FROM ${CUDA_IMAGE} AS base-gpu
FROM ${CPU_IMAGE} AS base-cpu

# ---- Python 3.12 from the distribution, on the variant's base --------------------------------------
# The tag is set by the base-gpu / base-cpu stages above (CUDA_IMAGE, CPU_IMAGE).
# hadolint ignore=DL3006
FROM base-${VARIANT} AS base
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
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
COPY pyproject.toml README.md ./
COPY predictor ./predictor
RUN python3 -m venv /opt/build \
    && /opt/build/bin/pip wheel --no-deps --wheel-dir /dist .

# ---- install the wheel and its dependencies into a virtual environment -----------------------------
FROM base AS venv
# Optional extras of the package, e.g. PIP_EXTRAS=gpu to take CUDA from pip (tensorflow[and-cuda])
# when building on a base image without CUDA.
ARG PIP_EXTRAS=""
COPY --from=build /dist /dist
RUN python3 -m venv /opt/venv \
    && wheel="$(ls /dist/ssd_predictor-*.whl)" \
    && /opt/venv/bin/pip install "${wheel}${PIP_EXTRAS:+[${PIP_EXTRAS}]}" \
    && /opt/venv/bin/python -c "import predictor.cli_args" \
    && find /opt/venv -name '__pycache__' -type d -prune -exec rm -rf {} +

# ---- runtime: non-root, read-only friendly (everything writable lives under /tmp) -------------------
FROM base AS runtime
ARG VARIANT
LABEL org.opencontainers.image.title="ssd-predictor" \
      org.opencontainers.image.description="SSD object detection served by KServe (V1, V2 REST and gRPC)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.kserve.predictor.variant="${VARIANT}"
# Ubuntu 24.04 images come with a user "ubuntu" holding uid/gid 1000: replace it by the service user.
RUN (userdel --remove ubuntu 2>/dev/null || true) \
    && (groupdel ubuntu 2>/dev/null || true) \
    && groupadd --gid 1000 predictor \
    && useradd --uid 1000 --gid 1000 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin predictor
COPY --from=venv /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:${PATH} \
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
