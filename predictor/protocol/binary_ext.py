"""V2 REST bodies (Open Inference Protocol) with Triton's binary tensor data extension, both ways.

Request body: a JSON inference header, then (optionally) binary tensor data. The
``Inference-Header-Content-Length`` HTTP header gives the JSON part's length; without it the whole body
is JSON, whatever the Content-Type (tritonclient sends none). An input whose ``parameters`` carry
``binary_data_size`` takes that many bytes of the binary part, inputs in order; a BYTES tensor's binary
data is its elements one after another, each a uint32 little-endian length and then the bytes. Binary
BYTES elements reach :mod:`predictor.serving.codecs` as bytes, untouched (no base64, no UTF-8).

Response: an output is binary when its requested output's ``parameters.binary_data`` says so, else when
the request's ``parameters.binary_data_output`` does; binary outputs follow the JSON header (same
layout, ``parameters.binary_data_size`` in the header) and the response carries
``Inference-Header-Content-Length``. Otherwise the response is plain JSON.

Spec: Triton ``docs/protocol/extension_binary_data.md`` (triton-inference-server/server); the client
side this must interoperate with: ``tritonclient/http/_utils.py`` (``_get_inference_request``) and
``tritonclient/http/_infer_result.py`` (triton-inference-server/client).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
from kserve.protocol.infer_type import InferInput, InferRequest, InferResponse, RequestedOutput

from predictor.serving.codecs import load_json
from predictor.serving.errors import InvalidInput

HEADER_LENGTH = "inference-header-content-length"
_MAX_DIM = 2**63 - 1
_NUMPY_DTYPES = {"FP32": "<f4", "FP64": "<f8", "INT32": "<i4", "INT64": "<i8", "UINT8": "u1", "BOOL": "?"}


# --------------------------------------------------------------------------------------- requests
def parse_request(
    body: bytes, header_length: str | None, model_name: str, output_names: Sequence[str]
) -> InferRequest:
    """A V2 REST body -> ``InferRequest`` (binary inputs in ``InferInput._raw_data``).

    Args:
      body: the whole HTTP body.
      header_length: the ``Inference-Header-Content-Length`` header, None when absent.
      output_names: the model's outputs (a requested output must be one of them).
    Raises:
      InvalidInput: naming the field (``inputs[0].shape``, ``outputs[1].parameters.binary_data`` ...).
    """
    json_length = _json_length(header_length, len(body))
    head = load_json(memoryview(body)[:json_length], "inference header")
    if not isinstance(head, dict):
        raise InvalidInput(f'expected a JSON object {{"inputs": [...]}}, got {_kind(head)}')
    raw_inputs = head.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput(f"inputs: expected a non-empty list of tensors, got {_kind(raw_inputs)}")
    inputs, offset = [], json_length
    for i, tensor in enumerate(raw_inputs):
        inp, size = _input(tensor, f"inputs[{i}]", body, offset)
        inputs.append(inp)
        offset += size
    if offset != len(body):
        raise InvalidInput(
            f"{len(body) - offset} bytes after the binary data of the inputs "
            f"(Inference-Header-Content-Length {json_length} + the inputs' binary_data_size "
            f"{offset - json_length} != body length {len(body)})"
        )
    request_id = head.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput(f"id: expected a string, got {_kind(request_id)}")
    parameters = _parameters(head.get("parameters"), "parameters")
    _optional_bool(parameters, "binary_data_output", "parameters")
    return InferRequest(
        model_name,
        inputs,
        request_id=request_id,
        parameters=parameters,
        request_outputs=_requested_outputs(head.get("outputs"), output_names),
    )


def _json_length(header: str | None, body_length: int) -> int:
    if header is None:
        return body_length
    text = header.strip()
    if not text.isdigit() or not text.isascii():
        raise InvalidInput(f"Inference-Header-Content-Length: expected a byte count, got {header[:32]!r}")
    value = int(text)
    if value > body_length:
        raise InvalidInput(
            f"Inference-Header-Content-Length: {value} is more than the body's {body_length} bytes"
        )
    return value


def _input(tensor: Any, field: str, body: bytes, offset: int) -> tuple[InferInput, int]:
    """One input tensor; returns it and how many bytes of binary data it took."""
    if not isinstance(tensor, dict):
        raise InvalidInput(f"{field}: expected a tensor object, got {_kind(tensor)}")
    name = _string(tensor.get("name"), f"{field}.name")
    datatype = _string(tensor.get("datatype"), f"{field}.datatype")
    shape = _shape(tensor.get("shape"), f"{field}.shape")
    parameters = _parameters(tensor.get("parameters"), f"{field}.parameters")
    size = None if parameters is None else parameters.get("binary_data_size")
    if size is None:
        if "data" not in tensor:
            raise InvalidInput(f"{field}: no data (neither data nor parameters.binary_data_size)")
        return InferInput(name, shape, datatype, data=tensor["data"], parameters=parameters), 0
    if "data" in tensor:
        raise InvalidInput(f"{field}: both data and parameters.binary_data_size are given")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise InvalidInput(f"{field}.parameters.binary_data_size: expected a byte count, got {size!r}"[:200])
    if offset + size > len(body):
        raise InvalidInput(
            f"{field}.parameters.binary_data_size: {size} bytes, but the body has "
            f"{len(body) - offset} bytes of binary data left"
        )
    inp = InferInput(name, shape, datatype, parameters=parameters)
    inp._raw_data = body[offset : offset + size]
    return inp, size


def _requested_outputs(outputs: Any, output_names: Sequence[str]) -> list[RequestedOutput] | None:
    if outputs is None:
        return None
    if not isinstance(outputs, list):
        raise InvalidInput(f"outputs: expected a list, got {_kind(outputs)}")
    requested = []
    for i, output in enumerate(outputs):
        field = f"outputs[{i}]"
        if not isinstance(output, dict):
            raise InvalidInput(f"{field}: expected an object, got {_kind(output)}")
        name = _string(output.get("name"), f"{field}.name")
        if name not in output_names:
            known = ", ".join(output_names)
            raise InvalidInput(f"{field}.name: unknown output {name[:64]!r} (known: {known})")
        parameters = _parameters(output.get("parameters"), f"{field}.parameters")
        _optional_bool(parameters, "binary_data", f"{field}.parameters")
        requested.append(RequestedOutput(name, parameters))
    return requested or None


def _string(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"{field}: expected a string, got {_kind(value)}")
    return value


def _shape(value: Any, field: str) -> list[int]:
    if not isinstance(value, list):
        raise InvalidInput(f"{field}: expected a list of integers, got {_kind(value)}")
    for i, d in enumerate(value):
        if isinstance(d, bool) or not isinstance(d, int):
            raise InvalidInput(f"{field}[{i}]: expected an integer, got {_kind(d)}")
        if not 0 <= d <= _MAX_DIM:
            raise InvalidInput(f"{field}[{i}]: must be within 0..{_MAX_DIM}, got {d}")
    return value


def _parameters(value: Any, field: str) -> dict[str, Any] | None:
    if value is not None and not isinstance(value, dict):
        raise InvalidInput(f"{field}: expected an object, got {_kind(value)}")
    return value


def _optional_bool(parameters: dict[str, Any] | None, key: str, field: str) -> None:
    if parameters and key in parameters and not isinstance(parameters[key], bool):
        raise InvalidInput(f"{field}.{key}: expected true or false, got {_kind(parameters[key])}")


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "a number"
    return names.get(type(value), type(value).__name__)


# --------------------------------------------------------------------------------------- responses
def encode_response(response: InferResponse, request: InferRequest) -> tuple[bytes, int | None]:
    """``InferResponse`` (outputs holding numpy arrays) -> ``(body, json_length)``.

    ``json_length`` is None for a plain JSON body, else the value of ``Inference-Header-Content-Length``.
    """
    default = bool((request.parameters or {}).get("binary_data_output", False))
    if request.request_outputs:
        wanted = [
            (o.name, bool((o.parameters or {}).get("binary_data", default))) for o in request.request_outputs
        ]
    else:
        wanted = [(o.name, default) for o in response.outputs]
    by_name = {o.name: o for o in response.outputs}
    tensors, chunks = [], []
    for name, binary in wanted:
        output = by_name[name]
        array = np.asarray(output.data if output.data is not None else output.as_numpy())
        tensor: dict[str, Any] = {"name": name, "datatype": output.datatype, "shape": list(array.shape)}
        if binary:
            raw = serialize_tensor(array, output.datatype)
            tensor["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            tensor["data"] = array.ravel().tolist()
        tensors.append(tensor)
    head: dict[str, Any] = {"model_name": response.model_name, "outputs": tensors}
    if response.id:
        head["id"] = response.id
    header = orjson.dumps(head, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)


def serialize_tensor(array: np.ndarray, datatype: str) -> bytes:
    """Binary data of a tensor: little-endian values, or for BYTES ``uint32 length + bytes`` per element."""
    if datatype == "BYTES":
        items = [x if isinstance(x, bytes) else str(x).encode() for x in array.ravel().tolist()]
        return b"".join(struct.pack("<I", len(b)) + b for b in items)
    return np.ascontiguousarray(array, dtype=_NUMPY_DTYPES[datatype]).tobytes()
