"""The event loop answers first: compute threads run at a lower CPU priority (a higher nice value).

One thread runs the event loop: it reads every request, refuses what admission refuses (503) and
writes every answer. The compute threads (TensorFlow's thread pools, the model-call thread, the decode
pool) can keep every core busy. At equal priority the scheduler shares the cores among all of them,
so under overload the event loop gets a fraction of a core, requests queue in front of it (socket
buffers), and a refusal that costs half a millisecond of CPU arrives seconds late. With the compute
threads at nice ``--compute_nice`` (default 10: about a tenth of the weight of a nice-0 thread) the
event loop runs whenever it has work, and the compute threads use every cycle it leaves. The value is
relative to the process's own: a server started at nice ``n`` runs its compute threads at
``min(19, n + --compute_nice)``, so the event loop keeps the same lead whatever the process's priority
(a benchmark started at nice -15 beside nice-10 jobs would otherwise drop its model to their level). The event
loop's work per request is small and bounded by admission, so it cannot starve the model at the
loads admission lets in; on a pod limited to one CPU, a flood of many times the capacity would be
refused mostly by the event loop, and the model then gets what is left.

Linux only (elsewhere, or when the kernel refuses, nothing changes and it is logged once). Raising a
thread's nice value needs no privilege; lowering it back would, so the event-loop thread is never
touched. Threads inherit their creator's nice value: the pools created later by the event-loop thread
call :func:`lower_this_thread` in their initializer, and :func:`lower_other_threads` lowers the
native threads TensorFlow created before serving started (Python threads, such as the event loop
and gRPC's poller, and gRPC's native I/O threads keep their priority).
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from pathlib import Path

log = logging.getLogger(__name__)

#: Nice levels the compute threads run below the process's own (set once at start from
#: ``--compute_nice``; 0: unchanged).
COMPUTE_NICE = 0
#: The process's own nice value when :func:`configure` ran (the event loop's).
BASE_NICE = 0
_PR_SET_NAME = 15  # prctl(2)
#: Native thread names (``/proc/self/task/*/comm``) that do I/O for the servers and keep their
#: priority: gRPC's event engine, timer and lifeguard threads.
IO_THREAD_PREFIXES = ("event_engine", "grpc_", "lifeguard")

_warned = False


def configure(nice: int) -> None:
    """Set how many nice levels below the calling thread's own (the event loop's) :func:`lower_this_thread`
    and :func:`lower_other_threads` put the compute threads."""
    global COMPUTE_NICE, BASE_NICE
    if not 0 <= nice <= 19:
        raise ValueError(f"the compute threads' nice value must be in 0..19, got {nice}")
    COMPUTE_NICE = nice
    try:
        BASE_NICE = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    except (OSError, AttributeError):  # not Linux
        BASE_NICE = 0


def compute_nice() -> int:
    """The nice value the compute threads get: the process's own plus :data:`COMPUTE_NICE`, at most 19."""
    return min(19, BASE_NICE + COMPUTE_NICE)


def lower_this_thread() -> None:
    """Run the calling thread at :func:`compute_nice` (a ``ThreadPoolExecutor`` initializer)."""
    if COMPUTE_NICE:
        _set_nice(threading.get_native_id())


def start_compute_thread() -> None:
    """A compute pool's ``ThreadPoolExecutor`` initializer: :func:`name_this_thread`, then
    :func:`lower_this_thread`."""
    name_this_thread()
    lower_this_thread()


def name_this_thread() -> None:
    """Give the calling thread's kernel name (``/proc/PID/task/TID/comm``, ``top -H``, ``py-spy``) its
    Python name, cut to 15 bytes (e.g. ``ssd-decode_0``): per-thread CPU can then be told apart
    (``bench/threads.py``). Linux only; elsewhere nothing happens."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        name = threading.current_thread().name.encode("ascii", "replace")[:15]
        libc.prctl(_PR_SET_NAME, ctypes.c_char_p(name), 0, 0, 0)
    except (OSError, AttributeError):  # no prctl here
        pass


def lower_other_threads(keep: set[int]) -> list[int]:
    """Every thread of this process at :func:`compute_nice`, except those in ``keep`` (native ids) and
    the I/O threads named in :data:`IO_THREAD_PREFIXES`; returns the ids lowered."""
    if not COMPUTE_NICE:
        return []
    lowered = []
    for tid in _thread_ids():
        if tid in keep or _thread_name(tid).startswith(IO_THREAD_PREFIXES):
            continue
        if _set_nice(tid):
            lowered.append(tid)
    return lowered


def thread_nice(tid: int) -> int:
    """The nice value of thread ``tid`` of this process."""
    return os.getpriority(os.PRIO_PROCESS, tid)


def _thread_ids() -> list[int]:
    try:
        return [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        return []


def _thread_name(tid: int) -> str:
    try:
        return Path(f"/proc/self/task/{tid}/comm").read_text().strip()
    except OSError:  # the thread just ended
        return ""


def _set_nice(tid: int) -> bool:
    """Raise ``tid``'s nice value to :func:`compute_nice` (never lower it); False when refused."""
    global _warned
    target = compute_nice()
    try:
        if os.getpriority(os.PRIO_PROCESS, tid) < target:
            os.setpriority(os.PRIO_PROCESS, tid, target)
        return True
    except (OSError, AttributeError) as e:  # gone, not Linux, or refused by a security policy
        if not _warned and not isinstance(e, ProcessLookupError):
            _warned = True
            log.warning("cannot lower the priority of compute threads (%s); they share the CPU equally", e)
        return False
