"""The fleet simulator against one real replica: ``python -m bench.simulate_check``.

1. Starts one real ``python -m predictor`` (demo model, CPU, the overload bench's settings) on loopback.
2. Measures closed-loop cells (``--concurrency`` clients, the overload bench's open-loop generator
   :mod:`bench.loadgen` in closed-loop mode, same JPEG bodies) and turns them into a planner benchmark
   (``predictor.tools.plan``'s format), from which the simulator takes its service times.
3. Offers open-loop scenarios to the real server: a step (``--step`` fractions of the closed-loop
   saturated throughput) and a ramp (``--ramp``), each phase ``--seconds`` long.
4. Replays the very arrival times the generator was due to send through the simulator (one replica,
   no autoscaling, the server's defaults), and compares p50/p95 of the 200s, throughput (200s
   answered in the timed windows per second) and the 503 count, per scenario.

Writes ``bench/out/simulate_check.json`` and prints the comparison as a Markdown table. The replica
and the generator share this machine's cores; the simulator's replica has the cores of the cells
measured in step 2, taken on the same machine minutes apart (docs/simulator.md, "Validation").
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import OUT_DIR, make_test_jpegs, percentile, start_cpu_server
from bench.loadgen import Generator, Phase, PhaseResult
from predictor.protocol.wire import MODEL_NAME
from predictor.serving.resources import cpu_model_name
from predictor.tools.plan import BENCHMARK_FORMAT
from predictor.tools.simulate import FleetConfig, ServiceModel, Simulation


def cell(c: int, r: PhaseResult) -> dict[str, Any]:
    """A planner benchmark cell from a closed-loop phase."""
    ok = [(done - sent) * 1e3 for _, sent, done, s in r.requests if s == "200"]
    return {
        "max_batch_size": 32,
        "concurrency": c,
        "requests": len(ok),
        "errors": sum(1 for *_, s in r.requests if s != "200"),
        "throughput_rps": r.completed.get("200", 0) / r.seconds,
        "mean_ms": float(np.mean(ok)) if ok else float("nan"),
        "p50_ms": percentile(ok, 50),
        "p95_ms": percentile(ok, 95),
        "p99_ms": percentile(ok, 99),
    }


def figures(rows: list[tuple[float, float, str]], seconds: float) -> dict[str, Any]:
    """p50/p95 of the 200s (from due), 200s completed in the window per second, 503s; ``rows`` are
    ``(due, done, status)`` relative to the window start."""
    ok = [(done - due) * 1e3 for due, done, s in rows if s == "200"]
    return {
        "requests": len(rows),
        "p50_ms": percentile(ok, 50),
        "p95_ms": percentile(ok, 95),
        "throughput_rps": sum(1 for _, done, s in rows if s == "200" and done < seconds) / seconds,
        "n503": sum(1 for *_, s in rows if s == "503"),
        "statuses": dict(Counter(s for *_, s in rows)),
    }


def scenario(
    gen: Generator, base: dict[str, Any], rates: list[float], seconds: float, warmup_s: float, seed: int
):
    """Open-loop phases back to back (warm-up only before the first); returns the phases' results and
    the arrival times laid end to end (the first phase's warm-up starts at 0)."""
    results, offsets = [], []
    offset = 0.0
    for i, rate in enumerate(rates):
        w = warmup_s if i == 0 else 0.0
        phase = Phase(**base, seconds=seconds, warmup_s=w, rate=rate, seed=seed + 2 * i)
        r = gen.run(phase)
        offsets.append(offset + w)
        offset += w + seconds
        results.append(r)
    return results, offsets


def arrivals_of(results: list[PhaseResult], offsets: list[float]) -> list[float]:
    """Every due time of the phases (warm-ups included), on one clock."""
    times = []
    for r, off in zip(results, offsets, strict=True):
        times += [off + due for due, *_ in r.warmup] + [off + due for due, *_ in r.requests]
    return sorted(times)


def simulate_replay(
    cells: list[dict[str, Any]],
    times: list[float],
    offsets: list[float],
    seconds: float,
    seed: int,
    overlap: float,
) -> list[list[tuple[float, float, str]]]:
    """The same arrivals through one simulated replica; per phase ``(due, done, status)`` in its window."""
    svc = ServiceModel.from_cells(cells, 32, "closed-loop cells of this run", overlap)
    cfg = FleetConfig(mode="hpa", initial_replicas=1)
    cfg.hpa = type(cfg.hpa)(min_replicas=1, max_replicas=1)
    sim = Simulation(cfg, svc, seed).run(np.asarray(times), horizon_s=offsets[-1] + seconds)
    return [
        [(q.arrival - off, q.done - off, q.status) for q in sim.requests if off <= q.arrival < off + seconds]
        for off in offsets
    ]


def compare(report: dict[str, Any], overlap: float) -> None:
    """Fill each phase's ``simulated`` figures from the recorded arrivals (``--replay`` redoes this)."""
    cells = report["benchmark"]["cells"]
    for sc in report["scenarios"].values():
        seconds = sc["seconds"]
        simulated = simulate_replay(cells, sc["arrivals"], sc["offsets"], seconds, 5, overlap)
        for ph, rows in zip(sc["phases"], simulated, strict=True):
            ph["simulated"] = figures(rows, seconds)
    report["overlap"] = overlap


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--concurrency", default="1,2,4,8,16,32")
    p.add_argument("--cell_s", type=float, default=8.0)
    p.add_argument("--step", default="0.3,0.8", help="step: fractions of the saturated throughput")
    p.add_argument("--ramp", default="0.2,0.4,0.6,0.8,1.0", help="ramp: fractions, one phase each")
    p.add_argument("--overload", default="0.5,1.5", help="a step into overload (503s)")
    p.add_argument("--seconds", type=float, default=12.0, help="timed seconds per phase")
    p.add_argument("--warmup_s", type=float, default=3.0)
    p.add_argument("--out", type=Path, default=OUT_DIR / "simulate_check.json")
    p.add_argument("--overlap", type=float, default=2.0, help="the simulator's --overlap")
    p.add_argument("--replay", action="store_true", help="only re-simulate the arrivals recorded in --out")
    args = p.parse_args(argv)
    if args.replay:
        report = json.loads(args.out.read_text())
        compare(report, args.overlap)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
        print(markdown(report))
        return 0
    from predictor.models import DEMO_MODEL_DIR

    args.out.parent.mkdir(parents=True, exist_ok=True)
    server = start_cpu_server(DEMO_MODEL_DIR, args.out.with_name("simulate_check_server.log"))
    bodies = tuple(make_test_jpegs()[:4])
    report: dict[str, Any] = {
        "machine": {
            "cpu": cpu_model_name(),
            "cpu_count": os.cpu_count(),
            "affinity": len(os.sched_getaffinity(0)),
            "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "load_average_at_start": list(os.getloadavg()),
        }
    }
    try:
        server.wait_ready()
        base = {"host": "127.0.0.1", "port": server.http_port, "path": f"/v1/models/{MODEL_NAME}:predict",
                "bodies": bodies}  # fmt: skip
        with Generator() as gen:
            cells = []
            for c in (int(v) for v in args.concurrency.split(",")):
                r = gen.run(Phase(**base, seconds=args.cell_s, warmup_s=2.0, clients=c))
                cells.append(cell(c, r))
                x, p50 = cells[-1]["throughput_rps"], cells[-1]["p50_ms"]
                print(f"closed loop c={c}: {x:.1f} req/s, p50 {p50:.0f} ms")
            sat = max(c["throughput_rps"] for c in cells)
            report["benchmark"] = {
                "format": BENCHMARK_FORMAT,
                "model_dir": "demo",
                "batch_wait_ms": 2.0,
                "request": "raw JPEG (bench.common.make_test_jpegs), bench.loadgen closed loop",
                "cells": cells,
            }
            report["saturated_rps"] = sat
            report["seconds_per_phase"] = args.seconds
            report["scenarios"] = {}
            for name, fracs in (("step", args.step), ("ramp", args.ramp), ("overload", args.overload)):
                rates = [float(f) * sat for f in fracs.split(",")]
                results, offsets = scenario(gen, base, rates, args.seconds, args.warmup_s, seed=11)
                phases = [
                    {"rate": rate, "measured": figures([(d, e, s) for d, _, e, s in r.requests], r.seconds)}
                    for rate, r in zip(rates, results, strict=True)
                ]
                report["scenarios"][name] = {
                    "seconds": args.seconds,
                    "offsets": offsets,
                    "arrivals": arrivals_of(results, offsets),
                    "phases": phases,
                    "load_average_1m": os.getloadavg()[0],
                }
                print(name, json.dumps(phases))
    finally:
        server.terminate()
    compare(report, args.overlap)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(markdown(report))
    print(f"JSON: {args.out}")
    return 0


def _err(sim: float, real: float) -> str:
    if not real or real != real or sim != sim:
        return "-"
    return f"{100 * (sim - real) / real:+.0f}%"


def markdown(report: dict[str, Any]) -> str:
    """The comparison table (bench/results.py adds the date and machine line above it)."""
    loads = ", ".join(f"{n} {sc['load_average_1m']:.1f}" for n, sc in report["scenarios"].items())
    lines = [
        f"Saturated closed-loop throughput {report['saturated_rps']:.1f} req/s; simulator `--overlap "
        f"{report['overlap']:g}`; {report['seconds_per_phase']:g} s per phase; 1-minute load average after "
        f"each scenario: {loads}; err = (simulated - real) / real.",
        "",
        "| scenario | offered req/s | p50 ms real / sim (err) | p95 ms real / sim (err) | "
        "throughput real / sim (err) | 503 real / sim |",
        "|---|---:|---|---|---|---|",
    ]
    for name, sc in report["scenarios"].items():
        for ph in sc["phases"]:
            m, s = ph["measured"], ph["simulated"]
            lines.append(
                f"| {name} | {ph['rate']:.1f} | "
                f"{m['p50_ms']:.0f} / {s['p50_ms']:.0f} ({_err(s['p50_ms'], m['p50_ms'])}) | "
                f"{m['p95_ms']:.0f} / {s['p95_ms']:.0f} ({_err(s['p95_ms'], m['p95_ms'])}) | "
                f"{m['throughput_rps']:.1f} / {s['throughput_rps']:.1f} "
                f"({_err(s['throughput_rps'], m['throughput_rps'])}) | {m['n503']} / {s['n503']} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
