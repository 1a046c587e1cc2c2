"""What the detection-telemetry alerts can see, measured on the demo model (no server, CPU is fine).

Prints two tables, the numbers quoted in docs/observability.md and predictor/serving/drift.py:

1. Degraded frames (darkened by a factor, Gaussian-blurred): detections, their mean score and images
   without a detection, against clean held-out images. Shows why ``SSDLowDetectionScores`` does not fire
   on degraded frames (what is still found above the score threshold scores as before).
2. Noise of the live drift gauge: the largest ``ssd_drift_psi`` of a window of N clean held-out images
   (images the reference did not use) against the model's reference, for several N: how large a window
   must be for clean traffic to stay under the alert's 0.25.

Usage: ``python -m bench.drift_signals [--images 400]``
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from PIL import Image, ImageFilter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=400, help="held-out images (largest window)")
    args = parser.parse_args()

    from predictor.datasets.shapes import EVAL_SEED, generate_sample
    from predictor.models import DEMO_MODEL_DIR
    from predictor.serving.drift import DriftWindow
    from predictor.ssd.detector import Detector

    reference = json.loads((DEMO_MODEL_DIR / "reference_distributions.json").read_text())
    first = reference["images"]
    images = [generate_sample(EVAL_SEED, first + i).image for i in range(args.images)]
    detector = Detector.from_dir(str(DEMO_MODEL_DIR), max_batch_size=8)

    print("1. degraded frames (first 40 held-out images)")
    print(f"{'frames':<24}{'detections':>11}{'mean score':>12}{'empty':>8}")
    for factor, radius in ((1.0, 0), (0.5, 2), (0.35, 3), (0.25, 2), (0.5, 4)):
        frames = [
            np.asarray(
                Image.fromarray((im * factor).astype(np.uint8)).filter(ImageFilter.GaussianBlur(radius))
            )
            for im in images[:40]
        ]
        found = detector.detect(frames)
        scores = np.concatenate([d.scores for d in found])
        empty = sum(len(d.scores) == 0 for d in found)
        label = "clean" if radius == 0 else f"x{factor} blur {radius}"
        print(f"{label:<24}{len(scores):>11}{scores.mean():>12.3f}{empty:>7}/{len(frames)}")

    print("\n2. largest ssd_drift_psi of a window of N clean images (all rows, no minimum sample size)")
    import predictor.serving.drift as drift

    drift.MIN_IMAGES = drift.MIN_DETECTIONS = 1
    for size in sorted({n for n in (100, 200, 400, args.images) if n <= args.images}):
        window = DriftWindow(detector.class_names, reference, size)
        for i in range(0, size, 8):
            batch = images[i : i + 8]
            hw = np.asarray([im.shape[:2] for im in batch], np.float32)
            out = detector.run_batch([detector.resize(im) for im in batch], hw)
            window.observe(out["boxes"], out["scores"], out["classes"], out["num_detections"], hw)
        worst = max(window.psi(), key=lambda row: row[2])
        print(f"N={size:<5} largest PSI {worst[2]:.3f} ({worst[0]}[{worst[1]}])")


if __name__ == "__main__":
    main()
