"""Point 1: descriptor leaks. Thousands of create/close cycles leave ``/proc/self/fd`` as found.

Sizes: ``USP_LEAK_CYCLES`` (default 10,000, the issue's figure) for pairs and stream
channels, ``USP_PACKET_CHANNEL_CYCLES`` (default 2,000, 10,000 under ``USP_FULL=1``) for
datagram and seqpacket channels, ``USP_SPAWN_CYCLES`` (default 500) for spawn/wait on the
direct path, and ``USP_SLOW_SPAWN_CYCLES`` (default 100, 500 under ``USP_FULL=1``) where
spawn must start an interpreter to relocate the descriptor (about 20 ms each).
"""

from __future__ import annotations

import asyncio
import os
import socket
import textwrap

import pytest
from support import compile_c, open_fds, run_python

from unix_socketpair import (
    SOCK_DGRAM,
    SOCK_SEQPACKET,
    SOCK_STREAM,
    AsyncChannel,
    Channel,
    socketpair,
    spawn,
    spawn_async,
)

from ._helpers import CHILDREN, Stopwatch, figure, knob, zombie_children

CYCLES = knob("USP_LEAK_CYCLES", 10_000, 10_000)
PACKET_CHANNEL_CYCLES = knob("USP_PACKET_CHANNEL_CYCLES", 2_000, 10_000)
SPAWN_CYCLES = knob("USP_SPAWN_CYCLES", 500, 500)
# Spawns that go through spawn's relocating trampoline cost an interpreter start-up each.
SLOW_SPAWN_CYCLES = knob("USP_SLOW_SPAWN_CYCLES", 100, 500)
TYPES = [SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET]
TYPE_IDS = ["stream", "dgram", "seqpacket"]


@pytest.mark.parametrize("sock_type", TYPES, ids=TYPE_IDS)
def test_socketpair_create_close_cycles(sock_type: int) -> None:
    before = open_fds()
    clock = Stopwatch()
    for _ in range(CYCLES):
        a, b = socketpair(sock_type)
        os.close(a)
        os.close(b)
    after = open_fds()
    figure(
        f"leaks.socketpair[{TYPE_IDS[TYPES.index(sock_type)]}]",
        f"{CYCLES} cycles, fds {len(before)} -> {len(after)}, {clock.elapsed:.2f} s",
    )
    assert after == before


def test_socketpair_wrapped_in_sockets_cycles() -> None:
    """The path users take: wrap both ends, use them, close the wrappers."""
    before = open_fds()
    for _ in range(CYCLES // 10):
        a, b = socketpair(blocking=True)
        with socket.socket(fileno=a) as sa, socket.socket(fileno=b) as sb:
            sa.sendall(b"x")
            assert sb.recv(1) == b"x"
    after = open_fds()
    figure("leaks.socketpair[wrapped]", f"{CYCLES // 10} cycles, fds {len(before)} -> {len(after)}")
    assert after == before


def test_socketpair_failure_leaves_nothing_open() -> None:
    """When ``socketpair(2)`` fails with EMFILE, nothing is left open (run in a child)."""
    code = textwrap.dedent(
        """
        import os, resource
        from unix_socketpair import socketpair
        def count():
            return len(os.listdir("/proc/self/fd"))
        held = []
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
        # Fill the table up to one free slot: socketpair needs two, so it must fail.
        while True:
            try:
                held.append(os.open("/dev/null", os.O_RDONLY))
            except OSError:
                break
        os.close(held.pop())
        before = count()
        failures = 0
        for _ in range(1000):
            try:
                socketpair()
            except OSError as exc:
                assert exc.errno == 24, exc
                failures += 1
        print(failures, before, count())
        """
    )
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    failures, before, after = map(int, done.stdout.split())
    figure("leaks.socketpair[EMFILE]", f"{failures} failed calls, fds {before} -> {after}")
    assert failures == 1000
    assert after == before


@pytest.mark.parametrize("fd", [3, 64], ids=["fd3", "fd64"])
def test_spawn_wait_cycles(fd: int) -> None:
    """Spawn and reap a C child again and again: fd table and process table as found.

    Under pytest fd 3 is taken (pytest's own /dev/null), so ``fd=3`` exercises spawn's
    relocating path and ``fd=64`` (free) its direct path.
    """
    echo = str(compile_c(CHILDREN / "echo.c"))
    cycles = SLOW_SPAWN_CYCLES if fd == 3 else SPAWN_CYCLES
    before = open_fds()
    clock = Stopwatch()
    for _ in range(cycles):
        with spawn([echo], fd=fd) as child:
            child.socket.shutdown(socket.SHUT_WR)
            assert child.wait(timeout=30) == 0
    after = open_fds()
    figure(
        f"leaks.spawn[fd={fd}]",
        f"{cycles} spawn/wait cycles, fds {len(before)} -> {len(after)}, {clock.elapsed:.2f} s",
    )
    assert after == before
    assert zombie_children() == []


def test_spawn_failure_cycles() -> None:
    """A program that does not exist: FileNotFoundError, and nothing left open."""
    before = open_fds()
    for i in range(SLOW_SPAWN_CYCLES):
        with pytest.raises(FileNotFoundError):
            spawn(["/nonexistent/program"], fd=3 if i % 2 else 64)
    after = open_fds()
    figure(
        "leaks.spawn[missing]",
        f"{SLOW_SPAWN_CYCLES} failed spawns, fds {len(before)} -> {len(after)}",
    )
    assert after == before
    assert zombie_children() == []


def test_spawn_async_wait_cycles() -> None:
    echo = str(compile_c(CHILDREN / "echo.c"))

    async def cycles() -> None:
        for _ in range(SLOW_SPAWN_CYCLES):
            async with await spawn_async([echo], fd=64) as child:
                child.socket.shutdown(socket.SHUT_WR)
                assert await asyncio.wait_for(child.wait(), 30) == 0

    before = open_fds()
    clock = Stopwatch()
    asyncio.run(cycles())
    after = open_fds()
    figure(
        "leaks.spawn_async",
        f"{SLOW_SPAWN_CYCLES} spawn_async/wait cycles, fds {len(before)} -> {len(after)}, "
        f"{clock.elapsed:.2f} s",
    )
    assert after == before
    assert zombie_children() == []


@pytest.mark.parametrize("sock_type", TYPES, ids=TYPE_IDS)
@pytest.mark.parametrize("kind", [Channel, AsyncChannel], ids=["Channel", "AsyncChannel"])
def test_channel_pair_open_close_cycles(
    kind: type[Channel] | type[AsyncChannel], sock_type: int
) -> None:
    # A packet channel maps a receive buffer when it is created (about 0.2 ms each, and
    # once 5 ms when it was zero-filled; see test_memory.py): fewer cycles by default.
    cycles = CYCLES if sock_type == SOCK_STREAM else PACKET_CHANNEL_CYCLES
    before = open_fds()
    clock = Stopwatch()
    for _ in range(cycles):
        a, b = kind.pair(sock_type)
        a.close()
        b.close()
    after = open_fds()
    figure(
        f"leaks.{kind.__name__}.pair[{TYPE_IDS[TYPES.index(sock_type)]}]",
        f"{cycles} open/close cycles, fds {len(before)} -> {len(after)}, {clock.elapsed:.2f} s",
    )
    assert after == before


def test_channel_used_then_closed_cycles() -> None:
    """Channels that carried a message with an fd, some left unread at close()."""
    before = open_fds()
    for i in range(CYCLES // 10):
        a, b = Channel.pair()
        with a, b:
            a.send(b"fd", fds=[a.fileno()])
            if i % 2:
                data, fds = b.recv_with_fds()
                assert data == b"fd"
                for fd in fds:
                    os.close(fd)
    after = open_fds()
    figure("leaks.Channel.used", f"{CYCLES // 10} cycles, fds {len(before)} -> {len(after)}")
    assert after == before


def test_channel_refusing_what_it_was_given_closes_nothing() -> None:
    """Constructor errors: the caller still owns (and here closes) what it passed."""
    before = open_fds()
    for _ in range(CYCLES // 10):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as inet:
            with pytest.raises(ValueError):
                Channel(inet)
            assert inet.fileno() >= 0
        r, w = os.pipe()
        with pytest.raises(OSError):
            Channel(r)
        os.close(r)  # still ours: closing it must succeed
        os.close(w)
    assert open_fds() == before
