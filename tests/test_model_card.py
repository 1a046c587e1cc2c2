"""The model card's tables are generated: precision/recall counting by hand, the card in sync with
the JSON its measurements wrote, and the training-curve hook of ``predictor.tools.train``."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import yaml
from serving_fixtures import REPO_ROOT, server_env

from predictor.tools.coco_eval import MatchedDetections, operating_point


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


def _sweep_case():
    """Two images, classes 1 and 2. Image A: gt class 1 at (0,0,10,10) and (20,20,30,30), class 2 at
    (40,40,50,50). Image B: gt class 2 at (0,0,20,20)."""
    truth = [
        (np.array([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], float), np.array([1, 1, 2])),
        (np.array([[0, 0, 20, 20]], float), np.array([2])),
    ]
    detections = [
        (
            np.array(
                [[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50], [60, 60, 70, 70]], float
            ),
            np.array([0.9, 0.7, 0.3, 0.6, 0.8]),
            np.array([1, 1, 1, 2, 2]),  # hit, duplicate, hit, hit, false alarm
        ),
        (np.array([[0, 0, 20, 20], [0, 0, 20, 20]], float), np.array([0.5, 0.2]), np.array([1, 2])),
        # class 1 on a class-2 object (wrong class), then the right class at 0.2: a hit
    ]
    return truth, detections


def test_sweep_precision_recall_f1_by_hand():
    truth, detections = _sweep_case()
    m = MatchedDetections(truth, detections)
    # By score, image A: .9 tp (c1), .8 fp (c2), .7 fp duplicate (c1), .6 tp (c2), .3 tp (c1);
    # image B: .5 fp (c1 on a c2 object), .2 tp (c2).
    assert m.gt_counts == {1: 2, 2: 2}
    assert sorted(zip(m.scores.tolist(), m.tp.tolist(), strict=True)) == [
        (0.2, True), (0.3, True), (0.5, False), (0.6, True), (0.7, False), (0.8, False), (0.9, True)
    ]  # fmt: skip
    at4 = m.at(0.4)  # kept: .9 tp, .8 fp, .7 fp, .6 tp, .5 fp -> P 2/5, R 2/4, F1 = 2*.4*.5/.9
    assert (at4["true_positives"], at4["detections"], at4["ground_truth"]) == (2, 5, 4)
    np.testing.assert_allclose([at4["precision"], at4["recall"], at4["f1"]], [0.4, 0.5, 0.4 / 0.9])
    c1 = m.at(0.4, 1)  # class 1: .9 tp, .7 fp, .5 fp -> P 1/3, R 1/2, F1 0.4
    np.testing.assert_allclose([c1["precision"], c1["recall"], c1["f1"]], [1 / 3, 0.5, 0.4])
    # Strict ">": at 0.9 nothing is kept, so precision is 1 by convention and recall 0.
    assert m.at(0.9) == {
        "precision": 1.0, "recall": 0.0, "f1": 0.0, "true_positives": 0, "detections": 0, "ground_truth": 4
    }  # fmt: skip
    # F1 over thresholds: 0.1 -> 4/7, 4/4 = .727; 0.25 -> 3/6, 3/4 = .6; 0.4 -> .444; 0.65 -> 1/3, 1/4 = .286
    best = m.max_f1([0.1, 0.25, 0.4, 0.65])
    assert best["score_threshold"] == 0.1 and best["true_positives"] == 4 and best["detections"] == 7
    assert m.max_f1([0.15, 0.1, 0.12])["score_threshold"] == 0.1  # same F1 (no score between): the lowest
    np.testing.assert_allclose(best["f1"], 2 * (4 / 7) / (4 / 7 + 1))
    # Class 2 alone: 0.1 -> .2 tp, .6 tp, .8 fp: P 2/3 R 1 F1 .8; 0.25 -> P 1/2 R 1/2; 0.65 -> P 0 -> F1 0.
    best2 = m.max_f1([0.65, 0.25, 0.1], 2)
    assert best2["score_threshold"] == 0.1
    np.testing.assert_allclose(best2["f1"], 0.8)
    # The same counts as operating_point on the detections kept at each threshold.
    for t in (0.1, 0.25, 0.4, 0.65):
        kept = [(b[s > t], s[s > t], c[s > t]) for b, s, c in detections]
        ref = operating_point(truth, kept)
        assert {k: m.at(t)[k] for k in ref} == ref


def test_model_card_tables_match_their_json():
    proc = subprocess.run(
        [sys.executable, "scripts/model_card.py", "predictor/models/demo", "--readme", "README.md",
         "--check"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    card = (REPO_ROOT / "predictor/models/demo/MODEL_CARD.md").read_text()
    points = json.loads((REPO_ROOT / "predictor/models/demo/eval/operating_points.json").read_text())
    default = next(p for p in points["operating_points"] if p["score_threshold"] == 0.4)
    assert f"**{default['precision']:.3f}**" in card and points["measured"]["utc"] in card
    for folder in ("eval", "eval/photo"):  # per-class rows at the default and the max-F1 threshold
        sweep = json.loads(
            (REPO_ROOT / "predictor/models/demo" / folder / "operating_points.json").read_text()
        )
        sweep = sweep["sweep"]
        assert sweep["agrees_with_runs"]
        d, b = sweep["default"]["per_class"]["hexagon"], sweep["max_f1"]["per_class"]["hexagon"]
        row = f"| hexagon | {d['precision']:.3f} | {d['recall']:.3f} | {d['f1']:.3f} | {b['precision']:.3f} |"
        assert row in card
    photo = json.loads((REPO_ROOT / "predictor/models/demo/eval/photo/metrics.json").read_text())
    assert photo["data"]["style"] == "photo" and f"**{photo['AP50']:.3f}**" in card
    # Every table was measured with the model's current default NMS threshold (tools.tune may change it).
    nms = yaml.safe_load((REPO_ROOT / "predictor/models/demo/model.yaml").read_text())["config"][
        "nms_threshold"
    ]
    for name in (
        "metrics.json",
        "operating_points.json",
        "photo/metrics.json",
        "photo/operating_points.json",
    ):
        assert (
            json.loads((REPO_ROOT / "predictor/models/demo/eval" / name).read_text())["nms_threshold"] == nms
        )
    sweep = json.loads((REPO_ROOT / "predictor/models/demo/eval/nms_sweep.json").read_text())
    assert sweep["chosen"] == nms and "<!-- generated: nms-sweep -->" in card
    assert (
        f"| Default thresholds | score 0.4 (chosen below), NMS IoU {nms:g} " in card
    )  # the card's summary row


def test_evaluate_cli_operating_points_on_the_photo_like_set(tmp_path):
    """``--style photo`` picks the photo-like held-out set; the sweep covers every class and agrees with
    the detector run at the listed threshold."""
    from predictor.datasets.shapes import CLASS_NAMES, PHOTO_EVAL_SEED

    cmd = [
        sys.executable, "-m", "predictor.tools.evaluate", "--style", "photo", "--start", "3", "--count", "6",
        "--operating-points", "0.4", "--out", str(tmp_path),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=server_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "operating_points.json").read_text())
    assert report["data"] == {
        "kind": "shapes",
        "style": "photo",
        "seed": PHOTO_EVAL_SEED,
        "start": 3,
        "count": 6,
    }
    sweep = report["sweep"]
    assert sweep["agrees_with_runs"] and sweep["default"]["score_threshold"] == 0.4
    row = report["operating_points"][0]
    assert sweep["default"]["overall"]["true_positives"] == row["true_positives"]
    assert set(sweep["per_class_max_f1"]) == set(CLASS_NAMES[1:]) == set(sweep["max_f1"]["per_class"])
    assert sweep["max_f1"]["overall"]["f1"] >= sweep["default"]["overall"]["f1"]


def test_training_curve_table_has_photo_rows_when_recorded():
    import importlib.util

    spec = importlib.util.spec_from_file_location("model_card", REPO_ROOT / "scripts/model_card.py")
    card = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(card)
    stamp = {"utc": "2026-12-07 09:00 UTC", "machine": "m"}
    points = [
        {"step": 200, "AP50": 0.5, "mAP": 0.25, "images": 100, "measured": stamp},
        {"step": 400, "AP50": 0.75, "mAP": 0.5, "images": 100, "measured": stamp,
         "photo": {"AP50": 0.625, "mAP": 0.375, "images": 100}},
    ]  # fmt: skip
    table = card.training_curve_table(points)
    assert "| photo-like AP@0.5 | - | 0.625 |" in table
    assert "| photo-like mAP@[.5:.95] | - | 0.375 |" in table
    assert "photo" not in card.training_curve_table(points[:1])


def test_train_records_a_training_curve(tmp_path):
    cmd = [
        sys.executable, "-m", "predictor.tools.train", "--out", str(tmp_path), "--steps", "2",
        "--batch-size", "2", "--width", "8", "--eval-every", "1", "--eval-count", "2", "--no-progress",
        "--eval-photo-count", "2", "--photo-fraction", "0.5", "--ema-decay", "0.9",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=server_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    curve = json.loads((tmp_path / "training_curve.json").read_text())
    assert [p["step"] for p in curve] == [1, 2]
    assert all(0 <= p["AP50"] <= 1 and 0 <= p["mAP"] <= p["AP50"] and p["images"] == 2 for p in curve)
    assert all(p["measured"]["machine"] for p in curve)
    assert all(0 <= p["photo"]["AP50"] <= 1 and p["photo"]["images"] == 2 for p in curve)


def test_nms_sweep_table_by_hand():
    import importlib.util

    spec = importlib.util.spec_from_file_location("model_card", REPO_ROOT / "scripts/model_card.py")
    card = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(card)
    record = {
        "data": {"plain": {"count": 300}, "photo": {"count": 300}},
        "candidates": [
            {"nms_threshold": 0.3, "plain": {"mAP": 0.75, "AP50": 0.95}, "photo": {"mAP": 0.625, "AP50": 0.8},
             "mean_mAP": 0.6875},
            {"nms_threshold": 0.45, "plain": {"mAP": 0.7, "AP50": 0.9}, "photo": {"mAP": 0.6, "AP50": 0.75},
             "mean_mAP": 0.65},
        ],
        "chosen": 0.3,
        "measured": {"utc": "2026-12-07 18:00 UTC", "machine": "m"},
    }  # fmt: skip
    assert card.nms_sweep_table(record).split("\n") == [
        "_Made by `python -m predictor.tools.tune nms --count 300 --candidates 0.3,0.45` on "
        "2026-12-07 18:00 UTC, m._",
        "",
        "| NMS IoU threshold | **0.3** | 0.45 |",
        "|---|---|---|",
        "| plain mAP@[.5:.95] | **0.750** | 0.700 |",
        "| plain AP@0.5 | **0.950** | 0.900 |",
        "| photo-like mAP@[.5:.95] | **0.625** | 0.600 |",
        "| photo-like AP@0.5 | **0.800** | 0.750 |",
        "| mean mAP | **0.6875** | 0.6500 |",
        "",
        "The default 0.3 is the best candidate.",
    ]
    record.update(best=0.3, chosen=0.45, min_gain=0.05)  # 0.0375 better, not enough: 0.45 stays
    assert card.nms_sweep_table(record).split("\n")[-3:] == [
        "| mean mAP | 0.6875 | **0.6500** |",
        "",
        "The best candidate, 0.3, gains 0.0375 mean mAP over the default 0.45, less than the 0.05 a change "
        "needs: the default stays.",
    ]
