"""The fleet simulator against real replicas: ``python -m bench.simulate_check [--replicas N]``.

1. Starts ``N`` real ``python -m predictor`` (demo model, CPU) on loopback, one after the other (each
   warm-up alone), pinned by :func:`placement`: one replica on every core; ``N`` <= cores: one core
   each (``taskset`` through the affinity it inherits); more replicas than cores: all share every core.
2. Measures closed-loop cells (``--concurrency`` clients of the overload bench's generator,
   :mod:`bench.loadgen`, round robin over the replicas, same JPEG bodies). The simulator's CPU
   profile (:class:`predictor.tools.simulate.CpuProfile`) comes from the replicas' warm-up timings per
   bucket (their log) and the concurrency-1 cell (the work of a request outside the model call);
   ``--large_concurrency`` cells (default 64: calls of the max batch size) calibrate the large buckets
   and do not count in the saturated throughput; ``--call_load`` first times the detector with
   ``bench.call_load`` (the idle cost and the lockstep linger of docs/simulator.md, "Large calls
   under open-loop load").
3. Offers open-loop scenarios to the real replicas through the same round-robin client: a step
   (``--step`` fractions of the saturated closed-loop throughput), a ramp (``--ramp``) and a step into
   overload (``--overload``), each phase ``--seconds`` long.
4. Replays the very arrival times the generator was due to send through the simulator (``N``
   replicas, round robin, no autoscaling, the server's defaults, the profile's cores as placed in 1),
   and compares p50/p95 of the 200s, throughput (200s answered in the timed windows per second) and
   the 503 count, per phase.

Writes ``bench/out/simulate_check.json`` (``simulate_check_N.json`` for N > 1) and prints the
comparison as a Markdown table. The replicas run with ``--compute_nice 0``: under the quiet lock's
``nice -n -15`` their compute threads then keep -15 (the default, 10, would put them behind every
other nice-0 process on a shared machine). The generator shares the cores (its CPU time is recorded).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import math
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import OUT_DIR, REPO, make_test_jpegs, percentile, start_cpu_server
from bench.loadgen import Generator, Phase, PhaseResult
from predictor._argtypes import positive_int
from predictor.protocol.wire import MODEL_NAME
from predictor.serving.options import (
    AUTO_PADDING_RULE,
    BATCH_PADDINGS,
    UNRECORDED_PADDING,
    ServingOptions,
    pads_to_bucket,
)
from predictor.serving.resources import cpu_model_name
from predictor.tools.localserver import server_env
from predictor.tools.plan import BENCHMARK_FORMAT, measured_padding
from predictor.tools.simulate import CpuProfile, FleetConfig, Simulation, closed_loop_rps

WARMUP_LINE = re.compile(r"seconds per bucket: ([0-9.:, ]+)\)")


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
        "latencies_ms": [round(v, 2) for v in ok],
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


METRIC_LINE = re.compile(
    r"^(ssd_(?:batch_size|batch_seconds|decode_seconds|request_seconds)_(?:bucket|sum|count)|ssd_requests_total)"
    r"(\{[^}]*\})? (\S+)$"
)


def scrape(urls: list[str]) -> dict[str, float]:
    """The servers' model-call and decode histograms (``ssd_batch_size``, ``ssd_batch_seconds``,
    ``ssd_decode_seconds``: buckets, sums, counts), summed over the servers."""
    import urllib.request

    out: dict[str, float] = Counter()
    for url in urls:
        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
            for line in r.read().decode().splitlines():
                m = METRIC_LINE.match(line)
                if m:
                    out[m.group(1) + (m.group(2) or "")] += float(m.group(3))
    return dict(out)


def thread_cpu(pids: list[int], stats: bool = False) -> dict[str, float]:
    """CPU seconds (user + system) the servers' threads used so far, by kind, summed over the servers:
    ``event_loop`` (the main thread: HTTP, KServe, admission, JSON), ``decode`` (``ssd-decode_*``),
    ``model`` (``ssd-model_*`` and TensorFlow's ``tf_*`` pools), ``other``. CPU time, unlike wall time,
    is what a request costs whatever else runs on the machine. ``stats``: also their system seconds
    (``sys:<kind>``) and minor page faults (``faults:<kind>``): a model call whose CPU grows under load
    by faulting in fresh pages shows there."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = Counter()
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                name = (task / "comm").read_text().strip()
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
                kind = (
                    "event_loop" if int(task.name) == pid else "decode" if name.startswith("ssd-decode")
                    else "model" if name.startswith(("ssd-model", "tf_")) else "other"
                )  # fmt: skip
                out[kind] += ticks / tick
                if stats:
                    out[f"sys:{kind}"] += int(fields[12]) / tick
                    out[f"faults:{kind}"] += int(fields[7])  # minflt (field 10 of stat)
    return dict(out)


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: round(v - before.get(k, 0.0), 6) for k, v in after.items() if v - before.get(k, 0.0)}


def scenario(
    gen: Generator, base: dict[str, Any], rates: list[float], seconds: float, warmup_s: float, seed: int,
    urls: list[str] | None = None, pids: list[int] | None = None,
):  # fmt: skip
    """Open-loop phases back to back (warm-up only before the first); returns the phases' results, the
    arrival times laid end to end (the first phase's warm-up starts at 0) and, with the servers'
    ``urls`` and ``pids``, each phase's change of their batch and decode histograms (:func:`scrape`)
    and of their threads' CPU seconds (:func:`thread_cpu`, keys ``cpu_s:<kind>``)."""
    results, offsets, metrics = [], [], []
    offset = 0.0
    for i, rate in enumerate(rates):
        w = warmup_s if i == 0 else 0.0
        phase = Phase(**base, seconds=seconds, warmup_s=w, rate=rate, seed=seed + 2 * i)
        before = {**scrape(urls), **_cpu_keys(pids)} if urls else {}
        r = gen.run(phase)
        metrics.append(delta({**scrape(urls), **_cpu_keys(pids)}, before) if urls else {})
        offsets.append(offset + w)
        offset += w + seconds
        results.append(r)
    return results, offsets, metrics


def _cpu_keys(pids: list[int] | None) -> dict[str, float]:
    """:func:`thread_cpu` as metric keys: ``cpu_s:<kind>``, ``sys_s:<kind>``, ``faults:<kind>``."""
    if not pids:
        return {}
    named = lambda k: k.replace("sys:", "sys_s:") if ":" in k else f"cpu_s:{k}"  # noqa: E731
    return {named(k): v for k, v in thread_cpu(pids, stats=True).items()}


def rows_json(r: PhaseResult) -> list[list[Any]]:
    """A phase's requests ``[due, sent, done, status]`` (ms precision: 0.1) for offline replays."""
    return [[round(d, 4), round(s, 4), round(e, 4), st] for d, s, e, st in r.requests]


def arrivals_of(results: list[PhaseResult], offsets: list[float]) -> tuple[list[float], list[float]]:
    """Every due time of the phases (warm-ups included), on one clock, in order, and when the generator
    sent each (it lags when it gets no CPU)."""
    pairs = []
    for r, off in zip(results, offsets, strict=True):
        pairs += [(off + due, off + sent) for due, sent, *_ in (*r.warmup, *r.requests)]
    pairs.sort()
    return [round(d, 5) for d, _ in pairs], [round(s, 5) for _, s in pairs]


def placement(replicas: int, cpus: list[int]) -> tuple[list[set[int]], float | None]:
    """Each replica's CPU affinity and the cores they share (None: each its own). One replica: every
    core; at most one per core: one core each; more replicas than cores: all share every core."""
    if replicas == 1 or replicas > len(cpus):
        return [set(cpus)] * replicas, (None if replicas == 1 else float(len(cpus)))
    return [{c} for c in cpus[:replicas]], None


@contextlib.contextmanager
def affinity(cores: set[int]):
    """Run the block (a child process spawned in it) on ``cores``: children inherit the affinity."""
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, old)


def warmup_seconds(log_text: str) -> dict[int, float]:
    """The warm-up's seconds per bucket from a server log ("seconds per bucket: 1: 0.0212, 2: ...")."""
    m = WARMUP_LINE.search(log_text)
    if not m:
        raise ValueError("no warm-up line in the server log")
    pairs = (item.split(":") for item in m.group(1).split(","))
    return {int(b): float(t) for b, t in pairs}


TIME_BUCKETS = """
import json, sys, time
import numpy as np
from predictor.models import DEMO_MODEL_DIR
from predictor.serving.options import ServingOptions
from predictor.ssd.detector import Detector

d = Detector.from_dir(DEMO_MODEL_DIR, max_batch_size=32, xla=ServingOptions.xla)
d.warmup()
s, out = d.input_size, {}
for b in d.buckets:
    images, hw = np.zeros((b, s, s, 3), np.float32), np.full((b, 2), s, np.float32)
    times = []
    for _ in range(int(sys.argv[1])):
        t0 = time.perf_counter()
        d.run_batch(images, hw)
        times.append(time.perf_counter() - t0)
    out[b] = float(np.median(times))
print(json.dumps(out))
"""


def time_buckets(cores: set[int], runs: int) -> dict[int, float]:
    """Median seconds of ``runs`` model calls per bucket, the demo detector alone on ``cores`` (a
    process of its own, as a replica placed there: the server's warm-up times each bucket once or
    four times, too few for a median)."""
    with affinity(cores):
        proc = subprocess.run(
            [sys.executable, "-c", TIME_BUCKETS, str(runs)], capture_output=True, text=True, check=True,
            env=server_env(cpu_only=True), cwd=REPO,
        )  # fmt: skip
    return {int(b): t for b, t in json.loads(proc.stdout.strip().splitlines()[-1]).items()}


def call_load(cores: set[int], path: Path) -> dict[str, Any]:
    """``python -m bench.call_load`` on ``cores`` (a process of its own, before the replicas start): the
    detector's calls by exact size, alone and beside decoding threads (docs/simulator.md, "Large calls
    under load")."""
    args = ["--sizes", "1-32", "--rounds", "3", "--beside_rounds", "3", "--out", str(path)]
    with affinity(cores):
        subprocess.run(
            [sys.executable, "-m", "bench.call_load", *args], check=True, env=server_env(cpu_only=True),
            cwd=REPO, stdout=subprocess.DEVNULL,
        )  # fmt: skip
    return json.loads(path.read_text())


def profile(
    bucket_s: dict[int, float], warmups: list[dict[int, float]], c1: dict[str, Any], cores: int,
    batch_wait_ms: float, source: str, one_core: dict[int, float] | None = None,
    batch_padding: str = UNRECORDED_PADDING,
) -> CpuProfile:  # fmt: skip
    """The simulator's CPU replica: a call per bucket takes what the servers' warm-ups timed (mean over
    the replicas: ``run_batch`` in the serving process, the time the batcher decides with too; a
    separate process timing the detector alone, ``bucket_s``, ran 20-40% faster than the served
    calls and is only recorded); the parallel fraction from ``one_core`` (the same separate timing on
    one core); the request's work outside the model call = the concurrency-1 p50 minus the bucket-1
    call and the batch wait; ``batch_padding``: how the servers ran their calls (:func:`padding_of`)."""
    del bucket_s  # recorded in the report as "bucket_s_alone"
    calls = tuple((b, float(np.mean([w[b] for w in warmups]))) for b in sorted(warmups[0]))
    decode_s = max(1e-4, c1["p50_ms"] / 1e3 - calls[0][1] - batch_wait_ms / 1e3)
    return CpuProfile(
        calls, decode_s, decode_threads=cores, model_threads=cores, cores=float(cores), source=source,
        one_core_bucket_s=tuple(sorted(one_core.items())) if one_core else None, batch_padding=batch_padding,
    )  # fmt: skip


def simulate_replay(
    prof: CpuProfile,
    replicas: int,
    shared_cores: float | None,
    times: list[float],
    offsets: list[float],
    seconds: float,
    seed: int,
    sent: list[float] | None = None,
    calls_in_flight: int = 1,
) -> tuple[list[list[tuple[float, float, str]]], list[dict[str, float]]]:
    """The same arrivals through the simulated replicas (round robin, as the client); per phase
    ``(due, done, status)`` in its window, and the model calls started in it (:func:`calls_in`).
    ``sent``: when the generator sent each (same order as ``times``): the simulated replicas get them
    then, and latencies count from ``times`` (due), as the generator counts them. ``calls_in_flight``:
    the servers' ``--model_calls_in_flight``; their padding: the profile's (``prof.batch_padding``)."""
    cfg = FleetConfig(
        mode="hpa", initial_replicas=replicas, shared_cores=shared_cores, balancer="round-robin",
        model_calls_in_flight=calls_in_flight, batch_padding=prof.batch_padding,
    )  # fmt: skip
    cfg.hpa = type(cfg.hpa)(min_replicas=replicas, max_replicas=replicas)
    due = np.asarray(times, np.float64)
    order = np.argsort(sent, kind="stable") if sent else np.arange(len(due))
    at = np.asarray(sent, np.float64)[order] if sent else due
    sim = Simulation(cfg, prof, seed)
    res = sim.run(at, horizon_s=offsets[-1] + seconds)
    due_of = due[order]  # the i-th request simulated was due then
    rows = [
        [
            (due_of[q.rid] - off, q.done - off, q.status)
            for q in res.requests
            if off <= due_of[q.rid] < off + seconds
        ]
        for off in offsets
    ]
    return rows, [calls_in([c for c in sim.calls if off <= c[0] < off + seconds]) for off in offsets]


def calls_in(calls: list[tuple[float, int, float]]) -> dict[str, float]:
    """Mean images and seconds of model calls ``(start, images, seconds)``."""
    if not calls:
        return {"mean_batch": math.nan, "mean_call_ms": math.nan}
    return {
        "mean_batch": float(np.mean([n for _, n, _ in calls])),
        "mean_call_ms": 1e3 * float(np.mean([t for *_, t in calls])),
    }


def real_calls(metrics: dict[str, float]) -> dict[str, float]:
    """The same from the servers' histograms (``ssd_batch_size``, ``ssd_batch_seconds``)."""
    n = metrics.get("ssd_batch_size_count", 0.0)
    if not n:
        return {"mean_batch": math.nan, "mean_call_ms": math.nan}
    return {
        "mean_batch": metrics.get("ssd_batch_size_sum", 0.0) / n,
        "mean_call_ms": 1e3 * metrics.get("ssd_batch_seconds_sum", 0.0) / n,
    }


def profile_of(report: dict[str, Any]) -> CpuProfile:
    """The CPU profile from a report's raw measurements (so a ``--replay`` applies today's rule)."""
    cells = report["benchmark"]["cells"]
    c1 = min(cells, key=lambda c: c["concurrency"])
    padding = padding_of(report)
    warmups = [{int(b): t for b, t in w.items()} for w in report["warmup_bucket_s"]]
    one_core = {int(b): t for b, t in (report.get("bucket_s_one_core") or {}).items()}
    cores = len(report["placement"][0])
    source = report["profile"]["source"]
    alone = {int(b): t for b, t in (report.get("bucket_s_alone") or {}).items()}
    if one_core and alone and cores > 1:
        # Amdahl's p from one timing of both (the separate process on the replica's cores and on one),
        # put on the warm-up's scale: the warm-up against the separate one-core timing mixed two
        # processes (bucket 16 of the 09:10 run: 202 ms served, 187 ms on one core alone: p = 0)
        warm = dict(profile({}, warmups, c1, cores, 2.0, source).bucket_s)
        one_core = {b: t * warm[b] / alone[b] for b, t in one_core.items() if b in warm and b in alone}
    prof = profile({}, warmups, c1, cores, 2.0, source, one_core or None, padding)
    # the model's threads in lockstep (docs/simulator.md, "Model calls under load"): at 1.5x and 3x the
    # 12:33 run's replica used 1.43 of its 2 cores while refusing work, its calls ~1 core
    # and the servers' calls in flight the calls were measured with (the planner replays with them)
    timings = None if call_load_disturbed(report.get("call_load"), cores) else report.get("call_load")
    prof = dataclasses.replace(
        prof, lockstep=True, model_calls_in_flight=calls_in_flight(report),
        idle_call_s=idle_call_of(timings),
        lockstep_linger_s=linger_of(timings, report.get("bucket_s_one_core")),
    )  # fmt: skip
    prof = own_warmups(prof, warmups)
    if "cpu_s:event_loop" not in c1.get("server_metrics", {}):
        return prof  # a report from before the threads' CPU was recorded: the request work as one
    return measured_work(prof, c1, report, 2.0)


# bench.call_load's timings are taken as disturbed when the idle cost falls by more than this from a
# shorter gap to a longer one (s) ...
IDLE_FALL_S = 0.001
# ... or its calls alone of at least LONE_CALL_MIN images used less than this share of the replica's
# cores (median; the quiet 00:30 run's: 1.7-1.9 of 2)
LONE_CALL_CORES_SHARE = 0.75
LONE_CALL_MIN = 8


def call_load_disturbed(timings: dict[str, Any] | None, cores: int) -> list[str]:
    """Why ``bench.call_load``'s timings look disturbed (empty: usable; docs/simulator.md, "Large calls
    under open-loop load"). A machine that is not quiet makes both rules read noise: the 00:45 run's
    one-image calls took 17.0 ms back to back, 20.0 after 5 ms idle and 16.9 after 30 (an idle cost
    that falls with the gap, where the quiet 00:30 run's rose: 12.5, 13.0, 20.0). Checked: the idle cost
    does not fall by more than :data:`IDLE_FALL_S` from one gap to a longer one, and the calls alone of
    at least :data:`LONE_CALL_MIN` images used at least :data:`LONE_CALL_CORES_SHARE` of ``cores``
    (median of ``(user + sys) / wall``)."""
    if not timings:
        return []
    reasons = []
    gaps = sorted((float(g), float(ms)) for g, ms in (timings.get("gap_ms") or {}).items())
    for (g0, ms0), (g1, ms1) in itertools.pairwise(gaps[1:]):  # the gaps after idle
        if ms0 - ms1 > 1e3 * IDLE_FALL_S:
            reasons.append(f"one-image call after {g1:g} ms idle {ms1:g} ms, after {g0:g} ms {ms0:g} ms")
    used = [
        (t["user_ms"] + t["sys_ms"]) / t["wall_ms"]
        for n, t in (timings.get("alone") or {}).items()
        if int(n) >= LONE_CALL_MIN and t.get("wall_ms") and "user_ms" in t
    ]
    if used and float(np.median(used)) < LONE_CALL_CORES_SHARE * cores:
        reasons.append(f"calls alone used {float(np.median(used)):.2f} of {cores} cores (median)")
    return reasons


def idle_call_of(timings: dict[str, Any] | None) -> tuple[tuple[float, float], ...] | None:
    """What a call adds after an idle gap (the profile's ``idle_call_s``), from ``bench.call_load``'s
    ``gap_ms`` (median one-image call after each gap, ``"0"``: back to back): per gap in seconds, the
    median over the back-to-back one, at least 0. None without those timings (a report from before
    them: no such cost)."""
    gaps = (timings or {}).get("gap_ms") or {}
    if "0" not in gaps or len(gaps) < 2:
        return None
    base = gaps["0"]
    extra = ((float(g) / 1e3, max(0.0, ms - base) / 1e3) for g, ms in gaps.items() if float(g) > 0)
    return tuple(sorted(extra))


def linger_of(timings: dict[str, Any] | None, one_core: dict[str, float] | None) -> float:
    """How long a call stays out of step after the other threads stop crowding its cores (the profile's
    ``lockstep_linger_s``), from ``bench.call_load``'s open-loop stream (rate ``r`` per second, each
    request ``w`` = ``loop_ms`` + ``decode_alone_ms`` of other work) and the buckets alone (``a``) and
    on one core (``o``, the report's ``bucket_s_one_core``): a call of a bucket timed ``T`` beside the
    stream was out of step a share ``f = (1 - a / T) / (1 - a / o)`` of its time (speed ``a / o``
    then, 1 else); with Poisson arrivals a time is out of step unless no request arrived within
    ``w + linger`` before it, ``f = 1 - exp(-r (w + linger))``, so ``linger = -ln(1 - f) / r - w``;
    the median over the buckets whose one-core time is over 1.2 ``a`` (f at most 0.99). 0 without
    those timings."""
    if not timings or not one_core or not timings.get("open"):
        return 0.0
    one_core = {str(n): t for n, t in one_core.items()}  # int keys while recording, str once saved
    rate, stream = next(((float(k), v) for k, v in timings["open"].items() if "held" not in k), (0.0, None))
    if not stream or rate <= 0:
        return 0.0
    r = stream.get("decodes_per_s") or rate
    w = (timings.get("loop_ms", 2.0) + timings["decode_alone_ms"]) / 1e3
    lingers = []
    for n, call in stream["calls"].items():
        a, o = timings["alone"][n]["wall_ms"], 1e3 * one_core.get(n, 0.0)
        if o > 1.2 * a:
            f = min(0.99, max(0.0, (1 - a / call["wall_ms"]) / (1 - a / o)))
            lingers.append(max(0.0, -math.log(1 - f) / r - w))
    return float(np.median(lingers)) if lingers else 0.0


def padding_of(report: dict[str, Any]) -> str:
    """How the recorded servers ran their model calls, ``bucket`` or ``exact`` (their logs, read when
    the run was recorded: :func:`predictor.tools.plan.measured_padding`); a report that does not say
    was recorded before the server ran exact sizes (commit 510a70d, 2026-12-07 18:15 UTC): ``bucket``."""
    return str(report.get("batch_padding", UNRECORDED_PADDING))


def own_warmups(prof: CpuProfile, warmups: list[dict[int, float]]) -> CpuProfile:
    """Each replica's batcher decides with its own warm-up's timings, as each server does
    (``Detector.warmup`` -> ``DynamicBatcher`` ``bucket_seconds``: its efficient bucket, the standing
    bound, the prefix rule), not with the replicas' mean (``rule_bucket_s`` stays the mean: what the
    profile says for a replica to come). The 12:41 three-replica run: replica 0's warm-up made bucket
    16 its efficient one (rate 144 of the best 148 img/s; bucket 8: 130, under 90%), so it admitted 32
    images under a standing queue; the others', and the mean's, made it 4 (8 images)."""
    if len(warmups) < 2:
        return prof
    own = tuple(tuple(sorted(w.items())) for w in warmups)
    return dataclasses.replace(prof, replica_rule_bucket_s=own)


def pads_of(prof: CpuProfile) -> bool:
    """Whether the profile's servers padded their calls when it was measured (the server's rule on
    their resolved padding; CPU servers)."""
    return pads_to_bucket(prof.batch_padding, xla=False, gpu=False)


def scaled_calls(prof: CpuProfile, scale: float) -> CpuProfile:
    """Model calls ``scale`` times the warm-up's (``bucket_s``, and the one-core timings with them so
    that Amdahl's p stays); the batcher still decides with the warm-up's (``rule_bucket_s``): the warm-up
    keeps each bucket's fastest of four runs (``Detector.warmup``), while served calls take their
    median, which the concurrency-1 cell measures for bucket 1 (``ssd_batch_seconds``)."""
    if scale == 1.0:
        return prof
    table = lambda t: tuple((b, v * scale) for b, v in t) if t else None  # noqa: E731
    return dataclasses.replace(
        prof, bucket_s=table(prof.bucket_s), rule_bucket_s=prof.rule_bucket_s or prof.bucket_s,
        one_core_bucket_s=table(prof.one_core_bucket_s),
    )  # fmt: skip


def served(metrics: dict[str, float]) -> float:
    """Requests the servers answered (any status) in a cell or phase."""
    return sum(v for k, v in metrics.items() if k.startswith("ssd_request_seconds_count"))


def answered(metrics: dict[str, float], status: str) -> float:
    return sum(v for k, v in metrics.items() if k.startswith("ssd_requests_total") and f'"{status}"' in k)


def thread_costs(report: dict[str, Any]) -> dict[str, float] | None:
    """What a request costs the servers' threads under the open-loop phases' load (their CPU seconds,
    not the latencies compared): the event loop's per 200 (``a``) and per refusal (``b``) from a least
    squares fit ``loop CPU = a x 200s + b x 503s`` over the phases (``b = a`` when nothing was refused:
    every request's loop work counted before the middleware's check), and the decode threads' CPU per
    200. None for a report without the threads' CPU."""
    rows, loop, decode = [], [], []
    for sc in report["scenarios"].values():
        for ph in sc["phases"]:
            m = ph.get("server_metrics", {})
            if "cpu_s:event_loop" not in m:
                continue
            ok, refused = answered(m, "200"), answered(m, "503")
            if not ok and not refused:  # no server-side counts: the client's
                statuses = ph["measured"]["statuses"]
                ok, refused = statuses.get("200", 0), statuses.get("503", 0)
            rows.append((ok, refused))
            loop.append(m["cpu_s:event_loop"])
            decode.append(m.get("cpu_s:decode", 0.0))
    ok_total = sum(r[0] for r in rows)
    if not ok_total:
        return None
    if any(r[1] for r in rows):
        (a, b), *_ = np.linalg.lstsq(np.asarray(rows, np.float64), np.asarray(loop), rcond=None)
    else:
        a = b = sum(loop) / ok_total
    if a <= 0:
        a = b = sum(loop) / (ok_total + sum(r[1] for r in rows))
    return {
        "loop_s": float(a),
        "loop_refused_s": float(min(a, max(0.0, b))),
        "decode_s": sum(decode) / ok_total,
    }


def measured_work(
    prof: CpuProfile, c1: dict[str, Any], report: dict[str, Any], batch_wait_ms: float
) -> CpuProfile:
    """The request work outside the model call split as the servers' threads spent it (CPU seconds per
    request under the phases' load, :func:`thread_costs`, else at concurrency 1; docs/simulator.md,
    "The event loop"): the main thread's (the event loop: up to the admission middleware's check, what
    a refusal costs; the rest, not measured apart, half before the batcher's admission and half for the
    answer), the decode threads'; what is left of the
    concurrency-1 p50 after those, the bucket-1 call and the batch wait is time no server thread spent
    (``net_s``). The spread: the concurrency-1 latencies less that fixed part, over their median. The
    load generator's CPU per request: the median over the phases after a scenario's first (no warm-up
    in them)."""
    m = c1["server_metrics"]
    n = served(m)
    costs = thread_costs(report) or {
        "loop_s": m.get("cpu_s:event_loop", 0.0) / n, "decode_s": m.get("cpu_s:decode", 0.0) / n,
    }  # fmt: skip
    loop_s, decode_s = costs["loop_s"], costs["decode_s"]
    head_s = costs.get("loop_refused_s", loop_s)
    lat = np.asarray(c1.get("latencies_ms") or [], np.float64) / 1e3
    calls, images = m.get("ssd_batch_size_count", 0.0), m.get("ssd_batch_size_sum", 0.0)
    mean_call = m.get("ssd_batch_seconds_sum", 0.0) / calls if calls and images <= 1.05 * calls else None
    # a lone client's calls each start after the model idled for the rest of its request, which
    # added idle_extra to them (docs/simulator.md, "Large calls under open-loop load"): less that
    gap = c1["p50_ms"] / 1e3 - (mean_call or prof.call_s(1, pads=pads_of(prof)))
    after_idle = prof.idle_extra(max(0.0, gap))
    if mean_call:
        mean_call -= after_idle
    warm = prof
    scale, spread, net_s = 1.0, None, 0.0
    for _ in range(4):  # the call's scale, the fixed part and the spread depend on each other
        prof = scaled_calls(warm, scale)
        one = prof.call_s(1, pads=pads_of(prof)) + after_idle
        net_s = max(0.0, c1["p50_ms"] / 1e3 - one - batch_wait_ms / 1e3 - loop_s - decode_s)
        if len(lat) >= 20:
            fixed = net_s + batch_wait_ms / 1e3
            ratio = np.maximum(lat - fixed, 1e-6) / max(np.median(lat) - fixed, 1e-6)
            spread = tuple(round(float(v), 4) for v in np.quantile(ratio, np.linspace(0, 1, 41)))
        if mean_call:  # the served bucket-1 calls' median = their mean over the spread's mean
            mean_factor = (
                float(np.mean(np.interp(np.linspace(0, 1, 401), np.linspace(0, 1, 41), spread)))
                if spread
                else 1.0
            )
            scale = mean_call / mean_factor / warm.call_s(1, pads=pads_of(warm))
    client = [
        ph["client_cpu_s"] / len(ph["rows"])
        for sc in report["scenarios"].values() for ph in sc["phases"][1:] if ph.get("rows")
    ]  # fmt: skip
    prof = dataclasses.replace(
        prof, decode_s=decode_s, loop_head_s=head_s, loop_in_s=(loop_s - head_s) / 2,
        loop_out_s=(loop_s - head_s) / 2, net_s=net_s,
        spread=spread, client_s=float(np.median(client)) if client else 0.0,
    )  # fmt: skip
    return saturated_calls(prof, report)


CALIBRATION_PASSES = 3
# A cell scales the buckets only while its simulated calls are within this share of its real calls'
# size: per image a call of 2 costs less than one of 1, so a simulated cell of 2-image calls against
# real ones of 1.05 says nothing of bucket 1, and its ratio, applied pass after pass, compounded (the
# 04:02 recording: bucket 1 at 1.6 x 1.65 x 1.66 of its warm-up time).
SAME_CALL_SIZE = 0.25


def saturated_calls(prof: CpuProfile, report: dict[str, Any]) -> CpuProfile:
    """Model calls per bucket as slow as the servers' were under load (docs/simulator.md, "Model calls
    under load"): every closed-loop cell with at least 2 clients (calls overlapping other requests'
    work) is simulated, and its real time per image in a call (``ssd_batch_seconds`` over
    ``ssd_batch_size``) over the simulated one is that cell's scale, at the cell's real mean call size;
    each bucket gets the scale interpolated at its size (the nearest cell's past the measured sizes).
    The batcher still decides with the warm-up's times. One cell (or one with calls): one scale.
    :data:`CALIBRATION_PASSES` passes, each on the last one's calls."""
    cells = [
        c
        for c in report.get("benchmark", {}).get("cells", [])
        if c.get("server_metrics", {}).get("ssd_batch_size_sum")
    ]
    if not cells:
        return prof
    cells = [c for c in cells if c["concurrency"] >= 2] or cells
    for _ in range(CALIBRATION_PASSES):  # a slower call changes the cells' batch sizes and contention
        points = []
        for top in cells:
            m = top["server_metrics"]
            real = m["ssd_batch_seconds_sum"] / m["ssd_batch_size_sum"]
            sim_calls = _simulated_cell(prof, report, top["concurrency"])
            simulated = sum(t for *_, t in sim_calls) / max(sum(n for _, n, _ in sim_calls), 1)
            images = m["ssd_batch_size_sum"] / (m.get("ssd_batch_size_count") or m["ssd_batch_size_sum"])
            sim_images = sum(n for _, n, _ in sim_calls) / max(len(sim_calls), 1)
            if simulated > 0 and abs(sim_images / images - 1) <= SAME_CALL_SIZE:
                points.append((images, real / simulated))
        if not points:
            return prof
        if len(points) == 1:
            prof = scaled_calls(prof, points[0][1])
        else:
            prof = per_bucket_calls(prof, bucket_scales(points, prof.buckets))
    return prof


def bucket_scales(points: list[tuple[float, float]], buckets: tuple[int, ...]) -> dict[int, float]:
    """Each bucket's scale from ``(mean images per call, scale)`` points: linear in the images between
    points, the nearest point's outside them; points of the same size averaged (``np.interp`` needs
    increasing sizes)."""
    same: dict[float, list[float]] = {}
    for size, ratio in points:
        same.setdefault(size, []).append(ratio)
    images = sorted(same)
    ratios = [float(np.mean(same[size])) for size in images]
    return {b: float(np.interp(b, images, ratios)) for b in buckets}


def _simulated_cell(prof: CpuProfile, report: dict[str, Any], clients: int) -> list[tuple[float, int, float]]:
    cfg = FleetConfig(mode="hpa", initial_replicas=report["replicas"], shared_cores=report["shared_cores"],
                      balancer="round-robin", model_calls_in_flight=calls_in_flight(report),
                      batch_padding=prof.batch_padding)  # fmt: skip
    cfg.hpa = type(cfg.hpa)(min_replicas=report["replicas"], max_replicas=report["replicas"])
    sim = Simulation(cfg, prof, seed=3)
    sim.run_closed(clients, 10.0)
    return [c for c in sim.calls if c[0] >= 2.0]


def per_bucket_calls(prof: CpuProfile, scale: dict[int, float]) -> CpuProfile:
    """Each bucket's calls (and one-core timings) ``scale[b]`` times the profile's; the batcher still
    decides with the warm-up's (``rule_bucket_s``)."""
    table = lambda t: tuple((b, v * scale[b]) for b, v in t if b in scale) if t else None  # noqa: E731
    return dataclasses.replace(
        prof, bucket_s=table(prof.bucket_s), rule_bucket_s=prof.rule_bucket_s or prof.bucket_s,
        one_core_bucket_s=table(prof.one_core_bucket_s),
    )  # fmt: skip


def compare(report: dict[str, Any]) -> None:
    """Fill each phase's ``simulated`` figures from the recorded arrivals (``--replay`` redoes this)."""
    prof = profile_of(report)
    report["profile"] = prof.to_json()
    for sc in report["scenarios"].values():
        seconds = sc["seconds"]
        simulated, calls = simulate_replay(
            prof,
            report["replicas"],
            report["shared_cores"],
            sc["arrivals"],
            sc["offsets"],
            seconds,
            5,
            sc.get("sent"),
            calls_in_flight(report),
        )
        for ph, rows, sim_calls in zip(sc["phases"], simulated, calls, strict=True):
            ph["simulated"] = {**figures(rows, seconds), **sim_calls}
            if ph.get("server_metrics"):
                ph["measured"].update(real_calls(ph["server_metrics"]))
    for c in report["benchmark"]["cells"]:
        n, shared = report["replicas"], report["shared_cores"]
        c["simulated_rps"] = closed_loop_rps(
            prof, c["concurrency"], n, shared, calls_in_flight=calls_in_flight(report)
        )


def call_cores(report: dict[str, Any]) -> str:
    """Per closed-loop cell and phase, from the servers' own counts (docs/simulator.md, "Model calls
    under load"): images per call, ms per call, the model's CPU per image (model and TensorFlow pool
    threads: ``cpu_s:model`` + ``cpu_s:other``), the cores a call got (that CPU over the calls' time,
    ``ssd_batch_seconds``), the decode threads' and event loop's CPU per second of calls (the work
    beside them), for the phases the cores the servers used in all (every thread's CPU over the
    phase, warm-up included in a scenario's first phase), and where recorded the model's system
    share of that CPU and its minor page faults per image (:func:`thread_cpu` ``stats``)."""
    rows = [("closed loop", f"c={c['concurrency']}", c.get("server_metrics") or {}, None)
            for c in report["benchmark"]["cells"]]  # fmt: skip
    for name, sc in report["scenarios"].items():
        for i, ph in enumerate(sc["phases"]):
            span = sc["seconds"] + (sc["offsets"][0] if i == 0 else 0.0)
            rows.append((name, f"{ph['rate']:.1f} req/s", ph.get("server_metrics") or {}, span))
    lines = [
        "| scenario | load | images per call | ms per call | model CPU ms per image | cores per call "
        "| decode + loop CPU per call second | server cores used | model system CPU share "
        "| model page faults per image |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, load, m, span in rows:
        calls, images = m.get("ssd_batch_size_count", 0.0), m.get("ssd_batch_size_sum", 0.0)
        busy = m.get("ssd_batch_seconds_sum", 0.0)
        if not calls or not busy:
            continue
        model = m.get("cpu_s:model", 0.0) + m.get("cpu_s:other", 0.0)
        cpu = sum(v for k, v in m.items() if k.startswith("cpu_s:"))
        used = f"{cpu / span:.2f}" if span else "-"
        beside = (m.get("cpu_s:decode", 0.0) + m.get("cpu_s:event_loop", 0.0)) / busy
        system = m.get("sys_s:model", 0.0) + m.get("sys_s:other", 0.0)
        faults = m.get("faults:model", 0.0) + m.get("faults:other", 0.0)
        recorded = "sys_s:model" in m or "faults:model" in m  # reports from before 2026-12-08: none
        lines.append(
            f"| {name} | {load} | {images / calls:.2f} | {1e3 * busy / calls:.1f} | "
            f"{1e3 * model / images:.1f} | {model / busy:.2f} | {beside:.2f} | {used} | "
            + (f"{system / model:.2f} | {faults / images:.0f} |" if recorded and model else "- | - |")
        )
    return "\n".join(lines)


def calls_in_flight(report: dict[str, Any]) -> int:
    """The servers' ``--model_calls_in_flight`` (reports from before it was recorded: 1, their default
    then)."""
    return int(report.get("model_calls_in_flight", 1))


def write_plan_inputs(report: dict[str, Any], profile_out: Path | None, benchmark_out: Path | None) -> None:
    """The CPU profile and the closed-loop cells (planner format) for ``make simulate-day``."""
    if profile_out:
        meta = {"written_by": "python -m bench.simulate_check", "machine": report["machine"]}
        # a pod serves without the bench's load generator beside it on its cores, and a replica to
        # come decides with its own warm-up, not one of these servers': the mean (rule_bucket_s)
        planned = {**report["profile"], "client_s": 0.0, "replica_rule_bucket_s": None}
        profile_out.write_text(json.dumps({**planned, **meta}, indent=1) + "\n")
    if benchmark_out:
        raw = ("latencies_ms", "server_metrics")  # the replay's inputs; the planner reads the figures
        cells = [{k: v for k, v in c.items() if k not in raw} for c in report["benchmark"]["cells"]]
        bench = {**report["benchmark"], "cells": cells, "machine": report["machine"],
                 "batch_padding": padding_of(report)}  # fmt: skip
        benchmark_out.write_text(json.dumps(bench, indent=1) + "\n")


def default_out(replicas: int) -> Path:
    return OUT_DIR / ("simulate_check.json" if replicas == 1 else f"simulate_check_{replicas}.json")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--concurrency", default="1,2,4,8,16")
    p.add_argument(
        "--large_concurrency", default="64", help="closed-loop cells measured after those of --concurrency "
        "and not counted in the saturated throughput the scenarios' rates scale: calls of the max batch "
        "size under load ('' for none)",
    )  # fmt: skip
    p.add_argument(
        "--call_load", action="store_true", help="also time the detector by exact size, alone and beside "
        "decoding threads, on a replica's cores (bench.call_load), into the report's call_load",
    )  # fmt: skip
    p.add_argument("--cell_s", type=float, default=8.0)
    p.add_argument("--step", default="0.3,0.8", help="step: fractions of the saturated throughput")
    p.add_argument("--ramp", default="0.2,0.4,0.6,0.8,1.0", help="ramp: fractions, one phase each")
    p.add_argument("--overload", default="0.5,1.5,3.0", help="steps into overload (503s)")
    p.add_argument("--seconds", type=float, default=20.0, help="timed seconds per phase")
    p.add_argument("--warmup_s", type=float, default=3.0)
    p.add_argument("--out", type=Path, help="JSON (default bench/out/simulate_check[_N].json)")
    p.add_argument("--profile_out", type=Path, help="also write the CPU profile JSON here")
    p.add_argument("--benchmark_out", type=Path, help="also write the closed-loop cells (planner format)")
    p.add_argument(
        "--write_plan_inputs",
        action="store_true",
        help="write the profile and cells where `make simulate-day` reads them (bench.simulate_day)",
    )
    p.add_argument("--timing_runs", type=int, default=9, help="model calls timed per bucket")
    p.add_argument(
        "--model_calls_in_flight", type=positive_int, default=1,
        help="the servers' --model_calls_in_flight (default 1, as every recording so far; the server's own "
        "default, automatic, runs 2 on a CPU)",
    )  # fmt: skip
    p.add_argument(
        "--batch_padding",
        choices=BATCH_PADDINGS,
        default=ServingOptions.batch_padding,
        help=f"the servers' --batch_padding (auto: {AUTO_PADDING_RULE}); the report records how "
        "they ran their calls, and the replay simulates that",
    )
    p.add_argument("--replay", action="store_true", help="only re-simulate the arrivals recorded in --out")
    p.add_argument(
        "--call_cores", action="store_true", help="only print the cores the model calls got per phase (--out)"
    )
    p.add_argument(
        "--before", type=Path, help="with --replay: print which checks were within 20%% per phase in this "
        "report (the same run replayed by an older simulator) beside --out's",
    )  # fmt: skip
    args = p.parse_args(argv)
    out = args.out or default_out(args.replicas)
    if args.write_plan_inputs:
        from bench import simulate_day

        args.profile_out, args.benchmark_out = simulate_day.PROFILE, simulate_day.BENCHMARK
    if args.call_cores:
        print(call_cores(json.loads(out.read_text())))
        return 0
    if args.replay:
        report = json.loads(out.read_text())
        compare(report)
        out.write_text(json.dumps(report, indent=1) + "\n")
        write_plan_inputs(report, args.profile_out, args.benchmark_out)
        print(markdown(report))
        if args.before:
            print("\n" + checks_table(json.loads(args.before.read_text()), report))
        return 0
    from predictor.models import DEMO_MODEL_DIR

    out.parent.mkdir(parents=True, exist_ok=True)
    cpus = sorted(os.sched_getaffinity(0))
    places, shared = placement(args.replicas, cpus)
    servers, logs = [], []
    report: dict[str, Any] = {
        "machine": {
            "cpu": cpu_model_name(),
            "cpu_count": os.cpu_count(),
            "affinity": len(cpus),
            "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "load_average_at_start": list(os.getloadavg()),
            "nice": os.nice(0),
        },
        "replicas": args.replicas,
        "placement": [sorted(c) for c in places],
        "shared_cores": shared,
        "model_calls_in_flight": args.model_calls_in_flight,
    }
    calls = time_buckets(places[0], args.timing_runs)
    print("model call per bucket alone (s):", calls)
    one_core = time_buckets({min(places[0])}, args.timing_runs) if len(places[0]) > 1 else calls
    print("... on one core (s):", one_core)
    report["bucket_s_one_core"] = one_core
    report["bucket_s_alone"] = calls
    if args.call_load:
        report["call_load"] = call_load(places[0], out.with_name(f"{out.stem}_call_load.json"))
        for reason in call_load_disturbed(report["call_load"], len(places[0])):
            print(f"call_load looks disturbed, its rules stay off: {reason}", file=sys.stderr)
    try:
        for i, cores in enumerate(places):
            logs.append(out.with_name(f"{out.stem}_server{i}.log"))
            with affinity(cores):
                server = start_cpu_server(
                    DEMO_MODEL_DIR, logs[-1], "--decode_threads", str(len(cores)), "--compute_nice", "0",
                    "--model_calls_in_flight", str(args.model_calls_in_flight),
                    "--batch_padding", args.batch_padding,
                )  # fmt: skip
            servers.append(server)
            server.wait_ready()
        warmups = [warmup_seconds(log.read_text()) for log in logs]
        paddings = {measured_padding(log.read_text()) for log in logs}
        if len(paddings) != 1:
            raise RuntimeError(f"the replicas ran their calls differently: {paddings}")
        report["batch_padding"] = paddings.pop()
        ports = [s.http_port for s in servers]
        base = {"host": "127.0.0.1", "port": ports[0], "more_ports": tuple(ports[1:]),
                "path": f"/v1/models/{MODEL_NAME}:predict",
                "bodies": tuple(make_test_jpegs()[:4])}  # fmt: skip
        urls, pids = [s.url for s in servers], [s.proc.pid for s in servers]
        with Generator() as gen:

            def measured_cell(c: int) -> dict[str, Any]:
                """One closed-loop cell of ``c`` clients, with the servers' metrics and threads' CPU."""
                before = {**scrape(urls), **_cpu_keys(pids)}
                r = gen.run(Phase(**base, seconds=args.cell_s, warmup_s=2.0, clients=c))
                return {**cell(c, r), "server_metrics": delta({**scrape(urls), **_cpu_keys(pids)}, before)}

            cells = []
            for c in (int(v) for v in args.concurrency.split(",")):
                cells.append(measured_cell(c))
                x, p50 = cells[-1]["throughput_rps"], cells[-1]["p50_ms"]
                print(f"closed loop c={c}: {x:.1f} req/s, p50 {p50:.0f} ms")
            sat = max(c["throughput_rps"] for c in cells)
            for c in (int(v) for v in args.large_concurrency.split(",") if v):
                # not in sat: the scenarios' rates scale as before
                cells.append({**measured_cell(c), "large": True})
                print(f"closed loop c={c} (large calls): {cells[-1]['throughput_rps']:.1f} req/s")
            c1 = min(cells, key=lambda c: c["concurrency"])
            source = f"demo, {len(places[0])} core(s) per replica, bench.simulate_check"
            source += f", {report['machine']['cpu']}, {report['machine']['utc']}"
            prof = profile(calls, warmups, c1, len(places[0]), 2.0, source, one_core, report["batch_padding"])
            report["warmup_bucket_s"] = warmups
            report["profile"] = prof.to_json()
            report["benchmark"] = {
                "format": BENCHMARK_FORMAT,
                "model_dir": "demo",
                "batch_wait_ms": 2.0,
                "batch_padding": report["batch_padding"],
                "request": "raw JPEG (bench.common.make_test_jpegs), bench.loadgen closed loop",
                "cells": cells,
            }
            report["saturated_rps"] = sat
            report["seconds_per_phase"] = args.seconds
            report["scenarios"] = {}
            for name, fracs in (("step", args.step), ("ramp", args.ramp), ("overload", args.overload)):
                rates = [float(f) * sat for f in fracs.split(",")]
                results, offsets, metrics = scenario(
                    gen,
                    base,
                    rates,
                    args.seconds,
                    args.warmup_s,
                    seed=11,
                    urls=urls,
                    pids=pids,
                )
                phases = [
                    {"rate": rate, "measured": figures([(d, e, s) for d, _, e, s in r.requests], r.seconds),
                     "client_cpu_s": r.client_cpu_s, "server_metrics": m, "rows": rows_json(r)}
                    for rate, r, m in zip(rates, results, metrics, strict=True)
                ]  # fmt: skip
                report["scenarios"][name] = {
                    "seconds": args.seconds,
                    "offsets": offsets,
                    **dict(zip(("arrivals", "sent"), arrivals_of(results, offsets), strict=True)),
                    "phases": phases,
                    "load_average_1m": os.getloadavg()[0],
                }
                print(name, json.dumps([{k: v for k, v in ph.items() if k != "rows"} for ph in phases]))
    finally:
        for server in servers:
            server.terminate()
    out.write_text(json.dumps(report, indent=1) + "\n")  # the measurements, before any simulation
    compare(report)
    out.write_text(json.dumps(report, indent=1) + "\n")
    write_plan_inputs(report, args.profile_out, args.benchmark_out)
    print(markdown(report))
    print(f"JSON: {out}")
    return 0


def _err(sim: float, real: float) -> str:
    if not real or real != real or sim != sim:
        return "-"
    return f"{100 * (sim - real) / real:+.0f}%"


def bucket_text(report: dict[str, Any]) -> str:
    """The profile's model call per bucket (ms) and the warm-up timings its batchers decide with: the
    calls' own (the servers' warm-up) or ``rule_bucket_s``; with a warm-up per replica those are their
    mean, and each replica's efficient bucket at the servers' max batch size (the cells') is named."""
    prof = report["profile"]
    ms = lambda table: ", ".join(f"{b}: {1e3 * t:.0f}" for b, t in table.items())  # noqa: E731
    mean = ""
    if prof.get("replica_rule_bucket_s"):
        cpu = CpuProfile.from_json(prof)
        max_batch = max(int(c["max_batch_size"]) for c in report["benchmark"]["cells"])
        each = ", ".join(
            str(cpu.batcher(max_batch, i, pads=pads_of(cpu)).efficient_bucket())
            for i in range(len(prof["replica_rule_bucket_s"]))
        )
        mean = f"their mean; each replica decides with its own, efficient buckets {each}"
    if not prof.get("rule_bucket_s"):
        return f"{ms(prof['bucket_s'])} (the servers' warm-up{', ' + mean if mean else ''})"
    text = f"{ms(prof['bucket_s'])} (served medians: the warm-up's times the served bucket-1 calls' ratio)"
    text += f"; the batchers decide with the warm-up's: {ms(prof['rule_bucket_s'])}"
    return text + (f" ({mean})" if mean else "")


def markdown(report: dict[str, Any]) -> str:
    """The comparison table (bench/results.py adds the date and machine line above it)."""
    loads = ", ".join(f"{n} {sc['load_average_1m']:.1f}" for n, sc in report["scenarios"].items())
    prof = report["profile"]
    buckets = bucket_text(report)
    n = report["replicas"]
    where = "all cores" if n == 1 else (
        f"all sharing {report['shared_cores']:g} cores" if report["shared_cores"] else "one core each"
    )  # fmt: skip
    if calls_in_flight(report) > 1:
        where += f", --model_calls_in_flight {calls_in_flight(report)}"
    where += ", calls padded to their bucket" if padding_of(report) == "bucket" else ", exact-size calls"
    lines = [
        f"{n} replica(s) ({where}) behind a round-robin client; saturated closed-loop throughput "
        f"{report['saturated_rps']:.1f} req/s; simulator CPU profile: model call per bucket (ms) {buckets}, "
        f"{work(prof)}, {prof['cores']:g} core(s) per replica; "
        f"{report['seconds_per_phase']:g} s per phase; 1-minute load average after each scenario: {loads}; "
        "err = (simulated - real) / real.",
        "",
        "| scenario | offered req/s | p50 ms real / sim (err) | p95 ms real / sim (err) | "
        "throughput real / sim (err) | 503 real / sim | within 20% | mean call: images, ms real / sim |",
        "|---|---:|---|---|---|---|---|---|",
    ]
    cells = report["benchmark"]["cells"]
    closed = ", ".join(
        f"c={c['concurrency']} {c['throughput_rps']:.1f} / {c['simulated_rps']:.1f}" for c in cells
    )
    lines[0] += f" Closed-loop cells, req/s real / simulated: {closed}."
    for name, sc in report["scenarios"].items():
        for ph in sc["phases"]:
            m, s = ph["measured"], ph["simulated"]
            lines.append(
                f"| {name} | {ph['rate']:.1f} | "
                f"{m['p50_ms']:.0f} / {s['p50_ms']:.0f} ({_err(s['p50_ms'], m['p50_ms'])}) | "
                f"{m['p95_ms']:.0f} / {s['p95_ms']:.0f} ({_err(s['p95_ms'], m['p95_ms'])}) | "
                f"{m['throughput_rps']:.1f} / {s['throughput_rps']:.1f} "
                f"({_err(s['throughput_rps'], m['throughput_rps'])}) | {m['n503']} / {s['n503']} | "
                f"{' '.join(within(m, s)) or '-'} | {_calls(m)} / {_calls(s)} |"
            )
    return "\n".join(lines)


CHECKS = (("p50", "p50_ms"), ("p95", "p95_ms"), ("throughput", "throughput_rps"), ("503s", "n503"))


def within(measured: dict[str, Any], simulated: dict[str, Any], tolerance: float = 0.2) -> list[str]:
    """The checks whose simulated figure is within ``tolerance`` of the measured one (no 503s on either
    side counts as within)."""
    out = []
    for name, key in CHECKS:
        real, sim = measured[key], simulated[key]
        if (
            real == real
            and sim == sim
            and abs(sim - real) <= tolerance * abs(real) + (1e-9 if key == "n503" else 0)
        ):
            out.append(name)
    return out


def checks_table(before: dict[str, Any], after: dict[str, Any]) -> str:
    """Per phase, the checks within 20% in two replays of one run (``before``, ``after``)."""
    lines = ["| scenario | offered req/s | within 20% before | within 20% after |", "|---|---:|---|---|"]
    count = [0, 0]
    for name, sc in after["scenarios"].items():
        for old, new in zip(before["scenarios"][name]["phases"], sc["phases"], strict=True):
            checks = [within(ph["measured"], ph["simulated"]) for ph in (old, new)]
            count = [c + len(k) for c, k in zip(count, checks, strict=True)]
            was, now = (" ".join(k) or "-" for k in checks)
            lines.append(f"| {name} | {new['rate']:.1f} | {was} | {now} |")
    total = 4 * sum(len(sc["phases"]) for sc in after["scenarios"].values())
    lines.append(f"| all | | {count[0]} of {total} | {count[1]} of {total} |")
    return "\n".join(lines)


def _calls(figures: dict[str, Any]) -> str:
    if figures.get("mean_batch", math.nan) != figures.get("mean_batch", math.nan):
        return "-"
    return f"{figures['mean_batch']:.1f}, {figures['mean_call_ms']:.0f}"


def work(prof: dict[str, Any]) -> str:
    """The profile's request work outside the model call, in words."""
    loop = [prof.get(k, 0.0) for k in ("loop_head_s", "loop_in_s", "loop_out_s")]
    if not any(loop):
        return f"{1e3 * prof['decode_s']:.1f} ms of other work per request"
    text = (
        f"per request {1e3 * prof['decode_s']:.1f} ms decoding, event loop {1e3 * sum(loop):.2f} ms "
        f"({1e3 * loop[0]:.2f} up to the middleware's refusal), {1e3 * prof['net_s']:.1f} ms outside "
        f"the server, generator {1e3 * prof.get('client_s', 0.0):.2f} ms CPU"
    )
    if prof.get("spread"):
        q = prof["spread"]
        text += f"; spread (work / median at c=1) p5 {q[2]:.2f}, p95 {q[38]:.2f}, max {q[-1]:.2f}"
    return text


if __name__ == "__main__":
    sys.exit(main())
