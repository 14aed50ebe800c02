"""``credentials=False``: a channel that does not ask the kernel to stamp every
message with its sender (``SO_PASSCRED`` off), for the round trips that cannot
afford the stamp; ``peer_credentials()`` then answers the connect-time
credentials, and ``SOCK_SEQPACKET`` (which needs the stamp to tell an empty
message from end of file) refuses it."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import Callable
from typing import Any

import pytest
from support import open_fds

from unix_socketpair import (
    SOCK_DGRAM,
    SOCK_STREAM,
    AsyncChannel,
    Channel,
    Credentials,
    spawn,
    spawn_async,
)

LINUX = sys.platform.startswith("linux")
linux_only = pytest.mark.skipif(not LINUX, reason="SO_PASSCRED is Linux's")

ME = Credentials(os.getpid(), os.getuid(), os.getgid())

CHANNELS: list[Callable[..., Any]] = [Channel, AsyncChannel]

SEND_PID_AFTER_GO = """
import os
from unix_socketpair import Channel
with Channel.from_env() as channel:
    assert channel.recv() == b"go"
    channel.send(str(os.getpid()).encode())
    assert list(channel) == []  # until the parent closes
"""


def _passcred(channel: Channel | AsyncChannel) -> int:
    probe = socket.socket(fileno=os.dup(channel.fileno()))
    try:
        return probe.getsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED)
    finally:
        probe.close()


@linux_only
@pytest.mark.parametrize("cls", CHANNELS)
@pytest.mark.parametrize("sock_type", [SOCK_STREAM, SOCK_DGRAM])
def test_the_socket_stamps_nothing_when_asked(
    cls: Callable[..., Any], sock_type: int, no_fd_leak: None
) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, sock_type)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)  # switched off, not just left
    quiet, stamped = cls(a, credentials=False), cls(b)
    try:
        assert _passcred(quiet) == 0
        assert _passcred(stamped) == 1
    finally:
        quiet.close()
        stamped.close()


@pytest.mark.parametrize("cls", CHANNELS)
@pytest.mark.parametrize("bad", [1, 0, "yes", None, 1.0])
def test_credentials_must_be_a_bool(cls: Callable[..., Any], bad: object, no_fd_leak: None) -> None:
    a, b = socket.socketpair()
    with a, b:
        with pytest.raises(TypeError, match=r"credentials must be True or False, not "):
            cls(a, credentials=bad)
        # Nothing was adopted: the caller's socket still works.
        a.sendall(b"x")
        assert b.recv(1) == b"x"


@pytest.mark.parametrize("cls", CHANNELS)
@pytest.mark.parametrize("as_fd", [False, True])
def test_seqpacket_refuses_it_and_leaves_the_socket_to_the_caller(
    cls: Callable[..., Any], as_fd: bool, no_fd_leak: None
) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b:
        with pytest.raises(ValueError, match=r"credentials=False.*SOCK_SEQPACKET.*end of file"):
            cls(a.fileno() if as_fd else a, credentials=False)
        a.send(b"still mine")
        assert b.recv(100) == b"still mine"


def test_pair_passes_it_on(no_fd_leak: None) -> None:
    a, b = Channel.pair(credentials=False)
    with a, b:
        a.send(b"")
        b.send(b"ping")
        assert b.recv() == b""
        assert a.recv() == b"ping"
        assert a.peer_credentials() == ME
        if LINUX:
            assert _passcred(a) == _passcred(b) == 0


@linux_only
def test_an_empty_datagram_is_a_message_without_the_stamp(no_fd_leak: None) -> None:
    a, b = Channel.pair(SOCK_DGRAM, credentials=False)
    with a, b:
        a.send(b"")
        a.send(b"after")
        assert b.recv(timeout=30) == b""
        assert b.recv(timeout=30) == b"after"


@linux_only
def test_a_spawned_child_is_not_stamped_and_the_creator_answers(no_fd_leak: None) -> None:
    """The price of the option: peer_credentials() no longer names the child
    that sent (the default does: tests/test_channel.py), but the pair's creator."""
    options = {"credentials": False}
    with spawn([sys.executable, "-c", SEND_PID_AFTER_GO], channel_options=options) as child:
        channel = child.channel
        assert _passcred(channel) == 0
        channel.send(b"go")
        assert int(channel.recv(timeout=30)) == child.pid
        assert channel.peer_credentials() == ME
        channel.close()
        assert child.wait(timeout=30) == 0


@linux_only
def test_spawn_async_passes_it_on(no_fd_leak: None) -> None:
    async def main() -> None:
        options = {"credentials": False}
        code = [sys.executable, "-c", SEND_PID_AFTER_GO]
        async with await spawn_async(code, channel_options=options) as child:
            channel = child.channel
            assert _passcred(channel) == 0
            await channel.send(b"go")
            assert int(await asyncio.wait_for(channel.recv(), 30)) == child.pid
            assert channel.peer_credentials() == ME
            await channel.aclose()
            assert await asyncio.wait_for(child.wait(), 30) == 0

    asyncio.run(main())


def test_a_refused_option_leaks_nothing() -> None:
    before = open_fds()
    for _ in range(50):
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with pytest.raises(ValueError):
            Channel(a.detach(), credentials=False)
        b.close()
        # The detached descriptor is the caller's: closing it is ours to do here.
    after = open_fds()
    assert len(after - before) == 50
    for fd in after - before:
        os.close(fd)
