"""The whole detector exported to ONNX (``ssd-export onnx|triton``) answers like the TensorFlow Detector.

ONNX Runtime runs the exported graph; the reference is :meth:`Detector.run_batch` on the same uint8 images
(resized to the network side). Agreement: the same count and classes per image, boxes within 1 px,
scores within 1e-3. Models: the shipped demo model (exported through the command line, as a Triton
repository) and a seed-style SSD300 (balancap's variable names, random weights, a TF1 checkpoint written
here and loaded like a user's).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from predictor.ssd import Detector
from predictor.ssd.onnx_export import network_input, ort_feeds, unmatched

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("tf2onnx")

SAMPLES = Path(__file__).resolve().parents[1] / "docs" / "samples"
#: ORT element types of the graph's inputs/outputs -> Triton's.
ORT_TO_TRITON = {
    "tensor(uint8)": "TYPE_UINT8",
    "tensor(float)": "TYPE_FP32",
    "tensor(int32)": "TYPE_INT32",
    "tensor(bool)": "TYPE_BOOL",
    "tensor(string)": "TYPE_STRING",
}


def sample_images() -> list[np.ndarray]:
    """The real photos of the repository's samples (the shapes JPEGs under docs/samples)."""
    paths = sorted(p for p in SAMPLES.glob("shapes-?.jpg"))
    assert len(paths) == 4
    return [np.asarray(Image.open(p).convert("RGB")) for p in paths]


def run_both(detector: Detector, session, images: np.ndarray, image_hw: np.ndarray, **controls):
    """(ORT outputs by name, TF outputs by name) for uint8 ``images`` and the same controls."""
    feeds = ort_feeds(detector, images, image_hw, **controls)
    names = [o.name for o in session.get_outputs()]
    ours = dict(zip(names, session.run(None, feeds), strict=True))
    ref = detector.run_batch(
        images.astype(np.float32),
        image_hw,
        feeds["score_threshold"],
        feeds["max_detections"],
        feeds["nms_threshold"],
        feeds["class_mask"],
    )
    return ours, ref


def assert_agree(detector: Detector, ours: dict, ref: dict) -> int:
    """Per image: the same count, and each detection of the graph paired with one of TensorFlow's of the
    same class and label, box within 1 px, score within 1e-3 (as sets: scores equal up to float rounding
    may swap ranks); padding rows empty. Returns the number of detections compared."""
    n_images = len(ref["num_detections"])
    assert ours["num_detections"].shape == (n_images,)
    np.testing.assert_array_equal(ours["num_detections"], ref["num_detections"])
    d = detector.max_detections
    assert ours["detection_boxes"].shape == (n_images, d, 4)
    assert unmatched(ours, ref) == [0] * n_images
    for i, n in enumerate(ref["num_detections"].tolist()):
        scores = ours["detection_scores"][i]
        assert (np.diff(scores[:n]) <= 0).all() and (scores[:n] > 0).all()
        labels = ours["detection_labels"][i]
        assert list(labels[:n]) == [detector.class_names[c] for c in ours["detection_classes"][i, :n]]
        assert set(labels[n:]) <= {""}
        assert not scores[n:].any() and not ours["detection_classes"][i, n:].any()
        assert not ours["detection_boxes"][i, n:].any()
    return int(ref["num_detections"].sum())


@pytest.fixture(scope="module")
def demo_repository(tmp_path_factory, demo_model_dir) -> Path:
    """A Triton repository of the demo model, written by the command line."""
    from predictor.ssd.export import main

    repo = tmp_path_factory.mktemp("triton")
    argv = ["triton", "--model_dir", str(demo_model_dir), "--out", str(repo), "--max_batch_size", "8"]
    assert main(argv) == 0
    return repo


@pytest.fixture(scope="module")
def demo(demo_repository, demo_model_dir):
    """(the TF Detector, an ORT session of the repository's graph) for the demo model."""
    session = ort.InferenceSession(
        str(demo_repository / "ssd" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    return Detector.from_dir(str(demo_model_dir)), session


@pytest.mark.parametrize(
    "batch, controls",
    [
        (1, {}),  # the model's defaults
        (3, {"score_threshold": np.float32([0.05, 0.3, 0.6]), "nms_threshold": np.float32([0.3, 0.45, 0.7])}),
        (8, {"score_threshold": 0.02, "max_detections": np.int32([0, 1, 3, 7, 100, 500, 50, 20])}),
    ],
)
def test_demo_random_images_agree(demo, batch, controls):
    detector, session = demo
    rng = np.random.default_rng(batch)
    images = rng.integers(0, 256, (batch, 300, 300, 3), dtype=np.uint8)
    hw = rng.integers(50, 2000, (batch, 2)).astype(np.float32)  # boxes in these images' pixels
    ours, ref = run_both(detector, session, images, hw, **controls)
    compared = assert_agree(detector, ours, ref)
    assert compared > 0 or batch == 1
    if "max_detections" in controls:
        assert ours["num_detections"][0] == 0 and ours["num_detections"][1] == 1


def test_demo_real_images_agree_with_class_masks_and_nms_thresholds(demo, shapes_images):
    detector, session = demo
    images, hw = network_input(sample_images() + shapes_images[:4], detector.input_size)
    ours, ref = run_both(detector, session, images, hw)
    assert assert_agree(detector, ours, ref) >= 2 * len(images)  # the trained model finds the shapes
    loose = np.float32([0.2, 0.9] * 4)  # per image: strict NMS, then hardly any
    ours, ref_loose = run_both(detector, session, images, hw, score_threshold=0.05, nms_threshold=loose)
    assert_agree(detector, ours, ref_loose)
    strict = detector.run_batch(images.astype(np.float32), hw, 0.05, None, 0.2)["num_detections"]
    assert (ref_loose["num_detections"][1::2] > strict[1::2]).all()  # the thresholds made a difference
    mask = np.ones((len(images), len(detector.class_names)), bool)
    mask[::2, 1:3] = False  # even images: no circle, no square
    mask[1::2, 3:] = False  # odd images: only circle and square
    ours, ref = run_both(detector, session, images, hw, class_mask=mask, score_threshold=0.1)
    assert assert_agree(detector, ours, ref) > 0
    for i in range(len(images)):
        found = ours["detection_classes"][i, : ours["num_detections"][i]]
        assert set(found.tolist()) <= set(np.flatnonzero(mask[i]).tolist())


def triton_model_config_pb2() -> Any:
    """tritonclient's ``model_config_pb2`` loaded on its own: importing ``tritonclient.grpc`` would register
    Triton's ``inference.*`` service messages, which clash with KServe's of the same names already loaded
    by other tests in this process (ModelConfig itself is not among KServe's)."""
    import importlib.util
    import sys

    import tritonclient

    if "tritonclient.grpc.model_config_pb2" in sys.modules:
        return sys.modules["tritonclient.grpc.model_config_pb2"]
    path = Path(tritonclient.__path__[0]) / "grpc" / "model_config_pb2.py"
    spec = importlib.util.spec_from_file_location("_triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_triton_repository_is_consistent_with_the_graph(demo_repository, demo):
    from google.protobuf import text_format

    from predictor.protocol.wire import V2_OUTPUTS

    model_config_pb2 = triton_model_config_pb2()

    detector, session = demo
    config = text_format.Parse(
        (demo_repository / "ssd" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
    )
    assert (config.name, config.backend, config.max_batch_size) == ("ssd", "onnxruntime", 8)
    assert config.HasField("dynamic_batching")
    # The outputs are the predictor's V2 outputs, in their order; the inputs the graph's, in order.
    assert [o.name for o in config.output] == [name for name, _ in V2_OUTPUTS]
    for declared, actual in ((config.input, session.get_inputs()), (config.output, session.get_outputs())):
        assert [t.name for t in declared] == [a.name for a in actual]
        for tensor, arg in zip(declared, actual, strict=True):
            assert model_config_pb2.DataType.Name(tensor.data_type) == ORT_TO_TRITON[arg.type], tensor.name
            seen_by_model = list(tensor.reshape.shape) if tensor.HasField("reshape") else list(tensor.dims)
            assert arg.shape[0] == "N" and seen_by_model == arg.shape[1:], tensor.name
    assert (demo_repository / "ssd" / "labels.txt").read_text().splitlines() == list(detector.class_names)
    # The repository's graph serves a batch of the config's largest size.
    images, hw = network_input(sample_images() * 2, detector.input_size)
    assert_agree(detector, *run_both(detector, session, images, hw))


def test_graph_uses_onnx_operators_only(demo_repository):
    import onnx

    from predictor.ssd.onnx_export import OPSET

    model = onnx.load(str(demo_repository / "ssd" / "1" / "model.onnx"))
    assert {(o.domain, o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")} == {("", OPSET)}

    def ops(graph) -> set[tuple[str, str]]:
        found = set()
        for node in graph.node:
            found.add((node.domain, node.op_type))
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    found |= ops(attr.g)
        return found

    used = ops(model.graph)
    assert {domain for domain, _ in used} <= {"", "ai.onnx"}, used
    # The seed's top-k and greedy per-class NMS (a Loop), not ONNX's NonMaxSuppression.
    assert {"TopK", "Loop", "Softmax", "Conv"} <= {op for _, op in used}
    assert "NonMaxSuppression" not in {op for _, op in used}


@pytest.fixture(scope="module")
def ssd300(tmp_path_factory):
    """A seed-style SSD300 (balancap's checkpoint layout, random weights) and its exported graph."""
    from test_weights import balancap_variables, write_tf1_checkpoint

    from predictor.ssd.onnx_export import OPSET, export_onnx

    ckpt = tmp_path_factory.mktemp("balancap")
    write_tf1_checkpoint(balancap_variables(seed=3), ckpt / "ssd_300_vgg.ckpt")
    detector = Detector.from_dir(str(ckpt), max_batch_size=4)
    exported = export_onnx(detector, ckpt / "ssd300.onnx")
    assert exported.opset == OPSET and exported.bytes > 4 * 26e6  # the float32 weights are in the file
    return detector, ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])


def test_ssd300_random_and_real_images_agree(ssd300):
    detector, session = ssd300
    assert detector.input_size == 300 and len(detector.class_names) == 21
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (2, 300, 300, 3), dtype=np.uint8)
    images, hw = network_input([*sample_images()[:2], *noise], 300)
    mask = np.ones((4, 21), bool)
    mask[1, 8:] = False
    ours, ref = run_both(
        detector,
        session,
        images,
        hw,
        score_threshold=np.float32([0.05, 0.06, 0.07, 0.3]),
        nms_threshold=np.float32([0.45, 0.3, 0.6, 0.45]),
        max_detections=np.int32([200, 200, 17, 200]),
        class_mask=mask,
    )
    assert assert_agree(detector, ours, ref) > 50
    assert ours["num_detections"][2] == 17


def test_top_down_tiny_network_exports_and_agrees(tmp_path):
    """A ``--top-down`` tiny network (width 8, random weights, the branch's batch-norm scale and shift set
    non-zero so that it changes the outputs) through ``ssd-export onnx``: ONNX Runtime's detections are
    TensorFlow's (the branch's 1x1 conv, nearest upsampling, crop and add all reach the graph)."""
    import keras

    from predictor.datasets.shapes import CLASS_NAMES
    from predictor.ssd.config import ssd_tiny
    from predictor.ssd.export import main
    from predictor.ssd.network import build_network
    from predictor.ssd.weights import save_model_dir

    keras.utils.set_random_seed(3)
    config = ssd_tiny(CLASS_NAMES, width=8, top_down=True)
    net = build_network(config)
    bn = net.get_layer("stage3_topdown_bn")
    x = np.random.default_rng(4).uniform(-100, 100, (1, 300, 300, 3)).astype(np.float32)
    without = net(x)["logits"].numpy()  # the branch starts as zeros
    bn.gamma.assign(np.full(bn.gamma.shape, 2.0, np.float32))
    bn.beta.assign(np.full(bn.beta.shape, 0.5, np.float32))
    assert not np.allclose(net(x)["logits"].numpy(), without, atol=1e-3)  # now it counts
    model_dir = save_model_dir(net, config, tmp_path / "model")
    assert main(["onnx", "--model_dir", str(model_dir), "--out", str(tmp_path / "model.onnx")]) == 0
    detector = Detector.from_dir(str(model_dir))
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (2, 300, 300, 3), dtype=np.uint8)
    hw = np.float32([[300, 300], [480, 640]])
    ours, ref = run_both(detector, session, images, hw, score_threshold=0.02)
    assert assert_agree(detector, ours, ref) > 0
