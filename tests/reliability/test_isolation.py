"""Point 2: no descriptor reaches the wrong process. Threads spawn children concurrently
while other threads create pairs, channels, pipes and files (some of them inheritable);
every child reports its descriptor table, and none holds anything it was not given.

Two of the 8 spawning threads use ``spawn_async`` from their own event loop; every other
child has a second socket at the next number (``fd_map``). Size: ``USP_ISOLATION_CHILDREN``
per spawning thread (default 25, 125 under ``USP_FULL=1``).
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import tempfile
import threading
from collections.abc import Callable

import pytest
from support import compile_c, open_fds

from unix_socketpair import SOCK_DGRAM, Channel, socketpair, spawn, spawn_async

from ._helpers import CHILDREN, Stopwatch, figure, knob, zombie_children

THREADS = 8
PER_THREAD = knob("USP_ISOLATION_CHILDREN", 25, 125)


def _read_report(sock: socket.socket) -> dict[int, str]:
    """Read the child's one framed report to EOF, with a bound on the wait."""
    sock.settimeout(30)
    data = bytearray()
    while chunk := sock.recv(65536):
        data += chunk
    return _parse_report(bytes(data))


def _parse_report(data: bytes) -> dict[int, str]:
    length = int.from_bytes(data[:4], "big")
    assert len(data) == 4 + length, f"report of {len(data)} bytes, header says {length}"
    table = {}
    for line in data[4:].decode().splitlines():
        fd, _, target = line.partition(" ")
        table[int(fd)] = target
    return table


def _spawn_report(program: str, fd: int, fd_map: dict[int, int] | None) -> dict[int, str]:
    with spawn([program], fd=fd, fd_map=fd_map, stdin=subprocess.DEVNULL) as child:
        table = _read_report(child.socket)
        assert child.wait(timeout=30) == 0
    return table


async def _spawn_async_report(
    program: str, fd: int, fd_map: dict[int, int] | None
) -> dict[int, str]:
    child = await spawn_async([program], fd=fd, fd_map=fd_map, stdin=subprocess.DEVNULL)
    async with child:
        loop = asyncio.get_running_loop()
        data = bytearray()
        while chunk := await asyncio.wait_for(loop.sock_recv(child.socket, 65536), 30):
            data += chunk
        assert await asyncio.wait_for(child.wait(), 30) == 0
    return _parse_report(bytes(data))


def _churn(stop: threading.Event, counts: list[int], directory: str) -> None:
    """Create and close descriptors of every kind, as fast as possible, until *stop*."""
    path = os.path.join(directory, f"churn-{threading.get_ident()}")
    makers: list[Callable[[], list[int]]] = [
        lambda: list(socketpair()),
        lambda: list(socketpair(SOCK_DGRAM, inheritable=True)),
        lambda: list(os.pipe()),
        lambda: [os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)],
        lambda: [os.open(path, os.O_RDONLY | os.O_CLOEXEC)],
    ]
    while not stop.is_set():
        for make in makers:
            fds = make()
            for fd in fds:
                os.close(fd)
            counts[0] += len(fds)
        a, b = Channel.pair()
        a.send(b"x", fds=[a.fileno()])  # an fd in flight, received and closed by recv()
        assert b.recv() == b"x"
        a.close()
        b.close()
        counts[0] += 3


@pytest.mark.parametrize("fd", [3, 64], ids=["fd3", "fd64"])
def test_concurrent_spawns_give_each_child_only_its_own(no_fd_leak: None, fd: int) -> None:
    """fd 3 is taken under pytest (spawn relocates through its trampoline); 64 is free."""
    fdlist = str(compile_c(CHILDREN / "fdlist.c"))
    before = open_fds()
    stop = threading.Event()
    churned = [0]
    failures: list[str] = []
    reports: list[int] = []
    clock = Stopwatch()

    def spawner(index: int) -> None:
        try:
            for i in range(PER_THREAD):
                extra_ours, extra_theirs = socketpair(SOCK_DGRAM)
                fd_map = {fd + 1: extra_theirs} if i % 2 else None
                try:
                    if index % 4 == 3:  # a quarter of the threads spawn from an event loop
                        table = asyncio.run(_spawn_async_report(fdlist, fd, fd_map))
                    else:
                        table = _spawn_report(fdlist, fd, fd_map)
                finally:
                    os.close(extra_theirs)
                    os.close(extra_ours)
                expected = {0, 1, 2, fd} | ({fd + 1} if fd_map else set())
                if set(table) != expected:
                    extra = {n: table[n] for n in set(table) - expected}
                    failures.append(f"thread {index} child {i}: unexpected {extra}")
                elif not all(table[n].startswith("socket:") for n in expected - {0, 1, 2}):
                    failures.append(f"thread {index} child {i}: not a socket: {table}")
                reports.append(len(table))
        except BaseException as exc:
            failures.append(f"thread {index}: {exc!r}")

    with tempfile.TemporaryDirectory() as directory:
        churners = [
            threading.Thread(target=_churn, args=(stop, churned, directory)) for _ in range(3)
        ]
        spawners = [threading.Thread(target=spawner, args=(n,)) for n in range(THREADS)]
        for thread in churners + spawners:
            thread.start()
        for thread in spawners:
            thread.join(100)
        stop.set()
        for thread in churners:
            thread.join(30)
    assert not any(t.is_alive() for t in spawners + churners), "a thread hung"
    figure(
        f"isolation[fd={fd}]",
        f"{len(reports)} children from {THREADS} threads, {churned[0]} descriptors churned "
        f"meanwhile, {len(failures)} unexpected fds, {clock.elapsed:.1f} s",
    )
    assert not failures, "\n".join(failures[:20])
    assert len(reports) == THREADS * PER_THREAD
    assert open_fds() == before
    assert zombie_children() == []
