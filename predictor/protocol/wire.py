"""The predictor's wire names and defaults, in one place for the server, the client, the tools and bench.

- :data:`MODEL_NAME`: the model's name in the URLs (``/v1/models/ssd:predict``, ``/v2/models/ssd/infer``)
  and in gRPC ``model_name``; the server's ``--model_name`` default, the Helm chart's and the client's.
- :data:`DEFAULT_HTTP_PORT` / :data:`DEFAULT_GRPC_PORT`: the ports a server listens on unless told
  otherwise (KServe's ``--http_port`` / ``--grpc_port`` defaults; a test checks they still agree).
- :data:`INPUT_NAME`: the V2 input's name in the model metadata (any name is accepted in requests).
- :data:`V2_OUTPUTS` / :data:`OUTPUT_NAMES`: the V2 output tensors, in order, with their datatypes.
- :data:`MODEL_VERSION_HEADER`: the REST response header / gRPC initial-metadata key naming the model
  version that answered.
"""

from __future__ import annotations

MODEL_NAME = "ssd"
DEFAULT_HTTP_PORT = 8080
DEFAULT_GRPC_PORT = 8081
#: Name of the V2 input in the model metadata (any name is accepted in requests).
INPUT_NAME = "images"
#: The V2 outputs, in order, with their datatypes.
V2_OUTPUTS: tuple[tuple[str, str], ...] = (
    ("num_detections", "INT32"),
    ("detection_boxes", "FP32"),
    ("detection_scores", "FP32"),
    ("detection_classes", "INT32"),
    ("detection_labels", "BYTES"),
)
OUTPUT_NAMES: tuple[str, ...] = tuple(name for name, _ in V2_OUTPUTS)
#: Response header (REST) / initial metadata key (gRPC) carrying the served model version.
MODEL_VERSION_HEADER = "x-model-version"
