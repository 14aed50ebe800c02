"""Interop: echo peers in C, Node.js and Python, each implementing the documented
framing on its own, run as real child processes (the C one compiled here)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from support import EXAMPLES, compile_c, require

from unix_socketpair import Channel, ChannelClosed, socketpair


@dataclass
class Peer:
    name: str
    command: list[str]
    passes_fds: bool


def _command(name: str) -> list[str]:
    if name == "c":
        return [str(compile_c(EXAMPLES / "echo_peer.c"))]
    if name == "node":
        return [require("node"), str(EXAMPLES / "echo_peer.js")]
    return [sys.executable, str(EXAMPLES / "echo_peer.py")]


@pytest.fixture(params=["c", "node", "python"])
def peer(request: pytest.FixtureRequest) -> Peer:
    return Peer(request.param, _command(request.param), request.param != "node")


@pytest.fixture
def echo(peer: Peer, no_fd_leak: None) -> Iterator[Channel]:
    """A channel whose other end is the peer, which echoes until we close."""
    ours, theirs = socketpair(blocking=True)
    try:
        child = subprocess.Popen(
            peer.command,
            env={**os.environ, "SOCKETPAIR_FD": str(theirs)},
            pass_fds=[theirs],
            stdin=subprocess.DEVNULL,
        )
    except BaseException:
        os.close(ours)
        raise
    finally:
        os.close(theirs)
    channel = Channel(ours)
    try:
        yield channel
        channel.shutdown_write()
        assert child.wait(timeout=30) == 0, f"{peer.name} peer failed"
        with pytest.raises(ChannelClosed):
            channel.recv()
    finally:
        channel.close()
        if child.poll() is None:
            child.kill()
            child.wait()


def test_sizes_round_trip(echo: Channel) -> None:
    for payload in [b"", b"x", bytes(range(256)), os.urandom(1 << 20), b"z" * (10 << 20)]:
        echo.send(payload)
        assert echo.recv() == payload


def test_many_messages_both_ways(echo: Channel) -> None:
    count = 100_000
    messages = [b"%06d" % i for i in range(count)]
    failure: list[BaseException] = []

    def send() -> None:
        try:
            echo.send_many(messages)
        except BaseException as exc:  # surfaced by the assertion below
            failure.append(exc)

    sender = threading.Thread(target=send)
    sender.start()
    received = [echo.recv() for _ in range(count)]
    sender.join(timeout=60)
    assert not failure
    assert received == messages


# Node.js cannot pass descriptors over a socket: its peer speaks plain messages.
@pytest.mark.parametrize("peer", ["c", "python"], indirect=True)
def test_fds_come_back_with_their_message(echo: Channel, peer: Peer) -> None:
    assert peer.passes_fds
    pipes = [os.pipe() for _ in range(3)]
    try:
        plan = [
            (b"plain-0", []),
            (b"one", [pipes[0][0]]),
            (b"plain-1", []),
            (b"two", [pipes[1][0], pipes[2][1]]),
            (b"big" * 100_000, [pipes[2][0]]),
        ]
        for payload, fds in plan:
            echo.send(payload, fds=fds)
        for payload, fds in plan:
            got, got_fds = echo.recv_with_fds()
            try:
                assert got == payload
                assert [os.fstat(fd).st_ino for fd in got_fds] == [
                    os.fstat(fd).st_ino for fd in fds
                ]
            finally:
                for fd in got_fds:
                    os.close(fd)
    finally:
        for r, w in pipes:
            os.close(r)
            os.close(w)
