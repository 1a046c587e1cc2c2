"""``--jpeg_draft`` end to end: a real server decoding large JPEGs at a reduced scale answers with boxes
in pixels of the original image, exactly as the direct detector does on the same reduced decode."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
from PIL import Image
from serving_fixtures import MODEL_NAME, b64, start_server

from predictor.serving.images import decode_image_reduced
from predictor.serving.options import build_parser
from predictor.ssd.detector import split_detections


def test_jpeg_draft_flag_and_environment(monkeypatch):
    assert build_parser().parse_args([]).jpeg_draft is False
    assert build_parser().parse_args(["--jpeg_draft"]).jpeg_draft is True
    monkeypatch.setenv("SSD_JPEG_DRAFT", "true")
    assert build_parser().parse_args([]).jpeg_draft is True
    assert build_parser().parse_args(["--no-jpeg_draft"]).jpeg_draft is False


@pytest.fixture(scope="module")
def draft_server(random_tiny_model_dir, tmp_path_factory):
    server = start_server(
        random_tiny_model_dir, tmp_path_factory.mktemp("draft") / "server.log", "--jpeg_draft"
    )
    try:
        server.wait_ready()
        yield server
    finally:
        server.terminate()


def big_jpeg(shapes_image: np.ndarray, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    big = Image.fromarray(shapes_image).resize((1400, 900), Image.BICUBIC)
    buf = io.BytesIO()
    big.save(buf, format="JPEG", quality=90, exif=exif)
    return buf.getvalue()


@pytest.mark.parametrize("orientation", [1, 6])
def test_draft_server_reports_boxes_in_original_pixels(
    draft_server, direct_detector, shapes_images, orientation
):
    data = big_jpeg(shapes_images[2], orientation)
    decoded = decode_image_reduced(data, draft_size=direct_detector.input_size)
    assert decoded.pixels.shape[0] < decoded.original_hw[0]  # the draft did reduce the decode
    rows = direct_detector.resize(decoded.pixels)[None]
    expected = split_detections(
        direct_detector.run_batch(rows, np.asarray([decoded.original_hw], np.float32))
    )[0]
    assert len(expected.scores) > 0

    r = httpx.post(
        f"{draft_server.url}/v1/models/{MODEL_NAME}:predict",
        json={"instances": [{"b64": b64(data)}]},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    got = r.json()["predictions"][0]
    assert len(got) == len(expected.scores)
    boxes = np.array([[d["xmin"], d["ymin"], d["xmax"], d["ymax"]] for d in got])
    np.testing.assert_allclose(boxes, expected.boxes, atol=6e-3)
    np.testing.assert_allclose([d["score"] for d in got], expected.scores, atol=1e-4)
    height, width = decoded.original_hw
    assert (height, width) == ((1400, 900) if orientation == 6 else (900, 1400))
    assert boxes[:, 2].max() > decoded.pixels.shape[1] or boxes[:, 3].max() > decoded.pixels.shape[0]
