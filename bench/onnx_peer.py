"""ONNX Runtime peer: the same network and weights exported to ONNX, run with ONNX Runtime on the CPU.

Export: the Keras network (loaded from the same model directory as ``bench.raw_model``) wrapped in a
``tf.function`` with input ``float32 [None, S, S, 3]`` (mean-subtracted RGB) and converted by
``tf2onnx.convert.from_function`` (tf2onnx 1.17, opset 17), then checked against the TF outputs. Run:
``CPUExecutionProvider``, all graph optimisations, intra-op threads = all cores, on the same batches
as the raw benchmark's ``network`` rows, so ``ours / ORT`` compares like with like (network only, no
post-processing).

``python -m bench.onnx_peer [--models ssd300,demo] [--batches 1,4,8,16,32]`` -> table + JSON.
"""

from __future__ import annotations

import argparse
import os
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
    model_dir,
    parse_ints,
    time_calls_cpu,
    write_json,
)

OPSET = 17


def export_onnx(model: Any, input_size: int, path: Path) -> dict[str, Any]:
    """Convert the Keras network to ONNX at ``path``; returns conversion facts."""
    import tensorflow as tf
    import tf2onnx

    spec = (tf.TensorSpec((None, input_size, input_size, 3), tf.float32, name="images"),)

    @tf.function(input_signature=spec)
    def network(x: tf.Tensor) -> dict[str, tf.Tensor]:
        out = model(x, training=False)
        return {"loc": out["loc"], "logits": out["logits"]}

    t0 = time.perf_counter()
    proto, _ = tf2onnx.convert.from_function(network, input_signature=spec, opset=OPSET)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(proto.SerializeToString())
    return {
        "onnx_path": path,
        "onnx_bytes": path.stat().st_size,
        "convert_s": time.perf_counter() - t0,
        "tf2onnx": tf2onnx.__version__,
        "opset": OPSET,
        "tf_function": network,
    }


def ort_session(path: Path, threads: int) -> Any:
    """An ONNX Runtime CPU session with all graph optimisations and ``threads`` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def bench_model(name: str, args: argparse.Namespace, peak_gflops: float) -> dict:
    """Export one model and time ONNX Runtime at every batch size."""
    import onnxruntime as ort

    from predictor.ssd import conv_macs, load_model

    path, source = model_dir(name, args.out_dir)
    config, model = load_model(path)
    gflop = 2 * conv_macs(model) / 1e9
    s = config.input_size
    facts = export_onnx(model, s, args.out_dir / "onnx" / f"{name}.onnx")
    tf_network = facts.pop("tf_function")
    session = ort_session(facts["onnx_path"], args.threads)
    input_name = session.get_inputs()[0].name
    output_names = [o.name for o in session.get_outputs()]
    rng = np.random.default_rng(0)
    check = rng.uniform(-120, 130, (2, s, s, 3)).astype(np.float32)
    ort_out = dict(zip(output_names, session.run(None, {input_name: check}), strict=True))
    tf_out = tf_network(check)
    max_diff = {k: float(np.abs(ort_out[k] - tf_out[k].numpy()).max()) for k in ("loc", "logits")}
    result: dict[str, Any] = {
        "model_dir": path, "source": source, "gflop_per_image": gflop, "onnxruntime": ort.__version__,
        "providers": session.get_providers(), "intra_op_threads": args.threads,
        "max_abs_diff_vs_tf": max_diff, **facts, "rows": [],
    }  # fmt: skip
    print(f"\n== {name}: exported in {facts['convert_s']:.1f} s, {facts['onnx_bytes'] / 1e6:.1f} MB, "
          f"max |ORT - TF| {max_diff}")  # fmt: skip
    for batch in args.batches:
        x = rng.uniform(-120, 130, (batch, s, s, 3)).astype(np.float32)
        session.run(None, {input_name: x})
        times, busy = time_calls_cpu(
            lambda x=x: session.run(None, {input_name: x}), args.min_time_s, args.min_iters
        )
        row = {**batch_stats(times, batch, gflop, peak_gflops), **busy}
        result["rows"].append(row)
        print(
            f"  batch {batch:3d}: ORT {row['images_per_s']:8.2f} img/s ({row['gflops']:7.1f} GFLOP/s);"
            f" cores used {row['process_cores_used']:.2f}, load {row['load_average_1m']:.1f}",
            flush=True,
        )
    return result


def markdown(onnx: dict) -> str:
    """``ours / ORT`` per model and batch (ours = the raw benchmark's network-alone rows, copied into the
    JSON as ``ours_network`` when ``raw_model.json`` was there)."""
    rows, diffs = [], []
    for name, m in onnx["models"].items():
        ours = {r["batch"]: r for r in onnx.get("ours_network", {}).get(name, [])}
        diffs.append(f"{name} {max(m['max_abs_diff_vs_tf'].values()):.0e}")
        for r in m["rows"]:
            o = ours.get(r["batch"])
            ratio = o["images_per_s"] / r["images_per_s"] if o else None
            rows.append([name, r["batch"], r["images_per_s"], r["gflops"], o and o["images_per_s"], ratio])
    table = fmt_table(
        ["model", "batch", "ORT img/s", "ORT GFLOP/s", "ours (network) img/s", "ours / ORT"], rows
    )
    return f"Max |ORT - TF| on the same input: {', '.join(diffs)}.\n\n{table}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--batches", type=parse_ints, default=[1, 4, 8, 16, 32])
    parser.add_argument("--min_time_s", type=float, default=2.0)
    parser.add_argument("--min_iters", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="ORT intra-op threads")
    parser.add_argument("--out_dir", type=Path, default=OUT_DIR)
    parser.add_argument("--out", type=Path, default=None, help="JSON (default OUT_DIR/onnx_peer.json)")
    parser.add_argument(
        "--raw", type=Path, default=None, help="raw_model JSON for ours/ORT (default OUT_DIR's)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import json

    args = parse_args(argv)
    out = args.out or args.out_dir / "onnx_peer.json"
    raw_path = args.raw or args.out_dir / "raw_model.json"
    raw = json.loads(raw_path.read_text()) if raw_path.is_file() else None
    peak = (raw or {}).get("peak", {}).get("gflops_best")
    if peak is None:
        from bench.common import matmul_peak_gflops

        peak = matmul_peak_gflops(2048, max(args.min_time_s, 0.5))["gflops_best"]
    data: dict[str, Any] = {"machine": machine_info(), "settings": vars(args).copy(), "peak_gflops": peak}
    data["ours_network"] = {name: m["network"] for name, m in (raw or {}).get("models", {}).items()}
    data["models"] = {}
    for name in args.models.split(","):
        data["models"][name] = bench_model(name, args, peak)
        write_json(out, data)
    print("\n" + markdown(data))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
