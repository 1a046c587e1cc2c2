"""bench/call_load.py's arithmetic (the timings themselves are a benchmark's, not a test's): the size
lists, the background stream's rate bookkeeping and the table, on hand-made values."""

from __future__ import annotations

import threading
import time

from bench import call_load


def test_sizes_expand_ranges_in_order():
    assert call_load.parse_sizes("1-4,8") == [1, 2, 3, 4, 8]
    assert call_load.parse_sizes("25") == [25]
    assert call_load.parse_sizes("30-32,1") == [30, 31, 32, 1]


def test_medians_are_per_key():
    calls = [{"wall_ms": 10.0, "faults": 3}, {"wall_ms": 30.0, "faults": 1}, {"wall_ms": 20.0, "faults": 2}]
    assert call_load.medians(calls) == {"wall_ms": 20.0, "faults": 2}


def test_continuous_background_counts_each_decode_once_and_stops():
    """Two threads, each job 10 ms of sleep: about 2 x 100 = 200 jobs per second; the count is what the
    threads did, and both threads are joined on exit."""
    seen: list[int] = []
    lock = threading.Lock()

    def job(k: int) -> None:
        with lock:
            seen.append(k)
        time.sleep(0.01)

    with call_load.Background(job, threads=2) as bg:
        time.sleep(0.2)
    assert bg.done == len(seen)
    assert sorted(seen) == list(range(len(seen)))  # thread i decodes i, i + 2, i + 4, ...
    assert all(not w.is_alive() for w in bg.workers)
    assert 50 < bg.per_second < 260


def test_the_table_has_a_row_per_size_and_a_column_per_load():
    report = {
        "alone": {"1": {"wall_ms": 10.0, "user_ms": 16.0, "sys_ms": 1.0, "faults": 20},
                  "25": {"wall_ms": 150.0, "user_ms": 290.0, "sys_ms": 12.0, "faults": 900}},
        "cold": {"25": {"first_ms": 170.0, "second_ms": 151.0}},
        "beside": {"1": {"calls": {"1": {"wall_ms": 14.0}, "25": {"wall_ms": 260.0}},
                         "decodes_per_s": 250.0}},
        "open": {"80": {"calls": {"25": {"wall_ms": 300.0}}, "decodes_per_s": 79.5}},
        "repeat": {}, "gap_ms": {"0": 10.0, "30": 13.0}, "decode_alone_ms": 2.5,
    }  # fmt: skip
    lines = call_load.markdown(report).splitlines()
    assert "beside 1 decoding (250 decodes/s)" in lines[0] and "open 80/s + loop (79.5 decodes/s)" in lines[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:4]]
    assert rows[0] == ["1", "10.0", "10.00", "16.0", "1.0", "20", "-", "14.0", ""]
    assert rows[1] == ["25", "150.0", "6.00", "290.0", "12.0", "900", "170.0", "260.0", "300.0"]
