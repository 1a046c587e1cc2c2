"""The C heap (glibc malloc): tuned once at start, and given back to the system when the server goes idle.

- :func:`tune_malloc` fixes the mmap threshold and the number of arenas before any thread starts.
- :class:`IdleTrimmer` calls glibc's ``malloc_trim(0)`` once the server has had no request in flight
  for ``--malloc_trim_idle_s``. Under load the decode threads and TensorFlow free and reallocate
  image- and batch-sized blocks all the time, and glibc keeps those free blocks in the heap so that the
  next request reuses them without a page fault. That is the fast path (see :func:`tune_malloc`), but
  it leaves the resident size at the load's high-water mark after the load has gone. ``malloc_trim``
  hands every free page back (``madvise(MADV_DONTNEED)``, also in the middle of the heap), so an idle
  pod's memory (what the kubelet and the autoscalers see) returns to about its size at ready. The price
  is the page faults of the first requests after an idle spell: the same cost per buffer that the
  mmap threshold avoids while the server is busy.

Everything here is a no-op where the C library is not glibc (musl has neither call).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading
import time
from collections.abc import Callable
from functools import cache

from predictor.serving import prometheus

log = logging.getLogger(__name__)

#: glibc ``mallopt`` parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
#: malloc arenas: glibc's default is 8 per core, one per thread that allocates at once; each keeps what
#: its thread freed, so a server with dozens of threads (decode, TensorFlow, gRPC, asyncio) grows.
ARENA_MAX = 2


@cache
def _libc() -> ctypes.CDLL | None:
    """The C library when it is glibc (has ``mallopt`` and ``malloc_trim``), else None."""
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)  # CDLL: calls release the GIL
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):  # not glibc
        return None
    return libc


def tune_malloc(mmap_threshold: int) -> bool:
    """Keep glibc's heap from growing with traffic; True when applied (glibc only).

    By default glibc raises its mmap threshold to the size of every large block freed (up to 32 MiB),
    after which image and batch buffers of that size are kept in the heap and never returned, and it
    creates up to 8 arenas per core. A fixed threshold (which also turns the adjustment off; the heap's
    trim threshold is set to the same) and two arenas keep the resident size bounded. Allocations of at
    least ``mmap_threshold`` bytes are mmap()ed and go back to the system when freed; smaller ones come
    from the heap and are reused. Where to put it (``--malloc_mmap_threshold_bytes``) is a trade: every
    mmap()ed buffer costs a page fault per 4 KiB when first written, so at 1 MiB the decode threads'
    CPU per 1080p JPEG doubled (15 -> 31 ms, its 6 MiB pixel buffers were all mmap()ed); at 8 MiB (the
    default) the decode costs 13-15 ms and the heap keeps the load's working set (~100 MiB in the soak)
    until :class:`IdleTrimmer` returns it: bench/RESULTS.md. Must run before the threads start.
    """
    libc = _libc()
    if libc is None:
        return False
    ok = libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold) == 1
    ok &= libc.mallopt(_M_TRIM_THRESHOLD, mmap_threshold) == 1
    ok &= libc.mallopt(_M_ARENA_MAX, ARENA_MAX) == 1
    return bool(ok)


def malloc_trim() -> bool:
    """Return the heap's free pages to the system (``malloc_trim(0)``); True when glibc ran it."""
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


def resident_bytes() -> int:
    """Resident size of this process in bytes (``/proc/self/statm``); 0 where there is none."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class IdleTrimmer:
    """Trim the heap once per idle spell: after ``idle_s`` seconds with nothing in flight.

    ``activity()`` returns ``(in_flight, admitted)``: whether anything is in flight now, and a count that
    grows with every admitted request (:class:`~predictor.serving.admission.ByteBudget` gives both). A
    spell starts when the count last changed or something was last seen in flight; the trim runs once
    it has lasted ``idle_s``, and not again before another request has been admitted. :meth:`poll` is
    the whole decision; :meth:`start` runs it every ``idle_s / 4`` in a daemon thread.
    """

    def __init__(
        self,
        activity: Callable[[], tuple[bool, int]],
        idle_s: float,
        trim: Callable[[], bool] = malloc_trim,
        clock: Callable[[], float] = time.monotonic,
        resident: Callable[[], int] = resident_bytes,
    ) -> None:
        if idle_s <= 0:
            raise ValueError(f"idle_s must be positive, got {idle_s}")
        self.idle_s = idle_s
        self._activity, self._trim, self._clock, self._resident = activity, trim, clock, resident
        _, admitted = activity()
        self._seen = self._trimmed_at = admitted  # nothing to give back before the first request
        self._active_at = clock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll(self) -> bool:
        """Trim when an idle spell has lasted ``idle_s`` and requests came since the last trim."""
        in_flight, admitted = self._activity()
        now = self._clock()
        if in_flight or admitted != self._seen:
            self._seen, self._active_at = admitted, now
            return False
        if admitted == self._trimmed_at or now - self._active_at < self.idle_s:
            return False
        self._trimmed_at = admitted
        before = self._resident()
        started = time.perf_counter()
        if not self._trim():
            return False
        returned = max(0, before - self._resident())
        prometheus.HEAP_TRIMS.inc()
        prometheus.HEAP_TRIMMED_BYTES.inc(returned)
        log.debug(
            "idle %.1f s: heap trimmed, %.0f MiB returned in %.1f ms",
            now - self._active_at,
            returned / 2**20,
            1e3 * (time.perf_counter() - started),
        )
        return True

    def start(self) -> IdleTrimmer:
        self._thread = threading.Thread(target=self._run, name="ssd-heap-trim", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.idle_s / 4):
            self.poll()
