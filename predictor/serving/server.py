"""``python -m predictor``: load the model, then serve it with KServe's ModelServer (REST + gRPC).

Start-up: parse flags into :class:`~predictor.serving.options.ServingOptions` -> size the automatic
thread counts and byte budget from the cgroup (:func:`~predictor.serving.options.resolve_automatic`)
-> configure GPUs (memory growth) -> read the weights
(a broken model directory ends here: one error line, exit 1) -> start the HTTP/gRPC servers with the
model registered but not ready -> trace every batch bucket in a background thread -> ready. Liveness
answers during the warm-up and readiness says 503 until it is done.

Shutdown: on SIGTERM/SIGINT uvicorn stops accepting connections and lets in-flight REST requests
finish (up to ``--shutdown_grace_s``), then KServe stops the gRPC server with the same grace and the
process exits 0.

Wiring done here on KServe's objects: the HTTP middlewares (:func:`predictor.serving.middleware.install`),
our inference routes (:mod:`predictor.serving.http_routes`), and the changes to KServe's own behaviour,
all in :mod:`predictor.serving.kserve_workarounds` (error answers from
:data:`predictor.serving.errors.STATUSES`, a gRPC server that counts message bytes, its receive limit,
truthful server readiness).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from predictor.serving import auth, heap, middleware, priority, resources
from predictor.serving.admission import ByteBudget
from predictor.serving.options import ServingOptions, build_parser, resolve_automatic
from predictor.serving.prometheus import QuietClientErrors

if TYPE_CHECKING:
    from predictor.serving.model import SSDPredictor
    from predictor.ssd.detector import Detector

log = logging.getLogger("predictor.serving.server")


def main(argv: list[str] | None = None) -> int:
    """Run the server until it is stopped; returns the process exit status."""
    args = build_parser().parse_args(argv)
    _configure_logging(args)
    malloc_tuned = heap.tune_malloc(args.malloc_mmap_threshold_bytes)  # before TF and the pools start
    priority.configure(args.compute_nice)
    model_dir = resolve_model_dir(args.model_dir)
    if model_dir is None:
        return 1

    from predictor.serving.model import SSDPredictor
    from predictor.ssd.detector import configure_devices
    from predictor.ssd.weights import ModelLoadError

    options = size_from_limits(ServingOptions.from_args(args, model_dir), malloc_tuned)
    tokens = _token_check(options)
    if options.auth_token_file and tokens is None:
        return 1
    devices = configure_devices()
    model = SSDPredictor(options.model_name, options)
    try:
        detector = model.build()
    except Exception as e:  # ModelLoadError names the problem; anything else gets its type too
        reason = _one_line(e) if isinstance(e, ModelLoadError) else f"{type(e).__name__}: {_one_line(e)}"
        log.error("cannot load the model from %s: %s", model_dir, reason)
        return 1
    _log_configuration(args, devices, detector, options)
    return _serve(args, options, model, tokens)


def resolve_model_dir(model_dir: str | None) -> str | None:
    """``--model_dir``, else the packaged demo model; None (after logging why) when there is none."""
    if model_dir:
        return model_dir
    from predictor.models import DEMO_MODEL_DIR

    if not (DEMO_MODEL_DIR / "model.yaml").exists():
        log.error(
            "no --model_dir (or SSD_MODEL_DIR) given and the demo model is not installed "
            "(%s is missing); refusing to serve untrained weights",
            DEMO_MODEL_DIR / "model.yaml",
        )
        return None
    return str(DEMO_MODEL_DIR)


def size_from_limits(options: ServingOptions, malloc_tuned: bool = False) -> ServingOptions:
    """Fill the automatic (0) thread counts and byte budget from the cgroup, size TensorFlow's thread
    pools (before TensorFlow runs anything: it fixes them at start) and log it."""
    limits = resources.read_limits()
    options, automatic = resolve_automatic(options, limits)
    resources.configure_tensorflow_threads(options.tf_intra_op_threads, options.tf_inter_op_threads)
    log.info(
        "resources: %s; decode_threads %d, tf intra-op %d / inter-op %d threads, max_inflight_bytes %d "
        "(automatic: %s); malloc %s",
        limits.describe(),
        options.decode_threads,
        options.tf_intra_op_threads,
        options.tf_inter_op_threads,
        options.max_inflight_bytes,
        ", ".join(automatic) or "none",
        _malloc_summary(options, malloc_tuned),
    )
    return options


def _malloc_summary(options: ServingOptions, malloc_tuned: bool) -> str:
    if not malloc_tuned:
        return "default"
    trim = options.malloc_trim_idle_s
    return f"mmap threshold {options.malloc_mmap_threshold_bytes}, {heap.ARENA_MAX} arenas, " + (
        f"trimmed after {trim:g} s idle" if trim else "never trimmed"
    )


def _serve(
    args: argparse.Namespace, options: ServingOptions, model: SSDPredictor, tokens: auth.TokenCheck | None
) -> int:
    """Start KServe's REST and gRPC servers with ``model`` registered; warm it up in the background.
    ``tokens``: the bearer tokens every non-health request needs, or None."""
    from kserve import ModelServer
    from kserve.model_server import app

    from predictor.serving import http_routes, kserve_workarounds

    if args.workers != 1:
        log.warning(
            "--workers %d ignored: one process serves one TensorFlow model; scale with replicas", args.workers
        )
    budget = ByteBudget(options.max_inflight_bytes)
    middleware.install(
        app,
        budget,
        options.max_request_bytes,
        busy=model.busy_reason,
        tokens=tokens,
        model_version=model.version,
    )
    # Our REST server cleans headers outermost and answers errors from errors.STATUSES; our gRPC server
    # cleans metadata, announces the model version (refusals too), checks tokens and counts message bytes.
    from predictor.serving import headers, versions

    front = (headers.GrpcMetadataHygiene(), versions.GrpcModelVersion(model.version))
    front += (auth.GrpcBearerAuth(tokens),) if tokens else ()
    kserve_workarounds.install_server_classes(
        budget, front, options.grpc_max_waiting_calls, options.request_timeout_s or None
    )
    server = ModelServer(
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        workers=1,
        enable_grpc=args.enable_grpc,
        grace_period=options.shutdown_grace_s,
    )
    # Server readiness (REST /v2/health/ready, gRPC ServerReady) = every model ready; our REST inference
    # routes (binary tensor extension, raw V1 images) are matched before KServe's.
    server.dataplane = kserve_workarounds.TruthfulDataPlane(model_registry=server.registered_models)
    http_routes.install(app, server.dataplane)
    kserve_workarounds.set_grpc_receive_limit(options.grpc_limit)
    server.register_model(model)
    model.enable_latency_logging = server.enable_latency_logging
    status = {"exit": 0}
    threading.Thread(target=_warm_up, args=(model, status), name="ssd-warmup", daemon=True).start()
    trimmer = (
        heap.IdleTrimmer(budget.activity, options.malloc_trim_idle_s).start()
        if options.malloc_trim_idle_s
        else None
    )
    try:
        server.start([])  # not [model]: start() insists on a ready model, ours warms up in the background
    finally:
        model.close()  # every request still waiting gets its 503
        if trimmer is not None:
            trimmer.stop()
    log.info("server stopped")
    return status["exit"]


def _token_check(options: ServingOptions) -> auth.TokenCheck | None:
    """The bearer-token check of ``--auth_token_file``; None when there is none or it cannot be read
    (logged: the server then does not start)."""
    if not options.auth_token_file:
        return None
    try:
        check = auth.TokenCheck(options.auth_token_file)
    except auth.AuthConfigError as e:
        log.error("%s", e)
        return None
    log.info("bearer tokens required on all but the health routes and /metrics (--auth_token_file)")
    return check


def _warm_up(model: SSDPredictor, status: dict[str, int]) -> None:
    try:
        model.load()
    except Exception as e:
        log.error("model warm-up failed: %s", _one_line(e))
        status["exit"] = 1
        os.kill(os.getpid(), signal.SIGTERM)
        return
    _lower_compute_threads()
    log.info("model %r is ready", model.name)


def _lower_compute_threads() -> None:
    """TensorFlow's pools exist now (the warm-up ran every bucket): its native threads go to
    ``--compute_nice``; Python threads keep theirs (the event loop, gRPC's poller; our decode and model
    threads lower themselves). See :mod:`predictor.serving.priority`."""
    if not priority.COMPUTE_NICE:
        return
    python_threads = {t.native_id for t in threading.enumerate() if t.native_id is not None}
    lowered = priority.lower_other_threads(keep=python_threads)
    log.info(
        "compute threads at nice %d: %d native (TensorFlow) threads now, the decode and model threads as "
        "they start; the event loop and I/O threads at their own",
        priority.compute_nice(),
        len(lowered),
    )


def _configure_logging(args: argparse.Namespace) -> None:
    from kserve import logging as kserve_logging
    from PIL import Image

    if args.configure_logging:
        kserve_logging.configure_logging(args.log_config_file)
    # Pillow warns about images over its own pixel limit; ours is checked right after, so a client
    # sending forged headers must not be able to fill the log with these.
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    kserve_logger = logging.getLogger(kserve_logging.KSERVE_LOGGER_NAME)
    kserve_logger.addFilter(QuietClientErrors())
    ours = logging.getLogger("predictor")
    if kserve_logger.handlers and not ours.handlers:
        for handler in kserve_logger.handlers:
            ours.addHandler(handler)
        ours.propagate = False
    ours.setLevel(logging.INFO)


def _log_configuration(
    args: argparse.Namespace, devices: list[str], detector: Detector, options: ServingOptions
) -> None:
    cfg = detector.config
    log.info(
        "model %r: %s from %s (%s, %d classes, input %dx%d)",
        options.model_name,
        cfg.name,
        Path(options.model_dir or ".").resolve(),
        cfg.backbone,
        len(detector.class_names) - 1,
        cfg.input_size,
        cfg.input_size,
    )
    log.info(
        "device: %s; runtime %s; xla %s; precision %s (dtype %s)",
        ", ".join(devices),
        options.runtime,
        "on" if options.xla else "off",
        options.mixed_precision,
        options.dtype,
    )
    log.info("model version: %s", detector.version)
    log.info(
        "thresholds: score %.3g, nms %.3g, top_k %d, max_detections %d",
        detector.score_threshold,
        detector.nms_threshold,
        detector.top_k,
        detector.max_detections,
    )
    log.info(
        "batching: max_batch_size %d (buckets %s), batch_wait_ms %g, max_queue_images %d, "
        "max_queue_delay_ms %g, shed_standing_queue %s, "
        "decode_threads %d, request_timeout_s %g; caps: %d bytes/image, %d pixels/image, %d bytes/request",
        options.max_batch_size,
        list(detector.buckets),
        options.batch_wait_ms,
        options.max_queue_images,
        options.max_queue_delay_ms,
        options.shed_standing_queue,
        options.decode_threads,
        options.request_timeout_s,
        options.max_image_bytes,
        options.max_image_pixels,
        options.max_request_bytes,
    )
    log.info(
        "listening: http %d, grpc %s (messages up to %d bytes)",
        args.http_port,
        args.grpc_port if args.enable_grpc else "off",
        options.grpc_limit,
    )


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if text else type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
