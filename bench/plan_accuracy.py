"""Capacity planner accuracy: does the p95 that ``predictor.tools.plan`` predicts hold on a fresh run?

Sweeps the demo model (or ``--model_dir``) with the planner's own harness (real servers on loopback,
``python -m predictor``), plans, then measures the chosen (max batch size, concurrency) anew, three times
``--requests`` requests, and compares the median measured p95 with the predicted one. A timing check:
it belongs here, not in the test suite (tests/test_plan.py keeps the deterministic checks of the same
sweep). Needs a quiet machine; on a shared 2-core machine the tolerance is 25%.

``python -m bench.plan_accuracy [--model_dir DIR] [--requests 200] [--tolerance 0.25] [--out_dir bench/out]``
(``make bench-plan``) -> a line per run and ``plan_accuracy.json``; exit 1 when outside the tolerance.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
from pathlib import Path

from predictor.tools import plan


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model_dir", default=None, help="model to plan for (default: the shipped demo model)")
    ap.add_argument("--requests", type=int, default=200, help="timed requests per cell and per check run")
    ap.add_argument("--tolerance", type=float, default=0.25, help="allowed |predicted - measured| / measured")
    ap.add_argument("--out_dir", default="bench/out")
    args = ap.parse_args(argv)
    if args.model_dir is None:
        from predictor.models import DEMO_MODEL_DIR

        args.model_dir = str(DEMO_MODEL_DIR)
    work = Path(tempfile.mkdtemp(prefix="plan-accuracy-"))
    out = work / "plan"
    plan_args = ["--slo-p95-ms", "2000", "--rate", "50", "--model_dir", args.model_dir, "--out", str(out),
                 "--max-batch-sizes", "1,8", "--concurrency", "1,2,4,8",
                 "--requests", str(args.requests)]  # fmt: skip
    if plan.main(plan_args) != 0:
        return 1
    chosen = json.loads((out / "plan.json").read_text())["plan"]
    server = plan.LocalServer(args.model_dir, chosen["max_batch_size"], 2.0, work / "check.log")
    server.start()
    runs = []
    try:
        bodies = plan.request_bodies()
        for i in range(3):
            latencies, errors, wall = asyncio.run(
                plan.measure_cell(server.url, bodies, chosen["concurrency"], args.requests)
            )
            cell = plan.summarize(chosen["max_batch_size"], chosen["concurrency"], latencies, errors, wall)
            print(f"check run {i + 1}: p95 {cell.p95_ms:.1f} ms, {cell.requests} requests, {errors} errors")
            runs.append(cell)
    finally:
        server.stop()
    measured = statistics.median(r.p95_ms for r in runs)
    predicted = chosen["predicted_p95_ms"]
    error = abs(predicted - measured) / measured
    ok = error <= args.tolerance and all(r.errors == 0 for r in runs)
    result = {
        "machine": plan.machine_info(),
        "plan": chosen,
        "measured_p95_ms": [r.p95_ms for r in runs],
        "median_measured_p95_ms": measured,
        "relative_error": error,
        "tolerance": args.tolerance,
        "pass": ok,
    }
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    (Path(args.out_dir) / "plan_accuracy.json").write_text(json.dumps(result, indent=2))
    print(
        f"predicted p95 {predicted:.1f} ms, measured (median of 3) {measured:.1f} ms: "
        f"error {100 * error:.0f}% (tolerance {100 * args.tolerance:.0f}%) -> {'PASS' if ok else 'FAIL'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
