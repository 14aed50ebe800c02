"""Ancillary data: ``SCM_RIGHTS`` packing/unpacking and peer credentials.

The one rule this module keeps: a descriptor the kernel handed us is either
returned to the caller or closed before an exception leaves this module. The
standard library's ``socket.recv_fds`` does neither check (it returns a
truncated list silently); here ``MSG_CTRUNC`` and an over-limit count raise,
after closing everything that arrived.
"""

from __future__ import annotations

import _socket
import array
import os
import socket
import struct
import sys
from collections.abc import Iterable
from typing import NamedTuple

from ._errors import FdsTruncated, TooManyFds
from ._pair import close_quietly

__all__ = [
    "ANCBUFSIZE",
    "CREDS_ANCBUFSIZE",
    "SCM_MAX_FD",
    "Credentials",
    "check_fds",
    "close_fds",
    "credentials_from_record",
    "fds_from_ancillary",
    "first_bad_fd",
    "pack_fds",
    "parse_ancillary",
    "peek_credentials",
    "peer_credentials",
    "split_ancillary",
]

#: Linux refuses more than this many descriptors in one ``sendmsg`` (``SCM_MAX_FD``).
SCM_MAX_FD = 253

_INT_SIZE = array.array("i").itemsize
_SO_PASSCRED: int | None = getattr(socket, "SO_PASSCRED", None)
_SCM_CREDENTIALS: int | None = getattr(socket, "SCM_CREDENTIALS", None)
_UCRED = struct.Struct("3i")

#: Room for one ``SCM_CREDENTIALS`` record and nothing else.
CREDS_ANCBUFSIZE: int = socket.CMSG_SPACE(_UCRED.size)
#: Room for the most descriptors any peer can send in one message *plus* one
#: ``SCM_CREDENTIALS`` record: with ``SO_PASSCRED`` on (Linux) the kernel puts
#: the credentials first, so a buffer sized for descriptors alone would set
#: ``MSG_CTRUNC`` on a message carrying the maximum. Sized for ``SCM_MAX_FD``
#: regardless of ``max_fds`` so that "too many" is reported as such rather
#: than as kernel truncation.
ANCBUFSIZE: int = socket.CMSG_SPACE(SCM_MAX_FD * _INT_SIZE) + CREDS_ANCBUFSIZE

MSG_CTRUNC: int = int(socket.MSG_CTRUNC)
_MSG_CMSG_CLOEXEC: int = int(getattr(socket, "MSG_CMSG_CLOEXEC", 0))
_SOL_SOCKET = int(socket.SOL_SOCKET)
_SCM_RIGHTS = int(socket.SCM_RIGHTS)
#: The ``SCM_CREDENTIALS`` record type (-1 where the platform has none).
SCM_CREDENTIALS: int = -1 if _SCM_CREDENTIALS is None else int(_SCM_CREDENTIALS)


class Credentials(NamedTuple):
    """A process id, user id and group id, as the kernel recorded them: for the
    sender of a message (Linux ``SCM_CREDENTIALS``), or for the process that
    connected the socket (``SO_PEERCRED``; for a socketpair, its creator)."""

    pid: int
    uid: int
    gid: int


def check_fds(fds: Iterable[object], max_fds: int) -> list[int]:
    """Validate *fds* for sending and return them as a list of descriptor numbers.

    Each item is an ``int`` or an object with a ``fileno()`` method (a socket,
    a file), as ``spawn(fd_map=)`` takes; either way it stays the caller's.

    Raises:
        TypeError: *fds* is not iterable, or an item is neither an ``int`` nor
            has ``fileno()`` (``bool`` is refused too).
        ValueError: a descriptor is negative (a closed socket's ``fileno()``).
        TooManyFds: more than *max_fds* descriptors.
    """
    if isinstance(fds, (str, bytes)):
        raise TypeError(f"fds must be an iterable of ints, not {type(fds).__name__}")
    try:
        items = list(fds)
    except TypeError:
        raise TypeError(f"fds must be an iterable of ints, not {type(fds).__name__}") from None
    numbers: list[int] = []
    for item in items:
        if type(item) is int:
            fd = item
        elif isinstance(item, int) and not isinstance(item, bool):
            fd = int(item)
        elif not isinstance(item, bool) and callable(getattr(item, "fileno", None)):
            fd = item.fileno()  # type: ignore[attr-defined]
            if type(fd) is not int:
                raise TypeError(f"{type(item).__name__}.fileno() returned {fd!r}, not an int")
        else:
            raise TypeError(
                f"each fd must be an int or have a fileno() method, not {type(item).__name__}"
            )
        if fd < 0:
            raise ValueError(f"file descriptor must be >= 0, not {fd} (from {item!r})")
        numbers.append(fd)
    if len(numbers) > max_fds:
        raise TooManyFds(
            f"cannot send {len(numbers)} file descriptors with one message: max_fds is {max_fds}",
            count=len(numbers),
            limit=max_fds,
        )
    return numbers


def first_bad_fd(fds: Iterable[int]) -> int | None:
    """The first of *fds* that is not an open descriptor, or None."""
    for fd in fds:
        try:
            os.fstat(fd)
        except OSError:
            return fd
    return None


def pack_fds(fds: list[int]) -> list[tuple[int, int, bytes]]:
    """The ``sendmsg`` ancillary list carrying *fds* (empty list for no fds)."""
    if not fds:
        return []
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]


def close_fds(fds: Iterable[int]) -> None:
    """Close every descriptor in *fds*, ignoring errors."""
    close_quietly(*fds)


def parse_ancillary(
    ancdata: list[tuple[int, int, bytes]], msg_flags: int, max_fds: int
) -> tuple[list[int], bytes | None]:
    """Split one ``recvmsg`` result's control data into ``(fds, credentials record)``.

    The descriptors belong to the caller from now on. The record is the raw
    ``SCM_CREDENTIALS`` payload (``struct ucred``, decode it with
    :func:`credentials_from_record`), or None if there was none. Unknown
    records are ignored.

    Raises:
        FdsTruncated: ``MSG_CTRUNC`` is set. Every descriptor that arrived is closed.
        TooManyFds: more than *max_fds* arrived. All of them are closed.
    """
    fds: list[int] = []
    creds: bytes | None = None
    for level, kind, data in ancdata:
        if level != _SOL_SOCKET:
            continue
        if kind == _SCM_RIGHTS:
            # A truncated record may end in a partial int: keep only whole ones.
            whole = len(data) - len(data) % _INT_SIZE
            fds.extend(array.array("i", data[:whole]))
        elif kind == _SCM_CREDENTIALS and len(data) >= _UCRED.size:
            creds = data
    if msg_flags & MSG_CTRUNC:
        close_fds(fds)
        raise FdsTruncated(
            f"the kernel truncated the control data (MSG_CTRUNC); the {len(fds)} file "
            f"descriptor(s) that did arrive were closed"
        )
    if len(fds) > max_fds:
        close_fds(fds)
        raise TooManyFds(
            f"the peer sent {len(fds)} file descriptors with one message, over max_fds="
            f"{max_fds}; all of them were closed",
            count=len(fds),
            limit=max_fds,
        )
    return fds, creds


def fds_from_ancillary(
    ancdata: list[tuple[int, int, bytes]], msg_flags: int, max_fds: int
) -> list[int]:
    """The descriptors of one ``recvmsg`` result (see :func:`parse_ancillary`)."""
    return parse_ancillary(ancdata, msg_flags, max_fds)[0]


def split_ancillary(
    ancdata: list[tuple[int, int, bytes]],
) -> tuple[list[int], bytes | None]:
    """``(fds, credentials record)`` of one ``recvmsg`` result, checking nothing
    and raising nothing (the caller decides what truncation or a count over its
    limit means). The descriptors belong to the caller from now on."""
    fds: list[int] = []
    creds: bytes | None = None
    for level, kind, data in ancdata:
        if level != _SOL_SOCKET:
            continue
        if kind == _SCM_RIGHTS:
            whole = len(data) - len(data) % _INT_SIZE
            fds.extend(array.array("i", data[:whole]))
        elif kind == _SCM_CREDENTIALS and len(data) >= _UCRED.size:
            creds = data
    return fds, creds


def credentials_from_record(record: bytes) -> Credentials | None:
    """Decode an ``SCM_CREDENTIALS`` record; None if the kernel stamped no sender.

    Data written while neither end had ``SO_PASSCRED`` on carries no sender:
    Linux then reports pid 0 and the overflow uid/gid (65534). Such a record
    (pid 0) is not a sender's identity and is refused here.
    """
    pid, uid, gid = _UCRED.unpack_from(record)
    if pid <= 0:
        return None
    return Credentials(pid, uid, gid)


def peek_credentials(sock: _socket.socket) -> bytes | None:
    """The ``SCM_CREDENTIALS`` record of the next unread data on *sock*, without
    consuming anything; None if nothing is queued (or no record came with it).

    Only meaningful with ``SO_PASSCRED`` on. The control buffer has room for
    the credentials record and nothing more, so the kernel installs none of the
    peeked message's descriptors (it puts the credentials first, finds no room
    for ``SCM_RIGHTS``, sets ``MSG_CTRUNC`` and drops its temporary
    references); the descriptors stay queued with the data for the real read.
    """
    try:
        _data, anc, _flags, _addr = sock.recvmsg(
            1, CREDS_ANCBUFSIZE, socket.MSG_PEEK | socket.MSG_DONTWAIT | _MSG_CMSG_CLOEXEC
        )
    except OSError:
        return None  # nothing queued (EAGAIN), or the socket is unusable
    for level, kind, data in anc:
        if level == _SOL_SOCKET and kind == _SCM_RIGHTS:
            # Not expected (no room was offered); never leak one if it happens.
            close_fds(array.array("i", data[: len(data) - len(data) % _INT_SIZE]))
    for level, kind, data in anc:
        if level == _SOL_SOCKET and kind == _SCM_CREDENTIALS and len(data) >= _UCRED.size:
            return data
    return None


def has_credentials(ancdata: list[tuple[int, int, bytes]]) -> bool:
    """True if *ancdata* holds an ``SCM_CREDENTIALS`` record (a packet was dequeued)."""
    return any(kind == _SCM_CREDENTIALS and level == _SOL_SOCKET for level, kind, _ in ancdata)


def enable_passcred(sock: _socket.socket) -> bool:
    """Turn on ``SO_PASSCRED`` where it exists (Linux); return whether it is on.

    With it, the kernel stamps everything sent to *sock* from then on with the
    sending process's real pid, uid and gid, and every read returns that stamp as
    an ``SCM_CREDENTIALS`` record. That is how the channel names the real peer,
    and how a zero-length ``SOCK_SEQPACKET`` message is told apart from end of
    file (both make ``recvmsg`` return 0 bytes). A stream read never spans data
    from two different senders.
    """
    if _SO_PASSCRED is None or _SCM_CREDENTIALS is None:
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_PASSCRED, 1)
    except OSError:
        return False
    return True


def peer_credentials(sock: _socket.socket) -> Credentials:
    """The connect-time credentials of the other end of *sock*.

    Linux: ``SO_PEERCRED``: the process that connected, or for a socketpair the
    process that created it (even after the end was passed to a child).
    macOS: ``LOCAL_PEERCRED`` plus ``LOCAL_PEERPID``.
    FreeBSD and others: ``LOCAL_PEERCRED`` (pid from ``cr_pid`` where the
    ``xucred`` has it, else ``-1``). Only the Linux path is tested.

    Raises:
        OSError: the query failed (e.g. the socket is closed), or the platform
            has no way to ask (``errno`` ``ENOTSUP``).
    """
    so_peercred = getattr(socket, "SO_PEERCRED", None)
    if so_peercred is not None and sys.platform.startswith("linux"):
        raw = sock.getsockopt(socket.SOL_SOCKET, so_peercred, _UCRED.size)
        pid, uid, gid = _UCRED.unpack(raw)
        return Credentials(pid, uid, gid)
    return _bsd_peer_credentials(sock)


# struct xucred { u_int cr_version; uid_t cr_uid; short cr_ngroups;
#                 gid_t cr_groups[16]; (FreeBSD >= 13: pid_t cr_pid in a union) }
_SOL_LOCAL = 0
_LOCAL_PEERCRED = 1
_LOCAL_PEERPID = 2
_XUCRED = struct.Struct("IIh2x16I")


def _bsd_peer_credentials(sock: _socket.socket) -> Credentials:  # pragma: no cover - not Linux
    try:
        raw = sock.getsockopt(_SOL_LOCAL, _LOCAL_PEERCRED, 256)
    except OSError as exc:
        raise OSError(
            exc.errno, f"peer_credentials(): LOCAL_PEERCRED failed: {exc.strerror}"
        ) from exc
    if len(raw) < _XUCRED.size:
        raise OSError(95, "peer_credentials(): unexpected LOCAL_PEERCRED reply")
    _version, uid, _ngroups, *groups = _XUCRED.unpack_from(raw)
    gid = groups[0]
    pid = -1
    if sys.platform == "darwin":
        try:
            pid = struct.unpack("i", sock.getsockopt(_SOL_LOCAL, _LOCAL_PEERPID, 4))[0]
        except OSError:
            pid = -1
    elif len(raw) >= _XUCRED.size + 4:
        pid = struct.unpack_from("i", raw, _XUCRED.size)[0]
    return Credentials(pid, uid, gid)
