"""Closing a Child / AsyncChild: reaping, end-of-file despite copies, channel options."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from unix_socketpair import spawn, spawn_async

T = TypeVar("T")
TIMEOUT = 20.0
# Reads its socket (fd 3) to end-of-file, then exits 0: only EOF ends it.
UNTIL_EOF = [sys.executable, "-c", "import os\nwhile os.read(3, 65536): pass"]


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT * 2))


def my_children() -> set[int]:
    """Live or unreaped children of this process (Linux /proc)."""
    pids: set[int] = set()
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as f:
                pids.update(int(p) for p in f.read().split())
        except FileNotFoundError:  # that thread has just ended
            continue
    return pids


# ---------------------------------------------------------------------- AsyncChild.aclose


def test_aclose_reaps_the_child() -> None:
    async def main() -> int | None:
        child = await spawn_async(UNTIL_EOF)
        await child.aclose()
        return child.returncode

    assert run(main()) == 0


def test_aclose_reaps_fifty_workers() -> None:
    async def main() -> list[int | None]:
        children = [await spawn_async(UNTIL_EOF) for _ in range(50)]
        await asyncio.gather(*(child.aclose() for child in children))
        return [child.returncode for child in children]

    before = my_children()
    assert run(main()) == [0] * 50
    assert my_children() - before == set()


def test_aclose_kills_and_reaps_a_child_that_ignores_eof() -> None:
    async def main() -> int | None:
        child = await spawn_async(["sleep", "60"])
        child.exit_timeout = 0.2
        await child.aclose()
        return child.returncode

    assert run(main()) == -9


def test_aclose_after_a_send_raised_broken_pipe_does_not_raise_it_again() -> None:
    async def main() -> int | None:
        child = await spawn_async(["sleep", "60"])  # alive, never reads
        for _ in range(300):  # 300 KB: more than the kernel takes; the rest is written behind
            await child.channel.send(b"x" * 1000)
        child.kill()
        await child.wait()
        with pytest.raises(BrokenPipeError):
            for _ in range(100):  # the write-behind fails; a send reports it
                await child.channel.send(b"x")
                await asyncio.sleep(0)  # a turn of the loop for the write-behind
        await child.aclose()  # reported once is enough
        return child.returncode

    assert run(main()) == -9


# ------------------------------------------------------- end-of-file despite another copy


def _copy_holder(sock: socket.socket) -> subprocess.Popen[bytes]:
    """Another process holding a copy of our end (as a forked worker pool would)."""
    return subprocess.Popen(["sleep", "60"], pass_fds=[sock.fileno()])


def test_leaving_with_spawn_gives_eof_although_another_process_holds_our_end() -> None:
    child = spawn(UNTIL_EOF)
    child.exit_timeout = 10  # the child must exit by itself long before this
    holder = _copy_holder(child.socket)
    try:
        with child:
            pass
    finally:
        holder.kill()
        holder.wait()
    assert child.returncode == 0  # saw EOF and exited; -9 would mean it was killed


def test_aclose_gives_eof_although_another_process_holds_our_end() -> None:
    async def main() -> int | None:
        child = await spawn_async(UNTIL_EOF)
        child.exit_timeout = 10
        holder = _copy_holder(child.socket)
        try:
            await child.aclose()
        finally:
            holder.kill()
            holder.wait()
        return child.returncode

    assert run(main()) == 0


# ---------------------------------------------------------------------- channel options

# Writes every byte it receives on fd 3 to its stdout until end-of-file.
RELAY_TO_STDOUT = [
    sys.executable,
    "-c",
    "import os\nwhile d := os.read(3, 65536): os.write(1, d)",
]


def test_channel_options_reach_the_channel_and_close_flushes_what_it_holds() -> None:
    with spawn(
        RELAY_TO_STDOUT,
        stdout=subprocess.PIPE,
        channel_options={"write_buffer": 65536, "max_message_size": 1000},
    ) as child:
        assert child.channel.write_buffer == 65536
        assert child.channel.max_message_size == 1000
        child.channel.send(b"held back")  # small: held by the write buffer
        child.close()
        assert child.process.stdout is not None
        # close() flushed it before the end-of-file: the child relayed the whole frame.
        assert child.process.stdout.read() == b"\x00\x00\x00\x09held back"
    assert child.returncode == 0


def test_async_channel_options_reach_the_channel() -> None:
    async def main() -> tuple[int, bytes]:
        child = await spawn_async(
            RELAY_TO_STDOUT,
            stdout=subprocess.PIPE,
            channel_options={"max_message_size": 1000, "spin": 5},
        )
        assert child.channel.max_message_size == 1000
        assert child.channel._spin_tries == 5
        await child.channel.send(b"ping")
        assert child.process.stdout is not None
        data = await child.process.stdout.readexactly(8)
        await child.aclose()
        return child.channel.max_message_size, data

    assert run(main()) == (1000, b"\x00\x00\x00\x04ping")


@pytest.mark.parametrize(
    ("options", "error"),
    [({"bogus": 1}, TypeError), ({"max_message_size": -1}, ValueError), ([1], TypeError)],
)
def test_bad_channel_options_raise_before_any_child_starts(
    no_fd_leak: None, options: Any, error: type[Exception]
) -> None:
    before = my_children()
    with pytest.raises(error):
        spawn(["true"], channel_options=options)
    assert my_children() == before

    async def main() -> None:
        await spawn_async(["true"], channel_options=options)

    with pytest.raises(error):
        run(main())
    assert my_children() == before


def test_async_channel_refuses_blocking_only_options(no_fd_leak: None) -> None:
    async def main() -> None:
        await spawn_async(["true"], channel_options={"write_buffer": 4096})

    before = my_children()
    with pytest.raises(TypeError, match="write_buffer"):
        run(main())
    assert my_children() == before


# ------------------------------------------------------------------- Child.wait(timeout)


def test_wait_with_a_timeout_times_out_then_returns_the_status_once_the_child_exits() -> None:
    # Child.wait(timeout) waits on a pidfd on Linux (no polling): it must still give up on
    # time with TimeoutExpired, leave the child unreaped, and then see its exit.
    with spawn(UNTIL_EOF) as child:
        with pytest.raises(subprocess.TimeoutExpired):
            child.wait(0.05)
        assert child.returncode is None and child.pid in my_children()
        child.close()  # end-of-file: the child exits by itself
        assert child.wait(TIMEOUT) == 0
    assert child.returncode == 0 and child.pid not in my_children()
