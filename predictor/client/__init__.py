"""``ssd-detect``: the client library and command line of the SSD predictor.

The Python API, for detecting objects in image files or bytes from a program::

    from predictor.client import DetectParams, connect, detect_paths

    # One request: encoded images in, detections of each image out (V1 dicts, whatever the protocol).
    with connect("http://localhost:8080", protocol="v1", model="ssd") as server:
        detections = server.detect([open("photo.jpg", "rb").read()], DetectParams(score_threshold=0.5))[0]
    # [{"label": "circle", "class_id": 1, "score": 0.9871, "xmin": 48.6, "ymin": 240.0, ...}, ...]

    # Files and folders, in batches from several threads, results in input order (what ssd-detect does):
    with connect("localhost:8081", protocol="grpc") as server:
        for result in detect_paths(server, ["photos/"], batch_size=8, concurrency=4):
            print(result.file, result.error or len(result.detections))

- :func:`connect` -> a transport (V1 REST, V2 REST or V2 gRPC) with
  ``detect(images: Sequence[bytes], params: DetectParams) -> list[list[Detection]]``; it raises
  :class:`RequestError` for a failed request (``.status``: the HTTP status or gRPC code name);
  ``infer(...)`` -> :class:`Answer` ``(detections, model_version)`` also says which model version answered.
- :func:`detect_paths` -> :class:`ImageResult` per image file (``detections`` or ``error``, and
  ``model_version``).
- :func:`predictor.client.draw.draw_detections` draws the detections on a Pillow image.

Boxes are ``(xmin, ymin, xmax, ymax)`` in pixels of the image as displayed (EXIF orientation applied).

Modules: :mod:`~predictor.client.transports` (the three senders), :mod:`~predictor.client.files`
(finding and shrinking image files), :mod:`~predictor.client.detect` (batches, threads, retries),
:mod:`~predictor.client.isvc` (an InferenceService's URL through a kube config),
:mod:`~predictor.client.draw` (annotated copies), :mod:`~predictor.client.cli` (the command line). The
wire formats they speak are :mod:`predictor.protocol`, shared with the server.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from predictor.client.detect import ImageResult, RunOptions, run_detection
from predictor.client.errors import ClientError, RequestError
from predictor.client.files import collect_images
from predictor.client.transports import Answer, DetectParams, Transport, connect
from predictor.protocol.detections import Detection

__all__ = [
    "Answer",
    "ClientError",
    "DetectParams",
    "Detection",
    "ImageResult",
    "RequestError",
    "Transport",
    "connect",
    "detect_paths",
]


def detect_paths(
    transport: Transport,
    paths: Sequence[str | Path],
    params: DetectParams | None = None,
    *,
    batch_size: int = 1,
    concurrency: int = 1,
    retries: int = 2,
    downscale: int | None = None,
    draw_dir: str | Path | None = None,
) -> Iterator[ImageResult]:
    """Detect objects in image files and folders (searched recursively): one :class:`ImageResult` per
    image, in input order, as soon as it and every earlier one are answered.

    Args:
      params: per-request detection parameters (None: the server's defaults).
      batch_size: images per request; concurrency: requests in flight (threads).
      retries: retries of a request the server answered busy (429/503, UNAVAILABLE) or not at all.
      downscale: shrink images whose shorter side is over this many pixels before sending (boxes are
        still in pixels of the original file); None sends them as they are.
      draw_dir: also write copies with the boxes drawn here.
    Raises:
      ClientError: a path does not exist, or no image files were found.
    """
    options = RunOptions(
        params or DetectParams(),
        batch_size,
        retries,
        Path(draw_dir) if draw_dir is not None else None,
        downscale,
    )
    return run_detection(transport, collect_images(paths), options, concurrency)
