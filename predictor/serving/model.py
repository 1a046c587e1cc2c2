"""``SSDPredictor``: the KServe model serving an SSD :class:`~predictor.ssd.detector.Detector`.

Request path (all protocols): ``preprocess`` parses the request (cheap, on the event loop) ->
``predict`` admits its images (503 when too many are in progress), base64-decodes, decodes and resizes
them in the decode thread pool, then awaits its rows of a dynamically batched model call that runs in
the model thread -> ``postprocess`` encodes V1 JSON bytes or a V2 ``InferResponse``. The event loop
never runs TensorFlow, so health and readiness answer while the model computes.

Time limit (``--request_timeout_s``): the caller gets 503 when it passes, and the request's work
stops: an image whose decode has not started is never decoded, a request waiting for the model
leaves the queue and is never predicted (``ssd_cancelled_images_total``). Work already running (one
decode, one model call) finishes, and the request's images stay counted against
``--max_queue_images`` until it has, so a burst of timeouts cannot admit more work than the limit.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import kserve
import numpy as np
from kserve.model import InferenceVerb

from predictor.serving import codecs, drift, errors, prepare, priority, prometheus, telemetry, tracing
from predictor.serving.admission import CALL_ARRIVAL
from predictor.serving.batcher import Deadline, DynamicBatcher
from predictor.serving.errors import NotReady, RequestTimeout, status_of
from predictor.serving.images import ImageLimits
from predictor.serving.options import (
    AUTO_CALLS_ON_CPU,
    AUTO_CALLS_PROBE_IMAGES,
    EXACT_ROWS_MESSAGE,
    PADDED_ROWS_MESSAGE,
    ServingOptions,
    calls_in_flight,
    pads_to_bucket,
    resolve_automatic,
)
from predictor.serving.prepare import prepare_payload
from predictor.ssd.detector import Detector, uses_gpu
from predictor.ssd.weights import UNVERSIONED

log = logging.getLogger(__name__)


class _Result(NamedTuple):
    request: codecs.ParsedRequest
    detections: codecs.ResponseDetections


class SSDPredictor(kserve.Model):
    """KServe model: encoded images in, detections (pixel boxes of the original images) out.

    Args:
      name: the model name in the URLs (``/v1/models/{name}:predict``).
      options: serving options; ``options.model_dir`` is a project model directory or a directory
        holding a balancap TF1 checkpoint.
      detector: an already built detector (tests); built from ``options.model_dir`` when None.
    """

    def __init__(self, name: str, options: ServingOptions, detector: Detector | None = None) -> None:
        super().__init__(name, return_response_headers=True)
        self.options, _ = resolve_automatic(options)  # the server resolved them already; tests may not
        self.limits = ImageLimits(options.max_image_bytes, options.max_image_pixels)
        self._detector = detector
        self._batcher: DynamicBatcher | None = None
        self._decode_pool = ThreadPoolExecutor(
            self.options.decode_threads,
            thread_name_prefix="ssd-decode",
            initializer=priority.start_compute_thread,
        )
        self._work: set[asyncio.Task] = set()  # requests' work, also after their caller got a 503
        self._model_thread = ThreadPoolExecutor(  # threads start as calls need them (model_calls)
            self.options.model_calls_in_flight or AUTO_CALLS_ON_CPU,
            thread_name_prefix="ssd-model",
            initializer=priority.start_compute_thread,
        )
        self._load_lock = threading.Lock()
        self._load_started = False
        self.warmup_seconds: float | None = None
        prometheus.MODEL.ready = lambda: self.ready
        prometheus.MODEL.trace_count = lambda: self._detector.trace_count if self._detector else 0
        prometheus.MODEL.info = lambda: (self.name, self.version)
        prometheus.MODEL.capacity = lambda: prepare.capacity_images_per_second(
            self._batcher.capacity_images_per_second if self._batcher else None,
            self.options.decode_threads,
            prepare.DECODE_TIME.seconds,
        )
        if options.tracing and not tracing.enabled():
            tracing.configure()

    # ------------------------------------------------------------------ lifecycle
    @property
    def detector(self) -> Detector:
        if self._detector is None:
            raise RuntimeError("the model is not built yet: call build() or load()")
        return self._detector

    @property
    def batcher(self) -> DynamicBatcher:
        if self._batcher is None:
            raise RuntimeError("the model is not loaded yet: call load()")
        return self._batcher

    def build(self) -> Detector:
        """Read the weights and build the detector (no tracing yet).

        Raises:
          predictor.ssd.weights.ModelLoadError: one line naming what is wrong with the model directory.
        """
        if self._detector is None:
            o = self.options
            self._detector = Detector.from_dir(
                o.model_dir,
                score_threshold=o.score_threshold,
                nms_threshold=o.nms_threshold,
                top_k=o.top_k,
                max_detections=o.max_detections,
                xla=o.xla,
                max_batch_size=o.max_batch_size,
                dtype=o.dtype,
                pad_batches=pads_batches(o),
            )
            if o.runtime == "onnxruntime":
                self._detector = onnx_runtime_detector(self._detector, o)
        return self._detector

    def load(self) -> bool:
        """Build, trace every batch bucket once (warm-up; ``--runtime onnxruntime`` exports the network
        first), start the batcher; only then ``ready``.

        Safe to call from several threads: while one call loads, the others return False at once
        (KServe's gRPC path calls ``load()`` on the event loop when a model is not ready).
        """
        if self.ready:
            return True
        if self._load_started or not self._load_lock.acquire(blocking=False):
            return False
        try:
            self._load_started = True
            detector = self.build()
            start = time.perf_counter()
            per_bucket = detector.warmup()
            self.warmup_seconds = time.perf_counter() - start
            telemetry.TELEMETRY.configure(detector.class_names)
            if self.options.model_dir:
                drift.DRIFT.configure(
                    detector.class_names, self.options.model_dir, self.options.drift_window_images
                )
            self._batcher = DynamicBatcher(
                detector.run_batch,
                max_batch_size=self.options.max_batch_size,
                batch_wait_s=self.options.batch_wait_ms / 1000.0,
                max_queue_images=self.options.max_queue_images,
                max_queue_delay_s=self.options.max_queue_delay_ms / 1000.0,
                shed_standing_queue=self.options.shed_standing_queue,
                bucket_seconds=per_bucket,
                pads_to_bucket=detector.pads_to_bucket,
                rows_computed=detector.rows_computed,
                max_calls_in_flight=model_calls(self.options, per_bucket),
                executor=self._model_thread,
            )
            log.info(
                "warm-up done in %.1f s (seconds per bucket: %s), %d traces",
                self.warmup_seconds,
                ", ".join(f"{b}: {s:.4f}" for b, s in per_bucket.items()),
                detector.trace_count,
            )
            log.info(
                "model calls in flight: %d (--model_calls_in_flight %d)",
                self._batcher.max_calls_in_flight,
                self.options.model_calls_in_flight,
            )
            if self._batcher.pads_to_bucket:
                log.info("%s (--batch_padding %s)", PADDED_ROWS_MESSAGE, self.options.batch_padding)
            else:
                log.info("%s: calls are not split for it", EXACT_ROWS_MESSAGE)
            self.ready = True
        finally:
            self._load_lock.release()
        return self.ready

    def start(self) -> None:
        """KServe calls this on registration; unlike the base class it does not claim readiness."""

    def stop(self) -> None:
        """Not ready any more (in-flight requests still finish)."""
        self.ready = False

    def busy_reason(self) -> str | None:
        """Why any inference request would be refused now (the image queue is full), else None.

        A one-image request is the smallest there is: if it would be refused, every request would.

        Asked by :class:`~predictor.serving.middleware.AdmissionMiddleware` before a request body is read.
        """
        batcher = self._batcher
        return None if batcher is None else batcher.refusal(1)

    # ------------------------------------------------------------------ metadata
    @property
    def version(self) -> str:
        """The served model version (:func:`predictor.ssd.weights.model_version` of the model directory)."""
        return self._detector.version if self._detector is not None else UNVERSIONED

    def get_input_types(self) -> list[dict[str, Any]]:
        return codecs.input_types()

    def get_output_types(self) -> list[dict[str, Any]]:
        return codecs.output_types()

    # ------------------------------------------------------------------ request path
    async def __call__(
        self,
        body: Any,
        headers: dict[str, str] | None = None,
        verb: InferenceVerb = InferenceVerb.PREDICT,
    ) -> Any:
        """KServe's pipeline in the request's trace span (when ``--tracing``).

        A gRPC request's error leaves as the status :data:`~predictor.serving.errors.STATUSES` gives
        it (REST errors are answered by :func:`~predictor.serving.errors.install_rest_handlers`).
        """
        protocol = codecs.protocol_of(body)
        attributes = {
            "ssd.protocol": protocol,
            "ssd.model": self.name,
            "ssd.request_id": (headers or {}).get("x-request-id"),
        }
        try:
            with tracing.request_span(headers, **attributes, status_of=status_of):
                return await self._call(body, headers, verb)
        except Exception as e:
            if protocol != "grpc":
                raise
            error = errors.grpc_error(e)
            if error is e:
                raise
            raise error from e

    async def _call(self, body: Any, headers: dict[str, str] | None, verb: InferenceVerb) -> Any:
        """gRPC answers are counted and error-logged here (REST ones by
        :class:`~predictor.serving.middleware.RestMetricsMiddleware`)."""
        if codecs.protocol_of(body) != "grpc":
            return await super().__call__(body, headers, verb)
        headers = headers or {}
        start = time.perf_counter()
        try:
            result = await super().__call__(body, headers, verb)
        except Exception as e:
            status = status_of(e)
            prometheus.record("grpc", status, time.perf_counter() - start)
            request_id = headers.get("x-request-id") or body.id or prometheus.new_request_id()
            prometheus.log_error(
                "grpc", status, str(request_id)[:128], str(e), ms=_ms(start), model=self.name
            )
            raise
        prometheus.record("grpc", 200, time.perf_counter() - start)
        return result

    async def preprocess(self, payload: Any, headers: dict[str, str] | None = None) -> codecs.ParsedRequest:
        """Request body as KServe decoded it -> :class:`~.codecs.ParsedRequest` (no decoding)."""
        if not self.ready:
            raise NotReady(f"model {self.name} is not ready (loading or shutting down)")
        return codecs.parse_request(
            payload,
            headers,
            max_batch_size=self.options.max_batch_size,
            max_detections=self.detector.max_detections,
        )

    async def predict(
        self,
        payload: codecs.ParsedRequest,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> _Result:
        """Decode, batch and detect within ``--request_timeout_s`` (503 past it; the work stops too)."""
        now = time.monotonic()
        # a gRPC call's time counts from its arrival, before it waited for a place to read its message
        arrived = CALL_ARRIVAL.get()
        limit = self.options.request_timeout_s or None
        deadline = Deadline((now if arrived is None else arrived) + limit if limit else None)
        timeout = None if deadline.at is None else max(0.0, deadline.at - now)
        work = asyncio.ensure_future(self._detect(payload, deadline))
        self._work.add(work)
        work.add_done_callback(self._work_done)
        try:
            dets = await asyncio.wait_for(asyncio.shield(work), timeout)
        except asyncio.TimeoutError:
            deadline.expire()  # the queued request leaves the queue, decodes not started never start
            raise RequestTimeout(
                f"request not answered within {self.options.request_timeout_s:g} s "
                "(--request_timeout_s); the server is busy, retry later"
            ) from None
        except asyncio.CancelledError:
            deadline.expire()
            raise
        return _Result(payload, dets)

    def _work_done(self, task: asyncio.Task) -> None:
        self._work.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a timed-out request's RequestTimeout is not an error to log

    async def postprocess(
        self,
        result: _Result,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> bytes | kserve.InferResponse:
        """V1: JSON bytes ``{"predictions": ...}``; V2 / gRPC: an ``InferResponse``."""
        request, dets = result
        prometheus.IMAGES.labels(request.protocol).inc(len(request.images))
        names = self.detector.class_names
        with tracing.stage("ssd.encode"):
            if request.protocol == "v1":
                if response_headers is not None:
                    response_headers["content-type"] = "application/json"
                return codecs.encode_v1(dets, names)
            return codecs.encode_v2(dets, names, self.name, request.infer_request, self.version)

    async def _detect(self, request: codecs.ParsedRequest, deadline: Deadline) -> codecs.ResponseDetections:
        n = len(request.images)
        controls = self.control_arrays(request.controls, n)  # a bad class filter fails before decoding
        timing = tracing.batcher_timing()
        with self.batcher.admit(n):  # held until the work has stopped, even after a timeout
            loop = asyncio.get_running_loop()
            with tracing.stage("ssd.decode", **{"ssd.images": n}), self.batcher.decoding(n):
                prepared = await asyncio.gather(
                    *(
                        loop.run_in_executor(self._decode_pool, self._prepare_before, p, deadline)
                        for p in request.images
                    ),
                    return_exceptions=True,
                )
            for item in prepared:  # the first failure, in instance order
                if isinstance(item, BaseException):
                    raise item
            image_hw = np.asarray([hw for _, hw in prepared], np.float32)
            score_threshold, max_detections = controls.pop("score_threshold"), controls.pop("max_detections")
            out = await self.batcher.run(
                [image for image, _ in prepared],
                image_hw,
                score_threshold,
                max_detections,
                controls,
                timing=timing,
                deadline=deadline,
            )
        tracing.record_batch(timing)
        with tracing.stage("ssd.postprocess"):
            telemetry.TELEMETRY.observe(out, image_hw)
            drift.DRIFT.observe(out, image_hw)
            return codecs.ResponseDetections(
                out["boxes"], out["scores"], out["classes"], out["num_detections"]
            )

    def control_arrays(self, controls: codecs.Controls, n: int) -> dict[str, np.ndarray]:
        """A request's :class:`~.codecs.Controls`, the server defaults filled in, as the per-image
        arguments of ``Detector.run_batch``: ``score_threshold [n]``, ``max_detections [n]``,
        ``nms_threshold [n]``, ``class_mask [n, C]``."""
        detector = self.detector
        mask = codecs.class_mask(controls.classes, detector.class_names)
        return {
            "score_threshold": np.full(
                n, _default(controls.score_threshold, detector.score_threshold), np.float32
            ),
            "max_detections": np.full(
                n, _default(controls.max_detections, detector.max_detections), np.int32
            ),
            "nms_threshold": np.full(n, _default(controls.nms_threshold, detector.nms_threshold), np.float32),
            "class_mask": np.ones((n, len(detector.class_names)), bool)
            if mask is None
            else np.tile(mask, (n, 1)),
        }

    def _prepare_before(
        self, payload: codecs.ImagePayload | codecs.PixelPayload, deadline: Deadline
    ) -> tuple[np.ndarray, tuple[int, int]]:
        """Decode thread: :meth:`prepare_image`, unless the request's deadline has passed."""
        if deadline.expired():
            prometheus.CANCELLED.labels("decode").inc()
            raise RequestTimeout("the request's deadline passed before its images were decoded")
        return self.prepare_image(payload)

    def prepare_image(
        self, payload: codecs.ImagePayload | codecs.PixelPayload
    ) -> tuple[np.ndarray, tuple[int, int]]:
        """Decode thread: payload -> (float32 ``[S, S, 3]`` resized image, original ``(H, W)``).

        Raises:
          InvalidInput: ``"<field>: <problem>"`` for anything wrong with the client's bytes.
        """
        draft = self.detector.input_size if self.options.jpeg_draft else None
        return prepare_payload(payload, self.limits, self.detector.resize, draft)

    def close(self) -> None:
        """Release the threads (tests; the server process just exits)."""
        self.ready = False
        if self._batcher is not None:
            self._batcher.shutdown()
        self._decode_pool.shutdown(wait=False)
        self._model_thread.shutdown(wait=False)


def _default(value: Any, default: Any) -> Any:
    return default if value is None else value


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 1)


def pads_batches(options: ServingOptions) -> bool:
    """``--batch_padding``: whether the detector pads a call to its bucket
    (:func:`~predictor.serving.options.pads_to_bucket`; for ``auto``, whether TensorFlow uses a GPU:
    :func:`~predictor.ssd.detector.uses_gpu`, its logical devices).

    Raises:
      ValueError: ``exact`` with ``--xla`` (XLA would compile one executable per call size).
    """
    return pads_to_bucket(options.batch_padding, xla=options.xla, gpu=uses_gpu)


def model_calls(options: ServingOptions, per_bucket: dict[int, float]) -> int:
    """``--model_calls_in_flight``: the model calls the batcher runs at once
    (:func:`~predictor.serving.options.calls_in_flight`; for 0, the warm-up's seconds ``per_bucket`` of
    the largest bucket up to 8 images, and whether TensorFlow runs the network on a GPU:
    :func:`~predictor.ssd.detector.uses_gpu`)."""
    probe = max(b for b in per_bucket if b <= AUTO_CALLS_PROBE_IMAGES)
    return calls_in_flight(
        options.model_calls_in_flight, runtime=options.runtime, gpu=uses_gpu, call_s=per_bucket[probe]
    )


def onnx_runtime_detector(detector: Detector, options: ServingOptions) -> Detector:
    """``--runtime onnxruntime``: ``detector`` with its network run by ONNX Runtime on the CPU
    (:class:`~predictor.ssd.onnx_runtime.OrtDetector`, ``--tf_intra_op_threads`` threads; the network
    is exported at warm-up). Refuses the options that apply to TensorFlow's network only."""
    if options.xla or options.mixed_precision != "none":
        raise ValueError(
            "--runtime onnxruntime runs the float32 network: leave --xla off and --mixed_precision none"
        )
    try:
        import onnxruntime  # noqa: F401
        import tf2onnx  # noqa: F401
    except ImportError as e:
        raise ValueError(f"--runtime onnxruntime needs the [onnx] extra (onnxruntime, tf2onnx): {e}") from e
    from predictor.ssd.onnx_runtime import OrtDetector

    return OrtDetector.from_detector(detector, threads=options.tf_intra_op_threads)
