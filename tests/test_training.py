"""Trainer pieces: matching on hand-made boxes, augmentation invariants, loss decrease, resume."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import tensorflow as tf

from predictor.ssd import boxes as box_ops
from predictor.ssd.augment import augment
from predictor.ssd.loss import ssd_loss
from predictor.ssd.matching import match_anchors
from predictor.ssd.network import build_network
from predictor.ssd.trainer import TrainConfig, Trainer, make_dataset

ANCHORS = np.array(
    [
        [0.25, 0.25, 0.5, 0.5],  # a0: corners [0, 0, .5, .5]
        [0.30, 0.25, 0.5, 0.5],  # a1: corners [.05, 0, .55, .5]  IoU with gt0 = .225/.275 = .818
        [0.75, 0.75, 0.5, 0.5],  # a2: corners [.5, .5, 1, 1]     IoU with gt1 = .09/.25 = .36
        [0.75, 0.75, 0.1, 0.1],  # a3: corners [.7, .7, .8, .8]   IoU with gt1 = .01/.09 = .11
    ],
    np.float32,
)
GT = np.array([[0.0, 0.0, 0.5, 0.5], [0.6, 0.6, 0.9, 0.9]], np.float32)


def test_matching_threshold_and_forced_best_anchor():
    labels, loc, iou = match_anchors(GT, [3, 5], ANCHORS)
    # a0 (IoU 1) and a1 (IoU .818) match gt0; a2 is gt1's best anchor (IoU .36 < .5): forced positive;
    # a3 (IoU .11) is background.
    assert labels.numpy().tolist() == [3, 3, 5, 0]
    np.testing.assert_allclose(loc[0], [0, 0, 0, 0], atol=1e-6)
    t_wh = np.log(0.3 / 0.5) / 0.2
    np.testing.assert_allclose(loc[2], [0, 0, t_wh, t_wh], atol=1e-5)
    np.testing.assert_allclose(loc[3], [0, 0, 0, 0])
    # the targets decode back to the matched ground truth
    np.testing.assert_allclose(box_ops.decode(loc[:3], ANCHORS[:3]), GT[[0, 0, 1]], atol=1e-6)
    np.testing.assert_allclose(iou[:2], [1.0, 0.225 / 0.275], atol=1e-5)


def test_matching_without_ground_truth():
    labels, loc, _ = match_anchors(np.zeros((0, 4), np.float32), np.zeros((0,), np.int32), ANCHORS)
    assert labels.numpy().tolist() == [0, 0, 0, 0] and not loc.numpy().any()


def test_hard_negative_mining_ratio():
    labels = tf.constant([[1, 0, 0, 0, 0, 0, 0, 0]])
    logits = tf.constant([[[0.0, 5.0]] * 8])  # every negative is confidently wrong
    out = ssd_loss(labels, tf.zeros([1, 8, 4]), logits, tf.zeros([1, 8, 4]))
    ce_neg = float(tf.nn.softplus(5.0))  # CE of background when logits are (0, 5)
    ce_pos = float(tf.nn.softplus(-5.0))
    # one positive -> three hardest negatives
    np.testing.assert_allclose(float(out["cls_loss"]), ce_pos + 3 * ce_neg, rtol=1e-5)
    assert float(out["num_positives"]) == 1.0


def test_positive_classification_weight_scales_only_the_positives():
    """One positive and seven negatives, all logits (0, 0): every cross-entropy is ln 2; three negatives
    are mined. Default: (1 + 3) ln 2; positives weighted 2: (2 + 3) ln 2 (still over one positive)."""
    labels = tf.constant([[1, 0, 0, 0, 0, 0, 0, 0]])
    logits = tf.zeros([1, 8, 2])
    zeros = tf.zeros([1, 8, 4])
    default = ssd_loss(labels, zeros, logits, zeros)
    weighted = ssd_loss(labels, zeros, logits, zeros, pos_cls_weight=2.0)
    np.testing.assert_allclose(float(default["cls_loss"]), 4 * np.log(2.0), rtol=1e-6)
    np.testing.assert_allclose(float(weighted["cls_loss"]), 5 * np.log(2.0), rtol=1e-6)
    np.testing.assert_allclose(float(weighted["loss"]), 5 * np.log(2.0), rtol=1e-6)  # no loc error
    assert TrainConfig().pos_cls_weight == 1.0  # v3's loss unless asked


def test_augment_keeps_boxes_valid(tiny_config):
    from predictor.datasets.shapes import generate_sample

    s = generate_sample(0, 3)
    h, w = s.image.shape[:2]
    b = s.boxes
    norm = np.stack([b[:, 1] / h, b[:, 0] / w, b[:, 3] / h, b[:, 2] / w], axis=1).astype(np.float32)
    for i in range(12):
        img, boxes, labels = augment(s.image, norm, s.labels, tf.constant([1, i]), 300, tiny_config.means)
        assert img.shape == (300, 300, 3) and img.dtype == tf.float32
        bx = boxes.numpy()
        assert ((bx >= 0) & (bx <= 1)).all()
        assert (bx[:, 2] > bx[:, 0]).all() and (bx[:, 3] > bx[:, 1]).all()
        assert len(bx) == len(labels) and set(labels.numpy()) <= set(s.labels)
    # same seed -> same result (stateless randomness)
    a = augment(s.image, norm, s.labels, tf.constant([1, 5]), 300, tiny_config.means)
    b2 = augment(s.image, norm, s.labels, tf.constant([1, 5]), 300, tiny_config.means)
    np.testing.assert_array_equal(a[0], b2[0])


@pytest.fixture(scope="module")
def samples():
    from predictor.datasets.shapes import generate_sample

    return [generate_sample(0, i) for i in range(8)]


def test_loss_decreases_on_a_tiny_batch(tiny_config, samples, tmp_path):
    import keras

    keras.utils.set_random_seed(0)
    train = TrainConfig(steps=20, batch_size=4, learning_rate=3e-3, warmup_steps=1, augment=False)
    trainer = Trainer(tiny_config, build_network(tiny_config), train, tmp_path)
    images, labels, loc = next(iter(make_dataset(samples, tiny_config, train)))
    losses = [float(trainer._step_fn(images, labels, loc)["loss"]) for _ in range(20)]
    assert losses[-1] < 0.6 * losses[0], losses


def test_checkpoint_resumes_at_the_same_step(tiny_config, samples, tmp_path):
    import keras

    train = TrainConfig(steps=4, batch_size=2, checkpoint_every=2, warmup_steps=1)
    keras.utils.set_random_seed(0)
    straight = Trainer(tiny_config, build_network(tiny_config), train, tmp_path / "a")
    straight.fit(samples, progress=False)

    keras.utils.set_random_seed(0)
    first = Trainer(tiny_config, build_network(tiny_config), train, tmp_path / "b")
    assert len(first.fit(samples, progress=False, max_steps=2)) == 2
    assert int(first.step) == 2
    keras.utils.set_random_seed(123)  # a resumed run must not depend on fresh initialisation
    second = Trainer(tiny_config, build_network(tiny_config), train, tmp_path / "b")
    assert second.restore() == 2
    assert len(second.fit(samples, progress=False)) == 2
    assert int(second.step) == 4
    for a, b in zip(straight.model.weights, second.model.weights, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5, err_msg=a.path)


def test_init_from_copies_matching_variables_and_skips_other_heads(demo_model_dir):
    """Fine-tuning start: every variable of matching path and shape copied; class heads of another
    class count keep their fresh initialisation."""
    from predictor.ssd.config import ssd_tiny
    from predictor.ssd.weights import load_model
    from predictor.tools.train import _init_weights

    model = build_network(ssd_tiny(("background", "a", "b")))
    fresh_head = model.get_layer("stage3_box_conv_cls").kernel.numpy().copy()
    _init_weights(model, str(demo_model_dir))
    _, src = load_model(demo_model_dir)
    for name in ("stem", "stage3_1", "stage4_box_conv_loc"):
        np.testing.assert_array_equal(
            model.get_layer(name).kernel.numpy(), src.get_layer(name).kernel.numpy()
        )
    np.testing.assert_array_equal(model.get_layer("stage3_box_conv_cls").kernel.numpy(), fresh_head)


def test_weight_average_by_hand_swaps_in_and_survives_resume(tiny_config, samples, tmp_path):
    """EMA with decay min(d, (1 + t) / (10 + t)) after step t, checked against the live weights step by
    step; ``averaged_weights`` puts it in the model and gives the live weights back; a checkpoint keeps
    it; export writes it."""
    import keras

    from predictor.ssd.weights import load_model

    keras.utils.set_random_seed(0)
    train = TrainConfig(
        steps=3, batch_size=2, warmup_steps=1, augment=False, ema_decay=0.5, checkpoint_every=3
    )
    trainer = Trainer(tiny_config, build_network(tiny_config), train, tmp_path / "run")
    var = trainer.model.trainable_variables[0]
    # The batch-norm statistics are averaged too, after the trainable weights.
    stat = trainer.model.get_layer("stem_bn").moving_mean
    stat_index = len(trainer.model.trainable_variables)
    assert trainer._averaged_variables()[stat_index] is stat
    expected, expected_stat = var.numpy().copy(), stat.numpy().copy()
    images, labels, loc = next(iter(make_dataset(samples, tiny_config, train)))
    for t in (1, 2, 3):
        trainer._step_fn(images, labels, loc)
        decay = min(0.5, (1 + t) / (10 + t))  # 2/11, 3/12, 4/13: all under 0.5
        expected = decay * expected + (1 - decay) * var.numpy()
        expected_stat = decay * expected_stat + (1 - decay) * stat.numpy()
    np.testing.assert_allclose(trainer.ema[0].numpy(), expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(trainer.ema[stat_index].numpy(), expected_stat, rtol=1e-5, atol=1e-7)
    assert not np.allclose(stat.numpy(), expected_stat)
    with trainer.averaged_weights():
        np.testing.assert_allclose(stat.numpy(), expected_stat, rtol=1e-5, atol=1e-7)
    live = var.numpy().copy()
    assert not np.allclose(live, expected)
    with trainer.averaged_weights():
        np.testing.assert_allclose(var.numpy(), expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(var.numpy(), live)
    trainer.manager.save(checkpoint_number=3)
    again = Trainer(tiny_config, build_network(tiny_config), train, tmp_path / "run")
    assert again.restore() == 3
    np.testing.assert_array_equal(again.ema[0].numpy(), trainer.ema[0].numpy())
    _, exported = load_model(trainer.export(tmp_path / "model"))
    got = next(v for v in exported.trainable_variables if v.path == var.path)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-7)


def test_resuming_with_an_average_added_starts_it_from_the_restored_weights(tiny_config, samples, tmp_path):
    """A run checkpointed without a moving average and resumed with one: the average starts at the
    restored (trained) weights, not at the new Trainer's random initialisation."""
    import keras

    keras.utils.set_random_seed(0)
    plain = TrainConfig(steps=2, batch_size=2, warmup_steps=1, augment=False, checkpoint_every=2)
    first = Trainer(tiny_config, build_network(tiny_config), plain, tmp_path / "run")
    first.fit(samples, progress=False)
    trained = [v.numpy() for v in first._averaged_variables()]
    averaged = TrainConfig(**{**plain.to_dict(), "steps": 4, "ema_decay": 0.9})
    again = Trainer(tiny_config, build_network(tiny_config), averaged, tmp_path / "run")
    assert not np.allclose(again.ema[0].numpy(), trained[0])
    assert again.restore() == 2
    for avg, value in zip(again.ema, trained, strict=True):
        np.testing.assert_array_equal(avg.numpy(), value)


def test_localisation_weight_reaches_the_loss(tiny_config, samples, tmp_path):
    """``loc_weight`` scales the localisation term of the step's loss: loss = cls + w * loc."""
    import keras

    keras.utils.set_random_seed(0)
    train = TrainConfig(steps=1, batch_size=2, warmup_steps=1, augment=False, loc_weight=2.5)
    trainer = Trainer(tiny_config, build_network(tiny_config), train, tmp_path / "run")
    images, labels, loc = next(iter(make_dataset(samples, tiny_config, train)))
    out = {k: float(v) for k, v in trainer._step_fn(images, labels, loc).items()}
    assert out["loc_loss"] > 0
    assert out["loss"] == pytest.approx(out["cls_loss"] + 2.5 * out["loc_loss"], rel=1e-6)


def test_positive_classification_weight_reaches_the_step(tiny_config, samples, tmp_path):
    """The step's loss is :func:`ssd_loss` with the run's ``pos_cls_weight`` on the same outputs."""
    import keras

    from predictor.ssd.preprocess import subtract_means

    keras.utils.set_random_seed(0)
    train = TrainConfig(steps=1, batch_size=2, warmup_steps=1, augment=False, pos_cls_weight=3.0)
    trainer = Trainer(tiny_config, build_network(tiny_config), train, tmp_path / "run")
    images, labels, loc = next(iter(make_dataset(samples, tiny_config, train)))
    out = trainer.model(subtract_means(images, tiny_config.means), training=True)
    want = ssd_loss(labels, loc, out["logits"], out["loc"], pos_cls_weight=3.0)
    plain = ssd_loss(labels, loc, out["logits"], out["loc"])
    got = {k: float(v) for k, v in trainer._step_fn(images, labels, loc).items()}
    assert float(want["cls_loss"]) > float(plain["cls_loss"])
    assert got["cls_loss"] == pytest.approx(float(want["cls_loss"]), rel=1e-5)


def test_top_down_stage3_adds_one_1x1_conv_and_round_trips(tiny_config, tmp_path):
    """``top_down`` (width 8): stage4 (19 x 19 x 32) -> 1x1 conv to 16 channels, upsampled and added to
    stage3 (38 x 38 x 16). Extra MACs 19 * 19 * 32 * 16 = 184,832; extra weights 32 * 16 kernel + 4 * 16
    batch-norm = 576; the outputs keep their shapes; the model directory rebuilds the same network."""
    from predictor.ssd.config import ssd_tiny
    from predictor.ssd.network import conv_macs
    from predictor.ssd.weights import load_model, save_model_dir

    fused = ssd_tiny(tiny_config.class_names, width=8, top_down=True)
    assert tiny_config.backbone_options == {"width": 8}  # v3's architecture unless asked
    plain_net, fused_net = build_network(tiny_config), build_network(fused)
    assert conv_macs(fused_net) - conv_macs(plain_net) == 19 * 19 * 32 * 16
    assert fused_net.count_params() - plain_net.count_params() == 32 * 16 + 4 * 16
    for key in ("loc", "logits"):
        assert fused_net.output[key].shape == plain_net.output[key].shape
    # The branch's BN scale starts at 0: with the plain network's weights copied in, the same outputs;
    # once the scale is 1, different ones.
    shared = {v.path: v for v in plain_net.weights}
    for v in fused_net.weights:
        if v.path in shared:
            v.assign(shared[v.path])
    x = np.random.default_rng(0).uniform(-100, 100, (1, 300, 300, 3)).astype(np.float32)
    np.testing.assert_allclose(fused_net(x)["logits"], plain_net(x)["logits"], atol=1e-5)
    bn = fused_net.get_layer("stage3_topdown_bn")
    bn.gamma.assign(np.ones(bn.gamma.shape, np.float32))
    bn.beta.assign(np.full(bn.beta.shape, 0.5, np.float32))
    assert not np.allclose(fused_net(x)["logits"], plain_net(x)["logits"], atol=1e-3)
    config, loaded = load_model(save_model_dir(fused_net, fused, tmp_path / "model"))
    assert config.backbone_options == {"width": 8, "top_down": True}
    np.testing.assert_allclose(loaded(x)["logits"], fused_net(x)["logits"], atol=1e-5)


def test_top_down_branch_trains_from_its_zero_start(tiny_config, samples, tmp_path):
    """The branch starts as zeros (BN scale 0) and still gets gradients: after one training step its BN
    scale has moved after the first step, its conv kernel after the second (once the scale is not 0);
    behind a ReLU a zero output passes no gradient, and neither would move."""
    import keras

    from predictor.ssd.config import ssd_tiny

    keras.utils.set_random_seed(0)
    fused = ssd_tiny(tiny_config.class_names, width=8, top_down=True)
    net = build_network(fused)
    kernel_before = net.get_layer("stage3_topdown").kernel.numpy().copy()
    train = TrainConfig(steps=2, batch_size=2, warmup_steps=1, augment=False, weight_decay=0.0)
    trainer = Trainer(fused, net, train, tmp_path / "run")
    trainer.fit(samples, progress=False, max_steps=1)
    assert np.abs(net.get_layer("stage3_topdown_bn").gamma.numpy()).max() > 0
    trainer.fit(samples, progress=False, max_steps=1)
    assert not np.array_equal(net.get_layer("stage3_topdown").kernel.numpy(), kernel_before)


def test_resuming_a_checkpoint_that_averaged_the_trainable_weights_only(
    tiny_config, samples, tmp_path, monkeypatch
):
    """A checkpoint written when the average covered the trainable weights only: those entries are
    restored as saved, the batch-norm statistics' entries start from the restored statistics."""
    import keras

    keras.utils.set_random_seed(0)
    train = TrainConfig(
        steps=2, batch_size=2, warmup_steps=1, augment=False, checkpoint_every=2, ema_decay=0.9
    )
    with monkeypatch.context() as m:
        m.setattr(Trainer, "_averaged_variables", lambda self: list(self.model.trainable_variables))
        old = Trainer(tiny_config, build_network(tiny_config), train, tmp_path / "run")
        old.fit(samples, progress=False)
        old_ema = [v.numpy() for v in old.ema]
    stats = [v.numpy() for v in old._averaged_variables()[len(old_ema) :]]
    again = Trainer(tiny_config, build_network(tiny_config), train, tmp_path / "run")
    assert len(again.ema) == len(old_ema) + len(stats) > len(old_ema)
    assert again.restore() == 2
    for avg, value in zip(again.ema, old_ema + stats, strict=True):
        np.testing.assert_array_equal(avg.numpy(), value)


def test_resume_refuses_checkpoints_of_another_network(tmp_path):
    """`train --top-down` on a work directory started without it is refused before any variable is
    restored (Keras restores by position: the top-down layer would shift every later one); a resume that
    changes only a post-processing default (`--default-score-threshold`) goes on."""
    from predictor.ssd.trainer import NETWORK_FILE
    from predictor.tools.train import main as train_main

    out = tmp_path / "run"
    base = ["--out", str(out), "--steps", "3", "--batch-size", "2", "--width", "8", "--warmup-steps", "1"]
    base += ["--checkpoint-every", "1", "--no-progress", "--no-augment", "--max-steps", "1"]
    assert train_main(base) == 0
    recorded = json.loads((out / NETWORK_FILE).read_text())
    assert recorded["backbone_options"] == {"width": 8} and "score_threshold" not in recorded
    with pytest.raises(
        SystemExit, match=r'backbone_options \{"width": 8\} -> \{"width": 8, "top_down": true\}'
    ):
        train_main([*base, "--top-down"])
    with pytest.raises(SystemExit, match=r"backbone_options"):
        train_main([*base, "--width", "16"])
    assert train_main([*base, "--default-score-threshold", "0.3"]) == 0
    assert sorted(p.name for p in (out / "checkpoints").glob("ckpt-*.index")) == [
        "ckpt-1.index",
        "ckpt-2.index",
    ]
    # A fresh start in the same folder (no checkpoint left) records its own network.
    shutil.rmtree(out / "checkpoints")
    assert train_main([*base, "--top-down"]) == 0
    assert json.loads((out / NETWORK_FILE).read_text())["backbone_options"] == {"width": 8, "top_down": True}


def test_random_expand_places_the_image_on_a_fill_canvas():
    from predictor.ssd.augment import random_expand

    image = np.arange(10 * 12 * 3, dtype=np.float32).reshape(10, 12, 3)
    boxes = np.array([[0.0, 0.0, 1.0, 1.0]], np.float32)
    fill = (7.5, -1.0, 200.0)
    canvas, out = random_expand(
        tf.constant(image), tf.constant(boxes), tf.constant([3, 4], tf.int64), 3.0, fill
    )
    canvas, out = canvas.numpy(), out.numpy()
    ch, cw = canvas.shape[:2]
    # The boxes say where the image went; everything else is the fill colour, channel by channel.
    top, left = round(out[0, 0] * ch), round(out[0, 1] * cw)
    np.testing.assert_allclose(out[0], [top / ch, left / cw, (top + 10) / ch, (left + 12) / cw], rtol=1e-6)
    expected = np.broadcast_to(np.array(fill, np.float32), (ch, cw, 3)).copy()
    expected[top : top + 10, left : left + 12] = image
    np.testing.assert_array_equal(canvas, expected)
    assert ch > 10 and cw > 12 and 0 < top < ch - 10  # this seed zooms out, off the corner


def test_cpu_has_bfloat16_reads_the_flags_line(tmp_path):
    from predictor.ssd.trainer import cpu_has_bfloat16

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_vnni\nbogomips\t: 1\n")
    assert not cpu_has_bfloat16(info)
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16\n")
    assert cpu_has_bfloat16(info)
    info.write_text("flags\t\t: fpu amx_tile amx_bf16\n")
    assert cpu_has_bfloat16(info)
    assert not cpu_has_bfloat16(tmp_path / "absent")


_BF16_STEP = """
import json, sys
import keras, numpy as np, tensorflow as tf
from predictor.ssd.config import ssd_tiny
from predictor.ssd.network import build_network
from predictor.ssd.trainer import TrainConfig, Trainer
keras.utils.set_random_seed(0)
config = ssd_tiny(("background", "a", "b"), width=8)
train = TrainConfig(steps=5, batch_size=2, bfloat16=sys.argv[1] == "1")
trainer = Trainer(config, build_network(config), train, sys.argv[2])
rng = np.random.default_rng(0)
images = tf.constant(rng.uniform(0, 255, (2, 300, 300, 3)).astype(np.float32))
labels = tf.constant(rng.integers(0, 3, (2, 8732)).astype(np.int32))
loc = tf.constant(rng.normal(0, 1, (2, 8732, 4)).astype(np.float32))
loss = float(trainer._step_fn(images, labels, loc)["loss"])
option = tf.config.optimizer.get_experimental_options().get("auto_mixed_precision_onednn_bfloat16", False)
print(json.dumps({"loss": loss, "option": option}))
"""


def test_bfloat16_step_computes_in_bfloat16(tmp_path):
    """The flag reaches TensorFlow (its own process: the grappler option is process-wide) and
    changes the step's arithmetic on a CPU with native bfloat16, by bfloat16's rounding only."""
    import subprocess
    import sys

    from predictor.ssd.trainer import cpu_has_bfloat16

    def step(flag: str) -> dict:
        run = subprocess.run(
            [sys.executable, "-c", _BF16_STEP, flag, str(tmp_path / flag)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert run.returncode == 0, run.stderr[-2000:]
        return json.loads(run.stdout.strip().splitlines()[-1])

    f32, bf16 = step("0"), step("1")
    assert (f32["option"], bf16["option"]) == (False, True)
    if not cpu_has_bfloat16():
        pytest.skip("this CPU computes no bfloat16 natively: grappler leaves the graph in float32")
    assert bf16["loss"] != f32["loss"]
    assert bf16["loss"] == pytest.approx(f32["loss"], rel=0.02)


def test_bfloat16_flag_auto_follows_the_cpu():
    from predictor.tools.train import bfloat16_wanted

    assert [bfloat16_wanted(c, lambda: True) for c in ("off", "on", "auto")] == [False, True, True]
    assert [bfloat16_wanted(c, lambda: False) for c in ("off", "on", "auto")] == [False, True, False]


def test_make_demo_model_runs_the_recipe_the_shipped_weights_were_trained_with():
    """``make demo-model`` (``DEMO_TRAIN_ARGS`` in mk/model.mk) trains with the settings the committed
    demo weights recorded in model.yaml (``training``; ``--bfloat16 auto`` as it resolved there)."""
    import re
    import shlex
    from pathlib import Path

    import yaml

    from predictor.tools.train import build_parser, train_config

    root = Path(__file__).resolve().parents[1]
    line = re.search(r"^DEMO_TRAIN_ARGS \?= (.*)$", (root / "mk" / "model.mk").read_text(), re.M)
    args = build_parser().parse_args(["--out", "unused", *shlex.split(line.group(1))])
    manifest = yaml.safe_load((root / "predictor" / "models" / "demo" / "model.yaml").read_text())
    shipped, trained = manifest["training"], manifest["trained"]
    assert train_config(args, lambda: shipped["bfloat16"]).to_dict() == shipped
    assert (trained["final_step"], trained["data"]["photo_fraction"]) == (args.steps, args.photo_fraction)
    # The model card's command is the same recipe.
    card = (root / "predictor" / "models" / "demo" / "MODEL_CARD.md").read_text()
    block = re.search(r"```bash\n(python -m predictor\.tools\.train .*?)```", card, re.S).group(1)
    card_args = build_parser().parse_args(shlex.split(block.replace("\\\n", " "))[3:])
    assert vars(card_args) | {"out": "unused", "export": None} == vars(args)
