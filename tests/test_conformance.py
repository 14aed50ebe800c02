"""One conformance suite for every channel: {Channel, AsyncChannel} x {SOCK_STREAM,
SOCK_SEQPACKET, SOCK_DGRAM}, in the manner of trio's ``check_one_way_stream``.

Each test is written once against :class:`End`, a small blocking facade. For
``Channel`` it calls the methods directly; for ``AsyncChannel`` it runs each
coroutine to completion on one event loop shared by both ends. Where a test needs
both ends busy at once (a message larger than the socket buffer), it uses
:meth:`Pair.transfer`: a sender thread for ``Channel``, two tasks for ``AsyncChannel``.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any, TypeVar

import pytest

from unix_socketpair import (
    SOCK_DGRAM,
    SOCK_SEQPACKET,
    SOCK_STREAM,
    AsyncChannel,
    Channel,
    ChannelClosed,
    Credentials,
    MessageTooLarge,
    ProtocolError,
    TooManyFds,
)
from unix_socketpair._ancillary import close_fds

T = TypeVar("T")
TYPE_NAMES = {SOCK_STREAM: "stream", SOCK_SEQPACKET: "seqpacket", SOCK_DGRAM: "dgram"}
HAS_EOF = (SOCK_STREAM, SOCK_SEQPACKET)  # a datagram socket has no end of file


class End:
    """One end of a pair, with blocking methods whatever the channel class."""

    def __init__(self, channel: Channel | AsyncChannel, loop: asyncio.AbstractEventLoop | None):
        self.channel = channel
        self.loop = loop

    def _run(self, make: Callable[[], Awaitable[T]]) -> T:
        assert self.loop is not None

        async def bounded() -> T:
            return await asyncio.wait_for(make(), timeout=30)

        return self.loop.run_until_complete(bounded())

    @property
    def is_async(self) -> bool:
        return self.loop is not None

    def send(self, data: Any, fds: Iterable[int] = ()) -> None:
        fds = list(fds)
        ch = self.channel
        if isinstance(ch, Channel):
            ch.send(data, fds=fds) if fds else ch.send(data)
        else:
            self._run(lambda: ch.send(data, fds=fds) if fds else ch.send(data))

    def send_many(self, messages: list[Any]) -> None:
        ch = self.channel
        if isinstance(ch, Channel):
            ch.send_many(messages)
        else:
            self._run(lambda: ch.send_many(messages))

    def recv(self) -> bytes:
        ch = self.channel
        if isinstance(ch, Channel):
            return ch.recv(timeout=30)
        return self._run(ch.recv)

    def recv_with_fds(self) -> tuple[bytes, list[int]]:
        ch = self.channel
        if isinstance(ch, Channel):
            return ch.recv_with_fds(timeout=30)
        return self._run(ch.recv_with_fds)

    def recv_into(self, buffer: bytearray | memoryview) -> int:
        ch = self.channel
        if isinstance(ch, Channel):
            return ch.recv_into(buffer, timeout=30)
        return self._run(lambda: ch.recv_into(buffer))

    def messages(self) -> list[bytes]:
        """Iterate until end of file."""
        ch = self.channel
        if isinstance(ch, Channel):
            return list(ch)

        async def collect() -> list[bytes]:
            return [message async for message in ch]

        return self._run(collect)

    def shutdown_write(self) -> None:
        self.channel.shutdown_write()

    def close(self) -> None:
        ch = self.channel
        if isinstance(ch, Channel) or self.loop is None or self.loop.is_closed():
            ch.close()
        else:
            self._run(ch.aclose)


class Pair:
    """Two connected ends of one channel class and socket type."""

    def __init__(self, cls: type[Channel] | type[AsyncChannel], sock_type: int, **options: Any):
        self.cls = cls
        self.type = sock_type
        self.loop = asyncio.new_event_loop() if cls is AsyncChannel else None
        first, second = cls.pair(sock_type, **options)
        self.a = End(first, self.loop)
        self.b = End(second, self.loop)

    def transfer(
        self, messages: list[bytes], receive: Callable[[End], bytes] | None = None
    ) -> list[bytes]:
        """Send *messages* from a to b while b receives them (each with *receive*,
        default ``End.recv``); return what b received."""
        count = len(messages)
        if self.loop is None:
            failure: list[BaseException] = []

            def send_all() -> None:
                try:
                    for message in messages:
                        self.a.send(message)
                except BaseException as exc:
                    failure.append(exc)

            thread = threading.Thread(target=send_all, daemon=True)
            thread.start()
            try:
                got = [(receive or End.recv)(self.b) for _ in range(count)]
            finally:
                thread.join(30)
            assert not thread.is_alive(), "the sender hung"
            if failure:
                raise failure[0]
            return got
        a_ch, b_ch = self.a.channel, self.b.channel
        assert isinstance(a_ch, AsyncChannel) and isinstance(b_ch, AsyncChannel)

        async def send_all_async() -> None:
            for message in messages:
                await a_ch.send(message)
            await a_ch.drain()

        async def receive_all() -> list[bytes]:
            return [await b_ch.recv() for _ in range(count)]

        async def both() -> list[bytes]:
            _, got = await asyncio.wait_for(asyncio.gather(send_all_async(), receive_all()), 60)
            return got

        return self.loop.run_until_complete(both())

    def close(self) -> None:
        for end in (self.a, self.b):
            end.channel.close()
        if self.loop is not None:
            self.loop.close()


KINDS = [
    pytest.param((cls, sock_type), id=f"{cls.__name__}-{TYPE_NAMES[sock_type]}")
    for cls in (Channel, AsyncChannel)
    for sock_type in (SOCK_STREAM, SOCK_SEQPACKET, SOCK_DGRAM)
]
# The kinds with an end of file (a datagram socket has none).
EOF_KINDS = [param for param in KINDS if param.values[0][1] in HAS_EOF]  # type: ignore[index]


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> tuple[type[Any], int]:
    value: tuple[type[Any], int] = request.param
    return value


@pytest.fixture
def make_pair(kind: tuple[type[Any], int], no_fd_leak: None) -> Iterator[Callable[..., Pair]]:
    """Make pairs of the kind under test (with options); all closed at the end."""
    made: list[Pair] = []

    def make(**options: Any) -> Pair:
        pair = Pair(kind[0], kind[1], **options)
        made.append(pair)
        return pair

    yield make
    for pair in made:
        pair.close()


@pytest.fixture
def pair(make_pair: Callable[..., Pair]) -> Pair:
    return make_pair()


def sizes_for(sock_type: int) -> list[int]:
    """0, 1, 64 KiB and, where one message may be that large, 1 MiB: a packet
    carries at most about SO_SNDBUF (~208 KiB by default)."""
    return [0, 1, 64 * 1024] + ([1 << 20] if sock_type == SOCK_STREAM else [])


def payload(size: int, seed: int = 0) -> bytes:
    return bytes((i * 31 + seed) % 256 for i in range(min(size, 4096))) * (size // 4096) + bytes(
        (i * 31 + seed) % 256 for i in range(size % 4096)
    )


def inode(fd: int) -> int:
    return os.fstat(fd).st_ino


# -- round trips and order ------------------------------------------------------


def test_round_trips_of_every_size_both_ways(pair: Pair) -> None:
    for size in sizes_for(pair.type):
        message = payload(size, seed=size % 251)
        assert pair.transfer([message]) == [message], f"{size} bytes a -> b"
        pair.a, pair.b = pair.b, pair.a
        assert pair.transfer([message]) == [message], f"{size} bytes b -> a"
        pair.a, pair.b = pair.b, pair.a


def test_bytes_like_inputs(pair: Pair) -> None:
    for message in (b"bytes", bytearray(b"bytearray"), memoryview(b"xmemoryviewx")[1:-1]):
        pair.a.send(message)
        assert pair.b.recv() == bytes(message)


def test_order_is_kept(pair: Pair) -> None:
    messages = [payload(i % 300, seed=i) + i.to_bytes(4, "big") for i in range(2000)]
    assert pair.transfer(messages) == messages


def test_send_many_keeps_order_and_boundaries(pair: Pair) -> None:
    # 40: what a datagram socket queues without a reader (its queue is short).
    messages = [payload(i % 50, seed=i) for i in range(40)]
    pair.a.send_many(messages)
    assert [pair.b.recv() for _ in messages] == messages


def test_every_way_of_receiving_gets_the_same_messages(pair: Pair) -> None:
    messages = [payload(size, seed=size) for size in (0, 3, 100, 5000)]

    def via_recv_into(end: End) -> bytes:
        buffer = bytearray(8192)
        return bytes(buffer[: end.recv_into(buffer)])

    def via_recv_with_fds(end: End) -> bytes:
        message, fds = end.recv_with_fds()
        assert fds == []
        return message

    for receive in (End.recv, via_recv_into, via_recv_with_fds):
        assert pair.transfer(messages, receive) == messages


# -- descriptors ----------------------------------------------------------------


def test_fds_travel_with_their_message_and_belong_to_the_receiver(pair: Pair) -> None:
    r, w = os.pipe()
    try:
        pair.a.send(b"with fds", fds=[r, w])
        pair.a.send(b"without")
        message, fds = pair.b.recv_with_fds()
        try:
            assert message == b"with fds"
            assert [inode(fd) for fd in fds] == [inode(r), inode(w)]
            assert fds[0] not in (r, w) and fds[1] not in (r, w)
            assert not any(os.get_inheritable(fd) for fd in fds), "received fds are inheritable"
        finally:
            close_fds(fds)
        assert pair.b.recv_with_fds() == (b"without", [])
        os.fstat(r)  # the sender's own stay open: they are still the caller's
        os.fstat(w)
    finally:
        os.close(r)
        os.close(w)


def test_fds_not_asked_for_are_closed(pair: Pair) -> None:
    """recv() and recv_into() close the descriptors of the message they return
    (the no_fd_leak fixture checks)."""
    r, w = os.pipe()
    try:
        pair.a.send(b"one", fds=[r])
        pair.a.send(b"two", fds=[w, r])
        assert pair.b.recv() == b"one"
        buffer = bytearray(10)
        assert pair.b.recv_into(buffer) == 3 and buffer[:3] == b"two"
    finally:
        os.close(r)
        os.close(w)


def test_recv_into_a_too_small_buffer_keeps_the_message(pair: Pair) -> None:
    r, w = os.pipe()
    try:
        pair.a.send(b"0123456789", fds=[r])
        pair.a.send(b"next")
        with pytest.raises(MessageTooLarge) as info:
            pair.b.recv_into(bytearray(4))
        assert (info.value.size, info.value.limit) == (10, 4)
        message, fds = pair.b.recv_with_fds()  # still queued, with its fds
        try:
            assert message == b"0123456789" and [inode(fd) for fd in fds] == [inode(r)]
        finally:
            close_fds(fds)
        small = bytearray(4)
        assert pair.b.recv_into(small) == 4 and small == b"next"
    finally:
        os.close(r)
        os.close(w)


# -- end of file, closing -------------------------------------------------------


@pytest.mark.parametrize("kind", EOF_KINDS)
def test_end_of_file_is_channel_closed_and_ends_iteration(pair: Pair) -> None:
    pair.a.send(b"last")
    pair.a.close()
    assert pair.b.recv() == b"last"
    with pytest.raises(ChannelClosed):
        pair.b.recv()
    assert pair.b.messages() == []


@pytest.mark.parametrize("kind", EOF_KINDS)
def test_iteration_yields_each_message_then_stops(pair: Pair) -> None:
    messages = [payload(i * 10, seed=i) for i in range(20)]
    for message in messages:
        pair.a.send(message)
    pair.a.shutdown_write()
    assert pair.b.messages() == messages
    pair.b.send(b"still receiving after shutdown_write")
    assert pair.a.recv() == b"still receiving after shutdown_write"


def test_a_closed_channel_refuses_everything_with_ebadf(pair: Pair) -> None:
    pair.a.close()
    pair.a.close()  # idempotent
    assert pair.a.channel.closed and pair.a.channel.fileno() == -1
    calls: list[Callable[[], object]] = [
        lambda: pair.a.send(b"x"),
        lambda: pair.a.send_many([b"x"]),
        pair.a.recv,
        pair.a.recv_with_fds,
        lambda: pair.a.recv_into(bytearray(10)),
        pair.a.channel.peer_credentials,
    ]
    for call in calls:
        with pytest.raises(OSError) as info:
            call()
        assert info.value.errno == errno.EBADF


# -- limits ---------------------------------------------------------------------


def test_max_message_size_is_checked_before_anything_is_sent(
    make_pair: Callable[..., Pair],
) -> None:
    pair = make_pair(max_message_size=10)
    assert pair.a.channel.max_message_size == 10
    with pytest.raises(MessageTooLarge) as info:
        pair.a.send(b"x" * 11)
    assert (info.value.size, info.value.limit) == (11, 10)
    with pytest.raises(MessageTooLarge):
        pair.a.send_many([b"ok", b"x" * 11])
    pair.a.send(b"y" * 10)
    assert pair.b.recv() == b"y" * 10


def test_a_message_over_the_receivers_limit_is_refused(kind: tuple[type[Any], int]) -> None:
    cls, sock_type = kind
    x, y = socket.socketpair(socket.AF_UNIX, sock_type)
    loop = asyncio.new_event_loop() if cls is AsyncChannel else None
    big = End(cls(x), loop)
    small = End(cls(y, max_message_size=10), loop)
    try:
        big.send(b"z" * 11)
        with pytest.raises((ProtocolError, MessageTooLarge)):
            small.recv()
    finally:
        big.channel.close()
        small.channel.close()
        if loop is not None:
            loop.close()


def test_max_fds_is_checked_before_anything_is_sent(make_pair: Callable[..., Pair]) -> None:
    pair = make_pair(max_fds=2)
    r, w = os.pipe()
    try:
        with pytest.raises(TooManyFds) as info:
            pair.a.send(b"three", fds=[r, w, r])
        assert (info.value.count, info.value.limit) == (3, 2)
        pair.a.send(b"two", fds=[r, w])
        message, fds = pair.b.recv_with_fds()
        close_fds(fds)
        assert message == b"two" and len(fds) == 2
    finally:
        os.close(r)
        os.close(w)


# -- credentials ----------------------------------------------------------------


def test_peer_credentials_name_this_process_for_an_in_process_pair(pair: Pair) -> None:
    me = Credentials(os.getpid(), os.getuid(), os.getgid())
    assert pair.b.channel.peer_credentials() == me
    pair.a.send(b"stamped")
    assert pair.b.recv() == b"stamped"
    assert pair.b.channel.peer_credentials() == me


@pytest.mark.parametrize("kind", EOF_KINDS)
def test_a_peer_closing_with_unread_messages_still_delivers_what_it_sent(pair: Pair) -> None:
    """The peer closes while messages to it are unread (the kernel then reports
    ECONNRESET): everything it sent before closing still arrives, in order, before
    ChannelClosed, never after it."""
    pair.a.send(b"never read by b")
    pair.b.send(b"")
    pair.b.send(b"sent before close")
    pair.b.channel.close()
    assert pair.a.recv() == b""
    assert pair.a.recv() == b"sent before close"
    with pytest.raises(ChannelClosed):
        pair.a.recv()
    with pytest.raises(ChannelClosed):
        pair.a.recv()


# -- a message's failure comes after the messages before it ------------------------


def test_a_message_with_too_many_fds_is_refused_after_the_messages_before_it(
    kind: tuple[type[Any], int], no_fd_leak: None
) -> None:
    """Two messages, then one with more descriptors than the receiver's max_fds:
    the two are delivered (by recv_many, which takes every message already in,
    and by recv), and only then is TooManyFds raised, by the call that would
    have returned the third. The descriptors are closed, none leaks."""
    cls, sock_type = kind
    x, y = socket.socketpair(socket.AF_UNIX, sock_type)
    loop = asyncio.new_event_loop() if cls is AsyncChannel else None
    sender = End(cls(x), loop)
    receiver = End(cls(y, max_fds=1), loop)
    r, w = os.pipe()
    try:
        sender.send(b"one")
        sender.send(b"two")
        sender.send(b"three", fds=[r, w])
        ch = receiver.channel
        got: list[bytes] = []
        while len(got) < 2:
            batch = ch.recv_many() if isinstance(ch, Channel) else receiver._run(ch.recv_many)
            got += batch
        assert got == [b"one", b"two"]
        with pytest.raises(TooManyFds) as info:
            receiver.recv()
        assert (info.value.count, info.value.limit) == (2, 1)
    finally:
        os.close(r)
        os.close(w)
        sender.channel.close()
        receiver.channel.close()
        if loop is not None:
            loop.close()


# -- an exception between a read and its accounting loses nothing ------------------


@pytest.mark.parametrize("sock_type", [SOCK_SEQPACKET, SOCK_DGRAM], ids=["seqpacket", "dgram"])
def test_an_exception_while_a_packet_is_accounted_for_loses_nothing(sock_type: int) -> None:
    """An exception raised where a signal handler's can be (here: when the copy
    of a packet out of the receive buffer returns) leaves the packet to the next
    receive: nothing lost, nothing duplicated."""
    import sys

    class Interrupt(Exception):
        pass

    armed = [True]

    def profiler(frame: Any, event: str, arg: Any) -> None:
        if (
            armed[0]
            and event == "c_return"
            and getattr(arg, "__name__", "") == "tobytes"
            and "unix_socketpair" in frame.f_code.co_filename
        ):
            armed[0] = False
            raise Interrupt

    a, b = Channel.pair(sock_type)
    with a, b:
        for i in range(3):
            a.send(b"packet %d" % i)
        sys.setprofile(profiler)
        try:
            with pytest.raises(Interrupt):
                b.recv()
        finally:
            sys.setprofile(None)
        assert not armed[0]
        assert [b.recv(), b.recv(), b.recv()] == [b"packet 0", b"packet 1", b"packet 2"]


# -- cancelling a receive straight into the caller's buffer ------------------------


def test_a_cancelled_async_recv_into_of_a_large_message_loses_nothing(no_fd_leak: None) -> None:
    """A 1 MiB message is being read straight into the caller's buffer when its
    recv_into is cancelled: what arrived goes back into the channel, and the next
    receive returns the whole message."""
    import fcntl
    import struct
    import termios

    size = 1 << 20
    message = payload(size, seed=7)
    x, y = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    x.setblocking(False)
    loop = asyncio.new_event_loop()

    def unread(sock: socket.socket) -> int:
        raw = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
        value: int = struct.unpack("i", raw)[0]
        return value

    async def scenario() -> None:
        channel = AsyncChannel(y)
        try:
            frame = struct.pack(">I", size) + message
            first = x.send(frame[: 200 * 1024])
            buffer = bytearray(size)
            task = asyncio.ensure_future(channel.recv_into(buffer))
            while not task.done() and unread(y):  # until the reader took all there is
                await asyncio.sleep(0)
            assert not task.done()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            rest = memoryview(frame)[first:]

            async def send_rest() -> None:
                view = rest
                while view:
                    try:
                        view = view[x.send(view) :]
                    except BlockingIOError:
                        await asyncio.sleep(0)

            sender = asyncio.ensure_future(send_rest())
            assert await asyncio.wait_for(channel.recv(), 30) == message
            await sender
        finally:
            channel.close()

    try:
        loop.run_until_complete(scenario())
    finally:
        loop.close()
        x.close()
