"""Drift of the detection telemetry (:mod:`predictor.serving.telemetry`) against reference distributions.

Reference distributions and drift::

    python -m predictor.tools.drift reference --model_dir DIR --count 500 \
        --out DIR/reference_distributions.json
    python -m predictor.tools.drift drift --metrics-url http://host:8080/metrics --reference ref.json

``reference`` runs the detector (at its default thresholds) over held-out images of the synthetic shapes
evaluation set and writes the same histograms; ``drift`` scrapes the live ones and compares them per class
with the population stability index (PSI) and a two-sample Kolmogorov-Smirnov test on the binned
distributions. A class drifts when the KS p-value is below ``--alpha`` *and* PSI is at least
``--psi-threshold`` (both: KS alone flags tiny shifts once counts are large; PSI alone is noisy when they
are small). Exit status: 0 no drift, 1 drift, 2 usage or scrape error.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from predictor.serving.telemetry import (
    AREA,
    PER_IMAGE,
    PIXELS,
    SCORE,
    Histograms,
    psi,
)

REFERENCE_FORMAT = "ssd-predictor/reference-distributions/v1"


# --------------------------------------------------------------------------------------- reference
def reference_distributions(
    model_dir: str | None, count: int, seed: int | None = None, batch_size: int = 16
) -> dict[str, Any]:
    """Histograms of the detector (default thresholds) over ``count`` held-out shapes images."""
    from predictor.datasets.shapes import EVAL_SEED, generate_sample
    from predictor.models import DEMO_MODEL_DIR
    from predictor.ssd.detector import Detector

    path = str(model_dir or DEMO_MODEL_DIR)
    detector = Detector.from_dir(path, max_batch_size=batch_size)
    seed = EVAL_SEED if seed is None else seed
    hist = Histograms(detector.class_names)
    for start in range(0, count, batch_size):
        images = [generate_sample(seed, i).image for i in range(start, min(start + batch_size, count))]
        resized = np.stack([detector.resize(im) for im in images])
        hw = np.asarray([im.shape[:2] for im in images], np.float32)
        out = detector.run_batch(resized, hw)
        hist.observe(out["boxes"], out["scores"], out["classes"], out["num_detections"], hw)
    return {
        "format": REFERENCE_FORMAT,
        "model": detector.config.name,
        "source": f"synthetic shapes evaluation set, seed {seed}, images 0..{count - 1}",
        "images": count,
        "score_threshold": detector.score_threshold,
        "nms_threshold": detector.nms_threshold,
        "max_detections": detector.max_detections,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **hist.to_json(),
    }


# --------------------------------------------------------------------------------------- drift
def parse_live(metrics_text: str) -> dict[str, Any]:
    """Live histograms from Prometheus text: non-cumulative bucket counts, like the reference JSON."""
    from prometheus_client.parser import text_string_to_metric_families

    cumulative: dict[str, dict[str, dict[float, float]]] = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name not in (SCORE, AREA, PER_IMAGE, PIXELS):
            continue
        for sample in family.samples:
            if not sample.name.endswith("_bucket"):
                continue
            key = sample.labels.get("class", "")
            bound = float(sample.labels["le"])
            cumulative.setdefault(family.name, {}).setdefault(key, {})[bound] = sample.value

    def counts(series: dict[float, float]) -> list[int]:
        values = [series[b] for b in sorted(series)]
        return [int(v) for v in np.diff([0.0, *values])]

    names = {SCORE: "score", AREA: "area_fraction"}
    live: dict[str, Any] = {"score": {}, "area_fraction": {}}
    for metric, field in names.items():
        for cls, series in cumulative.get(metric, {}).items():
            live[field][cls] = counts(series)
    for metric, field in ((PER_IMAGE, "detections_per_image"), (PIXELS, "image_pixels")):
        series = cumulative.get(metric, {}).get("")
        live[field] = counts(series) if series else []
    return live


def ks_binned(expected: Sequence[float], actual: Sequence[float]) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov statistic over bucket bounds and its asymptotic p-value.

    Binning can only lower the statistic, so the test is conservative (flags less, never more).
    """
    e = np.asarray(expected, np.float64)
    a = np.asarray(actual, np.float64)
    n, m = e.sum(), a.sum()
    if n == 0 or m == 0:
        return 0.0, 1.0
    d = float(np.max(np.abs(np.cumsum(e) / n - np.cumsum(a) / m)))
    return d, kolmogorov_sf(d * math.sqrt(n * m / (n + m)))


def kolmogorov_sf(x: float) -> float:
    """``P(K > x)`` of the Kolmogorov distribution: ``2 sum_k (-1)^(k-1) exp(-2 k^2 x^2)``."""
    if x < 0.3:
        return 1.0
    total = sum((-1) ** (k - 1) * math.exp(-2 * k * k * x * x) for k in range(1, 101))
    return float(min(1.0, max(0.0, 2 * total)))


def compare(
    reference: Mapping[str, Any],
    live: Mapping[str, Any],
    *,
    alpha: float = 0.01,
    psi_threshold: float = 0.2,
    min_count: int = 30,
) -> list[dict[str, Any]]:
    """One row per (distribution, class): counts, PSI, KS statistic and p-value, and a verdict
    (``drift``, ``ok`` or ``too few`` when the live count is below ``min_count``)."""
    rows = []
    pairs: list[tuple[str, str, Sequence[float], Sequence[float]]] = []
    for field in ("score", "area_fraction"):
        for cls, ref_counts in reference[field].items():
            pairs.append((field, cls, ref_counts, live.get(field, {}).get(cls, [0] * len(ref_counts))))
    for field in ("detections_per_image", "image_pixels"):
        ref_counts = reference[field]
        pairs.append((field, "*", ref_counts, live.get(field) or [0] * len(ref_counts)))
    ref_mix = [sum(reference["score"][c]) for c in reference["score"]]
    live_mix = [sum(live.get("score", {}).get(c, [])) for c in reference["score"]]
    pairs.append(("class_mix", "*", ref_mix, live_mix))
    for field, cls, ref_counts, live_counts in pairs:
        if len(ref_counts) != len(live_counts):
            raise ValueError(
                f"{field}[{cls}]: {len(live_counts)} live buckets, {len(ref_counts)} in the reference"
            )
        n_live = int(sum(live_counts))
        value = psi(ref_counts, live_counts)
        d, p = (
            ks_binned(ref_counts, live_counts)
            if field != "class_mix"
            else (float("nan"), _chi2_p(ref_counts, live_counts))
        )
        if n_live < min_count:
            verdict = "too few"
        elif p < alpha and value >= psi_threshold:
            verdict = "drift"
        else:
            verdict = "ok"
        rows.append(
            {
                "distribution": field,
                "class": cls,
                "reference_n": int(sum(ref_counts)),
                "live_n": n_live,
                "psi": value,
                "ks": d,
                "p_value": p,
                "verdict": verdict,
            }
        )
    return rows


def _chi2_p(expected: Sequence[float], actual: Sequence[float]) -> float:
    """p-value of a chi-square goodness-of-fit of the live class counts to the reference mix
    (Wilson-Hilferty approximation of the chi-square tail)."""
    e = np.asarray(expected, np.float64)
    a = np.asarray(actual, np.float64)
    keep = e > 0
    if a.sum() == 0 or keep.sum() < 2:
        return 1.0
    exp = e[keep] / e[keep].sum() * a.sum()
    stat = float(np.sum((a[keep] - exp) ** 2 / exp))
    k = int(keep.sum()) - 1
    z = ((stat / k) ** (1 / 3) - (1 - 2 / (9 * k))) / math.sqrt(2 / (9 * k))
    return 0.5 * math.erfc(z / math.sqrt(2))


def format_rows(rows: Sequence[Mapping[str, Any]]) -> str:
    """The comparison as a Markdown table."""
    lines = [
        "| distribution | class | reference n | live n | PSI | KS | p-value | verdict |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        ks = "-" if math.isnan(r["ks"]) else f"{r['ks']:.3f}"
        lines.append(
            f"| {r['distribution']} | {r['class']} | {r['reference_n']} | {r['live_n']} | {r['psi']:.3f} | "
            f"{ks} | {r['p_value']:.2g} | {r['verdict']} |"
        )
    return "\n".join(lines)


def scrape(url: str, timeout: float = 10.0) -> str:
    """The Prometheus text of ``url`` (``http://host:8080/metrics``)."""
    import httpx

    response = httpx.get(url, timeout=timeout)
    response.raise_for_status()
    return response.text


# --------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m predictor.tools.drift", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    ref = sub.add_parser("reference", help="write the model's reference distributions (held-out images)")
    ref.add_argument("--model_dir", help="model directory (default: the shipped demo model)")
    ref.add_argument("--count", type=int, default=500, help="held-out synthetic images")
    ref.add_argument("--seed", type=int, help="synthetic data seed (default: EVAL_SEED)")
    ref.add_argument("--out", help="output JSON (default: <model_dir>/reference_distributions.json)")
    drift = sub.add_parser("drift", help="compare live histograms (/metrics) with the reference")
    src = drift.add_mutually_exclusive_group(required=True)
    src.add_argument("--metrics-url", help="the server's /metrics URL")
    src.add_argument("--metrics-file", help="a saved /metrics scrape")
    drift.add_argument("--reference", help="reference JSON (default: the demo model's)")
    drift.add_argument("--alpha", type=float, default=0.01, help="KS / chi-square significance level")
    drift.add_argument(
        "--psi-threshold", type=float, default=0.2, help="PSI at or above which a shift matters"
    )
    drift.add_argument("--min-count", type=int, default=30, help="fewest live samples to judge a class")
    drift.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "reference":
        from predictor.models import DEMO_MODEL_DIR

        model_dir = Path(args.model_dir or DEMO_MODEL_DIR)
        data = reference_distributions(str(model_dir), args.count, args.seed)
        out = Path(args.out) if args.out else model_dir / "reference_distributions.json"
        out.write_text(json.dumps(data, indent=1) + "\n")
        print(f"wrote {out} ({args.count} images)")
        return 0
    reference_path = args.reference
    if reference_path is None:
        from predictor.models import DEMO_MODEL_DIR

        reference_path = DEMO_MODEL_DIR / "reference_distributions.json"
    try:
        reference = json.loads(Path(reference_path).read_text())
        text = Path(args.metrics_file).read_text() if args.metrics_file else scrape(args.metrics_url)
    except Exception as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    if reference.get("format") != REFERENCE_FORMAT:
        print(f"error: {reference_path} is not a reference ({REFERENCE_FORMAT})", file=sys.stderr)
        return 2
    live = parse_live(text)
    if not live["score"] and not live["detections_per_image"]:
        print(
            "error: no ssd_detection_* histograms in the scrape (is it the predictor's /metrics?)",
            file=sys.stderr,
        )
        return 2
    rows = compare(
        reference, live, alpha=args.alpha, psi_threshold=args.psi_threshold, min_count=args.min_count
    )
    print(json.dumps(rows, indent=1) if args.json else format_rows(rows))
    drifted = [f"{r['distribution']}[{r['class']}]" for r in rows if r["verdict"] == "drift"]
    if not args.json:
        print("\ndrifted: " + (", ".join(drifted) if drifted else "none"))
    return 1 if drifted else 0


if __name__ == "__main__":
    sys.exit(main())
