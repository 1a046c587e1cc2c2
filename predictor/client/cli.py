"""``ssd-detect``: send images to the SSD predictor over KServe V1, V2 REST or V2 gRPC.

Usage (see the README)::

    ssd-detect --url http://localhost:8080 --model ssd photo.jpg photos/ > detections.jsonl
    ssd-detect --protocol grpc --url localhost:8081 --batch-size 8 --concurrency 4 --draw out/ photos/
    ssd-detect --url http://$INGRESS --isvc ssd --namespace demo photo.jpg   # Host header from the isvc

Output: JSON Lines, one object per image in input order,
``{"file": ..., "width": W, "height": H, "detections": [{label, class_id, score, xmin, ymin, xmax, ymax}]}``
(``{"file": ..., "width": ..., "height": ..., "error": "..."}`` for an image the server refused).
Every protocol's answer is normalised to the V1 detection dicts: scores rounded to 4 decimals and box
coordinates (pixels of the EXIF-oriented image) to 2, as the V1 endpoint does.

Exit status: 0 when every image was answered, 1 when some were not (each error is printed on stderr
as it happens; the other images are still sent), 2 for usage or configuration errors.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import struct
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol
from urllib.parse import urlsplit

import numpy as np

from predictor.serving.options import fraction, positive_int

#: File extensions picked up when a folder is given (files named explicitly are always sent).
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"})
PROTOCOLS = ("v1", "v2", "grpc")
DEFAULT_MODEL = "ssd"
DEFAULT_REST_URL = "http://localhost:8080"
DEFAULT_GRPC_URL = "localhost:8081"
V2_INPUT_NAME = "images"
#: HTTP statuses and gRPC codes worth retrying (server busy / scaling up).
RETRY_HTTP_STATUSES = frozenset({429, 502, 503, 504})
RETRY_GRPC_CODES = frozenset({"UNAVAILABLE", "RESOURCE_EXHAUSTED"})
ISVC_GROUP, ISVC_VERSION, ISVC_PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"

Detection = dict[str, Any]


class ClientError(Exception):
    """A usage or configuration problem (bad flag, unreachable Kubernetes API, isvc not ready): exit 2."""


class RequestError(Exception):
    """One request failed.

    Attributes:
      message: the server's error message (``{"error": ...}`` / gRPC details) or the transport error.
      status: HTTP status, or the gRPC status code name; None for transport errors.
      retryable: worth trying again (server busy, connection refused, timeout).
    """

    def __init__(self, message: str, status: int | str | None = None, retryable: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retryable = retryable

    @property
    def is_client_error(self) -> bool:
        """The server refused the request itself (HTTP 400 / INVALID_ARGUMENT): a bad image, say."""
        return self.status in (400, "INVALID_ARGUMENT")


@dataclass(frozen=True)
class DetectParams:
    """Per-request detection parameters; None leaves the server default."""

    score_threshold: float | None = None
    max_detections: int | None = None
    nms_threshold: float | None = None
    #: Class names and/or ids, comma-separated (the form every protocol accepts): ``"circle,star"``.
    classes: str | None = None

    def as_dict(self) -> dict[str, float | int | str]:
        """The ``parameters`` object of a request (only the keys that are set)."""
        items = {
            "score_threshold": self.score_threshold,
            "max_detections": self.max_detections,
            "nms_threshold": self.nms_threshold,
            "classes": self.classes,
        }
        return {k: v for k, v in items.items() if v is not None}


@dataclass(frozen=True)
class InputImage:
    """An image file to send. ``name`` is its path relative to the folder it was found in (or its
    file name when given directly): where ``--draw`` writes its copy."""

    path: Path
    name: Path


@dataclass
class ImageResult:
    """The answer for one image: ``detections`` or an ``error``."""

    file: str
    width: int | None = None
    height: int | None = None
    detections: list[Detection] | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"file": self.file, "width": self.width, "height": self.height}
        if self.error is not None:
            out["error"] = self.error
        else:
            out["detections"] = self.detections
        return out


# ------------------------------------------------------------------------------------------ inputs
def collect_images(inputs: Sequence[str | Path]) -> list[InputImage]:
    """Files as given, and the image files under each folder (recursively, sorted, hidden skipped).

    Raises:
      ClientError: a path does not exist, or nothing at all was found.
    """
    images: list[InputImage] = []
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            images.extend(InputImage(p, p.relative_to(path)) for p in _folder_images(path))
        elif path.is_file():
            images.append(InputImage(path, Path(path.name)))
        else:
            raise ClientError(f"no such file or directory: {raw}")
    if not images:
        raise ClientError(
            f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) found in: " + ", ".join(map(str, inputs))
        )
    return unique_names(images)


def _folder_images(folder: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                found.append(Path(dirpath) / name)
    return found


def unique_names(images: Sequence[InputImage]) -> list[InputImage]:
    """Rename repeated output names (``a.jpg`` from two folders) to ``a-2.jpg``, ``a-3.jpg`` ..."""
    seen: set[Path] = set()
    out = []
    for item in images:
        name, n = item.name, 1
        while name in seen:
            n += 1
            name = item.name.with_name(f"{item.name.stem}-{n}{item.name.suffix}")
        seen.add(name)
        out.append(InputImage(item.path, name))
    return out


def image_size(path: Path) -> tuple[int, int] | None:
    """``(width, height)`` of the EXIF-oriented image, read from its header; None if not an image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            width, height = img.size
            orientation = img.getexif().get(0x0112, 1)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        return None
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


# ----------------------------------------------------------------------------------- normalising
def normalise_detections(
    labels: Sequence[str], class_ids: Sequence[int], scores: Any, boxes: Any
) -> list[Detection]:
    """Columns of one image's detections -> V1 dicts, rounded as the V1 endpoint rounds
    (scores to 4 decimals, coordinates to 2, in float64)."""
    scores_r = np.round(np.asarray(scores, np.float64).reshape(-1), 4).tolist()
    boxes_r = np.round(np.asarray(boxes, np.float64).reshape(-1, 4), 2).tolist()
    return [
        {
            "label": str(lab),
            "class_id": int(c),
            "score": s,
            "xmin": b[0],
            "ymin": b[1],
            "xmax": b[2],
            "ymax": b[3],
        }
        for lab, c, s, b in zip(labels, class_ids, scores_r, boxes_r, strict=True)
    ]


def detections_from_v1(body: Any, n_images: int) -> list[list[Detection]]:
    """A V1 ``{"predictions": [[{...}, ...], ...]}`` answer -> normalised detections per image."""
    predictions = body.get("predictions") if isinstance(body, dict) else None
    if not isinstance(predictions, list) or len(predictions) != n_images:
        raise RequestError(f"unexpected V1 response: expected {n_images} predictions: {_excerpt(body)}")
    out = []
    for dets in predictions:
        try:
            out.append(
                normalise_detections(
                    [d.get("label", "") for d in dets],
                    [d.get("class_id", 0) for d in dets],
                    [d["score"] for d in dets],
                    [[d["xmin"], d["ymin"], d["xmax"], d["ymax"]] for d in dets],
                )
            )
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            raise RequestError(f"unexpected V1 detection format ({e!r}): {_excerpt(dets)}") from None
    return out


def detections_from_v2(arrays: Mapping[str, np.ndarray], n_images: int) -> list[list[Detection]]:
    """V2 output tensors (``num_detections [N]``, ``detection_boxes [N,K,4]``, ``detection_scores
    [N,K]``, ``detection_classes [N,K]``, ``detection_labels [N,K]``) -> detections per image."""
    missing = [
        n
        for n in ("num_detections", "detection_boxes", "detection_scores", "detection_classes")
        if n not in arrays
    ]
    if missing:
        raise RequestError(f"unexpected V2 response: missing outputs {', '.join(missing)}")
    num = np.asarray(arrays["num_detections"]).reshape(-1).astype(int)
    if len(num) != n_images:
        raise RequestError(f"unexpected V2 response: num_detections has {len(num)} values, sent {n_images}")
    classes = np.asarray(arrays["detection_classes"])
    labels = arrays.get("detection_labels")
    out = []
    for i, n in enumerate(num.tolist()):
        ids = classes[i, :n].astype(int).tolist()
        names = [_text(x) for x in labels[i, :n]] if labels is not None else [""] * n
        out.append(
            normalise_detections(
                names, ids, arrays["detection_scores"][i, :n], arrays["detection_boxes"][i, :n]
            )
        )
    return out


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, (bytes, bytearray)) else str(value)


def v2_rest_arrays(body: Any) -> dict[str, np.ndarray]:
    """The ``outputs`` of a V2 REST JSON answer as arrays of their declared shapes."""
    outputs = body.get("outputs") if isinstance(body, dict) else None
    if not isinstance(outputs, list):
        raise RequestError(f"unexpected V2 response (no outputs): {_excerpt(body)}")
    arrays = {}
    for out in outputs:
        name, shape, data = out.get("name"), out.get("shape"), out.get("data")
        if data is None:
            raise RequestError(f"V2 output {name!r} has no JSON data (binary outputs are not supported)")
        dtype = object if out.get("datatype") == "BYTES" else _NUMPY_DTYPES.get(out.get("datatype"))
        arrays[name] = np.asarray(data, dtype=dtype).reshape(shape)
    return arrays


_NUMPY_DTYPES = {"FP32": "<f4", "FP64": "<f8", "INT32": "<i4", "INT64": "<i8", "UINT32": "<u4", "INT8": "i1"}


def grpc_arrays(response: Any) -> dict[str, np.ndarray]:
    """The outputs of a gRPC ``ModelInferResponse`` (raw contents or typed contents) as arrays."""
    raw = list(response.raw_output_contents)
    arrays = {}
    for i, out in enumerate(response.outputs):
        shape = tuple(out.shape)
        if raw:
            arrays[out.name] = _array_from_raw(raw[i], out.datatype, shape)
        else:
            arrays[out.name] = _array_from_contents(out.contents, out.datatype, shape)
    return arrays


def _array_from_raw(data: bytes, datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    if datatype == "BYTES":
        return np.asarray(split_length_prefixed(data), dtype=object).reshape(shape)
    if datatype not in _NUMPY_DTYPES:
        raise RequestError(f"unsupported output datatype {datatype}")
    return np.frombuffer(data, dtype=_NUMPY_DTYPES[datatype]).reshape(shape)


def _array_from_contents(contents: Any, datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    fields = {
        "FP32": "fp32_contents",
        "FP64": "fp64_contents",
        "INT32": "int_contents",
        "INT64": "int64_contents",
        "UINT32": "uint_contents",
        "BYTES": "bytes_contents",
    }
    if datatype not in fields:
        raise RequestError(f"unsupported output datatype {datatype}")
    values = list(getattr(contents, fields[datatype]))
    dtype = object if datatype == "BYTES" else _NUMPY_DTYPES[datatype]
    return np.asarray(values, dtype=dtype).reshape(shape)


def split_length_prefixed(data: bytes) -> list[bytes]:
    """A V2 raw BYTES tensor: each element is a little-endian uint32 length, then that many bytes."""
    items, offset = [], 0
    while offset < len(data):
        (length,) = struct.unpack_from("<I", data, offset)
        items.append(bytes(data[offset + 4 : offset + 4 + length]))
        offset += 4 + length
    return items


def _excerpt(value: Any, limit: int = 200) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


# ------------------------------------------------------------------------------------- transports
class Transport(Protocol):
    """Sends the encoded images of one request and returns normalised detections per image."""

    def detect(self, images: Sequence[bytes], params: DetectParams) -> list[list[Detection]]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Endpoint:
    """Where requests go: base URL (REST) or ``host:port`` (gRPC), the model, an optional Host header
    (gRPC: authority), TLS for gRPC, the per-request timeout in seconds (None: no limit)."""

    url: str
    model: str
    host_header: str | None = None
    timeout: float | None = 60.0
    secure: bool = False


class RestTransport:
    """V1 ``:predict`` or V2 ``/infer`` over one shared, thread-safe ``httpx.Client``."""

    def __init__(self, endpoint: Endpoint, protocol: str, max_connections: int = 1) -> None:
        import httpx

        self._httpx = httpx
        self.protocol = protocol
        base = endpoint.url.rstrip("/")
        self.url = (
            f"{base}/v1/models/{endpoint.model}:predict"
            if protocol == "v1"
            else f"{base}/v2/models/{endpoint.model}/infer"
        )
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if endpoint.host_header:
            headers["Host"] = endpoint.host_header
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self.client = httpx.Client(headers=headers, timeout=endpoint.timeout, limits=limits)
        self.timeout = endpoint.timeout

    def detect(self, images: Sequence[bytes], params: DetectParams) -> list[list[Detection]]:
        body = self.request_body(images, params)
        response = self._post(json.dumps(body).encode())
        if self.protocol == "v1":
            return detections_from_v1(response, len(images))
        return detections_from_v2(v2_rest_arrays(response), len(images))

    def request_body(self, images: Sequence[bytes], params: DetectParams) -> dict[str, Any]:
        """The JSON body: V1 ``instances`` of ``{"b64": ...}``, or one V2 BYTES input of base64 strings."""
        b64 = [base64.b64encode(img).decode("ascii") for img in images]
        if self.protocol == "v1":
            body: dict[str, Any] = {"instances": [{"b64": s} for s in b64]}
        else:
            body = {
                "inputs": [{"name": V2_INPUT_NAME, "datatype": "BYTES", "shape": [len(b64)], "data": b64}]
            }
        if params.as_dict():
            body["parameters"] = params.as_dict()
        return body

    def _post(self, content: bytes) -> Any:
        httpx = self._httpx
        try:
            response = self.client.post(self.url, content=content)
        except httpx.TimeoutException:
            raise RequestError(f"no answer from {self.url} within {self.timeout} s", retryable=True) from None
        except httpx.HTTPError as e:
            raise RequestError(f"cannot reach {self.url}: {e}", retryable=True) from None
        if response.status_code != 200:
            raise RequestError(
                f"HTTP {response.status_code}: {http_error_message(response.content)}",
                status=response.status_code,
                retryable=response.status_code in RETRY_HTTP_STATUSES,
            )
        try:
            return response.json()
        except ValueError:
            raise RequestError(f"the answer is not JSON: {_excerpt(response.text)}") from None

    def close(self) -> None:
        self.client.close()


def http_error_message(content: bytes) -> str:
    """The server's message: ``{"error": ...}`` (KServe), ``{"detail": ...}`` (FastAPI) or the text."""
    try:
        body = json.loads(content)
    except ValueError:
        return _excerpt(content.decode("utf-8", "replace").strip() or "(empty body)", 500)
    if isinstance(body, dict):
        for key in ("error", "detail", "message"):
            if key in body:
                value = body[key]
                return value if isinstance(value, str) else _excerpt(json.dumps(value), 500)
    return _excerpt(json.dumps(body), 500)


class GrpcTransport:
    """V2 ``ModelInfer`` over one gRPC channel (thread-safe); images travel as raw bytes."""

    def __init__(self, endpoint: Endpoint) -> None:
        import grpc

        pb, pb_grpc = _kserve_grpc_modules()
        self._grpc, self._pb = grpc, pb
        self.target, self.model, self.timeout = endpoint.url, endpoint.model, endpoint.timeout
        options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
        if endpoint.host_header:
            options.append(("grpc.default_authority", endpoint.host_header))
        if endpoint.secure:
            self.channel = grpc.secure_channel(self.target, grpc.ssl_channel_credentials(), options=options)
        else:
            self.channel = grpc.insecure_channel(self.target, options=options)
        self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)

    def request(self, images: Sequence[bytes], params: DetectParams) -> Any:
        """A ``ModelInferRequest`` with one BYTES input ``[N]`` (gRPC parameters have no float field,
        so the threshold travels as a string, which the server accepts)."""
        pb = self._pb
        tensor = pb.ModelInferRequest.InferInputTensor(
            name=V2_INPUT_NAME,
            datatype="BYTES",
            shape=[len(images)],
            contents=pb.InferTensorContents(bytes_contents=list(images)),
        )
        request = pb.ModelInferRequest(model_name=self.model, inputs=[tensor])
        for name, value in params.as_dict().items():
            if name == "max_detections":
                request.parameters[name].int64_param = int(value)
            else:  # floats and the class list travel as strings, which the server accepts
                text = value if isinstance(value, str) else repr(float(value))
                request.parameters[name].string_param = text
        return request

    def detect(self, images: Sequence[bytes], params: DetectParams) -> list[list[Detection]]:
        grpc = self._grpc
        try:
            response = self.stub.ModelInfer(self.request(images, params), timeout=self.timeout)
        except grpc.RpcError as e:
            code = e.code().name if e.code() is not None else "UNKNOWN"
            if code == "DEADLINE_EXCEEDED":
                raise RequestError(
                    f"no answer from {self.target} within {self.timeout} s", code, True
                ) from None
            raise RequestError(f"gRPC {code}: {e.details()}", code, code in RETRY_GRPC_CODES) from None
        return detections_from_v2(grpc_arrays(response), len(images))

    def close(self) -> None:
        self.channel.close()


def _kserve_grpc_modules() -> tuple[Any, Any]:
    """KServe's V2 gRPC messages and stubs. Importing ``kserve`` parses ``sys.argv`` with its server
    parser (which rejects e.g. ``--protocol grpc``), so the import sees an empty command line."""
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        from kserve.protocol.grpc import grpc_predict_v2_pb2, grpc_predict_v2_pb2_grpc
    finally:
        sys.argv = saved
    return grpc_predict_v2_pb2, grpc_predict_v2_pb2_grpc


def grpc_target(url: str) -> tuple[str, bool]:
    """``host:port`` and whether to use TLS, from ``host:port``, ``http://host[:port]`` (port 80) or
    ``https://host[:port]`` (TLS, port 443)."""
    if "://" not in url:
        return url, False
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https", "grpc", "grpcs") or not parts.hostname:
        raise ClientError(f"--url: cannot make a gRPC target of {url!r} (expected host:port)")
    secure = parts.scheme in ("https", "grpcs")
    port = parts.port or (443 if secure else 80)
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{port}", secure


def make_transport(protocol: str, endpoint: Endpoint, concurrency: int = 1) -> Transport:
    """The transport for ``v1``, ``v2`` or ``grpc``."""
    if protocol == "grpc":
        target, secure = grpc_target(endpoint.url)
        return GrpcTransport(Endpoint(target, endpoint.model, endpoint.host_header, endpoint.timeout, secure))
    if protocol in ("v1", "v2"):
        url = endpoint.url if "://" in endpoint.url else f"http://{endpoint.url}"
        return RestTransport(
            Endpoint(url, endpoint.model, endpoint.host_header, endpoint.timeout),
            protocol,
            max_connections=concurrency,
        )
    raise ClientError(f"unknown protocol {protocol!r} (choose from {', '.join(PROTOCOLS)})")


# ------------------------------------------------------------------------------ InferenceService
def isvc_url(isvc: Mapping[str, Any]) -> str:
    """``status.url`` of an InferenceService object, once its ``Ready`` condition is ``True``.

    Raises:
      ClientError: not Ready (with the condition's reason and message) or no URL yet.
    """
    meta = isvc.get("metadata") or {}
    name = f"{meta.get('namespace', '?')}/{meta.get('name', '?')}"
    status = isvc.get("status") or {}
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    if ready is None or str(ready.get("status")) != "True":
        why = (
            "no Ready condition yet"
            if ready is None
            else (
                f"Ready={ready.get('status')}"
                + "".join(f", {k}: {ready[k]}" for k in ("reason", "message") if ready.get(k))
            )
        )
        raise ClientError(f"InferenceService {name} is not Ready ({why})")
    url = status.get("url")
    if not url:
        raise ClientError(f"InferenceService {name} is Ready but has no status.url")
    return str(url)


def kube_api_client(kubeconfig: str | None = None, context: str | None = None) -> Any:
    """A Kubernetes ``ApiClient`` from the kube config (``--kubeconfig``, ``$KUBECONFIG``,
    ``~/.kube/config``), or the in-cluster service account when there is none."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    try:
        return config.new_client_from_config(config_file=kubeconfig, context=context)
    except (ConfigException, FileNotFoundError) as kube_error:
        if kubeconfig or context:
            raise ClientError(f"cannot load the kube config: {kube_error}") from None
        configuration = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=configuration)
        except ConfigException as e:
            raise ClientError(f"no kube config ({kube_error}) and not in a cluster ({e})") from None
        return client.ApiClient(configuration)


def default_namespace(kubeconfig: str | None = None, context: str | None = None) -> str:
    """The namespace of the kube config's current (or named) context, else the pod's, else ``default``."""
    from kubernetes import config

    try:
        contexts, current = config.list_kube_config_contexts(config_file=kubeconfig)
        chosen = next((c for c in contexts if c.get("name") == context), None) if context else current
        namespace = ((chosen or {}).get("context") or {}).get("namespace")
        if namespace:
            return str(namespace)
    except Exception:  # no kube config: look for the in-cluster namespace
        pass
    pod_ns = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
    return pod_ns.read_text().strip() if pod_ns.is_file() else "default"


def resolve_isvc_url(
    name: str,
    namespace: str | None = None,
    *,
    kubeconfig: str | None = None,
    context: str | None = None,
    timeout: float | None = 30.0,
) -> str:
    """Read InferenceService ``namespace/name`` (serving.kserve.io/v1beta1) and return its URL."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    namespace = namespace or default_namespace(kubeconfig, context)
    api = kube_api_client(kubeconfig, context)
    try:
        isvc = client.CustomObjectsApi(api).get_namespaced_custom_object(
            ISVC_GROUP, ISVC_VERSION, namespace, ISVC_PLURAL, name, _request_timeout=timeout
        )
    except ApiException as e:
        what = "not found" if e.status == 404 else f"HTTP {e.status} {e.reason}"
        raise ClientError(f"InferenceService {namespace}/{name}: {what}") from None
    except Exception as e:  # urllib3 connection errors and the like
        raise ClientError(f"cannot read InferenceService {namespace}/{name}: {e}") from None
    finally:
        api.close()
    return isvc_url(isvc)


def endpoint_from_args(args: argparse.Namespace) -> Endpoint:
    """``--url``/``--host-header``/``--isvc`` -> where to send requests. With ``--isvc`` and ``--url``,
    requests go to ``--url`` (an ingress) with the InferenceService's host name as Host header."""
    url, host_header = args.url, args.host_header
    if args.isvc:
        isvc = resolve_isvc_url(
            args.isvc, args.namespace, kubeconfig=args.kubeconfig, context=args.context, timeout=args.timeout
        )
        if url:
            host_header = host_header or urlsplit(isvc).netloc
        else:
            url = isvc
    if not url:
        url = DEFAULT_GRPC_URL if args.protocol == "grpc" else DEFAULT_REST_URL
    return Endpoint(url, args.model, host_header, args.timeout)


# ------------------------------------------------------------------------------------------ running
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
) -> list[list[Detection]]:
    """``transport.detect`` retried with exponential backoff (0.5 s, 1 s, ...) while retryable."""
    for attempt in range(retries + 1):
        try:
            return transport.detect(images, params)
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
        answers = send_with_retries(transport, [p for _, p in payloads], options.params, options.retries)
    except RequestError as e:
        if len(payloads) > 1 and e.is_client_error:
            for one in payloads:
                _answer(transport, [one], results, options)
            return
        for i, _ in payloads:
            results[i].error = e.message
        return
    for (i, _), dets in zip(payloads, answers, strict=True):
        results[i].detections = dets


def downscale_image(data: bytes, side: int, quality: int = 90) -> tuple[bytes, tuple[float, float]] | None:
    """Shrink an encoded image whose shorter side exceeds ``side`` so that side is ``side`` pixels.

    EXIF orientation is applied first (the result has none), the resize is antialiased (JPEGs are first
    decoded at a reduced DCT scale that keeps the shorter side >= ``side``), and the result is a JPEG of
    ``quality``. Returns the new bytes and ``(sx, sy)``, the factors that map its pixels back to the
    original's (``x_original = x * sx``); None when the image is small enough already or unreadable
    (it is then sent as it is, and the server answers for it).
    """
    import io

    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if img.getexif().get(0x0112, 1) in (5, 6, 7, 8):
                width, height = height, width  # as displayed
            if min(width, height) <= side:
                return None
            img.draft("RGB", (side, side))  # JPEG only: both sides stay >= side
            oriented = ImageOps.exif_transpose(img).convert("RGB")
            scale = side / min(width, height)
            target = (max(1, round(width * scale)), max(1, round(height * scale)))
            small = oriented.resize(target, Image.Resampling.BILINEAR)  # antialiased when shrinking
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    buf = io.BytesIO()
    small.save(buf, format="JPEG", quality=quality)
    return buf.getvalue(), (width / target[0], height / target[1])


def scale_detections(detections: list[Detection], sx: float, sy: float) -> list[Detection]:
    """Detections of a downscaled copy -> pixels of the original (x times ``sx``, y times ``sy``),
    rounded to 2 decimals like the server's."""
    out = []
    for d in detections:
        d = dict(d)
        for key, factor in (("xmin", sx), ("xmax", sx), ("ymin", sy), ("ymax", sy)):
            d[key] = round(d[key] * factor, 2)
        out.append(d)
    return out


def draw_path(item: InputImage, draw_dir: Path, image_format: str | None) -> tuple[Path, str]:
    """Where the drawn copy goes and its format: JPEG and PNG files keep their name and format,
    anything else becomes PNG (``photo.bmp`` -> ``photo.png``)."""
    suffix = item.name.suffix.lower()
    if image_format in ("JPEG", "MPO") and suffix in (".jpg", ".jpeg"):  # MPO: multi-picture JPEG
        return draw_dir / item.name, "JPEG"
    if suffix == ".png":
        return draw_dir / item.name, "PNG"
    if suffix in IMAGE_EXTENSIONS:
        return draw_dir / item.name.with_suffix(".png"), "PNG"
    return draw_dir / item.name.with_name(item.name.name + ".png"), "PNG"


def _draw_copy(item: InputImage, result: ImageResult, draw_dir: Path) -> None:
    from PIL import Image, ImageOps

    from predictor.client.draw import draw_detections

    try:
        with Image.open(item.path) as img:
            source_format = img.format
            oriented = ImageOps.exif_transpose(img)
            drawn = draw_detections(oriented, result.detections or [])
        target, fmt = draw_path(item, draw_dir, source_format)
        target.parent.mkdir(parents=True, exist_ok=True)
        drawn.save(target, fmt, **({"quality": 95, "subsampling": 0} if fmt == "JPEG" else {}))
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


# ------------------------------------------------------------------------------------------ CLI


def _timeout(raw: str) -> float | None:
    value = float(raw)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {raw}")
    return value or None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ssd-detect",
        description="Detect objects in images with an SSD predictor served by KServe (V1, V2 REST or "
        "gRPC). Prints JSON Lines: one object per image, in input order.",
        epilog="Exit status: 0 all images answered, 1 some failed (errors on stderr), 2 usage errors.",
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="PATH",
        help="image files and/or folders (searched recursively for "
        + ", ".join(sorted(IMAGE_EXTENSIONS))
        + ")",
    )
    srv = p.add_argument_group("server")
    srv.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="v1",
        help="v1 (:predict), v2 (REST /infer) or grpc (V2 ModelInfer) (default: v1)",
    )
    srv.add_argument(
        "--url",
        help=f"server URL: http(s)://host:port for v1/v2 (default {DEFAULT_REST_URL}), "
        f"host:port for grpc (default {DEFAULT_GRPC_URL}; https://host for TLS)",
    )
    srv.add_argument("--model", default=DEFAULT_MODEL, help=f"model name (default: {DEFAULT_MODEL})")
    srv.add_argument(
        "--host-header", metavar="HOST", help="Host header for an ingress gateway (gRPC: the :authority)"
    )
    srv.add_argument(
        "--timeout",
        type=_timeout,
        default=60.0,
        metavar="SECONDS",
        help="per-request time limit, 0 for none (default: 60)",
    )
    srv.add_argument(
        "--retries",
        type=int,
        default=2,
        help="retries of a request answered 429/502/503/504, UNAVAILABLE or not at all (default: 2)",
    )
    kube = p.add_argument_group("InferenceService (reads status.url with the Kubernetes API)")
    kube.add_argument(
        "--isvc",
        metavar="NAME",
        help="take the URL from this InferenceService; with --url, use its host as Host header",
    )
    kube.add_argument("--namespace", "-n", help="its namespace (default: the kube context's)")
    kube.add_argument(
        "--kubeconfig", help="kube config file (default: $KUBECONFIG, ~/.kube/config, in-cluster)"
    )
    kube.add_argument("--context", help="kube config context (default: the current one)")
    det = p.add_argument_group("detection")
    det.add_argument(
        "--score-threshold",
        type=fraction,
        metavar="S",
        help="lowest score returned, in [0, 1] (default: the server's)",
    )
    det.add_argument(
        "--max-detections",
        type=positive_int,
        metavar="N",
        help="most detections per image (default: the server's)",
    )
    det.add_argument(
        "--nms-threshold",
        type=fraction,
        metavar="IOU",
        help="IoU at which a box of the same class is suppressed, in [0, 1] (default: the server's)",
    )
    det.add_argument(
        "--classes",
        metavar="NAMES",
        help="only these classes, names or ids separated by commas, e.g. circle,star (default: all)",
    )
    run = p.add_argument_group("sending and output")
    run.add_argument("--batch-size", type=positive_int, default=1, help="images per request (default: 1)")
    run.add_argument("--concurrency", type=positive_int, default=1, help="requests in flight (default: 1)")
    run.add_argument("--output", "-o", metavar="FILE", help="write the JSON Lines here instead of stdout")
    run.add_argument(
        "--draw",
        metavar="DIR",
        help="write copies of the images with the boxes drawn into DIR (same relative names; "
        "JPEG stays JPEG, other formats become PNG)",
    )
    run.add_argument(
        "--downscale",
        type=positive_int,
        metavar="SIDE",
        help="shrink images whose shorter side is over SIDE pixels to SIDE before sending (antialiased, "
        "EXIF orientation applied, JPEG q90): less upload and server CPU; boxes are still in pixels of "
        "the original file. 600 suits SSD300 (see the README for the measured effect)",
    )
    run.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when several images and stderr is a terminal)",
    )
    return p


def _open_output(path: str | None) -> IO[str]:
    if path is None or path == "-":
        return sys.stdout
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return open(path, "w", encoding="utf-8")


def _progress_bar(total: int, enabled: bool | None) -> Any:
    from tqdm import tqdm

    show = enabled if enabled is not None else (total > 1 and sys.stderr.isatty())
    return tqdm(total=total, unit="img", file=sys.stderr, disable=not show, dynamic_ncols=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``ssd-detect`` / ``python -m predictor.client.cli``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        images = collect_images(args.inputs)
        endpoint = endpoint_from_args(args)
        transport = make_transport(args.protocol, endpoint, args.concurrency)
    except ClientError as e:
        print(f"ssd-detect: error: {e}", file=sys.stderr)
        return 2
    options = RunOptions(
        DetectParams(args.score_threshold, args.max_detections, args.nms_threshold, args.classes),
        args.batch_size,
        max(0, args.retries),
        Path(args.draw) if args.draw else None,
        args.downscale,
    )
    failed = _run(transport, images, options, args)
    if failed:
        print(f"ssd-detect: {failed} of {len(images)} images failed", file=sys.stderr)
    return 1 if failed else 0


def _run(
    transport: Transport, images: list[InputImage], options: RunOptions, args: argparse.Namespace
) -> int:
    """Send everything, write the results; returns how many images failed."""
    failed = 0
    out = _open_output(args.output)
    bar = _progress_bar(len(images), args.progress)

    def report(result: ImageResult) -> None:
        nonlocal failed
        bar.update(1)
        if result.error is not None:
            failed += 1
            bar.write(f"ssd-detect: error: {result.file}: {result.error}", file=sys.stderr)

    try:
        for result in run_detection(transport, images, options, args.concurrency, report):
            out.write(json.dumps(result.to_json(), ensure_ascii=False) + "\n")
            out.flush()
    finally:
        bar.close()
        transport.close()
        if out is not sys.stdout:
            out.close()
    return failed


if __name__ == "__main__":
    sys.exit(main())
