"""SSD300 on H100-class GPUs at 1, 10 and 100 replicas, on paper: ``python -m bench.at_scale``.

Prints the Markdown table of docs/simulator.md ("At scale, on paper") from measured rates (the H100's
SSD300 forward rate, bench/pipeline.py's constants from bench/RESULTS.md's GPU check; the per-core CPU
pipeline rates of bench/RESULTS.md's sizing table) and the stated assumptions below (``--cores``,
``--peak``, ``--cold-start-s``, target utilisation). Arithmetic only: nothing here is simulated.
"""

from __future__ import annotations

import argparse
import math
import sys

from bench.pipeline import H100_SSD300_IMAGES_PER_S

#: Per-core pipeline rates, images/s (bench/RESULTS.md "Sizing: CPU cores per H100 for SSD300",
#: make bench-pipeline 2026-12-03 07:15 UTC, AMD EPYC): measured.
PER_CORE = {
    "VGA JPEG, CPU decode (in process)": 194.8,
    "1080p JPEG, CPU decode (served, V1)": 40.7,
    "1080p JPEG, CPU decode, --jpeg_draft (served, V1)": 83.8,
    # GPU decode is not measured (docs/gpu-decode.md); assumed: the CPU then does what it does for a
    # network-size UINT8 tensor (measured rate) and the GPU decodes for free (optimistic).
    "any JPEG, GPU decode (assumed)": 344.7,
}


def rows(cores: int, dtype: str, peak: float, utilization: float, cold_s: float) -> list[str]:
    gpu = H100_SSD300_IMAGES_PER_S[dtype]
    out = []
    for name, per_core in PER_CORE.items():
        rate = min(gpu, cores * per_core)
        bound = "GPU" if gpu <= cores * per_core else "CPU"
        need = math.ceil(peak / (utilization * rate))
        base = peak / 10
        n0 = math.ceil(base / (utilization * rate))
        backlog = max(0.0, peak - n0 * rate) * cold_s
        out.append(
            f"| {name} | {rate:,.0f} ({bound}) | {rate:,.0f} | {10 * rate:,.0f} | {100 * rate:,.0f} | "
            f"{need} | {n0} -> {need} | {backlog:,.0f} ({backlog / (peak * cold_s):.0%}) |"
        )
    return out


def table(cores: int, dtype: str, peak: float, utilization: float, cold_s: float) -> str:
    gpu = H100_SSD300_IMAGES_PER_S[dtype]
    head = [
        f"SSD300 {dtype} on one H100 per replica ({gpu:,.0f} img/s forward, measured) with {cores} CPU cores "
        f"(assumed); peak {peak:,.0f} img/s, {utilization:.0%} target utilisation, 10x burst from "
        f"{peak / 10:,.0f} img/s, cold start {cold_s:g} s (assumed). One image per request; replicas "
        "scale linearly (assumed: no shared bottleneck in front of them).",
        "",
        "| images, decode | img/s per replica (bound) | 1 replica | 10 replicas | 100 replicas | "
        "replicas for the peak | 10x burst: replicas before -> after | "
        "images over capacity during the cold start (share of offered) |",
        "|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    return "\n".join(head + rows(cores, dtype, peak, utilization, cold_s))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cores", type=int, default=12, help="CPU cores per GPU (Azure ND H100 v5: 96 / 8)")
    p.add_argument("--dtype", choices=sorted(H100_SSD300_IMAGES_PER_S), default="float32")
    p.add_argument("--peak", type=float, default=20000.0, help="peak images/s of the stated workload")
    p.add_argument("--utilization", type=float, default=0.7)
    p.add_argument("--cold-start-s", type=float, default=60.0, help="GPU pod: pull, CUDA init, warm-up")
    args = p.parse_args(argv)
    print(table(args.cores, args.dtype, args.peak, args.utilization, args.cold_start_s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
