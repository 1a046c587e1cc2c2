"""``ssd-detect compare``: box matching by hand, then two real servers (the demo model against itself and
against a copy that serves with a raised score threshold, version ``v2-strict``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from serving_fixtures import start_server

from predictor.client.cli import main as client_main
from predictor.client.compare import match_image
from predictor.ssd.weights import VERSION_FILE, model_version

STRICT_THRESHOLD = 0.8


def det(label: str, score: float, box: tuple[float, float, float, float]) -> dict[str, Any]:
    xmin, ymin, xmax, ymax = box
    return {
        "label": label,
        "class_id": 0,
        "score": score,
        "xmin": xmin,
        "ymin": ymin,
        "xmax": xmax,
        "ymax": ymax,
    }


def test_match_image_by_hand():
    a = [det("circle", 0.9, (0, 0, 10, 10)), det("star", 0.7, (50, 50, 60, 60))]
    # circle: IoU 90 / 110 = 0.818 with A's; star: IoU 25 / 175 = 0.14, below 0.5; square only in B.
    b = [
        det("circle", 0.8, (1, 0, 11, 10)),
        det("star", 0.7, (55, 55, 65, 65)),
        det("square", 0.5, (0, 0, 5, 5)),
    ]
    out = match_image(a, b)
    assert (out["circle"].matched, out["circle"].only_a, out["circle"].only_b) == (1, 0, 0)
    assert out["circle"].score_deltas == pytest.approx([-0.1])
    assert (out["star"].matched, out["star"].only_a, out["star"].only_b) == (0, 1, 1)
    assert (out["square"].matched, out["square"].only_a, out["square"].only_b) == (0, 0, 1)
    assert out["star"].agreement == 0.0 and out["circle"].agreement == 1.0
    assert match_image(a, b, iou=0.1)["star"].matched == 1  # 0.14 >= 0.1


def test_match_image_is_greedy_by_score_and_one_to_one():
    """The higher-scoring A box takes the B box first, even if the other overlaps it more."""
    b = [det("circle", 0.5, (0, 0, 10, 10))]
    a = [det("circle", 0.6, (0, 0, 10, 10)), det("circle", 0.9, (0, 0, 10, 8))]
    out = match_image(a, b)["circle"]
    assert (out.matched, out.only_a, out.only_b) == (1, 1, 0)
    assert out.score_deltas == pytest.approx([0.5 - 0.9])
    assert match_image([], []) == {}


# ----------------------------------------------------------------------------- two real servers
@pytest.fixture(scope="module")
def eval_set(tmp_path_factory) -> Path:
    """Eight held-out shapes images with their COCO annotations."""
    from predictor.datasets.shapes import EVAL_SEED, write_coco

    return write_coco(tmp_path_factory.mktemp("eval"), EVAL_SEED, 8, image_format="png")


@pytest.fixture(scope="module")
def strict_model_dir(demo_model_dir, tmp_path_factory) -> Path:
    """The demo model's weights serving with score threshold 0.8: a deliberately different model."""
    out = tmp_path_factory.mktemp("strict") / "model"
    shutil.copytree(demo_model_dir, out)
    manifest = yaml.safe_load((out / "model.yaml").read_text())
    assert manifest["config"]["score_threshold"] < STRICT_THRESHOLD
    manifest["config"]["score_threshold"] = STRICT_THRESHOLD
    (out / "model.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    (out / VERSION_FILE).write_text("v2-strict\n")
    return out


@pytest.fixture(scope="module")
def servers(demo_model_dir, strict_model_dir, tmp_path_factory):
    logs = tmp_path_factory.mktemp("compare_servers")
    stable = start_server(demo_model_dir, logs / "stable.log", "--max_batch_size", "4")
    strict = start_server(strict_model_dir, logs / "strict.log", "--max_batch_size", "4")
    try:
        stable.wait_ready()
        strict.wait_ready()
        yield stable, strict
    finally:
        stable.terminate()
        strict.terminate()


def run_compare(*args: str, capsys) -> tuple[int, dict[str, Any], str]:
    code = client_main(["compare", *args, "--json", "-"])
    out = capsys.readouterr().out
    return code, json.loads(out), out


def test_a_model_against_itself_agrees_fully(servers, eval_set, demo_model_dir, capsys):
    stable, _ = servers
    images = str(eval_set.parent / "images")
    code, report, _ = run_compare("--url", stable.url, "--url", stable.url, images, capsys=capsys)
    assert code == 0, report["gate"]
    assert report["overall"]["agreement"] == 1.0 and report["overall"]["matched"] > 0
    assert report["overall"]["only_a"] == report["overall"]["only_b"] == 0
    assert report["overall"]["largest_score_delta"] == 0.0
    assert report["a"]["model_versions"] == report["b"]["model_versions"] == [model_version(demo_model_dir)]
    assert report["compared"] == report["images"] == 8


def test_a_stricter_model_disagrees_and_the_gate_names_the_classes(servers, eval_set, capsys):
    stable, strict = servers
    images = str(eval_set.parent / "images")
    args = ("--url", stable.url, "--url", strict.url, "--annotations", str(eval_set), images)
    code, report, _ = run_compare(*args, capsys=capsys)
    assert report["b"]["model_versions"] == ["v2-strict"]
    overall = report["overall"]
    # Same weights, higher threshold: B finds a subset of A's boxes, at the same scores.
    assert overall["only_b"] == 0 and overall["only_a"] > 0 and overall["largest_score_delta"] == 0.0
    assert overall["agreement"] < 1.0
    failing = report["disagreeing_classes"]
    assert failing, report["classes"]
    for name, cls in report["classes"].items():
        assert (name in failing) == (cls["agreement"] < 0.95)
    assert code == 1
    assert report["gate"]["passed"] is False
    assert any(r.startswith(f"class {failing[0]}: agreement") for r in report["gate"]["reasons"])
    ap_a, ap_b = report["ap"]["a"], report["ap"]["b"]
    assert ap_a["images"] == ap_b["images"] == 8
    assert 0 < ap_b["AP50"] <= 1 and 0 < ap_a["AP50"] <= 1
    # A gate loose enough for what was measured passes (exit 0).
    lowest = min([overall["agreement"], *(c["agreement"] for c in report["classes"].values())])
    # The report rounds to six places (7/11 -> 0.636364, above itself): one step below that.
    code, report, _ = run_compare(*args, "--min-agreement", f"{lowest - 1e-6:.6f}", capsys=capsys)
    assert code == 0, report["gate"]


def test_compare_table_over_grpc(servers, eval_set, capsys):
    stable, strict = servers
    images = sorted((eval_set.parent / "images").iterdir())[:2]
    code = client_main(
        [
            "compare",
            "--protocol",
            "grpc",
            "--url",
            stable.grpc_target,
            "--url",
            strict.grpc_target,
            *map(str, images),
        ]
    )
    table = capsys.readouterr().out
    assert "(model version v2-strict)" in table
    assert "(all)" in table and ("gate: PASS" in table or "gate: FAIL" in table)
    assert code in (0, 1)


def test_compare_usage_errors(capsys, tmp_path):
    image = tmp_path / "a.png"
    image.write_bytes(b"")
    assert client_main(["compare", "--url", "http://127.0.0.1:9", str(image)]) == 2
    assert "give it twice" in capsys.readouterr().err
