"""bench/demo_recipe.py ``errors``: false-positive kinds and the ranking they are counted in (hand-made
boxes, no model)."""

from __future__ import annotations

import numpy as np

from bench.demo_recipe import false_positives_above, fp_kind, ranked_outcomes

# Two objects: a class-1 square [0, 0, 10, 10] and a class-2 square [20, 20, 30, 30].
TRUTH = [(np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32), np.array([1, 2]))]


def test_kinds_in_score_order():
    boxes = np.array(
        [
            [0, 0, 10, 10],  # 0.9: class 1 on object 0: TP
            [0, 0, 10, 10],  # 0.8: class 1 again: same-class duplicate
            [20, 20, 30, 30],  # 0.7: class 1 on the class-2 object: wrong class
            [0, 0, 10, 4],  # 0.6: class 2 IoU .4 with object 0 only: part of another object
            [20, 20, 30, 24],  # 0.5: class 2, IoU .4 with object 1: poor localisation
            [50, 50, 60, 60],  # 0.4: background
            [20, 20, 30, 30],  # 0.3: class 2 on object 1: TP
        ],
        np.float32,
    )
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3])
    classes = np.array([1, 1, 1, 2, 2, 2, 2])
    rows, total = ranked_outcomes(TRUTH, [(boxes, scores, classes)])
    assert total == 2
    assert [k for _, k in rows] == [
        "TP",
        "dup-same",
        "wrong-class",
        "part-other",
        "poor-loc",
        "background",
        "TP",
    ]
    # recall 0.5 is reached by the first TP (nothing above it); recall 0.9 needs both: five FPs above
    assert sum(false_positives_above(rows, total, 0.5).values()) == 0
    assert false_positives_above(rows, total, 0.9) == {
        "wrong-class": 1,
        "poor-loc": 1,
        "part-other": 1,
        "background": 1,
        "dup-same": 1,
    }


def test_recall_never_reached_is_marked_and_kind_precedence():
    rows, total = ranked_outcomes(TRUTH, [(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int))])
    assert rows == [] and total == 2
    assert set(false_positives_above(rows, total, 0.9).values()) == {-1}
    # wrong class (on another object at IoU >= 0.5) beats poor localisation when both hold
    iou, same = np.array([0.5, 0.3]), np.array([False, True])  # IoU 0.5 counts (COCO: >=)
    assert fp_kind(iou, same, np.zeros(2, bool)) == "wrong-class"


def test_errors_takes_model_dirs_after_options(monkeypatch):
    """``errors --count 300 A B``: the directories after the option reach :func:`errors`."""
    import bench.demo_recipe as recipe

    seen = []
    monkeypatch.setattr(recipe, "errors", lambda count, dirs: seen.append((count, dirs)))
    assert recipe.main(["errors", "--count", "300", "runs/a/model", "runs/b/model"]) == 0
    assert seen == [(300, ["runs/a/model", "runs/b/model"])]
