"""Detection datasets: the synthetic shapes set and COCO-format readers (see :mod:`.coco` conventions)."""

from predictor.datasets.coco import CocoDataset, DetectionSample
from predictor.datasets.shapes import (
    CLASS_NAMES,
    EVAL_SEED,
    TRAIN_SEED,
    ShapeSample,
    ShapesDataset,
    generate_sample,
    write_coco,
)

__all__ = [
    "CLASS_NAMES",
    "EVAL_SEED",
    "TRAIN_SEED",
    "CocoDataset",
    "DetectionSample",
    "ShapeSample",
    "ShapesDataset",
    "generate_sample",
    "write_coco",
]
