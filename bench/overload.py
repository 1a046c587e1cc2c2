"""Overload: offer a real server several times what it can do; does it keep doing what it can, fast?

Starts ``python -m predictor`` with default settings (the demo model unless ``--model_dir``) on
loopback, then, with one-image V1 requests (raw JPEG bodies, 500x375, ``bench.common.make_test_jpegs``):

1. **capacity**: ``--clients`` closed-loop clients (each sends its next request when the last is
   answered) for ``--seconds``: capacity = 200s per second; p50/p99 latency of the 200s;
2. **overload**: an open loop offering ``--factor`` x that capacity, requests evenly spaced, for
   ``--seconds``, whatever the answers: goodput = 200s per second, p50/p99 latency of the admitted
   (200) requests, rejection rate (503s / offered) and latency of the 503s, transport errors.

The two phases alternate ``--rounds`` times (each with ``--warmup_s`` (5) untimed seconds first), so
a change in what else runs on the machine hits both alike; the figures pool all rounds. The warm-up
also leaves out the start of each overload, before the server has recognised a standing queue
(``--warmup_s 0`` includes it). The server's
peak RSS over the whole run (``VmHWM`` after a reset at ready) is reported too. The client runs in
this process (asyncio + httpx) on the same machine: on a small machine it takes CPU from the server,
which lowers both capacity and goodput; the client's own CPU use is recorded.

Pass: goodput >= 90% of capacity, p99 of admitted requests <= 2x the p99 at capacity, nothing but
200 and 503 answered, no transport error.

``python -m bench.overload [--model_dir DIR] [--clients 16] [--factor 4] [--seconds 10] [--rounds 3]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.common import OUT_DIR, REPO, fmt_table, machine_info, make_test_jpegs, percentile, write_json
from bench.hostile import PeakSampler, read_hwm, reset_hwm
from bench.soak import process_rss

sys.path.insert(0, str(REPO / "tests"))
from serving_fixtures import start_server  # shared server helpers (tests/)

MODEL_NAME = "ssd"


class Requests:
    """One-image V1 requests, round robin over the test JPEGs; each result is (start, status, seconds)."""

    def __init__(self, url: str, images: list[bytes]) -> None:
        import httpx

        self.url = f"{url}/v1/models/{MODEL_NAME}:predict"
        self.images = images
        self.i = 0
        limits = httpx.Limits(max_connections=2048, max_keepalive_connections=2048)
        self.client = httpx.AsyncClient(timeout=120, limits=limits)

    async def one(self) -> tuple[float, str, float]:
        image = self.images[self.i % len(self.images)]
        self.i += 1
        start = time.perf_counter()
        try:
            r = await self.client.post(self.url, content=image, headers={"content-type": "image/jpeg"})
            status = str(r.status_code)
        except Exception as exc:
            status = f"error:{type(exc).__name__}"
        return start, status, time.perf_counter() - start


async def closed_loop(req: Requests, clients: int, warmup_s: float, seconds: float) -> list[tuple]:
    t_start = time.perf_counter() + warmup_s
    t_end = t_start + seconds
    results: list[tuple] = []

    async def client() -> None:
        while time.perf_counter() < t_end:
            start, status, latency = await req.one()
            if start >= t_start and start + latency <= t_end:
                results.append((start, status, latency))

    await asyncio.gather(*(client() for _ in range(clients)))
    return results


async def open_loop(req: Requests, rate: float, warmup_s: float, seconds: float) -> list[tuple]:
    t0 = time.perf_counter()
    t_start = t0 + warmup_s
    t_end = t_start + seconds
    tasks = []
    k = 0
    while True:
        due = t0 + k / rate
        if due >= t_end:
            break
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(req.one()))
        k += 1
    done = await asyncio.gather(*tasks)
    return [r for r in done if r[0] >= t_start]


def summarize_phase(results: list[tuple], seconds: float) -> dict[str, Any]:
    statuses = Counter(s for _, s, _ in results)
    ok = [lat * 1000 for _, s, lat in results if s == "200"]
    return {
        "requests": len(results),
        "statuses": dict(statuses),
        "answered_200_per_s": len(ok) / seconds,
        "p50_ms": percentile(ok, 50),
        "p99_ms": percentile(ok, 99),
        "rejected_503_share": statuses.get("503", 0) / len(results) if results else float("nan"),
    }


async def run_phases(
    url: str, clients: int, factor: float, warmup_s: float, seconds: float, rounds: int
) -> dict[str, Any]:
    req = Requests(url, make_test_jpegs()[:4])
    cap_results: list[tuple] = []
    over_results: list[tuple] = []
    per_round = []
    try:
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for _ in range(rounds):
            cap_round = await closed_loop(req, clients, warmup_s, seconds)
            capacity = sum(s == "200" for _, s, _ in cap_round) / seconds
            over_round = await open_loop(req, factor * capacity, warmup_s, seconds)
            cap_results += cap_round
            over_results += over_round
            per_round.append(
                {
                    "capacity_per_s": capacity,
                    "offered_per_s": len(over_round) / seconds,
                    "goodput_per_s": sum(s == "200" for _, s, _ in over_round) / seconds,
                }
            )
        client_cores = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
    finally:
        await req.client.aclose()
    cap = summarize_phase(cap_results, rounds * seconds)
    over = summarize_phase(over_results, rounds * seconds)
    over["offered_per_s"] = len(over_results) / (rounds * seconds)
    rejected = [lat * 1000 for _, s, lat in over_results if s == "503"]
    over["p50_503_ms"], over["p99_503_ms"] = percentile(rejected, 50), percentile(rejected, 99)
    return {"capacity": cap, "overload": over, "rounds": per_round, "client_cores": client_cores}


def overload(
    model_dir: Path,
    clients: int,
    factor: float,
    warmup_s: float,
    seconds: float,
    rounds: int,
    extra: list[str],
    log: Path,
) -> dict[str, Any]:
    server = start_server(model_dir, log, *extra)
    try:
        server.wait_ready()
        pid = server.proc.pid
        ready_rss = process_rss(pid)
        hwm_reset = reset_hwm(pid)
        sampler = PeakSampler(pid, interval_s=0.05)
        sampler.start()
        cpu0 = _cpu_seconds(pid)
        t0 = time.perf_counter()
        phases = asyncio.run(run_phases(server.url, clients, factor, warmup_s, seconds, rounds))
        server_cores = (_cpu_seconds(pid) - cpu0) / (time.perf_counter() - t0)
        peak = max(sampler.stop(), read_hwm(pid) if hwm_reset else 0)
        cancelled = {
            stage: server.metric("ssd_cancelled_images_total", f'stage="{stage}"')
            for stage in ("decode", "queue")
        }
        resources_line = next((x for x in server.log().splitlines() if "resources:" in x), "")
        alive = server.proc.poll() is None
    finally:
        exit_code = server.terminate()

    cap, over = phases["capacity"], phases["overload"]
    goodput_ratio = over["answered_200_per_s"] / cap["answered_200_per_s"]
    p99_ratio = over["p99_ms"] / cap["p99_ms"]
    unexpected = {s: n for s, n in {**cap["statuses"], **over["statuses"]}.items() if s not in ("200", "503")}
    failures = []
    if goodput_ratio < 0.9:
        failures.append(f"goodput {100 * goodput_ratio:.0f}% of capacity (< 90%)")
    if p99_ratio > 2.0:
        failures.append(f"p99 of admitted requests {p99_ratio:.2f}x the p99 at capacity (> 2x)")
    if unexpected:
        failures.append(f"answers other than 200/503: {unexpected}")
    if not alive:
        failures.append("server died")
    return {
        "machine": machine_info(),
        "model_dir": str(model_dir),
        "server_args": extra,
        "resources_log_line": resources_line.split("resources: ", 1)[-1],
        "clients": clients,
        "factor": factor,
        "seconds": seconds,
        "rounds_count": rounds,
        **phases,
        "goodput_over_capacity": goodput_ratio,
        "p99_admitted_over_p99_capacity": p99_ratio,
        "server_cores": server_cores,
        "rss_mib": {"ready": ready_rss / 2**20, "peak": peak / 2**20},
        "cancelled_images": cancelled,
        "server_exit_code": exit_code,
        "failures": failures,
        "passed": not failures,
    }


def _cpu_seconds(pid: int) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def format_report(r: dict[str, Any]) -> str:
    cap, over = r["capacity"], r["overload"]
    rows = [
        (
            "capacity (closed loop, clients)",
            f"{cap['answered_200_per_s']:.1f} req/s ({r['clients']} clients)",
        ),
        ("p50 / p99 at capacity (ms)", f"{cap['p50_ms']:.0f} / {cap['p99_ms']:.0f}"),
        ("offered (open loop)", f"{over['offered_per_s']:.1f} req/s ({r['factor']:g}x)"),
        (
            "goodput",
            f"{over['answered_200_per_s']:.1f} req/s = {100 * r['goodput_over_capacity']:.0f}% of capacity",
        ),
        ("p50 / p99 of admitted (ms)", f"{over['p50_ms']:.0f} / {over['p99_ms']:.0f}"),
        ("p99 admitted / p99 at capacity", f"{r['p99_admitted_over_p99_capacity']:.2f}"),
        ("rejected (503) share of offered", f"{100 * over['rejected_503_share']:.1f}%"),
        ("p50 / p99 of the 503s (ms)", f"{over['p50_503_ms']:.0f} / {over['p99_503_ms']:.0f}"),
        (
            "per round: capacity / offered / goodput (req/s)",
            "; ".join(
                f"{r['capacity_per_s']:.1f} / {r['offered_per_s']:.1f} / {r['goodput_per_s']:.1f}"
                for r in r["rounds"]
            ),
        ),
        ("statuses (capacity / overload)", f"{cap['statuses']} / {over['statuses']}"),
        ("server RSS ready / peak (MiB)", f"{r['rss_mib']['ready']:.0f} / {r['rss_mib']['peak']:.0f}"),
        ("cores used: server / client", f"{r['server_cores']:.2f} / {r['client_cores']:.2f}"),
        (
            "cancelled images (decode / queue)",
            f"{r['cancelled_images']['decode']:.0f} / {r['cancelled_images']['queue']:.0f}",
        ),
        ("server resources line", r["resources_log_line"]),
        ("result", "PASS" if r["passed"] else "FAIL: " + "; ".join(r["failures"])),
    ]
    return fmt_table(["metric", "value"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_dir", type=Path, default=None, help="default: the shipped demo model")
    parser.add_argument("--clients", type=int, default=16, help="closed-loop clients measuring capacity")
    parser.add_argument("--factor", type=float, default=4.0, help="offered load / capacity")
    parser.add_argument("--warmup_s", type=float, default=5.0, help="untimed seconds before each phase")
    parser.add_argument("--seconds", type=float, default=10.0, help="timed seconds per phase and round")
    parser.add_argument("--rounds", type=int, default=3, help="capacity/overload rounds")
    parser.add_argument("--out", type=Path, default=OUT_DIR / "overload.json")
    parser.add_argument("server_args", nargs="*", help="extra server flags, after --")
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.model_dir is None:
        from predictor.models import DEMO_MODEL_DIR

        args.model_dir = DEMO_MODEL_DIR
    report = overload(
        args.model_dir,
        args.clients,
        args.factor,
        args.warmup_s,
        args.seconds,
        args.rounds,
        args.server_args,
        args.out.with_name(args.out.stem + "_server.log"),
    )
    print(format_report(report))
    print(f"load average: {os.getloadavg()}")
    write_json(args.out, report)
    print(f"\nJSON: {args.out}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
