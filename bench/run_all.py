"""Run every CPU benchmark (raw model, ONNX Runtime peer, served end to end), then print the ratios and plot.

Each stage runs in its own process (``python -m bench.<stage>``) and writes its JSON under ``--out_dir``;
this script then writes ``bench.json`` (all results + ratios) and ``bench.png`` (throughput and latency
against concurrency) and prints the ratios last:

* served / raw: served images/s at the highest concurrency (16) over ``Detector.run_batch`` images/s at
  the same batch size (16): what the server keeps of the compiled function's throughput; also at
  concurrency 8 over batch 8;
* the ceiling of served / raw on this machine: a server that spent no CPU beyond the model call and
  the decode + resize of each image (both measured by the raw stage, in CPU ms per image) would serve
  ``cores / (model + decode)`` images/s; over raw images/s at the same batch. Where decode + resize is
  a large share of the model's CPU (the small demo model on a CPU), this is well below 1;
* ours / ORT: our network alone over ONNX Runtime on the same network, weights and batch;
* p50 at concurrency 1 over (raw batch-1 latency + decode/resize time of the test images): what one
  lone request pays on top of the work it cannot avoid.

``python -m bench.run_all`` (``make bench``) runs the full set in about 10-15 minutes on 2 cores;
``--quick`` runs tiny settings for the smoke test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import BENCH_COMPUTE_NICE, MODELS, OUT_DIR, REPO, fmt_table, write_json

STAGES = ("raw", "onnx", "served")

FULL = {
    "raw": ["--batches", "1,4,8,16,32", "--min_time_s", "2", "--min_iters", "2"],
    "onnx": ["--batches", "1,4,8,16,32", "--min_time_s", "2", "--min_iters", "2"],
    # the server's compute threads at the bench's own priority, as the raw stage's (BENCH_COMPUTE_NICE)
    "served": ["--concurrency", "1,4,8,16", "--duration_s", "10", "--min_requests", "3",
               "--server_args", f"--compute_nice {BENCH_COMPUTE_NICE}"],
}  # fmt: skip
QUICK = {
    "raw": ["--batches", "1,2", "--min_time_s", "0.1", "--min_iters", "1", "--matmul_n", "256"],
    "onnx": ["--batches", "1,2", "--min_time_s", "0.1", "--min_iters", "1"],
    "served": ["--concurrency", "1,2", "--duration_s", "0.3", "--min_requests", "1", "--max_batch_size", "2",
               "--images_per_size", "1"],
}  # fmt: skip
MODULES = {"raw": "bench.raw_model", "onnx": "bench.onnx_peer", "served": "bench.served"}
FILES = {"raw": "raw_model.json", "onnx": "onnx_peer.json", "served": "served.json"}


def run_stage(stage: str, args: argparse.Namespace) -> float:
    """Run one stage in a subprocess (output streamed); returns its wall time; raises on failure."""
    settings = QUICK if args.quick else FULL
    cmd = [sys.executable, "-m", MODULES[stage], "--models", args.models, "--out_dir", str(args.out_dir),
           *settings[stage]]  # fmt: skip
    print(f"\n##### {stage}: {' '.join(cmd[1:])}", flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True)
    return time.perf_counter() - t0


def nearest_batch(rows: list[dict], batch: int) -> dict | None:
    """The row with the largest batch not above ``batch`` (rows sorted by batch)."""
    fitting = [r for r in rows if r["batch"] <= batch]
    return fitting[-1] if fitting else None


def ours_over_ort(raw_m: dict, onnx_m: dict) -> dict[int, float]:
    """Network-alone images/s over ONNX Runtime images/s, by batch."""
    ours = {x["batch"]: x["images_per_s"] for x in raw_m["network"]}
    return {x["batch"]: ours[x["batch"]] / x["images_per_s"] for x in onnx_m["rows"] if x["batch"] in ours}


def served_over_raw(raw_m: dict, served_m: dict) -> dict[str, Any]:
    """Served images/s over run_batch images/s at the batch size equal to the concurrency (or the
    largest below it), by protocol: at the top concurrency (``by_protocol``) and at each concurrency
    of at least 8 (``by_concurrency``)."""
    by_concurrency: dict[int, dict[str, Any]] = {}
    for c in sorted({x["concurrency"] for x in served_m["rows"]}):
        ref = nearest_batch(raw_m["detector"], c)
        if ref is None:
            continue
        cells = [x for x in served_m["rows"] if x["concurrency"] == c]
        by_concurrency[c] = {
            "raw_batch": ref["batch"],
            "raw_images_per_s": ref["images_per_s"],
            "by_protocol": {x["protocol"]: x["images_per_s"] / ref["images_per_s"] for x in cells},
        }
    if not by_concurrency:
        return {}
    top = max(by_concurrency)
    return {
        "concurrency": top,
        **by_concurrency[top],
        "by_concurrency": {c: v for c, v in by_concurrency.items() if c >= 8 or c == top},
    }


def served_ceiling(raw_m: dict, concurrency: int, cores: int) -> dict[str, Any]:
    """The highest served / raw a server could reach on ``cores`` cores if it spent no CPU beyond the
    model call (CPU ms per image of run_batch at the batch nearest ``concurrency``, from the cores the
    raw stage used) and the decode + resize of the test images (mean over their sizes)."""
    ref = nearest_batch(raw_m["detector"], concurrency)
    if ref is None or not raw_m.get("decode_resize_ms") or not ref.get("process_cores_used"):
        return {}
    model_ms = 1000.0 * ref["process_cores_used"] / ref["images_per_s"]
    decode_ms = statistics.mean(raw_m["decode_resize_ms"].values())
    best = 1000.0 * cores / (model_ms + decode_ms)
    return {
        "raw_batch": ref["batch"],
        "cores": cores,
        "model_cpu_ms_per_image": model_ms,
        "decode_resize_ms_per_image": decode_ms,
        "images_per_s": best,
        "ceiling": best / ref["images_per_s"],
    }


def p50_over_alone(raw_m: dict, served_m: dict) -> dict[str, Any]:
    """p50 at concurrency 1 over (run_batch batch-1 median + mean decode/resize time), by protocol."""
    batch1 = nearest_batch(raw_m["detector"], 1)
    cells = [x for x in served_m["rows"] if x["concurrency"] == 1]
    if batch1 is None or not cells:
        return {}
    decode_ms = statistics.mean(raw_m["decode_resize_ms"].values())
    alone_ms = batch1["latency_ms_median"] + decode_ms
    return {
        "raw_batch1_ms": batch1["latency_ms_median"],
        "decode_resize_ms": decode_ms,
        "by_protocol": {x["protocol"]: x["p50_ms"] / alone_ms for x in cells},
        "p50_ms": {x["protocol"]: x["p50_ms"] for x in cells},
    }


def compute_ratios(raw: dict | None, onnx: dict | None, served: dict | None) -> dict[str, Any]:
    """The three headline ratios per model (see the module docstring); missing inputs give no entry."""
    ratios: dict[str, Any] = {}
    for name in MODELS:
        raw_m = (raw or {}).get("models", {}).get(name)
        onnx_m = (onnx or {}).get("models", {}).get(name)
        served_m = (served or {}).get("models", {}).get(name)
        r: dict[str, Any] = {}
        if raw_m and onnx_m:
            r["ours_over_ort"] = ours_over_ort(raw_m, onnx_m)
        if raw_m and served_m:
            r["served_over_raw"] = served_over_raw(raw_m, served_m)
            r["p50_c1_over_raw_plus_decode"] = p50_over_alone(raw_m, served_m)
            top = r["served_over_raw"].get("concurrency")
            if top is not None:
                cores = raw["machine"].get("affinity") or raw["machine"].get("cpu_count") or 1
                r["served_over_raw_ceiling"] = ceiling = served_ceiling(raw_m, top, cores)
                if ceiling:
                    cells = [x for x in served_m["rows"] if x["concurrency"] == top]
                    r["served_over_ceiling"] = {
                        x["protocol"]: x["images_per_s"] / ceiling["images_per_s"] for x in cells
                    }
        if r:
            ratios[name] = r
    return ratios


def plot(raw: dict | None, served: dict, path: Path) -> Path:
    """Throughput (top) and p50/p95 latency (bottom) against concurrency, one column per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(served["models"])
    fig, axes = plt.subplots(2, len(names), figsize=(6 * len(names), 8), squeeze=False)
    for col, name in enumerate(names):
        rows = served["models"][name]["rows"]
        top, bottom = axes[0][col], axes[1][col]
        for protocol in dict.fromkeys(r["protocol"] for r in rows):
            pr = [r for r in rows if r["protocol"] == protocol]
            cs = [r["concurrency"] for r in pr]
            top.plot(cs, [r["images_per_s"] for r in pr], "o-", label=protocol)
            line = bottom.plot(cs, [r["p50_ms"] for r in pr], "o-", label=f"{protocol} p50")[0]
            bottom.plot(cs, [r["p95_ms"] for r in pr], "s:", color=line.get_color(), label=f"{protocol} p95")
        raw_m = (raw or {}).get("models", {}).get(name)
        if raw_m:
            ref = nearest_batch(raw_m["detector"], max(r["concurrency"] for r in rows))
            if ref:
                top.axhline(
                    ref["images_per_s"], color="gray", ls="--", label=f"raw run_batch, batch {ref['batch']}"
                )
        top.set(title=f"{name}: throughput", xlabel="concurrency (clients)", ylabel="images/s", xscale="log")
        bottom.set(title=f"{name}: latency", xlabel="concurrency (clients)", ylabel="ms", xscale="log")
        top.set_ylim(bottom=0)
        bottom.set_ylim(bottom=0)
        for ax in (top, bottom):
            ax.set_xticks(sorted({r["concurrency"] for r in rows}), labels=None)
            ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def ratios_markdown(combined: dict[str, Any]) -> str:
    """The ratios of ``bench.json`` (see the module docstring) as a table, one row per model and ratio."""
    rows = []
    for name, r in combined["ratios"].items():
        if "ours_over_ort" in r:
            text = ", ".join(f"b{b}: {v:.2f}" for b, v in r["ours_over_ort"].items())
            rows.append([name, "ours / ONNX Runtime (network alone, by batch)", text])
        if r.get("served_over_raw"):
            s = r["served_over_raw"]
            for c, cell in s.get("by_concurrency", {str(s["concurrency"]): s}).items():
                text = ", ".join(f"{p}: {v:.2f}" for p, v in cell["by_protocol"].items())
                rows.append([name, f"served c={c} / raw run_batch b={cell['raw_batch']}", text])
        if r.get("served_over_raw_ceiling"):
            m = r["served_over_raw_ceiling"]
            rows.append(
                [
                    name,
                    f"ceiling of served / raw b={m['raw_batch']} on {m['cores']} cores "
                    "(model + decode/resize CPU only)",
                    f"{m['ceiling']:.2f} ({m['model_cpu_ms_per_image']:.1f} + "
                    f"{m['decode_resize_ms_per_image']:.1f} CPU ms per image)",
                ]
            )
        if r.get("served_over_ceiling"):
            text = ", ".join(f"{k}: {v:.2f}" for k, v in r["served_over_ceiling"].items())
            rows.append([name, f"served c={r['served_over_raw']['concurrency']} / that ceiling", text])
        if r.get("p50_c1_over_raw_plus_decode"):
            p = r["p50_c1_over_raw_plus_decode"]
            text = ", ".join(f"{k}: {v:.2f} ({p['p50_ms'][k]:.0f} ms)" for k, v in p["by_protocol"].items())
            base = f"{p['raw_batch1_ms']:.0f} + {p['decode_resize_ms']:.0f} ms"
            rows.append([name, f"p50 c=1 / (raw b=1 + decode) = / ({base})", text])
    return fmt_table(["model", "ratio", "value"], rows)


SUMMARY_TITLES = {"ssd300": "SSD300-VGG16", "demo": "demo model"}


def summary_markdown(combined: dict[str, Any]) -> str:
    """docs/benchmarks.md's summary table: batch-1 speed, ours / ORT at batch 16, served / raw, and
    lone-request p50 ratio."""
    raw, ratios = combined["raw"], combined["ratios"]
    if not raw:
        return "_No raw-model results in bench.json (`make bench` runs every stage)._"
    names = list(raw["models"])
    header = [""] + [
        f"{SUMMARY_TITLES.get(n, n)} ({raw['models'][n]['gflop_per_image']:.3g} GFLOP/image)" for n in names
    ]
    speed, ort, served, ceiling, alone = (["compiled detection function, batch 1"], [], [], [], [])
    top: dict[str, Any] = {}
    for name in names:
        b1 = nearest_batch(raw["models"][name]["detector"], 1)
        speed.append(
            f"{b1['latency_ms_median']:.3g} ms/image ({b1['gflops']:.0f} GFLOP/s, "
            f"{100 * b1['fraction_of_peak']:.0f}% of `tf.matmul`'s rate)"
            if b1
            else "-"
        )
        r = ratios.get(name, {})
        by_batch = {int(b): v for b, v in r.get("ours_over_ort", {}).items()}
        ort.append(f"{by_batch[16]:.2f}x" if 16 in by_batch else "-")
        s = r.get("served_over_raw") or {}
        top = top or s
        served.append(", ".join(f"{v:.2f}" for v in s.get("by_protocol", {}).values()) or "-")
        m = r.get("served_over_raw_ceiling") or {}
        ceiling.append(f"{m['ceiling']:.2f}" if m else "-")
        p = r.get("p50_c1_over_raw_plus_decode") or {}
        v1 = p.get("by_protocol", {}).get("v1")
        alone.append(f"{v1:.2f} ({p['p50_ms']['v1']:.0f} ms)" if v1 is not None else "-")
    rows = [
        speed,
        ["network alone vs ONNX Runtime (same weights), batch 16", *ort],
        [
            f"served at concurrency {top.get('concurrency')} / raw at batch {top.get('raw_batch')} "
            f"({', '.join(top.get('by_protocol', {}))})",
            *served,
        ],
        ["the ceiling of that ratio here: model + decode/resize CPU per image, nothing else", *ceiling],
        ["p50 at concurrency 1 (V1) / (raw batch 1 + decode)", *alone],
    ]
    return fmt_table(header, rows)


def variant_shares(post: dict | None, name: str, variant: str) -> dict[int, float]:
    """``post / whole`` (min times) of one post-processing ``variant`` by batch, from
    ``bench/postprocess_variants.py``'s JSON (empty when absent)."""
    rows = ((post or {}).get("models", {}).get(name) or {}).get("rows", [])
    out = {}
    for row in rows:
        ms = row["ms_per_image"]
        if f"post:{variant}" in ms:
            out[row["batch"]] = ms[f"post:{variant}"]["min"] / ms[f"whole:{variant}"]["min"]
    return out


def _shares(shares: dict[int, float]) -> str:
    return ", ".join(f"b{b} {100 * v:.0f}%" for b, v in shares.items()) or "-"


def readme_markdown(combined: dict[str, Any]) -> str:
    """README.md's performance summary: served images/s per protocol at the top concurrency, the raw
    rate, the ceiling, served / ceiling, and post-processing's share of the call (before -> after)."""
    raw, served, ratios = combined.get("raw"), combined.get("served"), combined["ratios"]
    if not raw or not served:
        return "_No raw-model or served results in bench.json (`make bench` runs every stage)._"
    names = [n for n in served["models"] if n in raw["models"]]
    header = [""] + [SUMMARY_TITLES.get(n, n) for n in names]
    rows: list[list[Any]] = []
    top = max(x["concurrency"] for n in names for x in served["models"][n]["rows"])
    protocols = list(dict.fromkeys(x["protocol"] for n in names for x in served["models"][n]["rows"]))
    for protocol in protocols:
        cells = []
        for name in names:
            hit = [x for x in served["models"][name]["rows"]
                   if x["protocol"] == protocol and x["concurrency"] == top]  # fmt: skip
            cells.append(f"{hit[0]['images_per_s']:.3g}" if hit else "-")
        rows.append([f"served img/s, {protocol}, {top} clients", *cells])
    raw_row, ceiling_row, over_row, post_row = [], [], [], []
    for name in names:
        r = ratios.get(name, {})
        s = r.get("served_over_raw") or {}
        raw_row.append(f"{s['raw_images_per_s']:.3g}" if s else "-")
        m = r.get("served_over_raw_ceiling") or {}
        ceiling_row.append(f"{m['images_per_s']:.3g} ({m['ceiling']:.2f} x raw)" if m else "-")
        over = r.get("served_over_ceiling") or {}
        over_row.append(" / ".join(f"{v:.2f}" for v in over.values()) or "-")
        before = variant_shares(combined.get("postprocess"), name, "top400")
        after = variant_shares(combined.get("postprocess"), name, "sized")
        if before and after:
            post_row.append(f"{_shares(before)} -> {_shares(after)} (`make bench-postprocess`)")
        else:  # the raw stage's 1 - network / run_batch is the difference of two noisy timings
            post_row.append("no `make bench-postprocess` results in the output folder")
    batch = next(
        (r["served_over_raw"]["raw_batch"] for r in ratios.values() if r.get("served_over_raw")), top
    )
    rows += [
        [f"raw `run_batch` img/s, batch {batch}", *raw_row],
        ["ceiling: cores / (model + decode CPU per image)", *ceiling_row],
        [f"served / ceiling ({' / '.join(protocols)})", *over_row],
        ["post-processing share of the call, by batch", *post_row],
    ]
    return fmt_table(header, rows)


def print_ratios(combined: dict[str, Any]) -> None:
    """The ratios, last thing printed."""
    print("\n##### ratios")
    print(ratios_markdown(combined))


def load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--stages", default=",".join(STAGES), help="comma list of raw, onnx, served")
    parser.add_argument("--quick", action="store_true", help="tiny settings (smoke test)")
    parser.add_argument("--report_only", action="store_true", help="only combine existing JSON, plot, ratios")
    parser.add_argument("--out_dir", type=Path, default=OUT_DIR)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    walls: dict[str, float] = {}
    if not args.report_only:
        for stage in args.stages.split(","):
            walls[stage] = run_stage(stage, args)
    raw, onnx, served = (load(args.out_dir / FILES[s]) for s in STAGES)
    ratios = compute_ratios(raw, onnx, served)
    machine = next((x["machine"] for x in (raw, onnx, served) if x and x.get("machine")), None)
    # Post-processing variants (make bench-postprocess), when run: README's before -> after shares.
    post = load(args.out_dir / "postprocess_variants.json")
    combined = {"machine": machine, "stage_wall_s": walls, "raw": raw, "onnx": onnx, "served": served,
                "ratios": ratios, "postprocess": post}  # fmt: skip
    write_json(args.out_dir / "bench.json", combined)
    if served:
        print(f"\nplot: {plot(raw, served, args.out_dir / 'bench.png')}")
    print(f"results: {args.out_dir / 'bench.json'}; stage wall times (s): "
          + ", ".join(f"{k} {v:.0f}" for k, v in walls.items()))  # fmt: skip
    print_ratios(combined)
    return 0


if __name__ == "__main__":
    sys.exit(main())
