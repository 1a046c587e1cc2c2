"""An asyncio event loop on a virtual clock, for tests of code that waits on ``loop.time()`` timers.

:class:`VirtualClockLoop`'s ``time()`` starts at 0 and moves only when the loop would otherwise sleep:
with nothing ready and no thread working for it, the loop jumps straight to its next timer. So a 50 ms
batching window ends at exactly ``t = 0.05`` after microseconds of real time, a wait of an hour costs
nothing, and a hang guard such as ``asyncio.wait_for(x, 120)`` fails at once instead of in two minutes.

While a thread started with ``run_in_executor`` (or ``asyncio.to_thread``) works, for example a model
call a test holds on a gate, the loop waits for it in real time and the clock moves with real time
(timers may fire, as on a real loop). A loop that keeps running past :data:`REAL_LIMIT_S` of real time
raises :class:`Hang` from inside the loop, and so does one that has sat for :data:`IDLE_LIMIT_S` with
no timer, nothing ready and no thread working (nothing can ever wake it), so a test whose code never
finishes fails fast.
"""

from __future__ import annotations

import asyncio
import selectors
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

#: Real seconds one ``run`` may take before :class:`Hang` (every test here needs milliseconds).
REAL_LIMIT_S = 5.0
#: Real seconds the loop may sit with no timer, nothing ready and no thread working before :class:`Hang`:
#: then nothing can ever wake it (an awaited future that no code will set).
IDLE_LIMIT_S = 1.0
_SLICE_S = 0.01  # real wait per poll while a thread works (the watchdog is checked between polls)


class Hang(RuntimeError):
    """The loop ran longer than :data:`REAL_LIMIT_S` of real time."""


class _Selector:
    """The loop's selector, with the waiting replaced (see the module docstring)."""

    def __init__(self, inner: selectors.BaseSelector, loop: VirtualClockLoop) -> None:
        self._inner = inner
        self._loop = loop

    def select(self, timeout: float | None = None) -> list:
        loop = self._loop
        if time.monotonic() - loop.real_start > REAL_LIMIT_S:
            raise Hang(f"still running after {REAL_LIMIT_S:g} s of real time (virtual t={loop.time():.3f})")
        events = self._inner.select(0)
        if events or timeout == 0:
            loop.idle_since = None
            return events
        if timeout is None and not loop.threads_working:
            now = time.monotonic()
            loop.idle_since = loop.idle_since or now
            if now - loop.idle_since > IDLE_LIMIT_S:
                raise Hang(f"nothing scheduled, ready or running for {IDLE_LIMIT_S:g} s: nothing can wake it")
        else:
            loop.idle_since = None
        if loop.threads_working or timeout is None:
            # a thread will call back (or, with no timer and no thread, something outside may): real wait
            wait = _SLICE_S if timeout is None else min(timeout, _SLICE_S)
            start = time.monotonic()
            events = self._inner.select(wait)
            if loop.threads_working and timeout is not None:
                loop.advance(min(time.monotonic() - start, timeout))
            return events
        loop.advance(timeout)  # idle: jump to the next timer
        return []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose ``time()`` is virtual (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self._now = 0.0
        self.threads_working = 0
        self.real_start = time.monotonic()
        self.idle_since: float | None = None  # real time since when nothing could happen
        self._selector = _Selector(self._selector, self)  # type: ignore[assignment]

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += max(0.0, seconds)

    def run_in_executor(self, executor, func, *args):
        future = super().run_in_executor(executor, func, *args)
        self.threads_working += 1
        future.add_done_callback(self._thread_done)
        return future

    def _thread_done(self, _future: asyncio.Future) -> None:
        self.threads_working -= 1


def run(coro: Coroutine[Any, Any, T], debug: bool = False) -> T:
    """``asyncio.run`` on a fresh :class:`VirtualClockLoop` (``debug``: asyncio's debug mode, in which
    a callback scheduled from a thread other than the loop's raises)."""
    with asyncio.Runner(debug=debug, loop_factory=VirtualClockLoop) as runner:
        return runner.run(coro)


class FakeTime:
    """A stand-in for a module's ``time`` whose ``perf_counter`` reads ``clock[0]`` (a test moves it by
    hand); ``time_ns`` stays real."""

    time_ns = staticmethod(time.time_ns)

    def __init__(self, clock: list[float]) -> None:
        self.perf_counter = lambda: clock[0]
