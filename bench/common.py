"""Shared pieces of the CPU benchmarks: model directories, test JPEGs, timing, peak FLOP/s, JSON.

Every benchmark loads its model from a model directory, so the raw model, the ONNX Runtime peer and the
server all run the same weights: SSD300-VGG16 with seeded random weights (saved once under
``bench/out/models/ssd300``) and the shipped demo model (a seeded random ``ssd_tiny`` stand-in until it
is shipped).
"""

from __future__ import annotations

import io
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
OUT_DIR = REPO / "bench" / "out"
MODELS = ("ssd300", "demo")
#: (width, height) of the test JPEGs: a VOC-sized photo and a 720p frame.
IMAGE_SIZES: tuple[tuple[int, int], ...] = ((500, 375), (1280, 720))
IMAGE_SEED = 20261125


def model_dir(name: str, out_dir: Path = OUT_DIR) -> tuple[Path, str]:
    """Model directory of benchmark model ``name`` (created on first use) and a one-line description."""
    if name == "demo":
        from predictor.models import DEMO_MODEL_DIR

        if (DEMO_MODEL_DIR / "model.yaml").is_file():
            return DEMO_MODEL_DIR, "shipped demo model (predictor/models/demo)"
        return _random_model_dir(
            "demo_standin", out_dir
        ), "random-weight ssd_tiny stand-in (demo not shipped yet)"
    if name == "ssd300":
        return _random_model_dir("ssd300", out_dir), "SSD300-VGG16, seeded random weights"
    raise ValueError(f"unknown benchmark model {name!r}; known: {MODELS}")


def _random_model_dir(name: str, out_dir: Path) -> Path:
    path = out_dir / "models" / name
    if (path / "model.yaml").is_file():
        return path
    import keras

    from predictor.datasets.shapes import CLASS_NAMES
    from predictor.ssd import build_network, save_model_dir, ssd300_vgg16, ssd_tiny

    config = ssd300_vgg16() if name == "ssd300" else ssd_tiny(CLASS_NAMES)
    keras.utils.set_random_seed(0)
    model = build_network(config)
    tmp = path.with_name(path.name + ".tmp")
    save_model_dir(model, config, tmp, note="benchmark model with seeded random weights")
    tmp.rename(path)
    return path


def make_test_jpegs(per_size: int = 4, quality: int = 90) -> list[bytes]:
    """Deterministic JPEGs: ``per_size`` shapes-dataset images resized to each of :data:`IMAGE_SIZES`."""
    from PIL import Image

    from predictor.datasets.shapes import generate_sample

    out = []
    for w, h in IMAGE_SIZES:
        for i in range(per_size):
            image = Image.fromarray(generate_sample(IMAGE_SEED, i).image).resize((w, h), Image.BILINEAR)
            buf = io.BytesIO()
            image.save(buf, format="JPEG", quality=quality)
            out.append(buf.getvalue())
    return out


def time_calls(
    fn: Callable[[], Any], min_time_s: float, min_iters: int, max_iters: int = 10_000
) -> list[float]:
    """Seconds of each call of ``fn()`` until both ``min_time_s`` and ``min_iters`` are reached."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_iters and (len(times) < min_iters or time.perf_counter() - start < min_time_s):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def time_calls_cpu(
    fn: Callable[[], Any], min_time_s: float, min_iters: int
) -> tuple[list[float], dict[str, float]]:
    """:func:`time_calls` plus how busy the machine was: cores this process used on average (process
    CPU time / wall time) and the 1-minute load average after, to spot runs disturbed by other work."""
    cpu0, wall0 = time.process_time(), time.perf_counter()
    times = time_calls(fn, min_time_s, min_iters)
    cores = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
    return times, {"process_cores_used": cores, "load_average_1m": os.getloadavg()[0]}


def percentile(values: Sequence[float], q: float) -> float:
    """``q``-th percentile (0..100) with linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    return float(np.percentile(np.asarray(values, np.float64), q))


def batch_stats(times: Sequence[float], batch: int, gflop_per_image: float, peak_gflops: float) -> dict:
    """Images/s, latency and achieved GFLOP/s of timed calls that each process ``batch`` images."""
    images_per_s = batch * len(times) / sum(times)
    gflops = images_per_s * gflop_per_image
    return {
        "batch": batch,
        "calls": len(times),
        "images_per_s": images_per_s,
        "latency_ms_median": 1e3 * statistics.median(times),
        "latency_ms_min": 1e3 * min(times),
        "gflops": gflops,
        "fraction_of_peak": gflops / peak_gflops if peak_gflops else None,
    }


def matmul_peak_gflops(n: int = 2048, min_time_s: float = 2.0) -> dict[str, float]:
    """This machine's float32 ``tf.matmul`` rate (``n x n`` by ``n x n``, all threads), best of the calls."""
    import tensorflow as tf

    a = tf.random.stateless_normal((n, n), seed=(1, 2))
    b = tf.random.stateless_normal((n, n), seed=(3, 4))
    fn = tf.function(lambda x, y: tf.matmul(x, y))
    fn(a, b).numpy()
    times = time_calls(lambda: fn(a, b).numpy(), min_time_s, 3)
    return {
        "n": n,
        "gflops_best": 2 * n**3 / min(times) / 1e9,
        "gflops_median": 2 * n**3 / statistics.median(times) / 1e9,
        "calls": len(times),
    }


def machine_info() -> dict[str, Any]:
    """CPU, thread and library facts recorded beside every result."""
    import tensorflow as tf

    from predictor.serving.resources import cpu_model_name

    return {
        "cpu": cpu_model_name(),
        "cpu_count": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_average_at_start": os.getloadavg(),
    }


def write_json(path: Path, data: Any) -> Path:
    """Write ``data`` as indented JSON, creating the parent folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=_json_default))
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def parse_ints(text: str) -> list[int]:
    """``"1,4,8"`` -> ``[1, 4, 8]``."""
    return [int(t) for t in text.split(",") if t.strip()]


def fmt_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (right-aligned numbers) as text."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 10 else f"{v:,.1f}"
        return "-" if v is None else str(v)

    numeric = [
        all(isinstance(row[i], (int, float)) or row[i] is None for row in rows) for i in range(len(headers))
    ]
    align = ["---:" if n else "---" for n in numeric]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
