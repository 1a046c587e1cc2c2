"""Draw labelled detection boxes on an image with Pillow.

Detections are the client's normalised dicts (the V1 response format)::

    {"label": "circle", "class_id": 1, "score": 0.97, "xmin": 48.6, "ymin": 240.0, "xmax": 195.3,
     "ymax": 371.2}

with ``(xmin, ymin, xmax, ymax)`` in continuous pixel coordinates of the (EXIF-oriented) image. Each class
id gets its own colour (a fixed high-contrast palette, then golden-ratio hues); each box is captioned
``"label 0.97"`` on a filled tag in the box colour, with black or white text, whichever reads better.
"""

from __future__ import annotations

import colorsys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont, ImageOps

from predictor.client.files import IMAGE_EXTENSIONS, InputImage

RGB = tuple[int, int, int]

#: Colours of class ids 0, 1, 2, ... (Kelly's maximum-contrast set, minus white and black).
PALETTE: tuple[RGB, ...] = (
    (255, 179, 0),
    (128, 62, 117),
    (255, 104, 0),
    (166, 189, 215),
    (193, 0, 32),
    (206, 162, 98),
    (0, 125, 52),
    (246, 118, 142),
    (0, 83, 138),
    (255, 122, 92),
    (83, 55, 122),
    (255, 142, 0),
    (179, 40, 81),
    (244, 200, 0),
    (127, 24, 13),
    (147, 170, 0),
    (89, 51, 21),
    (241, 58, 19),
    (35, 44, 22),
)


def class_color(class_id: int) -> RGB:
    """A colour for a class id: the palette first, then evenly spread (golden-ratio) saturated hues."""
    if 0 <= class_id < len(PALETTE):
        return PALETTE[class_id]
    hue = (class_id * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return round(r * 255), round(g * 255), round(b * 255)


def text_color(background: RGB) -> RGB:
    """Black or white, whichever contrasts more with ``background`` (ITU-R BT.601 luma)."""
    r, g, b = background
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


def caption(detection: Mapping[str, Any], show_score: bool = True) -> str:
    """``"label 0.97"`` (``"class 3"`` when the detection has no label)."""
    label = detection.get("label") or f"class {detection.get('class_id', '?')}"
    return f"{label} {float(detection['score']):.2f}" if show_score and "score" in detection else str(label)


def default_line_width(size: tuple[int, int]) -> int:
    """Box outline width for an image of ``(width, height)``: 2 px, thicker on large images."""
    return max(2, round(min(size) / 250))


def load_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled font at ``size`` px (a scalable one when Pillow has FreeType)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow < 10.1 or no FreeType: the fixed bitmap font
        return ImageFont.load_default()


def draw_detections(
    image: Image.Image,
    detections: Sequence[Mapping[str, Any]],
    *,
    line_width: int | None = None,
    font_size: int | None = None,
    show_scores: bool = True,
    colors: Mapping[int, RGB] | None = None,
) -> Image.Image:
    """A copy of ``image`` (converted to RGB) with every detection drawn as a labelled box.

    Args:
      image: the image the detections refer to (already EXIF-oriented).
      detections: dicts with ``xmin, ymin, xmax, ymax`` (pixels), ``score``, ``label`` and/or
        ``class_id``; drawn lowest score first so the best boxes end up on top.
      line_width: outline width in pixels (default: :func:`default_line_width`).
      font_size: caption height in pixels (default: about 1.5% of the larger side, at least 11).
      show_scores: append the score to each caption.
      colors: class id -> colour overrides (others from :func:`class_color`).

    Returns:
      A new RGB image of the same size; ``image`` is left untouched.
    """
    out = image.convert("RGB") if image.mode != "RGB" else image.copy()
    if not detections:
        return out
    width = line_width or default_line_width(out.size)
    font = load_font(font_size or max(11, round(max(out.size) * 0.015)))
    draw = ImageDraw.Draw(out)
    ordered = sorted(detections, key=lambda d: float(d.get("score", 0.0)))
    for det in ordered:
        color = _color_of(det, colors)
        _draw_box(draw, det, color, width)
    for det in ordered:
        _draw_caption(draw, det, _color_of(det, colors), width, font, show_scores)
    return out


def _color_of(detection: Mapping[str, Any], colors: Mapping[int, RGB] | None) -> RGB:
    class_id = int(detection.get("class_id", 0))
    if colors and class_id in colors:
        return colors[class_id]
    return class_color(class_id)


def _box_pixels(detection: Mapping[str, Any]) -> tuple[int, int, int, int]:
    """Continuous ``[xmin, xmax)`` coordinates -> inclusive pixel indices of the box outline."""
    x0, y0 = round(float(detection["xmin"])), round(float(detection["ymin"]))
    x1, y1 = round(float(detection["xmax"])) - 1, round(float(detection["ymax"])) - 1
    return x0, y0, max(x0, x1), max(y0, y1)


def _draw_box(draw: ImageDraw.ImageDraw, detection: Mapping[str, Any], color: RGB, width: int) -> None:
    draw.rectangle(_box_pixels(detection), outline=color, width=width)


def _draw_caption(
    draw: ImageDraw.ImageDraw,
    detection: Mapping[str, Any],
    color: RGB,
    line_width: int,
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
    show_score: bool,
) -> None:
    """A filled tag above the box's top-left corner (inside the box when there is no room above)."""
    text = caption(detection, show_score)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = max(1, line_width)
    tag_w, tag_h = right - left + 2 * pad, bottom - top + 2 * pad
    x0, y0, _, _ = _box_pixels(detection)
    img_w, img_h = draw.im.size
    tag_x = min(max(0, x0), max(0, img_w - tag_w))
    tag_y = y0 - tag_h if y0 - tag_h >= 0 else min(y0, max(0, img_h - tag_h))
    draw.rectangle((tag_x, tag_y, tag_x + tag_w - 1, tag_y + tag_h - 1), fill=color)
    draw.text((tag_x + pad - left, tag_y + pad - top), text, fill=text_color(color), font=font)


def draw_path(item: InputImage, draw_dir: Path, image_format: str | None) -> tuple[Path, str]:
    """Where the drawn copy goes and its format: JPEG and PNG files keep their name and format,
    anything else becomes PNG (``photo.bmp`` -> ``photo.png``)."""
    suffix = item.name.suffix.lower()
    if image_format in ("JPEG", "MPO") and suffix in (".jpg", ".jpeg"):  # MPO: multi-picture JPEG
        return draw_dir / item.name, "JPEG"
    if suffix == ".png":
        return draw_dir / item.name, "PNG"
    if suffix in IMAGE_EXTENSIONS:
        return draw_dir / item.name.with_suffix(".png"), "PNG"
    return draw_dir / item.name.with_name(item.name.name + ".png"), "PNG"


def write_drawn_copy(item: InputImage, detections: Sequence[Mapping[str, Any]], draw_dir: Path) -> Path:
    """Draw ``detections`` on the EXIF-oriented image file ``item`` and write it under ``draw_dir``
    (:func:`draw_path`); returns where. Raises ``OSError`` when the file cannot be read or written."""
    with Image.open(item.path) as img:
        source_format = img.format
        oriented = ImageOps.exif_transpose(img)
        drawn = draw_detections(oriented, detections)
    target, fmt = draw_path(item, draw_dir, source_format)
    target.parent.mkdir(parents=True, exist_ok=True)
    drawn.save(target, fmt, **({"quality": 95, "subsampling": 0} if fmt == "JPEG" else {}))
    return target
