"""A cheap HTTP/1.1 load generator for the overload benchmark, run in a process of its own.

Why not httpx: on a 2-core machine the client shares the CPU with the server, and an httpx request
costs about a millisecond of client CPU plus a pool that queues requests when its connections run
out; at a few hundred requests per second the client, not the server, sets the latencies. Here a
request is one pre-built byte string written to a keep-alive connection (a new connection when none
is idle), and the answer is parsed by ``httptools`` (llhttp, as uvicorn uses) down to its status
code. The event loop is uvloop when installed.

Two shapes of load (:class:`Phase`):

- **open loop**: arrivals at ``rate`` per second, Poisson (seeded; see :func:`arrival_times`) or
  evenly spaced, whatever the answers. A request's latency is counted from when it was *due*, not
  from when the client got round to sending it, so a lagging client shows up as latency instead of
  hiding it (coordinated omission); the lag itself (sent - due) is recorded too, to tell the two
  apart.
- **closed loop**: ``clients`` connections, each sending its next request when the last is answered.

Each phase runs ``warmup_s`` untimed seconds, then ``seconds`` timed ones; the results list every
request due in the timed window (answered after it or not) as ``(due, sent, done, status)`` seconds
since the window started, status ``"200"``, ``"503"``, ... or ``"error:<type>"``; and the count of
answers *completed* in the window by status (the throughput the server kept up).

:class:`Generator` keeps one process (spawned once) that runs phases on request.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import random
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

#: More requests in flight than this and the generator refuses to send (counted as "error:client_full"):
#: an open loop must not queue inside the client, and a server that holds this many is failing anyway.
MAX_IN_FLIGHT = 8000


@dataclass(frozen=True)
class Phase:
    """What to offer: open loop at ``rate`` (req/s) or, when ``clients`` > 0, a closed loop."""

    host: str
    port: int
    path: str
    bodies: tuple[bytes, ...]
    seconds: float
    warmup_s: float = 0.0
    rate: float = 0.0
    clients: int = 0
    poisson: bool = True
    seed: int = 0
    timeout_s: float = 120.0
    content_type: str = "image/jpeg"
    #: More servers (ports on ``host``) besides ``port``: the requests go round robin over
    #: ``(port, *more_ports)``, the k-th to the (k mod n)-th (a round-robin client in front of replicas).
    more_ports: tuple[int, ...] = ()


@dataclass
class PhaseResult:
    """``requests``: ``(due, sent, done, status)`` of every request due in the timed window (seconds from
    its start); ``completed``: answers completed inside the window, by status; ``warmup``: the same
    tuples for the requests due in the warm-up before it (negative ``due``)."""

    seconds: float
    requests: list[tuple[float, float, float, str]] = field(default_factory=list)
    completed: dict[str, int] = field(default_factory=dict)
    client_cpu_s: float = 0.0
    warmup: list[tuple[float, float, float, str]] = field(default_factory=list)


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; one request at a time."""

    def __init__(self) -> None:
        import httptools

        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except Exception as exc:  # a malformed answer: this connection is done
            self._fail(exc)
            assert self.transport is not None
            self.transport.close()

    def on_message_complete(self) -> None:
        status = str(self.parser.get_status_code())
        if not self.parser.should_keep_alive():
            self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(status)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(exc or ConnectionResetError("connection closed before the answer"))

    def _fail(self, exc: BaseException) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)

    async def request(self, data: bytes) -> str:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        try:
            return await self.waiter
        finally:
            self.waiter = None


class _Client:
    """Requests over growing sets of keep-alive connections (never waits for a free one), round robin
    over the phase's servers."""

    def __init__(self, phase: Phase) -> None:
        self.phase = phase
        self.ports = (phase.port, *phase.more_ports)
        self.messages = {port: self._messages(port) for port in self.ports}
        self.idle: dict[int, list[_Connection]] = {port: [] for port in self.ports}
        self.in_flight = 0
        self.k = 0

    def _messages(self, port: int) -> list[bytes]:
        phase = self.phase
        head = (
            f"POST {phase.path} HTTP/1.1\r\nhost: {phase.host}:{port}\r\n"
            f"content-type: {phase.content_type}\r\ncontent-length: {{n}}\r\n\r\n"
        )
        return [head.format(n=len(b)).encode() + b for b in phase.bodies]

    async def one(self) -> str:
        """Send the next body to the next server; its status (or ``error:<type>``)."""
        if self.in_flight >= MAX_IN_FLIGHT:
            return "error:client_full"
        port = self.ports[self.k % len(self.ports)]
        messages = self.messages[port]
        data = messages[(self.k // len(self.ports)) % len(messages)]
        self.k += 1
        self.in_flight += 1
        idle = self.idle[port]
        conn = None
        try:
            conn = idle.pop() if idle else await self._connect(port)
            status = await asyncio.wait_for(conn.request(data), self.phase.timeout_s)
        except Exception as exc:
            if conn is not None and conn.transport is not None:
                conn.transport.close()
            return f"error:{type(exc).__name__}"
        finally:
            self.in_flight -= 1
        if conn.closed:
            assert conn.transport is not None
            conn.transport.close()
        else:
            idle.append(conn)
        return status

    async def _connect(self, port: int) -> _Connection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(_Connection, self.phase.host, port)
        return conn

    def close(self) -> None:
        for idle in self.idle.values():
            for conn in idle:
                if conn.transport is not None:
                    conn.transport.close()
            idle.clear()


async def _timed(
    client: _Client, due: float, t0: float, result: PhaseResult, done_counts: Counter, end: float
) -> None:
    sent = time.perf_counter()
    status = await client.one()
    done = time.perf_counter()
    if t0 <= done <= end:
        done_counts[status] += 1
    (result.requests if due >= t0 else result.warmup).append((due - t0, sent - t0, done - t0, status))


def arrival_times(rate: float, seconds: float, poisson: bool, seed: int) -> list[float]:
    """``round(rate * seconds)`` arrival times in ``[0, seconds)``: Poisson arrivals conditioned on their
    count (sorted uniform times: the gaps are those of a Poisson process, and the rate offered is
    exactly ``rate``, not a noisy draw around it), or evenly spaced."""
    n = round(rate * seconds)
    if not poisson:
        return [k / rate for k in range(n)]
    rng = random.Random(seed)
    return sorted(rng.uniform(0.0, seconds) for _ in range(n))


def _window(phase: Phase) -> tuple[float, float, float, PhaseResult, Counter]:
    """``(start, t0, end, result, done_counts)`` of a phase starting now: the timed window is
    ``[t0, end)``, after ``phase.warmup_s`` of warm-up."""
    start = time.perf_counter()
    t0 = start + phase.warmup_s
    return start, t0, t0 + phase.seconds, PhaseResult(phase.seconds), Counter()


async def _open_loop(phase: Phase, client: _Client) -> PhaseResult:
    start, t0, end, result, done_counts = _window(phase)
    tasks: set[asyncio.Task] = set()
    # warm-up and timed window drawn apart, so the window holds exactly rate x seconds arrivals
    schedule = [start + t for t in arrival_times(phase.rate, phase.warmup_s, phase.poisson, phase.seed)]
    schedule += [t0 + t for t in arrival_times(phase.rate, phase.seconds, phase.poisson, phase.seed + 1)]
    for due in schedule:
        await asyncio.sleep(max(0.0, due - time.perf_counter()))  # yields even when behind
        task = asyncio.ensure_future(_timed(client, due, t0, result, done_counts, end))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)
    result.completed = dict(done_counts)
    return result


async def _closed_loop(phase: Phase, client: _Client) -> PhaseResult:
    _, t0, end, result, done_counts = _window(phase)

    async def user() -> None:
        while time.perf_counter() < end:
            await _timed(client, time.perf_counter(), t0, result, done_counts, end)

    await asyncio.gather(*(user() for _ in range(phase.clients)))
    result.completed = dict(done_counts)
    return result


async def _run(phase: Phase) -> PhaseResult:
    client = _Client(phase)
    cpu0 = time.process_time()
    try:
        result = await (_closed_loop(phase, client) if phase.clients else _open_loop(phase, client))
    finally:
        client.close()
    result.client_cpu_s = time.process_time() - cpu0
    return result


def run_phase(phase: Phase) -> PhaseResult:
    """Run one phase in this process (on uvloop when installed)."""
    with contextlib.suppress(ImportError):
        import uvloop

        return uvloop.run(_run(phase))
    return asyncio.run(_run(phase))


class Generator:
    """A load-generator process of its own (spawned once; phases run there one at a time)."""

    def __init__(self) -> None:
        self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))

    def run(self, phase: Phase) -> PhaseResult:
        return self._pool.submit(run_phase, phase).result()

    def close(self) -> None:
        self._pool.shutdown()

    def __enter__(self) -> Generator:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
