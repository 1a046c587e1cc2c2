"""Evaluate a detector with COCO metrics: ``python -m predictor.evaluate [--model_dir DIR]``.

By default: the shipped demo model on 500 held-out synthetic images generated with
``predictor.datasets.shapes.EVAL_SEED`` (never used for training). ``--coco-annotations`` +
``--coco-images`` evaluate on any COCO-format dataset instead. Prints a table and writes
``metrics.json`` and ``pr_curves.png`` to ``--out``.
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
from predictor.metrics import coco_evaluate, detections_to_coco, format_table, plot_pr_curves, summary
from predictor.ssd.detector import Detector

log = logging.getLogger("predictor.evaluate")

#: Score threshold for mAP evaluation: low, so the precision-recall curve is complete (balancap: 0.01).
EVAL_SCORE_THRESHOLD = 0.01


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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m predictor.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--model_dir", help="model directory (default: the shipped demo model)")
    p.add_argument("--count", type=int, default=500, help="held-out synthetic images")
    p.add_argument("--seed", type=int, help="synthetic data seed (default: EVAL_SEED)")
    p.add_argument("--coco-annotations", help="COCO annotation JSON (with --coco-images)")
    p.add_argument("--coco-images", help="image folder of the COCO dataset")
    p.add_argument("--out", default="out/eval", help="output folder for metrics.json and pr_curves.png")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--score-threshold", type=float, default=EVAL_SCORE_THRESHOLD)
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
        from predictor.datasets.shapes import CLASS_NAMES, EVAL_SEED, generate_sample

        seed = EVAL_SEED if args.seed is None else args.seed
        samples = [generate_sample(seed, i) for i in range(args.count)]
        class_names = CLASS_NAMES
        source = {"kind": "shapes", "seed": seed, "count": args.count}
    t0 = time.time()
    result = evaluate_detector(
        detector, samples, class_names, category_ids, image_ids, args.batch_size, args.score_threshold
    )
    elapsed = time.time() - t0
    print(f"model: {model_dir}\ndata: {source}\n")
    print(format_table(result))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shown = args.model_dir or "the shipped demo model (predictor/models/demo)"
    report = {"model_dir": shown, "data": source, "seconds": round(elapsed, 1), **summary(result)}
    (out / "metrics.json").write_text(json.dumps(report, indent=2))
    plot_pr_curves(result, out / "pr_curves.png")
    print(f"\nwrote {out / 'metrics.json'} and {out / 'pr_curves.png'} ({elapsed:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
