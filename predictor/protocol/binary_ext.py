"""V2 REST bodies (Open Inference Protocol) with Triton's binary tensor data extension, both ways.

Request body: a JSON inference header, then (optionally) binary tensor data. The
``Inference-Header-Content-Length`` HTTP header gives the JSON part's length; without it the whole body
is JSON, whatever the Content-Type (tritonclient sends none). An input whose ``parameters`` carry
``binary_data_size`` takes that many bytes of the binary part, inputs in order; a BYTES tensor's binary
data is its elements one after another, each a uint32 little-endian length and then the bytes
(:mod:`predictor.protocol.tensors`). Binary BYTES elements are handed on as bytes, untouched (no base64,
no UTF-8).

Response: an output is binary when its requested output's ``parameters.binary_data`` says so, else when
the request's ``parameters.binary_data_output`` does; binary outputs follow the JSON header (same
layout, ``parameters.binary_data_size`` in the header) and the response carries
``Inference-Header-Content-Length``. Otherwise the response is plain JSON.

This module is the framing only (plain Python values and numpy arrays); the server builds KServe's
request objects from it in :mod:`predictor.serving.binary_ext_kserve`.

Spec: Triton ``docs/protocol/extension_binary_data.md`` (triton-inference-server/server); the client
side this must interoperate with: ``tritonclient/http/_utils.py`` (``_get_inference_request``) and
``tritonclient/http/_infer_result.py`` (triton-inference-server/client).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from predictor.protocol.errors import MalformedMessage
from predictor.protocol.json_body import json_type, load_json
from predictor.protocol.tensors import serialize_tensor

HEADER_LENGTH = "inference-header-content-length"
_MAX_DIM = 2**63 - 1


@dataclass(frozen=True)
class InputTensor:
    """One input of a request: JSON ``data``, or ``raw`` binary data (exactly one is not None)."""

    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] | None
    data: Any = None
    raw: bytes | None = None


@dataclass(frozen=True)
class RequestedOutput:
    """An entry of the request's ``outputs``: a known output name and its ``parameters``."""

    name: str
    parameters: dict[str, Any] | None


@dataclass(frozen=True)
class InferenceBody:
    """A parsed V2 REST request body."""

    inputs: list[InputTensor]
    id: str | None
    parameters: dict[str, Any] | None
    outputs: list[RequestedOutput] | None


@dataclass(frozen=True)
class OutputTensor:
    """One output of a response and whether it travels as binary data."""

    name: str
    datatype: str
    array: np.ndarray
    binary: bool


# --------------------------------------------------------------------------------------- requests
def parse_body(body: bytes, header_length: str | None, output_names: Sequence[str]) -> InferenceBody:
    """A V2 REST request body -> its inputs (binary ones as bytes), id, parameters and requested outputs.

    Args:
      body: the whole HTTP body.
      header_length: the ``Inference-Header-Content-Length`` header, None when absent.
      output_names: the model's outputs (a requested output must be one of them).
    Raises:
      MalformedMessage: naming the field (``inputs[0].shape``, ``outputs[1].parameters.binary_data`` ...).
    """
    json_length = _json_length(header_length, len(body))
    head = load_json(memoryview(body)[:json_length], "inference header")
    if not isinstance(head, dict):
        raise MalformedMessage(f'expected a JSON object {{"inputs": [...]}}, got {json_type(head)}')
    raw_inputs = head.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise MalformedMessage(f"inputs: expected a non-empty list of tensors, got {json_type(raw_inputs)}")
    inputs, offset = [], json_length
    for i, tensor in enumerate(raw_inputs):
        inp, size = _input(tensor, f"inputs[{i}]", body, offset)
        inputs.append(inp)
        offset += size
    if offset != len(body):
        raise MalformedMessage(
            f"{len(body) - offset} bytes after the binary data of the inputs "
            f"(Inference-Header-Content-Length {json_length} + the inputs' binary_data_size "
            f"{offset - json_length} != body length {len(body)})"
        )
    request_id = head.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise MalformedMessage(f"id: expected a string, got {json_type(request_id)}")
    parameters = _parameters(head.get("parameters"), "parameters")
    _optional_bool(parameters, "binary_data_output", "parameters")
    return InferenceBody(
        inputs, request_id, parameters, _requested_outputs(head.get("outputs"), output_names)
    )


def _json_length(header: str | None, body_length: int) -> int:
    if header is None:
        return body_length
    text = header.strip()
    if not text.isdigit() or not text.isascii():
        raise MalformedMessage(f"Inference-Header-Content-Length: expected a byte count, got {header[:32]!r}")
    value = int(text)
    if value > body_length:
        raise MalformedMessage(
            f"Inference-Header-Content-Length: {value} is more than the body's {body_length} bytes"
        )
    return value


def _input(tensor: Any, field: str, body: bytes, offset: int) -> tuple[InputTensor, int]:
    """One input tensor; returns it and how many bytes of binary data it took."""
    if not isinstance(tensor, dict):
        raise MalformedMessage(f"{field}: expected a tensor object, got {json_type(tensor)}")
    name = _string(tensor.get("name"), f"{field}.name")
    datatype = _string(tensor.get("datatype"), f"{field}.datatype")
    shape = _shape(tensor.get("shape"), f"{field}.shape")
    parameters = _parameters(tensor.get("parameters"), f"{field}.parameters")
    size = None if parameters is None else parameters.get("binary_data_size")
    if size is None:
        if "data" not in tensor:
            raise MalformedMessage(f"{field}: no data (neither data nor parameters.binary_data_size)")
        return InputTensor(name, datatype, shape, parameters, data=tensor["data"]), 0
    if "data" in tensor:
        raise MalformedMessage(f"{field}: both data and parameters.binary_data_size are given")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise MalformedMessage(
            f"{field}.parameters.binary_data_size: expected a byte count, got {size!r}"[:200]
        )
    if offset + size > len(body):
        raise MalformedMessage(
            f"{field}.parameters.binary_data_size: {size} bytes, but the body has "
            f"{len(body) - offset} bytes of binary data left"
        )
    return InputTensor(name, datatype, shape, parameters, raw=body[offset : offset + size]), size


def _requested_outputs(outputs: Any, output_names: Sequence[str]) -> list[RequestedOutput] | None:
    if outputs is None:
        return None
    if not isinstance(outputs, list):
        raise MalformedMessage(f"outputs: expected a list, got {json_type(outputs)}")
    requested = []
    for i, output in enumerate(outputs):
        field = f"outputs[{i}]"
        if not isinstance(output, dict):
            raise MalformedMessage(f"{field}: expected an object, got {json_type(output)}")
        name = _string(output.get("name"), f"{field}.name")
        if name not in output_names:
            known = ", ".join(output_names)
            raise MalformedMessage(f"{field}.name: unknown output {name[:64]!r} (known: {known})")
        parameters = _parameters(output.get("parameters"), f"{field}.parameters")
        _optional_bool(parameters, "binary_data", f"{field}.parameters")
        requested.append(RequestedOutput(name, parameters))
    return requested or None


def _string(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise MalformedMessage(f"{field}: expected a string, got {json_type(value)}")
    return value


def _shape(value: Any, field: str) -> list[int]:
    if not isinstance(value, list):
        raise MalformedMessage(f"{field}: expected a list of integers, got {json_type(value)}")
    for i, d in enumerate(value):
        if isinstance(d, bool) or not isinstance(d, int):
            raise MalformedMessage(f"{field}[{i}]: expected an integer, got {json_type(d)}")
        if not 0 <= d <= _MAX_DIM:
            raise MalformedMessage(f"{field}[{i}]: must be within 0..{_MAX_DIM}, got {d}")
    return value


def _parameters(value: Any, field: str) -> dict[str, Any] | None:
    if value is not None and not isinstance(value, dict):
        raise MalformedMessage(f"{field}: expected an object, got {json_type(value)}")
    return value


def _optional_bool(parameters: dict[str, Any] | None, key: str, field: str) -> None:
    if parameters and key in parameters and not isinstance(parameters[key], bool):
        raise MalformedMessage(f"{field}.{key}: expected true or false, got {json_type(parameters[key])}")


# --------------------------------------------------------------------------------------- responses
def output_selection(
    request_parameters: Mapping[str, Any] | None,
    requested: Sequence[RequestedOutput] | None,
    output_names: Sequence[str],
) -> list[tuple[str, bool]]:
    """Which outputs a response carries, in order, and whether each is binary: the requested outputs
    (``parameters.binary_data``, default the request's ``parameters.binary_data_output``), else every
    output of ``output_names`` with that default."""
    default = bool((request_parameters or {}).get("binary_data_output", False))
    if requested:
        return [(o.name, bool((o.parameters or {}).get("binary_data", default))) for o in requested]
    return [(name, default) for name in output_names]


def encode_body(
    model_name: str,
    response_id: str | None,
    outputs: Sequence[OutputTensor],
    model_version: str | None = None,
) -> tuple[bytes, int | None]:
    """A V2 REST response body (``model_version`` included when given) -> ``(body, json_length)``.

    ``json_length`` is None for a plain JSON body, else the value of ``Inference-Header-Content-Length``.
    """
    tensors, chunks = [], []
    for output in outputs:
        array = output.array
        tensor: dict[str, Any] = {
            "name": output.name,
            "datatype": output.datatype,
            "shape": list(array.shape),
        }
        if output.binary:
            raw = serialize_tensor(array, output.datatype)
            tensor["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            tensor["data"] = array.ravel().tolist()
        tensors.append(tensor)
    head: dict[str, Any] = {"model_name": model_name}
    if model_version:
        head["model_version"] = model_version
    head["outputs"] = tensors
    if response_id:
        head["id"] = response_id
    header = orjson.dumps(head, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)
