"""`python -m predictor.tools.tune nms`: the default NMS IoU threshold chosen on validation images."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from predictor.datasets.shapes import (
    CLASS_NAMES,
    EVAL_SEED,
    PHOTO_EVAL_SEED,
    PHOTO_VALIDATION_SEED,
    VALIDATION_SEED,
    heldout_sample,
)
from predictor.ssd import Detector
from predictor.ssd.weights import model_version, weights_digest
from predictor.tools import tune
from predictor.tools.evaluate import evaluate_detector


def test_choose_takes_the_best_score_and_the_larger_threshold_on_a_tie():
    assert tune.choose({0.3: 0.71, 0.45: 0.70, 0.5: 0.69}) == 0.3
    assert tune.choose({0.3: 0.70, 0.45: 0.70, 0.4: 0.69}) == 0.45
    assert tune.choose({0.5: 0.1}) == 0.5
    # The current default stays unless beaten by min_gain; a current default not tried cannot stay.
    assert tune.choose({0.3: 0.704, 0.45: 0.70}, current=0.45, min_gain=0.005) == 0.45
    assert tune.choose({0.3: 0.705, 0.45: 0.70}, current=0.45, min_gain=0.005) == 0.3
    assert tune.choose({0.3: 0.704, 0.5: 0.70}, current=0.45, min_gain=0.005) == 0.3


def test_training_refuses_the_held_out_and_validation_seeds():
    """The synthetic training stream cannot be drawn with a held-out or validation seed (the argument
    check runs before any TensorFlow work)."""
    from predictor.tools.train import main as train_main

    seeds = [VALIDATION_SEED, PHOTO_VALIDATION_SEED, EVAL_SEED, PHOTO_EVAL_SEED]
    assert len(set(seeds)) == 4
    for seed in seeds:
        with pytest.raises(SystemExit, match=f"--seed {seed}: synthetic training seeds are 0-999"):
            train_main(["--out", "/nonexistent/run", "--seed", str(seed)])


def _copy_with_default(demo_model_dir, tmp_path, nms: float, version: str | None = None):
    """A copy of the demo model whose default NMS threshold is ``nms`` (and VERSION ``version``, if given)."""
    model = tmp_path / "model"
    shutil.copytree(demo_model_dir, model)
    manifest = yaml.safe_load((model / "model.yaml").read_text())
    manifest["config"]["nms_threshold"] = nms
    (model / "model.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    if version:
        (model / "VERSION").write_text(version + "\n")
    return model


def test_nms_sweep_writes_the_record_and_the_chosen_default(demo_model_dir, tmp_path):
    """A copy defaulting to NMS 0.95 (duplicates survive), one candidate 0.2, on 4 validation images of
    each set: the default is measured too; each recorded mAP is the COCO evaluation of a detector built
    with that threshold (computed again here); 0.2 wins and ``--write`` changes ``config.nms_threshold``
    and nothing else, with a new version derived from the digest; a tuned model can be tuned again."""
    model = _copy_with_default(demo_model_dir, tmp_path, 0.95)
    before = yaml.safe_load((model / "model.yaml").read_text())
    weights = (model / "weights.npz").read_bytes()
    argv = ["nms", "--model_dir", str(model), "--count", "4", "--candidates", "0.2", "--min-gain", "0"]
    assert tune.main([*argv, "--write"]) == 0
    record = json.loads((model / "eval" / "nms_sweep.json").read_text())
    assert [r["nms_threshold"] for r in record["candidates"]] == [0.2, 0.95]  # the default added
    assert record["before"] == 0.95 and record["min_gain"] == 0
    assert record["data"]["plain"] == {"style": "plain", "seed": VALIDATION_SEED, "count": 4}
    seeds = {"plain": VALIDATION_SEED, "photo": PHOTO_VALIDATION_SEED}
    for row in record["candidates"]:
        detector = Detector.from_dir(str(demo_model_dir), nms_threshold=row["nms_threshold"])
        for name, seed in seeds.items():
            samples = [heldout_sample(name, i, seed) for i in range(4)]
            m = evaluate_detector(detector, samples, CLASS_NAMES)
            assert row[name] == {"mAP": round(m["mAP"], 4), "AP50": round(m["AP50"], 4)}
        assert row["mean_mAP"] == pytest.approx((row["plain"]["mAP"] + row["photo"]["mAP"]) / 2, abs=1e-4)
    means = {r["nms_threshold"]: r["mean_mAP"] for r in record["candidates"]}
    assert means[0.2] > means[0.95]  # duplicates cost AP
    assert record["chosen"] == record["best"] == 0.2
    after = yaml.safe_load((model / "model.yaml").read_text())
    assert list(after["config"]) == list(before["config"])  # the manifest keeps its key order
    assert after["config"].pop("nms_threshold") == 0.2
    before["config"].pop("nms_threshold")
    assert after == before
    assert (model / "weights.npz").read_bytes() == weights
    assert Detector.from_dir(str(model)).nms_threshold == 0.2
    # It answers differently now, so it is another version: the weights' digest, marked.
    assert model_version(model) == f"{weights_digest(model)}-nms0.2" != model_version(demo_model_dir)
    assert (
        tune.main(["nms", "--model_dir", str(model), "--count", "2", "--candidates", "0.95", "--write"]) == 0
    )


def test_write_gives_a_chosen_version_only_when_told(demo_model_dir, tmp_path):
    """A model versioned by hand ("v7") keeps no stale version: ``--write`` without ``--version`` is refused
    before the sweep, writing nothing; with ``--version v8`` a changed default and the version are
    written."""
    model = _copy_with_default(demo_model_dir, tmp_path, 0.95, version="v7")
    manifest = (model / "model.yaml").read_text()
    shipped_record = (model / "eval" / "nms_sweep.json").read_text()  # the demo model's own sweep
    argv = ["nms", "--model_dir", str(model), "--count", "2", "--candidates", "0.2", "--min-gain", "0"]
    with pytest.raises(SystemExit, match=r"versioned 'v7'.*needs a new version"):
        tune.main([*argv, "--write"])
    assert (model / "model.yaml").read_text() == manifest and model_version(model) == "v7"
    assert (model / "eval" / "nms_sweep.json").read_text() == shipped_record  # no record of a sweep not run
    assert tune.main([*argv, "--write", "--version", "v8"]) == 0
    assert model_version(model) == "v8"
    assert json.loads((model / "eval" / "nms_sweep.json").read_text())["chosen"] == 0.2
    assert yaml.safe_load((model / "model.yaml").read_text())["config"]["nms_threshold"] == 0.2


def test_candidates_outside_zero_one_are_refused(demo_model_dir):
    with pytest.raises(SystemExit):
        tune.main(["nms", "--model_dir", str(demo_model_dir), "--candidates", "0.3,1.5"])


def test_an_unchanged_choice_writes_nothing(demo_model_dir, tmp_path):
    """A gain nobody reaches (``--min-gain 1``): the default stays, so ``--write --version v8`` leaves
    model.yaml and the version alone (a version is only for a changed default)."""
    model = _copy_with_default(demo_model_dir, tmp_path, 0.45, version="v7")
    manifest = (model / "model.yaml").read_text()
    argv = ["nms", "--model_dir", str(model), "--count", "2", "--candidates", "0.3,0.95", "--write"]
    assert tune.main([*argv, "--min-gain", "1", "--version", "v8"]) == 0
    record = json.loads((model / "eval" / "nms_sweep.json").read_text())
    assert record["chosen"] == 0.45 and record["min_gain"] == 1.0
    assert [r["nms_threshold"] for r in record["candidates"]] == [0.3, 0.45, 0.95]
    assert (model / "model.yaml").read_text() == manifest and model_version(model) == "v7"
