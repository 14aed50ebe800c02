"""AsyncChannel(spin=N): before a receive sleeps in the event loop it looks N
more times whether data came; nothing else changes, and it stops when it does
not pay."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from typing import Any

import pytest

from unix_socketpair import (
    SOCK_DGRAM,
    SOCK_SEQPACKET,
    AsyncChannel,
    Channel,
    ChannelClosed,
    _aio,
)

ALL_TYPES = [socket.SOCK_STREAM, SOCK_SEQPACKET, SOCK_DGRAM]


class CountingPoll:
    """Stands in for the channel's spin poller and counts its tries."""

    def __init__(self, fd: int) -> None:
        import select

        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)
        self.tries = 0

    def poll(self, timeout: int) -> list[tuple[int, int]]:
        self.tries += 1
        return self._poll.poll(timeout)


def frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


@pytest.mark.parametrize("sock_type", ALL_TYPES)
def test_spinning_channels_carry_everything(sock_type: int, run: Any, no_fd_leak: None) -> None:
    """Messages, empty ones, descriptors, recv_into, recv_many and end of file,
    with a peer in a thread that answers while the receiver spins or sleeps."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, sock_type)
    a = AsyncChannel(ours, spin=200)
    peer = Channel(theirs, spin=0)
    messages = [b"", b"x", bytes(range(256)) * 40, b"last"]
    r, w = os.pipe()
    failure: list[BaseException] = []

    def echo() -> None:
        try:
            for _ in messages:
                got, fds = peer.recv_with_fds()
                peer.send(got, fds=fds)
                for fd in fds:
                    os.close(fd)
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=echo)

    async def main() -> None:
        thread.start()
        async with a:
            for i, message in enumerate(messages):
                await a.send(message, fds=[w] if i % 2 else [])
                if i == 2:
                    buffer = bytearray(len(message))
                    assert await a.recv_into(buffer) == len(message)
                    assert buffer == message
                elif i == 3:
                    assert await a.recv_many() == [message]
                elif i % 2:
                    got, fds = await a.recv_with_fds()
                    assert got == message
                    assert len(fds) == 1
                    assert os.fstat(fds[0]).st_ino == os.fstat(w).st_ino
                    os.close(fds[0])
                else:
                    assert await a.recv() == message
            await asyncio.get_running_loop().run_in_executor(None, thread.join, 60)
            assert not failure, failure
            if sock_type != SOCK_DGRAM:  # a datagram socket never sees end of file
                peer.close()
                with pytest.raises(ChannelClosed):
                    await a.recv()
                assert [m async for m in a] == []

    try:
        run(main())
    finally:
        if thread.is_alive():
            thread.join(timeout=60)
        peer.close()
        os.close(r)
        os.close(w)


def _arm_then_send(channel: AsyncChannel, sock: socket.socket, count: int) -> threading.Thread:
    """A peer that sends each of *count* messages only once the channel's task
    has stopped trying and gone to sleep in the event loop (its read future is
    armed), so that every try of every wait finds nothing."""

    def peer() -> None:
        answered = None
        deadline = time.monotonic() + 30
        for i in range(count):
            # Wait for a new armed future (not the one answered last).
            while True:
                waiter = channel._read_waiter
                if waiter is not None and waiter is not answered and not waiter.done():
                    break
                if time.monotonic() > deadline:
                    return
                time.sleep(0)  # yield the GIL; the condition is what is waited for
            answered = waiter
            sock.sendall(frame(b"%d" % i))

    thread = threading.Thread(target=peer)
    thread.start()
    return thread


def test_spinning_stops_when_it_does_not_pay_and_is_tried_again(
    monkeypatch: pytest.MonkeyPatch, run: Any, no_fd_leak: None
) -> None:
    """Every wait ends in sleep (the peer answers only then): the first 4 waits
    try `spin` times each, using up the credit (8, 2 per failed wait); then the
    channel sleeps at once, until _PROBE_READS (3 here) waits later one wait
    tries again, fails, and the channel stops again."""
    monkeypatch.setattr(_aio, "_PROBE_READS", 3)
    spin = 7
    a_sock, b_sock = socket.socketpair()
    a = AsyncChannel(a_sock, spin=spin)
    counter = CountingPoll(a.fileno())
    a._spin_poll = counter  # type: ignore[assignment]
    per_wait: list[int] = []

    async def main() -> None:
        thread = _arm_then_send(a, b_sock, 10)
        try:
            for i in range(10):
                before = counter.tries
                assert await a.recv() == b"%d" % i
                per_wait.append(counter.tries - before)
        finally:
            await asyncio.get_running_loop().run_in_executor(None, thread.join, 60)

    try:
        run(main())
    finally:
        a.close()
        b_sock.close()
    # The first receive finds the reader not yet registered: it reads once
    # (nothing) and sleeps without spinning.
    assert per_wait == [0, spin, spin, spin, spin, 0, 0, spin, 0, 0], per_wait


def test_a_message_that_comes_while_spinning_is_read_without_sleeping(
    run: Any, no_fd_leak: None
) -> None:
    """Data queued after the reader callback last ran is found by the first try;
    the write-behind buffer is written before any try, so the peer can answer
    what we sent."""
    a_sock, b_sock = socket.socketpair()
    a = AsyncChannel(a_sock, spin=5)
    counter = CountingPoll(a.fileno())
    a._spin_poll = counter  # type: ignore[assignment]

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.call_soon(b_sock.sendall, frame(b"first"))
        assert await a.recv() == b"first"  # registers the reader, sleeps once
        assert counter.tries == 0
        b_sock.sendall(frame(b"queued"))  # the loop does not run before the recv
        await a.send(b"one")  # straight to the socket
        await a.send(b"two")  # coalesced: waits for the loop in the write-behind buffer
        assert a._wbuf
        assert await a.recv() == b"queued"
        assert counter.tries == 1
        b_sock.setblocking(False)
        assert b_sock.recv(100) == frame(b"one") + frame(b"two")

    try:
        run(main())
    finally:
        a.close()
        b_sock.close()


def test_without_spin_nothing_is_tried(run: Any, no_fd_leak: None) -> None:
    a, b = AsyncChannel.pair()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for i in range(3):
            loop.call_soon(loop.create_task, b.send(b"%d" % i))
            assert await a.recv() == b"%d" % i
        assert a._spin_poll is None  # never made: no tries

    try:
        run(main())
    finally:
        a.close()
        b.close()


def test_a_channel_stays_on_the_loop_it_first_waited_on(no_fd_leak: None) -> None:
    a, b = AsyncChannel.pair()

    async def first() -> None:
        asyncio.get_running_loop().call_soon(b._sock.send, frame(b"x"))
        assert await a.recv() == b"x"

    async def second() -> None:
        with pytest.raises(RuntimeError, match="loop"):
            await a.recv()
        with pytest.raises(RuntimeError, match="bound to another event loop"):
            await a.recv()

    try:
        asyncio.run(first())
        asyncio.run(second())
    finally:
        a.close()
        b.close()
