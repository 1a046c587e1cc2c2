#!/usr/bin/env bash
# GPU check on a machine with JAX but no TensorFlow and no package registry (see bench/README.md).
# Prepare the wheels here first: `make gpu-check-prepare` (fills the gitignored bench/.wheels).
# Usage: bash bench/gpu_check.sh [gpu_check.py flags, e.g. --tiny]; JSON goes to $OUT/gpu_check.json.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
DEPS=${GPU_CHECK_DEPS:-/tmp/ssd_gpu_check_deps}

if [ -n "${OUT:-}" ]; then mkdir -p "$OUT"; exec > >(tee "$OUT/gpu_check.log") 2>&1; fi
echo "== $(date -u +%FT%TZ) $(hostname)"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
"$PYTHON" -c "import jax; print('jax', jax.__version__, jax.devices())" || { echo "GPU CHECK FAILED: jax not importable by $PYTHON"; exit 2; }
BACKEND=$("$PYTHON" -c "import jax; print(jax.default_backend())" 2>/dev/null)
"$PYTHON" bench/gpu_deps.py --wheels bench/.wheels --target "$DEPS" || { echo "GPU CHECK FAILED: dependencies (see above)"; exit 3; }
export PYTHONPATH="$DEPS${PYTHONPATH:+:$PYTHONPATH}"
# nvImageCodec's nvJPEG extension loads libnvjpeg.so.12 from the nvidia-nvjpeg-cu12 wheel unpacked above.
export LD_LIBRARY_PATH="$DEPS/nvidia/nvjpeg/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# The unpacked nvidia/ package (nvImageCodec's, extend_path) must not hide JAX's own CUDA wheels: if JAX
# sees another backend with it, drop it (the decode rows then say nvImageCodec is missing).
if [ "$("$PYTHON" -c "import jax; print(jax.default_backend())" 2>/dev/null)" != "$BACKEND" ]; then
  echo "WARNING: JAX lost its $BACKEND backend with $DEPS/nvidia on the path; GPU decode rows skipped"
  rm -rf "$DEPS/nvidia"
fi
export KERAS_BACKEND=jax
# Keep XLA from taking 75% of the card up front; batch 128 of SSD300 needs a few GiB only.
export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}
exec "$PYTHON" bench/gpu_check.py "$@"
