"""The blocking message channel: a socket plus the sans-IO codec.

:class:`ChannelBase` holds everything the blocking :class:`Channel` and the
asyncio :class:`~unix_socketpair.AsyncChannel` share: adopting the socket,
checking and framing what is sent, and the single system calls ("steps") that
move bytes between the socket and the decoder. A step either completes or, on a
non-blocking socket, raises ``BlockingIOError`` having changed nothing; the two
channels differ only in how they wait before trying again.
"""

from __future__ import annotations

import contextlib
import errno
import math
import mmap
import os
import select
import socket
import sys
import threading
import time
import warnings
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from ._ancillary import (
    ANCBUFSIZE,
    SCM_CREDENTIALS,
    SCM_MAX_FD,
    Credentials,
    check_fds,
    close_fds,
    credentials_from_record,
    enable_passcred,
    has_credentials,
    pack_fds,
    parse_ancillary,
    peek_credentials,
    peer_credentials,
)
from ._codec import (
    DEFAULT_MAX_MESSAGE_SIZE,
    HEADER_SIZE,
    MAX_WIRE_LENGTH,
    NEED_DATA,
    Buffer,
    StreamDecoder,
    _pack,
    encode,
    encode_many,
    payload_of,
)
from ._errors import ChannelClosed, FdError, MessageTooLarge, ProtocolError
from ._pair import SOCK_DGRAM, SOCK_SEQPACKET, SOCK_STREAM, close_quietly, socketpair, type_name

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["Channel", "ChannelBase"]

_T = TypeVar("_T", bound="ChannelBase")

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
_JOIN_LIMIT = 16 * 1024
# recv_into() reads a payload straight into the caller's buffer from this size on;
# below it, reading ahead into the decoder (and copying) saves system calls.
_DIRECT_THRESHOLD = 64 * 1024
_NO_FDS: tuple[int, ...] = ()
_ENV = "SOCKETPAIR_FD"
_MAX_SPIN = 1000
_MAX_WRITE_BUFFER = 64 * 1024 * 1024
# Adaptive spinning (see Channel and _recv_failed): waits in a row whose tries
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


def _packet_capacity() -> int:
    """The largest packet a peer can send without privileges (2 x wmem_max)."""
    try:
        with open("/proc/sys/net/core/wmem_max") as f:
            return 2 * int(f.read())
    except (OSError, ValueError):
        return 4 * 1024 * 1024


def _advance(bufs: list[Buffer], sent: int) -> list[Buffer]:
    """Drop the first *sent* bytes from *bufs* (slicing, never copying)."""
    while bufs:
        first = memoryview(bufs[0]).cast("B")
        if sent < first.nbytes:
            return [first[sent:], *bufs[1:]]
        sent -= first.nbytes
        bufs = bufs[1:]
    return bufs


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


def _adopt(sock_or_fd: socket.socket | int) -> socket.socket:
    """Wrap *sock_or_fd* after checking it is an AF_UNIX socket of a known type.

    On failure nothing is closed: the caller still owns what it passed.
    """
    if isinstance(sock_or_fd, socket.socket):
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
    if sock.family != socket.AF_UNIX or sock.type not in (SOCK_STREAM, SOCK_SEQPACKET, SOCK_DGRAM):
        what = f"family {sock.family!r}, type {sock.type!r}"
        if created:
            sock.detach()
        raise ValueError(
            "a channel needs an AF_UNIX SOCK_STREAM, SOCK_SEQPACKET or SOCK_DGRAM socket, "
            f"not {what}"
        )
    return sock


def _check_limit(name: str, value: object, low: int, high: int) -> int:
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
    """When a receive with a timeout must give up, and how to wait until then."""

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

    def wait_readable(self, sock: socket.socket, partial: int) -> None:
        """Return once *sock* is readable; raise TimeoutError if the deadline
        passes first (*partial*: bytes of the next message already in)."""
        remaining = self.at - time.monotonic()
        if remaining > 0:
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            if poller.poll(math.ceil(remaining * 1000)):
                return
        kept = f"; the {partial} bytes of it that did stay queued" if partial else ""
        # No errno, as the socket module's own timeouts.
        raise TimeoutError(f"no whole message arrived within {self.timeout:g} s{kept}")


class ChannelBase:
    """What the blocking and asyncio channels share (not public)."""

    _blocking: ClassVar[bool] = True

    __slots__ = (
        "__weakref__",
        "_broken_send",
        "_closed",
        "_credit",
        "_creds",
        "_dec",
        "_held",
        "_max",
        "_max_fds",
        "_passcred",
        "_pending",
        "_pkt_broken",
        "_pkt_view",
        "_probe",
        "_rflags",
        "_small",
        "_sock",
        "_spin",
        "_stream",
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
        max_message_size = _check_limit("max_message_size", max_message_size, 0, MAX_WIRE_LENGTH)
        max_fds = _check_limit("max_fds", max_fds, 0, SCM_MAX_FD)
        sock = _adopt(sock_or_fd)
        sock.setblocking(self._blocking)
        self._sock = sock
        self._type: int = sock.type
        self._stream = self._type == SOCK_STREAM
        self._max = max_message_size
        self._max_fds = max_fds
        # Reads wait in the kernel at once (Channel may set up spinning).
        self._spin = 0
        self._credit = 0
        self._probe = 0
        self._rflags = _MSG_CMSG_CLOEXEC
        # Messages sent but held back (Channel's write_buffer); None: never held.
        self._held: bytearray | None = None
        # send()'s fast path: a bytes message up to this size goes out joined to
        # its header with one system call (-1: no fast path, see _break_send).
        self._small = min(_JOIN_LIMIT, max_message_size) if self._type == SOCK_STREAM else -1
        self._broken_send: str | None = None
        self._pending: tuple[bytes, list[int]] | None = None
        self._pkt_broken: str | None = None
        # The raw SCM_CREDENTIALS record of the latest read (see peer_credentials).
        self._creds: bytes | None = None
        # On every type: from now on the kernel stamps what the peer sends with
        # the sender's real credentials (a socketpair's SO_PEERCRED only names
        # its creator).
        self._passcred = enable_passcred(sock)
        if _SO_NOSIGPIPE is not None:
            # Where writes cannot say MSG_NOSIGNAL, the socket says it once.
            sock.setsockopt(socket.SOL_SOCKET, _SO_NOSIGPIPE, 1)
        if self._stream:
            self._dec = StreamDecoder(max_message_size, max_fds)
            self._pkt_view = memoryview(b"")
        else:
            self._dec = StreamDecoder(0, 0)  # unused for packets
            cap = min(max_message_size, _packet_capacity()) + 1
            # An anonymous mapping: room for the largest packet a peer can send
            # (megabytes) costs memory only for the pages a packet actually
            # fills, where a bytearray would zero-fill all of it up front.
            self._pkt_view = memoryview(mmap.mmap(-1, cap) if cap > 256 * 1024 else bytearray(cap))
        self._closed = False

    # -- construction -------------------------------------------------------

    @classmethod
    def pair(cls: type[_T], type: int = SOCK_STREAM, **options: Any) -> tuple[_T, _T]:
        """Two connected channels over a new socketpair of *type*.

        *options* are passed to both constructors (``max_message_size``,
        ``max_fds``). The caller owns both channels.
        """
        a, b = socketpair(type)
        try:
            first = cls(a, **options)
        except BaseException:
            close_quietly(a, b)
            raise
        try:
            second = cls(b, **options)
        except BaseException:
            first.close()
            close_quietly(b)
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

        A numbered descriptor is made close-on-exec: it belongs to this channel,
        not to the programs this process may start.

        Raises:
            ValueError: ``SOCKETPAIR_FD`` is unset, not a number, or negative.
            OSError: the descriptor is not open or not a socket.
        """
        fd = _fd_from_env()
        try:
            channel = cls(fd, **options)
        except OSError as exc:
            raise OSError(exc.errno, f"{_ENV}={fd}: {exc.strerror or exc}") from exc
        except ValueError as exc:
            raise ValueError(f"{_ENV}={fd}: {exc}") from exc
        if fd > 2:
            channel._sock.set_inheritable(False)
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
            record = self._creds
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
        if self._held:
            self._flush_held()
        self._sock.shutdown(socket.SHUT_WR)

    def _flush_held(self) -> None:
        """Send what a blocking channel's write buffer holds (before a read)."""

    def close(self) -> None:
        """Close the socket and every descriptor received but not yet delivered.

        Idempotent. Any later operation raises ``OSError`` (``EBADF``).
        """
        if self._closed:
            return
        self._closed = True
        self._dec.close()
        if self._pending is not None:
            close_fds(self._pending[1])
            self._pending = None
        self._sock.close()
        with contextlib.suppress(BufferError):
            self._pkt_view.release()  # unmaps a packet buffer now, not at collection

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

    def _prepare(self, data: object, fds: Iterable[int]) -> tuple[list[Buffer], list[Any]]:
        """Check and frame one message: (buffers, ancillary). Raises before any I/O."""
        if self._stream:
            bufs = encode(data, self._max)
        else:
            payload, size = payload_of(data)
            if size > self._max:
                raise MessageTooLarge(
                    f"message of {size} bytes is over max_message_size ({self._max} bytes)",
                    size=size,
                    limit=self._max,
                )
            bufs = [payload]
        anc = pack_fds(check_fds(fds, self._max_fds)) if fds is not _NO_FDS else []
        self._check_send()
        return bufs, anc

    def _break_send(self, reason: str) -> None:
        """A message was only partly sent: no further send can be framed."""
        self._broken_send = reason
        self._small = -1

    def _check_send(self) -> None:
        if self._closed:
            raise OSError(errno.EBADF, "the channel is closed")
        if self._broken_send is not None:
            raise ProtocolError(f"the channel cannot send any more: {self._broken_send}")

    def _send_error(self, exc: OSError, bufs: list[Buffer]) -> BaseException:
        """Translate a send failure into the error the caller should see."""
        if self._closed or exc.errno == errno.EBADF:
            return OSError(errno.EBADF, "the channel is closed")
        if exc.errno == errno.EMSGSIZE and not self._stream:
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

    def _fill(self, deadline: _Deadline | None = None) -> int:
        """One read from a stream socket into the decoder; return the byte count
        (0 at end of file). May raise BlockingIOError, having changed nothing;
        with a *deadline*, TimeoutError once it passes, having changed nothing."""
        dec = self._dec
        bufs = (dec.get_buffer(),)
        if deadline is None:
            n, anc, flags = self._read(bufs)
        else:
            if self._held:
                self._flush_held()
            n, anc, flags = self._read_within(bufs, _MSG_CMSG_CLOEXEC, deadline)
        if anc or flags & _MSG_CTRUNC:
            dec.buffer_updated(n, self._take_fds(anc, flags) or None)
        else:
            dec.buffer_updated(n)
        return n

    def _read(self, bufs: tuple[memoryview, ...]) -> tuple[int, list[Any], int]:
        """One stream read into *bufs* as the channel is set up: first send what
        a write buffer holds, then spin (see _recv_failed) or wait.
        (``recv()`` has this inlined: its path is where every call shows.)"""
        if self._held:
            self._flush_held()
        if self._probe:
            self._probe_tick()
        try:
            return self._sock.recvmsg_into(bufs, ANCBUFSIZE, self._rflags)[:3]
        except OSError as exc:
            return self._recv_failed(exc, bufs)

    def _read_within(
        self, bufs: tuple[memoryview, ...], flags: int, deadline: _Deadline
    ) -> tuple[int, list[Any], int]:
        """One read into *bufs* that waits no later than *deadline* (never spins:
        it waits in ``poll``). Raises TimeoutError having read nothing."""
        recvmsg_into = self._sock.recvmsg_into
        while True:
            try:
                return recvmsg_into(bufs, ANCBUFSIZE, flags | _MSG_DONTWAIT)[:3]
            except BlockingIOError:
                pass
            except OSError as exc:
                return self._recv_failed(exc, bufs, flags)
            deadline.wait_readable(self._sock, self._partial())

    def _partial(self) -> int:
        """Bytes of a message not yet whole (stream channels)."""
        return self._dec.buffered() if self._stream else 0

    def _recv_failed(
        self, exc: OSError, bufs: tuple[memoryview, ...], flags: int = _MSG_CMSG_CLOEXEC
    ) -> tuple[int, list[Any], int]:
        """What a failed read into *bufs* means: ``(nbytes, ancillary, flags)``
        of a read retried after waiting, end of file, or an error to raise.

        A spinning blocking channel reads without waiting first (``MSG_DONTWAIT``):
        when that finds nothing, it tries ``spin - 1`` more times, then waits.
        Spinning adapts: a try that finds data renews the credit; waits whose
        tries all found nothing use it up, and the channel then waits at once
        (no failed tries at all, which cost most when the peer shares our CPU
        and cannot run while we try) until _PROBE_READS reads later.
        """
        if isinstance(exc, BlockingIOError) and self._spin:
            recvmsg_into = self._sock.recvmsg_into
            try:
                for _ in range(self._spin - 1):
                    try:
                        result = recvmsg_into(bufs, ANCBUFSIZE, flags | _MSG_DONTWAIT)
                    except BlockingIOError:
                        continue
                    self._credit = _SPIN_CREDIT
                    return result[:3]
                self._spin_failed()
                return recvmsg_into(bufs, ANCBUFSIZE, flags)[:3]
            except OSError as again:
                exc = again
        if isinstance(exc, ConnectionResetError):
            # The peer closed while some of what we sent was still unread: for
            # the reading side that is simply the end of the stream.
            return 0, [], 0
        if self._closed or exc.errno == errno.EBADF:
            raise OSError(errno.EBADF, "the channel is closed") from exc
        raise exc

    def _spin_failed(self) -> None:
        """Every try of a wait found nothing: spend credit; none left, stop spinning."""
        self._credit -= 1
        if self._credit <= 0:
            self._rflags = _MSG_CMSG_CLOEXEC
            self._probe = _PROBE_READS

    def _probe_tick(self) -> None:
        """Count a read made without spinning; after _PROBE_READS, spin again (once,
        unless it pays)."""
        self._probe -= 1
        if not self._probe:
            self._credit = 1
            self._rflags = _MSG_CMSG_CLOEXEC | _MSG_DONTWAIT

    def _take_fds(self, anc: list[tuple[int, int, bytes]], flags: int) -> list[int]:
        """The descriptors of one read (the caller owns them); remembers the
        sender's credentials record."""
        if len(anc) == 1 and not flags & _MSG_CTRUNC:
            # The common case with SO_PASSCRED on: the credentials and nothing else.
            level, kind, data = anc[0]
            if kind == SCM_CREDENTIALS and level == _SOL_SOCKET:
                self._creds = data
                return []
        try:
            fds, creds = parse_ancillary(anc, flags, self._max_fds)
        except FdError as exc:
            if self._stream:
                self._dec.fail(str(exc))
            else:
                self._pkt_broken = str(exc)
            raise
        if creds is not None:
            self._creds = creds
        if not _MSG_CMSG_CLOEXEC:
            for fd in fds:
                os.set_inheritable(fd, False)
        return fds

    def _take_fds_into(self, n: int, anc: list[tuple[int, int, bytes]], flags: int) -> bool:
        """After a stream read of *n* bytes: if descriptors came with it, hand
        both to the decoder and return True; else record only the credentials
        and return False (the caller still has to report the *n* bytes)."""
        fds = self._take_fds(anc, flags)
        if not fds:
            return False
        self._dec.buffer_updated(n, fds)
        return True

    def _direct_step(self, target: memoryview) -> tuple[int, list[int] | None]:
        """One read straight into *target* (the rest of a message's payload):
        ``(nbytes, the message's fds once it is complete else None)``."""
        n, anc, flags = self._read((target,))
        fds = None
        if anc or flags & _MSG_CTRUNC:
            fds = self._take_fds(anc, flags) or None
        return n, self._dec.direct_updated(n, fds)

    def _wants_direct(self, size: int) -> bool:
        """After next_size(): should the payload go straight into the caller's buffer?"""
        return size >= _DIRECT_THRESHOLD and self._dec.buffered() < HEADER_SIZE + size

    def _packet_step(
        self, target: memoryview | None, deadline: _Deadline | None = None
    ) -> tuple[int, list[int]]:
        """Receive one packet: into *target* first (if given), the rest into the
        packet buffer. Returns ``(size, fds)``; raises ChannelClosed at EOF, and
        TimeoutError once *deadline* (if given) passes with no packet."""
        if self._pkt_broken is not None:
            raise ProtocolError(f"the channel is unusable: {self._pkt_broken}")
        self._check_open()
        bufs = (self._pkt_view,) if target is None else (target, self._pkt_view)
        if self._probe and deadline is None:
            self._probe_tick()
        try:
            try:
                if deadline is not None:
                    n, anc, flags = self._read_within(bufs, _PACKET_RECV_FLAGS, deadline)
                else:
                    n, anc, flags, _ = self._sock.recvmsg_into(
                        bufs, ANCBUFSIZE, _PACKET_RECV_FLAGS | (self._rflags & _MSG_DONTWAIT)
                    )
            except BlockingIOError as exc:
                n, anc, flags = self._recv_failed(exc, bufs, _PACKET_RECV_FLAGS)
        except ConnectionResetError:
            n, anc, flags = 0, [], 0
        except OSError as exc:
            if self._closed or exc.errno == errno.EBADF:
                raise OSError(errno.EBADF, "the channel is closed") from exc
            raise
        fds = self._take_fds(anc, flags) if anc or flags & _MSG_CTRUNC else []
        if n == 0 and (not has_credentials(anc) if self._passcred else self._type != SOCK_DGRAM):
            close_fds(fds)
            raise ChannelClosed("the peer closed the channel")
        room = sum(len(b) for b in bufs)
        if n > self._max or flags & _MSG_TRUNC or n > room:
            close_fds(fds)
            if n > self._max:
                reason = (
                    f"the peer sent a packet of {n} bytes, over max_message_size "
                    f"({self._max} bytes)"
                )
            else:
                reason = f"a packet was truncated to the {room} bytes of the receive buffer"
            self._pkt_broken = reason
            raise ProtocolError(reason + "; the channel is unusable")
        return n, fds

    def _packet_into(
        self, target: memoryview, deadline: _Deadline | None = None
    ) -> tuple[int, list[int]]:
        """Deliver a pending packet into *target*, or receive one (see recv_into)."""
        pending = self._pending
        if pending is not None:
            payload, fds = pending
            size = len(payload)
            if size > len(target):
                raise self._too_small(size, len(target))
            target[:size] = payload
            self._pending = None
            return size, fds
        size, fds = self._packet_step(target, deadline)
        limit = len(target)
        if size > limit:
            # Keep the whole packet queued: caller's part plus the overflow.
            payload = target.tobytes() + self._pkt_view[: size - limit].tobytes()
            self._pending = (payload, fds)
            raise self._too_small(size, limit)
        return size, fds

    def _packet_message(self, deadline: _Deadline | None = None) -> tuple[bytes, list[int]]:
        pending = self._pending
        if pending is not None:
            self._pending = None
            return pending
        size, fds = self._packet_step(None, deadline)
        return self._pkt_view[:size].tobytes(), fds

    @staticmethod
    def _too_small(size: int, limit: int) -> MessageTooLarge:
        return MessageTooLarge(
            f"the next message is {size} bytes, larger than the {limit}-byte buffer; it stays "
            f"queued: call again with a buffer of at least {size} bytes",
            size=size,
            limit=limit,
        )


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

    A channel is not thread-safe: use one sender thread and one receiver
    thread at most (they may be different; with a write buffer, the receiver's
    flush and the sender share a lock).
    """

    __slots__ = ("_hold_max", "_wlimit", "_wlock")

    def __init__(
        self,
        sock_or_fd: socket.socket | int,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_fds: int = SCM_MAX_FD,
        spin: int = DEFAULT_SPIN,
        write_buffer: int = 0,
    ) -> None:
        self._wlimit = 0
        spin = _check_limit("spin", spin, 0, _MAX_SPIN)
        write_buffer = _check_limit("write_buffer", write_buffer, 0, _MAX_WRITE_BUFFER)
        super().__init__(sock_or_fd, max_message_size=max_message_size, max_fds=max_fds)
        if write_buffer and not self._stream:
            # Give back what we adopted: the caller still owns it.
            self._closed = True
            self._dec.close()
            if not isinstance(sock_or_fd, socket.socket):
                self._sock.detach()
            raise ValueError(
                f"write_buffer needs a SOCK_STREAM channel, not {type_name(self._type)}: "
                "each packet is one message, so messages cannot be sent together"
            )
        # A spinning channel makes its first read attempt without waiting; when
        # that finds nothing, _recv_failed() tries spin - 1 more times, then waits.
        self._spin = spin
        self._credit = _SPIN_CREDIT
        self._rflags = _MSG_CMSG_CLOEXEC | (_MSG_DONTWAIT if spin else 0)
        if write_buffer:
            self._held = bytearray()
            self._wlimit = write_buffer
            self._wlock = threading.Lock()
            # Small messages are held, not sent: off send()'s fast path.
            self._hold_max = self._small
            self._small = -1

    @property
    def write_buffer(self) -> int:
        """Bytes of small messages held back before they are sent (0: none)."""
        return self._wlimit

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

    def close(self) -> None:
        """Send what a write buffer holds, then close the socket and every
        descriptor received but not yet delivered.

        Idempotent. Any later operation raises ``OSError`` (``EBADF``).

        Raises:
            BrokenPipeError: the peer had closed before the held messages
                could go (the channel is closed nonetheless).
        """
        if self._held and not self._closed:
            try:
                self.flush()
            finally:
                super().close()
            return
        super().close()

    def __del__(self) -> None:
        if getattr(self, "_closed", True):
            return
        held = getattr(self, "_held", None)
        note = ""
        if held:
            note = f"; dropped {len(held)} bytes of messages it held back (call close() or flush())"
            held.clear()  # never block in the garbage collector
        warnings.warn(f"unclosed {self!r}{note}", ResourceWarning, stacklevel=2, source=self)
        self.close()

    def flush(self) -> None:
        """Send the messages held back by ``write_buffer`` now (nothing to do
        without one).

        Raises:
            OSError: ``EBADF`` once closed; ``BrokenPipeError`` if the peer has
                closed (the held messages are then dropped: they cannot arrive).
        """
        self._check_open()
        if self._held is not None:
            self._flush_held()

    def _flush_held(self) -> None:
        with self._wlock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        """Send everything held (the caller holds the write lock)."""
        held = self._held
        if not held:
            return
        self._check_open()
        sock = self._sock
        try:
            while held:
                # A signal handler's exception between two sends leaves the
                # unsent rest held: a later flush goes on from there.
                sent = sock.send(held, MSG_NOSIGNAL)
                del held[:sent]
        except OSError as exc:
            held.clear()  # undeliverable: the peer or the socket is gone
            raise self._send_error(exc, []) from exc

    # -- sending ------------------------------------------------------------

    def send(self, data: Buffer, *, fds: Iterable[int] = _NO_FDS) -> None:
        """Send one message; return once the kernel has taken all of it.

        *data* is any bytes-like object (not copied if larger than 16 KiB).
        *fds* are sent with the message (``SCM_RIGHTS``); they stay owned by the
        caller (the peer receives duplicates).

        Raises:
            TypeError: *data* is not bytes-like, or an fd is not an int; nothing sent.
            MessageTooLarge: over ``max_message_size``, or (packet types) over
                what one packet can carry; nothing sent.
            TooManyFds: more than ``max_fds`` descriptors; nothing sent.
            BrokenPipeError: the peer has closed (never SIGPIPE).
        """
        # The fast path: one system call per small bytes message, as little Python
        # around it as possible (measured: within ~3-5% of an inline
        # send(header + payload) loop). _small is -1 with a write buffer.
        if fds is _NO_FDS and type(data) is bytes:
            size = len(data)
            if size <= self._small:
                frame = _pack(size) + data
                # send(), not sendall(): less work per call, and a send that a
                # signal handler's exception cuts short after part of the frame
                # must leave the channel refusing further sends (_sendmsg_all).
                try:
                    sent = self._sock.send(frame, MSG_NOSIGNAL)
                except OSError as exc:
                    raise self._send_error(exc, [data]) from exc
                if sent != size + HEADER_SIZE:
                    self._sendmsg_all([memoryview(frame)[sent:]], [], partial=True)
                return
        if self._held is not None:
            self._send_held(data, fds)
            return
        bufs, anc = self._prepare(data, fds)
        self._sendmsg_all(bufs, anc)

    def send_many(self, messages: Iterable[Buffer]) -> None:
        """Send many messages, coalesced into as few system calls as possible.

        Equivalent to calling :meth:`send` for each (without descriptors).
        If *messages* is a list or tuple, every item is checked first, so a bad
        item raises before anything is sent; other iterables are consumed in
        batches of about 256 KiB, each checked before it is sent.

        Raises: as :meth:`send`.
        """
        self._check_send()
        if self._stream:
            if self._held is not None:
                with self._wlock:
                    self._flush_locked()
                    for bufs in encode_many(messages, self._max):
                        self._sendmsg_all(bufs, [])
                return
            for bufs in encode_many(messages, self._max):
                self._sendmsg_all(bufs, [])
            return
        items = messages if isinstance(messages, (list, tuple)) else None
        if items is not None:
            for item in items:
                self._prepare(item, _NO_FDS)
        for item in messages:
            bufs, anc = self._prepare(item, _NO_FDS)
            self._sendmsg_all(bufs, anc)

    def _send_held(self, data: Buffer, fds: Iterable[int]) -> None:
        """send() with a write buffer: hold a small message, or send what is held
        and then the message."""
        with self._wlock:
            if fds is _NO_FDS:
                if type(data) is bytes:
                    size = len(data)
                else:
                    data, size = payload_of(data)
                if size <= self._hold_max:
                    self._check_send()
                    held = self._held
                    assert held is not None
                    held += _pack(size)
                    held += data
                    if len(held) >= self._wlimit:
                        self._flush_locked()
                    return
            bufs, anc = self._prepare(data, fds)
            self._flush_locked()
            self._sendmsg_all(bufs, anc)

    def _sendmsg_all(self, bufs: list[Buffer], anc: list[Any], partial: bool = False) -> None:
        """Send all of *bufs* (*anc* with the first call); *partial*: part of
        this message already went."""
        sock = self._sock
        try:
            while True:
                sent = sock.sendmsg(bufs, anc, MSG_NOSIGNAL)
                bufs = _advance(bufs, sent)
                if not bufs:
                    return
                anc = []
                partial = True
        except OSError as exc:
            raise self._send_error(exc, bufs) from exc
        except BaseException:
            if partial:
                self._break_send("a send was interrupted part way through a message")
            raise

    # -- receiving ----------------------------------------------------------

    def recv(self, timeout: float | None = None) -> bytes:
        """Return the next message (a new ``bytes``), waiting for it.

        Descriptors that came with it are closed: use :meth:`recv_with_fds`
        to take them.

        *timeout* (seconds, ``None``: wait as long as it takes) bounds the wait
        for the whole message; 0 takes only a message that is already there.
        When it passes, ``TimeoutError`` is raised and nothing is lost: the part
        of a message that did arrive stays queued for the next receive.

        Raises:
            ChannelClosed: the peer closed at a message boundary.
            ProtocolError: broken framing; the channel is unusable.
            FdError: descriptors truncated or over ``max_fds`` (all closed).
            TimeoutError: *timeout* passed first.
            TypeError, ValueError: *timeout* is not a number >= 0.
        """
        if timeout is not None:
            payload, fds = self._next_with_fds(_Deadline(timeout))
            close_fds(fds)
            return payload
        if self._stream:
            dec = self._dec
            msg = dec.next_message()
            while msg is NEED_DATA:
                # _fill() and _read() inlined: this is the path of a reader that
                # waits for each message (ping-pong), where every Python call shows.
                bufs = (dec.get_buffer(),)
                if self._held:
                    self._flush_held()
                if self._probe:
                    self._probe_tick()
                try:
                    n, anc, flags, _ = self._sock.recvmsg_into(bufs, ANCBUFSIZE, self._rflags)
                except OSError as exc:
                    n, anc, flags = self._recv_failed(exc, bufs)
                if (
                    anc
                    and len(anc) == 1
                    and anc[0][1] == SCM_CREDENTIALS
                    and not flags & _MSG_CTRUNC
                ):
                    # The usual read on Linux: the sender's credentials, no fds.
                    self._creds = anc[0][2]
                    msg = dec.received(n)
                elif (anc or flags & _MSG_CTRUNC) and self._take_fds_into(n, anc, flags):
                    msg = dec.next_message()
                else:
                    msg = dec.received(n)
            return msg  # type: ignore[return-value]
        self._check_open()
        payload, fds = self._packet_message()
        close_fds(fds)
        return payload

    def recv_with_fds(self, timeout: float | None = None) -> tuple[bytes, list[int]]:
        """Return the next message and the descriptors sent with it.

        The caller owns the descriptors (close-on-exec) and must close them.
        *timeout*: as :meth:`recv`.

        Raises: as :meth:`recv`.
        """
        return self._next_with_fds(None if timeout is None else _Deadline(timeout))

    def _next_with_fds(self, deadline: _Deadline | None) -> tuple[bytes, list[int]]:
        """The next message and its descriptors, waiting no later than *deadline*
        (None: as long as it takes)."""
        self._check_open()
        if not self._stream:
            return self._packet_message(deadline)
        dec = self._dec
        result = dec.next_message_with_fds()
        while result is NEED_DATA:
            self._fill(deadline)
            result = dec.next_message_with_fds()
        return result  # type: ignore[return-value]

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
        self._check_open()
        if not self._stream:
            size, fds = self._packet_into(target, deadline)
            close_fds(fds)
            return size
        dec = self._dec
        while True:
            next_size = dec.next_size()
            if next_size is NEED_DATA:
                self._fill(deadline)
                continue
            size = int(next_size)  # type: ignore[arg-type]
            if size > len(target):
                raise self._too_small(size, len(target))
            if dec.buffered() >= HEADER_SIZE + size or (
                deadline is None and self._wants_direct(size)
            ):
                break
            self._fill(deadline)
        size, copied = dec.read_into(target)
        if copied == size:
            close_fds(dec.take_fds_for_buffered(size))
            return size
        try:
            while True:
                n, done = self._direct_step(target[copied:size])
                if done is not None:
                    close_fds(done)
                    return size
                copied += n
        except BaseException:
            dec.abort_direct()
            raise

    def __iter__(self) -> Iterator[bytes]:
        """Yield each message until the peer closes (then simply stop).

        Stopping early loses nothing: a later ``recv`` or iteration goes on from
        the next message.
        """
        if self._stream:
            # One read (_fill, as in recv()) whenever no whole message is in;
            # the many messages of one read are sliced out of one copy.
            return self._dec.iter_messages(self._fill)
        return self._iter_packets()

    def _iter_packets(self) -> Iterator[bytes]:
        while True:
            try:
                yield self.recv()
            except ChannelClosed:
                return
