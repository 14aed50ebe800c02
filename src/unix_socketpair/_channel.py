"""The blocking message channel: a socket plus the sans-IO codec.

:class:`ChannelBase` holds everything the blocking :class:`Channel` and the
asyncio :class:`~unix_socketpair.AsyncChannel` share: adopting the socket,
checking and framing what is sent, and the single system calls ("steps") that
move bytes between the socket and the decoder. A step either completes or, on a
non-blocking socket, raises ``BlockingIOError`` having changed nothing; the two
channels differ only in how they wait before trying again.
"""

from __future__ import annotations

import _socket
import array
import contextlib
import errno
import math
import os
import select
import socket
import struct
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from ._ancillary import (
    ANCBUFSIZE,
    SCM_MAX_FD,
    Credentials,
    check_fds,
    close_fds,
    credentials_from_record,
    enable_passcred,
    first_bad_fd,
    pack_fds,
    peek_credentials,
    peer_credentials,
    split_ancillary,
)
from ._codec import (
    AGAIN,
    C_SEND,
    C_TAKE,
    DEFAULT_MAX_MESSAGE_SIZE,
    HANDED_INTO,
    HEADER_SIZE,
    MAX_WIRE_LENGTH,
    NEED_DATA,
    NOT_USUAL,
    SEND_FRAME_MAX,
    Buffer,
    StreamDecoder,
    _NeedData,
    _pack,
    encode,
    encode_many,
    read_commit,
    send_frame,
    take_frame,
    uninterrupted,
)
from ._errors import (
    ChannelClosed,
    ChannelError,
    MessageTooLarge,
)
from ._packets import PacketDecoder, encode_packet, encode_packets
from ._pair import SOCK_DGRAM, SOCK_SEQPACKET, SOCK_STREAM, close_quietly, socketpair, type_name
from ._sendq import OPEN, SendQueue

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["Channel", "ChannelBase"]

_T = TypeVar("_T", bound="ChannelBase")
_R = TypeVar("_R")

# Plain ints, not the socket module's IntFlag members: an enum operation on
# every read costs more than the system call's Python overhead.
MSG_NOSIGNAL: int = int(getattr(socket, "MSG_NOSIGNAL", 0))
# macOS has no MSG_NOSIGNAL; its per-socket equivalent is SO_NOSIGPIPE (0x1022 in
# <sys/socket.h>), which the socket module does not export. Untested here.
_SO_NOSIGPIPE: int | None = (
    None
    if MSG_NOSIGNAL
    else getattr(socket, "SO_NOSIGPIPE", 0x1022 if sys.platform == "darwin" else None)
)
_MSG_CMSG_CLOEXEC: int = int(getattr(socket, "MSG_CMSG_CLOEXEC", 0))
_MSG_CTRUNC = int(socket.MSG_CTRUNC)
_MSG_TRUNC = int(socket.MSG_TRUNC)
_SOL_SOCKET = int(socket.SOL_SOCKET)
_LINUX = sys.platform.startswith("linux")
# Linux returns a packet's real length when MSG_TRUNC is passed to recvmsg.
_PACKET_RECV_FLAGS = _MSG_CMSG_CLOEXEC | (_MSG_TRUNC if _LINUX else 0)
_MSG_DONTWAIT = int(socket.MSG_DONTWAIT)
# recv_into() reads a payload straight into the caller's buffer from this size on;
# below it, reading ahead into the decoder (and copying) saves system calls.
_DIRECT_THRESHOLD = 64 * 1024
_NO_FDS: tuple[int, ...] = ()
_NO_VIEW = memoryview(b"")  # a stream channel's packet buffer (never used or released)
_ENV = "SOCKETPAIR_FD"
_MAX_SPIN = 1000
_MAX_WRITE_BUFFER = 64 * 1024 * 1024
_ANC = (ANCBUFSIZE,)
# Every send is non-blocking; waiting happens in poll(), which a timeout
# bounds and close() ends (see Channel).
_SEND_FLAGS = MSG_NOSIGNAL | _MSG_DONTWAIT
_SEND_FLAGS_T = (_SEND_FLAGS,)
_NO_ANC: list[Any] = []  # (never changed)
# Past this many seconds a deadline is "no limit" for poll() (whose argument
# is an int of milliseconds); the wait is simply repeated.
_POLL_FOREVER = 86400.0 * 24
_TIMEVAL = struct.Struct("@ll")
_raw_family = _socket.socket.family.__get__
_raw_type = _socket.socket.type.__get__
_AF_UNIX = int(socket.AF_UNIX)
_TYPES = (int(SOCK_STREAM), int(SOCK_SEQPACKET), int(SOCK_DGRAM))
# How long a large send waits between looks at the small sends in flight.
_BUSY_WAIT = 0.0002
# Adaptive spinning (see Channel and _read_raw): waits in a row whose tries
# all found nothing before a channel stops spinning, and reads after which it
# tries again.
_SPIN_CREDIT = 4
_PROBE_READS = 256


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no sched_getaffinity on macOS
        return os.cpu_count() or 1


# Measured (docs/performance.md, 2-CPU VM, 1-byte round trips, Channel's time
# over plain socket send/recv's): waking a sleeping process costs more than a
# whole round trip's CPU. With the two processes on different CPUs, 10 tries
# (a window of ~15 us, longer than the peer's turnaround) took it from 1.7x
# to 0.9x; 3 tries were too short a window to pay (1.6x) and adaptive
# spinning gave up. On one shared CPU the tries fail and stop after 4 waits:
# 1.54x with or without. On one usable CPU there is no point at all.
DEFAULT_SPIN: int = 10 if _usable_cpus() > 1 else 0


def _writable(buffer: object) -> memoryview:
    try:
        view = memoryview(buffer)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"recv_into() needs a writable bytes-like object, not {type(buffer).__name__}"
        ) from None
    if view.readonly:
        raise TypeError("recv_into() needs a writable buffer, not a read-only one")
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def _adopt(sock_or_fd: _socket.socket | int) -> _socket.socket:
    """Wrap *sock_or_fd* after checking it is an AF_UNIX socket of a known type.

    A socket object may be a ``socket.socket`` or the C type it is built on
    (``Channel.pair()`` passes those: see there). On failure nothing is
    closed: the caller still owns what it passed.
    """
    if isinstance(sock_or_fd, _socket.socket):
        sock = sock_or_fd
        if sock.fileno() < 0:
            raise ValueError("the socket is closed")
        created = False
    elif isinstance(sock_or_fd, int) and not isinstance(sock_or_fd, bool):
        if sock_or_fd < 0:
            raise ValueError(f"file descriptor must be >= 0, not {sock_or_fd}")
        try:
            sock = socket.socket(fileno=sock_or_fd)
        except OSError as exc:
            raise OSError(
                exc.errno, f"fd {sock_or_fd} is not a usable socket: {exc.strerror}"
            ) from exc
        created = True
    else:
        raise TypeError(
            f"expected a socket.socket or an int file descriptor, not {type(sock_or_fd).__name__}"
        )
    # The raw ints (socket.socket's own properties convert them to enums, slowly).
    if _raw_family(sock) != _AF_UNIX or _raw_type(sock) not in _TYPES:
        what = f"family {sock.family!r}, type {sock.type!r}"
        if created:
            sock.detach()
        raise ValueError(
            "a channel needs an AF_UNIX SOCK_STREAM, SOCK_SEQPACKET or SOCK_DGRAM socket, "
            f"not {what}"
        )
    return sock


def _close_all(*ends: _socket.socket | int) -> None:
    for end in ends:
        if isinstance(end, _socket.socket):
            end.close()
        else:
            close_quietly(end)


def _check_limit(name: str, value: object, low: int, high: int) -> int:
    if type(value) is int and low <= value <= high:
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, not {value}")
    return value


def _fd_from_env() -> int:
    raw = os.environ.get(_ENV)
    if raw is None:
        raise ValueError(
            f"{_ENV} is not set: this process was not given a channel "
            f"(the parent sets {_ENV} to the descriptor number, or to 'stdio')"
        )
    value = raw.strip()
    if value == "stdio":
        return 0
    try:
        fd = int(value, 10)
    except ValueError:
        raise ValueError(f"{_ENV}={raw!r} is not a descriptor number nor 'stdio'") from None
    if fd < 0:
        raise ValueError(f"{_ENV}={raw!r} is negative")
    return fd


class _Deadline:
    """When a call with a timeout must give up. ``math.inf`` and very large
    timeouts are accepted and simply never pass."""

    __slots__ = ("at", "timeout")

    def __init__(self, timeout: object) -> None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise TypeError(
                f"timeout must be a number of seconds or None, not {type(timeout).__name__}"
            )
        if not timeout >= 0:  # NaN too
            raise ValueError(f"timeout must be >= 0 seconds, not {timeout}")
        self.timeout = float(timeout)
        self.at = time.monotonic() + self.timeout

    def poll_ms(self) -> int | None:
        """What to pass to ``poll()`` now: milliseconds left (0 once passed),
        or None (no limit) when the deadline is beyond what poll can express."""
        remaining = self.at - time.monotonic()
        if remaining <= 0:
            return 0
        if remaining >= _POLL_FOREVER:
            return None  # inf, or days: "wait"; polled again when it returns
        return math.ceil(remaining * 1000)


def _wait(sock: _socket.socket, events: int, deadline: _Deadline | None) -> bool:
    """Wait until *sock* has one of *events* (or hangs up); False if *deadline*
    passed first. A signal handler's exception leaves nothing to undo."""
    poller = select.poll()
    poller.register(sock, events)
    if deadline is None:
        poller.poll()
        return True
    ms = deadline.poll_ms()
    if ms == 0:
        return False
    return bool(poller.poll(ms)) or deadline.poll_ms() != 0


class ChannelBase:
    """What the blocking and asyncio channels share (not public)."""

    _blocking: ClassVar[bool] = True

    __slots__ = (
        "__weakref__",
        "_closed",
        "_dec",
        "_frame",
        "_frames",
        "_max",
        "_max_fds",
        "_passcred",
        "_queue",
        "_rbase",
        "_read",
        "_sendq",
        "_sock",
        "_type",
    )

    def __init__(
        self,
        sock_or_fd: socket.socket | int,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_fds: int = SCM_MAX_FD,
    ) -> None:
        self._closed = True  # until fully set up (for __del__)
        # The checks inlined for valid ints (the usual case): construction cost.
        if type(max_message_size) is not int or not 0 <= max_message_size <= MAX_WIRE_LENGTH:
            _check_limit("max_message_size", max_message_size, 0, MAX_WIRE_LENGTH)
        if type(max_fds) is not int or not 0 <= max_fds <= SCM_MAX_FD:
            _check_limit("max_fds", max_fds, 0, SCM_MAX_FD)
        sock = _adopt(sock_or_fd)
        sock.setblocking(self._blocking)
        self._sock = sock
        self._type: int = _raw_type(sock)
        # The one place the socket's type is asked: every difference between a
        # stream and the packet types is an object or a value chosen below.
        stream = self._type == SOCK_STREAM
        self._max = max_message_size
        self._max_fds = max_fds
        # Every read's flags: close-on-exec descriptors; for packets also the
        # real length of a packet larger than the buffer (Linux), to tell it.
        self._rbase = _MSG_CMSG_CLOEXEC if stream else _PACKET_RECV_FLAGS
        # The send direction's state and decisions (see _sendq); a bytes message
        # up to *small* may take send()'s fast path. _queue: the bytes a read
        # must write first while it waits (a write buffer's messages, the rest
        # of a cut frame): the send queue's buffer on Channel; on AsyncChannel
        # always empty (the event loop writes its write-behind, never a read).
        small = min(SEND_FRAME_MAX, max_message_size) if stream else -1
        self._sendq = SendQueue(small, behind=not self._blocking)
        self._queue: bytes | bytearray = self._sendq.held if self._blocking else b""
        # On every type: from now on the kernel stamps what the peer sends with
        # the sender's real credentials (a socketpair's SO_PEERCRED only names
        # its creator).
        self._passcred = enable_passcred(sock)
        if _SO_NOSIGPIPE is not None:
            # Where writes cannot say MSG_NOSIGNAL, the socket says it once.
            sock.setsockopt(socket.SOL_SOCKET, _SO_NOSIGPIPE, 1)
        # The receiving protocol, chosen once: every receive method below works
        # on either through the same interface (and never asks which).
        self._dec: StreamDecoder | PacketDecoder = (
            StreamDecoder(max_message_size, max_fds)
            if stream
            else PacketDecoder(
                max_message_size, max_fds, passcred=self._passcred, dgram=self._type == SOCK_DGRAM
            )
        )
        # The read of the receive path, chosen with it: for a stream, one call
        # that reads and accounts for the usual read (in C when the accelerator
        # is in use: _speedups.read_commit); for packets, the read alone (the
        # packet decoder's commit_read decides everything about a packet).
        self._read: Callable[[Any, _socket.socket, int], int] = (
            read_commit if stream else PacketDecoder.read_commit
        )
        # The framing of what is sent, chosen with the decoder: a length prefix
        # on a stream, one packet per message otherwise.
        self._frame: Callable[[object, int], list[Buffer]] = encode if stream else encode_packet
        self._frames: Callable[[Iterable[object], int], Iterator[list[Buffer]]] = (
            encode_many if stream else encode_packets
        )
        self._closed = False

    # -- construction -------------------------------------------------------

    @classmethod
    def pair(cls: type[_T], type: int = SOCK_STREAM, **options: Any) -> tuple[_T, _T]:
        """Two connected channels over a new socketpair of *type*.

        *options* are passed to both constructors (``max_message_size``,
        ``max_fds``). The caller owns both channels.
        """
        a: _socket.socket | int
        b: _socket.socket | int
        # (SOCK_STREAM and the others are the socket module's IntEnum members.)
        if (
            not cls._blocking
            or not isinstance(type, int)
            or isinstance(type, bool)
            or type not in _TYPES
        ):
            # Its checks and its error for a bad type. The asyncio channel takes
            # descriptors: a socket created before the channel comes before it
            # in the collector's list, so when a dropped channel is collected in
            # a cycle, the socket's finalizer would close the descriptor before
            # the channel can unregister it from the loop.
            a, b = socketpair(type)
        else:
            # Sockets of the C type socket.socket is built on: they know their
            # family and type (adopting them asks the kernel nothing), where
            # socket.socketpair() asks getsockname() for each and wraps each
            # again in Python (measured: a quarter of pair()'s time).
            a, b = _socket.socketpair(_AF_UNIX, type)
        try:
            first = cls(a, **options)  # type: ignore[arg-type]
        except BaseException:
            _close_all(a, b)
            raise
        try:
            second = cls(b, **options)  # type: ignore[arg-type]
        except BaseException:
            first.close()
            _close_all(b)
            raise
        return first, second

    @classmethod
    def from_fd(cls: type[_T], fd: int, **options: Any) -> _T:
        """Adopt the socket at descriptor *fd* (the channel owns it from now on)."""
        return cls(fd, **options)

    @classmethod
    def from_env(cls: type[_T], **options: Any) -> _T:
        """The channel a parent handed this process, found through ``SOCKETPAIR_FD``.

        ``SOCKETPAIR_FD`` holds the descriptor number, or ``stdio`` when the socket
        is on descriptors 0 and 1 (the channel then adopts fd 0; fd 1 still refers
        to the same socket, so do not print to stdout, and the peer sees end of
        file only when both are closed or after :meth:`shutdown_write`).

        ``SOCKETPAIR_FD`` is removed from ``os.environ`` (whether or not adopting
        the descriptor succeeds), so that programs this process starts do not
        inherit a number that means nothing to them.

        A numbered descriptor is made close-on-exec: it belongs to this channel,
        not to the programs this process may start.

        Raises:
            ValueError: ``SOCKETPAIR_FD`` is unset, not a number, or negative.
            OSError: the descriptor is not open or not a socket.
        """
        fd = _fd_from_env()
        # The number means something to this process only: a program this
        # process starts must not find it (as Node.js does with NODE_CHANNEL_FD).
        os.environ.pop(_ENV, None)
        try:
            channel = cls(fd, **options)
        except OSError as exc:
            raise OSError(exc.errno, f"{_ENV}={fd}: {exc.strerror or exc}") from exc
        except ValueError as exc:
            raise ValueError(f"{_ENV}={fd}: {exc}") from exc
        if fd > 2:
            os.set_inheritable(fd, False)
        return channel

    # -- properties ---------------------------------------------------------

    @property
    def type(self) -> int:
        """``SOCK_STREAM``, ``SOCK_SEQPACKET`` or ``SOCK_DGRAM``."""
        return self._type

    @property
    def max_message_size(self) -> int:
        """The largest message this channel sends or accepts, in bytes."""
        return self._max

    @property
    def max_fds(self) -> int:
        """The most descriptors this channel sends or accepts with one message."""
        return self._max_fds

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def fileno(self) -> int:
        """The socket's descriptor (still owned by the channel); -1 once closed."""
        return -1 if self._closed else self._sock.fileno()

    def peer_credentials(self) -> Credentials:
        """``Credentials(pid, uid, gid)`` of the peer process.

        Linux: the process that sent the data this channel read from its socket
        most recently, as the kernel stamped it at send time (``SO_PASSCRED`` /
        ``SCM_CREDENTIALS``, turned on by the constructor; a process cannot
        forge it without ``CAP_SYS_ADMIN``/``CAP_SETUID``/``CAP_SETGID``). If
        a child forks and a grandchild writes, that is the grandchild. The
        channel may read ahead, so "most recently read" can be a message not
        yet returned by ``recv``; after a message was received, it is that
        message's sender or a later one's. Before anything was read, the sender
        of the first unread data is looked up without consuming it (a peek,
        which takes none of its descriptors); with nothing queued either, the
        answer is ``SO_PEERCRED``: the socket's connect-time credentials, which
        for a socketpair are the process that **created the pair** (even after
        the end was passed to a child). Data sent before ``SO_PASSCRED`` was on
        (before this channel was created, unless :func:`spawn` set it) carries
        no stamp and is answered the same way. To identify a child for sure,
        receive a message from it first, then check; :func:`spawn` turns
        ``SO_PASSCRED`` on before the child starts.

        macOS/BSD: ``LOCAL_PEERCRED`` (untested), the connect-time credentials.

        Raises:
            OSError: the channel is closed (``EBADF``), or the query failed.
        """
        self._check_open()
        if self._passcred:
            record = self._dec.creds
            if record is None:
                record = peek_credentials(self._sock)
            if record is not None:
                creds = credentials_from_record(record)
                if creds is not None:
                    return creds
        return peer_credentials(self._sock)

    def shutdown_write(self) -> None:
        """Tell the peer no more messages come (it sees end of file after the last
        one); receiving still works. Later sends raise ``BrokenPipeError``.
        ``SOCK_DGRAM`` has no end of file: the peer is not told."""
        self._check_open()
        self._sock.shutdown(socket.SHUT_WR)
        self._sendq.shut()

    def close(self) -> None:
        """Close the socket and every descriptor received but not yet delivered.

        Idempotent. Any later operation raises ``OSError`` (``EBADF``).
        """
        if self._closed:
            return
        self._closed = True
        self._release()

    def _release(self) -> None:
        """Give back what the channel holds (no call may be inside it)."""
        self._sendq.close()
        self._dec.close()
        self._sock.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"fd={self._sock.fileno()}"
        return f"<{type(self).__name__} {type_name(self._type)} {state}>"

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            warnings.warn(f"unclosed {self!r}", ResourceWarning, stacklevel=2, source=self)
            self.close()

    # -- shared helpers (no waiting in here) ---------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise OSError(errno.EBADF, "the channel is closed")

    def _prepare(self, data: object, fds: Iterable[object]) -> tuple[list[Buffer], list[Any]]:
        """Check and frame one message: (buffers, ancillary). Raises before any I/O."""
        bufs = self._frame(data, self._max)
        anc = pack_fds(check_fds(fds, self._max_fds)) if fds is not _NO_FDS else []
        self._check_send()
        return bufs, anc

    def _check_send(self) -> None:
        """Raise what a new message must raise now (closed, broken, shut)."""
        if self._closed:
            raise OSError(errno.EBADF, "the channel is closed")
        if self._sendq.state is not OPEN:
            self._sendq.check()

    def _send_error(self, exc: OSError, bufs: list[Buffer], anc: list[Any] = []) -> BaseException:  # noqa: B006
        """Translate a send failure into the error the caller should see."""
        if self._closed:
            if exc.errno in (errno.EPIPE, errno.ESHUTDOWN, errno.EBADF, errno.ECONNRESET):
                return ChannelClosed("close() was called while this send was waiting")
            return OSError(errno.EBADF, "the channel is closed")
        if exc.errno == errno.EBADF and anc:
            fds = [fd for _, kind, data in anc for fd in array.array("i", data)]
            bad = first_bad_fd(fds)
            return OSError(
                errno.EBADF,
                f"fds: {bad if bad is not None else fds} is not an open file descriptor; "
                "nothing was sent",
            )
        if exc.errno == errno.EMSGSIZE:  # (packets only: a stream has no such limit)
            size = sum(memoryview(b).nbytes for b in bufs)
            try:
                sndbuf = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
            except OSError:
                sndbuf = 0
            # Linux charges a packet against SO_SNDBUF less 32 bytes of overhead.
            limit = max(sndbuf - 32, 0)
            return MessageTooLarge(
                f"a {type_name(self._type)} packet of {size} bytes is more than the socket "
                f"can carry (about {limit} bytes, from SO_SNDBUF={sndbuf}; raise SO_SNDBUF "
                f"or use SOCK_STREAM)",
                size=size,
                limit=limit,
            )
        if exc.errno == errno.ECONNREFUSED and self._type == SOCK_DGRAM:
            # A connected datagram socket reports its closed peer as ECONNREFUSED.
            return BrokenPipeError(errno.EPIPE, "the peer has closed the channel")
        return exc

    def _sendmsg(self, bufs: Sequence[Buffer], anc: list[Any], log: list[int]) -> None:
        """The channel's one ``sendmsg`` call (the one-message fast paths aside,
        which ``send``): *bufs*, with the control data *anc*, without waiting
        and never raising SIGPIPE; the count is appended to *log* from C, so
        that no bytecode runs between the call returning and the count being
        recorded. Raises the call's error as it is (``BlockingIOError``: no
        room)."""
        log.extend(map(self._sock.sendmsg, (bufs,), (anc,), _SEND_FLAGS_T))

    # -- receiving steps ------------------------------------------------------
    #
    # Every read's result goes into an inbox list before it is accounted for,
    # by a commit that calls nothing between moving the decoder's position and
    # dropping the inbox entry; a result left in the inbox by an exception is
    # committed by the next call before it reads again. A read appends its
    # result from C: _recvmsg() (``inbox.extend(map(sock.recvmsg_into, ...))``)
    # or the decoder's read_commit (self._read: the read and its usual
    # accounting in one call, the per-message path), so no bytecode runs
    # between the call returning and the result being recorded, except in
    # read_commit's pure-Python twin (docs/concurrency.md: the residual
    # windows, measured).

    def _recvmsg(
        self,
        bufs: tuple[memoryview, ...],
        flags: int,
        inbox: list[tuple[Any, ...]],
        reset: bool = False,
    ) -> None:
        """The channel's one ``recvmsg`` call: one read into *bufs* with
        *flags*, its raw result appended to *inbox* from C.

        ``ConnectionResetError`` (the peer closed while some of what we sent
        was still unread: the kernel reports that once, and what the peer sent
        before closing is still queued and comes first, then the end of the
        stream) is read past without waiting, and end of file appended if
        nothing comes; *reset*: the caller's own read already got it. Raises
        the read's other errors as they are (``BlockingIOError`` included).
        """
        if reset:
            flags |= _MSG_DONTWAIT
        while True:
            try:
                inbox.extend(map(self._sock.recvmsg_into, (bufs,), _ANC, (flags,)))
                return
            except OSError as exc:
                if reset:
                    inbox.append((0, [], 0, None))
                    return
                if not isinstance(exc, ConnectionResetError):
                    raise
            reset = True
            flags |= _MSG_DONTWAIT

    def _read_exc(self, exc: OSError) -> OSError:
        """The error a failed read raises: "the channel is closed" once it is
        (the read's own error its cause), else the read's."""
        if self._closed or exc.errno == errno.EBADF:
            closed = OSError(errno.EBADF, "the channel is closed")
            closed.__cause__ = exc
            return closed
        return exc

    def _fill(self) -> None:
        """One read into the decoder and its accounting, the general way (each
        channel waits its own way)."""
        raise NotImplementedError

    def _read_again(self, bufs: tuple[memoryview, ...], inbox: list[tuple[Any, ...]]) -> None:
        """read_commit found nothing to read: what this channel does then."""
        raise NotImplementedError

    def _after_read(self, n: int, exc: OSError | None = None) -> None:
        """Finish a read that ``self._read`` (read_commit) did not account for
        itself: *n* its answer, *exc* the error it raised instead. A decoder
        not in its usual state takes the general path (_fill); nothing there
        (AGAIN) is for the channel to decide (_read_again: wait, spin, or
        raise BlockingIOError), a reset is read past (_recvmsg), another error
        raised; then the raw result in the inbox is accounted for by the
        decoder (commit_read)."""
        if n == NOT_USUAL and exc is None:
            self._fill()
            return
        dec = self._dec
        inbox = dec.inbox
        if exc is not None:
            if not isinstance(exc, ConnectionResetError):
                raise self._read_exc(exc)
            self._recvmsg(dec.read_buffers(), self._rbase, inbox, True)
        elif n == AGAIN:
            self._read_again(dec.read_buffers(), inbox)
        if self._closed and not inbox[0][0]:
            self._woken_by_close()
        dec.commit_read()

    def _woken_by_close(self) -> None:
        """close() shut the socket down under a waiting read (which returned
        0 bytes): drop that result and raise ChannelClosed."""
        dec = self._dec
        entry = dec.inbox[0]
        del dec.inbox[0]
        close_fds(split_ancillary(entry[1])[0])
        dec.abort_direct()
        raise ChannelClosed("close() was called while this call was waiting")


class Channel(ChannelBase):
    """A framed, bidirectional message channel over one ``AF_UNIX`` socket.

    ``Channel(sock_or_fd, *, max_message_size=64 MiB, max_fds=253, spin=10)``
    adopts a ``socket.socket`` or a raw descriptor of an ``AF_UNIX``
    ``SOCK_STREAM``, ``SOCK_SEQPACKET`` or ``SOCK_DGRAM`` socket and **owns
    it**: :meth:`close` closes it. The socket is switched to blocking mode. If
    the constructor raises, nothing was closed and the caller still owns what
    it passed.

    *spin* (0 to 1000): a receive that finds nothing queued tries that many
    times in all without sleeping (non-blocking reads, a microsecond or two
    each) before it sleeps in the kernel. A peer on another CPU that answers
    at once is then read without the cost of waking a sleeping process, which
    is most of a round trip's latency (halved in docs/performance.md).
    Spinning adapts: after 4 waits in a row whose tries all found nothing
    (a slow peer, or one sharing our CPU, which cannot run while we try) the
    channel sleeps at once, and tries spinning again 256 reads later. The
    default is 10 when this process may run on more than one CPU, else 0:
    never spin.

    On ``SOCK_STREAM`` each message is framed with a 4-byte big-endian length;
    on the packet types each message is one packet. ``docs/protocol.md`` has
    the details, so that a peer in any language can take part.

    *write_buffer* (bytes, ``SOCK_STREAM`` only, default 0: off): hold small
    messages (up to 16 KiB, without descriptors) back and send them together
    in one system call once this many bytes are held, like a buffered file.
    Messages sent one at a time then go several times as fast
    (docs/performance.md), at a price: the peer sees them only when the
    buffer fills, on :meth:`flush`, before this channel reads from its socket
    (a ``recv`` never waits for an answer to a request it still holds), on
    :meth:`shutdown_write` and on :meth:`close`. Order is kept: a message with
    descriptors or a larger one sends what is held first. A failed send is
    raised by the call that flushes, and what was held is dropped.

    Threads: any number of threads may send and receive at once. ``send`` and
    ``send_many`` are atomic per message (a send lock); every receive method
    and iteration hand each message to exactly one caller (a receive lock);
    a sender thread and a receiver thread never wait for each other, with or
    without a write buffer (the write buffer has its own short lock, never
    held while waiting). :meth:`close` may be called from any thread: a call
    blocked in a send or receive raises :class:`ChannelClosed` at once; the
    descriptor is closed when the last call inside the channel leaves, so its
    number is never reused under a running call. docs/concurrency.md has the
    whole contract, including signals and ``fork``.

    Cancellation (a blocking call has no other): a call ends early by its
    ``timeout=`` (``TimeoutError``), by :meth:`close` from another thread
    (``ChannelClosed``), or by an exception a signal handler raises; in each
    case nothing received is lost, and a send cut short finishes its frame on
    the next send, ``flush`` or ``close``.
    """

    __slots__ = (
        "_busy",
        "_credit",
        "_forget",
        "_probe",
        "_qlock",
        "_rflags",
        "_rlock",
        "_slock",
        "_spin",
    )

    def __init__(
        self,
        sock_or_fd: socket.socket | int,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_fds: int = SCM_MAX_FD,
        spin: int = DEFAULT_SPIN,
        write_buffer: int = 0,
    ) -> None:
        if type(spin) is not int or not 0 <= spin <= _MAX_SPIN:
            _check_limit("spin", spin, 0, _MAX_SPIN)
        if type(write_buffer) is not int or not 0 <= write_buffer <= _MAX_WRITE_BUFFER:
            _check_limit("write_buffer", write_buffer, 0, _MAX_WRITE_BUFFER)
        super().__init__(sock_or_fd, max_message_size=max_message_size, max_fds=max_fds)
        if write_buffer and self._type != SOCK_STREAM:
            # Give back what we adopted: the caller still owns it.
            self._closed = True
            self._dec.close()
            if not isinstance(sock_or_fd, _socket.socket):
                self._sock.detach()
            raise ValueError(
                f"write_buffer needs a SOCK_STREAM channel, not {type_name(self._type)}: "
                "each packet is one message, so messages cannot be sent together"
            )
        # A spinning channel makes its first read attempt without waiting; when
        # that finds nothing, _read_raw() tries spin - 1 more times, then waits.
        self._spin = spin
        self._credit = _SPIN_CREDIT
        self._probe = 0
        self._rflags = self._rbase | (_MSG_DONTWAIT if spin else 0)
        # _slock: one message at a time goes out (held across waits).
        # _rlock: one receiver at a time takes from the decoder.
        # _qlock: guards the send queue, held only around non-blocking writes,
        # so that a receiver can write what a write buffer holds while a
        # sender waits for room (no sender/receiver deadlock).
        self._slock = _new_lock()
        self._rlock = _new_lock()
        self._qlock = _new_lock()
        self._busy = 0  # small sends inside the kernel (see send())
        self._forget = True  # receives clear the rollback record as they leave
        if write_buffer:
            self._sendq.buffer(write_buffer)
        # A plain set of weak references (its callback removes the dead one):
        # no Python code runs, where WeakSet.add costs a Python call.
        _CHANNELS.add(_weakref(self, _unregister))

    @property
    def write_buffer(self) -> int:
        """Bytes of small messages held back before they are sent (0: none)."""
        return self._sendq.high

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.close()
            return
        # The block's own exception matters more than a failure to send what
        # the write buffer held (the socket is closed either way).
        with contextlib.suppress(OSError):
            self.close()

    # -- life cycle -------------------------------------------------------------

    def close(self) -> None:
        """Send what the send queue holds (a write buffer's messages, the rest
        of a frame a timeout cut short), then close the socket and every
        descriptor received but not yet delivered.

        Idempotent; any later operation raises ``OSError`` (``EBADF``).

        From any thread: calls blocked in this channel (``send``, ``recv*``,
        iteration) are woken with :class:`ChannelClosed` (the socket is shut
        down), and the descriptor is closed by whichever call leaves last,
        never under a running call. ``close()`` itself never waits for
        another thread, so it is safe in a signal handler; the send queue is
        then written only if no other call is sending, and dropped otherwise.

        Raises:
            BrokenPipeError: the peer had closed before the queued messages
                could go (the channel is closed nonetheless).
        """
        if self._closed:
            return
        sendq = self._sendq
        try:
            if (sendq.held or sendq.frame is not None) and self._slock.acquire(False):
                try:
                    self._repair_partial()
                    self._flush_queue(None)
                finally:
                    self._slock.release()
        finally:
            self._closed = True
            sendq.close()
            if not self._try_release():
                # A call is inside: wake it; it releases on its way out.
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_RDWR)
                self._try_release()

    def _try_release(self) -> bool:
        """Release the channel's resources if no call is inside; True if done
        (now or before)."""
        if self._busy or not self._rlock.acquire(False):
            return False
        try:
            if not self._slock.acquire(False):
                return False
            try:
                if self._sock.fileno() >= 0:
                    # _release() without its sendq.close() (done by close()).
                    self._sendq.drop()
                    self._dec.close()
                    self._sock.close()
            finally:
                self._slock.release()
        finally:
            self._rlock.release()
        return True

    def _left(self) -> None:
        """A call left after close() was called: release if it was the last."""
        self._try_release()

    def __del__(self) -> None:
        if getattr(self, "_closed", True):
            return
        sendq = getattr(self, "_sendq", None)
        dropped = sendq.drop() if sendq is not None else 0  # never block in the collector
        note = (
            f"; dropped {dropped} bytes of messages it held back (call close() or flush())"
            if dropped
            else ""
        )
        warnings.warn(f"unclosed {self!r}{note}", ResourceWarning, stacklevel=2, source=self)
        self.close()

    def _after_fork(self) -> None:
        """In a child process after ``os.fork()``: what the parent's copy queued
        is the parent's to send; locks another thread held are free again."""
        self._slock = threading.Lock()
        self._rlock = threading.Lock()
        self._qlock = threading.Lock()
        self._sendq.forked()

    def flush(self, timeout: float | None = None) -> None:
        """Send what the send queue holds now: a write buffer's messages, or the
        rest of a frame a timeout cut short (nothing to do otherwise).

        Raises:
            OSError: ``EBADF`` once closed; ``BrokenPipeError`` if the peer has
                closed (the queued messages are then dropped: they cannot arrive).
            TimeoutError: *timeout* passed first; what is left stays queued.
            ChannelClosed: :meth:`close` was called meanwhile.
        """
        self._check_open()
        if not self._sendq.pending:
            return
        deadline = None if timeout is None else _Deadline(timeout)
        lock = self._slock
        try:
            with lock:
                self._repair_partial()
                self._flush_queue(deadline)
        finally:
            if self._closed:
                self._left()

    def shutdown_write(self) -> None:
        """Tell the peer no more messages come (after what is queued); receiving
        still works. Later sends raise ``BrokenPipeError``. ``SOCK_DGRAM`` has
        no end of file: the peer is not told."""
        if self._sendq.pending:
            self.flush()
        super().shutdown_write()

    # -- the send queue -----------------------------------------------------------

    def _write_queue(self) -> None:
        """Write what the queue holds without waiting (any thread)."""
        with self._qlock:
            sendq = self._sendq
            held = (sendq.held,)
            # Each count is recorded from C and applied by written(), first
            # thing, even when an exception fell between the two.
            while sendq.written():
                try:
                    self._sendmsg(held, _NO_ANC, sendq.wrote)
                except BlockingIOError:
                    return
                except OSError as exc:
                    sendq.drop()  # undeliverable: the peer or the socket is gone
                    raise self._send_error(exc, []) from exc

    def _flush_queue(self, deadline: _Deadline | None) -> None:
        """Write the whole queue, waiting for room (the caller holds _slock)."""
        held = self._sendq.held
        while held:
            self._write_queue()
            if held and deadline is None:
                deadline = self._sndtimeo()
            if held and not _wait(self._sock, select.POLLOUT, deadline):
                raise TimeoutError(
                    f"the peer did not take the queued messages within "
                    f"{deadline.timeout if deadline else 0:g} s; "
                    f"{len(held)} bytes stay queued"
                )
        self._sendq.refresh()

    # -- sending ------------------------------------------------------------

    def send(
        self, data: Buffer, *, fds: Iterable[object] = _NO_FDS, timeout: float | None = None
    ) -> None:
        """Send one message; return once the kernel has taken all of it.

        *data* is any bytes-like object (not copied if larger than 16 KiB).
        *fds* (ints, or objects with ``fileno()``) are sent with the message
        (``SCM_RIGHTS``); they stay owned by the caller (the peer receives
        duplicates).

        *timeout* (seconds; ``None``, ``math.inf``: no limit) bounds the wait
        for room in the socket. When it passes, ``TimeoutError`` is raised:
        either nothing of the message went (it was not sent), or part of it
        did, and then the rest is kept (copied) in the send queue and goes
        first on the next send or :meth:`flush`: the peer only ever sees
        whole messages. Thread-safe: one message at a time goes out.

        Raises:
            TypeError: *data* is not bytes-like, or an fd is neither an int nor
                has ``fileno()``; nothing sent.
            MessageTooLarge: over ``max_message_size``, or (packet types) over
                what one packet can carry; nothing sent.
            TooManyFds: more than ``max_fds`` descriptors; nothing sent.
            OSError: ``EBADF`` naming the descriptor if an fd is not open
                (nothing sent); ``EBADF`` "the channel is closed" after close().
            BrokenPipeError: the peer has closed (never SIGPIPE).
            TimeoutError: *timeout* passed (see above).
            ChannelClosed: :meth:`close` was called while this call waited.
            ProtocolError: an earlier send failed part way through a message
                (not a timeout); the channel refuses to send any more.
        """
        # The fast path: one system call per small bytes message, as little Python
        # around it as possible. The send queue decides when it is open
        # (SendQueue.refresh: not with a write buffer, while bytes are held or
        # a frame is in flight, nor once shut, broken or closed).
        if fds is _NO_FDS and type(data) is bytes and timeout is None:
            size = len(data)
            # No lock here (an uncontended one costs more than the rest of this
            # path, docs/performance.md): a frame this small is one kernel
            # buffer, which the kernel takes whole or not at all (Linux), so
            # two threads' small frames never mix; a send that may span
            # several buffers closes the fast path under the send lock and then
            # waits until no small send is in flight (_busy). Between the check
            # below and the system call nothing can switch threads (no call).
            # A count lost to a signal handler's exception loses nothing either.
            if size <= self._sendq.fast:
                self._busy += 1
                try:
                    sent = (
                        send_frame(self._sock, data, MSG_NOSIGNAL)
                        if C_SEND
                        else self._sock.send(_pack(size) + data, MSG_NOSIGNAL)
                    )
                except OSError as exc:
                    raise self._send_error(exc, [data]) from exc
                finally:
                    self._busy -= 1
                    if self._closed:
                        self._left()
                if sent == size + HEADER_SIZE:
                    return
                # Part of it (not on Linux): the rest, under the lock.
                with self._slock:
                    self._send_frames([memoryview(_pack(size) + data)[sent:]], [], None, sent)
                return
        self._send_checked(data, fds, timeout)

    def _send_checked(self, data: Buffer, fds: Iterable[object], timeout: float | None) -> None:
        deadline = None if timeout is None else _Deadline(timeout)
        bufs, anc = self._prepare(data, fds)
        lock = self._slock
        try:
            with lock:
                sendq = self._sendq
                if sendq.frame is not None:
                    self._repair_partial()  # a cut frame's rest goes first
                self._check_send()
                hold = sendq.hold
                if hold and not anc and len(bufs) == 1 and memoryview(bufs[0]).nbytes <= hold:
                    held = sendq.held
                    with self._qlock:
                        held += bufs[0]
                    if len(held) >= sendq.high:
                        self._flush_queue(deadline)
                    return
                if sendq.held:
                    self._flush_queue(deadline)
                self._send_frames(bufs, anc, deadline, 0)
        finally:
            if self._closed:
                self._left()

    def send_many(self, messages: Iterable[Buffer], *, timeout: float | None = None) -> None:
        """Send many messages, coalesced into as few system calls as possible.

        Equivalent to calling :meth:`send` for each (without descriptors), all
        under the send lock: another thread's message never falls between them.
        If *messages* is a list or tuple, every item is checked first, so a bad
        item raises before anything is sent; other iterables are consumed in
        batches of about 256 KiB, each checked before it is sent.

        *timeout* bounds the whole call; on ``TimeoutError`` the messages sent
        so far arrived whole, a message started is completed by the next send
        or :meth:`flush`, and the rest were not sent.

        Raises: as :meth:`send`.
        """
        self._check_send()
        deadline = None if timeout is None else _Deadline(timeout)
        lock = self._slock
        try:
            with lock:
                self._repair_partial()
                self._check_send()
                if self._sendq.held:
                    self._flush_queue(deadline)
                for bufs in self._frames(messages, self._max):
                    self._send_frames(bufs, [], deadline, 0)
        finally:
            if self._closed:
                self._left()

    def _send_frames(
        self, bufs: list[Buffer], anc: list[Any], deadline: _Deadline | None, before: int
    ) -> None:
        """Send all of *bufs* (*anc* with the first byte), waiting for room; the
        caller holds _slock. *before*: bytes of this frame that already went.

        Each system call's count is appended to a log from C, and the frame
        being sent is recorded before the first call, so an exception at any
        bytecode (a timeout, a signal handler's) leaves enough to know how much
        went: if part of the frame did, the rest is copied into the queue and
        goes first on the next send (done here, and again by the next send
        should an exception cut this repair short: _repair_partial). A failure
        that makes the rest undeliverable refuses further sends instead.
        """
        sendq = self._sendq
        sent = sendq.start(bufs, before)
        while self._busy and not before:
            time.sleep(_BUSY_WAIT)  # a small send still in the kernel: let it finish
        rest: list[Buffer] | None = bufs
        try:
            while rest is not None:
                try:
                    self._sendmsg(rest, anc, sent)
                except BlockingIOError:
                    if deadline is None:
                        deadline = self._sndtimeo()
                    if not _wait(self._sock, select.POLLOUT, deadline):
                        raise TimeoutError(
                            f"the peer did not take the message within "
                            f"{deadline.timeout if deadline else 0:g} s"
                            + (
                                "; the rest of it goes first on the next send"
                                if sent or before
                                else "; it was not sent"
                            )
                        ) from None
                    continue
                rest = sendq.remaining()
                anc = []
        except BaseException as exc:
            if isinstance(exc, OSError) and not isinstance(exc, (TimeoutError, BlockingIOError)):
                sendq.abandon(f"a send failed part way through a message ({exc})")
                raise self._send_error(exc, bufs, anc) from exc
            self._repair_partial()
            raise

    def _sndtimeo(self) -> _Deadline | None:
        """A deadline from the socket's own ``SO_SNDTIMEO``, if its owner set one
        (sends never block in the kernel, so the option would otherwise do
        nothing); asked only when a send has to wait."""
        try:
            raw = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _TIMEVAL.size)
        except OSError:
            return None
        seconds, micros = _TIMEVAL.unpack(raw[: _TIMEVAL.size])
        if not seconds and not micros:
            return None
        return _Deadline(seconds + micros / 1e6)

    def _repair_partial(self) -> None:
        """If a frame was cut short (see _send_frames), queue its rest, in one
        step with forgetting it, so the repair is done exactly once."""
        if self._sendq.frame is not None:
            with self._qlock:
                self._sendq.cut()

    # -- reading (waiting in the kernel, in poll, or spinning) -------------------

    def _fill(
        self, deadline: _Deadline | None = None, bufs: tuple[memoryview, ...] | None = None
    ) -> None:
        """One read into the decoder (end of file included), into *bufs* (default:
        the decoder's buffer), then its accounting. A result an exception left
        in the inbox is accounted for instead of reading. May raise
        TimeoutError once *deadline* passes, having changed nothing."""
        dec = self._dec
        inbox = dec.inbox
        if not inbox:
            if bufs is None:
                bufs = (dec.get_buffer(),)
            self._read_raw(bufs, deadline, inbox)
        if self._closed and not inbox[0][0]:
            self._woken_by_close()
        dec.commit_read()

    def _read_again(self, bufs: tuple[memoryview, ...], inbox: list[tuple[Any, ...]]) -> None:
        """read_commit's try (a spinning channel's first) found nothing: go on."""
        self._read_raw(bufs, None, inbox, True)

    def _read_raw(
        self,
        bufs: tuple[memoryview, ...],
        deadline: _Deadline | None,
        inbox: list[tuple[Any, ...]],
        missed: bool = False,
    ) -> None:
        """One read into *bufs*, its raw result appended to *inbox* (_recvmsg),
        waiting the way this channel waits.

        With a *deadline* or a send queue to write: in ``poll``, writing what
        the queue holds as the socket takes it, and no later than *deadline*
        (TimeoutError, having read nothing); never spinning. Otherwise in the
        kernel, after up to ``spin`` tries that do not wait (*missed*: the
        caller's own first try found nothing).

        Spinning adapts: a try that finds data after a miss renews the credit;
        waits whose tries all found nothing use it up, and the channel then
        waits at once (no failed tries at all, which cost most when the peer
        shares our CPU and cannot run while we try) until _PROBE_READS reads
        later (_probe_tick).

        Raises: TimeoutError; the read's error (see _read_exc).
        """
        polling = deadline is not None or bool(self._queue)
        if polling:
            flags = self._rbase | _MSG_DONTWAIT
        else:
            if self._probe and not missed:
                self._probe_tick()
            flags = self._rflags
        tries = self._spin
        while True:
            if missed:
                if polling:
                    events = select.POLLIN | (select.POLLOUT if self._queue else 0)
                    if not _wait(self._sock, events, deadline):
                        assert deadline is not None
                        partial = self._dec.buffered()
                        kept = (
                            f"; the {partial} bytes of it that did stay queued" if partial else ""
                        )
                        # No errno, as the socket module's own timeouts.
                        raise TimeoutError(
                            f"no whole message arrived within {deadline.timeout:g} s{kept}"
                        )
                else:
                    tries -= 1
                    if tries <= 0 and flags != self._rbase:
                        self._spin_failed()
                        flags = self._rbase
            if polling and self._queue:
                self._write_queue()
            try:
                self._recvmsg(bufs, flags, inbox)
            except OSError as exc:
                if isinstance(exc, BlockingIOError) and (polling or flags != self._rbase):
                    missed = True
                    continue
                # (A blocking read's BlockingIOError: someone made the socket
                # non-blocking behind the channel's back.)
                raise self._read_exc(exc)  # noqa: B904 (its cause is set when it is new)
            if missed and not polling and flags != self._rbase:
                self._credit = _SPIN_CREDIT
            return

    def _spin_failed(self) -> None:
        """Every try of a wait found nothing: spend credit; none left, stop spinning."""
        self._credit -= 1
        if self._credit <= 0:
            self._rflags = self._rbase
            self._probe = _PROBE_READS

    def _probe_tick(self) -> None:
        """Count a read made without spinning; after _PROBE_READS, spin again (once,
        unless it pays)."""
        self._probe -= 1
        if not self._probe:
            self._credit = 1
            self._rflags = self._rbase | _MSG_DONTWAIT

    # -- receiving ----------------------------------------------------------

    def recv(self, timeout: float | None = None) -> bytes:
        """Return the next message (a new ``bytes``), waiting for it.

        Descriptors that came with it are closed: use :meth:`recv_with_fds`
        to take them.

        *timeout* (seconds; ``None``, ``math.inf``: wait as long as it takes)
        bounds the wait for the whole message, including writing what the
        send queue holds; 0 takes only a message that is already there. When
        it passes, ``TimeoutError`` is raised and nothing is lost: the part
        of a message that did arrive stays queued for the next receive.

        Thread-safe: each message goes to exactly one receiving thread.

        Raises:
            ChannelClosed: the peer closed at a message boundary, or
                :meth:`close` was called while this call waited.
            ProtocolError: broken framing; the channel is unusable.
            FdsTruncated: the kernel truncated the message's descriptors (this
                process had no free slots); it was dropped, the channel is fine.
            TooManyFds: descriptors over ``max_fds`` (all closed; unusable).
            TimeoutError: *timeout* passed first.
            TypeError, ValueError: *timeout* is not a number >= 0.
        """
        if timeout is None:
            # The per-message path: a whole message already buffered is taken
            # without the receive lock (take_frame: atomic under the GIL, and
            # it declines while another receiver holds the lock). *taken*
            # records it in the same step, for the give-back below.
            taken: list[bytes] = []
            try:
                msg = take_frame(self._dec, self._rlock, taken)
            except BaseException:
                while taken:  # retried: another exception may cut it short
                    try:
                        self._return_taken(taken)
                    except BaseException:
                        continue
                raise
            if msg is not None:
                # (bytes: without a *need* argument take_frame has no other answer)
                return msg  # type: ignore[return-value]
            return self._recv_locked(taken)
        payload, fds = self._receive(self._take_with_fds, None, _Deadline(timeout), None, 0)
        close_fds(fds)
        return payload

    def _return_taken(self, taken: list[bytes]) -> None:
        """An exception left recv() between take_frame() and returning: put
        the message back in front (put_back empties *taken* in the same step,
        so a retry after a later exception does not put it back twice)."""
        with self._rlock:
            if self._closed:
                taken.clear()
            else:
                uninterrupted(self._dec, self._dec.put_back, taken, None)

    def _recv_locked(self, handed: list[Any]) -> bytes:
        """recv() under the receive lock: wait for the next message (*handed*:
        an empty list, the record of what this call takes).

        _receive() with its step inlined: this is the path of a reader that
        waits for each message (a round trip), where each Python call shows."""
        lock = self._rlock
        dec = self._dec
        try:
            with lock:
                dec.handed, dec.handed_by = handed, 0
                inbox = dec.inbox
                # With the accelerator, the usual answers (a whole message;
                # nothing at all: read) from take_frame in C, with no Python
                # frame; the pure-Python take would be two calls.
                msg: bytes | _NeedData | None = (
                    take_frame(dec, None, handed, NEED_DATA) if C_TAKE else None
                )
                if msg is None:
                    msg = dec.next_message()
                while msg is NEED_DATA:
                    if self._closed:
                        raise OSError(errno.EBADF, "the channel is closed")
                    if inbox or self._queue:
                        self._fill()
                    else:
                        # _fill()'s common case in one call: the read and, for
                        # the usual read, its accounting (read_commit).
                        if self._probe:
                            self._probe_tick()
                        try:
                            n = self._read(dec, self._sock, self._rflags)
                        except OSError as exc:
                            self._after_read(0, exc)
                        else:
                            if n <= 0:
                                self._after_read(n)
                    msg = take_frame(dec, None, handed, NEED_DATA)
                    if msg is None:
                        msg = dec.next_message()
                return msg  # type: ignore[return-value]
        except ChannelError:
            raise  # about the message itself: it is consumed, nothing to give back
        except BaseException:
            # As in _receive().
            while self._dec.handed and not self._closed:
                try:
                    self._give_back()
                except BaseException:  # retried; the first exception is re-raised
                    continue
            raise
        finally:
            if self._forget:
                self._dec.handed = []
            if self._closed:
                self._left()

    def _receive(
        self,
        step: Callable[[Any, _Deadline | None], _R],
        arg: Any,
        deadline: _Deadline | None,
        target: memoryview | None,
        by: int,
    ) -> _R:
        """Run ``step(arg, deadline)``, a receive that takes messages from the
        decoder, under the receive lock: the one place that decides what an
        exception leaving a receive means. *target*: the caller's buffer of a
        ``recv_into``; *by*: who is recorded as taking (see
        StreamDecoder.handed_by). (Positional only: the cheapest call.)"""
        lock = self._rlock
        try:
            with lock:
                dec = self._dec
                dec.handed, dec.handed_by = [], by
                if self._closed:
                    raise OSError(errno.EBADF, "the channel is closed")
                return step(arg, deadline)
        except ChannelError:
            raise  # about the message itself: it is consumed, nothing to give back
        except BaseException:
            # Retried until done: the repair copies (a large message takes a
            # while) and another exception may interrupt it. put_back() clears
            # the record in the same step that puts the messages back.
            while self._dec.handed and not self._closed:
                try:
                    self._give_back(target)
                except BaseException:  # retried; the first exception is re-raised
                    continue
            raise
        finally:
            # Returned (or given back by the except clause): forget them, so the
            # record does not keep a large message alive after the call.
            if self._forget:
                self._dec.handed = []
            if self._closed:
                self._left()

    def recv_with_fds(self, timeout: float | None = None) -> tuple[bytes, list[int]]:
        """Return the next message and the descriptors sent with it.

        The caller owns the descriptors (close-on-exec) and must close them.
        *timeout*: as :meth:`recv`.

        Raises: as :meth:`recv`.
        """
        deadline = None if timeout is None else _Deadline(timeout)
        return self._receive(self._take_with_fds, None, deadline, None, 0)

    def _take_with_fds(self, _: None, deadline: _Deadline | None) -> tuple[bytes, list[int]]:
        dec = self._dec
        result = dec.next_message_with_fds()
        while result is NEED_DATA:
            self._check_open()
            self._fill(deadline)
            result = dec.next_message_with_fds()
        return result  # type: ignore[return-value]

    def recv_many(
        self, max_messages: int | None = None, *, timeout: float | None = None
    ) -> list[bytes]:
        """Every whole message already received (at most *max_messages*),
        waiting only until there is at least one.

        Descriptors that came with the messages are closed (as :meth:`recv`).
        Small messages are cut out of the receive buffer in one batch, which
        is what makes iteration fast. Thread-safe like :meth:`recv`: each
        message goes to one caller; the list is in the order sent.

        *timeout*: as :meth:`recv` (bounds the wait for the first message).

        Raises: as :meth:`recv`; ``ValueError`` if *max_messages* < 1. An
        error about a message (``FdsTruncated``, ``ProtocolError``) is raised
        by the call that would return that message first; the messages before
        it are returned by the call before.
        """
        if max_messages is None:
            count = _NO_LIMIT
        else:
            count = _check_limit("max_messages", max_messages, 1, _NO_LIMIT)
        deadline = None if timeout is None else _Deadline(timeout)
        return self._receive(self._take_many, count, deadline, None, _get_ident())

    def _take_many(self, count: int, deadline: _Deadline | None) -> list[bytes]:
        dec = self._dec
        out = dec.take_ready(count)
        while not out:
            self._check_open()
            self._fill(deadline)
            out = dec.take_ready(count)
        if dec.ONE_PER_READ:
            # Each read yields one packet: read the ones already queued too.
            while len(out) < count:
                try:
                    self._fill(_NOW)
                except (OSError, ChannelError):
                    break  # (raised again by the next call, which takes nothing first)
                dec.take_more(out, count)  # type: ignore[union-attr]
                if dec.at_eof:
                    break
        return out

    def recv_into(self, buffer: Buffer, timeout: float | None = None) -> int:
        """Receive the next message into *buffer*; return its size.

        Zero-copy for large messages: the payload is read straight into
        *buffer* (not with a *timeout*, which is as for :meth:`recv`: a
        message cut short by it must stay queued, so it is read into the
        channel's own buffer first). Descriptors that came with the message are
        closed.

        Raises:
            TypeError: *buffer* is not a writable bytes-like object.
            MessageTooLarge: the message is larger than *buffer*; ``.size`` is
                the size needed. The message stays queued (on the packet types
                the contents of *buffer* are then unspecified).
            others: as :meth:`recv`.
        """
        target = _writable(buffer)
        deadline = None if timeout is None else _Deadline(timeout)
        return self._receive(self._take_into, target, deadline, target, 0)

    def _take_into(self, target: memoryview, deadline: _Deadline | None) -> int:
        dec = self._dec
        try:
            size = dec.into(target)
            while size is NEED_DATA:
                self._check_open()
                if deadline is None and dec.begin_direct(target):
                    # Straight into *target*: the decoder says where.
                    self._fill(None, dec.read_buffers())
                else:
                    self._fill(deadline)
                size = dec.into(target)
            return size  # type: ignore[return-value]
        except BaseException as exc:
            # A signal handler's exception part way through a direct read:
            # what arrived goes back into the decoder.
            dec.into_failed(exc)
            raise

    def __iter__(self) -> Iterator[bytes]:
        """Yield each message until the peer closes (then simply stop).

        A message that comes alone (a request before its answer) is taken as
        :meth:`recv` takes it; once one was already buffered when asked for,
        the ones behind it are taken in batches (:meth:`recv_many`): a message
        is taken from the channel with its batch, and an iterator that stops
        early puts the rest of its batch back in front, so a later ``recv`` or
        iteration goes on from the next message. Under threads, each message
        goes to one consumer.
        """
        return self._iterate()

    def _give_back(self, target: memoryview | None = None) -> None:
        """An exception (a signal handler's) is leaving a receive call: put the
        messages it took but could not return back in front (see
        StreamDecoder.handed), so the next receive returns them."""
        dec = self._dec
        handed = dec.handed
        if not handed:
            return
        with self._rlock:
            messages = [
                target[: dec.last_into].tobytes() if item is HANDED_INTO and target else item
                for item in handed
                if item is not HANDED_INTO or target is not None
            ]
            fds = dec.handed_fds if len(messages) == 1 else None
            if not self._closed:
                uninterrupted(dec, dec.put_back, messages, fds)

    def _iterate(self) -> Iterator[bytes]:
        recv_locked, recv_many = self._recv_locked, self.recv_many
        dec, lock = self._dec, self._rlock
        batch: list[bytes] = []
        i = 0
        fetching = False
        burst = False
        try:
            while True:
                batch, i = [], 0
                if burst:
                    burst = False
                else:
                    # One message at a time (a round trip) goes recv()'s way, at
                    # a third of recv_many()'s cost: take_frame records what it
                    # takes in *batch* in the same step (the finally clause
                    # knows it), and "nothing buffered" waits where recv()
                    # would after its own take_frame (_recv_locked, whose
                    # give-back covers it; its result is bound with no check
                    # for signals in between).
                    msg = take_frame(dec, lock, batch, NEED_DATA)
                    if msg is NEED_DATA:
                        try:
                            batch = [recv_locked([])]
                        except ChannelClosed:
                            return
                    else:
                        # A message was already there: more may follow, in a
                        # batch. None (descriptors, an error, end of file,
                        # another receiver): the general path, now.
                        burst = msg is not None
                if not batch:
                    fetching = True
                    try:
                        # The list returned is the decoder's record of what this
                        # call took (see StreamDecoder.handed).
                        self._forget = False  # keep the record until the batch is bound
                        batch, i, fetching = recv_many(), 0, False
                        # Bound: the batch is the record now. Left in place, the
                        # old record would be put back (again) by an exception
                        # that comes at the start of the next recv_many(),
                        # before it takes anything.
                        dec.handed = []
                        self._forget = True
                    except ChannelClosed:
                        return
                # Each statement below calls nothing: whatever exception is
                # raised in here (a signal handler's, at a check between
                # bytecodes) the finally clause knows exactly which messages
                # were not handed out yet.
                for msg in batch:
                    i += 1
                    yield msg
        finally:
            self._forget = True
            # If recv_many() returned but the exception came before its list was
            # bound, what it took is still the decoder's record (this thread's).
            rest: list[Any] = (
                (dec.handed if dec.handed_by == _get_ident() else []) if fetching else batch[i:]
            )
            if rest:
                with self._rlock:
                    if not self._closed:
                        uninterrupted(dec, dec.put_back, rest, None)


_CHANNELS: set[weakref.ref[Channel]] = set()
_weakref = weakref.ref
_unregister = _CHANNELS.discard
_new_lock = threading.Lock
_get_ident = threading.get_ident
_NOW = _Deadline(0)
_NO_LIMIT = 1 << 62


def _after_fork_in_child() -> None:
    for ref in list(_CHANNELS):
        channel = ref()
        if channel is not None:
            channel._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
