"""A synthetic planner benchmark (``predictor.tools.plan`` reads it with ``--benchmark``) for the
simulator's and planner's search tests."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path


def write_linear_benchmark(path: Path, per_client_ms: float) -> Path:
    """Closed-loop cells at concurrency 1, 2, 4, 8, 16 (max batch 8) whose mean latency is
    ``20 + per_client_ms * (c - 1)`` ms, p95 1.3x and p99 1.5x of it, throughput ``c / mean``; written to
    ``path`` as a planner benchmark JSON."""
    from predictor.tools import plan

    cells = []
    for c in (1, 2, 4, 8, 16):
        mean = 20.0 + per_client_ms * (c - 1)
        cells.append(asdict(plan.Cell(8, c, 200, 0, c / (mean / 1e3), mean, mean, 1.3 * mean, 1.5 * mean)))
    bench = {"format": plan.BENCHMARK_FORMAT, "model_dir": "synthetic", "batch_wait_ms": 2.0, "cells": cells,
             "machine": {"cpu": "synthetic"}, "request": "none"}  # fmt: skip
    path.write_text(json.dumps(bench))
    return path
