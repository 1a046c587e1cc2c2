"""What ``--jpeg_draft`` (JPEG decode at 1/2, 1/4 or 1/8 scale) does to detections.

Two measurements, both decoding the same JPEG bytes twice (full size and with draft) through the server's
own code (:func:`predictor.serving.images.decode_image_reduced` then ``Detector.resize``), boxes always in the
original image's pixels:

1. **SSD300-VGG16 with seeded random weights** (``bench/common.py``'s benchmark model, the seed
   checkpoint): detections with and without draft on upscaled held-out shapes scenes. Boxes are matched
   greedily (same class, IoU >= 0.5, best score first); reported: share of boxes matched both ways, median
   and 5th-percentile IoU of matched pairs, median and 95th-percentile absolute score difference.
2. **The demo model's COCO mAP** on held-out shapes images (``EVAL_SEED``, never trained on) upscaled
   (bicubic) so the shorter side is ``--short_side`` (1080 by default: 1080p-like, so draft triggers at
   1/2 scale for a 300 px network) and saved as JPEG quality 90; ground-truth boxes scaled alike.
   The same upscaled JPEGs are evaluated full-size and with draft, so the only difference is draft.

Tolerance (the default is on only if both hold): demo mAP@[.5:.95] and AP@0.5 within 0.01 absolute,
and for SSD300 >= 90 % of boxes matched with median IoU >= 0.9.

``python -m bench.draft_effect [--images 200]`` -> table + ``bench/out/draft_effect.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import OUT_DIR, fmt_table, machine_info, model_dir, upscaled_jpeg, write_json

MAP_TOLERANCE = 0.01
MIN_MATCHED = 0.90
MIN_MEDIAN_IOU = 0.90


def detect_jpegs(detector: Any, jpegs: list[bytes], draft: bool, score_threshold: float | None) -> list:
    """Decode (full or draft) + resize like the server, run in batches; detections in original pixels."""
    from predictor.serving.images import ImageLimits, decode_image_reduced
    from predictor.ssd import split_detections

    s = detector.input_size
    out = []
    for start in range(0, len(jpegs), 8):
        chunk = jpegs[start : start + 8]
        decoded = [decode_image_reduced(j, ImageLimits(), draft_size=s if draft else None) for j in chunk]
        rows = np.empty((len(chunk), s, s, 3), np.float32)
        for i, d in enumerate(decoded):
            detector.resize(d.pixels, out=rows[i])
        hw = np.asarray([d.original_hw for d in decoded], np.float32)
        out += split_detections(detector.run_batch(rows, hw, score_threshold))
    return out


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of xyxy boxes ``a [n, 4]`` and ``b [m, 4]`` -> ``[n, m]``."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=-1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=-1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def match(full: Any, draft: Any, min_iou: float = 0.5) -> tuple[list[float], list[float], int, int]:
    """Greedy same-class matching (highest full score first): IoUs, |score deltas|, matched, total."""
    ious, deltas, used = [], [], set()
    m = iou_matrix(full.boxes, draft.boxes) if len(full.scores) and len(draft.scores) else None
    for i in np.argsort(-full.scores):
        if m is None:
            break
        candidates = [
            (m[i, j], j)
            for j in range(len(draft.scores))
            if j not in used and draft.classes[j] == full.classes[i] and m[i, j] >= min_iou
        ]
        if candidates:
            iou, j = max(candidates)
            used.add(j)
            ious.append(float(iou))
            deltas.append(abs(float(full.scores[i]) - float(draft.scores[j])))
    return ious, deltas, len(ious), len(full.scores) + len(draft.scores) - len(ious)


def ssd300_effect(args: argparse.Namespace) -> dict[str, Any]:
    from predictor.datasets.shapes import EVAL_SEED, generate_sample
    from predictor.ssd import Detector

    path, source = model_dir("ssd300", args.out_dir)
    detector = Detector.from_dir(str(path), max_batch_size=8)
    jpegs = [
        upscaled_jpeg(generate_sample(EVAL_SEED, i).image, args.short_side)[0] for i in range(args.ssd_images)
    ]
    full = detect_jpegs(detector, jpegs, False, None)
    draft = detect_jpegs(detector, jpegs, True, None)
    ious: list[float] = []
    deltas: list[float] = []
    matched = union = 0
    for f, d in zip(full, draft, strict=True):
        i, s, m, u = match(f, d)
        ious += i
        deltas += s
        matched += m
        union += u
    return {
        "model": source,
        "images": len(jpegs),
        "detections_per_image_full": float(np.mean([len(f.scores) for f in full])),
        "detections_per_image_draft": float(np.mean([len(d.scores) for d in draft])),
        "matched_share": matched / union if union else 1.0,
        "iou_median": float(np.median(ious)) if ious else None,
        "iou_p5": float(np.percentile(ious, 5)) if ious else None,
        "score_delta_median": float(np.median(deltas)) if deltas else None,
        "score_delta_p95": float(np.percentile(deltas, 95)) if deltas else None,
    }


def demo_map_effect(args: argparse.Namespace) -> dict[str, Any]:
    from predictor.datasets.coco import samples_to_coco
    from predictor.datasets.shapes import CLASS_NAMES, EVAL_SEED, generate_sample
    from predictor.ssd import Detector
    from predictor.tools.coco_eval import coco_evaluate, detections_to_coco
    from predictor.tools.evaluate import EVAL_SCORE_THRESHOLD

    path, source = model_dir("demo", args.out_dir)
    detector = Detector.from_dir(str(path), max_batch_size=8)
    samples, jpegs = [], []
    for i in range(args.images):
        sample = generate_sample(EVAL_SEED, i)
        data, scale = upscaled_jpeg(sample.image, args.short_side)
        jpegs.append(data)
        samples.append(sample._replace(boxes=np.asarray(sample.boxes, np.float32) * scale))
    gt = samples_to_coco(samples, CLASS_NAMES, image_ids=list(range(len(samples))))
    result: dict[str, Any] = {"model": source, "images": len(samples), "short_side": args.short_side}
    for name, draft in (("full", False), ("draft", True)):
        dets = detect_jpegs(detector, jpegs, draft, EVAL_SCORE_THRESHOLD)
        coco = []
        for i, d in enumerate(dets):
            coco += detections_to_coco(i, d.boxes, d.scores, d.classes)
        metrics = coco_evaluate(gt, coco, class_names=CLASS_NAMES, max_dets=detector.max_detections)
        result[name] = {"mAP": metrics["mAP"], "AP50": metrics["AP50"]}
    return result


def within_tolerance(data: dict[str, Any]) -> bool:
    """Draft keeps the demo's mAP and AP@0.5 within :data:`MAP_TOLERANCE` and SSD300's boxes matched."""
    demo, ssd = data["demo"], data["ssd300"]
    return (
        abs(demo["full"]["mAP"] - demo["draft"]["mAP"]) <= MAP_TOLERANCE
        and abs(demo["full"]["AP50"] - demo["draft"]["AP50"]) <= MAP_TOLERANCE
        and ssd["matched_share"] >= MIN_MATCHED
        and (ssd["iou_median"] or 0) >= MIN_MEDIAN_IOU
    )


def markdown(data: dict[str, Any]) -> str:
    """Full vs draft decode: the demo's mAP / AP@0.5, SSD300's detections and how its boxes match."""
    demo, ssd = data["demo"], data["ssd300"]
    rows = [
        [f"demo, {demo['images']} held-out shapes images upscaled to a {demo['short_side']} px shorter side, "
         "mAP@[.5:.95] / AP@0.5",
         *(f"{demo[k]['mAP']:.3f} / {demo[k]['AP50']:.3f}" for k in ("full", "draft"))],
        [f"SSD300 seeded random weights, {ssd['images']} such images: detections per image",
         f"{ssd['detections_per_image_full']:.1f}", f"{ssd['detections_per_image_draft']:.1f}"],
    ]  # fmt: skip

    def num(v: float | None, f: str = ".3f") -> str:
        return "-" if v is None else format(v, f)

    verdict = "within" if within_tolerance(data) else "not within"
    return fmt_table(["model, images", "full", "draft"], rows) + (
        f"\n\nSSD300 full vs draft: {100 * ssd['matched_share']:.0f}% of boxes matched (same class, "
        f"IoU >= 0.5), matched IoU median {num(ssd['iou_median'])} (5th percentile {num(ssd['iou_p5'])}), "
        f"score change median {num(ssd['score_delta_median'])} (95th percentile "
        f"{num(ssd['score_delta_p95'])}): {verdict} the tolerance (mAP and AP@0.5 within {MAP_TOLERANCE}, "
        f">= {MIN_MATCHED:.0%} boxes matched, median IoU >= {MIN_MEDIAN_IOU})."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200, help="held-out images for the demo mAP")
    parser.add_argument("--ssd_images", type=int, default=16, help="images for the SSD300 comparison")
    parser.add_argument("--short_side", type=int, default=1080, help="shorter side after upscaling")
    parser.add_argument("--out_dir", type=Path, default=OUT_DIR)
    args = parser.parse_args(argv)
    data: dict[str, Any] = {"machine": machine_info(), "settings": vars(args).copy()}
    data["demo"] = demo_map_effect(args)
    write_json(args.out_dir / "draft_effect.json", data)
    data["ssd300"] = ssd300_effect(args)
    write_json(args.out_dir / "draft_effect.json", data)
    data["within_tolerance"] = within_tolerance(data)
    write_json(args.out_dir / "draft_effect.json", data)
    print("\n" + markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
