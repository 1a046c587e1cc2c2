"""Capacity planner: ``python -m predictor.tools.plan --slo-p95-ms 250 --rate 40 --out out/plan``.

Given a p95 latency SLO and a target request rate, it

1. measures latency and throughput against concurrency for a few batcher sizes: for each
   ``--max-batch-sizes`` value it starts a real ``python -m predictor`` on loopback with the model
   (:mod:`predictor.tools.localserver`) and runs
   ``c`` closed-loop clients (one-image V1 requests) for each ``--concurrency`` value, after a warm-up;
   or reads such a benchmark (``--benchmark FILE``), e.g. measured on a GPU node with
   ``--measure-only``;
2. fits, per max batch size, the mean latency with the Universal Scalability Law written through
   Little's law, ``R(c) = a0 + a1 (c - 1) + a2 c (c - 1)`` (so throughput ``X(c) = c / R(c)``), and the p95
   latency with the same basis, by non-negative weighted least squares (relative errors);
3. picks the (max batch size, concurrency) with the highest predicted throughput whose predicted p95 is
   within ``--headroom`` x SLO, concurrency limited to the measured range (no extrapolation);
4. writes ``values-plan.yaml`` (a Helm values overlay for helm/ssd-detector), ``plan.png`` (measured
   points and fitted curves), ``plan.md`` (the measurements and the reasoning as tables), ``plan.json``
   and, when it measured, ``benchmark.json``.

Overlay: ``autoscaling.containerConcurrency`` = the chosen concurrency (Knative's hard limit per
replica, so a replica never runs past the point the SLO was planned for), ``autoscaling.scaleMetric``
= concurrency with ``autoscaling.scaleTarget`` = that limit x ``--target-utilization`` (Knative's
default 70%: scale out before replicas saturate), ``predictor.maxBatchSize`` / ``predictor.batchWaitMs``
as measured, ``autoscaling.minReplicas`` = replicas serving ``--rate`` at the scale target, and
``autoscaling.maxReplicas`` = replicas serving ``--peak-factor`` x rate at the hard limit.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import itertools
import json
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from predictor._argtypes import positive_floats, positive_ints, replica_floors
from predictor.protocol.wire import MODEL_NAME
from predictor.serving.options import (
    AUTO_PADDING_RULE,
    BATCH_PADDINGS,
    EXACT_ROWS_MESSAGE,
    PADDED_ROWS_MESSAGE,
    UNRECORDED_PADDING,
    ServingOptions,
)
from predictor.serving.resources import cpu_model_name
from predictor.tools.localserver import LocalServer, start_ready_server

BENCHMARK_FORMAT = "ssd-predictor/plan-benchmark/v1"


# --------------------------------------------------------------------------------------- measuring
@dataclass(frozen=True)
class Cell:
    """One measured (max batch size, concurrency) setting."""

    max_batch_size: int
    concurrency: int
    requests: int
    errors: int
    throughput_rps: float
    mean_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float


def start_planner_server(
    model_dir: str | None, max_batch_size: int, batch_wait_ms: float, log_path: Path,
    batch_padding: str = ServingOptions.batch_padding,
) -> LocalServer:  # fmt: skip
    """``python -m predictor`` with these batcher settings on loopback ports, ready (its own process
    group, stopped with ``terminate()``), one model call in flight: the cells' service times feed the
    simulator's parametric replicas, which model one (``simulate.check_calls_in_flight``); the server's
    automatic default would run two on a CPU for a fast model."""
    flags = ("--max_batch_size", str(max_batch_size), "--batch_wait_ms", str(batch_wait_ms))
    flags += ("--batch_padding", batch_padding, "--model_calls_in_flight", "1")
    return start_ready_server(model_dir, log_path, *flags, interval_s=0.3, own_session=True)


def measured_on_gpu(benchmark: dict[str, Any]) -> bool:
    """Whether a benchmark's servers ran on a GPU, as far as it tells: their ``--batch_padding`` was
    ``auto`` and they padded (``auto`` pads on a GPU or with XLA, which the planner never sets). A
    benchmark without the flag (recorded before the server ran exact sizes on a CPU) was a CPU's."""
    return benchmark.get("batch_padding_flag") == "auto" and benchmark.get("batch_padding") == "bucket"


def measured_padding(log_text: str) -> str:
    """How a measured server (started by this code) ran its model calls, from its log: ``exact`` when it
    logged :data:`~predictor.serving.options.EXACT_ROWS_MESSAGE`, ``bucket`` when it logged
    :data:`~predictor.serving.options.PADDED_ROWS_MESSAGE`.

    Raises:
      ValueError: neither line (its INFO log off, or the log cut short): the padding is unknown.
    """
    if EXACT_ROWS_MESSAGE in log_text:
        return "exact"
    if PADDED_ROWS_MESSAGE in log_text:
        return "bucket"
    raise ValueError("the server logged neither how it pads its calls nor that it runs them exactly")


def request_bodies(count: int = 4, size: tuple[int, int] = (640, 480)) -> list[bytes]:
    """V1 bodies of one JPEG each: held-out shapes images resized to ``size`` (width, height)."""
    from PIL import Image

    from predictor.datasets.shapes import EVAL_SEED, generate_sample

    bodies = []
    for i in range(count):
        image = Image.fromarray(generate_sample(EVAL_SEED, 1000 + i).image).resize(size, Image.BILINEAR)
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=90)
        bodies.append(
            json.dumps({"instances": [{"b64": base64.b64encode(buf.getvalue()).decode()}]}).encode()
        )
    return bodies


async def measure_cell(
    url: str, bodies: Sequence[bytes], concurrency: int, requests: int, warmup_per_client: int = 2
) -> tuple[list[float], int, float]:
    """``concurrency`` closed-loop clients sending V1 requests until ``requests`` have been timed.

    Returns:
      ``(latencies_s, errors, wall_s)`` of the timed phase (the warm-up is not timed).
    """
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"content-type": "application/json"}
    path = f"/v1/models/{MODEL_NAME}:predict"
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120.0) as client:
        counter = itertools.count()
        errors = 0

        async def one() -> float | None:
            nonlocal errors
            t0 = time.perf_counter()
            try:
                r = await client.post(path, content=bodies[next(counter) % len(bodies)], headers=headers)
                ok = r.status_code == 200
            except httpx.HTTPError:
                ok = False
            if not ok:
                errors += 1
                return None
            return time.perf_counter() - t0

        async def warm() -> None:
            for _ in range(warmup_per_client):
                await one()

        await asyncio.gather(*(warm() for _ in range(concurrency)))
        errors = 0
        latencies: list[float] = []
        remaining = itertools.count()
        start = time.perf_counter()

        async def timed_client() -> None:
            while next(remaining) < requests:
                latency = await one()
                if latency is not None:
                    latencies.append(latency)

        await asyncio.gather(*(timed_client() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return latencies, errors, wall


def summarize(
    max_batch_size: int, concurrency: int, latencies: Sequence[float], errors: int, wall: float
) -> Cell:
    ms = np.asarray(latencies, np.float64) * 1e3
    return Cell(
        max_batch_size=max_batch_size,
        concurrency=concurrency,
        requests=len(ms),
        errors=errors,
        throughput_rps=len(ms) / max(wall, 1e-9),
        mean_ms=float(ms.mean()) if len(ms) else math.nan,
        p50_ms=float(np.percentile(ms, 50)) if len(ms) else math.nan,
        p95_ms=float(np.percentile(ms, 95)) if len(ms) else math.nan,
        p99_ms=float(np.percentile(ms, 99)) if len(ms) else math.nan,
    )


def measure(
    model_dir: str | None,
    max_batch_sizes: Sequence[int],
    concurrencies: Sequence[int],
    *,
    batch_wait_ms: float,
    requests: int,
    out_dir: Path,
    log=print,
    batch_padding: str = ServingOptions.batch_padding,
) -> dict[str, Any]:
    """Sweep (max batch size x concurrency) against real local servers; the benchmark as JSON data
    (``batch_padding``: how the servers ran their calls, :func:`measured_padding`)."""
    bodies = request_bodies()
    cells: list[Cell] = []
    paddings = set()
    for b in max_batch_sizes:
        log_path = out_dir / f"server_b{b}.log"
        server = start_planner_server(model_dir, b, batch_wait_ms, log_path, batch_padding)
        log(f"max_batch_size {b}: server ready after {server.ready_s:.1f} s")
        try:
            paddings.add(measured_padding(log_path.read_text()))
            for c in concurrencies:
                cell = summarize(b, c, *asyncio.run(measure_cell(server.url, bodies, c, requests)))
                cells.append(cell)
                log(
                    f"  c={c:3d}: {cell.throughput_rps:7.1f} req/s  p50 {cell.p50_ms:7.1f} ms  "
                    f"p95 {cell.p95_ms:7.1f} ms  ({cell.requests} requests, {cell.errors} errors)"
                )
        finally:
            server.terminate()
    if len(paddings) != 1:
        raise RuntimeError(f"the measured servers ran their calls in different ways ({sorted(paddings)})")
    return {
        "format": BENCHMARK_FORMAT,
        "model_dir": str(model_dir) if model_dir else "demo",
        "request": "V1 JSON, one 640x480 JPEG (base64) per request, closed-loop clients on loopback",
        "batch_wait_ms": batch_wait_ms,
        "batch_padding": paddings.pop(),
        "batch_padding_flag": batch_padding,
        "machine": machine_info(),
        "cells": [asdict(c) for c in cells],
    }


def machine_info() -> dict[str, Any]:
    return {
        "host": platform.node(),
        "cpu": cpu_model_name(),
        "cpu_count": os.cpu_count(),
        "gpu_visible": os.environ.get("CUDA_VISIBLE_DEVICES", "(all)"),
        "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_average_1m": os.getloadavg()[0],
    }


def load_benchmark(path: Path) -> dict[str, Any]:
    """A planner benchmark (``--measure-only``), or ``bench/served.py``'s JSON (V1 rows, one model).
    ``batch_padding``: how its servers ran their model calls (``bucket`` or ``exact``); a benchmark that
    does not say was measured before the server ran exact sizes: ``bucket``. A ``bench/served.py`` JSON
    says it through ``--batch_padding`` in its server command, or on ``auto`` through its rows'
    computed-images counter (:func:`_padding_of_rows`). ``batch_padding_flag``: the servers'
    ``--batch_padding`` where known (:func:`measured_on_gpu`)."""
    data = json.loads(Path(path).read_text())
    if data.get("format") == BENCHMARK_FORMAT:
        padding = data.get("batch_padding", UNRECORDED_PADDING)
        if padding not in ("bucket", "exact"):
            raise ValueError(f"{path}: batch_padding {padding!r}: its servers' calls were not run one way")
        return {**data, "batch_padding": padding}
    if "models" in data:  # bench.served: {"models": {name: {"server_cmd": [...], "rows": [...]}}}
        name, model = next(iter(data["models"].items()))
        cmd = model.get("server_cmd", [])
        batch = int(cmd[cmd.index("--max_batch_size") + 1]) if "--max_batch_size" in cmd else 32
        wait = float(cmd[cmd.index("--batch_wait_ms") + 1]) if "--batch_wait_ms" in cmd else 2.0
        flag = _flag_value(cmd, "--batch_padding") or "auto"
        rows = [r for r in model["rows"] if r.get("protocol", "v1") == "v1"]
        padding = flag if flag in ("bucket", "exact") else _padding_of_rows(rows)
        if padding is None:  # no counter: a server from before the exact-size change, which padded
            padding, flag = UNRECORDED_PADDING, None
        cells = [
            asdict(Cell(batch, r["concurrency"], r["requests"], r["errors"], r["images_per_s"],
                        r["mean_ms"], r["p50_ms"], r["p95_ms"], r["p99_ms"]))
            for r in rows
        ]  # fmt: skip
        return {"format": BENCHMARK_FORMAT, "model_dir": name, "batch_wait_ms": wait, "cells": cells,
                "machine": data.get("machine", {}), "request": "bench/served.py V1 rows",
                "batch_padding": padding, "batch_padding_flag": flag}  # fmt: skip
    raise ValueError(f"{path}: not a planner benchmark ({BENCHMARK_FORMAT}) or bench/served.py JSON")


def _flag_value(cmd: Sequence[str], flag: str) -> str | None:
    """The value of ``flag`` in a command line (``--flag value`` or ``--flag=value``), or None."""
    for i, arg in enumerate(cmd):
        if arg == flag and i + 1 < len(cmd):
            return cmd[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def _padding_of_rows(rows: Sequence[dict[str, Any]]) -> str | None:
    """How a ``bench/served.py`` server on ``--batch_padding auto`` ran its calls, from the images it
    computed (``ssd_computed_images_total``, ``padded_source: counter``): ``bucket`` if any row padded,
    else ``exact``; None without the counter (a server from before it, and before exact sizes)."""
    counted = [r for r in rows if r.get("padded_source") == "counter" and r.get("padded_share") is not None]
    if not counted:
        return None
    return "bucket" if any(r["padded_share"] > 0 for r in counted) else "exact"


# --------------------------------------------------------------------------------------- fitting
def _basis(c: np.ndarray) -> np.ndarray:
    c = np.asarray(c, np.float64)
    return np.stack([np.ones_like(c), c - 1, c * (c - 1)], axis=-1)


def nnls_small(a: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative least squares for a handful of columns: the best of the unconstrained solutions on
    every subset of columns whose coefficients are all >= 0 (exact for small problems)."""
    best, best_err = np.zeros(a.shape[1]), float(np.sum(y**2))
    for k in range(1, a.shape[1] + 1):
        for cols in itertools.combinations(range(a.shape[1]), k):
            coef, *_ = np.linalg.lstsq(a[:, cols], y, rcond=None)
            if (coef < 0).any():
                continue
            full = np.zeros(a.shape[1])
            full[list(cols)] = coef
            err = float(np.sum((a @ full - y) ** 2))
            if err < best_err:
                best, best_err = full, err
    return best


@dataclass(frozen=True)
class Fit:
    """Fitted curves of one max batch size: ``mean(c) = basis(c) . mean_coef`` (ms), same for p95."""

    max_batch_size: int
    mean_coef: tuple[float, float, float]
    p95_coef: tuple[float, float, float]
    c_min: int
    c_max: int

    def mean_ms(self, c) -> np.ndarray:
        return _basis(c) @ np.asarray(self.mean_coef)

    def p95_ms(self, c) -> np.ndarray:
        return _basis(c) @ np.asarray(self.p95_coef)

    def throughput_rps(self, c) -> np.ndarray:
        return np.asarray(c, np.float64) / (self.mean_ms(c) / 1e3)


def fit(cells: Sequence[dict[str, Any]]) -> dict[int, Fit]:
    """One :class:`Fit` per max batch size (weighted by 1/measured: relative errors count)."""
    fits = {}
    for b in sorted({int(c["max_batch_size"]) for c in cells}):
        rows = [c for c in cells if int(c["max_batch_size"]) == b and c["requests"] > 0]
        conc = np.array([r["concurrency"] for r in rows], np.float64)
        coefs = []
        for key in ("mean_ms", "p95_ms"):
            y = np.array([r[key] for r in rows], np.float64)
            w = 1.0 / y
            coefs.append(tuple(float(v) for v in nnls_small(_basis(conc) * w[:, None], y * w)))
        fits[b] = Fit(b, coefs[0], coefs[1], int(conc.min()), int(conc.max()))
    return fits


# --------------------------------------------------------------------------------------- planning
@dataclass(frozen=True)
class Plan:
    """The chosen setting and what follows from it."""

    slo_p95_ms: float
    rate_rps: float
    max_batch_size: int
    batch_wait_ms: float
    concurrency: int
    predicted_p95_ms: float
    predicted_mean_ms: float
    predicted_throughput_rps: float
    scale_target: int
    throughput_at_target_rps: float
    min_replicas: int
    max_replicas: int
    headroom: float
    target_utilization: float
    peak_factor: float


class InfeasibleSLO(ValueError):
    """Not even one client at a time meets the SLO."""


def choose(
    fits: dict[int, Fit],
    *,
    slo_p95_ms: float,
    rate_rps: float,
    batch_wait_ms: float,
    headroom: float = 0.9,
    target_utilization: float = 0.7,
    peak_factor: float = 2.0,
) -> Plan:
    """Highest predicted throughput with predicted p95 <= headroom x SLO (ties: lower concurrency)."""
    best: tuple[float, int, int] | None = None
    for b, f in fits.items():
        for c in range(f.c_min, f.c_max + 1):
            if float(f.p95_ms(c)) <= headroom * slo_p95_ms:
                x = float(f.throughput_rps(c))
                key = (round(x, 6), -c, -b)
                if best is None or key > best:
                    best = key
    if best is None:
        lowest = min((float(f.p95_ms(f.c_min)), b) for b, f in fits.items())
        raise InfeasibleSLO(
            f"no measured setting meets p95 <= {headroom:g} x {slo_p95_ms:g} ms: the lowest predicted p95 is "
            f"{lowest[0]:.1f} ms (max batch {lowest[1]}); a faster machine (GPU) or a looser SLO is needed"
        )
    _, neg_c, neg_b = best
    c, b = -neg_c, -neg_b
    f = fits[b]
    target = max(1, math.floor(c * target_utilization))
    x_target = float(f.throughput_rps(target))
    x_limit = float(f.throughput_rps(c))
    min_replicas = max(1, math.ceil(rate_rps / x_target))
    max_replicas = max(min_replicas, math.ceil(peak_factor * rate_rps / x_limit))
    return Plan(
        slo_p95_ms=slo_p95_ms,
        rate_rps=rate_rps,
        max_batch_size=b,
        batch_wait_ms=batch_wait_ms,
        concurrency=c,
        predicted_p95_ms=float(f.p95_ms(c)),
        predicted_mean_ms=float(f.mean_ms(c)),
        predicted_throughput_rps=x_limit,
        scale_target=target,
        throughput_at_target_rps=x_target,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        headroom=headroom,
        target_utilization=target_utilization,
        peak_factor=peak_factor,
    )


def overlay(plan: Plan) -> dict[str, Any]:
    """The Helm values overlay (keys of helm/ssd-detector/values.yaml)."""
    return {
        "predictor": {"maxBatchSize": plan.max_batch_size, "batchWaitMs": plan.batch_wait_ms},
        "autoscaling": {
            "minReplicas": plan.min_replicas,
            "maxReplicas": plan.max_replicas,
            "scaleMetric": "concurrency",
            "scaleTarget": plan.scale_target,
            "containerConcurrency": plan.concurrency,
        },
    }


def overlay_yaml(plan: Plan, source: str) -> str:
    """:func:`overlay` as commented YAML (``helm install -f values-plan.yaml``)."""
    p = plan
    return f"""\
# Capacity plan (python -m predictor.tools.plan): p95 <= {p.slo_p95_ms:g} ms at {p.rate_rps:g} requests/s.
# Measured: {source}. Reasoning: plan.md next to this file.
predictor:
  # Dynamic batcher size of the chosen setting; also the most images per request.
  maxBatchSize: {p.max_batch_size}
  # Batcher wait the measurements ran with.
  batchWaitMs: {p.batch_wait_ms:g}
autoscaling:
  # Replicas serving {p.rate_rps:g} req/s at the scale target, {p.throughput_at_target_rps:.1f} req/s each.
  minReplicas: {p.min_replicas}
  # Replicas serving {p.peak_factor:g} x the rate at the hard limit ({p.predicted_throughput_rps:.1f} req/s).
  maxReplicas: {p.max_replicas}
  # Scale on in-flight requests (Knative KPA).
  scaleMetric: concurrency
  # {p.target_utilization:.0%} of the hard limit: replicas are added before they saturate.
  scaleTarget: {p.scale_target}
  # Hard limit per replica: predicted p95 {p.predicted_p95_ms:.1f} ms at this concurrency.
  containerConcurrency: {p.concurrency}
"""


# --------------------------------------------------------------------------------------- reporting
def plot(benchmark: dict[str, Any], fits: dict[int, Fit], plan: Plan | None, path: Path) -> None:
    """p95 latency and throughput against concurrency: measured points, fitted curves, SLO, choice."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_lat, ax_x) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, (b, f) in enumerate(sorted(fits.items())):
        color = f"C{i}"
        rows = [c for c in benchmark["cells"] if int(c["max_batch_size"]) == b]
        conc = [r["concurrency"] for r in rows]
        grid = np.linspace(f.c_min, f.c_max, 100)
        ax_lat.plot(conc, [r["p95_ms"] for r in rows], "o", color=color, label=f"max batch {b}: measured p95")
        ax_lat.plot(grid, f.p95_ms(grid), "-", color=color, alpha=0.7, label=f"max batch {b}: fit")
        ax_x.plot(
            conc, [r["throughput_rps"] for r in rows], "o", color=color, label=f"max batch {b}: measured"
        )
        ax_x.plot(
            grid, f.throughput_rps(grid), "-", color=color, alpha=0.7, label=f"max batch {b}: c / mean(c)"
        )
    if plan is not None:
        ax_lat.axhline(plan.slo_p95_ms, color="red", ls="--", label=f"SLO {plan.slo_p95_ms:g} ms")
        ax_lat.plot([plan.concurrency], [plan.predicted_p95_ms], "*", color="black", ms=14, label="chosen")
        ax_x.plot(
            [plan.concurrency], [plan.predicted_throughput_rps], "*", color="black", ms=14, label="chosen"
        )
    ax_lat.set(xlabel="concurrent requests per replica", ylabel="p95 latency (ms)", title="Latency")
    ax_x.set(xlabel="concurrent requests per replica", ylabel="requests/s per replica", title="Throughput")
    for ax in (ax_lat, ax_x):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(
        f"{benchmark.get('model_dir', '')} on {benchmark.get('machine', {}).get('cpu', '?')}", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(benchmark: dict[str, Any], fits: dict[int, Fit], plan: Plan) -> str:
    """Markdown: the measurements with the fit beside them, then the decisions and why."""
    machine = benchmark.get("machine", {})
    lines = [
        "# Capacity plan",
        "",
        f"Measured {machine.get('utc', '?')} on {machine.get('cpu', '?')} "
        f"({machine.get('cpu_count', '?')} CPUs, CUDA_VISIBLE_DEVICES {machine.get('gpu_visible', '?')!r}, "
        f"1-minute load {machine.get('load_average_1m', 0):.1f}); "
        f"{benchmark.get('request', '')}; batch wait {benchmark.get('batch_wait_ms')} ms.",
        "",
        "| max batch | concurrency | requests | req/s | fit req/s | mean ms | p50 ms | p95 ms | fit p95 ms |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in benchmark["cells"]:
        f = fits[int(r["max_batch_size"])]
        c = r["concurrency"]
        lines.append(
            f"| {r['max_batch_size']} | {c} | {r['requests']} | {r['throughput_rps']:.1f} | "
            f"{float(f.throughput_rps(c)):.1f} | {r['mean_ms']:.1f} | {r['p50_ms']:.1f} | "
            f"{r['p95_ms']:.1f} | {float(f.p95_ms(c)):.1f} |"
        )
    p = plan
    lines += [
        "",
        "Fits (ms, c = concurrency): "
        + "; ".join(
            f"max batch {b}: mean = {_formula(f.mean_coef)}, p95 = {_formula(f.p95_coef)}"
            for b, f in sorted(fits.items())
        ),
        "",
        "| value | setting | why |",
        "|---|---:|---|",
        f"| predictor.maxBatchSize | {p.max_batch_size} | highest predicted throughput among the measured "
        f"batch sizes with p95 <= {p.headroom:g} x SLO = {p.headroom * p.slo_p95_ms:.0f} ms; requests may "
        "carry at most this many images |",
        f"| predictor.batchWaitMs | {p.batch_wait_ms:g} | the wait the measurements ran with |",
        f"| autoscaling.containerConcurrency | {p.concurrency} | the concurrency (within the measured range) "
        f"of highest predicted throughput, {p.predicted_throughput_rps:.1f} req/s per replica, whose "
        f"predicted p95, {p.predicted_p95_ms:.1f} ms, stays within the headroom |",
        "| autoscaling.scaleMetric | concurrency | Knative scales on in-flight requests, as planned |",
        f"| autoscaling.scaleTarget | {p.scale_target} | {p.target_utilization:.0%} of the hard limit "
        f"(Knative's default target utilisation): {p.throughput_at_target_rps:.1f} req/s per replica |",
        f"| autoscaling.minReplicas | {p.min_replicas} | ceil({p.rate_rps:g} req/s / "
        f"{p.throughput_at_target_rps:.1f} req/s at the target) |",
        f"| autoscaling.maxReplicas | {p.max_replicas} | ceil({p.peak_factor:g} x {p.rate_rps:g} req/s / "
        f"{p.predicted_throughput_rps:.1f} req/s at the hard limit), at least minReplicas |",
        "",
        "Requests carry one image each; multiply the rate by the images per request for larger requests. "
        "scaleMetric concurrency and containerConcurrency apply in Knative mode; in Standard mode (HPA) "
        "use the replica counts with a CPU or custom metric.",
    ]
    return "\n".join(lines) + "\n"


def _formula(coef: Sequence[float]) -> str:
    return f"{coef[0]:.2f} + {coef[1]:.2f}(c-1) + {coef[2]:.3f}c(c-1)"


# --------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m predictor.tools.plan", description=__doc__.split("\n\n")[0])
    p.add_argument("--slo-p95-ms", type=float, help="p95 latency objective per request, in ms")
    p.add_argument("--rate", type=float, help="target request rate in requests/s (all replicas)")
    p.add_argument("--benchmark", type=Path, help="plan from this benchmark JSON instead of measuring")
    p.add_argument("--measure-only", action="store_true", help="measure and write benchmark.json, no plan")
    p.add_argument("--model_dir", help="model directory (default: the shipped demo model)")
    p.add_argument("--max-batch-sizes", type=positive_ints, default=[1, 8], help="batcher sizes to measure")
    p.add_argument(
        "--concurrency", type=positive_ints, default=[1, 2, 4, 8], help="concurrency levels to measure"
    )
    p.add_argument("--batch-wait-ms", type=float, default=2.0, help="batcher wait of the measured servers")
    p.add_argument(
        "--batch-padding",
        choices=BATCH_PADDINGS,
        default=ServingOptions.batch_padding,
        help="the servers' --batch_padding: the measured ones' and, with --trace, the simulated ones' "
        f"(auto: {AUTO_PADDING_RULE}; a benchmark records what its servers ran)",
    )
    p.add_argument("--requests", type=int, default=200, help="timed requests per measured setting")
    p.add_argument("--headroom", type=float, default=0.9, help="plan for predicted p95 <= headroom x SLO")
    p.add_argument("--target-utilization", type=float, default=0.7, help="scaleTarget / containerConcurrency")
    p.add_argument(
        "--peak-factor", type=float, default=2.0, help="maxReplicas serve this multiple of the rate"
    )
    p.add_argument("--out", type=Path, default=Path("out/plan"), help="output folder")
    p.add_argument(
        "--trace",
        help="also simulate this burst profile (predictor.tools.simulate --trace syntax) and write "
        "values-sim.yaml: the cheapest minReplicas, scaleTarget, panic threshold, max batch meeting the SLO",
    )
    p.add_argument("--cold-start-s", type=float, default=6.8, help="replica cold start for --trace")
    p.add_argument("--cost-per-replica-hour", type=float, default=1.0, help="cost unit for --trace")
    p.add_argument(
        "--cpu-profile",
        type=Path,
        help="--trace: replicas simulated as this CPU profile (bench.simulate_check writes one: decode and "
        "model calls sharing each replica's cores) instead of from the benchmark's cells",
    )
    p.add_argument(
        "--search-min-replicas",
        type=replica_floors,
        help="--trace: default 1, the plan's, twice it (0: scale to zero)",
    )
    p.add_argument(
        "--search-max-replicas",
        type=positive_ints,
        help="--trace: maxReplicas candidates (default: the plan's)",
    )
    p.add_argument(
        "--search-targets",
        type=positive_floats,
        help="--trace: scaleTarget candidates (default: plan, limit)",
    )
    p.add_argument("--search-panic", type=positive_floats, default=[200.0, 400.0], help="--trace: panic %%")
    p.add_argument(
        "--search-max-batch", type=positive_ints, help="--trace: max batch sizes (default: the measured ones)"
    )
    p.add_argument("--max-503-share", type=float, default=0.001, help="--trace: most 503/504 share allowed")
    p.add_argument("--workers", type=int, default=1, help="--trace: candidates simulated in parallel")
    p.add_argument(
        "--min-attainment",
        type=float,
        default=0.0,
        help="--trace: least share of requests answered within the objective (e.g. 0.995)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from predictor.tools.simulate import unmatched_replicas

    unmatched = unmatched_replicas(args.search_min_replicas, args.search_max_replicas)
    if unmatched:  # before measuring: the search would have no candidate
        parser.error(unmatched)
    if not args.measure_only and (args.slo_p95_ms is None or args.rate is None):
        print("error: --slo-p95-ms and --rate are required (or --measure-only)", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    if args.benchmark:
        benchmark = load_benchmark(args.benchmark)
        source = f"{args.benchmark}"
    else:
        benchmark = measure(
            args.model_dir, args.max_batch_sizes, args.concurrency,
            batch_wait_ms=args.batch_wait_ms, requests=args.requests, out_dir=args.out,
            batch_padding=args.batch_padding,
        )  # fmt: skip
        (args.out / "benchmark.json").write_text(json.dumps(benchmark, indent=1) + "\n")
        source = f"{args.out / 'benchmark.json'}"
        print(f"wrote {args.out / 'benchmark.json'}")
    if args.measure_only:
        return 0
    fits = fit(benchmark["cells"])
    try:
        plan = choose(
            fits, slo_p95_ms=args.slo_p95_ms, rate_rps=args.rate,
            batch_wait_ms=float(benchmark["batch_wait_ms"]), headroom=args.headroom,
            target_utilization=args.target_utilization, peak_factor=args.peak_factor,
        )  # fmt: skip
    except InfeasibleSLO as e:
        plot(benchmark, fits, None, args.out / "plan.png")
        print(f"error: {e}", file=sys.stderr)
        return 1
    (args.out / "values-plan.yaml").write_text(overlay_yaml(plan, source))
    (args.out / "plan.md").write_text(report(benchmark, fits, plan))
    summary = {
        "plan": asdict(plan),
        "overlay": overlay(plan),
        "fits": {b: asdict(f) for b, f in fits.items()},
    }
    (args.out / "plan.json").write_text(json.dumps(summary, indent=1) + "\n")
    plot(benchmark, fits, plan, args.out / "plan.png")
    print(report(benchmark, fits, plan))
    print(f"wrote {args.out}/values-plan.yaml, plan.md, plan.png, plan.json")
    if args.trace:
        return simulate_plan(benchmark, plan, args)
    return 0


def simulate_plan(benchmark: dict[str, Any], plan: Plan, args: argparse.Namespace) -> int:
    """``--trace``: the plan's hard limit kept, minReplicas (1, the plan's, twice it) x maxReplicas (the
    plan's, or ``--search-max-replicas``) x scaleTarget (the plan's, the hard limit) x panic threshold x
    the measured max batch sizes simulated
    through the trace (:func:`predictor.tools.simulate.search_for_plan`) into ``out/simulated``."""
    from predictor.tools.simulate import CpuProfile, search_for_plan

    out = args.out / "simulated"
    profile = None
    if args.cpu_profile:
        profile = CpuProfile.from_json(json.loads(args.cpu_profile.read_text()))
    best = search_for_plan(
        benchmark["cells"],
        max_batch_sizes=args.search_max_batch
        or sorted({int(c["max_batch_size"]) for c in benchmark["cells"]}),
        batch_wait_ms=plan.batch_wait_ms,
        container_concurrency=plan.concurrency,
        max_replicas=plan.max_replicas,
        min_replicas=args.search_min_replicas or sorted({1, plan.min_replicas, 2 * plan.min_replicas}),
        scale_targets=args.search_targets or sorted({float(plan.scale_target), float(plan.concurrency)}),
        trace=args.trace,
        slo_p95_ms=plan.slo_p95_ms,
        cold_start_s=args.cold_start_s,
        cost_per_replica_hour=args.cost_per_replica_hour,
        out=out,
        panic_thresholds=args.search_panic,
        profile=profile,
        max_503_share=args.max_503_share,
        workers=args.workers,
        min_attainment=args.min_attainment,
        search_max_replicas=args.search_max_replicas,
        measured_padding=benchmark["batch_padding"],
        batch_padding=args.batch_padding,
        measured_gpu=measured_on_gpu(benchmark),
    )
    print(
        f"wrote {out}/search.md, search.json, simulate.png, summary.json"
        + (", values-sim.yaml" if best.meets else "")
    )
    return 0 if best.meets else 1


if __name__ == "__main__":
    sys.exit(main())
