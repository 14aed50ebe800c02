"""A blocking channel that speaks Node.js's IPC protocol (``process.send()``).

:class:`NodeChannel` is the I/O around :class:`~unix_socketpair._nodeipc.NodeProtocol`:
the protocol frames, parses and keeps the handle handshake's state; this module
only moves bytes and descriptors between it and the socket, and waits.
"""

from __future__ import annotations

import errno
import os
import select
import socket
from collections import deque
from collections.abc import Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from ._ancillary import pack_fds, split_ancillary
from ._channel import _adopt, _check_limit, _Deadline
from ._errors import ChannelClosed, ProtocolError
from ._nodeipc import (
    CLOSED,
    DEFAULT_MAX_MESSAGE_SIZE,
    NEED_DATA,
    Handle,
    Message,
    NodeProtocol,
    Serialization,
    describe_handle,
    take_node_environment,
)
from ._pair import close_quietly

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["NodeChannel"]

_READ_SIZE = 256 * 1024
# Node sends one descriptor per write, and the kernel never merges the descriptors of
# two writes into one read; room for more only turns a broken peer's excess into
# MSG_CTRUNC (then nothing is handed on, and the protocol asks for a retransmission).
_ANCBUFSIZE = socket.CMSG_SPACE(16 * 4)
_RECV_FLAGS = int(getattr(socket, "MSG_CMSG_CLOEXEC", 0))
_SEND_FLAGS = int(getattr(socket, "MSG_NOSIGNAL", 0)) | int(socket.MSG_DONTWAIT)
_SO_NOSIGPIPE: int | None = getattr(socket, "SO_NOSIGPIPE", None)
_MAX_SIZE = 0xFFFFFFFF
# A plain int: testing flags against the enum member costs a Python-level call.
_MSG_CTRUNC = int(socket.MSG_CTRUNC)


_T = TypeVar("_T", bound="NodeChannelBase")


class NodeChannelBase:
    """What :class:`NodeChannel` and ``AsyncNodeChannel`` share: adoption of the
    socket, the write queue, the read step, ownership (not public)."""

    def __init__(
        self,
        sock_or_fd: socket.socket | int,
        serialization: Serialization = "json",
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        self._closed = True  # until set up (for __del__)
        max_message_size = _check_limit("max_message_size", max_message_size, 0, _MAX_SIZE)
        protocol = NodeProtocol(serialization, max_message_size=max_message_size)
        sock = _adopt(sock_or_fd)
        if sock.type != socket.SOCK_STREAM:
            if not isinstance(sock_or_fd, socket.socket):
                sock.detach()
            raise ValueError(
                f"a Node IPC channel needs an AF_UNIX SOCK_STREAM socket, not {sock.type!r} "
                "(Node reads its channel as a stream)"
            )
        sock.setblocking(False)
        if _SO_NOSIGPIPE is not None:  # pragma: no cover - macOS/BSD
            sock.setsockopt(socket.SOL_SOCKET, _SO_NOSIGPIPE, 1)
        self._sock = sock
        self._protocol = protocol
        # Bytes taken from the protocol and not written yet; each descriptor is a
        # duplicate this channel owns until the write that carries it succeeds.
        self._out: deque[tuple[bytes | memoryview, tuple[int, ...]]] = deque()
        self._buffer = bytearray(_READ_SIZE)
        self._view = memoryview(self._buffer)
        self._pollers: dict[int, Any] = {}  # the blocking channel's, by event mask
        self._eof = False
        self._closed = False

    # -- construction -------------------------------------------------------

    @classmethod
    def pair(
        cls: type[_T],
        serialization: Serialization = "json",
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> tuple[_T, _T]:
        """Two connected channels over a new socketpair (the caller owns both)."""
        left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            return (
                cls(left, serialization, max_message_size=max_message_size),
                cls(right, serialization, max_message_size=max_message_size),
            )
        except BaseException:
            left.close()
            right.close()
            raise

    @classmethod
    def from_env(cls: type[_T], *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> _T:
        """The channel a Node parent gave this process (``'ipc'`` in its ``stdio``).

        Reads ``NODE_CHANNEL_FD`` and ``NODE_CHANNEL_SERIALIZATION_MODE`` (missing:
        ``"json"``) and removes both from ``os.environ``, as Node does, so that
        this process's own children do not inherit them.

        Raises:
            ValueError: the variables are missing or malformed (removed anyway), or
                the descriptor is not a stream Unix socket.
            OSError: the descriptor is not open or not a socket.
        """
        fd, serialization = take_node_environment(os.environ)
        return cls(fd, serialization, max_message_size=max_message_size)

    # -- properties -----------------------------------------------------------

    @property
    def serialization(self) -> Serialization:
        """``"json"`` or ``"advanced"``."""
        return self._protocol.serialization

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def fileno(self) -> int:
        """The socket's descriptor (still owned by the channel); -1 once closed."""
        return self._sock.fileno()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"fd={self._sock.fileno()}"
        return f"<{type(self).__name__} {state} serialization={self.serialization!r}>"

    # -- shared steps (no waiting) -------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise OSError(errno.EBADF, "the Node IPC channel is closed")

    def _queue(self, value: object, handle: socket.socket | None) -> int:
        """Encode *value* into the protocol (with a duplicate of *handle*); the ticket."""
        self._check_open()
        described: Handle | None = None
        if handle is not None:
            if not isinstance(handle, socket.socket):
                raise TypeError(f"handle must be a socket.socket, not {type(handle).__name__}")
            kind, dgram_type = describe_handle(handle)
            described = Handle(os.dup(handle.fileno()), kind, dgram_type)
        try:
            return self._protocol.send(value, described)
        except BaseException:
            if described is not None:
                os.close(described.fd)
            raise

    def _sent(self, ticket: int) -> bool:
        """Whether the message of *ticket* is through, and nothing waits behind a handle
        (raises ``HandleRefused``)."""
        return self._protocol.outcome(ticket) and not self._protocol.awaiting_answer

    def _next(self) -> Any:
        """The next message as the protocol's ``next_value()`` gives it (a value, or a
        ``Message`` with a descriptor); NEED_DATA: read more."""
        item = self._protocol.next_value()
        if item is CLOSED:
            raise ChannelClosed("the peer closed the Node IPC channel")
        return item

    @staticmethod
    def _with_handle(item: Any) -> tuple[Any, socket.socket | None]:
        """``(value, handle)`` of an item :meth:`_next` returned."""
        if type(item) is not Message:
            return item, None
        assert item.fd is not None
        try:
            return item.value, socket.socket(fileno=item.fd)
        except OSError as exc:
            close_quietly(item.fd)
            raise ProtocolError(
                f"a {item.handle_type} handle arrived that is not a socket ({exc})"
            ) from None

    def _take_output(self) -> None:
        for data, fds in self._protocol.data_to_send():
            self._out.append((data, tuple(os.dup(fd) for fd in fds) if fds else ()))

    def _write_ready(self) -> bool:
        """Write what the protocol has to send without waiting; True once all is out."""
        if self._protocol.has_output:
            self._take_output()
        out = self._out
        sock = self._sock
        while out:
            data, fds = out[0]
            try:
                if fds:
                    sent = sock.sendmsg([data], pack_fds(list(fds)), _SEND_FLAGS)
                else:
                    sent = sock.send(data, _SEND_FLAGS)
            except BlockingIOError:
                return False
            if fds:
                close_quietly(*fds)  # in flight now: the peer has its own copies
            if sent == len(data):
                out.popleft()
            else:
                out[0] = (memoryview(data)[sent:], ())
        return True

    def _read(self) -> bool:
        """One non-blocking read into the protocol; False if nothing was there."""
        try:
            size, ancdata, flags, _ = self._sock.recvmsg_into(
                [self._buffer], _ANCBUFSIZE, _RECV_FLAGS
            )
        except BlockingIOError:
            return False
        fds: list[int] = []
        if ancdata:
            fds, _ = split_ancillary(ancdata)
            if flags & _MSG_CTRUNC:
                # A partial set means nothing: drop it; the peer's NODE_HANDLE then
                # finds no descriptor and the protocol asks for a retransmission (NACK).
                close_quietly(*fds)
                fds = []
            if not _RECV_FLAGS:  # pragma: no cover - no MSG_CMSG_CLOEXEC (macOS)
                for fd in fds:
                    os.set_inheritable(fd, False)
        if size == 0:
            self._eof = True
        self._protocol.receive_data(self._view[:size], fds)
        return True

    def _release(self) -> None:
        """Close the socket and every descriptor held (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._protocol.close()
        out = list(self._out)
        self._out.clear()
        for _data, fds in out:
            close_quietly(*fds)
        self._sock.close()

    def __del__(self) -> None:
        # The socket warns (ResourceWarning) about itself; the descriptors the
        # protocol and the write queue hold must not leak either.
        if not getattr(self, "_closed", True):
            self._protocol.close()
            for _data, fds in self._out:
                close_quietly(*fds)


class NodeChannel(NodeChannelBase):
    """A Node.js IPC channel over a connected ``AF_UNIX`` ``SOCK_STREAM`` socket:
    the peer is a Node process's ``process.send()`` / ``process.on('message')`` (or
    ``subprocess.send()`` in a Node parent), or another :class:`NodeChannel`.

    *serialization* is Node's ``serialization`` option: ``"json"`` (one
    ``JSON.stringify`` line per message) or ``"advanced"`` (V8's structured clone,
    which also carries ``bytes``, ``datetime``, ``set``, non-string dict keys and big
    integers; see the mapping table in the documentation). Both ends must agree.

    The channel takes ownership of *sock_or_fd* (a ``socket.socket`` or a descriptor
    number) and makes it non-blocking. If the constructor raises, nothing was closed
    and the caller still owns it.

    Handles: ``send(value, handle=sock)`` passes a connected or listening stream
    socket (Unix or TCP) or a UDP socket, which Node rebuilds as a ``net.Socket``,
    ``net.Server`` or ``dgram.Socket``; the caller keeps *sock* (a duplicate
    travels). :meth:`recv_with_handle` returns a received handle as a
    ``socket.socket`` the caller owns. Received handles are acknowledged
    automatically, as Node expects.

    Errors in the stream (a line that is not JSON, a payload that is not V8, a
    message over *max_message_size*) are raised by the receive call that reaches
    them, in order; that message is skipped and later ones are delivered.

    Not thread-safe: use a channel from one thread at a time (a send with a handle
    reads while it waits for the answer, so sending and receiving share state).
    Interrupted calls (a signal handler's exception, ``TimeoutError``) lose nothing:
    what was not written yet is written first by the next call, and what was read
    stays queued.

    Raises:
        TypeError: (constructor) *sock_or_fd* is neither a socket nor an int.
        ValueError: not an ``AF_UNIX`` ``SOCK_STREAM`` socket, a closed socket, or
            an unknown *serialization*.
        OSError: the descriptor is not a socket.
    """

    # -- sending --------------------------------------------------------------

    def send(
        self, value: object, handle: socket.socket | None = None, *, timeout: float | None = None
    ) -> None:
        """Send *value*, with *handle* if given, and return once it is written (with a
        handle: once the peer acknowledged it).

        *value* is encoded first, so a bad value raises before anything is sent.
        *handle* stays the caller's: a duplicate of its descriptor travels.
        *timeout* (seconds; ``None``: no limit) bounds the whole call. After a
        ``TimeoutError`` nothing is lost or duplicated: the next call writes the rest
        first; a handle still waiting for its answer keeps later messages back
        until the answer comes (Node does the same), and each later send waits for it.

        Raises:
            ValueError: json mode: NaN, an infinity or a circular reference.
            TypeError: a value this mode cannot carry; a *handle* Node cannot
                rebuild (see the documentation); not a socket.
            HandleRefused: the peer refused the handle (NACK to every
                retransmission) or closed the channel before answering.
            TimeoutError: *timeout* passed first.
            BrokenPipeError, ConnectionResetError: the peer is gone.
            OSError: the channel is closed (``EBADF``).
        """
        if handle is None and not self._out:
            # The common send, in one system call when the socket takes it all.
            self._check_open()
            data = self._protocol.send_plain(value)
            if data is not None:
                try:
                    sent = self._sock.send(data, _SEND_FLAGS)
                except BlockingIOError:
                    sent = 0
                if sent == len(data):
                    return
                self._out.append((memoryview(data)[sent:], ()))
            ticket = 0
        else:
            ticket = self._queue(value, handle)
        deadline = None if timeout is None else _Deadline(timeout)
        self._flush(deadline)
        while not self._sent(ticket):
            self._pump(deadline)

    def flush(self, timeout: float | None = None) -> None:
        """Write what an interrupted call (``TimeoutError``, a signal handler's
        exception) left unwritten; return at once if nothing is. Raises as :meth:`send`
        (``TimeoutError``: the rest stays queued)."""
        self._check_open()
        self._flush(None if timeout is None else _Deadline(timeout))

    # -- receiving ------------------------------------------------------------

    def recv_with_handle(self, timeout: float | None = None) -> tuple[Any, socket.socket | None]:
        """The next message's value and the handle that came with it (a new
        ``socket.socket`` the caller owns and must close), or ``None``.

        *timeout* as in :meth:`send`; after a ``TimeoutError`` what did arrive stays
        queued. Internal messages (``cmd`` starting with ``NODE_``) never come out.

        Raises:
            ChannelClosed: the peer closed the channel (every message before was
                delivered).
            ProtocolError: the next message was not a message of this mode (a line
                that is not JSON, a payload that is not V8, a handle of an unknown
                type, an end of file inside a message); it is skipped.
            MessageTooLarge: the next message was over ``max_message_size``; skipped.
            TimeoutError: *timeout* passed first.
            OSError: the channel is closed (``EBADF``), or the socket failed.
        """
        self._check_open()
        deadline = None if timeout is None else _Deadline(timeout)
        while (item := self._next()) is NEED_DATA:
            self._pump(deadline)
        return self._with_handle(item)

    def recv(self, timeout: float | None = None) -> Any:
        """The next message's value (a handle that came with it is closed: use
        :meth:`recv_with_handle` to take it). Raises as :meth:`recv_with_handle`."""
        self._check_open()
        deadline = None if timeout is None else _Deadline(timeout)
        while (item := self._next()) is NEED_DATA:
            self._pump(deadline)
        if type(item) is Message:
            value, handle = self._with_handle(item)
            if handle is not None:
                handle.close()
            return value
        return item

    def __iter__(self) -> Iterator[Any]:
        """The values of the messages, until the peer closes the channel (then the
        iteration ends). Handles are closed, as by :meth:`recv`; errors are raised."""
        while True:
            try:
                yield self.recv()
            except ChannelClosed:
                return

    # -- life cycle -------------------------------------------------------------

    def close(self) -> None:
        """Close the socket and every descriptor the channel holds (received handles
        not yet taken, handles of ours in flight). Idempotent. Does not wait:
        bytes a ``TimeoutError`` left unwritten are dropped, and so are messages held
        behind a handle still waiting for its answer."""
        self._release()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- waiting ----------------------------------------------------------------

    def _flush(self, deadline: _Deadline | None) -> None:
        """Write everything the protocol has to send, reading meanwhile whenever the
        socket is not writable (so two ends writing at once cannot block each other)."""
        while not self._write_ready():
            self._wait(select.POLLOUT, deadline)

    def _pump(self, deadline: _Deadline | None) -> None:
        """Wait for and process one read (its ACKs are written before returning)."""
        self._wait(select.POLLIN, deadline)
        self._flush(deadline)

    def _wait(self, events: int, deadline: _Deadline | None) -> None:
        """Wait for *events*; whenever the socket is readable, read once instead.

        Raises ``TimeoutError`` when *deadline* passes first."""
        mask = events | (0 if self._eof else select.POLLIN)
        poller = self._pollers.get(mask)
        if poller is None:  # one per mask, kept: building it costs more than the poll
            poller = self._pollers[mask] = select.poll()
            poller.register(self._sock, mask)
        while True:
            ready = poller.poll(None if deadline is None else deadline.poll_ms())
            if not ready:
                if deadline is not None and deadline.poll_ms() == 0:
                    raise TimeoutError(f"timed out after {deadline.timeout} s")
                continue
            revents = ready[0][1]
            if revents & select.POLLIN and not self._eof and self._read():
                return
            if revents & (events | select.POLLHUP | select.POLLERR):
                return
