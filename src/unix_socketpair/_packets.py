"""Sans-IO receiving for the packet types (``SOCK_SEQPACKET``, ``SOCK_DGRAM``).

Each packet is one message. :class:`PacketDecoder` is the packet twin of
:class:`~unix_socketpair._codec.StreamDecoder` and has the same interface for
everything a channel does with received data, so that the blocking and asyncio
channels choose one of the two at construction and never ask again which kind
of socket they read: the I/O layer reads into :meth:`~PacketDecoder.get_buffer`
(or, after :meth:`~PacketDecoder.begin_direct`, into the caller's buffer
first),
appends the raw ``recvmsg_into`` result to :attr:`~PacketDecoder.inbox`, and
calls :meth:`~PacketDecoder.commit_read`, which makes every decision about it:
end of file, the sender's credentials, descriptors over the limit or truncated
by the kernel, a packet over ``max_message_size`` or cut short by the buffer.
No sockets here.
"""

from __future__ import annotations

import _socket
import contextlib
import mmap
import os
import socket
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any, Final

from ._ancillary import ANCBUFSIZE, MSG_CTRUNC, close_fds, split_ancillary
from ._codec import (
    _CLOSED,
    AGAIN,
    HANDED_INTO,
    NEED_DATA,
    NOT_USUAL,
    Buffer,
    Receiver,
    _NeedData,
    _too_small,
    payload_of,
)
from ._errors import ChannelClosed, FdsTruncated, MessageTooLarge, ProtocolError, TooManyFds

__all__ = ["PacketDecoder", "encode_packet", "encode_packets", "packet_capacity"]

_MSG_TRUNC: Final = int(socket.MSG_TRUNC)
_CLOEXEC_BY_KERNEL: Final = bool(getattr(socket, "MSG_CMSG_CLOEXEC", 0))


def packet_capacity() -> int:
    """The largest packet a peer can send without privileges (2 x wmem_max)."""
    try:
        with open("/proc/sys/net/core/wmem_max") as f:
            return 2 * int(f.read())
    except (OSError, ValueError):
        return 4 * 1024 * 1024


def encode_packet(data: object, max_message_size: int) -> list[Buffer]:
    """Frame one message as a packet: ``[payload]`` (the payload itself, not a
    copy; one ``sendmsg``).

    Raises:
        TypeError: *data* is not bytes-like.
        MessageTooLarge: over *max_message_size*.
    """
    payload, size = payload_of(data)
    if size > max_message_size:
        raise MessageTooLarge(
            f"message of {size} bytes is over max_message_size ({max_message_size} bytes)",
            size=size,
            limit=max_message_size,
        )
    return [payload]


def encode_packets(messages: Iterable[object], max_message_size: int) -> Iterator[list[Buffer]]:
    """Frame many messages, one packet each (see :func:`encode_packet`).

    As ``encode_many``: a list or tuple is checked whole before the first packet
    is yielded (a bad item means nothing was sent); other iterables item by item.
    """
    if isinstance(messages, (list, tuple)):
        yield from [encode_packet(item, max_message_size) for item in messages]
        return
    for item in messages:
        yield encode_packet(item, max_message_size)


class PacketDecoder(Receiver):
    """Turns ``recvmsg_into`` results of a packet socket into messages.

    Messages accounted for but not yet taken wait in order (a deque of
    ``(payload, fds)``); the decoder owns their descriptors until they are
    returned, and :meth:`close` closes the ones it still holds.

    State: open; at end of file (``ChannelClosed`` from then on, once every
    message before it was taken); broken (``ProtocolError``/``TooManyFds``
    once, then ``ProtocolError`` naming the reason on every call); closed
    (``OSError(EBADF)``). A message whose descriptors the kernel truncated is
    dropped with ``FdsTruncated`` and the decoder stays open: every packet is
    whole on its own, so the stream of messages is still in step.

    Not thread-safe: the channel serialises its receivers.
    """

    # take_frame() (the stream decoder's lockless take) sees no buffered frame
    # here and leaves every message to the methods below.
    _rpos: Final = 0
    _wpos: Final = 0
    #: One read yields at most one message (a receiver that wants every
    #: message already queued reads again without waiting).
    ONE_PER_READ: Final = True

    __slots__ = (
        "_into",
        "_max",
        "_max_fds",
        "_passcred",
        "_ready",
        "_view",
        "_zero_is_eof",
    )

    def __init__(self, max_message_size: int, max_fds: int, *, passcred: bool, dgram: bool) -> None:
        super().__init__()
        self._max = max_message_size
        self._max_fds = max_fds
        cap = min(max_message_size, packet_capacity()) + 1
        # An anonymous mapping: room for the largest packet a peer can send
        # (megabytes) costs memory only for the pages a packet actually fills,
        # where a bytearray would zero-fill all of it up front.
        self._view = memoryview(mmap.mmap(-1, cap) if cap > 256 * 1024 else bytearray(cap))
        self._passcred = passcred
        # How an end of file looks: with SO_PASSCRED every real packet carries
        # its sender's credentials, so a read of 0 bytes without them is the
        # end; without it, an empty SOCK_DGRAM packet is a message (a datagram
        # socket has no end of file).
        self._zero_is_eof = passcred or not dgram
        self._ready: deque[tuple[bytes, list[int]]] = deque()
        # During a receive into a caller's buffer (begin_direct): that buffer
        # (a packet that lands in it whole sets _landed to its size).
        self._into: memoryview | None = None

    # -- input --------------------------------------------------------------

    def get_buffer(self) -> memoryview:
        """The packet buffer, for one read (room for the largest packet + 1)."""
        return self._view

    def read_buffers(self) -> tuple[memoryview, ...]:
        """The buffers of the next read: the caller's buffer first during a
        receive into it (:meth:`start_into`), then the packet buffer."""
        into = self._into
        return (self._view,) if into is None else (into, self._view)

    def read_commit(self, sock: _socket.socket, flags: int) -> int:
        """``StreamDecoder.read_commit``'s interface for a packet socket (so a
        channel calls one or the other, chosen at construction): one read into
        :meth:`read_buffers`, its result left in :attr:`inbox` (0) for
        :meth:`commit_read`, which makes every decision about a packet; AGAIN
        (nothing to read, nothing changed); NOT_USUAL (a result already waits
        in the inbox, or a receive into a caller's buffer is under way: nothing
        read)."""
        inbox = self.inbox
        if inbox or self._into is not None:
            return NOT_USUAL
        try:
            inbox.append(sock.recvmsg_into((self._view,), ANCBUFSIZE, flags))
        except BlockingIOError:
            return AGAIN
        return 0

    def commit_read(self) -> None:
        """Account for the oldest result in :attr:`inbox`, read into
        :meth:`read_buffers`. Everything is decided before the entry is
        dropped, so an exception before that leaves the packet to the next call.

        Raises nothing about the packet itself: what it means is raised in
        order, by the call that would return it, after the messages before it
        (:meth:`next_message` and the others):
            ChannelClosed: end of file (the state from then on).
            FdsTruncated: the kernel truncated the packet's descriptors; that
                message was dropped (what arrived is closed); still open.
            TooManyFds: over ``max_fds`` (all closed); broken from then on.
            ProtocolError: a packet over ``max_message_size`` or cut short by
                the buffer; broken from then on.
        """
        inbox = self.inbox
        n, anc, flags = inbox[0][:3]
        fds, creds = split_ancillary(anc) if anc else ([], None)
        into = self._into
        if n == 0 and self._zero_is_eof and creds is None:
            self._eof, self._into = True, None
            del inbox[0]
            close_fds(fds)
            return
        if creds is not None:
            self.creds = creds
        failure: Exception | None = None
        if flags & MSG_CTRUNC:
            failure = FdsTruncated(
                f"the kernel truncated the descriptors sent with this message (MSG_CTRUNC: "
                f"this process may have no free descriptor slots); the {len(fds)} that did "
                f"arrive were closed; the message was dropped and the channel is still usable"
            )
        elif len(fds) > self._max_fds:
            reason = (
                f"the peer sent {len(fds)} file descriptors with one message, over max_fds="
                f"{self._max_fds}; all of them were closed"
            )
            failure = TooManyFds(
                reason + "; the channel is unusable", count=len(fds), limit=self._max_fds
            )
        else:
            room = len(self._view) + (0 if into is None else len(into))
            if n > self._max or flags & _MSG_TRUNC or n > room:
                if n > self._max:
                    reason = (
                        f"the peer sent a packet of {n} bytes, over max_message_size "
                        f"({self._max} bytes)"
                    )
                else:
                    reason = f"a packet was truncated to the {room} bytes of the receive buffer"
                failure = ProtocolError(reason + "; the channel is unusable")
        if failure is not None:
            # In the queue's order: what came before it is still delivered.
            entry: tuple[bytes, Any] = (b"", failure)
            del inbox[0]
            self._ready.append(entry)
            self._into = None
            if not isinstance(failure, FdsTruncated):
                self._broken = reason  # no more input is wanted
            close_fds(fds)
            return
        if not _CLOEXEC_BY_KERNEL:
            for fd in fds:
                os.set_inheritable(fd, False)
        if into is None:
            message = (self._view[:n].tobytes(), fds)
            del inbox[0]
            self._ready.append(message)
        elif n <= len(into):
            # Landed whole in the caller's buffer: taken (and recorded) now.
            self._landed, self.last_into, self.handed_fds = n, n, fds
            del inbox[0]
            self.handed.append(HANDED_INTO)
        else:
            # Larger than the caller's buffer: it stays queued, whole.
            limit = len(into)
            message = (into.tobytes() + self._view[: n - limit].tobytes(), fds)
            del inbox[0]
            self._ready.appendleft(message)
            self._into = None

    # -- output -------------------------------------------------------------

    def next_message(self) -> bytes | _NeedData:
        """The next message's payload (its descriptors closed), or NEED_DATA.

        Raises: ``ChannelClosed`` at end of file, ``ProtocolError`` once broken.
        """
        ready = self._ready
        if ready:
            payload, fds = ready[0]
            if type(fds) is not list:
                self._raise_failure()
            ready.popleft()
            self.handed.append(payload)
            if fds:
                close_fds(fds)
            return payload
        return self._nothing_ready()

    def next_message_with_fds(self) -> tuple[bytes, list[int]] | _NeedData:
        """The next message and its descriptors (owned by the caller), or NEED_DATA."""
        ready = self._ready
        if ready:
            message = ready[0]
            if type(message[1]) is not list:
                self._raise_failure()
            ready.popleft()
            self.handed.append(message[0])
            self.handed_fds = message[1]
            return message
        return self._nothing_ready()

    def commit(self) -> None:
        """:meth:`commit_read` (the name the stream decoder's fast path calls)."""
        self.commit_read()

    def take_more(self, out: list[bytes], max_count: int) -> None:
        """Append messages accounted for to *out* up to *max_count* in all,
        stopping (raising nothing) before a failure: the next call raises it."""
        ready = self._ready
        while ready and len(out) < max_count and type(ready[0][1]) is list:
            payload, fds = ready[0]
            ready.popleft()
            self.handed.append(payload)
            out.append(payload)
            if fds:
                close_fds(fds)

    def _take_whole(self, record: list[bytes], need: object = None) -> bytes | None:
        """py_take_frame()'s step: the next message if it has no descriptors
        (*need* is not used: the C take_frame takes nothing from a packet
        decoder, and the callers ask next_message() after None)."""
        ready = self._ready
        if not ready or ready[0][1]:
            return None  # (a failure too)
        payload = ready[0][0]
        ready.popleft()
        record.append(payload)
        return payload

    def take_ready(self, max_count: int) -> list[bytes]:
        """Up to *max_count* messages accounted for (descriptors closed); an
        empty list if none. Raises as :meth:`next_message` only when none."""
        out: list[bytes] = []
        ready = self._ready
        if not ready:
            self._nothing_ready()
            return out
        while ready and len(out) < max_count:
            payload, fds = ready[0]
            if type(fds) is not list:
                if out:
                    return out  # raised by the next call
                self._raise_failure()
            ready.popleft()
            self.handed.append(payload)
            out.append(payload)
            if fds:
                close_fds(fds)
        return out

    def iter_ready(self) -> Iterator[bytes]:
        """Yield every message accounted for, then return."""
        while self._ready:
            msg = self.next_message()
            assert not isinstance(msg, _NeedData)
            yield msg

    def begin_direct(self, target: memoryview) -> bool:
        """After :meth:`into` returned NEED_DATA: the next read goes into
        *target* first (:meth:`read_buffers`), so a packet that fits is not
        copied. Returns True (the stream decoder's twin may decline)."""
        self._into, self._landed = target, -1
        return True

    def into(self, target: memoryview) -> int | _NeedData:
        """Deliver the next message into *target*: its size, or NEED_DATA.

        A message that landed there (:meth:`begin_direct`) or one accounted for
        before is delivered (copied); its descriptors are closed.

        Raises:
            MessageTooLarge: the next message is larger than *target*; it
                stays queued (*target*'s contents are then unspecified).
            others: as :meth:`next_message`.
        """
        landed = self._landed
        if landed >= 0:
            self._landed, self._into = -1, None
            close_fds(self.handed_fds)
            self.handed_fds = []
            return landed
        ready = self._ready
        if ready:
            self._into = None
            payload, fds = ready[0]
            if type(fds) is not list:
                self._raise_failure()
            size = len(payload)
            if size > len(target):
                raise _too_small(size, len(target))
            target[:size] = payload
            ready.popleft()
            self.last_into = size
            self.handed.append(HANDED_INTO)
            if fds:
                close_fds(fds)
            return size
        if self._into is None:
            self._nothing_ready()
        return NEED_DATA

    def interrupted_into(self) -> None:
        """An exception is leaving a receive into a caller's buffer: a packet
        read but not yet accounted for (the exception came between) is
        accounted for now; one that landed whole in the caller's buffer is
        the caller's give-back's (see :attr:`handed`)."""
        if self._into is not None:
            try:
                if self.inbox:
                    self.commit_read()
            finally:
                self._into = None

    def abort_direct(self) -> None:
        """The receive into a caller's buffer ends (the channel was closed)."""
        self._into, self._landed = None, -1

    def put_back(self, messages: list[bytes], fds: list[int] | None = None) -> None:
        """Make *messages* the next ones out again, in order (*fds*: the first
        one's descriptors); clear :attr:`handed` and empty *messages* in the
        same step (see StreamDecoder.put_back)."""
        self._landed = -1
        if not messages or self._broken is _CLOSED:
            self.handed, self.repairs, messages[:] = [], self.repairs + 1, ()
            return
        back: list[tuple[bytes, Any]] = [(m, []) for m in messages]
        if fds:
            back[0] = (messages[0], fds)
        ready = self._ready
        self._ready, self.handed, self.repairs, messages[:] = (
            deque([*back, *ready]),
            [],
            self.repairs + 1,
            (),
        )

    # -- state --------------------------------------------------------------

    @property
    def reading_direct(self) -> bool:
        """True while the next read goes into a caller's buffer (begin_direct)."""
        return self._into is not None

    def buffered(self) -> int:
        """Bytes of the messages accounted for and not yet taken."""
        return sum(len(m[0]) for m in self._ready) if self._ready else 0  # (failures: b"")

    def pending_fds(self) -> int:
        """Descriptors held for messages not yet taken."""
        ready = self._ready
        return sum(len(m[1]) for m in ready if type(m[1]) is list) if ready else 0

    def close(self) -> None:
        """Close every descriptor still held; unusable after (EBADF)."""
        self._broken = _CLOSED
        while self._ready:
            fds = self._ready.popleft()[1]
            if type(fds) is list:
                close_fds(fds)
        self._into = None
        self._close_records()
        with contextlib.suppress(BufferError):
            self._view.release()  # unmaps a packet buffer now, not at collection

    # -- internals ----------------------------------------------------------

    def _nothing_ready(self) -> _NeedData:
        if self._broken is not None:
            self._raise_broken()
        if self._eof:
            raise ChannelClosed("the peer closed the channel")
        return NEED_DATA

    def _raise_failure(self) -> None:
        """The next entry is a failure (see commit_read): drop it and raise it."""
        failure = self._ready.popleft()[1]
        assert isinstance(failure, Exception)
        raise failure
