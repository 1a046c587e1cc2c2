"""The whole detector exported to ONNX (``ssd-export onnx``) against the TensorFlow Detector on the CPU.

For each model: export (seconds, file size, nodes, opset), then on the same uint8 images at the network
size (random pixels, image sizes (S, S), the model's thresholds except a low score threshold so that
NMS has work) ORT's agreement with TF, and the time of one call of each at every batch size. TF is
:meth:`Detector.run_batch` (the serving function, no XLA), ORT an ``InferenceSession`` on the CPU with
all graph optimisations and intra-op threads = all cores. Detections are paired as sets
(:func:`predictor.ssd.onnx_export.unmatched`): with random weights, scores equal up to float rounding
swap ranks, which the same-rank columns show.

``python -m bench.onnx_detector [--models demo,ssd300] [--batches 1,8]`` -> table + JSON
(``bench/out/onnx_detector.json``). Needs a quiet machine for the timings to mean anything.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import OUT_DIR, machine_info, model_dir, parse_ints, time_calls_cpu, write_json


def agreement(ours: dict, ref: dict) -> dict[str, Any]:
    """Counts equal? Detections without a partner (same class, box within 1 px, score within 1e-3, as
    sets); the largest box and score differences between the partners at equal rank."""
    from predictor.ssd.onnx_export import unmatched

    n = np.minimum(ours["num_detections"], ref["num_detections"])
    valid = np.arange(ours["detection_scores"].shape[1])[None, :] < n[:, None]
    box = np.abs(ours["detection_boxes"] - ref["boxes"]).max(-1)
    return {
        "same_counts": bool((ours["num_detections"] == ref["num_detections"]).all()),
        "detections": int(ref["num_detections"].sum()),
        "unmatched": int(sum(unmatched(ours, ref))),
        "rank_class_differences": int((valid & (ours["detection_classes"] != ref["classes"])).sum()),
        "max_box_diff_px_same_rank": float(box[valid].max(initial=0)),
        "max_score_diff_same_rank": float(
            np.abs(ours["detection_scores"] - ref["scores"])[valid].max(initial=0)
        ),
    }


def bench_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    import onnxruntime as ort

    from predictor.ssd import Detector
    from predictor.ssd.onnx_export import export_onnx, ort_feeds

    path, source = model_dir(name, args.out_dir)
    detector = Detector.from_dir(str(path), max_batch_size=max(args.batches))
    t0 = time.perf_counter()
    exported = export_onnx(detector, args.out_dir / "onnx" / f"{name}_detector.onnx")
    convert_s = time.perf_counter() - t0
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = os.cpu_count() or 1
    session = ort.InferenceSession(str(exported.path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    result: dict[str, Any] = {
        "model_dir": path, "source": source, "onnx_bytes": exported.bytes, "opset": exported.opset,
        "nodes": exported.nodes, "convert_s": convert_s, "onnxruntime": ort.__version__, "rows": [],
    }  # fmt: skip
    print(f"\n== {name}: exported in {convert_s:.1f} s, {exported.bytes / 1e6:.1f} MB, {exported.nodes} "
          f"nodes, opset {exported.opset}")  # fmt: skip
    rng = np.random.default_rng(0)
    s = detector.input_size
    for batch in args.batches:
        images = rng.integers(0, 256, (batch, s, s, 3), dtype=np.uint8)
        feeds = ort_feeds(detector, images, score_threshold=args.score_threshold)
        floats = images.astype(np.float32)

        def run_tf(feeds=feeds, floats=floats) -> dict:
            return detector.run_batch(
                floats, feeds["image_hw"], feeds["score_threshold"], feeds["max_detections"],
                feeds["nms_threshold"], feeds["class_mask"],
            )  # fmt: skip

        def run_ort(feeds=feeds) -> dict:
            return dict(zip(names, session.run(None, feeds), strict=True))

        row: dict[str, Any] = {"batch": batch, **agreement(run_ort(), run_tf())}
        for label, fn in (("tf", run_tf), ("ort", run_ort)):
            times, busy = time_calls_cpu(fn, args.min_time_s, args.min_iters)
            row[f"{label}_ms_median"] = 1e3 * sorted(times)[len(times) // 2]
            row[f"{label}_images_per_s"] = batch * len(times) / sum(times)
            row[f"{label}_load_average_1m"] = busy["load_average_1m"]
        result["rows"].append(row)
        print(f"  batch {batch:3d}: TF {row['tf_ms_median']:8.1f} ms, ORT {row['ort_ms_median']:8.1f} ms "
              f"(ORT/TF time {row['ort_ms_median'] / row['tf_ms_median']:.2f}); "
              f"{row['detections']} detections, "
              f"same counts {row['same_counts']}, unmatched {row['unmatched']}, same rank: "
              f"{row['rank_class_differences']} class differences, max |box| "
              f"{row['max_box_diff_px_same_rank']:.2e} px, max |score| "
              f"{row['max_score_diff_same_rank']:.2e}; load "
              f"{row['ort_load_average_1m']:.1f}", flush=True)  # fmt: skip
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="demo,ssd300")
    parser.add_argument("--batches", type=parse_ints, default=[1, 8])
    parser.add_argument("--score_threshold", type=float, default=0.05)
    parser.add_argument("--min_time_s", type=float, default=3.0)
    parser.add_argument("--min_iters", type=int, default=3)
    parser.add_argument("--out_dir", type=Path, default=OUT_DIR)
    args = parser.parse_args(argv)
    data = {"machine": machine_info(), "models": {m: bench_model(m, args) for m in args.models.split(",")}}
    print(f"wrote {write_json(args.out_dir / 'onnx_detector.json', data)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
