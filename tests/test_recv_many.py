"""recv_many(): every whole message already received, on Channel and AsyncChannel,
over all three socket types."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from unix_socketpair import (
    SOCK_DGRAM,
    SOCK_SEQPACKET,
    SOCK_STREAM,
    AsyncChannel,
    Channel,
    ChannelClosed,
)

TYPES = [SOCK_STREAM, SOCK_SEQPACKET, SOCK_DGRAM]
IDS = ["stream", "seqpacket", "dgram"]


@pytest.mark.parametrize("sock_type", TYPES, ids=IDS)
def test_recv_many_returns_what_is_there_in_order(sock_type: int, no_fd_leak: None) -> None:
    a, b = Channel.pair(sock_type)
    with a, b:
        messages = [b"%d" % i * (i % 7) for i in range(50)]
        for message in messages:
            a.send(message)
        got: list[bytes] = []
        while len(got) < len(messages):
            batch = b.recv_many(timeout=10)
            assert batch, "recv_many returned an empty list"
            got += batch
        assert got == messages
        with pytest.raises(TimeoutError):
            b.recv_many(timeout=0)


@pytest.mark.parametrize("sock_type", TYPES, ids=IDS)
def test_recv_many_respects_max_messages_and_closes_fds(sock_type: int, no_fd_leak: None) -> None:
    r, w = os.pipe()
    try:
        a, b = Channel.pair(sock_type)
        with a, b:
            a.send(b"first", fds=[w])
            a.send(b"second")
            a.send(b"third")
            assert b.recv_many(1, timeout=10) == [b"first"]
            rest: list[bytes] = []
            while len(rest) < 2:
                rest += b.recv_many(5, timeout=10)
            assert rest == [b"second", b"third"]
            with pytest.raises(ValueError):
                b.recv_many(0)
            with pytest.raises(TypeError):
                b.recv_many("2")  # type: ignore[arg-type]
        os.close(w)
        w = -1
        assert os.read(r, 1) == b""  # the received duplicate was closed
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def test_recv_many_ends_with_channel_closed(no_fd_leak: None) -> None:
    a, b = Channel.pair()
    with a, b:
        a.send_many([b"x", b"y"])
        a.shutdown_write()
        assert b.recv_many(timeout=10) == [b"x", b"y"]
        with pytest.raises(ChannelClosed):
            b.recv_many(timeout=10)


@pytest.mark.parametrize("sock_type", TYPES, ids=IDS)
def test_async_recv_many(sock_type: int, no_fd_leak: None) -> None:
    async def main() -> None:
        a, b = AsyncChannel.pair(sock_type)
        async with a, b:
            for i in range(20):
                await a.send(b"%d" % i)
            await a.drain()
            got: list[bytes] = []
            while len(got) < 20:
                got += await asyncio.wait_for(b.recv_many(), 10)
            assert got == [b"%d" % i for i in range(20)]
            await a.send(b"one")
            await a.send(b"two")
            await a.drain()
            first = await asyncio.wait_for(b.recv_many(1), 10)
            assert first == [b"one"]

    asyncio.run(main())


def test_iteration_takes_a_lone_message_as_recv_does_and_a_burst_in_batches(
    monkeypatch: pytest.MonkeyPatch, no_fd_leak: None
) -> None:
    """A message that comes alone is taken the way recv() takes it (recv_many()
    costs three times as much for one message); one already buffered when asked
    for starts a batch, and an iterator stopped inside a batch puts its rest back."""
    batches: list[int] = []
    real = Channel.recv_many

    def counting(self: Channel, *args: Any, **kwargs: Any) -> list[bytes]:
        got = real(self, *args, **kwargs)
        batches.append(len(got))
        return got

    monkeypatch.setattr(Channel, "recv_many", counting)
    a, b = Channel.pair()
    with a, b:
        it = iter(b)
        for i in range(5):  # a round trip's pattern: one message, then its answer
            a.send(b"%d" % i)
            assert next(it) == b"%d" % i
        assert batches == []
        a.send_many([b"5", b"6", b"7", b"8"])
        assert next(it) == b"5"  # read with the rest; taken alone
        assert next(it) == b"6"  # already there: a burst
        assert batches == []
        assert next(it) == b"7"  # the burst goes on in a batch: 7 and 8
        assert batches == [2]
        it.close()  # stopped inside the batch: 8 goes back
        assert b.recv(timeout=30) == b"8"
        a.close()
        assert list(b) == []
