"""Cold start: process start to ready, broken down into imports, model load and warm-up per batch bucket.

Two measurements per model and repeat, taken one after the other in the same run:

- **server**: ``python -m predictor --model_dir M`` with every other flag at its default, spawned as a
  fresh process; ``GET /v2/models/<name>/ready`` (the chart's startup and readiness probe) is polled
  every 50 ms; the figure is the time from spawn to the first 200.
- **phases**: a fresh process doing the server's start-up steps one after the other and timing each:
  *interpreter + imports* (spawn to the modules ``python -m predictor`` imports being loaded),
  *model load* (``configure_devices`` and ``SSDPredictor.build``: read the weights, build the network)
  and *warm-up* (the first run of each batch bucket, what ``SSDPredictor.load`` does before ``ready``).
  The server does the same work, with its HTTP and gRPC servers starting beside the warm-up.

Models: the shipped demo model and SSD300-VGG16 with seeded random weights (see bench/common.py). The
page cache is warm after the first repeat (a node pulling a new image starts colder). Configurations
(run alternately, repeat by repeat): this checkout; ``--baseline DIR``, another source tree; ``--no_pyc``,
this checkout without byte-code (what an image without ``__pycache__`` on a read-only root pays).

The *server* measurement uses only the command line and HTTP. The *phases* child replays the server's
start-up on purpose, through the same calls ``predictor.serving.server`` makes:
``predictor.ssd.configure_devices``, ``predictor.serving.model.ServingOptions`` and ``SSDPredictor``
(``build``, ``Detector.warmup``).

``python -m bench.cold_start [--models demo,ssd300] [--repeats 3]`` -> table + JSON
(``make bench-cold-start`` also rewrites the cold-start table of ``bench/RESULTS.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def phases_child(model_path: str, spawned_at: float) -> dict[str, Any]:
    """Runs in the measured process: the server's start-up steps with a timestamp after each."""
    t_start = time.time()
    # What `python -m predictor` imports before it serves (predictor.serving.server.main and _serve).
    import kserve.model_server  # noqa: F401
    from kserve import ModelServer  # noqa: F401

    from predictor.protocol.wire import MODEL_NAME
    from predictor.serving.model import SSDPredictor
    from predictor.serving.options import ServingOptions
    from predictor.serving.server import main  # noqa: F401
    from predictor.ssd import configure_devices

    t_imported, cpu_imported = time.time(), time.process_time()
    devices = configure_devices()
    options = ServingOptions(model_dir=model_path)
    model = SSDPredictor(MODEL_NAME, options)
    detector = model.build()
    t_loaded, cpu_loaded = time.time(), time.process_time()
    warmup, warmup_cpu = {}, {}
    for bucket in detector.buckets:
        start, cpu = time.perf_counter(), time.process_time()
        detector.warmup([bucket])
        warmup[str(bucket)] = time.perf_counter() - start
        warmup_cpu[str(bucket)] = time.process_time() - cpu
    t_warm, cpu_warm = time.time(), time.process_time()
    model.close()
    return {
        "interpreter_s": t_start - spawned_at,
        "imports_s": t_imported - t_start,
        "interpreter_imports_s": t_imported - spawned_at,
        "model_load_s": t_loaded - t_imported,
        "warmup_s": t_warm - t_loaded,
        "warmup_per_bucket_s": warmup,
        "total_s": t_warm - spawned_at,
        # CPU seconds of the process (all threads): steadier than wall time on a shared machine.
        "interpreter_imports_cpu_s": cpu_imported,
        "model_load_cpu_s": cpu_loaded - cpu_imported,
        "warmup_cpu_s": cpu_warm - cpu_loaded,
        "warmup_per_bucket_cpu_s": warmup_cpu,
        "traces": detector.trace_count,
        "devices": devices,
        "predictor": str(Path(sys.modules["predictor"].__file__).parent),
    }


def run_phases(model_path: Path, env: dict[str, str], cwd: Path) -> dict[str, Any]:
    spawned_at = time.time()
    proc = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--phases",
            str(model_path),
            "--spawned_at",
            repr(spawned_at),
        ],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=1200,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"phases child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_server(model_path: Path, env: dict[str, str], log_path: Path, timeout_s: float) -> dict[str, Any]:
    """Spawn the server with default flags; seconds from spawn to the first 200 of the ready probe."""
    from predictor.tools.localserver import start_server

    server = start_server(model_path, log_path, env=env, cwd=log_path.parent, own_session=True)
    try:
        server.wait_ready(timeout_s, interval_s=0.05)
        ready_cpu_s = server.cpu_seconds()
    finally:
        server.terminate(120)
    warmup_line = next((line for line in server.log().splitlines() if "warm-up done" in line), "")
    return {
        "ready_s": server.ready_s,
        "ready_cpu_s": ready_cpu_s,
        "warmup_log": warmup_line.split("INFO", 1)[-1].strip(),
    }


def configurations(args: argparse.Namespace) -> dict[str, tuple[Path, dict[str, str]]]:
    """label -> (source tree, extra environment) of each configuration measured.

    ``this``: this checkout. ``baseline``: ``--baseline``, another source tree (e.g. ``git worktree add``
    of an older commit). ``no-pyc``: this checkout with Python finding no byte-code at all (an empty,
    read-only ``PYTHONPYCACHEPREFIX``), like an image without ``__pycache__`` on a read-only root. That
    also hides the standard library's byte-code, which a distribution's python3 package does ship.
    """
    result: dict[str, tuple[Path, dict[str, str]]] = {"this": (REPO, {})}
    if args.baseline:
        result["baseline"] = (args.baseline.resolve(), {})
    if args.no_pyc:
        empty = args.out_dir / "cold_start" / "empty-pycache"
        empty.mkdir(parents=True, exist_ok=True)
        empty.chmod(0o555)
        result["no-pyc"] = (REPO, {"PYTHONPYCACHEPREFIX": str(empty), "PYTHONDONTWRITEBYTECODE": "1"})
    return result


def bench_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Repeats of (server, phases) per configuration, alternating so that they share the machine's load."""
    from bench.common import model_dir

    path, description = model_dir(name, args.out_dir)
    result: dict[str, Any] = {"description": description, "model_dir": str(path), "configurations": {}}
    configs = configurations(args)
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label in configs}
    for i in range(args.repeats):
        for label, (tree, extra_env) in configs.items():
            env = {
                **os.environ,
                **extra_env,
                "PYTHONPATH": os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")])),
                "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "1"),
            }
            log = args.out_dir / "cold_start" / f"{name}-{label}-{i}.log"
            server = run_server(path, env, log, args.timeout_s)
            phases = run_phases(path, env, args.out_dir)
            runs[label].append({"server": server, "phases": phases, "load_average_1m": os.getloadavg()[0]})
            print(
                f"{name} {label} #{i}: ready {server['ready_s']:.1f} s; phases: interpreter+imports "
                f"{phases['interpreter_imports_s']:.1f} s, load {phases['model_load_s']:.1f} s, "
                f"warm-up {phases['warmup_s']:.1f} s ({phases['traces']} traces)",
                flush=True,
            )
    for label, tree_runs in runs.items():
        result["configurations"][label] = {
            "tree": str(configs[label][0]),
            "env": configs[label][1],
            "runs": tree_runs,
            "median": _medians(tree_runs),
        }
    return result


def _medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    phases = [r["phases"] for r in runs]
    result = {
        "ready_s": statistics.median(r["server"]["ready_s"] for r in runs),
        "ready_cpu_s": statistics.median(r["server"]["ready_cpu_s"] for r in runs),
        "traces": phases[0]["traces"],
    }
    for key in (
        "interpreter_imports_s",
        "model_load_s",
        "warmup_s",
        "total_s",
        "interpreter_imports_cpu_s",
        "model_load_cpu_s",
        "warmup_cpu_s",
    ):
        result[key] = statistics.median(p[key] for p in phases)
    for key in ("warmup_per_bucket_s", "warmup_per_bucket_cpu_s"):
        result[key] = {b: statistics.median(p[key][b] for p in phases) for b in phases[0][key]}
    return result


def markdown(data: dict[str, Any]) -> str:
    """Medians per model and configuration (wall and CPU seconds), warm-up CPU per bucket, every run."""
    from bench.common import fmt_table

    rows, bucket_rows, per_run = [], [], []
    buckets: list[str] = []
    for name, result in data["models"].items():
        for label, config in result["configurations"].items():
            m = config["median"]
            pairs = [
                (m["ready_s"], m["ready_cpu_s"]),
                (m["interpreter_imports_s"], m["interpreter_imports_cpu_s"]),
                (m["model_load_s"], m["model_load_cpu_s"]),
                (m["warmup_s"], m["warmup_cpu_s"]),
            ]
            cells = [f"{wall:.1f} ({cpu:.1f})" for wall, cpu in pairs]
            rows.append([name, label, len(config["runs"]), *cells, m["traces"]])
            buckets = list(m["warmup_per_bucket_cpu_s"])
            per_bucket = " / ".join(f"{s:.2f}" for s in m["warmup_per_bucket_cpu_s"].values())
            bucket_rows.append([name, label, per_bucket])
            servers = [r["server"] for r in config["runs"]]
            runs = ", ".join(f"{s['ready_s']:.1f} ({s['ready_cpu_s']:.1f})" for s in servers)
            per_run.append(f"{name} {label}: {runs}")
    headers = ["model", "configuration", "runs", "spawn to ready", "interpreter+imports", "model load",
               "warm-up", "traces"]  # fmt: skip
    return "\n\n".join([
        "Seconds, wall (CPU of the process, all threads), medians over the runs:",
        fmt_table(headers, rows),
        f"Warm-up CPU seconds per bucket ({' / '.join(buckets)}):",
        fmt_table(["model", "configuration", "per bucket"], bucket_rows),
        "Spawn to ready per run, wall (CPU): " + "; ".join(per_run) + ".",
    ])  # fmt: skip


def print_table(data: dict[str, Any]) -> None:
    print(markdown(data))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from bench.common import OUT_DIR

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="demo,ssd300")
    parser.add_argument("--repeats", type=int, default=3, help="server + phases runs per model (median)")
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="another source tree to measure alternately (its predictor/)",
    )
    parser.add_argument("--no_pyc", action="store_true", help="also measure without byte-code (.pyc)")
    parser.add_argument("--timeout_s", type=float, default=900.0, help="give up on a server after this")
    parser.add_argument("--out_dir", type=Path, default=OUT_DIR)
    parser.add_argument("--out", type=Path, default=None, help="JSON (default OUT_DIR/cold_start.json)")
    parser.add_argument("--report", type=Path, nargs="+", help="only print the table of these JSON files")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--phases"]:  # the measured child process: keep its imports the server's only
        print(json.dumps(phases_child(argv[1], float(argv[3]))))
        return 0
    from bench.common import machine_info, write_json

    args = parse_args(argv)
    if args.report:
        for path in args.report:
            print_table(json.loads(path.read_text()))
        return 0
    out = args.out or args.out_dir / "cold_start.json"
    data: dict[str, Any] = {"machine": machine_info(), "settings": vars(args).copy(), "models": {}}
    for name in args.models.split(","):
        data["models"][name] = bench_model(name, args)
        write_json(out, data)
    data["machine"]["load_average_at_end"] = os.getloadavg()
    write_json(out, data)
    print_table(data)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
