"""Served A/B: the same served cells (``bench/served.py``) for several server flag sets, alternating.

A busy machine changes its speed from one minute to the next; alternating the variants (A, B, A, B ...) in one
run and comparing each round's pair keeps the ratio meaningful when the absolute numbers are not. A variant's
flags may start with ``@DIR``: its server runs the ``predictor`` package of the checkout in DIR (another
commit, e.g. ``git archive BASE | tar -x -C DIR``), so one run compares before and after. Each round starts
one server per variant in turn (the order rotates between rounds), runs every (protocol, concurrency) cell
against it, and stops it. Printed: each variant's images/s per cell and round, the median over rounds, B / A
per round, and, when a raw-model JSON (``bench/raw_model.py``, e.g. ``--batches 16``) is given, served / the
bench's ceiling (the ceiling row of ``bench/run_all.py``: cores / (``run_batch`` CPU ms per image +
decode/resize ms per image)); then each variant's server CPU ms per image by thread group
(``bench/threads.py``) and server cores used per cell, medians over rounds.

``python -m bench.served_ab --models demo --concurrency 16 --rounds 2 --raw bench/out/raw_model.json
--variants 'calls1=--model_calls_in_flight 1;calls2=--model_calls_in_flight 2'``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import served, threads
from bench.common import OUT_DIR, fmt_table, machine_info, make_test_jpegs, parse_ints, write_json
from bench.run_all import served_ceiling


@contextlib.contextmanager
def in_tree(tree: str | None) -> Iterator[None]:
    """Servers started inside run ``python -m predictor`` from ``tree`` (a checkout of another commit:
    it is their working directory and ``PYTHONPATH``); None: from this one."""
    if tree is None:
        yield
        return
    cwd, path = os.getcwd(), os.environ.get("PYTHONPATH")
    os.chdir(tree)
    os.environ["PYTHONPATH"] = tree
    try:
        yield
    finally:
        os.chdir(cwd)
        if path is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = path


def split_tree(flags: str) -> tuple[str | None, str]:
    """``'@/tree --flag x'`` -> ``('/tree', '--flag x')``; flags without ``@`` -> ``(None, flags)``."""
    if not flags.startswith("@"):
        return None, flags
    tree, _, rest = flags[1:].partition(" ")
    return str(Path(tree).resolve()), rest.strip()


def parse_variants(text: str) -> dict[str, str]:
    """``'name=flags;name=flags'`` -> ``{name: flags}`` (in order)."""
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, _, flags = part.partition("=")
        out[name.strip()] = flags.strip()
    if len(out) < 2:
        raise SystemExit("--variants needs at least two 'name=flags' entries separated by ';'")
    return out


def ceilings(
    raw_path: Path | None, models: list[str], concurrencies: list[int]
) -> dict[tuple[str, int], dict]:
    """``{(model, c): served_ceiling(...)}`` from a raw-model JSON (empty without one)."""
    if raw_path is None:
        return {}
    raw = json.loads(raw_path.read_text())
    cores = raw["machine"].get("affinity") or raw["machine"].get("cpu_count") or 1
    out = {}
    for m in models:
        raw_m = raw["models"].get(m)
        for c in concurrencies:
            ceiling = served_ceiling(raw_m, c, cores) if raw_m else {}
            if ceiling:
                out[(m, c)] = ceiling
    return out


def markdown(data: dict) -> str:
    """images/s per variant and round, medians, B/A and served / ceiling per cell."""
    names = list(data["variants"])
    base = names[0]
    headers = ["model", "protocol", "c", *(f"{n} img/s (rounds)" for n in names),
               *(f"{n} median" for n in names), *(f"{n} / {base}" for n in names[1:]),
               *(f"{n} / ceiling" for n in names)]  # fmt: skip
    rows = []
    for key, cell in data["cells"].items():
        model, protocol, c = key.split("|")
        per = cell["images_per_s"]
        med = {n: statistics.median(per[n]) for n in names}
        ratios = [
            "/".join(f"{b / a:.2f}" for a, b in zip(per[base], per[n], strict=False)) for n in names[1:]
        ]
        ceiling = cell.get("ceiling_images_per_s")
        over = [f"{med[n] / ceiling:.2f}" if ceiling else "-" for n in names]
        rows.append([model, protocol, int(c), *(" ".join(f"{x:.1f}" for x in per[n]) for n in names),
                     *(med[n] for n in names), *ratios, *over])  # fmt: skip
    return fmt_table(headers, rows)


def threads_markdown(data: dict) -> str:
    """Per cell and variant: the server's CPU ms per image by thread group (:data:`bench.threads.GROUPS`),
    their total and the server cores used, each the median over the variant's rounds ("" without
    profiles)."""
    per: dict[tuple[str, str, int, str], list[dict]] = {}
    for run in data.get("runs", []):
        for row in run["rows"]:
            if row.get("threads"):
                key = (run["model"], row["protocol"], row["concurrency"], run["variant"])
                per.setdefault(key, []).append(row)
    order = {name: i for i, name in enumerate(data["variants"])}
    rows = []
    for (model, protocol, c, variant), cells in sorted(
        per.items(), key=lambda kv: (*kv[0][:3], order[kv[0][3]])
    ):
        ms = [cell["threads"]["cpu_ms_per_image"] for cell in cells]
        groups = [statistics.median(m[g] for m in ms) for g in threads.GROUPS]
        total = statistics.median(sum(m.values()) for m in ms)
        cores = statistics.median(cell["server_cores_used"] for cell in cells)
        rows.append([model, protocol, c, variant, *groups, total, cores])
    if not rows:
        return ""
    return fmt_table(["model", "protocol", "c", "variant", *threads.GROUPS, "total", "server cores"], rows)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", required=True, help="'name=server flags;name=server flags;...'")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--raw", type=Path, default=None, help="raw-model JSON for the ceiling row")
    served_args = served.parse_args([])
    for key, value in vars(served_args).items():
        if key in ("server_args", "out"):
            continue
        kind = parse_ints if isinstance(value, list) else type(value) if value is not None else str
        parser.add_argument(f"--{key}", type=kind, default=value)
    parser.add_argument("--common_args", default="", help="server flags every variant gets")
    parser.add_argument("--out", type=Path, default=None, help="JSON (default OUT_DIR/served_ab.json)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    variants = parse_variants(args.variants)
    out = args.out or OUT_DIR / "served_ab.json"
    jpegs = make_test_jpegs(args.images_per_size)
    models = args.models.split(",")
    limits = ceilings(args.raw, models, args.concurrency)
    data: dict[str, Any] = {"machine": machine_info(), "settings": {k: str(v) for k, v in vars(args).items()},
                            "variants": variants, "cells": {}, "runs": []}  # fmt: skip
    names = list(variants)
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            for model in models:
                tree, flags = split_tree(variants[name])
                run_args = argparse.Namespace(**vars(args))
                run_args.server_args = f"{args.common_args} {flags}"
                print(f"\n#### round {r + 1}, variant {name}: {run_args.server_args.strip()}"
                      f" (tree {tree or os.getcwd()})", flush=True)  # fmt: skip
                with in_tree(tree):
                    result = served.bench_model(model, run_args, jpegs)
                data["runs"].append({"round": r, "variant": name, "model": model, **result})
                for row in result["rows"]:
                    key = f"{model}|{row['protocol']}|{row['concurrency']}"
                    cell = data["cells"].setdefault(key, {"images_per_s": {n: [] for n in names}})
                    cell["images_per_s"][name].append(row["images_per_s"])
                    ceiling = limits.get((model, row["concurrency"]))
                    if ceiling:
                        cell["ceiling_images_per_s"] = ceiling["images_per_s"]
                        cell["ceiling"] = ceiling
                write_json(out, data)
    print("\n" + markdown(data))
    profile = threads_markdown(data)
    if profile:
        print("\nServer CPU ms per image by thread group, medians over rounds:\n\n" + profile)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
