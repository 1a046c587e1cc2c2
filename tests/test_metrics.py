"""Tests of the COCO evaluation helpers in predictor.tools.coco_eval."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from predictor.tools.coco_eval import coco_evaluate, detections_to_coco, format_table, plot_pr_curves, summary

NAMES = ("background", "circle", "square")


def _gt() -> dict:
    """Two 300x300 images: four 40x40 circles (two per image) and one 40x40 square in image 1."""
    circles = [(1, 10, 10), (1, 100, 10), (2, 10, 100), (2, 100, 100)]
    objects = [(image_id, 1, x, y) for image_id, x, y in circles] + [(1, 2, 200, 200)]
    anns = [
        {"id": k + 1, "image_id": i, "category_id": c, "bbox": [x, y, 40, 40], "area": 1600.0, "iscrowd": 0}
        for k, (i, c, x, y) in enumerate(objects)
    ]
    return {
        "images": [{"id": i, "file_name": f"{i}.jpg", "width": 300, "height": 300} for i in (1, 2)],
        "annotations": anns,
        "categories": [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}],
    }


def _perfect(gt: dict, shift: float = 0.0, keep: int | None = None) -> list[dict]:
    """Detections equal to the gt boxes (x shifted by ``shift``), optionally only the first ``keep``."""
    dets = []
    for a in gt["annotations"][:keep]:
        x, y, w, h = a["bbox"]
        boxes = np.array([[x + shift, y, x + w + shift, y + h]])
        dets += detections_to_coco(a["image_id"], boxes, [0.9], [a["category_id"]])
    return dets


def test_detections_to_coco() -> None:
    dets = detections_to_coco(
        3, np.array([[1.0, 2.0, 11.0, 22.0]]), np.array([0.5]), np.array([2]), [0, 7, 9]
    )
    assert dets == [{"image_id": 3, "category_id": 9, "bbox": [1.0, 2.0, 10.0, 20.0], "score": 0.5}]
    assert detections_to_coco(1, np.zeros((0, 4)), [], []) == []
    json.dumps(dets)


def test_perfect_detections() -> None:
    result = coco_evaluate(_gt(), _perfect(_gt()), NAMES)
    for key in ("mAP", "AP50", "AP75"):
        assert result[key] == pytest.approx(1.0)
    assert result["per_class"] == {"circle": pytest.approx(1.0), "square": pytest.approx(1.0)}
    assert result["num_gt"] == {"circle": 4, "square": 1}
    assert result["precision"].shape == (10, 101, 2, 4, 3)


def test_shifted_boxes() -> None:
    """A 40-px box shifted by 8 px has IoU 32/48 = 0.667: a hit at IoU 0.50..0.65, a miss above."""
    result = coco_evaluate(_gt(), _perfect(_gt(), shift=8.0), NAMES)
    assert result["AP50"] == pytest.approx(1.0)
    assert result["AP75"] == pytest.approx(0.0)
    assert result["mAP"] == pytest.approx(0.4)  # 4 of 10 IoU thresholds


def test_half_detected_is_recall_limited() -> None:
    """Two of four circles found with precision 1: precision 1 up to recall 0.5, i.e. 51 / 101 points."""
    gt = _gt()
    result = coco_evaluate(gt, _perfect(gt, keep=2), NAMES)
    assert result["per_class_AP50"]["circle"] == pytest.approx(51 / 101)
    assert math.isnan(result["per_class"]["square"]) is False
    assert result["per_class"]["square"] == pytest.approx(0.0)  # its only box was not detected
    assert result["AP50"] == pytest.approx((51 / 101 + 0.0) / 2)


def test_false_positive_ranked_first() -> None:
    """An unmatched detection scored above the only circle TP halves precision at every recall."""
    gt = {**_gt(), "annotations": _gt()["annotations"][:1]}
    dets = _perfect(gt) + detections_to_coco(2, np.array([[200.0, 0, 240, 40]]), [0.99], [1])
    result = coco_evaluate(gt, dets, NAMES)
    assert result["per_class_AP50"]["circle"] == pytest.approx(0.5)
    assert math.isnan(result["per_class"]["square"])  # no square ground truth left
    assert result["num_gt"]["square"] == 0


def test_empty_detections() -> None:
    result = coco_evaluate(_gt(), [], NAMES)
    assert result["mAP"] == 0.0 and result["AP50"] == 0.0 and result["APm"] == 0.0
    assert math.isnan(result["APs"]) and math.isnan(result["APl"])  # no small or large gt
    assert result["per_class"] == {"circle": 0.0, "square": 0.0}
    assert "circle" in format_table(result)


def test_names_default_to_gt_and_validation() -> None:
    result = coco_evaluate(_gt(), _perfect(_gt()))
    assert result["class_names"] == ["circle", "square"]
    with pytest.raises(ValueError, match="class_names"):
        coco_evaluate(_gt(), [], ("background", "circle"))
    with pytest.raises(ValueError, match="image ids"):
        coco_evaluate(_gt(), detections_to_coco(99, np.array([[0, 0, 5, 5]]), [1.0], [1]))


def test_table_and_summary() -> None:
    result = coco_evaluate(_gt(), _perfect(_gt(), keep=2), NAMES)
    table = format_table(result)
    assert "mAP" in table and "square" in table and "50.50" in table
    data = summary(result)
    json.dumps(data, allow_nan=False)
    assert set(data["per_class"]) == {"circle", "square"}


def test_plot_pr_curves(tmp_path: Path) -> None:
    from PIL import Image

    result = coco_evaluate(_gt(), _perfect(_gt(), keep=3), NAMES)
    path = plot_pr_curves(result, tmp_path / "sub" / "pr.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        assert im.size[0] > 100 and im.size[1] > 100
    plot_pr_curves(coco_evaluate(_gt(), [], NAMES), tmp_path / "empty.png")
    assert (tmp_path / "empty.png").stat().st_size > 0
