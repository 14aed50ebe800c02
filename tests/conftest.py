"""Fixtures shared by every test module."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest
from support import open_fds


@pytest.fixture
def no_fd_leak() -> Iterator[None]:
    """Fail the test if it leaves more descriptors open than it found."""
    before = open_fds()
    yield
    leaked = open_fds() - before
    assert not leaked, f"descriptors leaked: {sorted(leaked)}"


try:
    import uvloop
except ImportError:  # not a dependency: the default loop is always tested
    LOOPS = ["asyncio"]
else:
    LOOPS = ["asyncio", "uvloop"]
    # libuv opens a process-wide pipe with its first loop and keeps it: open
    # it now, so the fd-leak checks below see only what a test leaves behind.
    uvloop.new_event_loop().close()


@pytest.fixture(params=LOOPS)
def run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, None]], None]:
    """Run a coroutine to completion on the loop under test (bounded)."""

    def runner(coro: Coroutine[Any, Any, None]) -> None:
        async def bounded() -> None:
            await asyncio.wait_for(coro, timeout=60)

        if request.param == "uvloop":
            loop = uvloop.new_event_loop()
            try:
                loop.run_until_complete(bounded())
            finally:
                loop.close()
        else:
            asyncio.run(bounded())

    return runner
