"""The shipped demo model: quality on held-out data, and the default server detecting real objects."""

from __future__ import annotations

import subprocess
import sys

import httpx
import numpy as np
import yaml
from serving_fixtures import REPO_ROOT, ServerProcess, b64, server_env

from predictor.datasets.shapes import CLASS_NAMES, EVAL_SEED, TRAIN_SEED, generate_sample
from predictor.ssd import boxes as box_ops
from predictor.tools.localserver import free_port


def test_demo_model_files(demo_model_dir):
    weights = demo_model_dir / "weights.npz"
    assert weights.stat().st_size <= 10 * 1024 * 1024
    manifest = yaml.safe_load((demo_model_dir / "model.yaml").read_text())
    assert tuple(manifest["config"]["class_names"]) == tuple(CLASS_NAMES)
    data = manifest["trained"]["data"]  # recipe v2 also records its photo_fraction
    assert (data["kind"], data["seed"]) == ("shapes", TRAIN_SEED) and set(data) <= {
        "kind",
        "seed",
        "photo_fraction",
    }
    assert TRAIN_SEED != EVAL_SEED
    assert (demo_model_dir / "MODEL_CARD.md").exists()


def test_demo_model_ap50_on_100_held_out_images(demo_model_dir):
    from predictor.ssd.detector import Detector
    from predictor.tools.evaluate import evaluate_detector

    detector = Detector.from_dir(str(demo_model_dir))
    samples = [generate_sample(EVAL_SEED, i) for i in range(100)]
    result = evaluate_detector(detector, samples, CLASS_NAMES)
    assert result["AP50"] >= 0.85, result["AP50"]
    assert result["mAP"] >= 0.55, result["mAP"]
    assert all(ap > 0.5 for ap in result["per_class_AP50"].values()), result["per_class_AP50"]


def test_default_server_serves_the_demo_model(tmp_path):
    """``python -m predictor`` with no --model_dir answers a sample image with correctly labelled boxes."""
    http_port, grpc_port = free_port(), free_port()
    log = tmp_path / "server.log"
    cmd = [sys.executable, "-m", "predictor", "--http_port", str(http_port), "--grpc_port", str(grpc_port)]
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=server_env(), stdout=f, stderr=subprocess.STDOUT)
    server = ServerProcess(proc, http_port, grpc_port, log, "ssd")
    try:
        server.wait_ready()
        sample = REPO_ROOT / "docs" / "samples" / "shapes-1.jpg"
        truth = generate_sample(EVAL_SEED, 1)
        r = httpx.post(
            f"{server.url}/v1/models/ssd:predict",
            json={"instances": [{"b64": b64(sample.read_bytes())}]},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        dets = r.json()["predictions"][0]
        assert len(dets) >= 3
        boxes = np.array([[d["xmin"], d["ymin"], d["xmax"], d["ymax"]] for d in dets], np.float32)
        iou = box_ops.iou_xyxy(boxes, truth.boxes).numpy()
        for d, row in zip(dets, iou, strict=True):
            if d["score"] >= 0.9:  # confident detections are right: same label, IoU >= 0.5
                j = int(row.argmax())
                assert row[j] >= 0.5 and d["label"] == CLASS_NAMES[truth.labels[j]], (d, row)
        # Recall: the objects found (a detection of the same label at IoU >= 0.5). Of this image's 7,
        # the shipped model finds 5 at its default threshold (the square, 4% overlap, and one cross at
        # IoU 0.63 but under the threshold, are missed; see MODEL_CARD's limitations).
        labels = np.array([CLASS_NAMES.index(d["label"]) for d in dets])
        found = ((iou >= 0.5) & (labels[:, None] == truth.labels[None, :])).any(axis=0)
        assert len(truth.labels) == 7 and int(found.sum()) >= 5, found
        assert "demo" in log.read_text()
    finally:
        server.terminate()
