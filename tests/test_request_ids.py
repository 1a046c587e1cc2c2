"""Request ids generated for requests that came without ``x-request-id``."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from predictor.serving import prometheus


def test_generated_request_ids_are_16_hex_digits_and_do_not_repeat():
    ids = [prometheus.new_request_id() for _ in range(10_000)]
    assert all(re.fullmatch(r"[0-9a-f]{16}", i) for i in ids), ids[:3]
    assert len(set(ids)) == len(ids)
    assert len({i[0] for i in ids}) == 16  # leading zeros kept: every first digit occurs


def _ids_in_child(n: int) -> list[str]:
    """Ids made by a process forked from this one (the generator already seeded here)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: write its ids and exit without running the parent's cleanup
        try:
            os.write(write_end, " ".join(prometheus.new_request_id() for _ in range(n)).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        data = f.read().decode()
    os.waitpid(pid, 0)
    return data.split()


def test_forked_processes_generate_different_request_ids():
    prometheus.new_request_id()  # the parent's generator is in use before the fork
    first, second = _ids_in_child(100), _ids_in_child(100)
    assert len(first) == len(second) == 100
    assert not set(first) & set(second)
    assert not set(first) & {prometheus.new_request_id() for _ in range(100)}


def test_separate_processes_generate_different_request_ids():
    code = "from predictor.serving import prometheus as p; print(p.new_request_id())"
    ids = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        for _ in range(2)
    }
    assert len(ids) == 2
