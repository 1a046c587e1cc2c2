"""Deterministic synthetic "shapes" detection dataset.

Each image is RGB uint8, ``W`` and ``H`` each drawn independently from ``300..640`` px, and holds 1 to 8
filled solid-colour shapes of six classes (ids 1..6): circle, square, triangle (equilateral), star
(regular, five-pointed), hexagon (regular) and cross (plus sign). Shapes are rotated freely, sized
log-uniformly (diameter of the circumscribed circle) from 8% to 60% of the shorter image side, always
fully inside the image, and may overlap, but every shape keeps at least half of its pixels visible.
Shape colours stand out from the background under them and from nearby shapes. Backgrounds are
flat, gradients, noise, stripes, checkerboards or blurred blobs; some images are JPEG re-encoded.

**Photo-like style** (:func:`generate_photo_sample`): the same classes and box convention on procedural
textures (multi-octave value noise mapped through colour palettes, per-channel colour fields, wood rings,
marble veins, warped stripes), with distractor strokes, uneven lighting, shaded shape fills, shapes down
to 5% of the shorter side, shapes cut by the image border (at least :data:`MIN_INSIDE` of their area
inside; their box is the extent of the part inside the image), then whole-image blur, sensor noise and
JPEG at qualities down to 10. Its held-out set uses :data:`PHOTO_EVAL_SEED`;
``ShapesDataset(photo_fraction=f)`` mixes it into the training stream.

Boxes are the tight axis-aligned extent of the whole (possibly occluded) shape, computed from the exact
polygon, as ``(xmin, ymin, xmax, ymax)`` float32 in continuous pixel coordinates (pixel ``(col, row)``
covers ``[col, col + 1) x [row, row + 1)``; see :mod:`predictor.datasets.coco`).

Seed convention: sample ``index`` of dataset ``seed`` is fully determined by ``(seed, index)``
(``np.random.default_rng([seed, index])``), so any worker can generate any item. Training uses seeds
in :data:`TRAIN_SEEDS` (0-999; :data:`TRAIN_SEED` = 0 by default; ``predictor.tools.train`` refuses
others); the held-out evaluation sets use :data:`EVAL_SEED` (20261125) and :data:`PHOTO_EVAL_SEED`
(20261207, photo-like style), the validation sets that choose defaults (``predictor.tools.tune``)
:data:`VALIDATION_SEED` (20261130) and :data:`PHOTO_VALIDATION_SEED` (20261201); neither is trained on. A
photo-like sample draws from ``np.random.default_rng([seed, index, 1])``, so it never repeats the plain
sample with the same ``(seed, index)``.

CLI: ``python -m predictor.datasets.shapes --out DIR --seed S --count N [--style photo]`` writes a COCO
dataset.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from predictor.datasets.coco import DetectionSample, coco_categories, image_annotations

CLASS_NAMES: tuple[str, ...] = ("background", "circle", "square", "triangle", "star", "hexagon", "cross")
NUM_CLASSES = len(CLASS_NAMES) - 1
TRAIN_SEED = 0
TRAIN_SEEDS = range(1000)
EVAL_SEED = 20261125
PHOTO_EVAL_SEED = 20261207
VALIDATION_SEED = 20261130
PHOTO_VALIDATION_SEED = 20261201
STYLES = ("plain", "photo")

MIN_SIDE, MAX_SIDE = 300, 640
MAX_SHAPES = 8
SIZE_RANGE = (0.08, 0.60)  # circumscribed diameter / shorter image side
MIN_VISIBLE = 0.5  # fraction of its own pixels each shape keeps visible
MIN_COLOR_DIST = 80.0  # RGB distance to the mean background under a shape and to neighbouring shapes
MIN_PIXEL_DIST = 45.0  # at most 5% of the background pixels under a shape may be closer than this
JPEG_PROB = 0.35
JPEG_QUALITY = (30, 90)
SUPERSAMPLE = 2
_MAX_TRIES = 25
# Photo-like style (see the module docstring).
PHOTO_SIZE_RANGE = (0.05, 0.60)
PHOTO_BORDER_PROB = 0.25  # per shape: placed across an image border
MIN_INSIDE = 0.4  # fraction of a border-cut shape's polygon area inside the image
PHOTO_BLUR_PROB, PHOTO_BLUR_RADIUS = 0.5, (0.4, 1.8)
PHOTO_NOISE_PROB, PHOTO_NOISE_SIGMA = 0.6, (2.0, 12.0)
PHOTO_JPEG_PROB, PHOTO_JPEG_QUALITY = 0.7, (10, 95)
_COLOR_CANDIDATES = 32

ShapeSample = DetectionSample
"""``(image [H, W, 3] uint8, boxes [K, 4] float32 xyxy pixels, labels [K] int32 in 1..6)``."""


class ShapeGeometry(NamedTuple):
    """One placed shape: class id, polygon ``[V, 2]`` float64 ``(x, y)`` pixels, and its box."""

    label: int
    polygon: np.ndarray
    box: np.ndarray


class SampleDebug(NamedTuple):
    """A sample plus rendering internals, for tests and visual checks.

    ``instance_map``: ``[H, W]`` int32, 0 for background, ``k + 1`` where object ``k`` is on top
    (pixels at least half covered). ``full_pixels``: ``[K]`` pixel count of each unoccluded shape.
    """

    sample: ShapeSample
    instance_map: np.ndarray
    full_pixels: np.ndarray


# ----------------------------------------------------------------------------------------- geometry


def _regular(n: int, radius: float, angle: float) -> np.ndarray:
    """``[n, 2]`` vertices of a regular n-gon with circumradius ``radius`` centred at the origin."""
    t = angle + np.arange(n) * (2.0 * np.pi / n)
    return np.stack([np.cos(t), np.sin(t)], axis=1) * radius


def _star(radius: float, angle: float, inner_ratio: float) -> np.ndarray:
    """``[10, 2]`` vertices of a five-pointed star, alternating outer and inner radius."""
    t = angle + np.arange(10) * (np.pi / 5.0)
    r = np.where(np.arange(10) % 2 == 0, radius, radius * inner_ratio)
    return np.stack([np.cos(t) * r, np.sin(t) * r], axis=1)


def _cross(radius: float, angle: float, arm_ratio: float) -> np.ndarray:
    """``[12, 2]`` vertices of a plus sign whose arm tips lie on a circle of ``radius``.

    ``arm_ratio`` is arm width / span (tip to tip).
    """
    h = arm_ratio  # half arm width in units of the half span
    quarter = np.array([[h, 1.0], [h, h], [1.0, h]])
    turn = np.array([[0.0, -1.0], [1.0, 0.0]])  # (x, y) -> (y, -x)
    unit = np.concatenate([quarter @ np.linalg.matrix_power(turn, k) for k in range(4)])
    pts = unit * (radius / math.hypot(1.0, h))
    c, s = math.cos(angle), math.sin(angle)
    return pts @ np.array([[c, s], [-s, c]])


def shape_polygon(
    label: int, radius: float, angle: float, star_ratio: float = 0.45, cross_ratio: float = 1 / 3
) -> np.ndarray:
    """``[V, 2]`` vertices ``(x, y)`` of shape class ``label`` (1..6) centred at the origin.

    ``radius`` is the circumradius (half the size), ``angle`` the rotation in radians. Circles are
    64-gons with vertices on the axes, so their polygon extent equals the true circle's.
    """
    if label == 1:
        return _regular(64, radius, 0.0)
    if label == 2:
        return _regular(4, radius, angle)
    if label == 3:
        return _regular(3, radius, angle)
    if label == 4:
        return _star(radius, angle, star_ratio)
    if label == 5:
        return _regular(6, radius, angle)
    if label == 6:
        return _cross(radius, angle, cross_ratio)
    raise ValueError(f"shape label must be in 1..{NUM_CLASSES}, got {label}")


def polygon_box(polygon: np.ndarray) -> np.ndarray:
    """Tight ``(xmin, ymin, xmax, ymax)`` float32 box of a ``[V, 2]`` polygon."""
    return np.concatenate([polygon.min(axis=0), polygon.max(axis=0)]).astype(np.float32)


def clip_polygon(polygon: np.ndarray, width: float, height: float) -> np.ndarray:
    """The part ``[V', 2]`` of a convex-or-not simple polygon inside ``[0, width] x [0, height]``
    (Sutherland-Hodgman against the four edges; ``[0, 2]`` when nothing is inside)."""
    pts = np.asarray(polygon, np.float64)
    for axis, limit, keep_below in ((0, 0.0, False), (0, width, True), (1, 0.0, False), (1, height, True)):
        if len(pts) == 0:
            break
        d = (limit - pts[:, axis]) if keep_below else (pts[:, axis] - limit)  # >= 0: inside
        out = []
        for i in range(len(pts)):
            j = (i + 1) % len(pts)
            if d[i] >= 0:
                out.append(pts[i])
            if (d[i] >= 0) != (d[j] >= 0):
                t = d[i] / (d[i] - d[j])
                cut = pts[i] + t * (pts[j] - pts[i])
                cut[axis] = limit  # exactly on the edge (no -1e-15 past it)
                out.append(cut)
        pts = np.array(out, np.float64).reshape(-1, 2)
    return pts


def polygon_area(polygon: np.ndarray) -> float:
    """Area (pixels) of a simple ``[V, 2]`` polygon (shoelace formula)."""
    x, y = polygon[:, 0], polygon[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


# ---------------------------------------------------------------------------------------- rendering


def _crop_bounds(box: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    """Integer pixel window ``(x0, y0, x1, y1)`` covering ``box``, clipped to the image."""
    x0 = max(math.floor(box[0]), 0)
    y0 = max(math.floor(box[1]), 0)
    x1 = min(math.ceil(box[2]), width)
    y1 = min(math.ceil(box[3]), height)
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)


def rasterize(polygon: np.ndarray, window: tuple[int, int, int, int]) -> np.ndarray:
    """Antialiased coverage ``[y1 - y0, x1 - x0]`` uint8 (0..255) of ``polygon`` inside ``window``.

    Drawn with PIL at :data:`SUPERSAMPLE` x resolution and box-downsampled. PIL puts pixel centres on
    integer coordinates, so continuous coordinate ``u`` maps to ``(u - x0) * S - 0.5``.
    """
    x0, y0, x1, y1 = window
    s = SUPERSAMPLE
    canvas = Image.new("L", ((x1 - x0) * s, (y1 - y0) * s), 0)
    pts = (polygon - np.array([x0, y0], dtype=np.float64)) * s - 0.5
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in pts.tolist()], fill=255)
    if s > 1:
        canvas = canvas.reduce(s)
    return np.asarray(canvas, dtype=np.uint8)


def render_shape(
    label: int,
    center: tuple[float, float],
    radius: float,
    angle: float,
    image_size: tuple[int, int],
    star_ratio: float = 0.45,
    cross_ratio: float = 1 / 3,
) -> tuple[np.ndarray, np.ndarray]:
    """Render one shape alone on an image of ``image_size = (W, H)``.

    Returns the coverage ``[H, W]`` uint8 (0..255) and the box ``[4]`` float32 xyxy pixels, computed the
    same way as in :func:`generate_sample`.
    """
    width, height = image_size
    poly = shape_polygon(label, radius, angle, star_ratio, cross_ratio) + np.asarray(center, np.float64)
    box = polygon_box(poly)
    window = _crop_bounds(box, width, height)
    full = np.zeros((height, width), dtype=np.uint8)
    full[window[1] : window[3], window[0] : window[2]] = rasterize(poly, window)
    return full, box


# -------------------------------------------------------------------------------------- backgrounds


def _random_colors(rng: np.random.Generator, n: int) -> np.ndarray:
    """``[n, 3]`` uint8 random RGB colours."""
    return rng.integers(0, 256, size=(n, 3), dtype=np.uint8)


def _rotated_coords(rng: np.random.Generator, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates ``u, v`` (``[H, W]`` float32) along a random rotated axis pair."""
    t = rng.uniform(0, 2 * np.pi)
    xs = np.arange(width, dtype=np.float32)[None, :]
    ys = np.arange(height, dtype=np.float32)[:, None]
    c, s = np.float32(math.cos(t)), np.float32(math.sin(t))
    return xs * c + ys * s, ys * c - xs * s


def _bg_flat(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    return np.broadcast_to(_random_colors(rng, 1)[0], (height, width, 3))


def _bg_gradient(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    u, _ = _rotated_coords(rng, width, height)
    lo, hi = float(u.min()), float(u.max())
    t = ((u - lo) * np.float32(255.0 / max(hi - lo, 1.0))).astype(np.uint8)
    c0, c1 = _random_colors(rng, 2).astype(np.float32)
    lut = (c0 + np.linspace(0.0, 1.0, 256, dtype=np.float32)[:, None] * (c1 - c0)).round().astype(np.uint8)
    return lut[t]


def _bg_noise(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    amp = int(rng.integers(15, 70))
    channels = 1 if rng.random() < 0.5 else 3
    noise = rng.integers(-amp, amp + 1, size=(height, width, channels), dtype=np.int16)
    return np.clip(_random_colors(rng, 1)[0].astype(np.int16) + noise, 0, 255).astype(np.uint8)


def _bg_stripes(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    u, _ = _rotated_coords(rng, width, height)
    period = np.float32(rng.uniform(8, 80))
    colors = _random_colors(rng, int(rng.integers(2, 4)))
    return colors[np.floor(u / period).astype(np.int32) % len(colors)]


def _bg_checker(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    if rng.random() < 0.5:
        u, v = _rotated_coords(rng, width, height)
    else:
        u = np.arange(width, dtype=np.float32)[None, :]
        v = np.arange(height, dtype=np.float32)[:, None]
    cell = np.float32(rng.uniform(8, 90))
    parity = (np.floor(u / cell).astype(np.int32) + np.floor(v / cell).astype(np.int32)) % 2
    return _random_colors(rng, 2)[parity]


def _bg_blobs(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    gw, gh = (int(v) for v in rng.integers(2, 8, size=2))
    grid = Image.fromarray(rng.integers(0, 256, size=(gh, gw, 3), dtype=np.uint8))
    return np.asarray(grid.resize((width, height), Image.Resampling.BICUBIC))


_BACKGROUNDS: tuple[Callable[[np.random.Generator, int, int], np.ndarray], ...] = (
    _bg_flat,
    _bg_gradient,
    _bg_noise,
    _bg_stripes,
    _bg_checker,
    _bg_blobs,
)


def make_background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A random ``[H, W, 3]`` uint8 background of one of six kinds."""
    kind = _BACKGROUNDS[int(rng.integers(len(_BACKGROUNDS)))]
    return np.ascontiguousarray(kind(rng, width, height), dtype=np.uint8)


# ---------------------------------------------------------------------------- photo-like backgrounds


def value_noise(rng: np.random.Generator, width: int, height: int, octaves: int = 4) -> np.ndarray:
    """Multi-octave value noise ``[H, W]`` float32 in ``[0, 1]``.

    Octave ``k`` is a random grid with about ``base * 2**k`` cells across the longer side, bicubic
    upsampled, weighted ``0.5**k``; the sum is min-max normalised.
    """
    base = float(rng.uniform(1.5, 5.0))
    longer = max(width, height)
    out = np.zeros((height, width), np.float32)
    for k in range(octaves):
        cells = base * 2**k
        gw = max(2, round(cells * width / longer) + 1)
        gh = max(2, round(cells * height / longer) + 1)
        grid = Image.fromarray(rng.random((gh, gw), dtype=np.float32), mode="F")
        out += np.asarray(grid.resize((width, height), Image.Resampling.BICUBIC)) * np.float32(0.5**k)
    lo, hi = float(out.min()), float(out.max())
    return (out - lo) * np.float32(1.0 / max(hi - lo, 1e-6))


def _palette(rng: np.random.Generator, t: np.ndarray, stops: int | None = None) -> np.ndarray:
    """Map ``t [H, W]`` in ``[0, 1]`` through a random 2..4-colour piecewise-linear palette -> uint8 RGB."""
    n = int(rng.integers(2, 5)) if stops is None else stops
    colors = _random_colors(rng, n).astype(np.float32)
    xs = np.linspace(0.0, 1.0, 256, dtype=np.float32)
    knots = np.linspace(0.0, 1.0, n, dtype=np.float32)
    lut = np.stack([np.interp(xs, knots, colors[:, c]) for c in range(3)], axis=1).round().astype(np.uint8)
    return lut[(np.clip(t, 0.0, 1.0) * 255.0).astype(np.uint8)]


def _bg_texture(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    return _palette(rng, value_noise(rng, width, height, int(rng.integers(3, 6))))


def _bg_color_field(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    lo = rng.uniform(0, 160, size=3).astype(np.float32)
    span = rng.uniform(40, 255, size=3).astype(np.float32)
    chans = [value_noise(rng, width, height, 3) for _ in range(3)]
    return np.clip(lo + np.stack(chans, axis=-1) * span, 0, 255).astype(np.uint8)


def _bg_wood(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    u, v = _rotated_coords(rng, width, height)
    cx, cy = rng.uniform(-width, 2 * width), rng.uniform(-height, 2 * height)
    r = np.sqrt((u - np.float32(cx)) ** 2 + (np.float32(rng.uniform(0.02, 0.3)) * (v - np.float32(cy))) ** 2)
    warp = value_noise(rng, width, height, 3) * np.float32(rng.uniform(0.5, 3.0))
    t = np.abs(np.sin(np.float32(np.pi) * (r / np.float32(rng.uniform(6, 30)) + warp)))
    return _palette(rng, t**0.7, stops=2)


def _bg_marble(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    u, _ = _rotated_coords(rng, width, height)
    turb = value_noise(rng, width, height, 5) * np.float32(rng.uniform(4.0, 12.0))
    t = 0.5 + 0.5 * np.sin(u * np.float32(2 * np.pi / rng.uniform(60, 250)) + turb)
    return _palette(rng, t ** np.float32(rng.uniform(0.3, 3.0)), stops=int(rng.integers(2, 4)))


def _bg_warped_stripes(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    u, _ = _rotated_coords(rng, width, height)
    period = np.float32(rng.uniform(6, 60))
    warp = value_noise(rng, width, height, 3) * np.float32(rng.uniform(0.5, 3.0)) * period
    colors = _random_colors(rng, int(rng.integers(2, 4)))
    return colors[np.floor((u + warp) / period).astype(np.int32) % len(colors)]


_PHOTO_BACKGROUNDS: tuple[Callable[[np.random.Generator, int, int], np.ndarray], ...] = (
    _bg_texture,
    _bg_color_field,
    _bg_wood,
    _bg_marble,
    _bg_warped_stripes,
)


def make_photo_background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A random ``[H, W, 3]`` uint8 photo-like background: one of five procedural textures, with (p 0.5)
    2..8 distractor strokes and (p 0.5) uneven lighting (a low-frequency gain of 0.55..1.25)."""
    kind = _PHOTO_BACKGROUNDS[int(rng.integers(len(_PHOTO_BACKGROUNDS)))]
    image = np.ascontiguousarray(kind(rng, width, height), dtype=np.uint8)
    if rng.random() < 0.5:
        pil = Image.fromarray(image)
        draw = ImageDraw.Draw(pil)
        for _ in range(int(rng.integers(2, 9))):
            pts = rng.uniform(0, 1, size=(int(rng.integers(2, 5)), 2)) * (width, height)
            color = tuple(int(c) for c in _random_colors(rng, 1)[0])
            draw.line([tuple(p) for p in pts.tolist()], fill=color, width=int(rng.integers(1, 7)))
        image = np.asarray(pil)
    if rng.random() < 0.5:
        gain = np.float32(0.55) + np.float32(0.7) * value_noise(rng, width, height, 2)
        image = np.clip(image * gain[..., None], 0, 255).astype(np.uint8)
    return image


# ---------------------------------------------------------------------------------------- placement


class _Canvas:
    """Image under construction plus per-shape bookkeeping for occlusion and colour checks."""

    def __init__(self, image: np.ndarray) -> None:
        self.image = Image.fromarray(image)
        self.height, self.width = image.shape[:2]
        self.instances = np.zeros((self.height, self.width), dtype=np.int32)
        self.full: list[int] = []
        self.visible: list[int] = []
        self.colors: list[np.ndarray] = []
        self.shapes: list[ShapeGeometry] = []

    def occlusion_ok(self, window: tuple[int, int, int, int], mask: np.ndarray) -> bool:
        """Whether every earlier shape keeps >= :data:`MIN_VISIBLE` of its pixels under ``mask``."""
        if not self.shapes:
            return True
        x0, y0, x1, y1 = window
        covered = np.bincount(self.instances[y0:y1, x0:x1][mask], minlength=len(self.shapes) + 1)
        remaining = np.asarray(self.visible) - covered[1:]
        return bool(np.all(remaining >= MIN_VISIBLE * np.asarray(self.full)))

    def pixels_under(self, window: tuple[int, int, int, int], mask: np.ndarray) -> np.ndarray:
        """``[N, 3]`` uint8 RGB of the current image under ``mask`` (a ``window``-sized bool array)."""
        return np.asarray(self.image.crop(window))[mask]

    def neighbour_colors(self, window: tuple[int, int, int, int]) -> list[np.ndarray]:
        """Colours of the shapes visible inside ``window`` (grown by 2 px)."""
        x0, y0, x1, y1 = window
        region = self.instances[max(y0 - 2, 0) : y1 + 2, max(x0 - 2, 0) : x1 + 2]
        present = np.flatnonzero(np.bincount(region.ravel(), minlength=1)[1:])
        return [self.colors[i] for i in present]

    def add(
        self,
        shape: ShapeGeometry,
        window,
        alpha: np.ndarray,
        mask: np.ndarray,
        color: np.ndarray,
        fill: np.ndarray | None = None,
    ):
        """Draw ``shape`` on top (solid ``color``, or the ``window``-sized RGB ``fill``) and update the
        bookkeeping."""
        x0, y0, x1, y1 = window
        region = self.instances[y0:y1, x0:x1]
        covered = np.bincount(region[mask], minlength=len(self.shapes) + 1)
        self.visible = [v - int(c) for v, c in zip(self.visible, covered[1:], strict=True)]
        region[mask] = len(self.shapes) + 1
        paint = tuple(int(c) for c in color) if fill is None else Image.fromarray(fill)
        self.image.paste(paint, window, Image.fromarray(alpha))
        count = int(mask.sum())
        self.full.append(count)
        self.visible.append(count)
        self.colors.append(color)
        self.shapes.append(shape)


class _Style(NamedTuple):
    """Placement settings of one image style."""

    size_range: tuple[float, float]
    border_prob: float
    shaded: bool


_PLAIN = _Style(SIZE_RANGE, 0.0, False)
_PHOTO = _Style(PHOTO_SIZE_RANGE, PHOTO_BORDER_PROB, True)


def _sample_geometry(
    rng: np.random.Generator, width: int, height: int, style: _Style = _PLAIN
) -> ShapeGeometry:
    """A random shape of random class, size and rotation, placed fully inside the image, or (with
    probability ``style.border_prob``) across one image border: its centre from 0.3 x its extent outside
    that border to where it touches it from inside. The box is the extent of the polygon's part inside
    the image (of the whole polygon when it is all inside)."""
    label = int(rng.integers(1, NUM_CLASSES + 1))
    lo, hi = style.size_range
    size = math.exp(rng.uniform(math.log(lo), math.log(hi))) * min(width, height)
    angle = rng.uniform(0, 2 * np.pi)
    poly = shape_polygon(label, size / 2, angle, rng.uniform(0.38, 0.5), rng.uniform(0.3, 0.36))
    lo_xy, hi_xy = poly.min(axis=0), poly.max(axis=0)
    cx = rng.uniform(-lo_xy[0], width - hi_xy[0])
    cy = rng.uniform(-lo_xy[1], height - hi_xy[1])
    if style.border_prob and rng.random() < style.border_prob:
        side = int(rng.integers(4))  # left, right, top, bottom
        cut = rng.uniform(-0.3, 1.0)  # < 0: the centre is outside (then MIN_INSIDE decides)
        if side == 0:
            cx = -lo_xy[0] * cut
        elif side == 1:
            cx = width - hi_xy[0] * cut
        elif side == 2:
            cy = -lo_xy[1] * cut
        else:
            cy = height - hi_xy[1] * cut
    poly = poly + np.array([cx, cy])
    inside = clip_polygon(poly, width, height)
    box = polygon_box(inside if len(inside) else poly)  # nothing inside: rejected by the caller
    return ShapeGeometry(label, poly, box)


def _shaded_fill(
    rng: np.random.Generator, color: np.ndarray, window: tuple[int, int, int, int]
) -> np.ndarray:
    """``[h, w, 3]`` uint8 fill of ``window``: ``color`` times a linear light gradient (0.8..1.2 at most)."""
    x0, y0, x1, y1 = window
    t = rng.uniform(0, 2 * np.pi)
    xs = np.linspace(-1.0, 1.0, x1 - x0, dtype=np.float32)[None, :]
    ys = np.linspace(-1.0, 1.0, y1 - y0, dtype=np.float32)[:, None]
    ramp = (xs * np.float32(math.cos(t)) + ys * np.float32(math.sin(t))) * np.float32(rng.uniform(0, 0.14))
    return np.clip(color.astype(np.float32) * (1.0 + ramp[..., None]), 0, 255).astype(np.uint8)


def _pick_color(rng: np.random.Generator, under: np.ndarray, neighbours: Sequence[np.ndarray]) -> np.ndarray:
    """A random ``[3]`` colour that stands out from the pixels ``under`` the shape (``[N, 3]``).

    Accepted: at least :data:`MIN_COLOR_DIST` from their mean and from each neighbouring shape colour,
    and at most 5% of (a subsample of) them closer than :data:`MIN_PIXEL_DIST`. Otherwise the
    candidate with the best worst-case distance is used.
    """
    cands = rng.integers(0, 256, size=(_COLOR_CANDIDATES, 3)).astype(np.float32)
    refs = np.stack([under.mean(axis=0), *neighbours]).astype(np.float32)
    ref_dist = _sq_dist(cands, refs).min(axis=1)
    pix_dist = _sq_dist(cands, under[:: max(1, len(under) // 64)].astype(np.float32))
    close = (pix_dist < MIN_PIXEL_DIST**2).mean(axis=1)
    ok = (ref_dist >= MIN_COLOR_DIST**2) & (close <= 0.05)
    if ok.any():
        return cands[int(np.argmax(ok))]
    return cands[int(np.argmax(np.minimum(ref_dist, np.quantile(pix_dist, 0.1, axis=1))))]


def _sq_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[A, B]`` squared Euclidean distances between rows of ``a [A, 3]`` and ``b [B, 3]``."""
    d = a[:, None, :] - b[None, :, :]
    return np.einsum("abk,abk->ab", d, d)


def _place_shape(rng: np.random.Generator, canvas: _Canvas, style: _Style = _PLAIN) -> bool:
    """Try to add one shape that keeps every earlier shape half visible (and, when cut by the border,
    :data:`MIN_INSIDE` of its own area inside the image); ``False`` if none fits."""
    for _ in range(_MAX_TRIES):
        shape = _sample_geometry(rng, canvas.width, canvas.height, style)
        window = _crop_bounds(shape.box, canvas.width, canvas.height)
        alpha = rasterize(shape.polygon, window)
        mask = alpha >= 128
        if not mask.any() or not canvas.occlusion_ok(window, mask):
            continue
        if style.border_prob and alpha.sum(dtype=np.int64) / 255.0 < MIN_INSIDE * polygon_area(shape.polygon):
            continue
        under = canvas.pixels_under(window, mask)
        color = _pick_color(rng, under, canvas.neighbour_colors(window))
        fill = _shaded_fill(rng, color, window) if style.shaded else None
        canvas.add(shape, window, alpha, mask, color, fill)
        return True
    return False


def _jpeg(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Re-encode as JPEG with a random quality in :data:`JPEG_QUALITY`."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=int(rng.integers(*JPEG_QUALITY, endpoint=True)))
    buf.seek(0)
    with Image.open(buf) as im:
        return np.array(im.convert("RGB"), dtype=np.uint8)


def _jpeg_at(image: np.ndarray, quality: int) -> np.ndarray:
    """Round-trip through JPEG at ``quality``."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as im:
        return np.array(im.convert("RGB"), dtype=np.uint8)


_NOISE_POOL_SIDE = MAX_SIDE + 128
_NOISE_POOL_SIGMA = 32


@functools.cache
def _noise_pool() -> np.ndarray:
    """``[S, S, 3]`` int8 Gaussian noise of sigma :data:`_NOISE_POOL_SIGMA` (fixed seed), cut at +-127.

    Sensor noise is a random window of it, scaled: 20x cheaper than drawing fresh normals per image.
    """
    rng = np.random.default_rng(20261207)
    pool = rng.standard_normal((_NOISE_POOL_SIDE, _NOISE_POOL_SIDE, 3), dtype=np.float32) * _NOISE_POOL_SIGMA
    return np.clip(pool, -127, 127).astype(np.int8)


def _sensor_noise(rng: np.random.Generator, image: np.ndarray, sigma: float, grey: bool) -> np.ndarray:
    """``image`` plus Gaussian noise of about ``sigma`` (grey: the same on all channels)."""
    h, w = image.shape[:2]
    y, x = (int(v) for v in rng.integers(0, _NOISE_POOL_SIDE - np.array([h, w]), endpoint=True))
    noise = _noise_pool()[y : y + h, x : x + w, :1] if grey else _noise_pool()[y : y + h, x : x + w]
    scale = round(sigma * 256 / _NOISE_POOL_SIGMA)
    return np.clip(image.astype(np.int16) + ((noise.astype(np.int16) * scale) >> 8), 0, 255).astype(np.uint8)


def _photo_effects(rng: np.random.Generator, pil: Image.Image) -> np.ndarray:
    """Camera-like degradations of a finished image: box blur (p :data:`PHOTO_BLUR_PROB`), sensor
    noise (p :data:`PHOTO_NOISE_PROB`; grey or per-channel) and JPEG (p :data:`PHOTO_JPEG_PROB`, quality
    log-uniform in :data:`PHOTO_JPEG_QUALITY`, so low qualities are common)."""
    if rng.random() < PHOTO_BLUR_PROB:
        pil = pil.filter(ImageFilter.BoxBlur(float(rng.uniform(*PHOTO_BLUR_RADIUS))))
    image = np.asarray(pil)
    if rng.random() < PHOTO_NOISE_PROB:
        image = _sensor_noise(rng, image, float(rng.uniform(*PHOTO_NOISE_SIGMA)), rng.random() < 0.5)
    if rng.random() < PHOTO_JPEG_PROB:
        lo, hi = PHOTO_JPEG_QUALITY
        image = _jpeg_at(image, round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))
    return np.array(image, dtype=np.uint8)


# --------------------------------------------------------------------------------------- public API


def generate_sample_debug(seed: int, index: int, style: str = "plain") -> SampleDebug:
    """:func:`generate_sample` (``style="plain"``) or :func:`generate_photo_sample` (``"photo"``) plus
    the instance map and unoccluded (in-image) pixel counts."""
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    photo = style == "photo"
    rng = np.random.default_rng([int(seed), int(index), 1] if photo else [int(seed), int(index)])
    width, height = (int(v) for v in rng.integers(MIN_SIDE, MAX_SIDE, size=2, endpoint=True))
    background = make_photo_background if photo else make_background
    canvas = _Canvas(background(rng, width, height))
    for _ in range(int(rng.integers(1, MAX_SHAPES, endpoint=True))):
        _place_shape(rng, canvas, _PHOTO if photo else _PLAIN)
    if photo:
        image = _photo_effects(rng, canvas.image)
    else:
        image = np.asarray(canvas.image).copy()
        if rng.random() < JPEG_PROB:
            image = _jpeg(rng, image)
    boxes = np.array([s.box for s in canvas.shapes], dtype=np.float32).reshape(-1, 4)
    labels = np.array([s.label for s in canvas.shapes], dtype=np.int32)
    return SampleDebug(ShapeSample(image, boxes, labels), canvas.instances, np.array(canvas.full))


def generate_sample(seed: int, index: int) -> ShapeSample:
    """Sample ``index`` of the dataset with ``seed``: ``(image [H, W, 3] uint8, boxes [K, 4] float32
    xyxy pixels, labels [K] int32 in 1..6)``, fully determined by ``(seed, index)``."""
    return generate_sample_debug(seed, index).sample


def generate_photo_sample(seed: int, index: int) -> ShapeSample:
    """Photo-like sample ``index`` of dataset ``seed`` (same contract as :func:`generate_sample`; boxes of
    shapes cut by the border are clipped to the image), fully determined by ``(seed, index)``."""
    return generate_sample_debug(seed, index, "photo").sample


def is_photo_index(index: int, photo_fraction: float) -> bool:
    """Whether stream position ``index`` is photo-like in a mix with ``photo_fraction`` of them.

    A golden-ratio sequence: every run of ``n`` consecutive positions holds ``photo_fraction * n``
    photo-like ones to within about 1, so each training batch gets its share.
    """
    return photo_fraction > 0 and (index * 0.6180339887498949) % 1.0 < photo_fraction


def heldout_sample(style: str, index: int, seed: int | None = None) -> ShapeSample:
    """Held-out sample ``index`` of a style (seed :data:`EVAL_SEED` or :data:`PHOTO_EVAL_SEED` unless
    given)."""
    if style == "photo":
        return generate_photo_sample(PHOTO_EVAL_SEED if seed is None else seed, index)
    if style == "plain":
        return generate_sample(EVAL_SEED if seed is None else seed, index)
    raise ValueError(f"style must be one of {STYLES}, got {style!r}")


class ShapesDataset:
    """The first ``size`` samples of the shapes dataset with ``seed`` (generated on access).

    ``photo_fraction``: the share of positions (:func:`is_photo_index`) that hold the photo-like sample
    of the same ``(seed, index)`` instead of the plain one.
    """

    class_names: tuple[str, ...] = CLASS_NAMES

    def __init__(self, seed: int = TRAIN_SEED, size: int = 10_000, photo_fraction: float = 0.0) -> None:
        if not 0.0 <= photo_fraction <= 1.0:
            raise ValueError(f"photo_fraction must be in [0, 1], got {photo_fraction}")
        self.seed = int(seed)
        self.size = int(size)
        self.photo_fraction = float(photo_fraction)

    @property
    def num_classes(self) -> int:
        """Number of object classes (6; background not counted)."""
        return NUM_CLASSES

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> ShapeSample:
        if not -self.size <= i < self.size:
            raise IndexError(f"index {i} out of range for {self.size} samples")
        index = i % self.size
        if is_photo_index(index, self.photo_fraction):
            return generate_photo_sample(self.seed, index)
        return generate_sample(self.seed, index)


# ------------------------------------------------------------------------------------ COCO export


def _write_one(
    args: tuple[Path, int, int, str, int, str],
) -> tuple[int, str, int, int, np.ndarray, np.ndarray]:
    """Generate and save sample ``index``; returns ``(index, file name, W, H, boxes, labels)``."""
    image_dir, seed, index, fmt, quality, style = args
    sample = generate_sample_debug(seed, index, style).sample
    name = f"{index:06d}.{fmt}"
    im = Image.fromarray(sample.image)
    if fmt == "jpg":
        im.save(image_dir / name, format="JPEG", quality=quality)
    else:
        im.save(image_dir / name, format="PNG", compress_level=1)
    h, w = sample.image.shape[:2]
    return index, name, w, h, sample.boxes, sample.labels


def write_coco(
    out_dir: str | Path,
    seed: int,
    count: int,
    start: int = 0,
    image_format: str = "jpg",
    quality: int = 95,
    workers: int = 1,
    style: str = "plain",
) -> Path:
    """Write samples ``start .. start + count - 1`` as a COCO dataset and return the annotation path.

    Layout: ``out_dir/images/{index:06d}.{jpg|png}`` and ``out_dir/annotations.json``. Image id =
    sample index; annotation ids start at 1; category ids are the class ids 1..6; ``area`` is the
    box area. ``workers > 1`` generates in parallel processes.
    """
    if image_format not in ("jpg", "png"):
        raise ValueError(f"image_format must be 'jpg' or 'png', got {image_format!r}")
    out = Path(out_dir)
    image_dir = out / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    jobs = [(image_dir, int(seed), i, image_format, int(quality), style) for i in range(start, start + count)]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(_write_one, jobs, chunksize=16))
    else:
        results = [_write_one(job) for job in jobs]
    images, annotations = [], []
    for index, name, w, h, boxes, labels in results:
        images.append({"id": index, "file_name": name, "width": w, "height": h})
        annotations += image_annotations(index, boxes, labels, len(annotations) + 1)
    data = {
        "info": {"description": f"predictor synthetic shapes, {style=}, {seed=}, {start=}, {count=}"},
        "images": images,
        "annotations": annotations,
        "categories": coco_categories(CLASS_NAMES),
    }
    ann_path = out / "annotations.json"
    ann_path.write_text(json.dumps(data), encoding="utf-8")
    return ann_path


def main(argv: Sequence[str] | None = None) -> None:
    """CLI entry point: write a COCO-format shapes dataset."""
    parser = argparse.ArgumentParser(description="Write the synthetic shapes dataset in COCO format.")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=TRAIN_SEED, help=f"dataset seed (eval: {EVAL_SEED})")
    parser.add_argument("--count", type=int, required=True, help="number of images")
    parser.add_argument("--start", type=int, default=0, help="first sample index")
    parser.add_argument("--format", choices=("jpg", "png"), default="jpg", help="image file format")
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality of the written files")
    parser.add_argument("--workers", type=int, default=1, help="parallel worker processes")
    parser.add_argument(
        "--style",
        choices=STYLES,
        default="plain",
        help=f"image style (photo-like held out: {PHOTO_EVAL_SEED})",
    )
    args = parser.parse_args(argv)
    path = write_coco(
        args.out, args.seed, args.count, args.start, args.format, args.quality, args.workers, args.style
    )
    print(path)


if __name__ == "__main__":
    main()
