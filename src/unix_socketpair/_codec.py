"""Sans-IO framing: bytes and descriptors in, messages out; messages in, buffers out.

No sockets here. The blocking :class:`~unix_socketpair.Channel` and the asyncio
:class:`~unix_socketpair.AsyncChannel` are thin layers that move bytes between
a socket and a :class:`StreamDecoder` / the ``encode*`` functions.

Wire format (``SOCK_STREAM``; see ``docs/protocol.md``): each message is a
4-byte unsigned big-endian length followed by that many payload bytes.

Descriptors (``SCM_RIGHTS``) travel with the ``sendmsg`` that carries the start
of their message, and that ``sendmsg`` carries the start of no other message.
Linux never lets one ``recvmsg`` read past the end of the kernel buffer that
carried descriptors, and hands the descriptors over with the first read that
touches that buffer. So the chunk of bytes that arrives together with
descriptors contains the start of their message and no later message start:
**the descriptors belong to the last message that starts in the chunk they
arrived with.** The decoder applies exactly that rule, and raises
:class:`ProtocolError` for descriptors that arrive with a chunk in which no
message starts.

Decoding is all-or-nothing (as in wsproto's ``Buffer``): nothing is consumed
until a whole message is there, so a header split over many reads never
corrupts state; and a declared length over ``max_message_size`` is refused as
soon as the 4 header bytes are in, before any memory is set aside for it.
"""

from __future__ import annotations

import _socket
import contextlib
import enum
import errno
import mmap
import os
import socket
import struct
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Final

from ._ancillary import (
    ANCBUFSIZE,
    MSG_CTRUNC,
    SCM_CREDENTIALS,
    SCM_MAX_FD,
    close_fds,
    split_ancillary,
)
from ._errors import ChannelClosed, FdsTruncated, MessageTooLarge, ProtocolError, TooManyFds
from ._framing import ACCELERATED, join_frames, split_frames

if TYPE_CHECKING:
    from typing_extensions import Buffer
else:
    Buffer = bytes | bytearray | memoryview

__all__ = [
    "AGAIN",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "HANDED_INTO",
    "HEADER_SIZE",
    "MAX_WIRE_LENGTH",
    "NEED_DATA",
    "NOT_USUAL",
    "Buffer",
    "ReceiveState",
    "Receiver",
    "StreamDecoder",
    "encode",
    "encode_many",
    "payload_of",
    "read_commit",
    "take_frame",
]

HEADER_SIZE: Final = 4
#: The largest length the 4-byte header can declare.
MAX_WIRE_LENGTH: Final = 0xFFFFFFFF
DEFAULT_MAX_MESSAGE_SIZE: Final = 64 * 1024 * 1024

_HEADER = struct.Struct(">I")
_pack = _HEADER.pack
_unpack_from = _HEADER.unpack_from

# Payloads up to this size are copied behind their header into one buffer: one
# small copy costs less than a second iovec. Larger ones go out as a separate
# buffer, never copied.
_JOIN_LIMIT: Final = 16 * 1024
# send_many() flushes its coalesced buffer at about this size.
_BATCH_BYTES: Final = 256 * 1024

# Receive buffer: it starts at _START_CAPACITY (an idle channel, e.g. one per
# child, costs little) and doubles up to _STEADY_CAPACITY whenever a read fills
# it to the end (data comes faster than one buffer per read). Before a read,
# at least min(_MIN_FREE, capacity / 2) is free, so one recvmsg can take many
# small messages. Above _RETAIN_CAPACITY (after one very large message) the
# buffer is given back once it is empty.
_START_CAPACITY: Final = 1024
# Every decoder's buffer until its first read (an idle channel holds none of its
# own); it is replaced, never written or released.
_NO_BUFFER: Final = bytearray()
_NO_VIEW: Final = memoryview(_NO_BUFFER)
_STEADY_CAPACITY: Final = 256 * 1024
_MIN_FREE: Final = 64 * 1024
_RETAIN_CAPACITY: Final = 4 * 1024 * 1024 + HEADER_SIZE
# A large message's buffer is reserved whole up to this size (see get_buffer);
# a larger one grows by steps of at least _GROW_STEP.
_RESERVE_LIMIT: Final = 256 * 1024 * 1024
_GROW_STEP: Final = 1024 * 1024
# into() reads a payload straight into the caller's buffer from this size on
# (begin_direct); below it, reading ahead into the decoder (and copying) saves
# system calls.
_DIRECT_THRESHOLD: Final = 64 * 1024
# Descriptors received with close-on-exec set by the kernel (MSG_CMSG_CLOEXEC).
_CLOEXEC_BY_KERNEL: Final = sys.platform.startswith("linux")
_SOL_SOCKET: Final = int(socket.SOL_SOCKET)
# iter_ready() copies at most this much out at once, and a message over
# _ALONE_SIZE on its own (straight from the buffer, once).
_CHUNK_LIMIT: Final = 256 * 1024
_ALONE_SIZE: Final = 64 * 1024


_CLOSED: Final = "the channel is closed"


class _NeedData:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


#: Returned by the decoder when no whole message is buffered yet.
NEED_DATA: Final = _NeedData()


#: Recorded in ``StreamDecoder.handed`` for a message read_into() copied out whole.
HANDED_INTO: Final = _NeedData()

#: read_commit()'s answer when the socket has nothing to read now (``EAGAIN``).
AGAIN: Final = -1
#: read_commit()'s answer when the decoder is not in the state it handles
#: itself: nothing was read; the caller takes the general path.
NOT_USUAL: Final = -2


class TruncatedFds(list[int]):
    """The descriptors that did arrive with a read whose control data the kernel
    truncated (``MSG_CTRUNC``: this process had no free descriptor slots, or a
    peer sent more than the control buffer holds). The message they belong to
    is delivered as :class:`FdsTruncated`; the byte stream stays in sync."""

    __slots__ = ()


class _TooManyFds(list[int]):
    """In place of the descriptors of a read that carried more than ``max_fds``
    (closed on arrival): the message they belong to raises TooManyFds when it
    is taken, after the messages before it were delivered."""

    __slots__ = ("sent",)

    def __init__(self, sent: int) -> None:
        super().__init__()
        self.sent = sent


def _deliverable(fds: list[int]) -> list[int]:
    """*fds* of a message being delivered; raise FdsTruncated (closing them) if
    the kernel truncated them. The message is consumed either way."""
    if type(fds) is TruncatedFds:
        close_fds(fds)
        raise FdsTruncated(
            f"the kernel truncated the descriptors sent with this message (MSG_CTRUNC: "
            f"this process may have no free descriptor slots); the {len(fds)} that did "
            f"arrive were closed; the message was dropped and the channel is still usable"
        )
    return fds


def payload_of(data: object) -> tuple[Buffer, int]:
    """Return ``(buffer, nbytes)`` for a bytes-like *data*, without copying.

    Raises:
        TypeError: *data* is not a bytes-like object (``str`` included), or is
            a non-contiguous memoryview.
    """
    if type(data) is bytes:
        return data, len(data)
    try:
        view = memoryview(data)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"a message must be a bytes-like object (bytes, bytearray, memoryview), "
            f"not {type(data).__name__}"
        ) from None
    if view.itemsize != 1 or view.ndim != 1 or view.format not in ("B", "b", "c"):
        try:
            view = view.cast("B")
        except TypeError:
            raise TypeError("a message must be a C-contiguous bytes-like object") from None
    elif not view.c_contiguous:
        raise TypeError("a message must be a C-contiguous bytes-like object")
    return view, view.nbytes


def _too_large(size: int, limit: int) -> MessageTooLarge:
    return MessageTooLarge(
        f"message of {size} bytes is over max_message_size ({limit} bytes)",
        size=size,
        limit=limit,
    )


def encode(data: object, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> list[Buffer]:
    """Frame one message; return the buffers to send, in order.

    A small payload is returned joined behind its header (one buffer); a large
    one as ``[header, payload]`` with the payload itself, not a copy.

    Raises:
        TypeError: *data* is not bytes-like.
        MessageTooLarge: over *max_message_size* (or the 4-byte header's limit).
    """
    payload, size = payload_of(data)
    if size > max_message_size or size > MAX_WIRE_LENGTH:
        raise _too_large(size, min(max_message_size, MAX_WIRE_LENGTH))
    if size <= _JOIN_LIMIT:
        return [_pack(size) + payload]
    return [_pack(size), payload]


def encode_many(
    messages: Iterable[object], max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
) -> Iterator[list[Buffer]]:
    """Frame many messages, coalesced; yield lists of buffers, one per ``sendmsg``.

    Small messages are packed together into buffers of about 256 KiB; a large
    payload is yielded as its own buffer (not copied), after its header.

    If *messages* is a list or tuple, every item is framed before the first
    batch is yielded, so a bad item means nothing was sent. Other iterables are
    framed batch by batch: a bad item stops the iteration after the earlier
    batches (which the caller may already have sent).

    Raises:
        TypeError: an item is not bytes-like.
        MessageTooLarge: an item is over *max_message_size*.
    """
    limit = min(max_message_size, MAX_WIRE_LENGTH)
    if isinstance(messages, (list, tuple)):
        if messages and set(map(type, messages)) == {bytes}:
            # All small bytes (the common case): frame with C-level loops only.
            sizes = list(map(len, messages))
            if max(sizes) <= min(limit, _JOIN_LIMIT):
                yield from _join_small(messages, sizes)
                return
        yield from list(_encode_batches(messages, limit))
        return
    yield from _encode_batches(messages, limit)


def _join_small(
    messages: list[bytes] | tuple[bytes, ...], sizes: list[int]
) -> Iterator[list[Buffer]]:
    count = len(messages)
    total = sum(sizes) + HEADER_SIZE * count
    per_batch = max(1, count * _BATCH_BYTES // total) if total > _BATCH_BYTES else count
    for start in range(0, count, per_batch):
        # The per-message work, in the one function an accelerator replaces.
        yield [join_frames(list(messages[start : start + per_batch]))]


def _encode_batches(messages: Iterable[object], limit: int) -> Iterator[list[Buffer]]:
    parts: list[Buffer] = []
    append = parts.append
    pending = 0
    for item in messages:
        if type(item) is bytes:
            size = len(item)
        else:
            item, size = payload_of(item)
        if size > limit:
            raise _too_large(size, limit)
        if size > _JOIN_LIMIT:
            append(_pack(size))
            yield [b"".join(parts), item]
            parts = []
            append = parts.append
            pending = 0
            continue
        append(_pack(size))
        append(item)
        pending += size + HEADER_SIZE
        if pending >= _BATCH_BYTES:
            yield [b"".join(parts)]
            parts = []
            append = parts.append
            pending = 0
    if parts:
        yield [b"".join(parts)]


def _too_small(size: int, limit: int) -> MessageTooLarge:
    return MessageTooLarge(
        f"the next message is {size} bytes, larger than the {limit}-byte buffer; it stays "
        f"queued: call again with a buffer of at least {size} bytes",
        size=size,
        limit=limit,
    )


def uninterrupted(dec: Any, step: Callable[..., None], *args: Any) -> None:
    """Run *step*, a repair of the decoder *dec* that is all or nothing (it
    counts itself in ``dec.repairs`` in its final store), to completion even if
    exceptions from signal handlers interrupt it; then raise the first of them,
    so the caller still sees it."""
    pending: BaseException | None = None
    done = dec.repairs + 1
    while dec.repairs != done:
        try:
            step(*args)
        except BaseException as exc:  # retried unless the repair happened
            if pending is None:
                pending = exc
    if pending is not None:
        raise pending


class ReceiveState(enum.Enum):
    """The receive direction's state, as a decoder holds it (see
    :attr:`Receiver.state`)."""

    #: Messages come and go.
    OPEN = "open"
    #: The peer closed: the messages already in are still delivered, then
    #: ``ChannelClosed``.
    AT_EOF = "at end of file"
    #: Unusable (:attr:`Receiver.broken` says why): ``ProtocolError`` (or the
    #: error that broke it, once, in its place in the order of the messages).
    BROKEN = "broken"
    #: Closed: ``OSError(EBADF)``.
    CLOSED = "closed"


class Receiver:
    """What the stream and packet decoders share: the receive direction's
    state, and the records the channels use to commit reads and to give
    messages back (:attr:`inbox`, :attr:`handed`).

    The state is two fields, each changed in one place per decoder:
    ``_broken`` (None, the reason, or ``_CLOSED``) and ``_eof``; :attr:`state`
    names the combination.
    """

    __slots__ = (
        "_broken",
        "_eof",
        "_landed",
        "creds",
        "handed",
        "handed_by",
        "handed_fds",
        "inbox",
        "last_into",
        "repairs",
    )

    def __init__(self) -> None:
        self._eof = False
        self._broken: str | None = None
        #: Raw ``recvmsg_into`` results not yet accounted for: ``(nbytes,
        #: ancdata, flags, address)`` tuples. The I/O layer appends a system
        #: call's result here (from C where it can: ``inbox.extend(map(
        #: sock.recvmsg_into, ...))``), so that no Python code, and so no
        #: signal handler, runs between the call returning and its result
        #: being recorded; a commit then accounts for it in one step that
        #: calls nothing. See docs/concurrency.md.
        self.inbox: list[tuple[Any, ...]] = []
        #: Messages taken out since the I/O layer last cleared it: each is
        #: recorded in the same step that consumes it, so a call interrupted
        #: by an exception before it could return them can put them back
        #: (``put_back``); ``HANDED_INTO`` for one delivered into a caller's
        #: buffer.
        self.handed: list[object] = []
        #: The thread that took them, where recorded (0: not recorded).
        self.handed_by = 0
        #: The descriptors of the last message taken with its descriptors.
        self.handed_fds: list[int] = []
        self.last_into = 0
        #: Counts completed repairs (put_back, restore_direct; see uninterrupted).
        self.repairs = 0
        # The size of a message a read into the caller's buffer completed, until
        # into() delivers it (-1: none).
        self._landed = -1
        #: The raw SCM_CREDENTIALS record of the latest read that carried data.
        self.creds: bytes | None = None

    @property
    def state(self) -> ReceiveState:
        """The receive direction's state, named."""
        broken = self._broken
        if broken is None:
            return ReceiveState.AT_EOF if self._eof else ReceiveState.OPEN
        return ReceiveState.CLOSED if broken is _CLOSED else ReceiveState.BROKEN

    @property
    def at_eof(self) -> bool:
        """True once end of file (or a break) was seen: no more input is wanted."""
        return self._eof or self._broken is not None

    @property
    def broken(self) -> str | None:
        """Why the decoder is unusable, or None."""
        return self._broken

    def into_failed(self, exc: BaseException) -> None:
        """A receive into a caller's buffer is leaving with *exc*: close()
        ends a read straight into it for good (``abort_direct``); anything
        else (a signal handler's exception, a cancellation) puts back what
        arrived (``interrupted_into``)."""
        if isinstance(exc, ChannelClosed):
            self.abort_direct()
        else:
            self.interrupted_into()

    def abort_direct(self) -> None:
        raise NotImplementedError

    def interrupted_into(self) -> None:
        raise NotImplementedError

    def _close_records(self) -> None:
        """Closing: close the descriptors of a read not yet accounted for (an
        exception came between the system call and its commit) and of a
        message that landed in a caller's buffer but was not delivered."""
        inbox = self.inbox
        while inbox:
            close_fds(split_ancillary(inbox.pop(0)[1])[0])
        if self._landed >= 0:
            self._landed = -1
            fds, self.handed_fds = self.handed_fds, []
            close_fds(fds)

    def _raise_broken(self) -> None:
        if self._broken is _CLOSED:
            raise OSError(errno.EBADF, "the channel is closed")
        raise ProtocolError(f"the channel is unusable: {self._broken}")


class StreamDecoder(Receiver):
    """Turns the bytes (and descriptors) of a ``SOCK_STREAM`` into messages.

    Feed it with :meth:`receive_data` (copies) or, without a copy, by reading
    straight into :meth:`get_buffer` and reporting with :meth:`buffer_updated`.
    End of file is ``receive_data(b"")`` or ``buffer_updated(0)``. Take messages
    with :meth:`next_message` (payload only: descriptors that came with it are
    closed) or :meth:`next_message_with_fds`; both return :data:`NEED_DATA` when
    no whole message is buffered.

    Descriptors handed to the decoder are owned by it until returned with their
    message; :meth:`close` (and every error) closes the ones it still holds.

    Errors: :class:`ChannelClosed` at a clean end of file; :class:`ProtocolError`
    for broken framing, after which every call raises it again.
    """

    #: A read may yield many messages (see PacketDecoder.ONE_PER_READ).
    ONE_PER_READ: Final = False

    __slots__ = (
        "_base",
        "_buf",
        "_direct",
        "_groups",
        "_max",
        "_max_fds",
        "_rpos",
        "_target",
        "_view",
        "_wpos",
    )

    def __init__(
        self,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_fds: int = SCM_MAX_FD,
    ) -> None:
        super().__init__()
        self._max = max_message_size if max_message_size < MAX_WIRE_LENGTH else MAX_WIRE_LENGTH
        self._max_fds = max_fds
        # Allocated on the first read: an idle channel costs no receive buffer.
        self._buf: bytearray | mmap.mmap = _NO_BUFFER
        self._view = _NO_VIEW
        self._rpos = 0  # first unconsumed byte
        self._wpos = 0  # end of the received bytes
        self._base = 0  # stream offset of _buf[0]
        # (stream offset of the chunk's first byte, of its end, the fds) in order.
        self._groups: deque[tuple[int, int, list[int]]] = deque()
        # While a message's payload goes straight into a caller's buffer:
        # (stream offset of the message start, of its end); else None.
        self._direct: tuple[int, int] | None = None
        # The caller's buffer of that read (to recover from an interrupted one).
        self._target: memoryview | None = None

    # -- input --------------------------------------------------------------

    def get_buffer(self) -> memoryview:
        """Writable free space at the end of the buffer, for one read.

        At least half the buffer's capacity (the capacity grows while reads
        fill it, up to 256 KiB), and enough for the rest of a message whose
        header is in (so a large message is read in place, compacting at most
        once). Valid only until the next call on the decoder.
        """
        if self.inbox:
            raise RuntimeError("commit() the last read before asking for a buffer")
        r = self._rpos
        w = self._wpos
        cap = len(self._buf)
        if not cap:
            self._replace(_START_CAPACITY)
            return self._view
        if r == w:
            # Everything consumed (the usual case): the whole buffer is free.
            if r:
                self._base += r
                self._rpos = self._wpos = 0
            if w == cap and cap < _STEADY_CAPACITY:
                self._replace(2 * cap)  # reads fill it: read more at once
            elif cap > _RETAIN_CAPACITY and self._direct is None:
                self._replace(_STEADY_CAPACITY)
            return self._view
        default = want = min(_MIN_FREE, cap >> 1)
        held = w - r
        step = 0  # growth for a large message whose bytes are still arriving
        if held >= HEADER_SIZE:
            size = _unpack_from(self._buf, r)[0]
            if size <= self._max:
                rest = HEADER_SIZE + size - held
                if HEADER_SIZE + size <= _RETAIN_CAPACITY:
                    want = max(want, rest)  # a few MiB at most: room for all of it
                elif rest > 0:
                    # Any room will do for the next read (at most the rest:
                    # a short rest is no reason to double the buffer). When
                    # it must grow, it grows once, to the whole message: a
                    # buffer this large is an anonymous mapping, whose pages
                    # cost memory only as the bytes arrive (a peer that
                    # declares 60 MiB and sends 10 bytes costs a page), and
                    # the message is never copied from buffer to buffer.
                    # Growing by steps did copy, and the old and new mappings
                    # of each copy, with the C allocator's way of keeping
                    # freed blocks, took the peak of three 16 MiB messages
                    # read in a row from 32 MiB to 38 MiB, and up to 47 MiB.
                    # Above _RESERVE_LIMIT, where even untouched pages may be
                    # refused (strict overcommit, a small machine), it grows
                    # by half of what has arrived instead.
                    want = min(want, rest)
                    if HEADER_SIZE + size <= _RESERVE_LIMIT:
                        step = rest
                    else:
                        step = max(want, min(rest, max(held // 2, _GROW_STEP)))
        if w == cap and cap < _STEADY_CAPACITY and want == default and not step:
            # The last read filled the buffer to its end: read more at once.
            self._replace(2 * cap)
            cap = len(self._buf)
            w = self._wpos
        if cap - w < want:
            if held + want <= cap and held <= r:
                # Slide the partial message to the front (the regions do not
                # overlap, so until the positions move below, both copies are
                # whole); then move the positions in one statement that calls
                # nothing, so an exception from a signal handler cannot fall
                # between them.
                self._buf[:held] = self._view[r:w]
                self._base, self._rpos, self._wpos = self._base + r, 0, held
                w = held
            else:
                # Exactly what a known message needs (all of a large one,
                # see above); otherwise (complete messages nobody has taken
                # yet) grow geometrically.
                new_cap = held + (step or want)
                if want == default and not step:
                    new_cap = max(new_cap, 2 * cap)
                self._replace(new_cap)
                w = self._wpos
        return self._view[w:]

    def _replace(self, capacity: int) -> None:
        """Move the unconsumed bytes to the front of a new buffer of *capacity*."""
        r = self._rpos
        held = self._wpos - r
        # Above a few MiB, an anonymous mapping: its pages cost memory only once
        # written, where bytearray(n) would zero-fill (touch) all of them now.
        buf: bytearray | mmap.mmap = (
            mmap.mmap(-1, capacity) if capacity > _RETAIN_CAPACITY else bytearray(capacity)
        )
        view = memoryview(buf)
        old = self._view
        # The copy and the stores below call nothing: a signal handler's
        # exception cannot throw the (possibly large) copy away.
        buf[:held] = self._view[r : self._wpos]
        # One statement that calls nothing: consistent at every bytecode boundary.
        self._buf, self._view, self._base, self._rpos, self._wpos = (
            buf,
            view,
            self._base + r,
            0,
            held,
        )
        if old is not _NO_VIEW:
            with contextlib.suppress(BufferError):
                old.release()

    def commit(self, fds: list[int] | None = None) -> None:
        """Account for the oldest result in :attr:`inbox` (its first item is the
        byte count read into the last :meth:`get_buffer`; *fds* the descriptors
        that came with it, owned by the decoder from now on, a
        :class:`TruncatedFds` if the kernel truncated them).

        The common case (bytes, no descriptors) moves the write position and
        drops the inbox entry with no call in between: an exception raised by
        a signal handler either sees the entry still there (and a later commit
        accounts for it) or sees it accounted for, never half of it.

        Raises: as :meth:`buffer_updated`.
        """
        inbox = self.inbox
        nbytes = inbox[0][0]
        if nbytes and fds is None and not self._eof:
            self._wpos += nbytes
            del inbox[0]
            return
        if not nbytes and fds is None:
            self._eof = True
            del inbox[0]
            return
        del inbox[0]
        self.buffer_updated(nbytes, fds)

    def read_commit(self, sock: _socket.socket, flags: int) -> int:
        """One read from the stream socket *sock* into :meth:`get_buffer` (with
        *flags* and room for ``ANCBUFSIZE`` bytes of control data) and, in the
        usual case, its accounting, in one call: the receive path of a round
        trip. ``_speedups.read_commit(decoder, sock, flags)`` is the same in C
        (no Python call, the GIL released around ``recvmsg`` unless *flags* has
        ``MSG_DONTWAIT``: a read that cannot wait keeps it); this method, with
        the same signature when called on the class, is its pure-Python twin.

        Returns:
            n > 0: the usual case, accounted for: *n* bytes arrived with no
                control data or with only the sender's credentials (kept in
                :attr:`creds`), as :meth:`commit` does for them.
            0: a read whose result (end of file, descriptors, ``MSG_CTRUNC``,
                other control data) is left in :attr:`inbox`, exactly as
                ``recvmsg_into`` returned it: the caller accounts for it with
                :meth:`commit_read` (after its own checks, e.g. a close that
                woke the read).
            AGAIN (-1): nothing to read now (``EAGAIN``); nothing changed.
            NOT_USUAL (-2): the decoder is not open and idle (a result waits in
                the inbox, a read into a caller's buffer is under way, end of
                file or a break was seen): nothing was read.

        Raises: ``OSError`` from the read (``EAGAIN`` excepted), having recorded
        nothing; whatever :meth:`get_buffer` raises; an exception from a signal
        handler that interrupted the wait (nothing read). The bytes of a read
        are recorded (write position or inbox) before anything else can run.

        *sock* is blocking or non-blocking, without a timeout (a channel's
        always is): the C version applies none.

        Not thread-safe: the caller serialises readers (the receive lock).
        """
        inbox = self.inbox
        if inbox or self._eof or self._broken is not None or self._direct is not None:
            return NOT_USUAL
        r = self._rpos
        cap = len(self._buf)
        if (
            r == self._wpos
            and not (r == cap and cap < _STEADY_CAPACITY)
            and cap <= _RETAIN_CAPACITY
        ):
            # get_buffer()'s usual case inlined (as in C): everything was
            # consumed and the buffer keeps its size, so all of it is free.
            if r:
                self._base, self._rpos, self._wpos = self._base + r, 0, 0
            bufs = (self._view,)
        else:
            bufs = (self.get_buffer(),)
        try:
            inbox.append(sock.recvmsg_into(bufs, ANCBUFSIZE, flags))
        except BlockingIOError:
            return AGAIN
        n, anc, got, _ = inbox[0]
        if n and not got & MSG_CTRUNC:
            if anc:
                # The usual read on Linux: the sender's credentials, no descriptors.
                if len(anc) != 1 or anc[0][1] != SCM_CREDENTIALS or anc[0][0] != _SOL_SOCKET:
                    return 0
                self.creds = anc[0][2]
            # commit()'s plain case: no call between the two stores.
            self._wpos += n
            del inbox[0]
            return n  # type: ignore[no-any-return]
        return 0

    def commit_read(self) -> None:
        """Account for the oldest raw ``recvmsg_into`` result in :attr:`inbox`
        (``(nbytes, ancdata, flags, address)``, read into :meth:`read_buffers`):
        the sender's credentials, the descriptors (a :class:`TruncatedFds` if
        the kernel truncated them), then :meth:`commit` or, during a direct
        read, :meth:`commit_direct`.

        Raises: as :meth:`buffer_updated` / :meth:`direct_updated`.
        """
        n, anc, flags = self.inbox[0][:3]
        if self._direct is None:
            if not anc and not flags & MSG_CTRUNC:
                self.commit()
                return
            if len(anc) == 1 and anc[0][1] == SCM_CREDENTIALS and not flags & MSG_CTRUNC:
                # The usual read on Linux: the sender's credentials, no descriptors.
                if n:
                    self.creds = anc[0][2]
                self.commit()
                return
        if not anc and not flags & MSG_CTRUNC:
            self.commit_direct()
            return
        fds, creds = split_ancillary(anc)
        if creds is not None and n:
            self.creds = creds
        if not _CLOEXEC_BY_KERNEL:
            for fd in fds:
                os.set_inheritable(fd, False)
        if flags & MSG_CTRUNC:
            fds = TruncatedFds(fds)
        got = fds if fds or type(fds) is TruncatedFds else None
        if self._direct is None:
            self.commit(got)
        else:
            self.commit_direct(got)

    def read_buffers(self) -> tuple[memoryview, ...]:
        """The buffers of the next read: :meth:`get_buffer`, or during a direct
        read the rest of the payload's place in the caller's buffer."""
        direct = self._direct
        if direct is None:
            return (self.get_buffer(),)
        target = self._target
        assert target is not None
        size = direct[1] - direct[0] - HEADER_SIZE
        return (target[size - (direct[1] - self._base) : size],)

    def commit_direct(self, fds: list[int] | None = None) -> list[int] | None:
        """:meth:`commit` for a read straight into the caller's buffer (see
        :meth:`read_into`): as :meth:`direct_updated`."""
        inbox = self.inbox
        nbytes = inbox[0][0]
        direct = self._direct
        if nbytes and fds is None and direct is not None:
            base = self._base + nbytes
            if base < direct[1]:
                self._base = base
                del inbox[0]
                return None
            # The message is complete: consumed, recorded, then its descriptors.
            self._base = base
            self.last_into = self._landed = direct[1] - direct[0] - HEADER_SIZE
            self._direct = None
            del inbox[0]
            self.handed.append(HANDED_INTO)
            if not self._groups:
                self.handed_fds = []
                return []
            fds = self.handed_fds = self._take_fds(direct[0], direct[1])
            return _deliverable(fds)
        del inbox[0]
        return self.direct_updated(nbytes, fds)

    def buffer_updated(self, nbytes: int, fds: list[int] | None = None) -> None:
        """Report that *nbytes* were written into the last :meth:`get_buffer`.

        ``nbytes == 0`` means end of file. *fds* arrived with those bytes; the
        decoder owns them from now on (and closes them on error).

        Raises:
            TooManyFds: more than ``max_fds`` descriptors (all closed; broken).
            ProtocolError: descriptors with end of file, or data after it.
        """
        if nbytes and fds is None and not self._eof:
            self._wpos += nbytes
            return
        if fds or type(fds) is TruncatedFds:
            start = self._base + self._wpos
            self._fds_arrived(start, start + nbytes, fds)
        if nbytes:
            if self._eof:
                self._break("data after end of file")
            self._wpos += nbytes
        else:
            self._eof = True

    def received(self, nbytes: int) -> bytes | _NeedData:
        """``buffer_updated(nbytes)`` (without descriptors) then
        :meth:`next_message`, in one call: the path of a reader that waits for
        each message."""
        if nbytes and not self._eof:
            r = self._rpos
            w = self._wpos = self._wpos + nbytes
            if w - r >= HEADER_SIZE and not self._groups:
                size = _unpack_from(self._buf, r)[0]
                end = r + HEADER_SIZE + size
                if end <= w and size <= self._max:
                    self._rpos = end
                    return self._view[r + HEADER_SIZE : end].tobytes()
            return self.next_message()
        self.buffer_updated(nbytes)
        return self.next_message()

    def receive_data(self, data: Buffer, fds: Iterable[int] = ()) -> None:
        """Copy *data* into the decoder (``b""`` means end of file).

        *fds* arrived together with *data*; the decoder owns them from now on.
        """
        fd_list = list(fds)
        view = memoryview(data).cast("B")
        size = view.nbytes
        if size == 0:
            self.buffer_updated(0, fd_list)
            return
        if self._direct is not None:
            close_fds(fd_list)
            raise RuntimeError("a message is being read with read_into(); finish it first")
        done = 0
        while done < size:
            space = self.get_buffer()
            n = min(len(space), size - done)
            space[:n] = view[done : done + n]
            # Descriptors go with the first piece: it holds the chunk's first byte
            # and, being a prefix of the chunk, no message start the chunk lacks.
            self.buffer_updated(n, fd_list if done == 0 else None)
            done += n

    def _fds_arrived(self, start: int, end: int, fds: list[int]) -> None:
        if self._broken is not None:
            close_fds(fds)
            self._raise_broken()
        if len(fds) > self._max_fds and type(fds) is not TruncatedFds:
            # Refused by the call that takes their message (see _take_fds).
            close_fds(fds)
            fds = _TooManyFds(len(fds))
        if end == start:
            close_fds(fds)
            if type(fds) is TruncatedFds:
                return  # nothing of the stream came with them: nothing to report
            self._break(f"{len(fds)} file descriptor(s) arrived without any data")
        if self._direct is not None:
            close_fds(fds)
            self._break(
                f"file descriptors arrived in the middle of a message's payload "
                f"(bytes {start}..{end} of the stream)"
            )
        self._groups.append((start, end, fds))

    # -- output -------------------------------------------------------------

    def next_message(self) -> bytes | _NeedData:
        """Return the next whole message's payload, or :data:`NEED_DATA`.

        Descriptors that came with the message are closed (a peer cannot make
        a reader that does not ask for descriptors leak them).

        Raises:
            ChannelClosed: end of file at a message boundary.
            ProtocolError: broken framing (see the class docstring).
        """
        r = self._rpos
        w = self._wpos
        if w - r >= HEADER_SIZE and not self._groups:
            size = _unpack_from(self._buf, r)[0]
            end = r + HEADER_SIZE + size
            if end <= w and size <= self._max:
                payload = self._view[r + HEADER_SIZE : end].tobytes()
                # Consumed and recorded with no call in between (see handed).
                self._rpos = end
                self.handed.append(payload)
                return payload
        elif r == w and not self._eof and self._broken is None and self._direct is None:
            return NEED_DATA
        result = self._next_slow()
        if result is NEED_DATA:
            return NEED_DATA
        payload, fds = result  # type: ignore[misc]
        if fds:
            close_fds(fds)
        return payload

    def _take_whole(
        self, record: list[bytes], need: _NeedData | None = None
    ) -> bytes | _NeedData | None:
        """next_message()'s common case alone (see py_take_frame): the whole
        message at the read position when no descriptors, error or direct
        read is pending, recorded in *record*; *need* when nothing at all is
        buffered and the decoder is open; else None."""
        r = self._rpos
        w = self._wpos
        if w - r < HEADER_SIZE:
            if r == w and not self._eof and self._broken is None and self._direct is None:
                return need
            return None
        if self._groups or self._broken is not None or self._direct is not None:
            return None
        size = _unpack_from(self._buf, r)[0]
        end = r + HEADER_SIZE + size
        if end > w or size > self._max:
            return None
        payload = self._view[r + HEADER_SIZE : end].tobytes()
        # Consumed, then recorded: an exception raised between bytecodes (a
        # signal handler's) is raised after a call returns, so none can fall
        # between the store and the append; in the other order one could fall
        # after the append, and the message would be both recorded (and put
        # back) and still there.
        self._rpos = end
        record.append(payload)
        return payload

    def iter_ready(self) -> Iterator[bytes]:
        """Yield every whole message already buffered (payloads; descriptors
        that came with them are closed), then return (more input is needed).

        Faster than calling :meth:`next_message` repeatedly: small messages are
        copied out together once and each payload is sliced from that copy. The
        decoder's position moves past each message as it is yielded, so
        stopping early (or mixing in other calls) loses nothing.

        Raises: as :meth:`next_message` (``ChannelClosed`` at end of file).
        """
        return self._iterate(None)

    def iter_messages(self, fill: Callable[[], object]) -> Iterator[bytes]:
        """Yield every message until a clean end of file, then return.

        Whenever no whole message is buffered, call *fill*, which must feed the
        decoder once (:meth:`get_buffer` and :meth:`buffer_updated`, or
        :meth:`receive_data`; end of file included) or raise. The I/O stays
        outside: this is :meth:`iter_ready` and :meth:`next_message` in one
        generator, without a generator per layer on the path of every message.

        Raises: :class:`ProtocolError` as :meth:`next_message`; whatever *fill*
        raises.
        """
        return self._iterate(fill)

    def _iterate(self, fill: Callable[[], object] | None) -> Iterator[bytes]:
        unpack_from = _unpack_from
        while True:
            r = self._rpos
            w = self._wpos
            if w - r >= HEADER_SIZE and not self._groups and self._broken is None:
                size = unpack_from(self._buf, r)[0]
                end = r + HEADER_SIZE + size
                if end <= w and size <= self._max:
                    if end == w or size > _ALONE_SIZE:
                        # The only message buffered (one copy, not two), or a
                        # large one (slicing it out of a chunk would copy twice).
                        self._rpos = end
                        yield self._view[r + HEADER_SIZE : end].tobytes()
                        continue
                    # The first message is whole (nothing is copied before that, so a
                    # large message still arriving is not copied again on every read).
                    held = min(w - r, _CHUNK_LIMIT)
                    chunk = self._view[r : r + held].tobytes()
                    base = self._base
                    limit = self._max
                    # The hot loop of iteration over small messages: locals and
                    # literal 4s (HEADER_SIZE) only, ~20% faster per message.
                    end = 0
                    while held - end >= 4:
                        start = end + 4
                        size = unpack_from(chunk, end)[0]
                        end = start + size
                        if end > held or size > limit:
                            break
                        self._rpos = consumed = r + end
                        yield chunk[start:end]
                        if self._rpos != consumed or self._base != base:
                            break  # someone else consumed or the buffer moved: start over
                    continue
            if fill is None:
                msg = self.next_message()
                if msg is NEED_DATA:
                    return
            else:
                try:
                    msg = self.next_message()
                except ChannelClosed:
                    return
                if msg is NEED_DATA:
                    fill()
                    continue
            yield msg  # type: ignore[misc]

    def take_ready(self, max_count: int) -> list[bytes]:
        """Up to *max_count* whole messages already buffered (payloads; the
        descriptors that came with them are closed); an empty list if none is.

        Messages with no descriptor-carrying read in their span are cut out by
        :func:`~unix_socketpair._framing.split_frames` in one call; the first
        message that needs more care (descriptors, a declared length over the
        limit, end of file) goes through :meth:`next_message`, which raises
        what it means, but only when it would be the first of the list.

        Raises: as :meth:`next_message` (``ChannelClosed`` at end of file), only
        when no message is returned.
        """
        out: list[bytes] = []
        while len(out) < max_count:
            r = self._rpos
            stop = self._wpos
            if self._groups:
                # Only up to the first read that carried descriptors: the
                # message that starts in it owns them.
                stop = min(stop, self._groups[0][0] - self._base)
            if self._broken is None and self._direct is None and stop - r >= HEADER_SIZE:
                msgs, pos = split_frames(self._view, r, stop, self._max, max_count - len(out))
                if msgs:
                    self._rpos = pos
                    self.handed.extend(msgs)
                    out += msgs
                    continue
            if out:
                return out
            msg = self.next_message()  # recorded in handed
            if msg is NEED_DATA:
                return out
            out.append(msg)  # type: ignore[arg-type]
        return out

    def put_back(self, messages: list[bytes], fds: list[int] | None = None) -> None:
        """Make *messages* (payloads taken with :meth:`take_ready`, in order)
        the next ones out again, ahead of everything buffered; clear
        :attr:`handed` and empty *messages* in the same step (so that a caller
        retrying after an exception can tell it is done).

        Their frames are written just before the read position (into bytes
        already consumed, or a new buffer when there is not room), so every
        later call sees them as if they had never been taken.
        """
        self._landed = -1
        if not messages or self._direct is not None or self._broken is not None:
            self.handed, self.repairs, messages[:] = [], self.repairs + 1, ()  # nothing to do
            return
        data = join_frames(messages)
        total = len(data)
        r = self._rpos
        start = self._base + r - total
        if r >= total:
            # Into bytes already consumed; the slice assignment and the store
            # call nothing, so this is all or nothing under a signal.
            self._buf[r - total : r] = data
            self._rpos, self.repairs, self.handed, messages[:] = r - total, self.repairs + 1, [], ()
        else:
            held = self._wpos - r
            cap = max(len(self._buf), total + held)
            buf: bytearray | mmap.mmap = bytearray(cap)
            view = memoryview(buf)
            old = self._view
            buf[:total] = data
            buf[total : total + held] = self._view[r : self._wpos]
            (
                self._buf,
                self._view,
                self._base,
                self._rpos,
                self._wpos,
                self.repairs,
                self.handed,
                messages[:],
            ) = (buf, view, start, 0, total + held, self.repairs + 1, [], ())
            if old is not _NO_VIEW:
                with contextlib.suppress(BufferError):
                    old.release()
        if fds:
            # The first message's descriptors: owned by the decoder again.
            self._groups.appendleft((start, start + 1, fds))

    def pending_fds(self) -> int:
        """Descriptors received and held for messages not yet taken."""
        return sum(len(group[2]) for group in self._groups) if self._groups else 0

    def direct_remaining(self) -> int:
        """Payload bytes still to come straight into the caller's buffer."""
        direct = self._direct
        return 0 if direct is None else direct[1] - self._base

    def next_message_with_fds(self) -> tuple[bytes, list[int]] | _NeedData:
        """Like :meth:`next_message`, but return ``(payload, fds)``; the caller
        owns the descriptors (close-on-exec if the reader asked the kernel so)."""
        return self._next_slow()

    def next_size(self) -> int | _NeedData:
        """The size of the next message once its header is in, else
        :data:`NEED_DATA` (nothing is consumed).

        Raises:
            ChannelClosed: end of file at a message boundary.
            ProtocolError: declared length over the limit, or end of file
                inside the header.
        """
        if self._broken is not None:
            self._raise_broken()
        if self._direct is not None:
            self._recover_direct()
        r = self._rpos
        held = self._wpos - r
        if held >= HEADER_SIZE:
            size: int = _unpack_from(self._buf, r)[0]
            if size > self._max:
                self._over_limit(size)
            if self._eof and held < HEADER_SIZE + size:
                self._at_eof(held)  # the rest can never come
            return size
        if self._eof:
            self._at_eof(held)
        return NEED_DATA

    def read_into(self, target: memoryview) -> tuple[int, int]:
        """Start moving the next message into *target* (a writable byte view).

        Call only after :meth:`next_size` returned a size that fits *target*.
        Copies the payload bytes already buffered and returns
        ``(size, copied)``. If ``copied < size``, the rest must be read straight
        into ``target[copied:size]`` and reported with :meth:`direct_updated`
        until it returns the message's descriptors.
        """
        r = self._rpos
        size: int = _unpack_from(self._buf, r)[0]
        start = r + HEADER_SIZE
        copied = min(size, self._wpos - start)
        target[:copied] = self._view[start : start + copied]
        self._rpos = start + copied
        if copied == size:
            self.last_into = size
            self.handed.append(HANDED_INTO)
        if copied < size:
            # The whole buffer belonged to this message: the rest comes directly.
            msg_start = self._base + r
            self._base += self._rpos
            self._rpos = self._wpos = 0
            self._target = target
            self._direct = (msg_start, msg_start + HEADER_SIZE + size)
        return size, copied

    def direct_updated(self, nbytes: int, fds: list[int] | None = None) -> list[int] | None:
        """Report *nbytes* read straight into the caller's buffer.

        Returns the message's descriptors once its last byte is in, else None.

        Raises:
            ProtocolError: end of file (``nbytes == 0``) inside the payload, or
                descriptors arriving inside the payload (closed).
        """
        direct = self._direct
        if direct is None:
            raise RuntimeError("direct_updated() without read_into()")
        if fds or type(fds) is TruncatedFds:
            start = self._base
            self._fds_arrived(start, start + nbytes, fds)
        if nbytes == 0:
            self._eof = True
            msg_start, msg_end = direct
            got = self._base - msg_start - HEADER_SIZE
            self._direct = None
            self._break(
                f"end of file inside a message: {got} of its {msg_end - msg_start - HEADER_SIZE} "
                f"payload bytes arrived"
            )
        self._base += nbytes
        msg_start, msg_end = direct
        if self._base < msg_end:
            return None
        self.last_into = self._landed = msg_end - msg_start - HEADER_SIZE
        self._direct = None
        self.handed.append(HANDED_INTO)
        fds = self.handed_fds = self._take_fds(msg_start, msg_end)
        return _deliverable(fds)

    def into(self, target: memoryview) -> int | _NeedData:
        """Deliver the next message into *target* (a writable byte view): its
        size, or :data:`NEED_DATA` (read into :meth:`read_buffers`, commit,
        and call again). Its descriptors are closed.

        A message already buffered whole is copied; one that a direct read
        (:meth:`begin_direct`) completed is already there.

        Raises:
            MessageTooLarge: the next message is larger than *target*; it
                stays queued.
            others: as :meth:`next_message`.
        """
        landed = self._landed
        if landed >= 0:
            fds, self.handed_fds, self._landed = self.handed_fds, [], -1
            close_fds(fds)
            return landed
        if self._direct is not None:
            return NEED_DATA
        size = self.next_size()
        if size is NEED_DATA:
            return NEED_DATA
        limit = len(target)
        if size > limit:  # type: ignore[operator]
            raise _too_small(size, limit)  # type: ignore[arg-type]
        if self._wpos - self._rpos < HEADER_SIZE + size:  # type: ignore[operator]
            return NEED_DATA
        self.read_into(target)
        close_fds(self.take_fds_for_buffered(size))  # type: ignore[arg-type]
        return size

    def begin_direct(self, target: memoryview) -> bool:
        """After :meth:`into` returned NEED_DATA: if the next message is large
        (64 KiB and more) and not all here, start reading its payload straight
        into *target* (:meth:`read_into`) and return True."""
        if self._direct is not None:
            return True
        r = self._rpos
        held = self._wpos - r
        if held < HEADER_SIZE:
            return False
        size = _unpack_from(self._buf, r)[0]
        if size < _DIRECT_THRESHOLD or held >= HEADER_SIZE + size or size > len(target):
            return False
        self.read_into(target)
        return True

    def interrupted_into(self) -> None:
        """An exception (a signal handler's, a cancellation) is leaving a
        receive into a caller's buffer: account for a read still in the inbox,
        then put what arrived of a message being read directly back behind its
        header (:meth:`restore_direct`, completed even if interrupted), so the
        next receive starts it over. A message completed in the caller's buffer
        is the caller's give-back's (see :attr:`handed`); a broken decoder
        stays broken."""
        direct = self._direct
        if direct is None:
            return
        try:
            if self.inbox:
                self.commit_read()
        except ProtocolError:
            return
        direct = self._direct
        target = self._target
        if self._broken is not None or direct is None or target is None:
            return
        size = direct[1] - direct[0] - HEADER_SIZE
        arrived = size - (direct[1] - self._base)
        uninterrupted(self, self.restore_direct, target[:arrived], size, None)

    def fail(self, reason: str) -> None:
        """Mark the decoder unusable for *reason* (an error the I/O layer saw,
        e.g. truncated descriptors); close the descriptors it holds."""
        if self._broken is None:
            self._broken = reason
        self._direct = None
        self._close_groups()
        self._rpos = self._wpos = 0

    def restore_direct(self, payload: memoryview, size: int, fds: list[int] | None) -> None:
        """Undo :meth:`read_into` for a message of *size* bytes whose read was
        interrupted (a signal handler's exception, a cancellation): *payload*
        is what arrived of it in the caller's buffer; it goes back into the
        decoder behind its header, so the next receive starts the message
        over. *fds*: the message's descriptors if its last byte was in (the
        decoder owns them again)."""
        got = payload.nbytes
        start = self._base - HEADER_SIZE - got  # stream offset of the message
        held = self._wpos - self._rpos
        length = HEADER_SIZE + got
        buf: bytearray | mmap.mmap = bytearray(max(_START_CAPACITY, length + held))
        header = _pack(size)
        view = memoryview(buf)
        old = self._view
        buf[:HEADER_SIZE] = header
        buf[HEADER_SIZE:length] = payload
        buf[length : length + held] = self._view[self._rpos : self._wpos]
        self._buf, self._view, self._base, self._rpos, self._wpos, self._direct, self.repairs = (
            buf,
            view,
            start,
            0,
            length + held,
            None,
            self.repairs + 1,
        )
        self._target = None
        if fds is not None:
            self._groups.appendleft((start, start + 1, fds))
        if old is not _NO_VIEW:
            with contextlib.suppress(BufferError):
                old.release()

    def _recover_direct(self) -> None:
        """A read straight into a caller's buffer was left unfinished by an
        exception that also cut its own clean-up short: account for a read
        result still in the inbox, then put what arrived back (from the
        caller's buffer, which the caller got back with the exception) so the
        next receive starts the message over."""
        direct = self._direct
        target = self._target
        if direct is None:
            return
        if target is None:
            self.abort_direct()
            self._raise_broken()
            return
        msg_start, msg_end = direct
        size = msg_end - msg_start - HEADER_SIZE
        fds = None
        if self.inbox:
            _n, anc, flags = self.inbox[0][:3]
            got: list[int] = split_ancillary(anc)[0] if anc else []
            if flags & MSG_CTRUNC:
                got = TruncatedFds(got)
            fds = self.commit_direct(got if got or type(got) is TruncatedFds else None)
            if self._direct is None and self.handed and self.handed[-1] is HANDED_INTO:
                del self.handed[-1]  # restored below, not by the caller's give-back
        arrived = size - (msg_end - self._base) if self._direct is not None else size
        self.restore_direct(target[:arrived], size, fds)

    def abort_direct(self) -> None:
        """A direct read failed part way: the stream position is lost; break."""
        self._target = None
        self._landed = -1
        if self._direct is not None:
            self._direct = None
            self._broken = self._broken or "a message was only partly read (interrupted read_into)"
            self._close_groups()

    # -- state --------------------------------------------------------------

    @property
    def reading_direct(self) -> bool:
        """True between :meth:`read_into` and the end of that message."""
        return self._direct is not None

    def buffered(self) -> int:
        """Bytes received and not yet returned as messages."""
        return self._wpos - self._rpos

    def close(self) -> None:
        """Close every descriptor the decoder still holds; it is unusable after."""
        self._broken = _CLOSED
        self._direct = None
        self._rpos = self._wpos = 0
        if self._groups:
            self._close_groups()
        if self.inbox or self._landed >= 0:
            self._close_records()

    # -- internals ----------------------------------------------------------

    def _next_slow(self) -> tuple[bytes, list[int]] | _NeedData:
        if self._broken is not None:
            self._raise_broken()
        if self._direct is not None:
            self._recover_direct()
        r = self._rpos
        held = self._wpos - r
        if held >= HEADER_SIZE:
            size: int = _unpack_from(self._buf, r)[0]
            if size > self._max:
                self._over_limit(size)
            end = r + HEADER_SIZE + size
            if end <= self._wpos:
                fds = self._take_fds(self._base + r, self._base + end) if self._groups else []
                payload = self._view[r + HEADER_SIZE : end].tobytes()
                self._rpos = end
                self.handed.append(payload)
                self.handed_fds = fds
                return payload, _deliverable(fds)
        if self._eof:
            self._at_eof(held)
        return NEED_DATA

    def take_fds_for_buffered(self, size: int) -> list[int]:
        """Descriptors of the message of *size* bytes that :meth:`read_into` just
        copied whole out of the buffer (the caller owns them)."""
        if not self._groups:
            return []
        end = self._base + self._rpos
        return _deliverable(self._take_fds(end - HEADER_SIZE - size, end))

    def _take_fds(self, start: int, end: int) -> list[int]:
        """Descriptors of the message at stream offsets [start, end)."""
        groups = self._groups
        fds: list[int] = []
        found = False
        while groups and groups[0][1] <= end:
            g_start, g_end, g_fds = groups.popleft()
            if g_start <= start and not found:
                fds = g_fds
                found = True
                if type(fds) is _TooManyFds:
                    self._break(
                        f"the peer sent {fds.sent} file descriptors with one message, over "
                        f"max_fds={self._max_fds}; all of them were closed",
                        TooManyFds,
                        count=fds.sent,
                    )
                continue
            close_fds(g_fds)
            close_fds(fds)
            self._break(
                f"file descriptors arrived with stream bytes {g_start}..{g_end}, inside the "
                f"message at bytes {start}..{end} rather than with its start"
            )
        return fds

    def _at_eof(self, held: int) -> None:
        if held == 0:
            self._close_groups()
            raise ChannelClosed("the peer closed the channel")
        if held < HEADER_SIZE:
            self._break(f"end of file inside a message header: {held} of its 4 bytes arrived")
        size = _unpack_from(self._buf, self._rpos)[0]
        self._break(
            f"end of file inside a message: {held - HEADER_SIZE} of its {size} payload "
            f"bytes arrived"
        )

    def _over_limit(self, size: int) -> None:
        self._break(
            f"the peer declared a message of {size} bytes, over max_message_size "
            f"({self._max} bytes)"
        )

    def _close_groups(self) -> None:
        while self._groups:
            close_fds(self._groups.popleft()[2])

    def _break(
        self, reason: str, error: type[ProtocolError] | type[TooManyFds] = ProtocolError, **kw: int
    ) -> None:
        self._broken = reason
        self._direct = None
        self._close_groups()
        self._rpos = self._wpos = 0
        if error is TooManyFds:
            raise TooManyFds(
                reason + "; the channel is unusable", count=kw["count"], limit=self._max_fds
            )
        raise ProtocolError(reason + "; the channel is unusable")


def py_take_frame(
    decoder: Any,
    lock: threading.Lock | None,
    record: list[bytes],
    need: _NeedData | None = None,
    /,
) -> bytes | _NeedData | None:
    """The next message's payload if *decoder* holds all of it and nothing
    needs more care (descriptors, an error, a direct read, a length over the
    limit); *need* if it holds nothing at all and is open (no end of file, no
    error, no direct read: next_message() would answer NEED_DATA at once);
    else None. Changes nothing unless it returns a payload.

    For a receiver that takes messages without a lock of its own: *lock* is
    the lock every other mutator of *decoder* holds (None: the caller holds
    it already). The payload is appended
    to *record* in the same step that consumes it, so that a caller whose
    exception (a signal handler's) comes before it could bind the result can
    put it back. Each message goes to exactly one caller, from any number of
    threads. *need* lets the receive path of a round trip learn "wait" in
    this call, without a call to next_message().

    This pure-Python version holds *lock* around the take. The C version
    (``_speedups.take_frame``, used when built, with a GIL) only checks that
    *lock* is free and then does the whole take without running any Python
    code, which makes it atomic under the GIL at a fraction of a lock's cost;
    it takes nothing from a PacketDecoder (None), whose messages its own
    methods take.
    """
    take: Callable[[list[bytes], _NeedData | None], bytes | _NeedData | None]
    take = decoder._take_whole
    if lock is None:
        return take(record, need)
    with lock:
        return take(record, need)


take_frame: Callable[..., bytes | _NeedData | None] = py_take_frame
# The C version is atomic only while a GIL serialises threads (not on a
# free-threaded build that runs without one).
if ACCELERATED and getattr(sys, "_is_gil_enabled", lambda: True)():
    from ._speedups import take_frame as _c_take_frame

    take_frame = _c_take_frame

#: take_frame is the C one: a receive path asks it first, in the state where
#: next_message() would be one Python call (with the pure-Python take, two).
C_TAKE = take_frame is not py_take_frame

#: ``StreamDecoder.read_commit`` as a function of (decoder, sock, flags): the C
#: version when the accelerator is in use (chosen once, here, with the framing).
read_commit: Callable[[StreamDecoder, _socket.socket, int], int] = StreamDecoder.read_commit
if ACCELERATED:
    from ._speedups import read_commit as _c_read_commit

    read_commit = _c_read_commit

#: The largest payload :func:`send_frame` takes: the one-message fast path's
#: limit, the size up to which a frame is copied whole (as in :func:`encode`).
SEND_FRAME_MAX: Final = _JOIN_LIMIT


def py_send_frame(sock: _socket.socket, data: bytes, flags: int, /) -> int:
    """Frame *data* (a 4-byte big-endian length, then the payload) and send it
    with one ``send(2)`` on *sock* with *flags*; return how many bytes of the
    frame went (all of a frame this small on Linux; a caller sends the rest).

    The one-message fast path of both channels, which call the C version
    (below) and, without it, make this function's ``sock.send`` themselves
    (see C_SEND); this is its contract and the twin the tests compare the C
    one with. *sock* has no timeout (blocking or not). Without
    ``MSG_DONTWAIT`` in *flags* it waits for room like ``socket.send``, and
    is interrupted by signals like it (PEP 475).

    Raises:
        TypeError: *data* is not ``bytes``.
        ValueError: *data* is over :data:`SEND_FRAME_MAX` bytes.
        OSError: the ``send(2)`` failed (``BlockingIOError`` when it cannot
            wait, ``BrokenPipeError``, ``EBADF`` on a closed socket ...);
            nothing was sent.

    ``_speedups.send_frame`` is the same in C, used when built: it builds the
    frame on its stack instead of in two new objects, and does not release the
    GIL around a send that cannot wait (when *flags* allows waiting it first
    tries without, and releases the GIL only to wait): ~1.5 k instructions
    less per message (docs/performance.md).
    """
    if type(data) is not bytes:
        raise TypeError(f"send_frame: data must be bytes, not {type(data).__name__}")
    if len(data) > SEND_FRAME_MAX:
        raise ValueError(f"send_frame: {len(data)} bytes is over the {SEND_FRAME_MAX}-byte limit")
    return sock.send(_pack(len(data)) + data, flags)


#: ``py_send_frame``, or its C twin when the accelerator is in use.
send_frame: Callable[[_socket.socket, bytes, int], int] = py_send_frame
if ACCELERATED:
    from ._speedups import send_frame as _c_send_frame

    send_frame = _c_send_frame

#: send_frame is the C one: the fast paths call it; without it they make
#: py_send_frame's ``sock.send`` themselves (its checks and one more Python call
#: cost ~0.9 k instructions per message, 16 % of a pure-Python 64 B send).
C_SEND = send_frame is not py_send_frame
