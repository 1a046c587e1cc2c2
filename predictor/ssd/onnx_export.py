"""The whole detector as one ONNX graph, and a Triton model repository around it.

The graph is the :class:`~predictor.ssd.detector.Detector`'s own inference function, converted by
tf2onnx (:data:`OPSET`): mean subtraction, the network, box decoding, clipping to the image, score
threshold, class mask, top-k over all classes, greedy per-class NMS (the fixed point of
:func:`predictor.ssd.postprocess.greedy_nms_mask`, an ONNX ``Loop``), per-image caps and the labels,
on ``top_k`` candidates (the TensorFlow detector sizes them to what passed the threshold, with the same
detections; tf2onnx cannot convert those branches).
Nothing is reformulated: ONNX's ``NonMaxSuppression`` is not used (it runs NMS per class *before* a
top-k, where the seed keeps the ``top_k`` best pairs over all classes first), so the ONNX answers are
the TensorFlow answers up to float rounding.

Inputs (``N`` open; one row per image):

========================  ==========  =============  ==============================================
name                      dtype       shape          meaning
========================  ==========  =============  ==============================================
``images``                uint8       ``[N, S, S, 3]``  RGB already resized to the network side ``S``
``image_hw``              float32     ``[N, 2]``     original ``(height, width)``: boxes come back in
                                                     its pixels (pass ``(S, S)`` for the input's own)
``score_threshold``       float32     ``[N]``        minimum score, strict ``>``
``max_detections``        int32       ``[N]``        per-image cap (at most ``D``)
``nms_threshold``         float32     ``[N]``        IoU at or above which same-class boxes go
``class_mask``            bool        ``[N, C]``     allowed class ids (column 0, background, ignored)
========================  ==========  =============  ==============================================

Outputs, named like the predictor's V2 outputs (:data:`predictor.protocol.detections.V2_OUTPUTS`),
padded to ``D = max_detections`` rows: ``num_detections int32 [N]``, ``detection_boxes float32
[N, D, 4]`` pixel ``(xmin, ymin, xmax, ymax)``, ``detection_scores float32 [N, D]``,
``detection_classes int32 [N, D]``, ``detection_labels string [N, D]`` (``""`` on padding rows).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from predictor.ssd.detector import Detector
from predictor.ssd.preprocess import resize_warp_numpy, subtract_means

#: ONNX opset of the exported graph (ONNX Runtime >= 1.12; Triton's ONNX Runtime backend since 22.x).
OPSET = 17
#: Graph inputs in order: (name, dtype, shape after the batch dimension; "S" the network side, "C" the
#: number of classes).
INPUTS: tuple[tuple[str, str, tuple[int | str, ...]], ...] = (
    ("images", "uint8", ("S", "S", 3)),
    ("image_hw", "float32", (2,)),
    ("score_threshold", "float32", ()),
    ("max_detections", "int32", ()),
    ("nms_threshold", "float32", ()),
    ("class_mask", "bool", ("C",)),
)
#: Graph outputs in order (the V2 output order): (name, dtype, shape after the batch dimension; "D"
#: the detections per image).
OUTPUTS: tuple[tuple[str, str, tuple[int | str, ...]], ...] = (
    ("num_detections", "int32", ()),
    ("detection_boxes", "float32", ("D", 4)),
    ("detection_scores", "float32", ("D",)),
    ("detection_classes", "int32", ("D",)),
    ("detection_labels", "string", ("D",)),
)
_TF_DTYPES = {"uint8": tf.uint8, "float32": tf.float32, "int32": tf.int32, "bool": tf.bool}


def io_dims(spec: tuple[int | str, ...], detector: Detector) -> list[int]:
    """An :data:`INPUTS`/:data:`OUTPUTS` shape with its letters replaced by ``detector``'s sizes."""
    sizes = {"S": detector.input_size, "C": len(detector.class_names), "D": detector.max_detections}
    return [sizes[d] if isinstance(d, str) else d for d in spec]


def detector_function(detector: Detector) -> tf.types.experimental.GenericFunction:
    """The detector as one ``tf.function`` over :data:`INPUTS` returning :data:`OUTPUTS` by name.

    It calls the detector's own inference function on a shallow copy whose anchors are a NumPy array:
    tf2onnx would turn a captured tensor into a graph input, while an array (or a constant made inside
    the function) becomes a constant.
    """
    clone = copy.copy(detector)
    clone.anchors = detector.anchors.numpy()
    # Every candidate through the top_k path (postprocess's candidate_slots=()): tf2onnx 1.17 converts
    # neither tf.switch_case (_SwitchN) nor, with the shapes it needs, the branches of tf.cond.
    clone.candidate_slots = ()
    signature = [
        tf.TensorSpec([None, *io_dims(shape, detector)], _TF_DTYPES[dtype], name=name)
        for name, dtype, shape in INPUTS
    ]
    # Class 0 (background) never is a detection: padding rows carry it and get the label "".
    labels = ["", *detector.class_names[1:]]

    @tf.function(input_signature=signature)
    def detect(images, image_hw, score_threshold, max_detections, nms_threshold, class_mask):
        out = clone._infer(
            tf.cast(images, tf.float32), image_hw, score_threshold, max_detections, nms_threshold, class_mask
        )
        return {
            "num_detections": out["num_detections"],
            "detection_boxes": out["boxes"],
            "detection_scores": out["scores"],
            "detection_classes": out["classes"],
            "detection_labels": tf.gather(tf.constant(labels), out["classes"]),  # made here: not captured
        }

    return detect


@dataclass(frozen=True)
class OnnxExport:
    """What :func:`export_onnx` wrote: the file, its size, the opset, and the node count of the graph
    (the NMS loop's body not counted)."""

    path: Path
    bytes: int
    opset: int
    nodes: int


def detector_onnx(detector: Detector, opset: int = OPSET):
    """The detector as an ``onnx.ModelProto`` (inputs :data:`INPUTS`, outputs :data:`OUTPUTS`, in order)."""
    import onnx
    import tf2onnx

    fn = detector_function(detector)
    proto, _ = tf2onnx.convert.from_function(fn, input_signature=fn.input_signature, opset=opset)
    _cast_bool_eyelike(proto.graph)
    names = [i.name for i in proto.graph.input]
    if names != [name for name, _, _ in INPUTS]:  # a captured tensor would have become an input
        raise RuntimeError(f"the converted graph's inputs are {names}, not {[n for n, _, _ in INPUTS]}")
    for value in (*proto.graph.input, *proto.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = "N"  # one batch dimension for all
    order = {name: i for i, (name, _, _) in enumerate(OUTPUTS)}
    outputs = [copy.deepcopy(o) for o in sorted(proto.graph.output, key=lambda o: order[o.name])]
    del proto.graph.output[:]
    proto.graph.output.extend(outputs)
    proto.doc_string = (
        f"SSD detector {detector.config.name}: uint8 [N,{detector.input_size},{detector.input_size},3] "
        f"-> detections (top_k {detector.top_k}, up to {detector.max_detections} per image), see "
        "predictor/ssd/onnx_export.py"
    )
    onnx.checker.check_model(proto, full_check=True)
    return proto


def network_onnx(
    model: keras.Model, input_size: int, opset: int = OPSET, means: Sequence[float] | None = None
):
    """The Keras network alone as an ``onnx.ModelProto``: input ``images`` float32 ``[N, S, S, 3]``,
    outputs ``loc`` and ``logits`` as the network returns them (no post-processing). Without ``means``
    the input is mean-subtracted RGB (what ``make bench-onnx`` times against TensorFlow); with them it is
    RGB 0..255 and the graph subtracts them first, as the Detector does."""
    import tf2onnx

    spec = (tf.TensorSpec((None, input_size, input_size, 3), tf.float32, name="images"),)

    @tf.function(input_signature=spec)
    def network(x: tf.Tensor) -> dict[str, tf.Tensor]:
        out = model(x if means is None else subtract_means(x, means), training=False)
        return {"loc": out["loc"], "logits": out["logits"]}

    proto, _ = tf2onnx.convert.from_function(network, input_signature=spec, opset=opset)
    return proto


def _cast_bool_eyelike(graph) -> None:
    """Rewrite ``EyeLike(dtype=bool)`` (from ``tf.eye(k, dtype=bool)``; ONNX Runtime has no bool kernel
    for it) as ``EyeLike(dtype=float)`` + ``Cast(to=bool)``, in ``graph`` and its subgraphs."""
    from onnx import TensorProto, helper

    nodes = []
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == attr.GRAPH:
                _cast_bool_eyelike(attr.g)
        dtype = next((a for a in node.attribute if a.name == "dtype"), None)
        if node.op_type == "EyeLike" and dtype is not None and dtype.i == TensorProto.BOOL:
            dtype.i = TensorProto.FLOAT
            out = node.output[0]
            node.output[0] = f"{out}__float"
            nodes += [node, helper.make_node("Cast", [node.output[0]], [out], to=TensorProto.BOOL)]
        else:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)


def export_onnx(detector: Detector, path: str | os.PathLike, opset: int = OPSET) -> OnnxExport:
    """Write the detector's ONNX graph to ``path`` (parent folders created)."""
    proto = detector_onnx(detector, opset)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(proto.SerializeToString())
    return OnnxExport(path, path.stat().st_size, opset, len(proto.graph.node))


#: Triton data types of the graph's dtypes (model_config.proto's DataType names).
TRITON_TYPES = {
    "uint8": "TYPE_UINT8",
    "float32": "TYPE_FP32",
    "int32": "TYPE_INT32",
    "bool": "TYPE_BOOL",
    "string": "TYPE_STRING",
}


def triton_config(
    detector: Detector,
    model_name: str = "ssd",
    max_batch_size: int = 32,
    max_queue_delay_us: int = 2000,
) -> str:
    """``config.pbtxt`` of the ONNX graph for Triton's ONNX Runtime backend.

    Triton's ``dims`` leave out the batch dimension (``max_batch_size > 0``); the per-image scalars are
    ``dims: [ 1 ]`` reshaped to ``[]`` so that the graph sees ``[N]``. The dynamic batcher joins requests
    up to ``max_batch_size`` images, waiting at most ``max_queue_delay_us`` for more.
    """

    def tensor(name: str, dtype: str, shape: tuple[int | str, ...]) -> str:
        dims = io_dims(shape, detector)
        lines = [f'    name: "{name}"', f"    data_type: {TRITON_TYPES[dtype]}"]
        lines.append(f"    dims: [ {', '.join(map(str, dims or [1]))} ]")
        if not dims:
            lines.append("    reshape: { shape: [ ] }")
        return "  {\n" + "\n".join(lines) + "\n  }"

    inputs = ",\n".join(tensor(*spec) for spec in INPUTS)
    outputs = ",\n".join(tensor(*spec) for spec in OUTPUTS)
    return (
        f'name: "{model_name}"\n'
        'backend: "onnxruntime"\n'
        f"max_batch_size: {max_batch_size}\n"
        f"input [\n{inputs}\n]\n"
        f"output [\n{outputs}\n]\n"
        f"dynamic_batching {{\n  max_queue_delay_microseconds: {max_queue_delay_us}\n}}\n"
        "instance_group [ { kind: KIND_AUTO } ]\n"
    )


def write_triton_repository(
    detector: Detector,
    repository: str | os.PathLike,
    model_name: str = "ssd",
    version: int = 1,
    max_batch_size: int = 32,
    opset: int = OPSET,
) -> OnnxExport:
    """Write ``<repository>/<model_name>/config.pbtxt``, ``<version>/model.onnx`` and ``labels.txt``
    (one class name per line, line ``i`` = class id ``i``, background first)."""
    model_dir = Path(repository) / model_name
    exported = export_onnx(detector, model_dir / str(version) / "model.onnx", opset)
    (model_dir / "config.pbtxt").write_text(triton_config(detector, model_name, max_batch_size))
    (model_dir / "labels.txt").write_text("".join(f"{name}\n" for name in detector.class_names))
    return exported


def network_input(images: Sequence[np.ndarray], size: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 RGB images ``[H, W, 3]`` of any sizes -> the graph's ``images`` uint8 ``[N, S, S, 3]`` (the
    service's WARP resize, rounded to uint8) and ``image_hw`` float32 ``[N, 2]``."""
    resized = [np.clip(np.rint(resize_warp_numpy(im, size)), 0, 255).astype(np.uint8) for im in images]
    return np.stack(resized), np.asarray([im.shape[:2] for im in images], np.float32)


def unmatched(
    ours: dict[str, np.ndarray], ref: dict[str, np.ndarray], box_px: float = 1.0, score: float = 1e-3
) -> list[int]:
    """Per image, how many of the graph's detections (``ours``: :data:`OUTPUTS` by name) have no partner
    in the Detector's (``ref``: ``run_batch`` keys) of the same class, boxes within ``box_px`` pixels and
    score within ``score`` (one-to-one, greedy in score order). Detections are compared as sets, not by
    rank: two scores equal up to float rounding (~1e-6) may come out in either order. Counts are
    compared by the caller."""
    result = []
    for i, n_ref in enumerate(ref["num_detections"].tolist()):
        n = int(ours["num_detections"][i])
        free = list(range(n_ref))
        missing = 0
        for j in range(n):
            close = [
                k
                for k in free
                if ref["classes"][i, k] == ours["detection_classes"][i, j]
                and abs(ref["scores"][i, k] - ours["detection_scores"][i, j]) <= score
                and np.abs(ref["boxes"][i, k] - ours["detection_boxes"][i, j]).max() <= box_px
            ]
            if close:
                free.remove(close[0])
            else:
                missing += 1
        result.append(missing)
    return result


def ort_feeds(
    detector: Detector,
    images: np.ndarray,
    image_hw: np.ndarray | None = None,
    score_threshold: float | np.ndarray | None = None,
    max_detections: int | np.ndarray | None = None,
    nms_threshold: float | np.ndarray | None = None,
    class_mask: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The graph's input arrays for ``images`` uint8 ``[N, S, S, 3]``: scalars broadcast to ``[N]``,
    the detector's defaults where None, ``image_hw`` default ``(S, S)``, every class allowed."""
    n, s = len(images), detector.input_size
    values = {
        "images": np.asarray(images, np.uint8),
        "image_hw": np.full((n, 2), s, np.float32) if image_hw is None else image_hw,
        "score_threshold": detector.score_threshold if score_threshold is None else score_threshold,
        "max_detections": detector.max_detections if max_detections is None else max_detections,
        "nms_threshold": detector.nms_threshold if nms_threshold is None else nms_threshold,
        "class_mask": True if class_mask is None else class_mask,
    }
    feeds = {}
    for name, dtype, shape in INPUTS:
        full = (n, *io_dims(shape, detector))
        feeds[name] = np.ascontiguousarray(np.broadcast_to(np.asarray(values[name], dtype), full))
    return feeds
