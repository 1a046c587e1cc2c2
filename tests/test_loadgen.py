"""The overload benchmark's load generator (bench/loadgen.py): arrival schedules and answers counted
right, against a real server. No timing asserts: only counts and statuses."""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from serving_fixtures import MODEL_NAME, encode_image

REPO = Path(__file__).resolve().parents[1]


def _loadgen():
    """``bench/loadgen.py`` by path (the repo root is not on ``sys.path`` under pytest)."""
    spec = importlib.util.spec_from_file_location("bench_loadgen", REPO / "bench" / "loadgen.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_poisson_arrivals_have_the_exact_count_and_are_reproducible():
    loadgen = _loadgen()
    times = loadgen.arrival_times(rate=37.0, seconds=2.0, poisson=True, seed=5)
    assert len(times) == 74 and times == sorted(times) and times[0] >= 0.0 and times[-1] < 2.0
    assert times == loadgen.arrival_times(rate=37.0, seconds=2.0, poisson=True, seed=5)
    assert times != loadgen.arrival_times(rate=37.0, seconds=2.0, poisson=True, seed=6)
    even = loadgen.arrival_times(rate=4.0, seconds=1.0, poisson=False, seed=0)
    assert even == [0.0, 0.25, 0.5, 0.75]


def test_open_and_closed_loops_count_every_answer_by_status(ssd_server):
    """Two bodies alternate: an image (200) and bytes that are not one (400), over keep-alive
    connections; every request due in the window is listed with its status."""
    loadgen = _loadgen()
    image = encode_image(np.zeros((48, 64, 3), np.uint8))
    base = {
        "host": "127.0.0.1",
        "port": ssd_server.http_port,
        "path": f"/v1/models/{MODEL_NAME}:predict",
        "bodies": (image, b"not an image"),
        "content_type": "application/octet-stream",
    }
    opened = loadgen.run_phase(loadgen.Phase(**base, seconds=1.0, warmup_s=0.5, rate=20.0, seed=1))
    assert len(opened.requests) == 20 and len(opened.warmup) == 10
    statuses = Counter(s for *_, s in opened.requests + opened.warmup)
    assert statuses == {"200": 15, "400": 15}
    assert all(sent <= done for _, sent, done, _ in opened.requests)
    closed = loadgen.run_phase(loadgen.Phase(**base, seconds=1.0, clients=2))
    assert closed.requests and {s for *_, s in closed.requests} == {"200", "400"}


def test_requests_go_round_robin_over_the_servers():
    """Two plain HTTP servers (each answers its own status): 12 requests alternate 0, 1, 0, 1, ...,
    and each server sees the bodies in the client's order, every body once per round."""
    import http.server
    import threading

    seen: dict[int, list[bytes]] = {0: [], 1: []}

    def handler(index: int, status: int) -> type:
        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                seen[index].append(self.rfile.read(int(self.headers["content-length"])))
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        return Handler

    servers = [
        http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler(i, s)) for i, s in ((0, 200), (1, 202))
    ]
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    try:
        loadgen = _loadgen()
        phase = loadgen.Phase(
            host="127.0.0.1", port=servers[0].server_port, more_ports=(servers[1].server_port,), path="/",
            bodies=(b"a", b"b", b"c"), seconds=1.0, rate=12.0, poisson=False,
        )  # fmt: skip
        result = loadgen.run_phase(phase)
    finally:
        for s in servers:
            s.shutdown()
    assert Counter(s for *_, s in result.requests) == {"200": 6, "202": 6}
    assert seen[0] == [b"a", b"b", b"c"] * 2 and seen[1] == [b"a", b"b", b"c"] * 2
