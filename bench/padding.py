"""What padding a call to its bucket costs on a CPU, and what running it at its exact size costs once.

For each model two :class:`~predictor.ssd.Detector` s share one network: ``padded`` (today's
``run_batch``: a call of ``n`` runs as its bucket, ``bucket_for(n)``) and ``exact``
(``pad_batches=False``: ``n`` rows). It reports

* ``cold``: the ``exact`` detector's first call at each size of ``--sizes`` (never run before in this
  process; its trace was paid by a first call of ``max(buckets)``) against its second call at that size,
  wall seconds and process CPU seconds: the one-time cost of a new shape;
* ``warm``: CPU ms per REAL image (process CPU time of the call / ``n``) of ``padded`` and ``exact`` at
  each size of ``--sizes``, and of ``padded`` at the bucket sizes ``--reference`` (where both run the
  same rows), each call once per round, rounds interleaved, median over ``--rounds``;
* ``same_detections``: whether ``exact``'s rows equal ``padded``'s (count, classes; boxes and scores
  to 1e-4).

The images are what the batcher hands ``run_batch``: a list of resized float32 rows
(:func:`bench.raw_model.resized_batch`). ``python -m bench.padding [--models ssd300,demo]
[--sizes 3,5,6,7] [--rounds 3]`` -> table + ``bench/out/padding.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import MODELS, OUT_DIR, fmt_table, make_test_jpegs, model_dir, parse_ints, write_json
from bench.raw_model import resized_batch

#: Rounds per model when ``--rounds`` is not given: SSD300 costs ~0.35 s of CPU per image here.
DEFAULT_ROUNDS = {"ssd300": 3, "demo": 15}


def timed_call(detector: Any, images: list[np.ndarray], hw: np.ndarray) -> tuple[float, float, dict]:
    """(wall s, process CPU s, outputs) of one ``run_batch`` call."""
    cpu0, wall0 = time.process_time(), time.perf_counter()
    out = detector.run_batch(images, hw)
    return time.perf_counter() - wall0, time.process_time() - cpu0, out


def same_rows(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    """Same detections: counts and classes equal, boxes and scores within 1e-4 (valid rows only)."""
    if not np.array_equal(a["num_detections"], b["num_detections"]):
        return False
    for i, k in enumerate(a["num_detections"]):
        k = int(k)
        if not np.array_equal(a["classes"][i, :k], b["classes"][i, :k]):
            return False
        if not np.allclose(a["boxes"][i, :k], b["boxes"][i, :k], atol=1e-4):
            return False
        if not np.allclose(a["scores"][i, :k], b["scores"][i, :k], atol=1e-4):
            return False
    return True


def bench_model(name: str, sizes: list[int], reference: list[int], rounds: int, out_dir: Path) -> dict:
    """The cold and warm rows of one model."""
    from predictor.ssd import Detector, load_model

    path, source = model_dir(name, out_dir)
    config, model = load_model(path)
    top = max([*sizes, *reference])
    padded = Detector(config, model, max_batch_size=top)
    exact = Detector(config, model, max_batch_size=top, pad_batches=False)
    jpegs = make_test_jpegs()
    images, hw = resized_batch(padded, jpegs, top)
    print(f"\n== {name}: {source}; buckets {padded.buckets}", flush=True)

    first_wall, first_cpu, _ = timed_call(exact, images[:top], hw[:top])  # the trace, at size `top`
    cold = []
    for n in sizes:
        c_wall, c_cpu, _ = timed_call(exact, images[:n], hw[:n])
        w_wall, w_cpu, _ = timed_call(exact, images[:n], hw[:n])
        cold.append({"n": n, "cold_s": c_wall, "warm_s": w_wall, "cold_cpu_s": c_cpu, "warm_cpu_s": w_cpu})
        print(
            f"  exact n={n}: first call {c_wall:.3f} s ({c_cpu:.3f} CPU), second {w_wall:.3f} s", flush=True
        )
    for b in sorted({padded.bucket_for(n) for n in sizes} | set(reference)):
        padded.run_batch(images[:b], hw[:b])  # warm-up: the first call of the trace and of each bucket

    cases = (
        [("padded", n) for n in sizes] + [("exact", n) for n in sizes] + [("bucket", b) for b in reference]
    )
    detectors = {"padded": padded, "exact": exact, "bucket": padded}
    cpu: dict[tuple[str, int], list[float]] = {c: [] for c in cases}
    outs: dict[tuple[str, int], dict] = {}
    load0 = os.getloadavg()[0]
    start = time.perf_counter()
    for _ in range(rounds):
        for mode, n in cases:
            _, c, out = timed_call(detectors[mode], images[:n], hw[:n])
            cpu[(mode, n)].append(c * 1e3 / n)
            outs[(mode, n)] = out
    warm = []
    for n in sizes:
        p, e = statistics.median(cpu[("padded", n)]), statistics.median(cpu[("exact", n)])
        warm.append({
            "n": n, "bucket": padded.bucket_for(n), "padded_ms_per_image": p, "exact_ms_per_image": e,
            "exact_over_padded": e / p, "padded_rounds": cpu[("padded", n)],
            "exact_rounds": cpu[("exact", n)],
            "same_detections": same_rows(outs[("padded", n)], outs[("exact", n)]),
        })  # fmt: skip
    buckets = [{"n": b, "ms_per_image": statistics.median(cpu[("bucket", b)]), "rounds": cpu[("bucket", b)]}
               for b in reference]  # fmt: skip
    return {
        "model": name, "source": source, "rounds": rounds, "trace_call_s": first_wall,
        "trace_call_cpu_s": first_cpu, "trace_size": top, "cold": cold, "warm": warm, "buckets": buckets,
        "warm_seconds": time.perf_counter() - start, "load_average_1m": [load0, os.getloadavg()[0]],
    }  # fmt: skip


def print_model(r: dict) -> None:
    print(f"\n{r['model']}: {r['rounds']} rounds in {r['warm_seconds']:.0f} s, load {r['load_average_1m']}")
    print(
        fmt_table(
            ["n", "bucket", "padded ms/img", "exact ms/img", "exact/padded", "same detections"],
            [
                [
                    w["n"],
                    w["bucket"],
                    f"{w['padded_ms_per_image']:.1f}",
                    f"{w['exact_ms_per_image']:.1f}",
                    f"{w['exact_over_padded']:.3f}",
                    w["same_detections"],
                ]
                for w in r["warm"]
            ]
            + [[b["n"], b["n"], f"{b['ms_per_image']:.1f}", "", "", ""] for b in r["buckets"]],
        )
    )
    print(f"first call (trace) at {r['trace_size']}: {r['trace_call_s']:.3f} s")
    print(
        fmt_table(
            ["n", "first call s", "second s", "extra s", "first CPU s", "second CPU s"],
            [
                [
                    c["n"],
                    f"{c['cold_s']:.3f}",
                    f"{c['warm_s']:.3f}",
                    f"{c['cold_s'] - c['warm_s']:.3f}",
                    f"{c['cold_cpu_s']:.3f}",
                    f"{c['warm_cpu_s']:.3f}",
                ]
                for c in r["cold"]
            ],
        )
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--sizes", type=parse_ints, default=[3, 5, 6, 7], help="call sizes that are not buckets")
    p.add_argument("--reference", type=parse_ints, default=[4, 8], help="bucket sizes timed for reference")
    p.add_argument("--rounds", type=int, default=0, help="0: per model (ssd300 3, demo 15)")
    p.add_argument("--out_dir", type=Path, default=OUT_DIR)
    p.add_argument("--out", default="padding.json")
    args = p.parse_args(argv)
    results = []
    for name in args.models.split(","):
        rounds = args.rounds or DEFAULT_ROUNDS.get(name, 3)
        results.append(bench_model(name, args.sizes, args.reference, rounds, args.out_dir))
        print_model(results[-1])
    print(
        "wrote", write_json(args.out_dir / args.out, {"date": time.strftime("%F %T %Z"), "models": results})
    )


if __name__ == "__main__":
    main()
