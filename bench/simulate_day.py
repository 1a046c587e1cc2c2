"""The planner over a simulated day: ``python -m bench.simulate_day`` (``make simulate-day``).

``predictor.tools.plan --trace`` with the demo replica's CPU profile and closed-loop cells measured by
``make bench-simulate`` (:data:`PROFILE`, :data:`BENCHMARK`, committed): a day of diurnal traffic
(2 to 8 req/s) with MMPP bursts of +150 req/s (every 1.5 h on average, about a minute each: more than
one replica serves), a p95
objective (and 99.5% of the requests within it: the day's p95 alone hides the bursts) and a cost
per replica-hour; it searches minReplicas, scaleTarget, the panic threshold and
the max batch size (and maxReplicas with ``--search-max-replicas``), and this script copies the
results where the docs show them:

- :data:`PLOT` (load, replicas and p95 over the day, of the cheapest setting meeting the objective),
- :data:`SEARCH` (every candidate: p95, SLO attainment, 503s, replica-hours, cost),
- :data:`OVERLAY` (its chart values; a ``ci/`` value set, so the chart tests render it and check that
  a stock platform admits it).

The plot's title and the overlay's header name the profile's machine and date and this run's.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from bench.common import REPO
from predictor.tools import plan

PROFILE = REPO / "docs" / "simulator-demo-profile.json"
BENCHMARK = REPO / "docs" / "simulator-demo-benchmark.json"
PLOT = REPO / "docs" / "simulator-day.png"
SEARCH = REPO / "docs" / "simulator-day-search.md"
OVERLAY = REPO / "helm" / "ssd-detector" / "ci" / "simulated-day-values.yaml"

TRACE = "diurnal:5:3:86400+mmpp:0:150:86400:5400:60"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trace", default=TRACE)
    p.add_argument("--slo-p95-ms", default="300")
    p.add_argument("--min-attainment", default="0.995", help="requests answered within the objective")
    p.add_argument("--cost-per-replica-hour", default="0.5")
    p.add_argument("--rate", default="25", help="the steady plan's rate (its containerConcurrency)")
    p.add_argument("--peak-factor", default="5", help="maxReplicas = ceil(factor x rate / a replica's limit)")
    p.add_argument("--search-min-replicas", default="1,2")
    p.add_argument(
        "--search-max-replicas",
        default="",
        help="maxReplicas candidates (default: the plan's, --peak-factor)",
    )
    p.add_argument("--search-targets", default="2,4")
    p.add_argument("--search-panic", default="200,400")
    p.add_argument("--search-max-batch", default="4,8")
    p.add_argument("--workers", default="2")
    p.add_argument("--out", type=Path, default=REPO / "out" / "simulate-day")
    args = p.parse_args(argv)
    argv_plan = [
        "--benchmark", str(BENCHMARK), "--cpu-profile", str(PROFILE), "--trace", args.trace,
        "--slo-p95-ms", args.slo_p95_ms, "--min-attainment", args.min_attainment,
        "--rate", args.rate, "--peak-factor", args.peak_factor,
        "--cost-per-replica-hour", args.cost_per_replica_hour,
        "--search-min-replicas", args.search_min_replicas, "--search-targets", args.search_targets,
        "--search-panic", args.search_panic, "--search-max-batch", args.search_max_batch,
        "--workers", args.workers, "--out", str(args.out),
        *(["--search-max-replicas", args.search_max_replicas] if args.search_max_replicas else []),
    ]  # fmt: skip
    rc = plan.main(argv_plan)
    sim = args.out / "simulated"
    shutil.copyfile(sim / "simulate.png", PLOT)
    shutil.copyfile(sim / "search.md", SEARCH)
    if rc == 0:
        shutil.copyfile(sim / "values-sim.yaml", OVERLAY)
    wrote = [PLOT, SEARCH, *([OVERLAY] if rc == 0 else [])]
    print("wrote " + ", ".join(str(path.relative_to(REPO)) for path in wrote))
    return rc


if __name__ == "__main__":
    sys.exit(main())
