"""Choose a model's default NMS IoU threshold on validation images: ``python -m predictor.tools.tune nms``.

Each candidate threshold runs the detector (score threshold 0.01, as ``make eval``) over synthetic
**validation** images, plain (:data:`VALIDATION_SEED`) and photo-like (:data:`PHOTO_VALIDATION_SEED`):
seeds that neither training (seeds 0-999) nor the held-out sets (``EVAL_SEED``, ``PHOTO_EVAL_SEED``)
use, so choosing here leaves the held-out numbers of ``make eval`` unbiased. The candidate with the best
mean mAP@[.5:.95] of the two sets wins (a tie goes to the larger threshold, SSD's usual side), but the
model's current default stays unless the winner beats it by at least ``--min-gain`` (0.005: a few
hundred images cannot tell smaller differences from noise). The sweep is written to
``OUT/nms_sweep.json``; ``--write`` stores a changed choice as the model's default (``config.nms_threshold``
in ``model.yaml``, which serving uses when a request names none) and gives the model a new version; what
was measured with the old default is then stale (``make demo-model`` runs this step before the model
card, drift references and samples).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from predictor.datasets.shapes import CLASS_NAMES, PHOTO_VALIDATION_SEED, VALIDATION_SEED, heldout_sample
from predictor.ssd import Detector
from predictor.ssd.weights import (
    MANIFEST,
    ModelLoadError,
    check_version,
    model_version,
    weights_digest,
    write_version,
)
from predictor.tools.evaluate import EVAL_SCORE_THRESHOLD, evaluate_detector, measured_on

#: The thresholds ``tune nms`` tries unless told.
NMS_CANDIDATES = (0.25, 0.3, 0.35, 0.4, 0.45, 0.5)
#: How much mean mAP a candidate must gain over the current default to replace it.
MIN_GAIN = 0.005

log = logging.getLogger(__name__)


def choose(results: dict[float, float], current: float | None = None, min_gain: float = 0.0) -> float:
    """The candidate with the highest score (among equal scores the largest), unless ``current`` is a
    candidate and the best beats it by less than ``min_gain``: then ``current``."""
    best = max(results, key=lambda t: (results[t], t))
    if current in results and results[best] - results[current] < min_gain:
        return current
    return best


def nms_sweep(
    detector: Detector,
    samples_by_set: dict[str, Sequence],
    candidates: Sequence[float],
    min_gain: float = 0.0,
) -> dict:
    """COCO metrics of ``detector`` at each NMS IoU threshold on each set, and the chosen threshold
    (:func:`choose`, against the detector's default, which is always measured: it is added to
    ``candidates`` when missing).

    Returns ``{"candidates": [{"nms_threshold", "<set>": {"mAP", "AP50"}, "mean_mAP"}], "best", "min_gain",
    "chosen"}``.
    """
    current = detector.nms_threshold
    rows, means = [], {}
    for threshold in sorted({*map(float, candidates), current}):
        detector.nms_threshold = float(threshold)
        row: dict[str, Any] = {"nms_threshold": float(threshold)}
        maps = []
        for name, samples in samples_by_set.items():
            m = evaluate_detector(detector, samples, CLASS_NAMES, score_threshold=EVAL_SCORE_THRESHOLD)
            row[name] = {"mAP": round(m["mAP"], 4), "AP50": round(m["AP50"], 4)}
            maps.append(m["mAP"])
        means[float(threshold)] = sum(maps) / len(maps)  # chosen unrounded: no ties made by rounding
        row["mean_mAP"] = round(means[float(threshold)], 4)
        log.info("NMS %.2f: %s", threshold, row)
        rows.append(row)
    detector.nms_threshold = current
    best = max(means, key=lambda t: (means[t], t))
    return {
        "candidates": rows,
        "best": best,
        "min_gain": min_gain,
        "chosen": choose(means, current, min_gain),
    }


def _check_digest_versioned(model_dir: Path) -> None:
    """``ValueError`` unless the model's version is derived from its weights' digest (what export writes,
    or what a tuned default made of it: ``<digest>-nms<threshold>``)."""
    current, digest = model_version(model_dir), weights_digest(model_dir)
    if current != digest and not current.startswith(f"{digest}-nms"):
        raise ValueError(
            f"{model_dir} is versioned {current!r}: --write may change its default NMS threshold, which "
            "needs a new version (--version)"
        )


def write_default(model_dir: Path, threshold: float, version: str | None = None) -> str:
    """Set ``config.nms_threshold`` of ``model_dir/model.yaml`` (every other key kept, in order) and give
    the model a new version, since it now answers differently: ``version`` (taken as given: ``make
    demo-model DEMO_VERSION=...`` names the final model's), else, when the current one derives from the
    weights' digest (what export writes), that digest with ``-nms<threshold>`` appended. A version
    somebody chose is not guessed at: without ``version`` it is refused. Returns the version."""
    if version is None:
        _check_digest_versioned(model_dir)
        version = f"{weights_digest(model_dir)}-nms{threshold:g}"
    path = model_dir / MANIFEST
    manifest = yaml.safe_load(path.read_text())
    manifest["config"]["nms_threshold"] = float(threshold)
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    return write_version(model_dir, version)


def _floats(raw: str) -> list[float]:
    values = [float(v) for v in raw.split(",") if v.strip()]
    if not values or not all(0.0 < v <= 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"comma-separated thresholds in (0, 1], got {raw!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m predictor.tools.tune", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    nms = sub.add_parser("nms", help="choose the default NMS IoU threshold on validation images")
    nms.add_argument("--model_dir", required=True, help="project model directory")
    nms.add_argument("--count", type=int, default=300, help="validation images of each set")
    nms.add_argument("--candidates", type=_floats, default=list(NMS_CANDIDATES), metavar="T1,T2,...")
    nms.add_argument(
        "--min-gain",
        type=float,
        default=MIN_GAIN,
        help="mean mAP a candidate must gain over the current default to replace it",
    )
    nms.add_argument("--out", help="folder of nms_sweep.json (default MODEL_DIR/eval)")
    nms.add_argument("--write", action="store_true", help="store a changed choice in model.yaml")
    nms.add_argument(
        "--version",
        help="with --write: the model's new VERSION (default: the weights' digest + -nms<threshold>, "
        "for a model versioned by its digest)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    model_dir = Path(args.model_dir)
    try:  # refused before the sweep, not after it
        if args.version:
            check_version(args.version, "--version")
        elif args.write:
            _check_digest_versioned(model_dir)
    except (ModelLoadError, ValueError) as e:
        raise SystemExit(str(e)) from e
    t0 = time.monotonic()
    detector = Detector.from_dir(str(model_dir))
    before = detector.nms_threshold
    sets = {"plain": VALIDATION_SEED, "photo": PHOTO_VALIDATION_SEED}
    samples = {
        name: [heldout_sample(name, i, seed) for i in range(args.count)] for name, seed in sets.items()
    }
    sweep = nms_sweep(detector, samples, args.candidates, args.min_gain)
    record = {
        "model_dir": str(model_dir),
        "data": {name: {"style": name, "seed": seed, "count": args.count} for name, seed in sets.items()},
        "score_threshold": EVAL_SCORE_THRESHOLD,
        "before": before,
        **sweep,
        "seconds": round(time.monotonic() - t0, 1),
        "measured": measured_on(),
    }
    if args.write and sweep["chosen"] != before:
        try:
            version = write_default(model_dir, sweep["chosen"], args.version)
        except ValueError as e:
            raise SystemExit(str(e)) from e
        print(
            f"wrote config.nms_threshold {sweep['chosen']} into {model_dir / MANIFEST}, version {version}; "
            "what was measured with the old default (make model-card, the drift references, "
            "docs/samples) must be made again"
        )
    out = Path(args.out) if args.out else model_dir / "eval"
    out.mkdir(parents=True, exist_ok=True)
    (out / "nms_sweep.json").write_text(json.dumps(record, indent=2) + "\n")
    print(
        f"chosen NMS IoU threshold {sweep['chosen']} (was {before}; best on validation {sweep['best']}, "
        f"needed gain {args.min_gain}); wrote {out / 'nms_sweep.json'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
