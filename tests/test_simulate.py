"""The fleet simulator and the autoscalers' rules, each against a hand-computed case (pure Python).

Rules and their sources: predictor/tools/autoscalers.py (Knative ``pkg/autoscaler/scaling/autoscaler.go``
``Scale``, Kubernetes ``pkg/controller/podautoscaler/{horizontal,replica_calculator}.go``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from plan_fixtures import write_linear_benchmark

from predictor.tools.autoscalers import (
    Hpa,
    HpaConfig,
    Kpa,
    KpaConfig,
    WindowAverage,
    replicas_for_average_value,
    replicas_for_utilization,
)
from predictor.tools.simulate import (
    FleetConfig,
    ServiceModel,
    Simulation,
    main,
    padded_cells,
    simulate,
    trace_rates,
)


# --------------------------------------------------------------------------------------- KPA
def test_kpa_target_is_min_of_target_and_cc_times_utilization():
    assert KpaConfig(target=32, container_concurrency=64).target_value == pytest.approx(22.4)
    assert KpaConfig(target=100, container_concurrency=10).target_value == pytest.approx(7.0)
    assert KpaConfig(target=100, container_concurrency=0, target_utilization=0.5).target_value == 50


def _kpa(**kw) -> Kpa:
    return Kpa(KpaConfig(target=10, target_utilization=1.0, **kw))


def test_kpa_stable_desired_is_ceil_of_stable_over_target():
    # ready 4, stable 31 -> ceil(3.1) = 4; panic 31 -> 4/4 = 1 < 2: no panic
    kpa = _kpa()
    assert kpa.desired(0, ready=4, stable=31, panic=31) == 4
    assert kpa.panic_time is None


def test_kpa_scale_down_is_at_most_halving_per_decision():
    # ready 8, nothing in flight: maxScaleDown = floor(8 / 2) = 4
    assert _kpa(min_scale=1).desired(0, ready=8, stable=0, panic=0) == 4


def test_kpa_scale_up_rate_limit():
    # maxScaleUpRate 1.5 at ready 2: ceil(3.0) = 3, although ceil(100 / 10) = 10 is wanted
    assert _kpa(max_scale_up_rate=1.5).desired(0, ready=2, stable=100, panic=100) == 3


def test_kpa_panic_enters_at_threshold_holds_max_and_leaves_after_stable_window():
    kpa = _kpa()
    # panic 50 -> dppc 5, 5 / ready 2 = 2.5 >= 200%: panic; stable 10 -> 1, panic wins: 5
    assert kpa.desired(0, ready=2, stable=10, panic=50) == 5
    assert kpa.panic_time == 0
    # still in panic (last over-threshold at 0, stable window 60 s): never below the panic maximum
    assert kpa.desired(30, ready=5, stable=10, panic=10) == 5
    # 60 s after the last over-threshold decision (strictly after): un-panic, stable rule again
    assert kpa.desired(60, ready=5, stable=10, panic=10) == 5
    assert kpa.desired(61, ready=5, stable=10, panic=10) == 2  # max(ceil(1), floor(5/2))
    assert kpa.panic_time is None


def test_kpa_panic_threshold_is_inclusive_and_configurable():
    # dppc 4 / ready 2 = 200%: panic (>=); at 300% threshold: not
    assert _kpa().desired(0, ready=2, stable=0, panic=40) == 4
    kpa = _kpa(panic_threshold_percentage=300)
    assert kpa.desired(0, ready=2, stable=0, panic=40) == 1  # stable: max(0, floor(2/2))
    assert kpa.panic_time is None


def test_kpa_scale_down_delay_keeps_the_max_of_the_window():
    kpa = _kpa(scale_down_delay_s=10, min_scale=1)
    assert kpa.desired(0, ready=1, stable=50, panic=0) == 5
    assert kpa.desired(4, ready=1, stable=10, panic=0) == 5  # 1 wanted, 5 within 10 s
    assert kpa.desired(10, ready=1, stable=10, panic=0) == 1  # the 5 at t=0 has left the window


def test_kpa_scale_to_zero_waits_for_the_grace_period():
    kpa = _kpa()  # min_scale 0, grace 30 s
    assert kpa.desired(0, ready=1, stable=0, panic=0) == 1
    assert kpa.desired(29, ready=1, stable=0, panic=0) == 1
    assert kpa.desired(30, ready=1, stable=0, panic=0) == 0
    assert kpa.desired(32, ready=0, stable=3, panic=3) == 1  # traffic again: zero_since resets


def test_window_average_divides_by_buckets_seen():
    w = WindowAverage()
    w.record(0, 10.0)
    w.record(1, 20.0)
    assert w.average(1, 6) == 15.0  # two buckets seen so far
    w.record(7, 60.0)
    assert w.average(7, 6) == pytest.approx(60.0 / 6)  # buckets 2..7
    assert w.average(20, 6) == 0.0


# --------------------------------------------------------------------------------------- HPA
def test_hpa_average_value_tolerance_and_ceil():
    assert replicas_for_average_value(2, 130, 64) == 2  # ratio 1.016: within 10%
    assert replicas_for_average_value(2, 141, 64) == 3  # ratio 1.10..: ceil(2.2) = 3
    assert replicas_for_average_value(2, 200, 64) == 4  # ceil(3.125)
    assert replicas_for_average_value(4, 0, 64) == 0


def test_hpa_utilization_with_unready_pods_on_scale_up():
    assert replicas_for_utilization([90, 90], 0, 60, current=2) == 3  # ratio 1.5 -> ceil(3.0)
    assert replicas_for_utilization([64, 64], 0, 60, current=2) == 2  # ratio 1.067: within tolerance
    # one unready pod counted at 0%: 180 / 3 / 60 = 1.0: within tolerance, keep the 3
    assert replicas_for_utilization([90, 90], 1, 60, current=3) == 3
    # 200 / 3 / 50 = 1.333 -> ceil(1.333 x 3) = 4
    assert replicas_for_utilization([100, 100], 1, 50, current=3) == 4
    # scale-down ignores unready pods: 20 / 60 -> ceil(0.333 x 2) = 1
    assert replicas_for_utilization([20, 20], 1, 60, current=3) == 1


def test_hpa_scale_down_stabilization_window():
    hpa = Hpa(HpaConfig(min_replicas=1, max_replicas=20))
    assert hpa.decide(0, current=10, desired=10) == 10
    assert hpa.decide(15, current=10, desired=2) == 10  # the 10 of t=0 is within 300 s
    assert hpa.decide(299, current=10, desired=2) == 10
    assert hpa.decide(301, current=10, desired=2) == 2  # t=0 left; -100% per 15 s allows it


def test_hpa_default_scale_up_policies():
    hpa = Hpa(HpaConfig(min_replicas=1, max_replicas=100))
    # max(+4 pods, +100%) from 2: max(6, 4) = 6
    assert hpa.decide(0, current=2, desired=20) == 6
    # 5 s later the +4 is within the 15 s period: start 2 -> max(6, 4): stays 6
    assert hpa.decide(5, current=6, desired=20) == 6
    # at 15 s the event of t=0 is out of the period: max(6 + 4, 12) = 12
    assert hpa.decide(15, current=6, desired=20) == 12


def test_hpa_pods_policy_and_bounds():
    from predictor.tools.autoscalers import HpaPolicy, HpaRules

    down = HpaRules(0.0, (HpaPolicy("Pods", 1, 60.0),))
    hpa = Hpa(HpaConfig(min_replicas=2, max_replicas=5, scale_down=down))
    assert hpa.decide(0, current=5, desired=0) == 4  # one pod per 60 s
    assert hpa.decide(30, current=4, desired=0) == 4  # already one in this period
    assert hpa.decide(61, current=4, desired=0) == 3
    assert Hpa(HpaConfig(min_replicas=2, max_replicas=5)).decide(0, current=4, desired=50) == 5


# --------------------------------------------------------------------------------------- service model
def test_service_model_from_cells():
    cells = [
        {"max_batch_size": 8, "concurrency": 1, "requests": 10, "p50_ms": 40.0, "p95_ms": 40.0 * math.e},
        {"max_batch_size": 8, "concurrency": 4, "requests": 10, "p50_ms": 100.0, "p95_ms": 100.0},
        {"max_batch_size": 1, "concurrency": 1, "requests": 10, "p50_ms": 999.0, "p95_ms": 999.0},
    ]
    m = ServiceModel.from_cells(cells, 8, "test", overlap=1)
    assert m.median_s[0] == pytest.approx(0.040)
    assert m.median_s[1] == pytest.approx(0.060)  # linear between c=1 and c=4
    assert m.median_s[3] == pytest.approx(0.100)
    assert m.median_s[7] == pytest.approx(0.180)  # +20 ms per request past c=4
    assert m.sigma[0] == pytest.approx(1 / 1.6448536269514722)
    assert m.sigma[3] == 0.0
    # two stages: a call of b takes latency(2b) / 2; a call of 2 is the c=4 cell: 100 / 2 ms
    m2 = ServiceModel.from_cells(cells, 8, "test", overlap=2)
    assert m2.median_s[0] == pytest.approx(0.060 / 2)
    assert m2.median_s[1] == pytest.approx(0.050)
    assert m2.median_s[3] == pytest.approx((0.100 + 0.020 * 4) / 2)
    # the c=4 cell's closed-loop throughput is kept: a call of 2 leaves the model every 50 ms
    assert 2 / m2.median_s[1] == pytest.approx(4 / 0.100)


def test_a_padded_benchmarks_cells_are_the_points_of_the_buckets_they_computed():
    """A padded server's cell of 6 clients (overlap 2: calls of 3 images) computed bucket 4's calls: it
    is the point of 8 clients, averaged with the 8-client cell; below one image (1 client) as it is.
    An exact-size benchmark keeps every cell where it was."""
    conc, (p50,) = padded_cells(np.array([1.0, 4.0, 6.0, 8.0]), (np.array([10.0, 40.0, 70.0, 90.0]),), 2.0,
                                (1, 2, 4, 8))  # fmt: skip
    assert conc.tolist() == [1.0, 4.0, 8.0] and p50.tolist() == [10.0, 40.0, 80.0]
    # past the largest bucket the extra clients queue: those cells stay where they were, not folded
    # into the top bucket's point (max batch 1, overlap 1: cells 1, 2, 4, 8 are four points)
    conc, (p50,) = padded_cells(np.array([1.0, 2.0, 4.0, 8.0]), (np.array([10.0, 20.0, 40.0, 80.0]),), 1.0,
                                (1,))  # fmt: skip
    assert conc.tolist() == [1.0, 2.0, 4.0, 8.0] and p50.tolist() == [10.0, 20.0, 40.0, 80.0]
    cells = [
        {"max_batch_size": 8, "concurrency": c, "requests": 10, "p50_ms": ms, "p95_ms": ms}
        for c, ms in ((2, 20.0), (6, 100.0), (8, 100.0))
    ]
    padded = ServiceModel.from_cells(cells, 8, "test", overlap=2, measured_padding="bucket")
    exact = ServiceModel.from_cells(cells, 8, "test", overlap=2, measured_padding="exact")
    # padded: the 6-client cell is bucket 4's (at 8 clients with the 8-client one), so 3 rows (6
    # clients) lie between the 2-client point (20 ms) and that one (100 ms): (20 + 80 x 4 / 6) / 2 ms;
    # exact: the 6-client cell itself, 100 / 2 ms. Bucket 4 (8 clients) is 50 ms in both.
    assert padded.median_s[2] == pytest.approx((0.020 + 0.080 * 4 / 6) / 2)
    assert exact.median_s[2] == pytest.approx(0.050)
    assert padded.median_s[3] == exact.median_s[3] == pytest.approx(0.050)
    # the device is the benchmark's to say (plan.measured_on_gpu), not the padding's: before the
    # exact-size change every CPU server padded
    assert not padded.gpu and not exact.gpu
    assert ServiceModel.from_cells(cells, 8, "test", overlap=2, measured_padding="bucket", gpu=True).gpu


def test_a_gpu_service_model_charges_a_calls_bucket_and_a_cpu_one_its_rows():
    """Calls of 10 ms per image (``median(b) = 10 b`` ms). Three requests at 0 wait the 2 ms batch wait
    and run as one call: on a GPU (``auto`` pads) bucket 4, 40 ms, done 0.042; with ``--batch_padding
    exact``, or on a CPU, 3 rows, 30 ms, done 0.032."""
    import dataclasses

    cpu = ServiceModel.parametric(0.0, 10.0, 0.0, 8)
    gpu = dataclasses.replace(cpu, gpu=True)
    done = lambda cfg, svc: [r.done for r in _run(cfg, svc, [0.0] * 3)]  # noqa: E731
    assert done(FleetConfig(mode="hpa"), gpu) == pytest.approx([0.042] * 3)
    assert done(FleetConfig(mode="hpa", batch_padding="exact"), gpu) == pytest.approx([0.032] * 3)
    assert done(FleetConfig(mode="hpa"), cpu) == pytest.approx([0.032] * 3)
    assert done(FleetConfig(mode="hpa", batch_padding="bucket"), cpu) == pytest.approx([0.042] * 3)


def test_the_simulated_servers_buckets_are_the_detectors():
    from predictor.ssd.detector import buckets_up_to
    from predictor.tools.simulate import server_buckets

    for max_batch in (1, 3, 8, 12, 32, 64, 128):
        assert server_buckets(max_batch) == buckets_up_to(max_batch)


def test_the_cli_refuses_exact_calls_with_xla(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--trace", "constant:1:5", "--batch_padding", "exact", "--xla", "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert "--batch_padding exact runs calls of any size" in capsys.readouterr().err


# --------------------------------------------------------------------------------------- engine
def _fixed(ms: float, max_batch: int) -> ServiceModel:
    return ServiceModel.parametric(ms, 0.0, 0.0, max_batch)


def _run(cfg: FleetConfig, svc: ServiceModel, times, horizon=5.0):
    return Simulation(cfg, svc).run(np.asarray(times, np.float64), horizon_s=horizon).requests


def test_batcher_waits_then_takes_the_oldest():
    cfg = FleetConfig(mode="hpa", max_batch_size=2, batch_wait_s=0.002, shed_standing_queue=False)
    reqs = _run(cfg, _fixed(10, 2), [0.0, 0.001, 0.005])
    # 0 and 0.001 fill a batch at 0.001 -> done 0.011; 0.005 waits for the model -> done 0.021
    assert [r.status for r in reqs] == ["200"] * 3
    assert [round(r.done, 6) for r in reqs] == [0.011, 0.011, 0.021]


def test_batch_wait_alone_starts_a_partial_batch():
    cfg = FleetConfig(mode="hpa", max_batch_size=4, batch_wait_s=0.002, shed_standing_queue=False)
    (req,) = _run(cfg, _fixed(10, 4), [0.0])
    assert req.done == pytest.approx(0.012)


def test_max_queue_images_refuses_with_503():
    cfg = FleetConfig(
        mode="hpa", max_batch_size=1, batch_wait_s=0, max_queue_images=2, shed_standing_queue=False
    )
    reqs = _run(cfg, _fixed(100, 1), [0.0, 0.01, 0.02, 0.03])
    assert [r.status for r in reqs] == ["200", "200", "503", "503"]
    assert reqs[2].done == pytest.approx(0.02)  # at once
    assert reqs[1].done == pytest.approx(0.2)


def test_request_timeout_answers_503_at_the_deadline():
    cfg = FleetConfig(mode="hpa", max_batch_size=1, batch_wait_s=0, request_timeout_s=0.05)
    reqs = _run(cfg, _fixed(100, 1), [0.0, 0.01])
    assert [(r.status, round(r.done, 6)) for r in reqs] == [("503", 0.05), ("503", 0.06)]


def test_knative_activator_holds_requests_past_container_concurrency():
    cfg = FleetConfig(mode="knative", max_batch_size=1, batch_wait_s=0, container_concurrency=1,
                      initial_replicas=2, kpa=KpaConfig(min_scale=2, max_scale=2))  # fmt: skip
    reqs = _run(cfg, _fixed(100, 1), [0.0, 0.0, 0.0])
    assert [round(r.done, 6) for r in reqs] == [0.1, 0.1, 0.2]
    assert [r.replica for r in reqs] == [0, 1, 0]
    # first available (cc <= 3): an idle replica 0 takes every request, none goes round to 1
    spaced = _run(cfg, _fixed(100, 1), [0.0, 0.2, 0.4])
    assert [r.replica for r in spaced] == [0, 0, 0]


def test_knative_round_robin_above_cc_3():
    cfg = FleetConfig(mode="knative", max_batch_size=1, batch_wait_s=0, container_concurrency=4,
                      initial_replicas=3, kpa=KpaConfig(min_scale=3, max_scale=3))  # fmt: skip
    reqs = _run(cfg, _fixed(10, 1), [0.0, 0.1, 0.2, 0.3])
    assert [r.replica for r in reqs] == [0, 1, 2, 0]


def test_scale_from_zero_pays_the_cold_start():
    cfg = FleetConfig(mode="knative", max_batch_size=1, batch_wait_s=0, cold_start_s=5.0, initial_replicas=0,
                      kpa=KpaConfig(min_scale=0, max_scale=3))  # fmt: skip
    (req,) = _run(cfg, _fixed(100, 1), [1.0], horizon=20)
    assert req.status == "200"
    assert req.done == pytest.approx(1.0 + 5.0 + 0.1)


def test_standard_mode_without_endpoints_fails_at_once():
    cfg = FleetConfig(mode="hpa", initial_replicas=0)
    (req,) = _run(cfg, _fixed(10, 1), [0.5])
    assert (req.status, req.done) == ("503", 0.5)


def test_kpa_adds_replicas_under_a_step_and_is_deterministic():
    cfg = FleetConfig(mode="knative", cold_start_s=5.0, kpa=KpaConfig(target=8, min_scale=1, max_scale=10))
    svc = ServiceModel.parametric(20, 5, 0.2, 32)
    rates = trace_rates("step:20:200:120:30")
    a = simulate(cfg, svc, rates, seed=3)
    b = simulate(cfg, svc, rates, seed=3)
    assert a.summary() == b.summary()
    assert simulate(cfg, svc, rates, seed=4).summary() != a.summary()
    before = max(t["replicas"] for t in a.timeline if t["t"] < 30)
    after = max(t["replicas"] for t in a.timeline if t["t"] >= 40)
    assert before == 1 and after > 3


def test_standing_queue_sheds_the_backlog():
    # one replica, 10 ms per call of 1: capacity 100 req/s, offered 300 req/s for 20 s
    cfg = FleetConfig(mode="hpa", max_batch_size=1, batch_wait_s=0, max_queue_images=64,
                      hpa=HpaConfig(min_replicas=1, max_replicas=1))  # fmt: skip
    svc = _fixed(10, 1)
    on = simulate(cfg, svc, trace_rates("constant:300:20"), seed=1).summary()
    cfg.shed_standing_queue = False
    off = simulate(cfg, svc, trace_rates("constant:300:20"), seed=1).summary()
    # without shedding, admitted requests wait for the 64-image queue (~640 ms); with it, ~2 calls
    assert off["p50_ms"] > 500
    assert on["p50_ms"] < 60


# --------------------------------------------------------------------------------------- traces, CLI
def test_traces(tmp_path):
    assert list(trace_rates("step:1:5:4")) == [1, 1, 5, 5]
    assert list(trace_rates("step:1:5:4:1")) == [1, 5, 5, 5]
    assert list(trace_rates("ramp:0:30:4")) == [0, 10, 20, 30]
    d = trace_rates("diurnal:10:5:100")
    assert d[0] == pytest.approx(5) and d[50] == pytest.approx(15)
    m = trace_rates("mmpp:1:9:500:10:5", seed=2)
    assert set(m) == {1.0, 9.0} and list(trace_rates("mmpp:1:9:500:10:5", seed=2)) == list(m)
    assert 0.2 < (m == 9).mean() < 0.5  # 5 / (10 + 5) = 1/3 of the time high
    (tmp_path / "t.csv").write_text("second,rate\n0,3\n1,4.5\n")
    assert list(trace_rates(f"csv:{tmp_path / 't.csv'}")) == [3.0, 4.5]
    with pytest.raises(ValueError):
        trace_rates("step:1")


def test_cli_writes_summary_timeline_and_plot(tmp_path, capsys):
    assert (
        main(["--trace", "step:5:20:40", "--mode", "keda", "--slo-p95-ms", "200", "--out", str(tmp_path)])
        == 0
    )
    import json

    summary = json.loads((tmp_path / "summary.json").read_text())["summary"]
    assert summary["statuses"]["200"] == summary["requests"]
    assert (tmp_path / "simulate.png").stat().st_size > 10_000
    assert (tmp_path / "timeline.csv").read_text().startswith("t,arrived,replicas")


def test_search_ranks_meeting_candidates_by_cost_and_writes_the_chart_overlay(tmp_path):
    import json

    import yaml

    args = ["--trace", "step:10:60:120:30", "--search", "--slo-p95-ms", "300", "--max-replicas", "8",
            "--search-min-replicas", "1,3", "--search-targets", "4,32", "--search-panic", "200",
            "--cost-per-replica-hour", "2", "--out", str(tmp_path)]  # fmt: skip
    assert main(args) == 0
    cands = json.loads((tmp_path / "search.json").read_text())
    assert len(cands) == 4
    meeting = [c for c in cands if c["meets"]]
    assert meeting and cands[: len(meeting)] == meeting  # meeting ones first
    assert [c["cost"] for c in meeting] == sorted(c["cost"] for c in meeting)
    for c in cands:
        assert c["cost"] == pytest.approx(2 * c["replica_hours"])
        assert c["meets"] == (c["p95_ms"] <= 300 and c["share_503"] <= 0.001)
    best = meeting[0]
    overlay = yaml.safe_load((tmp_path / "values-sim.yaml").read_text())
    assert overlay == {
        "predictor": {"maxBatchSize": 32},
        "autoscaling": {"minReplicas": best["min_replicas"], "maxReplicas": 8, "scaleMetric": "concurrency",
                        "scaleTarget": int(best["scale_target"]), "containerConcurrency": 64},
    }  # fmt: skip
    # every key is one of the chart's values
    from pathlib import Path

    chart = yaml.safe_load((Path(__file__).parents[1] / "helm/ssd-detector/values.yaml").read_text())
    for section, values in overlay.items():
        assert set(values) <= set(chart[section]), section
    # the summary written beside it is the best candidate's run
    summary = json.loads((tmp_path / "summary.json").read_text())["summary"]
    assert summary["replica_hours"] == pytest.approx(best["replica_hours"])


def test_kpa_rps_metric_target_ignores_container_concurrency_and_counts_arrivals():
    assert KpaConfig(target=200, container_concurrency=64, metric="rps").target_value == pytest.approx(140)
    # 45 req/s for 120 s, target 10 req/s per replica at 100%: the stable window asks ceil(4.5) = 5
    kpa = KpaConfig(target=10, target_utilization=1.0, metric="rps", min_scale=1, max_scale=20)
    cfg = FleetConfig(mode="knative", cold_start_s=1.0, kpa=kpa)
    result = simulate(cfg, _fixed(1, 32), trace_rates("constant:45:120"), seed=2)
    assert [t["replicas"] for t in result.timeline[-30:]] == [5] * 30


def test_planner_trace_searches_around_its_plan(tmp_path):
    import json

    import yaml

    from predictor.tools import plan

    write_linear_benchmark(tmp_path / "bench.json", 10.0)  # a replica of ~100 req/s at most
    out = tmp_path / "plan"
    argv = ["--slo-p95-ms", "300", "--rate", "40", "--benchmark", str(tmp_path / "bench.json"),
            "--trace", "step:10:80:120:30", "--cold-start-s", "2", "--out", str(out)]  # fmt: skip
    assert plan.main(argv) == 0
    chosen = json.loads((out / "plan.json").read_text())["plan"]
    cands = json.loads((out / "simulated" / "search.json").read_text())
    mins = {1, chosen["min_replicas"], 2 * chosen["min_replicas"]}
    targets = {float(chosen["scale_target"]), float(chosen["concurrency"])}
    assert {(c["min_replicas"], c["scale_target"], c["panic_threshold"]) for c in cands} == {
        (m, t, p) for m in mins for t in targets for p in (200.0, 400.0)
    }
    overlay = yaml.safe_load((out / "simulated" / "values-sim.yaml").read_text())
    best = next(c for c in cands if c["meets"])
    assert overlay["autoscaling"]["containerConcurrency"] == chosen["concurrency"]
    assert overlay["autoscaling"]["maxReplicas"] == max(chosen["max_replicas"], best["min_replicas"])
    assert (overlay["autoscaling"]["minReplicas"], overlay["autoscaling"]["scaleTarget"]) == (
        best["min_replicas"],
        best["scale_target"],
    )
    assert (out / "simulated" / "simulate.png").stat().st_size > 10_000


def test_keda_on_the_queue_is_blind_under_standing_queue_shedding():
    """docs/simulator.md: the shedding holds a replica's images at 2 x the efficient bucket (2 here:
    5 + 23 ms x batch), so the default threshold of 64 never triggers; one below the bound does."""
    svc = ServiceModel.parametric(5, 23, 0.15, 32)
    rates = trace_rates("step:20:200:120:30")

    def run(threshold: float, shed: bool = True) -> dict:
        hpa = HpaConfig(target=threshold, min_replicas=1, max_replicas=20)
        cfg = FleetConfig(mode="keda", hpa=hpa, shed_standing_queue=shed, hpa_metric="queue")
        return simulate(cfg, svc, rates, seed=1).summary()

    assert run(64)["peak_replicas"] == 1
    low = run(3)
    assert low["peak_replicas"] > 1
    assert run(64, shed=False)["peak_replicas"] > 1


def test_keda_on_the_offered_load_scales_through_the_shedding():
    """The chart's default trigger (load: offered images/s in % of a replica's capacity, 70 % per
    replica) sees the demand the shedding refuses: the same step scales out to about
    200 / (0.7 x capacity) replicas and the 503s end once they are up."""
    svc = ServiceModel.parametric(5, 23, 0.15, 32)  # efficient bucket 2: 2 / 51 ms = 39.2 images/s
    rates = trace_rates("step:20:200:120:30")
    hpa = HpaConfig(target=70, min_replicas=1, max_replicas=20)
    result = simulate(FleetConfig(mode="keda", hpa=hpa), svc, rates, seed=1)
    capacity = 2 / svc.median(2)
    assert result.summary()["peak_replicas"] == math.ceil(200 / (0.7 * capacity))  # 8
    late = [r for r in result.requests if r.arrival > 90]  # a minute after the step
    assert late and all(r.status == "200" for r in late)


def test_scale_down_removes_unready_replicas_first_and_bills_until_removal():
    sim = Simulation(FleetConfig(mode="hpa", cold_start_s=10.0), _fixed(10, 1))
    sim.scale_to(3)
    sim.replicas[0].ready = sim.replicas[2].ready = True
    sim.replicas[2].in_flight = 1  # busy: the idle ready one goes first among the ready
    sim.now = 4.0
    sim.scale_to(2)
    assert [r.gone_at for r in sim.replicas] == [None, 4.0, None]  # the one still starting
    sim.scale_to(1)
    assert [r.gone_at for r in sim.replicas] == [4.0, 4.0, None]
    assert sim.replica_seconds == 8.0


def test_docs_at_scale_tables_are_what_bench_at_scale_prints():
    from pathlib import Path

    from bench import at_scale

    doc = (Path(__file__).parents[1] / "docs" / "simulator.md").read_text()
    for dtype in ("float32", "bfloat16"):
        assert at_scale.table(12, dtype, 20000.0, 0.7, 60.0) in doc, (
            f"docs/simulator.md: rerun bench.at_scale {dtype}"
        )
    # 1080p over V1 on 12 cores: 12 x 40.7 img/s, CPU-bound below the GPU's 3,356
    assert "| 1080p JPEG, CPU decode (served, V1) | 488 (CPU) | 488 | 4,884 | 48,840 | 59 | 6 -> 59 |" in doc


@pytest.mark.parametrize("service", [["--service-ms", "10+10"], ["--benchmark", "bench.json"]])
def test_calls_in_flight_without_a_cpu_profile_are_refused(tmp_path, capsys, service):
    """A parametric or benchmark call runs at its alone-time however many others overlap it, so 2 calls
    in flight would be 2 servers (32 closed-loop clients, 10+10 ms, max batch 8: 89, 178, 267 req/s for
    1, 2, 3 before this refusal): refused by
    the CLI and by :func:`simulate`, naming the flag."""
    with pytest.raises(SystemExit) as exc:
        main(["--trace", "constant:5:10", *service, "--model_calls_in_flight", "2", "--out", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--model_calls_in_flight 2 needs --cpu-profile" in err
    cfg = FleetConfig(mode="hpa", model_calls_in_flight=2)
    with pytest.raises(ValueError, match="--model_calls_in_flight 2 needs --cpu-profile"):
        simulate(cfg, ServiceModel.parametric(10.0, 10.0, 0.0, 32), trace_rates("constant:5:10"))


def test_zero_calls_in_flight_is_refused_by_the_servers_own_rule(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--trace", "constant:5:10", "--model_calls_in_flight", "0", "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert "--model_calls_in_flight: must be a positive integer, got 0" in capsys.readouterr().err


def test_search_tries_max_replicas_and_the_overlay_caps_the_fleet_at_the_chosen_one(tmp_path):
    """80 req/s against replicas of at most 32 / (5 + 23 x 32 ms) = 43 req/s (the parametric model),
    minReplicas 1, 2 x maxReplicas 1, 3: (2, 1) is no setting (skipped), so three candidates. Capped at
    one replica the fleet is that replica for the whole 120 s (exactly 120 / 3600 replica-hours) and
    its queue grows for the whole trace (misses p95 <= 1 s); the cheapest that meets it may add
    replicas up to 3, and the overlay says maxReplicas 3."""
    import json

    import yaml

    args = ["--trace", "constant:80:120", "--search", "--slo-p95-ms", "1000", "--max-replicas", "8",
            "--search-min-replicas", "1,2", "--search-max-replicas", "1,3", "--search-targets", "4",
            "--search-panic", "200", "--cold-start-s", "2", "--out", str(tmp_path)]  # fmt: skip
    assert main(args) == 0
    cands = json.loads((tmp_path / "search.json").read_text())
    assert sorted((c["min_replicas"], c["max_replicas"]) for c in cands) == [(1, 1), (1, 3), (2, 3)]
    capped = next(c for c in cands if c["max_replicas"] == 1)
    assert capped["replica_hours"] == pytest.approx(120 / 3600)
    assert not capped["meets"]
    best = cands[0]
    assert best["meets"] and best["max_replicas"] == 3
    overlay = yaml.safe_load((tmp_path / "values-sim.yaml").read_text())
    assert overlay["autoscaling"]["maxReplicas"] == 3
    assert overlay["autoscaling"]["minReplicas"] == best["min_replicas"]
    assert "| maxReplicas |" in (tmp_path / "search.md").read_text()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["fleet"]["kpa"]["max_scale"] == 3
    assert summary["summary"]["peak_replicas"] <= 3


def test_rank_breaks_a_cost_and_p95_tie_with_the_lower_max_replicas():
    from predictor.tools.simulate import Candidate, rank

    wide = Candidate(8, 1, 4.0, 200.0, 100.0, 1.0, 0.0, 2.0, 2.0, True, 6)
    narrow = Candidate(8, 1, 4.0, 200.0, 100.0, 1.0, 0.0, 2.0, 2.0, True, 3)
    assert rank([wide, narrow]) == [narrow, wide]


def test_planner_trace_searches_max_replicas_when_given(tmp_path):
    """``plan --trace --search-max-replicas 1,3``: each candidate of minReplicas 1 is tried capped at 1
    and at 3 replicas (the plan's own maxReplicas is then not a candidate); search.json says which."""
    import json

    from predictor.tools import plan

    write_linear_benchmark(tmp_path / "bench.json", 10.0)
    out = tmp_path / "plan"
    argv = ["--slo-p95-ms", "300", "--rate", "40", "--benchmark", str(tmp_path / "bench.json"),
            "--trace", "constant:20:60", "--cold-start-s", "2", "--search-min-replicas", "1",
            "--search-max-replicas", "1,3", "--search-targets", "8", "--search-panic", "200",
            "--out", str(out)]  # fmt: skip
    plan.main(argv)
    cands = json.loads((out / "simulated" / "search.json").read_text())
    assert sorted(c["max_replicas"] for c in cands) == [1, 3]
    assert {c["min_replicas"] for c in cands} == {1}


_SEARCH = [
    "--slo-p95-ms",
    "500",
    "--trace",
    "constant:5:10",
    "--search-targets",
    "4",
    "--search-panic",
    "200",
]


def _tool_main(tool: str, argv: list[str]) -> int:
    from predictor.tools import plan

    if tool == "simulate":
        return main(["--mode", "knative", "--search", *_SEARCH, *argv])
    return plan.main(["--rate", "5", "--benchmark", "never-read.json", *_SEARCH, *argv])


@pytest.mark.parametrize("tool", ["simulate", "plan"])
def test_every_max_replicas_below_every_min_replicas_is_a_usage_error_naming_both_flags(
    tmp_path, capsys, tool
):
    """minReplicas 2, 3 x maxReplicas 1: no pair is a setting, so no candidate (was an IndexError in
    write_search); refused before anything runs (plan's benchmark file is never read), and by search()."""
    with pytest.raises(SystemExit) as exc:
        _tool_main(
            tool, ["--search-min-replicas", "2,3", "--search-max-replicas", "1", "--out", str(tmp_path)]
        )
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "every --search-max-replicas (1) is below every --search-min-replicas (2,3)" in err
    assert not any(tmp_path.iterdir())
    from predictor.tools.simulate import search

    svc = {8: ServiceModel.parametric(10.0, 10.0, 0.0, 8)}
    with pytest.raises(ValueError, match="nothing to search: every --search-max-replicas"):
        search(FleetConfig(mode="knative"), svc, trace_rates("constant:5:10"), slo_p95_ms=500,
               min_replicas=[2, 3], max_replicas=[1], scale_targets=[4.0],
               panic_thresholds=[200.0])  # fmt: skip


@pytest.mark.parametrize("tool", ["simulate", "plan"])
@pytest.mark.parametrize("value", ["0", "2.5", "-1", "1,0", ","])
def test_search_max_replicas_must_be_positive_integers(tmp_path, capsys, tool, value):
    """0 (Knative's 'no bound') was searched uncapped and written to the overlay as --max-replicas,
    2.5 was cut to 2, negatives skipped: each is refused naming the flag (the chart's maxReplicas is
    at least 1)."""
    with pytest.raises(SystemExit) as exc:
        _tool_main(tool, ["--search-max-replicas", value, "--out", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --search-max-replicas: must be integers >= 1 like 1,2,4, got {value!r}" in err


def test_search_of_an_unbounded_fleet_needs_max_replicas_candidates(tmp_path, capsys):
    """--max-replicas 0 is Knative's 'no bound': the search's default maxReplicas (the fleet's, at
    least the candidate's minReplicas) pinned each candidate at its minReplicas; refused."""
    with pytest.raises(SystemExit) as exc:
        _tool_main("simulate", ["--max-replicas", "0", "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert "--search with --max-replicas 0 (no bound) and no --search-max-replicas" in capsys.readouterr().err


def test_the_committed_day_search_page_has_search_tables_columns():
    """docs/simulator-day-search.md is search.md as bench.simulate_day copied it: its header and every
    row have the columns search_table writes now (it lagged one column behind once)."""
    from pathlib import Path

    from predictor.tools.simulate import search_table

    page = (Path(__file__).parents[1] / "docs/simulator-day-search.md").read_text().splitlines()
    head = search_table([]).splitlines()
    start = page.index(head[0])
    assert page[start + 1] == head[1]
    rows = [line for line in page[start + 2 :] if line.startswith("|")]
    assert rows and {row.count("|") for row in rows} == {head[0].count("|")}


@pytest.mark.parametrize("tool", ["simulate", "plan"])
@pytest.mark.parametrize(
    ("flag", "value", "rule"),
    [
        ("--search-max-batch", "2.5", "must be integers >= 1"),  # was cut to 2 by simulate
        ("--search-targets", "8,x", "must be positive numbers"),  # was a ValueError traceback
        ("--search-targets", "0", "must be positive numbers"),
        ("--search-panic", "-200", "must be positive numbers"),
        ("--search-min-replicas", "-1", "must be integers >= 0"),
    ],
)
def test_bad_search_flags_are_usage_errors_naming_the_flag(tmp_path, capsys, tool, flag, value, rule):
    """Each search flag's bad value: exit 2 and argparse's message naming the flag, before anything runs."""
    with pytest.raises(SystemExit) as exc:
        _tool_main(tool, [flag, value, "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert f"argument {flag}: {rule}" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("tool", ["simulate", "plan"])
def test_search_min_replicas_range_is_the_charts(tool):
    """minReplicas 0 (scale to zero) is a candidate in both tools, as the chart's schema allows it."""
    import json
    from pathlib import Path

    from predictor.tools import plan, simulate

    schema = json.loads((Path(__file__).parents[1] / "helm/ssd-detector/values.schema.json").read_text())
    floor = _find_key(schema, "minReplicas")["minimum"]
    parser = simulate.build_parser() if tool == "simulate" else plan.build_parser()
    required = ["--trace", "constant:5:10"] if tool == "simulate" else []
    args = parser.parse_args([*required, "--search-min-replicas", f"{floor},2"])
    assert floor == 0 and args.search_min_replicas == [0, 2]
    with pytest.raises(SystemExit):
        parser.parse_args([*required, "--search-min-replicas", str(floor - 1)])


def _find_key(node, key):
    """The first value under ``key`` anywhere in a JSON tree (the schema nests it under autoscaling)."""
    if isinstance(node, dict):
        if key in node:
            return node[key]
        node = list(node.values())
    if isinstance(node, list):
        for child in node:
            found = _find_key(child, key)
            if found is not None:
                return found
    return None
