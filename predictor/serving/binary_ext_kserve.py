"""KServe's V2 request and response objects <-> V2 REST bodies with the binary tensor data extension.

The framing itself is :mod:`predictor.protocol.binary_ext` (no KServe there, the client shares it);
this module builds ``kserve.protocol.infer_type`` objects from it, and turns its
:class:`~predictor.protocol.errors.MalformedMessage` into ``InvalidInput`` (HTTP 400) with the same
message, which names the field.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from kserve.protocol.infer_type import InferInput, InferRequest, InferResponse, RequestedOutput

from predictor.protocol import binary_ext
from predictor.protocol.errors import MalformedMessage
from predictor.serving.errors import InvalidInput

HEADER_LENGTH = binary_ext.HEADER_LENGTH


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
    try:
        parsed = binary_ext.parse_body(body, header_length, output_names)
    except MalformedMessage as e:
        raise InvalidInput(str(e)) from None
    inputs = []
    for tensor in parsed.inputs:
        if tensor.raw is None:
            inp = InferInput(
                tensor.name, tensor.shape, tensor.datatype, data=tensor.data, parameters=tensor.parameters
            )
        else:
            inp = InferInput(tensor.name, tensor.shape, tensor.datatype, parameters=tensor.parameters)
            inp._raw_data = tensor.raw
        inputs.append(inp)
    requested = [RequestedOutput(o.name, o.parameters) for o in parsed.outputs or ()]
    return InferRequest(
        model_name,
        inputs,
        request_id=parsed.id,
        parameters=parsed.parameters,
        request_outputs=requested or None,
    )


def encode_response(response: InferResponse, request: InferRequest) -> tuple[bytes, int | None]:
    """``InferResponse`` (outputs holding numpy arrays) -> ``(body, json_length)``.

    ``json_length`` is None for a plain JSON body, else the value of ``Inference-Header-Content-Length``.
    """
    requested = [
        binary_ext.RequestedOutput(o.name, o.parameters) for o in request.request_outputs or ()
    ] or None
    wanted = binary_ext.output_selection(request.parameters, requested, [o.name for o in response.outputs])
    by_name = {o.name: o for o in response.outputs}
    outputs = []
    for name, binary in wanted:
        output = by_name[name]
        array = np.asarray(output.data if output.data is not None else output.as_numpy())
        outputs.append(binary_ext.OutputTensor(name, output.datatype, array, binary))
    return binary_ext.encode_body(response.model_name, response.id, outputs, response.model_version)
