"""Wire formats shared by the server (:mod:`predictor.serving`) and the client (:mod:`predictor.client`).

Pure helpers on bytes, JSON values and numpy arrays: nothing here imports KServe or TensorFlow, so the
client runs with numpy, Pillow, orjson, httpx (REST) and grpcio + protobuf (gRPC) alone. Malformed input
raises :class:`~predictor.protocol.errors.MalformedMessage` naming the field; the server turns it into
``InvalidInput`` (HTTP 400, gRPC INVALID_ARGUMENT).

- :mod:`~predictor.protocol.wire`: the names and defaults on the wire: model name, ports, the V2 input and
  output names.
- :mod:`~predictor.protocol.detections`: the predictor's messages: ``parameters``, the V1 detection
  records and the V2 output tensors, written by the server and read by the client.
- :mod:`~predictor.protocol.tensors`: V2 tensors <-> numpy (JSON ``data``, raw contents, BYTES framing).
- :mod:`~predictor.protocol.binary_ext`: V2 REST bodies with the binary tensor data extension.
- :mod:`~predictor.protocol.grpc_v2`: the V2 gRPC ``ModelInfer`` messages.
- :mod:`~predictor.protocol.base64text`: base64 text of images; :mod:`~predictor.protocol.json_body`:
  strict JSON parsing and the words error messages use for JSON values.
"""
