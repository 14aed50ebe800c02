"""Interop: a Python child whose end is a ``multiprocessing.connection.Connection``
(built on the descriptor ``spawn`` gives it) talks to ``Channel`` in the parent:
``send_bytes``/``recv_bytes`` and pickled ``send``/``recv`` against the framing,
from empty to 20 MiB, both directions. Only the public API on our side."""

from __future__ import annotations

import os
import pickle
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from unix_socketpair import Channel, ChannelClosed, Child, spawn

# The child: echo (bytes or pickles) with multiprocessing's own Connection until EOF.
CHILD = """
import os, sys
from multiprocessing.connection import Connection

conn = Connection(int(os.environ["SOCKETPAIR_FD"]))
mode = sys.argv[1]
if mode == "greet":  # speak first: a known series, then echo
    for size in (0, 1, 70_000, 20 << 20):
        conn.send_bytes(b"g" * size)
    conn.send({"from": "child", "pid": os.getpid()})
while True:
    try:
        if mode == "pickle":
            obj = conn.recv()
            conn.send(("echo", obj))
        elif mode == "fds":
            data = conn.recv_bytes()
            conn.send_bytes(str(len(os.listdir("/proc/self/fd"))).encode() + b" " + data)
        else:
            conn.send_bytes(conn.recv_bytes())
    except EOFError:
        break
conn.close()
"""

SIZES = [0, 1, 100, 16_383, 16_384, 65_536, 1 << 20, 20 << 20]


def start(mode: str) -> Child:
    return spawn([sys.executable, "-c", CHILD, mode])


@pytest.fixture
def child(request: pytest.FixtureRequest, no_fd_leak: None) -> Iterator[Child]:
    with start(request.param) as proc:
        yield proc
        proc.channel.shutdown_write()
        with pytest.raises(ChannelClosed):
            proc.channel.recv()
        assert proc.wait(timeout=30) == 0


@pytest.mark.parametrize("child", ["bytes"], indirect=True)
def test_bytes_both_ways_every_size(child: Child) -> None:
    channel: Channel = child.channel
    for size in SIZES:
        payload = os.urandom(size) if size <= 1 << 20 else b"\xa5" * size
        channel.send(payload)  # read by Connection.recv_bytes
        assert channel.recv() == payload  # written by Connection.send_bytes


@pytest.mark.parametrize("child", ["bytes"], indirect=True)
def test_many_small_messages_keep_their_boundaries(child: Child) -> None:
    messages = [b"%05d" % i * (i % 7) for i in range(2000)]
    child.channel.send_many(messages)
    assert [child.channel.recv() for _ in messages] == messages


PICKLES: list[Any] = [
    None,
    0,
    "text \u20ac",
    b"",
    [1, 2.5, {"k": (3, 4)}],
    {frozenset({1}): bytearray(b"x" * 100_000)},
    b"\x00" * (20 << 20),
]


@pytest.mark.parametrize("child", ["pickle"], indirect=True)
def test_pickles_both_ways(child: Child) -> None:
    for obj in PICKLES:
        child.channel.send(pickle.dumps(obj))  # read by Connection.recv
        assert pickle.loads(child.channel.recv()) == ("echo", obj)  # from Connection.send


@pytest.mark.parametrize("child", ["greet"], indirect=True)
def test_connection_speaks_first(child: Child) -> None:
    for size in (0, 1, 70_000, 20 << 20):
        assert child.channel.recv() == b"g" * size
    assert pickle.loads(child.channel.recv()) == {"from": "child", "pid": child.pid}


@pytest.mark.parametrize("child", ["fds"], indirect=True)
def test_descriptors_sent_by_channel_do_not_reach_a_connection(child: Child) -> None:
    # Connection reads with read(): the kernel discards the SCM_RIGHTS descriptors
    # (closing them) and the payload arrives alone, so nothing leaks in the child.
    child.channel.send(b"plain")
    baseline, _, data = child.channel.recv().partition(b" ")
    assert data == b"plain"
    r, w = os.pipe()
    try:
        child.channel.send(b"with fds", fds=[r, w])
    finally:
        os.close(r)
        os.close(w)
    count, _, data = child.channel.recv().partition(b" ")
    assert data == b"with fds" and count == baseline
