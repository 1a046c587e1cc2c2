"""Senders of one request each: V1 REST ``:predict``, V2 REST ``/infer`` and V2 gRPC ``ModelInfer``.

Every transport takes the encoded images of one request and returns the detections of each image in the
V1 form (:func:`predictor.protocol.detections.detection_records`), whatever the protocol, with the model
version that answered (:class:`Answer`; header :data:`~predictor.protocol.wire.MODEL_VERSION_HEADER`
on REST and gRPC, V2's ``model_version``); errors are :class:`~predictor.client.errors.RequestError`.
One transport is shared by the sending threads.

With ``pixels`` (``ssd-detect --uint8``) the V2 transports decode the images here and send them as one
``UINT8 [N, H, W, 3]`` tensor per image size (binary tensor extension over REST, ``raw_input_contents``
over gRPC): the server then only resizes. The controls (:class:`DetectParams`) travel the same way.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol
from urllib.parse import urlsplit

import numpy as np

from predictor.client.errors import ClientError, RequestError
from predictor.protocol import detections, tensors
from predictor.protocol.base64text import encode_base64
from predictor.protocol.detections import PARAMETER_NAMES, Detection
from predictor.protocol.errors import MalformedMessage
from predictor.protocol.json_body import excerpt, load_json
from predictor.protocol.wire import (
    DEFAULT_GRPC_PORT,
    DEFAULT_HTTP_PORT,
    INPUT_NAME,
    MODEL_NAME,
    MODEL_VERSION_HEADER,
)

PROTOCOLS = ("v1", "v2", "grpc")
DEFAULT_MODEL = MODEL_NAME
DEFAULT_REST_URL = f"http://localhost:{DEFAULT_HTTP_PORT}"
DEFAULT_GRPC_URL = f"localhost:{DEFAULT_GRPC_PORT}"
#: HTTP statuses and gRPC codes worth retrying (server busy / scaling up).
RETRY_HTTP_STATUSES = frozenset({429, 502, 503, 504})
RETRY_GRPC_CODES = frozenset({"UNAVAILABLE", "RESOURCE_EXHAUSTED"})


@dataclass(frozen=True)
class DetectParams:
    """Per-request detection parameters; None leaves the server default."""

    score_threshold: float | None = None
    max_detections: int | None = None
    nms_threshold: float | None = None
    #: Class names and/or ids, comma-separated (the form every protocol accepts): ``"circle,star"``.
    classes: str | None = None

    def as_dict(self) -> dict[str, float | int | str]:
        """The ``parameters`` object of a request (only the keys that are set; the field names are the
        parameter names, :data:`predictor.protocol.detections.PARAMETER_NAMES`)."""
        items = {name: getattr(self, name) for name in PARAMETER_NAMES}
        return {k: v for k, v in items.items() if v is not None}


class Answer(NamedTuple):
    """One request's answer: the detections per image, and the model version that computed them (None
    when the server did not say: an older server)."""

    detections: list[list[Detection]]
    model_version: str | None


class Transport(Protocol):
    """Sends the encoded images of one request and returns normalised detections per image."""

    def infer(self, images: Sequence[bytes], params: DetectParams) -> Answer: ...

    def detect(self, images: Sequence[bytes], params: DetectParams) -> list[list[Detection]]: ...

    def close(self) -> None: ...


class _Closing:
    """``with transport: ...`` closes the transport at the end."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class Endpoint:
    """Where requests go: base URL (REST) or ``host:port`` (gRPC), the model, an optional Host header
    (gRPC: authority), TLS for gRPC, the per-request timeout in seconds (None: no limit), and a bearer
    token sent as ``Authorization: Bearer <token>`` (gRPC: metadata) when the server asks for one."""

    url: str
    model: str
    host_header: str | None = None
    timeout: float | None = 60.0
    secure: bool = False
    token: str | None = None

    def __repr__(self) -> str:  # the token never lands in a log or traceback
        token = "<hidden>" if self.token else None
        return (
            f"Endpoint(url={self.url!r}, model={self.model!r}, host_header={self.host_header!r}, "
            f"timeout={self.timeout!r}, secure={self.secure!r}, token={token})"
        )


def decode_pixels(data: bytes) -> np.ndarray:
    """An image file -> uint8 ``[H, W, 3]`` RGB, EXIF orientation applied (as the server decodes it).

    Raises:
      RequestError: not an image (status 400, so a batch falls back to one request per image).
    """
    import io

    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise RequestError(f"cannot decode the image here (--uint8): {e}", status=400) from None


def _by_size(images: Sequence[bytes]) -> list[tuple[list[int], np.ndarray]]:
    """Decoded images grouped by size: ``[(indices, uint8 [n, H, W, 3]), ...]`` in first-seen order."""
    groups: dict[tuple[int, ...], list[tuple[int, np.ndarray]]] = {}
    for i, data in enumerate(images):
        pixels = decode_pixels(data)
        groups.setdefault(pixels.shape, []).append((i, pixels))
    return [([i for i, _ in g], np.stack([p for _, p in g])) for g in groups.values()]


def _per_size(images: Sequence[bytes], send: Any) -> Answer:
    """``send(uint8 [n, H, W, 3]) -> Answer of n images`` for each size group, the detections in the images'
    order; the model version is the first group's that names one."""
    out: list[list[Detection]] = [[] for _ in images]
    version = None
    for indices, batch in _by_size(images):
        answer = send(batch)
        version = version or answer.model_version
        for i, dets in zip(indices, answer.detections, strict=True):
            out[i] = dets
    return Answer(out, version)


class RestTransport(_Closing):
    """V1 ``:predict`` or V2 ``/infer`` over one shared, thread-safe ``httpx.Client`` (V2 with ``pixels``:
    decoded ``UINT8`` tensors in the binary tensor extension)."""

    def __init__(
        self, endpoint: Endpoint, protocol: str, max_connections: int = 1, pixels: bool = False
    ) -> None:
        import httpx

        if pixels and protocol == "v1":
            raise ClientError("--uint8 sends decoded pixels as a V2 tensor: use --protocol v2 or grpc")
        self._httpx = httpx
        self.pixels = pixels
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
        if endpoint.token:
            headers["Authorization"] = f"Bearer {endpoint.token}"
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self.client = httpx.Client(headers=headers, timeout=endpoint.timeout, limits=limits)
        self.timeout = endpoint.timeout

    def detect(self, images: Sequence[bytes], params: DetectParams) -> list[list[Detection]]:
        return self.infer(images, params).detections

    def infer(self, images: Sequence[bytes], params: DetectParams) -> Answer:
        if self.pixels:
            return _per_size(images, lambda batch: self._infer_pixels(batch, params))
        body = self.request_body(images, params)
        response, version = self._post(json.dumps(body).encode())
        return self._answer(response, version, len(images))

    def _answer(self, response: Any, version: str | None, n: int) -> Answer:
        """The detections of ``n`` images in a V1 or V2 JSON answer, with the model version (V2's
        ``model_version``, else the header's)."""
        try:
            if self.protocol == "v1":
                return Answer(detections.detections_from_v1(response, n), version)
            if isinstance(response, dict) and isinstance(response.get("model_version"), str):
                version = response["model_version"]
            arrays = tensors.arrays_from_json_outputs(response)
            return Answer(detections.detections_from_v2(arrays, n), version)
        except MalformedMessage as e:
            raise RequestError(f"unexpected {self.protocol.upper()} response: {e}") from None

    def request_body(self, images: Sequence[bytes], params: DetectParams) -> dict[str, Any]:
        """The JSON body: V1 ``instances`` of ``{"b64": ...}``, or one V2 BYTES input of base64 strings."""
        b64 = [encode_base64(img) for img in images]
        if self.protocol == "v1":
            body: dict[str, Any] = {"instances": [{"b64": s} for s in b64]}
        else:
            body = {"inputs": [tensors.json_tensor(INPUT_NAME, "BYTES", np.asarray(b64, dtype=object))]}
        if params.as_dict():
            body["parameters"] = params.as_dict()
        return body

    def pixel_request(self, batch: np.ndarray, params: DetectParams) -> tuple[bytes, dict[str, str]]:
        """A V2 binary-extension body with one UINT8 ``[n, H, W, 3]`` input, and its extra headers."""
        raw = np.ascontiguousarray(batch, np.uint8).tobytes()
        tensor = {"name": INPUT_NAME, "datatype": "UINT8", "shape": list(batch.shape)}
        tensor["parameters"] = {"binary_data_size": len(raw)}
        header: dict[str, Any] = {"inputs": [tensor]}
        if params.as_dict():
            header["parameters"] = params.as_dict()
        head = json.dumps(header).encode()
        headers = {
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(len(head)),
        }
        return head + raw, headers

    def _infer_pixels(self, batch: np.ndarray, params: DetectParams) -> Answer:
        content, headers = self.pixel_request(batch, params)
        response, version = self._post(content, headers)
        return self._answer(response, version, len(batch))

    def _post(self, content: bytes, headers: dict[str, str] | None = None) -> tuple[Any, str | None]:
        """The JSON answer and its model version header."""
        httpx = self._httpx
        try:
            response = self.client.post(self.url, content=content, headers=headers)
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
            return load_json(response.content, "response"), response.headers.get(MODEL_VERSION_HEADER)
        except MalformedMessage:
            raise RequestError(f"the answer is not JSON: {excerpt(response.text)}") from None

    def close(self) -> None:
        self.client.close()


def http_error_message(content: bytes) -> str:
    """The server's message: ``{"error": ...}`` (KServe), ``{"detail": ...}`` (FastAPI) or the text."""
    try:
        body = load_json(content)
    except MalformedMessage:
        return excerpt(content.decode("utf-8", "replace").strip() or "(empty body)", 500)
    if isinstance(body, dict):
        for key in ("error", "detail", "message"):
            if key in body:
                value = body[key]
                return value if isinstance(value, str) else excerpt(json.dumps(value), 500)
    return excerpt(json.dumps(body), 500)


class GrpcTransport(_Closing):
    """V2 ``ModelInfer`` over one gRPC channel (thread-safe); images travel as raw bytes. The messages are
    :mod:`predictor.protocol.grpc_v2` (``grpcio`` and ``protobuf``, no KServe)."""

    def __init__(self, endpoint: Endpoint, pixels: bool = False) -> None:
        import grpc

        from predictor.protocol import grpc_v2

        self._grpc, self._pb = grpc, grpc_v2
        self.pixels = pixels
        self.target, self.model, self.timeout = endpoint.url, endpoint.model, endpoint.timeout
        self.metadata = (("authorization", f"Bearer {endpoint.token}"),) if endpoint.token else None
        options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
        if endpoint.host_header:
            options.append(("grpc.default_authority", endpoint.host_header))
        if endpoint.secure:
            self.channel = grpc.secure_channel(self.target, grpc.ssl_channel_credentials(), options=options)
        else:
            self.channel = grpc.insecure_channel(self.target, options=options)
        self.model_infer = self.channel.unary_unary(
            grpc_v2.MODEL_INFER,
            request_serializer=grpc_v2.ModelInferRequest.SerializeToString,
            response_deserializer=grpc_v2.ModelInferResponse.FromString,
        )

    def request(self, images: Sequence[bytes], params: DetectParams) -> Any:
        """A ``ModelInferRequest`` with one BYTES input ``[N]`` (gRPC parameters have no float field,
        so the threshold travels as a string, which the server accepts)."""
        pb = self._pb
        tensor = pb.ModelInferRequest.InferInputTensor(
            name=INPUT_NAME,
            datatype="BYTES",
            shape=[len(images)],
            contents=pb.InferTensorContents(bytes_contents=list(images)),
        )
        request = pb.ModelInferRequest(model_name=self.model, inputs=[tensor])
        self._set_parameters(request, params)
        return request

    def pixel_request(self, batch: np.ndarray, params: DetectParams) -> Any:
        """A ``ModelInferRequest`` with one UINT8 ``[n, H, W, 3]`` input in ``raw_input_contents``."""
        pb = self._pb
        tensor = pb.ModelInferRequest.InferInputTensor(
            name=INPUT_NAME, datatype="UINT8", shape=list(batch.shape)
        )
        raw = np.ascontiguousarray(batch, np.uint8).tobytes()
        request = pb.ModelInferRequest(model_name=self.model, inputs=[tensor], raw_input_contents=[raw])
        self._set_parameters(request, params)
        return request

    @staticmethod
    def _set_parameters(request: Any, params: DetectParams) -> None:
        for name, value in params.as_dict().items():
            if name == "max_detections":
                request.parameters[name].int64_param = int(value)
            else:  # floats and the class list travel as strings, which the server accepts
                text = value if isinstance(value, str) else repr(float(value))
                request.parameters[name].string_param = text

    def detect(self, images: Sequence[bytes], params: DetectParams) -> list[list[Detection]]:
        return self.infer(images, params).detections

    def infer(self, images: Sequence[bytes], params: DetectParams) -> Answer:
        if self.pixels:
            return _per_size(images, lambda batch: self._send(self.pixel_request(batch, params), len(batch)))
        return self._send(self.request(images, params), len(images))

    def _send(self, request: Any, n: int) -> Answer:
        grpc = self._grpc
        try:
            response, call = self.model_infer.with_call(request, timeout=self.timeout, metadata=self.metadata)
        except grpc.RpcError as e:
            code = e.code().name if e.code() is not None else "UNKNOWN"
            if code == "DEADLINE_EXCEEDED":
                raise RequestError(
                    f"no answer from {self.target} within {self.timeout} s", code, True
                ) from None
            raise RequestError(f"gRPC {code}: {e.details()}", code, code in RETRY_GRPC_CODES) from None
        try:
            arrays = tensors.arrays_from_grpc_outputs(response.outputs, response.raw_output_contents)
            answer = detections.detections_from_v2(arrays, n)
        except MalformedMessage as e:
            raise RequestError(f"unexpected gRPC response: {e}") from None
        metadata = dict(call.initial_metadata() or ())
        return Answer(answer, response.model_version or metadata.get(MODEL_VERSION_HEADER))

    def close(self) -> None:
        self.channel.close()


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


def make_transport(
    protocol: str, endpoint: Endpoint, concurrency: int = 1, pixels: bool = False
) -> RestTransport | GrpcTransport:
    """The transport for ``v1``, ``v2`` or ``grpc`` (``pixels``: send decoded UINT8 tensors, V2 only)."""
    if protocol == "grpc":
        target, secure = grpc_target(endpoint.url)
        return GrpcTransport(dataclasses.replace(endpoint, url=target, secure=secure), pixels=pixels)
    if protocol in ("v1", "v2"):
        url = endpoint.url if "://" in endpoint.url else f"http://{endpoint.url}"
        return RestTransport(
            dataclasses.replace(endpoint, url=url, secure=False),
            protocol,
            max_connections=concurrency,
            pixels=pixels,
        )
    raise ClientError(f"unknown protocol {protocol!r} (choose from {', '.join(PROTOCOLS)})")


def connect(
    url: str | None = None,
    *,
    protocol: str = "v1",
    model: str = DEFAULT_MODEL,
    host_header: str | None = None,
    timeout: float | None = 60.0,
    concurrency: int = 1,
    token: str | None = None,
) -> RestTransport | GrpcTransport:
    """A transport to the predictor at ``url`` (default: a local server, :data:`DEFAULT_REST_URL` or
    :data:`DEFAULT_GRPC_URL`); use it in a ``with`` block or ``close()`` it.

    Raises:
      ClientError: an unknown protocol, or a URL that cannot be a gRPC target.
    """
    if url is None:
        url = DEFAULT_GRPC_URL if protocol == "grpc" else DEFAULT_REST_URL
    return make_transport(protocol, Endpoint(url, model, host_header, timeout, token=token), concurrency)
