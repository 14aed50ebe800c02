"""AsyncChannel over real socketpairs and a real child, on the default loop and,
when it is installed, on uvloop as well."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import struct
import subprocess
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from support import EXAMPLES

from unix_socketpair import (
    SOCK_DGRAM,
    SOCK_SEQPACKET,
    SOCK_STREAM,
    AsyncChannel,
    Channel,
    ChannelClosed,
    MessageTooLarge,
    ProtocolError,
    socketpair,
)

ALL_TYPES = [SOCK_STREAM, SOCK_SEQPACKET, SOCK_DGRAM]
HEADER = struct.Struct(">I")


def inode(fd: int) -> int:
    return os.fstat(fd).st_ino


@pytest.mark.parametrize("sock_type", ALL_TYPES)
def test_round_trip_small_and_empty(sock_type: int, run: Any, no_fd_leak: None) -> None:
    async def main() -> None:
        a, b = AsyncChannel.pair(sock_type)
        async with a, b:
            assert a.type == sock_type
            for message in (b"hello", b"", bytearray(b"ba"), memoryview(b"mv")):
                await a.send(message)
                assert await b.recv() == bytes(message)
            await b.send(b"back")
            assert await a.recv() == b"back"

    run(main())


def test_ten_mib_both_ways_with_back_pressure(run: Any, no_fd_leak: None) -> None:
    async def main() -> None:
        a, b = AsyncChannel.pair()
        async with a, b:
            big = os.urandom(1 << 20) * 10
            sending = asyncio.ensure_future(a.send(big))
            # The kernel cannot take 10 MiB: the send waits for the reader.
            done, _ = await asyncio.wait({sending}, timeout=0.2)
            assert not done
            assert await b.recv() == big
            await sending
            sending = asyncio.ensure_future(b.send(memoryview(big)))
            buffer = bytearray(len(big))
            assert await a.recv_into(buffer) == len(big)
            await sending
            assert buffer == big

    run(main())


def test_hundred_thousand_messages_both_ways(run: Any, no_fd_leak: None) -> None:
    async def main() -> None:
        a, b = AsyncChannel.pair()
        async with a, b:
            messages = [b"%d" % i for i in range(100_000)]
            sending = asyncio.ensure_future(a.send_many(messages))
            assert [await b.recv() for _ in messages] == messages
            await sending

            async def one_by_one() -> None:
                for m in messages:
                    await b.send(m)
                b.shutdown_write()

            sending = asyncio.ensure_future(one_by_one())
            assert [m async for m in a] == messages
            await sending

    run(main())


@pytest.mark.parametrize("sock_type", ALL_TYPES)
def test_fds_interleaved(sock_type: int, run: Any, no_fd_leak: None) -> None:
    pipes = [os.pipe() for _ in range(4)]
    size = 200_000 if sock_type == SOCK_STREAM else 500
    plan = [
        (b"a", []),
        (b"b" * size, [pipes[0][0]]),
        (b"", [pipes[1][1], pipes[2][0]]),
        (b"c" * size, []),
        (b"d", [pipes[3][0]]),
    ] * 5

    async def main() -> None:
        a, b = AsyncChannel.pair(sock_type)
        async with a, b:

            async def send_all() -> None:
                for m, f in plan:
                    await a.send(m, fds=f)

            sending = asyncio.ensure_future(send_all())
            for payload, fds in plan:
                got, got_fds = await b.recv_with_fds()
                try:
                    assert got == payload
                    assert [inode(fd) for fd in got_fds] == [inode(fd) for fd in fds]
                finally:
                    for fd in got_fds:
                        os.close(fd)
            await sending

    try:
        run(main())
    finally:
        for r, w in pipes:
            os.close(r)
            os.close(w)


def test_concurrent_senders_never_interleave(run: Any, no_fd_leak: None) -> None:
    async def main() -> None:
        a, b = AsyncChannel.pair()
        async with a, b:

            async def sender(tag: int) -> None:
                for i in range(30):
                    await a.send(bytes([tag]) * (1000 + 50_000 * (i % 3)))

            tasks = [asyncio.ensure_future(sender(t)) for t in range(8)]
            seen = 0
            while seen < 8 * 30:
                message = await b.recv()
                assert len(set(message)) == 1  # whole, from one sender
                seen += 1
            await asyncio.gather(*tasks)

    run(main())


def test_second_concurrent_receiver_is_refused(run: Any, no_fd_leak: None) -> None:
    async def main() -> None:
        a, b = AsyncChannel.pair()
        async with a, b:
            first = asyncio.ensure_future(b.recv())
            await asyncio.sleep(0)  # one loop turn (not a timed wait): it is now waiting
            with pytest.raises(RuntimeError, match="already receiving"):
                await b.recv()
            await a.send(b"for the first")
            assert await first == b"for the first"

    run(main())


def test_cancelled_recv_loses_nothing(run: Any, no_fd_leak: None) -> None:
    async def main() -> None:
        a, b = AsyncChannel.pair()
        async with a, b:
            waiting = asyncio.ensure_future(b.recv())
            await asyncio.sleep(0)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            await a.send(b"kept")
            assert await b.recv() == b"kept"

    run(main())


async def _fill(channel: AsyncChannel) -> None:
    """Send until a send has to wait (the peer does not read): each send gets
    50 ms; the one that runs out of it is cancelled, and is delivered whole in
    the background (or held in the write-behind buffer)."""
    chunk = b"f" * (4096 if channel.type == SOCK_STREAM else 512)
    for _ in range(100_000):
        try:
            await asyncio.wait_for(channel.send(chunk), 0.05)
        except asyncio.TimeoutError:
            return
    pytest.fail("sending to a peer that does not read never had to wait")


def _waiting_call(name: str, channel: AsyncChannel) -> Coroutine[Any, Any, Any]:
    if name == "recv_into":
        return channel.recv_into(bytearray(1 << 20))
    if name == "send":
        return channel.send(b"s" * 100)
    if name == "send_fds":
        return channel.send(b"s", fds=[0])
    if name == "send_many":
        return channel.send_many([b"m"] * 10)
    if name == "iteration":

        async def collect() -> list[bytes]:
            return [message async for message in channel]

        return collect()
    method: Callable[[], Coroutine[Any, Any, Any]] = getattr(channel, name)
    return method()


RECEIVING = ["recv", "recv_into", "recv_with_fds", "recv_many", "iteration"]
SENDING = ["send", "send_fds", "send_many", "drain", "aclose"]
WAITING_CALLS = [
    pytest.param(sock_type, call, id=f"{name}-{call}")
    for sock_type, name in zip(ALL_TYPES, ["stream", "seqpacket", "dgram"], strict=True)
    for call in RECEIVING + SENDING
    # Packets are never held back: drain() and aclose() have nothing to wait for.
    if call not in ("drain", "aclose") or sock_type == SOCK_STREAM
]


@pytest.mark.parametrize(("sock_type", "call"), WAITING_CALLS)
def test_close_wakes_every_waiting_task_with_channel_closed(
    sock_type: int, call: str, run: Any, no_fd_leak: None
) -> None:
    """A task waiting in a receive (the peer sends nothing) or in a send, drain or
    aclose (the peer does not read) when close() comes, from another task, is woken
    with ChannelClosed; a waiting iteration just stops. A call started after
    close() gets OSError(EBADF)."""

    async def main() -> None:
        a, b = AsyncChannel.pair(sock_type)
        try:
            if call in SENDING:
                await _fill(a)
            waiting = asyncio.ensure_future(_waiting_call(call, a))
            for _ in range(10):
                await asyncio.sleep(0)
            assert not waiting.done(), f"{call} did not wait"
            asyncio.get_running_loop().call_soon(a.close)
            if call == "iteration":
                assert await waiting == []
            else:
                with pytest.raises(ChannelClosed):
                    await waiting
            with pytest.raises(OSError) as info:
                await _waiting_call("recv" if call in RECEIVING else "send", a)
            assert info.value.errno == errno.EBADF
        finally:
            a.close()
            b.close()

    run(main())


def test_errors(run: Any, no_fd_leak: None) -> None:
    async def main() -> None:
        a, b = AsyncChannel.pair(max_message_size=100)
        async with b:
            with pytest.raises(TypeError, match="bytes-like"):
                await a.send("text")  # type: ignore[arg-type]
            with pytest.raises(MessageTooLarge):
                await a.send(b"x" * 101)
            await a.send(b"0123456789")
            with pytest.raises(MessageTooLarge) as info:
                await b.recv_into(bytearray(5))
            assert info.value.size == 10
            assert await b.recv() == b"0123456789"
            await a.aclose()
            with pytest.raises(ChannelClosed):
                await b.recv()
            assert [m async for m in b] == []

        x, y = socket.socketpair()
        with x:
            channel = AsyncChannel(y)
            async with channel:
                x.sendall(HEADER.pack(10) + b"abc")
                x.shutdown(socket.SHUT_WR)
                with pytest.raises(ProtocolError, match="3 of its 10"):
                    await channel.recv()
                with pytest.raises(ProtocolError, match="unusable"):
                    await channel.recv()
                x.close()
                with pytest.raises(BrokenPipeError):
                    for _ in range(100):
                        await channel.send(b"y" * 100_000)

    run(main())


def test_constructed_outside_a_coroutine_and_talking_to_a_child(run: Any, no_fd_leak: None) -> None:
    ours, theirs = socketpair()
    try:
        child = subprocess.Popen(
            [sys.executable, str(EXAMPLES / "echo_peer.py")],
            env={**os.environ, "SOCKETPAIR_FD": str(theirs)},
            pass_fds=[theirs],
        )
    finally:
        os.close(theirs)
    channel = AsyncChannel(ours)

    async def main() -> None:
        async with channel:
            await channel.send_many([b"one", b"", b"three" * 100_000])
            got: list[bytes] = []
            for _ in range(3):
                got.append(await channel.recv())
            assert got == [b"one", b"", b"three" * 100_000]
            assert channel.peer_credentials().pid == child.pid
            channel.shutdown_write()
            assert [m async for m in channel] == []

    run(main())
    assert child.wait(timeout=30) == 0


def test_interoperates_with_the_blocking_channel(run: Any, no_fd_leak: None) -> None:
    x, y = socketpair()
    blocking = Channel(x)

    async def main() -> None:
        async with AsyncChannel(y) as channel:
            blocking.send_many([b"from", b"blocking"])
            assert [await channel.recv(), await channel.recv()] == [b"from", b"blocking"]
            await channel.send(b"from async")
            assert await asyncio.get_running_loop().run_in_executor(None, blocking.recv) == (
                b"from async"
            )

    try:
        run(main())
    finally:
        blocking.close()


def test_from_env(no_fd_leak: None) -> None:
    ours, theirs = socketpair()
    code = (
        "import asyncio\nfrom unix_socketpair import AsyncChannel\n"
        "async def main():\n"
        "    async with AsyncChannel.from_env() as c:\n"
        "        await c.send((await c.recv()).upper())\n"
        "asyncio.run(main())\n"
    )
    try:
        child = subprocess.Popen(
            [sys.executable, "-c", code],
            env={**os.environ, "SOCKETPAIR_FD": str(theirs)},
            pass_fds=[theirs],
        )
    finally:
        os.close(theirs)
    with Channel(ours) as channel:
        channel.send(b"shout")
        assert channel.recv() == b"SHOUT"
    assert child.wait(timeout=30) == 0


# -- the write-behind buffer ------------------------------------------------------

HIGH_WATER = 256 * 1024  # the documented bound of the write-behind buffer
SMALL = b"m" * 60  # 64 bytes framed


def test_a_reader_that_stops_bounds_the_sender_memory(run: Any, no_fd_leak: None) -> None:
    async def main() -> None:
        x, y = socket.socketpair()
        channel = AsyncChannel(x)
        sent = 0

        async def flood() -> None:
            nonlocal sent
            for _ in range(1_000_000):  # 64 MB framed: far more than kernel + buffer
                await channel.send(SMALL)
                sent += 64

        with y:
            async with channel:
                task = asyncio.ensure_future(flood())
                done, _ = await asyncio.wait({task}, timeout=0.5)
                assert not done  # the sender waits for the reader
                # What the kernel holds is readable now; the rest is in our buffer.
                y.setblocking(False)
                in_kernel = 0
                try:
                    while chunk := y.recv(1 << 20):
                        in_kernel += len(chunk)
                except BlockingIOError:
                    pass
                assert 0 < in_kernel < sent
                assert sent - in_kernel <= HIGH_WATER + 64
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                channel.close()  # drop what is buffered rather than write it

    run(main())


def test_buffered_messages_fds_and_large_ones_keep_their_order(run: Any, no_fd_leak: None) -> None:
    async def main() -> None:
        a, b = AsyncChannel.pair()
        r, w = os.pipe()
        try:
            async with a, b:
                big = os.urandom(300_000)
                mutable = bytearray(b"before")
                expected = [b"%d" % i for i in range(500)]

                async def send_all() -> None:
                    for m in expected:
                        await a.send(m)  # the first goes out, the rest are buffered
                    await a.send(b"with fds", fds=[r, w])
                    await a.send(mutable)
                    mutable[:] = b"AFTER!"  # the caller may reuse its buffer at once
                    await a.send(big)
                    await a.send(b"last")

                sending = asyncio.ensure_future(send_all())
                for m in expected:
                    assert await b.recv() == m
                data, fds = await b.recv_with_fds()
                try:
                    assert data == b"with fds"
                    assert [inode(fd) for fd in fds] == [inode(r), inode(w)]
                finally:
                    for fd in fds:
                        os.close(fd)
                assert await b.recv() == b"before"
                assert await b.recv() == big
                assert await b.recv() == b"last"
                await sending
        finally:
            os.close(r)
            os.close(w)

    run(main())


def test_a_failed_background_write_is_raised_later(run: Any, no_fd_leak: None) -> None:
    async def main() -> None:
        a, b = AsyncChannel.pair()
        await a.send(b"first")  # written at once
        await a.send(b"second")  # buffered until the loop runs
        b.close()
        await asyncio.sleep(0)  # one loop turn (not a timed wait): the write fails
        with pytest.raises(BrokenPipeError):
            await a.send(b"third")
        with pytest.raises(BrokenPipeError):
            await a.drain()
        with pytest.raises(BrokenPipeError):
            await a.aclose()
        assert a.closed

    run(main())


def test_aclose_and_shutdown_write_deliver_what_is_buffered(run: Any, no_fd_leak: None) -> None:
    async def main() -> None:
        a, b = AsyncChannel.pair()
        count = 20_000  # 1.3 MB framed: more than the kernel holds at once

        async def receive() -> list[bytes]:
            return [m async for m in b]

        receiving = asyncio.ensure_future(receive())
        for i in range(count):
            await a.send(b"%d" % i)
        await a.aclose()
        got = await receiving
        assert got == [b"%d" % i for i in range(count)]
        await b.aclose()

        c, d = AsyncChannel.pair()
        async with c, d:
            for i in range(100):
                await c.send(b"%d" % i)
            c.shutdown_write()  # after the buffered messages, not before them
            with pytest.raises(BrokenPipeError):
                await c.send(b"too late")
            assert [m async for m in d] == [b"%d" % i for i in range(100)]
            await c.drain()

    run(main())


def test_send_after_close_is_ebadf_even_mid_burst(run: Any, no_fd_leak: None) -> None:
    async def main() -> None:
        a, b = AsyncChannel.pair()
        async with b:
            await a.send(b"one")  # the next send would be buffered
            a.close()
            with pytest.raises(OSError) as info:
                await a.send(b"two")
            assert info.value.errno == errno.EBADF

    run(main())
