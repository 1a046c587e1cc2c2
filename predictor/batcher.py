"""Dynamic batching: concurrent requests' images share one model call.

Requests (of any protocol) hand their already decoded and resized images to :meth:`DynamicBatcher.run`.
One asyncio worker collects queued requests until ``max_batch_size`` images are waiting or the oldest
has waited ``batch_wait_s``, then runs the model once, in a dedicated thread, on a buffer padded to the
detector's bucket size (so nothing is traced after warm-up), and hands every request exactly its own
rows of the output. A request's images are never split across model calls. Per-image score thresholds
and detection caps travel with the images, so requests with different parameters share a batch.

Load shedding: :meth:`DynamicBatcher.admit` bounds the images admitted (decoding, queued or running) to
``max_queue_images``; past it requests fail at once with :class:`Overloaded` (HTTP 503, gRPC
UNAVAILABLE). A request cancelled while queued (time limit, client gone) leaves the queue.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from kserve.errors import ServerNotReady

from predictor import metrics_prom

log = logging.getLogger(__name__)

#: ``run_batch(images [B, S, S, 3], image_hw [B, 2], score_threshold [B], max_detections [B], **extra)``;
#: ``extra``: the per-image arrays requests passed to :meth:`DynamicBatcher.run` (e.g. ``nms_threshold [B]``).
RunBatch = Callable[..., dict[str, np.ndarray]]


class Overloaded(ServerNotReady):
    """The server cannot take this request now (HTTP 503, gRPC UNAVAILABLE); retrying later may work.

    A ``ServerNotReady`` so KServe's REST handler answers 503; ``reason`` is what its gRPC interceptor
    sends (``ServerNotReady`` itself lacks it).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


class RequestTimeout(Overloaded):
    """The request ran past its time limit (``--request_timeout_s``): 503."""


@dataclass(eq=False)
class _Item:
    images: Sequence[np.ndarray]
    image_hw: np.ndarray
    score_threshold: np.ndarray
    max_detections: np.ndarray
    future: asyncio.Future
    enqueued: float
    queued: bool = field(default=True)
    extra: Mapping[str, np.ndarray] = field(default_factory=dict)
    timing: dict[str, int] | None = None

    @property
    def n(self) -> int:
        return len(self.images)


class DynamicBatcher:
    """Coalesces concurrent requests into model calls of at most ``max_batch_size`` images.

    Args:
      run_batch: the model call (``Detector.run_batch``), run in ``executor``; outputs ``[B, ...]``.
      bucket_for: batch size -> padded bucket size (``Detector.bucket_for``).
      input_size: side ``S`` of the resized images.
      max_batch_size: most images per model call (and per request).
      batch_wait_s: how long the oldest queued request may wait for company.
      max_queue_images: most images admitted at once (see :meth:`admit`).
      executor: where ``run_batch`` runs; a dedicated one-thread pool when None.
    """

    def __init__(
        self,
        run_batch: RunBatch,
        *,
        bucket_for: Callable[[int], int],
        input_size: int,
        max_batch_size: int = 32,
        batch_wait_s: float = 0.002,
        max_queue_images: int = 256,
        executor: Executor | None = None,
    ) -> None:
        self._run_batch = run_batch
        self._bucket_for = bucket_for
        self.input_size = input_size
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_s
        self.max_queue_images = max_queue_images
        self._executor = executor or ThreadPoolExecutor(1, thread_name_prefix="ssd-model")
        self._queue: collections.deque[_Item] = collections.deque()
        self._queued_images = 0
        self.admitted_images = 0
        self.model_calls = 0
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None

    # ------------------------------------------------------------------ admission
    @contextlib.contextmanager
    def admit(self, n: int) -> Iterator[None]:
        """Reserve room for ``n`` images for the duration of the ``with`` block.

        Raises:
          Overloaded: ``max_queue_images`` would be exceeded (a request is always admitted when
            nothing else is, whatever its size).
        """
        if self.admitted_images and self.admitted_images + n > self.max_queue_images:
            raise Overloaded(
                f"overloaded: {self.admitted_images} images in progress, the limit is "
                f"{self.max_queue_images}; retry later"
            )
        self.admitted_images += n
        metrics_prom.QUEUE_IMAGES.set(self.admitted_images)
        try:
            yield
        finally:
            self.admitted_images -= n
            metrics_prom.QUEUE_IMAGES.set(self.admitted_images)

    # ------------------------------------------------------------------ requests
    async def run(
        self,
        images: Sequence[np.ndarray],
        image_hw: np.ndarray,
        score_threshold: np.ndarray,
        max_detections: np.ndarray,
        extra: Mapping[str, np.ndarray] | None = None,
        timing: dict[str, int] | None = None,
    ) -> dict[str, np.ndarray]:
        """Detections of one request's images, computed together with other requests' images.

        Args:
          images: ``n`` float32 ``[S, S, 3]`` resized images, ``1 <= n <= max_batch_size``.
          image_hw: ``[n, 2]`` original ``(height, width)``.
          score_threshold: float32 ``[n]``; max_detections: int32 ``[n]``.
          extra: more per-image arrays ``[n, ...]`` passed to ``run_batch`` as keyword arguments (padding
            rows are zeros); every request of one batcher passes the same keys.
          timing: when given, filled with ``time.time_ns()`` stamps ``enqueued``, ``batch_start``,
            ``model_start``, ``model_end`` and the call's ``batch_images`` (tracing).
        Returns:
          the model outputs' rows of these images (``[n, ...]`` views).
        """
        n = len(images)
        if not 1 <= n <= self.max_batch_size:
            raise ValueError(f"{n} images per request, expected 1..{self.max_batch_size}")
        loop = asyncio.get_running_loop()
        self._ensure_worker(loop)
        item = _Item(images, image_hw, score_threshold, max_detections, loop.create_future(), loop.time())
        item.extra, item.timing = extra or {}, timing
        if timing is not None:
            timing["enqueued"] = time.time_ns()
        self._queue.append(item)
        self._queued_images += n
        assert self._wakeup is not None
        self._wakeup.set()
        try:
            return await item.future
        finally:
            if item.queued:  # cancelled while waiting: leave the queue
                self._queue.remove(item)
                self._queued_images -= n
                item.queued = False

    def _ensure_worker(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._worker is None or self._worker.done():
            self._wakeup = asyncio.Event()
            self._worker = loop.create_task(self._work(), name="ssd-batcher")

    # ------------------------------------------------------------------ worker
    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wakeup is not None
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            wait = self._queue[0].enqueued + self.batch_wait_s - loop.time()
            if self._queued_images < self.max_batch_size and wait > 0:
                self._wakeup.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), wait)
                continue
            await self._execute(self._take(), loop)

    def _take(self) -> list[_Item]:
        batch: list[_Item] = []
        total = 0
        while self._queue and total + self._queue[0].n <= self.max_batch_size:
            item = self._queue.popleft()
            item.queued = False
            self._queued_images -= item.n
            total += item.n
            batch.append(item)
        return batch

    async def _execute(self, batch: list[_Item], loop: asyncio.AbstractEventLoop) -> None:
        n = sum(item.n for item in batch)
        start = time.perf_counter()
        stamps: dict[str, int] = {"batch_start": time.time_ns(), "batch_images": n}
        try:
            out = await loop.run_in_executor(self._executor, self._call_model, batch, n, stamps)
        except Exception as e:
            log.exception("model call on %d images failed", n)
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(e)
            return
        finally:
            self.model_calls += 1
            metrics_prom.BATCH_SIZE.observe(n)
            metrics_prom.BATCH_SECONDS.observe(time.perf_counter() - start)
        offset = 0
        for item in batch:
            if item.timing is not None:
                item.timing.update(stamps)
            if not item.future.done():  # done: cancelled while running
                item.future.set_result({k: v[offset : offset + item.n] for k, v in out.items()})
            offset += item.n

    def _call_model(self, batch: list[_Item], n: int, stamps: dict[str, int]) -> dict[str, np.ndarray]:
        """Model thread: stack the images into a bucket-sized buffer (one copy), run, drop padding."""
        size = self._bucket_for(n)
        s = self.input_size
        images = np.empty((size, s, s, 3), np.float32)
        row = 0
        for item in batch:
            for image in item.images:
                images[row] = image
                row += 1
        images[n:] = 0.0
        pad = size - n
        hw = np.concatenate([*(item.image_hw for item in batch), np.ones((pad, 2), np.float32)])
        thr = np.concatenate([*(item.score_threshold for item in batch), np.ones(pad, np.float32)])
        caps = np.concatenate([*(item.max_detections for item in batch), np.zeros(pad, np.int32)])
        extra = {
            key: np.concatenate(
                [*(item.extra[key] for item in batch), np.zeros((pad, *rows.shape[1:]), rows.dtype)]
            )
            for key, rows in batch[0].extra.items()
        }
        stamps["model_start"] = time.time_ns()
        out = self._run_batch(
            images, hw.astype(np.float32), thr.astype(np.float32), caps.astype(np.int32), **extra
        )
        stamps["model_end"] = time.time_ns()
        return {k: v[:n] for k, v in out.items()}

    @property
    def queued_images(self) -> int:
        """Images waiting for a model call (not counting the running one)."""
        return self._queued_images

    def shutdown(self) -> None:
        """Stop the worker and the model thread (pending calls finish first)."""
        if self._worker is not None:
            self._worker.cancel()
        self._executor.shutdown(wait=False)
