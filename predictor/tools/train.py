"""Train an SSD: ``python -m predictor.tools.train --out runs/demo``.

Data: the synthetic shapes generator (default) or any COCO-format dataset (``--coco-annotations`` +
``--coco-images``). Resumes from ``OUT/checkpoints`` when present; the final model directory is written to
``OUT/model`` (or ``--export``). ``make demo-model`` runs this with the shipped demo model's settings.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from predictor.ssd.config import ssd300_vgg16, ssd_tiny
from predictor.ssd.network import build_network
from predictor.ssd.trainer import NetworkMismatch, TrainConfig, Trainer, cpu_has_bfloat16, write_json
from predictor.ssd.weights import ModelLoadError, check_version, load_model

log = logging.getLogger("predictor.tools.train")

#: Synthetic training stream: one fresh image per training example, never repeated.
SHAPES_STREAM = 10_000_000


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m predictor.tools.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="work directory (checkpoints, logs, model)")
    p.add_argument("--export", help="where to write the final model directory (default OUT/model)")
    p.add_argument(
        "--model-version",
        help="the exported model's VERSION (served as its V2 model version); default: the weights' digest",
    )
    p.add_argument("--arch", choices=("tiny", "ssd300"), default="tiny", help="architecture to train")
    p.add_argument("--width", type=int, default=32, help="tiny backbone base width")
    p.add_argument("--init-from", help="model directory or balancap checkpoint to start from (fine-tuning)")
    p.add_argument("--coco-annotations", help="COCO annotation JSON (with --coco-images) instead of shapes")
    p.add_argument("--coco-images", help="image folder of the COCO dataset")
    defaults = TrainConfig()
    p.add_argument("--steps", type=int, default=defaults.steps)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    p.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps)
    p.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    p.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every)
    p.add_argument(
        "--seed", type=int, default=defaults.seed, help="seed of weights, data order, augmentation"
    )
    p.add_argument("--no-augment", action="store_true", help="disable augmentation")
    p.add_argument(
        "--photo-fraction",
        type=float,
        default=0.0,
        help="share of the synthetic training stream drawn in the photo-like style (0..1)",
    )
    p.add_argument(
        "--match-iou", type=float, default=defaults.match_iou, help="anchor matching IoU for a positive"
    )
    p.add_argument(
        "--ema-decay",
        type=float,
        default=defaults.ema_decay,
        help="keep a moving average of the weights with this decay (0: none); evaluated and exported",
    )
    p.add_argument(
        "--loc-weight",
        type=float,
        default=defaults.loc_weight,
        help="weight of the localisation loss against the classification loss",
    )
    p.add_argument(
        "--pos-cls-weight",
        type=float,
        default=defaults.pos_cls_weight,
        help="weight of the positive anchors' classification loss against the mined negatives'",
    )
    p.add_argument(
        "--top-down",
        action="store_true",
        help="tiny: add stage4's features into the stage3 end point (smallest anchors; +0.6%% MACs)",
    )
    p.add_argument(
        "--bfloat16",
        choices=("off", "on", "auto"),
        default="off",
        help="compute the step's convolutions in bfloat16 through oneDNN (float32 weights); auto: on "
        "where the CPU lists AVX-512 BF16 or AMX (predictor.ssd.trainer.cpu_has_bfloat16)",
    )
    p.add_argument("--max-steps", type=int, help="stop after this many steps in this run (resume later)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--eval-every",
        type=int,
        default=0,
        help="every N steps: COCO AP on --eval-count held-out shapes images, into OUT/training_curve.json",
    )
    p.add_argument("--eval-count", type=int, default=100, help="held-out images per --eval-every evaluation")
    p.add_argument(
        "--eval-photo-count",
        type=int,
        default=0,
        help="also evaluate on this many photo-like held-out images (PHOTO_EVAL_SEED) every --eval-every",
    )
    p.add_argument(
        "--default-score-threshold",
        type=float,
        help="score threshold the exported model serves with by default (the architecture's otherwise)",
    )
    return p


def _source(args: argparse.Namespace):
    if args.coco_annotations:
        from predictor.datasets.coco import CocoDataset

        if not args.coco_images:
            raise SystemExit("--coco-annotations needs --coco-images")
        ds = CocoDataset(args.coco_annotations, args.coco_images)
        return ds, tuple(ds.class_names), {"kind": "coco", "annotations": args.coco_annotations}, None
    from predictor.datasets.shapes import CLASS_NAMES, TRAIN_SEEDS, ShapesDataset

    if args.seed not in TRAIN_SEEDS:  # the held-out and validation sets live above them
        raise SystemExit(
            f"--seed {args.seed}: synthetic training seeds are {TRAIN_SEEDS.start}-{TRAIN_SEEDS.stop - 1}; "
            "larger seeds hold the held-out and validation images"
        )
    # Every position is a new generated image: no shuffling needed (identity order).
    info = {"kind": "shapes", "seed": args.seed, "photo_fraction": args.photo_fraction}
    data = ShapesDataset(args.seed, SHAPES_STREAM, photo_fraction=args.photo_fraction)
    return data, tuple(CLASS_NAMES), info, (lambda pos: pos)


def _init_weights(model: keras.Model, path: str) -> None:
    """Copy every variable whose path and shape match from ``path`` (heads of other class counts skip)."""
    _, src = load_model(path)
    src_vars = {v.path: v for v in src.weights}
    copied = skipped = 0
    for v in model.weights:
        s = src_vars.get(v.path)
        if s is not None and tuple(s.shape) == tuple(v.shape):
            v.assign(s)
            copied += 1
        else:
            skipped += 1
    log.info("initialised %d variables from %s (%d left as initialised)", copied, path, skipped)


class TrainingCurve:
    """``after_step`` hook: every ``--eval-every`` steps, COCO AP of the model being trained (its moving
    average when the run keeps one) on the first ``--eval-count`` held-out shapes images (``EVAL_SEED``)
    and, with ``--eval-photo-count``, on photo-like held-out images (``PHOTO_EVAL_SEED``, under
    ``"photo"``), kept in a JSON list (one entry per step; a resumed run replaces the entries it
    evaluates again). The model card's training-curve table is made from it (``make model-card``)."""

    def __init__(self, config: Any, trainer: Trainer, path: Path, args: argparse.Namespace) -> None:
        from predictor.datasets.shapes import CLASS_NAMES, heldout_sample

        self.config, self.trainer, self.path, self.every = config, trainer, path, args.eval_every
        self.class_names = CLASS_NAMES
        self.samples = [heldout_sample("plain", i) for i in range(args.eval_count)]
        self.photo = [heldout_sample("photo", i) for i in range(args.eval_photo_count)]
        self.points = json.loads(path.read_text()) if path.exists() else []

    def __call__(self, step: int) -> None:
        if step % self.every:
            return
        from predictor.ssd.detector import Detector
        from predictor.tools.evaluate import evaluate_detector, measured_on

        with self.trainer.averaged_weights():
            detector = Detector(self.config, self.trainer.model, max_batch_size=16)
            result = evaluate_detector(detector, self.samples, self.class_names)
            photo = evaluate_detector(detector, self.photo, self.class_names) if self.photo else None
        point: dict[str, Any] = {
            "step": step,
            "AP50": result["AP50"],
            "mAP": result["mAP"],
            "images": len(self.samples),
        }
        if photo is not None:
            point["photo"] = {"AP50": photo["AP50"], "mAP": photo["mAP"], "images": len(self.photo)}
        point["measured"] = measured_on()
        self.points = [p for p in self.points if p["step"] != step] + [point]
        write_json(self.path, sorted(self.points, key=lambda p: p["step"]))
        log.info("step %d: AP50 %.3f, mAP %.3f on %d held-out images", *list(point.values())[:4])
        if photo is not None:
            log.info("step %d: photo-like AP50 %.3f, mAP %.3f", step, photo["AP50"], photo["mAP"])


def bfloat16_wanted(choice: str, has_bfloat16: Callable[[], bool] = cpu_has_bfloat16) -> bool:
    """``--bfloat16``: ``on``, ``off``, or ``auto`` (on where the CPU computes bfloat16 natively)."""
    return choice == "on" or (choice == "auto" and has_bfloat16())


def train_config(
    args: argparse.Namespace, has_bfloat16: Callable[[], bool] = cpu_has_bfloat16
) -> TrainConfig:
    """The optimisation settings of parsed arguments (``--bfloat16 auto`` resolved on this CPU)."""
    return TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        warmup_steps=args.warmup_steps,
        weight_decay=args.weight_decay,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        augment=not args.no_augment,
        match_iou=args.match_iou,
        ema_decay=args.ema_decay,
        loc_weight=args.loc_weight,
        pos_cls_weight=args.pos_cls_weight,
        bfloat16=bfloat16_wanted(args.bfloat16, has_bfloat16),
    )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if args.model_version:
        try:
            check_version(args.model_version, "--model-version")
        except ModelLoadError as e:
            raise SystemExit(str(e)) from e
    train = train_config(args)
    if not 0.0 <= args.photo_fraction <= 1.0:
        raise SystemExit("--photo-fraction must be in [0, 1]")
    keras.utils.set_random_seed(args.seed)
    source, class_names, data_info, order = _source(args)
    if args.top_down and args.arch != "tiny":
        raise SystemExit("--top-down is an option of --arch tiny")
    tiny = args.arch == "tiny"
    config = (
        ssd_tiny(class_names, width=args.width, top_down=args.top_down) if tiny else ssd300_vgg16(class_names)
    )
    if args.default_score_threshold is not None:
        config = config.replace(score_threshold=args.default_score_threshold)
    model = build_network(config)
    if args.init_from:
        try:
            _init_weights(model, args.init_from)
        except ModelLoadError as e:
            raise SystemExit(f"--init-from: {e}") from e
    trainer = Trainer(config, model, train, args.out)
    hook = None
    if args.eval_every > 0:
        hook = TrainingCurve(config, trainer, Path(args.out) / "training_curve.json", args)
    t0 = time.time()
    progress = not args.no_progress
    try:
        trainer.fit(source, progress=progress, max_steps=args.max_steps, sample_index=order, after_step=hook)
    except NetworkMismatch as e:
        raise SystemExit(str(e)) from e
    elapsed = time.time() - t0
    if int(trainer.step) < train.steps:
        log.info("stopped at step %d of %d; run again to resume", int(trainer.step), train.steps)
        return 0
    out = Path(args.export or Path(args.out) / "model")
    info = {
        "data": data_info,
        "final_step": int(trainer.step),
        "last_run_seconds": round(elapsed, 1),
        "hardware": f"{platform.machine()} CPU x{os.cpu_count()}",
        "tensorflow": tf.__version__,
    }
    trainer.export(out, version=args.model_version, trained=info)
    write_json(Path(args.out) / "train_info.json", info)
    log.info("model written to %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
