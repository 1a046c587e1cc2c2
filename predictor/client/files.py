"""Image files to send: finding them (files and folders), their size, and shrinking them before sending."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from predictor.client.errors import ClientError
from predictor.protocol.detections import Detection

#: File extensions picked up when a folder is given (files named explicitly are always sent).
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"})


@dataclass(frozen=True)
class InputImage:
    """An image file to send. ``name`` is its path relative to the folder it was found in (or its
    file name when given directly): where ``--draw`` writes its copy."""

    path: Path
    name: Path


def collect_images(inputs: Sequence[str | Path]) -> list[InputImage]:
    """Files as given, and the image files under each folder (recursively, sorted, hidden skipped).

    Raises:
      ClientError: a path does not exist, or nothing at all was found.
    """
    images: list[InputImage] = []
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            images.extend(InputImage(p, p.relative_to(path)) for p in _folder_images(path))
        elif path.is_file():
            images.append(InputImage(path, Path(path.name)))
        else:
            raise ClientError(f"no such file or directory: {raw}")
    if not images:
        raise ClientError(
            f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) found in: " + ", ".join(map(str, inputs))
        )
    return unique_names(images)


def _folder_images(folder: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                found.append(Path(dirpath) / name)
    return found


def unique_names(images: Sequence[InputImage]) -> list[InputImage]:
    """Rename repeated output names (``a.jpg`` from two folders) to ``a-2.jpg``, ``a-3.jpg`` ..."""
    seen: set[Path] = set()
    out = []
    for item in images:
        name, n = item.name, 1
        while name in seen:
            n += 1
            name = item.name.with_name(f"{item.name.stem}-{n}{item.name.suffix}")
        seen.add(name)
        out.append(InputImage(item.path, name))
    return out


def image_size(path: Path) -> tuple[int, int] | None:
    """``(width, height)`` of the EXIF-oriented image, read from its header; None if not an image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            width, height = img.size
            orientation = img.getexif().get(0x0112, 1)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        return None
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def downscale_image(data: bytes, side: int, quality: int = 90) -> tuple[bytes, tuple[float, float]] | None:
    """Shrink an encoded image whose shorter side exceeds ``side`` so that side is ``side`` pixels.

    EXIF orientation is applied first (the result has none), the resize is antialiased (JPEGs are first
    decoded at a reduced DCT scale that keeps the shorter side >= ``side``), and the result is a JPEG of
    ``quality``. Returns the new bytes and ``(sx, sy)``, the factors that map its pixels back to the
    original's (``x_original = x * sx``); None when the image is small enough already or unreadable
    (it is then sent as it is, and the server answers for it).
    """
    import io

    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if img.getexif().get(0x0112, 1) in (5, 6, 7, 8):
                width, height = height, width  # as displayed
            if min(width, height) <= side:
                return None
            img.draft("RGB", (side, side))  # JPEG only: both sides stay >= side
            oriented = ImageOps.exif_transpose(img).convert("RGB")
            scale = side / min(width, height)
            target = (max(1, round(width * scale)), max(1, round(height * scale)))
            small = oriented.resize(target, Image.Resampling.BILINEAR)  # antialiased when shrinking
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    buf = io.BytesIO()
    small.save(buf, format="JPEG", quality=quality)
    return buf.getvalue(), (width / target[0], height / target[1])


def scale_detections(detections: list[Detection], sx: float, sy: float) -> list[Detection]:
    """Detections of a downscaled copy -> pixels of the original (x times ``sx``, y times ``sy``),
    rounded to 2 decimals like the server's."""
    out = []
    for d in detections:
        d = dict(d)
        for key, factor in (("xmin", sx), ("xmax", sx), ("ymin", sy), ("ymax", sy)):
            d[key] = round(d[key] * factor, 2)
        out.append(d)
    return out
