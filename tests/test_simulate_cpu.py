"""The simulator's CPU replicas (decode pool and bucket-padded model calls sharing cores), composed
traces, and the planner's simulated search, each against a hand-computed case (pure Python, no server).

The CPU rules and where they come from: ``predictor.tools.simulate.CpuProfile`` (docs/simulator.md,
"CPU replicas"); the batch size chosen is ``predictor/serving/batcher.py``'s own rule.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict

import numpy as np
import pytest
import yaml
from plan_fixtures import write_linear_benchmark

from predictor.tools.simulate import (
    Candidate,
    CpuProfile,
    FleetConfig,
    Simulation,
    amdahl_speed,
    rank,
    trace_rates,
)


def _run(
    prof: CpuProfile,
    times: list[float],
    replicas: int = 1,
    shared: float | None = None,
    padding: str = "auto",
) -> list:
    cfg = FleetConfig(
        mode="hpa", initial_replicas=replicas, shared_cores=shared, balancer="round-robin",
        batch_padding=padding,
    )  # fmt: skip
    cfg.hpa = type(cfg.hpa)(min_replicas=replicas, max_replicas=replicas)
    return Simulation(cfg, prof, seed=0).run(np.asarray(times), horizon_s=1.0).requests


def _exact(bucket_s: dict[int, float], decode_s: float, cores: float, decode_threads: int = 2) -> CpuProfile:
    """No spread: every duration is its median."""
    return CpuProfile(
        tuple(bucket_s.items()), decode_s, decode_sigma=0.0, model_sigma=0.0,
        decode_threads=decode_threads, model_threads=1, cores=cores,
    )  # fmt: skip


def test_decodes_and_the_model_share_one_core_by_processor_sharing():
    """1 core; A at 0, B at 0.01 s; decode 0.05 s, model call 0.1 s, batch wait 2 ms.

    0-0.01: A decodes alone (0.04 left). Then A and B at half speed: A ends at 0.01 + 0.08 = 0.09
    (B has 0.01 left). 0.09-0.092: B alone (0.008 left), A waits the batch wait. 0.092: A's call
    starts beside B's decode, both at half speed: B ends at 0.108 (the call did 0.008, 0.092 left),
    the call alone ends at 0.2. B, queued since 0.108, runs 0.2-0.3.
    """
    reqs = _run(_exact({1: 0.1}, 0.05, cores=1.0), [0.0, 0.01])
    assert [r.status for r in reqs] == ["200", "200"]
    assert reqs[0].done == pytest.approx(0.2)
    assert reqs[1].done == pytest.approx(0.3)


def test_two_cores_run_a_decode_and_a_call_at_full_speed():
    # same arrivals on 2 cores: A decoded at 0.05, B at 0.06; A's call 0.052-0.152; B's 0.152-0.252
    reqs = _run(_exact({1: 0.1}, 0.05, cores=2.0), [0.0, 0.01])
    assert [r.done for r in reqs] == pytest.approx([0.152, 0.252])


def test_replicas_sharing_cores_slow_each_other():
    """Two replicas, round robin, one request each at 0: decode 0.05, call 0.1 (batch wait 2 ms).
    Each on a core of its own: 0.152. Both on one shared core: the two decodes end at 0.1, the two
    calls (0.102-) at half speed end at 0.302."""
    prof = _exact({1: 0.1}, 0.05, cores=1.0)
    own = _run(prof, [0.0, 0.0], replicas=2)
    assert [r.replica for r in own] == [0, 1]
    assert [r.done for r in own] == pytest.approx([0.152, 0.152])
    shared = _run(prof, [0.0, 0.0], replicas=2, shared=1.0)
    assert [r.done for r in shared] == pytest.approx([0.302, 0.302])


def test_calls_are_padded_to_a_bucket_and_take_the_batchers_efficient_prefix():
    """A padding server (``--batch_padding bucket``). Buckets 1/2/4/8 at 10 ms per image (padding costs
    what an image does: a CPU). Three requests decoded at once (8 cores, decode ~0) are queued when the
    2 ms wait ends: the server's rule runs 2 (bucket 2, 20 ms) and leaves the third for the next call
    (bucket 1, 10 ms), instead of padding 3 to 4 (40 ms). Five: 4 then 1."""
    prof = _exact({1: 0.01, 2: 0.02, 4: 0.04, 8: 0.08}, 1e-9, cores=8.0, decode_threads=8)
    assert [r.done for r in _run(prof, [0.0] * 3, padding="bucket")] == pytest.approx([0.022, 0.022, 0.032])
    assert [r.done for r in _run(prof, [0.0] * 5, padding="bucket")] == pytest.approx([0.042] * 4 + [0.052])
    # seven pad to eight (the prefix rule would leave 3 for a call of 4: more computed than 8)
    assert [r.done for r in _run(prof, [0.0] * 7, padding="bucket")] == pytest.approx([0.082] * 7)


def test_a_cpu_server_on_auto_runs_each_call_at_its_exact_size():
    """The server's default, ``--batch_padding auto``, on a CPU without XLA: calls of their rows, never
    split for a bucket. The same profile and arrivals as above: three requests are one call of 3 rows,
    30 ms (between bucket 2's 20 and bucket 4's 40), done at 0.002 + 0.030; five one call of 5 (50 ms);
    seven one call of 7 (70 ms)."""
    prof = _exact({1: 0.01, 2: 0.02, 4: 0.04, 8: 0.08}, 1e-9, cores=8.0, decode_threads=8)
    assert [r.done for r in _run(prof, [0.0] * 3)] == pytest.approx([0.032] * 3)
    assert [r.done for r in _run(prof, [0.0] * 5)] == pytest.approx([0.052] * 5)
    assert [r.done for r in _run(prof, [0.0] * 7, padding="exact")] == pytest.approx([0.072] * 7)


def test_a_call_after_the_model_idled_costs_the_measured_extra():
    """One core, call 10 ms, nothing else (decode 1 ns, batch wait 2 ms); after an idle gap of 5 ms a
    call adds 1 ms, of 30 ms or more 8 ms (docs/simulator.md, "Large calls ..."). A at 0: the first
    call (idle since ever: 8 ms) runs 0.002-0.020. B at 0.1: idle 0.082 s, +8 ms: 0.102-0.120. C at
    0.125: idle 7 ms, 1 + (2 / 25) x 7 = 1.56 ms: 0.127-0.13856. Without the table: 0.012, 0.112, 0.137."""
    base = _exact({1: 0.01}, 1e-9, cores=1.0)
    prof = dataclasses.replace(base, idle_call_s=((0.005, 0.001), (0.03, 0.008)))
    assert prof.idle_extra(0.0) == 0.0 and prof.idle_extra(0.015) == pytest.approx(0.0038)
    assert prof.idle_extra(float("inf")) == pytest.approx(0.008)
    times = [0.0, 0.1, 0.125]
    assert [r.done for r in _run(prof, times)] == pytest.approx([0.020, 0.120, 0.13856])
    assert [r.done for r in _run(base, times)] == pytest.approx([0.012, 0.112, 0.137])
    assert CpuProfile.from_json(json.loads(json.dumps(prof.to_json()))) == prof


def test_a_call_stays_out_of_step_for_the_linger_after_the_crowding_ends():
    """2 cores, lockstep, a perfectly parallel 2-thread call of 100 ms, one decode thread (20 ms), batch
    wait 2 ms, linger 30 ms (docs/simulator.md, "Large calls under open-loop load"). A at 0: decoded at
    0.02, its call from 0.022 at full speed. B at 0.03: 3 threads on 2 cores, the call gets
    2 / ceil(3 / 2) = 1 core (half speed; 0.092 s of work left), the decode 2/3 of a core: decoded at
    0.06 (the call has 0.077 left). The crowding ends there, but the call stays at half speed until
    0.09 (0.062 left): A answered at 0.152, B's call 0.152-0.252. Without the linger: full speed from
    0.06, A at 0.137, B at 0.237."""
    prof = CpuProfile(
        ((1, 0.1),), 0.02, decode_sigma=0.0, model_sigma=0.0, decode_threads=1, model_threads=2,
        cores=2.0, lockstep=True, lockstep_linger_s=0.03,
    )  # fmt: skip
    assert [r.done for r in _run(prof, [0.0, 0.03])] == pytest.approx([0.152, 0.252])
    none = dataclasses.replace(prof, lockstep_linger_s=0.0)
    assert [r.done for r in _run(none, [0.0, 0.03])] == pytest.approx([0.137, 0.237])


def test_a_call_costs_its_bucket_when_padded_and_its_rows_when_exact():
    """Buckets 1: 12 ms, 2: 20 ms, 4: 36 ms. A call of 3: padded, bucket 4's 36 ms; exact, 28 ms (linear
    between 2 and 4: a real image costs about what a full bucket's does, bench/RESULTS.md "Padding on
    a CPU"). Past the largest bucket, 7 images: padded two calls of 4 (72 ms), exact a call of 4 and
    one of 3 (36 + 28 = 64 ms). A bucket's own size costs the same either way."""
    prof = _exact({1: 0.012, 2: 0.02, 4: 0.036}, 0.001, cores=2.0)
    assert prof.call_s(3, pads=True) == pytest.approx(0.036)
    assert prof.call_s(3, pads=False) == pytest.approx(0.028)
    assert prof.call_s(7, pads=True) == pytest.approx(0.072)
    assert prof.call_s(7, pads=False) == pytest.approx(0.064)
    assert [prof.call_s(b, pads=False) for b in (1, 2, 4)] == [prof.call_s(b, pads=True) for b in (1, 2, 4)]


def test_the_simulated_servers_pad_as_the_server_decides():
    """``replica_pads`` is the server's rule (``pads_to_bucket``) on the fleet's flags and the replicas'
    device: a CPU profile has no GPU, so ``auto`` runs exact sizes unless ``--xla``; a service model
    measured on a GPU pads on ``auto``; ``exact`` with ``--xla`` is refused, as the server refuses it."""
    from predictor.tools.simulate import ServiceModel, replica_pads

    prof = _exact({1: 0.01, 2: 0.02}, 0.001, cores=2.0)
    gpu = dataclasses.replace(ServiceModel.parametric(5, 10, 0, 8), gpu=True)
    assert replica_pads(FleetConfig(), prof) is False
    assert replica_pads(FleetConfig(xla=True), prof) is True
    assert replica_pads(FleetConfig(batch_padding="bucket"), prof) is True
    assert replica_pads(FleetConfig(), gpu) is True
    assert replica_pads(FleetConfig(batch_padding="exact"), gpu) is False
    assert replica_pads(FleetConfig(), ServiceModel.parametric(5, 10, 0, 8)) is False
    with pytest.raises(ValueError, match="--xla off"):
        replica_pads(FleetConfig(batch_padding="exact", xla=True), prof)


def test_the_standing_bound_is_the_servers_efficient_bucket_from_the_profile():
    # rates 50, 100, 160, 190, 200 img/s: within 90% of the best from bucket 8 on -> 2 x 8 admitted
    prof = _exact({1: 0.02, 2: 0.02, 4: 0.025, 8: 8 / 190, 16: 0.08}, 0.001, cores=2.0)
    sim = Simulation(FleetConfig(mode="hpa", max_batch_size=16), prof)
    assert sim.new_replica(0.0).efficient == 8
    # a server with --max_batch_size 8 has buckets 1-8 only
    small = Simulation(FleetConfig(mode="hpa", max_batch_size=8), prof.up_to(8))
    assert small.new_replica(0.0).efficient == 8


def test_profile_round_trips_through_json_and_picks_buckets_up_to_the_max_batch():
    prof = _exact({1: 0.02, 2: 0.03, 4: 0.05, 8: 0.09, 16: 0.18, 32: 0.36}, 0.008, cores=2.0)
    assert CpuProfile.from_json(json.loads(json.dumps(prof.to_json()))) == prof
    assert prof.up_to(8).buckets == (1, 2, 4, 8)
    assert prof.up_to(12).bucket_s[-1] == (12, pytest.approx(0.09 + 4 * (0.18 - 0.09) / 8))
    assert prof.call_s(5, pads=True) == 0.09 and prof.call_s(64, pads=True) == pytest.approx(2 * 0.36)


def test_a_deadline_during_decode_answers_503_and_frees_the_slot():
    # 1 core, one decode thread; decode 2 s > the 1 s time limit: 503 at 1.0, never reaches the model
    cfg = FleetConfig(mode="hpa", request_timeout_s=1.0)
    prof = _exact({1: 0.1}, 2.0, cores=1.0, decode_threads=1)
    sim = Simulation(cfg, prof)
    res = sim.run(np.asarray([0.0]), horizon_s=3.0)
    (req,) = res.requests
    assert (req.status, req.done) == ("503", pytest.approx(1.0))
    assert sim.replicas[0].admitted == 0 and sim.replicas[0].busy_s == 0.0


# --------------------------------------------------------------------------------------- traces
def test_traces_add_up_second_by_second():
    # constant 5 for 3 s + step 1 -> 2 at second 2 of 4: [5+1, 5+1, 5+2, 0+2]
    assert trace_rates("constant:5:3+step:1:2:4:2").tolist() == [6.0, 6.0, 7.0, 2.0]


# --------------------------------------------------------------------------------------- the planner
def test_rank_puts_the_cheapest_candidate_meeting_the_objective_first():
    def cand(cost: float, meets: bool, p95: float = 100.0) -> Candidate:
        return Candidate(8, 1, 10.0, 200.0, p95, 0.99, 0.0, cost, cost, meets, 4)

    cheap_miss, a, b, tie = cand(1.0, False), cand(3.0, True), cand(2.0, True, 200.0), cand(2.0, True, 150.0)
    assert rank([cheap_miss, a, b, tie]) == [tie, b, a, cheap_miss]


def test_planner_picks_the_cheapest_candidate_meeting_the_objective(tmp_path):
    """Synthetic curves (a replica of ~60 req/s), a burst from 10 to 70 req/s: one replica alone is
    cheapest and misses p95 <= 300 ms; the overlay is the cheapest that meets it, recomputed here from
    every candidate's figures rather than taken from the file's order."""
    from predictor.tools import plan

    write_linear_benchmark(tmp_path / "bench.json", 15.0)
    out = tmp_path / "plan"
    argv = ["--slo-p95-ms", "300", "--rate", "20", "--benchmark", str(tmp_path / "bench.json"),
            "--trace", "step:10:70:120:20", "--cold-start-s", "2", "--cost-per-replica-hour", "3",
            "--search-min-replicas", "1,2,3", "--search-targets", "2,8", "--search-panic", "200",
            "--out", str(out)]  # fmt: skip
    assert plan.main(argv) == 0
    cands = json.loads((out / "simulated" / "search.json").read_text())
    assert len(cands) == 6
    for c in cands:
        assert c["meets"] == (c["p95_ms"] <= 300 and c["share_503"] <= 0.001)
        assert c["cost"] == pytest.approx(3 * c["replica_hours"])
    meeting = [c for c in cands if c["meets"]]
    cheapest = min(meeting, key=lambda c: (c["cost"], c["p95_ms"]))
    assert min(c["cost"] for c in cands) < cheapest["cost"]  # something cheaper missed the objective
    overlay = yaml.safe_load((out / "simulated" / "values-sim.yaml").read_text())
    assert overlay["autoscaling"]["minReplicas"] == cheapest["min_replicas"]
    assert overlay["autoscaling"]["scaleTarget"] == cheapest["scale_target"]
    assert overlay["predictor"]["maxBatchSize"] == cheapest["max_batch_size"]
    assert "gpu" not in overlay and "resources" not in overlay  # curves of unstated hardware: chart's pod
    md = (out / "simulated" / "search.md").read_text()
    assert md.count("| yes |") == len(meeting) and md.count("| no |") == len(cands) - len(meeting)


def test_planner_simulates_cpu_replicas_from_a_profile(tmp_path):
    from predictor.tools import plan

    prof = _exact({1: 0.02, 2: 0.03, 4: 0.05, 8: 0.09, 16: 0.18, 32: 0.36}, 0.008, cores=2.0)
    (tmp_path / "prof.json").write_text(json.dumps(prof.to_json()))
    cells = [asdict(plan.Cell(32, c, 200, 0, c / (0.03 * c), 30.0 * c, 30.0 * c, 40.0 * c, 50.0 * c))
             for c in (1, 2, 4, 8)]  # fmt: skip
    bench = {"format": plan.BENCHMARK_FORMAT, "model_dir": "synthetic", "batch_wait_ms": 2.0, "cells": cells,
             "machine": {"cpu": "synthetic"}, "request": "none"}  # fmt: skip
    (tmp_path / "bench.json").write_text(json.dumps(bench))
    out = tmp_path / "plan"
    argv = ["--slo-p95-ms", "400", "--rate", "20", "--benchmark", str(tmp_path / "bench.json"),
            "--cpu-profile", str(tmp_path / "prof.json"), "--trace", "constant:20:60",
            "--search-max-batch", "8,32", "--search-min-replicas", "1", "--search-targets", "4",
            "--search-panic", "200", "--out", str(out)]  # fmt: skip
    assert plan.main(argv) == 0
    cands = json.loads((out / "simulated" / "search.json").read_text())
    assert sorted(c["max_batch_size"] for c in cands) == [8, 32]
    written = json.loads((out / "simulated" / "summary.json").read_text())
    # auto on the profile's CPU replicas: exact-size calls
    assert written["summary"]["service"].startswith(prof.source + "; calls exact-size; simulated ")
    assert written["fleet"]["batch_padding"] == "auto" and written["pads_to_bucket"] is False
    assert "# Service times: cpu profile" in (out / "simulated" / "values-sim.yaml").read_text()
    overlay = yaml.safe_load((out / "simulated" / "values-sim.yaml").read_text())
    # The plan is for the profile's pod, 2 cores without a GPU, not the chart's default GPU pod.
    assert overlay["gpu"] == {"enabled": False}
    assert overlay["resources"] == {"requests": {"cpu": "2"}, "limits": {"cpu": "2"}}
    # and with the profile's calls in flight: the CPU pod's server would decide its own at warm-up
    assert overlay["predictor"] == {
        "maxBatchSize": overlay["predictor"]["maxBatchSize"],
        "modelCallsInFlight": 1,
    }


def test_a_request_whose_deadline_passed_while_waiting_for_a_decode_thread_is_never_decoded():
    """One decode thread (1 s a request), 2 cores, time limit 1.5 s; A, B, C at 0, D at 1.9. A decodes
    0-1 and is answered at 1.102; B decodes 1-2 but gets 503 at 1.5; C's time passes while it waits
    (503 at 1.5) and it is skipped, so D decodes 2-3 and is answered at 3.102, inside its 3.4."""
    cfg = FleetConfig(mode="hpa", request_timeout_s=1.5)
    prof = _exact({1: 0.1}, 1.0, cores=2.0, decode_threads=1)
    reqs = Simulation(cfg, prof).run(np.asarray([0.0, 0.0, 0.0, 1.9]), horizon_s=4.0).requests
    assert [r.status for r in reqs] == ["200", "503", "503", "200"]
    assert [r.done for r in reqs] == pytest.approx([1.102, 1.5, 1.5, 3.102])


def test_a_model_call_with_fewer_cores_than_threads_slows_as_amdahls_law_says():
    """Bucket 1: 0.1 s alone on 2 cores, 0.15 s on one: p = (1 - 0.1 / 0.15) / (1 - 1/2) = 2/3.
    With 4/3 cores (two threads beside one decode on 2 cores): T = 0.15 (1/3 + (2/3) / (4/3)) = 0.125,
    speed 0.8; with half a core: (1 - p + p/2) x 0.5 = 1/3."""
    assert amdahl_speed(2 / 3, 2, 4 / 3) == pytest.approx(0.8)
    assert amdahl_speed(2 / 3, 2, 0.5) == pytest.approx(1 / 3)
    assert amdahl_speed(1.0, 2, 4 / 3) == pytest.approx(2 / 3)  # perfectly parallel: processor sharing
    prof = CpuProfile(((1, 0.1),), 0.05, decode_sigma=0.0, model_sigma=0.0, model_threads=2, cores=2.0,
                      one_core_bucket_s=((1, 0.15),))  # fmt: skip
    assert prof.parallel_fraction(1) == pytest.approx(2 / 3)
    # A at 0: decoded at 0.05, its call from 0.052 (alone: 0.1 s). B at 0.06 decodes beside it: the
    # call at 0.8 and the decode at 2/3 until B is decoded at 0.135 (the call has 0.032 left), so A is
    # answered at 0.167 (processor sharing alone would say 0.177); B's call runs 0.167-0.267.
    reqs = _run(prof, [0.0, 0.06])
    assert [r.done for r in reqs] == pytest.approx([0.167, 0.267])


def test_a_candidate_meets_only_with_the_least_share_within_the_objective():
    """A burst from 5 to 80 req/s: minReplicas 2 keeps the run's p95 within 400 ms but answers under
    99.9% of the requests within it (the burst's seconds), so with min_attainment 0.999 only
    minReplicas 3 meets the objective; minReplicas 1 meets neither."""
    from predictor.tools.simulate import KpaConfig, ServiceModel, search

    base = FleetConfig(mode="knative", cold_start_s=3.0, kpa=KpaConfig(max_scale=6))
    services = {8: ServiceModel.parametric(5, 23, 0.15, 8)}
    rates = trace_rates("step:5:80:90:30")
    kw = {"slo_p95_ms": 400.0, "min_replicas": [1, 2, 3], "scale_targets": [4.0], "panic_thresholds": [200.0]}
    loose = {c.min_replicas: c for c in search(base, services, rates, **kw)}
    strict = search(base, services, rates, min_attainment=0.999, **kw)
    assert [m for m, c in sorted(loose.items()) if c.meets] == [2, 3]
    assert loose[2].p95_ms <= 400 and loose[2].slo_attainment < 0.999 <= loose[3].slo_attainment
    assert [c.min_replicas for c in strict if c.meets] == [3]
    assert strict[0].min_replicas == 3  # the cheapest meeting it leads


# ------------------------------------------------------------------------------ event loop, fill wait
def _looped(max_queue_images: int = 256) -> tuple[CpuProfile, FleetConfig]:
    """2 cores (so nothing below slows anything), one decode thread, one model thread: decode 50 ms,
    call 100 ms, the event loop 10 ms in and 20 ms out, 5 ms outside the server."""
    prof = CpuProfile(
        ((1, 0.1),), 0.05, decode_sigma=0.0, model_sigma=0.0, decode_threads=1, model_threads=1,
        cores=2.0, loop_in_s=0.01, loop_out_s=0.02, net_s=0.005,
    )  # fmt: skip
    cfg = FleetConfig(mode="hpa", max_queue_images=max_queue_images, balancer="round-robin")
    cfg.hpa = type(cfg.hpa)(min_replicas=1, max_replicas=1)
    return prof, cfg


def test_the_event_loop_reads_requests_one_at_a_time_before_admission_and_writes_answers():
    """A and B at 0. The loop reads A 0-0.01, B 0.01-0.02. A decodes 0.01-0.06, B (one decode thread)
    0.06-0.11. A's call: 0.062 (batch wait) - 0.162, its answer on the loop 0.162-0.182, + 5 ms: 0.187.
    B's call 0.162-0.262, answer 0.262-0.282: 0.287."""
    prof, cfg = _looped()
    reqs = Simulation(cfg, prof).run(np.asarray([0.0, 0.0]), horizon_s=1.0).requests
    assert [r.status for r in reqs] == ["200", "200"]
    assert [r.done for r in reqs] == pytest.approx([0.187, 0.287])


def test_a_refused_request_costs_its_read_on_the_event_loop():
    # --max_queue_images 1: B is read 0.01-0.02 while A is admitted, refused then: 503 at 0.025
    prof, cfg = _looped(max_queue_images=1)
    reqs = Simulation(cfg, prof).run(np.asarray([0.0, 0.0]), horizon_s=1.0).requests
    assert [(r.status, r.done) for r in reqs] == [
        ("200", pytest.approx(0.187)),
        ("503", pytest.approx(0.025)),
    ]


def test_a_call_that_would_pad_waits_for_an_image_being_decoded():
    """A padding server. Buckets 1/2/4 at 10 ms per image (padding costs), 4 decode threads on 8 cores,
    decode 10 ms. Three requests at 0 are queued at 0.01, a fourth (at 0.005) is decoding until 0.015.
    When the 2 ms batch wait ends (0.012), 3 queued + 1 decoding fit bucket 4: the server waits for it
    (at most a quarter of the 40 ms call after the oldest was queued: until 0.02), so at 0.015 one call
    of 4 runs: all done at 0.055. Without that wait the prefix rule would run 2 at 0.012 (done 0.032),
    then 2. An exact-size server (``auto`` on a CPU) never waits: a call of 3 at 0.012 (30 ms, done
    0.042), then the fourth alone (10 ms, done 0.052)."""
    prof = CpuProfile(
        ((1, 0.01), (2, 0.02), (4, 0.04)), 0.01, decode_sigma=0.0, model_sigma=0.0, decode_threads=4,
        model_threads=1, cores=8.0,
    )  # fmt: skip
    reqs = _run(prof, [0.0, 0.0, 0.0, 0.005], padding="bucket")
    assert [r.done for r in reqs] == pytest.approx([0.055] * 4)
    reqs = _run(prof, [0.0, 0.0, 0.0, 0.005])
    assert [r.done for r in reqs] == pytest.approx([0.042] * 3 + [0.052])


def test_fill_wait_is_the_servers_own_rule():
    from predictor.serving.batcher import FILL_WAIT_FRACTION
    from predictor.tools.simulate import fill_wait

    b = CpuProfile(((1, 0.01), (2, 0.02), (4, 0.04)), 0.01).batcher(4, pads=True)
    # 3 queued (bucket 4) + 1 decoding fit: wait until 0.01 + 0.25 x 0.04 = 0.02
    assert FILL_WAIT_FRACTION == 0.25
    assert fill_wait(b, 3, 1, 0.01, 0.012) == pytest.approx(0.008)
    assert fill_wait(b, 3, 2, 0.01, 0.012) == 0.0  # 5 do not fit bucket 4
    assert fill_wait(b, 3, 0, 0.01, 0.012) == 0.0  # nothing decoding
    assert fill_wait(b, 2, 0, 0.01, 0.012) == 0.0
    assert fill_wait(b, 3, 1, 0.01, 0.03) == 0.0  # waited long enough


def test_the_load_generators_cpu_slows_the_replica_it_shares_cores_with():
    """1 core; one request at 0: the generator's 20 ms and the decode's 50 ms share the core from 0, the
    generator's job ends at 0.04 (the decode has 30 ms left), the decode at 0.07; call 0.072-0.172."""
    prof = dataclasses.replace(_exact({1: 0.1}, 0.05, cores=1.0), client_s=0.02)
    assert [r.done for r in _run(prof, [0.0])] == pytest.approx([0.172])


def test_job_durations_follow_the_measured_spread():
    class Draw:  # rng.random() returning fixed probabilities
        def __init__(self, *u: float) -> None:
            self.u = list(u)

        def random(self) -> float:
            return self.u.pop(0)

    prof = dataclasses.replace(_exact({1: 0.1}, 0.05, cores=1.0), spread=(0.5, 1.0, 4.0))
    # quantiles at p = 0, 0.5, 1: p 0.25 -> 0.75, p 0.75 -> 2.5, p 1 -> 4 (linear in between)
    assert [prof.factor(Draw(p), 0.0) for p in (0.25, 0.75, 1.0)] == pytest.approx([0.75, 2.5, 4.0])
    assert CpuProfile.from_json(json.loads(json.dumps(prof.to_json()))) == prof


def test_decoded_requests_and_the_batchers_worker_wait_their_turn_on_the_event_loop():
    """As the middleware test on 4 cores (nothing slows anything), A at 0, B at 0.058, C at 0.161.
    A: head -0.004, body -0.01, decoded at 0.06, but B's head holds the loop until 0.062: queued then,
    call 0.064-0.164. B: body 0.062-0.068, decoded 0.118 (queued at once). C's head 0.161-0.165 holds
    the loop when A's call ends (0.164): the batcher's worker resumes at 0.165 (A's call counts 0.101
    s, as _execute times it), B's call 0.165-0.265; C's body 0.165-0.171 was queued before A's answer:
    A 0.171-0.191 (+5 ms: 0.196). C decoded 0.221, call 0.265-0.365. B answers 0.265-0.285 (0.29), C
    0.365-0.385 (0.39)."""
    prof, cfg = _looped()
    prof = dataclasses.replace(prof, loop_head_s=0.004, loop_in_s=0.006, cores=4.0)
    sim = Simulation(cfg, prof)
    reqs = sim.run(np.asarray([0.0, 0.058, 0.161]), horizon_s=1.0).requests
    assert [r.done for r in reqs] == pytest.approx([0.196, 0.29, 0.39])
    assert [start for start, _, _ in sim.calls] == pytest.approx([0.064, 0.165, 0.265])
    assert sim.calls[0][2] == pytest.approx(0.101)


def test_a_call_in_lockstep_gets_the_cores_of_its_shard_on_the_busiest_run_queue():
    """``m / ceil(threads / cores)``: 2 threads alone on 2 cores keep both; beside one decode (3 threads,
    2 deep) 1 core (processor sharing: 4/3); beside 3 decodes (5 threads, 3 deep) 2/3 (sharing: 0.8);
    two calls of 2 (4 threads) 1 each, as sharing; one thread on one core beside 2 others: 1/3."""
    from predictor.tools.simulate import lockstep_cores

    assert lockstep_cores(2, 2, 2.0) == 2.0
    assert lockstep_cores(2, 3, 2.0) == pytest.approx(1.0)
    assert lockstep_cores(2, 5, 2.0) == pytest.approx(2 / 3)
    assert lockstep_cores(2, 4, 2.0) == pytest.approx(1.0)
    assert lockstep_cores(1, 3, 1.0) == pytest.approx(1 / 3)


def test_a_decode_beside_a_call_in_lockstep_halves_the_calls_speed():
    """2 cores, a perfectly parallel call of 2 threads (0.1 s alone), decode 0.05 s. A at 0: decoded at
    0.05, call from 0.052. B at 0.06 (the call has 0.092 left) decodes beside it: 3 threads, the call
    at 1 core of 2 (half speed), the decode at 2/3 of a core until 0.135 (the call did 0.0375, 0.0545
    left): A at 0.1895; B's call 0.1895-0.2895. Processor sharing (4/3 cores): 0.177 and 0.277."""
    prof = CpuProfile(((1, 0.1),), 0.05, decode_sigma=0.0, model_sigma=0.0, model_threads=2, cores=2.0)
    assert [r.done for r in _run(prof, [0.0, 0.06])] == pytest.approx([0.177, 0.277])
    locked = dataclasses.replace(prof, lockstep=True)
    assert [r.done for r in _run(locked, [0.0, 0.06])] == pytest.approx([0.1895, 0.2895])
    assert CpuProfile.from_json(json.loads(json.dumps(locked.to_json()))).lockstep


def _in_flight(n: int, times: list[float]) -> tuple[list, Simulation]:
    """Service times 0.1 s per image, no spread, max batch 2, batch wait 2 ms, ``n`` calls in flight."""
    from predictor.tools.simulate import ServiceModel

    cfg = FleetConfig(mode="hpa", max_batch_size=2, model_calls_in_flight=n, balancer="round-robin")
    sim = Simulation(cfg, ServiceModel.parametric(0.0, 100.0, 0.0, 2))
    return sim.run(np.asarray(times), horizon_s=1.0).requests, sim


def test_a_second_call_starts_once_the_queue_holds_as_many_images_as_the_running_one():
    """``DynamicBatcher._overlap_waits``. A, B at 0: a full call of 2, 0-0.2. C at 0.05 waits (1 queued <
    2 running); D at 0.06 makes 2: the second call 0.06-0.26 (its oldest waited the batch wait). E at
    0.07: both calls run; when the first ends (0.2) the second (2 images) still runs and 1 < 2, so E
    waits for it: 0.26-0.36. With one call in flight: C, D 0.2-0.4 and E 0.4-0.5."""
    times = [0.0, 0.0, 0.05, 0.06, 0.07]
    two, _ = _in_flight(2, times)
    assert [r.done for r in two] == pytest.approx([0.2, 0.2, 0.26, 0.26, 0.36])
    one, _ = _in_flight(1, times)
    assert [r.done for r in one] == pytest.approx([0.2, 0.2, 0.4, 0.4, 0.5])


def test_overlapping_calls_count_their_busy_time_once():
    """``DynamicBatcher._observe_end``: above, calls 0-0.2, 0.06-0.26, 0.26-0.36 keep the model busy 0.36
    s; the rate's seconds are 0.2, then 0.26 - 0.2 = 0.06, then 0.1 (a new busy spell), while each
    call's own time (the standing-queue detector's) is 0.2, 0.2, 0.1."""
    _, sim = _in_flight(2, [0.0, 0.0, 0.05, 0.06, 0.07])
    rep = sim.replicas[0]
    assert rep.busy_s == pytest.approx(0.36)
    ewma = 0.2
    ewma += 0.2 * (0.06 - ewma)
    ewma += 0.2 * (0.1 - ewma)
    assert rep.ewma_seconds == pytest.approx(ewma)
    call = 0.2 + 0.2 * (0.1 - 0.2)
    assert rep.ewma_call_seconds == pytest.approx(call)


def test_the_standing_bound_is_one_efficient_call_per_call_in_flight_plus_one():
    """``DynamicBatcher.standing_limit`` with the same warm-up timings, 1 and 2 calls in flight."""
    from predictor.serving.batcher import DynamicBatcher
    from predictor.tools.simulate import _Replica

    timings = {1: 0.014, 2: 0.017, 4: 0.028, 8: 0.056}
    prof = _exact(timings, 0.004, cores=2.0)
    for n in (1, 2):
        cfg = FleetConfig(max_batch_size=8, model_calls_in_flight=n)
        server = DynamicBatcher(
            lambda *a: {}, max_batch_size=8, bucket_seconds=timings, max_calls_in_flight=n
        )
        assert _Replica(0, 0.0, 0.0, cfg, prof).standing_limit == server.standing_limit == (n + 1) * 4


def test_calls_in_flight_share_their_replicas_intra_op_pool():
    """4 cores, perfectly parallel calls of 2 threads: two calls of one replica are its one pool of 2
    threads, 1 thread each (half speed: the pair takes what the two would one after the other); calls
    of two replicas have 2 threads each and run at full speed."""
    from predictor.tools.simulate import _Cpu

    a, b = object(), object()
    cpu = _Cpu(4.0)
    cpu.jobs = [[0.1, 2, "model", (a, [], 1, 0.0), 1.0], [0.1, 2, "model", (a, [], 1, 0.0), 1.0]]
    assert cpu.speeds() == pytest.approx([0.5, 0.5])
    cpu.jobs[1][3] = (b, [], 1, 0.0)
    assert cpu.speeds() == pytest.approx([1.0, 1.0])
    # one call of one replica on 1 core beside a decode: processor sharing, lockstep or not
    one = _Cpu(1.0, lockstep=True)
    one.jobs = [[0.1, 1, "model", (a, [], 1, 0.0), 1.0], [0.05, 1, "decoded", None, 1.0]]
    assert one.speeds() == pytest.approx([0.5, 0.5])


def test_two_calls_of_a_two_thread_pool_share_cores_by_processor_sharing_even_in_lockstep():
    """2 cores, one replica's 2 perfectly parallel calls (pool of 2 threads: 1 each) beside a decode: 3
    threads, 2/3 of a core each, so each call runs at 2/3 of the 2 cores it has alone: 1/3 speed.
    Each call is a one-thread job, so lockstep does not apply (it would give 1 / ceil(3 / 2) = 0.5
    cores: 1/4 speed)."""
    from predictor.tools.simulate import _Cpu

    a = object()
    cpu = _Cpu(2.0, lockstep=True)
    call = [0.1, 2, "model", (a, [], 1, 0.0), 1.0]
    cpu.jobs = [list(call), list(call), [0.05, 1, "decoded", None, 1.0]]
    assert cpu.speeds() == pytest.approx([1 / 3, 1 / 3, 2 / 3])


def test_the_cli_replays_a_profile_with_the_calls_in_flight_it_was_measured_with(tmp_path):
    """A profile measured with 2 calls in flight: the simulator runs 2 unless told otherwise."""
    from predictor.tools.simulate import main

    prof = dataclasses.replace(_exact({1: 0.02, 2: 0.03}, 0.008, cores=2.0), model_calls_in_flight=2)
    (tmp_path / "prof.json").write_text(json.dumps(prof.to_json()))
    base = ["--trace", "constant:5:5", "--cpu-profile", str(tmp_path / "prof.json"), "--max_batch_size", "2"]
    for flag, expected in (([], 2), (["--model_calls_in_flight", "1"], 1)):
        assert main([*base, *flag, "--out", str(tmp_path / str(expected))]) == 0
        config = json.loads((tmp_path / str(expected) / "summary.json").read_text())
        assert config["fleet"]["model_calls_in_flight"] == expected


def test_each_replica_decides_with_its_own_warm_up():
    """Every server's batcher decides with its own warm-up's timings. Replica 0's: 50, 100, 160, 190,
    200 img/s (bucket 8 the first within 90% of the best: efficient 8, standing bound 2 x 8 = 16);
    replica 1's: 100, 182, 100, 100, 100 img/s (best 182, 90% = 164: bucket 2, bound 4); a third
    replica takes entry 2 mod 2 = 0. Their mean (``rule_bucket_s``: 1: 15, 2: 15.5, 4: 32.5, 8: 61.1,
    16: 120 ms; 67, 129, 123, 131, 133 img/s: bucket 2) is what a replica with no warm-up of its own
    (and the profile written for the planner) decides with."""
    r0 = {1: 0.02, 2: 0.02, 4: 0.025, 8: 8 / 190, 16: 0.08}
    r1 = {1: 0.01, 2: 0.011, 4: 0.04, 8: 0.08, 16: 0.16}
    mean = {b: (r0[b] + r1[b]) / 2 for b in r0}
    prof = dataclasses.replace(
        _exact(mean, 0.001, cores=2.0),
        replica_rule_bucket_s=(tuple(r0.items()), tuple(r1.items())),
    )
    sim = Simulation(FleetConfig(mode="hpa", max_batch_size=16), prof)
    reps = [sim.new_replica(0.0) for _ in range(3)]
    assert [r.efficient for r in reps] == [8, 2, 8]
    assert [r.standing_limit for r in reps] == [16, 4, 16]
    averaged = Simulation(FleetConfig(mode="hpa", max_batch_size=16), _exact(mean, 0.001, 2.0))
    assert averaged.new_replica(0.0).efficient == 2
    # the calls themselves take the profile's times, whichever replica runs them
    assert prof.call_s(8, pads=False) == prof.call_s(8, pads=True) == pytest.approx(mean[8])
    # a server with --max_batch_size 8: each replica's own buckets cut too (replica 0: 8 is the best)
    small = Simulation(FleetConfig(mode="hpa", max_batch_size=8), prof.up_to(8))
    assert small.new_replica(0.0).efficient == 8
    assert CpuProfile.from_json(json.loads(json.dumps(prof.to_json()))) == prof
