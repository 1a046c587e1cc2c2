"""Command-line flags of the predictor server, each also settable by an environment variable.

The flags extend ``kserve.model_server.parser`` (``--http_port``, ``--grpc_port``, ``--model_name`` ...).
Every flag added here has an ``SSD_*`` environment variable (named in its help text) so a Kubernetes pod
can configure the server without rewriting its command line. Precedence: command line > environment >
built-in default.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any


def _env(name: str, default: Any, cast: Callable[[str], Any] = str) -> Any:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return cast(raw)
    except ValueError as e:
        raise SystemExit(f"invalid value for environment variable {name}={raw!r}: {e}") from e


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true/false")


def positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {raw}")
    return value


def non_negative_int(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {raw}")
    return value


def fraction(raw: str) -> float:
    value = float(raw)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be within [0, 1], got {raw}")
    return value


def _non_negative_float(raw: str) -> float:
    value = float(raw)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {raw}")
    return value


def _nice(raw: str) -> int:
    value = int(raw)
    if not 0 <= value <= 19:
        raise argparse.ArgumentTypeError(f"must be a nice value within [0, 19], got {raw}")
    return value


def _precision(raw: str) -> str:
    value = raw.strip().lower()
    if value not in ("none", "float16", "bfloat16"):
        raise argparse.ArgumentTypeError("must be one of none, float16, bfloat16")
    return value


def add_ssd_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the SSD predictor flags (with ``SSD_*`` environment fallbacks) to ``parser``."""
    g = parser.add_argument_group("SSD predictor")
    g.add_argument(
        "--model_dir",
        default=_env("SSD_MODEL_DIR", None),
        help="Model directory: the project's own format (model.yaml + weights) or a balancap TF1 "
        "checkpoint (ssd_300_vgg.ckpt.*). Empty: the demo model shipped in the package. Env SSD_MODEL_DIR.",
    )
    g.add_argument(
        "--score_threshold",
        type=fraction,
        default=_env("SSD_SCORE_THRESHOLD", None, fraction),
        help="Default minimum class score of a detection; requests may override it "
        "(default: the model manifest's, 0.5 for balancap). "
        "Env SSD_SCORE_THRESHOLD.",
    )
    g.add_argument(
        "--nms_threshold",
        type=fraction,
        default=_env("SSD_NMS_THRESHOLD", None, fraction),
        help="IoU at or above which a lower-scoring box of the same class is suppressed (default: the "
        "manifest's, 0.45). Env SSD_NMS_THRESHOLD.",
    )
    g.add_argument(
        "--top_k",
        type=positive_int,
        default=_env("SSD_TOP_K", None, positive_int),
        help="Candidates kept before NMS per image (default: the manifest's, 400). Env SSD_TOP_K.",
    )
    g.add_argument(
        "--max_detections",
        type=positive_int,
        default=_env("SSD_MAX_DETECTIONS", None, positive_int),
        help="Most detections returned per image, and the largest max_detections a request may ask for "
        "(default: the manifest's, 200). Env SSD_MAX_DETECTIONS.",
    )
    g.add_argument(
        "--max_batch_size",
        type=positive_int,
        default=_env("SSD_MAX_BATCH_SIZE", 32, positive_int),
        help="Most images per request and per model call. Env SSD_MAX_BATCH_SIZE.",
    )
    g.add_argument(
        "--batch_wait_ms",
        type=_non_negative_float,
        default=_env("SSD_BATCH_WAIT_MS", 2.0, _non_negative_float),
        help="How long the dynamic batcher waits for more images before running a model call. "
        "Env SSD_BATCH_WAIT_MS.",
    )
    g.add_argument(
        "--max_image_bytes",
        type=positive_int,
        default=_env("SSD_MAX_IMAGE_BYTES", 16 * 1024 * 1024, positive_int),
        help="Largest encoded image accepted, in bytes. Env SSD_MAX_IMAGE_BYTES.",
    )
    g.add_argument(
        "--max_image_pixels",
        type=positive_int,
        default=_env("SSD_MAX_IMAGE_PIXELS", 40_000_000, positive_int),
        help="Largest decoded image accepted, in pixels (decompression-bomb guard). "
        "Env SSD_MAX_IMAGE_PIXELS.",
    )
    g.add_argument(
        "--max_request_bytes",
        type=positive_int,
        default=_env("SSD_MAX_REQUEST_BYTES", 64 * 1024 * 1024, positive_int),
        help="Largest REST request body accepted, in bytes (413 before it is read; gRPC messages are bounded "
        "by --grpc_max_receive_message_length, which defaults to this). Env SSD_MAX_REQUEST_BYTES.",
    )
    g.add_argument(
        "--request_timeout_s",
        type=_non_negative_float,
        default=_env("SSD_REQUEST_TIMEOUT_S", 30.0, _non_negative_float),
        help="Per-request time limit in seconds; past it the request gets 503 (0 disables). "
        "Env SSD_REQUEST_TIMEOUT_S.",
    )
    g.add_argument(
        "--max_queue_images",
        type=positive_int,
        default=_env("SSD_MAX_QUEUE_IMAGES", 256, positive_int),
        help="Images admitted at once (decoding, queued or in the model); a request that would exceed "
        "it gets 503 at once. Env SSD_MAX_QUEUE_IMAGES.",
    )
    g.add_argument(
        "--max_queue_delay_ms",
        type=_non_negative_float,
        default=_env("SSD_MAX_QUEUE_DELAY_MS", 0.0, _non_negative_float),
        help="Most model time admitted at once, in ms at the model's measured rate (images/s): past it "
        "requests get 503 at once; 0 (default): no such bound. Env SSD_MAX_QUEUE_DELAY_MS.",
    )
    g.add_argument(
        "--shed_standing_queue",
        action=argparse.BooleanOptionalAction,
        default=_env("SSD_SHED_STANDING_QUEUE", True, _bool),
        help="Under sustained overload (--max_queue_images refuses requests and requests keep waiting "
        "longer than two model calls, for longer than a burst takes to drain) admit at most two calls of "
        "the efficient batch size (the smallest whose measured rate is within 10%% of the best) until it "
        "ends, so admitted requests stay fast and the rest get 503 at once (on by default; "
        "bench/overload.py measures it). Bursts are still absorbed up to --max_queue_images, and a load "
        "the image bound serves without a 503 is never shed. Env SSD_SHED_STANDING_QUEUE.",
    )
    g.add_argument(
        "--shutdown_grace_s",
        type=_non_negative_float,
        default=_env("SSD_SHUTDOWN_GRACE_S", 25.0, _non_negative_float),
        help="On SIGTERM, how long in-flight requests may take to finish (REST, then gRPC) before the "
        "server exits. Keep it below the pod's terminationGracePeriodSeconds. Env SSD_SHUTDOWN_GRACE_S.",
    )
    g.add_argument(
        "--decode_threads",
        type=non_negative_int,
        default=_env("SSD_DECODE_THREADS", 0, non_negative_int),
        help="Threads decoding and resizing images in parallel with the model; 0: the CPUs the container "
        "may use (cgroup CPU quota and affinity). Env SSD_DECODE_THREADS.",
    )
    g.add_argument(
        "--compute_nice",
        type=_nice,
        default=_env("SSD_COMPUTE_NICE", 10, _nice),
        help="Nice value (0-19) of the compute threads (TensorFlow, model call, decode), so that the event "
        "loop reading requests and refusing what admission refuses runs first; 0: equal priority. "
        "Env SSD_COMPUTE_NICE.",
    )
    g.add_argument(
        "--tf_intra_op_threads",
        type=non_negative_int,
        default=_env("SSD_TF_INTRA_OP_THREADS", 0, non_negative_int),
        help="TensorFlow threads within one op; 0: the CPUs the container may use. "
        "Env SSD_TF_INTRA_OP_THREADS.",
    )
    g.add_argument(
        "--tf_inter_op_threads",
        type=non_negative_int,
        default=_env("SSD_TF_INTER_OP_THREADS", 0, non_negative_int),
        help="TensorFlow threads running independent ops; 0: min(2, the CPUs the container may use). "
        "Env SSD_TF_INTER_OP_THREADS.",
    )
    g.add_argument(
        "--max_inflight_bytes",
        type=non_negative_int,
        default=_env("SSD_MAX_INFLIGHT_BYTES", 0, non_negative_int),
        help="Request-body bytes in flight at once (REST and gRPC), checked before a body is read; past "
        "it requests get 503 with Retry-After (gRPC RESOURCE_EXHAUSTED). A lone request is always "
        "admitted. 0: 1/16 of the container's memory limit (cgroup), between 32 MiB and 1 GiB, or "
        "128 MiB without a limit. Env SSD_MAX_INFLIGHT_BYTES.",
    )
    g.add_argument(
        "--xla",
        action=argparse.BooleanOptionalAction,
        default=_env("SSD_XLA", False, _bool),
        help="Compile the model with XLA (jit_compile). Env SSD_XLA.",
    )
    g.add_argument(
        "--mixed_precision",
        type=_precision,
        default=_env("SSD_MIXED_PRECISION", "none", _precision),
        help="Compute dtype for the network: none (float32), float16 or bfloat16. Env SSD_MIXED_PRECISION.",
    )
    g.add_argument(
        "--tracing",
        action=argparse.BooleanOptionalAction,
        default=_env("SSD_TRACING", False, _bool),
        help="OpenTelemetry spans per request stage, continuing incoming W3C traceparent headers; "
        "export via the OTEL_* variables (OTEL_EXPORTER_OTLP_ENDPOINT ...). Needs the [tracing] extra. "
        "Env SSD_TRACING.",
    )
    parser.add_argument(
        "--jpeg_draft",
        action=argparse.BooleanOptionalAction,
        default=_env("SSD_JPEG_DRAFT", False, _bool),
        help="Decode JPEGs at least twice the network input per side at 1/2, 1/4 or 1/8 scale (libjpeg "
        "DCT scaling): 1.2x (1080p) to 3x (12 MP) less CPU per image, slightly different detections "
        "(see the README). "
        "Env SSD_JPEG_DRAFT.",
    )
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The server's full parser: KServe's model-server flags plus the SSD flags."""
    from kserve import model_server

    parser = argparse.ArgumentParser(
        prog="python -m predictor",
        description="Serve an SSD object detector with KServe (V1/V2 REST and gRPC).",
        parents=[model_server.parser],
        conflict_handler="resolve",
    )
    # KServe's default name is "model"; ours matches the Helm chart and the client ("ssd").
    parser.set_defaults(model_name=_env("SSD_MODEL_NAME", "ssd"))
    # KServe's own flag (default 8 MiB): here its default follows --max_request_bytes (resolve_grpc_limit).
    parser.set_defaults(
        grpc_max_receive_message_length=_env("SSD_GRPC_MAX_RECEIVE_MESSAGE_LENGTH", None, positive_int)
    )
    for action in parser._actions:
        if action.dest == "grpc_max_receive_message_length":
            action.type = positive_int
            action.help = (
                "Largest gRPC request message accepted, in bytes (RESOURCE_EXHAUSTED above it; default: "
                "--max_request_bytes). Env SSD_GRPC_MAX_RECEIVE_MESSAGE_LENGTH."
            )
    return add_ssd_arguments(parser)


def resolve_grpc_limit(args: argparse.Namespace) -> int:
    """``--grpc_max_receive_message_length``, defaulting to ``--max_request_bytes`` (sets it on ``args``)."""
    if args.grpc_max_receive_message_length is None:
        args.grpc_max_receive_message_length = args.max_request_bytes
    return args.grpc_max_receive_message_length
