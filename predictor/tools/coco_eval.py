"""COCO bounding-box evaluation helpers (pycocotools ``COCOeval``), tables and precision-recall plots.

Boxes follow :mod:`predictor.datasets.coco`: detector outputs are ``(xmin, ymin, xmax, ymax)`` pixels,
COCO results are ``[x, y, w, h]`` pixels. Classes are contiguous labels ``1..C`` (0 = background) that
map to COCO category ids through ``category_ids`` (identity by default). AP values are in ``[0, 1]``;
undefined values (a class, or an object-size range, without ground truth) are ``nan``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

SUMMARY_KEYS = ("mAP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)


def detections_to_coco(
    image_id: int,
    boxes_xyxy: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    category_ids: Sequence[int] | None = None,
) -> list[dict]:
    """COCO result dicts for one image's detections.

    ``boxes_xyxy``: ``[N, 4]`` ``(xmin, ymin, xmax, ymax)`` pixels; ``scores``: ``[N]``; ``classes``:
    ``[N]`` contiguous labels, mapped through ``category_ids[label]`` when given.
    """
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    classes = np.asarray(classes).reshape(-1).astype(np.int64)
    out = []
    for (x0, y0, x1, y1), score, label in zip(boxes, scores, classes, strict=True):
        cat = int(label) if category_ids is None else int(category_ids[int(label)])
        bbox = [round(float(v), 3) for v in (x0, y0, x1 - x0, y1 - y0)]
        out.append({"image_id": int(image_id), "category_id": cat, "bbox": bbox, "score": float(score)})
    return out


def _coco_from_dict(data: dict) -> Any:
    """A pycocotools ``COCO`` built from an in-memory dict (copied; index messages suppressed)."""
    from pycocotools.coco import COCO

    coco = COCO()
    dataset = dict(data)
    dataset.setdefault("info", {})
    dataset.setdefault("licenses", [])
    dataset["annotations"] = [dict(a) for a in data.get("annotations", [])]
    for ann in dataset["annotations"]:
        ann.setdefault("iscrowd", 0)
        if "area" not in ann:
            ann["area"] = float(ann["bbox"][2]) * float(ann["bbox"][3])
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _class_names_for(gt: dict, cat_ids: list[int], class_names: Sequence[str] | None) -> list[str]:
    """Names for the sorted category ids: ``class_names[1:]`` when given, else the COCO names."""
    if class_names is None:
        by_id = {int(c["id"]): str(c["name"]) for c in gt.get("categories", [])}
        return [by_id[c] for c in cat_ids]
    names = list(class_names)[1:]
    if len(names) != len(cat_ids):
        raise ValueError(f"class_names has {len(names)} classes (after background), gt has {len(cat_ids)}")
    return names


def _class_ap(precision: np.ndarray, k: int, iou_index: int | None = None) -> float:
    """AP of class ``k`` from a ``[T, R, K, A, M]`` precision array (area all, largest maxDets)."""
    p = precision[:, :, k, 0, -1] if iou_index is None else precision[iou_index, :, k, 0, -1]
    valid = p[p > -1]
    return float(valid.mean()) if valid.size else math.nan


def _placeholder_detection(coco_gt: Any) -> list[dict]:
    """One detection of a category absent from the gt: COCOeval ignores it, but ``loadRes`` needs a
    non-empty list, so an empty detection list evaluates to zero AP wherever gt exists."""
    image_id = coco_gt.getImgIds()[0]
    category = max(coco_gt.getCatIds(), default=0) + 1
    return [{"image_id": image_id, "category_id": category, "bbox": [0.0, 0.0, 1.0, 1.0], "score": 0.0}]


def _run_cocoeval(coco_gt: Any, detections: list[dict], max_dets: int, verbose: bool) -> Any:
    """Run ``COCOeval`` (bbox) and return it, evaluated, accumulated and summarized."""
    from pycocotools.cocoeval import COCOeval

    sink = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with sink:
        coco_dt = coco_gt.loadRes(copy.deepcopy(detections))
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        ev.params.maxDets = [1, 10, max_dets]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def coco_evaluate(
    gt: dict,
    detections: list[dict],
    class_names: Sequence[str] | None = None,
    max_dets: int = 100,
    verbose: bool = False,
) -> dict[str, Any]:
    """COCO bbox evaluation of ``detections`` (COCO results list) against ground truth ``gt`` (COCO dict).

    ``class_names`` (background first) names the gt categories in ascending id order; by default the
    names in ``gt["categories"]`` are used. Returns the summary metrics (:data:`SUMMARY_KEYS`: ``mAP``
    is AP@[.5:.95], ``AR100`` uses ``max_dets``), ``per_class`` AP@[.5:.95] and ``per_class_AP50``
    (name -> AP), ``num_gt`` (name -> non-crowd gt count), ``class_names``, and the
    raw ``precision`` array ``[T=10 IoUs, R=101 recalls, K classes, A=4 areas, M=3 maxDets]`` (-1 where
    undefined) with ``iou_thresholds`` and ``recall_thresholds``. Metrics without gt are ``nan``; an
    empty ``detections`` list gives 0 elsewhere. Detections of unknown categories are ignored;
    detections of images absent from ``gt`` raise ``ValueError``.
    """
    coco_gt = _coco_from_dict(gt)
    cat_ids = sorted(coco_gt.getCatIds())
    names = _class_names_for(gt, cat_ids, class_names)
    unknown = {int(d["image_id"]) for d in detections} - set(coco_gt.getImgIds())
    if unknown:
        raise ValueError(f"detections reference image ids not in the ground truth: {sorted(unknown)[:10]}")
    if not coco_gt.getImgIds() or not cat_ids:
        raise ValueError("ground truth needs at least one image and one category")
    ev = _run_cocoeval(coco_gt, list(detections) or _placeholder_detection(coco_gt), max_dets, verbose)
    precision = ev.eval["precision"]
    num_gt = {
        name: len(coco_gt.getAnnIds(catIds=[cid], iscrowd=False))
        for name, cid in zip(names, cat_ids, strict=True)
    }
    result: dict[str, Any] = {
        key: float(v) if v > -1 else math.nan for key, v in zip(SUMMARY_KEYS, ev.stats, strict=True)
    }
    result.update(
        per_class={n: _class_ap(precision, k) for k, n in enumerate(names)},
        per_class_AP50={n: _class_ap(precision, k, 0) for k, n in enumerate(names)},
        num_gt=num_gt,
        class_names=names,
        precision=precision,
        iou_thresholds=IOU_THRESHOLDS.copy(),
        recall_thresholds=RECALL_THRESHOLDS.copy(),
    )
    return result


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """The JSON-friendly part of a :func:`coco_evaluate` result (no arrays; ``nan`` -> ``None``)."""

    def clean(v: float) -> float | None:
        return None if math.isnan(v) else round(float(v), 6)

    out: dict[str, Any] = {k: clean(result[k]) for k in SUMMARY_KEYS}
    out["per_class"] = {k: clean(v) for k, v in result["per_class"].items()}
    out["per_class_AP50"] = {k: clean(v) for k, v in result["per_class_AP50"].items()}
    out["num_gt"] = dict(result["num_gt"])
    return out


def _fmt(v: float) -> str:
    return "     -" if math.isnan(v) else f"{100 * v:6.2f}"


def format_table(result: dict[str, Any]) -> str:
    """A fixed-width text table: summary metrics (in %) then one row per class (AP, AP50, #gt)."""
    width = max([len("class"), *(len(n) for n in result["class_names"])])
    lines = [
        "  ".join(f"{k:>6}" for k in SUMMARY_KEYS[:6]),
        "  ".join(_fmt(result[k]) for k in SUMMARY_KEYS[:6]),
    ]
    lines += ["", f"{'class':<{width}}  {'AP':>6}  {'AP50':>6}  {'#gt':>6}", "-" * (width + 24)]
    for name in result["class_names"]:
        ap, ap50 = result["per_class"][name], result["per_class_AP50"][name]
        lines.append(f"{name:<{width}}  {_fmt(ap)}  {_fmt(ap50)}  {result['num_gt'][name]:>6}")
    return "\n".join(lines)


def plot_pr_curves(result: dict[str, Any], path: str | Path, iou: float = 0.5) -> Path:
    """Write a PNG of precision vs recall at IoU ``iou`` (one of 0.50..0.95), one curve per class.

    Uses the area-all, largest-maxDets slice of ``result["precision"]``; classes without gt are skipped.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    t = int(np.argmin(np.abs(result["iou_thresholds"] - iou)))
    fig = Figure(figsize=(7, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for k, name in enumerate(result["class_names"]):
        p = result["precision"][t, :, k, 0, -1]
        if np.all(p < 0):
            continue
        ap = float(np.clip(p, 0, None).mean())
        ax.plot(result["recall_thresholds"], np.clip(p, 0, None), label=f"{name} (AP {100 * ap:.1f})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
    ax.set_title(f"Precision-recall at IoU {result['iou_thresholds'][t]:.2f}")
    ax.grid(alpha=0.3)
    if ax.get_lines():
        ax.legend(loc="lower left", fontsize="small")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out


def operating_point(
    truth: Sequence[tuple[np.ndarray, np.ndarray]],
    detections: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    iou_threshold: float = 0.5,
) -> dict[str, float | int]:
    """Precision and recall of one detector setting: a detection is a true positive when it matches a
    not yet matched ground-truth box of the same class with IoU >= ``iou_threshold`` (detections taken in
    descending score order, each matched to its highest-IoU candidate, as COCO does).

    Args:
      truth: per image ``(boxes [G, 4] xyxy px, labels [G])``.
      detections: per image ``(boxes [N, 4] xyxy px, scores [N], labels [N])``.
    Returns:
      ``{"precision", "recall", "true_positives", "detections", "ground_truth"}``; precision is 1.0
      when there are no detections.
    """
    tp = n_det = n_gt = 0
    for (gt_boxes, gt_labels), (boxes, scores, labels) in zip(truth, detections, strict=True):
        gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
        gt_labels = np.asarray(gt_labels).reshape(-1)
        n_gt += len(gt_labels)
        n_det += len(scores)
        matched = np.zeros(len(gt_labels), bool)
        for i in np.argsort(-np.asarray(scores), kind="stable"):
            iou = iou_one_to_many(np.asarray(boxes[i], np.float64), gt_boxes)
            iou[(gt_labels != labels[i]) | matched] = -1.0
            if len(iou) and iou.max() >= iou_threshold:
                matched[int(iou.argmax())] = True
                tp += 1
    return {
        "precision": tp / n_det if n_det else 1.0,
        "recall": tp / n_gt if n_gt else float("nan"),
        "true_positives": tp,
        "detections": n_det,
        "ground_truth": n_gt,
    }


class MatchedDetections:
    """Every detection of a set of images with its score, class and whether it is a true positive, plus
    the ground-truth count per class: enough for precision/recall at any higher score threshold.

    Matching is :func:`operating_point`'s (per image, descending score, same class, IoU >=
    ``iou_threshold``, each ground-truth box matched once). A detection's status depends only on the
    detections scored above it, so keeping the ones scored above ``t`` gives exactly what the detector
    run at threshold ``t`` gives, as long as its top-k and per-image caps did not drop any of them.

    Attributes: ``scores [N]`` float64, ``classes [N]`` int64, ``tp [N]`` bool, ``gt_counts``
    ``{class id: ground-truth boxes}``.
    """

    def __init__(
        self,
        truth: Sequence[tuple[np.ndarray, np.ndarray]],
        detections: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
        iou_threshold: float = 0.5,
    ) -> None:
        scores, classes, tp = [], [], []
        gt_counts: dict[int, int] = {}
        for (gt_boxes, gt_labels), (boxes, det_scores, labels) in zip(truth, detections, strict=True):
            gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
            gt_labels = np.asarray(gt_labels).reshape(-1).astype(np.int64)
            for c in gt_labels.tolist():
                gt_counts[c] = gt_counts.get(c, 0) + 1
            boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
            det_scores = np.asarray(det_scores, np.float64).reshape(-1)
            labels = np.asarray(labels).reshape(-1).astype(np.int64)
            matched = np.zeros(len(gt_labels), bool)
            for i in np.argsort(-det_scores, kind="stable"):
                iou = iou_one_to_many(boxes[i], gt_boxes)
                iou[(gt_labels != labels[i]) | matched] = -1.0
                hit = bool(len(iou) and iou.max() >= iou_threshold)
                if hit:
                    matched[int(iou.argmax())] = True
                scores.append(det_scores[i])
                classes.append(labels[i])
                tp.append(hit)
        self.scores = np.asarray(scores, np.float64)
        self.classes = np.asarray(classes, np.int64)
        self.tp = np.asarray(tp, bool)
        self.gt_counts = gt_counts

    def at(self, threshold: float, label: int | None = None) -> dict[str, float | int]:
        """Precision, recall and F1 of the detections scored strictly above ``threshold`` (the serving
        semantics), of class ``label`` or of all classes. Precision is 1.0 without detections; recall is
        ``nan`` without ground truth; F1 is 0 when precision + recall is 0."""
        keep = self.scores > threshold
        if label is not None:
            keep &= self.classes == label
        n_gt = sum(self.gt_counts.values()) if label is None else self.gt_counts.get(label, 0)
        tp, n_det = int(np.sum(self.tp & keep)), int(np.sum(keep))
        precision = tp / n_det if n_det else 1.0
        recall = tp / n_gt if n_gt else float("nan")
        f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
        return {
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "true_positives": tp,
            "detections": n_det,
            "ground_truth": n_gt,
        }

    def max_f1(self, thresholds: Sequence[float], label: int | None = None) -> dict[str, float | int]:
        """:meth:`at` of the threshold among ``thresholds`` with the highest F1 (the lowest such one on a
        tie), with ``score_threshold`` added."""
        best: dict[str, float | int] | None = None
        for t in sorted(thresholds):
            point = self.at(t, label)
            if best is None or point["f1"] > best["f1"]:
                best = {"score_threshold": float(t), **point}
        if best is None:
            raise ValueError("no thresholds given")
        return best


def iou_one_to_many(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one ``(xmin, ymin, xmax, ymax)`` box with ``[G, 4]`` boxes -> ``[G]``."""
    iw = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    ih = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = iw * ih
    union = (box[2] - box[0]) * (box[3] - box[1]) + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = union - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
