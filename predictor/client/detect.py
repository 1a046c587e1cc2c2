"""Sending image files: in batches, from several threads, with retries; results in input order."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from predictor.client.errors import RequestError
from predictor.client.files import InputImage, downscale_image, image_size, scale_detections
from predictor.client.transports import Answer, DetectParams, Transport
from predictor.protocol.detections import Detection


@dataclass
class ImageResult:
    """The answer for one image: ``detections`` or an ``error``."""

    file: str
    width: int | None = None
    height: int | None = None
    detections: list[Detection] | None = None
    error: str | None = None
    #: The model version that answered (canary: images of one run may get different versions).
    model_version: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"file": self.file, "width": self.width, "height": self.height}
        if self.error is not None:
            out["error"] = self.error
        else:
            if self.model_version is not None:
                out["model_version"] = self.model_version
            out["detections"] = self.detections
        return out


@dataclass(frozen=True)
class RunOptions:
    """How images are sent: per-request parameters, images per request, attempts per request,
    where ``--draw`` copies go (None: not drawn), ``--downscale`` side (None: images sent as they are)."""

    params: DetectParams = field(default_factory=DetectParams)
    batch_size: int = 1
    retries: int = 2
    draw_dir: Path | None = None
    downscale: int | None = None


def send_with_retries(
    transport: Transport, images: Sequence[bytes], params: DetectParams, retries: int
) -> Answer:
    """``transport.infer`` retried with exponential backoff (0.5 s, 1 s, ...) while retryable."""
    for attempt in range(retries + 1):
        try:
            return transport.infer(images, params)
        except RequestError as e:
            if not e.retryable or attempt == retries:
                raise
            time.sleep(0.5 * 2**attempt)
    raise AssertionError("unreachable")


def detect_files(transport: Transport, batch: Sequence[InputImage], options: RunOptions) -> list[ImageResult]:
    """One request for ``batch`` (files that cannot be read are answered locally). When the server
    refuses a request of several images (400), each image is sent alone so the error lands on the
    file that caused it and the others still get detections."""
    results = [ImageResult(str(item.path)) for item in batch]
    payloads: list[tuple[int, bytes]] = []
    scales: dict[int, tuple[float, float]] = {}
    for i, item in enumerate(batch):
        size = image_size(item.path)
        if size:
            results[i].width, results[i].height = size
        try:
            data = item.path.read_bytes()
        except OSError as e:
            results[i].error = f"cannot read the file: {e.strerror or e}"
            continue
        if options.downscale is not None and size:
            reduced = downscale_image(data, options.downscale)
            if reduced is not None:
                data, scales[i] = reduced
        payloads.append((i, data))
    if payloads:
        _answer(transport, payloads, results, options)
    for i, (sx, sy) in scales.items():
        if results[i].detections is not None:
            results[i].detections = scale_detections(results[i].detections, sx, sy)
    if options.draw_dir is not None:
        for item, result in zip(batch, results, strict=True):
            if result.detections is not None:
                _draw_copy(item, result, options.draw_dir)
    return results


def _answer(
    transport: Transport, payloads: list[tuple[int, bytes]], results: list[ImageResult], options: RunOptions
) -> None:
    try:
        answer = send_with_retries(transport, [p for _, p in payloads], options.params, options.retries)
    except RequestError as e:
        if len(payloads) > 1 and e.is_client_error:
            for one in payloads:
                _answer(transport, [one], results, options)
            return
        for i, _ in payloads:
            results[i].error = e.message
        return
    for (i, _), dets in zip(payloads, answer.detections, strict=True):
        results[i].detections = dets
        results[i].model_version = answer.model_version


def _draw_copy(item: InputImage, result: ImageResult, draw_dir: Path) -> None:
    """Write the drawn copy of ``item``; a failure to write it turns the result into an error."""
    from predictor.client.draw import write_drawn_copy

    try:
        write_drawn_copy(item, result.detections or [], draw_dir)
    except OSError as e:
        result.error = f"cannot draw the detections: {e}"
        result.detections = None


def batches(items: Sequence[InputImage], size: int) -> list[list[InputImage]]:
    """Consecutive groups of at most ``size`` items."""
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def run_detection(
    transport: Transport,
    images: Sequence[InputImage],
    options: RunOptions,
    concurrency: int = 1,
    on_result: Callable[[ImageResult], None] | None = None,
) -> Iterator[ImageResult]:
    """Send ``images`` in batches from ``concurrency`` threads; yield results in input order as soon
    as they (and every earlier one) are in. ``on_result`` sees each result as it arrives."""
    groups = batches(images, options.batch_size)
    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="ssd-detect") as pool:
        futures: dict[Future[list[ImageResult]], int] = {
            pool.submit(detect_files, transport, group, options): n for n, group in enumerate(groups)
        }
        done: dict[int, list[ImageResult]] = {}
        next_group = 0
        try:
            for future in as_completed(futures):
                done[futures[future]] = future.result()
                for result in done[futures[future]]:
                    if on_result:
                        on_result(result)
                while next_group in done:
                    yield from done.pop(next_group)
                    next_group += 1
        finally:
            for future in futures:
                future.cancel()
