"""One model call served against the same call made directly: where a served call's extra CPU goes.

In one process, with the server's start-up settings (glibc malloc tuning, TensorFlow's thread pools,
``--compute_nice`` for the compute threads and, once warm, TensorFlow's; by default ``make bench``'s
served stage's, ``bench.common.BENCH_COMPUTE_NICE``, not the server's), a
:class:`~predictor.serving.model.SSDPredictor` (KServe's pipeline without the HTTP layer) answers a
V1 JSON request of ``B`` images, one model call of ``B``; the same loaded detector's ``run_batch`` on
``B`` rows decoded and resized beforehand, called in the same model thread, is the raw call (what
``bench/raw_model.py`` times). The two alternate (``--rounds``, order rotated); each measurement
reports, per image, the CPU of every thread group (:mod:`bench.threads`: event loop, decode, model
call, TensorFlow, other), the process's user and system CPU (``getrusage``) and its minor page
faults. The served call's decode runs in the decode threads, so compare the model's groups
(TensorFlow, other, model call) with the raw call's.

``--malloc_mmap_threshold_bytes 0`` leaves glibc's malloc as it is (what ``bench/raw_model.py`` runs
with); the default is the server's tuning. Warm-up traces the bucket ``B`` only.

``python -m bench.served_vs_raw [--model ssd300] [--batch 8] [--rounds 2] [--malloc_mmap_threshold_bytes N]``
-> lines of JSON + ``bench/out/served_vs_raw.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import threads
from bench.common import BENCH_COMPUTE_NICE, OUT_DIR, make_test_jpegs, model_dir, write_json
from predictor.serving.options import ServingOptions

KINDS = ("served", "raw")


def thread_cpu_ns(pid: int) -> dict[int, tuple[str, float]]:
    """``{tid: (kernel name, CPU seconds so far)}`` as :func:`bench.threads.thread_cpu`, from
    ``/proc/PID/task/*/schedstat`` (nanoseconds) instead of ``stat`` (clock ticks of 10 ms: too coarse for
    one call of the demo model)."""
    out: dict[int, tuple[str, float]] = {}
    for entry in os.scandir(f"/proc/{pid}/task"):
        try:
            name = Path(entry.path, "comm").read_text().strip()
            ns = int(Path(entry.path, "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):  # ended meanwhile
            continue
        out[int(entry.name)] = (name, ns / 1e9)
    return out


def measure(fn: Callable[[], Any], images: int) -> dict[str, Any]:
    """CPU per image of one ``fn()`` by thread group, user / system CPU, minor faults, wall time."""
    pid = os.getpid()
    t0, r0, w0 = thread_cpu_ns(pid), resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    fn()
    wall, r1, t1 = time.perf_counter() - w0, resource.getrusage(resource.RUSAGE_SELF), thread_cpu_ns(pid)
    groups = dict.fromkeys(threads.GROUPS, 0.0)
    for tid, (name, seconds) in t1.items():
        groups[threads.group_of(pid, tid, name)] += seconds - t0.get(tid, (name, 0.0))[1]
    return {
        "wall_ms": 1e3 * wall / images,
        "user_ms": 1e3 * (r1.ru_utime - r0.ru_utime) / images,
        "sys_ms": 1e3 * (r1.ru_stime - r0.ru_stime) / images,
        "minor_faults": (r1.ru_minflt - r0.ru_minflt) / images,
        "groups_ms": {g: 1e3 * s / images for g, s in groups.items()},
        "load1": os.getloadavg()[0],
    }


def summary(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, float]]:
    """Medians over the rounds: per kind, user/sys ms, faults and the model's groups (TensorFlow + other
    + model call) per image."""
    out = {}
    for kind, rows in runs.items():
        model = [
            r["groups_ms"]["TensorFlow"] + r["groups_ms"]["other"] + r["groups_ms"]["model call"]
            for r in rows
        ]
        out[kind] = {
            "model_threads_ms": statistics.median(model),
            "user_ms": statistics.median(r["user_ms"] for r in rows),
            "sys_ms": statistics.median(r["sys_ms"] for r in rows),
            "minor_faults": statistics.median(r["minor_faults"] for r in rows),
        }
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Set the process up as the server does, then alternate served and raw calls (see module docstring)."""
    from predictor.serving import heap, priority
    from predictor.serving.resources import configure_tensorflow_threads, default_tf_threads, read_limits

    tuned = bool(args.malloc_mmap_threshold_bytes) and heap.tune_malloc(args.malloc_mmap_threshold_bytes)
    intra, inter = default_tf_threads(read_limits())
    configure_tensorflow_threads(intra, inter)
    priority.configure(args.compute_nice)

    from bench.common import machine_info
    from bench.raw_model import resized_batch
    from predictor.serving.model import SSDPredictor

    path, source = model_dir(args.model, args.out_dir)
    b = args.batch
    options = ServingOptions(model_dir=str(path), max_batch_size=b, batch_wait_ms=50.0, request_timeout_s=0)
    model = SSDPredictor("ssd", options)
    detector = model.build()
    warmup = type(detector).warmup
    detector.warmup = lambda: warmup(detector, buckets=[b])  # type: ignore[method-assign]
    start = time.perf_counter()
    model.load()
    ready_s = time.perf_counter() - start
    if args.compute_nice:  # as the server does once warm: TensorFlow's native threads to --compute_nice
        priority.lower_other_threads(keep={t.native_id for t in threading.enumerate() if t.native_id})
    jpegs = make_test_jpegs()
    body = {"instances": [{"b64": base64.b64encode(jpegs[i % len(jpegs)]).decode()} for i in range(b)]}
    rows, hw = resized_batch(detector, jpegs, b)

    def served() -> None:
        async def call() -> None:
            response, _ = await model(body, headers={"content-type": "application/json"})
            if len(json.loads(response)["predictions"]) != b:
                raise RuntimeError("served answer without one prediction list per image")

        calls = model.batcher.model_calls
        asyncio.run(call())
        if model.batcher.model_calls != calls + 1:
            raise RuntimeError("the served request was not one model call")

    def raw() -> None:  # in the server's model thread, where the served call runs it too
        model._model_thread.submit(detector.run_batch, rows, hw).result()

    fns = {"served": served, "raw": raw}
    for fn in fns.values():
        fn()  # first calls: not timed
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in KINDS}
    for r in range(args.rounds):
        for kind in KINDS if r % 2 == 0 else KINDS[::-1]:
            row = measure(fns[kind], b)
            runs[kind].append(row)
            print(kind, json.dumps({k: (round(v, 2) if isinstance(v, float) else v) for k, v in row.items()
                                    if k != "groups_ms"}), json.dumps({g: round(v, 1) for g, v in
                                    row["groups_ms"].items() if v}), flush=True)  # fmt: skip
    model.close()
    return {
        "machine": machine_info(),
        "settings": {**vars(args), "out_dir": str(args.out_dir), "out": str(args.out)},
        "model": args.model,
        "source": source,
        "malloc_tuned": tuned,
        "tf_threads": [intra, inter],
        "ready_s": ready_s,
        "runs": runs,
        "summary": summary(runs),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ssd300")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2, help="each round: one served and one raw call")
    parser.add_argument(
        "--malloc_mmap_threshold_bytes",
        type=int,
        default=ServingOptions.malloc_mmap_threshold_bytes,
        help="the server's malloc tuning; 0: glibc's default (the raw bench's)",
    )
    parser.add_argument(
        "--compute_nice",
        type=int,
        default=BENCH_COMPUTE_NICE,
        help=f"as make bench's served stage (the server's default: {ServingOptions.compute_nice})",
    )
    parser.add_argument("--out_dir", type=Path, default=OUT_DIR)
    parser.add_argument("--out", type=Path, default=None, help="JSON (default OUT_DIR/served_vs_raw.json)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data = run(args)
    out = write_json(args.out or args.out_dir / "served_vs_raw.json", data)
    print(json.dumps(data["summary"], indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
