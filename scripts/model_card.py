"""Rewrite the generated tables of a model card from the JSON files its measurements wrote:
``python scripts/model_card.py predictor/models/demo`` (``make model-card``).

Each table sits between ``<!-- generated: NAME -->`` and ``<!-- end: NAME -->`` in ``MODEL_CARD.md``:

- ``metrics``: COCO summary and per-class AP, from ``eval/metrics.json``
  (``python -m predictor.tools.evaluate``);
- ``operating-points``: precision/recall per score threshold, and per class at the default threshold and
  at the max-F1 thresholds, from ``eval/operating_points.json``
  (``python -m predictor.tools.evaluate --operating-points ...``);
- ``metrics-photo`` and ``operating-points-photo``: the same on the photo-like held-out set, from
  ``eval/photo/`` (``--style photo``);
- ``training-curve``: AP during training, from ``eval/training_curve.json`` (``python -m predictor.tools.train
  --eval-every N``, copied there by ``make demo-model``);
- ``nms-sweep``: the default NMS IoU threshold's choice on validation images, from ``eval/nms_sweep.json``
  (``python -m predictor.tools.tune nms``).

Every table carries the date and machine its JSON recorded. With ``--readme README.md`` the README's
``demo-quality`` block (the headline AP of both held-out sets) is rewritten from the same JSON.
``--check`` fails when the card (or that README block) differs.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def _stamp(measured: dict[str, str] | None, command: str) -> str:
    if not measured:
        return f"_Made by `{command}`._"
    return f"_Made by `{command}` on {measured['utc']}, {measured['machine']}._"


def _style_flag(data: dict[str, Any]) -> str:
    return " --style photo" if data.get("style") == "photo" else ""


def metrics_table(m: dict[str, Any]) -> str:
    data = m["data"]
    command = f"python -m predictor.tools.evaluate{_style_flag(data)} --count {data['count']}"
    lines = [
        _stamp(m.get("measured"), command),
        "",
        "| mAP@[.5:.95] | AP@0.5 | AP@0.75 | AP small | AP medium | AP large | AR@100 |",
        "|---|---|---|---|---|---|---|",
        f"| **{_pct(m['mAP'])}** | **{_pct(m['AP50'])}** | {_pct(m['AP75'])} | {_pct(m['APs'])} | "
        f"{_pct(m['APm'])} | {_pct(m['APl'])} | {_pct(m['AR100'])} |",
        "",
        "| class | AP@[.5:.95] | AP@0.5 | ground-truth boxes |",
        "|---|---|---|---|",
    ]
    for name, ap in m["per_class"].items():
        lines.append(f"| {name} | {_pct(ap)} | {_pct(m['per_class_AP50'][name])} | {m['num_gt'][name]} |")
    return "\n".join(lines)


def operating_points_table(o: dict[str, Any], default_threshold: float | None) -> str:
    rows = o["operating_points"]
    data = o["data"]
    thresholds = ",".join(f"{r['score_threshold']:g}" for r in rows)
    command = (
        f"python -m predictor.tools.evaluate{_style_flag(data)} --start {data['start']} "
        f"--count {data['count']} --operating-points {thresholds}"
    )

    def cell(r: dict[str, Any], key: str) -> str:
        value = r[key]
        text = (
            f"{value:g}"
            if key == "score_threshold"
            else f"{value:.3f}"
            if isinstance(value, float)
            else str(value)
        )
        return (
            f"**{text}**"
            if default_threshold is not None and r["score_threshold"] == default_threshold
            else text
        )

    lines = [
        _stamp(o.get("measured"), command),
        "",
        "| score threshold | " + " | ".join(cell(r, "score_threshold") for r in rows) + " |",
        "|---|" + "---|" * len(rows),
    ]
    for key in ("precision", "recall", "detections"):
        lines.append(f"| {key} | " + " | ".join(cell(r, key) for r in rows) + " |")
    if "sweep" in o:
        lines += ["", *sweep_table(o["sweep"])]
    return "\n".join(lines)


def sweep_table(sweep: dict[str, Any]) -> list[str]:
    """Per-class precision / recall / F1 at the default threshold, at the overall max-F1 threshold, and
    each class's own max-F1 threshold."""
    d, b, own = sweep["default"], sweep["max_f1"], sweep["per_class_max_f1"]
    lo, hi, step = sweep["thresholds"]
    t_d, t_b = d["score_threshold"], b["score_threshold"]

    def prf(p: dict[str, Any]) -> str:
        return f"{_pct(p['precision'])} | {_pct(p['recall'])} | {_pct(p['f1'])}"

    lines = [
        f"Per class, from one detector run at score {sweep['min_score']:g} (thresholds {lo:g}-{hi:g} in "
        f"steps of {step:g}): precision / recall / F1 at the default threshold **{t_d:g}**, at the "
        f"threshold that maximises the overall F1 (**{t_b:g}**), and at each class's own max-F1 threshold. "
        + (
            "At the table's thresholds above, the sweep counts the same detections and true positives as "
            "the detector run at each."
            if sweep.get("agrees_with_runs")
            else "**At some of the table's thresholds above, the sweep's counts differ from the detector's "
            "runs** (its top-k or per-image cap dropped detections)."
        ),
        "",
        f"| class | P @{t_d:g} | R @{t_d:g} | F1 @{t_d:g} | P @{t_b:g} | R @{t_b:g} | F1 @{t_b:g} "
        "| own max-F1 threshold | P | R | F1 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| all classes | {prf(d['overall'])} | {prf(b['overall'])} | {t_b:g} | {prf(b['overall'])} |",
    ]
    for name in d["per_class"]:
        mine = own[name]
        lines.append(
            f"| {name} | {prf(d['per_class'][name])} | {prf(b['per_class'][name])} | "
            f"{mine['score_threshold']:g} | {prf(mine)} |"
        )
    return lines


def training_curve_table(points: list[dict[str, Any]]) -> str:
    if not points:
        return "_No training curve recorded (`python -m predictor.tools.train --eval-every N` writes one)._"
    lines = [
        _stamp(points[-1].get("measured"), f"python -m predictor.tools.train --eval-every ... --eval-count "
               f"{points[-1]['images']}"),
        "",
        "| step | " + " | ".join(str(p["step"]) for p in points) + " |",
        "|---|" + "---|" * len(points),
        "| AP@0.5 | " + " | ".join(_pct(p["AP50"]) for p in points) + " |",
        "| mAP@[.5:.95] | " + " | ".join(_pct(p["mAP"]) for p in points) + " |",
    ]  # fmt: skip
    if any("photo" in p for p in points):
        photo = [p.get("photo") or {} for p in points]
        lines += [
            "| photo-like AP@0.5 | " + " | ".join(_pct(q.get("AP50")) for q in photo) + " |",
            "| photo-like mAP@[.5:.95] | " + " | ".join(_pct(q.get("mAP")) for q in photo) + " |",
        ]
    return "\n".join(lines)


def nms_sweep_table(record: dict[str, Any]) -> str:
    """The NMS candidates' validation mAP / AP@0.5 per set, the chosen threshold in bold."""
    rows = record["candidates"]
    count = record["data"]["plain"]["count"]
    chosen = record["chosen"]

    def cells(values: list[str]) -> str:
        bold = [r["nms_threshold"] == chosen for r in rows]
        return " | ".join(f"**{v}**" if b else v for v, b in zip(values, bold, strict=True))

    sets = [(name, label) for name, label in (("plain", "plain"), ("photo", "photo-like")) if name in rows[0]]
    lines = [
        _stamp(
            record.get("measured"),
            f"python -m predictor.tools.tune nms --count {count} --candidates "
            + ",".join(f"{r['nms_threshold']:g}" for r in rows),
        ),
        "",
        "| NMS IoU threshold | " + cells([f"{r['nms_threshold']:g}" for r in rows]) + " |",
        "|---|" + "---|" * len(rows),
    ]
    for name, label in sets:
        lines.append(f"| {label} mAP@[.5:.95] | " + cells([_pct(r[name]["mAP"]) for r in rows]) + " |")
        lines.append(f"| {label} AP@0.5 | " + cells([_pct(r[name]["AP50"]) for r in rows]) + " |")
    lines.append("| mean mAP | " + cells([f"{r['mean_mAP']:.4f}" for r in rows]) + " |")
    best, before = record.get("best", chosen), record.get("before")
    mean = {r["nms_threshold"]: r["mean_mAP"] for r in rows}
    if best != chosen:
        verdict = (
            f"The best candidate, {best:g}, gains {mean[best] - mean[chosen]:.4f} mean mAP over the default "
            f"{chosen:g}, less than the {record['min_gain']:g} a change needs: the default stays."
        )
    elif before is not None and before != chosen:
        verdict = (
            f"{chosen:g} gains at least the {record['min_gain']:g} a change needs over {before:g}: "
            "the new default."
        )
    else:
        verdict = f"The default {chosen:g} is the best candidate."
    return "\n".join([*lines, "", verdict])


def replace_section(card: str, name: str, body: str) -> str:
    """``card`` with the text between the ``name`` block's markers replaced by ``body``."""
    begin, end = f"<!-- generated: {name} -->", f"<!-- end: {name} -->"
    pattern = re.compile(rf"{re.escape(begin)}\n.*?{re.escape(end)}", re.S)
    if not pattern.search(card):
        raise SystemExit(f"MODEL_CARD.md has no {begin!r} ... {end!r} block")
    return pattern.sub(lambda _: f"{begin}\n{body}\n{end}", card)


def render(model_dir: Path) -> str:
    import yaml

    card = (model_dir / "MODEL_CARD.md").read_text()
    eval_dir = model_dir / "eval"
    manifest = yaml.safe_load((model_dir / "model.yaml").read_text())
    default_threshold = (manifest.get("config") or {}).get("score_threshold")
    card = replace_section(
        card, "metrics", metrics_table(json.loads((eval_dir / "metrics.json").read_text()))
    )
    points = json.loads((eval_dir / "operating_points.json").read_text())
    card = replace_section(card, "operating-points", operating_points_table(points, default_threshold))
    photo_dir = eval_dir / "photo"
    if (photo_dir / "metrics.json").exists():
        photo = json.loads((photo_dir / "metrics.json").read_text())
        card = replace_section(card, "metrics-photo", metrics_table(photo))
    if (photo_dir / "operating_points.json").exists():
        photo_points = json.loads((photo_dir / "operating_points.json").read_text())
        card = replace_section(
            card, "operating-points-photo", operating_points_table(photo_points, default_threshold)
        )
    if (eval_dir / "nms_sweep.json").exists():
        sweep = json.loads((eval_dir / "nms_sweep.json").read_text())
        card = replace_section(card, "nms-sweep", nms_sweep_table(sweep))
    curve_path = eval_dir / "training_curve.json"
    curve = json.loads(curve_path.read_text()) if curve_path.exists() else []
    return replace_section(card, "training-curve", training_curve_table(curve))


def readme_quality(model_dir: Path) -> str:
    """The README's one-paragraph summary of the model's held-out quality (both sets)."""
    plain = json.loads((model_dir / "eval" / "metrics.json").read_text())
    photo = json.loads((model_dir / "eval" / "photo" / "metrics.json").read_text())
    per_class = plain["per_class_AP50"]
    weakest = min(per_class, key=per_class.get)
    return (
        f"On {plain['data']['count']} held-out images (`make eval`): **AP@0.5 {plain['AP50']:.3f}, "
        f"mAP@[.5:.95] {plain['mAP']:.3f}** (weakest class {weakest} {per_class[weakest]:.3f}). "
        f"On {photo['data']['count']} photo-like held-out images (textures, blur, noise, low JPEG "
        f"qualities, small and border-cut shapes; also in `make eval`): AP@0.5 {photo['AP50']:.3f}, "
        f"mAP {photo['mAP']:.3f}. Measured {plain['measured']['utc']} by `make model-card`."
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model_dir", type=Path)
    p.add_argument("--readme", type=Path, help="also rewrite this README's demo-quality block")
    p.add_argument("--check", action="store_true", help="fail if MODEL_CARD.md is not up to date")
    args = p.parse_args(argv)
    outputs = {args.model_dir / "MODEL_CARD.md": render(args.model_dir)}
    if args.readme:
        readme = replace_section(args.readme.read_text(), "demo-quality", readme_quality(args.model_dir))
        outputs[args.readme] = readme
    stale = [path for path, new in outputs.items() if new != path.read_text()]
    if args.check:
        for path in stale:
            print(f"{path} is out of date: run make model-card", file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        path.write_text(outputs[path])
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
