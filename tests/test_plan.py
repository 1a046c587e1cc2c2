"""Capacity planner: fitting, choice, Helm overlay (checked against the chart) from synthetic benchmarks;
and, marked slow, a real sweep of the demo model (`make bench-plan` checks its prediction by measurement)."""

from __future__ import annotations

import json
from dataclasses import asdict

import jsonschema
import numpy as np
import pytest
import test_deploy_chart
import yaml

from predictor.tools import plan

CHART = test_deploy_chart.CHART
run_helm = test_deploy_chart.run_helm
helm = test_deploy_chart.helm  # the session fixture installing the pinned helm binary

# Synthetic servers: mean latency a0 + a1 (c-1) + a2 c (c-1) ms, p95 = 1.5 x mean + 5 ms.
TRUE = {1: (20.0, 18.0, 0.0), 8: (30.0, 6.0, 0.4)}
CONCURRENCY = (1, 2, 4, 8, 16)


def synthetic_benchmark() -> dict:
    cells = []
    for b, (a0, a1, a2) in TRUE.items():
        for c in CONCURRENCY:
            mean = a0 + a1 * (c - 1) + a2 * c * (c - 1)
            p95 = 1.5 * mean + 5
            cell = plan.Cell(b, c, 500, 0, c / (mean / 1e3), mean, 0.9 * mean, p95, 1.8 * mean)
            cells.append(asdict(cell))
    return {"format": plan.BENCHMARK_FORMAT, "model_dir": "synthetic", "batch_wait_ms": 3.0, "cells": cells,
            "machine": {"cpu": "synthetic"}, "request": "none"}  # fmt: skip


def test_fit_recovers_the_usl_coefficients():
    fits = plan.fit(synthetic_benchmark()["cells"])
    for b, (a0, a1, a2) in TRUE.items():
        np.testing.assert_allclose(fits[b].mean_coef, (a0, a1, a2), atol=1e-6)
        np.testing.assert_allclose(fits[b].p95_coef, (1.5 * a0 + 5, 1.5 * a1, 1.5 * a2), atol=1e-6)
        assert (fits[b].c_min, fits[b].c_max) == (1, 16)


def test_nnls_never_returns_negative_coefficients():
    rng = np.random.default_rng(0)
    a = plan._basis(np.array([1, 2, 4, 8, 16], np.float64))
    for _ in range(50):
        y = rng.uniform(1, 100, 5)
        coef = plan.nnls_small(a, y)
        assert (coef >= 0).all()
        free, *_ = np.linalg.lstsq(a, y, rcond=None)
        if (free >= 0).all():
            np.testing.assert_allclose(coef, free, atol=1e-8)


def brute_force_choice(slo: float, headroom: float) -> tuple[int, int]:
    """Best (throughput, then lower c) over every integer c of the measured range, from the true curves."""
    options = []
    for b, (a0, a1, a2) in TRUE.items():
        for c in range(1, 17):
            mean = a0 + a1 * (c - 1) + a2 * c * (c - 1)
            if 1.5 * mean + 5 <= headroom * slo:
                options.append((round(c / mean * 1e3, 6), -c, -b))
    _, c, b = max(options)
    return -b, -c


@pytest.mark.parametrize("slo", [60.0, 100.0, 200.0, 400.0, 2000.0])
def test_choice_is_the_best_feasible_setting(slo):
    fits = plan.fit(synthetic_benchmark()["cells"])
    chosen = plan.choose(fits, slo_p95_ms=slo, rate_rps=100, batch_wait_ms=3.0, headroom=0.9)
    assert (chosen.max_batch_size, chosen.concurrency) == brute_force_choice(slo, 0.9)
    assert chosen.predicted_p95_ms <= 0.9 * slo
    assert chosen.scale_target == max(1, int(chosen.concurrency * 0.7))
    x_target = float(fits[chosen.max_batch_size].throughput_rps(chosen.scale_target))
    assert (chosen.min_replicas - 1) * x_target < 100 <= chosen.min_replicas * x_target
    assert chosen.max_replicas >= chosen.min_replicas
    assert chosen.max_replicas * chosen.predicted_throughput_rps >= 2 * 100


def test_infeasible_slo_is_an_error(tmp_path, capsys):
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(synthetic_benchmark()))
    code = plan.main(["--slo-p95-ms", "20", "--rate", "10", "--benchmark", str(path), "--out", str(tmp_path)])
    assert code == 1
    assert "lowest predicted p95 is 35.0 ms" in capsys.readouterr().err
    assert not (tmp_path / "values-plan.yaml").exists()


def _nested_keys(data: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in data.items():
        path = f"{prefix}{key}"
        keys += _nested_keys(value, path + ".") if isinstance(value, dict) else [path]
    return keys


def test_overlay_uses_the_charts_keys_and_renders(tmp_path, helm):
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(synthetic_benchmark()))
    out = tmp_path / "plan"
    assert (
        plan.main(["--slo-p95-ms", "200", "--rate", "300", "--benchmark", str(path), "--out", str(out)]) == 0
    )
    for name in ("values-plan.yaml", "plan.md", "plan.png", "plan.json"):
        assert (out / name).stat().st_size > 0, name
    chosen = json.loads((out / "plan.json").read_text())["plan"]
    overlay = yaml.safe_load((out / "values-plan.yaml").read_text())
    assert overlay == plan.overlay(plan.Plan(**chosen))
    # every key exists in the chart's values.yaml (a renamed key fails here) and the schema accepts them
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    for key in _nested_keys(overlay):
        node = defaults
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"{key} is not a key of values.yaml"
            node = node[part]
    merged = {**defaults, **{k: {**defaults[k], **v} for k, v in overlay.items()}}
    jsonschema.validate(merged, json.loads((CHART / "values.schema.json").read_text()))
    proc = run_helm(helm, "template", "r", str(CHART), "-f", str(out / "values-plan.yaml"))
    assert proc.returncode == 0, proc.stderr
    isvc = next(d for d in yaml.safe_load_all(proc.stdout) if d and d["kind"] == "InferenceService")
    predictor = isvc["spec"]["predictor"]
    assert predictor["containerConcurrency"] == chosen["concurrency"]
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (
        chosen["min_replicas"],
        chosen["max_replicas"],
    )
    assert (predictor["scaleMetric"], predictor["scaleTarget"]) == ("concurrency", chosen["scale_target"])
    args = predictor["containers"][0]["args"]
    assert f"--max_batch_size={chosen['max_batch_size']}" in args and "--batch_wait_ms=3" in args
    report = (out / "plan.md").read_text()
    assert f"| autoscaling.containerConcurrency | {chosen['concurrency']} |" in report
    assert report.count("\n| 8 |") == len(CONCURRENCY)  # one measured row per cell


def test_reads_bench_served_json(tmp_path):
    served = {
        "machine": {"cpu": "x"},
        "models": {"demo": {
            "server_cmd": ["python", "-m", "predictor", "--max_batch_size", "16", "--batch_wait_ms", "5"],
            "rows": [
                {"protocol": p, "concurrency": c, "requests": 100, "errors": 0, "images_per_s": 10.0 * c,
                 "mean_ms": 100.0, "p50_ms": 90.0, "p95_ms": 150.0, "p99_ms": 200.0}
                for p in ("v1", "grpc") for c in (1, 4)
            ],
        }},
    }  # fmt: skip
    path = tmp_path / "served.json"
    path.write_text(json.dumps(served))
    data = plan.load_benchmark(path)
    assert data["batch_wait_ms"] == 5.0
    assert [(c["max_batch_size"], c["concurrency"]) for c in data["cells"]] == [(16, 1), (16, 4)]
    assert data["batch_padding"] == "bucket"  # no computed-images counter: a server before exact sizes
    assert not plan.measured_on_gpu(data)  # ... which padded on this CPU too
    # on auto, the rows' computed-images counter says how the calls ran: nothing padded -> exact (a CPU)
    rows = served["models"]["demo"]["rows"]
    for r in rows:
        r.update(padded_source="counter", padded_share=0.0)
    path.write_text(json.dumps(served))
    data = plan.load_benchmark(path)
    assert (data["batch_padding"], data["batch_padding_flag"]) == ("exact", "auto")
    assert not plan.measured_on_gpu(data)
    rows[1]["padded_share"] = 0.125  # some call padded on auto: a GPU's server
    path.write_text(json.dumps(served))
    data = plan.load_benchmark(path)
    assert data["batch_padding"] == "bucket" and plan.measured_on_gpu(data)
    served["models"]["demo"]["server_cmd"] += ["--batch_padding=exact"]
    path.write_text(json.dumps(served))
    data = plan.load_benchmark(path)
    assert data["batch_padding"] == "exact" and not plan.measured_on_gpu(data)
    served["models"]["demo"]["server_cmd"][-1:] = ["--batch_padding", "bucket"]
    path.write_text(json.dumps(served))
    data = plan.load_benchmark(path)
    assert data["batch_padding"] == "bucket" and not plan.measured_on_gpu(data)  # chosen, not a GPU's
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(ValueError, match="not a planner benchmark"):
        plan.load_benchmark(tmp_path / "other.json")


def test_a_benchmark_says_how_its_servers_ran_their_calls(tmp_path):
    """The measured servers' padding comes from their logs (the line a server logs once ready, either
    way; neither line: unknown, refused); a benchmark without it was measured before exact sizes:
    ``bucket``; one whose servers differed is refused."""
    from predictor.serving.options import EXACT_ROWS_MESSAGE, PADDED_ROWS_MESSAGE

    assert (
        plan.measured_padding(f"INFO ready\nINFO {EXACT_ROWS_MESSAGE}: calls are not split for it\n")
        == "exact"
    )
    assert plan.measured_padding(f"INFO {PADDED_ROWS_MESSAGE} (--batch_padding bucket)\n") == "bucket"
    with pytest.raises(ValueError, match="neither"):
        plan.measured_padding("INFO warm-up done in 1.0 s (seconds per bucket: 1: 0.01)\n")
    path = tmp_path / "bench.json"
    for recorded, read in ((None, "bucket"), ("exact", "exact"), ("bucket", "bucket")):
        bench = synthetic_benchmark()
        if recorded:
            bench["batch_padding"] = recorded
        path.write_text(json.dumps(bench))
        assert plan.load_benchmark(path)["batch_padding"] == read
    path.write_text(json.dumps({**synthetic_benchmark(), "batch_padding": "mixed"}))
    with pytest.raises(ValueError, match="not run one way"):
        plan.load_benchmark(path)


def profile_search_argv(tmp_path, out, **profile: int) -> list[str]:
    """``plan --trace`` over a constant 20 req/s for 30 s with a synthetic CPU profile (calls of 20 / 30
    / 50 / 90 ms at 1 / 2 / 4 / 8 images, ``profile`` its other fields) and the synthetic benchmark,
    one candidate (max batch 8, minReplicas 1, target 4, panic 200%), written to ``out``."""
    from predictor.tools.simulate import CpuProfile

    prof = CpuProfile(((1, 0.02), (2, 0.03), (4, 0.05), (8, 0.09)), 0.008, decode_sigma=0.0, model_sigma=0.0,
                      model_threads=1, cores=2.0, **profile)  # fmt: skip
    (tmp_path / "prof.json").write_text(json.dumps(prof.to_json()))
    (tmp_path / "bench.json").write_text(json.dumps(synthetic_benchmark()))
    return ["--slo-p95-ms", "400", "--rate", "20", "--benchmark", str(tmp_path / "bench.json"),
            "--cpu-profile", str(tmp_path / "prof.json"), "--trace", "constant:20:30",
            "--search-max-batch", "8", "--search-min-replicas", "1", "--search-targets", "4",
            "--search-panic", "200", "--out", str(out)]  # fmt: skip


def test_the_planner_simulates_and_deploys_the_padding_asked_for(tmp_path, helm):
    """``--batch-padding bucket`` with a CPU profile: the simulated replicas pad (``auto`` would not on
    a CPU), and the overlay sets ``predictor.batchPadding``, which the chart renders as the flag; and
    the profile's one call in flight (a CPU server would decide its own at warm-up)."""
    out = tmp_path / "plan"
    argv = [*profile_search_argv(tmp_path, out), "--batch-padding", "bucket"]
    assert plan.main(argv) == 0
    summary = json.loads((out / "simulated" / "summary.json").read_text())
    assert summary["fleet"]["batch_padding"] == "bucket" and summary["pads_to_bucket"] is True
    overlay_path = out / "simulated" / "values-sim.yaml"
    assert yaml.safe_load(overlay_path.read_text())["predictor"] == {
        "maxBatchSize": 8,
        "modelCallsInFlight": 1,
        "batchPadding": "bucket",
    }
    proc = run_helm(helm, "template", "r", str(CHART), "-f", str(overlay_path))
    assert proc.returncode == 0, proc.stderr
    isvc = next(d for d in yaml.safe_load_all(proc.stdout) if d and d["kind"] == "InferenceService")
    assert "--batch_padding=bucket" in isvc["spec"]["predictor"]["containers"][0]["args"]


@pytest.mark.slow
def test_a_real_sweep_of_the_demo_model_gives_a_plan(demo_model_dir, tmp_path):
    """Sweep the demo model here (real servers on loopback) and plan: every cell measured without errors,
    and the chosen setting is a measured max batch size at a concurrency within the measured range
    (``plan.choose`` interpolates between measured levels, never beyond them) whose predicted p95 is
    within the SLO's headroom. Whether the
    predicted p95 holds on a fresh run is a timing question: ``make bench-plan`` (bench/plan_accuracy.py)
    measures it on a quiet machine."""
    out = tmp_path / "plan"
    args = ["--slo-p95-ms", "2000", "--rate", "50", "--model_dir", str(demo_model_dir), "--out", str(out),
            "--max-batch-sizes", "1,8", "--concurrency", "1,2,4,8", "--requests", "20"]  # fmt: skip
    assert plan.main(args) == 0
    chosen = json.loads((out / "plan.json").read_text())["plan"]
    bench = json.loads((out / "benchmark.json").read_text())
    cells = {(c["max_batch_size"], c["concurrency"]): c for c in bench["cells"]}
    assert set(cells) == {(b, c) for b in (1, 8) for c in (1, 2, 4, 8)}
    assert all(c["errors"] == 0 and c["requests"] == 20 for c in cells.values())
    # the servers' padding, read from their logs: what auto picks on this host (exact on a CPU)
    from predictor.serving.options import pads_to_bucket
    from predictor.ssd.detector import uses_gpu

    auto_pads = pads_to_bucket("auto", xla=False, gpu=uses_gpu)
    assert bench["batch_padding"] == ("bucket" if auto_pads else "exact")
    assert chosen["max_batch_size"] in (1, 8) and 1 <= chosen["concurrency"] <= 8
    assert chosen["predicted_p95_ms"] <= chosen["headroom"] * chosen["slo_p95_ms"]
    # the prediction is the fit of the measured cells: the same formula recomputed from benchmark.json
    fits = plan.fit(bench["cells"])
    assert chosen["predicted_p95_ms"] == pytest.approx(
        float(fits[chosen["max_batch_size"]].p95_ms(chosen["concurrency"])), rel=1e-9
    )


def test_a_profile_measured_with_two_calls_in_flight_is_planned_and_deployed_with_them(tmp_path, helm):
    """The profile records ``model_calls_in_flight`` 2 (bench.simulate_check): the simulated replicas run
    2 and the overlay sets ``predictor.modelCallsInFlight``, which the chart renders as the flag."""
    out = tmp_path / "plan"
    argv = profile_search_argv(tmp_path, out, model_calls_in_flight=2)
    assert plan.main(argv) == 0
    summary = json.loads((out / "simulated" / "summary.json").read_text())
    assert summary["fleet"]["model_calls_in_flight"] == 2
    overlay_path = out / "simulated" / "values-sim.yaml"
    predictor = yaml.safe_load(overlay_path.read_text())["predictor"]
    assert predictor == {"maxBatchSize": 8, "modelCallsInFlight": 2}
    proc = run_helm(helm, "template", "r", str(CHART), "-f", str(overlay_path))
    assert proc.returncode == 0, proc.stderr
    isvc = next(d for d in yaml.safe_load_all(proc.stdout) if d and d["kind"] == "InferenceService")
    args = isvc["spec"]["predictor"]["containers"][0]["args"]
    assert "--model_calls_in_flight=2" in args and "--max_batch_size=8" in args
