"""Tests of the synthetic shapes dataset and the COCO reader."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from predictor.datasets.coco import CocoDataset, DetectionSample, samples_to_coco
from predictor.datasets.shapes import (
    CLASS_NAMES,
    EVAL_SEED,
    MAX_SIDE,
    MIN_INSIDE,
    MIN_SIDE,
    MIN_VISIBLE,
    PHOTO_EVAL_SEED,
    PHOTO_SIZE_RANGE,
    TRAIN_SEED,
    ShapesDataset,
    clip_polygon,
    generate_photo_sample,
    generate_sample,
    generate_sample_debug,
    heldout_sample,
    is_photo_index,
    polygon_area,
    polygon_box,
    render_shape,
    shape_polygon,
    write_coco,
)

N_SAMPLES = 40


@pytest.fixture(scope="module")
def samples() -> list:
    return [generate_sample_debug(3, i) for i in range(N_SAMPLES)]


def test_class_names_and_seeds() -> None:
    assert CLASS_NAMES == ("background", "circle", "square", "triangle", "star", "hexagon", "cross")
    assert TRAIN_SEED < 1000 and EVAL_SEED == 20261125
    assert ShapesDataset(0, 5).class_names == CLASS_NAMES


def test_deterministic() -> None:
    a, b = generate_sample(7, 11), generate_sample(7, 11)
    assert a.image.tobytes() == b.image.tobytes()
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.labels, b.labels)
    for other in (generate_sample(7, 12), generate_sample(8, 11)):
        assert other.image.shape != a.image.shape or other.image.tobytes() != a.image.tobytes()


def test_sample_contract(samples: list) -> None:
    counts = []
    for debug in samples:
        image, boxes, labels = debug.sample
        h, w = image.shape[:2]
        assert image.dtype == np.uint8 and image.shape == (h, w, 3)
        assert MIN_SIDE <= w <= MAX_SIDE and MIN_SIDE <= h <= MAX_SIDE
        assert boxes.dtype == np.float32 and boxes.shape == (len(labels), 4)
        assert labels.dtype == np.int32 and 1 <= len(labels) <= 8
        assert np.all((labels >= 1) & (labels <= 6))
        assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, 2] <= w) and np.all(boxes[:, 3] <= h)
        assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])
        side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        assert np.all(side <= 0.6 * min(w, h) + 1) and np.all(side >= 0.08 * 0.5 * min(w, h))
        counts.append(len(labels))
    assert max(counts) > 4 and min(counts) < 4
    assert {int(v) for d in samples for v in d.sample.labels} == set(range(1, 7))


def test_each_shape_half_visible(samples: list) -> None:
    for debug in samples:
        visible = np.bincount(debug.instance_map.ravel(), minlength=len(debug.full_pixels) + 1)[1:]
        assert np.all(visible >= MIN_VISIBLE * debug.full_pixels)
        assert np.all(debug.full_pixels > 0)


def _mask_box(mask: np.ndarray) -> np.ndarray:
    """Box ``(xmin, ymin, xmax, ymax)`` of a bool mask, in continuous pixel coordinates."""
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)


def test_top_shape_box_is_tight(samples: list) -> None:
    """The last-drawn shape is fully visible, so its mask must touch all four box edges."""
    for debug in samples:
        k = len(debug.sample.labels)
        tol = 2.0 if debug.sample.labels[-1] == 4 else 1.0  # star tips are thin
        np.testing.assert_allclose(_mask_box(debug.instance_map == k), debug.sample.boxes[-1], atol=tol)


@pytest.mark.parametrize("label", range(1, 7))
@pytest.mark.parametrize("angle", [0.0, 0.3, 1.1, 2.5])
def test_render_shape_tight(label: int, angle: float) -> None:
    coverage, box = render_shape(label, (160.3, 140.7), 61.0, angle, (320, 300))
    assert coverage.shape == (300, 320)
    np.testing.assert_allclose(_mask_box(coverage > 0), box, atol=1.0)
    np.testing.assert_allclose(_mask_box(coverage >= 128), box, atol=2.0 if label == 4 else 1.0)


def test_shape_geometry() -> None:
    r = 50.0
    for label, n in [(2, 4), (3, 3), (4, 10), (5, 6), (6, 12)]:
        poly = shape_polygon(label, r, 0.7)
        assert poly.shape == (n, 2)
        assert np.isclose(np.linalg.norm(poly, axis=1).max(), r)
    tri = shape_polygon(3, r, 0.2)
    sides = np.linalg.norm(tri - np.roll(tri, 1, axis=0), axis=1)
    np.testing.assert_allclose(sides, r * math.sqrt(3))
    cross = shape_polygon(6, r, 0.0, cross_ratio=1 / 3)
    span = cross[:, 1].max() - cross[:, 1].min()
    np.testing.assert_allclose(cross[0, 0] * 2, span / 3)  # arm width = span / 3


# ------------------------------------------------------------------------------- photo-like style


@pytest.fixture(scope="module")
def photo_samples() -> list:
    return [generate_sample_debug(3, i, "photo") for i in range(N_SAMPLES)]


def test_photo_style_is_deterministic_and_its_own_stream() -> None:
    a, b = generate_photo_sample(7, 11), generate_photo_sample(7, 11)
    assert a.image.tobytes() == b.image.tobytes()
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.labels, b.labels)
    for other in (generate_photo_sample(7, 12), generate_photo_sample(8, 11), generate_sample(7, 11)):
        assert other.image.shape != a.image.shape or other.image.tobytes() != a.image.tobytes()


def test_photo_heldout_set_is_not_in_the_training_stream() -> None:
    """Its own seed (not a training seed, not the plain held-out seed); the training stream's photo-like
    items at the same positions are other images."""
    assert PHOTO_EVAL_SEED >= 1000 and PHOTO_EVAL_SEED != EVAL_SEED
    train = ShapesDataset(TRAIN_SEED, 100, photo_fraction=1.0)
    for i in range(3):
        held = heldout_sample("photo", i)
        assert held.image.tobytes() == generate_photo_sample(PHOTO_EVAL_SEED, i).image.tobytes()
        assert held.image.tobytes() != train[i].image.tobytes()
    assert heldout_sample("plain", 2).image.tobytes() == generate_sample(EVAL_SEED, 2).image.tobytes()
    with pytest.raises(ValueError, match="style"):
        heldout_sample("oil-painting", 0)


def test_photo_mix_gives_each_window_its_share() -> None:
    flags = [is_photo_index(i, 0.25) for i in range(5000)]
    assert abs(sum(flags) / len(flags) - 0.25) < 0.005
    for start in range(0, 5000 - 32, 32):  # each training batch of 32: 8 +- 1 photo-like images
        assert 7 <= sum(flags[start : start + 32]) <= 9
    assert not any(is_photo_index(i, 0.0) for i in range(100))
    assert all(is_photo_index(i, 1.0) for i in range(100))
    mixed = ShapesDataset(4, 50, photo_fraction=0.25)
    for i in range(8):
        want = generate_photo_sample(4, i) if flags[i] else generate_sample(4, i)
        assert mixed[i].image.tobytes() == want.image.tobytes()
    with pytest.raises(ValueError, match="photo_fraction"):
        ShapesDataset(0, 5, photo_fraction=1.5)


def test_photo_sample_contract_and_small_objects(photo_samples: list) -> None:
    sides = []
    for debug in photo_samples:
        image, boxes, labels = debug.sample
        h, w = image.shape[:2]
        assert image.dtype == np.uint8 and image.shape == (h, w, 3)
        assert boxes.dtype == np.float32 and boxes.shape == (len(labels), 4) and len(labels) >= 1
        assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, 2] <= w) and np.all(boxes[:, 3] <= h)
        assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])
        inside = (boxes[:, 0] > 0) & (boxes[:, 1] > 0) & (boxes[:, 2] < w) & (boxes[:, 3] < h)
        side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])[inside] / min(w, h)
        sides += side.tolist()
    sides = np.array(sides)
    lo, hi = PHOTO_SIZE_RANGE
    assert np.all(sides <= hi + 0.01) and np.all(sides >= lo * 0.5)
    assert np.mean(sides < 0.08) > 0.1  # smaller than the plain style's smallest shapes
    visible = [
        np.bincount(d.instance_map.ravel(), minlength=len(d.full_pixels) + 1)[1:] for d in photo_samples
    ]
    assert all(np.all(v >= MIN_VISIBLE * d.full_pixels) for v, d in zip(visible, photo_samples, strict=True))


def test_border_shapes_are_cut_and_their_boxes_clipped(photo_samples: list) -> None:
    """Some shapes cross the border; the top (fully visible) shape's mask touches its box edges, the
    clipped ones included."""
    touching = 0
    for debug in photo_samples:
        image, boxes, labels = debug.sample
        h, w = image.shape[:2]
        touching += int(
            np.sum((boxes[:, 0] == 0) | (boxes[:, 1] == 0) | (boxes[:, 2] == w) | (boxes[:, 3] == h))
        )
        # Half-covered pixels count in the mask: a vertex tip can end up to 2 px inside the box.
        np.testing.assert_allclose(_mask_box(debug.instance_map == len(labels)), boxes[-1], atol=2.0)
    assert touching >= 5


def test_border_placement_keeps_min_inside() -> None:
    """With every shape placed across a border: every polygon crosses the border, its box lies inside the
    image and within the clipped polygon box, and each placed shape keeps MIN_INSIDE of its area in the
    image."""
    from predictor.datasets import shapes

    style = shapes._Style((0.1, 0.5), 1.0, False)
    rng = np.random.default_rng(0)
    for _ in range(50):
        g = shapes._sample_geometry(rng, 400, 300, style)
        lo, hi = g.polygon.min(axis=0), g.polygon.max(axis=0)
        assert lo[0] < 0 or lo[1] < 0 or hi[0] > 400 or hi[1] > 300
        clipped = np.clip(np.concatenate([lo, hi]), 0, [400, 300, 400, 300])
        assert np.all(g.box[:2] >= clipped[:2] - 1e-4) and np.all(g.box[2:] <= clipped[2:] + 1e-4)
    canvas = shapes._Canvas(np.zeros((300, 400, 3), np.uint8))
    for _ in range(30):
        shapes._place_shape(rng, canvas, style)
    assert len(canvas.shapes) >= 3
    for shape, full in zip(canvas.shapes, canvas.full, strict=True):
        assert full >= MIN_INSIDE * polygon_area(shape.polygon) * 0.97  # mask >= 128 vs exact coverage


def test_clip_polygon_hand_computed() -> None:
    """A diamond centred on the left border keeps its right half; its box is the visible part's."""
    diamond = np.array([[0.0, 0.0], [10.0, 10.0], [0.0, 20.0], [-10.0, 10.0]])
    half = clip_polygon(diamond, 100, 100)
    np.testing.assert_allclose(polygon_area(half), 100.0)
    np.testing.assert_allclose(polygon_box(half), [0, 0, 10, 20])
    # Cut by the bottom edge at y = 5: the part inside is the tip, 5 px tall and 10 px wide.
    np.testing.assert_allclose(
        polygon_box(clip_polygon(diamond + np.array([50.0, 0.0]), 100, 5)), [45, 0, 55, 5]
    )
    assert clip_polygon(diamond - np.array([50.0, 0.0]), 100, 100).shape == (0, 2)


def test_polygon_area() -> None:
    np.testing.assert_allclose(polygon_area(shape_polygon(2, 10.0, 0.3)), 200.0)  # square of diagonal 20
    np.testing.assert_allclose(polygon_area(np.array([[0, 0], [4, 0], [0, 3]], float)), 6.0)


def test_dataset_indexing() -> None:
    ds = ShapesDataset(seed=5, size=3)
    assert len(ds) == 3
    assert ds[-1].image.tobytes() == generate_sample(5, 2).image.tobytes()
    with pytest.raises(IndexError):
        ds[3]
    assert len(list(ds)) == 3


def test_write_coco_roundtrip(tmp_path: Path) -> None:
    from pycocotools.coco import COCO

    ann = write_coco(tmp_path, seed=2, count=4, start=10)
    data = json.loads(ann.read_text())
    assert [c["name"] for c in data["categories"]] == list(CLASS_NAMES[1:])
    coco = COCO(str(ann))
    assert sorted(coco.getImgIds()) == [10, 11, 12, 13]
    for image_id in coco.getImgIds():
        sample = generate_sample(2, image_id)
        info = coco.loadImgs(image_id)[0]
        assert (info["height"], info["width"]) == sample.image.shape[:2]
        assert (tmp_path / "images" / info["file_name"]).is_file()
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        assert [a["category_id"] for a in anns] == sample.labels.tolist()
        xyxy = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]
        np.testing.assert_allclose(xyxy, sample.boxes, atol=1e-2)
        assert all(a["iscrowd"] == 0 and a["area"] > 0 and a["id"] >= 1 for a in anns)

    ds = CocoDataset(ann, tmp_path / "images")
    assert len(ds) == 4 and ds.class_names == CLASS_NAMES
    assert ds.category_ids == (0, 1, 2, 3, 4, 5, 6) and ds.image_ids == (10, 11, 12, 13)
    image, boxes, labels = ds[1]
    sample = generate_sample(2, 11)
    assert image.shape == sample.image.shape and image.dtype == np.uint8
    assert np.abs(image.astype(int) - sample.image).mean() < 4  # JPEG quality 95
    np.testing.assert_allclose(boxes, sample.boxes, atol=1e-2)
    np.testing.assert_array_equal(labels, sample.labels)


def test_write_coco_photo_style(tmp_path: Path) -> None:
    data = json.loads(write_coco(tmp_path, seed=PHOTO_EVAL_SEED, count=2, style="photo").read_text())
    for image_id in (0, 1):
        sample = generate_photo_sample(PHOTO_EVAL_SEED, image_id)
        anns = [a for a in data["annotations"] if a["image_id"] == image_id]
        assert [a["category_id"] for a in anns] == sample.labels.tolist()
        xyxy = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]
        np.testing.assert_allclose(xyxy, sample.boxes, atol=1e-2)
    assert "style='photo'" in data["info"]["description"]
    with pytest.raises(ValueError, match="style"):
        write_coco(tmp_path, seed=0, count=1, style="sketch")


def test_coco_dataset_remaps_and_filters(tmp_path: Path) -> None:
    from PIL import Image

    img = np.zeros((20, 30, 3), np.uint8)
    Image.fromarray(img).save(tmp_path / "a.png")
    sample = DetectionSample(img, np.array([[1, 2, 11, 12], [5, 5, 9, 9]], np.float32), np.array([2, 1]))
    data = samples_to_coco(
        [sample], ("background", "cat", "dog"), image_ids=[7], file_names=["a.png"], category_ids=[0, 17, 3]
    )
    data["annotations"] += [
        {"id": 10, "image_id": 7, "category_id": 3, "bbox": [0, 0, 5, 5], "area": 25, "iscrowd": 1},
        {"id": 11, "image_id": 7, "category_id": 3, "bbox": [4, 4, 0, 5], "area": 0, "iscrowd": 0},
    ]
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    ds = CocoDataset(ann, tmp_path)
    assert ds.class_names == ("background", "dog", "cat") and ds.category_ids == (0, 3, 17)
    image, boxes, labels = ds[0]
    assert image.shape == (20, 30, 3)
    np.testing.assert_allclose(boxes, sample.boxes)
    np.testing.assert_array_equal(labels, [1, 2])  # cat (17) -> 2, dog (3) -> 1


def test_coco_dataset_exif_orientation(tmp_path: Path) -> None:
    from PIL import Image

    im = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    im.save(tmp_path / "r.jpg", exif=exif)
    data = {
        "images": [{"id": 1, "file_name": "r.jpg", "width": 20, "height": 40}],
        "annotations": [],
        "categories": [{"id": 1, "name": "x"}],
    }
    (tmp_path / "a.json").write_text(json.dumps(data))
    image, boxes, labels = CocoDataset(tmp_path / "a.json", tmp_path)[0]
    assert image.shape == (40, 20, 3) and boxes.shape == (0, 4) and labels.shape == (0,)


def test_cli(tmp_path: Path) -> None:
    cmd = ["-m", "predictor.datasets.shapes", "--out", str(tmp_path), "--seed", "1", "--count", "2"]
    out = subprocess.run(
        [sys.executable, *cmd],
        check=True,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert Path(out.stdout.strip()) == tmp_path / "annotations.json"
    assert len(list((tmp_path / "images").glob("*.jpg"))) == 2
