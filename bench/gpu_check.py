"""GPU check: our Keras SSD network on the JAX backend, float32 and bfloat16, against the card's matmul peak.

Runs without TensorFlow: ``predictor/ssd/config.py``, ``labels.py`` and ``network.py`` are imported through
a stub ``predictor.ssd`` package (its real ``__init__`` imports TensorFlow modules). The network is the
one the service serves, minus the TF post-processing. For every model, dtype and batch size it
jit-compiles ``model.stateless_call`` (weights passed as arguments, not baked in as constants), times
blocked calls on an input already on the device and reports images/s and achieved TFLOP/s, where the
FLOPs are ``2 * conv_macs(model)`` per image, against large-``jnp.matmul`` peaks measured first.

Before the networks, JPEG decode + resize to 300x300 on the GPU with nvImageCodec
(:mod:`bench.gpu_decode`; VGA, 1080p and 12 MP at batch 1, 8 and 64), the ``decode`` rows; rows say
why they were skipped where nvImageCodec or a GPU is missing.

A deadline (``--deadline_s``) skips what would not finish in time; JSON is rewritten after every
measurement, so a killed run still leaves its results. Run through ``bench/gpu_check.sh``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
import traceback
import types
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# Must stay in step with predictor.datasets.shapes.CLASS_NAMES; only its length matters here.
SHAPES_CLASS_NAMES = ("background", "circle", "square", "triangle", "star", "hexagon", "cross")


def load_ssd_modules() -> tuple[types.ModuleType, types.ModuleType]:
    """Import ``predictor.ssd.config`` and ``.network`` without running the TF-importing package inits."""
    for name, path in (("predictor", REPO / "predictor"), ("predictor.ssd", REPO / "predictor" / "ssd")):
        if name not in sys.modules:
            stub = types.ModuleType(name)
            stub.__path__ = [str(path)]
            sys.modules[name] = stub
    import importlib

    config = importlib.import_module("predictor.ssd.config")
    network = importlib.import_module("predictor.ssd.network")
    if "tensorflow" in sys.modules:
        raise RuntimeError("tensorflow was imported; the GPU check must run without it")
    return config, network


def demo_config(config_mod: types.ModuleType, source: list[str]) -> Any:
    """The demo model's architecture: its ``model.yaml``, the JSON written by ``make gpu-check-prepare``,
    or ``ssd_tiny`` with the shapes classes. Appends where it came from to ``source``."""
    manifest = REPO / "predictor" / "models" / "demo" / "model.yaml"
    if manifest.is_file():
        try:
            import yaml

            cfg = config_mod.SSDConfig.from_dict(yaml.safe_load(manifest.read_text())["config"])
            source.append(str(manifest.relative_to(REPO)))
            return cfg
        except ImportError:
            pass
    prepared = REPO / "bench" / ".wheels" / "demo_config.json"
    if prepared.is_file():
        source.append(str(prepared.relative_to(REPO)))
        return config_mod.SSDConfig.from_dict(json.loads(prepared.read_text()))
    source.append("ssd_tiny(shapes classes) default")
    return config_mod.ssd_tiny(SHAPES_CLASS_NAMES)


def time_calls(fn: Any, args: tuple, min_time_s: float, min_iters: int, max_iters: int) -> list[float]:
    """Seconds of each blocked call of ``fn(*args)``, until ``min_time_s`` and ``min_iters`` are reached."""
    import jax

    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_iters and (len(times) < min_iters or time.perf_counter() - start < min_time_s):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return times


def matmul_peaks(n: int, min_time_s: float) -> dict[str, dict[str, float]]:
    """TFLOP/s of an ``n x n`` ``jnp.matmul`` in fp32 (default and highest precision) and bf16."""
    import jax
    import jax.numpy as jnp

    results = {}
    key = jax.random.PRNGKey(0)
    for label, dtype, precision in (
        ("float32", jnp.float32, None),
        ("float32_highest", jnp.float32, jax.lax.Precision.HIGHEST),
        ("bfloat16", jnp.bfloat16, None),
    ):
        a = jax.random.normal(key, (n, n), dtype)
        b = jax.random.normal(jax.random.fold_in(key, 1), (n, n), dtype)
        fn = jax.jit(lambda x, y, p=precision: jnp.matmul(x, y, precision=p))
        jax.block_until_ready(fn(a, b))
        times = time_calls(fn, (a, b), min_time_s, 5, 1000)
        best = min(times)
        med = sorted(times)[len(times) // 2]
        results[label] = {
            "n": n,
            "tflops_best": 2 * n**3 / best / 1e12,
            "tflops_median": 2 * n**3 / med / 1e12,
            "calls": len(times),
        }
        print(f"matmul {label:16s} n={n}: {results[label]['tflops_best']:8.2f} TFLOP/s (best), "
              f"{results[label]['tflops_median']:8.2f} (median)", flush=True)  # fmt: skip
    return results


def bench_network(
    name: str, config: Any, network_mod: types.ModuleType, dtype: str, batches: list[int],
    args: argparse.Namespace, deadline: float, peak_tflops: float | None, sink: list[dict],
    write: Any,
) -> None:  # fmt: skip
    """Measure one model in one dtype at every batch size, appending result rows to ``sink``."""
    import jax
    import numpy as np

    precision = "highest" if dtype == "float32_highest" else None
    policy = {"float32": "float32", "float32_highest": "float32", "bfloat16": "mixed_bfloat16"}[dtype]
    t0 = time.perf_counter()
    model = network_mod.build_network(config, dtype=policy)
    macs = network_mod.conv_macs(model)
    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]

    def infer(tv: list, ntv: list, x: Any) -> Any:
        with jax.default_matmul_precision(precision) if precision else contextlib.nullcontext():
            out, _ = model.stateless_call(tv, ntv, x, training=False)
        return out

    fn = jax.jit(infer)
    build_s = time.perf_counter() - t0
    s = config.input_size
    for batch in batches:
        row: dict[str, Any] = {
            "model": name, "dtype": dtype, "keras_dtype_policy": policy, "batch": batch,
            "input_size": s, "gflop_per_image": 2 * macs / 1e9,
        }  # fmt: skip
        remaining = deadline - time.perf_counter()
        if remaining < args.min_left_s:
            row["skipped"] = f"deadline ({remaining:.0f} s left)"
            print(f"{name:8s} {dtype:16s} batch {batch:4d}: skipped, {row['skipped']}", flush=True)
            sink.append(row)
            write()
            continue
        try:
            x = jax.device_put(
                np.random.default_rng(batch).uniform(-120, 130, (batch, s, s, 3)).astype("float32")
            )
            t1 = time.perf_counter()
            jax.block_until_ready(fn(trainable, non_trainable, x))
            row["first_call_s"] = time.perf_counter() - t1
            jax.block_until_ready(fn(trainable, non_trainable, x))
            times = time_calls(fn, (trainable, non_trainable, x), args.min_time_s, args.min_iters, 1000)
            med = sorted(times)[len(times) // 2]
            row.update(
                calls=len(times),
                latency_ms_median=1e3 * med,
                latency_ms_min=1e3 * min(times),
                images_per_s=batch * len(times) / sum(times),
            )
            row["tflops"] = row["images_per_s"] * row["gflop_per_image"] / 1e3
            if peak_tflops:
                row["fraction_of_matmul_peak"] = row["tflops"] / peak_tflops
            print(
                f"{name:8s} {dtype:16s} batch {batch:4d}: {row['images_per_s']:9.1f} img/s  "
                f"{row['tflops']:7.2f} TFLOP/s  median {row['latency_ms_median']:8.2f} ms  "
                f"(compile+first {row['first_call_s']:.1f} s)",
                flush=True,
            )
        except Exception as e:  # report and go on: one OOM must not lose the other rows
            row["error"] = f"{type(e).__name__}: {e}"[:500]
            print(f"{name:8s} {dtype:16s} batch {batch:4d}: FAILED {row['error']}", flush=True)
            traceback.print_exc()
        row["model_build_s"] = build_s
        sink.append(row)
        write()


def conv_probe(
    network_mod: types.ModuleType, config: Any, dtype: str, batches: list[int], min_time_s: float
) -> list:
    """Time every Conv2D of the network alone (``jax.lax.conv_general_dilated``) at each batch size.

    Finds the layer behind a throughput cliff; returns rows ``{layer, batch, ms, tflops}``.
    """
    import jax
    import jax.numpy as jnp

    model = network_mod.build_network(config)
    jdtype = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
    rows = []
    for layer in model.layers:
        if not isinstance(layer, network_mod.layers.Conv2D):
            continue
        _, h, w, cin = layer.input.shape
        kh, kw, _, cout = layer.kernel.shape
        _, oh, ow, _ = layer.output.shape
        fn = jax.jit(
            lambda x, k, layer=layer: jax.lax.conv_general_dilated(
                x, k, layer.strides, layer.padding.upper(), rhs_dilation=layer.dilation_rate,
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
            )
        )  # fmt: skip
        k = jnp.ones((kh, kw, cin, cout), jdtype)
        for batch in batches:
            x = jnp.ones((batch, h, w, cin), jdtype)
            jax.block_until_ready(fn(x, k))
            best = min(time_calls(fn, (x, k), min_time_s, 3, 200))
            tflops = 2 * batch * oh * ow * kh * kw * cin * cout / best / 1e12
            rows.append({"layer": layer.name, "batch": batch, "ms": 1e3 * best, "tflops": tflops})
            print(
                f"conv {layer.name:22s} batch {batch:4d}: {1e3 * best:8.2f} ms {tflops:7.1f} TFLOP/s",
                flush=True,
            )
    return rows


def markdown(result: dict[str, Any]) -> str:
    """The matmul peaks and one table row per measurement, with the fraction of the matching peak."""
    peaks = result.get("peaks", {})
    lines = [
        "Large-matmul peaks (TFLOP/s, best call): "
        + ", ".join(f"{k} {v['tflops_best']:.1f}" for k, v in peaks.items())
        + ".",
        "",
        "| model | dtype | batch | images/s | TFLOP/s | % of matmul peak | median ms/batch |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        if "images_per_s" not in r:
            why = r.get("skipped") or r.get("error", "")
            lines.append(f"| {r['model']} | {r['dtype']} | {r['batch']} | - | - | - | {why[:60]} |")
            continue
        frac = r.get("fraction_of_matmul_peak")
        pct = f"{100 * frac:.1f}" if frac is not None else "-"
        lines.append(f"| {r['model']} | {r['dtype']} | {r['batch']} | {r['images_per_s']:.1f} | "
                     f"{r['tflops']:.2f} | {pct} | {r['latency_ms_median']:.2f} |")  # fmt: skip
    if result.get("decode_rows"):
        lines += ["", *decode_markdown(result["decode_rows"])]
    return "\n".join(lines)


def decode_markdown(rows: list[dict[str, Any]]) -> list[str]:
    """One table row per nvImageCodec decode measurement (JPEG size, backend, batch), or why not."""
    lines = [
        "JPEG decode (nvImageCodec) + WARP resize to 300x300 on the GPU (bench/gpu_decode.py):",
        "",
        "| JPEG | backend | batch | decode images/s | decode + resize images/s | median ms/batch |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "decode_resize_images_per_s" not in r:
            why = (r.get("skipped") or r.get("error", ""))[:60]
            lines.append(f"| {r['size']} | {r.get('backend', '-')} | {r['batch']} | - | - | {why} |")
            continue
        rates = f"{r['decode_images_per_s']:.1f} | {r['decode_resize_images_per_s']:.1f}"
        lines.append(
            f"| {r['size']} | {r['backend']} | {r['batch']} | {rates} | {r['decode_resize_ms_median']:.2f} |"
        )
    return lines


def gpu_machine(result: dict[str, Any]) -> dict[str, Any]:
    """The ``machine`` record :mod:`bench.results` stamps: start time, device kind, host cores, JAX."""
    env = result.get("environment", {})
    devices = env.get("devices") or ["?"]
    return {
        "utc": result["started_utc"],
        "cpu": f"{devices[0].split(':', 1)[-1]} x{len(devices)} (JAX {env.get('jax', '?')}, "
        f"Python {env.get('python', '?')}, {env.get('machine', '?')})",
        "cpu_count": os.cpu_count(),
    }


def print_table(result: dict[str, Any]) -> None:
    print("\n" + markdown(result))


def environment() -> dict[str, Any]:
    """Interpreter, JAX, Keras and device facts for the JSON."""
    import jax
    import keras

    devices = jax.devices()
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "jax": jax.__version__,
        "keras": keras.__version__,
        "keras_path": str(Path(keras.__file__).parent),
        "keras_backend": keras.backend.backend(),
        "backend": jax.default_backend(),
        "devices": [f"{d.platform}:{getattr(d, 'device_kind', '?')}" for d in devices],
        "jax_default_matmul_precision": jax.config.jax_default_matmul_precision,
    }


def decode_section(
    gpu_decode: types.ModuleType, args: argparse.Namespace, deadline: float, rows: list, write: Any
) -> dict[str, Any]:
    """The GPU decode rows (:mod:`bench.gpu_decode`); an error there is recorded, never fatal."""
    try:
        return gpu_decode.bench_decode(
            300, [int(b) for b in args.decode_batches.split(",")], args.decode_sizes.split(","),
            args.decode_min_time_s, deadline, args.min_left_s, rows, write,
        )  # fmt: skip
    except Exception as e:
        traceback.print_exc()
        return {"error": f"{type(e).__name__}: {e}"[:500]}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="ssd300,demo", help="comma list of ssd300, demo")
    parser.add_argument(
        "--dtypes", default="float32,bfloat16,float32_highest", help="float32, bfloat16, float32_highest"
    )
    parser.add_argument("--batches", default="1,8,32,64,128")
    parser.add_argument("--highest_batches", default="32", help="batches for float32_highest (slow)")
    parser.add_argument("--matmul_n", type=int, default=8192)
    parser.add_argument("--min_time_s", type=float, default=1.0, help="timed seconds per measurement")
    parser.add_argument("--min_iters", type=int, default=5)
    parser.add_argument("--deadline_s", type=float, default=400.0, help="stop starting new work after this")
    parser.add_argument("--min_left_s", type=float, default=25.0, help="skip when less is left")
    parser.add_argument("--decode_sizes", default="vga,1080p,12mp", help="JPEG sizes to decode; '' for none")
    parser.add_argument("--decode_batches", default="1,8,64")
    parser.add_argument("--decode_min_time_s", type=float, default=0.5, help="timed seconds per decode row")
    parser.add_argument("--tiny", action="store_true", help="CPU smoke test: tiny settings")
    parser.add_argument("--conv_probe", action="store_true", help="time each conv alone (first model, dtype)")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default $OUT/gpu_check.json)")
    args = parser.parse_args(argv)
    if args.tiny:
        args.batches, args.highest_batches, args.matmul_n = "1,2", "1", 512
        args.decode_sizes, args.decode_batches, args.decode_min_time_s = "vga", "1,2", 0.05
        args.min_time_s, args.min_iters = 0.05, 1
    if args.out is None:
        out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else REPO / "bench" / "out"
        args.out = out_dir / "gpu_check.json"
    return args


def main(argv: list[str] | None = None) -> int:
    # Before Keras is first imported (load_ssd_modules, environment); not at import, so that importing
    # this module (bench.results renders its table) leaves the caller's Keras backend alone.
    os.environ.setdefault("KERAS_BACKEND", "jax")
    args = parse_args(argv)
    start = time.perf_counter()
    deadline = start + args.deadline_s
    result: dict[str, Any] = {"started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": []}

    def write() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        result["elapsed_s"] = time.perf_counter() - start
        result["tensorflow_imported"] = "tensorflow" in sys.modules
        args.out.write_text(json.dumps(result, indent=1))

    try:
        result["environment"] = environment()
        result["machine"] = gpu_machine(result)
        print(json.dumps(result["environment"], indent=1), flush=True)
        config_mod, network_mod = load_ssd_modules()
        result["peaks"] = matmul_peaks(args.matmul_n, args.min_time_s)
        write()
        if args.decode_sizes:
            sys.path.insert(0, str(REPO / "bench"))
            import gpu_decode

            result["decode_rows"] = []
            result["decode"] = decode_section(gpu_decode, args, deadline, result["decode_rows"], write)
        source: list[str] = []
        configs = {"ssd300": config_mod.ssd300_vgg16(), "demo": demo_config(config_mod, source)}
        result["demo_config_source"] = source[0]
        if args.conv_probe:
            model, dtype = args.models.split(",")[0], args.dtypes.split(",")[0]
            batches = [int(b) for b in args.batches.split(",")]
            result["conv_probe"] = conv_probe(network_mod, configs[model], dtype, batches, args.min_time_s)
            write()
            return 0
        batches = [int(b) for b in args.batches.split(",")]
        dtypes = args.dtypes.split(",")
        # Model by model, the slow full-precision float32 last: a deadline then costs the least.
        jobs = [(m, d) for m in args.models.split(",") for d in dtypes if d != "float32_highest"]
        jobs += [(m, d) for m in args.models.split(",") for d in dtypes if d == "float32_highest"]
        for name, dtype in jobs:
            peak = result["peaks"].get(dtype, {}).get("tflops_best")
            highest = [int(b) for b in args.highest_batches.split(",")]
            dtype_batches = highest if dtype == "float32_highest" else batches
            bench_network(name, configs[name], network_mod, dtype, dtype_batches, args, deadline, peak,
                          result["rows"], write)  # fmt: skip
    except Exception as e:
        result["error"] = f"{type(e).__name__}: {e}"
        traceback.print_exc()
        write()
        print(f"GPU CHECK FAILED: {result['error']}", flush=True)
        return 1
    write()
    print_table(result)
    print(f"\nwrote {args.out} ({result['elapsed_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
