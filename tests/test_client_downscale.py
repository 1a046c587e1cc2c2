"""``ssd-detect --downscale SIDE``: images shrunk on the client, boxes mapped back to the original pixels.

The end-to-end check sends a large image with ``--downscale`` and, separately, the very bytes the client
would send (``downscale_image``'s output) without it: the first answer must be the second one scaled by
the original/sent size ratio, so the mapping, not just the plumbing, is tested (real ``ssd_server``).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from predictor.client.cli import main
from predictor.client.files import downscale_image, scale_detections


def jpeg(width: int, height: int, orientation: int = 1, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 40 + 1, width // 40 + 1, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((width, height), Image.BICUBIC)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90, exif=exif)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("size", "orientation", "sent", "scale"),
    [
        ((1280, 720), 1, (533, 300), (1280 / 533, 720 / 300)),
        ((1280, 720), 6, (300, 533), (720 / 300, 1280 / 533)),  # displayed as 720 x 1280
        ((4000, 3000), 1, (400, 300), (10.0, 10.0)),
    ],
)
def test_downscale_sends_the_oriented_image_shrunk_and_says_how_to_map_back(size, orientation, sent, scale):
    data, (sx, sy) = downscale_image(jpeg(*size, orientation), 300)
    with Image.open(io.BytesIO(data)) as img:
        assert img.format == "JPEG" and img.size == sent
        assert img.getexif().get(0x0112, 1) == 1  # orientation already applied
    assert (sx, sy) == pytest.approx(scale)


def test_small_or_unreadable_images_are_sent_as_they_are():
    assert downscale_image(jpeg(640, 300), 300) is None  # shorter side not over 300
    assert downscale_image(b"not an image", 300) is None


def test_scale_detections_maps_corners_and_rounds_like_the_server():
    det = {
        "label": "circle",
        "class_id": 1,
        "score": 0.9,
        "xmin": 10.0,
        "ymin": 20.0,
        "xmax": 30.5,
        "ymax": 40.0,
    }
    (out,) = scale_detections([det], 2.0, 1 / 3)
    assert out == {**det, "xmin": 20.0, "ymin": 6.67, "xmax": 61.0, "ymax": 13.33}
    assert det["xmin"] == 10.0  # the input is not modified


def test_cli_downscale_reports_boxes_in_original_pixels(ssd_server, tmp_path: Path):
    big = tmp_path / "big.jpg"
    big.write_bytes(jpeg(1600, 1000, seed=3))
    sent, (sx, sy) = downscale_image(big.read_bytes(), 320)
    (tmp_path / "sent.jpg").write_bytes(sent)
    url = ["--url", ssd_server.url, "--model", ssd_server.model_name, "--score-threshold", "0.05"]
    assert main([*url, "--downscale", "320", "-o", str(tmp_path / "a.jsonl"), str(big)]) == 0
    assert main([*url, "-o", str(tmp_path / "b.jsonl"), str(tmp_path / "sent.jpg")]) == 0
    (a,) = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    (b,) = [json.loads(line) for line in (tmp_path / "b.jsonl").read_text().splitlines()]
    assert (a["width"], a["height"]) == (1600, 1000) and (b["width"], b["height"]) == (512, 320)
    assert len(a["detections"]) == len(b["detections"]) > 0
    for x, y in zip(a["detections"], b["detections"], strict=True):
        assert x["class_id"] == y["class_id"] and x["score"] == pytest.approx(y["score"], abs=2e-4)
        for key, factor in (("xmin", sx), ("xmax", sx), ("ymin", sy), ("ymax", sy)):
            assert x[key] == pytest.approx(y[key] * factor, abs=0.05 * factor + 0.01)
        assert 0 <= x["xmin"] < x["xmax"] <= 1600 and 0 <= x["ymin"] < x["ymax"] <= 1000
