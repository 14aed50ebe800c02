"""Point 3: child death at every point. A child killed (SIGKILL) before reading, in the
middle of a 10 MiB frame (either direction) and after reading: the parent gets EOF
(``ChannelClosed``), ``ProtocolError`` or ``BrokenPipeError`` promptly, never hangs, and
no zombie is left.

The C child (``children/death.c``) writes one byte to its stdout when it reaches the
chosen point, so the parent kills it exactly there without sleeping.
"""

from __future__ import annotations

import asyncio
import os
import select
import signal
import subprocess
import threading

import pytest
from support import compile_c

from unix_socketpair import ChannelClosed, Child, ProtocolError, spawn, spawn_async

from ._helpers import CHILDREN, Stopwatch, assert_reaped, bounded, figure, zombie_children

MIB = 1 << 20
FRAME = 10 * MIB
BOUND = 20.0  # seconds any one operation may take before it counts as a hang


def _start(*args: str) -> Child:
    death = str(compile_c(CHILDREN / "death.c"))
    return spawn([death, *args], stdout=subprocess.PIPE)


def _wait_note(child: Child, expected: bytes) -> None:
    stdout = child.process.stdout
    assert stdout is not None
    ready, _, _ = select.select([stdout], [], [], BOUND)
    assert ready, f"the child did not reach its point within {BOUND} s"
    assert os.read(stdout.fileno(), 1) == expected


def _finish(child: Child, name: str, clock: Stopwatch, outcome: str) -> None:
    pid = child.pid
    status = bounded(lambda: child.wait(timeout=BOUND), BOUND + 5, "wait()")
    child.__exit__(None, None, None)
    figure(f"death.{name}", f"{outcome} after {clock.elapsed:.3f} s, child status {status}")
    assert status == -signal.SIGKILL
    assert_reaped(pid)


def test_killed_before_reading_while_parent_waits() -> None:
    child = _start("pause")
    _wait_note(child, b"P")
    # A message the child never reads: its death then resets the connection (ECONNRESET
    # on the parent's next receive), which must still read as end-of-file.
    child.channel.send(b"never read")
    clock = Stopwatch()
    child.kill()
    with pytest.raises(ChannelClosed):
        bounded(child.channel.recv, BOUND, "recv() after the child died")
    _finish(child, "before_reading", clock, "ChannelClosed")


def test_killed_before_reading_then_parent_sends() -> None:
    child = _start("pause")
    _wait_note(child, b"P")
    clock = Stopwatch()
    child.kill()
    bounded(lambda: child.wait(timeout=BOUND), BOUND + 5, "wait()")
    with pytest.raises(BrokenPipeError):
        bounded(lambda: child.channel.send(b"z" * FRAME), BOUND, "send() to a dead child")
    _finish(child, "before_reading_send", clock, "BrokenPipeError")


def test_killed_while_sending_a_frame() -> None:
    """The child declares 10 MiB, sends half of it and dies: a truncated message."""
    child = _start("sendpart", str(FRAME), str(FRAME // 2))
    clock = Stopwatch()
    with pytest.raises(ProtocolError) as caught:
        bounded(child.channel.recv, BOUND, "recv() of a frame cut by death")
    assert str(FRAME) in str(caught.value)
    # The channel stays unusable and says so: no later message can be parsed from the middle.
    with pytest.raises(ProtocolError):
        child.channel.recv()
    _finish(child, "mid_frame_from_child", clock, f"ProtocolError: {caught.value}")


def test_killed_while_receiving_a_frame() -> None:
    """The parent is blocked sending 10 MiB; the child dies after reading half of it."""
    child = _start("recvpart", str(FRAME // 2))

    def kill_at_half() -> None:
        _wait_note(child, b"R")
        child.kill()

    killer = threading.Thread(target=kill_at_half)
    killer.start()
    clock = Stopwatch()
    try:
        with pytest.raises((BrokenPipeError, ConnectionResetError)) as caught:
            bounded(lambda: child.channel.send(b"m" * FRAME), BOUND, "send() cut by death")
    finally:
        killer.join(BOUND)
    _finish(child, "mid_frame_to_child", clock, type(caught.value).__name__)


def test_killed_after_reading_a_whole_frame() -> None:
    child = _start("recvframe")
    child.channel.send(b"f" * FRAME)
    _wait_note(child, b"R")
    clock = Stopwatch()
    child.kill()
    with pytest.raises(ChannelClosed):
        bounded(child.channel.recv, BOUND, "recv() after the child died")
    _finish(child, "after_reading", clock, "ChannelClosed")


def test_context_exit_reaps_a_killed_child() -> None:
    """Leaving the block without wait(): the Child still reaps, no zombie."""
    with _start("pause") as child:
        _wait_note(child, b"P")
        pid = child.pid
        child.kill()
    assert_reaped(pid)


@pytest.mark.parametrize("how", ["recv", "iterate", "recv_into"])
def test_killed_mid_frame_with_our_message_unread(how: str) -> None:
    """The child dies holding a message of ours it never read: the kernel then reports
    ECONNRESET instead of a plain end of file. Still a truncated frame: ProtocolError."""
    child = _start("sendpart", str(FRAME), str(FRAME // 2))
    child.channel.send(b"never read")  # the child is blocked writing: it cannot be dead yet
    clock = Stopwatch()
    channel = child.channel
    buffer = bytearray(FRAME)
    read = {
        "recv": channel.recv,
        "recv_into": lambda: channel.recv_into(buffer),
        "iterate": lambda: list(channel),
    }[how]
    try:
        bounded(read, BOUND, f"{how}() of a frame cut by death")
        outcome = "returned"
    except Exception as exc:
        outcome = f"{type(exc).__name__}: {exc}"
    _finish(child, f"mid_frame_reset[{how}]", clock, outcome)
    assert outcome.startswith("ProtocolError:"), outcome


@pytest.mark.parametrize("how", ["recv", "iterate", "recv_into"])
def test_async_killed_mid_frame_with_our_message_unread(how: str) -> None:
    death = str(compile_c(CHILDREN / "death.c"))

    async def scenario() -> tuple[int, BaseException | None]:
        child = await spawn_async([death, "sendpart", str(FRAME), str(FRAME // 2)])
        async with child:
            channel = child.channel
            await channel.send(b"never read")
            buffer = bytearray(FRAME)
            error: BaseException | None = None
            try:
                if how == "recv":
                    await asyncio.wait_for(channel.recv(), BOUND)
                elif how == "recv_into":
                    await asyncio.wait_for(channel.recv_into(buffer), BOUND)
                else:

                    async def drain() -> None:
                        async for _ in channel:
                            pass

                    await asyncio.wait_for(drain(), BOUND)
            except (ProtocolError, OSError) as exc:
                error = exc
            status = await asyncio.wait_for(child.wait(), BOUND)
        return status, error

    clock = Stopwatch()
    status, error = asyncio.run(scenario())
    figure(f"death.async_mid_frame_reset[{how}]", f"{error!r} after {clock.elapsed:.3f} s")
    assert status == -signal.SIGKILL
    assert isinstance(error, ProtocolError), repr(error)
    assert zombie_children() == []


def test_a_child_that_ignores_eof_is_killed_and_reaped_on_exit() -> None:
    """Leaving the block: the child sees EOF, ignores it, and is killed after
    ``exit_timeout``; it is reaped either way and the exit is bounded."""
    child = _start("pause")
    child.exit_timeout = 0.2
    _wait_note(child, b"P")
    pid = child.pid
    clock = Stopwatch()
    bounded(lambda: child.__exit__(None, None, None), BOUND, "leaving the with block")
    figure("death.ignores_eof", f"killed and reaped {clock.elapsed:.2f} s after the block")
    assert child.returncode == -signal.SIGKILL
    assert_reaped(pid)


def test_an_async_child_that_ignores_eof_is_killed_and_reaped_on_exit() -> None:
    death = str(compile_c(CHILDREN / "death.c"))

    async def scenario() -> tuple[int, int | None]:
        child = await spawn_async([death, "pause"], stdout=subprocess.PIPE)
        child.exit_timeout = 0.2
        stdout = child.process.stdout
        assert stdout is not None
        assert await asyncio.wait_for(stdout.read(1), BOUND) == b"P"
        async with child:
            pass
        return child.pid, child.returncode

    pid, status = asyncio.run(asyncio.wait_for(scenario(), BOUND))
    assert status == -signal.SIGKILL
    assert_reaped(pid)
    assert zombie_children() == []
