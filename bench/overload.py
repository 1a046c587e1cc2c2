"""Overload: offer a real server several times what it can do; does it keep doing what it can, fast?

Starts ``python -m predictor`` (default settings, the demo model unless ``--model_dir``) on loopback
and loads it with one-image V1 requests (raw JPEG bodies, 500x375, ``bench.common.make_test_jpegs``)
from a load generator in a process of its own (:mod:`bench.loadgen`: keep-alive HTTP/1.1, a few tens
of microseconds of client CPU per request, latency counted from when a request was due).

1. **Capacity**, measured open loop (arrivals independent of the answers, as real traffic):
   a closed loop of ``--clients`` (32: one batch, so nothing is shed) gives a first estimate; an
   open loop at twice it gives the *saturated throughput* (what the server completes when offered
   more than it can do: its batches are full); then open-loop probes of ``--probe_s`` seconds search
   downwards from 95% of that for the highest arrival rate the server *keeps up with*: every answer
   200 (the server never saw a standing queue it had to shed) and answers completed per second
   >= ``--keep_up`` (0.9) x the rate offered (no backlog builds; a stricter ratio mistakes the
   requests in flight at the window's edges for a backlog). Steps of 10%, then two bisections.
   (Searching upwards from the closed-loop estimate stopped well below what the server completes
   when saturated, 28 against 34 req/s in one run, so the reference latency came from part-full
   batches and the 4x run, with full ones, looked slow against it.)
2. **Side by side**, ``--rounds`` times: the capacity rate for ``--seconds`` (the reference p99),
   then ``--factor`` (4) x that rate for ``--seconds`` (Poisson arrivals both; ``--even`` for evenly
   spaced ones). Each phase runs ``--warmup_s`` (5) untimed seconds first: at 4x the server first
   absorbs a burst of up to ``--max_queue_images`` images, detects the standing queue and drains it
   (the warm-up's own figures are reported apart). Alternating them means a change
   in what else runs on the machine hits both alike; the figures pool the rounds.

Reported for both phases: offered rate, goodput (200s *completed* in the timed window per second),
p50/p99 latency of the admitted (200) requests, rejection (503) rate and the 503s' latency, transport
errors, the generator's lag behind its schedule (a lagging generator only makes latencies worse),
server and generator CPU, and the server's peak RSS over the whole run (``VmHWM`` after a reset at
ready, and sampled).

Pass: goodput at overload >= 90% of goodput at capacity, p99 of admitted requests at overload
<= 2x the p99 at capacity, nothing but 200 and 503 answered, no transport error, server alive; and the
capacity rounds themselves kept up (all 200, >= 90% completed), else there is no valid reference.

``python -m bench.overload [--model_dir DIR] [--factor 4] [--seconds 10] [--rounds 2] [-- server flags]``
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.common import (
    OUT_DIR,
    PeakSampler,
    fmt_table,
    machine_info,
    make_test_jpegs,
    percentile,
    process_rss,
    read_hwm,
    reset_hwm,
    start_cpu_server,
    write_json,
)
from bench.loadgen import Generator, Phase, PhaseResult
from predictor.protocol.wire import MODEL_NAME

#: Where the capacity search starts, as a fraction of the saturated throughput.
SEARCH_START = 0.95
#: Relative steps of the capacity search (down from the start).
SEARCH_STEP = 0.10
#: Bisections after the steps (each halves the uncertainty).
SEARCH_BISECTIONS = 2
#: Steps before the search gives up going one way.
SEARCH_MAX_STEPS = 8


def summarize(r: PhaseResult) -> dict[str, Any]:
    """Figures of one or more pooled phases (``requests``: due in the timed windows)."""
    statuses = Counter(s for *_, s in r.requests)
    ok = [(done - due) * 1000 for due, _, done, s in r.requests if s == "200"]
    refused = [(done - due) * 1000 for due, _, done, s in r.requests if s == "503"]
    lag = [(sent - due) * 1000 for due, sent, _, _ in r.requests]
    n = len(r.requests)
    return {
        "seconds": r.seconds,
        "requests": n,
        "statuses": dict(statuses),
        "offered_per_s": n / r.seconds,
        "goodput_per_s": r.completed.get("200", 0) / r.seconds,
        "completed_per_s": sum(r.completed.values()) / r.seconds,
        "p50_ms": percentile(ok, 50),
        "p99_ms": percentile(ok, 99),
        "rejected_share": statuses.get("503", 0) / n if n else float("nan"),
        "p50_503_ms": percentile(refused, 50),
        "p99_503_ms": percentile(refused, 99),
        "errors": sum(v for k, v in statuses.items() if k.startswith("error")),
        "generator_lag_p99_ms": percentile(lag, 99),
        "generator_cores": r.client_cpu_s / r.seconds if r.seconds else 0.0,
    }


def transient(r: PhaseResult) -> dict[str, Any]:
    """The warm-up of a phase (its first ``--warmup_s`` seconds, left out of the figures above): how
    the server got from the previous load to this one."""
    ok = [(done - due) * 1000 for due, _, done, s in r.warmup if s == "200"]
    statuses = Counter(s for *_, s in r.warmup)
    return {
        "requests": len(r.warmup),
        "statuses": dict(statuses),
        "p99_ms": percentile(ok, 99),
        "max_ms": max(ok) if ok else float("nan"),
    }


def pool(results: list[PhaseResult]) -> PhaseResult:
    """Several phases as one: their timed windows laid end to end."""
    out = PhaseResult(sum(r.seconds for r in results))
    completed: Counter = Counter()
    for r in results:
        out.requests += r.requests
        out.warmup += r.warmup
        completed.update(r.completed)
        out.client_cpu_s += r.client_cpu_s
    out.completed = dict(completed)
    return out


def keeps_up(s: dict[str, Any], keep_up: float) -> bool:
    """Every answer 200 and answers completed at >= ``keep_up`` x the offered rate (no backlog)."""
    return (
        s["requests"] > 0
        and s["statuses"].get("200", 0) == s["requests"]
        and (s["completed_per_s"] >= keep_up * s["offered_per_s"])
    )


class Bench:
    """The generator pointed at one server: phases by rate or by clients."""

    def __init__(self, gen: Generator, port: int, bodies: tuple[bytes, ...], poisson: bool) -> None:
        self.gen, self.poisson, self.seed = gen, poisson, 0
        self.base = {"host": "127.0.0.1", "port": port, "path": f"/v1/models/{MODEL_NAME}:predict"}
        self.bodies = bodies

    def open_loop(self, rate: float, seconds: float, warmup_s: float) -> PhaseResult:
        self.seed += 2
        phase = Phase(
            **self.base,
            bodies=self.bodies,
            seconds=seconds,
            warmup_s=warmup_s,
            rate=rate,
            poisson=self.poisson,
            seed=self.seed,
        )
        return self.gen.run(phase)

    def closed_loop(self, clients: int, seconds: float, warmup_s: float) -> PhaseResult:
        phase = Phase(**self.base, bodies=self.bodies, seconds=seconds, warmup_s=warmup_s, clients=clients)
        return self.gen.run(phase)


def search_capacity(
    bench: Bench, estimate: float, probe_s: float, warmup_s: float, keep_up: float
) -> tuple[float, float, list[dict[str, Any]]]:
    """(saturated throughput, capacity, probes): the most the server completes per second when offered
    twice ``estimate``; then the highest open-loop rate it keeps up with, searched downwards from
    :data:`SEARCH_START` x that throughput (nothing above it can be kept up with)."""
    probes: list[dict[str, Any]] = []

    def probe(rate: float) -> dict[str, Any]:
        s = summarize(bench.open_loop(rate, probe_s, warmup_s))
        ok = keeps_up(s, keep_up)
        probes.append({"rate": rate, "keeps_up": ok, **_probe_figures(s)})
        print(
            f"  probe {rate:7.1f} req/s: goodput {s['goodput_per_s']:.1f}, p99 {s['p99_ms']:.0f} ms, "
            f"{s['statuses']} -> {'keeps up' if ok else 'falls behind'}",
            flush=True,
        )
        return {"keeps_up": ok, **s}

    saturated = probe(2 * estimate)["goodput_per_s"]
    high, rate = None, SEARCH_START * saturated
    for _ in range(SEARCH_MAX_STEPS):
        if probe(rate)["keeps_up"]:
            break
        high, rate = rate, rate * (1 - SEARCH_STEP)
    else:
        raise RuntimeError(f"the server kept up with no rate down to {rate:.1f} req/s: {probes}")
    low = rate
    if high is not None:
        for _ in range(SEARCH_BISECTIONS):
            mid = (low + high) / 2
            if probe(mid)["keeps_up"]:
                low = mid
            else:
                high = mid
    return saturated, low, probes


def _probe_figures(s: dict[str, Any]) -> dict[str, Any]:
    keys = ("offered_per_s", "goodput_per_s", "completed_per_s", "p50_ms", "p99_ms", "statuses")
    return {k: s[k] for k in keys}


def run_benchmark(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    """Closed-loop estimate -> open-loop capacity search -> ``rounds`` x (capacity, overload)."""
    closed = summarize(bench.closed_loop(args.clients, args.probe_s, args.warmup_s))
    estimate = closed["goodput_per_s"]
    print(f"closed loop, {args.clients} clients: {estimate:.1f} req/s, {closed['statuses']}")
    print("capacity search (open loop):", flush=True)
    saturated, capacity, probes = search_capacity(bench, estimate, args.probe_s, args.warmup_s, args.keep_up)
    print(f"capacity: {capacity:.1f} req/s; side by side with {args.factor:g}x:", flush=True)
    cap_runs, over_runs, rounds = [], [], []
    for _ in range(args.rounds):
        cap_runs.append(bench.open_loop(capacity, args.seconds, args.warmup_s))
        over_runs.append(bench.open_loop(args.factor * capacity, args.seconds, args.warmup_s))
        c, o = summarize(cap_runs[-1]), summarize(over_runs[-1])
        rounds.append({"capacity": _probe_figures(c), "overload": _probe_figures(o)})
        print(
            f"  capacity: goodput {c['goodput_per_s']:.1f}, p99 {c['p99_ms']:.0f} ms, {c['statuses']}; "
            f"overload: offered {o['offered_per_s']:.1f}, goodput {o['goodput_per_s']:.1f}, "
            f"p99 admitted {o['p99_ms']:.0f} ms, 503 p50 {o['p50_503_ms']:.0f} ms, {o['statuses']}",
            flush=True,
        )
    return {
        "closed_loop_estimate": {"clients": args.clients, **_probe_figures(closed)},
        "saturated_throughput_per_s": saturated,
        "capacity_search": probes,
        "capacity_rate_per_s": capacity,
        "capacity": summarize(pool(cap_runs)),
        "overload": summarize(pool(over_runs)),
        "overload_warmup": transient(pool(over_runs)),
        "rounds": rounds,
    }


def verdict(cap: dict[str, Any], over: dict[str, Any], alive: bool) -> list[str]:
    """What fails the targets (empty: PASS)."""
    failures = []
    goodput_ratio = over["goodput_per_s"] / cap["goodput_per_s"]
    p99_ratio = over["p99_ms"] / cap["p99_ms"]
    if not goodput_ratio >= 0.9:
        failures.append(f"goodput {100 * goodput_ratio:.0f}% of capacity (< 90%)")
    if not p99_ratio <= 2.0:
        failures.append(f"p99 of admitted requests {p99_ratio:.2f}x the p99 at capacity (> 2x)")
    unexpected = {s: n for s, n in {**cap["statuses"], **over["statuses"]}.items() if s not in ("200", "503")}
    if unexpected:
        failures.append(f"answers other than 200/503 (or transport errors): {unexpected}")
    if not alive:
        failures.append("server died")
    if not keeps_up(cap, 0.9):
        failures.append(
            "no valid reference: the capacity rounds did not keep up with the capacity rate (not all "
            "200, or < 90% completed: a slower machine than during the search, or the server still "
            "shedding after the 4x round)"
        )
    return failures


def overload(model_dir: Path, args: argparse.Namespace, log: Path) -> dict[str, Any]:
    server = start_cpu_server(model_dir, log, *args.server_args)
    bodies = tuple(make_test_jpegs()[:4])
    try:
        server.wait_ready()
        pid = server.proc.pid
        ready_rss = process_rss(pid)
        hwm_reset = reset_hwm(pid)
        sampler = PeakSampler(pid, interval_s=0.05)
        sampler.start()
        cpu0, t0 = _cpu_seconds(pid), time.perf_counter()
        with Generator() as gen:
            result = run_benchmark(Bench(gen, server.http_port, bodies, not args.even), args)
        server_cores = (_cpu_seconds(pid) - cpu0) / (time.perf_counter() - t0)
        peak = max(sampler.stop(), read_hwm(pid) if hwm_reset else 0)
        counters = {
            f"cancelled_{stage}": server.metric("ssd_cancelled_images_total", f'stage="{stage}"')
            for stage in ("decode", "queue")
        }
        for reason in ("queue_full", "inflight_bytes"):
            counters[f"rejected_{reason}"] = server.metric(
                "ssd_rejected_requests_total", f'reason="{reason}"'
            )
        log_text = server.log()
        alive = server.proc.poll() is None
    finally:
        exit_code = server.terminate()

    cap, over = result["capacity"], result["overload"]
    failures = verdict(cap, over, alive)
    return {
        "machine": machine_info(),
        "load_average_at_end": os.getloadavg(),
        "model_dir": str(model_dir),
        "server_args": args.server_args,
        "resources_log_line": _log_line(log_text, "resources: "),
        "batching_log_line": _log_line(log_text, "batching: "),
        "factor": args.factor,
        "seconds": args.seconds,
        "rounds_count": args.rounds,
        "arrivals": "even" if args.even else "poisson",
        **result,
        "goodput_over_capacity": over["goodput_per_s"] / cap["goodput_per_s"],
        "p99_admitted_over_p99_capacity": over["p99_ms"] / cap["p99_ms"],
        "server_cores": server_cores,
        "rss_mib": {"ready": ready_rss / 2**20, "peak": peak / 2**20},
        "server_counters": counters,
        "standing_queue_log_lines": log_text.count("standing queue:"),
        "server_exit_code": exit_code,
        "failures": failures,
        "passed": not failures,
    }


def _log_line(text: str, marker: str) -> str:
    line = next((x for x in text.splitlines() if marker in x), "")
    return line.split(marker, 1)[-1]


def _cpu_seconds(pid: int) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def format_report(r: dict[str, Any]) -> str:
    """The run's JSON as two tables: capacity and 4x side by side, then the facts and the verdict
    (printed at the end of a run, and the ``overload`` block of bench/RESULTS.md)."""
    cap, over = r["capacity"], r["overload"]

    def ms(s: dict[str, Any], key: str) -> str:
        return f"{s[key + '_ms']:.0f}" if s[key + "_ms"] == s[key + "_ms"] else "-"

    def row(name: str, fn: Any) -> tuple[str, str, str]:
        return (name, fn(cap), fn(over))

    rows = [
        row("offered (req/s)", lambda s: f"{s['offered_per_s']:.1f}"),
        row("goodput: 200s completed (req/s)", lambda s: f"{s['goodput_per_s']:.1f}"),
        row("p50 / p99 of admitted (ms)", lambda s: f"{ms(s, 'p50')} / {ms(s, 'p99')}"),
        row("rejected (503) share of offered", lambda s: f"{100 * s['rejected_share']:.1f}%"),
        row("p50 / p99 of the 503s (ms)", lambda s: f"{ms(s, 'p50_503')} / {ms(s, 'p99_503')}"),
        row("statuses", lambda s: str(s["statuses"])),
        row(
            "generator lag p99 (ms) / cores",
            lambda s: f"{s['generator_lag_p99_ms']:.1f} / {s['generator_cores']:.2f}",
        ),
    ]
    table = fmt_table(
        ["figure", f"capacity ({r['capacity_rate_per_s']:.1f} req/s)", f"{r['factor']:g}x"], rows
    )
    ce = r["closed_loop_estimate"]
    facts = [
        ("closed-loop estimate", f"{ce['goodput_per_s']:.1f} req/s with {ce['clients']} clients"),
        ("saturated throughput (offered 2x the estimate)", f"{r['saturated_throughput_per_s']:.1f} req/s"),
        (
            "capacity search (rate: keeps up?)",
            ", ".join(f"{p['rate']:.1f}: {'yes' if p['keeps_up'] else 'no'}" for p in r["capacity_search"]),
        ),
        (
            "4x, warm-up seconds (left out above)",
            "p99 / max of admitted {:.0f} / {:.0f} ms, {}".format(
                r["overload_warmup"]["p99_ms"],
                r["overload_warmup"]["max_ms"],
                r["overload_warmup"]["statuses"],
            ),
        ),
        ("goodput at 4x / at capacity", f"{100 * r['goodput_over_capacity']:.0f}% (target >= 90%)"),
        ("p99 admitted at 4x / at capacity", f"{r['p99_admitted_over_p99_capacity']:.2f} (target <= 2)"),
        ("server RSS ready / peak (MiB)", f"{r['rss_mib']['ready']:.0f} / {r['rss_mib']['peak']:.0f}"),
        ("server cores (whole run)", f"{r['server_cores']:.2f}"),
        ("server counters", ", ".join(f"{k} {v:.0f}" for k, v in r["server_counters"].items())),
        ("server resources", r["resources_log_line"]),
        ("server batching", r["batching_log_line"]),
        ("result", "PASS" if r["passed"] else "FAIL: " + "; ".join(r["failures"])),
    ]
    return table + "\n\n" + fmt_table(["", ""], facts)


#: The renderer of bench/RESULTS.md's overload block (:mod:`bench.results`).
markdown = format_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_dir", type=Path, default=None, help="default: the shipped demo model")
    parser.add_argument(
        "--clients", type=int, default=32, help="closed-loop clients of the first estimate (<= 2 batches)"
    )
    parser.add_argument("--factor", type=float, default=4.0, help="offered load / capacity")
    parser.add_argument("--warmup_s", type=float, default=5.0, help="untimed seconds before each phase")
    parser.add_argument("--probe_s", type=float, default=8.0, help="timed seconds per capacity probe")
    parser.add_argument("--seconds", type=float, default=10.0, help="timed seconds per phase and round")
    parser.add_argument("--rounds", type=int, default=2, help="capacity/overload rounds side by side")
    parser.add_argument("--keep_up", type=float, default=0.9, help="completed/offered a probe must reach")
    parser.add_argument("--even", action="store_true", help="evenly spaced arrivals instead of Poisson")
    parser.add_argument("--out", type=Path, default=OUT_DIR / "overload.json")
    parser.add_argument("server_args", nargs="*", help="extra server flags, after --")
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.model_dir is None:
        from predictor.models import DEMO_MODEL_DIR

        args.model_dir = DEMO_MODEL_DIR
    report = overload(args.model_dir, args, args.out.with_name(args.out.stem + "_server.log"))
    print()
    print(format_report(report))
    print(f"load average at end: {os.getloadavg()}")
    write_json(args.out, report)
    print(f"\nJSON: {args.out}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
