"""The V2 gRPC inference messages the client needs, without KServe or generated code.

``ModelInferRequest``, ``ModelInferResponse`` and the messages they hold, declared field by field from
the Open Inference Protocol's ``grpc_predict_v2.proto`` (kserve/kserve, ``docs/predict-api/v2/
grpc_predict_v2.proto``; package ``inference``, service ``GRPCInferenceService``) in a descriptor pool
of their own, so they live beside KServe's generated classes of the same names in one process. Only
``protobuf`` is needed. Messages built here and KServe's are the same bytes on the wire.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

#: The gRPC method path of ``ModelInfer`` (``/<package>.<service>/<method>``).
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"

_F = descriptor_pb2.FieldDescriptorProto
_OPTIONAL, _REPEATED = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED
#: Tensor contents by field number (``InferTensorContents``).
_CONTENTS = (
    ("bool_contents", _F.TYPE_BOOL),
    ("int_contents", _F.TYPE_INT32),
    ("int64_contents", _F.TYPE_INT64),
    ("uint_contents", _F.TYPE_UINT32),
    ("uint64_contents", _F.TYPE_UINT64),
    ("fp32_contents", _F.TYPE_FLOAT),
    ("fp64_contents", _F.TYPE_DOUBLE),
    ("bytes_contents", _F.TYPE_BYTES),
)


def _field(
    message: descriptor_pb2.DescriptorProto,
    name: str,
    number: int,
    kind: int,
    label: int = _OPTIONAL,
    type_name: str | None = None,
    oneof: int | None = None,
) -> None:
    field = message.field.add(name=name, number=number, type=kind, label=label)
    if type_name:
        field.type_name = type_name
    if oneof is not None:
        field.oneof_index = oneof


def _parameters(message: descriptor_pb2.DescriptorProto, number: int) -> None:
    """``map<string, InferParameter> parameters = number;`` (a map is a repeated nested entry message)."""
    entry = message.nested_type.add(name="ParametersEntry")
    entry.options.map_entry = True
    _field(entry, "key", 1, _F.TYPE_STRING)
    _field(entry, "value", 2, _F.TYPE_MESSAGE, type_name=".inference.InferParameter")
    _field(message, "parameters", number, _F.TYPE_MESSAGE, _REPEATED, "ParametersEntry")


def _tensor(message: descriptor_pb2.DescriptorProto) -> None:
    """``name = 1, datatype = 2, shape = 3, parameters = 4, contents = 5`` of an input or output tensor."""
    _field(message, "name", 1, _F.TYPE_STRING)
    _field(message, "datatype", 2, _F.TYPE_STRING)
    _field(message, "shape", 3, _F.TYPE_INT64, _REPEATED)
    _parameters(message, 4)
    _field(message, "contents", 5, _F.TYPE_MESSAGE, type_name=".inference.InferTensorContents")


def _file() -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto(
        name="predictor/protocol/grpc_v2.proto", package="inference", syntax="proto3"
    )
    parameter = proto.message_type.add(name="InferParameter")
    parameter.oneof_decl.add(name="parameter_choice")
    _field(parameter, "bool_param", 1, _F.TYPE_BOOL, oneof=0)
    _field(parameter, "int64_param", 2, _F.TYPE_INT64, oneof=0)
    _field(parameter, "string_param", 3, _F.TYPE_STRING, oneof=0)

    contents = proto.message_type.add(name="InferTensorContents")
    for number, (name, kind) in enumerate(_CONTENTS, start=1):
        _field(contents, name, number, kind, _REPEATED)

    request = proto.message_type.add(name="ModelInferRequest")
    _field(request, "model_name", 1, _F.TYPE_STRING)
    _field(request, "model_version", 2, _F.TYPE_STRING)
    _field(request, "id", 3, _F.TYPE_STRING)
    _parameters(request, 4)
    _tensor(request.nested_type.add(name="InferInputTensor"))
    _field(request, "inputs", 5, _F.TYPE_MESSAGE, _REPEATED, "InferInputTensor")
    requested = request.nested_type.add(name="InferRequestedOutputTensor")
    _field(requested, "name", 1, _F.TYPE_STRING)
    _parameters(requested, 2)
    _field(request, "outputs", 6, _F.TYPE_MESSAGE, _REPEATED, "InferRequestedOutputTensor")
    _field(request, "raw_input_contents", 7, _F.TYPE_BYTES, _REPEATED)

    response = proto.message_type.add(name="ModelInferResponse")
    _field(response, "model_name", 1, _F.TYPE_STRING)
    _field(response, "model_version", 2, _F.TYPE_STRING)
    _field(response, "id", 3, _F.TYPE_STRING)
    _parameters(response, 4)
    _tensor(response.nested_type.add(name="InferOutputTensor"))
    _field(response, "outputs", 5, _F.TYPE_MESSAGE, _REPEATED, "InferOutputTensor")
    _field(response, "raw_output_contents", 6, _F.TYPE_BYTES, _REPEATED)
    return proto


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_file())


def _message(name: str) -> type:
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"inference.{name}"))


InferParameter = _message("InferParameter")
InferTensorContents = _message("InferTensorContents")
ModelInferRequest = _message("ModelInferRequest")
ModelInferResponse = _message("ModelInferResponse")
