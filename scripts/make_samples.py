"""Write the README's sample images and their detections drawn by the demo model.

``python scripts/make_samples.py [--out docs/samples] [--count 4]``: held-out synthetic images
(``EVAL_SEED``, never trained on) as JPEG, plus ``*-detections.jpg`` with the demo model's boxes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image

from predictor.client.draw import draw_detections
from predictor.datasets.shapes import EVAL_SEED, generate_sample
from predictor.models import DEMO_MODEL_DIR
from predictor.ssd.detector import Detector


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="docs/samples")
    p.add_argument("--count", type=int, default=4)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    detector = Detector.from_dir(str(DEMO_MODEL_DIR))
    summary = {}
    for i in range(args.count):
        image = Image.fromarray(generate_sample(EVAL_SEED, i).image)
        path = out / f"shapes-{i}.jpg"
        image.save(path, quality=92)
        decoded = Image.open(path).convert("RGB")  # what a client would send
        import numpy as np

        det = detector.detect([np.asarray(decoded)])[0]
        dets = [
            {"label": detector.class_names[int(c)], "class_id": int(c), "score": round(float(s), 4),
             "xmin": round(float(b[0]), 2), "ymin": round(float(b[1]), 2),
             "xmax": round(float(b[2]), 2), "ymax": round(float(b[3]), 2)}
            for b, s, c in zip(det.boxes, det.scores, det.classes, strict=True)
        ]  # fmt: skip
        draw_detections(decoded, dets).save(out / f"shapes-{i}-detections.jpg", quality=92)
        summary[path.name] = dets
    (out / "detections.json").write_text(json.dumps(summary, indent=1))
    print(f"wrote {args.count} samples to {out}")


if __name__ == "__main__":
    main()
