"""Raw model benchmark: the compiled function alone, images already decoded, resized and in memory.

For each model and batch size it times

* ``detector``: :meth:`Detector.run_batch` (the ``tf.function`` network + in-graph post-processing the
  server calls), given what the server's batcher gives it: a list of resized float32 ``[S, S, 3]`` rows,
  which ``run_batch`` copies into an aligned bucket buffer that TensorFlow takes over without copying
  (:func:`predictor.ssd.detector.input_tensor`), inside the timed call as when serving (a stacked array
  would be fed as it is: glibc starts a large block 16 bytes past a page boundary, so it would take the
  ``tf.constant`` copy that serving no longer makes),
* ``network``: the Keras network alone in a ``tf.function`` (no mean subtraction, no post-processing),

and reports images/s, latency per call and achieved GFLOP/s (``2 * conv_macs(model)`` per image)
against this machine's float32 ``tf.matmul`` rate. It also times what the server does per image before
the model: :func:`predictor.serving.images.decode_image` + :meth:`Detector.resize`, for each test JPEG size.

``python -m bench.raw_model [--models ssd300,demo] [--batches 1,4,8,16,32]`` -> table + JSON.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    MODELS,
    OUT_DIR,
    batch_stats,
    fmt_table,
    machine_info,
    make_test_jpegs,
    matmul_peak_gflops,
    model_dir,
    parse_ints,
    time_calls,
    time_calls_cpu,
    write_json,
)


def decode_times_ms(detector: Any, jpegs: list[bytes], min_time_s: float) -> dict[str, float]:
    """Median ms of decode + resize per image, by original size ``"WxH"`` (what the server does per image)."""
    from predictor.serving.images import decode_image

    by_size: dict[str, list[float]] = {}
    for data in jpegs:
        rgb = decode_image(data)
        key = f"{rgb.shape[1]}x{rgb.shape[0]}"
        detector.resize(rgb)  # first call builds the eager kernels
        times = time_calls(lambda d=data: detector.resize(decode_image(d)), min_time_s / len(jpegs), 3)
        by_size.setdefault(key, []).append(statistics.median(times) * 1e3)
    return {key: statistics.median(v) for key, v in by_size.items()}


def resized_batch(detector: Any, jpegs: list[bytes], batch: int) -> tuple[list[np.ndarray], np.ndarray]:
    """``batch`` resized float32 ``[S, S, 3]`` rows (cycling over ``jpegs``), as a list (what the
    batcher hands ``run_batch``), and their original ``(H, W)`` ``[batch, 2]``."""
    from predictor.serving.images import decode_image

    rgbs = [decode_image(jpegs[i % len(jpegs)]) for i in range(batch)]
    rows = [detector.resize(rgb) for rgb in rgbs]
    hw = np.asarray([rgb.shape[:2] for rgb in rgbs], np.float32)
    return rows, hw


def bench_model(name: str, args: argparse.Namespace, peak_gflops: float, jpegs: list[bytes]) -> dict:
    """Detector and network-alone rows for one model."""
    import tensorflow as tf

    from predictor.ssd import Detector, conv_macs, load_model

    path, source = model_dir(name, args.out_dir)
    config, model = load_model(path)
    macs = conv_macs(model)
    gflop = 2 * macs / 1e9
    detector = Detector(config, model, xla=args.xla, max_batch_size=max(args.batches))
    network = tf.function(lambda x: model(x, training=False), jit_compile=args.xla)
    means = np.asarray(config.means, np.float32)
    result: dict[str, Any] = {
        "model_dir": path, "source": source, "architecture": config.name, "input_size": config.input_size,
        "conv_macs_per_image": macs, "gflop_per_image": gflop, "xla": args.xla,
        "decode_resize_ms": decode_times_ms(detector, jpegs, args.min_time_s),
        "detector": [], "network": [],
    }  # fmt: skip
    print(f"\n== {name}: {source}; {gflop:.2f} GFLOP/image; decode+resize ms {result['decode_resize_ms']}")
    for batch in args.batches:
        images, hw = resized_batch(detector, jpegs, batch)
        t0 = time.perf_counter()
        detector.run_batch(images, hw)  # traces this bucket
        trace_s = time.perf_counter() - t0
        times, busy = time_calls_cpu(
            lambda i=images, h=hw: detector.run_batch(i, h), args.min_time_s, args.min_iters
        )
        det = {**batch_stats(times, batch, gflop, peak_gflops), "first_call_s": trace_s, **busy}
        result["detector"].append(det)

        x = tf.constant(np.stack(images) - means)  # built once, outside the timed calls
        network(x)["loc"].numpy()
        times, busy = time_calls_cpu(lambda x=x: network(x)["loc"].numpy(), args.min_time_s, args.min_iters)
        net = {**batch_stats(times, batch, gflop, peak_gflops), **busy}
        result["network"].append(net)
        print(
            f"  batch {batch:3d}: detector {det['images_per_s']:8.2f} img/s ({det['gflops']:7.1f} GFLOP/s), "
            f"network {net['images_per_s']:8.2f} img/s ({net['gflops']:7.1f} GFLOP/s); cores used"
            f" {det['process_cores_used']:.2f}/{net['process_cores_used']:.2f}"
            f", load {net['load_average_1m']:.1f}",
            flush=True,
        )
    return result


MODEL_TITLES = {"ssd300": "SSD300-VGG16", "demo": "Demo model"}


def markdown(data: dict) -> str:
    """The peak, one table per model (``run_batch`` vs network alone by batch) and decode + resize times."""
    peak = data["peak"]
    parts = [f"Float32 `tf.matmul` {peak['n']}^2: {peak['gflops_best']:.1f} GFLOP/s (best call)."]
    headers = ["batch", "run_batch img/s", "ms/batch", "GFLOP/s", "% peak", "network img/s", "GFLOP/s",
               "% peak", "post-proc share %"]  # fmt: skip
    for name, m in data["models"].items():
        rows = []
        for det, net in zip(m["detector"], m["network"], strict=True):
            rows.append([
                det["batch"], det["images_per_s"], det["latency_ms_median"], det["gflops"],
                100 * det["fraction_of_peak"], net["images_per_s"], net["gflops"],
                100 * net["fraction_of_peak"], 100 * (1 - det["images_per_s"] / net["images_per_s"]),
            ])  # fmt: skip
        title = MODEL_TITLES.get(name, name)
        xla = ", XLA" if m["xla"] else ""
        parts.append(f"{title} ({m['source']}, {m['gflop_per_image']:.2f} GFLOP/image{xla}):")
        parts.append(fmt_table(headers, rows))
    decode = next(iter(data["models"].values()))["decode_resize_ms"]
    sizes = ", ".join(f"{ms:.1f} ms ({size})" for size, ms in decode.items())
    parts.append(f"Decode + resize per image (`decode_image` + `Detector.resize`): {sizes}.")
    return "\n\n".join(parts)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--batches", type=parse_ints, default=[1, 4, 8, 16, 32])
    parser.add_argument("--min_time_s", type=float, default=2.0, help="timed seconds per measurement")
    parser.add_argument("--min_iters", type=int, default=2, help="timed calls per measurement, at least")
    parser.add_argument("--matmul_n", type=int, default=2048)
    parser.add_argument("--xla", action="store_true", help="compile with XLA (the server's --xla)")
    parser.add_argument("--out_dir", type=Path, default=OUT_DIR)
    parser.add_argument("--out", type=Path, default=None, help="JSON (default OUT_DIR/raw_model.json)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out or args.out_dir / "raw_model.json"
    data: dict[str, Any] = {"machine": machine_info(), "settings": vars(args).copy(), "models": {}}
    data["peak"] = matmul_peak_gflops(args.matmul_n, max(args.min_time_s, 0.5))
    print(f"float32 matmul peak {data['peak']['gflops_best']:.1f} GFLOP/s")
    jpegs = make_test_jpegs()
    for name in args.models.split(","):
        data["models"][name] = bench_model(name, args, data["peak"]["gflops_best"], jpegs)
        write_json(out, data)
    print("\n" + markdown(data))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
