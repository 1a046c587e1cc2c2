"""Dynamic batching: concurrent requests' images share one model call.

Requests (of any protocol) hand their already decoded and resized images to :meth:`DynamicBatcher.run`.
One asyncio worker collects queued requests until ``max_batch_size`` images are waiting or the oldest
has waited ``batch_wait_s``, then runs the model once, in a dedicated thread, on the queued images
(the detector alone pads them to its bucket sizes and stacks them into one buffer), and hands every
request exactly its own rows of the output. Where the queued requests would pad a bucket with at
least as many images as they pass the bucket below by, and the warm-up showed that padding costs what
real images do (a CPU), the call takes only the oldest ones, and the rest lead the next call
(:meth:`DynamicBatcher._efficient_prefix`). Where images still being decoded (:meth:`DynamicBatcher.decoding`)
would fit the slots the call would pad, the call waits for them, at most :data:`FILL_WAIT_FRACTION` of
the bucket's call time (:meth:`DynamicBatcher._fill_wait`): in a closed loop of 8 clients, a request
decoded just after a call of 7 had started ran alone next, at the cost of a whole call.
A request's images are never split across model calls.

Calls in flight: up to ``max_calls_in_flight`` model calls run at once, each in a thread of its own
(``--model_calls_in_flight``). With one, the next call is formed only when the running one has ended;
with two, the next call may start while one runs, once the queue holds as many images as the running
call (:meth:`DynamicBatcher._overlap_waits`; else at the running call's end, as with one), and the two
share the cores and TensorFlow's thread pools, so that one call's serial stretches and the decode
threads' gaps are filled by the other's work (on a 2-core CPU a demo-model call of 8 keeps 1.0-1.6
cores busy alone). Calls start in queue order; each request gets its rows whatever call ends first.
The images admitted (:meth:`admit`) still bound everything in progress, running calls included, so
the memory a second call adds is at most one call's buffers (its input bucket and activations).
Per-image score thresholds and detection caps travel with the images, so requests with different
parameters share a batch.

Load shedding: :meth:`DynamicBatcher.admit` bounds the images admitted (decoding, queued or running) to
``max_queue_images``, and (when set) to what the model can finish within ``max_queue_delay_s`` at
its measured rate (images per second of model time, averaged over recent calls); past either bound
requests fail at once with :class:`Overloaded` (HTTP 503, gRPC UNAVAILABLE). A burst is absorbed; a
standing queue is shed down to one call of the efficient bucket per call in flight plus one waiting
(:meth:`DynamicBatcher.note_wait`,
:attr:`DynamicBatcher.standing_limit`; why and what it measures: docs/serving.md, "Overload").
A request cancelled while queued (client gone) leaves the queue.

Deadlines: a request may carry a :class:`Deadline`. Once it has passed (its time came, or it was
expired by whoever enforces the time limit) the request leaves the queue at once with
:class:`RequestTimeout` and its images are never given to the model (counted in
``ssd_cancelled_images_total{stage="queue"}``).

Shutdown: :meth:`DynamicBatcher.shutdown` answers every request still queued or in the running model
call with :class:`ShuttingDown` (503) and refuses new ones, so no caller waits forever.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from predictor.serving import prometheus
from predictor.serving.errors import Overloaded, RequestTimeout, ShuttingDown
from predictor.serving.options import ServingOptions

log = logging.getLogger(__name__)

_EWMA = 0.2  # weight of the newest model call in the rate estimate
#: A bucket is efficient when its rate is at least this fraction of the best bucket's (see
#: :meth:`DynamicBatcher.efficient_bucket`).
EFFICIENT_FRACTION = 0.9
#: Padding costs what real images do when the warm-up's call of a bucket took at least this many times
#: as long as a call of the bucket below (half its size); see :meth:`DynamicBatcher._efficient_prefix`.
PADDING_COSTS = 1.5
#: Longest wait for images being decoded that would fill a call's padding, as a fraction of the warm-up's
#: time of that call (see :meth:`DynamicBatcher._fill_wait`).
FILL_WAIT_FRACTION = 0.25
_SHUTTING_DOWN = "the server is shutting down; retry on another replica"
_SHED_FROM_QUEUE = (
    "overloaded: more is offered than the model can do; shed from a standing queue; retry later"
)
#: ``run_batch(images, image_hw [B, 2], score_threshold [B], max_detections [B], **extra)`` returns
#: ``{name: [B, ...]}``. ``images``: a list of the ``B`` queued ``[S, S, 3]`` images (no padding, not
#: stacked: the model stacks them once, into a buffer of its own shape); ``extra``: the per-image
#: arrays requests passed to :meth:`DynamicBatcher.run` (e.g. ``nms_threshold [B]``).
RunBatch = Callable[..., dict[str, np.ndarray]]


class Deadline:
    """When a request's work stops being wanted: at ``at`` (``clock()`` seconds), or once :meth:`expire`
    was called, whichever comes first. ``at=None``: only by :meth:`expire`.

    :meth:`expired` may be called from any thread; :meth:`expire` and the callbacks run on the event
    loop.
    """

    def __init__(self, at: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.at = at
        self._clock = clock
        self._expired = False
        self._callbacks: list[Callable[[], None]] = []

    @classmethod
    def after(cls, seconds: float | None, clock: Callable[[], float] = time.monotonic) -> Deadline:
        """A deadline ``seconds`` from now (never for None or 0)."""
        return cls(clock() + seconds if seconds else None, clock)

    def expired(self) -> bool:
        return self._expired or (self.at is not None and self._clock() >= self.at)

    def expire(self) -> None:
        """Pass the deadline now and run the callbacks registered with :meth:`on_expire` (once)."""
        if self._expired:
            return
        self._expired = True
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def on_expire(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` on :meth:`expire`; returns a function that unregisters it."""
        self._callbacks.append(callback)

        def remove() -> None:
            with contextlib.suppress(ValueError):
                self._callbacks.remove(callback)

        return remove


@dataclass(eq=False)
class _Item:
    images: Sequence[np.ndarray]
    image_hw: np.ndarray
    score_threshold: np.ndarray
    max_detections: np.ndarray
    future: asyncio.Future
    enqueued: float
    deadline: Deadline | None = None
    queued: bool = field(default=True)
    extra: Mapping[str, np.ndarray] = field(default_factory=dict)
    timing: dict[str, int] | None = None

    @property
    def n(self) -> int:
        return len(self.images)


class DynamicBatcher:
    """Coalesces concurrent requests into model calls of at most ``max_batch_size`` images.

    Args:
      run_batch: the model call (``Detector.run_batch``, see :data:`RunBatch`), run in ``executor``.
      max_batch_size: most images per model call (and per request).
      batch_wait_s: how long the oldest queued request may wait for company.
      max_queue_images: most images admitted at once (see :meth:`admit`).
      max_queue_delay_s: most seconds of model work admitted at once (0: no such bound).
      shed_standing_queue: under sustained overload admit at most one efficient call per call in
        flight plus one (see above).
      bucket_seconds: seconds of one call per bucket size, measured by the warm-up with nothing else
        running; they choose the call size used under a standing queue (see :meth:`efficient_bucket`).
      pads_to_bucket: the model computes a call's whole bucket, padding included
        (``Detector.pads_to_bucket``); when False the batcher never splits a call or waits to fill its
        padding (:meth:`_efficient_prefix`, :meth:`_fill_wait`).
      rows_computed: images the model computes for a call of ``n`` (``Detector.rows_computed``,
        padding included), counted in ``ssd_computed_images_total``; None: ``n`` (nothing padded).
      max_calls_in_flight: most model calls running at once (see the module docstring).
      executor: where ``run_batch`` runs (it needs ``max_calls_in_flight`` threads); a dedicated pool
        of that many threads when None.
    """

    def __init__(
        self,
        run_batch: RunBatch,
        *,
        max_batch_size: int = ServingOptions.max_batch_size,
        batch_wait_s: float = ServingOptions.batch_wait_ms / 1000.0,
        max_queue_images: int = ServingOptions.max_queue_images,
        max_queue_delay_s: float = ServingOptions.max_queue_delay_ms / 1000.0,
        shed_standing_queue: bool = ServingOptions.shed_standing_queue,
        bucket_seconds: Mapping[int, float] | None = None,
        pads_to_bucket: bool = True,
        rows_computed: Callable[[int], int] | None = None,
        max_calls_in_flight: int = 1,
        executor: Executor | None = None,
    ) -> None:
        if max_calls_in_flight < 1:
            raise ValueError(f"max_calls_in_flight must be >= 1, got {max_calls_in_flight}")
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_s
        self.max_queue_images = max_queue_images
        self.max_queue_delay_s = max_queue_delay_s
        self.shed_standing_queue = shed_standing_queue
        self._ewma_images = 0.0  # recent model calls: images per call (the seconds: below)
        self._bucket_seconds: dict[int, float] = dict(bucket_seconds or {})  # per bucket size, fixed
        self._buckets = sorted(self._bucket_seconds)
        self.pads_to_bucket = pads_to_bucket
        self._rows_computed = rows_computed
        self._ewma_seconds = 0.0  # model busy time per call (overlapping calls' time counted once)
        self._ewma_call_seconds = 0.0  # each call's own duration (start to end)
        self._waiting_since: float | None = None  # since when requests wait longer than the target
        self.standing_queue = False  # sustained overload: the tight bound applies
        self._offered_images = 0  # images admitted or refused while the tight bound applies
        self._full_refusals = 0  # requests refused by max_queue_images (counted by refusal())
        self._full_refusals_at_backlog = 0  # ... when the current backlog began
        self._window = (0.0, 0)  # (start, offered images) of the current window of the standing state
        self.max_calls_in_flight = max_calls_in_flight
        self._executor = executor or ThreadPoolExecutor(max_calls_in_flight, thread_name_prefix="ssd-model")
        self._queue: collections.deque[_Item] = collections.deque()
        self._queued_images = 0
        self._decoding_images = 0  # images of requests between decoding() and run()
        self.admitted_images = 0
        self.model_calls = 0
        self.worker_passes = 0  # turns of the worker's loop (each wake-up is one)
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running: list[_Item] = []  # the requests of every running call
        self._calls: dict[asyncio.Task, int] = {}  # the running calls and their images
        self._last_call_end: float | None = None  # perf_counter() when the last call ended
        self._calls_running = 0  # call tasks between their start and their end
        self._busy_since = 0.0  # perf_counter() when the running calls went from none to one
        self._closed = False

    # ------------------------------------------------------------------ admission
    @contextlib.contextmanager
    def admit(self, n: int) -> Iterator[None]:
        """Reserve room for ``n`` images for the duration of the ``with`` block.

        Raises:
          Overloaded: ``max_queue_images`` would be exceeded (a request is always admitted when
            nothing else is, whatever its size).
        """
        reason = self.refusal(n)
        if reason is not None:
            raise Overloaded(reason)
        prometheus.OFFERED.labels("admitted").inc(n)
        self.admitted_images += n
        if self.standing_queue:
            self._offered_images += n
        prometheus.QUEUE_IMAGES.set(self.admitted_images)
        try:
            yield
        finally:
            self.admitted_images -= n
            prometheus.QUEUE_IMAGES.set(self.admitted_images)

    @contextlib.contextmanager
    def decoding(self, n: int) -> Iterator[None]:
        """``n`` images are being decoded for a request that will call :meth:`run` right after the block
        (with no ``await`` in between): a call that would pad may wait for them (:meth:`_fill_wait`)."""
        self._decoding_images += n
        try:
            yield
        finally:
            self._decoding_images -= n
            self._poke()  # a call waiting for these images need not wait any longer

    def refusal(self, n: int) -> str | None:
        """Why ``n`` more images would be refused now, or None (always None when nothing is admitted).

        The caller refuses them when a reason comes back: they are counted as offered and refused
        (``ssd_offered_images_total{outcome="refused"}``, the shed demand the KEDA trigger must see).
        """
        reason = self._refusal(n)
        if reason is not None:
            prometheus.OFFERED.labels("refused").inc(n)
        return reason

    def _refusal(self, n: int) -> str | None:
        admitted = self.admitted_images
        if not admitted:
            return None
        if admitted + n > self.max_queue_images:
            self._full_refusals += 1
            return (
                f"overloaded: {admitted} images in progress, the limit is "
                f"{self.max_queue_images} (--max_queue_images); retry later"
            )
        rate = self.images_per_second
        if self.max_queue_delay_s and rate and (admitted + n) / rate > self.max_queue_delay_s:
            return (
                f"overloaded: {admitted} images in progress take {admitted / rate:.2f} s of model time, "
                f"the limit is {self.max_queue_delay_s:g} s (--max_queue_delay_ms); retry later"
            )
        if self.standing_queue and admitted + n > self.standing_limit:
            self._offered_images += n
            return (
                f"overloaded: more is offered than the model can do; {admitted} images in progress, "
                f"the limit is {self.standing_limit} until the queue drains; retry later"
            )
        return None

    @property
    def standing_limit(self) -> int:
        """Images admitted while a standing queue lasts: one call of the :meth:`efficient_bucket` per
        call that may run plus one waiting (two with one call in flight), or two recent batches (at
        least one full one) before any call was timed."""
        bucket = self.efficient_bucket()
        if bucket is None:
            return max(self.max_batch_size, round(2 * self._ewma_images))
        return (self.max_calls_in_flight + 1) * bucket

    @property
    def capacity_images_per_second(self) -> float | None:
        """Images per second of model time in calls of the :meth:`efficient_bucket` (the size run under
        a standing queue), from the warm-up's timings; None before any call was timed."""
        bucket = self.efficient_bucket()
        return None if bucket is None else bucket / self._bucket_seconds[bucket]

    def efficient_bucket(self) -> int | None:
        """The smallest bucket whose measured rate (images per second of a call) is within
        ``1 - EFFICIENT_FRACTION`` of the best bucket's; None before any call was timed (why this size:
        docs/serving.md, "Overload").

        The choice uses the warm-up's timings only, all taken alike with the model alone. Calls timed
        while serving are slowed by decoding on the same cores, and only the sizes being run get
        timed: comparing those with the other sizes' warm-up timings made the choice drift (in one
        overload run of bench/overload.py the bound wandered from 4 to 64 images, and with it the
        admitted requests' wait).
        """
        rates = {b: b / t for b, t in self._bucket_seconds.items() if t > 0}
        if not rates:
            return None
        best = max(rates.values())
        return min(b for b, rate in rates.items() if rate >= EFFICIENT_FRACTION * best)

    def note_wait(self, waited_s: float, now: float) -> None:
        """The oldest queued request waited ``waited_s`` when a model call was formed at ``now``.

        A standing queue starts when waits over two recent calls last ``max(1 s, 4 calls)`` while
        ``max_queue_images`` refuses requests, and ends when a request waited less than one call *and*
        the images offered over ``max(1 s, 4 calls)`` came at most at the model's measured rate
        (docs/serving.md, "Overload", says why both conditions).
        """
        if not self.shed_standing_queue or not self._ewma_call_seconds:
            return
        call_s = self._ewma_call_seconds  # one call's own time, however many run at once
        hold_s = max(1.0, 4 * call_s)
        if waited_s > 2 * call_s:
            if self._waiting_since is None:
                self._waiting_since = now
                self._full_refusals_at_backlog = self._full_refusals
            elif (
                now - self._waiting_since >= hold_s
                and not self.standing_queue
                and self._full_refusals > self._full_refusals_at_backlog
            ):
                self.standing_queue = True
                self._window = (now, self._offered_images)
                shed = self._shed_backlog()
                log.warning(
                    "standing queue: admitting at most %d images until it drains; %d queued images shed",
                    self.standing_limit,
                    shed,
                )
        else:
            self._waiting_since = None
            if self.standing_queue and waited_s < call_s and now - self._window[0] >= hold_s:
                self._end_standing_queue_if_quiet(now)

    def _end_standing_queue_if_quiet(self, now: float) -> None:
        """A window of the standing state is over: end it if the images offered in the window came at
        most at the model's measured rate, else start the next window."""
        start, offered = self._window
        rate = self.images_per_second or 0.0
        if self._offered_images - offered <= rate * (now - start):
            self.standing_queue = False
            log.info("the queue drained")
        self._window = (now, self._offered_images)

    def _shed_backlog(self) -> int:
        """A standing queue was recognised: the oldest queued requests past the tight bound get 503 now
        (the youngest stay), so admitted requests stop waiting for the backlog of the burst allowance
        (up to ``max_queue_images``) to drain. Returns the images shed."""
        shed = 0
        while self._queue and self._queued_images > self.standing_limit:
            item = self._queue.popleft()
            item.queued = False
            self._queued_images -= item.n
            shed += item.n
            if not item.future.done():
                item.future.set_exception(Overloaded(_SHED_FROM_QUEUE))
        return shed

    @property
    def images_per_second(self) -> float | None:
        """The model's recent rate (None before the first call)."""
        return self._ewma_images / self._ewma_seconds if self._ewma_seconds > 0 else None

    def _observe_call(self, n: int, seconds: float, call_seconds: float | None = None) -> None:
        """A call of ``n`` images ended after ``call_seconds`` of its own (default ``seconds``: a call
        that overlapped none), adding ``seconds`` of model busy time (for overlapping calls only the
        time no earlier call ended in, so the rate counts busy time once; see :meth:`_execute`)."""
        call_seconds = seconds if call_seconds is None else call_seconds
        if self._ewma_seconds == 0:
            self._ewma_images, self._ewma_seconds = float(n), seconds
        else:
            self._ewma_images += _EWMA * (n - self._ewma_images)
            self._ewma_seconds += _EWMA * (seconds - self._ewma_seconds)
        if self._ewma_call_seconds == 0:
            self._ewma_call_seconds = call_seconds
        else:
            self._ewma_call_seconds += _EWMA * (call_seconds - self._ewma_call_seconds)

    # ------------------------------------------------------------------ requests
    async def run(
        self,
        images: Sequence[np.ndarray],
        image_hw: np.ndarray,
        score_threshold: np.ndarray,
        max_detections: np.ndarray,
        extra: Mapping[str, np.ndarray] | None = None,
        timing: dict[str, int] | None = None,
        deadline: Deadline | None = None,
    ) -> dict[str, np.ndarray]:
        """Detections of one request's images, computed together with other requests' images.

        Args:
          images: ``n`` float32 ``[S, S, 3]`` resized images, ``1 <= n <= max_batch_size``.
          image_hw: ``[n, 2]`` original ``(height, width)``.
          score_threshold: float32 ``[n]``; max_detections: int32 ``[n]``.
          extra: more per-image arrays ``[n, ...]`` passed to ``run_batch`` as keyword arguments; every
            request of one batcher passes the same keys.
          timing: when given, filled with ``time.time_ns()`` stamps ``enqueued``, ``batch_start``,
            ``model_start``, ``model_end`` and the call's ``batch_images`` (tracing).
          deadline: past it the request leaves the queue (``RequestTimeout``), unseen by the model.
        Returns:
          the model outputs' rows of these images (``[n, ...]`` views).
        Raises:
          RequestTimeout: the deadline passed before the model took the images.
          ShuttingDown: :meth:`shutdown` was called.
        """
        n = len(images)
        if not 1 <= n <= self.max_batch_size:
            raise ValueError(f"{n} images per request, expected 1..{self.max_batch_size}")
        if self._closed:
            raise ShuttingDown(_SHUTTING_DOWN)
        if deadline is not None and deadline.expired():
            prometheus.CANCELLED.labels("queue").inc(n)
            raise _timeout()
        loop = asyncio.get_running_loop()
        self._ensure_worker(loop)
        item = _Item(
            images, image_hw, score_threshold, max_detections, loop.create_future(), loop.time(), deadline
        )
        item.extra, item.timing = extra or {}, timing
        if timing is not None:
            timing["enqueued"] = time.time_ns()
        self._queue.append(item)
        self._queued_images += n
        unregister = deadline.on_expire(lambda: self._drop_expired(item)) if deadline else None
        self._poke()
        try:
            return await item.future
        finally:
            if unregister is not None:
                unregister()
            if item.queued:  # cancelled while waiting: leave the queue
                self._unqueue(item)

    def _unqueue(self, item: _Item) -> None:
        self._queue.remove(item)
        self._queued_images -= item.n
        item.queued = False

    def _drop_expired(self, item: _Item) -> None:
        """The deadline of a queued request passed: it leaves the queue, its caller gets 503."""
        if not item.queued:
            return  # already with the model (or answered)
        self._unqueue(item)
        prometheus.CANCELLED.labels("queue").inc(item.n)
        if not item.future.done():
            item.future.set_exception(_timeout())

    def _poke(self) -> None:
        """Wake the worker for a change in the queue or the images being decoded, unless every call slot
        is taken: then nothing it could do changes before a call ends, and the call's end wakes it
        (:meth:`_execute`). At c=16 with one call in flight that spares the event loop two worker steps
        per request (bench/RESULTS.md, "Served: wake-ups")."""
        if self._wakeup is not None and len(self._calls) < self.max_calls_in_flight:
            self._wakeup.set()

    def _ensure_worker(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._worker is None or self._worker.done():
            self._loop = loop
            self._wakeup = asyncio.Event()
            self._worker = loop.create_task(self._work(), name="ssd-batcher")

    # ------------------------------------------------------------------ worker
    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wakeup is not None
        while True:
            self.worker_passes += 1
            if not self._queue or len(self._calls) >= self.max_calls_in_flight or self._overlap_waits():
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            now = loop.time()
            wait = self._queue[0].enqueued + self.batch_wait_s - now
            if self._queued_images < self.max_batch_size and wait <= 0:
                wait = self._fill_wait(now)
            if self._queued_images < self.max_batch_size and wait > 0:
                self._wakeup.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), wait)
                continue
            batch = self._take()
            if batch:  # else every request taken had expired
                # Running from now: a shutdown before the task's first step (which cancels it, so no
                # finally of _execute runs) still answers these requests (_fail_pending).
                self._running.extend(batch)
                call = loop.create_task(self._execute(batch, loop), name="ssd-model-call")
                self._calls[call] = sum(item.n for item in batch)  # _execute's finally removes it

    def _overlap_waits(self) -> bool:
        """While a call runs, the next one starts only once the queue holds as many images as the
        smallest running call: on a CPU a call of 1 beside a call of 8 costs nearly what a call of 8
        does. Until then the queue waits, at most until a running call ends (then the rules for a lone
        call apply)."""
        return bool(self._calls) and self._queued_images < min(self._calls.values())

    def _fill_wait(self, now: float) -> float:
        """Seconds more the next call waits for images being decoded, or 0 to run now.

        It waits while every image being decoded fits the slots the call would pad (queued images plus
        decoding ones at most the queued images' bucket; padding is computed anyway), at most
        :data:`FILL_WAIT_FRACTION` of the warm-up's time of that bucket after the oldest request was
        queued. Without warm-up timings, with nothing decoding, or for a model that does not pad
        (``pads_to_bucket`` False), it never waits.
        """
        queued, decoding = self._queued_images, self._decoding_images
        if not self.pads_to_bucket or not decoding or not self._buckets or queued >= self._buckets[-1]:
            return 0.0
        bucket = self._bucket_for(queued)
        if queued + decoding > bucket:
            return 0.0
        until = self._queue[0].enqueued + FILL_WAIT_FRACTION * self._bucket_seconds[bucket]
        return max(0.0, until - now)

    def _take(self) -> list[_Item]:
        batch: list[_Item] = []
        total = 0
        now = asyncio.get_running_loop().time()
        if self._queue:
            self.note_wait(now - self._queue[0].enqueued, now)
        while self._queue and total + self._queue[0].n <= self.max_batch_size:
            item = self._queue.popleft()
            item.queued = False
            self._queued_images -= item.n
            if item.deadline is not None and item.deadline.expired():  # its time came while queued
                prometheus.CANCELLED.labels("queue").inc(item.n)
                if not item.future.done():
                    item.future.set_exception(_timeout())
                continue
            total += item.n
            batch.append(item)
        keep = self._efficient_prefix([item.n for item in batch])
        for item in reversed(batch[keep:]):  # back to the head of the queue, in their order
            item.queued = True
            self._queued_images += item.n
            self._queue.appendleft(item)
        return batch[:keep]

    def _efficient_prefix(self, sizes: Sequence[int]) -> int:
        """How many of the first requests (``sizes``: each one's images, oldest first) to run now.

        The detector pads a call to its bucket size. Where a padded image costs what a real one does
        (the warm-up's call of the larger bucket took at least :data:`PADDING_COSTS` times as long as
        one of the smaller: a CPU), a call that would pad at least as many images as it would leave for
        the next call takes only the oldest requests that fit the smaller bucket: 9 queued images run
        as 8 (the 9th leads the next call) instead of 16, 12 as 8 + 4, 3 as 2 + 1; 7 still run as 8.
        The images computed never grow (the two calls' buckets together are at most the larger one),
        and in a steady stream the ones left are joined by new arrivals. Where the larger bucket costs
        about what the smaller does (a GPU), without warm-up timings, or for a model that does not pad
        (``pads_to_bucket`` False: ONNX Runtime runs the real images only), every request taken runs.
        Only a rule this coarse is safe on warm-up timings: on a busy CPU two sizes' rates differ by
        20% from one start to the next.
        """
        total = sum(sizes)
        buckets = self._buckets
        if not self.pads_to_bucket or len(sizes) < 2 or not buckets or total > buckets[-1]:
            return len(sizes)
        i = bisect.bisect_left(buckets, total)
        hi = buckets[i]
        if hi == total or i == 0:
            return len(sizes)
        lo = buckets[i - 1]
        if self._bucket_seconds[hi] < PADDING_COSTS * self._bucket_seconds[lo]:
            return len(sizes)  # padding is cheap here
        fits = [k for k, s in enumerate(itertools.accumulate(sizes), start=1) if s <= lo]
        if not fits:
            return len(sizes)
        keep = fits[-1]
        taken = sum(sizes[:keep])
        deferred = total - taken
        computed = self._bucket_for(taken) + self._bucket_for(deferred)  # when nothing joins the ones left
        return keep if hi - total >= deferred and computed <= hi else len(sizes)

    def _bucket_for(self, n: int) -> int:
        """The smallest timed bucket holding ``n`` images (``n`` <= the largest)."""
        return self._buckets[bisect.bisect_left(self._buckets, n)]

    async def _execute(self, batch: list[_Item], loop: asyncio.AbstractEventLoop) -> None:
        """One model call on ``batch`` (a task of its own; up to ``max_calls_in_flight`` run at once).

        ``ssd_batch_seconds`` and the per-call average (:meth:`note_wait`) get the call's own time;
        the rate (:meth:`_observe_call`) gets the time since the later of the previous call's end and
        the start of the current busy spell (since calls went from none running to one), so calls that
        overlap add up to the model's busy time, not to the sum of their durations, whichever ends
        first. A call cancelled by a shutdown counts in none of these.
        """
        n = sum(item.n for item in batch)
        start = time.perf_counter()
        if self._calls_running == 0:
            self._busy_since = start
        self._calls_running += 1
        stamps: dict[str, int] = {"batch_start": time.time_ns(), "batch_images": n}
        uncounted = False  # a call cancelled by a shutdown, or one the shut-down executor refused
        try:
            out = await loop.run_in_executor(self._executor, self._call_model, batch, n, stamps)
        except asyncio.CancelledError:
            uncounted = True
            raise
        except Exception as e:
            if self._closed and isinstance(e, RuntimeError) and "shutdown" in str(e):
                e, uncounted = ShuttingDown(_SHUTTING_DOWN), True  # the executor shut down first
            else:
                log.exception("model call on %d images failed", n)
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(e)
            return
        finally:
            # The slot is free now, and the worker is woken before the callers' answers are: it forms
            # the next call from what queued meanwhile before the event loop encodes their responses.
            self._calls.pop(asyncio.current_task(), None)  # type: ignore[arg-type]
            if self._wakeup is not None:
                self._wakeup.set()
            running = set(map(id, batch))
            self._running = [item for item in self._running if id(item) not in running]
            self._calls_running -= 1
            if not uncounted:
                self._observe_end(n, start)
        offset = 0
        for item in batch:
            if item.timing is not None:
                item.timing.update(stamps)
            if item.deadline is not None and item.deadline.expired():
                prometheus.LATE.inc(item.n)
            if not item.future.done():  # done: cancelled while running
                item.future.set_result({k: v[offset : offset + item.n] for k, v in out.items()})
            offset += item.n

    def _observe_end(self, n: int, start: float) -> None:
        """Event loop: a call of ``n`` images that started at ``start`` (``perf_counter``) ended now."""
        end = time.perf_counter()
        self.model_calls += 1
        last, self._last_call_end = self._last_call_end, end
        busy_from = self._busy_since if last is None else max(self._busy_since, last)
        self._observe_call(n, end - busy_from, end - start)
        prometheus.BATCH_SIZE.observe(n)
        prometheus.COMPUTED_IMAGES.inc(n if self._rows_computed is None else self._rows_computed(n))
        prometheus.BATCH_SECONDS.observe(end - start)

    def _call_model(self, batch: list[_Item], n: int, stamps: dict[str, int]) -> dict[str, np.ndarray]:
        """Model thread: the batch's ``n`` images and their parameters, in request order, to the model."""
        images = [image for item in batch for image in item.images]  # references: no pixel copied here
        hw = np.concatenate([item.image_hw for item in batch]).astype(np.float32, copy=False)
        thr = np.concatenate([item.score_threshold for item in batch]).astype(np.float32, copy=False)
        caps = np.concatenate([item.max_detections for item in batch]).astype(np.int32, copy=False)
        extra = {key: np.concatenate([item.extra[key] for item in batch]) for key in batch[0].extra}
        stamps["model_start"] = time.time_ns()
        out = self._run_batch(images, hw, thr, caps, **extra)
        stamps["model_end"] = time.time_ns()
        rows = {k: len(v) for k, v in out.items() if len(v) != n}
        if rows:
            raise RuntimeError(f"the model returned {rows} rows for {n} images")
        return out

    @property
    def queued_images(self) -> int:
        """Images waiting for a model call (not counting the running one)."""
        return self._queued_images

    def shutdown(self) -> None:
        """Refuse new requests, answer every waiting one with :class:`ShuttingDown`, stop the worker.

        Callable from any thread; the model call in progress (if any) runs to its end in the model
        thread, but its callers are answered now.
        """
        self._closed = True
        loop = self._loop
        if loop is None or loop.is_closed():
            self._fail_pending()
        else:
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is loop:
                self._fail_pending()
            else:
                with contextlib.suppress(RuntimeError):  # the loop stopped in between
                    loop.call_soon_threadsafe(self._fail_pending)
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _fail_pending(self) -> None:
        """Event loop: answer queued and running requests with 503 and stop the worker."""
        for task in (self._worker, *self._calls):  # a running call's thread still runs to its end
            if task is not None:
                with contextlib.suppress(RuntimeError):  # its loop is already closed
                    task.cancel()
        self._calls.clear()  # one cancelled before its first step runs no finally to remove it
        pending = [*self._queue, *self._running]
        self._queue.clear()
        self._queued_images = 0
        self._running = []
        for item in pending:
            item.queued = False
            if not item.future.done():
                with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                    item.future.set_exception(ShuttingDown(_SHUTTING_DOWN))


def _timeout() -> RequestTimeout:
    return RequestTimeout("the request's deadline passed before the model could take it; retry later")
