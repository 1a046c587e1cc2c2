"""What the container may use: CPUs and memory from the cgroup, and the serving defaults sized from them.

A pod's CPU limit is a CFS quota, not fewer visible cores: ``os.cpu_count()`` says 64 on a 64-core
node even when the pod may use 4 CPUs, and thread pools sized from it oversubscribe the quota (the
kernel then throttles the whole process). Likewise the memory limit is only visible in the cgroup.

Read here (cgroup v2 first, then v1; the process's own cgroup from ``/proc/self/cgroup`` and its
ancestors, the smallest limit wins):

- CPU quota: v2 ``cpu.max`` (``"400000 100000"`` = 4 CPUs, ``"max 100000"`` = none); v1
  ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (quota ``-1`` = none).
- CPU affinity: ``os.sched_getaffinity(0)`` (cpusets, ``taskset``).
- memory limit: v2 ``memory.max`` (``"max"`` = none); v1 ``memory.limit_in_bytes`` (values of
  2^60 and above = none: the kernel's "unlimited" is a page-rounded ``LONG_MAX``).

Defaults derived (each has a flag to override, see :mod:`predictor.serving.options`):

- usable CPUs ``C`` = ``ceil(min(quota, affinity))``, at least 1;
- decode threads = ``C``; TensorFlow intra-op threads = ``C``, inter-op threads = ``min(2, C)``
  (a call's independent ops need little inter-op parallelism; two calls in flight share both pools);
- in-flight request-bytes budget = memory limit / :data:`INFLIGHT_FRACTION` (clamped to
  [:data:`MIN_INFLIGHT_BYTES`, :data:`MAX_INFLIGHT_BYTES`]), or :data:`UNLIMITED_INFLIGHT_BYTES`
  without a limit. A body costs several times its size while it is parsed (the bytes, the JSON text,
  the decoded base64), so 1/16 of the limit in bodies stays well inside it.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")
#: v1 limits at or above this are "no limit" (the kernel writes LONG_MAX rounded down to a page).
V1_UNLIMITED = 1 << 60
INFLIGHT_FRACTION = 16
MIN_INFLIGHT_BYTES = 32 * 1024 * 1024
MAX_INFLIGHT_BYTES = 1024 * 1024 * 1024
#: Budget when the container has no memory limit (documented in docs/flags.md and ``--max_inflight_bytes``).
UNLIMITED_INFLIGHT_BYTES = 128 * 1024 * 1024
_V1_CPU_DIRS = ("cpu", "cpu,cpuacct", "cpuacct,cpu")


@dataclass(frozen=True)
class Limits:
    """The container's limits; None where there is none (or it cannot be read)."""

    cpu_quota: float | None  # CPUs the CFS quota allows (e.g. 4.0, 0.5)
    cpu_quota_source: str  # the file it came from, or "none"
    affinity_cpus: int  # CPUs this process may run on
    memory_limit: int | None  # bytes
    memory_limit_source: str

    @property
    def cpus(self) -> int:
        """Usable CPUs: ``ceil(min(quota, affinity))``, at least 1."""
        usable = float(self.affinity_cpus)
        if self.cpu_quota is not None:
            usable = min(usable, self.cpu_quota)
        return max(1, math.ceil(usable - 1e-9))

    def describe(self) -> str:
        quota = "none" if self.cpu_quota is None else f"{self.cpu_quota:g} ({self.cpu_quota_source})"
        memory = (
            "none" if self.memory_limit is None else f"{_mib(self.memory_limit)} ({self.memory_limit_source})"
        )
        return f"cpu quota {quota}, affinity {self.affinity_cpus} -> {self.cpus} cpus; memory limit {memory}"


def read_limits(root: Path = CGROUP_ROOT, proc_self_cgroup: Path = PROC_SELF_CGROUP) -> Limits:
    """The limits of this process's cgroup (v2, else v1), read from ``root`` (tests pass a fake tree)."""
    paths = _cgroup_paths(proc_self_cgroup)
    quota, quota_src = _cpu_quota(root, paths)
    memory, memory_src = _memory_limit(root, paths)
    return Limits(quota, quota_src, _affinity(), memory, memory_src)


def default_decode_threads(limits: Limits) -> int:
    return limits.cpus


def default_tf_threads(limits: Limits) -> tuple[int, int]:
    """(intra-op, inter-op) thread counts for TensorFlow."""
    return limits.cpus, min(2, limits.cpus)


def default_inflight_bytes(limits: Limits) -> int:
    """In-flight request-bytes budget: memory limit / 16 (clamped), or 128 MiB without a limit."""
    if limits.memory_limit is None:
        return UNLIMITED_INFLIGHT_BYTES
    return max(MIN_INFLIGHT_BYTES, min(MAX_INFLIGHT_BYTES, limits.memory_limit // INFLIGHT_FRACTION))


def configure_tensorflow_threads(intra_op: int, inter_op: int) -> tuple[int, int]:
    """Size TensorFlow's thread pools; must run before TensorFlow executes anything.

    Returns what TensorFlow reports afterwards. Raises RuntimeError when TF is already initialised.
    """
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(intra_op)
    tf.config.threading.set_inter_op_parallelism_threads(inter_op)
    return (
        tf.config.threading.get_intra_op_parallelism_threads(),
        tf.config.threading.get_inter_op_parallelism_threads(),
    )


# ----------------------------------------------------------------------------- cgroup files
def _cgroup_paths(proc_self_cgroup: Path) -> dict[str, str]:
    """Controller -> this process's cgroup path (``"v2"`` for the unified hierarchy)."""
    paths: dict[str, str] = {}
    try:
        lines = proc_self_cgroup.read_text().splitlines()
    except OSError:
        return paths
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            paths["v2"] = path
        for controller in controllers.split(","):
            if controller:
                paths[controller] = path
    return paths


def _candidates(base: Path, cgroup_path: str | None) -> list[Path]:
    """``base/<cgroup path>`` and each of its ancestors up to ``base`` (deepest first), existing only.

    Inside a container with its own cgroup namespace the path is ``/`` and ``base`` itself is the
    container's cgroup; without one the path leads from the host's root to it.
    """
    dirs = []
    if cgroup_path:
        rel = Path(cgroup_path.lstrip("/"))
        while rel.parts:
            dirs.append(base / rel)
            rel = rel.parent
    dirs.append(base)
    return [d for d in dirs if d.is_dir()]


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _cpu_quota(root: Path, paths: dict[str, str]) -> tuple[float | None, str]:
    best: tuple[float | None, str] = (None, "none")

    def consider(value: float, source: Path) -> None:
        nonlocal best
        if best[0] is None or value < best[0]:
            best = (value, str(source))

    if (root / "cgroup.controllers").exists():  # v2 mounted at root
        for d in _candidates(root, paths.get("v2")):
            text = _read(d / "cpu.max")
            if text:
                fields = text.split()
                if fields[0] != "max" and len(fields) == 2 and int(fields[1]) > 0:
                    consider(int(fields[0]) / int(fields[1]), d / "cpu.max")
        return best
    for name in _V1_CPU_DIRS:
        base = root / name
        if not base.is_dir():
            continue
        for d in _candidates(base, paths.get("cpu")):
            quota, period = _read(d / "cpu.cfs_quota_us"), _read(d / "cpu.cfs_period_us")
            if quota and period and int(quota) > 0 and int(period) > 0:
                consider(int(quota) / int(period), d / "cpu.cfs_quota_us")
        if best[0] is not None:
            break
    return best


def _memory_limit(root: Path, paths: dict[str, str]) -> tuple[int | None, str]:
    best: tuple[int | None, str] = (None, "none")

    def consider(value: int, source: Path) -> None:
        nonlocal best
        if best[0] is None or value < best[0]:
            best = (value, str(source))

    if (root / "cgroup.controllers").exists():
        for d in _candidates(root, paths.get("v2")):
            text = _read(d / "memory.max")
            if text and text != "max":
                consider(int(text), d / "memory.max")
        return best
    base = root / "memory"
    if base.is_dir():
        for d in _candidates(base, paths.get("memory")):
            text = _read(d / "memory.limit_in_bytes")
            if text and int(text) < V1_UNLIMITED:
                consider(int(text), d / "memory.limit_in_bytes")
    return best


def cpu_model_name() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (``platform`` facts elsewhere), recorded beside results."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _affinity() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"
