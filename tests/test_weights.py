"""Weights I/O: balancap TF1 checkpoints by name, errors naming variables, own format, SavedModel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from predictor.ssd.config import ssd300_vgg16
from predictor.ssd.detector import Detector
from predictor.ssd.network import build_network
from predictor.ssd.weights import ModelLoadError, load_balancap_checkpoint, load_model, save_model_dir

# Variable list of balancap's ssd_300_vgg checkpoint (ssd-spec.md section 1.7), written out by hand.
_CONVS = [
    ("conv1/conv1_1", 3, 3, 64), ("conv1/conv1_2", 3, 64, 64),
    ("conv2/conv2_1", 3, 64, 128), ("conv2/conv2_2", 3, 128, 128),
    ("conv3/conv3_1", 3, 128, 256), ("conv3/conv3_2", 3, 256, 256), ("conv3/conv3_3", 3, 256, 256),
    ("conv4/conv4_1", 3, 256, 512), ("conv4/conv4_2", 3, 512, 512), ("conv4/conv4_3", 3, 512, 512),
    ("conv5/conv5_1", 3, 512, 512), ("conv5/conv5_2", 3, 512, 512), ("conv5/conv5_3", 3, 512, 512),
    ("conv6", 3, 512, 1024), ("conv7", 1, 1024, 1024),
    ("block8/conv1x1", 1, 1024, 256), ("block8/conv3x3", 3, 256, 512),
    ("block9/conv1x1", 1, 512, 128), ("block9/conv3x3", 3, 128, 256),
    ("block10/conv1x1", 1, 256, 128), ("block10/conv3x3", 3, 128, 256),
    ("block11/conv1x1", 1, 256, 128), ("block11/conv3x3", 3, 128, 256),
    ("block4_box/conv_loc", 3, 512, 16), ("block4_box/conv_cls", 3, 512, 84),
    ("block7_box/conv_loc", 3, 1024, 24), ("block7_box/conv_cls", 3, 1024, 126),
    ("block8_box/conv_loc", 3, 512, 24), ("block8_box/conv_cls", 3, 512, 126),
    ("block9_box/conv_loc", 3, 256, 24), ("block9_box/conv_cls", 3, 256, 126),
    ("block10_box/conv_loc", 3, 256, 16), ("block10_box/conv_cls", 3, 256, 84),
    ("block11_box/conv_loc", 3, 256, 16), ("block11_box/conv_cls", 3, 256, 84),
]  # fmt: skip


def balancap_variables(seed: int = 0) -> dict[str, np.ndarray]:
    """Random values under balancap's exact names (He-scaled so activations stay finite)."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for scope, k, cin, cout in _CONVS:
        std = np.sqrt(2.0 / (k * k * cin))
        out[f"ssd_300_vgg/{scope}/weights"] = rng.normal(0, std, (k, k, cin, cout)).astype(np.float32)
        out[f"ssd_300_vgg/{scope}/biases"] = rng.normal(0, 0.01, (cout,)).astype(np.float32)
    out["ssd_300_vgg/block4_box/L2Normalization/gamma"] = rng.uniform(10, 30, (512,)).astype(np.float32)
    return out


def write_tf1_checkpoint(values: dict[str, np.ndarray], prefix: Path) -> str:
    """Write a checkpoint the way balancap's caffe_to_tensorflow.py does: TF1 graph + Saver (V2 format)."""
    graph = tf.Graph()
    with graph.as_default():
        variables = [tf.compat.v1.Variable(v, name=n) for n, v in values.items()]
        variables.append(tf.compat.v1.train.get_or_create_global_step())
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            return saver.save(sess, str(prefix), write_meta_graph=False)


@pytest.fixture(scope="module")
def balancap_ckpt(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    values = balancap_variables()
    d = tmp_path_factory.mktemp("balancap")
    write_tf1_checkpoint(values, d / "ssd_300_vgg.ckpt")
    return d, values


def test_variable_list_matches_spec_parameter_count():
    assert len(balancap_variables()) == 71
    assert sum(v.size for v in balancap_variables().values()) == 26_285_486


def test_checkpoint_loads_by_name_and_matches_direct_assignment(balancap_ckpt):
    ckpt_dir, values = balancap_ckpt
    config, loaded = load_model(ckpt_dir)  # a directory holding ssd_300_vgg.ckpt.*
    assert config.name == "ssd_300_vgg" and config.num_classes == 21

    direct = build_network(ssd300_vgg16())
    for scope, *_ in _CONVS:
        layer = direct.get_layer(scope.replace("/", "_") if "/" in scope and not scope.startswith("conv")
                                 else scope.split("/")[-1])  # fmt: skip
        layer.kernel.assign(values[f"ssd_300_vgg/{scope}/weights"])
        layer.bias.assign(values[f"ssd_300_vgg/{scope}/biases"])
    direct.get_layer("block4_box_l2norm").gamma.assign(values["ssd_300_vgg/block4_box/L2Normalization/gamma"])

    x = np.random.default_rng(1).uniform(-120, 130, (2, 300, 300, 3)).astype(np.float32)
    a, b = loaded(x, training=False), direct(x, training=False)
    np.testing.assert_array_equal(a["loc"].numpy(), b["loc"].numpy())
    np.testing.assert_array_equal(a["logits"].numpy(), b["logits"].numpy())
    assert np.isfinite(a["logits"].numpy()).all()


def test_checkpoint_prefix_also_accepted(balancap_ckpt):
    ckpt_dir, _ = balancap_ckpt
    model = build_network(ssd300_vgg16())
    assert load_balancap_checkpoint(model, ssd300_vgg16(), ckpt_dir / "ssd_300_vgg.ckpt") == 71


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda v: v.pop("ssd_300_vgg/conv6/biases"), "lacks variable ssd_300_vgg/conv6/biases"),
        (
            lambda v: v.__setitem__(
                "ssd_300_vgg/block7_box/conv_cls/weights", np.zeros((3, 3, 1024, 84), np.float32)
            ),
            "ssd_300_vgg/block7_box/conv_cls/weights has shape [3, 3, 1024, 84]",
        ),
        (
            lambda v: v.__setitem__("ssd_300_vgg/extra/weights", np.zeros(3, np.float32)),
            "unexpected variable ssd_300_vgg/extra/weights",
        ),
    ],
    ids=["missing", "wrong-shape", "unexpected"],
)
def test_checkpoint_errors_name_the_variable(tmp_path, mutate, message):
    values = balancap_variables()
    mutate(values)
    write_tf1_checkpoint(values, tmp_path / "ssd_300_vgg.ckpt")
    with pytest.raises(ModelLoadError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_model(tmp_path)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda d: None, "neither model.yaml nor a TF checkpoint"),
        (
            lambda d: (d / "model.yaml").write_text("format: something-else\n"),
            "is not a ssd-predictor/v1 manifest",
        ),
        (lambda d: (d / "model.yaml").write_text(": : [\n"), "cannot read model manifest"),
    ],
    ids=["empty", "foreign-manifest", "bad-yaml"],
)
def test_bad_model_dirs(tmp_path, setup, message):
    setup(tmp_path)
    with pytest.raises(ModelLoadError, match=message):
        load_model(tmp_path)


def test_missing_path(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "nope")


class _Payload:
    """Unpickling this would create ``path`` (what a malicious pickle in weights.npz would do)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickled_arrays_in_weights_are_refused_unrun(random_tiny_model_dir, tmp_path):
    """weights.npz is read with allow_pickle=False: an object array (a pickle) is refused and never run."""
    (tmp_path / "model.yaml").write_bytes((random_tiny_model_dir / "model.yaml").read_bytes())
    with np.load(random_tiny_model_dir / "weights.npz") as data:
        arrays = {k: data[k] for k in data.files}
    first = next(iter(arrays))
    marker = tmp_path / "pwned"
    arrays[first] = np.array([_Payload(str(marker))], dtype=object)
    np.savez(tmp_path / "weights.npz", **arrays)
    with pytest.raises(ModelLoadError, match="allow_pickle=False"):
        load_model(tmp_path)
    assert not marker.exists()


def test_truncated_weights(random_tiny_model_dir, tmp_path):
    for f in ("model.yaml", "weights.npz"):
        (tmp_path / f).write_bytes((random_tiny_model_dir / f).read_bytes())
    data = (tmp_path / "weights.npz").read_bytes()
    (tmp_path / "weights.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="weights"):
        load_model(tmp_path)


def test_wrong_architecture_weights(random_tiny_model_dir, tmp_path):
    import yaml

    manifest = yaml.safe_load((random_tiny_model_dir / "model.yaml").read_text())
    manifest["config"]["backbone_options"]["width"] = 16
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(manifest))
    (tmp_path / "weights.npz").write_bytes((random_tiny_model_dir / "weights.npz").read_bytes())
    with pytest.raises(ModelLoadError, match="has shape"):
        load_model(tmp_path)


def test_a_backbone_option_its_builder_does_not_take_is_one_clear_error(random_tiny_model_dir, tmp_path):
    """A model.yaml naming a backbone option the builder does not know (a newer model on an older server,
    a typo) fails as ``ModelLoadError`` naming the manifest and the option, not a start-up traceback."""
    import yaml

    manifest = yaml.safe_load((random_tiny_model_dir / "model.yaml").read_text())
    manifest["config"]["backbone_options"]["top_dwn"] = True
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(manifest))
    (tmp_path / "weights.npz").write_bytes((random_tiny_model_dir / "weights.npz").read_bytes())
    with pytest.raises(ModelLoadError, match=r"model\.yaml: invalid architecture config: .*top_dwn"):
        load_model(tmp_path)


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.classes, y.classes)
        np.testing.assert_allclose(x.scores, y.scores, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(x.boxes, y.boxes, rtol=1e-5, atol=1e-3)


def test_own_format_round_trip(random_tiny_model_dir, tmp_path, shapes_images):
    det = Detector.from_dir(str(random_tiny_model_dir))
    first = det.detect(shapes_images[:3])
    assert sum(len(d.scores) for d in first) > 0
    save_model_dir(det.model, det.config, tmp_path / "copy")
    again = Detector.from_dir(str(tmp_path / "copy")).detect(shapes_images[:3])
    _assert_same(first, again)


def test_saved_model_round_trip(random_tiny_model_dir, tmp_path, shapes_images):
    import io

    from PIL import Image

    from predictor.ssd.export import export_saved_model

    det = Detector.from_dir(str(random_tiny_model_dir))
    export_saved_model(det, tmp_path / "saved")
    assert (tmp_path / "saved" / "VERSION").read_text() == det.version + "\n"  # the model's, beside the pb
    assert det.version.startswith("sha-")
    loaded = tf.saved_model.load(str(tmp_path / "saved"))
    for image in shapes_images[:2]:
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG")
        out = loaded.signatures["serving_default"](encoded_images=tf.constant([buf.getvalue()]))
        n = int(out["num_detections"][0])
        ref = det.detect([image])[0]
        assert n == len(ref.scores) > 0
        np.testing.assert_array_equal(out["detection_classes"][0, :n].numpy(), ref.classes)
        np.testing.assert_allclose(out["detection_scores"][0, :n].numpy(), ref.scores, rtol=1e-5)
        np.testing.assert_allclose(out["detection_boxes"][0, :n].numpy(), ref.boxes, atol=1e-3)
    images = np.stack([shapes_images[0], shapes_images[0]])
    out = loaded.signatures["detect_images"](images=tf.constant(images))
    assert out["num_detections"].numpy().tolist() == [n0 := len(det.detect([shapes_images[0]])[0].scores), n0]
