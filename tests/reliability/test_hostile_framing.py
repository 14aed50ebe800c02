"""Point 4: hostile framing. A raw-socket peer lies about lengths, truncates, floods
garbage or trickles bytes; the reader (a ``Channel`` in a child process that measures
its own peak memory) fails with a clear error, in bounded memory and bounded time.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import socket
import threading
import time

import pytest

from unix_socketpair import AsyncChannel, Channel, socketpair

from ._helpers import figure
from ._peers import HostileReader, frame, wait_drained

MIB = 1 << 20
DEFAULT_MAX = 64 * MIB


def _kib(report: dict[str, object]) -> int:
    growth = report["growth_kib"]
    assert isinstance(growth, int)
    return growth


def test_declared_4_gib_is_refused_at_once_without_allocating() -> None:
    reader = HostileReader(DEFAULT_MAX)
    # The header alone, and the socket stays open: the reader must not wait for a body.
    reader.sock.sendall(b"\xff\xff\xff\xff")
    report = reader.report(eof=False)
    figure(
        "framing.declares_4gib",
        f"{report['error']} after {report['elapsed']:.3f} s, "
        f"peak RSS growth {_kib(report)} KiB: {report['text']}",
    )
    assert report["error"] == "ProtocolError"
    assert "4294967295" in str(report["text"])
    assert _kib(report) < 2 * DEFAULT_MAX >> 10
    # The reader's address space is capped at +1 GiB, so any attempt at 4 GiB would have
    # been a MemoryError; and the used-up channel keeps saying so.
    assert report["after"] == "ProtocolError"


def test_declared_limit_then_little_data_stays_under_twice_the_limit() -> None:
    limit = 16 * MIB
    reader = HostileReader(limit)
    reader.sock.sendall(frame(b"ok") + (limit).to_bytes(4, "big") + b"x" * MIB)
    report = reader.report()
    figure(
        "framing.declares_limit_sends_1mib",
        f"peak RSS growth {_kib(report)} KiB (limit {limit >> 10} KiB): {report['text']}",
    )
    assert report["messages"] == 1
    assert report["error"] == "ProtocolError"
    assert _kib(report) < 2 * limit >> 10


def test_truncated_frame_then_close_names_the_byte_counts() -> None:
    limit = 16 * MIB
    reader = HostileReader(limit)
    body = limit - MIB
    reader.sock.sendall(frame(b"first") + frame(b"") + body.to_bytes(4, "big"))
    reader.sock.sendall(b"y" * (body // 2))
    report = reader.report()  # closes our end: EOF in the middle of the frame
    figure(
        "framing.truncated",
        f"{report['messages']} whole messages then {report['error']}, "
        f"peak RSS growth {_kib(report)} KiB (limit {limit >> 10} KiB): {report['text']}",
    )
    assert report["messages"] == 2
    assert report["error"] == "ProtocolError"
    assert str(body) in str(report["text"])
    assert str(body // 2) in str(report["text"])
    assert _kib(report) < 2 * limit >> 10
    assert report["after"] == "ProtocolError"


def test_truncated_header_then_close() -> None:
    reader = HostileReader(DEFAULT_MAX)
    reader.sock.sendall(frame(b"whole") + b"\x00\x00")
    report = reader.report()
    assert report["messages"] == 1
    assert report["error"] == "ProtocolError"


def test_clean_close_at_a_boundary_is_channel_closed() -> None:
    """The counterpart of the truncation cases: EOF between messages is not an error."""
    reader = HostileReader(DEFAULT_MAX)
    reader.sock.sendall(frame(b"a") + frame(b"b"))
    report = reader.report()
    assert report["messages"] == 2
    assert report["error"] == "ChannelClosed"
    assert "EOFError" in report["bases"]  # type: ignore[operator]


def _flood(reader: HostileReader, chunk_of: object, sent: list[int]) -> None:
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            chunk = chunk_of() if callable(chunk_of) else chunk_of
            assert isinstance(chunk, bytes)
            reader.sock.sendall(chunk)
            sent[0] += len(chunk)
    except OSError:
        pass  # the reader gave up and closed: that is the point


def _garbage_forever(name: str, limit: int, chunk_of: object) -> dict[str, object]:
    reader = HostileReader(limit)
    sent = [0]
    flooder = threading.Thread(target=_flood, args=(reader, chunk_of, sent), daemon=True)
    flooder.start()
    try:
        report = reader.report(eof=False)
    finally:
        reader.close()
    flooder.join(30)
    assert not flooder.is_alive()
    figure(
        f"framing.garbage[{name}]",
        f"{sent[0]} bytes flooded, {report['messages']} "
        f"messages parsed, then {report['error']} after {report['elapsed']:.3f} s, peak RSS "
        f"growth {_kib(report)} KiB (limit {limit >> 10} KiB)",
    )
    assert report["error"] == "ProtocolError"
    assert _kib(report) < 2 * limit >> 10
    return report


def test_garbage_forever_of_ff_bytes() -> None:
    _garbage_forever("0xff", DEFAULT_MAX, b"\xff" * 65536)


def test_garbage_forever_of_random_bytes() -> None:
    # Random headers mostly declare more than 1 MiB; the few that do not are consumed as
    # frames. The reader must end with ProtocolError whatever the stream holds.
    rng = random.Random(7)
    _garbage_forever("random", MIB, lambda: rng.randbytes(65536))


def test_trickle_one_byte_at_a_time_reassembles() -> None:
    messages = [b"", b"a", b"hello, world", bytes(range(256)) * 4]
    stream = b"".join(frame(m) for m in messages)
    reader = HostileReader(DEFAULT_MAX)
    deadline = time.monotonic() + 30
    start = time.monotonic()
    for i in range(len(stream)):
        reader.sock.sendall(stream[i : i + 1])
        # The reader has taken this byte before the next one goes: one byte per read.
        wait_drained(reader.sock, deadline)
    report = reader.report()
    figure(
        "framing.trickle",
        f"{len(stream)} single-byte writes, each read on its own, "
        f"in {time.monotonic() - start:.2f} s; {report['messages']} messages, {report['bytes']} "
        "bytes",
    )
    assert report["messages"] == len(messages)
    assert report["bytes"] == sum(map(len, messages))
    assert report["sha256"] == hashlib.sha256(stream).hexdigest()
    assert report["error"] == "ChannelClosed"


def test_async_reader_waits_no_longer_than_asked_and_stays_consistent() -> None:
    """A peer trickles a frame slowly; ``wait_for`` gives up when the caller said, and the
    half-read frame is neither lost nor corrupted: the next ``recv`` completes it."""
    message = bytes(range(256)) * 40
    stream = frame(message)

    async def scenario() -> tuple[float, bytes, bytes]:
        ours, theirs = socketpair()
        peer = socket.socket(fileno=theirs)
        channel = AsyncChannel(ours)
        try:
            peer.sendall(stream[:3000])  # the header and part of the body
            start = time.monotonic()
            try:
                await asyncio.wait_for(channel.recv(), 0.3)
            except asyncio.TimeoutError:
                waited = time.monotonic() - start
            else:
                raise AssertionError("recv() returned a message the peer never finished")
            peer.sendall(stream[3000:] + frame(b"next"))
            first = await asyncio.wait_for(channel.recv(), 10)
            second = await asyncio.wait_for(channel.recv(), 10)
            return waited, first, second
        finally:
            peer.close()
            await channel.aclose()

    waited, first, second = asyncio.run(scenario())
    figure("framing.async_timeout", f"caller asked 0.300 s, waited {waited:.3f} s; frame intact")
    assert 0.3 <= waited < 5
    assert first == message
    assert second == b"next"


@pytest.mark.parametrize(
    ("how", "size"),
    [
        ("recv", 100),
        ("recv", 1 << 20),
        ("recv_into", 100),
        ("recv_into", 1 << 20),
        ("async_recv_into", 100),
        ("async_recv_into", 1 << 20),
    ],
)
def test_truncated_frame_for_every_way_of_reading(how: str, size: int) -> None:
    """EOF inside a frame whatever the reading method: the payload read through the
    decoder's buffer (100 bytes) or straight into the caller's 1 MiB buffer (1 MiB)."""
    reader = HostileReader(DEFAULT_MAX, how)
    reader.sock.sendall(frame(b"whole") + size.to_bytes(4, "big") + b"z" * (size // 2))
    report = reader.report(timeout=5)  # the reader is killed if it has not answered
    figure(f"framing.truncated[{how},{size}]", f"{report['error']} after {report['elapsed']:.3f} s")
    assert report["messages"] == 1
    assert report["error"] == "ProtocolError", report


@pytest.mark.parametrize("how", ["recv", "recv_into", "iterate", "async_recv"])
def test_a_message_is_returned_as_soon_as_its_last_byte_is_in(how: str) -> None:
    """The peer trickles each frame and then waits, socket open: the reader hands over
    each message without waiting for anything more (no read-ahead that blocks)."""
    messages = [b"", b"x", bytes(range(256)) * 4]
    ours, theirs = socketpair(blocking=True)
    peer = socket.socket(fileno=theirs)
    loop = asyncio.new_event_loop()
    channel: Channel | AsyncChannel = (
        AsyncChannel(ours) if how.startswith("async") else Channel(ours)
    )
    buffer = bytearray(4096)
    iterator = iter(channel) if isinstance(channel, Channel) else None

    def receive() -> bytes:
        if isinstance(channel, AsyncChannel):
            return loop.run_until_complete(asyncio.wait_for(channel.recv(), 10))
        if how == "recv_into":
            return bytes(buffer[: channel.recv_into(buffer)])
        if iterator is not None and how == "iterate":
            return next(iterator)
        return channel.recv()

    try:
        for message in messages:
            stream = frame(message)
            got: list[bytes] = []
            reader = threading.Thread(target=lambda out=got: out.append(receive()), daemon=True)
            reader.start()
            deadline = time.monotonic() + 20
            for i in range(len(stream)):
                peer.sendall(stream[i : i + 1])
                wait_drained(peer, deadline)
            reader.join(10)
            assert got == [message], f"{how}() did not return the complete message"
    finally:
        peer.close()
        channel.close()
        loop.close()
