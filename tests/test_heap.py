"""The C heap: glibc tuning at start and the idle trimmer (:mod:`predictor.serving.heap`).

The trimmer's decision is driven with a fake clock and activity; what ``malloc_trim`` does is checked on
a real glibc heap in a fresh interpreter, and the server's use of both in ``tests/test_server.py``.
"""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from predictor.serving import heap
from predictor.serving.admission import ByteBudget

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt / malloc_trim are glibc's")


class Fake:
    """The trimmer's world: a clock, the budget it watches and the trims it made."""

    def __init__(self) -> None:
        self.now = 100.0
        self.budget = ByteBudget(1000)
        self.trims = 0
        self.calls = 0

    def resident(self) -> int:
        """300 resident bytes before each trim, 200 after it."""
        self.calls += 1
        return 300 if self.calls % 2 else 200

    def trim(self) -> bool:
        self.trims += 1
        return True

    def trimmer(self, idle_s: float = 2.0) -> heap.IdleTrimmer:
        return heap.IdleTrimmer(
            self.budget.activity, idle_s, trim=self.trim, clock=lambda: self.now, resident=self.resident
        )

    def request(self, hold_s: float = 0.0, trimmer: heap.IdleTrimmer | None = None) -> None:
        """One request admitted now and answered ``hold_s`` later (polled while in flight)."""
        assert self.budget.try_reserve(10)
        if trimmer is not None:
            trimmer.poll()
        self.now += hold_s
        if trimmer is not None:
            assert not trimmer.poll()  # never while something is in flight
        self.budget.release(10)


def test_budget_activity_counts_admissions_and_in_flight():
    budget = ByteBudget(100)
    assert budget.activity() == (False, 0)
    assert budget.try_reserve(60)
    assert budget.activity() == (True, 1)
    assert not budget.try_reserve(50)  # refused: not counted
    assert budget.activity() == (True, 1)
    budget.release(60)
    assert budget.activity() == (False, 1)


def test_no_trim_before_the_first_request():
    world = Fake()
    trimmer = world.trimmer()
    world.now += 3600
    assert not trimmer.poll()
    assert world.trims == 0


def test_one_trim_after_the_idle_spell_then_none_until_the_next_request():
    world = Fake()
    trimmer = world.trimmer(idle_s=2.0)
    world.request(hold_s=5.0, trimmer=trimmer)  # 5 s in flight: no trim meanwhile
    assert not trimmer.poll()  # the spell starts now: the admission count changed since the last poll
    world.now += 1.9
    assert not trimmer.poll()
    world.now += 0.1
    assert trimmer.poll()
    assert world.trims == 1
    world.now += 60
    assert not trimmer.poll()  # once per idle spell
    world.request()
    assert not trimmer.poll()
    world.now += 2.0
    assert trimmer.poll()
    assert world.trims == 2


def test_a_request_during_the_spell_restarts_it():
    world = Fake()
    trimmer = world.trimmer(idle_s=2.0)
    world.request()
    trimmer.poll()
    world.now += 1.5
    world.request()  # admitted and answered between two polls: seen by the admission count
    assert not trimmer.poll()
    world.now += 1.5
    assert not trimmer.poll()
    world.now += 0.5
    assert trimmer.poll()


def test_trims_and_returned_bytes_are_counted():
    from prometheus_client import REGISTRY

    def value(name: str) -> float:
        return REGISTRY.get_sample_value(name) or 0.0

    before = value("ssd_heap_trims_total"), value("ssd_heap_trimmed_bytes_total")
    world = Fake()
    trimmer = world.trimmer(idle_s=1.0)
    world.request()
    trimmer.poll()
    world.now += 1.0
    assert trimmer.poll()
    assert value("ssd_heap_trims_total") - before[0] == 1
    assert value("ssd_heap_trimmed_bytes_total") - before[1] == 100  # 300 -> 200 resident bytes


def test_without_glibc_nothing_is_counted():
    world = Fake()
    trimmer = heap.IdleTrimmer(world.budget.activity, 1.0, trim=lambda: False, clock=lambda: world.now)
    world.request()
    trimmer.poll()
    world.now += 5
    assert not trimmer.poll()


def test_idle_s_must_be_positive():
    with pytest.raises(ValueError, match="idle_s must be positive"):
        heap.IdleTrimmer(ByteBudget(1).activity, 0.0)


def test_the_thread_trims_and_stops():
    world = Fake()
    world.now = 0.0
    trimmer = heap.IdleTrimmer(world.budget.activity, 0.02, trim=world.trim)  # real clock
    world.request()
    trimmer.start()
    import time

    deadline = time.monotonic() + 10
    while world.trims == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    trimmer.stop()
    assert world.trims == 1


@glibc_only
def test_malloc_tuning_applies_on_glibc():
    assert heap.tune_malloc(8 * 2**20) is True


#: A fresh interpreter with the server's malloc settings fills the heap with 64 KiB blocks (below the
#: mmap threshold, so they come from the heap), each followed by a small block that stays allocated:
#: freeing the big ones leaves free pages in the middle of the heap, which glibc keeps (only the top of
#: the heap is trimmed by free()) until malloc_trim gives them back.
FRAGMENTED_HEAP = """
import sys
from predictor.serving import heap
assert heap.tune_malloc(8 * 2**20)
big, pins = [], []
for i in range(3200):  # 200 MiB
    big.append(bytearray(b"x" * 65536))
    pins.append(bytearray(1024))
del big
freed = heap.resident_bytes()
assert heap.malloc_trim()
trimmed = heap.resident_bytes()
print(freed, trimmed)
"""


@glibc_only
def test_malloc_trim_returns_the_free_middle_of_the_heap():
    out = subprocess.run([sys.executable, "-c", FRAGMENTED_HEAP], capture_output=True, text=True, check=True)
    freed, trimmed = map(int, out.stdout.split())
    # free() kept the ~200 MiB of freed blocks resident; the trim gave nearly all of it back
    assert freed - trimmed > 150 * 2**20, (freed / 2**20, trimmed / 2**20)


def test_resident_bytes_reads_this_process():
    import psutil

    rss = psutil.Process().memory_info().rss
    assert abs(heap.resident_bytes() - rss) < 64 * 2**20
