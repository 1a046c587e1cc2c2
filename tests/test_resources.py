"""Container limits read from fake cgroup trees (v2 and v1) and the serving defaults derived from them.

File formats: the kernel's cgroup v2 documentation (Documentation/admin-guide/cgroup-v2.rst: ``cpu.max``
"$MAX $PERIOD" with "max" for none, ``memory.max`` "max" for none) and v1 (cpu.cfs_quota_us -1 for
none; memory.limit_in_bytes LONG_MAX rounded to a page for none).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from predictor.serving import resources
from predictor.serving.resources import Limits, read_limits


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def v2_tree(
    tmp_path: Path, cpu_max: str | None, memory_max: str | None, cgroup: str = "/"
) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    write(root / "cgroup.controllers", "cpu memory pids")
    leaf = root / cgroup.lstrip("/")
    if cpu_max is not None:
        write(leaf / "cpu.max", cpu_max)
    if memory_max is not None:
        write(leaf / "memory.max", memory_max)
    proc = tmp_path / "proc_self_cgroup"
    write(proc, f"0::{cgroup}")
    return root, proc


def affinity() -> int:
    return len(os.sched_getaffinity(0))


def test_v2_quota_and_memory_limit_in_the_namespace_root(tmp_path):
    root, proc = v2_tree(tmp_path, "400000 100000", str(8 * 2**30))
    limits = read_limits(root, proc)
    assert limits.cpu_quota == 4.0
    assert limits.cpu_quota_source.endswith("cpu.max")
    assert limits.memory_limit == 8 * 2**30
    assert limits.cpus == min(4, affinity())


def test_v2_without_limits(tmp_path):
    root, proc = v2_tree(tmp_path, "max 100000", "max")
    limits = read_limits(root, proc)
    assert limits.cpu_quota is None and limits.memory_limit is None
    assert limits.cpu_quota_source == "none" and limits.memory_limit_source == "none"
    assert limits.cpus == affinity()


def test_v2_nested_cgroup_takes_the_smallest_limit_of_its_ancestors(tmp_path):
    root, proc = v2_tree(tmp_path, "max 100000", "max", cgroup="/kubepods/pod1/ctr")
    write(root / "kubepods" / "pod1" / "cpu.max", "150000 100000")  # the pod: 1.5 CPUs
    write(root / "kubepods" / "pod1" / "memory.max", str(2 * 2**30))
    write(root / "kubepods" / "memory.max", str(64 * 2**30))
    limits = read_limits(root, proc)
    assert limits.cpu_quota == 1.5
    assert limits.memory_limit == 2 * 2**30
    assert "pod1" in limits.memory_limit_source


def test_v1_quota_and_memory_limit(tmp_path):
    root = tmp_path / "cgroup"
    write(root / "cpu,cpuacct" / "cpu.cfs_quota_us", "50000")
    write(root / "cpu,cpuacct" / "cpu.cfs_period_us", "100000")
    write(root / "memory" / "memory.limit_in_bytes", str(512 * 2**20))
    proc = tmp_path / "proc_self_cgroup"
    write(proc, "4:memory:/\n3:cpu,cpuacct:/\n0::/")
    limits = read_limits(root, proc)
    assert limits.cpu_quota == 0.5
    assert limits.cpus == 1  # half a CPU still needs one thread
    assert limits.memory_limit == 512 * 2**20


def test_v1_unlimited_values(tmp_path):
    root = tmp_path / "cgroup"
    write(root / "cpu" / "cpu.cfs_quota_us", "-1")
    write(root / "cpu" / "cpu.cfs_period_us", "100000")
    write(root / "memory" / "memory.limit_in_bytes", "9223372036854771712")
    proc = tmp_path / "proc_self_cgroup"
    write(proc, "4:memory:/docker/abc\n1:cpu:/docker/abc")
    limits = read_limits(root, proc)
    assert limits.cpu_quota is None and limits.memory_limit is None


def test_v1_host_view_reads_the_process_own_cgroup(tmp_path):
    root = tmp_path / "cgroup"
    write(root / "memory" / "memory.limit_in_bytes", "9223372036854771712")  # the host: no limit
    write(root / "memory" / "docker" / "abc" / "memory.limit_in_bytes", str(3 * 2**30))
    proc = tmp_path / "proc_self_cgroup"
    write(proc, "4:memory:/docker/abc")
    assert read_limits(root, proc).memory_limit == 3 * 2**30


def test_missing_or_unreadable_cgroup_means_no_limit(tmp_path):
    limits = read_limits(tmp_path / "nothing", tmp_path / "no_proc_file")
    assert limits.cpu_quota is None and limits.memory_limit is None
    assert limits.cpus == affinity()


@pytest.mark.parametrize(
    ("quota", "affinity_cpus", "cpus", "decode", "intra", "inter"),
    [
        (4.0, 64, 4, 4, 4, 2),  # the audit's case: a 64-core node, 4 CPUs allowed
        (None, 2, 2, 2, 2, 2),
        (0.5, 8, 1, 1, 1, 1),
        (2.5, 8, 3, 3, 3, 2),
        (16.0, 3, 3, 3, 3, 2),  # affinity below the quota
    ],
)
def test_thread_defaults_follow_the_quota(quota, affinity_cpus, cpus, decode, intra, inter):
    limits = Limits(quota, "test", affinity_cpus, None, "none")
    assert limits.cpus == cpus
    assert resources.default_decode_threads(limits) == decode
    assert resources.default_tf_threads(limits) == (intra, inter)


@pytest.mark.parametrize(
    ("memory", "budget"),
    [
        (None, 128 * 2**20),
        (8 * 2**30, 512 * 2**20),  # the chart's default limit
        (256 * 2**20, 32 * 2**20),  # clamped up
        (64 * 2**30, 2**30),  # clamped down
    ],
)
def test_inflight_budget_default_follows_the_memory_limit(memory, budget):
    assert resources.default_inflight_bytes(Limits(None, "none", 2, memory, "test")) == budget


def test_describe_names_the_sources(tmp_path):
    root, proc = v2_tree(tmp_path, "200000 100000", str(2**30))
    text = read_limits(root, proc).describe()
    assert "cpu quota 2 (" in text and "memory limit 1,024 MiB (" in text
