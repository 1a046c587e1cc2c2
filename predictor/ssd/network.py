"""The SSD network in Keras 3 layers and ``keras.ops`` only (runs on the TensorFlow and JAX backends).

``build_network(config)`` returns a functional ``keras.Model`` mapping a mean-subtracted RGB batch
``float32 [N, S, S, 3]`` to

* ``loc``: ``float32 [N, A, 4]`` box regression ``(t_x, t_y, t_w, t_h)`` per anchor,
* ``logits``: ``float32 [N, A, C]`` class logits (index 0 = background),

with anchors flattened row-major over ``(row, col, anchor)`` and layers concatenated in config order, the
same order as :func:`predictor.ssd.anchors.generate_anchors`. Heads use the anchor-major channel layout
of balancap/Caffe: channel ``k * 4 + j`` is coordinate ``j`` of anchor ``k``. There is no dropout.

Layer names are stable: they are what :mod:`predictor.ssd.weights` maps checkpoint variables to.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
from keras import layers, ops

from predictor.ssd.config import SSDConfig


@keras.saving.register_keras_serializable(package="predictor")
class L2Normalization(layers.Layer):
    """L2-normalise every position along channels, then scale by a learned per-channel ``gamma``.

    Computed in float32 whatever the dtype policy (a sum of 512 squared activations overflows float16).
    ``epsilon`` bounds the squared norm from below, as ``tf.nn.l2_normalize`` does.
    """

    def __init__(self, scale_init: float = 20.0, epsilon: float = 1e-12, **kwargs) -> None:
        super().__init__(**kwargs)
        self.scale_init = float(scale_init)
        self.epsilon = float(epsilon)

    def build(self, input_shape) -> None:
        self.gamma = self.add_weight(
            name="gamma",
            shape=(input_shape[-1],),
            initializer=keras.initializers.Constant(self.scale_init),
            dtype="float32",
        )

    def call(self, x):
        x32 = ops.cast(x, "float32")
        sq = ops.sum(ops.square(x32), axis=-1, keepdims=True)
        y = x32 * ops.rsqrt(ops.maximum(sq, self.epsilon)) * self.gamma
        return ops.cast(y, self.compute_dtype)

    def get_config(self) -> dict:
        return {**super().get_config(), "scale_init": self.scale_init, "epsilon": self.epsilon}


class _Builder:
    """Creates named layers sharing one dtype policy and the batch-norm choice."""

    def __init__(self, dtype: str, batch_norm: bool) -> None:
        self.dtype = dtype
        self.batch_norm = batch_norm

    def conv(
        self,
        x,
        filters: int,
        kernel: int,
        name: str,
        *,
        stride: int = 1,
        padding: str = "same",
        dilation: int = 1,
        relu: bool = True,
        batch_norm: bool | None = None,
        zero_gamma: bool = False,
    ):
        """Conv (+ BN) (+ ReLU). Without BN the conv has a bias, as the balancap weights need.
        ``zero_gamma``: the BN scale starts at 0, so the block outputs zeros until trained."""
        bn = self.batch_norm if batch_norm is None else batch_norm
        x = layers.Conv2D(
            filters, kernel, strides=stride, padding=padding, dilation_rate=dilation,
            use_bias=not bn, name=name, dtype=self.dtype,
        )(x)  # fmt: skip
        if bn:
            x = layers.BatchNormalization(
                momentum=0.9,
                epsilon=1e-3,
                gamma_initializer="zeros" if zero_gamma else "ones",
                name=f"{name}_bn",
                dtype=self.dtype,
            )(x)
        if relu:
            x = layers.ReLU(name=f"{name}_relu", dtype=self.dtype)(x)
        return x

    def pool(self, x, size: int, stride: int, name: str):
        return layers.MaxPooling2D(size, strides=stride, padding="same", name=name, dtype=self.dtype)(x)


def vgg16_backbone(x, b: _Builder) -> dict:
    """VGG16 as in balancap's SSD: conv1..conv5, pool5 3x3/1, dilated conv6, conv7; no batch norm.

    End points: ``block4`` (conv4_3, stride 8) and ``block7`` (conv7, stride 16).
    """
    ends = {}
    for stage, (reps, ch) in enumerate(((2, 64), (2, 128), (3, 256), (3, 512), (3, 512)), start=1):
        for i in range(1, reps + 1):
            x = b.conv(x, ch, 3, f"conv{stage}_{i}", batch_norm=False)
        if stage == 4:
            ends["block4"] = x
        if stage < 5:
            x = b.pool(x, 2, 2, f"pool{stage}")
    x = b.pool(x, 3, 1, "pool5")
    x = b.conv(x, 1024, 3, "conv6", dilation=6, batch_norm=False)
    x = b.conv(x, 1024, 1, "conv7", batch_norm=False)
    ends["block7"] = x
    return ends


def tiny_backbone(x, b: _Builder, width: int = 32, top_down: bool = False) -> dict:
    """A small batch-normalised plain-conv backbone for the demo model.

    300 -> 150 (stem) -> 75 (stage1) -> 38 (stage2, stage3 end point) -> 19 (stage4 end point).
    ``top_down``: the stage3 end point also gets stage4's deeper features (a 1x1 conv to stage3's
    channels and BN, no ReLU, nearest 2x upsampling cropped to 38 x 38, added): the smallest anchors
    classify with more context (FPN-style; +0.6% MACs at width 32, none in the other end points). Its BN
    scale starts at 0: the added branch starts as zeros, so a model started from one without it
    (``--init-from``) starts from that model's outputs; the branch is linear because a ReLU after a
    zero output passes no gradient (its scale, shift and kernel would never train).
    """
    x = b.conv(x, width // 2, 3, "stem", stride=2)
    x = b.conv(x, width, 3, "stage1_1", stride=2)
    x = b.conv(x, width, 3, "stage1_2")
    x = b.conv(x, 2 * width, 3, "stage2_1", stride=2)
    x = b.conv(x, 2 * width, 3, "stage2_2")
    x = b.conv(x, 2 * width, 3, "stage3_1")
    x = b.conv(x, 2 * width, 3, "stage3_2")
    ends = {"stage3": x}
    x = b.conv(x, 4 * width, 3, "stage4_1", stride=2)
    x = b.conv(x, 4 * width, 3, "stage4_2")
    x = b.conv(x, 4 * width, 3, "stage4_3")
    ends["stage4"] = x
    if top_down:
        up = b.conv(x, 2 * width, 1, "stage3_topdown", relu=False, zero_gamma=True)  # linear, as FPN's
        up = layers.UpSampling2D(2, name="stage3_topdown_up", dtype=b.dtype)(up)
        size = ends["stage3"].shape[1]
        up = layers.Cropping2D(((0, 2 * x.shape[1] - size),) * 2, name="stage3_topdown_crop", dtype=b.dtype)(
            up
        )
        ends["stage3"] = layers.Add(name="stage3_topdown_add", dtype=b.dtype)([ends["stage3"], up])
    return ends


#: Backbone builders by name: ``fn(x, builder, **config.backbone_options) -> {end point: tensor}``.
BACKBONES: dict[str, Callable[..., dict]] = {"vgg16": vgg16_backbone, "tiny": tiny_backbone}


def build_network(config: SSDConfig, dtype: str = "float32") -> keras.Model:
    """Build the SSD network of ``config``.

    Args:
      config: the architecture.
      dtype: Keras dtype policy: ``float32``, ``mixed_float16`` or ``mixed_bfloat16``. Outputs are float32.
    Returns:
      ``keras.Model``: ``[N, S, S, 3]`` mean-subtracted RGB -> ``(loc [N, A, 4], logits [N, A, C])``.
    """
    if config.backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {config.backbone!r}; known: {sorted(BACKBONES)}")
    b = _Builder(dtype, config.batch_norm)
    s = config.input_size
    inputs = keras.Input((s, s, 3), name="images", dtype="float32")
    ends = BACKBONES[config.backbone](inputs, b, **config.backbone_options)
    x = list(ends.values())[-1]
    for blk in config.extra_blocks:
        x = b.conv(x, blk.mid_channels, 1, f"{blk.name}_conv1x1")
        if blk.pad:
            x = layers.ZeroPadding2D(blk.pad, name=f"{blk.name}_pad", dtype=dtype)(x)
        x = b.conv(x, blk.out_channels, blk.kernel, f"{blk.name}_conv{blk.kernel}x{blk.kernel}",
                   stride=blk.stride, padding="valid")  # fmt: skip
        ends[blk.name] = x

    locs, logits = [], []
    for fl in config.feature_layers:
        if fl.name not in ends:
            raise ValueError(f"feature layer {fl.name!r} is not an end point; have {sorted(ends)}")
        feat = ends[fl.name]
        if tuple(feat.shape[1:3]) != (fl.size, fl.size):
            raise ValueError(f"feature layer {fl.name!r} is {feat.shape[1:3]}, config says {fl.size}")
        if fl.normalization > 0:
            feat = L2Normalization(fl.normalization, name=f"{fl.name}_box_l2norm", dtype=dtype)(feat)
        n = fl.size * fl.size * fl.num_anchors
        loc = b.conv(feat, fl.num_anchors * 4, 3, f"{fl.name}_box_conv_loc", relu=False, batch_norm=False)
        cls = b.conv(feat, fl.num_anchors * config.num_classes, 3, f"{fl.name}_box_conv_cls",
                     relu=False, batch_norm=False)  # fmt: skip
        locs.append(layers.Reshape((n, 4), name=f"{fl.name}_box_loc_flat", dtype=dtype)(loc))
        logits.append(
            layers.Reshape((n, config.num_classes), name=f"{fl.name}_box_cls_flat", dtype=dtype)(cls)
        )

    loc_all = layers.Concatenate(axis=1, name="loc", dtype="float32")(locs)
    logits_all = layers.Concatenate(axis=1, name="logits", dtype="float32")(logits)
    return keras.Model(inputs, {"loc": loc_all, "logits": logits_all}, name=config.name)


def conv_macs(model: keras.Model) -> int:
    """Multiply-accumulates per image of all Conv2D layers (one per kernel tap; bias/ReLU/pool ignored)."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D):
            kh, kw, cin, cout = layer.kernel.shape
            _, h, w, _ = layer.output.shape
            total += int(h) * int(w) * int(kh) * int(kw) * int(cin) * int(cout)
    return total
