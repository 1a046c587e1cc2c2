"""Class labels of the models this project knows."""

from __future__ import annotations

#: Pascal VOC labels in balancap's ``pascalvoc_common.py`` order; index 0 is the background.
VOC_LABELS: tuple[str, ...] = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
