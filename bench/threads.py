"""Per-thread CPU of a server process, grouped by what the threads do, and the machine's idle share.

The served benchmark (``bench/served.py``) samples :func:`thread_cpu` and :func:`machine_cpu` before and
after each cell; :func:`profile_delta` turns two samples into CPU ms per image by thread group and the
share of all cores left idle. The server names its own pool threads in the kernel
(``predictor.serving.priority.name_this_thread``: ``ssd-decode_N``, ``ssd-model_0``); TensorFlow names
its pools ``tf_*``; gRPC's native I/O threads are ``event_engine``, ``grpc_*``, ``lifeguard``; the main
thread (thread id = process id) runs the event loop. Unnamed threads (``python``: gRPC's Python poller,
TensorFlow threads that carry no name) are counted as ``other``.

Reads ``/proc/PID/task/*/stat`` (utime + stime, in clock ticks) and ``/proc/stat``; Linux only.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Thread groups in the order tables show them.
GROUPS = ("event loop", "decode", "model call", "TensorFlow", "gRPC I/O", "other")
_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def group_of(pid: int, tid: int, name: str) -> str:
    """The group of thread ``tid`` (kernel name ``name``) of process ``pid``."""
    if tid == pid:
        return "event loop"
    if name.startswith("ssd-decode"):
        return "decode"
    if name.startswith("ssd-model"):
        return "model call"
    if name.startswith("tf_"):
        return "TensorFlow"
    if name.startswith(("event_engine", "grpc_", "lifeguard")):
        return "gRPC I/O"
    return "other"


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """``{tid: (kernel name, CPU seconds so far)}`` of every live thread of ``pid`` (ended ones are gone:
    sample before and after, and compare only the threads present in both or new)."""
    out: dict[int, tuple[str, float]] = {}
    for entry in os.scandir(f"/proc/{pid}/task"):
        try:
            text = Path(entry.path, "stat").read_text()
        except OSError:  # ended meanwhile
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        out[int(entry.name)] = (name, (int(fields[11]) + int(fields[12])) * _TICK_S)  # utime, stime
    return out


def machine_cpu() -> tuple[float, float]:
    """``(idle seconds, total seconds)`` summed over all cores since boot (``/proc/stat``'s ``cpu`` line;
    idle includes iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return idle * _TICK_S, sum(fields[:8]) * _TICK_S


def profile_delta(
    pid: int,
    before: dict[int, tuple[str, float]],
    after: dict[int, tuple[str, float]],
    machine_before: tuple[float, float],
    machine_after: tuple[float, float],
    images: int,
) -> dict[str, object]:
    """CPU ms per image by thread group between two :func:`thread_cpu` samples, the threads of each
    group, and the share of the machine's cores that stayed idle between the two :func:`machine_cpu`
    samples."""
    per_group = dict.fromkeys(GROUPS, 0.0)
    threads = dict.fromkeys(GROUPS, 0)
    for tid, (name, seconds) in after.items():
        used = seconds - before.get(tid, (name, 0.0))[1]
        group = group_of(pid, tid, name)
        per_group[group] += used
        threads[group] += used > 0
    idle = machine_after[0] - machine_before[0]
    total = machine_after[1] - machine_before[1]
    n = max(images, 1)
    return {
        "cpu_ms_per_image": {g: 1000.0 * s / n for g, s in per_group.items()},
        "busy_threads": threads,
        "machine_idle_share": idle / total if total > 0 else None,
    }
