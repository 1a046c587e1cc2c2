"""bench/threads.py: per-thread CPU by group from /proc, and the server's pool threads named in the kernel
(predictor.serving.priority.name_this_thread); hand-made samples for the arithmetic."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest

from bench import threads
from predictor.serving import priority

pytestmark = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="Linux /proc")


def test_profile_delta_gives_cpu_ms_per_image_by_group_and_the_idle_share():
    pid = 100
    before = {100: ("python", 1.0), 101: ("ssd-decode_0", 2.0), 102: ("tf_Compute", 0.5)}
    after = {
        100: ("python", 1.5),  # the event loop: 0.5 s
        101: ("ssd-decode_0", 4.0),  # 2 s
        102: ("tf_Compute", 0.5),  # idle meanwhile
        103: ("ssd-model_0", 1.0),  # started meanwhile: all of its 1 s
        104: ("event_engine", 0.25),
        105: ("python", 0.75),  # an unnamed thread
    }
    p = threads.profile_delta(pid, before, after, (10.0, 100.0), (13.0, 120.0), images=250)
    assert p["cpu_ms_per_image"] == pytest.approx(
        {
            "event loop": 2.0,
            "decode": 8.0,
            "model call": 4.0,
            "TensorFlow": 0.0,
            "gRPC I/O": 1.0,
            "other": 3.0,
        }
    )
    busy = {"event loop": 1, "decode": 1, "model call": 1, "TensorFlow": 0, "gRPC I/O": 1, "other": 1}
    assert p["busy_threads"] == busy
    assert p["machine_idle_share"] == pytest.approx(3.0 / 20.0)


def test_a_named_pool_thread_is_found_in_proc_with_its_cpu():
    """A thread named like the decode pool's burns CPU for a while; thread_cpu sees it under its name, in
    the decode group, with the CPU it used."""
    done, named, burned = threading.Event(), threading.Event(), threading.Event()
    tid: list[int] = []

    def burn() -> None:
        priority.name_this_thread()
        tid.append(threading.get_native_id())
        named.set()
        end = time.thread_time() + 0.3
        while time.thread_time() < end:
            pass
        burned.set()
        done.wait()

    worker = threading.Thread(target=burn, name="ssd-decode_7")
    before = threads.thread_cpu(os.getpid())
    worker.start()
    named.wait()
    try:
        assert burned.wait(60)
        after = threads.thread_cpu(os.getpid())
    finally:
        done.set()
        worker.join()
    name, seconds = after[tid[0]]
    assert name == "ssd-decode_7"
    assert threads.group_of(os.getpid(), tid[0], name) == "decode"
    assert seconds >= 0.28  # 0.3 s of CPU, in clock ticks of 10 ms
    assert tid[0] not in before
    assert threads.group_of(os.getpid(), os.getpid(), after[os.getpid()][0]) == "event loop"


def test_served_profile_summarizes_py_spy_samples_by_thread_group():
    """bench.served_profile: py-spy's raw lines -> per thread group (main thread = event loop, pool
    threads without their number), inclusive shares by function (once per stack, line numbers dropped)
    and self shares by line."""
    from bench.served_profile import summarize

    lib = "/x/lib/python3.11"
    lines = [
        f"thread (11): MainThread;run ({lib}/asyncio/runners.py:118);select ({lib}/selectors.py:468) 6",
        f"thread (11): MainThread;run ({lib}/asyncio/runners.py:120);parse (/x/site-packages/a/b.py:5) 2",
        "thread (12): ssd-decode_0;work (/r/predictor/serving/prepare.py:80);"
        "load (/x/site-packages/PIL/ImageFile.py:425) 3",
        "thread (13): ssd-decode_1;work (/r/predictor/serving/prepare.py:81);"
        "work (/r/predictor/serving/prepare.py:90) 1",
        "",
    ]
    p = summarize(lines, top=10)
    assert list(p) == ["event loop", "ssd-decode"]
    assert p["event loop"]["samples"] == 8 and p["ssd-decode"]["samples"] == 4
    assert p["event loop"]["inclusive"] == [
        ("run (asyncio/runners.py)", 1.0), ("select (selectors.py)", 0.75), ("parse (a/b.py)", 0.25),
    ]  # fmt: skip
    assert p["event loop"]["self"] == [("select (selectors.py:468)", 0.75), ("parse (a/b.py:5)", 0.25)]
    # a recursive frame counts once per stack
    assert p["ssd-decode"]["inclusive"][0] == ("work (/r/predictor/serving/prepare.py)", 1.0)
    assert p["ssd-decode"]["self"][0] == ("load (PIL/ImageFile.py:425)", 0.75)


def test_served_profile_and_served_vs_raw_run_the_served_stages_compute_nice(tmp_path):
    """The profile's server and served_vs_raw's process run the compute threads at the nice level of
    ``make bench``'s served stage (which the profile is read beside), not the server's default."""
    from bench import run_all, served_profile, served_vs_raw

    stage = run_all.FULL["served"]
    server_args = stage[stage.index("--server_args") + 1]
    assert server_args.split()[0] == "--compute_nice"
    cmd = served_profile.served_command(served_profile.parse_args(["--out_dir", str(tmp_path)]))
    assert cmd[cmd.index("--server_args") + 1] == server_args
    # the one cell runs through settle + recording + 5 s
    assert cmd[cmd.index("--duration_s") + 1] == "25.0"
    assert served_vs_raw.parse_args([]).compute_nice == int(server_args.split()[1])


def test_served_profile_without_py_spy_exits_with_one_line_naming_the_install(tmp_path, monkeypatch):
    """No py-spy on PATH nor beside the interpreter: a one-line exit message, no bench started."""
    from bench import served_profile

    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    with pytest.raises(SystemExit) as exc:
        served_profile.main(["--out_dir", str(tmp_path / "out")])
    message = str(exc.value.code)
    assert "\n" not in message and "pip install py-spy" in message and "ptrace" in message
    assert not (tmp_path / "out").exists()
