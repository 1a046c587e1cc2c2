"""Choose a model's default NMS IoU threshold on validation images: ``python -m predictor.tools.tune nms``.

Each candidate threshold runs the detector (score threshold 0.01, as ``make eval``) over synthetic
**validation** images, plain (:data:`VALIDATION_SEED`) and photo-like (:data:`PHOTO_VALIDATION_SEED`):
seeds that neither training (seeds below 1000) nor the held-out sets (``EVAL_SEED``, ``PHOTO_EVAL_SEED``)
use, so choosing here leaves the held-out numbers of ``make eval`` unbiased. The candidate with the best
mean mAP@[.5:.95] of the two sets wins (a tie goes to the larger threshold, SSD's usual side). The sweep
is written to ``OUT/nms_sweep.json``; ``--write`` also stores the winner as the model's default
(``config.nms_threshold`` in ``model.yaml``), which serving uses when a request names none.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from predictor.datasets.shapes import CLASS_NAMES, heldout_sample
from predictor.ssd import Detector
from predictor.ssd.weights import MANIFEST
from predictor.tools.evaluate import EVAL_SCORE_THRESHOLD, evaluate_detector, measured_on

#: Seeds of the validation images (plain, photo-like): not training's (< 1000), not the held-out sets'.
VALIDATION_SEED = 20261130
PHOTO_VALIDATION_SEED = 20261201
#: The thresholds ``tune nms`` tries unless told.
NMS_CANDIDATES = (0.25, 0.3, 0.35, 0.4, 0.45, 0.5)

log = logging.getLogger(__name__)


def choose(results: dict[float, float]) -> float:
    """The candidate with the highest score; among equal scores the largest candidate."""
    return max(results, key=lambda t: (results[t], t))


def nms_sweep(detector: Detector, samples_by_set: dict[str, Sequence], candidates: Sequence[float]) -> dict:
    """COCO metrics of ``detector`` at each NMS IoU threshold on each set, and the chosen threshold.

    Returns ``{"candidates": [{"nms_threshold", "<set>": {"mAP", "AP50"}, "mean_mAP"}], "chosen"}``.
    """
    rows = []
    for threshold in candidates:
        detector.nms_threshold = float(threshold)
        row: dict[str, Any] = {"nms_threshold": float(threshold)}
        for name, samples in samples_by_set.items():
            m = evaluate_detector(detector, samples, CLASS_NAMES)
            row[name] = {"mAP": round(m["mAP"], 4), "AP50": round(m["AP50"], 4)}
        row["mean_mAP"] = round(sum(row[n]["mAP"] for n in samples_by_set) / len(samples_by_set), 4)
        log.info("NMS %.2f: %s", threshold, row)
        rows.append(row)
    chosen = choose({r["nms_threshold"]: r["mean_mAP"] for r in rows})
    return {"candidates": rows, "chosen": chosen}


def write_default(model_dir: Path, threshold: float) -> None:
    """Set ``config.nms_threshold`` of ``model_dir/model.yaml``, keeping every other key and their order."""
    path = model_dir / MANIFEST
    manifest = yaml.safe_load(path.read_text())
    manifest["config"]["nms_threshold"] = float(threshold)
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))


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
    nms.add_argument("--out", help="folder of nms_sweep.json (default MODEL_DIR/eval)")
    nms.add_argument("--write", action="store_true", help="store the chosen threshold in model.yaml")
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    model_dir = Path(args.model_dir)
    detector = Detector.from_dir(str(model_dir))
    before = detector.nms_threshold
    sets = {"plain": VALIDATION_SEED, "photo": PHOTO_VALIDATION_SEED}
    samples = {
        name: [heldout_sample(name, i, seed) for i in range(args.count)] for name, seed in sets.items()
    }
    sweep = nms_sweep(detector, samples, args.candidates)
    record = {
        "model_dir": str(model_dir),
        "data": {name: {"style": name, "seed": seed, "count": args.count} for name, seed in sets.items()},
        "score_threshold": EVAL_SCORE_THRESHOLD,
        "before": before,
        **sweep,
        "measured": measured_on(),
    }
    out = Path(args.out) if args.out else model_dir / "eval"
    out.mkdir(parents=True, exist_ok=True)
    (out / "nms_sweep.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"chosen NMS IoU threshold {sweep['chosen']} (was {before}); wrote {out / 'nms_sweep.json'}")
    if args.write:
        write_default(model_dir, sweep["chosen"])
        print(f"wrote config.nms_threshold {sweep['chosen']} into {model_dir / MANIFEST}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
