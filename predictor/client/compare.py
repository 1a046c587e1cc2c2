"""``ssd-detect compare``: do two predictors find the same objects? (a canary's gate before traffic moves)

Usage::

    ssd-detect compare --url http://stable:8080 --url http://canary:8080 photos/ --min-agreement 0.95
    ssd-detect compare --url A --url B --annotations val/annotations.json val/images/ --json report.json

Both servers get the same images (same protocol, model name and detection parameters). Per image and
class (by label), boxes are matched greedily: each box of A, highest score first, takes the unmatched
box of B with the highest IoU, when that IoU is at least ``--iou`` (0.5). Per class the report gives
``matched`` pairs, boxes ``only_a`` / ``only_b`` found, ``agreement = matched / (matched + only_a +
only_b)`` (1 when neither side found any) and the score deltas ``B - A`` of the matched pairs (mean, and
the largest in magnitude); the same overall. With ``--annotations`` (a COCO file whose images'
``file_name`` are the inputs' names) it adds each side's COCO AP
(:func:`predictor.tools.coco_eval.coco_evaluate`, needs the ``eval`` extra: pycocotools).

Exit status (a CI gate): 0 when every class with boxes and the whole set agree at least
``--min-agreement`` and, with annotations and ``--max-ap-drop``, B's AP@0.5 is at most that much below
A's; 1 when the gate fails or an image could not be compared (an error on either side); 2 for usage
errors. The report names the classes that fail the gate.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from predictor._argtypes import fraction, positive_int
from predictor.client.detect import ImageResult, RunOptions, run_detection
from predictor.client.errors import ClientError
from predictor.client.files import IMAGE_EXTENSIONS, InputImage, collect_images
from predictor.client.transports import DEFAULT_MODEL, PROTOCOLS, DetectParams, Endpoint, make_transport
from predictor.protocol.detections import Detection
from predictor.tools.coco_eval import iou_one_to_many

#: Default minimum IoU of a matched pair of boxes.
DEFAULT_IOU = 0.5


@dataclass
class ClassAgreement:
    """Matching counts and score deltas (``B - A``) of one class over all images."""

    matched: int = 0
    only_a: int = 0
    only_b: int = 0
    score_deltas: list[float] = field(default_factory=list)

    @property
    def agreement(self) -> float:
        """``matched / (matched + only_a + only_b)``; 1.0 when neither side found a box."""
        total = self.matched + self.only_a + self.only_b
        return 1.0 if total == 0 else self.matched / total

    def add(self, other: ClassAgreement) -> None:
        self.matched += other.matched
        self.only_a += other.only_a
        self.only_b += other.only_b
        self.score_deltas += other.score_deltas

    def to_json(self) -> dict[str, Any]:
        deltas = np.asarray(self.score_deltas, np.float64)
        largest = float(deltas[np.argmax(np.abs(deltas))]) if deltas.size else 0.0
        return {
            "matched": self.matched,
            "only_a": self.only_a,
            "only_b": self.only_b,
            "agreement": round(self.agreement, 6),
            "mean_score_delta": round(float(deltas.mean()), 6) if deltas.size else 0.0,
            "largest_score_delta": round(largest, 6),
        }


def _boxes(dets: Sequence[Detection]) -> np.ndarray:
    return np.asarray([[d["xmin"], d["ymin"], d["xmax"], d["ymax"]] for d in dets], np.float64).reshape(-1, 4)


def match_image(
    a: Sequence[Detection], b: Sequence[Detection], iou: float = DEFAULT_IOU
) -> dict[str, ClassAgreement]:
    """Per-label agreement of one image's detections ``a`` and ``b`` (V1 detection dicts)."""
    out: dict[str, ClassAgreement] = {}
    for label in sorted({d["label"] for d in a} | {d["label"] for d in b}):
        da = sorted((d for d in a if d["label"] == label), key=lambda d: -d["score"])
        db = [d for d in b if d["label"] == label]
        boxes_b = _boxes(db)
        free = np.ones(len(db), bool)
        result = ClassAgreement()
        for det in da:
            overlaps = np.where(free, iou_one_to_many(_boxes([det])[0], boxes_b), -1.0) if db else np.zeros(0)
            best = int(np.argmax(overlaps)) if overlaps.size else -1
            if best >= 0 and overlaps[best] >= iou:
                free[best] = False
                result.matched += 1
                result.score_deltas.append(db[best]["score"] - det["score"])
            else:
                result.only_a += 1
        result.only_b = int(free.sum())
        out[label] = result
    return out


def compare_results(
    a: Sequence[ImageResult], b: Sequence[ImageResult], iou: float = DEFAULT_IOU
) -> tuple[dict[str, ClassAgreement], ClassAgreement, list[str]]:
    """``(per class, overall, errors)`` over images answered by both sides (in the same order)."""
    classes: dict[str, ClassAgreement] = {}
    overall = ClassAgreement()
    errors = []
    for ra, rb in zip(a, b, strict=True):
        if ra.error is not None or rb.error is not None:
            errors.append(
                f"{ra.file}: " + "; ".join(f"{s}: {r.error}" for s, r in (("A", ra), ("B", rb)) if r.error)
            )
            continue
        for label, agreement in match_image(ra.detections or [], rb.detections or [], iou).items():
            classes.setdefault(label, ClassAgreement()).add(agreement)
            overall.add(agreement)
    return dict(sorted(classes.items())), overall, errors


def average_precision(results: Sequence[ImageResult], annotations: dict[str, Any]) -> dict[str, Any]:
    """COCO AP of one side's detections against ``annotations`` (images matched by file name)."""
    from predictor.tools.coco_eval import coco_evaluate, summary

    ids = {Path(img["file_name"]).name: img["id"] for img in annotations["images"]}
    categories = {c["name"]: c["id"] for c in annotations["categories"]}
    detections, evaluated = [], set()
    for result in results:
        image_id = ids.get(Path(result.file).name)
        if image_id is None or result.detections is None:
            continue
        evaluated.add(image_id)
        for d in result.detections:
            if d["label"] in categories:
                box = [d["xmin"], d["ymin"], d["xmax"] - d["xmin"], d["ymax"] - d["ymin"]]
                detections.append(
                    {
                        "image_id": image_id,
                        "category_id": categories[d["label"]],
                        "bbox": box,
                        "score": d["score"],
                    }
                )
    if not evaluated:
        raise ClientError("--annotations: none of the input files is an image of the annotation file")
    gt = {
        **annotations,
        "images": [img for img in annotations["images"] if img["id"] in evaluated],
        "annotations": [ann for ann in annotations["annotations"] if ann["image_id"] in evaluated],
    }
    out = summary(coco_evaluate(gt, detections))
    out["images"] = len(evaluated)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ssd-detect compare",
        description="Send the same images to two predictors (e.g. stable and canary) and report per class "
        "how far their detections agree; the exit status gates a rollout.",
        epilog="Exit status: 0 the gate passed, 1 it failed or an image was not compared, 2 usage errors.",
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="PATH",
        help="image files and/or folders (" + ", ".join(sorted(IMAGE_EXTENSIONS)) + ")",
    )
    p.add_argument(
        "--url", action="append", required=True, metavar="URL", help="server A, then server B (twice)"
    )
    p.add_argument("--protocol", choices=PROTOCOLS, default="v1", help="protocol for both (default: v1)")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model name on both (default: {DEFAULT_MODEL})")
    p.add_argument(
        "--host-header", action="append", metavar="HOST", help="Host header of A, then of B (ingress)"
    )
    p.add_argument(
        "--timeout", type=float, default=60.0, help="per-request time limit in seconds (default: 60)"
    )
    p.add_argument(
        "--score-threshold",
        type=fraction,
        metavar="S",
        help="lowest score both return (default: each server's)",
    )
    p.add_argument(
        "--iou", type=fraction, default=DEFAULT_IOU, help=f"IoU of a matched pair (default: {DEFAULT_IOU})"
    )
    p.add_argument(
        "--min-agreement",
        type=fraction,
        default=0.95,
        metavar="F",
        help="gate: the lowest agreement of any class and overall (default: 0.95)",
    )
    p.add_argument("--annotations", metavar="COCO_JSON", help="COCO ground truth: report each side's AP")
    p.add_argument(
        "--max-ap-drop",
        type=fraction,
        metavar="D",
        help="gate (with --annotations): B's AP@0.5 may be at most D below A's",
    )
    p.add_argument("--batch-size", type=positive_int, default=1, help="images per request (default: 1)")
    p.add_argument(
        "--concurrency", type=positive_int, default=1, help="requests in flight per server (default: 1)"
    )
    p.add_argument(
        "--json", metavar="FILE", help="also write the whole report as JSON here ('-': stdout, no table)"
    )
    return p


def _side(results: Sequence[ImageResult], url: str) -> dict[str, Any]:
    versions = sorted({r.model_version for r in results if r.model_version is not None})
    return {"url": url, "model_versions": versions, "failed": sum(r.error is not None for r in results)}


def build_report(
    args: argparse.Namespace, a: Sequence[ImageResult], b: Sequence[ImageResult], annotations: dict | None
) -> dict[str, Any]:
    """The comparison report (JSON-ready) with its gate verdict."""
    classes, overall, errors = compare_results(a, b, args.iou)
    failing = [name for name, c in classes.items() if c.agreement < args.min_agreement]
    reasons = [
        f"class {name}: agreement {classes[name].agreement:.3f} < {args.min_agreement:g}" for name in failing
    ]
    if overall.agreement < args.min_agreement:
        reasons.insert(0, f"overall agreement {overall.agreement:.3f} < {args.min_agreement:g}")
    reasons += [f"not compared: {e}" for e in errors]
    report: dict[str, Any] = {
        "a": _side(a, args.url[0]),
        "b": _side(b, args.url[1]),
        "images": len(a),
        "compared": len(a) - len(errors),
        "iou": args.iou,
        "overall": overall.to_json(),
        "classes": {name: c.to_json() for name, c in classes.items()},
        "disagreeing_classes": failing,
    }
    if annotations is not None:
        ap_a, ap_b = average_precision(a, annotations), average_precision(b, annotations)
        report["ap"] = {"a": ap_a, "b": ap_b}
        if args.max_ap_drop is not None:
            drop = (ap_a["AP50"] or 0.0) - (ap_b["AP50"] or 0.0)
            if drop > args.max_ap_drop:
                reasons.append(f"AP@0.5 of B is {drop:.3f} below A's (> {args.max_ap_drop:g})")
    report["gate"] = {"min_agreement": args.min_agreement, "passed": not reasons, "reasons": reasons}
    return report


def format_report(report: dict[str, Any]) -> str:
    """The report as a text table."""
    a, b = report["a"], report["b"]
    lines = [
        f"A: {a['url']} (model version {', '.join(a['model_versions']) or 'unknown'})",
        f"B: {b['url']} (model version {', '.join(b['model_versions']) or 'unknown'})",
        f"{report['compared']} of {report['images']} images compared, boxes matched at IoU >= "
        f"{report['iou']:g}; dS: score of B - score of A",
        "",
        f"{'class':<16}{'agreement':>10}{'matched':>9}{'only A':>8}{'only B':>8}{'mean dS':>9}"
        f"{'max |dS|':>10}",
    ]
    rows = [*report["classes"].items(), ("(all)", report["overall"])]
    for name, c in rows:
        lines.append(
            f"{name:<16}{c['agreement'] * 100:>9.1f}%{c['matched']:>9}{c['only_a']:>8}{c['only_b']:>8}"
            f"{c['mean_score_delta']:>+9.4f}{abs(c['largest_score_delta']):>10.4f}"
        )
    if "ap" in report:
        lines.append("")
        for side in ("a", "b"):
            ap = report["ap"][side]
            lines.append(
                f"AP {side.upper()}: mAP {_num(ap['mAP'])}  AP@0.5 {_num(ap['AP50'])}  "
                f"({ap['images']} images)"
            )
    gate = report["gate"]
    lines.append("")
    lines.append("gate: PASS" if gate["passed"] else "gate: FAIL")
    lines += [f"  {r}" for r in gate["reasons"]]
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def _detect_all(
    url: str, host: str | None, args: argparse.Namespace, images: list[InputImage]
) -> list[ImageResult]:
    endpoint = Endpoint(url, args.model, host, args.timeout or None)
    options = RunOptions(DetectParams(score_threshold=args.score_threshold), args.batch_size)
    with make_transport(args.protocol, endpoint, args.concurrency) as transport:
        return list(run_detection(transport, images, options, args.concurrency))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``ssd-detect compare``; returns the exit status."""
    args = build_parser().parse_args(argv)
    hosts = args.host_header or []
    try:
        if len(args.url) != 2:
            raise ClientError(f"--url: give it twice (server A, then server B), got {len(args.url)}")
        if len(hosts) not in (0, 2):
            raise ClientError("--host-header: give it twice (A, then B) or not at all")
        images = collect_images(args.inputs)
        annotations = json.loads(Path(args.annotations).read_text()) if args.annotations else None
        results = [
            _detect_all(url, hosts[i] if hosts else None, args, images) for i, url in enumerate(args.url)
        ]
        report = build_report(args, results[0], results[1], annotations)
    except (ClientError, OSError, ValueError) as e:
        print(f"ssd-detect compare: error: {e}", file=sys.stderr)
        return 2
    if args.json == "-":
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["gate"]["passed"] else 1
