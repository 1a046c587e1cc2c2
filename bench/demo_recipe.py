"""Measurements behind the demo model's training recipe (issue 32; numbers in its MODEL_CARD.md):

- ``generator``: images/s of the shapes generator, plain and photo-like style, on one core;
- ``anchors``: how many anchors each held-out object gets as a positive at matching IoU 0.5 and 0.4,
  by object size in the 300 px network input (``ssd_tiny`` anchors);
- ``sizes``: object sizes (sqrt of box area in the 300 px input) in the training stream as the network
  sees it (recipe v3's photo share, the trainer's augmentation with its seeds) against the plain held-out
  set: whether small shapes are rarer in training than in the evaluation;
- ``steps``: seconds per training step of 32 images for recipe variants (``name:photo:match:ema``),
  after a trace and 5 warm-up steps. Run it alone: ``flock /work/quiet.lock nice -n -15 ...``;
- ``localisation``: for a trained model (``--model_dir``), the share of plain held-out objects whose best
  same-class detection (score > 0.01) reaches IoU 0.5, 0.75 and 0.9, by object size (side over the
  image's shorter side): whether AP is limited by recall or by box precision;
- ``errors``: for trained models (positional model directories), on the first ``--count`` plain held-out
  images: AP@0.5, mAP@[.5:.95], per-class AP@0.5, the false positives ranked above the true positive
  that reaches recall 0.9 by kind (wrong class on an object, poor localisation, a part of another
  object, background, same-class duplicate) and the commonest wrong-class confusions with score > 0.2:
  how the recipe proxies of issue 32 compare (bench/RESULTS.md).

``python -m bench.demo_recipe generator --count 200``; ``... anchors --count 150``;
``... sizes --count 1500``;
``... steps --count 20 v1:0:0.5:0 v2:0.25:0.4:0.998``; ``... localisation --count 500 --model_dir DIR``;
``... errors --count 300 DIR [DIR ...]``.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time

import numpy as np


def generator_speed(count: int) -> None:
    """Images/s of :func:`generate_sample` and :func:`generate_photo_sample` (one process, one core)."""
    from predictor.datasets.shapes import generate_photo_sample, generate_sample

    for name, fn in (("plain", generate_sample), ("photo-like", generate_photo_sample)):
        fn(0, 10**6)  # first-use costs (the noise pool) outside the timing
        t = time.perf_counter()
        for i in range(count):
            fn(0, i)
        dt = time.perf_counter() - t
        print(f"{name}: {count} images in {dt:.2f} s = {count / dt:.1f} images/s", flush=True)


def _corners(anchors: np.ndarray) -> np.ndarray:
    """``(cy, cx, h, w)`` -> ``(xmin, ymin, xmax, ymax)``."""
    cy, cx, h, w = anchors.T
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[A, B]`` IoU of xyxy boxes."""
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def anchor_coverage(count: int) -> None:
    """Per size bucket of held-out objects (sqrt of box area in the 300 px input): share whose best anchor
    IoU is under 0.5 (only the forced match) and mean positive anchors at IoU 0.5 and 0.4."""
    from predictor.datasets.shapes import CLASS_NAMES, heldout_sample
    from predictor.ssd.anchors import generate_anchors
    from predictor.ssd.config import ssd_tiny

    anchors = _corners(generate_anchors(ssd_tiny(CLASS_NAMES)).astype(np.float64)) * 300.0
    for style in ("plain", "photo"):
        boxes = []
        for i in range(count):
            s = heldout_sample(style, i)
            h, w = s.image.shape[:2]
            boxes.append(s.boxes.astype(np.float64) / np.array([w, h, w, h]) * 300.0)
        b = np.concatenate(boxes)
        iou = _iou(b, anchors)
        best, at5, at4 = iou.max(axis=1), (iou >= 0.5).sum(axis=1), (iou >= 0.4).sum(axis=1)
        side = np.sqrt((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))
        for lo, hi in ((0, 16), (16, 32), (32, 64), (64, 301)):
            k = (side >= lo) & (side < hi)
            if k.any():
                print(
                    f"{style} {lo}-{hi} px: {int(k.sum())} objects, "
                    f"best IoU < 0.5: {np.mean(best[k] < 0.5):.2f}, "
                    f"positives at 0.5: {at5[k].mean():.1f}, at 0.4: {at4[k].mean():.1f}",
                    flush=True,
                )


#: Size bins (px in the 300 px input) of :func:`size_distribution`.
SIZE_BINS = (0, 12, 16, 20, 24, 32, 48, 64, 96, 128, 192, 301)


def size_distribution(count: int, photo_fraction: float = 0.25) -> dict[str, np.ndarray]:
    """Share of objects per :data:`SIZE_BINS` bin: ``train`` (the first ``count`` images of the training
    stream, ``ShapesDataset(0, ..., photo_fraction)`` through :func:`predictor.ssd.augment.augment` with
    the trainer's seeds and defaults) and ``heldout`` (the first ``count // 3`` plain held-out images,
    warped to the input as the detector does)."""
    import tensorflow as tf

    from predictor.datasets.shapes import CLASS_NAMES, ShapesDataset, heldout_sample
    from predictor.ssd.augment import augment
    from predictor.ssd.config import ssd_tiny
    from predictor.ssd.trainer import TrainConfig

    config, train = ssd_tiny(CLASS_NAMES), TrainConfig()
    size = config.input_size

    def sides(boxes: np.ndarray) -> np.ndarray:  # normalised [G, 4] (either corner order) -> px
        return np.sqrt(np.abs((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))) * size

    held, seen = [], []
    for i in range(count // 3):
        s = heldout_sample("plain", i)
        h, w = s.image.shape[:2]
        held.append(sides(np.asarray(s.boxes, np.float64).reshape(-1, 4) / [w, h, w, h]))
    source = ShapesDataset(train.seed, 10**9, photo_fraction=photo_fraction)
    for pos in range(count):  # the trainer's stream: position = sample index, seed [train.seed, pos]
        s = source[pos]
        h, w = s.image.shape[:2]
        b = np.asarray(s.boxes, np.float32).reshape(-1, 4)
        norm = np.stack([b[:, 1] / h, b[:, 0] / w, b[:, 3] / h, b[:, 2] / w], axis=1)
        _, boxes, _ = augment(
            tf.constant(s.image), tf.constant(norm), tf.constant(np.asarray(s.labels, np.int32).reshape(-1)),
            tf.constant([train.seed, pos], tf.int64), size, config.means, train.max_expand,
        )  # fmt: skip
        seen.append(sides(boxes.numpy().astype(np.float64)))
    out = {}
    bins = [f"{lo}-{hi} px" for lo, hi in itertools.pairwise(SIZE_BINS)]
    for name, parts in (("train", seen), ("heldout", held)):
        values = np.concatenate(parts)
        out[name] = np.histogram(values, SIZE_BINS)[0] / len(values)
        shares = ", ".join(f"{b} {v:.3f}" for b, v in zip(bins, out[name], strict=True))
        print(f"{name} ({len(values)} objects): {shares}", flush=True)
    return out


def step_time(count: int, variants: list[str]) -> None:
    """Seconds per step of batch 32 for each ``name:photo_fraction:match_iou:ema_decay``."""
    import keras

    from predictor.datasets.shapes import CLASS_NAMES, ShapesDataset
    from predictor.ssd.config import ssd_tiny
    from predictor.ssd.network import build_network
    from predictor.ssd.trainer import TrainConfig, Trainer

    for spec in variants:
        name, photo, match, ema = spec.split(":")
        keras.utils.set_random_seed(0)
        config = ssd_tiny(CLASS_NAMES)
        train = TrainConfig(
            steps=10**6, batch_size=32, learning_rate=3e-3, warmup_steps=100, checkpoint_every=10**6,
            match_iou=float(match), ema_decay=float(ema),
        )  # fmt: skip
        source = ShapesDataset(0, 10**7, photo_fraction=float(photo))
        with tempfile.TemporaryDirectory() as work:
            trainer = Trainer(config, build_network(config), train, work)
            trainer.fit(source, progress=False, max_steps=5, sample_index=lambda p: p)
            t = time.perf_counter()
            trainer.fit(source, progress=False, max_steps=count, sample_index=lambda p: p)
            dt = time.perf_counter() - t
        print(f"{name}: {count} steps in {dt:.1f} s = {dt / count:.3f} s/step ({spec})", flush=True)


def localisation(count: int, model_dir: str | None) -> None:
    from predictor.datasets.shapes import heldout_sample
    from predictor.models import DEMO_MODEL_DIR
    from predictor.ssd.detector import Detector

    detector = Detector.from_dir(str(model_dir or DEMO_MODEL_DIR), max_batch_size=16)
    rows = []  # (object side / shorter image side, best same-class IoU)
    samples = [heldout_sample("plain", i) for i in range(count)]
    for start in range(0, count, 16):
        chunk = samples[start : start + 16]
        found = detector.detect([s.image for s in chunk], score_threshold=0.01)
        for s, (boxes, _, classes) in zip(chunk, found, strict=True):
            truth = np.asarray(s.boxes, np.float32).reshape(-1, 4)
            side = np.sqrt((truth[:, 2] - truth[:, 0]) * (truth[:, 3] - truth[:, 1])) / min(s.image.shape[:2])
            for gt, label, size in zip(truth, s.labels, side, strict=True):
                same = np.asarray(boxes)[np.asarray(classes) == label]
                rows.append((size, float(_iou(gt[None], same).max()) if len(same) else 0.0))
    table = np.asarray(rows)
    print("object side   objects  IoU>=0.5  IoU>=0.75  IoU>=0.9")
    for lo, hi in ((0, 0.08), (0.08, 0.12), (0.12, 0.2), (0.2, 0.35), (0.35, 1.5)):
        sel = table[(table[:, 0] >= lo) & (table[:, 0] < hi), 1]
        shares = "  ".join(f"{np.mean(sel >= t):8.3f}" for t in (0.5, 0.75, 0.9))
        print(f"{lo:.2f}-{hi:.2f}    {len(sel):7d}  {shares}")


#: Kinds of false positive, in the order :func:`fp_kind` tests them.
FP_KINDS = ("wrong-class", "poor-loc", "part-other", "background", "dup-same")


def fp_kind(iou: np.ndarray, same: np.ndarray, matched: np.ndarray) -> str:
    """Why an unmatched detection is false: ``iou`` ``[G]`` with the image's objects, ``same`` ``[G]``
    (object has the detection's class), ``matched`` ``[G]`` (already taken by a higher score)."""
    if (same & matched & (iou >= 0.5)).any():
        return "dup-same"
    if (~same & (iou >= 0.5)).any():
        return "wrong-class"
    if (same & (iou >= 0.1)).any():
        return "poor-loc"
    if (iou >= 0.1).any():
        return "part-other"
    return "background"


def ranked_outcomes(truth: list, found: list) -> tuple[list[tuple[float, str]], int]:
    """Greedy IoU-0.5 same-class matching per image, highest score first (as COCO, one object per
    detection): ``([(score, "TP" or a :func:`fp_kind`)] by falling score, number of objects)``.
    ``truth``: ``(boxes [G, 4], labels [G])``; ``found``: ``(boxes [D, 4], scores [D], classes [D])``."""
    rows: list[tuple[float, str]] = []
    total = 0
    for (gt, labels), (boxes, scores, classes) in zip(truth, found, strict=True):
        gt = np.asarray(gt, np.float64).reshape(-1, 4)
        labels, boxes = np.asarray(labels), np.asarray(boxes, np.float64).reshape(-1, 4)
        total += len(gt)
        matched = np.zeros(len(gt), bool)
        ious = _iou(boxes, gt) if len(gt) else np.zeros((len(boxes), 0))
        for k in np.argsort(-np.asarray(scores), kind="stable"):
            same = labels == classes[k]
            free = np.where(same & ~matched & (ious[k] >= 0.5))[0]
            if len(free):
                matched[free[ious[k, free].argmax()]] = True
                rows.append((float(scores[k]), "TP"))
            else:
                rows.append((float(scores[k]), fp_kind(ious[k], same, matched)))
    rows.sort(key=lambda r: -r[0])
    return rows, total


def false_positives_above(rows: list[tuple[float, str]], total: int, recall: float) -> dict[str, int]:
    """False positives by kind ranked above the true positive that brings recall to ``recall``."""
    need, tp, counts = int(np.ceil(recall * total - 1e-9)), 0, dict.fromkeys(FP_KINDS, 0)
    for _, kind in rows:
        if kind == "TP":
            tp += 1
            if tp >= need:
                return counts
        else:
            counts[kind] += 1
    return {k: -1 for k in counts}  # recall never reached


def errors(count: int, model_dirs: list[str]) -> None:
    """AP and false-positive kinds of each model on the first ``count`` plain held-out images."""
    from collections import Counter

    from predictor.datasets.coco import samples_to_coco
    from predictor.datasets.shapes import CLASS_NAMES, heldout_sample
    from predictor.ssd.detector import Detector
    from predictor.tools.coco_eval import coco_evaluate, detections_to_coco

    samples = [heldout_sample("plain", i) for i in range(count)]
    truth = [(s.boxes, s.labels) for s in samples]
    for model_dir in model_dirs:
        detector = Detector.from_dir(model_dir, max_batch_size=16)
        found, results = [], []
        for start in range(0, count, 16):
            for offset, d in enumerate(detector.detect([s.image for s in samples[start : start + 16]], 0.01)):
                found.append((d.boxes, d.scores, d.classes))
                results += detections_to_coco(start + offset, d.boxes, d.scores, d.classes)
        gt = samples_to_coco(samples, CLASS_NAMES, image_ids=list(range(count)))
        r = coco_evaluate(gt, results, class_names=CLASS_NAMES, max_dets=detector.max_detections)
        per_class = " ".join(f"{k} {v:.3f}" for k, v in r["per_class_AP50"].items())
        rows, total = ranked_outcomes(truth, found)
        above = false_positives_above(rows, total, 0.9)
        confusions: Counter = Counter()
        for (gt_boxes, labels), (boxes, scores, classes) in zip(truth, found, strict=True):
            iou = _iou(np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(gt_boxes, np.float64))
            for k in np.where(np.asarray(scores) > 0.2)[0]:
                j = int(iou[k].argmax()) if iou.shape[1] else -1
                if j >= 0 and iou[k, j] >= 0.5 and labels[j] != classes[k]:
                    confusions[(CLASS_NAMES[labels[j]], CLASS_NAMES[classes[k]])] += 1
        top = ", ".join(f"{t}->{p} {n}" for (t, p), n in confusions.most_common(6))
        print(f"{model_dir}: {count} images, AP50 {r['AP50']:.4f}, mAP {r['mAP']:.4f}", flush=True)
        print(f"  per-class AP50: {per_class}")
        print(f"  FPs above recall 0.9: {above}")
        print(f"  wrong-class score > 0.2: {sum(confusions.values())} ({top})", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=("generator", "anchors", "sizes", "steps", "localisation", "errors"))
    p.add_argument("--model_dir", help="localisation: the model (default: the shipped demo model)")
    p.add_argument("--count", type=int, default=200, help="images (generator, anchors) or timed steps")
    p.add_argument(
        "variants",
        nargs="*",
        help="steps: name:photo:match:ema specs (default v1:0:0.5:0 v2:0.25:0.4:0.998); errors: model dirs",
    )
    args = p.parse_intermixed_args(argv)  # positionals after options: ``errors --count 300 DIR DIR``
    if args.what == "generator":
        generator_speed(args.count)
    elif args.what == "anchors":
        anchor_coverage(args.count)
    elif args.what == "sizes":
        size_distribution(args.count)
    elif args.what == "localisation":
        localisation(args.count, args.model_dir)
    elif args.what == "errors":
        errors(args.count, args.variants or [args.model_dir or "predictor/models/demo"])
    else:
        step_time(args.count, args.variants or ["v1:0:0.5:0", "v2:0.25:0.4:0.998"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
