"""Fill ``bench/.wheels`` for the GPU check: the venv's Keras wheel and what ``import keras`` needs.

Run with the project venv (``make gpu-check-prepare``). Versions are the venv's own, so the device runs
the Keras the service runs. ``import keras`` (3.15, JAX backend) was checked in a bare JAX venv to need
absl-py, namex, rich, packaging and optree (+ typing_extensions); markdown-it-py, mdurl and pygments come
along for rich; h5py and ml-dtypes are not needed at import (ml-dtypes ships with JAX). optree is the only
compiled one: wheels for CPython 3.11-3.14 on x86_64 and aarch64 are fetched, since the device Python is
unknown. For the GPU decode rows (bench/gpu_decode.py): nvImageCodec and nvJPEG for CUDA 12, x86_64 only
(one wheel serves every Python; with aarch64 too the carried folder would pass 64 MiB). onnxruntime-gpu is
not carried: its wheel alone is several times the 64 MiB a device call carries. Also writes
``demo_config.json`` (the demo architecture) and prints the carried size.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PURE = (
    "keras",
    "absl-py",
    "namex",
    "rich",
    "markdown-it-py",
    "mdurl",
    "pygments",
    "packaging",
    "typing_extensions",
)
COMPILED = ("optree",)
PYTHONS = ("3.11", "3.12", "3.13", "3.14")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_28_aarch64")
#: GPU JPEG decode, pinned (not in the venv): (requirement, platform tag).
DECODE_WHEELS = (
    ("nvidia-nvimgcodec-cu12==0.9.0.20", "manylinux_2_28_x86_64"),
    ("nvidia-nvjpeg-cu12==12.4.0.76", "manylinux2014_x86_64"),
)
#: What a device call carries at most.
CARRY_LIMIT_MIB = 64


def pip_download(dest: Path, *args: str) -> bool:
    """``pip download --no-deps -d dest args``; False (and the error shown) on failure."""
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(dest), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"  pip download {' '.join(args)} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return proc.returncode == 0


def demo_config_dict() -> dict:
    """The demo model's config: its shipped ``model.yaml`` if present, else ``ssd_tiny(CLASS_NAMES)``."""
    from predictor.models import DEMO_MODEL_DIR

    manifest = DEMO_MODEL_DIR / "model.yaml"
    if manifest.is_file():
        import yaml

        return yaml.safe_load(manifest.read_text())["config"]
    from predictor.datasets.shapes import CLASS_NAMES
    from predictor.ssd.config import ssd_tiny

    return ssd_tiny(CLASS_NAMES).to_dict()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=REPO / "bench" / ".wheels")
    args = parser.parse_args(argv)
    args.dest.mkdir(parents=True, exist_ok=True)
    for old in args.dest.glob("*.whl"):
        old.unlink()
    ok = True
    for dist in PURE:
        ok &= pip_download(args.dest, f"{dist}=={md.version(dist)}")
    for dist in COMPILED:
        version = md.version(dist)
        for py in PYTHONS:
            for plat in PLATFORMS:
                spec = ("--only-binary=:all:", "--python-version", py, "--platform", plat)
                pip_download(args.dest, *spec, f"{dist}=={version}")  # a missing combination is not fatal
    for requirement, plat in DECODE_WHEELS:  # missing: the decode rows say so on the device
        pip_download(
            args.dest, "--only-binary=:all:", "--python-version", "3.11", "--platform", plat, requirement
        )
    (args.dest / "demo_config.json").write_text(json.dumps(demo_config_dict(), indent=1))
    files = sorted(p for p in args.dest.iterdir() if p.is_file())
    total = sum(p.stat().st_size for p in files)
    for p in files:
        print(f"  {p.stat().st_size / 1e6:7.2f} MB  {p.name}")
    print(f"{len(files)} files, {total / 2**20:.1f} MiB in {args.dest}")
    if total > CARRY_LIMIT_MIB * 2**20:
        print(f"OVER the {CARRY_LIMIT_MIB} MiB a device call carries (with the rest of the tree)")
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
