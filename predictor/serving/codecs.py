"""Wire formats: V1 / V2 (REST and gRPC) requests -> :class:`ParsedRequest`, detections -> responses.

Requests carry one encoded image per instance: base64 text in JSON strings; bytes (a raw V1 HTTP body,
a V2 binary-extension or gRPC BYTES element) hold the image file itself when they start with an image
signature (:func:`image_signature`), else its base64 text. Parsing here is cheap and never decodes pixels
or base64: that happens later, in the decode threads (:func:`payload_bytes`). Every malformed request
raises ``kserve.errors.InvalidInput`` (HTTP 400, gRPC INVALID_ARGUMENT) whose message names the
offending field, e.g. ``instances[3]: ...``.

Boxes in responses are ``(xmin, ymin, xmax, ymax)`` in pixels of the original (EXIF-oriented) image.

The facts the client shares (input and output names, parameter names, the V1 detection records, the
raw BYTES framing, base64 and JSON rules) live in :mod:`predictor.protocol`; this module applies them
to KServe's request and response objects and raises ``InvalidInput`` where they find a fault.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any, NamedTuple

import numpy as np
import orjson
from google.protobuf.internal import wire_format
from google.protobuf.unknown_fields import UnknownFieldSet
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from predictor.protocol import base64text, json_body, tensors
from predictor.protocol.detections import PARAMETER_NAMES, detection_records, v1_response
from predictor.protocol.errors import MalformedMessage
from predictor.protocol.json_body import json_type as _json_type
from predictor.protocol.wire import INPUT_NAME, V2_OUTPUTS
from predictor.serving.errors import InvalidInput
from predictor.serving.images import decode_base64

#: Most entries of the ``classes`` parameter.
MAX_CLASS_FILTER = 1000
_V1_IMAGE_KEYS = ("b64", "image", "image_bytes")
#: File signatures of the accepted image formats (predictor.serving.images.FORMATS). No base64 text of an
#: image in these formats starts with one of them (base64 of JPEG starts "/9j/", PNG "iVBOR", GIF
#: "R0lGOD", BMP "Qk", WebP "UklGR"), so bytes starting with a signature are the image file itself.
_SIGNATURES: tuple[tuple[str, bytes], ...] = (
    ("JPEG", b"\xff\xd8"),
    ("PNG", b"\x89PNG"),
    ("GIF", b"GIF87a"),
    ("GIF", b"GIF89a"),
    ("BMP", b"BM"),
)
_JSON_OBJECT_START = re.compile(rb"[ \t\r\n]*\{")
#: Media types whose V1 body is always one image, whatever its first bytes.
_IMAGE_MEDIA_TYPES = ("image/", "application/octet-stream")


# --------------------------------------------------------------------------------------- requests
@contextmanager
def invalid_input() -> Iterator[None]:
    """Turn the wire helpers' :class:`MalformedMessage` into ``InvalidInput`` (400), same message."""
    try:
        yield
    except MalformedMessage as e:
        raise InvalidInput(str(e)) from None


@dataclass(frozen=True)
class ImagePayload:
    """One encoded image of a request.

    Attributes:
      field: where it came from, for error messages (``instances[3]``, ``images[0]``).
      data: base64 text when ``is_base64``, else the encoded bytes.
      is_base64: True: base64 text; False: the image file; None: bytes without an image signature,
        read as base64 text when they are nothing else (:func:`payload_bytes`), else as the file.
    """

    field: str
    data: str | bytes
    is_base64: bool | None


@dataclass(frozen=True)
class PixelPayload:
    """One already decoded image of a V2 ``UINT8`` request (no decoding, only a resize).

    Attributes:
      field: where it came from, for error messages (``images[3]``).
      pixels: uint8 ``[H, W, 3]`` RGB (a view into the request's tensor).
    """

    field: str
    pixels: np.ndarray


@dataclass(frozen=True)
class Controls:
    """The detection controls of one request, whatever its protocol and input form; None: the server
    default. Built by :func:`parse_controls` alone; the field names are the request parameter names
    (:data:`predictor.protocol.detections.PARAMETER_NAMES`).

    Attributes:
      score_threshold: in ``[0, 1]``.
      max_detections: in ``1..server max``.
      nms_threshold: in ``[0, 1]``.
      classes: the class filter as sent (names and/or ids, see :func:`class_mask`).
    """

    score_threshold: float | None = None
    max_detections: int | None = None
    nms_threshold: float | None = None
    classes: tuple[str | int, ...] | None = None


@dataclass(frozen=True)
class ParsedRequest:
    """A validated request: its images (still encoded, or pixels) and its detection controls.

    Attributes:
      protocol: ``v1``, ``v2`` (REST) or ``grpc``.
      images: one payload per instance, ``1 <= len <= max_batch_size``.
      controls: what :func:`parse_controls` made of the request's parameters.
      infer_request: the V2 request (id, requested outputs), None for V1.
    """

    protocol: str
    images: tuple[ImagePayload | PixelPayload, ...]
    controls: Controls = Controls()
    infer_request: InferRequest | None = None


@dataclass(frozen=True)
class V1Body:
    """A V1 ``:predict`` request as the HTTP route received it: the raw body and the URL's query
    parameters (``[(key, value), ...]``), which carry the controls of a raw image body."""

    body: bytes
    query: tuple[tuple[str, str], ...] = ()


def protocol_of(payload: Any) -> str:
    """``grpc``, ``v2`` or ``v1`` for a body as KServe (or our V1 route) hands it to ``preprocess``."""
    if isinstance(payload, InferRequest):
        return "grpc" if payload.from_grpc else "v2"
    return "v1"


def parse_request(
    payload: Any, headers: Mapping[str, str] | None, *, max_batch_size: int, max_detections: int
) -> ParsedRequest:
    """Any request -> :class:`ParsedRequest`: its images by input form, then its controls by the one
    :func:`parse_controls`, whatever the protocol and form (no form parser reads parameters).

    ``payload`` is what KServe decoded (``InferRequest`` for V2 REST / gRPC, a dict for V1 JSON) or what
    our V1 route passes (:class:`V1Body`, raw bytes).
    """
    if isinstance(payload, InferRequest):
        protocol = "grpc" if payload.from_grpc else "v2"
        images = v2_images(payload, max_batch_size)
        params, strict = v2_parameters(payload), False
        infer_request: InferRequest | None = payload
    else:
        protocol, strict, infer_request = "v1", True, None
        content_type = (headers or {}).get("content-type", "")
        images, params = v1_images(payload, content_type, max_batch_size)
    controls = parse_controls(params, max_detections, strict=strict)
    return ParsedRequest(protocol, images, controls, infer_request)


def parse_v1(body: Any, content_type: str = "", *, max_batch_size: int, max_detections: int) -> ParsedRequest:
    """:func:`parse_request` of a V1 body (a decoded JSON value, raw bytes or :class:`V1Body`)."""
    headers = {"content-type": content_type}
    return parse_request(body, headers, max_batch_size=max_batch_size, max_detections=max_detections)


def parse_v2(request: InferRequest, *, max_batch_size: int, max_detections: int) -> ParsedRequest:
    """:func:`parse_request` of a V2 request (REST or gRPC)."""
    return parse_request(request, None, max_batch_size=max_batch_size, max_detections=max_detections)


def v1_images(body: Any, content_type: str, max_batch_size: int) -> tuple[tuple[ImagePayload, ...], Any]:
    """V1 body -> ``(images, parameters)``. ``body`` is a decoded JSON value, the raw HTTP body, or a
    :class:`V1Body` (see :func:`v1_body_is_json` for when that is JSON and when one image).

    A JSON body's parameters are its ``"parameters"``; a raw image's are the URL's query parameters
    (None when there are none: the server defaults). A JSON body with query parameters is a 400 (one
    place for the controls of a request).
    """
    query: tuple[tuple[str, str], ...] = ()
    if isinstance(body, V1Body):
        body, query = body.body, body.query
    if isinstance(body, (bytes, bytearray, memoryview)):
        if not v1_body_is_json(body, content_type):
            return (bytes_payload("instances[0]", bytes(body)),), query_parameters(query)
        body = load_json(body)
    if query:
        raise InvalidInput(
            f'query parameter {query[0][0][:64]!r}: a JSON body carries its controls in "parameters"; '
            "query parameters are for a raw image body"
        )
    if not isinstance(body, dict):
        raise InvalidInput(f'expected a JSON object {{"instances": [...]}}, got {_json_type(body)}')
    if "instances" not in body:
        keys = ", ".join(sorted(map(str, body)))[:200]
        raise InvalidInput(f'missing "instances" (a list of images); the body has keys: {keys or "none"}')
    instances = body["instances"]
    if not isinstance(instances, list):
        raise InvalidInput(f"instances: expected a list of images, got {_json_type(instances)}")
    _check_count(len(instances), "instances", max_batch_size)
    return tuple(_v1_instance(item, i) for i, item in enumerate(instances)), body.get("parameters")


def query_parameters(query: Sequence[tuple[str, str]]) -> dict[str, str] | None:
    """URL query parameters -> the parameters of a raw V1 image (None when there are none).

    ``classes`` may repeat (``?classes=circle&classes=star`` is ``"circle,star"``); any other key given
    twice is a 400.
    """
    if not query:
        return None
    out: dict[str, str] = {}
    for key, value in query:
        if key in out and key != "classes":
            raise InvalidInput(f"parameters.{key[:64]}: given more than once in the query")
        out[key] = f"{out[key]},{value}" if key in out else value
    return out


def v1_body_is_json(body: bytes | bytearray | memoryview, content_type: str) -> bool:
    """Whether a raw V1 body is JSON rather than one image.

    JSON: a JSON media type (``application/json``, ``*+json``, any parameters). One image: an
    ``image/*`` or ``application/octet-stream`` media type. Any other or no Content-Type (curl's
    ``application/x-www-form-urlencoded``, ``text/plain`` ...): JSON when the body starts with ``{``
    (after white space; no image format starts so), else one image.
    """
    media = content_type.split(";", 1)[0].strip().lower()
    if "json" in media:
        return True
    if media.startswith(_IMAGE_MEDIA_TYPES):
        return False
    return _JSON_OBJECT_START.match(body) is not None


def load_json(body: bytes | bytearray | memoryview, what: str = "body") -> Any:
    """JSON bytes -> value (:func:`predictor.protocol.json_body.load_json`); ``InvalidInput`` if not JSON."""
    with invalid_input():
        return json_body.load_json(body, what)


def image_signature(data: bytes | bytearray | memoryview) -> str | None:
    """The format whose file signature ``data`` starts with (JPEG, PNG, GIF, BMP, WEBP), else None."""
    head = bytes(data[:12])
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    for name, magic in _SIGNATURES:
        if head.startswith(magic):
            return name
    return None


def bytes_payload(field: str, data: bytes) -> ImagePayload:
    """An image given as bytes: the file itself when it starts with an image signature, else
    (decided in the decode thread) its base64 text when it is base64 text, else the file."""
    return ImagePayload(field, data, False if image_signature(data) else None)


def _v1_instance(item: Any, index: int) -> ImagePayload:
    field = f"instances[{index}]"
    if isinstance(item, str):
        return ImagePayload(field, item, True)
    if not isinstance(item, dict):
        raise InvalidInput(f'{field}: expected a base64 string or {{"b64": "..."}}, got {_json_type(item)}')
    keys = [k for k in _V1_IMAGE_KEYS if k in item]
    if len(keys) != 1:
        found = "none" if not keys else " and ".join(keys)
        raise InvalidInput(f'{field}: expected exactly one of "b64", "image", "image_bytes" (found {found})')
    key = keys[0]
    value = item[key]
    if key != "b64" and isinstance(value, dict):
        if set(value) != {"b64"}:
            raise InvalidInput(f'{field}.{key}: expected {{"b64": "<base64>"}}')
        value, key = value["b64"], f"{key}.b64"
    if not isinstance(value, str):
        raise InvalidInput(f"{field}.{key}: expected a base64 string, got {_json_type(value)}")
    return ImagePayload(field, value, True)


def v2_images(request: InferRequest, max_batch_size: int) -> tuple[ImagePayload | PixelPayload, ...]:
    """The images of a V2 request: one input, BYTES of shape ``[N]`` (``[N, 1]`` is accepted too) whose
    elements are base64 strings (JSON) or bytes (binary extension, gRPC: the image file, or its base64
    text), or UINT8 pixels (:func:`uint8_images`)."""
    inputs = request.inputs or []
    if len(inputs) != 1:
        raise InvalidInput(f"expected exactly one input (BYTES, shape [N]), got {len(inputs)}")
    inp = inputs[0]
    name = str(inp.name)[:64] or "inputs[0]"
    if inp.datatype == "UINT8":
        return uint8_images(inp, name, max_batch_size)
    if inp.datatype != "BYTES":
        raise InvalidInput(f"{name}: datatype must be BYTES (encoded images), got {inp.datatype!r}")
    shape = _v2_shape(inp.shape, name)
    _check_count(shape[0], name, max_batch_size)
    items = _v2_items(inp, name)
    if len(items) != shape[0]:
        raise InvalidInput(f"{name}: shape {list(shape)} needs {shape[0]} elements, got {len(items)}")
    images = []
    for i, item in enumerate(items):
        field = f"{name}[{i}]"
        if isinstance(item, (bytes, bytearray)):
            images.append(bytes_payload(field, bytes(item)))
        elif isinstance(item, str):
            images.append(ImagePayload(field, item, True))
        else:
            raise InvalidInput(f"{field}: expected an image (base64 string or bytes), got {_json_type(item)}")
    return tuple(images)


def v2_parameters(request: InferRequest) -> Any:
    """The request-level parameters of a V2 request: a dict (REST), gRPC's map read by
    :func:`grpc_parameters`."""
    return grpc_parameters(request.parameters) if request.from_grpc else request.parameters


def uint8_images(inp: Any, name: str, max_batch_size: int) -> tuple[PixelPayload, ...]:
    """V2 ``UINT8`` input of shape ``[N, H, W, 3]``: decoded RGB pixels, from JSON ``data`` (flat or
    nested integers 0..255), the binary tensor extension or gRPC ``raw_input_contents`` (``N*H*W*3``
    bytes, row-major), or gRPC ``uint_contents``. Sides and pixel counts are checked against the image
    caps later, per image, like encoded images (:func:`predictor.serving.images.check_pixel_array`)."""
    shape = _uint8_shape(inp.shape, name)
    _check_count(shape[0], name, max_batch_size)
    expected = math.prod(shape)
    raw = getattr(inp, "_raw_data", None)
    if raw is not None:
        if len(raw) != expected:
            raise InvalidInput(f"{name}: shape {list(shape)} needs {expected} bytes, got {len(raw)}")
        pixels = np.frombuffer(raw, np.uint8).reshape(shape)
    else:
        pixels = _uint8_from_json(inp.data, shape, expected, name)
    return tuple(PixelPayload(f"{name}[{i}]", pixels[i]) for i in range(shape[0]))


def _uint8_shape(shape: Any, name: str) -> tuple[int, int, int, int]:
    try:
        dims = tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        raise InvalidInput(f"{name}: shape must be a list of integers, got {shape!r}"[:200]) from None
    if len(dims) != 4 or dims[3] != 3 or min(dims) < 0:
        raise InvalidInput(f"{name}: UINT8 images must have shape [N, H, W, 3], got {list(dims)}"[:200])
    if dims[1] == 0 or dims[2] == 0:
        raise InvalidInput(f"{name}: images have zero size {dims[2]}x{dims[1]}")
    return dims  # type: ignore[return-value]


def _uint8_from_json(data: Any, shape: tuple[int, ...], expected: int, name: str) -> np.ndarray:
    if data is None:
        raise InvalidInput(f"{name}: no data")
    if not isinstance(data, (list, tuple)):
        raise InvalidInput(f"{name}: data must be a list of integers 0..255, got {_json_type(data)}")
    if len(data) not in (expected, shape[0]):  # flat, or nested per image: no allocation before this
        raise InvalidInput(f"{name}: shape {list(shape)} needs {expected} values, got {len(data)}")
    try:
        values = np.asarray(data)
    except (ValueError, TypeError):
        raise InvalidInput(f"{name}: data must be a flat or [N, H, W, 3] nested list of integers") from None
    if values.size != expected:
        raise InvalidInput(f"{name}: shape {list(shape)} needs {expected} values, got {values.size}")
    if values.dtype.kind not in "iu":
        raise InvalidInput(f"{name}: data must hold integers 0..255, got {values.dtype.name} values")
    if values.size and (values.min() < 0 or values.max() > 255):
        raise InvalidInput(f"{name}: data must hold integers 0..255, got {values.min()}..{values.max()}")
    return values.astype(np.uint8).reshape(shape)


def _v2_shape(shape: Any, name: str) -> tuple[int, ...]:
    if (
        isinstance(shape, (str, bytes))
        or not isinstance(shape, Sequence)
        or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
    ):
        raise InvalidInput(f"{name}: shape must be a list of integers, got {shape!r}"[:200])
    dims = tuple(int(d) for d in shape)
    if not (len(dims) == 1 or (len(dims) == 2 and dims[1] == 1)):
        raise InvalidInput(f"{name}: shape must be [N] (or [N, 1]), got {list(dims)}")
    return dims


def _v2_items(inp: Any, name: str) -> list[Any]:
    raw = getattr(inp, "_raw_data", None)
    if raw is not None:
        return split_raw_bytes(raw, name)
    data = inp.data
    if data is None:
        raise InvalidInput(f"{name}: no data")
    if isinstance(data, (str, bytes)) or not isinstance(data, Sequence):
        data = [data]
    flat: list[Any] = []
    for item in data:
        if isinstance(item, list):
            if len(item) != 1:
                raise InvalidInput(f"{name}: nested data must be [[image], [image], ...]")
            item = item[0]
        flat.append(item)
    return flat


def split_raw_bytes(raw: bytes, name: str = "input") -> list[bytes]:
    """V2 raw BYTES tensor contents -> elements (:func:`predictor.protocol.tensors.split_bytes_elements`);
    ``InvalidInput`` when malformed."""
    with invalid_input():
        return tensors.split_bytes_elements(raw, name)


def _check_count(n: int, field: str, max_batch_size: int) -> None:
    if n <= 0:
        raise InvalidInput(f"{field}: no images")
    if n > max_batch_size:
        raise InvalidInput(f"{field}: {n} images, the limit is {max_batch_size} per request")


#: The ``InferParameter`` kinds a gRPC request's parameters may use: KServe's three, and the two that
#: Triton's ``grpc_service.proto`` adds (tritonclient sends a Python float as ``double_param``).
GRPC_PARAMETER_KINDS = ("bool_param", "int64_param", "string_param", "double_param", "uint64_param")
#: Triton's ``InferParameter`` fields that KServe's proto lacks: field number -> (wire type, kind).
_TRITON_PARAMETER_FIELDS = {
    4: (wire_format.WIRETYPE_FIXED64, "double_param"),
    5: (wire_format.WIRETYPE_VARINT, "uint64_param"),
}


@dataclass(frozen=True)
class UnreadableParameter:
    """A gRPC parameter whose value is of no kind this server reads (or is unset); an error only
    when it is one of the parameters the server reads (:func:`parse_controls`)."""

    what: str

    def reason(self) -> str:
        return f"{self.what}; send one of {', '.join(GRPC_PARAMETER_KINDS)}"


def grpc_parameters(parameters: Any) -> dict[str, Any]:
    """gRPC ``map<string, InferParameter>`` -> plain dict (string values stay strings).

    KServe's ``InferParameter`` has ``bool_param``, ``int64_param`` and ``string_param``; Triton's
    ``double_param`` (field 4) and ``uint64_param`` (field 5) arrive as unknown fields of it and are
    read from there (:func:`grpc_parameter_value`).
    """
    if not parameters:
        return {}
    return {key: grpc_parameter_value(value) for key, value in parameters.items()}


def grpc_parameter_value(value: Any) -> Any:
    """One ``InferParameter`` -> its Python value; :class:`UnreadableParameter` when it holds none of
    :data:`GRPC_PARAMETER_KINDS`. A plain value (not a message) is returned as it is."""
    if not hasattr(value, "WhichOneof"):
        return value
    which = value.WhichOneof("parameter_choice")
    if which:
        return getattr(value, which)
    found: Any = UnreadableParameter("an InferParameter with no value")
    for field in UnknownFieldSet(value):  # a oneof: the last one on the wire wins
        wire_type, kind = _TRITON_PARAMETER_FIELDS.get(field.field_number, (None, None))
        if kind is None or field.wire_type != wire_type:
            found = UnreadableParameter(
                f"an InferParameter of unknown kind (field {field.field_number}, wire type {field.wire_type})"
            )
        elif kind == "double_param":
            found = struct.unpack("<d", struct.pack("<Q", field.data))[0]
        else:
            found = int(field.data)
    return found


#: How each control is read from its parameter value: ``(value, server max detections) -> control``.
_CONTROL_PARSERS: dict[str, Any] = {
    "score_threshold": lambda value, _: _fraction(value, "score_threshold"),
    "max_detections": lambda value, limit: _max_detections(value, limit),
    "nms_threshold": lambda value, _: _fraction(value, "nms_threshold"),
    "classes": lambda value, _: _class_filter(value),
}
if tuple(_CONTROL_PARSERS) != PARAMETER_NAMES or tuple(f.name for f in fields(Controls)) != PARAMETER_NAMES:
    raise ImportError("Controls, its parsers and protocol.detections.PARAMETER_NAMES disagree")


def parse_controls(params: Any, server_max_detections: int, *, strict: bool) -> Controls:
    """A request's parameters -> its :class:`Controls`, for every protocol and input form.

    ``{"score_threshold": float in [0, 1], "max_detections": int in 1..server max, "nms_threshold":
    float in [0, 1], "classes": [...]}``; ``classes`` is a non-empty list of class names (strings)
    and/or class ids (integers), or one string of them separated by commas (``"circle,star"``,
    ``"1,4"``: V2 and gRPC parameters cannot carry lists). Names are resolved against the model's
    classes later (:func:`class_mask`). Numbers may be numeric strings (gRPC ``string_param``, URL
    query parameters). Missing keys (or ``params`` None) give None: the server default.

    ``strict`` rejects unknown keys (V1); V2 requests may carry protocol parameters
    (``binary_data_output`` ...), so unknown keys are ignored there.
    """
    if params is None:
        return Controls()
    if not isinstance(params, Mapping):
        raise InvalidInput(f"parameters: expected an object, got {_json_type(params)}")
    if strict:
        unknown = sorted(str(k) for k in params if k not in PARAMETER_NAMES)
        if unknown:
            raise InvalidInput(
                f"parameters: unknown key {unknown[0][:64]!r} (known: {', '.join(PARAMETER_NAMES)})"
            )
    values: dict[str, Any] = {}
    for name, parse in _CONTROL_PARSERS.items():
        value = params.get(name)
        if isinstance(value, UnreadableParameter):
            raise InvalidInput(f"parameters.{name}: {value.reason()}")
        values[name] = None if value is None else parse(value, server_max_detections)
    return Controls(**values)


def _class_filter(value: Any) -> tuple[str | int, ...]:
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",")]
    elif isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list):
        raise InvalidInput(
            f"parameters.classes: expected a list of class names or ids, got {_json_type(value)}"
        )
    if not value:
        raise InvalidInput("parameters.classes: expected at least one class name or id")
    if len(value) > MAX_CLASS_FILTER:
        raise InvalidInput(f"parameters.classes: {len(value)} entries, the limit is {MAX_CLASS_FILTER}")
    out: list[str | int] = []
    for i, item in enumerate(value):
        if isinstance(item, str) and item.strip():
            text = item.strip()
            out.append(int(text) if text.isdigit() else text)
        elif isinstance(item, int) and not isinstance(item, bool):
            out.append(item)
        else:
            raise InvalidInput(
                f"parameters.classes[{i}]: expected a class name or id, got {_json_type(item)}"
            )
    return tuple(out)


def class_mask(classes: Sequence[str | int] | None, class_names: Sequence[str]) -> np.ndarray | None:
    """The class filter of a request -> bool ``[C]`` indexed by class id (None: every class).

    Args:
      classes: names (exact, case-sensitive) and/or ids ``1..C-1`` as parsed by :func:`parse_controls`.
      class_names: the model's class names, index 0 the background.
    Raises:
      InvalidInput: ``parameters.classes[i]: ...`` for an unknown name or an id out of range.
    """
    if classes is None:
        return None
    ids = {name: i for i, name in enumerate(class_names) if i > 0}
    mask = np.zeros(len(class_names), bool)
    for i, item in enumerate(classes):
        if isinstance(item, int):
            if not 1 <= item < len(class_names):
                raise InvalidInput(
                    f"parameters.classes[{i}]: class id {item} is out of range 1..{len(class_names) - 1}"
                )
            mask[item] = True
        elif item in ids:
            mask[ids[item]] = True
        else:
            known = ", ".join(class_names[1:])
            raise InvalidInput(f"parameters.classes[{i}]: unknown class {item[:64]!r} (known: {known[:500]})")
    return mask


def _fraction(value: Any, field: str) -> float:
    x = _number(value, field)
    if not (math.isfinite(x) and 0.0 <= x <= 1.0):
        raise InvalidInput(f"parameters.{field}: must be within [0, 1], got {x}")
    return x


def _number(value: Any, field: str) -> float:
    """A JSON number or numeric string as a float (huge integers become inf, rejected by the callers)."""
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            raise InvalidInput(f"parameters.{field}: expected a number, got {value[:32]!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInput(f"parameters.{field}: expected a number, got {_json_type(value)}")
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _max_detections(value: Any, limit: int) -> int:
    x = _number(value, "max_detections")
    if not math.isfinite(x) or x != int(x):
        raise InvalidInput(f"parameters.max_detections: expected an integer, got {str(x)[:32]}")
    if not 1 <= x <= limit:
        raise InvalidInput(f"parameters.max_detections: must be within 1..{limit}, got {x:.15g}")
    return int(x)


def payload_bytes(payload: ImagePayload, max_bytes: int) -> bytes:
    """The encoded image bytes of a payload (base64-decoded when needed); size-capped.

    Bytes of unknown kind (``is_base64 is None``) are base64 text when they consist of base64
    characters only (:func:`predictor.protocol.base64text.is_base64_text`), else the image file (the
    decoder then says what is wrong).
    """
    if payload.is_base64 is None:
        data = payload.data
        is_text = len(data) <= base64text.max_base64_chars(max_bytes) and base64text.is_base64_text(data)  # type: ignore[arg-type]
        return decode_base64(data, max_bytes) if is_text else data  # type: ignore[return-value]
    if payload.is_base64:
        return decode_base64(payload.data, max_bytes)
    return payload.data  # type: ignore[return-value]


# --------------------------------------------------------------------------------------- responses
class ResponseDetections(NamedTuple):
    """What a V1 or V2 response is encoded from: the detections of one request's images (numpy rows
    of :meth:`predictor.ssd.Detector.run_batch`), padded along ``D``.

    Attributes:
      boxes: float32 ``[n, D, 4]`` pixel ``(xmin, ymin, xmax, ymax)`` of the original image.
      scores: float32 ``[n, D]``, descending within each image.
      classes: int32 ``[n, D]`` class ids (``>= 1``; 0 is background).
      num_detections: int32 ``[n]``; rows ``>= num_detections[i]`` are padding.
    """

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    num_detections: np.ndarray


def encode_v1(dets: ResponseDetections, class_names: Sequence[str]) -> bytes:
    """V1 JSON ``{"predictions": [[{label, class_id, score, xmin, ymin, xmax, ymax}, ...], ...]}``.

    One list per instance, sorted by score; rounded as
    :func:`predictor.protocol.detections.detection_records` rounds. Masking and rounding are vectorised;
    the only per-box Python work is creating the dicts the format requires.
    """
    num = dets.num_detections.astype(np.int64)
    mask = np.arange(dets.scores.shape[1])[None, :] < num[:, None]
    classes = dets.classes[mask].tolist()
    names = list(class_names)
    records = detection_records([names[c] for c in classes], classes, dets.scores[mask], dets.boxes[mask])
    ends = np.cumsum(num).tolist()
    starts = [0, *ends[:-1]]
    return orjson.dumps(v1_response([records[a:b] for a, b in zip(starts, ends, strict=True)]))


class _JsonOutput(InferOutput):
    """InferOutput whose JSON data comes from one ``ndarray.tolist()`` (KServe loops per element)."""

    def set_data_from_numpy(self, output_tensor: np.ndarray, binary_data: bool = True) -> None:
        if binary_data:
            super().set_data_from_numpy(output_tensor, binary_data=True)
            return
        if list(output_tensor.shape) != list(self.shape):
            raise ValueError(f"{self.name}: array shape {output_tensor.shape} != {self.shape}")
        self._raw_data = None
        if self._parameters:
            self._parameters.pop("binary_data_size", None)
        self._data = output_tensor.ravel().tolist()


def v2_arrays(
    dets: ResponseDetections, class_names: Sequence[str]
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """V2 output arrays with ``K = max(num_detections)``; rows past a count are zero / ``""``.

    Returns:
      ``(arrays, label_index)``: the outputs by name, and int ``[N, K]`` indices into
      ``[*class_names, ""]`` (what ``detection_labels`` holds).
    """
    num = dets.num_detections.astype(np.int32)
    k = int(num.max(initial=0))
    valid = np.arange(k)[None, :] < num[:, None]
    classes = np.where(valid, dets.classes[:, :k], 0).astype(np.int32)
    label_index = np.where(valid, np.clip(classes, 0, len(class_names) - 1), len(class_names))
    labels = np.asarray([*class_names, ""], dtype=object)
    arrays = {
        "num_detections": num,
        "detection_boxes": np.where(valid[..., None], dets.boxes[:, :k], 0).astype(np.float32),
        "detection_scores": np.where(valid, dets.scores[:, :k], 0).astype(np.float32),
        "detection_classes": classes,
        "detection_labels": labels[label_index],
    }
    return arrays, label_index


def encode_v2(
    dets: ResponseDetections,
    class_names: Sequence[str],
    model_name: str,
    request: InferRequest | None,
    model_version: str | None = None,
) -> InferResponse:
    """V2 response: ``num_detections`` INT32 ``[N]``, ``detection_boxes`` FP32 ``[N, K, 4]``,
    ``detection_scores`` FP32 ``[N, K]``, ``detection_classes`` INT32 ``[N, K]``, ``detection_labels``
    BYTES ``[N, K]``, and ``model_version``. gRPC answers carry every output in ``raw_output_contents``."""
    arrays, label_index = v2_arrays(dets, class_names)
    request_id = (request.id if request is not None else None) or ""
    if request is not None and request.from_grpc:
        outputs = [InferOutput(n, list(arrays[n].shape), dt) for n, dt in V2_OUTPUTS]
        raw = [tensors.serialize_tensor(arrays[n], dt) for n, dt in V2_OUTPUTS[:-1]]
        raw.append(_raw_labels(label_index, class_names))
        return InferResponse(
            request_id, model_name, outputs, model_version=model_version, raw_outputs=raw, from_grpc=True
        )
    outputs = [_JsonOutput(n, list(arrays[n].shape), dt, data=arrays[n]) for n, dt in V2_OUTPUTS]
    return InferResponse(
        request_id,
        model_name,
        outputs,
        model_version=model_version,
        requested_outputs=request.request_outputs if request is not None else None,
        use_binary_outputs=bool(request is not None and request.use_binary_outputs),
    )


def _raw_labels(label_index: np.ndarray, class_names: Sequence[str]) -> bytes:
    """V2 raw BYTES tensor of the labels (:func:`predictor.protocol.tensors.pack_bytes_elements`), built
    from a table of each label's packed bytes."""
    packed = [tensors.pack_bytes_elements([s.encode()]) for s in (*class_names, "")]
    table = np.asarray(packed, dtype=object)
    return b"".join(table[label_index].ravel().tolist())


def input_types() -> list[dict[str, Any]]:
    """V2 metadata of the input: encoded images (base64 strings over REST, raw bytes over gRPC)."""
    return [{"name": INPUT_NAME, "datatype": "BYTES", "shape": [-1]}]


def output_types() -> list[dict[str, Any]]:
    """V2 metadata of the outputs (``-1``: number of images / largest detection count)."""
    shapes = {
        "num_detections": [-1],
        "detection_boxes": [-1, -1, 4],
        "detection_scores": [-1, -1],
        "detection_classes": [-1, -1],
        "detection_labels": [-1, -1],
    }
    return [{"name": n, "datatype": dt, "shape": shapes[n]} for n, dt in V2_OUTPUTS]
