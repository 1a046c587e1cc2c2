"""Shared fixtures: small models written by the tests themselves (no downloads), sample images."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

#: The server fixtures (``ssd_server``, ``direct_detector``), owned by the serving tests.
pytest_plugins = ["serving_fixtures"]

# Before anything imports TensorFlow: quiet logs, CPU only (tests compare exact numbers).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_config():
    """The demo architecture (6 shape classes) at width 8: fast to build and run."""
    from predictor.datasets.shapes import CLASS_NAMES
    from predictor.ssd.config import ssd_tiny

    return ssd_tiny(tuple(CLASS_NAMES), width=8).replace(score_threshold=0.2)


@pytest.fixture(scope="session")
def random_tiny_model_dir(tmp_path_factory, tiny_config) -> Path:
    """A project model directory with seeded random weights (produces plenty of detections)."""
    import keras

    from predictor.ssd.network import build_network
    from predictor.ssd.weights import save_model_dir

    keras.utils.set_random_seed(7)
    model = build_network(tiny_config)
    return save_model_dir(model, tiny_config, tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def demo_model_dir() -> Path:
    """The trained demo model shipped in the package."""
    from predictor.models import DEMO_MODEL_DIR

    if not (DEMO_MODEL_DIR / "model.yaml").exists():
        pytest.fail(f"the shipped demo model is missing from {DEMO_MODEL_DIR}")
    return DEMO_MODEL_DIR


@pytest.fixture(scope="session")
def shapes_images() -> list[np.ndarray]:
    """A few held-out synthetic images (uint8 RGB, various sizes)."""
    from predictor.datasets.shapes import EVAL_SEED, generate_sample

    return [generate_sample(EVAL_SEED, i).image for i in range(6)]
