"""V2 (Open Inference Protocol) tensors as numpy arrays: JSON ``data``, and the raw layout that gRPC
``raw_*_contents`` and the HTTP binary data extension share.

Raw layout: numeric tensors are their elements in row-major order, little-endian; a BYTES tensor is its
elements one after another, each a uint32 little-endian length and then that many bytes. Spec: KServe
``docs/predict-api/v2/required_api.md`` (kserve/kserve) and Triton
``docs/protocol/extension_binary_data.md`` (triton-inference-server/server).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from predictor.protocol.errors import MalformedMessage
from predictor.protocol.json_body import excerpt, json_type

#: numpy dtypes (little-endian) of the numeric V2 datatypes.
NUMPY_DTYPES: dict[str, str] = {
    "BOOL": "?",
    "UINT8": "u1",
    "UINT32": "<u4",
    "INT8": "i1",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP32": "<f4",
    "FP64": "<f8",
}
#: The typed ``InferTensorContents`` field of each datatype (gRPC messages without raw contents).
GRPC_CONTENTS_FIELDS: dict[str, str] = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT32": "uint_contents",
    "INT8": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_LENGTH = struct.Struct("<I")


def pack_bytes_elements(items: Iterable[bytes]) -> bytes:
    """Raw BYTES tensor contents: each element as a uint32 little-endian length, then its bytes."""
    return b"".join(_LENGTH.pack(len(b)) + b for b in items)


def split_bytes_elements(raw: bytes | bytearray | memoryview, name: str = "input") -> list[bytes]:
    """Raw BYTES tensor contents -> its elements (the inverse of :func:`pack_bytes_elements`).

    Raises:
      MalformedMessage: ``<name>: malformed raw BYTES contents (...)`` for a truncated length or element.
    """
    view = memoryview(raw)
    items, offset = [], 0
    while offset < len(view):
        if offset + 4 > len(view):
            raise MalformedMessage(f"{name}: malformed raw BYTES contents (truncated length prefix)")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > len(view):
            raise MalformedMessage(f"{name}: malformed raw BYTES contents (element longer than the data)")
        items.append(bytes(view[offset : offset + length]))
        offset += length
    return items


def serialize_tensor(array: np.ndarray, datatype: str) -> bytes:
    """Raw contents of a tensor: little-endian values, or for BYTES ``uint32 length + bytes`` per element
    (``str`` elements as UTF-8)."""
    if datatype == "BYTES":
        return pack_bytes_elements(
            x if isinstance(x, bytes) else str(x).encode() for x in np.asarray(array, object).ravel().tolist()
        )
    return np.ascontiguousarray(array, dtype=NUMPY_DTYPES[datatype]).tobytes()


def deserialize_tensor(raw: bytes, datatype: str, shape: Iterable[int], name: str = "output") -> np.ndarray:
    """Raw contents -> array of ``shape`` (BYTES: an object array of ``bytes``).

    Raises:
      MalformedMessage: an unknown datatype, or contents that do not fill ``shape``.
    """
    dims = tuple(int(d) for d in shape)
    if datatype == "BYTES":
        values: np.ndarray = np.asarray(split_bytes_elements(raw, name), dtype=object)
    elif datatype in NUMPY_DTYPES:
        itemsize = np.dtype(NUMPY_DTYPES[datatype]).itemsize
        if len(raw) % itemsize:
            raise MalformedMessage(f"{name}: {len(raw)} bytes are not whole {datatype} values")
        values = np.frombuffer(raw, dtype=NUMPY_DTYPES[datatype])
    else:
        raise MalformedMessage(f"{name}: unsupported datatype {excerpt(datatype, 32)}")
    return _reshaped(values, dims, name)


def json_tensor(name: str, datatype: str, array: np.ndarray) -> dict[str, Any]:
    """A V2 JSON tensor ``{"name", "datatype", "shape", "data"}`` with ``data`` flattened row-major
    (BYTES elements must be ``str``, e.g. base64 text)."""
    array = np.asarray(array, dtype=object if datatype == "BYTES" else None)
    return {"name": name, "datatype": datatype, "shape": list(array.shape), "data": array.ravel().tolist()}


def array_from_json_tensor(tensor: Mapping[str, Any], field: str) -> np.ndarray:
    """A V2 JSON tensor -> array of its declared shape (BYTES: an object array of ``str``).

    Raises:
      MalformedMessage: no ``data`` (a binary tensor), an unknown datatype, or data not of its shape.
    """
    datatype, shape, data = tensor.get("datatype"), tensor.get("shape"), tensor.get("data")
    if data is None:
        raise MalformedMessage(f"{field}: no JSON data (binary tensor data is not read here)")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise MalformedMessage(f"{field}.shape: expected a list of integers, got {json_type(shape)}")
    if datatype == "BYTES":
        dtype: Any = object
    elif datatype in NUMPY_DTYPES:
        dtype = NUMPY_DTYPES[datatype]
    else:
        raise MalformedMessage(f"{field}.datatype: unsupported datatype {excerpt(datatype, 32)}")
    try:
        values = np.asarray(data, dtype=dtype)
    except (TypeError, ValueError) as e:
        raise MalformedMessage(f"{field}.data: not {datatype} values ({e})"[:300]) from None
    return _reshaped(values, tuple(shape), field)


def arrays_from_json_outputs(body: Any) -> dict[str, np.ndarray]:
    """The ``outputs`` of a V2 REST JSON response as arrays by name.

    Raises:
      MalformedMessage: no ``outputs`` list, or an output that :func:`array_from_json_tensor` refuses.
    """
    outputs = body.get("outputs") if isinstance(body, dict) else None
    if not isinstance(outputs, list):
        raise MalformedMessage(f"outputs: expected a list of tensors, got {json_type(outputs)}")
    arrays = {}
    for i, tensor in enumerate(outputs):
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise MalformedMessage(f"outputs[{i}]: expected a tensor with a name, got {excerpt(tensor)}")
        arrays[tensor["name"]] = array_from_json_tensor(tensor, f"outputs[{i}]")
    return arrays


def arrays_from_grpc_outputs(outputs: Sequence[Any], raw_contents: Sequence[bytes]) -> dict[str, np.ndarray]:
    """The outputs of a gRPC ``ModelInferResponse`` (``outputs``, ``raw_output_contents``) as arrays by
    name: from the raw contents when there are any (one per output, in order), else from each output's
    typed ``contents`` (:data:`GRPC_CONTENTS_FIELDS`).

    Raises:
      MalformedMessage: an unsupported datatype, a missing raw content, or values not of the shape.
    """
    raw = list(raw_contents)
    if raw and len(raw) != len(outputs):
        raise MalformedMessage(f"raw_output_contents: {len(raw)} for {len(outputs)} outputs")
    arrays = {}
    for i, out in enumerate(outputs):
        field = f"outputs[{i}]"
        if raw:
            arrays[out.name] = deserialize_tensor(raw[i], out.datatype, out.shape, field)
            continue
        if out.datatype not in GRPC_CONTENTS_FIELDS:
            raise MalformedMessage(f"{field}: unsupported datatype {excerpt(out.datatype, 32)}")
        values = list(getattr(out.contents, GRPC_CONTENTS_FIELDS[out.datatype]))
        dtype = object if out.datatype == "BYTES" else NUMPY_DTYPES[out.datatype]
        arrays[out.name] = _reshaped(np.asarray(values, dtype=dtype), tuple(out.shape), field)
    return arrays


def _reshaped(values: np.ndarray, shape: tuple[int, ...], field: str) -> np.ndarray:
    try:
        return values.reshape(shape)
    except ValueError:
        raise MalformedMessage(f"{field}: {values.size} values do not fill shape {list(shape)}") from None
