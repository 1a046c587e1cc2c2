"""bench/simulate_check.py's pure parts: the CPU profile's request work from the servers' threads' CPU,
the refusal's share of the event loop, the generator's lag replayed, and the 20% checks; each against a
hand-computed case (no server)."""

from __future__ import annotations

import json
import math

import pytest

from bench.simulate_check import measured_work, simulate_replay, thread_costs, within
from predictor.tools.simulate import CpuProfile


def _phase(
    ok: int,
    refused: int,
    loop_cpu_s: float,
    client_cpu_s: float = 0.0,
    rows: int = 0,
    decode_cpu_s: float = 0.0,
) -> dict:
    metrics = {
        'ssd_requests_total{protocol="v1",status="200"}': float(ok),
        'ssd_requests_total{protocol="v1",status="503"}': float(refused),
        "cpu_s:event_loop": loop_cpu_s,
        "cpu_s:decode": decode_cpu_s,
    }
    return {"server_metrics": metrics, "client_cpu_s": client_cpu_s, "rows": [[0, 0, 0, "200"]] * rows}


def _report() -> dict:
    # loop CPU = a x 200s + b x 503s: 0.2 = 100 a; 0.15 = 50 a + 100 b -> a = 2 ms, b = 0.5 ms;
    # decode 0.4 + 0.2 s over 150 200s: 4 ms
    phases = [_phase(100, 0, 0.2, 0.05, 100, 0.4), _phase(50, 100, 0.15, 0.06, 150, 0.2)]
    return {"scenarios": {"overload": {"phases": phases}}}


def test_the_threads_costs_per_request_are_fitted_from_the_phases_cpu():
    costs = thread_costs(_report())
    assert costs == pytest.approx({"loop_s": 0.002, "loop_refused_s": 0.0005, "decode_s": 0.004})
    # no refusals anywhere: the whole loop work counts before the middleware's check
    only = thread_costs({"scenarios": {"s": {"phases": [_phase(100, 0, 0.2, decode_cpu_s=0.3)]}}})
    assert only == pytest.approx({"loop_s": 0.002, "loop_refused_s": 0.002, "decode_s": 0.003})
    assert thread_costs({"scenarios": {"s": {"phases": [{"measured": {}}]}}}) is None


def test_the_request_work_is_split_as_the_servers_threads_spent_it():
    """Under the phases' load (_report) the loop costs 2 ms per 200, 0.5 ms per refusal, decoding 4 ms
    (at concurrency 1 more: 3 and 5 ms, not used); p50 30 ms = call 17 + batch wait 2 + loop 2 +
    decode 4 + 5 ms outside the server. The loop: 0.5 ms up to the middleware, the other 1.5 half
    before admission, half after (0.75 ms each).
    Latencies 17 ms x 10 and 27 ms x 10, less the fixed 7 ms, over their median (22 - 7): 2/3 and
    4/3, quantile 0.5 between them. Generator: the second phase's 0.06 s CPU over 150 requests."""
    c1 = {
        "p50_ms": 30.0,
        "latencies_ms": [17.0] * 10 + [27.0] * 10,
        "server_metrics": {
            'ssd_request_seconds_count{protocol="v1"}': 100.0, "cpu_s:event_loop": 0.3, "cpu_s:decode": 0.5,
        },
    }  # fmt: skip
    base = CpuProfile(((1, 0.017), (2, 0.03)), 0.0068)
    prof = measured_work(base, c1, _report(), batch_wait_ms=2.0)
    assert prof.decode_s == pytest.approx(0.004)
    assert (prof.loop_head_s, prof.loop_in_s, prof.loop_out_s) == pytest.approx((0.0005, 0.00075, 0.00075))
    assert prof.net_s == pytest.approx(0.005)
    assert prof.spread[0] == pytest.approx(2 / 3, abs=1e-4) and prof.spread[-1] == pytest.approx(
        4 / 3, abs=1e-4
    )
    assert prof.spread[20] == pytest.approx(1.0, abs=1e-4)
    assert prof.client_s == pytest.approx(0.0004)


def test_the_generators_lag_is_replayed_and_latency_counts_from_due():
    """One replica, no spread: decode 10 ms, call 20 ms, batch wait 2 ms: 32 ms from arrival. Due at
    0.0 but sent at 0.1: answered at 0.132, 132 ms after it was due."""
    prof = CpuProfile(((1, 0.02),), 0.01, decode_sigma=0.0, model_sigma=0.0, cores=2.0)
    (rows,), _ = simulate_replay(prof, 1, None, [0.0], [0.0], 1.0, 0, sent=[0.1])
    assert rows == [(0.0, pytest.approx(0.132), "200")]
    (rows,), _ = simulate_replay(prof, 1, None, [0.0], [0.0], 1.0, 0)
    assert rows == [(0.0, pytest.approx(0.032), "200")]


def test_within_twenty_percent():
    real = {"p50_ms": 100.0, "p95_ms": 200.0, "throughput_rps": 50.0, "n503": 0}
    sim = {"p50_ms": 120.0, "p95_ms": 150.0, "throughput_rps": 41.0, "n503": 0}
    # +20% within, -25% not, -18% within, no 503s on either side within; 1 against 0 is not
    assert within(real, sim) == ["p50", "throughput", "503s"]
    assert within(real, {**sim, "n503": 1}) == ["p50", "throughput"]


def _lone_client_cell() -> dict:
    """A concurrency-1 cell: p50 40 ms; 100 requests, 100 one-image calls that took 2.55 s in all; the
    event loop's and decode threads' CPU 0.2 s and 0.4 s (2 ms and 4 ms a request)."""
    return {
        "p50_ms": 40.0,
        "server_metrics": {
            'ssd_request_seconds_count{protocol="v1"}': 100.0, "cpu_s:event_loop": 0.2, "cpu_s:decode": 0.4,
            "ssd_batch_size_count": 100.0, "ssd_batch_size_sum": 100.0, "ssd_batch_seconds_sum": 2.55,
        },
    }  # fmt: skip


def test_model_calls_take_the_served_bucket_1_calls_median_and_the_batcher_decides_with_the_warm_up():
    """Warm-up: bucket 1 17 ms, 2 30 ms (its fastest of four runs). The concurrency-1 cell's 100 calls
    of one image took 2.55 s: 25.5 ms each, 1.5 times the warm-up's; no latencies, so no spread. Calls
    take 25.5 and 45 ms, the batcher's rule keeps 17 and 30; p50 40 ms = 25.5 + 2 + loop 2 + decode 4
    + 6.5 ms outside the server."""
    c1 = _lone_client_cell()
    base = CpuProfile(((1, 0.017), (2, 0.03)), 0.0068, one_core_bucket_s=((1, 0.03), (2, 0.05)))
    prof = measured_work(base, c1, _report(), batch_wait_ms=2.0)
    assert dict(prof.bucket_s) == pytest.approx({1: 0.0255, 2: 0.045})
    assert prof.rule_bucket_s == ((1, 0.017), (2, 0.03))
    assert dict(prof.one_core_bucket_s) == pytest.approx({1: 0.045, 2: 0.075})  # p unchanged
    assert prof.parallel_fraction(2) == pytest.approx(base.parallel_fraction(2))
    assert prof.net_s == pytest.approx(0.0065)
    assert prof.batcher(2, pads=True).efficient_bucket() == base.batcher(2, pads=True).efficient_bucket()


def test_the_idle_cost_comes_from_call_load_and_the_lone_clients_calls_are_counted_without_it():
    """call_load's one-image calls: 12.5 ms back to back, 13.0 after 5 ms idle, 20.0 after 30 ms: a call
    adds 0.5 ms after 5 ms, 7.5 ms after 30 (none below back to back: 11 ms after 5 counts 0).
    The served test above (p50 40 ms, calls 25.5 ms) with that table: the model idled 40 - 25.5 =
    14.5 ms between the lone client's calls, which added 0.5 + (9.5 / 25) x 7 = 3.16 ms, so the calls'
    own median is 22.34 ms (22.34 / 17 times the warm-up's: bucket 2 30 x 22.34 / 17 ms); outside
    the server still 40 - 22.34 - 3.16 - 2 - 2 - 4 = 6.5 ms."""
    from bench.simulate_check import idle_call_of

    table = idle_call_of({"gap_ms": {"0": 12.5, "5": 13.0, "30": 20.0}})
    assert [g for g, _ in table] == pytest.approx([0.005, 0.03])
    assert [e for _, e in table] == pytest.approx([0.0005, 0.0075])
    assert idle_call_of({"gap_ms": {"0": 12.5, "5": 11.0}}) == ((0.005, 0.0),)
    assert idle_call_of(None) is None and idle_call_of({"gap_ms": {"5": 13.0}}) is None
    c1 = _lone_client_cell()
    base = CpuProfile(((1, 0.017), (2, 0.03)), 0.0068, idle_call_s=table)
    prof = measured_work(base, c1, _report(), batch_wait_ms=2.0)
    assert dict(prof.bucket_s) == pytest.approx({1: 0.02234, 2: 0.03 * 22.34 / 17}, abs=1e-7)
    assert prof.net_s == pytest.approx(0.0065)


def test_the_linger_comes_from_the_calls_beside_call_loads_open_loop_stream():
    """80 requests per second, each 2 ms of loop and 2 ms of decode (w = 4 ms). Bucket 8: alone 60 ms,
    one core 120, beside the stream 90: out of step (1 - 60/90) / (1 - 60/120) = 2/3 of the time, so
    ln(3) / 80 - 0.004 = 9.73 ms; bucket 16: 100, 200, 200: all the time (f capped at 0.99): ln(100) /
    80 - 0.004 = 53.57 ms; median 31.65 ms. Bucket 1 (one core 11 ms, not 1.2 x its 10) and the
    stream that kept its images ("held") are not used."""
    from bench.simulate_check import linger_of

    timings = {
        "alone": {"1": {"wall_ms": 10.0}, "8": {"wall_ms": 60.0}, "16": {"wall_ms": 100.0}},
        "decode_alone_ms": 2.0, "loop_ms": 2.0,
        "open": {
            "80": {"decodes_per_s": 80.0, "calls": {"1": {"wall_ms": 30.0}, "8": {"wall_ms": 90.0},
                                                    "16": {"wall_ms": 200.0}}},
            "80 held 1 s": {"decodes_per_s": 80.0, "calls": {"8": {"wall_ms": 500.0}}},
        },
    }  # fmt: skip
    one_core = {"1": 0.011, "8": 0.12, "16": 0.2}
    expected = (math.log(3) / 80 - 0.004 + math.log(100) / 80 - 0.004) / 2
    assert linger_of(timings, one_core) == pytest.approx(expected)
    # while recording, the one-core timings are keyed by int (time_buckets), once saved by str
    assert linger_of(timings, {int(n): t for n, t in one_core.items()}) == pytest.approx(expected)
    assert linger_of(None, one_core) == 0.0 and linger_of(timings, None) == 0.0


def test_disturbed_call_load_timings_turn_both_rules_off():
    """The quiet 00:30 run: one-image calls 12.5 ms back to back, 13.0 after 5 ms idle, 20.0 after 30;
    calls alone of 8 and 16 images on 1.8 of 2 cores: usable. The 00:45 run: 17.0, 20.0, 16.9 (the
    cost falls by 3.1 ms from 5 ms idle to 30); with calls alone on 1.4 cores (a starved process; that
    run's were not kept), both reasons, and a profile built from it has neither rule, as a report
    without call_load."""
    from bench.simulate_check import call_load_disturbed, idle_call_of, profile_of

    def timings(gaps: dict[str, float], cores: float) -> dict:
        alone = {n: {"wall_ms": w, "user_ms": cores * w - 1.0, "sys_ms": 1.0} for n, w in (("1", 11.2),
                 ("8", 59.0), ("16", 108.0))}  # fmt: skip
        alone["1"]["user_ms"] = 0.1  # one image: not counted
        return {"gap_ms": gaps, "alone": alone}

    quiet = timings({"0": 12.5, "5": 13.0, "30": 20.0}, cores=1.8)
    assert call_load_disturbed(quiet, 2) == []
    assert call_load_disturbed(None, 2) == []
    assert idle_call_of(quiet) is not None
    disturbed = timings({"0": 17.0, "5": 20.0, "30": 16.9}, cores=1.4)
    assert call_load_disturbed(disturbed, 2) == [
        "one-image call after 30 ms idle 16.9 ms, after 5 ms 20 ms",
        "calls alone used 1.40 of 2 cores (median)",
    ]
    assert call_load_disturbed(timings({"0": 17.0, "5": 20.0, "30": 19.1}, cores=1.51), 2) == []
    assert len(call_load_disturbed(timings({"0": 17.0, "5": 20.0, "30": 18.9}, cores=1.49), 2)) == 2
    report = {
        "benchmark": {"cells": [{"concurrency": 1, "p50_ms": 30.0}]},
        "warmup_bucket_s": [{"1": 0.02, "2": 0.04}],
        "placement": [[0, 1]],
        "profile": {"source": "test"},
    }
    assert profile_of({**report, "call_load": quiet}).idle_call_s == idle_call_of(quiet)
    assert profile_of({**report, "call_load": disturbed}).idle_call_s is None
    assert profile_of({**report, "call_load": disturbed}) == profile_of(report)


def test_checks_table_counts_the_checks_within_20_percent_in_two_replays():
    from bench.simulate_check import checks_table

    real = {"p50_ms": 100.0, "p95_ms": 200.0, "throughput_rps": 50.0, "n503": 10}
    old = {"p50_ms": 50.0, "p95_ms": 100.0, "throughput_rps": 50.0, "n503": 0}
    new = {"p50_ms": 90.0, "p95_ms": 230.0, "throughput_rps": 52.0, "n503": 9}

    def report(sim: dict) -> dict:
        return {"scenarios": {"step": {"phases": [{"rate": 20.0, "measured": real, "simulated": sim}]}}}

    table = checks_table(report(old), report(new)).splitlines()
    assert table[2] == "| step | 20.0 | throughput | p50 p95 throughput 503s |"
    assert table[3] == "| all | | 1 of 4 | 4 of 4 |"


def test_arrivals_are_laid_end_to_end_with_when_they_were_sent():
    from bench.loadgen import PhaseResult
    from bench.simulate_check import arrivals_of

    # phase 1 (offset 3 after its warm-up): a warm-up request due -1 sent -0.9, one due 0.5 sent 0.6;
    # phase 2 (offset 8): due 0.2 sent 0.25
    first = PhaseResult(5.0, requests=[(0.5, 0.6, 0.7, "200")], warmup=[(-1.0, -0.9, -0.8, "200")])
    second = PhaseResult(5.0, requests=[(0.2, 0.25, 0.3, "503")])
    due, sent = arrivals_of([first, second], [3.0, 8.0])
    assert due == pytest.approx([2.0, 3.5, 8.2]) and sent == pytest.approx([2.1, 3.6, 8.25])


def test_a_cell_whose_simulated_calls_are_not_its_real_calls_size_scales_nothing():
    """The same lone client on 8 cores, simulated in one-image calls of 10 ms; the servers' calls in
    that cell: 100 of 3 images (a size the simulation did not run) in 6 s, 20 ms per image. Per image a
    3-image call is not a 1-image one, so the cell says nothing of bucket 1 (more than 25% apart): the
    buckets keep their times. Scaled by it instead, as before, pass after pass would compound it."""
    from bench.simulate_check import saturated_calls

    prof = CpuProfile(((1, 0.01), (2, 0.02)), 0.001, decode_sigma=0.0, model_sigma=0.0, cores=8.0)
    metrics = {"ssd_batch_size_sum": 300.0, "ssd_batch_size_count": 100.0, "ssd_batch_seconds_sum": 6.0}
    report = {"benchmark": {"cells": [{"concurrency": 1, "server_metrics": metrics}]}, "replicas": 1,
              "shared_cores": None}  # fmt: skip
    assert dict(saturated_calls(prof, report).bucket_s) == pytest.approx({1: 0.01, 2: 0.02})
    metrics["ssd_batch_size_count"] = 300.0  # calls of 1, as simulated: scaled 2x
    assert dict(saturated_calls(prof, report).bucket_s) == pytest.approx({1: 0.02, 2: 0.04})


def test_amdahls_p_comes_from_one_processes_pair_of_timings():
    """Warm-up (served) calls 20 and 40 ms; the detector alone on the replica's 2 cores 10 and 20 ms,
    on one core 18 and 36 ms. p from the alone pair: t2 / t1 = 20 / 36 = 1 - p + p / 2, p = 8/9, on
    the warm-up's scale (one-core 36 and 72 ms). Served against one-core alone (40 > 36) said p = 0."""
    from bench.simulate_check import profile_of

    report = {
        "benchmark": {"cells": [{"concurrency": 1, "p50_ms": 30.0}]},
        "warmup_bucket_s": [{"1": 0.02, "2": 0.04}],
        "bucket_s_alone": {"1": 0.01, "2": 0.02},
        "bucket_s_one_core": {"1": 0.018, "2": 0.036},
        "placement": [[0, 1]],
        "profile": {"source": "test"},
    }
    prof = profile_of(report)
    assert dict(prof.one_core_bucket_s) == pytest.approx({1: 0.036, 2: 0.072})
    assert prof.parallel_fraction(2) == pytest.approx(8 / 9)
    assert prof.lockstep  # the validation's replicas run their calls in lockstep (docs/simulator.md)


def test_model_calls_are_as_slow_per_image_as_in_the_saturated_closed_loop_cell():
    """One client on 8 cores (nothing shares them, no spread): every simulated call is one image of
    the bucket-1 time, 10 ms. The servers' calls in that cell took 2 s for 100 images: 20 ms each, so
    every bucket takes twice as long; the batcher still decides with the warm-up's."""
    from bench.simulate_check import saturated_calls

    prof = CpuProfile(((1, 0.01), (2, 0.02)), 0.001, decode_sigma=0.0, model_sigma=0.0, cores=8.0)
    cell = {"concurrency": 1, "server_metrics": {"ssd_batch_size_sum": 100.0, "ssd_batch_seconds_sum": 2.0}}
    report = {"benchmark": {"cells": [cell]}, "replicas": 1, "shared_cores": None}
    out = saturated_calls(prof, report)
    assert dict(out.bucket_s) == pytest.approx({1: 0.02, 2: 0.04})
    assert out.rule_bucket_s == ((1, 0.01), (2, 0.02))


def test_each_bucket_is_scaled_by_the_cells_of_its_call_size():
    """Cells whose real calls averaged 1 and 4 images were 2x and 1x the simulated: bucket 2 gets
    2 - (1/3), bucket 8 (past the cells) the 4-image cell's 1."""
    from bench.simulate_check import bucket_scales, per_bucket_calls

    scale = bucket_scales([(4.0, 1.0), (1.0, 2.0)], (1, 2, 4, 8))
    assert scale == pytest.approx({1: 2.0, 2: 5 / 3, 4: 1.0, 8: 1.0})
    prof = CpuProfile(((1, 0.01), (2, 0.02), (4, 0.03), (8, 0.05)), 0.001)
    out = per_bucket_calls(prof, scale)
    assert dict(out.bucket_s) == pytest.approx({1: 0.02, 2: 0.02 * 5 / 3, 4: 0.03, 8: 0.05})
    assert out.rule_bucket_s == prof.bucket_s


def test_each_bucket_is_calibrated_on_the_loaded_cell_of_its_size():
    """8 cores (nothing shares them), no spread, decode 1 ms on 2 threads: 2 closed-loop clients always
    make calls of 2 (20 ms alone: 10 ms per image), 4 clients calls of 4 (40 ms: 10 ms). The servers'
    calls there took 15 and 12 ms per image, so bucket 2 (and bucket 1, below the cells) is 1.5x,
    bucket 4 1.2x; the next passes find the simulated cells as slow as the real ones and change
    nothing. The concurrency-1 cell (no other request beside a call) is not used."""
    from bench.simulate_check import saturated_calls

    prof = CpuProfile(((1, 0.01), (2, 0.02), (4, 0.04)), 0.001, decode_sigma=0.0, model_sigma=0.0, cores=8.0)

    def cell(c: int, calls: int, images: int, seconds: float) -> dict:
        metrics = {"ssd_batch_size_sum": float(images), "ssd_batch_size_count": float(calls),
                   "ssd_batch_seconds_sum": seconds}  # fmt: skip
        return {"concurrency": c, "server_metrics": metrics}

    cells = [cell(1, 100, 100, 5.0), cell(2, 100, 200, 3.0), cell(4, 50, 200, 2.4)]
    report = {"benchmark": {"cells": cells}, "replicas": 1, "shared_cores": None}
    out = saturated_calls(prof, report)
    assert dict(out.bucket_s) == pytest.approx({1: 0.015, 2: 0.03, 4: 0.048})
    assert out.rule_bucket_s == prof.bucket_s


def test_call_cores_are_the_models_cpu_over_the_calls_time():
    """A 10 s phase (2 s warm-up before it): 50 calls of 4 images took 3 s; model and pool threads
    spent 1.2 + 1.8 s of CPU: 15 ms per image, 1.0 core per call; decode and loop 1.6 s over the calls'
    3 s: 0.53; every thread 4.6 s over 12 s: 0.38 cores. A cell: no span, so no total."""
    from bench.simulate_check import call_cores

    m = {"ssd_batch_size_count": 50.0, "ssd_batch_size_sum": 200.0, "ssd_batch_seconds_sum": 3.0,
         "cpu_s:model": 1.2, "cpu_s:other": 1.8, "cpu_s:decode": 1.0, "cpu_s:event_loop": 0.6}  # fmt: skip
    report = {
        "benchmark": {"cells": [{"concurrency": 8, "server_metrics": m}]},
        "scenarios": {
            "step": {"seconds": 10.0, "offsets": [2.0], "phases": [{"rate": 40.0, "server_metrics": m}]}
        },
    }
    lines = call_cores(report).splitlines()
    assert lines[2] == "| closed loop | c=8 | 4.00 | 60.0 | 15.0 | 1.00 | 0.53 | - | - | - |"
    assert lines[3] == "| step | 40.0 req/s | 4.00 | 60.0 | 15.0 | 1.00 | 0.53 | 0.38 | - | - |"
    # recorded since 2026-12-08: the model's system seconds 0.3 + 0.45 of its 3.0 s (0.25) and its
    # 6000 + 2000 minor faults over 200 images (40 per image); the decode's are not the model's
    m |= {"sys_s:model": 0.3, "sys_s:other": 0.45, "sys_s:decode": 0.5, "faults:model": 6000.0,
          "faults:other": 2000.0, "faults:decode": 9000.0}  # fmt: skip
    assert call_cores(report).splitlines()[2].endswith("| 0.53 | - | 0.25 | 40 |")


def test_the_plan_inputs_record_the_calls_in_flight_the_calls_were_measured_with(tmp_path):
    """A run with ``--model_calls_in_flight 2``: the profile written for ``make simulate-day`` says 2, so
    the planner replays (and deploys) 2 calls in flight; a report from before it was recorded: 1."""
    from bench.simulate_check import profile_of, write_plan_inputs

    report = {
        "benchmark": {"cells": [{"concurrency": 1, "p50_ms": 30.0}]},
        "warmup_bucket_s": [{"1": 0.02, "2": 0.04}],
        "placement": [[0, 1]],
        "profile": {"source": "test"},
        "machine": {"cpu": "test"},
    }
    assert profile_of(report).model_calls_in_flight == 1
    report["model_calls_in_flight"] = 2
    report["profile"] = profile_of(report).to_json()
    write_plan_inputs(report, tmp_path / "profile.json", None)
    written = json.loads((tmp_path / "profile.json").read_text())
    assert written["model_calls_in_flight"] == 2
    assert CpuProfile.from_json(written).model_calls_in_flight == 2


def test_points_of_the_same_call_size_are_averaged_before_interpolating():
    """Two cells whose calls both averaged 2 images (scales 1 and 3) count as one point of 2; with the
    4-image point (1): bucket 1 (below) 2, bucket 3 halfway 1.5."""
    from bench.simulate_check import bucket_scales

    scale = bucket_scales([(2.0, 1.0), (4.0, 1.0), (2.0, 3.0)], (1, 2, 3, 4))
    assert scale == pytest.approx({1: 2.0, 2: 2.0, 3: 1.5, 4: 1.0})


def test_zero_calls_in_flight_is_refused_by_the_servers_own_rule(tmp_path, capsys):
    from bench.simulate_check import main

    with pytest.raises(SystemExit) as exc:  # (--replay of no report: never starts a server)
        main(["--model_calls_in_flight", "0", "--replay", "--out", str(tmp_path / "none.json")])
    assert exc.value.code == 2
    assert "--model_calls_in_flight: must be a positive integer, got 0" in capsys.readouterr().err


def test_a_replay_gives_each_replica_its_own_warm_up_and_the_plan_inputs_the_mean(tmp_path):
    """Two servers' warm-ups (the report's ``warmup_bucket_s``, in start order = round-robin order):
    replica i decides with warm-up i; the profile written for ``make simulate-day`` has none of them
    (a replica to come decides with its own warm-up: the mean, 1: 15 ms, 2: 25 ms, stands for it)."""
    from bench.simulate_check import profile_of, write_plan_inputs

    report = {
        "benchmark": {"cells": [{"concurrency": 1, "p50_ms": 30.0}]},
        "warmup_bucket_s": [{"1": 0.01, "2": 0.02}, {"1": 0.02, "2": 0.03}],
        "placement": [[0], [1]],
        "profile": {"source": "test"},
        "machine": {"cpu": "test"},
    }
    prof = profile_of(report)
    assert prof.replica_rule_bucket_s == (((1, 0.01), (2, 0.02)), ((1, 0.02), (2, 0.03)))
    assert dict(prof.rule_bucket_s or prof.bucket_s) == pytest.approx({1: 0.015, 2: 0.025})
    assert prof.rule_for(1) == ((1, 0.02), (2, 0.03))
    report["profile"] = prof.to_json()
    write_plan_inputs(report, tmp_path / "profile.json", None)
    planned = CpuProfile.from_json(json.loads((tmp_path / "profile.json").read_text()))
    assert planned.replica_rule_bucket_s is None
    assert dict(planned.rule_for(1)) == pytest.approx({1: 0.015, 2: 0.025})
    one = profile_of({**report, "warmup_bucket_s": report["warmup_bucket_s"][:1], "placement": [[0, 1]]})
    assert one.replica_rule_bucket_s is None


def test_the_bucket_text_names_each_replicas_efficient_bucket_at_the_servers_max_batch():
    """Warm-ups per image, replica 0: 10, 9, 7.5, 5 ms at 1, 2, 4, 8; replica 1: 10, 7.5, 10, 11.25 ms.
    The servers ran max batch 4 (the cells'), so replica 0's efficient bucket is 4, not 8 (the
    simulator's default max batch 32 would allow 8); 'their mean' follows the mean it qualifies."""
    import dataclasses

    from bench.simulate_check import bucket_text, profile_of

    report = {
        "benchmark": {"cells": [{"concurrency": 1, "p50_ms": 30.0, "max_batch_size": 4}]},
        "warmup_bucket_s": [{"1": 0.010, "2": 0.018, "4": 0.030, "8": 0.040},
                            {"1": 0.010, "2": 0.015, "4": 0.040, "8": 0.090}],
        "placement": [[0], [1]],
        "profile": {"source": "test"},
        "machine": {"cpu": "test"},
    }  # fmt: skip
    prof = profile_of(report)
    report["profile"] = prof.to_json()
    assert bucket_text(report) == (
        "1: 10, 2: 16, 4: 35, 8: 65 (the servers' warm-up, their mean; each replica decides with its own, "
        "efficient buckets 4, 2)"
    )
    rule = ((1, 0.012), (2, 0.020), (4, 0.030), (8, 0.060))
    report["profile"] = dataclasses.replace(prof, rule_bucket_s=rule).to_json()
    assert bucket_text(report) == (
        "1: 10, 2: 16, 4: 35, 8: 65 (served medians: the warm-up's times the served bucket-1 calls' ratio); "
        "the batchers decide with the warm-up's: 1: 12, 2: 20, 4: 30, 8: 60 (their mean; each replica "
        "decides with its own, efficient buckets 4, 2)"
    )
    report["profile"] = dataclasses.replace(prof, replica_rule_bucket_s=None).to_json()
    assert bucket_text(report) == "1: 10, 2: 16, 4: 35, 8: 65 (the servers' warm-up)"


def test_a_replay_simulates_the_padding_the_recorded_servers_ran(tmp_path):
    """A report that does not say was recorded before the servers ran exact sizes: its profile, and the
    replay's simulated servers, pad (a call of 3 costs bucket 4); one recorded with exact-size calls
    (``batch_padding: exact``, read from the servers' logs) is replayed at the calls' rows, and the
    plan inputs carry it (the profile and the cells)."""
    from bench.simulate_check import padding_of, profile_of, simulate_replay, write_plan_inputs

    report = {  # decode 0.1 ms: 12 ms at c=1 less the 10 ms call and the 2 ms wait (at least 0.1 ms)
        "benchmark": {"cells": [{"concurrency": 1, "p50_ms": 12.0}]},
        "warmup_bucket_s": [{"1": 0.01, "2": 0.02, "4": 0.04}],
        "placement": [[0, 1]],
        "profile": {"source": "test"},
        "machine": {"cpu": "test"},
    }
    assert padding_of(report) == "bucket" and profile_of(report).batch_padding == "bucket"
    exact = {**report, "batch_padding": "exact"}
    prof = profile_of(exact)
    assert prof.batch_padding == "exact"
    # three requests at once on each: padded, the prefix rule runs 2 then 1; exact, one call of 3
    calls = {}
    for name, p in (("bucket", profile_of(report)), ("exact", prof)):
        _, per_phase = simulate_replay(p, 1, None, [0.0, 0.0, 0.0], [0.0], 1.0, 5)
        calls[name] = per_phase[0]["mean_batch"]
    assert calls == {"bucket": 1.5, "exact": 3.0}
    exact["profile"] = prof.to_json()
    write_plan_inputs(exact, tmp_path / "profile.json", tmp_path / "bench.json")
    assert CpuProfile.from_json(json.loads((tmp_path / "profile.json").read_text())).batch_padding == "exact"
    assert json.loads((tmp_path / "bench.json").read_text())["batch_padding"] == "exact"
