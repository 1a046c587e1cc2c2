"""The autoscalers' decision rules as their sources define them, for :mod:`predictor.tools.simulate`.

Pure Python, no clock: every method takes ``now`` (seconds) and the observed values, and returns the
replica count the controller would ask for. Sources (read at these revisions):

- **Knative KPA**, knative/serving 98e5ef9 (2026-08-21):
  ``pkg/autoscaler/scaling/autoscaler.go`` ``(*autoscaler).Scale`` (stable/panic desired counts, scale
  rate limits, panic mode, scale-down delay); ``pkg/autoscaler/config/config.go`` ``defaultConfig``
  (the defaults below); ``pkg/reconciler/autoscaling/resources/target.go`` ``ResolveMetricTarget``
  (target = min(annotation target, containerConcurrency) x target utilisation);
  ``pkg/autoscaler/aggregation/bucketing.go`` ``WindowAverage`` (window means over 1 s buckets,
  dividing by the buckets seen so far); ``pkg/reconciler/autoscaling/kpa/scaler.go``
  ``handleScaleToZero`` (zero only after the scale-to-zero grace period).
- **Kubernetes HPA** (k8s.io/kubernetes ``pkg/controller/podautoscaler``): ``replica_calculator.go``
  ``GetResourceReplicas`` (utilisation, 10% tolerance, unready pods counted at 0% on a scale-up) and
  ``GetExternalPerPodMetricReplicas`` (KEDA's AverageValue trigger: ``ceil(sum / target)``);
  ``horizontal.go`` ``stabilizeRecommendationWithBehaviors`` (up: min, down: max over the windows),
  ``normalizeDesiredReplicasWithBehaviors`` / ``calculateScaleUpLimitWithScalingRules`` /
  ``calculateScaleDownLimitWithBehaviors`` (policies per period, ``selectPolicy: Max``), and the default
  behaviour of ``pkg/apis/autoscaling/v2/defaults.go`` (up: no window, max(+4 pods, +100%) per 15 s;
  down: 300 s window, -100% per 15 s). KEDA builds exactly such an HPA for its triggers.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass, field


# --------------------------------------------------------------------------------------- Knative
@dataclass(frozen=True)
class KpaConfig:
    """A revision's KPA settings; defaults are Knative's ``defaultConfig``.

    ``target`` is the per-replica target *before* utilisation (KServe's ``scaleTarget`` = the
    ``autoscaling.knative.dev/target`` annotation) of ``metric``, concurrency (requests in flight) or
    rps (requests per second); ``container_concurrency`` 0 = unlimited.
    """

    target: float = 100.0
    container_concurrency: int = 0
    metric: str = "concurrency"  # or "rps": requests per second per replica
    target_utilization: float = 0.7
    stable_window_s: float = 60.0
    panic_window_percentage: float = 10.0
    panic_threshold_percentage: float = 200.0
    max_scale_up_rate: float = 1000.0
    max_scale_down_rate: float = 2.0
    scale_down_delay_s: float = 0.0
    scale_to_zero_grace_s: float = 30.0
    tick_s: float = 2.0
    min_scale: int = 0
    max_scale: int = 0  # 0: no upper bound

    @property
    def target_value(self) -> float:
        """``ResolveMetricTarget``: target (for concurrency at most containerConcurrency) x utilisation,
        at least 0.01."""
        total = self.target
        if self.metric == "concurrency" and self.container_concurrency:
            total = min(total, float(self.container_concurrency))
        return max(0.01, total * self.target_utilization)

    @property
    def panic_window_s(self) -> float:
        return self.stable_window_s * self.panic_window_percentage / 100.0


class WindowAverage:
    """``TimedFloat64Buckets`` with 1 s buckets: ``average(now, window)`` is the sum of the buckets in
    ``(now - window, now]`` divided by the buckets since the first one recorded (at most the window)."""

    def __init__(self) -> None:
        self.buckets: dict[int, float] = {}
        self.first: int | None = None

    def record(self, second: int, value: float) -> None:
        if self.first is None:
            self.first = second
        self.buckets[second] = self.buckets.get(second, 0.0) + value

    def average(self, now_s: int, window_s: float) -> float:
        if self.first is None:
            return 0.0
        width = round(window_s)
        total = sum(self.buckets.get(s, 0.0) for s in range(now_s - width + 1, now_s + 1))
        seen = min(now_s - self.first + 1, width)
        return total / seen if seen > 0 else 0.0


@dataclass
class Kpa:
    """Knative's ``(*autoscaler).Scale`` plus the reconciler's bounds and scale-to-zero grace."""

    config: KpaConfig
    panic_time: float | None = None
    max_panic_pods: int = 0
    delay: collections.deque = field(default_factory=collections.deque)  # (time, desired)
    zero_since: float | None = None

    def desired(self, now: float, ready: int, stable: float, panic: float, reachable: bool = True) -> int:
        """Desired pods from the stable and panic window averages of the total concurrency."""
        cfg = self.config
        ready_f = max(1.0, float(ready))
        max_up = math.ceil(cfg.max_scale_up_rate * ready_f)
        max_down = math.floor(ready_f / cfg.max_scale_down_rate) if reachable else 0.0
        dspc = math.ceil(stable / cfg.target_value)
        dppc = math.ceil(panic / cfg.target_value)
        stable_pods = int(min(max(dspc, max_down), max_up))
        panic_pods = int(min(max(dppc, max_down), max_up))
        over = dppc / ready_f >= cfg.panic_threshold_percentage / 100.0
        if over:  # begin panicking, or extend the panic
            self.panic_time = now
        elif self.panic_time is not None and self.panic_time + cfg.stable_window_s < now:
            self.panic_time = None
            self.max_panic_pods = 0
        want = stable_pods
        if self.panic_time is not None:
            want = max(want, panic_pods)
            if want > self.max_panic_pods:
                self.max_panic_pods = want
            want = self.max_panic_pods
        if reachable and cfg.scale_down_delay_s > 0:
            self.delay.append((now, want))
            while self.delay and self.delay[0][0] <= now - cfg.scale_down_delay_s:
                self.delay.popleft()
            want = max(d for _, d in self.delay)
        return self.bounded(now, want)

    def bounded(self, now: float, want: int) -> int:
        """min/max scale, and zero only once 0 has been wanted for the scale-to-zero grace period."""
        cfg = self.config
        if cfg.max_scale:
            want = min(want, cfg.max_scale)
        want = max(want, cfg.min_scale)
        if want == 0:
            if self.zero_since is None:
                self.zero_since = now
            if now - self.zero_since < cfg.scale_to_zero_grace_s:
                return 1
        else:
            self.zero_since = None
        return want


# --------------------------------------------------------------------------------------- HPA
@dataclass(frozen=True)
class HpaPolicy:
    """One scaling policy: ``kind`` "Pods" or "Percent", ``value`` per ``period_s``."""

    kind: str
    value: int
    period_s: float


@dataclass(frozen=True)
class HpaRules:
    """One direction's behaviour (``selectPolicy: Max``)."""

    stabilization_s: float
    policies: tuple[HpaPolicy, ...]


DEFAULT_SCALE_UP = HpaRules(0.0, (HpaPolicy("Pods", 4, 15.0), HpaPolicy("Percent", 100, 15.0)))
DEFAULT_SCALE_DOWN = HpaRules(300.0, (HpaPolicy("Percent", 100, 15.0),))


@dataclass(frozen=True)
class HpaConfig:
    """An HPA's settings; ``target`` is per replica, in the unit of the metric the fleet feeds it
    (:func:`replicas_for_average_value`: KEDA's AverageValue; :func:`replicas_for_utilization`: %)."""

    target: float = 64.0
    tolerance: float = 0.1
    min_replicas: int = 1
    max_replicas: int = 4
    sync_s: float = 15.0
    scale_up: HpaRules = DEFAULT_SCALE_UP
    scale_down: HpaRules = DEFAULT_SCALE_DOWN


def replicas_for_average_value(current: int, total: float, target: float, tolerance: float = 0.1) -> int:
    """``GetExternalPerPodMetricReplicas``: ratio = total / (target x current); within tolerance keep
    ``current``, else ``ceil(total / target)``."""
    ratio = total / (target * current) if current else math.inf
    if current and abs(1.0 - ratio) <= tolerance:
        return current
    return math.ceil(total / target)


def replicas_for_utilization(
    ready_usage: list[float], unready: int, target: float, current: int, tolerance: float = 0.1
) -> int:
    """``GetResourceReplicas`` (no missing pods): ``ready_usage`` in % per ready pod, ``current`` the
    scale's replicas. Within tolerance keep ``current``, else ``ceil(ratio x ready)``; on a scale-up
    with unready pods, those count at 0% and the ratio is taken again (no change when that one is
    within tolerance or points the other way)."""
    if not ready_usage:
        return current
    ratio = sum(ready_usage) / len(ready_usage) / target
    if not (unready and ratio > 1.0):
        if abs(1.0 - ratio) <= tolerance:
            return current
        return math.ceil(ratio * len(ready_usage))
    pods = len(ready_usage) + unready
    new_ratio = sum(ready_usage) / pods / target
    if abs(1.0 - new_ratio) <= tolerance or new_ratio < 1.0:
        return current
    return max(current, math.ceil(new_ratio * pods))


@dataclass
class Hpa:
    """``horizontal.go``'s behaviour: stabilisation, then rate limits, then min/max."""

    config: HpaConfig
    recommendations: list[tuple[float, int]] = field(default_factory=list)
    events: list[tuple[float, int]] = field(default_factory=list)  # (time, replica change)

    def stabilize(self, now: float, current: int, desired: int) -> int:
        """``stabilizeRecommendationWithBehaviors``: min over the up window, max over the down window,
        applied around ``current``; records ``desired``."""
        up_cut = now - self.config.scale_up.stabilization_s
        down_cut = now - self.config.scale_down.stabilization_s
        up, down = desired, desired
        for t, rec in self.recommendations:
            if t > up_cut:
                up = min(up, rec)
            if t > down_cut:
                down = max(down, rec)
        keep = max(self.config.scale_up.stabilization_s, self.config.scale_down.stabilization_s)
        self.recommendations = [(t, r) for t, r in self.recommendations if t > now - keep]
        self.recommendations.append((now, desired))
        return min(max(current, up), down)

    def _changed(self, now: float, period_s: float, sign: int) -> int:
        return sum(abs(d) for t, d in self.events if t > now - period_s and (d > 0) == (sign > 0))

    def scale_up_limit(self, now: float, current: int) -> int:
        """``calculateScaleUpLimitWithScalingRules`` with ``selectPolicy: Max``."""
        limit = -math.inf
        for p in self.config.scale_up.policies:
            start = current - self._changed(now, p.period_s, +1)
            proposed = start + p.value if p.kind == "Pods" else math.ceil(start * (1 + p.value / 100.0))
            limit = max(limit, proposed)
        return int(limit)

    def scale_down_limit(self, now: float, current: int) -> int:
        """``calculateScaleDownLimitWithBehaviors`` with ``selectPolicy: Max`` (the lowest floor)."""
        limit = math.inf
        for p in self.config.scale_down.policies:
            start = current + self._changed(now, p.period_s, -1)
            proposed = start - p.value if p.kind == "Pods" else math.ceil(start * (1 - p.value / 100.0))
            limit = min(limit, proposed)
        return int(limit)

    def decide(self, now: float, current: int, desired: int) -> int:
        """The replicas the HPA writes for a metric-based ``desired`` at ``current``."""
        cfg = self.config
        stabilized = self.stabilize(now, current, desired)
        if stabilized > current:
            stabilized = min(stabilized, self.scale_up_limit(now, current))
        elif stabilized < current:
            stabilized = max(stabilized, self.scale_down_limit(now, current))
        final = min(max(stabilized, cfg.min_replicas), cfg.max_replicas)
        if final != current:
            self.events.append((now, final - current))
            horizon = max([p.period_s for p in cfg.scale_up.policies + cfg.scale_down.policies] + [0.0])
            self.events = [(t, d) for t, d in self.events if t > now - horizon]
        return final
