"""Compute threads at a lower CPU priority than the event loop (predictor/serving/priority.py).

Nice values are read from the kernel (``getpriority`` / ``/proc/PID/task/TID/stat``); nothing here
depends on timing. Raising a thread's nice value cannot be undone without privilege, so the tests lower
only threads they start themselves, or threads of a subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
from serving_fixtures import MODEL_NAME, REPO_ROOT, b64, encode_image, start_server

from predictor.serving import priority
from predictor.serving.options import build_parser

pytestmark = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="Linux per-thread nice values")


def _in_thread(fn) -> tuple[int, int]:
    """Run ``fn`` in a new thread that stays alive until its nice value is read: (tid, nice)."""
    ready, done = threading.Event(), threading.Event()
    tid: list[int] = []

    def body() -> None:
        fn()
        tid.append(threading.get_native_id())
        ready.set()
        done.wait()

    thread = threading.Thread(target=body)
    thread.start()
    ready.wait()
    try:
        return tid[0], priority.thread_nice(tid[0])
    finally:
        done.set()
        thread.join()


def test_lower_this_thread_applies_the_configured_nice_to_the_calling_thread_only():
    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    try:
        priority.configure(7)
        _, nice = _in_thread(priority.lower_this_thread)
        assert nice == min(19, before + 7)
        priority.configure(0)  # 0: nothing changes
        _, nice = _in_thread(priority.lower_this_thread)
        assert nice == before
    finally:
        priority.configure(0)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before


@pytest.mark.parametrize("nice", [-1, 20])
def test_configure_refuses_values_outside_0_to_19(nice):
    with pytest.raises(ValueError, match=r"0\.\.19"):
        priority.configure(nice)


def test_lower_other_threads_spares_the_kept_ones():
    """In a subprocess (it walks every thread of its process): two waiting threads, one kept."""
    script = textwrap.dedent(
        """
        import os, threading
        from predictor.serving import priority

        os.nice(3)  # the process's own level: the compute threads go 9 below it, not to 9
        ids, stop = {}, threading.Event()
        started = threading.Barrier(3)
        def wait(name):
            ids[name] = threading.get_native_id()
            started.wait()
            stop.wait()
        threads = [threading.Thread(target=wait, args=(n,)) for n in ("kept", "lowered")]
        for t in threads:
            t.start()
        started.wait()
        priority.configure(9)
        lowered = priority.lower_other_threads(keep={threading.get_native_id(), ids["kept"]})
        print(ids["lowered"] in lowered, ids["kept"] in lowered,
              priority.thread_nice(threading.get_native_id()), priority.thread_nice(ids["kept"]),
              priority.thread_nice(ids["lowered"]))
        stop.set()
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lowered, kept_lowered, main_nice, kept_nice, lowered_nice = out.stdout.split()
    assert (lowered, kept_lowered) == ("True", "False")
    assert int(lowered_nice) == min(19, int(main_nice) + 9)
    assert int(main_nice) == int(kept_nice) < int(lowered_nice)


def test_the_defaults_shed_standing_queues_and_lower_compute_threads(monkeypatch):
    for name in ("SSD_SHED_STANDING_QUEUE", "SSD_COMPUTE_NICE"):
        monkeypatch.delenv(name, raising=False)
    args = build_parser().parse_args([])
    assert args.shed_standing_queue is True and args.compute_nice == 10
    assert build_parser().parse_args(["--no-shed_standing_queue", "--compute_nice", "0"]).compute_nice == 0
    monkeypatch.setenv("SSD_COMPUTE_NICE", "3")
    assert build_parser().parse_args([]).compute_nice == 3
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--compute_nice", "20"])


def _threads(pid: int) -> dict[int, tuple[str, int]]:
    """``{tid: (name, nice)}`` of every thread of process ``pid``."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        out[int(tid)] = (name, int(stat[16]))  # field 19 of stat: nice
    return out


def test_server_runs_tensorflow_decode_and_model_threads_below_the_event_loop(
    random_tiny_model_dir, tmp_path
):
    """Default flags: once ready, TensorFlow's threads are 10 nice levels below the event loop (main
    thread) and gRPC's I/O threads, which keep the process's own; the decode and model threads started by
    the first request are at that level too, and carry their Python names (ssd-decode_0, ssd-model_0)."""
    server = start_server(random_tiny_model_dir, tmp_path / "server.log")
    try:
        server.wait_ready()
        pid = server.proc.pid
        before = _threads(pid)
        base = os.getpriority(os.PRIO_PROCESS, 0)  # the server inherits the test's own nice value
        compute = min(19, base + 10)
        assert before[pid][1] == base, "the event loop (main thread) must keep its priority"
        tf = [nice for name, nice in before.values() if name.startswith("tf_")]
        assert tf and set(tf) == {compute}, before
        grpc_io = [nice for name, nice in before.values() if name.startswith(("event_engine", "grpc_"))]
        assert grpc_io and set(grpc_io) == {base}, before
        body = {"instances": [{"image_bytes": {"b64": b64(encode_image(np.zeros((48, 64, 3), np.uint8)))}}]}
        r = httpx.post(f"{server.url}/v1/models/{MODEL_NAME}:predict", json=body, timeout=120)
        assert r.status_code == 200, r.text
        after = _threads(pid)
        new = {tid: nice for tid, (_, nice) in after.items() if tid not in before}
        assert len(new) >= 2, (
            f"expected a decode and a model thread to start: {after}"
        )  # ssd-decode_0, ssd-model_0
        assert set(new.values()) == {compute}, after
        names = {after[tid][0] for tid in new}
        assert {"ssd-decode_0", "ssd-model_0"} <= names, after
        assert f"compute threads at nice {compute}" in server.log()
    finally:
        server.terminate()


def test_server_with_compute_nice_0_changes_no_priority(random_tiny_model_dir, tmp_path):
    server = start_server(random_tiny_model_dir, tmp_path / "server.log", "--compute_nice", "0")
    try:
        server.wait_ready()
        body = {"instances": [{"image_bytes": {"b64": b64(encode_image(np.zeros((48, 64, 3), np.uint8)))}}]}
        r = httpx.post(f"{server.url}/v1/models/{MODEL_NAME}:predict", json=body, timeout=120)
        assert r.status_code == 200, r.text
        assert {nice for _, nice in _threads(server.proc.pid).values()} == {
            os.getpriority(os.PRIO_PROCESS, 0)
        }
    finally:
        server.terminate()
