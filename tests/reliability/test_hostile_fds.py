"""Point 5: hostile fd passing. A raw-socket peer attaches descriptors where the reader
does not want them; whatever the reader does, none of the received descriptors stays open.

Each case sends copies of the write end of a pipe. Once the peer closes its own copies,
the pipe's read end sees EOF only if no copy is left open anywhere: that, and the
reader's ``/proc/self/fd`` being as it was, is the pass criterion.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from support import open_fds

from unix_socketpair import (
    SOCK_DGRAM,
    SOCK_SEQPACKET,
    SOCK_STREAM,
    AsyncChannel,
    Channel,
    FdsTruncated,
    ProtocolError,
    TooManyFds,
    socketpair,
)
from unix_socketpair._ancillary import fds_from_ancillary

from ._helpers import figure
from ._peers import all_copies_closed, frame, send_fds, wait_drained

PACKET_TYPES = [SOCK_DGRAM, SOCK_SEQPACKET]
PACKET_IDS = ["dgram", "seqpacket"]


@dataclass
class Setup:
    """A raw peer socket, the reader's end (raw fd, for a channel), and a pipe probe."""

    reader_fd: int
    peer: socket.socket
    probe_r: int
    probe_w: int
    name: str = "stream"
    before: set[int] = field(default_factory=set)

    def send(self, data: bytes, n_fds: int) -> None:
        """Send *data* with *n_fds* copies of the probe's write end attached."""
        fds = [os.dup(self.probe_w) for _ in range(n_fds)]
        try:
            assert send_fds(self.peer, data, fds) == len(data)
        finally:
            for fd in fds:
                os.close(fd)

    def assert_nothing_kept(self, case: str, n_fds: int) -> None:
        after = open_fds()
        os.close(self.probe_w)
        self.probe_w = -1
        closed = all_copies_closed(self.probe_r)
        figure(
            f"fds.{case}",
            f"{n_fds} fds sent, reader fds {len(self.before)} -> {len(after)}, "
            f"every copy closed: {closed}",
        )
        assert after == self.before, f"kept open: {sorted(after - self.before)}"
        assert closed, "a copy of the passed descriptor is still open somewhere"


def _setup(sock_type: int = SOCK_STREAM) -> Iterator[Setup]:
    ours, theirs = socketpair(sock_type, blocking=True)
    peer = socket.socket(fileno=theirs)
    r, w = os.pipe()
    s = Setup(ours, peer, r, w, socket.SocketKind(sock_type).name.lower()[5:])
    try:
        yield s
    finally:
        peer.close()
        os.close(r)
        if s.probe_w >= 0:
            os.close(s.probe_w)


@pytest.fixture
def stream() -> Iterator[Setup]:
    yield from _setup()


@pytest.fixture(params=PACKET_TYPES, ids=PACKET_IDS)
def packet(request: pytest.FixtureRequest) -> Iterator[Setup]:
    yield from _setup(request.param)


def _channel(s: Setup, **options: int) -> Channel:
    channel = Channel(s.reader_fd, **options)
    s.before = open_fds()
    return channel


def test_more_fds_than_max_fds(no_fd_leak: None, stream: Setup) -> None:
    with _channel(stream, max_fds=4) as channel:
        stream.send(frame(b"ten fds"), 10)
        with pytest.raises(TooManyFds) as caught:
            channel.recv_with_fds()
        assert (caught.value.count, caught.value.limit) == (10, 4)
        stream.assert_nothing_kept("more_than_max_fds", 10)
        with pytest.raises(ProtocolError):  # the message is lost: the channel says so
            channel.recv()


def test_more_fds_than_max_fds_read_with_plain_recv(no_fd_leak: None, stream: Setup) -> None:
    with _channel(stream, max_fds=1) as channel:
        stream.send(frame(b"two fds"), 2)
        with pytest.raises(TooManyFds):
            channel.recv()
        stream.assert_nothing_kept("more_than_max_fds_plain_recv", 2)


def test_the_kernel_maximum_is_delivered_and_owned_by_the_caller(
    no_fd_leak: None, stream: Setup
) -> None:
    with _channel(stream) as channel:
        stream.send(frame(b"253 fds"), 253)
        data, fds = channel.recv_with_fds()
        assert data == b"253 fds"
        assert len(fds) == 253
        assert not any(os.get_inheritable(fd) for fd in fds)
        for fd in fds:
            os.close(fd)
        stream.assert_nothing_kept("253_delivered_then_closed_by_caller", 253)


def test_the_kernel_maximum_on_a_packet_is_not_truncated(no_fd_leak: None, packet: Setup) -> None:
    """253 fds plus the credentials record packet channels ask for: the control buffer
    holds both, so a peer cannot make the kernel truncate (MSG_CTRUNC) at will."""
    with _channel(packet) as channel:
        packet.send(b"253 fds", 253)
        data, fds = channel.recv_with_fds()
        assert (data, len(fds)) == (b"253 fds", 253)
        for fd in fds:
            os.close(fd)
        packet.assert_nothing_kept(f"253_on_a_packet[{packet.name}]", 253)


def test_truncated_control_data_closes_what_arrived(no_fd_leak: None, stream: Setup) -> None:
    """A control buffer with room for two fds, three sent: the kernel sets MSG_CTRUNC,
    installs two and drops one; the ancillary unpacking raises and closes the two."""
    stream.before = open_fds()
    stream.send(b"x", 3)
    with socket.socket(fileno=os.dup(stream.reader_fd)) as reader:
        _, anc, flags, _ = reader.recvmsg(1, socket.CMSG_SPACE(4), socket.MSG_CMSG_CLOEXEC)
    assert flags & socket.MSG_CTRUNC
    with pytest.raises(FdsTruncated):
        fds_from_ancillary(anc, flags, 253)
    stream.assert_nothing_kept("ctrunc", 3)
    os.close(stream.reader_fd)


def test_fds_on_a_message_read_with_plain_recv(no_fd_leak: None, stream: Setup) -> None:
    with _channel(stream) as channel:
        stream.send(frame(b"with fds"), 3)
        stream.peer.sendall(frame(b"without"))
        stream.send(frame(b"again") + frame(b"and more"), 2)
        assert channel.recv() == b"with fds"
        assert channel.recv() == b"without"
        buffer = bytearray(16)
        assert channel.recv_into(buffer) == 5
        assert [m for m in [channel.recv()]] == [b"and more"]
        stream.assert_nothing_kept("plain_recv", 5)


def test_fds_on_a_message_iterated(no_fd_leak: None, stream: Setup) -> None:
    with _channel(stream) as channel:
        for i in range(10):
            stream.send(frame(b"m%d" % i), i % 3)
        stream.peer.shutdown(socket.SHUT_WR)
        assert len(list(channel)) == 10
        stream.assert_nothing_kept("iterated", 10)


def test_fds_attached_to_the_middle_of_a_message(no_fd_leak: None, stream: Setup) -> None:
    """A peer attaches fds to the second half of a frame, not to its start.

    When both halves come in one read, the reader cannot tell where the fds were
    attached, and hands them over with the message; else it refuses them. Either way
    nothing stays open once the caller closes what it was given.
    """
    with _channel(stream) as channel:
        whole = frame(b"A" * 1000)
        stream.peer.sendall(whole[:500])
        stream.send(whole[500:], 3)
        try:
            data, fds = channel.recv_with_fds()
        except ProtocolError:
            outcome = "ProtocolError"
        else:
            assert data == b"A" * 1000
            outcome = f"delivered with the message ({len(fds)} fds)"
            for fd in fds:
                os.close(fd)
        print(f"fds attached mid-message: {outcome}")
        stream.assert_nothing_kept("mid_message", 3)


def test_fds_after_the_start_of_a_message_was_read(no_fd_leak: None, stream: Setup) -> None:
    """The first half of a frame is read (and buffered) before the second half arrives
    with fds: the reader knows they do not sit at a message start and refuses them."""
    channel = _channel(stream)
    whole = frame(b"A" * 1000)
    outcome: list[BaseException] = []

    def read() -> None:
        try:
            channel.recv_with_fds()
        except BaseException as exc:
            outcome.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        stream.peer.sendall(whole[:500])
        wait_drained(stream.peer, time.monotonic() + 20)
        stream.send(whole[500:], 3)
        reader.join(20)
    finally:
        if reader.is_alive():
            channel.close()
            reader.join(10)
    with channel:
        assert len(outcome) == 1
        assert isinstance(outcome[0], ProtocolError), repr(outcome[0])
        stream.assert_nothing_kept("after_message_start", 3)


def test_fds_inside_a_large_message_read_into_a_buffer(no_fd_leak: None, stream: Setup) -> None:
    """The same while the payload goes straight into the caller's buffer (recv_into):
    fds that arrive in the middle of a payload are refused and closed."""
    channel = _channel(stream)
    size = 4 << 20
    stream.peer.sendall(size.to_bytes(4, "big") + b"B" * 1000)
    buffer = bytearray(size)
    fed: list[BaseException] = []

    def feed() -> None:
        try:
            wait_drained(stream.peer, time.monotonic() + 20)  # the start has been read
            stream.send(b"B" * 1000, 3)
            stream.peer.sendall(b"B" * (size - 2000))
        except OSError as exc:  # the reader gave up and closed: expected
            fed.append(exc)

    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        with pytest.raises(ProtocolError):
            channel.recv_into(buffer)
    finally:
        channel.close()
        feeder.join(30)
    assert not feeder.is_alive()
    stream.before.discard(stream.reader_fd)
    stream.assert_nothing_kept("mid_message_recv_into", 3)


def test_fds_with_a_truncated_frame_then_eof(no_fd_leak: None, stream: Setup) -> None:
    with _channel(stream) as channel:
        stream.send((1000).to_bytes(4, "big") + b"B" * 10, 3)
        stream.peer.shutdown(socket.SHUT_WR)
        with pytest.raises(ProtocolError):
            channel.recv_with_fds()
        stream.assert_nothing_kept("truncated_frame", 3)


def test_fds_with_a_frame_over_max_message_size(no_fd_leak: None, stream: Setup) -> None:
    with _channel(stream, max_message_size=1024) as channel:
        stream.send((1 << 30).to_bytes(4, "big"), 3)
        with pytest.raises(ProtocolError):
            channel.recv_with_fds()
        stream.assert_nothing_kept("over_max_message_size", 3)


def test_fds_left_unread_when_the_channel_closes(no_fd_leak: None, stream: Setup) -> None:
    """Messages with fds still queued (in the decoder and in the kernel) at close()."""
    channel = _channel(stream)
    stream.send(frame(b"first") + frame(b"second"), 4)
    stream.send(frame(b"third"), 4)
    assert channel.recv() == b"first"
    channel.close()
    stream.before.discard(stream.reader_fd)
    stream.assert_nothing_kept("unread_at_close", 8)


def test_fds_on_a_packet_read_with_plain_recv(no_fd_leak: None, packet: Setup) -> None:
    with _channel(packet) as channel:
        packet.send(b"packet with fds", 5)
        assert channel.recv() == b"packet with fds"
        packet.assert_nothing_kept(f"plain_recv_packet[{packet.name}]", 5)


def test_more_fds_than_max_fds_on_a_packet(no_fd_leak: None, packet: Setup) -> None:
    with _channel(packet, max_fds=2) as channel:
        packet.send(b"packet", 6)
        with pytest.raises(TooManyFds):
            channel.recv_with_fds()
        packet.assert_nothing_kept(f"max_fds_packet[{packet.name}]", 6)


def test_async_channel_plain_recv_and_too_many(no_fd_leak: None, stream: Setup) -> None:
    async def scenario() -> None:
        async with AsyncChannel(stream.reader_fd, max_fds=2) as channel:
            stream.before = open_fds()
            stream.send(frame(b"two"), 2)
            stream.send(frame(b"three"), 3)
            assert await asyncio.wait_for(channel.recv(), 10) == b"two"
            with pytest.raises(TooManyFds):
                await asyncio.wait_for(channel.recv(), 10)
            stream.assert_nothing_kept("async", 5)

    asyncio.run(scenario())
