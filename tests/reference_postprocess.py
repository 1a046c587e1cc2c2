"""An independent NumPy reference of the seed model's post-processing, written from the specification
(../shared/ssd-spec.md §1.6 box decoding and §2.2 the NumPy post-processing of balancap/SSD-Tensorflow),
one image at a time with plain loops, in float64. It shares no code with ``predictor.ssd``.

Steps for one image (the spec's select -> clip -> sort -> NMS, with the project's documented changes):

1. softmax over the 1 + C class logits of every anchor;
2. decode every anchor's offsets ``(t_x, t_y, t_w, t_h)`` with prior scaling ``(0.1, 0.1, 0.2, 0.2)`` into
   normalised ``[ymin, xmin, ymax, xmax]``; scale to pixels of the original image (x by W, y by H) and
   clip to ``[0, W] x [0, H]``;
3. select every (anchor, class >= 1) pair whose score is strictly above the threshold, dropping boxes
   with zero width or height after clipping (the project's fix of §2.4; balancap keeps inverted boxes);
4. sort by score, descending (ties: lower anchor, then lower class first) and keep the first ``top_k``
   over all classes;
5. greedy per-class NMS: walk the sorted list; a box is dropped when a kept box of the same class
   overlaps it with IoU >= ``nms_threshold``;
6. the first ``max_detections`` survivors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

PRIOR_SCALING = (0.1, 0.1, 0.2, 0.2)


@dataclass
class ReferenceDetection:
    box: tuple[float, float, float, float]  # pixel (xmin, ymin, xmax, ymax)
    score: float
    label: int  # 1..C


def softmax(row: np.ndarray) -> np.ndarray:
    z = np.exp(row - row.max())
    return z / z.sum()


def decode(offsets: np.ndarray, anchor: np.ndarray) -> tuple[float, float, float, float]:
    """Anchor ``(cy, cx, h, w)`` + offsets -> normalised ``(ymin, xmin, ymax, xmax)`` (spec §1.6)."""
    ya, xa, ha, wa = (float(v) for v in anchor)
    tx, ty, tw, th = (float(v) for v in offsets)
    cx = xa + tx * wa * PRIOR_SCALING[0]
    cy = ya + ty * ha * PRIOR_SCALING[1]
    w = wa * math.exp(tw * PRIOR_SCALING[2])
    h = ha * math.exp(th * PRIOR_SCALING[3])
    return cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2


def to_pixels(box: tuple[float, float, float, float], height: float, width: float) -> tuple[float, ...]:
    """Normalised ``(ymin, xmin, ymax, xmax)`` -> pixel ``(xmin, ymin, xmax, ymax)`` clipped to the image."""
    ymin, xmin, ymax, xmax = box

    def clip(v: float, hi: float) -> float:
        return min(max(v, 0.0), hi)

    return (
        clip(xmin * width, width),
        clip(ymin * height, height),
        clip(xmax * width, width),
        clip(ymax * height, height),
    )


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def reference_postprocess(
    loc: np.ndarray,
    logits: np.ndarray,
    anchors: np.ndarray,
    image_hw: tuple[float, float],
    score_threshold: float,
    *,
    nms_threshold: float = 0.45,
    top_k: int = 400,
    max_detections: int = 200,
) -> list[ReferenceDetection]:
    """One image: ``loc [A, 4]``, ``logits [A, 1 + C]``, ``anchors [A, 4]`` -> detections, best first."""
    height, width = (float(v) for v in image_hw)
    candidates: list[tuple[float, int, int, tuple[float, ...]]] = []
    for a in range(len(anchors)):
        probs = softmax(logits[a].astype(np.float64))
        box = to_pixels(decode(loc[a], anchors[a]), height, width)
        if not (box[2] > box[0] and box[3] > box[1]):
            continue
        for label in range(1, len(probs)):
            if probs[label] > score_threshold:
                candidates.append((float(probs[label]), a, label, box))
    candidates.sort(key=lambda c: (-c[0], c[1], c[2]))
    kept: list[ReferenceDetection] = []
    for score, _, label, box in candidates[:top_k]:
        if any(k.label == label and iou(k.box, box) >= nms_threshold for k in kept):
            continue
        kept.append(ReferenceDetection(box, score, label))
    return kept[:max_detections]
