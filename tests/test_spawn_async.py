"""spawn_async(): the asyncio twin of spawn(), with the same placement and the same errors."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import tracemalloc
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from support import ROOT, compile_c, open_fds, require, require_exec_helper

from unix_socketpair import AsyncChannel, AsyncChild, ChannelClosed, _spawn, spawn_async

CHILDREN = ROOT / "tests" / "children"
EXAMPLES = ROOT / "examples"
TIMEOUT = 20.0
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT * 2))


def fdlist() -> str:
    return str(compile_c(CHILDREN / "fdlist.c"))


async def recv_until(sock: socket.socket, end: bytes) -> bytes:
    loop = asyncio.get_running_loop()
    data = b""
    while not data.endswith(end):
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), TIMEOUT)
        assert chunk, f"end-of-file before {end!r}; got {data!r}"
        data += chunk
    return data


async def recv_all(sock: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    data = b""
    while chunk := await asyncio.wait_for(loop.sock_recv(sock, 65536), TIMEOUT):
        data += chunk
    return data


async def report(sock: socket.socket) -> dict[int, tuple[int, int, int, int]]:
    """The C child's report: fd -> (inode, so_type, nonblocking, cloexec)."""
    lines = (await recv_until(sock, b"end\n")).decode().splitlines()[:-1]
    result = {}
    for line in lines:
        fd, *rest = map(int, line.split())
        result[fd] = (rest[0], rest[1], rest[2], rest[3])
    return result


@pytest.fixture(params=["helper", "python"])
def foreign_fd(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """A descriptor of the parent that is *not* ours to move (here /dev/null).

    Each test that takes one runs twice: with the C exec helper that places descriptors
    on taken numbers, and with its Python fallback (used where the helper was not built).
    """
    if request.param == "helper":
        require_exec_helper()
    monkeypatch.setattr(_spawn, "_helper_ok", request.param == "helper")
    fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    yield fd
    os.close(fd)


@pytest.fixture(params=["free", "taken"])
def target(request: pytest.FixtureRequest, foreign_fd: int) -> int:
    """A free number (placed without a helper) or a taken one (placed by the trampoline)."""
    return 64 if request.param == "free" else foreign_fd


def test_c_child_sees_only_its_socket(no_fd_leak: None, target: int) -> None:
    async def main() -> None:
        async with await spawn_async([fdlist()], fd=target) as child:
            assert isinstance(child.process, asyncio.subprocess.Process)
            assert child.pid == child.process.pid
            assert not child.socket.getblocking(), "the parent's end is for the event loop"
            fds = await report(child.socket)
            assert set(fds) == {0, 1, 2, target}, fds
            _, so_type, nonblocking, cloexec = fds[target]
            assert (so_type, nonblocking, cloexec) == (socket.SOCK_STREAM, 0, 0)
            await asyncio.get_running_loop().sock_sendall(child.socket, b"ping\n")
            assert await recv_until(child.socket, b"\n") == b"ping\n"
        assert child.returncode == 0

    run(main())


def test_node_child(no_fd_leak: None) -> None:
    node = require("node")

    async def main() -> None:
        async with await spawn_async([node, str(CHILDREN / "echo.js")], fd=3) as child:
            await asyncio.get_running_loop().sock_sendall(child.socket, b"hi node\n")
            assert await recv_until(child.socket, b"\n") == b"hi node\n"
        assert child.returncode == 0

    run(main())


def test_stdio_mode_with_tr(no_fd_leak: None) -> None:
    async def main() -> None:
        async with await spawn_async(["tr", "a-z", "A-Z"], fd="stdio") as child:
            await asyncio.get_running_loop().sock_sendall(child.socket, b"quiet\n")
            child.socket.shutdown(socket.SHUT_WR)
            assert await recv_all(child.socket) == b"QUIET\n"
        assert child.returncode == 0

    run(main())


def test_stdout_pipe_is_a_stream_reader(no_fd_leak: None, target: int) -> None:
    async def main() -> None:
        args = ["sh", "-c", 'printf "%s" "$SOCKETPAIR_FD"']
        async with await spawn_async(args, fd=target, stdout=subprocess.PIPE) as child:
            assert child.process.stdout is not None
            assert await child.process.stdout.read() == str(target).encode()
            assert await child.wait() == 0

    run(main())


@pytest.mark.parametrize("program", ["/nonexistent/program", "no-such-program-on-path"])
def test_missing_program_raises_like_subprocess(target: int, program: str) -> None:
    async def main() -> None:
        before = open_fds()
        with pytest.raises(FileNotFoundError) as info:
            await spawn_async([program], fd=target)
        assert open_fds() == before
        assert info.value.filename == program

    run(main())


def test_non_executable_program_raises_permission_error(target: int, tmp_path: Path) -> None:
    program = tmp_path / "not-executable"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o644)

    async def main() -> None:
        before = open_fds()
        with pytest.raises(PermissionError):
            await spawn_async([str(program)], fd=target)
        assert open_fds() == before

    run(main())


def test_bad_arguments(no_fd_leak: None) -> None:
    async def main() -> None:
        with pytest.raises(ValueError):
            await spawn_async(["true"], fd=-3)
        with pytest.raises(ValueError):
            await spawn_async(["true"], fd="stdio", stdout=subprocess.PIPE)

    run(main())


def test_eof_after_the_child_exits(no_fd_leak: None) -> None:
    async def main() -> None:
        child = await spawn_async(["sh", "-c", "echo last >&3; exit 4"], fd=3)
        try:
            assert await recv_all(child.socket) == b"last\n"
            assert await child.wait() == 4
            assert child.returncode == 4
        finally:
            await child.aclose()
        assert child.socket.fileno() == -1

    run(main())


def test_context_exit_kills_a_child_that_ignores_eof_and_reaps_it(no_fd_leak: None) -> None:
    async def main() -> AsyncChild:
        async with await spawn_async(["sleep", "30"], fd=3) as child:
            child.exit_timeout = 0.2
        return child

    child = run(main())
    assert child.returncode == -signal.SIGKILL
    with pytest.raises(ChildProcessError):
        os.waitpid(child.pid, os.WNOHANG)


def test_context_exit_is_bounded_when_a_live_child_never_reads(no_fd_leak: None) -> None:
    async def main() -> AsyncChild:
        async with await spawn_async(["sleep", "60"], fd=3) as child:
            child.exit_timeout = 0.5
            # Fill the kernel's buffer: the child never takes any of it. (Zero bytes
            # frame as empty messages; the child reads nothing anyway.)
            filled = 0
            with pytest.raises(BlockingIOError):
                while True:
                    filled += child.socket.send(bytes(65536))
            assert filled > 0
            # The kernel takes no more, so these stay in the write-behind buffer
            # (under its high-water mark: send() returns at once).
            for _ in range(100):
                await child.channel.send(bytes(1000))
        return child

    # Unbounded, the flush on exit would wait for the child forever.
    child = asyncio.run(asyncio.wait_for(main(), 10))
    assert child.returncode == -signal.SIGKILL
    assert child.channel.closed
    with pytest.raises(ChildProcessError):
        os.waitpid(child.pid, os.WNOHANG)


def test_terminate(no_fd_leak: None) -> None:
    async def main() -> None:
        async with await spawn_async(["sleep", "30"], fd=3) as child:
            child.terminate()
            assert await child.wait() == -signal.SIGTERM
            child.kill()  # already exited: no error
            assert str(child.pid) in repr(child)

    run(main())


def test_concurrent_children_each_see_only_their_own_socket(no_fd_leak: None) -> None:
    program = fdlist()

    async def one(index: int) -> None:
        async with await spawn_async([program], fd=3) as child:
            fds = await report(child.socket)
            assert set(fds) == {0, 1, 2, 3}, (index, fds)
            token = f"token-{index}\n".encode()
            await asyncio.get_running_loop().sock_sendall(child.socket, token)
            assert await recv_until(child.socket, b"\n") == token
        assert child.returncode == 0

    async def main() -> None:
        await asyncio.gather(*(one(i) for i in range(24)))

    run(main())


@pytest.mark.parametrize("language", ["c", "node", "python"])
def test_async_channel_talks_to_a_child_in_any_language(
    no_fd_leak: None, language: str, target: int
) -> None:
    args = {
        "c": [str(compile_c(EXAMPLES / "child_upper.c"))],
        "node": [require("node"), str(EXAMPLES / "child_upper.js")],
        "python": [sys.executable, str(EXAMPLES / "child_upper.py")],
    }[language]

    async def main() -> None:
        async with await spawn_async(args, fd=target) as child:
            assert isinstance(child.channel, AsyncChannel)
            assert child.channel is child.channel
            await child.channel.send(b"ping")
            assert await child.channel.recv() == b"PING"
        assert child.returncode == 0

    run(main())


def test_async_channel_closed_when_the_child_exits(no_fd_leak: None) -> None:
    async def main() -> None:
        async with await spawn_async(["true"], fd=3) as child:
            with pytest.raises(ChannelClosed):
                await child.channel.recv()

    run(main())


def test_each_child_sees_the_environment_as_it_was_when_it_was_spawned(
    no_fd_leak: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without env=, the child environment is made once and reused while os.environ is
    # unchanged: a change in between must reach the next child, and no other.
    script = 'printf "%s|%s|%s" "$SOCKETPAIR_FD" "${USP_TEST_VAR-unset}" "${LISTEN_FDS-unset}" >&3'

    async def seen(fd: int) -> bytes:
        async with await spawn_async(["sh", "-c", script], fd=fd) as child:
            return await recv_all(child.socket)

    async def main() -> None:
        monkeypatch.delenv("USP_TEST_VAR", raising=False)
        assert await seen(3) == b"3|unset|unset"
        monkeypatch.setenv("USP_TEST_VAR", "one")
        assert await seen(3) == b"3|one|unset"
        assert await seen(3) == b"3|one|unset"
        monkeypatch.setenv("USP_TEST_VAR", "two")
        assert await seen(3) == b"3|two|unset"
        # listen_fds adds variables to its own child's environment, not to the next one's.
        async with await spawn_async(["sh", "-c", script], fd=3, listen_fds=True) as child:
            assert await recv_all(child.socket) == b"3|two|1"
        assert await seen(3) == b"3|two|unset"
        monkeypatch.delenv("USP_TEST_VAR")
        assert await seen(3) == b"3|unset|unset"

    run(main())


def test_starting_children_holds_little_memory_in_spawn_async(no_fd_leak: None) -> None:
    """What spawn_async itself allocates and keeps only until its child is up.

    With many children starting at once, all of it is held at the same time, and once
    freed it stays in the parent's RSS as holes among the children's long-lived objects:
    1,000 children cost 30.5 KiB each of RSS when this measured 6.0 KiB, 26 KiB at 1.4 KiB.
    (tracemalloc, counting allocations made by spawn_async's own code, not asyncio's.)
    """
    count = 50
    skip = [
        os.path.dirname(asyncio.__file__) + os.sep + "*",
        subprocess.__file__,
        threading.__file__,
        tracemalloc.__file__,
        "*weakref*",
        __file__,
    ]

    def ours() -> tracemalloc.Snapshot:
        snapshot = tracemalloc.take_snapshot()
        return snapshot.filter_traces([tracemalloc.Filter(False, name) for name in skip])

    async def main() -> float:
        children: list[AsyncChild[AsyncChannel]] = []
        all_up = asyncio.Event()

        async def one() -> None:
            children.append(await spawn_async(["cat"], fd="stdio"))
            if len(children) == count:
                all_up.set()

        tracemalloc.start()
        try:
            tasks = [asyncio.ensure_future(one()) for _ in range(count)]
            await asyncio.sleep(0)  # each task ran to its first wait: every child started
            starting = ours()
            await asyncio.wait_for(all_up.wait(), TIMEOUT)
            await asyncio.gather(*tasks)
            up = ours()
        finally:
            tracemalloc.stop()
            for child in children:
                await child.aclose()
        assert len(children) == count and all(c.returncode == 0 for c in children)
        return sum(stat.size_diff for stat in starting.compare_to(up, "filename")) / count

    held = run(main())
    assert held <= 3072, f"{held:.0f} bytes per child held only while it started"
