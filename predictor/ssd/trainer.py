"""SSD training loop: a reproducible ``tf.data`` pipeline, AdamW with warm-up + cosine decay,
checkpoints with resume at the same step, a progress bar with the loss, and (optionally) an exponential
moving average of the weights that evaluation and export use.

Data sources are sequences (``len()``, ``[i]``) of samples with ``image`` (uint8 ``[H, W, 3]``),
``boxes`` (float32 ``[G, 4]`` pixel ``(xmin, ymin, xmax, ymax)``) and ``labels`` (int32 ``[G]``,
1..C-1): :class:`predictor.datasets.shapes.ShapesDataset` or :class:`predictor.datasets.coco.CocoDataset`.
Element ``i`` of the stream is fully determined by ``(seed, i)`` (sample order and augmentation), so a
resumed run sees exactly the data an uninterrupted run would have seen.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from predictor.ssd.anchors import generate_anchors
from predictor.ssd.augment import augment
from predictor.ssd.config import SSDConfig
from predictor.ssd.loss import ssd_loss
from predictor.ssd.matching import match_anchors
from predictor.ssd.preprocess import resize_warp, subtract_means
from predictor.ssd.weights import save_model_dir

log = logging.getLogger(__name__)

#: :class:`SSDConfig` fields that only set the exported post-processing defaults: a resumed run may
#: change them (``--default-score-threshold``); every other field shapes the network.
_POSTPROCESS_FIELDS = ("score_threshold", "nms_threshold", "top_k", "max_detections")
#: The file in a work directory that records the network its checkpoints belong to.
NETWORK_FILE = "network.json"


class NetworkMismatch(ValueError):
    """The checkpoints of a work directory were written by another network than the run builds."""


def network_fields(config: SSDConfig) -> dict[str, Any]:
    """The JSON form of ``config`` without the post-processing defaults (what a resume must match)."""
    d = json.loads(json.dumps(config.to_dict()))
    for key in _POSTPROCESS_FIELDS:
        d.pop(key)
    return d


@dataclass
class TrainConfig:
    """Optimisation settings (all reproducible from ``seed``)."""

    steps: int = 3000
    batch_size: int = 32
    learning_rate: float = 2e-3
    warmup_steps: int = 200
    weight_decay: float = 5e-4
    seed: int = 0
    checkpoint_every: int = 250
    max_expand: float = 2.0
    augment: bool = True
    #: IoU at which an anchor becomes positive in matching (every object also gets its best anchor).
    match_iou: float = 0.5
    #: Decay of the exponential moving average of the weights (trainable ones and batch-norm
    #: statistics); 0 = none. With one, the averaged weights are evaluated
    #: (:meth:`Trainer.averaged_weights`) and exported.
    ema_decay: float = 0.0
    #: Weight of the smooth-L1 localisation loss against the classification loss.
    loc_weight: float = 1.0
    #: Weight of the positive anchors' cross-entropy (the object's class) against the mined negatives'.
    pos_cls_weight: float = 1.0
    #: Run the step's convolutions and matrix products in bfloat16 through oneDNN (TensorFlow's
    #: grappler pass ``auto_mixed_precision_onednn_bfloat16``); the variables, the optimiser and the
    #: exported weights stay float32. Worth it on CPUs with native bfloat16 (:func:`cpu_has_bfloat16`).
    bfloat16: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def sample_order(n: int, seed: int, position: int) -> int:
    """Index of the sample at stream ``position``: a fresh permutation of ``range(n)`` every epoch."""
    epoch, offset = divmod(position, n)
    return int(_epoch_permutation(n, seed, epoch)[offset])


@functools.lru_cache(maxsize=2)
def _epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def make_dataset(
    source: Sequence,
    config: SSDConfig,
    train: TrainConfig,
    start: int = 0,
    sample_index: Callable[[int], int] | None = None,
) -> tf.data.Dataset:
    """Batches of ``(images float32 [B, S, S, 3], labels int32 [B, A], loc float32 [B, A, 4])``.

    Args:
      source: the samples. start: stream position of the first element (``step * batch_size``).
      sample_index: stream position -> sample index; default a per-epoch permutation.
    """
    n = len(source)
    index_of = sample_index or (lambda pos: sample_order(n, train.seed, pos))
    anchors = tf.constant(generate_anchors(config))
    size = config.input_size

    def gen() -> Iterator:
        pos = start
        while True:
            s = source[index_of(pos)]
            h, w = s.image.shape[:2]
            b = np.asarray(s.boxes, np.float32).reshape(-1, 4)
            norm = np.stack([b[:, 1] / h, b[:, 0] / w, b[:, 3] / h, b[:, 2] / w], axis=1)
            yield pos, s.image, norm.astype(np.float32), np.asarray(s.labels, np.int32).reshape(-1)
            pos += 1

    spec = (
        tf.TensorSpec([], tf.int64),
        tf.TensorSpec([None, None, 3], tf.uint8),
        tf.TensorSpec([None, 4], tf.float32),
        tf.TensorSpec([None], tf.int32),
    )

    def prepare(pos, image, boxes, labels):
        seed = tf.stack([tf.cast(train.seed, tf.int64), pos])
        if train.augment:
            x, boxes, labels = augment(image, boxes, labels, seed, size, config.means, train.max_expand)
        else:
            x = resize_warp(image, size)
        cls, loc, _ = match_anchors(
            boxes, labels, anchors, iou_threshold=train.match_iou, prior_scaling=config.prior_scaling
        )
        return x, cls, loc

    ds = tf.data.Dataset.from_generator(gen, output_signature=spec)
    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(train.batch_size, drop_remainder=True).prefetch(2)


class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to ``peak`` over ``warmup`` steps, then cosine decay to 1% of it at ``total``."""

    def __init__(self, peak: float, warmup: int, total: int) -> None:
        self.peak, self.warmup, self.total = peak, warmup, total

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warm = self.peak * (step + 1.0) / max(self.warmup, 1)
        progress = tf.clip_by_value((step - self.warmup) / max(self.total - self.warmup, 1), 0.0, 1.0)
        cosine = self.peak * (0.01 + 0.99 * 0.5 * (1.0 + tf.cos(math.pi * progress)))
        return tf.where(step < self.warmup, warm, cosine)

    def get_config(self) -> dict:
        return {"peak": self.peak, "warmup": self.warmup, "total": self.total}


#: /proc/cpuinfo flags of x86 CPUs that compute bfloat16 natively (AVX-512 BF16, AMX).
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_bfloat16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether this (Linux x86) CPU lists a native bfloat16 instruction set; False where unknown."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []
    )
    return any(flag in flags for flag in _BF16_FLAGS)


def use_onednn_bfloat16() -> None:
    """Let grappler run oneDNN's float32 ops in bfloat16 in every graph this process builds from now on.

    Process-wide (TensorFlow has no per-function switch): graph functions traced afterwards,
    evaluation included, compute in bfloat16 where oneDNN has a kernel.
    """
    if not cpu_has_bfloat16():
        log.warning(
            "--bfloat16: this CPU lists no native bfloat16 (%s); expect a slower step", "/".join(_BF16_FLAGS)
        )
    tf.config.optimizer.set_experimental_options({"auto_mixed_precision_onednn_bfloat16": True})


class Trainer:
    """Trains ``model`` (built from ``config``) and writes checkpoints under ``workdir/checkpoints``."""

    def __init__(self, config: SSDConfig, model: keras.Model, train: TrainConfig, workdir: str | Path):
        self.config, self.model, self.train = config, model, train
        if train.bfloat16:
            use_onednn_bfloat16()
        self.workdir = Path(workdir)
        self.optimizer = keras.optimizers.AdamW(
            learning_rate=WarmupCosine(train.learning_rate, train.warmup_steps, train.steps),
            weight_decay=train.weight_decay,
            clipnorm=10.0,
        )
        self.optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
        self.optimizer.build(model.trainable_variables)
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        tracked: dict[str, Any] = {"model": model, "optimizer": self.optimizer, "step": self.step}
        self.ema: list[tf.Variable] = []
        if train.ema_decay > 0:
            self.ema = [
                tf.Variable(v.value, trainable=False, name=f"ema_{i}")
                for i, v in enumerate(self._averaged_variables())
            ]
            tracked["ema"] = self.ema
        self.checkpoint = tf.train.Checkpoint(**tracked)
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, str(self.workdir / "checkpoints"), max_to_keep=2
        )
        self._step_fn = tf.function(self._train_step)

    def _averaged_variables(self) -> list:
        """What the moving average covers: the trainable weights, then the batch-norm statistics (the
        average of the weights needs the statistics of those weights, not of the last step's)."""
        stats = [
            v
            for layer in self.model._flatten_layers()
            if isinstance(layer, keras.layers.BatchNormalization)
            for v in (layer.moving_mean, layer.moving_variance)
        ]
        return list(self.model.trainable_variables) + stats

    def restore(self) -> int:
        """Resume from the latest checkpoint if there is one; returns the step to continue from.

        A checkpoint with a shorter moving average than this run keeps (none: a run resumed with
        ``ema_decay`` added; the trainable weights only: written before the batch-norm statistics were
        averaged) restores the entries it has, and the rest start from the restored variables, not
        from the initialisation."""
        latest = self.manager.latest_checkpoint
        if not latest:
            self._record_network(replace=True)  # a fresh start: whatever an earlier run recorded is moot
            return int(self.step)
        self._check_network()
        saved = tf.train.load_checkpoint(latest).get_variable_to_shape_map()
        kept = len({name.split("/")[1] for name in saved if name.startswith("ema/")})
        if self.ema and kept < len(self.ema):
            averaged = self._averaged_variables()
            tracked = {"model": self.model, "optimizer": self.optimizer, "step": self.step}
            if kept:
                tracked["ema"] = self.ema[:kept]
            tf.train.Checkpoint(**tracked).restore(latest).assert_existing_objects_matched()
            for avg, v in zip(self.ema[kept:], averaged[kept:], strict=True):
                avg.assign(v)
            log.info(
                "the checkpoint averages %d of %d variables; the rest start from their values",
                kept,
                len(self.ema),
            )
        else:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
        log.info("resumed from %s at step %d", latest, int(self.step))
        self._record_network()
        return int(self.step)

    def _record_network(self, replace: bool = False) -> None:
        """Write :data:`NETWORK_FILE`: on a fresh start (``replace``), or when resuming a work directory
        from before it existed."""
        path = self.workdir / NETWORK_FILE
        if replace or not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json(path, network_fields(self.config))

    def _check_network(self) -> None:
        """Refuse to resume checkpoints written by another network (e.g. ``--top-down`` or ``--width``
        flipped): their variables would be restored by position into layers they do not belong to.
        A work directory from before :data:`NETWORK_FILE` existed is resumed unchecked."""
        path = self.workdir / NETWORK_FILE
        if not path.exists():
            return
        saved, mine = json.loads(path.read_text()), network_fields(self.config)
        if saved == mine:
            return
        changed = [
            f"{key} {_short(saved.get(key))} -> {_short(mine.get(key))}"
            for key in sorted(set(saved) | set(mine))
            if saved.get(key) != mine.get(key)
        ]
        raise NetworkMismatch(
            f"{self.workdir}: its checkpoints belong to another network ({'; '.join(changed)}); "
            "resume with the architecture flags it was started with, or train into a new --out"
        )

    def _train_step(self, images, labels, loc_targets):
        with tf.GradientTape() as tape:
            out = self.model(subtract_means(images, self.config.means), training=True)
            losses = ssd_loss(
                labels,
                loc_targets,
                out["logits"],
                out["loc"],
                loc_weight=self.train.loc_weight,
                pos_cls_weight=self.train.pos_cls_weight,
            )
        variables = self.model.trainable_variables
        grads = tape.gradient(losses["loss"], variables)
        self.optimizer.apply_gradients(zip(grads, variables, strict=True))
        self.step.assign_add(1)
        if self.ema:
            # The usual warm-up of the decay: early averages do not drag in the random initialisation.
            step = tf.cast(self.step, tf.float32)
            decay = tf.minimum(self.train.ema_decay, (1.0 + step) / (10.0 + step))
            for avg, v in zip(self.ema, self._averaged_variables(), strict=True):
                avg.assign(decay * avg + (1.0 - decay) * tf.cast(v, avg.dtype))
        return losses

    @contextmanager
    def averaged_weights(self) -> Iterator[None]:
        """Inside: the model holds the moving-average weights (if the run keeps them); restored after."""
        if not self.ema:
            yield
            return
        variables = self._averaged_variables()
        live = [v.numpy() for v in variables]
        for v, avg in zip(variables, self.ema, strict=True):
            v.assign(avg)
        try:
            yield
        finally:
            for v, value in zip(variables, live, strict=True):
                v.assign(value)

    def fit(
        self,
        source: Sequence,
        progress: bool = True,
        max_steps: int | None = None,
        sample_index: Callable[[int], int] | None = None,
        after_step: Callable[[int], None] | None = None,
    ) -> list[dict[str, float]]:
        """Train until ``train.steps`` (or ``max_steps`` more steps); returns per-step losses.

        ``sample_index`` maps stream positions to samples (default: a per-epoch permutation); a
        generated source whose samples are all distinct uses the identity. ``after_step(step)`` runs
        after every step, once its checkpoint (if any) is saved (e.g. an evaluation).
        """
        start = self.restore()
        end = self.train.steps if max_steps is None else min(self.train.steps, start + max_steps)
        if start >= end:
            return []
        ds = make_dataset(
            source, self.config, self.train, start=start * self.train.batch_size, sample_index=sample_index
        )
        history: list[dict[str, float]] = []
        bar = _progress(start, end, progress)
        t0 = time.time()
        smooth = None
        for images, labels, loc in ds:
            losses = {k: float(v) for k, v in self._step_fn(images, labels, loc).items()}
            history.append(losses)
            step = int(self.step)
            smooth = losses["loss"] if smooth is None else 0.95 * smooth + 0.05 * losses["loss"]
            bar.update(1)
            bar.set_postfix(
                loss=f"{smooth:.3f}", cls=f"{losses['cls_loss']:.3f}", loc=f"{losses['loc_loss']:.3f}"
            )
            if step % self.train.checkpoint_every == 0 or step >= end:
                self.manager.save(checkpoint_number=step)
            if after_step is not None:
                after_step(step)
            if step >= end:
                break
        bar.close()
        log.info("trained steps %d..%d in %.1fs", start, end, time.time() - t0)
        return history

    def export(self, out_dir: str | Path, **extra: Any) -> Path:
        """Write the trained model (the moving-average weights, if kept) as a project model directory."""
        with self.averaged_weights():
            return save_model_dir(self.model, self.config, out_dir, training=self.train.to_dict(), **extra)


def _short(value: Any, limit: int = 80) -> str:
    """``value`` as JSON, cut to ``limit`` characters."""
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _progress(start: int, end: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=end, initial=start, disable=not enabled, unit="step", dynamic_ncols=True)


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON."""
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=True))
