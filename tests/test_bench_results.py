"""bench/results.py: every table of bench/RESULTS.md is a generated block that a make target rewrites from
the JSON its benchmark wrote, with the date and machine; the renderer's output is checked exactly."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench import results
from bench.results import BLOCKS, blocks_in, render_block, replace_block

REPO = Path(__file__).resolve().parents[1]
RESULTS_MD = REPO / "bench" / "RESULTS.md"
END = re.compile(r"<!-- end: (?P<name>[\w-]+) -->")

MACHINE = {
    "cpu": "AMD EPYC",
    "cpu_count": 2,
    "affinity": 2,
    "python": "3.11.7",
    "tensorflow": "2.21.0",
    "utc": "2026-12-02T22:05:47Z",
    "load_average_at_start": [0.79443359375, 1.3, 1.6],
}
HOSTILE = {
    "machine": MACHINE,
    "clients": 24,
    "body_mib": 40,
    "statuses": {"503": 21, "400": 3},
    "answer_seconds_max": 2.1063330350007163,
    "rss_mib": {"ready": 1013.18, "peak_sampled": 1236.14, "peak_vmhwm": 1235.99, "after": 1089.13},
    "peak_rss_growth_mib": 222.953125,
    "max_growth_mib": 512.0,
    "normal_request_after": 200,
    "resources_log_line": "cpu quota none; memory limit none",
    "failures": [],
    "passed": True,
}
HOSTILE_MD = """\
_`make bench-hostile`, 2026-12-02 22:05 UTC, AMD EPYC, 2 cores, load 0.8 at the start._

| metric | value |
|---|---|
| clients x body | 24 x 40 MiB |
| answers | 400: 3 503: 21 |
| slowest answer (s) | 2.1 |
| RSS ready / peak (VmHWM) / peak (sampled) / after (MiB) | 1013 / 1236 / 1236 / 1089 |
| peak RSS growth (MiB) | 223 (limit 512) |
| normal request afterwards | 200 |
| server resources line | cpu quota none; memory limit none |
| result | PASS |"""


def _served_row(protocol: str, concurrency: int, images_per_s: float) -> dict:
    return {"protocol": protocol, "concurrency": concurrency, "images_per_s": images_per_s, "p50_ms": 26.31,
            "p95_ms": 1583.94, "p99_ms": 41.8, "requests": 370, "errors": 0, "mean_batch": 1.9333,
            "padded_share": 0.0036, "server_cores_used": 1.174}  # fmt: skip


SERVED = {
    "machine": {**MACHINE, "cpu_count": 4, "utc": "2026-11-25T19:22:03Z", "load_average_at_start": None},
    "settings": {"max_batch_size": 32, "batch_wait_ms": 2.0, "duration_s": 10.0, "min_requests": 3},
    "models": {
        "demo": {
            "source": "shipped demo model",
            "ready_s": 8.04,
            "rows": [_served_row("v1", 1, 37.04), _served_row("grpc", 16, 3.149)],
        },
    },
}
SERVED_HEADER = (
    "| protocol | concurrency | img/s | p50 ms | p95 ms | p99 ms | requests | errors | mean batch | padded % "
    "| server cores |"
)
SERVED_MD = f"""\
_`make bench-served`, 2026-11-25 19:22 UTC, AMD EPYC, 4 cores (2 usable)._

`--max_batch_size 32 --batch_wait_ms 2.0`, at least 10.0 s and 3 requests per client and cell.

Demo model (shipped demo model; ready after 8.0 s):

{SERVED_HEADER}
|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|
| v1 | 1 | 37.0 | 26.3 | 1,583.9 | 41.8 | 370 | 0 | 1.93 | 0.36 | 1.17 |
| grpc | 16 | 3.15 | 26.3 | 1,583.9 | 41.8 | 370 | 0 | 1.93 | 0.36 | 1.17 |"""


def test_renderer_writes_a_hostile_table_exactly():
    assert render_block("hostile", HOSTILE) == HOSTILE_MD


def test_renderer_writes_a_served_table_exactly():
    assert render_block("served", SERVED) == SERVED_MD


def test_the_stamp_names_a_bench_run_at_another_priority():
    hostile = {**HOSTILE, "machine": {**MACHINE, "nice": -15}}
    assert render_block("hostile", hostile).startswith(
        "_`make bench-hostile`, 2026-12-02 22:05 UTC, AMD EPYC, 2 cores, load 0.8 at the start, "
        "run at nice -15._"
    )


def test_the_served_block_adds_the_per_thread_profile_of_the_top_concurrency():
    profile = {"cpu_ms_per_image": {"event loop": 1.5, "decode": 6.0, "model call": 1.0, "TensorFlow": 12.0,
                                    "gRPC I/O": 0.0, "other": 0.5}, "machine_idle_share": 0.125}  # fmt: skip
    rows = [_served_row("v1", 1, 37.04), {**_served_row("v1", 16, 50.0), "threads": profile}]
    data = {**SERVED, "models": {"demo": {**SERVED["models"]["demo"], "rows": rows}}}
    text = render_block("served", data)
    assert text.endswith(
        "| model | protocol | concurrency | event loop | decode | model call | TensorFlow | gRPC I/O | other "
        "| total | idle % |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
        "| demo | v1 | 16 | 1.5 | 6 | 1 | 12.0 | 0 | 0.5 | 21.0 | 12.5 |"
    )


def test_a_json_without_machine_says_so():
    assert render_block("hostile", {k: v for k, v in HOSTILE.items() if k != "machine"}).startswith(
        "_`make bench-hostile`; the JSON recorded no date or machine._\n\n| metric | value |"
    )


def test_a_block_is_rewritten_in_place_and_only_that_block(tmp_path):
    """``python -m bench.results --tables hostile=JSON`` replaces the hostile block's text, keeps its markers
    and everything around it, and leaves a block whose JSON is absent as it was; ``--check`` then passes."""
    doc = tmp_path / "RESULTS.md"
    before = (
        "# Results\n\nintro\n\n"
        "<!-- generated: hostile (make bench-hostile) -->\n_old stamp_\n\n| old | table |\n"
        "<!-- end: hostile -->\n"
        "\nbetween\n\n"
        "<!-- generated: soak (make soak) -->\n| kept | as it was |\n<!-- end: soak -->\n\ntail\n"
    )
    doc.write_text(before)
    source = tmp_path / "h.json"
    source.write_text(json.dumps(HOSTILE))
    args = ["--documents", str(doc), "--out_dir", str(tmp_path / "empty")]
    assert results.main([*args, "--check", "--tables", f"hostile={source}", "soak"]) == 1
    assert doc.read_text() == before, "--check writes nothing"
    assert results.main([*args, "--tables", f"hostile={source}", "soak"]) == 0
    assert doc.read_text() == (
        "# Results\n\nintro\n\n"
        f"<!-- generated: hostile (make bench-hostile) -->\n{HOSTILE_MD}\n<!-- end: hostile -->\n"
        "\nbetween\n\n"
        "<!-- generated: soak (make soak) -->\n| kept | as it was |\n<!-- end: soak -->\n\ntail\n"
    )
    assert results.main([*args, "--check", "--tables", f"hostile={source}"]) == 0


def test_replace_block_keeps_an_absent_block_absent():
    assert replace_block("no blocks here\n", "served", "x") == "no blocks here\n"


def _blocks_and_loose_tables(text: str) -> tuple[list[tuple[str, str]], list[str]]:
    """The (name, target) of each block, and every Markdown table line outside any block."""
    blocks, loose, open_name = [], [], None
    for line in text.splitlines():
        begin, end = results.BEGIN.fullmatch(line), END.fullmatch(line)
        if begin:
            assert open_name is None, f"block {begin['name']} opens inside block {open_name}"
            open_name = begin["name"]
            blocks.append((begin["name"], begin["target"]))
        elif end:
            assert end["name"] == open_name, f"<!-- end: {end['name']} --> closes {open_name}"
            open_name = None
        elif line.startswith("|") and open_name is None:
            loose.append(line)
    assert open_name is None, f"block {open_name} is never closed"
    return blocks, loose


def test_every_results_table_is_a_generated_block():
    blocks, loose = _blocks_and_loose_tables(RESULTS_MD.read_text())
    assert not loose, f"tables in bench/RESULTS.md outside a generated block: {loose[:3]}"
    names = [name for name, _ in blocks]
    assert len(names) == len(set(names)), "a block name appears twice"
    for name, target in blocks:
        assert name in BLOCKS, f"no renderer for block {name}"
        assert target == BLOCKS[name].target, f"block {name} names make {target}, not {BLOCKS[name].target}"
    assert blocks_in((REPO / "docs" / "benchmarks.md").read_text()) == [("summary", "bench-report")]
    assert blocks_in((REPO / "README.md").read_text()) == [("readme-performance", "bench-report")]


def _targets() -> list[tuple[str, list[str]]]:
    by_target: dict[str, list[str]] = {}
    for doc in results.DOCUMENTS:
        for name, target in blocks_in(doc.read_text()):
            by_target.setdefault(target, []).append(name)
    return sorted(by_target.items())


@pytest.mark.parametrize(("target", "names"), _targets())
def test_each_named_make_target_rewrites_its_tables(target, names):
    """``make -n TARGET`` (prints the recipe, runs nothing) ends by rendering each of its blocks."""
    proc = subprocess.run(["make", "-n", target], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    recipe = proc.stdout.replace("\\\n", " ")
    calls = [line for line in recipe.splitlines() if "-m bench.results" in line]
    assert calls, f"make {target} does not run bench.results:\n{recipe}"
    rendered = {
        word.partition("=")[0]
        for line in calls
        for word in re.split(r"&&|;", line.partition("--tables")[2])[0].split()
    }
    missing = [n for n in names if n not in rendered]
    assert not missing, f"make {target} does not render {missing}:\n{calls}"


def test_overload_block_renders_the_json_overload_py_writes():
    """The overload block (bench.overload:markdown) on that script's keys: capacity and 4x side by side,
    then the facts and the verdict; a NaN (no 503s at capacity) shows as "-"."""
    nan = float("nan")

    def phase(offered, goodput, p50, p99, share, p50_503, p99_503, statuses, lag, cores):
        return {
            "offered_per_s": offered, "goodput_per_s": goodput, "p50_ms": p50, "p99_ms": p99,
            "rejected_share": share, "p50_503_ms": p50_503, "p99_503_ms": p99_503, "statuses": statuses,
            "generator_lag_p99_ms": lag, "generator_cores": cores,
        }  # fmt: skip

    data = {
        "machine": MACHINE, "factor": 4.0, "capacity_rate_per_s": 23.9875,
        "capacity": phase(24.0, 23.9, 74.6, 444.1, 0.0, nan, nan, {"200": 480}, 6.56, 0.0163),
        "overload": phase(95.9, 29.4, 282.8, 913.8, 0.72054, 1.57, 131.26, {"503": 1382, "200": 536}, 5.75,
                          0.0525),
        "closed_loop_estimate": {"clients": 32, "goodput_per_s": 24.0},
        "saturated_throughput_per_s": 25.25,
        "capacity_search": [{"rate": 48.0, "keeps_up": False}, {"rate": 23.9875, "keeps_up": True}],
        "overload_warmup": {"p99_ms": 4028.1, "max_ms": 4051.2, "statuses": {"200": 252, "503": 708}},
        "goodput_over_capacity": 1.2301, "p99_admitted_over_p99_capacity": 2.0577,
        "rss_mib": {"ready": 1007.2, "peak": 1370.6}, "server_cores": 0.963,
        "server_counters": {"cancelled_queue": 0.0, "rejected_queue_full": 1793.0},
        "resources_log_line": "decode_threads 2", "batching_log_line": "max_batch_size 32",
        "failures": ["p99 of admitted requests 2.06x the p99 at capacity (> 2x)"], "passed": False,
    }  # fmt: skip
    assert render_block("overload", data).split("\n\n", 1)[1] == (
        "| figure | capacity (24.0 req/s) | 4x |\n"
        "|---|---|---|\n"
        "| offered (req/s) | 24.0 | 95.9 |\n"
        "| goodput: 200s completed (req/s) | 23.9 | 29.4 |\n"
        "| p50 / p99 of admitted (ms) | 75 / 444 | 283 / 914 |\n"
        "| rejected (503) share of offered | 0.0% | 72.1% |\n"
        "| p50 / p99 of the 503s (ms) | - / - | 2 / 131 |\n"
        "| statuses | {'200': 480} | {'503': 1382, '200': 536} |\n"
        "| generator lag p99 (ms) / cores | 6.6 / 0.02 | 5.8 / 0.05 |\n"
        "\n"
        "|  |  |\n"
        "|---|---|\n"
        "| closed-loop estimate | 24.0 req/s with 32 clients |\n"
        "| saturated throughput (offered 2x the estimate) | 25.2 req/s |\n"
        "| capacity search (rate: keeps up?) | 48.0: no, 24.0: yes |\n"
        "| 4x, warm-up seconds (left out above) | p99 / max of admitted 4028 / 4051 ms, "
        "{'200': 252, '503': 708} |\n"
        "| goodput at 4x / at capacity | 123% (target >= 90%) |\n"
        "| p99 admitted at 4x / at capacity | 2.06 (target <= 2) |\n"
        "| server RSS ready / peak (MiB) | 1007 / 1371 |\n"
        "| server cores (whole run) | 0.96 |\n"
        "| server counters | cancelled_queue 0, rejected_queue_full 1793 |\n"
        "| server resources | decode_threads 2 |\n"
        "| server batching | max_batch_size 32 |\n"
        "| result | FAIL: p99 of admitted requests 2.06x the p99 at capacity (> 2x) |"
    )


def test_loading_the_renderers_changes_nothing_around_them():
    """Rendering imports each benchmark module: that must not set environment variables (the GPU check
    once set KERAS_BACKEND=jax at import, which then reached every server a later test spawned) nor
    import TensorFlow. Checked in a fresh interpreter, where nothing is imported yet."""
    code = (
        "import importlib, os, sys\n"
        "before = dict(os.environ)\n"
        "from bench.results import BLOCKS\n"
        "for block in BLOCKS.values():\n"
        "    importlib.import_module(block.renderer.split(':')[0])\n"
        "changed = sorted(k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k))\n"
        "print(changed, 'tensorflow' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["[]", "False"]


def _low_row(batch: int, passed: int, may_pass: int) -> dict:
    ms = {"network": {"min": 5.0, "median": 6.0}}
    for i, v in enumerate(("top400", "sized_softmax_all", "sized")):
        ms[f"post:{v}"] = {"min": 1.0 + i, "median": 1.5 + i}
        ms[f"whole:{v}"] = {"min": 8.0, "median": 9.0}
    agrees = {"top400": True, "sized_softmax_all": True, "sized": True}
    return {"batch": batch, "candidates_passed_max": passed, "anchors_may_pass_max": may_pass,
            "ms_per_image": ms, "agrees": agrees}  # fmt: skip


def test_the_low_threshold_table_names_the_branch_the_shipped_code_took():
    """bench.postprocess_variants' low-threshold rows: each batch's counts and which branch ``sized`` took
    (more candidates than the largest slot: the anchors that may pass decoded, or every anchor when
    they are more than it scores alone; only the latter: every anchor scored; else sized), then one row
    per variant."""
    from bench.postprocess_variants import low_threshold_markdown

    low = {"threshold": 0.01, "candidate_anchors": 256, "largest_slot": 128, "reps": 9,
           "rows": [_low_row(1, 319, 176), _low_row(8, 100, 300), _low_row(32, 128, 256),
                    _low_row(16, 129, 257)]}  # fmt: skip
    caption, table = low_threshold_markdown("demo", low)
    assert caption.endswith(
        "the branch `sized` took: batch 1: 319 / 176 (top_k of the anchors that may pass), "
        "batch 8: 100 / 300 (every anchor scored), batch 32: 128 / 256 (sized), "
        "batch 16: 129 / 257 (every anchor scored and decoded)."
    )
    assert caption.startswith("demo at score threshold 0.01 (mAP evaluation's), 9 interleaved rounds:")
    assert table.splitlines()[2:5] == [
        "| 1 | top400 | 1 | 1.5 | 8 | 9 | 5 | 12.5 | 37.5 | yes |",
        "| 1 | sized_softmax_all | 2 | 2.5 | 8 | 9 | 5 | 25.0 | 37.5 | yes |",
        "| 1 | sized | 3 | 3.5 | 8 | 9 | 5 | 37.5 | 37.5 | yes |",
    ]
    assert len(table.splitlines()) == 2 + 4 * 3


def test_the_low_threshold_table_names_the_branch_observed_where_recorded():
    """Rows recording ``postprocess_with_path``'s report name the branch it ran (tier, ``K``, decoding)
    whatever the counts suggest; rows without it keep the inferred name."""
    from bench.postprocess_variants import low_threshold_markdown

    def path(every: bool, scored: int, k: int, decoded: int) -> dict:
        return {"every_anchor": every, "anchors": 8732, "scored": scored, "candidates": k, "decoded": decoded}

    rows = [_low_row(1, 319, 176), _low_row(8, 411, 233), _low_row(16, 60, 300), _low_row(32, 3083, 1668),
            _low_row(4, 66, 20)]  # fmt: skip
    rows[0]["path"] = path(False, 1024, 400, 1024)  # counts alone would say the 256 anchors
    rows[1]["path"] = path(True, 8732, 400, 8732)
    rows[2]["path"] = path(False, 1024, 64, 64)
    rows[3]["path"] = path(True, 8732, 96, 96)
    low = {"threshold": 0.01, "candidate_anchors": 256, "largest_slot": 128, "reps": 9, "rows": rows}
    caption, _ = low_threshold_markdown("demo", low)
    assert caption.endswith(
        "the branch `sized` took: batch 1: 319 / 176 (1024 anchors scored and decoded, top 400), "
        "batch 8: 411 / 233 (every anchor scored and decoded, K = 400), "
        "batch 16: 60 / 300 (1024 anchors scored, K = 64), "
        "batch 32: 3083 / 1668 (every anchor scored, K = 96), batch 4: 66 / 20 (sized)."
    )
