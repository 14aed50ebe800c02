"""What an idle AsyncChannel costs in Python memory (tracemalloc, no timing):
10,000 of them, each with a task waiting to receive, fit in 40 MiB."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from collections.abc import Iterator

import pytest

from unix_socketpair import AsyncChannel, ChannelClosed

PAIRS = 100
# 40 MiB for 10,000 channels is 4 KiB each, for everything: the Python objects
# measured here and the process's own overhead around them (allocator slack,
# the event loop's tables). The Python part must leave room for the rest.
IDLE_LIMIT = 2560  # bytes per channel, no receiver
WAITING_LIMIT = 3840  # bytes per channel with a task waiting in recv()


@pytest.fixture
def traced() -> Iterator[None]:
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()


def _allocated() -> int:
    gc.collect()
    return sum(stat.size for stat in tracemalloc.take_snapshot().statistics("filename"))


def test_an_idle_channel_is_small(traced: None, no_fd_leak: None) -> None:
    before = _allocated()
    channels = [channel for _ in range(PAIRS) for channel in AsyncChannel.pair()]
    per_channel = (_allocated() - before) / len(channels)
    for channel in channels:
        channel.close()
    assert per_channel <= IDLE_LIMIT, f"{per_channel:.0f} bytes per idle channel"


def test_a_channel_waiting_for_its_first_message_holds_no_receive_buffer(
    traced: None, no_fd_leak: None
) -> None:
    """A receive that finds nothing registers and waits: no receive buffer is
    allocated before data comes (16 KiB each used to be)."""

    async def main() -> tuple[float, float]:
        start = _allocated()
        channels = [channel for _ in range(PAIRS) for channel in AsyncChannel.pair()]
        before = _allocated()
        idle = (before - start) / len(channels)
        waiters = [asyncio.ensure_future(channel.recv()) for channel in channels]
        await asyncio.sleep(0)  # every waiter runs up to its wait
        assert not any(waiter.done() for waiter in waiters)
        added = (_allocated() - before) / len(channels)
        for channel in channels:
            channel.close()
        results = await asyncio.gather(*waiters, return_exceptions=True)
        assert all(isinstance(result, ChannelClosed) for result in results), results
        return idle, added

    before = _allocated()
    idle, added = asyncio.run(main())
    assert _allocated() - before < 64 * 1024  # all of it given back
    assert idle + added <= WAITING_LIMIT, f"{idle:.0f} + {added:.0f} bytes per waiting channel"


def test_a_small_message_does_not_cost_a_large_receive_buffer(traced: None) -> None:
    """The receive buffer starts small and grows only when reads fill it: a
    channel that got one short message keeps about a kilobyte, not 16 KiB."""

    async def main() -> float:
        pairs = [AsyncChannel.pair() for _ in range(PAIRS)]
        try:
            before = _allocated()
            for a, _ in pairs:
                await a.send(b"ping")
            for _, b in pairs:
                assert await b.recv() == b"ping"
            return (_allocated() - before) / PAIRS
        finally:
            for a, b in pairs:
                a.close()
                b.close()

    added = asyncio.run(main())
    assert added <= 2048, f"{added:.0f} bytes per channel after one short message"
