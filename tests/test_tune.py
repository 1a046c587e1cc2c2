"""`python -m predictor.tools.tune nms`: the default NMS IoU threshold chosen on validation images."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from predictor.datasets.shapes import CLASS_NAMES, EVAL_SEED, PHOTO_EVAL_SEED, heldout_sample
from predictor.ssd import Detector
from predictor.tools import tune
from predictor.tools.evaluate import evaluate_detector


def test_choose_takes_the_best_score_and_the_larger_threshold_on_a_tie():
    assert tune.choose({0.3: 0.71, 0.45: 0.70, 0.5: 0.69}) == 0.3
    assert tune.choose({0.3: 0.70, 0.45: 0.70, 0.4: 0.69}) == 0.45
    assert tune.choose({0.5: 0.1}) == 0.5


def test_validation_seeds_are_neither_training_nor_held_out_seeds():
    seeds = {tune.VALIDATION_SEED, tune.PHOTO_VALIDATION_SEED}
    assert len(seeds) == 2 and min(seeds) >= 1000  # training seeds are below 1000
    assert not seeds & {EVAL_SEED, PHOTO_EVAL_SEED}


def test_nms_sweep_writes_the_record_and_the_chosen_default(demo_model_dir, tmp_path):
    """On 4 validation images of each set, two candidates: each recorded mAP is the COCO evaluation of a
    detector built with that NMS threshold (computed again here); the chosen one has the best mean;
    ``--write`` changes ``config.nms_threshold`` and nothing else, and a detector loaded from the folder
    uses it."""
    model = tmp_path / "model"
    shutil.copytree(demo_model_dir, model)
    before = yaml.safe_load((model / "model.yaml").read_text())
    weights = (model / "weights.npz").read_bytes()
    argv = ["nms", "--model_dir", str(model), "--count", "4", "--candidates", "0.2,0.95", "--write"]
    assert tune.main(argv) == 0
    record = json.loads((model / "eval" / "nms_sweep.json").read_text())
    assert [r["nms_threshold"] for r in record["candidates"]] == [0.2, 0.95]
    assert record["before"] == before["config"]["nms_threshold"]
    assert record["data"]["plain"] == {"style": "plain", "seed": tune.VALIDATION_SEED, "count": 4}
    seeds = {"plain": tune.VALIDATION_SEED, "photo": tune.PHOTO_VALIDATION_SEED}
    for row in record["candidates"]:
        detector = Detector.from_dir(str(demo_model_dir), nms_threshold=row["nms_threshold"])
        for name, seed in seeds.items():
            samples = [heldout_sample(name, i, seed) for i in range(4)]
            m = evaluate_detector(detector, samples, CLASS_NAMES)
            assert row[name] == {"mAP": round(m["mAP"], 4), "AP50": round(m["AP50"], 4)}
        assert row["mean_mAP"] == pytest.approx((row["plain"]["mAP"] + row["photo"]["mAP"]) / 2, abs=1e-4)
    means = {r["nms_threshold"]: r["mean_mAP"] for r in record["candidates"]}
    assert means[0.2] != means[0.95]  # the candidates differ on these images
    assert record["chosen"] == max(means, key=means.get)
    after = yaml.safe_load((model / "model.yaml").read_text())
    assert after["config"].pop("nms_threshold") == record["chosen"]
    before["config"].pop("nms_threshold")
    assert after == before
    assert list(after["config"]) == [k for k in before["config"]]  # the manifest keeps its key order
    assert (model / "weights.npz").read_bytes() == weights
    assert Detector.from_dir(str(model)).nms_threshold == record["chosen"]


def test_candidates_outside_zero_one_are_refused(demo_model_dir):
    with pytest.raises(SystemExit):
        tune.main(["nms", "--model_dir", str(demo_model_dir), "--candidates", "0.3,1.5"])
