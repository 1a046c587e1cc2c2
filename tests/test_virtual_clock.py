"""tests/virtual_clock.py: timers end at exact virtual times, a loop nothing can wake fails fast."""

from __future__ import annotations

import asyncio
import threading

import pytest
from virtual_clock import Hang, run


def test_timers_end_at_their_virtual_time_in_order():
    async def main():
        loop = asyncio.get_running_loop()
        order = []

        async def sleeper(seconds: float) -> None:
            await asyncio.sleep(seconds)
            order.append((seconds, loop.time()))

        await asyncio.gather(sleeper(3600.0), sleeper(0.05), sleeper(1.0))
        return order

    assert run(main()) == [(0.05, 0.05), (1.0, 1.0), (3600.0, 3600.0)]


def test_a_hang_guard_fires_at_once():
    async def main():
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.Event().wait(), 120)
        return asyncio.get_running_loop().time()

    assert run(main()) == 120.0


def test_an_awaited_future_nobody_sets_raises_hang():
    async def main():
        await asyncio.get_running_loop().create_future()

    with pytest.raises(Hang, match="nothing can wake it"):
        run(main())


def test_a_working_thread_is_waited_for():
    release = threading.Event()

    async def main():
        loop = asyncio.get_running_loop()
        worker = loop.run_in_executor(None, release.wait, 5)
        assert loop.threads_working == 1
        loop.call_soon_threadsafe(release.set)
        assert await worker is True
        return loop.threads_working

    assert run(main()) == 0
