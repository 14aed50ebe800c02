"""Node.js's IPC channel protocol, sans-IO: what ``process.send()`` writes and reads.

A Node process started with ``NODE_CHANNEL_FD=<fd>`` (and optionally
``NODE_CHANNEL_SERIALIZATION_MODE``) speaks this protocol on that descriptor,
which must be a ``SOCK_STREAM`` Unix socket. Three layers, one job each:

* the wire codecs: :func:`encode_json` / :class:`JsonLineDecoder` for the
  ``'json'`` mode (one ``JSON.stringify(value) + "\\n"`` per message, UTF-8) and
  :func:`encode_advanced` / :class:`FrameDecoder` for the ``'advanced'`` mode
  (a 4-byte big-endian length, then V8 serializer output: see ``_v8``);
* :class:`NodeProtocol`, the state of one connection: messages whose ``cmd`` is a
  string starting with ``NODE_`` are internal and never reach the user; a
  descriptor travels as ``{"cmd": "NODE_HANDLE", "type": ..., "msg": value}``
  with the descriptor in ``SCM_RIGHTS`` on the same write; the receiver answers
  ``{"cmd": "NODE_HANDLE_ACK"}`` (or ``NODE_HANDLE_NACK`` when no descriptor
  came, and the sender retransmits up to 3 times); the sender holds every later
  message until that answer;
* :func:`describe_handle`, which names the Node handle type of a Python socket.

Nothing here makes a system call except closing descriptors this module owns.
The I/O layer (the channel) reads bytes and descriptors from the socket and
hands them to :meth:`NodeProtocol.receive_data`, takes values out with
:meth:`NodeProtocol.next_message` (or :meth:`NodeProtocol.next_value`, which skips
the wrapping of a message without a descriptor), and writes what
:meth:`NodeProtocol.data_to_send` returns, each chunk with one ``sendmsg`` whose first
call carries the chunk's descriptors; a message without a handle may instead be
taken with :meth:`NodeProtocol.send_plain` and written at once.
"""

from __future__ import annotations

import json
import json.encoder
import re
import socket
import struct
from collections import deque
from collections.abc import Callable, Iterable, MutableMapping
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple

from . import _framing, _v8
from ._errors import HandleRefused, MessageTooLarge, ProtocolError
from ._pair import close_quietly

if TYPE_CHECKING:
    from typing_extensions import Buffer
else:
    Buffer = bytes | bytearray | memoryview

__all__ = [
    "CLOSED",
    "HANDLE_TYPES",
    "MAX_HANDLE_RETRANSMISSIONS",
    "NEED_DATA",
    "FrameDecoder",
    "Handle",
    "HandleRefused",
    "JsonLineDecoder",
    "Message",
    "NodeProtocol",
    "Write",
    "describe_handle",
    "encode_advanced",
    "encode_json",
    "is_internal",
    "node_environment",
    "take_node_environment",
]

Serialization = Literal["json", "advanced"]

#: Node gives up on a handle after this many retransmissions (``NODE_HANDLE_NACK``s).
MAX_HANDLE_RETRANSMISSIONS: Final = 3
#: The handle types this side sends (Node's names); Node also names raw handles
#: ``net.Native`` and ``dgram.Native``, which this side accepts on receipt.
HANDLE_TYPES: Final = ("net.Socket", "net.Server", "dgram.Socket")
_RECEIVABLE: Final = (*HANDLE_TYPES, "net.Native", "dgram.Native")
# Descriptors that arrived with no NODE_HANDLE message to claim them yet. A Node peer
# sends one and waits for our answer before the next; a peer that piles them up is
# broken.
_MAX_UNCLAIMED_FDS: Final = 16
DEFAULT_MAX_MESSAGE_SIZE: Final = 64 * 1024 * 1024


class _Marker:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


#: :meth:`next_message` (and the decoders' ``next()``): no whole message buffered yet.
NEED_DATA: Final = _Marker("NEED_DATA")
#: :meth:`next_message`: the peer closed its end at a message boundary; nothing follows.
CLOSED: Final = _Marker("CLOSED")


def is_internal(value: object) -> bool:
    """Whether Node treats *value* as one of its own messages (never shown to user code):
    an object whose ``cmd`` is a string longer than ``"NODE_"`` that starts with it."""
    if type(value) is not dict:
        return False
    cmd = value.get("cmd")
    return type(cmd) is str and len(cmd) > 5 and cmd.startswith("NODE_")


# ------------------------------------------------------------------------------- json


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (JSON.parse rejects it)")


_JSON_ENCODER: Final = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
_JSON_DECODER: Final = json.JSONDecoder(parse_constant=_reject_constant)
_SURROGATE: Final = re.compile("[\ud800-\udfff]")


def _escape_surrogate(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def _not_json(value: object) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# The C encoder that json.JSONEncoder.encode() builds anew on every call, built once
# and without the circular-reference bookkeeping (a cycle ends in RecursionError, and
# only then is the checking encoder asked for the precise error): measured 2x faster
# for a small object.
_MAKE_ENCODER: Any = json.encoder.c_make_encoder  # type: ignore[attr-defined]
_FAST_ENCODER: Final[Callable[[object, int], list[str]] | None] = (
    None
    if _MAKE_ENCODER is None
    else _MAKE_ENCODER(
        None, _not_json, json.encoder.encode_basestring, None, ":", ",", False, False, False
    )
)


def encode_json(value: object) -> bytes:
    """One json-mode message: ``JSON.stringify(value) + "\\n"`` in UTF-8.

    Like ``JSON.stringify``: no spaces, non-ASCII characters as themselves, lone
    surrogates escaped (``\\ud800``) so the line stays valid UTF-8 and Node's
    ``JSON.parse`` gets the same string back.

    Raises (before producing anything):
        ValueError: NaN or an infinity (``JSON.parse`` rejects them, and Node kills
            the process on a line it cannot parse), or a circular reference.
        TypeError: a value ``json`` cannot encode.
    """
    try:
        if _FAST_ENCODER is None:  # pragma: no cover - no C json (not CPython)
            raise RecursionError
        text = "".join(_FAST_ENCODER(value, 0))
    except RecursionError:
        try:
            text = _JSON_ENCODER.encode(value)
        except ValueError as exc:
            raise ValueError(f"cannot send this value as JSON: {exc}") from None
    except ValueError as exc:
        raise ValueError(f"cannot send this value as JSON: {exc}") from None
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        # Only surrogate code points (inside strings) fail: escape them, as
        # JSON.stringify does for lone ones (JavaScript joins an escaped pair).
        data = _SURROGATE.sub(_escape_surrogate, text).encode("utf-8")
    return data + b"\n"


_SCAN: Final[Callable[[str, int], tuple[Any, int]]] = _JSON_DECODER.scan_once  # type: ignore[attr-defined]


def _parse_line(line: bytes) -> Any:
    # The common line is one JSON value from its first byte to its last: the scanner
    # alone reads it (JSONDecoder.decode adds two whitespace matches around it).
    # Anything else takes the full decoder, which accepts surrounding whitespace as
    # JSON.parse does and words the error.
    try:
        text = line.decode("utf-8")
        value, end = _SCAN(text, 0)
        if end == len(text):
            return value
    except (ValueError, StopIteration, RecursionError):
        pass
    try:
        return _JSON_DECODER.decode(line.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError, JSONDecodeError
        shown = line if len(line) <= 80 else line[:80] + b"..."
        raise ProtocolError(f"a line of {len(line)} bytes is not JSON ({exc}): {shown!r}") from None


def _too_large(size: int, limit: int, more: bool = False) -> MessageTooLarge:
    size_text = f"more than {size - 1}" if more else f"{size}"
    return MessageTooLarge(
        f"a message of {size_text} bytes is over max_message_size ({limit} bytes); it was skipped",
        size=size,
        limit=limit,
    )


class JsonLineDecoder:
    """Incremental json-mode decoder: bytes in, values out, in order.

    ``feed(b"")`` marks the end of file. :meth:`next` returns the next value, or
    :data:`NEED_DATA`, or :data:`CLOSED` after the end of file; it raises, at the
    place in the stream where the fault is:

    * :class:`ProtocolError` for a line that is not JSON as ``JSON.parse`` reads it
      (not UTF-8, empty, ``NaN``, trailing data, ...) and for an end of file inside a
      line (then :data:`CLOSED` follows);
    * :class:`MessageTooLarge` for a line over *max_message_size* bytes (newline not
      counted): raised as soon as the buffered part is over the limit, and the rest
      of the line is skipped without being buffered.

    Each error consumes its line only: the lines after it decode normally (whether
    the channel goes on is its owner's decision). Not thread-safe.
    """

    __slots__ = ("_eof", "_limit", "_lines", "_partial", "_skipping")

    def __init__(self, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self._limit = max_message_size
        self._lines: deque[bytes | MessageTooLarge] = deque()
        self._partial = bytearray()
        self._skipping = False  # inside a line already reported as too large
        self._eof = False

    def feed(self, data: Buffer) -> None:
        """Buffer *data* (copied); ``b""`` means end of file. Never raises for content."""
        if self._eof:
            raise RuntimeError("data fed after the end of file")
        chunk = data if type(data) is bytes else bytes(data)
        if not chunk:
            self._eof = True
            return
        if not self._partial and not self._skipping and len(chunk) <= self._limit:
            # The common read: whole lines, none of them can be over the limit.
            lines = chunk.split(b"\n")
            tail = lines.pop()
            self._lines.extend(lines)
            if tail:
                self._partial += tail
            return
        start = 0
        if self._skipping:
            start = chunk.find(b"\n") + 1
            if start == 0:
                return
            self._skipping = False
        newline = chunk.find(b"\n", start)
        if newline < 0:
            self._partial += chunk[start:] if start else chunk
            self._check_partial()
            return
        partial = self._partial
        if partial:
            partial += chunk[start:newline]
            self._push(bytes(partial))
            partial.clear()
        else:
            self._push(chunk[start:newline])
        lines = chunk[newline + 1 :].split(b"\n")
        partial += lines.pop()
        for line in lines:
            self._push(line)
        self._check_partial()

    def _push(self, line: bytes) -> None:
        self._lines.append(_too_large(len(line), self._limit) if len(line) > self._limit else line)

    def _check_partial(self) -> None:
        if len(self._partial) > self._limit:
            self._lines.append(_too_large(len(self._partial) + 1, self._limit, more=True))
            self._partial.clear()
            self._skipping = True

    def drain(self) -> list[Any]:
        """Every value buffered, in order, each error in its place as an exception
        instance (not raised), and :data:`CLOSED` last once the end of file is
        reached: what calling :meth:`next` until :data:`NEED_DATA` gives, at once."""
        lines = self._lines
        values: list[Any] = []
        append = values.append
        while lines:
            line = lines.popleft()
            if type(line) is bytes:
                try:
                    append(_parse_line(line))
                except ProtocolError as exc:
                    append(exc)
            else:
                append(line)  # MessageTooLarge
        if self._eof:
            _drain_into(self, values)
        return values

    def next(self) -> Any:
        """The next value, :data:`NEED_DATA` or :data:`CLOSED` (raises as above)."""
        if self._lines:
            item = self._lines.popleft()
            if isinstance(item, MessageTooLarge):
                raise item
            return _parse_line(item)
        if not self._eof:
            return NEED_DATA
        if self._partial:
            size = len(self._partial)
            self._partial.clear()
            raise ProtocolError(f"end of file inside a line: {size} bytes without a newline")
        return CLOSED


def _drain_into(decoder: JsonLineDecoder | FrameDecoder, values: list[Any]) -> None:
    """Call ``decoder.next()`` until it needs data (errors kept as values, CLOSED last)."""
    while True:
        try:
            value = decoder.next()
        except (ProtocolError, MessageTooLarge) as exc:
            values.append(exc)
            continue
        if value is NEED_DATA:
            return
        values.append(value)
        if value is CLOSED:
            return


# --------------------------------------------------------------------------- advanced

_LENGTH: Final = struct.Struct(">I")
_MAX_FRAME: Final = 0xFFFFFFFF


def encode_advanced(value: object) -> bytes:
    """One advanced-mode message: the payload's length (4 bytes, big-endian), then
    the V8 serialization of *value* as Node's IPC channel writes it.

    Raises (before producing anything): ``TypeError``/``ValueError`` as
    :func:`unix_socketpair._v8.serialize`; ``ValueError`` for a payload over 4 GiB.
    """
    payload = _v8.serialize(value)
    if len(payload) > _MAX_FRAME:
        raise ValueError(f"a V8 payload of {len(payload)} bytes does not fit a 4-byte length")
    return _LENGTH.pack(len(payload)) + payload


class FrameDecoder:
    """Incremental advanced-mode decoder, the twin of :class:`JsonLineDecoder`.

    Same contract: :class:`ProtocolError` for a payload that is not a V8 value of
    the supported subset (the frame is consumed; later frames decode) and for an end
    of file inside a frame; :class:`MessageTooLarge` for a declared length over
    *max_message_size*, raised when the header arrives, the payload then skipped
    without being buffered.
    """

    __slots__ = ("_buf", "_eof", "_limit", "_pos", "_skip")

    def __init__(self, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self._limit = max_message_size
        self._buf = bytearray()
        self._pos = 0
        self._skip = 0  # bytes of a too-large payload still to be dropped
        self._eof = False

    def feed(self, data: Buffer) -> None:
        """Buffer *data* (copied); ``b""`` means end of file. Never raises for content."""
        if self._eof:
            raise RuntimeError("data fed after the end of file")
        view = memoryview(data).cast("B")
        if not view:
            self._eof = True
            return
        if self._skip:
            dropped = min(self._skip, len(view))
            self._skip -= dropped
            view = view[dropped:]
        self._buf += view

    def next(self) -> Any:
        """The next value, :data:`NEED_DATA` or :data:`CLOSED` (raises as above)."""
        buf = self._buf
        pos = self._pos
        # The framing loop is the channel's own (C when accelerated): the same
        # 4-byte big-endian header, the same limit check.
        payloads, end = _framing.split_frames(buf, pos, len(buf), self._limit, 1)
        if payloads:
            self._consume(end)
            return _v8.deserialize(payloads[0])
        return self._stopped(buf, pos)

    def drain(self) -> list[Any]:
        """As :meth:`JsonLineDecoder.drain`."""
        buf = self._buf
        payloads, end = _framing.split_frames(buf, self._pos, len(buf), self._limit, 1 << 30)
        self._consume(end)
        values: list[Any] = []
        append = values.append
        deserialize = _v8.deserialize
        for payload in payloads:
            try:
                append(deserialize(payload))
            except ProtocolError as exc:
                append(exc)
        _drain_into(self, values)
        return values

    def _stopped(self, buf: bytearray, pos: int) -> Any:
        """Where the framing loop stopped at *pos*: a header over the limit, a frame
        not whole yet, or the end of file."""
        available = len(buf) - pos
        if available >= 4:
            size = _LENGTH.unpack_from(buf, pos)[0]
            if size > self._limit:
                skipped = min(size, available - 4)
                self._skip = size - skipped
                self._consume(pos + 4 + skipped)
                raise _too_large(size, self._limit)
        if not self._eof:
            return NEED_DATA
        if available or self._skip:
            self._consume(len(buf))
            self._skip = 0
            raise ProtocolError(f"end of file inside a message: {available} bytes of a frame")
        return CLOSED

    def _consume(self, pos: int) -> None:
        if pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        elif pos > 1 << 16:
            del self._buf[:pos]
            self._pos = 0
        else:
            self._pos = pos


# --------------------------------------------------------------------------- protocol


class Handle(NamedTuple):
    """A descriptor to send, described as Node will rebuild it.

    Attributes:
        fd: the descriptor; :meth:`NodeProtocol.send` takes ownership of it.
        type: one of :data:`HANDLE_TYPES` (see :func:`describe_handle`).
        dgram_type: ``"udp4"`` or ``"udp6"`` for a ``dgram.Socket`` (Node needs it
            to rebuild the socket), else ``None``.
    """

    fd: int
    type: str
    dgram_type: str | None = None


class Message(NamedTuple):
    """A message for the user: its value and, if one came with it, a descriptor the
    receiver now owns, with the Node handle type it was sent as."""

    value: Any
    fd: int | None = None
    handle_type: str | None = None


class Write(NamedTuple):
    """Bytes to write with one ``sendmsg`` (looping on partial writes), *fds*
    attached to the first call only. The descriptors still belong to the protocol."""

    data: bytes
    fds: tuple[int, ...] = ()


class _Outgoing:
    __slots__ = ("data", "handle", "retransmissions", "ticket")

    def __init__(self, data: bytes, handle: Handle | None, ticket: int) -> None:
        self.data = data
        self.handle = handle
        self.ticket = ticket
        self.retransmissions = 0


_FD_VARIABLE: Final = "NODE_CHANNEL_FD"
_MODE_VARIABLE: Final = "NODE_CHANNEL_SERIALIZATION_MODE"


def node_environment(fd: int, serialization: Serialization) -> dict[str, str]:
    """The variables a Node child needs to find its channel at descriptor *fd*."""
    if serialization not in ("json", "advanced"):
        raise ValueError(f"serialization must be 'json' or 'advanced', not {serialization!r}")
    return {_FD_VARIABLE: str(fd), _MODE_VARIABLE: serialization}


def take_node_environment(environ: MutableMapping[str, str]) -> tuple[int, Serialization]:
    """``(descriptor, serialization)`` of the channel a Node parent gave this process,
    read from *environ* (``os.environ``) and removed from it, as Node removes them
    from its own children's ``process.env`` (so grandchildren do not inherit them).

    A missing ``NODE_CHANNEL_SERIALIZATION_MODE`` means ``'json'``, as in Node.

    Raises:
        ValueError: ``NODE_CHANNEL_FD`` is missing or not a descriptor number, or the
            mode is neither ``json`` nor ``advanced`` (both variables are removed anyway).
    """
    raw_fd = environ.pop(_FD_VARIABLE, None)
    mode = environ.pop(_MODE_VARIABLE, "json")
    if raw_fd is None:
        raise ValueError(
            f"{_FD_VARIABLE} is not set: this process was not started with a Node IPC "
            f"channel ('ipc' in the parent's stdio)"
        )
    try:
        fd = int(raw_fd, 10)
    except ValueError:
        raise ValueError(f"{_FD_VARIABLE}={raw_fd!r} is not a descriptor number") from None
    if fd < 0:
        raise ValueError(f"{_FD_VARIABLE}={raw_fd!r} is negative")
    if mode == "json":
        return fd, "json"
    if mode == "advanced":
        return fd, "advanced"
    raise ValueError(f"{_MODE_VARIABLE}={mode!r}: 'json' or 'advanced' expected")


def describe_handle(sock: socket.socket) -> tuple[str, str | None]:
    """``(Node handle type, dgram type)`` for *sock*, as :class:`Handle` wants them.

    A listening ``SOCK_STREAM`` socket (Unix, IPv4, IPv6) is a ``net.Server``; a
    connected one a ``net.Socket``; a UDP socket a ``dgram.Socket`` (``udp4`` or
    ``udp6``). Inspects the socket with ``getsockopt``/``getpeername``; does not
    change it.

    Raises:
        TypeError: anything else (a Unix datagram socket, ``SOCK_SEQPACKET``, a stream
            socket neither listening nor connected, another family).
    """
    family, kind = sock.family, sock.type
    if kind == socket.SOCK_STREAM and family in (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6):
        if _listening(sock):
            return "net.Server", None
        try:
            sock.getpeername()
        except OSError:
            raise TypeError(
                "a stream socket must be listening (net.Server) or connected (net.Socket) "
                "to be sent as a Node handle"
            ) from None
        return "net.Socket", None
    if kind == socket.SOCK_DGRAM and family in (socket.AF_INET, socket.AF_INET6):
        return "dgram.Socket", "udp4" if family == socket.AF_INET else "udp6"
    raise TypeError(
        f"Node takes a connected or listening stream socket (Unix or TCP) or a UDP "
        f"socket as a handle, not {family!r}/{kind!r}"
    )


def _listening(sock: socket.socket) -> bool:
    option = getattr(socket, "SO_ACCEPTCONN", None)
    if option is not None:
        return bool(sock.getsockopt(socket.SOL_SOCKET, option))
    return False  # pragma: no cover - every platform this targets defines it


class NodeProtocol:
    """One end of a Node IPC connection, without I/O.

    Receiving: :meth:`receive_data` takes the bytes and descriptors of each read
    (``b""`` at end of file) and processes every whole message at once: internal
    ones act here (an ACK releases the held queue, a ``NODE_HANDLE`` queues our
    ACK or NACK and pairs the message with the oldest descriptor received and not
    yet claimed), the others wait in order for :meth:`next_message`. A decoding
    error waits in line too, so every message before it is delivered first.

    Sending: :meth:`send` encodes at once (so a bad value raises before anything is
    queued), then the message goes to :meth:`data_to_send` — unless a handle is
    waiting for its ACK, in which case it is held, in order, until the answer
    (ACK/NACK answers of our own are never held, or both sides could wait on each
    other). A NACK retransmits the handle, up to :data:`MAX_HANDLE_RETRANSMISSIONS`
    times, then the handle is given up and :meth:`outcome` raises
    :class:`HandleRefused` for it.

    Descriptor ownership: the protocol owns every descriptor handed to
    :meth:`receive_data` and :meth:`send` until :meth:`next_message` hands it to
    the caller (in a :class:`Message`) or it closes it: an ACKed or refused handle
    of ours, descriptors left unclaimed at end of file, every one at :meth:`close`.

    Not thread-safe: the channel that owns it serializes calls.
    """

    def __init__(
        self,
        serialization: Serialization = "json",
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        decoder: JsonLineDecoder | FrameDecoder
        if serialization == "json":
            decoder, self._encode = JsonLineDecoder(max_message_size), encode_json
        elif serialization == "advanced":
            decoder, self._encode = FrameDecoder(max_message_size), encode_advanced
        else:
            raise ValueError(f"serialization must be 'json' or 'advanced', not {serialization!r}")
        self.serialization: Final = serialization
        self._decoder = decoder
        self._fds: deque[int] = deque()  # received, not yet claimed by a NODE_HANDLE
        # Values of plain messages as they are, a Message for one with a descriptor,
        # errors at their place in the stream, CLOSED last (decoders never produce a
        # Message, a _Marker or an exception as a value).
        self._inbox: deque[Any] = deque()
        self._outbox: list[bytes | Write] = []  # bytes: a plain message; Write: a handle's
        self._held: deque[_Outgoing] = deque()
        self._pending: _Outgoing | None = None  # our handle awaiting its answer
        self._outcomes: dict[int, HandleRefused | None] = {}
        self._tickets = 0
        self._eof = False
        self._closed = False

    # ------------------------------------------------------------------ receiving

    def receive_data(self, data: Buffer, fds: Iterable[int] = ()) -> None:
        """Process one read: *data* (``b""`` = end of file) and the descriptors that
        came with it, which the protocol owns from now on (even if this raises)."""
        self._fds.extend(fds)
        if self._closed:
            self._close_unclaimed()
            raise RuntimeError("the protocol is closed")
        if len(self._fds) > _MAX_UNCLAIMED_FDS:
            count = len(self._fds)
            self._close_unclaimed()
            self._inbox.append(
                ProtocolError(f"{count} descriptors arrived with no NODE_HANDLE message for them")
            )
        self._decoder.feed(data)
        inbox = self._inbox
        for item in self._decoder.drain():
            # Plain values go to the inbox as they are; only a dict with "cmd" can be
            # Node's own (one dict lookup for the common message).
            if type(item) is dict and "cmd" in item and is_internal(item):
                self._internal(item)
            elif item is CLOSED:
                self._end_of_file()
            else:
                inbox.append(item)  # a value, or the error at its place in the stream

    def _internal(self, message: dict[str, Any]) -> None:
        cmd = message["cmd"]
        if cmd == "NODE_HANDLE_ACK":
            pending = self._pending
            if pending is not None:
                self._pending = None
                assert pending.handle is not None
                close_quietly(pending.handle.fd)
                self._outcomes[pending.ticket] = None
                self._release()
        elif cmd == "NODE_HANDLE_NACK":
            pending = self._pending
            if pending is not None:
                assert pending.handle is not None
                if pending.retransmissions == MAX_HANDLE_RETRANSMISSIONS:
                    self._refuse(pending, f"refused {MAX_HANDLE_RETRANSMISSIONS + 1} times")
                    self._release()
                else:
                    pending.retransmissions += 1
                    self._outbox.append(Write(pending.data, (pending.handle.fd,)))
        elif cmd == "NODE_HANDLE":
            self._handle_message(message)
        # Any other NODE_ message (cluster's, for instance) means nothing here.

    def _handle_message(self, message: dict[str, Any]) -> None:
        if not self._fds:
            # The descriptor was lost on the way (MSG_CTRUNC): ask for it again.
            self._answer("NODE_HANDLE_NACK")
            return
        fd = self._fds.popleft()
        handle_type = message.get("type")
        if handle_type not in _RECEIVABLE:
            close_quietly(fd)
            self._answer("NODE_HANDLE_NACK")
            self._inbox.append(ProtocolError(f"a NODE_HANDLE of unknown type {handle_type!r}"))
            return
        self._answer("NODE_HANDLE_ACK")
        value = message.get("msg")
        # Node retransmits a NACKed handle as {"cmd": "NODE_HANDLE", "type":
        # "net.Native", "msg": <the first NODE_HANDLE message>}: one descriptor, one
        # ACK (a second ACK would reach a Node sender with nothing pending), and the
        # first message's value and type.
        while type(value) is dict and value.get("cmd") == "NODE_HANDLE":
            if value.get("type") in _RECEIVABLE:
                handle_type = value["type"]
            value = value.get("msg")
        if is_internal(value):
            close_quietly(fd)  # a handle for Node's own machinery (cluster): not ours
            return
        self._inbox.append(Message(value, fd, handle_type))

    def _answer(self, cmd: str) -> None:
        self._outbox.append(self._encode({"cmd": cmd}))

    def _end_of_file(self) -> None:
        self._eof = True
        self._close_unclaimed()
        if self._pending is not None:
            self._refuse(self._pending, "the peer closed the channel before answering")
        for outgoing in self._held:
            if outgoing.handle is not None:
                self._refuse(outgoing, "the peer closed the channel first")
        self._held.clear()
        self._inbox.append(CLOSED)

    def _close_unclaimed(self) -> None:
        fds = list(self._fds)
        self._fds.clear()
        close_quietly(*fds)

    def next_message(self) -> Message | _Marker:
        """The next user message, :data:`NEED_DATA`, or :data:`CLOSED` (for good).

        Raises:
            ProtocolError: the next thing in the stream was not a message of this mode
                (a line that is not JSON, a payload that is not V8, an end of file
                inside a message, a handle of unknown type).
            MessageTooLarge: the next message was over ``max_message_size`` (skipped).
        """
        item = self.next_value()
        if type(item) is Message or type(item) is _Marker:
            return item
        return Message(item)

    def next_value(self) -> Any:
        """:meth:`next_message` without the wrapping for a message that came without
        a descriptor (the receive path of the channels): the value itself, a
        :class:`Message` for one with a descriptor, :data:`NEED_DATA` or
        :data:`CLOSED`. Raises as :meth:`next_message`."""
        inbox = self._inbox
        if not inbox:
            return CLOSED if self._eof else NEED_DATA
        item = inbox[0]
        if item is CLOSED:
            return CLOSED  # stays: every later call says so too
        inbox.popleft()
        if isinstance(item, BaseException):
            raise item
        return item

    # -------------------------------------------------------------------- sending

    def send(self, value: object, handle: Handle | None = None) -> int:
        """Queue *value* (with *handle*, whose descriptor the protocol then owns).

        Returns a ticket for :meth:`outcome` with a handle, 0 without one.

        Raises (nothing queued, *handle* still the caller's):
            TypeError: *value* cannot be encoded in this mode; *handle* has a type
                outside :data:`HANDLE_TYPES` or a ``dgram.Socket`` lacks its dgram type.
            ValueError: *value* is NaN/infinite/circular in json mode.
            RuntimeError: the protocol is closed.
        """
        if self._closed:
            raise RuntimeError("the protocol is closed")
        if handle is None:
            data = self._encode(value)
            if self._pending is None and not self._held:
                self._outbox.append(data)  # the common case, kept short
            else:
                self._held.append(_Outgoing(data, None, 0))
            return 0
        if handle.type not in HANDLE_TYPES:
            raise TypeError(f"handle type must be one of {HANDLE_TYPES}, not {handle.type!r}")
        wrapper: dict[str, Any] = {"cmd": "NODE_HANDLE", "type": handle.type, "msg": value}
        if handle.type == "dgram.Socket":
            if handle.dgram_type not in ("udp4", "udp6"):
                raise TypeError("a dgram.Socket needs dgram_type udp4 or udp6")
            wrapper["dgramType"] = handle.dgram_type
        data = self._encode(wrapper)
        self._tickets += 1
        outgoing = _Outgoing(data, handle, self._tickets)
        if self._pending is not None or self._held:
            self._held.append(outgoing)
        else:
            self._emit(outgoing)
        return outgoing.ticket

    def send_plain(self, value: object) -> bytes | None:
        """:meth:`send` of a message without a handle, for a caller that writes it
        at once: when nothing waits to be sent before it (no output taken yet, no
        handle awaiting its answer), the encoded bytes are returned and the protocol
        is done with them; otherwise the message is queued as :meth:`send` queues it
        and ``None`` is returned. Raises as :meth:`send`."""
        if self._outbox or self._pending is not None or self._held or self._closed:
            self.send(value)
            return None
        return self._encode(value)

    def _emit(self, outgoing: _Outgoing) -> None:
        if outgoing.handle is None:
            self._outbox.append(outgoing.data)
        else:
            self._outbox.append(Write(outgoing.data, (outgoing.handle.fd,)))
            self._pending = outgoing

    def _release(self) -> None:
        held = self._held
        while held and self._pending is None:
            self._emit(held.popleft())

    def _refuse(self, outgoing: _Outgoing, why: str) -> None:
        assert outgoing.handle is not None
        close_quietly(outgoing.handle.fd)
        if self._pending is outgoing:
            self._pending = None
        self._outcomes[outgoing.ticket] = HandleRefused(
            f"the {outgoing.handle.type} handle was not delivered: {why}"
        )

    def data_to_send(self) -> list[Write]:
        """Take what is ready to write, in order: chunks of messages, a chunk starting
        at each handle message, whose descriptor rides on its first byte."""
        outbox = self._outbox
        if not outbox:
            return []
        self._outbox = []
        chunks: list[Write] = []
        plain: list[bytes] = []
        fds: tuple[int, ...] = ()
        for item in outbox:
            if type(item) is bytes:
                plain.append(item)
            else:
                assert isinstance(item, Write)
                if plain:
                    chunks.append(Write(b"".join(plain), fds))
                plain, fds = [item.data], item.fds
        chunks.append(Write(b"".join(plain), fds))
        return chunks

    @property
    def has_output(self) -> bool:
        """Whether :meth:`data_to_send` has anything."""
        return bool(self._outbox)

    @property
    def awaiting_answer(self) -> bool:
        """Whether a handle of ours waits for the peer's ACK (later messages are held)."""
        return self._pending is not None

    def outcome(self, ticket: int) -> bool:
        """``True`` once the message of *ticket* was delivered (for a handle: ACKed),
        ``False`` while it waits. Ticket 0 (a message without a handle) is always
        ``True``: such a message cannot be refused.

        Raises:
            HandleRefused: its handle was refused or the peer left first (once).
        """
        if ticket == 0:
            return True
        if ticket in self._outcomes:
            refused = self._outcomes.pop(ticket)
            if refused is not None:
                raise refused
            return True
        waiting = [held.ticket for held in self._held]
        if self._pending is not None:
            waiting.append(self._pending.ticket)
        return ticket not in waiting

    # -------------------------------------------------------------------- closing

    def close(self) -> None:
        """Close every descriptor the protocol still owns (idempotent). Held and
        unsent messages are dropped: the owner decides beforehand whether to wait
        for :attr:`awaiting_answer` to clear."""
        if self._closed:
            return
        self._closed = True
        fds = list(self._fds)
        self._fds.clear()
        if self._pending is not None and self._pending.handle is not None:
            fds.append(self._pending.handle.fd)
        self._pending = None
        fds.extend(o.handle.fd for o in self._held if o.handle is not None)
        self._held.clear()
        fds.extend(m.fd for m in self._inbox if type(m) is Message and m.fd is not None)
        self._inbox.clear()
        self._outbox = []
        close_quietly(*fds)
