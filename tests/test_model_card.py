"""The model card's tables are generated: precision/recall counting by hand, the card in sync with
the JSON its measurements wrote, and the training-curve hook of ``predictor.tools.train``."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from serving_fixtures import REPO_ROOT, server_env

from predictor.tools.coco_eval import operating_point


def test_operating_point_counts_by_hand():
    truth = [
        (np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float), np.array([1, 2])),
        (np.array([[0, 0, 50, 50]], float), np.array([3])),
    ]
    detections = [
        (
            np.array([[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30], [21, 20, 31, 30]], float),
            np.array([0.9, 0.8, 0.7, 0.6]),
            np.array([1, 1, 1, 2]),  # hit, duplicate of the hit, wrong class, hit at IoU 90/110
        ),
        (np.zeros((0, 4)), np.zeros(0), np.zeros(0, int)),  # a missed object
    ]
    point = operating_point(truth, detections)
    expected = {"precision": 0.5, "recall": 2 / 3, "true_positives": 2, "detections": 4, "ground_truth": 3}
    assert point == expected
    strict = operating_point(truth, detections, iou_threshold=0.9)
    assert strict["true_positives"] == 1  # IoU 0.818 no longer counts


def test_model_card_tables_match_their_json():
    proc = subprocess.run(
        [sys.executable, "scripts/model_card.py", "predictor/models/demo", "--check"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    card = (REPO_ROOT / "predictor/models/demo/MODEL_CARD.md").read_text()
    points = json.loads((REPO_ROOT / "predictor/models/demo/eval/operating_points.json").read_text())
    default = next(p for p in points["operating_points"] if p["score_threshold"] == 0.4)
    assert f"**{default['precision']:.3f}**" in card and points["measured"]["utc"] in card


def test_train_records_a_training_curve(tmp_path):
    cmd = [
        sys.executable, "-m", "predictor.tools.train", "--out", str(tmp_path), "--steps", "2",
        "--batch-size", "2", "--width", "8", "--eval-every", "1", "--eval-count", "2", "--no-progress",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=server_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    curve = json.loads((tmp_path / "training_curve.json").read_text())
    assert [p["step"] for p in curve] == [1, 2]
    assert all(0 <= p["AP50"] <= 1 and 0 <= p["mAP"] <= p["AP50"] and p["images"] == 2 for p in curve)
    assert all(p["measured"]["machine"] for p in curve)
