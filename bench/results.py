"""Rewrite the generated tables of ``bench/RESULTS.md`` (and docs/benchmarks.md's summary) from bench JSON.

Every table sits in a block between two markers that name it and the make target that regenerates it::

    <!-- generated: served (make bench-served) -->
    _`make bench-served`, 2026-11-25 19:16 UTC, AMD EPYC, 2 cores, load 1.3 at the start._

    | protocol | concurrency | ... |
    <!-- end: served -->

The make target runs its benchmark, which writes JSON under ``bench/out/``, then
``python -m bench.results --tables NAME[=JSON] ...``, which replaces the block's text with a stamp (the
command, the date and the machine the JSON recorded) and the table(s) rendered from the JSON
(:data:`BLOCKS` maps each name to its JSON file, target and renderer). A block whose JSON is absent is
left as it is: some tables were recorded before their JSON was kept; their stamp says so.

``python -m bench.results`` renders every block whose JSON exists; ``--check`` only reports blocks that
differ from their JSON (exit 1).
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import OUT_DIR, REPO

#: The documents holding generated blocks.
DOCUMENTS: tuple[Path, ...] = (
    REPO / "bench" / "RESULTS.md",
    REPO / "docs" / "benchmarks.md",
    REPO / "README.md",
)
BEGIN = re.compile(r"<!-- generated: (?P<name>[\w-]+) \(make (?P<target>[\w.-]+)\) -->")


@dataclass(frozen=True)
class Block:
    """Where a generated block's numbers come from.

    Attributes:
      source: JSON file name under the benchmark output folder (``bench/out``).
      target: the make target that runs the benchmark and then re-renders the block.
      renderer: ``"module:function"``, the function mapping the JSON (a dict) to Markdown.
    """

    source: str
    target: str
    renderer: str

    def render(self, data: dict[str, Any]) -> str:
        module, function = self.renderer.split(":")
        fn: Callable[[dict[str, Any]], str] = getattr(importlib.import_module(module), function)
        return fn(data)


BLOCKS: dict[str, Block] = {
    "gpu-check": Block("gpu_check.json", "gpu-check-report", "bench.gpu_check:markdown"),
    "raw-model": Block("raw_model.json", "bench-model", "bench.raw_model:markdown"),
    "postprocess-variants": Block(
        "postprocess_variants.json", "bench-postprocess", "bench.postprocess_variants:markdown"
    ),
    "onnx-peer": Block("onnx_peer.json", "bench-onnx", "bench.onnx_peer:markdown"),
    "tf-variants": Block("tf_variants.json", "bench-tf-variants", "bench.tf_variants:markdown"),
    "served": Block("served.json", "bench-served", "bench.served:markdown"),
    "ratios": Block("bench.json", "bench-report", "bench.run_all:ratios_markdown"),
    "summary": Block("bench.json", "bench-report", "bench.run_all:summary_markdown"),
    "readme-performance": Block("bench.json", "bench-report", "bench.run_all:readme_markdown"),
    "cold-start": Block("cold_start.json", "bench-cold-start", "bench.cold_start:markdown"),
    "pipeline-stages": Block("pipeline.json", "bench-pipeline", "bench.pipeline:stages_markdown"),
    "pipeline-per-core": Block("pipeline.json", "bench-pipeline", "bench.pipeline:per_core_markdown"),
    "pipeline-served": Block("pipeline.json", "bench-pipeline", "bench.pipeline:served_markdown"),
    "pipeline-sizing": Block("pipeline.json", "bench-pipeline", "bench.pipeline:sizing_markdown"),
    "draft-effect": Block("draft_effect.json", "bench-draft", "bench.draft_effect:markdown"),
    "client-downscale": Block(
        "client_downscale.json", "bench-client-downscale", "bench.client_downscale:markdown"
    ),
    "hostile": Block("hostile.json", "bench-hostile", "bench.hostile:markdown"),
    "soak": Block("soak.json", "soak", "bench.soak:markdown"),
    "overload": Block("overload.json", "bench-overload", "bench.overload:markdown"),
    "simulate-check": Block("simulate_check.json", "bench-simulate", "bench.simulate_check:markdown"),
    "simulate-check-2": Block("simulate_check_2.json", "bench-simulate", "bench.simulate_check:markdown"),
    "simulate-check-3": Block("simulate_check_3.json", "bench-simulate", "bench.simulate_check:markdown"),
}


def machine_of(data: dict[str, Any]) -> dict[str, Any] | None:
    """The ``machine`` record (:func:`bench.common.machine_info`) of a result, or of its first stage."""
    if data.get("machine"):
        return data["machine"]
    for key in ("raw", "onnx", "served"):
        if isinstance(data.get(key), dict) and data[key].get("machine"):
            return data[key]["machine"]
    return None


def stamp(data: dict[str, Any], target: str) -> str:
    """One italic line: the make target, then the date (UTC) and machine the JSON recorded."""
    m = machine_of(data)
    if m is None:
        return f"_`make {target}`; the JSON recorded no date or machine._"
    utc = m["utc"].replace("T", " ").removesuffix("Z")[:16]
    cores = f"{m['cpu_count']} cores"
    if m.get("affinity") not in (None, m["cpu_count"]):
        cores += f" ({m['affinity']} usable)"
    load = m.get("load_average_at_start")
    busy = f", load {load[0]:.1f} at the start" if load else ""
    if m.get("nice"):
        busy += f", run at nice {m['nice']}"
    return f"_`make {target}`, {utc} UTC, {m['cpu']}, {cores}{busy}._"


def block_pattern(name: str) -> re.Pattern[str]:
    """The whole block ``name``: begin marker (any target), body, end marker."""
    return re.compile(
        rf"^<!-- generated: {re.escape(name)} \(make [\w.-]+\) -->\n.*?^<!-- end: {re.escape(name)} -->$",
        re.S | re.M,
    )


def replace_block(document: str, name: str, body: str) -> str:
    """``document`` with block ``name``'s text replaced by ``body`` (markers kept); unchanged if absent."""
    begin = f"<!-- generated: {name} (make {BLOCKS[name].target}) -->"
    return block_pattern(name).sub(lambda _: f"{begin}\n{body}\n<!-- end: {name} -->", document)


def blocks_in(document: str) -> list[tuple[str, str]]:
    """``(name, target)`` of every block that begins in ``document`` (a marker on a line of its own)."""
    lines = document.splitlines()
    return [(m["name"], m["target"]) for m in map(BEGIN.fullmatch, lines) if m]


def render_block(name: str, data: dict[str, Any]) -> str:
    """Stamp + rendered Markdown of block ``name`` from its JSON ``data``."""
    block = BLOCKS[name]
    return f"{stamp(data, block.target)}\n\n{block.render(data)}"


def load_sources(requests: Sequence[str], out_dir: Path) -> dict[str, tuple[Path, dict[str, Any] | None]]:
    """``NAME`` or ``NAME=JSON`` -> {name: (JSON path, its data or None when absent)}."""
    found: dict[str, tuple[Path, dict[str, Any] | None]] = {}
    for request in requests:
        name, _, path_text = request.partition("=")
        if name not in BLOCKS:
            raise SystemExit(f"unknown table {name!r}; known: {', '.join(BLOCKS)}")
        path = Path(path_text) if path_text else out_dir / BLOCKS[name].source
        found[name] = (path, json.loads(path.read_text()) if path.is_file() else None)
    return found


def update(
    documents: Sequence[Path], sources: dict[str, tuple[Path, dict[str, Any] | None]], check: bool
) -> int:
    """Rewrite (or with ``check`` compare) every block in ``documents`` that has JSON; exit status."""
    stale = 0
    for doc in documents:
        text = doc.read_text()
        new = text
        for name, _ in blocks_in(text):
            if name not in sources:
                continue
            path, data = sources[name]
            if data is None:
                print(f"{doc.name}: {name}: no {path}, left as it is")
                continue
            new = replace_block(new, name, render_block(name, data))
        if new == text:
            continue
        if check:
            stale += 1
            print(f"{doc} differs from the JSON in the benchmark output folder", file=sys.stderr)
        else:
            doc.write_text(new)
            print(f"wrote {doc}")
    return 1 if stale else 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--tables",
        nargs="*",
        default=None,
        help="NAME or NAME=JSON (default: every known table, from OUT_DIR/<its file>)",
    )
    parser.add_argument("--out_dir", type=Path, default=OUT_DIR)
    parser.add_argument("--documents", type=Path, nargs="+", default=list(DOCUMENTS))
    parser.add_argument("--check", action="store_true", help="only report tables that differ from the JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sources = load_sources(args.tables if args.tables is not None else list(BLOCKS), args.out_dir)
    return update(args.documents, sources, args.check)


if __name__ == "__main__":
    sys.exit(main())
