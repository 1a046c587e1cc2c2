"""Why large exact-size model calls are slow under open-loop load (issue 33): the demo detector's
calls timed by size, alone and beside the server's request work, in one process set up as a server is.

``python -m bench.call_load [--sizes 1-32] [--rounds 5] [--beside_sizes 1,4,8,16,25,32] [--rates 80]``
-> table + ``bench/out/call_load.json``. TensorFlow's pools are sized as the server sizes them (intra-op
= usable CPUs, inter-op = min(2, usable CPUs)); the detector runs exact sizes (``pad_batches=False``,
the server's ``auto`` on a CPU) and its warm-up runs the buckets only, as the server's does. Each
call gets what the batcher hands ``run_batch``: a list of resized rows. Sections, each separating one
hypothesis for the slow calls:

* ``cold``: the first call at each non-bucket size against the second (a one-time cost per new shape);
* ``alone``: every size of ``--sizes`` once per round in a shuffled order (shapes interleaved, as an
  exact-size server sees them), median wall ms, process CPU ms (user, system) and minor page faults per
  call; and ``repeat``: the same sizes run ``--repeat`` times back to back (a cost of switching shapes);
* ``gap``: one-image calls back to back against calls after ``--gaps_ms`` of idle (the thread pool and
  caches going cold between the light phases' calls);
* ``beside``: calls of ``--beside_sizes`` while ``k`` threads (``--beside``) decode the bench's JPEGs
  continuously with the server's own decode (``decode_image_reduced`` + ``Detector.resize``, whose
  resize is a TensorFlow op sharded over the same intra-op pool); and ``open``: the same while a
  Poisson stream of ``--rates`` requests per second is decoded by two threads and each request also
  holds the GIL for ``--loop_ms`` of pure Python (the event loop's work per request), as a served
  replica's calls run at that load, then the same keeping every decoded image ``--hold_s`` (the
  queue a replica past saturation holds: memory churn). Per call: wall ms; per section: the decodes
  done per second.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import resource
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import OUT_DIR, fmt_table, machine_info, make_test_jpegs, write_json

BUCKETS = (1, 2, 4, 8, 16, 32)


def parse_sizes(text: str) -> list[int]:
    """``"1-4,8"`` -> ``[1, 2, 3, 4, 8]``."""
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi or lo) + 1))
    return out


def usage() -> tuple[float, float, int]:
    """Process (user s, system s, minor faults) so far, all threads."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime, r.ru_minflt


class Caller:
    """Times ``run_batch`` calls of ``n`` resized rows (cycling over the bench's decoded JPEGs)."""

    def __init__(self, detector: Any, rows: list[np.ndarray], hw: np.ndarray) -> None:
        self.detector, self.rows, self.hw = detector, rows, hw

    def call(self, n: int) -> dict[str, float]:
        images = [self.rows[i % len(self.rows)] for i in range(n)]
        hw = self.hw[np.arange(n) % len(self.hw)]
        u0, s0, f0 = usage()
        t0 = time.perf_counter()
        self.detector.run_batch(images, hw)
        wall = time.perf_counter() - t0
        u1, s1, f1 = usage()
        user, system = 1e3 * (u1 - u0), 1e3 * (s1 - s0)
        return {"wall_ms": 1e3 * wall, "user_ms": user, "sys_ms": system, "faults": f1 - f0}


def medians(calls: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(statistics.median(c[k] for c in calls), 3) for k in calls[0]}


def by_size(caller: Caller, sizes: list[int], rounds: int, seed: int) -> dict[int, dict[str, float]]:
    """Each size once per round, the order shuffled per round; medians per size."""
    rng = random.Random(seed)
    runs: dict[int, list[dict[str, float]]] = {n: [] for n in sizes}
    for _ in range(rounds):
        order = list(sizes)
        rng.shuffle(order)
        for n in order:
            runs[n].append(caller.call(n))
    return {n: medians(r) for n, r in runs.items()}


class Background:
    """Request work beside the calls: ``threads`` threads decoding continuously (``rate`` None), or a
    Poisson stream of ``rate`` requests per second decoded by ``threads`` threads, each request also
    holding the GIL for ``loop_ms`` of pure Python on one more thread (the event loop)."""

    def __init__(
        self, decode: Callable[[int], Any], threads: int, rate: float | None = None, loop_ms: float = 0.0,
        hold_s: float = 0.0,
    ) -> None:  # fmt: skip
        self.decode, self.threads, self.rate, self.loop_ms = decode, threads, rate, loop_ms
        self.hold_s = hold_s  # keep each decoded image this long (a queue of admitted requests)
        self.held: collections.deque[tuple[float, Any]] = collections.deque()
        self.stop = threading.Event()
        self.done = 0
        self.lock = threading.Lock()
        self.pending: list[float] = []
        self.cond = threading.Condition(self.lock)
        self.workers: list[threading.Thread] = []

    def __enter__(self) -> Background:
        target = self._continuous if self.rate is None else self._queued
        self.workers = [threading.Thread(target=target, args=(i,), daemon=True) for i in range(self.threads)]
        if self.rate is not None:
            self.workers.append(threading.Thread(target=self._arrivals, daemon=True))
        for w in self.workers:
            w.start()
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        with self.cond:
            self.cond.notify_all()
        for w in self.workers:
            w.join()
        self.seconds = time.perf_counter() - self.started

    def _continuous(self, i: int) -> None:
        k = i
        while not self.stop.is_set():
            self.decode(k)
            k += self.threads
            with self.lock:
                self.done += 1

    def _arrivals(self) -> None:
        rng = np.random.default_rng(7)
        due = time.perf_counter()
        while not self.stop.is_set():
            due += rng.exponential(1.0 / self.rate)
            time.sleep(max(0.0, due - time.perf_counter()))
            if self.loop_ms:  # the event loop's Python work per request, holding the GIL
                end = time.perf_counter() + self.loop_ms / 1e3
                while time.perf_counter() < end:
                    pass
            with self.cond:
                self.pending.append(due)
                self.cond.notify()

    def _queued(self, i: int) -> None:
        k = i
        while True:
            with self.cond:
                while not self.pending and not self.stop.is_set():
                    self.cond.wait()
                if self.stop.is_set():
                    return
                self.pending.pop(0)
            image = self.decode(k)
            k += self.threads
            with self.lock:
                self.done += 1
                if self.hold_s:
                    now = time.perf_counter()
                    self.held.append((now, image))
                    while self.held and self.held[0][0] < now - self.hold_s:
                        self.held.popleft()

    @property
    def per_second(self) -> float:
        return self.done / self.seconds


def gaps(caller: Caller, gaps_ms: list[float], calls: int) -> dict[str, float]:
    """Median wall ms of one-image calls after each idle gap (0: back to back)."""
    out = {}
    for gap in [0.0, *gaps_ms]:
        walls = []
        for _ in range(calls):
            if gap:
                time.sleep(gap / 1e3)
            walls.append(caller.call(1)["wall_ms"])
        out[f"{gap:g}"] = round(statistics.median(walls), 3)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1-32")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--repeat_sizes", default="8,16,25,32")
    p.add_argument("--gaps_ms", default="5,30")
    p.add_argument("--gap_calls", type=int, default=15)
    p.add_argument("--beside", default="1,2", help="continuously decoding threads beside the calls")
    p.add_argument("--beside_sizes", default="1,4,8,16,25,32")
    p.add_argument("--beside_rounds", type=int, default=3)
    p.add_argument("--rates", default="80", help="open-loop request rates beside the calls (0: none)")
    p.add_argument("--loop_ms", type=float, default=2.0)
    p.add_argument(
        "--hold_s", type=float, default=1.0, help="then the same stream keeping each decoded image this "
        "long (the queue of a replica past saturation; 0: not run)",
    )  # fmt: skip
    p.add_argument("--out", type=Path, default=OUT_DIR / "call_load.json")
    args = p.parse_args(argv)

    from predictor.serving import resources

    intra, inter = resources.default_tf_threads(resources.read_limits())
    resources.configure_tensorflow_threads(intra, inter)
    from predictor.models import DEMO_MODEL_DIR
    from predictor.serving.images import decode_image_reduced
    from predictor.ssd.detector import Detector

    detector = Detector.from_dir(DEMO_MODEL_DIR, max_batch_size=32, pad_batches=False)
    warm = detector.warmup()
    jpegs = make_test_jpegs()[:4]  # the bodies bench.simulate_check sends

    def decode(k: int) -> np.ndarray:
        return detector.resize(decode_image_reduced(jpegs[k % len(jpegs)], draft_size=None).pixels)

    decoded = [decode_image_reduced(j, draft_size=None) for j in jpegs]
    rows = [detector.resize(d.pixels) for d in decoded]
    hw = np.asarray([d.original_hw for d in decoded], np.float32)
    caller = Caller(detector, rows, hw)
    sizes = parse_sizes(args.sizes)
    report: dict[str, Any] = {
        "machine": machine_info(),
        "pid_nice": os.nice(0),
        "tf_threads": {"intra": intra, "inter": inter},
        "loop_ms": args.loop_ms,
        "warmup_s": warm,
    }
    t0 = time.perf_counter()
    report["cold"] = {}
    for n in sizes:
        if n not in BUCKETS:
            first, second = caller.call(n)["wall_ms"], caller.call(n)["wall_ms"]
            report["cold"][n] = {"first_ms": round(first, 2), "second_ms": round(second, 2)}
    report["alone"] = by_size(caller, sizes, args.rounds, seed=1)
    report["repeat"] = {
        n: medians([caller.call(n) for _ in range(args.repeat)]) for n in parse_sizes(args.repeat_sizes)
    }
    report["gap_ms"] = gaps(caller, [float(g) for g in args.gaps_ms.split(",")], args.gap_calls)
    beside_sizes = parse_sizes(args.beside_sizes)
    t_decode = [time.perf_counter()]
    for k in range(40):
        decode(k)
    report["decode_alone_ms"] = round(1e3 * (time.perf_counter() - t_decode[0]) / 40, 3)
    report["beside"] = {}
    for k in (int(v) for v in args.beside.split(",") if v):
        with Background(decode, k) as bg:
            calls = by_size(caller, beside_sizes, args.beside_rounds, seed=2)
        report["beside"][k] = {"calls": calls, "decodes_per_s": round(bg.per_second, 1)}
    report["open"] = {}
    for rate in (float(v) for v in args.rates.split(",") if float(v) > 0):
        with Background(decode, 2, rate=rate, loop_ms=args.loop_ms) as bg:
            calls = by_size(caller, beside_sizes, args.beside_rounds, seed=3)
        report["open"][f"{rate:g}"] = {"calls": calls, "decodes_per_s": round(bg.per_second, 1)}
        if args.hold_s:
            with Background(decode, 2, rate=rate, loop_ms=args.loop_ms, hold_s=args.hold_s) as bg:
                calls = by_size(caller, beside_sizes, args.beside_rounds, seed=3)
            key = f"{rate:g} held {args.hold_s:g} s"
            report["open"][key] = {"calls": calls, "decodes_per_s": round(bg.per_second, 1)}
    report["seconds"] = round(time.perf_counter() - t0, 1)
    write_json(args.out, report)
    print(markdown(report))
    print(f"JSON: {args.out}")
    return 0


def markdown(report: dict[str, Any]) -> str:
    """Per size: alone (wall, user, sys ms, faults), the first call's wall, and wall beside each load."""
    alone = report["alone"]
    heads = ["n", "alone ms", "ms/image", "user ms", "sys ms", "faults", "first call ms"]
    loads = [(f"beside {k} decoding", v) for k, v in report["beside"].items()]
    loads += [(f"open {r}/s + loop", v) for r, v in report["open"].items()]
    heads += [f"{name} ({v['decodes_per_s']:g} decodes/s)" for name, v in loads]
    rows = []
    for n, m in alone.items():
        cold = report["cold"].get(n) or report["cold"].get(str(n))
        first = f"{cold['first_ms']:.1f}" if cold else "-"
        row = [n, f"{m['wall_ms']:.1f}", f"{m['wall_ms'] / int(n):.2f}", f"{m['user_ms']:.1f}",
               f"{m['sys_ms']:.1f}", f"{m['faults']:.0f}", first]  # fmt: skip
        for _, v in loads:
            c = v["calls"].get(n) or v["calls"].get(str(n))
            row.append(f"{c['wall_ms']:.1f}" if c else "")
        rows.append(row)
    text = fmt_table(heads, rows)
    text += f"\n\nrepeated back to back (median ms): {report['repeat']}"
    text += f"\none-image call after an idle gap (ms -> median wall ms): {report['gap_ms']}"
    text += f"\ndecode alone: {report['decode_alone_ms']} ms per request"
    return text


if __name__ == "__main__":
    raise SystemExit(main())
