"""Where a served cell's time goes, by thread: ``py-spy`` samples of the server during one cell.

Runs ``bench/served.py`` for one model, protocol and concurrency (one cell, its own server, with
``make bench``'s ``--compute_nice``: ``bench.common.BENCH_COMPUTE_NICE``; the cell lasts ``--settle_s``
+ ``--seconds`` + 5 s), and once the server answers ready and the cell's warm-up (``--settle_s``) has
passed, records the server with ``py-spy record --nonblocking --threads --format raw`` (``--rate`` Hz,
``--seconds``). Then, per thread group (the
event loop = the main thread, ``ssd-decode``, ``ssd-model``, gRPC's ...), the share of samples in
each function (inclusive, each function once per stack) and in each line (self).

py-spy counts a sample wherever a thread is runnable: on a busy or oversubscribed machine that includes
waiting for a core (after a wake-up, a preemption), so the shares are of runnable time, not CPU time;
the CPU per image by thread group is the served table's (``bench/threads.py``), in the same JSON.

Needs py-spy (the ``bench`` extra: ``pip install py-spy``) and ptrace permission on the server (root or
CAP_SYS_PTRACE).

``python -m bench.served_profile [--model demo] [--protocol v1] [--concurrency 16] [--seconds 12]``
-> summary printed + ``bench/out/served_profile/`` (``spy.txt``, ``served.json``, ``profile.json``).
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.common import BENCH_COMPUTE_NICE, OUT_DIR


def summarize(raw_lines: list[str], top: int = 30) -> dict[str, dict[str, Any]]:
    """py-spy ``--threads --format raw`` lines (``thread (TID): NAME;frame;...;frame COUNT``) -> per
    thread group: samples, top inclusive functions and top self lines, as shares of the group's samples."""
    groups: dict[str, list[Any]] = collections.defaultdict(
        lambda: [0, collections.Counter(), collections.Counter()]
    )
    for line in raw_lines:
        line = line.rstrip()
        if not line or " " not in line:
            continue
        stack, count_text = line.rsplit(" ", 1)
        count = int(count_text)
        parts = stack.partition(": ")[2].split(";")
        name = parts[0]
        group = "event loop" if name == "MainThread" else re.sub(r"_\d+$", "", name)
        frames = [re.sub(r" \(/[^)]*(site-packages|lib/python3\.\d+)/", " (", f) for f in parts[1:]]
        entry = groups[group]
        entry[0] += count
        for function in {re.sub(r":\d+\)$", ")", f) for f in frames}:
            entry[1][function] += count
        if frames:
            entry[2][frames[-1]] += count
    out = {}
    for group, (n, inclusive, own) in sorted(groups.items(), key=lambda g: -g[1][0]):
        out[group] = {
            "samples": n,
            "inclusive": [(f, c / n) for f, c in inclusive.most_common(top)],
            "self": [(f, c / n) for f, c in own.most_common(top)],
        }
    return out


def _server_pid(parent: int, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = subprocess.run(
            ["pgrep", "-P", str(parent), "-f", "predictor"], capture_output=True, text=True
        )
        if found.stdout.split():
            return int(found.stdout.split()[0])
        time.sleep(0.5)
    raise RuntimeError("the served bench started no server")


def _wait_ready(pid: int, timeout_s: float) -> None:
    args = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
    port = args[args.index("--http_port") + 1]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError("the server did not get ready")


PY_SPY_MISSING = (
    "bench.served_profile needs py-spy: pip install py-spy (or `make bench-install`); "
    "it also needs ptrace permission on the server (root or CAP_SYS_PTRACE)"
)


def find_py_spy() -> str | None:
    """The ``py-spy`` executable: on PATH or beside this Python's (a virtual environment's bin/)."""
    beside = Path(sys.executable).with_name("py-spy")
    return shutil.which("py-spy") or (str(beside) if beside.is_file() else None)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--protocol", default="v1")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=12.0, help="py-spy recording")
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--settle_s", type=float, default=8.0, help="wait after ready (the cell's warm-up)")
    parser.add_argument(
        "--compute_nice",
        type=int,
        default=BENCH_COMPUTE_NICE,
        help="the server's --compute_nice (default: make bench's served stage's)",
    )
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--out_dir", type=Path, default=OUT_DIR / "served_profile")
    return parser.parse_args(argv)


def served_command(args: argparse.Namespace) -> list[str]:
    """The ``bench.served`` run of the one cell: long enough for the settle time, the recording and 5 s."""
    out = args.out_dir
    return [sys.executable, "-m", "bench.served", "--models", args.model, "--protocols", args.protocol,
            "--concurrency", str(args.concurrency), "--duration_s", str(args.settle_s + args.seconds + 5),
            "--server_args", f"--compute_nice {args.compute_nice}",
            "--out_dir", str(out), "--out", str(out / "served.json")]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    py_spy = find_py_spy()
    if py_spy is None:
        raise SystemExit(PY_SPY_MISSING)
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    served = served_command(args)
    with (out / "served.log").open("wb") as log:
        bench = subprocess.Popen(served, stdout=log, stderr=subprocess.STDOUT)
        try:
            pid = _server_pid(bench.pid, 120)
            _wait_ready(pid, 900)
            time.sleep(args.settle_s)
            spy = out / "spy.txt"
            record = subprocess.run(
                [py_spy, "record", "--pid", str(pid), "--rate", str(args.rate), "--duration",
                 str(int(args.seconds)), "--nonblocking", "--threads", "--format", "raw", "-o", str(spy)],
                capture_output=True, text=True,
            )  # fmt: skip
        finally:
            bench.wait(timeout=900)
    if record.returncode:
        last = (record.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"py-spy record failed (it needs ptrace permission: root or CAP_SYS_PTRACE): {last}")
    profile = summarize(spy.read_text().splitlines(), args.top)
    (out / "profile.json").write_text(json.dumps(profile, indent=1))
    for group, p in profile.items():
        print(f"== {group}: {p['samples']} samples")
        for kind in ("inclusive", "self"):
            print(f"  {kind}:")
            for function, share in p[kind][: args.top if kind == "inclusive" else 12]:
                print(f"   {100 * share:5.1f}%  {function[:150]}")
    print(f"wrote {out}")
    return bench.returncode


if __name__ == "__main__":
    sys.exit(main())
