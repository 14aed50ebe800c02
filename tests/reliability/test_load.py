"""Point 8: load. Many concurrent ``AsyncChannel`` s to C echo children, many messages
each, every one checksummed (SHA-256 both ways); then all closed, every child reaped,
and the parent's descriptor table back where it started.

Size: ``USP_LOAD_CHILDREN`` x ``USP_LOAD_MESSAGES`` (default 200 x 200; the issue's
1,000 x 1,000 under ``USP_FULL=1``), on the default event loop and, when it is
installed, on uvloop. ``RLIMIT_NOFILE`` is raised as needed.
"""

from __future__ import annotations

import asyncio
import hashlib
import random

import pytest
from support import compile_c, open_fds

from unix_socketpair import AsyncChild, spawn_async

from ._helpers import CHILDREN, Stopwatch, figure, knob, raise_nofile, zombie_children

try:
    import uvloop
except ImportError:  # optional: the default loop is always tested
    LOOPS = ["asyncio"]
else:
    LOOPS = ["asyncio", "uvloop"]
    # libuv opens a process-wide pipe with its first loop and keeps it: open it now,
    # so the descriptor counts below see only what the test itself leaves behind.
    uvloop.new_event_loop().close()

CHILDREN_COUNT = knob("USP_LOAD_CHILDREN", 200, 1000)
MESSAGES = knob("USP_LOAD_MESSAGES", 200, 1000)
BLOCK = random.Random(3).randbytes(8192)
SIZES = [0, 1, 8, 100, 1000, 4000]


def _message(child: int, index: int) -> bytes:
    size = SIZES[(child + index) % len(SIZES)]
    start = (child * 31 + index * 7) % (len(BLOCK) - size)
    return child.to_bytes(4, "big") + index.to_bytes(4, "big") + BLOCK[start : start + size]


async def _converse(number: int, child: AsyncChild) -> int:
    channel = child.channel
    sent = hashlib.sha256()
    got = hashlib.sha256()
    total = 0

    async def writer() -> None:
        for index in range(MESSAGES):
            message = _message(number, index)
            sent.update(message)
            await channel.send(message)

    async def reader() -> None:
        nonlocal total
        for _ in range(MESSAGES):
            reply = await channel.recv()
            got.update(reply)
            total += len(reply)

    await asyncio.gather(writer(), reader())
    assert got.digest() == sent.digest(), f"child {number}: the echo differs"
    return total


async def _run(echo: str) -> tuple[int, float, float]:
    clock = Stopwatch()
    children: list[AsyncChild] = []
    try:
        for _ in range(CHILDREN_COUNT):
            children.append(await spawn_async([echo]))
        spawned = clock.elapsed
        totals = await asyncio.wait_for(
            asyncio.gather(*(_converse(n, c) for n, c in enumerate(children))), 150
        )
        talked = clock.elapsed - spawned
    finally:
        await asyncio.wait_for(
            asyncio.gather(*(c.__aexit__(None, None, None) for c in children)), 60
        )
    statuses = [c.returncode for c in children]
    assert statuses == [0] * CHILDREN_COUNT, "an echo child did not exit cleanly at EOF"
    return sum(totals), spawned, talked


@pytest.mark.parametrize("loop", LOOPS)
def test_many_children_many_messages_all_checksummed(no_fd_leak: None, loop: str) -> None:
    echo = str(compile_c(CHILDREN / "echo.c"))
    raise_nofile(CHILDREN_COUNT * 4 + 256)
    before = open_fds()
    clock = Stopwatch()
    if loop == "uvloop":
        event_loop = uvloop.new_event_loop()
        try:
            total, spawned, talked = event_loop.run_until_complete(_run(echo))
        finally:
            event_loop.close()
    else:
        total, spawned, talked = asyncio.run(_run(echo))
    after = open_fds()
    figure(
        f"load[{loop}]",
        f"{CHILDREN_COUNT} children x {MESSAGES} messages = {CHILDREN_COUNT * MESSAGES} "
        f"echoed, {total / (1 << 20):.1f} MiB checksummed; spawn {spawned:.1f} s, talk "
        f"{talked:.1f} s, total {clock.elapsed:.1f} s; fds {len(before)} -> {len(after)}",
    )
    assert total == sum(len(_message(c, i)) for c in range(CHILDREN_COUNT) for i in range(MESSAGES))
    assert after == before
    assert zombie_children() == []
