"""The serving options: one dataclass owning every flag's default, and the command line built from it.

:class:`ServingOptions` is the single place a serving default is written. :func:`build_parser` makes
one flag per field (``--<field>``, its type, default and help taken from the field) on top of
``kserve.model_server.parser`` (``--http_port``, ``--grpc_port`` ...); two of KServe's own flags get
their default from a field too (``model_name``, ``grpc_max_receive_message_length``). The server
turns the parsed flags back into a :class:`ServingOptions` (:meth:`ServingOptions.from_args`), and
:func:`resolve_automatic` fills the values left automatic (0: thread counts and the in-flight byte
budget, sized from the container's cgroup limits by :mod:`predictor.serving.resources`) in one place.

Every field also has an ``SSD_<FIELD>`` environment variable (named in its help text), so a
Kubernetes pod can configure the server without rewriting its command line. Precedence: command line
> environment > the field's default. A field's :class:`Chart` names the Helm chart value passing its
flag: ``make generate`` (``scripts/generate.py``) writes the chart's flag table
(``templates/_flags.tpl``), the values' defaults, comments and schema, and docs/flags.md from these
fields, and a test fails when they are stale. Adding a flag with a chart value is one field here.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from predictor._argtypes import fraction, positive_int
from predictor.protocol.wire import MODEL_NAME

if TYPE_CHECKING:
    from predictor.serving.resources import Limits


def _env(name: str, default: Any, cast: Callable[[str], Any] = str) -> Any:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return cast(raw)
    except (ValueError, argparse.ArgumentTypeError) as e:
        raise SystemExit(f"invalid value for environment variable {name}={raw!r}: {e}") from e


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true/false")


def non_negative_int(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {raw}")
    return value


def non_negative_float(raw: str) -> float:
    value = float(raw)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {raw}")
    return value


#: The nice values ``--compute_nice`` accepts (Linux: 0 normal ... 19 lowest priority).
_NICE_RANGE = (0, 19)


def _nice(raw: str) -> int:
    value = int(raw)
    low, high = _NICE_RANGE
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"must be a nice value within [{low}, {high}], got {raw}")
    return value


#: ``--mixed_precision`` -> the Keras dtype policy.
_PRECISION_DTYPES = {"none": "float32", "float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}


def _precision(raw: str) -> str:
    value = raw.strip().lower()
    if value not in _PRECISION_DTYPES:
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(_PRECISION_DTYPES)}")
    return value


#: ``--runtime`` values: what runs the network.
RUNTIMES = ("tensorflow", "onnxruntime")


#: ``--batch_padding`` values (:func:`pads_to_bucket`).
BATCH_PADDINGS = ("auto", "bucket", "exact")
#: What ``--batch_padding auto`` does, as every help text says it (:func:`pads_to_bucket` decides).
AUTO_PADDING_RULE = "exact on a CPU without --xla, else bucket"

#: Automatic calls in flight (:func:`calls_in_flight`): the warm-up call timed is the largest bucket up to
#: this many images ...
AUTO_CALLS_PROBE_IMAGES = 8
#: ... and this many calls run where it took less than this (s).
AUTO_CALLS_SHORT_S = 0.5
AUTO_CALLS_ON_CPU = 2
#: What ``--model_calls_in_flight 0`` (automatic) runs, as every help text says it.
AUTO_CALLS_RULE = (
    f"{AUTO_CALLS_ON_CPU} where TensorFlow runs the network on a CPU and a warm-up call of "
    f"{AUTO_CALLS_PROBE_IMAGES} images takes under {AUTO_CALLS_SHORT_S:g} s, else 1"
)


def calls_in_flight(calls: int, *, runtime: str, gpu: bool | Callable[[], bool], call_s: float) -> int:
    """The model calls a server with ``--model_calls_in_flight calls`` runs at once: ``calls``, or for 0
    (automatic) 2 where TensorFlow runs the network on a CPU and ``call_s``, the warm-up's call of the
    largest bucket up to :data:`AUTO_CALLS_PROBE_IMAGES` images, took under :data:`AUTO_CALLS_SHORT_S`,
    else 1. On the 2-core VM (bench/RESULTS.md, "Calls in flight at 1-16 clients") a second call served
    the demo model (calls of 8: 54 ms) 1.15-1.20x the images per second of one at 16 clients on V1, V2
    and gRPC by median (1.01-1.26x at 4-16), p50 lower and p95 within -9% to +15%, by filling the cores
    a short call's hand-offs and serial stretches leave idle; SSD300 (calls of 8: 2.4 s, both cores
    busy throughout) gained nothing and its p95 grew 1.1-1.6x, the two calls sharing the cores. The
    0.5 s between them is a judgement from those two models, not a measured edge. Not measured on a
    GPU, whose kernels a second call would queue behind the first's, nor with ONNX Runtime: 1 there.
    ``gpu``: whether the server has a GPU, or a function asked only when it matters (the server's:
    TensorFlow's logical GPUs)."""
    if calls:
        return calls
    if runtime != "tensorflow" or call_s >= AUTO_CALLS_SHORT_S:
        return 1
    return 1 if (gpu() if callable(gpu) else gpu) else AUTO_CALLS_ON_CPU


#: What a server logs once ready (``SSDPredictor.load``) when its model calls run their exact rows, and
#: when it pads them to a bucket; the planner and ``bench.simulate_check`` read their servers' padding
#: from their logs with them (``plan.measured_padding``).
EXACT_ROWS_MESSAGE = "the network runs the real images only (no padding)"
PADDED_ROWS_MESSAGE = "the network runs each call padded to its batch bucket"

#: How a recording, profile or benchmark that does not say how its servers ran their model calls is
#: read: padded, as every server ran them before the exact-size change (commit 510a70d, 2026-12-07
#: 18:15 UTC); the fleet simulator, the planner and ``bench.simulate_check`` default to it.
UNRECORDED_PADDING = "bucket"


def pads_to_bucket(batch_padding: str, *, xla: bool, gpu: bool | Callable[[], bool]) -> bool:
    """Whether a server with ``--batch_padding batch_padding`` pads a model call to its bucket: ``bucket``
    pads, ``exact`` does not, ``auto`` pads on a GPU or with ``--xla`` (per-shape compilation and
    autotuning), not on a CPU, where a padded image costs what a real one does and a new size's first
    call costs no more than the next (bench/padding.py). The server
    (:func:`predictor.serving.model.pads_batches`) and the fleet simulator
    (:func:`predictor.tools.simulate.replica_pads`) both decide with it. ``gpu``: whether the server has
    a GPU, or a function asked only for ``auto`` (the server's: TensorFlow's logical GPUs).

    Raises:
      ValueError: ``exact`` with ``xla`` (XLA would compile one executable per call size).
    """
    if batch_padding == "exact" and xla:
        raise ValueError("--batch_padding exact runs calls of any size, XLA compiles each: leave --xla off")
    if batch_padding != "auto":
        return batch_padding == "bucket"
    return xla or bool(gpu() if callable(gpu) else gpu)


def _batch_padding(raw: str) -> str:
    value = raw.strip().lower()
    if value not in BATCH_PADDINGS:
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(BATCH_PADDINGS)}")
    return value


def _runtime(raw: str) -> str:
    value = raw.strip().lower()
    if value not in RUNTIMES:
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(RUNTIMES)}")
    return value


#: What each flag type is in the Helm chart: its kind (int, float, string, bool) and the JSON-schema
#: keywords (range, enum) of the values its parse function accepts; ``scripts/generate.py`` writes them
#: into values.schema.json, and tests/test_generated.py probes each bound against the parse function.
VALUE_TYPES: dict[Callable[[str], Any], tuple[str, dict[str, Any]]] = {
    positive_int: ("int", {"minimum": 1}),
    non_negative_int: ("int", {"minimum": 0}),
    _nice: ("int", {"minimum": _NICE_RANGE[0], "maximum": _NICE_RANGE[1]}),
    fraction: ("float", {"minimum": 0, "maximum": 1}),
    non_negative_float: ("float", {"minimum": 0}),
    _bool: ("bool", {}),
    _precision: ("string", {"enum": list(_PRECISION_DTYPES)}),
    _runtime: ("string", {"enum": list(RUNTIMES)}),
    _batch_padding: ("string", {"enum": list(BATCH_PADDINGS)}),
    str: ("string", {}),
}


@dataclass(frozen=True)
class Chart:
    """The Helm chart value that passes an option's flag (``make generate`` writes the chart's flag
    table, the value's default, comment and schema from the field; see docs/flags.md).

    ``path``: the value's dotted path in values.yaml (``predictor.<camelCase flag>``, the unit spelled as
    Kubernetes does: ``_s`` -> ``Seconds``). ``pin``: values.yaml holds the server's default, so the
    chart passes the flag by default; otherwise null, the flag is left out and the server's default
    applies. ``required``: the chart reads the value itself; it may not be null. ``note``: advice for
    chart users, appended to the help in values.yaml.
    """

    path: str
    pin: bool = False
    required: bool = False
    note: str = ""


def _option(
    default: Any,
    parse: Callable[[str], Any],
    help: str,
    *,
    kserve: bool = False,
    chart: Chart | None = None,
) -> Any:
    """A :class:`ServingOptions` field: its default, how its flag and env value are parsed, its help.

    ``kserve``: the flag is KServe's own (only its default and help are ours). ``chart``: the Helm
    chart value that sets it, if any.
    """
    metadata = {"parse": parse, "help": help, "kserve": kserve, "chart": chart}
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class ServingOptions:
    """What the server was asked to do; each field is the flag ``--<name>`` and the env ``SSD_<NAME>``.

    Thresholds left None take the model manifest's defaults; thread counts and ``max_inflight_bytes``
    left 0 are sized from the container (:func:`resolve_automatic`).
    """

    model_dir: str | None = _option(
        None,
        str,
        "Model directory: the project's own format (model.yaml + weights) or a balancap TF1 checkpoint "
        "(ssd_300_vgg.ckpt.*). Empty: the demo model shipped in the package.",
    )
    model_name: str = _option(
        MODEL_NAME,
        str,
        "The model's name in the URLs (/v2/models/<name>/infer); KServe's default is 'model', ours matches "
        "the Helm chart and the client.",
        kserve=True,
    )
    score_threshold: float | None = _option(
        None,
        fraction,
        "Default minimum class score of a detection; requests may override it (default: the model "
        "manifest's, 0.5 for balancap).",
        chart=Chart("predictor.scoreThreshold"),
    )
    nms_threshold: float | None = _option(
        None,
        fraction,
        "IoU at or above which a lower-scoring box of the same class is suppressed (default: the model "
        "manifest's; balancap's SSD300: 0.45).",
        chart=Chart("predictor.nmsThreshold"),
    )
    top_k: int | None = _option(
        None,
        positive_int,
        "Candidates kept before NMS per image (default: the manifest's, 400).",
        chart=Chart("predictor.topK"),
    )
    max_detections: int | None = _option(
        None,
        positive_int,
        "Most detections returned per image, and the largest max_detections a request may ask for "
        "(default: the manifest's, 200).",
        chart=Chart("predictor.maxDetections"),
    )
    max_batch_size: int = _option(
        32,
        positive_int,
        "Most images per request and per model call.",
        chart=Chart("predictor.maxBatchSize", pin=True),
    )
    batch_wait_ms: float = _option(
        2.0,
        non_negative_float,
        "How long the dynamic batcher waits for more images before running a model call, in ms.",
        chart=Chart("predictor.batchWaitMs", pin=True),
    )
    model_calls_in_flight: int = _option(
        0,
        non_negative_int,
        "Model calls the dynamic batcher runs at once, each in a thread of its own: with 2 the next call "
        "may start while one runs, once as many images are queued, and the two share the cores; 0: "
        f"automatic, {AUTO_CALLS_RULE} (docs/serving.md, Calls in flight).",
        chart=Chart("predictor.modelCallsInFlight"),
    )
    max_image_bytes: int = _option(
        16 * 1024 * 1024,
        positive_int,
        "Largest encoded image accepted, in bytes.",
        chart=Chart("predictor.maxImageBytes", pin=True),
    )
    max_image_pixels: int = _option(
        40_000_000,
        positive_int,
        "Largest decoded image accepted, in pixels (decompression-bomb guard).",
        chart=Chart("predictor.maxImagePixels"),
    )
    max_request_bytes: int = _option(
        64 * 1024 * 1024,
        positive_int,
        "Largest REST request body accepted, in bytes (413 before it is read; gRPC messages are bounded "
        "by --grpc_max_receive_message_length, which defaults to this).",
        chart=Chart("predictor.maxRequestBytes"),
    )
    grpc_max_receive_message_length: int | None = _option(
        None,
        positive_int,
        "Largest gRPC request message accepted, in bytes (RESOURCE_EXHAUSTED above it; default: "
        "--max_request_bytes, where KServe's own is 8 MiB).",
        kserve=True,
        chart=Chart("predictor.grpcMaxMessageBytes"),
    )
    grpc_max_waiting_calls: int = _option(
        64,
        non_negative_int,
        "gRPC ModelInfer calls that may wait for a place to read their message (at most "
        "--max_inflight_bytes / --grpc_max_receive_message_length + 1 read at once), each for at most "
        "--request_timeout_s from its arrival; past them a call gets RESOURCE_EXHAUSTED at once. Memory "
        "per waiting call: docs/request-model.md.",
        chart=Chart("predictor.grpcMaxWaitingCalls"),
    )
    request_timeout_s: float = _option(
        30.0,
        non_negative_float,
        "Per-request time limit in seconds; past it the request gets 503 (0 disables). A gRPC call's "
        "counts from its arrival, through its wait for a place to read its message.",
        chart=Chart("predictor.requestTimeoutSeconds", pin=True),
    )
    max_queue_images: int = _option(
        256,
        positive_int,
        "Images admitted at once (decoding, queued or in the model); a request that would exceed it gets "
        "503 at once.",
        chart=Chart(
            "predictor.maxQueueImages",
            pin=True,
            note="In Knative mode it must cover the hard limit (autoscaling.containerConcurrency "
            "requests), so that Knative, not the server, queues bursts.",
        ),
    )
    max_queue_delay_ms: float = _option(
        0.0,
        non_negative_float,
        "Most model time admitted at once, in ms at the model's measured rate (images/s): past it "
        "requests get 503 at once; 0: no such bound.",
        chart=Chart("predictor.maxQueueDelayMs"),
    )
    shed_standing_queue: bool = _option(
        True,
        _bool,
        "Under sustained overload admit at most two calls of the efficient batch size until it ends, so "
        "admitted requests stay fast and the rest get 503 at once (docs/serving.md, Overload).",
        chart=Chart("predictor.shedStandingQueue", pin=True),
    )
    shutdown_grace_s: float = _option(
        25.0,
        non_negative_float,
        "On SIGTERM, how long in-flight requests may take to finish (REST, then gRPC) before the server "
        "exits, in seconds. Keep it below the pod's terminationGracePeriodSeconds.",
        chart=Chart("predictor.shutdownGraceSeconds", required=True),
    )
    decode_threads: int = _option(
        0,
        non_negative_int,
        "Threads decoding and resizing images in parallel with the model; 0: the CPUs the container may "
        "use (cgroup CPU quota and affinity).",
        chart=Chart("predictor.decodeThreads"),
    )
    compute_nice: int = _option(
        10,
        _nice,
        "Nice levels (0-19) the compute threads (TensorFlow, model call, decode) run below the server "
        "process's own, so that the event loop reading requests and refusing what admission refuses runs "
        "first; 0: equal priority.",
        chart=Chart("predictor.computeNice"),
    )
    tf_intra_op_threads: int = _option(
        0,
        non_negative_int,
        "TensorFlow threads within one op; 0: the CPUs the container may use.",
        chart=Chart("predictor.tfIntraOpThreads"),
    )
    tf_inter_op_threads: int = _option(
        0,
        non_negative_int,
        "TensorFlow threads running independent ops; 0: min(2, the CPUs the container may use).",
        chart=Chart("predictor.tfInterOpThreads"),
    )
    max_inflight_bytes: int = _option(
        0,
        non_negative_int,
        "Request-body bytes in flight at once (REST and gRPC), checked before a body is read; past it "
        "requests get 503 with Retry-After (gRPC RESOURCE_EXHAUSTED). A lone request is always admitted. "
        "0: 1/16 of the container's memory limit (cgroup), between 32 MiB and 1 GiB, or 128 MiB without "
        "a limit.",
        chart=Chart("predictor.maxInflightBytes"),
    )
    malloc_mmap_threshold_bytes: int = _option(
        8 * 1024 * 1024,
        positive_int,
        "glibc malloc: allocations of at least this many bytes are mmap()ed and returned to the system "
        "when freed, smaller ones are reused from the heap. 1048576 keeps the resident size nearer its "
        "size at ready at about twice the decode CPU per 1080p image (see bench/RESULTS.md).",
        chart=Chart("predictor.mallocMmapThresholdBytes"),
    )
    malloc_trim_idle_s: float = _option(
        2.0,
        non_negative_float,
        "Once no request has been in flight for this many seconds, give the heap's free memory back to "
        "the system (glibc malloc_trim), so an idle pod returns to about its resident size at ready; "
        "0: never.",
        chart=Chart("predictor.mallocTrimIdleSeconds"),
    )
    xla: bool = _option(
        False, _bool, "Compile the model with XLA (jit_compile).", chart=Chart("predictor.xla", pin=True)
    )
    batch_padding: str = _option(
        "auto",
        _batch_padding,
        "How a model call's n images reach the network: bucket (padded to the call's batch bucket, "
        "1, 2, 4, 8 ... --max_batch_size, so the network only sees the shapes warm-up ran), exact (n "
        "rows, no padded image computed: on a CPU a padded image costs what a real one does, and a "
        "size's first call costs no more than the next; not with --xla, which compiles per size), or "
        f'auto ({AUTO_PADDING_RULE}). See bench/RESULTS.md, "Padding on a CPU".',
        chart=Chart("predictor.batchPadding", pin=True),
    )
    runtime: str = _option(
        "tensorflow",
        _runtime,
        "What runs the network: tensorflow, or onnxruntime (CPU nodes: the network exported to ONNX at "
        "start-up and run by ONNX Runtime with --tf_intra_op_threads threads, post-processing still in "
        "TensorFlow; the CPU image carries the [onnx] extra it needs, the GPU image does not; see "
        "docs/serving.md).",
        chart=Chart("predictor.runtime", pin=True),
    )
    drift_window_images: int = _option(
        0,
        non_negative_int,
        "Keep the detection distributions of the last this many images and export their PSI against the "
        "model directory's reference_distributions.json (gauge ssd_drift_psi{distribution,class}); "
        "0: off.",
        chart=Chart("predictor.driftWindowImages"),
    )
    mixed_precision: str = _option(
        "none",
        _precision,
        "Compute dtype for the network: none (float32), float16 or bfloat16.",
        chart=Chart("predictor.mixedPrecision", pin=True),
    )
    tracing: bool = _option(
        False,
        _bool,
        "OpenTelemetry spans per request stage, continuing incoming W3C traceparent headers; export via "
        "the OTEL_* variables (OTEL_EXPORTER_OTLP_ENDPOINT ...). Needs the [tracing] extra.",
        chart=Chart("predictor.tracing"),
    )
    jpeg_draft: bool = _option(
        False,
        _bool,
        "Decode JPEGs at least twice the network input per side at 1/2, 1/4 or 1/8 scale (libjpeg DCT "
        "scaling): 1.2x (1080p) to 3x (12 MP) less CPU per image, slightly different detections (see "
        "docs/serving.md).",
        chart=Chart("predictor.jpegDraft"),
    )

    auth_token_file: str | None = _option(
        None,
        str,
        "File of accepted bearer tokens, one per line (mount a Secret): every request but the health "
        "routes and /metrics must then send 'Authorization: Bearer <token>' (gRPC: metadata "
        "authorization), else 401 / UNAUTHENTICATED. Re-read when it changes. Empty: no check (the "
        "mesh or gateway in front authenticates; see docs/security.md).",
    )

    @classmethod
    def from_args(cls, args: argparse.Namespace, model_dir: str | None = None) -> ServingOptions:
        """The options :func:`build_parser` parsed; ``model_dir`` (when given) replaces ``--model_dir``."""
        values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)}
        if model_dir is not None:
            values["model_dir"] = str(model_dir)
        return cls(**values)

    @property
    def dtype(self) -> str:
        """Keras dtype policy name for ``--mixed_precision``."""
        return _PRECISION_DTYPES[self.mixed_precision]

    @property
    def grpc_limit(self) -> int:
        """``grpc_max_receive_message_length``, defaulting to ``max_request_bytes``."""
        return self.grpc_max_receive_message_length or self.max_request_bytes


def env_name(option: str) -> str:
    """The environment variable of a :class:`ServingOptions` field: ``SSD_<FIELD>``."""
    return f"SSD_{option.upper()}"


def _help(f: dataclasses.Field) -> str:
    text = f.metadata["help"]
    if f.default is not None:
        text += " Default: %(default)s."
    return f"{text} Env {env_name(f.name)}."


def add_ssd_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add one flag per :class:`ServingOptions` field (KServe's own flags: default and help only)."""
    group = parser.add_argument_group("SSD predictor")
    kserve_actions = {a.dest: a for a in parser._actions}
    for f in dataclasses.fields(ServingOptions):
        parse = f.metadata["parse"]
        default = _env(env_name(f.name), f.default, parse)
        if f.metadata["kserve"]:
            action = kserve_actions[f.name]  # KServe's own flag: keep it, with our default and help
            action.type, action.default, action.help = parse, default, _help(f)
            parser.set_defaults(**{f.name: default})
        elif parse is _bool:
            group.add_argument(
                f"--{f.name}", action=argparse.BooleanOptionalAction, default=default, help=_help(f)
            )
        else:
            group.add_argument(f"--{f.name}", type=parse, default=default, help=_help(f))
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The server's full parser: KServe's model-server flags plus one flag per :class:`ServingOptions`
    field."""
    from kserve import model_server

    parser = argparse.ArgumentParser(
        prog="python -m predictor",
        description="Serve an SSD object detector with KServe (V1/V2 REST and gRPC).",
        parents=[model_server.parser],
        conflict_handler="resolve",
    )
    return add_ssd_arguments(parser)


def resolve_grpc_limit(args: argparse.Namespace) -> int:
    """``--grpc_max_receive_message_length``, defaulting to ``--max_request_bytes`` (sets it on ``args``;
    the rule is :attr:`ServingOptions.grpc_limit`)."""
    args.grpc_max_receive_message_length = ServingOptions.from_args(args).grpc_limit
    return args.grpc_max_receive_message_length


#: Fields whose 0 means "size from the container" (:func:`resolve_automatic`).
AUTOMATIC = ("decode_threads", "tf_intra_op_threads", "tf_inter_op_threads", "max_inflight_bytes")


def resolve_automatic(
    options: ServingOptions, limits: Limits | None = None
) -> tuple[ServingOptions, list[str]]:
    """``options`` with every automatic (0) field of :data:`AUTOMATIC` sized from the container's
    ``limits`` (read from the cgroup when None), and the names of the fields so filled.

    decode threads = usable CPUs; TensorFlow intra-op = usable CPUs, inter-op = min(2, usable CPUs);
    in-flight bytes = memory limit / 16 (clamped), see :mod:`predictor.serving.resources`.
    """
    from predictor.serving import resources

    todo = [name for name in AUTOMATIC if not getattr(options, name)]
    if not todo:
        return options, []
    limits = resources.read_limits() if limits is None else limits
    intra, inter = resources.default_tf_threads(limits)
    sized = {
        "decode_threads": resources.default_decode_threads(limits),
        "tf_intra_op_threads": intra,
        "tf_inter_op_threads": inter,
        "max_inflight_bytes": resources.default_inflight_bytes(limits),
    }
    return dataclasses.replace(options, **{name: sized[name] for name in todo}), todo
