"""COCO-format detection datasets: the common sample type, reading, and building annotation dicts.

Conventions shared by every dataset in :mod:`predictor.datasets`:

* images are ``uint8`` RGB arrays of shape ``[H, W, 3]``;
* boxes are ``float32`` arrays of shape ``[K, 4]`` holding ``(xmin, ymin, xmax, ymax)`` in pixels, in
  continuous image coordinates (pixel ``(col, row)`` covers ``[col, col + 1) x [row, row + 1)``), so a
  box spanning the whole image is ``(0, 0, W, H)``;
* labels are ``int32`` arrays of shape ``[K]`` with contiguous class ids ``1..C``; id 0 is the
  background and ``class_names[0] == "background"``.

COCO stores boxes as ``[x, y, w, h]`` with the same pixel convention, so the conversion is exact.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, ImageOps


class DetectionSample(NamedTuple):
    """One image with its objects.

    ``image``: ``[H, W, 3]`` uint8 RGB. ``boxes``: ``[K, 4]`` float32 ``(xmin, ymin, xmax, ymax)`` in
    pixels. ``labels``: ``[K]`` int32 contiguous class ids in ``1..C``.
    """

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray


def xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    """``[K, 4]`` ``(xmin, ymin, xmax, ymax)`` -> ``[K, 4]`` COCO ``(x, y, w, h)`` (float64)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1)


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """``[K, 4]`` COCO ``(x, y, w, h)`` -> ``[K, 4]`` ``(xmin, ymin, xmax, ymax)`` (float32)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1).astype(np.float32)


def coco_categories(class_names: Sequence[str], category_ids: Sequence[int] | None = None) -> list[dict]:
    """COCO ``categories`` for ``class_names`` (index 0, the background, is skipped).

    ``category_ids[i]`` is the COCO id of contiguous class ``i`` (default: ``i`` itself).
    """
    ids = list(range(len(class_names))) if category_ids is None else list(category_ids)
    return [{"id": int(ids[i]), "name": name} for i, name in enumerate(class_names) if i > 0]


def image_annotations(
    image_id: int,
    boxes: np.ndarray,
    labels: np.ndarray,
    first_ann_id: int,
    category_ids: Sequence[int] | None = None,
) -> list[dict]:
    """COCO ``annotations`` of one image; ids run from ``first_ann_id`` (must be >= 1 for COCOeval).

    ``boxes``: ``[K, 4]`` xyxy pixels; ``labels``: ``[K]`` contiguous ids, mapped through
    ``category_ids`` when given. ``area`` is the box area (no segmentation is stored).
    """
    out = []
    for k, (xywh, label) in enumerate(zip(xyxy_to_xywh(boxes), np.asarray(labels).reshape(-1), strict=True)):
        x, y, w, h = (round(float(v), 3) for v in xywh)
        cat = int(label) if category_ids is None else int(category_ids[int(label)])
        out.append(
            {
                "id": first_ann_id + k,
                "image_id": int(image_id),
                "category_id": cat,
                "bbox": [x, y, w, h],
                "area": round(w * h, 3),
                "iscrowd": 0,
            }
        )
    return out


def samples_to_coco(
    samples: Sequence[DetectionSample],
    class_names: Sequence[str],
    image_ids: Sequence[int] | None = None,
    file_names: Sequence[str] | None = None,
    category_ids: Sequence[int] | None = None,
) -> dict[str, Any]:
    """A COCO ground-truth dict (``images``, ``annotations``, ``categories``) for in-memory samples.

    Image ids default to the position in ``samples``; file names to ``f"{id:06d}.jpg"``.
    """
    ids = list(range(len(samples))) if image_ids is None else [int(i) for i in image_ids]
    names = [f"{i:06d}.jpg" for i in ids] if file_names is None else list(file_names)
    images, annotations = [], []
    for sample, image_id, name in zip(samples, ids, names, strict=True):
        h, w = sample.image.shape[:2]
        images.append({"id": image_id, "file_name": name, "width": int(w), "height": int(h)})
        annotations += image_annotations(
            image_id, sample.boxes, sample.labels, len(annotations) + 1, category_ids
        )
    return {
        "info": {"description": "predictor.datasets"},
        "images": images,
        "annotations": annotations,
        "categories": coco_categories(class_names, category_ids),
    }


def load_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as ``[H, W, 3]`` uint8 RGB, with its EXIF orientation applied."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


class CocoDataset:
    """A COCO-format detection dataset (annotation JSON + image folder) as :class:`DetectionSample`.

    Category ids are remapped to contiguous labels ``1..C`` in ascending COCO-id order;
    ``category_ids[label]`` gives the original id back (``category_ids[0]`` is 0, the background).
    Crowd annotations and boxes with zero width or height are skipped. Images are ordered by id;
    ``image_ids[i]`` is the COCO id of item ``i``.
    """

    def __init__(self, ann_file: str | Path, image_dir: str | Path) -> None:
        self.ann_file = Path(ann_file)
        self.image_dir = Path(image_dir)
        with open(self.ann_file, encoding="utf-8") as f:
            data = json.load(f)
        cats = sorted(data.get("categories", []), key=lambda c: int(c["id"]))
        self.category_ids: tuple[int, ...] = (0, *(int(c["id"]) for c in cats))
        self.class_names: tuple[str, ...] = ("background", *(str(c["name"]) for c in cats))
        self._label_of = {cid: i for i, cid in enumerate(self.category_ids) if i > 0}
        self.images: list[dict] = sorted(data.get("images", []), key=lambda im: int(im["id"]))
        self.image_ids: tuple[int, ...] = tuple(int(im["id"]) for im in self.images)
        self._anns: dict[int, list[dict]] = {i: [] for i in self.image_ids}
        for ann in data.get("annotations", []):
            if self._keep(ann):
                self._anns[int(ann["image_id"])].append(ann)

    def _keep(self, ann: dict) -> bool:
        """Whether an annotation is a usable box: not crowd, positive size, known image and class."""
        if ann.get("iscrowd", 0) or int(ann["image_id"]) not in self._anns:
            return False
        _, _, w, h = (float(v) for v in ann["bbox"])
        return w > 0 and h > 0 and int(ann["category_id"]) in self._label_of

    @property
    def num_classes(self) -> int:
        """Number of object classes ``C`` (background not counted)."""
        return len(self.class_names) - 1

    def __len__(self) -> int:
        return len(self.images)

    def targets(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Boxes ``[K, 4]`` float32 xyxy pixels and labels ``[K]`` int32 of item ``i`` (no image read)."""
        anns = self._anns[self.image_ids[i]]
        boxes = xywh_to_xyxy(np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4))
        labels = np.array([self._label_of[int(a["category_id"])] for a in anns], dtype=np.int32)
        return boxes, labels

    def __getitem__(self, i: int) -> DetectionSample:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} images")
        i %= len(self)
        image = load_rgb(self.image_dir / self.images[i]["file_name"])
        boxes, labels = self.targets(i)
        return DetectionSample(image, boxes, labels)
