"""Fleet simulator: ``python -m predictor.tools.simulate --trace step:40:400:60 --mode knative``.

A seeded discrete-event simulation of an autoscaled fleet of predictor replicas under a traffic trace
(docs/simulator.md says what is modelled, from where, and what is not):

- **Replicas**: each is the server's dynamic batcher (``--model_calls_in_flight`` model calls at once,
  more than one with a CPU profile only, a second one starting once the queue holds as many images
  as the running one; a call takes the oldest queued requests, up to ``max_batch_size``, once that
  many wait or the oldest waited
  ``batch_wait_ms``), with the call's duration drawn from a log-normal per batch size fitted to the
  planner's benchmark (``predictor.tools.plan --measure-only``: median = p50 and spread from p95 of
  the cell whose concurrency is that size), or from the parametric model ``--service-ms A+B``.
- **Admission** as ``predictor/serving/batcher.py``: ``--max_queue_images`` (503 at once, always admits
  into an empty replica), the standing-queue bound (an efficient call per call in flight plus one, the backlog
  shed), and ``--request_timeout_s`` (503 at the deadline, queued or running).
- **Cold starts**: a replica added at ``t`` takes requests from ``t + cold_start_s``.
- **Load balancing**: Knative mode: the activator holds requests and sends each to a ready replica
  with fewer than ``containerConcurrency`` in flight (round robin above 3, first available at 1-3:
  knative/serving ``pkg/activator/net/throttler.go``); Standard mode: a Kubernetes Service picks a
  ready endpoint uniformly at random (kube-proxy), no limit; with no endpoint the request fails.
- **Autoscalers**: :mod:`predictor.tools.autoscalers` (Knative KPA on concurrency; HPA on the
  server's images in progress through KEDA's AverageValue, or on busy %).
"""

from __future__ import annotations

import argparse
import collections
import csv
import dataclasses
import heapq
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from predictor._argtypes import positive_floats, positive_int, positive_ints, replica_floors
from predictor.serving.options import (
    AUTO_PADDING_RULE,
    BATCH_PADDINGS,
    UNRECORDED_PADDING,
    ServingOptions,
    pads_to_bucket,
)
from predictor.tools.autoscalers import (
    Hpa,
    HpaConfig,
    Kpa,
    KpaConfig,
    WindowAverage,
    replicas_for_average_value,
    replicas_for_utilization,
)

Z95 = 1.6448536269514722  # standard normal quantile of 0.95
EWMA = 0.2  # batcher.py _EWMA
EFFICIENT_FRACTION = 0.9  # batcher.py EFFICIENT_FRACTION


# --------------------------------------------------------------------------------------- service times
@dataclass(frozen=True)
class ServiceModel:
    """Log-normal model-call time per batch size: ``median_s[b - 1]``, ``sigma[b - 1]`` for b = 1..len.

    From a benchmark (:meth:`from_cells`): ``c`` closed-loop clients keep ``overlap`` stages busy at
    once (decode of the next requests while the model runs: the served benchmark's "mean batch" is
    c / 2 for the demo model on CPU, bench/RESULTS.md), so a call of ``b`` requests takes
    ``latency(overlap x b) / overlap``: median from that cell's p50, sigma = ln(p95 / p50) / z95.
    This reproduces each cell's throughput, ``c / latency(c)``, by construction. Between measured
    sizes both are interpolated linearly; past the largest, the median grows by the last measured
    per-request slope.
    """

    median_s: tuple[float, ...]
    sigma: tuple[float, ...]
    source: str = "parametric"
    # the replicas run on a GPU (``--batch_padding auto`` pads there: :func:`replica_pads`); for a
    # benchmark, what it says of its servers (:func:`predictor.tools.plan.measured_on_gpu`)
    gpu: bool = False

    def sample(self, b: int, rng: np.random.Generator) -> float:
        i = min(b, len(self.median_s)) - 1
        s = self.sigma[i]
        return self.median_s[i] * (math.exp(s * rng.standard_normal()) if s > 0 else 1.0)

    def median(self, b: int) -> float:
        return self.median_s[min(b, len(self.median_s)) - 1]

    @classmethod
    def parametric(cls, a_ms: float, b_ms: float, sigma: float, max_batch: int) -> ServiceModel:
        """``median(b) = a + b x batch`` ms, one spread for every size."""
        med = tuple((a_ms + b_ms * k) / 1e3 for k in range(1, max_batch + 1))
        return cls(med, (sigma,) * max_batch, f"parametric {a_ms:g} + {b_ms:g} ms x batch, sigma {sigma:g}")

    @classmethod
    def from_cells(
        cls, cells: Sequence[dict[str, Any]], max_batch: int, source: str, overlap: float = 2.0,
        measured_padding: str = UNRECORDED_PADDING, gpu: bool = False,
    ) -> ServiceModel:  # fmt: skip
        """From planner benchmark cells of one max batch size (the smallest measured >= ``max_batch``,
        or the largest of all). ``measured_padding``: how the measured servers ran their calls
        (``bucket`` or ``exact``, :func:`predictor.tools.plan.load_benchmark`): a padded server's cell of
        ``c`` clients ran calls of ``c / overlap`` images as their bucket, so it is the point of the
        bucket's size (cells landing on one size averaged); the medians are then per real call size,
        and :class:`Simulation` charges a call's bucket or its rows as the simulated server pads.
        ``gpu``: the measured servers ran on a GPU (:func:`predictor.tools.plan.measured_on_gpu`), so a
        simulated ``--batch_padding auto`` pads as they did; a CPU benchmark's does not, however its
        servers ran (before the exact-size change every server padded)."""
        sizes = sorted({int(c["max_batch_size"]) for c in cells})
        fit = [b for b in sizes if b >= max_batch] or sizes[-1:]
        rows = sorted(
            (c for c in cells if int(c["max_batch_size"]) == fit[0] and c["requests"] > 0),
            key=lambda c: c["concurrency"],
        )
        conc = np.array([r["concurrency"] for r in rows], np.float64)
        p50 = np.array([r["p50_ms"] for r in rows], np.float64) / 1e3
        sig = np.log(np.maximum(np.array([r["p95_ms"] for r in rows]) / 1e3, p50) / p50) / Z95
        padded = measured_padding == "bucket"
        if padded:
            conc, (p50, sig) = padded_cells(conc, (p50, sig), overlap, server_buckets(fit[0]))
        ks = overlap * np.arange(1, max_batch + 1, dtype=np.float64)  # the cell of each batch size
        lat = np.interp(ks, conc, p50)
        if len(conc) >= 2:
            slope = max(0.0, (p50[-1] - p50[-2]) / (conc[-1] - conc[-2]))
            lat = np.where(ks > conc[-1], p50[-1] + slope * (ks - conc[-1]), lat)
        sigma = np.interp(ks, conc, sig)
        label = f"{source}, overlap {overlap:g}, measured {'padded' if padded else 'exact-size'} calls"
        med = tuple(float(v) for v in lat / overlap)
        return cls(med, tuple(float(v) for v in sigma), label, gpu=gpu)


def server_buckets(max_batch: int) -> tuple[int, ...]:
    """The batch buckets of a server with ``--max_batch_size max_batch`` (``Detector.buckets``,
    ``buckets_up_to``: ``DEFAULT_BUCKETS`` below it, and it; predictor.ssd.detector imports TensorFlow,
    so its constant is restated here and tests/test_simulate.py checks it against the detector's)."""
    return (*(b for b in (1, 2, 4, 8, 16, 32) if b < max_batch), max_batch)


def bucket_of(n: int, buckets: Sequence[int]) -> int:
    """The smallest of ``buckets`` holding ``n`` images (the largest past them)."""
    return next((b for b in buckets if b >= n), buckets[-1])


def padded_cells(
    conc: np.ndarray, values: tuple[np.ndarray, ...], overlap: float, buckets: Sequence[int]
) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """Closed-loop cells of a padded server as points of the call size it computed: the cell of ``c``
    clients (calls of ``c / overlap`` images, :class:`ServiceModel`) at ``overlap x`` the bucket holding
    them (below one image, or past the largest bucket, where the extra clients queue: as it is);
    ``values`` (per cell) averaged over the cells landing on one point.
    E.g. overlap 2, cells 4, 6, 8 -> 4, 8, 8 (6 clients: calls of 3 images, run as 4); with buckets up
    to 4, a cell of 16 stays at 16 (its calls are 4 images and its latency is mostly queueing)."""
    at = np.array([c if c < overlap or c / overlap > buckets[-1] + 1e-9
                   else overlap * bucket_of(math.ceil(c / overlap - 1e-9), buckets)
                   for c in conc])  # fmt: skip
    points = np.unique(at)
    return points, tuple(np.array([v[at == x].mean() for x in points]) for v in values)


@dataclass(frozen=True)
class CpuProfile:
    """A replica whose request work and model calls share CPU cores (docs/simulator.md, "CPU replicas").

    ``bucket_s``: the median model call per bucket size with nothing else running; a call of ``n`` images
    costs the smallest bucket holding them where the simulated server pads, else ``n`` rows
    (:meth:`call_s`; :func:`replica_pads` decides). ``batch_padding``: how the profile's servers ran their
    calls when it was measured (``bucket`` or ``exact``; a profile that does not say was recorded before
    the server ran exact sizes: ``bucket``): a replay simulates that. ``rule_bucket_s``: the timings the
    server decides with (its warm-up, logged as "seconds per bucket"; default ``bucket_s``): the batcher's
    efficient prefix of the queue (:meth:`DynamicBatcher._efficient_prefix`) and its efficient bucket.
    ``decode_s``: the median CPU work of one request outside the model call (HTTP, JPEG decode, resize,
    the answer), from a closed-loop client at concurrency 1: its p50 minus the bucket-1 call and the batch
    wait. Log-normal spreads ``decode_sigma``, ``model_sigma``. Both kinds of work run on ``cores`` cores
    as threads (``decode_threads`` decoding at once, ``model_threads`` per call): every job progresses at
    ``min(1, cores / runnable threads)`` of its alone speed (processor sharing); a model call with fewer
    cores than threads slows as Amdahl's law says, its parallel fraction from ``one_core_bucket_s`` (the
    same calls on one core; without it: perfectly parallel). ``lockstep``: once the runnable threads
    outnumber the cores, a call of more than one thread instead gets the cores of its threads working in
    lockstep (:class:`_Cpu`, :func:`lockstep_cores`; one-thread jobs keep processor sharing).
    ``model_calls_in_flight``: the servers' ``--model_calls_in_flight`` the calls were measured with
    (:func:`search_for_plan` and the CLI replay with it by default). ``idle_call_s``: what a call adds
    after the model idled (:meth:`idle_extra`); ``lockstep_linger_s``: how long a call stays at its
    lockstep speed after the crowding ends (:class:`_Cpu`); both from ``bench/call_load.py``.

    The event loop (any ``loop_*_s`` > 0; docs/simulator.md, "The event loop"): the server's main
    thread, one thread, first come first served, running on the replica's cores like a decode thread.
    It reads a request's head (``loop_head_s``), and the admission middleware refuses it there, before
    the body is read, when the batcher would refuse one image (``predictor/serving/middleware.py``
    ``AdmissionMiddleware`` asking ``SsdModel.busy_reason``: ``DynamicBatcher.refusal(1)``): a refused
    request costs that much of the loop. Else it reads the body and runs KServe's route and the codec
    (``loop_in_s``) up to the batcher's own admission (``SsdModel._detect``: ``batcher.admit``, which may
    still refuse), and after the model call writes the answer (``loop_out_s``). ``decode_s`` is then the
    decode thread's work alone, and ``net_s`` the rest of a request's time at concurrency 1 that no server
    thread spends (client, loopback), added to every answer. ``client_s``: the load generator's CPU per
    request, a job on the cores of the replica it sends to (the generator shares the machine; not in
    the request's path).
    """

    bucket_s: tuple[tuple[int, float], ...]
    decode_s: float
    decode_sigma: float = 0.2
    model_sigma: float = 0.1
    decode_threads: int = 2
    model_threads: int = 2
    cores: float = 2.0
    source: str = "cpu profile"
    rule_bucket_s: tuple[tuple[int, float], ...] | None = None
    one_core_bucket_s: tuple[tuple[int, float], ...] | None = None
    loop_head_s: float = 0.0
    loop_in_s: float = 0.0
    loop_out_s: float = 0.0
    net_s: float = 0.0
    spread: tuple[float, ...] | None = None
    client_s: float = 0.0
    lockstep: bool = False
    # the servers' --model_calls_in_flight when the profile was measured (its call times were
    # calibrated so): the simulator and the planner replay with it unless told otherwise
    model_calls_in_flight: int = 1
    # each real replica's own warm-up timings (replica i decides with entry i mod len): every server's
    # batcher decides with its own warm-up's "seconds per bucket" (DynamicBatcher's bucket_seconds),
    # not with the replicas' mean; None: every replica decides with ``rule_bucket_s``
    replica_rule_bucket_s: tuple[tuple[tuple[int, float], ...], ...] | None = None
    batch_padding: str = UNRECORDED_PADDING
    # a call that starts after the replica's model has been idle ``gap`` seconds costs ``extra`` more
    # seconds of work: ((gap, extra), ...), measured by bench/call_load.py ("gap": one-image calls after
    # an idle gap against back to back); None: no such cost (docs/simulator.md, "Large calls under
    # open-loop load")
    idle_call_s: tuple[tuple[float, float], ...] | None = None
    # with ``lockstep``: a call stays at its lockstep speed this long after the other threads stopped
    # crowding its cores (docs/simulator.md, "Large calls under open-loop load"; bench/call_load.py's
    # open-loop stream); 0: only while they crowd them
    lockstep_linger_s: float = 0.0

    def factor(self, rng: np.random.Generator, sigma: float) -> float:
        """A job's duration over its median: drawn from ``spread`` (the quantiles, at equally spaced
        probabilities from 0 to 1, of a request's time at concurrency 1 over its median: the measured
        distribution, tail included) when given, else log-normal with ``sigma``."""
        if self.spread:
            q = self.spread
            return float(np.interp(rng.random() * (len(q) - 1), np.arange(len(q)), q))
        return math.exp(sigma * rng.standard_normal()) if sigma > 0 else 1.0

    @property
    def buckets(self) -> tuple[int, ...]:
        return tuple(b for b, _ in self.bucket_s)

    def call_s(self, n: int, *, pads: bool) -> float:
        """Median seconds of a call of ``n`` images alone on the cores: ``pads``: the bucket holding
        them (past the largest: that many calls of it); else ``n`` rows, linear between the buckets
        around ``n`` (bench/RESULTS.md, "Padding on a CPU": an exact call costs per image about what a
        full bucket does), past the largest calls of it and one of the rest. E.g. buckets 2: 20 ms,
        4: 36 ms: 3 images cost 36 ms padded, 28 ms exact."""
        top, t_top = self.bucket_s[-1]
        if pads:
            for b, t in self.bucket_s:
                if b >= n:
                    return t
            return t_top * math.ceil(n / top)
        if n > top:
            rest = n % top
            return t_top * (n // top) + (self.call_s(rest, pads=False) if rest else 0.0)
        sizes = [b for b, _ in self.bucket_s]
        return float(np.interp(n, sizes, [t for _, t in self.bucket_s]))

    def idle_extra(self, idle_s: float) -> float:
        """Seconds of work a call adds after the model has been idle ``idle_s`` (``idle_call_s``,
        linear between its points, 0 at no gap, its last point's past it; 0 without a table). E.g.
        ((0.005, 0.0005), (0.03, 0.0075)): 15 ms idle adds 0.5 + (10 / 25) x 7 = 3.3 ms."""
        if not self.idle_call_s:
            return 0.0
        gaps = [0.0, *(g for g, _ in self.idle_call_s)]
        return float(np.interp(idle_s, gaps, [0.0, *(e for _, e in self.idle_call_s)]))

    def parallel_fraction(self, n: int) -> float:
        """Amdahl's ``p`` of a call of ``n`` images from its times on ``model_threads`` cores and on one:
        ``t_m = t_1 (1 - p + p / m)``; 1 without one-core timings (or with one thread)."""
        if not self.one_core_bucket_s or self.model_threads <= 1:
            return 1.0
        b = self._bucket(n)
        t1 = dict(self.one_core_bucket_s).get(b)
        if not t1:
            return 1.0
        ratio = dict(self.bucket_s)[b] / t1  # the bucket's p, whether the call pads or not
        return min(1.0, max(0.0, (1.0 - ratio) / (1.0 - 1.0 / self.model_threads)))

    def _bucket(self, n: int) -> int:
        return next((b for b, _ in self.bucket_s if b >= n), self.bucket_s[-1][0])

    def up_to(self, max_batch: int) -> CpuProfile:
        """The buckets a server with ``--max_batch_size max_batch`` has (``buckets_up_to``): the smaller
        ones, and ``max_batch`` itself (its time interpolated when it was not measured)."""

        def cut(table: tuple[tuple[int, float], ...]) -> tuple[tuple[int, float], ...]:
            times = dict(table)
            if max_batch not in times:
                bs = sorted(times)
                times[max_batch] = float(np.interp(max_batch, bs, [times[b] for b in bs]))
            return tuple((b, t) for b, t in sorted(times.items()) if b <= max_batch)

        rule = cut(self.rule_bucket_s) if self.rule_bucket_s else None
        one = cut(self.one_core_bucket_s) if self.one_core_bucket_s else None
        each = tuple(cut(t) for t in self.replica_rule_bucket_s) if self.replica_rule_bucket_s else None
        return dataclasses.replace(
            self, bucket_s=cut(self.bucket_s), rule_bucket_s=rule, one_core_bucket_s=one,
            replica_rule_bucket_s=each,
        )  # fmt: skip

    def rule_for(self, replica: int) -> tuple[tuple[int, float], ...]:
        """The timings replica ``replica``'s batcher decides with: its own warm-up's
        (``replica_rule_bucket_s``, entry ``replica`` mod their number), else ``rule_bucket_s``, else
        ``bucket_s``."""
        if self.replica_rule_bucket_s:
            return self.replica_rule_bucket_s[replica % len(self.replica_rule_bucket_s)]
        return self.rule_bucket_s or self.bucket_s

    def batcher(self, max_batch: int, replica: int = 0, *, pads: bool) -> Any:
        """A :class:`DynamicBatcher` with replica ``replica``'s warm-up timings (:meth:`rule_for`): its
        efficient bucket and prefix rule; ``pads``: its calls are padded (``pads_to_bucket``: the split
        of a call for its bucket and the fill wait apply only then)."""
        from predictor.serving.batcher import DynamicBatcher

        cut = self.up_to(max_batch)
        return DynamicBatcher(
            _no_model,
            max_batch_size=max_batch,
            bucket_seconds=dict(cut.rule_for(replica)),
            pads_to_bucket=pads,
        )

    def to_json(self) -> dict[str, Any]:
        out = {**asdict(self), "bucket_s": {str(b): t for b, t in self.bucket_s}}
        for key in ("rule_bucket_s", "one_core_bucket_s"):
            table = getattr(self, key)
            out[key] = {str(b): t for b, t in table} if table else None
        each = self.replica_rule_bucket_s
        out["replica_rule_bucket_s"] = [{str(b): t for b, t in table} for table in each] if each else None
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CpuProfile:
        fields = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in data.items() if k in fields}
        for key in ("bucket_s", "rule_bucket_s", "one_core_bucket_s"):
            if data.get(key):
                kw[key] = tuple(sorted((int(b), float(t)) for b, t in data[key].items()))
        if kw.get("spread"):
            kw["spread"] = tuple(float(v) for v in kw["spread"])
        if kw.get("idle_call_s"):
            kw["idle_call_s"] = tuple(sorted((float(g), float(e)) for g, e in kw["idle_call_s"]))
        if kw.get("replica_rule_bucket_s"):
            kw["replica_rule_bucket_s"] = tuple(
                tuple(sorted((int(b), float(t)) for b, t in table.items()))
                for table in kw["replica_rule_bucket_s"]
            )
        return cls(**kw)


def fill_wait(batcher: Any, queued: int, decoding: int, oldest_enqueued: float, now: float) -> float:
    """Seconds the server's next call waits for images being decoded (``DynamicBatcher._fill_wait``, the
    server's own code, on this state): ``queued`` images (one per request), ``decoding`` images between
    admission and the queue (waiting for a decode thread or decoding), the oldest queued at
    ``oldest_enqueued``."""
    batcher._queued_images, batcher._decoding_images = queued, decoding
    batcher._queue = collections.deque([_Queued(oldest_enqueued)])
    try:
        return float(batcher._fill_wait(now))
    finally:
        batcher._queue, batcher._queued_images, batcher._decoding_images = collections.deque(), 0, 0


@dataclass(frozen=True)
class _Queued:
    enqueued: float  # the only field of batcher._Item that _fill_wait reads


def _no_model(*args: Any, **kwargs: Any) -> dict[str, np.ndarray]:
    raise RuntimeError("the simulator's batcher only chooses batch sizes")


class _Cpu:
    """Processor sharing on ``cores`` cores: the jobs' runnable threads (a decode: 1, a model call: its
    intra-op threads) share them equally, ``share = min(1, cores / threads)`` of a core each. A
    one-thread job progresses at ``share`` of its alone speed; a model call of ``m`` threads gets
    ``k = m x share`` cores and progresses as Amdahl's law says with the parallel fraction ``p`` of its
    bucket (:func:`amdahl_speed`). Jobs: ``[seconds of work left (alone), threads, kind, payload, p]``.

    ``lockstep`` (docs/simulator.md, "Model calls under load"): a model call's threads work in lockstep
    (each TensorFlow op is split over the intra-op pool and waits for its last shard), and the kernel
    keeps each runnable thread on one core's run queue, so a call advances at the pace of its shard on
    the busiest core, ``ceil(threads / cores)`` threads deep: ``k = m / ceil(threads / cores)`` cores
    (instead of ``m x share``) while one-thread jobs keep their ``share``; the rest of the cores idles
    (processor sharing wastes none). :func:`lockstep_cores`. With ``r`` >= 2 calls on a replica each
    call's share of the pool is ``m / r`` threads; when that is at most one thread the call is a
    one-thread job and gets processor sharing's ``share`` even with ``lockstep`` (e.g. 2 calls of a
    2-thread pool: 1 thread each). ``linger``: with ``lockstep``, calls stay out of step that many
    seconds after the threads stop outnumbering the cores, at the cores of beside one more thread
    (:meth:`mark`; the linger's end is an event, :meth:`next_done`).
    """

    def __init__(self, cores: float, lockstep: bool = False, linger: float = 0.0) -> None:
        self.cores = cores
        self.lockstep = lockstep
        self.linger = linger  # seconds a call stays out of step after the crowding ends
        self.until = 0.0  # out of step until then (inf while crowded)
        self.jobs: list[list[Any]] = []
        self.last = 0.0
        self.version = 0

    def threads(self) -> float:
        """Runnable threads: each one-thread job's, and each replica's pool once however many of its
        calls run."""
        pools = {id(j[3][0]): j[1] for j in self.jobs if j[2] == "model"}
        return sum(j[1] for j in self.jobs if j[2] != "model") + sum(pools.values())

    def mark(self) -> None:
        """After the jobs changed (at ``last``): while the threads outnumber the cores, calls are out of
        step; when that ends, they stay so ``linger`` seconds more (``lockstep`` only)."""
        if self.threads() > self.cores:
            self.until = math.inf
        elif self.until == math.inf:
            self.until = self.last + self.linger

    def speeds(self) -> list[float]:
        # a replica's calls in flight share its one TensorFlow intra-op pool: r calls of m threads
        # are m threads, m / r each (each call still normalised to its m threads alone)
        calls = collections.Counter(id(j[3][0]) for j in self.jobs if j[2] == "model")
        threads = self.threads()
        share = min(1.0, self.cores / threads) if threads else 1.0
        if self.lockstep and threads > self.cores:
            gang = lambda m: lockstep_cores(m, threads, self.cores)  # noqa: E731
        elif self.lockstep and self.last < self.until:  # lingering: as beside one more thread
            gang = lambda m: lockstep_cores(m, math.floor(self.cores) + 1, self.cores)  # noqa: E731
        else:
            gang = lambda m: m * share  # noqa: E731
        out = []
        for j in self.jobs:
            if j[1] <= 1 and j[2] != "model":
                out.append(share)
                continue
            own = j[1] / calls[id(j[3][0])] if j[2] == "model" else j[1]
            out.append(amdahl_speed(j[4], j[1], gang(own) if own > 1 else own * share))
        return out

    def advance(self, now: float) -> None:
        if self.jobs:
            dt = now - self.last
            for j, v in zip(self.jobs, self.speeds(), strict=True):
                j[0] -= dt * v
        self.last = now

    def next_done(self, now: float) -> float | None:
        """The next job's end, or the end of a linger before it (the calls' speed changes then)."""
        if not self.jobs:
            return None
        done = now + min(max(0.0, j[0]) / v for j, v in zip(self.jobs, self.speeds(), strict=True))
        if self.lockstep and now < self.until < done:
            return self.until
        return done

    def pop_done(self) -> list[list[Any]]:
        done = [j for j in self.jobs if j[0] <= 1e-9]
        self.jobs = [j for j in self.jobs if j[0] > 1e-9]
        return done


def lockstep_cores(m: float, threads: float, cores: float) -> float:
    """Cores a call of ``m`` threads working in lockstep gets among ``threads`` runnable threads on
    ``cores`` cores: its slowest thread shares the busiest run queue, ``ceil(threads / cores)`` deep
    (the threads spread as evenly as the kernel's load balancing puts them), so ``m / ceil(...)``; all
    ``m`` when every thread has a core. E.g. 2 threads beside one decode on 2 cores: 1 core (processor
    sharing: 4/3)."""
    if threads <= cores:
        return float(m)
    return m / math.ceil(threads / cores - 1e-9)


def amdahl_speed(p: float, m: int, k: float) -> float:
    """Speed, relative to alone on its ``m`` cores, of work whose parallel fraction is ``p`` when it
    gets ``k`` cores: ``T(k) = T1 x (1 - p + p / k)`` for ``k >= 1``, ``T1 / k`` below one core."""
    alone = 1.0 - p + p / m
    return alone / (1.0 - p + p / k) if k >= 1.0 else alone * k


# --------------------------------------------------------------------------------------- traces
def arrivals(rates: np.ndarray, seed: int) -> np.ndarray:
    """Poisson arrival times (s) for per-second rates: Poisson counts per second, uniform inside it."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(np.maximum(rates, 0.0))
    times = [s + np.sort(rng.random(n)) for s, n in enumerate(counts) if n]
    return np.concatenate(times) if times else np.zeros(0)


def trace_rates(spec: str, seed: int = 0) -> np.ndarray:
    """Per-second request rates from a trace spec (docs/simulator.md, "Traces"):

    ``constant:R:SECONDS``; ``step:R0:R1:SECONDS[:AT]`` (R1 from AT, default half-way);
    ``ramp:R0:R1:SECONDS`` (linear); ``diurnal:MEAN:AMPLITUDE:SECONDS[:PERIOD]`` (sine, trough at 0, peak
    at half the period; period default SECONDS); ``mmpp:LOW:HIGH:SECONDS:MEAN_LOW_S:MEAN_HIGH_S`` (a
    two-state Markov-modulated Poisson process, seeded); ``csv:PATH`` (one rate per line, or
    ``second,rate`` rows; a header is skipped); ``A+B``: the sum of traces A and B, second by second
    (the shorter one is 0 past its end), e.g. a diurnal day with MMPP bursts on top.
    """
    if "+" in spec:
        parts = [trace_rates(part, seed + 101 * i) for i, part in enumerate(spec.split("+"))]
        total = np.zeros(max(len(r) for r in parts))
        for r in parts:
            total[: len(r)] += r
        return total
    kind, _, rest = spec.partition(":")
    if kind == "csv":
        return _csv_rates(Path(rest))
    args = [float(v) for v in rest.split(":")] if rest else []
    if kind == "constant" and len(args) == 2:
        return np.full(int(args[1]), args[0])
    if kind == "step" and len(args) in (3, 4):
        n = int(args[2])
        at = int(args[3]) if len(args) == 4 else n // 2
        return np.where(np.arange(n) < at, args[0], args[1]).astype(np.float64)
    if kind == "ramp" and len(args) == 3:
        n = int(args[2])
        return np.linspace(args[0], args[1], n)
    if kind == "diurnal" and len(args) in (3, 4):
        n = int(args[2])
        period = args[3] if len(args) == 4 else float(n)
        t = np.arange(n, dtype=np.float64)
        return np.maximum(0.0, args[0] - args[1] * np.cos(2 * math.pi * t / period))
    if kind == "mmpp" and len(args) == 5:
        low, high, n, m_low, m_high = args
        rng = np.random.default_rng(seed + 7919)
        out, state, left = np.empty(int(n)), 0, rng.exponential(m_low)
        for s in range(int(n)):
            while left <= 0:
                state = 1 - state
                left += rng.exponential(m_high if state else m_low)
            out[s] = high if state else low
            left -= 1.0
        return out
    raise ValueError(f"unknown or malformed trace {spec!r} (see --help)")


def _csv_rates(path: Path) -> np.ndarray:
    rows = [r for r in csv.reader(path.read_text().splitlines()) if r and r[0].strip()]
    values = []
    for r in rows:
        try:
            values.append(float(r[-1]))
        except ValueError:
            if values:
                raise ValueError(f"{path}: not a number: {r!r}") from None
    return np.asarray(values, np.float64)


# --------------------------------------------------------------------------------------- fleet
@dataclass
class FleetConfig:
    """What is simulated (defaults: the server's and Knative's)."""

    mode: str = "knative"  # knative | hpa | keda
    max_batch_size: int = 32
    batch_wait_s: float = 0.002
    max_queue_images: int = 256
    request_timeout_s: float = 30.0
    shed_standing_queue: bool = True
    container_concurrency: int = 64
    cold_start_s: float = 6.8
    initial_replicas: int = 1
    kpa: KpaConfig = field(default_factory=KpaConfig)
    hpa: HpaConfig = field(default_factory=HpaConfig)
    # KEDA AverageValue on load (the chart's default: offered images/s in % of capacity) or queue
    # (ssd_queue_images); busy: % of time in model
    hpa_metric: str = "load"
    scrape_s: float = 15.0  # Prometheus scrape interval behind KEDA's query
    activator_timeout_s: float = 300.0  # Knative's revision timeoutSeconds default
    # CPU replicas (a CpuProfile): None: each replica has the profile's cores to itself; a number: every
    # replica's threads share one set of that many cores (several replicas on one machine).
    shared_cores: float | None = None
    # the server's --model_calls_in_flight (DynamicBatcher.max_calls_in_flight) as it runs them: the
    # profile's (what its calls were measured with), 1 for the parametric replicas, which cannot share
    # cores (check_calls_in_flight)
    model_calls_in_flight: int = 1
    # Standard mode's Service: "random" (kube-proxy's pick) or "round-robin" (a client in front of the
    # replicas, as bench.simulate_check's).
    balancer: str = "random"
    # the server's --batch_padding and --xla: whether a call costs its bucket or its rows (replica_pads)
    batch_padding: str = ServingOptions.batch_padding
    xla: bool = ServingOptions.xla


def replica_pads(cfg: FleetConfig, svc: ServiceModel | CpuProfile) -> bool:
    """Whether the simulated servers pad a model call to its bucket, as the server decides
    (:func:`predictor.serving.options.pads_to_bucket` on ``cfg``'s ``--batch_padding`` and ``--xla``): a
    CPU profile's replicas have no GPU; a service model's have one when it says so
    (:attr:`ServiceModel.gpu`). So ``auto`` runs a CPU replica's calls at their exact size and pads on
    a GPU or with XLA.

    Raises:
      ValueError: ``exact`` with ``xla`` (the server refuses it).
    """
    return pads_to_bucket(cfg.batch_padding, xla=cfg.xla, gpu=isinstance(svc, ServiceModel) and svc.gpu)


@dataclass(slots=True)
class _Request:
    rid: int
    arrival: float
    status: str = ""
    done: float = math.nan
    replica: int = -1
    admitted_at: float = math.nan
    queued: bool = False
    deadline: float = math.inf


class _Replica:
    """One server: admission, the batcher's queue, up to ``model_calls_in_flight`` model calls at once."""

    def __init__(
        self, rid: int, created: float, ready_at: float, cfg: FleetConfig, svc: ServiceModel | CpuProfile,
        cpu: _Cpu | None = None,
    ):  # fmt: skip
        self.rid, self.created, self.ready_at = rid, created, ready_at
        self.cfg, self.svc = cfg, svc
        self.cpu = cpu  # CPU replicas: the cores its decodes and model calls share
        self.decode_wait: collections.deque[_Request] = collections.deque()
        self.decoding = 0
        self.decoded = 0  # decoded, waiting for the event loop to queue them
        self.loop_wait: collections.deque[tuple[str, Any]] = collections.deque()  # the event loop
        self.loop_busy = False
        self.ready = False
        self.draining = False
        self.gone_at: float | None = None
        self.queue: collections.deque[_Request] = collections.deque()
        self.running: list[int] = []  # images of each model call running (DynamicBatcher._calls)
        self.busy_since = 0.0  # when calls went from none running to one (DynamicBatcher._busy_since)
        self.last_end: float | None = None  # the last call's end (DynamicBatcher._last_call_end)
        self.busy_until = 0.0  # ServiceModel replicas: the latest running call's end
        self.admitted = 0  # images admitted (queued or running), as DynamicBatcher.admitted_images
        self.in_flight = 0  # requests sent to it and not answered (Knative's breaker)
        self.busy_s = 0.0
        self.wake_at: float | None = None
        self.ewma_images = 0.0
        self.ewma_seconds = 0.0  # busy seconds (overlapping calls counted once): the rate's
        self.ewma_call_seconds = 0.0  # one call's own seconds: the standing-queue detector's
        self.standing = False
        self.waiting_since: float | None = None
        self.full_refusals = 0
        self.refusals_at_backlog = 0
        self.offered = 0
        self.window = (0.0, 0)
        self.pads = replica_pads(cfg, svc)  # a call costs its bucket (True) or its rows
        self.buckets = server_buckets(cfg.max_batch_size)
        if isinstance(svc, CpuProfile):  # the server's own rule on its warm-up timings
            self.batcher = svc.batcher(cfg.max_batch_size, rid, pads=self.pads)
            self.efficient = self.batcher.efficient_bucket()
            return
        rates = {b: b / svc.median(b) for b in self.buckets}
        best = max(rates.values())
        self.efficient = min(b for b, r in rates.items() if r >= EFFICIENT_FRACTION * best)

    @property
    def busy(self) -> bool:
        return bool(self.running)

    @property
    def standing_limit(self) -> int:
        """``DynamicBatcher.standing_limit``: one call of the efficient bucket per call that may run,
        plus one waiting."""
        return (self.cfg.model_calls_in_flight + 1) * self.efficient

    def may_start(self) -> bool:
        """A call may be formed now (``DynamicBatcher._work``): fewer than ``model_calls_in_flight``
        run, and while one runs the queue holds as many images as the smallest running call
        (``DynamicBatcher._overlap_waits``; else it waits for a call's end)."""
        if len(self.running) >= self.cfg.model_calls_in_flight:
            return False
        return not self.running or len(self.queue) >= min(self.running)

    def observe_call(self, n: int, start: float, now: float) -> None:
        """``DynamicBatcher._observe_end`` / ``_observe_call``: the rate gets the busy time since the later
        of the last call's end and the busy spell's start; the detector a call's own time."""
        busy = now - (self.busy_since if self.last_end is None else max(self.busy_since, self.last_end))
        self.last_end = now
        call = now - start
        if not self.ewma_seconds:
            self.ewma_images, self.ewma_seconds = float(n), busy
        else:
            self.ewma_images += EWMA * (n - self.ewma_images)
            self.ewma_seconds += EWMA * (busy - self.ewma_seconds)
        first = not self.ewma_call_seconds
        self.ewma_call_seconds = (
            call if first else self.ewma_call_seconds + EWMA * (call - self.ewma_call_seconds)
        )

    def capacity(self) -> float:
        """``ssd_capacity_images_per_second``: images per second of the efficient bucket's call, from the
        timings the server decides with (a CPU replica's warm-up; else the median call)."""
        if isinstance(self.svc, CpuProfile):
            return float(self.batcher.capacity_images_per_second or 0.0)
        return self.efficient / self.svc.median(self.efficient)

    # batcher.refusal
    def refusal(self) -> bool:
        if not self.admitted:
            return False
        if self.admitted + 1 > self.cfg.max_queue_images:
            self.full_refusals += 1
            return True
        if self.standing and self.admitted + 1 > self.standing_limit:
            self.offered += 1
            return True
        return False

    def rate(self) -> float:
        return self.ewma_images / self.ewma_seconds if self.ewma_seconds > 0 else 0.0

    # batcher.note_wait
    def note_wait(self, waited: float, now: float) -> list[_Request]:
        """Returns the requests shed from the queue when a standing queue is recognised."""
        if not self.cfg.shed_standing_queue or not self.ewma_call_seconds:
            return []
        call = self.ewma_call_seconds
        hold = max(1.0, 4 * call)
        if waited > 2 * call:
            if self.waiting_since is None:
                self.waiting_since = now
                self.refusals_at_backlog = self.full_refusals
            elif (
                now - self.waiting_since >= hold
                and not self.standing
                and self.full_refusals > self.refusals_at_backlog
            ):
                self.standing = True
                self.window = (now, self.offered)
                shed = []
                while self.queue and len(self.queue) > self.standing_limit:
                    shed.append(self.queue.popleft())
                return shed
        else:
            self.waiting_since = None
            if self.standing and waited < call and now - self.window[0] >= hold:
                start, offered = self.window
                if self.offered - offered <= self.rate() * (now - start):
                    self.standing = False
                self.window = (now, self.offered)
        return []


@dataclass
class Result:
    """Per request: arrival, done, status, replica; per second: the fleet's state."""

    requests: list[_Request]
    timeline: list[dict[str, float]]
    replica_seconds: float
    config: dict[str, Any]
    horizon_s: float = 0.0

    def summary(self, slo_ms: float | None = None, window_s: int = 60) -> dict[str, Any]:
        ok = np.array([r.done - r.arrival for r in self.requests if r.status == "200"]) * 1e3
        statuses = collections.Counter(r.status or "unfinished" for r in self.requests)
        span = max(int(self.horizon_s) or len(self.timeline), 1)
        out: dict[str, Any] = {
            "requests": len(self.requests),
            "statuses": dict(sorted(statuses.items())),
            "p50_ms": float(np.percentile(ok, 50)) if len(ok) else math.nan,
            "p95_ms": float(np.percentile(ok, 95)) if len(ok) else math.nan,
            "p99_ms": float(np.percentile(ok, 99)) if len(ok) else math.nan,
            "throughput_rps": len(ok) / span,
            "rejected_503": statuses.get("503", 0),
            "replica_hours": self.replica_seconds / 3600.0,
            "peak_replicas": max((t["replicas"] for t in self.timeline), default=0),
        }
        if slo_ms is not None:
            within = sum(
                1 for r in self.requests if r.status == "200" and (r.done - r.arrival) * 1e3 <= slo_ms
            )
            out["slo_ms"] = slo_ms
            out["slo_attainment"] = within / max(len(self.requests), 1)
            p95s = [t["p95_ms"] for t in _windows(self.requests, span, window_s)]
            met = [p <= slo_ms for p in p95s if not math.isnan(p)]
            out["windows_p95_met"] = f"{sum(met)}/{len(met)} windows of {window_s} s"
        return out


def _windows(requests: Sequence[_Request], span: int, width: int) -> list[dict[str, float]]:
    """p95 of the 200s by arrival window (NaN for an empty window)."""
    groups: dict[int, list[float]] = collections.defaultdict(list)
    for r in requests:
        if r.status == "200":
            groups[int(r.arrival // width)].append((r.done - r.arrival) * 1e3)
    return [
        {"t": w * width, "p95_ms": float(np.percentile(groups[w], 95)) if groups[w] else math.nan}
        for w in range(math.ceil(span / width))
    ]


class Simulation:
    """The event loop: arrivals, model calls, batcher waits, deadlines, cold starts, autoscaler ticks."""

    def __init__(self, cfg: FleetConfig, svc: ServiceModel | CpuProfile, seed: int = 0):
        self.cfg, self.svc = cfg, svc
        self.cpu_model = isinstance(svc, CpuProfile)
        self.loop_on = isinstance(svc, CpuProfile) and svc.loop_head_s + svc.loop_in_s + svc.loop_out_s > 0
        self.shared_cpu = None
        if isinstance(svc, CpuProfile) and cfg.shared_cores:
            self.shared_cpu = _Cpu(cfg.shared_cores, svc.lockstep, svc.lockstep_linger_s)
        self.closed_until = -1.0  # closed-loop clients (run_closed): each answer sends the next request
        self.more: list[_Request] = []
        self.rng = np.random.default_rng(seed + 1)
        self.lb_rng = np.random.default_rng(seed + 2)
        self.events: list[tuple[float, int, str, Any]] = []
        self.seq = 0
        self.now = 0.0
        self.replicas: list[_Replica] = []
        self.pending: collections.deque[_Request] = collections.deque()  # Knative activator buffer
        self.rr = 0
        self.kpa = Kpa(cfg.kpa)
        self.hpa = Hpa(cfg.hpa)
        self.conc = WindowAverage()
        self.rps = WindowAverage()
        self.conc_area = 0.0
        self.conc_last = 0.0
        self.conc_value = 0
        self.scraped_queue = 0.0  # the KEDA query's value at the last scrape (keda_metric)
        self.arrived_marks: collections.deque[tuple[float, int]] = collections.deque()  # (t, arrivals)
        self.busy_marks: dict[int, tuple[float, float]] = {}  # replica -> (time, busy_s) at the last sync
        self.replica_seconds = 0.0
        self.calls: list[tuple[float, int, float]] = []  # CPU replicas: (start, images, seconds) per call

    # ------------------------------------------------------------------ bookkeeping
    def push(self, t: float, kind: str, payload: Any = None) -> None:
        self.seq += 1
        heapq.heappush(self.events, (t, self.seq, kind, payload))

    def _concurrency(self, delta: int) -> None:
        """Total in-flight requests (replicas + activator): time-weighted into 1 s buckets."""
        self._flush_concurrency(self.now)
        self.conc_value += delta

    def _flush_concurrency(self, t: float) -> None:
        while int(self.conc_last) < int(t):
            edge = math.floor(self.conc_last) + 1
            self.conc_area += self.conc_value * (edge - self.conc_last)
            self.conc.record(int(edge) - 1, self.conc_area)
            self.conc_area, self.conc_last = 0.0, float(edge)
        self.conc_area += self.conc_value * (t - self.conc_last)
        self.conc_last = t

    def live(self) -> list[_Replica]:
        return [r for r in self.replicas if not r.draining and r.gone_at is None]

    def ready(self) -> list[_Replica]:
        return [r for r in self.replicas if r.ready and not r.draining]

    def finish(self, req: _Request, status: str, t: float) -> None:
        req.status, req.done = status, t
        self._concurrency(-1)
        if t < self.closed_until:
            nxt = _Request(-1 - len(self.more), t)
            self.more.append(nxt)
            self.push(t, "client", nxt)

    def run_closed(self, clients: int, seconds: float) -> Result:
        """``clients`` closed-loop clients for ``seconds``: each sends its next request when the last is
        answered (as bench.loadgen's closed loop)."""
        self.closed_until = seconds
        return self.run(np.zeros(clients), horizon_s=seconds)

    def new_replica(self, ready_at: float) -> _Replica:
        cpu = None
        if isinstance(self.svc, CpuProfile):
            cpu = self.shared_cpu or _Cpu(self.svc.cores, self.svc.lockstep, self.svc.lockstep_linger_s)
        rep = _Replica(len(self.replicas), self.now, ready_at, self.cfg, self.svc, cpu)
        self.replicas.append(rep)
        return rep

    # ------------------------------------------------------------------ CPU replicas
    def cpu_add(
        self, cpu: _Cpu, work_s: float, threads: int, kind: str, payload: Any, p: float = 1.0
    ) -> None:
        """Start a job of ``work_s`` seconds (alone) on ``cpu``; a ``cpu`` event ends it."""
        cpu.advance(self.now)
        cpu.jobs.append([work_s, threads, kind, payload, p])
        self._cpu_next(cpu)

    def _cpu_next(self, cpu: _Cpu) -> None:
        cpu.mark()
        cpu.version += 1
        t = cpu.next_done(self.now)
        if t is not None:
            self.push(t, "cpu", (cpu, cpu.version))

    def on_cpu(self, cpu: _Cpu, version: int) -> None:
        if version != cpu.version:
            return  # the jobs changed since this completion time was computed
        cpu.advance(self.now)
        done = cpu.pop_done()
        self._cpu_next(cpu)
        for _, _, kind, payload, _ in done:
            if kind == "decoded":
                self.on_decoded(*payload)
            elif kind == "loop":
                self.on_loop(*payload)
            elif kind == "client":
                pass  # the load generator's CPU: it only slowed the others
            elif self.loop_on:  # the batcher's worker resumes on the event loop (batcher._execute)
                self.loop_job(payload[0], "call", payload)
            else:
                rep, batch, n, start = payload
                self.on_done(rep, batch, n, self.now - start)

    def loop_job(self, rep: _Replica, stage: str, payload: Any) -> None:
        """Queue ``stage`` on the replica's event loop (one thread, first come first served): a request's
        "head" (up to the middleware's check), "in" (up to the batcher's admission), "out" (the answer),
        each ``loop_*_s`` of work; and, with no work of their own but waiting their turn, "queued" (a
        decoded request's coroutine resumes and queues it: ``SsdModel._detect``) and "call" (the
        batcher's worker, an asyncio task, resumes after a model call: ``DynamicBatcher._execute``
        answers the batch, and only then forms the next call)."""
        rep.loop_wait.append((stage, payload))
        self.start_loop(rep)

    def start_loop(self, rep: _Replica) -> None:
        prof = self.svc
        assert isinstance(prof, CpuProfile) and rep.cpu is not None
        if rep.loop_busy or not rep.loop_wait:
            return
        stage, req = rep.loop_wait.popleft()
        rep.loop_busy = True
        median = {"head": prof.loop_head_s, "in": prof.loop_in_s, "out": prof.loop_out_s}.get(stage, 0.0)
        work = median * prof.factor(self.rng, prof.decode_sigma) if median else 0.0
        self.cpu_add(rep.cpu, work, 1, "loop", (rep, stage, req))

    def on_loop(self, rep: _Replica, stage: str, req: Any) -> None:
        rep.loop_busy = False
        if stage == "call":
            _, batch, n, start = req
            self.on_done(rep, batch, n, self.now - start)  # seconds as _execute times them
        elif stage == "queued":
            rep.decoded -= 1
            if not req.status:  # else answered 503 at its deadline meanwhile
                self.enqueue(rep, req)
        elif stage == "head":
            if rep.refusal():  # AdmissionMiddleware: busy_reason() = batcher.refusal(1)
                self.answer(rep, req, "503")
            else:
                self.loop_job(rep, "in", req)
        elif stage == "in":
            self.admit(rep, req)
        else:
            self.answer(rep, req, "200")
        self.start_loop(rep)

    def start_decodes(self, rep: _Replica) -> None:
        """The server's decode pool: up to ``decode_threads`` requests decode at once, in order."""
        prof = self.svc
        assert isinstance(prof, CpuProfile) and rep.cpu is not None
        while rep.decode_wait and rep.decoding < prof.decode_threads:
            req = rep.decode_wait.popleft()
            if req.status:
                continue  # its deadline passed while it waited
            rep.decoding += 1
            work = prof.decode_s * prof.factor(self.rng, prof.decode_sigma)
            self.cpu_add(rep.cpu, work, 1, "decoded", (rep, req))

    def on_decoded(self, rep: _Replica, req: _Request) -> None:
        rep.decoding -= 1
        self.start_decodes(rep)
        if req.status:
            return  # answered 503 at its deadline meanwhile
        if self.loop_on:
            rep.decoded += 1  # still inside batcher.decoding() until its coroutine resumes
            self.loop_job(rep, "queued", req)
            return
        self.enqueue(rep, req)

    def enqueue(self, rep: _Replica, req: _Request) -> None:
        req.admitted_at, req.queued = self.now, True  # the batcher's enqueue time
        rep.queue.append(req)
        self.try_start(rep)

    # ------------------------------------------------------------------ routing
    def arrive(self, req: _Request) -> None:
        self._concurrency(+1)
        self.rps.record(int(self.now), 1.0)
        if self.cfg.mode == "knative":
            self.pending.append(req)
            if not self.live():
                self.scale_to(max(1, self.cfg.kpa.min_scale))  # the activator pokes the autoscaler
            self.dispatch()
            return
        ready = self.ready()
        if not ready:
            self.finish(req, "503", self.now)  # no endpoint: connection refused
            return
        if self.cfg.balancer == "round-robin":
            self.rr += 1
            self.send(ready[(self.rr - 1) % len(ready)], req)
            return
        self.send(ready[int(self.lb_rng.integers(len(ready)))], req)

    def dispatch(self) -> None:
        """Knative activator: FIFO buffer, each request to a replica with a free slot."""
        cc = self.cfg.container_concurrency
        while self.pending:
            head = self.pending[0]
            if self.now - head.arrival >= self.cfg.activator_timeout_s:
                self.pending.popleft()
                self.finish(head, "504", self.now)
                continue
            ready = self.ready()
            if not ready:
                return
            if cc == 0:
                target = ready[int(self.lb_rng.integers(len(ready)))]
            else:
                target = None
                start = 0 if cc <= 3 else self.rr % len(ready)
                for i in range(len(ready)):
                    cand = ready[(start + i) % len(ready)]
                    if cand.in_flight < cc:
                        target = cand
                        if cc > 3:
                            self.rr = (start + i) + 1
                        break
                if target is None:
                    return
            self.pending.popleft()
            self.send(target, head)

    def send(self, rep: _Replica, req: _Request) -> None:
        req.replica = rep.rid
        rep.in_flight += 1
        if isinstance(self.svc, CpuProfile) and self.svc.client_s > 0:
            assert rep.cpu is not None
            self.cpu_add(rep.cpu, self.svc.client_s, 1, "client", None)
        if self.loop_on:
            self.loop_job(rep, "head", req)  # the event loop reads it before admission decides
            return
        self.admit(rep, req)

    def admit(self, rep: _Replica, req: _Request) -> None:
        """The server's admission (``DynamicBatcher.admit``), then decode or queue."""
        if rep.refusal():
            self.answer(rep, req, "503")
            return
        rep.admitted += 1
        if rep.standing:
            rep.offered += 1
        if self.cfg.request_timeout_s > 0:
            req.deadline = self.now + self.cfg.request_timeout_s
            self.push(req.deadline, "deadline", (rep, req))
        if self.cpu_model:  # decoded first, then queued for the batcher
            rep.decode_wait.append(req)
            self.start_decodes(rep)
            return
        req.admitted_at, req.queued = self.now, True
        rep.queue.append(req)
        self.try_start(rep)

    def answer(self, rep: _Replica, req: _Request, status: str) -> None:
        rep.in_flight -= 1
        net = self.svc.net_s if isinstance(self.svc, CpuProfile) else 0.0
        self.finish(req, status, self.now + net)
        if self.cfg.mode == "knative":
            self.dispatch()
        if rep.draining and rep.in_flight == 0 and not rep.busy:
            self.retire(rep)

    # ------------------------------------------------------------------ the batcher
    def try_start(self, rep: _Replica) -> None:
        if not rep.queue or not rep.may_start():
            return
        oldest = rep.queue[0]
        due = oldest.admitted_at + self.cfg.batch_wait_s
        if len(rep.queue) < self.cfg.max_batch_size and self.now < due - 1e-12:
            self._wake(rep, due)
            return
        if self.cpu_model and len(rep.queue) < self.cfg.max_batch_size:
            decoding = rep.decoding + rep.decoded + sum(1 for r in rep.decode_wait if not r.status)
            wait = fill_wait(rep.batcher, len(rep.queue), decoding, oldest.admitted_at, self.now)
            if wait > 1e-12:
                self._wake(rep, self.now + wait)
                return
        for shed in rep.note_wait(self.now - oldest.admitted_at, self.now):
            shed.queued = False
            rep.admitted -= 1
            self.answer(rep, shed, "503")
        if not rep.queue:
            return
        batch = [rep.queue.popleft() for _ in range(min(self.cfg.max_batch_size, len(rep.queue)))]
        if isinstance(self.svc, CpuProfile):
            keep = rep.batcher._efficient_prefix([1] * len(batch))  # the server's own rule
            rep.queue.extendleft(reversed(batch[keep:]))
            batch = batch[:keep]
            for r in batch:
                r.queued = False
            prof = self.svc
            work = prof.call_s(len(batch), pads=rep.pads) * prof.factor(self.rng, prof.model_sigma)
            if prof.idle_call_s and not rep.running:  # the model idle since its last call (or ever)
                idle = math.inf if rep.last_end is None else self.now - rep.last_end
                work += prof.idle_extra(idle)
            self._call_starts(rep, len(batch))
            assert rep.cpu is not None
            p = prof.parallel_fraction(len(batch))
            self.cpu_add(rep.cpu, work, prof.model_threads, "model", (rep, batch, len(batch), self.now), p)
            self.try_start(rep)  # with a call in flight to spare, the rest of the queue may start one
            return
        for r in batch:
            r.queued = False
        assert isinstance(self.svc, ServiceModel)
        rows = bucket_of(len(batch), rep.buckets) if rep.pads else len(batch)  # what the network computes
        seconds = self.svc.sample(rows, self.rng)
        self._call_starts(rep, len(batch))
        end = self.now + seconds
        rep.busy_s += max(0.0, end - max(self.now, rep.busy_until))  # overlapping calls counted once
        rep.busy_until = max(rep.busy_until, end)
        keep = []
        for r in batch:
            if r.deadline < end:
                continue  # its "deadline" event answers it with 503; the model call goes on
            keep.append(r)
        self.push(end, "done", (rep, keep, len(batch), seconds))
        self.try_start(rep)  # with a call in flight to spare, the rest of the queue may start one

    def _call_starts(self, rep: _Replica, n: int) -> None:
        if not rep.running:
            rep.busy_since = self.now
        rep.running.append(n)

    def _wake(self, rep: _Replica, at: float) -> None:
        if rep.wake_at is None or rep.wake_at > at:
            rep.wake_at = at
            self.push(at, "wake", rep)

    def on_done(self, rep: _Replica, batch: list[_Request], n: int, seconds: float) -> None:
        if self.cpu_model:
            since = self.now - (rep.busy_since if rep.last_end is None else max(rep.busy_since, rep.last_end))
            rep.busy_s += min(seconds, since)  # overlapping calls counted once
        rep.running.remove(n)
        rep.observe_call(n, self.now - seconds, self.now)
        out_s = 0.0
        if self.cpu_model:
            self.calls.append((self.now - seconds, n, seconds))
            batch = [r for r in batch if not r.status]  # the rest were answered at their deadline
            assert isinstance(self.svc, CpuProfile)
            out_s = self.svc.loop_out_s
        for r in batch:
            rep.admitted -= 1
            if out_s > 0:
                r.deadline = math.inf  # answered: the time limit no longer applies
                self.loop_job(rep, "out", r)
            else:
                self.answer(rep, r, "200")
        if rep.gone_at is None:
            self.try_start(rep)
            if rep.draining and rep.in_flight == 0:
                self.retire(rep)

    def on_deadline(self, rep: _Replica, req: _Request) -> None:
        if req.status or req.deadline == math.inf:
            return
        if req.queued:
            rep.queue.remove(req)
            req.queued = False
        rep.admitted -= 1
        self.answer(rep, req, "503")

    # ------------------------------------------------------------------ scaling
    def scale_to(self, n: int) -> None:
        live = self.live()
        for _ in range(n - len(live)):
            rep = self.new_replica(self.now + self.cfg.cold_start_s)
            self.push(rep.ready_at, "ready", rep)
        if n < len(live):
            # Remove the not-yet-ready first, then the least loaded (Kubernetes' ReplicaSet prefers
            # unready pods when it picks pods to delete).
            victims = sorted(live, key=lambda r: (r.ready, r.in_flight, -r.created))[: len(live) - n]
            for rep in victims:
                rep.draining = True
                if rep.in_flight == 0 and not rep.busy:
                    self.retire(rep)

    def retire(self, rep: _Replica) -> None:
        if rep.gone_at is None:
            rep.gone_at = self.now
            self.replica_seconds += self.now - rep.created

    def tick_kpa(self) -> None:
        self._flush_concurrency(self.now)
        sec = int(self.now) - 1
        cfg = self.cfg.kpa
        metric = self.rps if cfg.metric == "rps" else self.conc
        stable = metric.average(sec, cfg.stable_window_s)
        panic = metric.average(sec, cfg.panic_window_s)
        want = self.kpa.desired(self.now, len(self.ready()), stable, panic)
        if want == 0 and self.conc_value > 0:
            want = 1
        self.scale_to(want)

    def keda_metric(self, arrived: int) -> float:
        """The chart's KEDA query (helm/ssd-detector/templates/_autoscaling.tpl) as scraped now, from the
        requests ``arrived`` so far. load: images offered per second over the last 60 s (the chart's
        autoscaling.keda.window; admitted or refused: every arrival reaches a replica in Standard mode)
        in % of a replica's capacity (ssd_capacity_images_per_second: the efficient bucket's median
        call), summed over replicas; queue: the images in progress, summed. The one place to change when the
        chart's query changes."""
        if self.cfg.hpa_metric != "load":
            return float(sum(r.admitted for r in self.live()))
        marks = self.arrived_marks
        marks.append((self.now, arrived))
        while marks[0][0] < self.now - 60.0:
            marks.popleft()
        span = self.now - marks[0][0]
        live = self.live()
        if not live or span <= 0:
            return 0.0
        capacity = live[0].capacity()
        if capacity <= 0:
            return 0.0
        return 100.0 * (arrived - marks[0][1]) / span / capacity

    def tick_hpa(self) -> None:
        live = self.live()
        current = len(live)
        ready = [r for r in live if r.ready]
        if self.cfg.hpa_metric in ("load", "queue"):
            desired = replicas_for_average_value(
                current, self.scraped_queue, self.cfg.hpa.target, self.cfg.hpa.tolerance
            )
        else:
            usage = []
            for r in ready:
                since = self.busy_marks.get(r.rid, (r.ready_at, 0.0))
                span = self.now - since[0]
                usage.append(100.0 * (r.busy_s - since[1]) / span if span > 0 else 0.0)
                self.busy_marks[r.rid] = (self.now, r.busy_s)
            desired = replicas_for_utilization(
                usage, current - len(ready), self.cfg.hpa.target, current, self.cfg.hpa.tolerance
            )
        self.scale_to(self.hpa.decide(self.now, current, desired))

    # ------------------------------------------------------------------ run
    def run(self, times: np.ndarray, horizon_s: float | None = None) -> Result:
        reqs = [_Request(i, float(t)) for i, t in enumerate(times)]
        horizon = float(horizon_s if horizon_s is not None else (math.ceil(times[-1]) if len(times) else 0))
        n0 = self.cfg.initial_replicas
        for _ in range(n0):
            self.new_replica(0.0).ready = True
        if reqs:
            self.push(reqs[0].arrival, "arrive", 0)  # each arrival schedules the next (a small heap)
        step = self.cfg.kpa.tick_s if self.cfg.mode == "knative" else self.cfg.hpa.sync_s
        t = step
        while t <= horizon:
            self.push(t, "tick", None)
            t += step
        if self.cfg.mode != "knative":
            t = 0.0
            while t <= horizon:
                self.push(t, "scrape", None)
                t += self.cfg.scrape_s
        for s in range(int(horizon) + 1):
            self.push(float(s), "sample", None)
        timeline: list[dict[str, float]] = []
        arrived = 0
        end = horizon + 4 * max(self.cfg.request_timeout_s, 1.0)
        while self.events:
            t, _, kind, payload = heapq.heappop(self.events)
            if t > end:
                break
            self.now = t
            if kind == "arrive":
                arrived += 1
                if payload + 1 < len(reqs):
                    self.push(reqs[payload + 1].arrival, "arrive", payload + 1)
                self.arrive(reqs[payload])
            elif kind == "done":
                self.on_done(*payload)
            elif kind == "cpu":
                self.on_cpu(*payload)
            elif kind == "client":
                arrived += 1
                self.arrive(payload)
            elif kind == "wake":
                payload.wake_at = None
                self.try_start(payload)
            elif kind == "deadline":
                self.on_deadline(*payload)
            elif kind == "ready":
                if not payload.draining and payload.gone_at is None:
                    payload.ready = True
                    if self.cfg.mode == "knative":
                        self.dispatch()
            elif kind == "tick":
                self.tick_kpa() if self.cfg.mode == "knative" else self.tick_hpa()
            elif kind == "scrape":
                self.scraped_queue = self.keda_metric(arrived)
            elif kind == "sample":
                live = self.live()
                timeline.append(
                    {"t": t, "arrived": arrived, "replicas": len(live),
                     "ready": sum(r.ready for r in live), "in_flight": self.conc_value,
                     "activator": len(self.pending)}
                )  # fmt: skip
        for rep in self.replicas:
            if rep.gone_at is None:
                self.replica_seconds += min(self.now, horizon) - rep.created
        info = {
            "fleet": _jsonable(asdict(self.cfg)), "service": self.svc.source,
            "pads_to_bucket": replica_pads(self.cfg, self.svc),
        }  # fmt: skip
        return Result(reqs + self.more, timeline, self.replica_seconds, info, horizon)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def simulate(cfg: FleetConfig, svc: ServiceModel | CpuProfile, rates: np.ndarray, seed: int = 0) -> Result:
    """Run one trace (per-second rates) through the fleet. More than one model call in flight needs a
    CPU profile (:func:`check_calls_in_flight`)."""
    check_calls_in_flight(cfg.model_calls_in_flight, svc)
    return Simulation(cfg, svc, seed).run(arrivals(rates, seed), horizon_s=float(len(rates)))


def check_calls_in_flight(n: int, svc: ServiceModel | CpuProfile) -> None:
    """Refuse ``--model_calls_in_flight`` ``n`` > 1 without a CPU profile: a parametric or
    ``--benchmark`` call takes its alone-time however many others run, so N calls in flight would be N
    servers (N x the capacity); only the CPU profile shares the replica's cores between them."""
    if n > 1 and not isinstance(svc, CpuProfile):
        raise ValueError(
            f"--model_calls_in_flight {n} needs --cpu-profile: with --service-ms or --benchmark "
            "overlapping calls would each run at their alone-time (N calls in flight = N servers)"
        )


def closed_loop_rps(
    prof: CpuProfile, clients: int, replicas: int = 1, shared_cores: float | None = None,
    seconds: float = 30.0, warm_s: float = 5.0, calls_in_flight: int = 1, batch_padding: str | None = None,
) -> float:  # fmt: skip
    """Simulated throughput (200s answered per second after ``warm_s``) of ``replicas`` behind a
    round-robin client under ``clients`` closed-loop clients; ``batch_padding``: the servers'
    (default: the profile's servers' when measured, ``prof.batch_padding``)."""
    cfg = FleetConfig(
        mode="hpa", initial_replicas=replicas, shared_cores=shared_cores, balancer="round-robin",
        model_calls_in_flight=calls_in_flight, batch_padding=batch_padding or prof.batch_padding,
    )  # fmt: skip
    cfg.hpa = dataclasses.replace(cfg.hpa, min_replicas=replicas, max_replicas=replicas)
    res = Simulation(cfg, prof, seed=3).run_closed(clients, seconds)
    ok = sum(1 for r in res.requests if r.status == "200" and warm_s <= r.done < seconds)
    return ok / (seconds - warm_s)


# --------------------------------------------------------------------------------------- search
@dataclass(frozen=True)
class Candidate:
    """One setting tried by :func:`search` and what the simulated trace gave."""

    max_batch_size: int
    min_replicas: int
    scale_target: float
    panic_threshold: float
    p95_ms: float
    slo_attainment: float
    share_503: float
    replica_hours: float
    cost: float
    meets: bool
    max_replicas: int  # the maxReplicas simulated (its fleet's ``kpa.max_scale``; 0: no bound)


def search(
    base: FleetConfig,
    services: dict[int, ServiceModel | CpuProfile],
    rates: np.ndarray,
    *,
    slo_p95_ms: float,
    min_replicas: Sequence[int],
    scale_targets: Sequence[float],
    panic_thresholds: Sequence[float],
    max_503_share: float = 0.001,
    cost_per_replica_hour: float = 1.0,
    seed: int = 0,
    workers: int = 1,
    min_attainment: float = 0.0,
    max_replicas: Sequence[int] | None = None,
) -> list[Candidate]:
    """Every (max batch, minReplicas, maxReplicas, scaleTarget, panic threshold) through the trace
    (Knative mode; ``max_replicas`` None: the fleet's ``kpa.max_scale``, raised to the candidate's
    minReplicas; a listed maxReplicas below a minReplicas is not a setting: skipped, and ValueError when
    no setting is left), sorted by :func:`rank`; ``meets``: p95 of the 200s <= the
    objective, 503s (and 504s) at most ``max_503_share`` of the requests, and at least
    ``min_attainment`` of the requests answered 200 within the objective (over a day with rare bursts
    the day's p95 hides them; this does not). ``workers`` > 1: candidates simulated in that many processes."""
    jobs = []
    settings = [
        (b, m, top, target, panic)
        for b in sorted(services)
        for m in min_replicas
        for top in (max_replicas or [max(base.kpa.max_scale, m)])
        if top >= m
        for target in scale_targets
        for panic in panic_thresholds
    ]
    if not settings:  # write_search needs one candidate at least
        why = unmatched_replicas(min_replicas, max_replicas) or "an empty candidate list"
        raise ValueError(f"nothing to search: {why}")
    for b, m, top, target, panic in settings:
        kpa = dataclasses.replace(
            base.kpa, target=target, container_concurrency=base.container_concurrency,
            panic_threshold_percentage=panic, min_scale=m, max_scale=top,
        )  # fmt: skip
        cfg = FleetConfig(**{**base.__dict__, "max_batch_size": b, "kpa": kpa, "initial_replicas": m})
        jobs.append((cfg, services[b], rates, seed, slo_p95_ms))
    if workers > 1:
        import concurrent.futures
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            summaries = list(pool.map(_candidate_summary, *zip(*jobs, strict=True)))
    else:
        summaries = [_candidate_summary(*job) for job in jobs]
    out = []
    for (cfg, *_), s in zip(jobs, summaries, strict=True):
        refused = s["statuses"].get("503", 0) + s["statuses"].get("504", 0)
        share = refused / max(s["requests"], 1)
        p95 = s["p95_ms"]
        attained = s.get("slo_attainment", math.nan)
        meets = bool(p95 <= slo_p95_ms and share <= max_503_share and attained >= min_attainment)
        hours = s["replica_hours"]
        out.append(Candidate(cfg.max_batch_size, cfg.kpa.min_scale, cfg.kpa.target,
                             cfg.kpa.panic_threshold_percentage, p95, attained,
                             share, hours, hours * cost_per_replica_hour, meets,
                             cfg.kpa.max_scale))  # fmt: skip
    return rank(out)


def unmatched_replicas(min_replicas: Sequence[int], max_replicas: Sequence[int] | None) -> str | None:
    """Why no (minReplicas, maxReplicas) pair is a setting (every maxReplicas candidate below every
    minReplicas one), in the CLI flags' words; None when some pair is."""
    if not max_replicas or not min_replicas or max(max_replicas) >= min(min_replicas):
        return None
    return (
        f"every --search-max-replicas ({','.join(map(str, max_replicas))}) is below every "
        f"--search-min-replicas ({','.join(map(str, min_replicas))}): no candidate has maxReplicas >= "
        "minReplicas"
    )


def rank(cands: Sequence[Candidate]) -> list[Candidate]:
    """Those meeting the objective first, cheapest first (ties: lower p95, then the lower maxReplicas:
    the same service with a smaller worst-case bill); then the rest by cost."""
    return sorted(cands, key=lambda c: (not c.meets, c.cost, c.p95_ms, c.max_replicas))


def _candidate_summary(
    cfg: FleetConfig, svc: ServiceModel | CpuProfile, rates: np.ndarray, seed: int, slo_p95_ms: float
) -> dict[str, Any]:
    return simulate(cfg, svc, rates, seed).summary(slo_p95_ms)


def search_overlay_yaml(
    best: Candidate,
    base: FleetConfig,
    trace: str,
    slo_p95_ms: float,
    source: str = "",
    cpu_cores: float | None = None,
) -> str:
    """The chart values of the cheapest candidate that met the objective (helm -f). ``cpu_cores``: the
    service times are a CPU replica's with that many cores, so the overlay deploys that pod (the CPU
    image, no GPU, those cores) rather than the chart's default GPU pod, for which the plan says
    nothing."""
    hardware = ""
    if cpu_cores is not None:
        hardware = (
            f"# The service times are a CPU replica's ({cpu_cores:g} cores): the plan holds for that pod.\n"
            "gpu:\n  enabled: false\nresources:\n"
            f'  requests:\n    cpu: "{cpu_cores:g}"\n  limits:\n    cpu: "{cpu_cores:g}"\n'
        )
    panic = ""
    if best.panic_threshold != 200:
        panic = (
            "# Knative's panic threshold (KServe passes InferenceService annotations to the revision).\n"
            "annotations:\n"
            f'  autoscaling.knative.dev/panic-threshold-percentage: "{best.panic_threshold:g}"\n'
        )
    calls = ""
    # the simulated replicas' calls in flight: a CPU pod's server would decide them at its warm-up
    # (calls_in_flight), the chart's GPU pod runs 1
    if cpu_cores is not None or base.model_calls_in_flight != 1:
        calls = f"  modelCallsInFlight: {base.model_calls_in_flight}\n"
    if base.batch_padding != ServingOptions.batch_padding:
        calls += f"  batchPadding: {base.batch_padding}\n"
    if base.xla != ServingOptions.xla:
        calls += f"  xla: {str(base.xla).lower()}\n"
    return f"""\
# Simulated plan (python -m predictor.tools.simulate --search): trace {trace}, p95 <= {slo_p95_ms:g} ms.
# Cheapest candidate that met it: p95 {best.p95_ms:.0f} ms, {best.share_503:.2%} 503/504,
# {best.replica_hours:.2f} replica-hours over the trace. search.md lists every candidate.
{_comment("Service times: " + source) if source else ""}predictor:
  maxBatchSize: {best.max_batch_size}
{calls}autoscaling:
  minReplicas: {best.min_replicas}
  maxReplicas: {best.max_replicas}
  scaleMetric: {base.kpa.metric}
  scaleTarget: {best.scale_target:g}
  containerConcurrency: {base.container_concurrency}
{hardware}{panic}"""


def _comment(text: str, width: int = 100) -> str:
    """``text`` as YAML comment lines of at most ``width`` characters."""
    import textwrap

    return "".join(f"# {line}\n" for line in textwrap.wrap(text, width - 2))


def search_table(cands: Sequence[Candidate]) -> str:
    lines = [
        "| max batch | minReplicas | maxReplicas | scaleTarget | panic % | p95 ms | within SLO | 503/504 "
        "| replica-h | cost | meets |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for c in cands:
        top = c.max_replicas or "-"
        lines.append(
            f"| {c.max_batch_size} | {c.min_replicas} | {top} | {c.scale_target:g} | {c.panic_threshold:g} | "
            f"{c.p95_ms:.0f} | {c.slo_attainment:.2%} | {c.share_503:.2%} | {c.replica_hours:.3f} | "
            f"{c.cost:.3f} | {'yes' if c.meets else 'no'} |"
        )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------- output
def plot(result: Result, rates: np.ndarray, path: Path, slo_ms: float | None, title: str) -> None:
    """Offered load, answers and 503s; replicas (all and ready); p95 of the 200s per window (10 s, or
    5 minutes for a day), against time (hours from 4 h on). Rates are averaged over the window too."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(rates)
    width = max(10, n // 288)
    scale, unit = (3600.0, "hours") if n >= 4 * 3600 else (1.0, "seconds")
    fig, axes = plt.subplots(3, 1, figsize=(10, 7), sharex=True)
    starts = np.arange(0, n, width)
    edges = np.append(starts, n)
    mid = (starts + np.diff(edges) / 2) / scale

    def per_s(times: list[float]) -> np.ndarray:
        return np.histogram(times, edges)[0] / np.diff(edges)

    axes[0].plot(mid, np.add.reduceat(rates, starts) / np.diff(edges), lw=0.8, label="offered (req/s)")
    axes[0].plot(mid, per_s([r.done for r in result.requests if r.status == "200"]), lw=0.8,
                 label="answered 200 (/s)")  # fmt: skip
    axes[0].plot(mid, per_s([r.done for r in result.requests if r.status in ("503", "504")]), lw=0.8,
                 label="503/504 (/s)")  # fmt: skip
    axes[0].set_title(f"per {width} s window", fontsize=7, loc="right")
    axes[0].set_ylabel("requests/s")
    tl = result.timeline
    axes[1].step([x["t"] / scale for x in tl], [x["replicas"] for x in tl], where="post", label="replicas")
    axes[1].step([x["t"] / scale for x in tl], [x["ready"] for x in tl], where="post", label="ready")
    axes[1].set_ylabel("replicas")
    win = _windows(result.requests, n, width)
    axes[2].plot(
        [min(w["t"] + width / 2, n) / scale for w in win], [w["p95_ms"] for w in win], ".-", lw=0.8, ms=2,
        label=f"p95 of 200s, {width} s windows",
    )  # fmt: skip
    if slo_ms:
        axes[2].axhline(slo_ms, color="red", ls="--", label=f"SLO {slo_ms:g} ms")
    axes[2].set_ylabel("ms")
    axes[2].set_xlabel(unit)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------------------- CLI
def service_model(args: argparse.Namespace) -> ServiceModel | CpuProfile:
    if args.cpu_profile:
        prof = CpuProfile.from_json(json.loads(args.cpu_profile.read_text()))
        return prof.up_to(args.max_batch_size)
    if args.benchmark:
        from predictor.tools.plan import load_benchmark, measured_on_gpu

        data = load_benchmark(args.benchmark)
        return ServiceModel.from_cells(
            data["cells"], args.max_batch_size, f"benchmark {args.benchmark}", args.overlap,
            data["batch_padding"], measured_on_gpu(data),
        )  # fmt: skip
    a, _, b = args.service_ms.partition("+")
    return ServiceModel.parametric(float(a), float(b or 0), args.service_sigma, args.max_batch_size)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m predictor.tools.simulate", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--trace", required=True, help=trace_rates.__doc__.split("\n\n")[1].replace("%", "%%"))
    p.add_argument("--mode", choices=("knative", "hpa", "keda"), default="knative")
    p.add_argument(
        "--benchmark", type=Path, help="planner benchmark JSON (plan --measure-only) for service times"
    )
    p.add_argument(
        "--cpu-profile",
        type=Path,
        help="CPU replica profile JSON (bench.simulate_check writes one): decode and model calls sharing "
        "cores, instead of --benchmark / --service-ms",
    )
    p.add_argument(
        "--shared-cores",
        type=float,
        help="with --cpu-profile: every replica shares this many cores (default: each has its own)",
    )
    p.add_argument(
        "--overlap", type=float, default=2.0, help="stages a closed-loop cell keeps busy (decode, model)"
    )
    p.add_argument(
        "--service-ms",
        default="5+23",
        help="parametric call time A+B: A + B x batch ms (default: demo, 2 cores)",
    )
    p.add_argument(
        "--service-sigma", type=float, default=0.15, help="log-normal spread of the parametric model"
    )
    p.add_argument("--max_batch_size", type=int, default=32)
    p.add_argument(
        "--batch_padding",
        choices=BATCH_PADDINGS,
        default=ServingOptions.batch_padding,
        help=f"the server's --batch_padding: a call costs its bucket (padded) or its rows; auto: "
        f"{AUTO_PADDING_RULE} (a --benchmark whose servers padded on auto ran on a GPU: "
        "plan.measured_on_gpu; never for --cpu-profile or --service-ms)",
    )
    p.add_argument("--xla", action="store_true", help="the server's --xla (auto then pads)")
    p.add_argument("--batch_wait_ms", type=float, default=2.0)
    p.add_argument("--max_queue_images", type=int, default=256)
    p.add_argument("--request_timeout_s", type=float, default=30.0)
    p.add_argument("--no-shed-standing-queue", action="store_true")
    p.add_argument(
        "--model_calls_in_flight",
        type=positive_int,
        help="the server's --model_calls_in_flight: model calls a replica runs at once (default: the "
        "--cpu-profile's, what its calls were measured with, else 1); more than 1 needs --cpu-profile",
    )
    p.add_argument("--cold-start-s", type=float, default=6.8, help="seconds from a new replica to ready")
    p.add_argument("--min-replicas", type=int, default=1)
    p.add_argument("--max-replicas", type=int, default=4)
    p.add_argument("--initial-replicas", type=int, help="replicas at t=0 (default: min replicas, at least 1)")
    p.add_argument("--container-concurrency", type=int, default=64, help="Knative hard limit (0 unlimited)")
    p.add_argument(
        "--scale-metric",
        choices=("concurrency", "rps"),
        default="concurrency",
        help="KPA metric (Knative mode)",
    )
    p.add_argument(
        "--scale-target",
        type=float,
        help="KPA / HPA target (default: 32 concurrency, 200 rps, 70 %% load, 64 KEDA images, 70 busy %%)",
    )
    p.add_argument("--target-utilization", type=float, default=0.7)
    p.add_argument("--panic-threshold", type=float, default=200.0, help="KPA panic threshold, %%")
    p.add_argument("--stable-window-s", type=float, default=60.0)
    p.add_argument("--scale-down-delay-s", type=float, default=0.0)
    p.add_argument("--hpa-metric", choices=("load", "queue", "busy"), default="load")
    p.add_argument("--slo-p95-ms", type=float, help="latency objective for the attainment figures")
    p.add_argument("--cost-per-replica-hour", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--search", action="store_true", help="search the settings below (Knative), write values-sim.yaml"
    )
    p.add_argument(
        "--search-min-replicas",
        type=replica_floors,
        default="1,2,4",
        help="minReplicas candidates (0: scale to zero)",
    )
    p.add_argument(
        "--search-max-replicas", type=positive_ints, help="maxReplicas candidates (default: --max-replicas)"
    )
    p.add_argument("--search-targets", type=positive_floats, default="8,16,32", help="scaleTarget candidates")
    p.add_argument(
        "--search-panic", type=positive_floats, default="200,400", help="panic threshold (%%) candidates"
    )
    p.add_argument(
        "--search-max-batch", type=positive_ints, help="max batch size candidates (default: --max_batch_size)"
    )
    p.add_argument(
        "--max-503-share", type=float, default=0.001, help="most 503/504 share a candidate may have"
    )
    p.add_argument("--out", type=Path, default=Path("out/simulate"))
    return p


def calls_in_flight_of(args: argparse.Namespace) -> int:
    """``--model_calls_in_flight``, else the ``--cpu-profile``'s (what its calls were measured with),
    else 1 (a parametric replica's calls cannot share its cores: :func:`check_calls_in_flight`)."""
    if args.model_calls_in_flight is not None:
        return int(args.model_calls_in_flight)
    if args.cpu_profile:
        return int(json.loads(args.cpu_profile.read_text()).get("model_calls_in_flight", 1))
    return FleetConfig.model_calls_in_flight  # what a parametric replica can model


def config_from_args(args: argparse.Namespace) -> FleetConfig:
    target = args.scale_target
    kpa = KpaConfig(
        target=target if target is not None else (32.0 if args.scale_metric == "concurrency" else 200.0),
        container_concurrency=args.container_concurrency,
        metric=args.scale_metric,
        target_utilization=args.target_utilization,
        stable_window_s=args.stable_window_s,
        panic_threshold_percentage=args.panic_threshold,
        scale_down_delay_s=args.scale_down_delay_s,
        min_scale=args.min_replicas,
        max_scale=args.max_replicas,
    )
    default_target = 64.0 if args.hpa_metric == "queue" else 70.0  # load: 70 % of capacity
    hpa = HpaConfig(
        target=target if target is not None else default_target,
        min_replicas=max(1, args.min_replicas),
        max_replicas=args.max_replicas,
    )
    initial = args.initial_replicas if args.initial_replicas is not None else max(1, args.min_replicas)
    return FleetConfig(
        mode=args.mode,
        max_batch_size=args.max_batch_size,
        batch_wait_s=args.batch_wait_ms / 1e3,
        max_queue_images=args.max_queue_images,
        request_timeout_s=args.request_timeout_s,
        shed_standing_queue=not args.no_shed_standing_queue,
        model_calls_in_flight=calls_in_flight_of(args),
        container_concurrency=args.container_concurrency,
        cold_start_s=args.cold_start_s,
        initial_replicas=initial,
        kpa=kpa,
        hpa=hpa,
        hpa_metric=args.hpa_metric,
        shared_cores=args.shared_cores,
        batch_padding=args.batch_padding,
        xla=args.xla,
    )


def run_search(
    args: argparse.Namespace, rates: np.ndarray, cfg: FleetConfig
) -> tuple[FleetConfig, ServiceModel]:
    """``--search``: every candidate through the trace; writes search.md, search.json and
    values-sim.yaml; returns the cheapest candidate that met the objective (or the best p95)."""
    services = {}
    for b in args.search_max_batch or [args.max_batch_size]:
        args.max_batch_size = b
        services[b] = service_model(args)
    cands = search(
        cfg, services, rates, slo_p95_ms=args.slo_p95_ms,
        min_replicas=args.search_min_replicas,
        scale_targets=args.search_targets, panic_thresholds=args.search_panic,
        max_503_share=args.max_503_share, cost_per_replica_hour=args.cost_per_replica_hour or 1.0,
        seed=args.seed,
        max_replicas=args.search_max_replicas,
    )  # fmt: skip
    best, best_cfg = write_search(
        args.out, cands, cfg, args.trace, args.seed, args.slo_p95_ms, args.max_503_share
    )
    return best_cfg, services[best.max_batch_size]


def write_search(
    out: Path, cands: Sequence[Candidate], cfg: FleetConfig, trace: str, seed: int, slo_p95_ms: float,
    max_503_share: float, source: str = "", min_attainment: float = 0.0, cpu_cores: float | None = None,
) -> tuple[Candidate, FleetConfig]:  # fmt: skip
    """search.md, search.json and (when a candidate met the objective) values-sim.yaml in ``out``;
    returns the cheapest candidate that met it (else the lowest p95) and its fleet configuration."""
    out.mkdir(parents=True, exist_ok=True)
    head = f"# Simulated search\n\nTrace `{trace}`, seed {seed}, "
    head += f"p95 objective {slo_p95_ms:g} ms, at most {max_503_share:.2%} 503/504"
    if min_attainment:
        head += f", at least {min_attainment:.2%} of the requests within {slo_p95_ms:g} ms"
    head += "; cheapest first"
    head += " (cost = replica-hours x the price per replica-hour)."
    head += f" Service: {source}.\n\n" if source else "\n\n"
    (out / "search.md").write_text(head + search_table(cands))
    (out / "search.json").write_text(json.dumps([asdict(c) for c in cands], indent=1) + "\n")
    best = cands[0] if cands[0].meets else min(cands, key=lambda c: c.p95_ms)
    if cands[0].meets:
        overlay = search_overlay_yaml(best, cfg, trace, slo_p95_ms, source, cpu_cores)
        (out / "values-sim.yaml").write_text(overlay)
        print(f"cheapest setting meeting the objective: {best}")
    else:
        print(f"no candidate met the objective; lowest p95: {best}", file=sys.stderr)
    kpa = dataclasses.replace(
        cfg.kpa, target=best.scale_target, panic_threshold_percentage=best.panic_threshold,
        min_scale=best.min_replicas, max_scale=best.max_replicas,
    )  # fmt: skip
    best_cfg = dataclasses.replace(
        cfg, max_batch_size=best.max_batch_size, kpa=kpa, initial_replicas=best.min_replicas
    )
    return best, best_cfg


def _stamp() -> str:
    """When and where a simulation ran (for plots and overlays committed to the docs)."""
    import time

    from predictor.serving.resources import cpu_model_name

    return f"simulated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {cpu_model_name()}"


def search_for_plan(
    cells: Sequence[dict[str, Any]],
    *,
    max_batch_sizes: Sequence[int],
    batch_wait_ms: float,
    container_concurrency: int,
    max_replicas: int,
    min_replicas: Sequence[int],
    scale_targets: Sequence[float],
    trace: str,
    slo_p95_ms: float,
    cold_start_s: float,
    cost_per_replica_hour: float,
    out: Path,
    seed: int = 0,
    panic_thresholds: Sequence[float] = (200.0, 400.0),
    profile: CpuProfile | None = None,
    max_503_share: float = 0.001,
    workers: int = 1,
    min_attainment: float = 0.0,
    search_max_replicas: Sequence[int] | None = None,
    measured_padding: str = UNRECORDED_PADDING,
    batch_padding: str = ServingOptions.batch_padding,
    measured_gpu: bool = False,
) -> Candidate:
    """What ``predictor.tools.plan --trace`` runs: its hard limit fixed, minReplicas x maxReplicas
    (``search_max_replicas``, default the plan's ``max_replicas`` only) x scaleTarget x panic
    threshold x max batch size through the trace, with service times from the
    planner's benchmark ``cells`` (their servers' calls ``measured_padding``:
    :meth:`ServiceModel.from_cells`), or from a CPU replica ``profile`` (each replica on its own cores);
    the simulated servers run ``--batch_padding batch_padding`` (:func:`replica_pads`); writes
    :func:`write_search`'s files plus simulate.png and summary.json of the chosen candidate."""
    rates = trace_rates(trace, seed)
    services: dict[int, ServiceModel | CpuProfile] = {
        b: profile.up_to(b)
        if profile
        else ServiceModel.from_cells(
            cells, b, "planner benchmark", measured_padding=measured_padding, gpu=measured_gpu
        )
        for b in max_batch_sizes
    }
    kpa = KpaConfig(container_concurrency=container_concurrency, max_scale=max_replicas)
    # the profile's calls were measured with its calls in flight: plan (and deploy) with them
    calls = profile.model_calls_in_flight if profile else FleetConfig.model_calls_in_flight
    base = FleetConfig(
        mode="knative", batch_wait_s=batch_wait_ms / 1e3, container_concurrency=container_concurrency,
        cold_start_s=cold_start_s, kpa=kpa, model_calls_in_flight=calls, batch_padding=batch_padding,
    )  # fmt: skip
    pads = replica_pads(base, services[max_batch_sizes[0]])
    cands = search(
        base, services, rates, slo_p95_ms=slo_p95_ms, min_replicas=min_replicas, scale_targets=scale_targets,
        panic_thresholds=panic_thresholds, cost_per_replica_hour=cost_per_replica_hour, seed=seed,
        max_503_share=max_503_share, workers=workers, min_attainment=min_attainment,
        max_replicas=search_max_replicas,
    )  # fmt: skip
    source = f"{services[max_batch_sizes[0]].source}; calls {'padded' if pads else 'exact-size'}; {_stamp()}"
    best, best_cfg = write_search(
        out, cands, base, trace, seed, slo_p95_ms, max_503_share, source, min_attainment,
        cpu_cores=profile.cores if profile else None,
    )  # fmt: skip
    result = simulate(best_cfg, services[best.max_batch_size], rates, seed)
    summary = {**result.summary(slo_p95_ms), "trace": trace, "seed": seed, "service": source}
    (out / "summary.json").write_text(json.dumps({"summary": summary, **result.config}, indent=1) + "\n")
    title = (
        f"chosen: minReplicas {best.min_replicas}, maxReplicas {best_cfg.kpa.max_scale}, target "
        f"{best.scale_target:g}, panic "
        f"{best.panic_threshold:g}%, max batch {best.max_batch_size}; {summary['replica_hours']:.1f} "
        f"replica-hours, {summary.get('slo_attainment', 0):.2%} within {slo_p95_ms:g} ms\n{trace}\n{source}"
    )
    plot(result, rates, out / "simulate.png", slo_p95_ms, title)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    rates = trace_rates(args.trace, args.seed)
    cfg = config_from_args(args)
    try:
        pads_to_bucket(cfg.batch_padding, xla=cfg.xla, gpu=False)
    except ValueError as e:
        parser.error(str(e))
    if cfg.model_calls_in_flight > 1 and not args.cpu_profile:
        parser.error(
            f"--model_calls_in_flight {cfg.model_calls_in_flight} needs --cpu-profile (with --service-ms "
            "or --benchmark each overlapping call would run at its alone-time: N servers, not one)"
        )
    if args.search:
        if args.slo_p95_ms is None or args.mode != "knative":
            print("error: --search needs --slo-p95-ms and --mode knative", file=sys.stderr)
            return 2
        unmatched = unmatched_replicas(args.search_min_replicas, args.search_max_replicas)
        if unmatched:
            parser.error(unmatched)
        if args.max_replicas == 0 and not args.search_max_replicas:
            parser.error(
                "--search with --max-replicas 0 (no bound) and no --search-max-replicas: each candidate "
                "would be capped at its minReplicas, and the chart's maxReplicas is at least 1"
            )
        cfg, svc = run_search(args, rates, cfg)
    else:
        svc = service_model(args)
    result = simulate(cfg, svc, rates, args.seed)
    summary = result.summary(args.slo_p95_ms)
    summary["cost"] = summary["replica_hours"] * args.cost_per_replica_hour
    summary["trace"] = args.trace
    summary["seed"] = args.seed
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps({"summary": summary, **result.config}, indent=1) + "\n")
    with (args.out / "timeline.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(result.timeline[0]) if result.timeline else ["t"])
        w.writeheader()
        w.writerows(result.timeline)
    plot(
        result, rates, args.out / "simulate.png", args.slo_p95_ms, f"{args.mode}, {args.trace}, {svc.source}"
    )
    print(json.dumps(summary, indent=1))
    print(f"wrote {args.out}/summary.json, timeline.csv, simulate.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
