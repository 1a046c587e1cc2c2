"""Evaluate a detector with COCO metrics: ``python -m predictor.tools.evaluate [--model_dir DIR]``.

By default: the shipped demo model on 500 held-out synthetic images generated with
``predictor.datasets.shapes.EVAL_SEED`` (never used for training); ``--style photo`` uses the photo-like
held-out set instead (``PHOTO_EVAL_SEED``: procedural textures, blur, noise, low JPEG qualities, small and
border-cut shapes). ``--coco-annotations`` +
``--coco-images`` evaluate on any COCO-format dataset instead. Prints a table and writes
``metrics.json`` and ``pr_curves.png`` to ``--out``.

``--operating-points 0.2,0.3,0.4,0.5`` instead measures precision and recall (IoU 0.5, same class) with
the detector run at each of those score thresholds, and writes ``operating_points.json``: the model
card's operating-threshold tables (``make model-card``). It also runs the detector once at
:data:`SWEEP_MIN_SCORE` and, from those detections (:class:`~predictor.tools.coco_eval.MatchedDetections`),
gives precision/recall/F1 overall and per class at the model's default score threshold and at the
threshold of :data:`SWEEP_THRESHOLDS` that maximises F1 (overall, and for each class its own).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from predictor.datasets.coco import samples_to_coco
from predictor.ssd.detector import Detector
from predictor.tools.coco_eval import (
    MatchedDetections,
    coco_evaluate,
    detections_to_coco,
    format_table,
    operating_point,
    plot_pr_curves,
    summary,
)

log = logging.getLogger("predictor.tools.evaluate")

#: Score threshold for mAP evaluation: low, so the precision-recall curve is complete (balancap: 0.01).
EVAL_SCORE_THRESHOLD = 0.01
#: The operating-point sweep: one detector run at this score, then thresholds 0.05, 0.06, ..., 0.95.
SWEEP_MIN_SCORE = 0.05
SWEEP_THRESHOLDS = tuple(round(0.05 + 0.01 * i, 2) for i in range(91))


def evaluate_detector(
    detector: Detector,
    samples: Sequence,
    class_names: Sequence[str],
    category_ids: Sequence[int] | None = None,
    image_ids: Sequence[int] | None = None,
    batch_size: int = 16,
    score_threshold: float = EVAL_SCORE_THRESHOLD,
) -> dict[str, Any]:
    """Run ``detector`` over ``samples`` (``image``, ``boxes`` xyxy px, ``labels``) and COCO-evaluate it."""
    ids = list(range(len(samples))) if image_ids is None else list(image_ids)
    gt = samples_to_coco(samples, class_names, image_ids=ids, category_ids=category_ids)
    results: list[dict] = []
    for start in range(0, len(samples), batch_size):
        chunk = [samples[i] for i in range(start, min(start + batch_size, len(samples)))]
        dets = detector.detect([s.image for s in chunk], score_threshold=score_threshold)
        for offset, d in enumerate(dets):
            results += detections_to_coco(ids[start + offset], d.boxes, d.scores, d.classes, category_ids)
    return coco_evaluate(gt, results, class_names=class_names, max_dets=detector.max_detections)


def operating_points(
    detector: Detector, samples: Sequence, thresholds: Sequence[float], batch_size: int = 16
) -> list[dict[str, Any]]:
    """Precision/recall (:func:`predictor.tools.coco_eval.operating_point`) with the detector run at each
    score threshold (the serving semantics: strict ``>``, NMS and caps as configured)."""
    truth = [(s.boxes, s.labels) for s in samples]
    rows = []
    for threshold in thresholds:
        dets = []
        for start in range(0, len(samples), batch_size):
            chunk = [s.image for s in samples[start : start + batch_size]]
            found = detector.detect(chunk, score_threshold=threshold)
            dets += [(d.boxes, d.scores, d.classes) for d in found]
        rows.append({"score_threshold": threshold, **operating_point(truth, dets)})
    return rows


def _detect_all(detector: Detector, samples: Sequence, threshold: float, batch_size: int) -> list[tuple]:
    """``(boxes, scores, classes)`` per sample with the detector run at ``threshold``."""
    dets = []
    for start in range(0, len(samples), batch_size):
        found = detector.detect(
            [s.image for s in samples[start : start + batch_size]], score_threshold=threshold
        )
        dets += [(d.boxes, d.scores, d.classes) for d in found]
    return dets


def threshold_sweep(
    detector: Detector,
    samples: Sequence,
    class_names: Sequence[str],
    batch_size: int = 16,
    runs: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """Precision/recall/F1 overall and per class (names) at the detector's default score threshold and
    at the F1-maximising threshold of :data:`SWEEP_THRESHOLDS` (overall: one threshold for all classes;
    ``per_class_max_f1``: each class its own). ``runs``: :func:`operating_points` rows of the same
    samples; ``agrees_with_runs`` says whether the sweep counts the same true positives and detections
    at their thresholds (it does unless the detector's top-k or per-image cap dropped some)."""
    truth = [(s.boxes, s.labels) for s in samples]
    matched = MatchedDetections(truth, _detect_all(detector, samples, SWEEP_MIN_SCORE, batch_size))
    labels = range(1, len(class_names))

    def per_class(threshold: float) -> dict[str, Any]:
        return {class_names[c]: matched.at(threshold, c) for c in labels}

    default = float(detector.score_threshold)
    best = matched.max_f1(SWEEP_THRESHOLDS)
    agrees = all(
        (matched.at(r["score_threshold"])["true_positives"], matched.at(r["score_threshold"])["detections"])
        == (r["true_positives"], r["detections"])
        for r in runs
    )
    return {
        "agrees_with_runs": agrees,
        "min_score": SWEEP_MIN_SCORE,
        "thresholds": [SWEEP_THRESHOLDS[0], SWEEP_THRESHOLDS[-1], 0.01],
        "default": {
            "score_threshold": default,
            "overall": matched.at(default),
            "per_class": per_class(default),
        },
        "max_f1": {
            "score_threshold": best["score_threshold"],
            "overall": best,
            "per_class": per_class(best["score_threshold"]),
        },
        "per_class_max_f1": {class_names[c]: matched.max_f1(SWEEP_THRESHOLDS, c) for c in labels},
    }


def measured_on() -> dict[str, str]:
    """When and where a result was measured (recorded beside every number in the JSON files)."""
    import os

    import tensorflow as tf

    from predictor.serving.resources import cpu_model_name

    cpu = cpu_model_name()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{cpu}, {cores} cores, TensorFlow {tf.__version__}",
    }


def _thresholds(raw: str) -> list[float]:
    try:
        values = [float(v) for v in raw.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("a comma-separated list of numbers in [0, 1)") from None
    if not values or not all(0 <= v < 1 for v in values):
        raise argparse.ArgumentTypeError("a comma-separated list of numbers in [0, 1)")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m predictor.tools.evaluate", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--model_dir", help="model directory (default: the shipped demo model)")
    p.add_argument("--count", type=int, default=500, help="held-out synthetic images")
    p.add_argument(
        "--style",
        choices=("plain", "photo"),
        default="plain",
        help="held-out synthetic set: plain (EVAL_SEED) or photo-like (PHOTO_EVAL_SEED)",
    )
    p.add_argument("--seed", type=int, help="synthetic data seed (default: the style's held-out seed)")
    p.add_argument("--start", type=int, default=0, help="index of the first held-out synthetic image")
    p.add_argument("--coco-annotations", help="COCO annotation JSON (with --coco-images)")
    p.add_argument("--coco-images", help="image folder of the COCO dataset")
    p.add_argument("--out", default="out/eval", help="output folder for metrics.json and pr_curves.png")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--score-threshold", type=float, default=EVAL_SCORE_THRESHOLD)
    p.add_argument(
        "--operating-points",
        type=_thresholds,
        metavar="T1,T2,...",
        help="instead of COCO mAP: precision and recall at these score thresholds",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    from predictor.models import DEMO_MODEL_DIR

    model_dir = args.model_dir or str(DEMO_MODEL_DIR)
    detector = Detector.from_dir(model_dir, max_batch_size=args.batch_size)
    category_ids = image_ids = None
    if args.coco_annotations:
        from predictor.datasets.coco import CocoDataset

        data = CocoDataset(args.coco_annotations, args.coco_images)
        samples = [data[i] for i in range(len(data))]
        class_names, category_ids, image_ids = data.class_names, data.category_ids, data.image_ids
        source = {"kind": "coco", "annotations": args.coco_annotations, "count": len(samples)}
    else:
        from predictor.datasets.shapes import CLASS_NAMES, EVAL_SEED, PHOTO_EVAL_SEED, heldout_sample

        seed = args.seed if args.seed is not None else PHOTO_EVAL_SEED if args.style == "photo" else EVAL_SEED
        samples = [heldout_sample(args.style, i, seed) for i in range(args.start, args.start + args.count)]
        class_names = CLASS_NAMES
        source = {
            "kind": "shapes",
            "style": args.style,
            "seed": seed,
            "start": args.start,
            "count": args.count,
        }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.operating_points:
        return _write_operating_points(detector, samples, class_names, args, model_dir, source, out)
    t0 = time.time()
    result = evaluate_detector(
        detector, samples, class_names, category_ids, image_ids, args.batch_size, args.score_threshold
    )
    elapsed = time.time() - t0
    print(f"model: {model_dir}\ndata: {source}\n")
    print(format_table(result))
    shown = args.model_dir or "the shipped demo model (predictor/models/demo)"
    report = {
        "model_dir": shown,
        "data": source,
        "seconds": round(elapsed, 1),
        "nms_threshold": detector.nms_threshold,
        "measured": measured_on(),
        **summary(result),
    }
    (out / "metrics.json").write_text(json.dumps(report, indent=2))
    plot_pr_curves(result, out / "pr_curves.png")
    print(f"\nwrote {out / 'metrics.json'} and {out / 'pr_curves.png'} ({elapsed:.1f}s)")
    return 0


def _write_operating_points(
    detector: Detector,
    samples: Sequence,
    class_names: Sequence[str],
    args: argparse.Namespace,
    model_dir: str,
    source: dict,
    out: Path,
) -> int:
    rows = operating_points(detector, samples, args.operating_points, args.batch_size)
    sweep = threshold_sweep(detector, samples, class_names, args.batch_size, rows)
    print(f"model: {model_dir}\ndata: {source}\n")
    print("threshold  precision  recall  detections  ground truth")
    for r in rows:
        print(
            f"{r['score_threshold']:9.2f}  {r['precision']:9.3f}  {r['recall']:6.3f}  "
            f"{r['detections']:10d}  {r['ground_truth']:12d}"
        )
    for key in ("default", "max_f1"):
        o = sweep[key]["overall"]
        print(
            f"{key} threshold {sweep[key]['score_threshold']:g}: precision {o['precision']:.3f}, "
            f"recall {o['recall']:.3f}, F1 {o['f1']:.3f}"
        )
    shown = args.model_dir or "the shipped demo model (predictor/models/demo)"
    report = {
        "model_dir": shown,
        "data": source,
        "measured": measured_on(),
        "nms_threshold": detector.nms_threshold,
        "iou_threshold": 0.5,
        "operating_points": rows,
        "sweep": sweep,
    }
    (out / "operating_points.json").write_text(json.dumps(report, indent=2))
    print(f"\nwrote {out / 'operating_points.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
