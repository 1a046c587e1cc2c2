"""Architecture configurations: a new SSD variant is a new :class:`SSDConfig`, not new code.

The paper's / balancap's numbers live only in the factories at the bottom (``ssd300_vgg16``,
``ssd512_vgg16``, ``ssd_tiny``). Sizes and steps are in pixels of the square network input.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from predictor.ssd.labels import VOC_LABELS


@dataclass(frozen=True)
class FeatureLayer:
    """One prediction layer: a backbone/extra end point with its anchors.

    Attributes:
      name: end-point name (``block4``); also the head's name prefix (``block4_box``).
      size: feature-map side in cells (38 for block4 of SSD300).
      step: anchor step in input pixels (8): centre of cell i is ``(i + offset) * step / input_size``.
      min_size, max_size: anchor sizes in input pixels (21, 45).
      ratios: extra aspect ratios ``w / h`` after the two squares, in order (2, 0.5, 3, 1/3).
      normalization: > 0 puts an L2 normalisation with a learned per-channel scale (initialised to this
        value) in front of the head, as balancap does on block4 (20); <= 0 means none.
    """

    name: str
    size: int
    step: float
    min_size: float
    max_size: float
    ratios: tuple[float, ...]
    normalization: float = -1.0

    @property
    def num_anchors(self) -> int:
        """Anchors per location: two squares plus one per ratio."""
        return 2 + len(self.ratios)


@dataclass(frozen=True)
class ExtraBlock:
    """An extra feature block after the backbone: 1x1 conv, optional zero pad, kxk conv.

    Balancap's ``block8`` of SSD300 is ``ExtraBlock("block8", 256, 512, kernel=3, stride=2, pad=1)``.
    """

    name: str
    mid_channels: int
    out_channels: int
    kernel: int = 3
    stride: int = 2
    pad: int = 1


@dataclass(frozen=True)
class SSDConfig:
    """Everything that defines an SSD architecture and its default post-processing.

    Attributes:
      name: architecture name; for balancap models also the checkpoint's variable scope (``ssd_300_vgg``).
      backbone: backbone builder name in :data:`predictor.ssd.network.BACKBONES` (``vgg16``, ``tiny``).
      input_size: side of the square network input in pixels.
      class_names: index 0 is the background.
      feature_layers: prediction layers, in anchor concatenation order.
      extra_blocks: blocks appended after the backbone's last end point.
      backbone_options: keyword arguments of the backbone builder (e.g. widths).
      batch_norm: batch-normalise the extra blocks (the VGG model has no batch norm).
      anchor_offset: cell-centre offset (0.5).
      prior_scaling: box-coding variances (x, y, w, h).
      means: per-channel RGB means subtracted from the uint8 input.
      score_threshold, nms_threshold, top_k, max_detections: default post-processing.
    """

    name: str
    backbone: str
    input_size: int
    class_names: tuple[str, ...]
    feature_layers: tuple[FeatureLayer, ...]
    extra_blocks: tuple[ExtraBlock, ...] = ()
    backbone_options: dict[str, Any] = field(default_factory=dict)
    batch_norm: bool = False
    anchor_offset: float = 0.5
    prior_scaling: tuple[float, float, float, float] = (0.1, 0.1, 0.2, 0.2)
    means: tuple[float, float, float] = (123.0, 117.0, 104.0)
    score_threshold: float = 0.5
    nms_threshold: float = 0.45
    top_k: int = 400
    max_detections: int = 200

    @property
    def num_classes(self) -> int:
        """Number of classes including the background."""
        return len(self.class_names)

    @property
    def num_anchors(self) -> int:
        """Total anchors over all feature layers."""
        return sum(fl.size * fl.size * fl.num_anchors for fl in self.feature_layers)

    def to_dict(self) -> dict[str, Any]:
        """JSON/YAML-safe dict; :meth:`from_dict` inverts it."""
        d = dataclasses.asdict(self)
        for key in ("class_names", "prior_scaling", "means"):
            d[key] = list(d[key])
        for fl in d["feature_layers"]:
            fl["ratios"] = list(fl["ratios"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SSDConfig:
        """Build a config from :meth:`to_dict` output; unknown keys raise ``ValueError``."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown SSD config keys: {sorted(unknown)}")
        d = dict(d)
        d["class_names"] = tuple(d["class_names"])
        d["feature_layers"] = tuple(
            FeatureLayer(**{**fl, "ratios": tuple(float(r) for r in fl["ratios"])})
            for fl in d["feature_layers"]
        )
        d["extra_blocks"] = tuple(ExtraBlock(**b) for b in d.get("extra_blocks", ()))
        for key in ("prior_scaling", "means"):
            if key in d:
                d[key] = tuple(float(v) for v in d[key])
        return cls(**d)

    def to_json_key(self) -> str:
        """Canonical JSON text of the config (hashable cache key)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json_key(cls, key: str) -> SSDConfig:
        """Inverse of :meth:`to_json_key`."""
        return cls.from_dict(json.loads(key))

    def replace(self, **changes: Any) -> SSDConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


_R2 = (2.0, 0.5)
_R4 = (2.0, 0.5, 3.0, 1.0 / 3.0)


def ssd300_vgg16(class_names: tuple[str, ...] = VOC_LABELS) -> SSDConfig:
    """Balancap's ``ssd_vgg_300`` (SSD300-VGG16, 8732 anchors, COCO-style anchor sizes)."""
    sizes = ((21, 45), (45, 99), (99, 153), (153, 207), (207, 261), (261, 315))
    shapes = (38, 19, 10, 5, 3, 1)
    steps = (8, 16, 32, 64, 100, 300)
    ratios = (_R2, _R4, _R4, _R4, _R2, _R2)
    names = ("block4", "block7", "block8", "block9", "block10", "block11")
    layers = tuple(
        FeatureLayer(n, s, st, float(lo), float(hi), r, 20.0 if n == "block4" else -1.0)
        for n, s, st, (lo, hi), r in zip(names, shapes, steps, sizes, ratios, strict=True)
    )
    extras = (
        ExtraBlock("block8", 256, 512, kernel=3, stride=2, pad=1),
        ExtraBlock("block9", 128, 256, kernel=3, stride=2, pad=1),
        ExtraBlock("block10", 128, 256, kernel=3, stride=1, pad=0),
        ExtraBlock("block11", 128, 256, kernel=3, stride=1, pad=0),
    )
    return SSDConfig("ssd_300_vgg", "vgg16", 300, tuple(class_names), layers, extras)


def ssd512_vgg16(class_names: tuple[str, ...] = VOC_LABELS) -> SSDConfig:
    """Balancap's ``ssd_vgg_512`` (SSD512-VGG16, 7 feature layers, 24,564 anchors)."""
    sizes = (
        (20.48, 51.2), (51.2, 133.12), (133.12, 215.04), (215.04, 296.96),
        (296.96, 378.88), (378.88, 460.8), (460.8, 542.72),
    )  # fmt: skip
    shapes = (64, 32, 16, 8, 4, 2, 1)
    steps = (8, 16, 32, 64, 128, 256, 512)
    ratios = (_R2, _R4, _R4, _R4, _R4, _R2, _R2)
    names = ("block4", "block7", "block8", "block9", "block10", "block11", "block12")
    layers = tuple(
        FeatureLayer(n, s, st, lo, hi, r, 20.0 if n == "block4" else -1.0)
        for n, s, st, (lo, hi), r in zip(names, shapes, steps, sizes, ratios, strict=True)
    )
    extras = (
        ExtraBlock("block8", 256, 512, kernel=3, stride=2, pad=1),
        ExtraBlock("block9", 128, 256, kernel=3, stride=2, pad=1),
        ExtraBlock("block10", 128, 256, kernel=3, stride=2, pad=1),
        ExtraBlock("block11", 128, 256, kernel=3, stride=2, pad=1),
        ExtraBlock("block12", 128, 256, kernel=4, stride=1, pad=1),
    )
    return SSDConfig("ssd_512_vgg", "vgg16", 512, tuple(class_names), layers, extras)


def ssd_tiny(
    class_names: tuple[str, ...], input_size: int = 300, width: int = 32, top_down: bool = False
) -> SSDConfig:
    """A small batch-normalised SSD for the demo model (trainable from scratch on a CPU).

    Same feature-map grid and anchor machinery as SSD300 (38, 19, 10, 5, 3, 1); anchor sizes span
    4% to ~95% of the input since the demo objects cover 8% to 60% of the shorter image side and the
    WARP resize stretches them. ``top_down``: stage4 features added into the stage3 end point
    (:func:`predictor.ssd.network.tiny_backbone`).
    """
    shapes = (38, 19, 10, 5, 3, 1)
    steps = (8, 16, 32, 64, 100, 300)
    s = input_size / 300.0
    sizes = ((12, 30), (30, 69), (69, 111), (111, 153), (153, 210), (210, 285))
    ratios = (_R2, _R4, _R4, _R4, _R2, _R2)
    names = ("stage3", "stage4", "block8", "block9", "block10", "block11")
    layers = tuple(
        FeatureLayer(n, sh, st * s, lo * s, hi * s, r)
        for n, sh, st, (lo, hi), r in zip(names, shapes, steps, sizes, ratios, strict=True)
    )
    extras = (
        ExtraBlock("block8", 2 * width, 4 * width, kernel=3, stride=2, pad=1),
        ExtraBlock("block9", 2 * width, 4 * width, kernel=3, stride=2, pad=1),
        ExtraBlock("block10", 2 * width, 4 * width, kernel=3, stride=1, pad=0),
        ExtraBlock("block11", 2 * width, 4 * width, kernel=3, stride=1, pad=0),
    )
    return SSDConfig(
        "ssd_tiny",
        "tiny",
        input_size,
        tuple(class_names),
        layers,
        extras,
        backbone_options={"width": width, **({"top_down": True} if top_down else {})},
        batch_norm=True,
        max_detections=100,
    )
