"""Receiving with a timeout: TimeoutError when it passes, and nothing lost."""

from __future__ import annotations

import math
import os
import struct
import time

import pytest
from support import in_thread

from unix_socketpair import (
    SOCK_DGRAM,
    SOCK_SEQPACKET,
    SOCK_STREAM,
    Channel,
    ChannelClosed,
)

HEADER = struct.Struct(">I")
ALL_TYPES = [SOCK_STREAM, SOCK_SEQPACKET, SOCK_DGRAM]


@pytest.mark.parametrize("sock_type", ALL_TYPES)
@pytest.mark.parametrize("how", ["recv", "recv_with_fds", "recv_into"])
def test_nothing_arrives_then_a_message_does(sock_type: int, how: str, no_fd_leak: None) -> None:
    a, b = Channel.pair(sock_type)
    with a, b:

        def receive(timeout: float) -> bytes:
            if how == "recv":
                return b.recv(timeout=timeout)
            if how == "recv_with_fds":
                payload, fds = b.recv_with_fds(timeout=timeout)
                assert fds == []
                return payload
            buffer = bytearray(100)
            return bytes(buffer[: b.recv_into(buffer, timeout=timeout)])

        start = time.monotonic()
        with pytest.raises(TimeoutError, match=r"no whole message arrived within 0\.05 s"):
            receive(0.05)
        assert time.monotonic() - start >= 0.05  # it did wait
        with pytest.raises(TimeoutError):
            receive(0)
        join = in_thread(lambda: a.send(b"late"))
        assert receive(30) == b"late"
        join()
        a.send(b"queued")
        assert receive(0) == b"queued"  # already there: 0 is enough


def test_a_message_cut_short_by_the_timeout_stays_queued(no_fd_leak: None) -> None:
    a, b = Channel.pair()
    payload = bytes(range(256)) * 4096  # 1 MiB: read straight into a buffer without a timeout
    frame = HEADER.pack(len(payload)) + payload
    raw = a._sock  # the peer writes the frame in two parts, as a slow writer would
    with a, b:
        raw.sendall(frame[:1000])
        with pytest.raises(TimeoutError, match="the 1000 bytes of it that did stay queued"):
            b.recv(timeout=0.05)
        buffer = bytearray(len(payload))
        with pytest.raises(TimeoutError):
            b.recv_into(buffer, timeout=0.01)
        join = in_thread(lambda: raw.sendall(frame[1000:]))
        assert b.recv_into(buffer, timeout=30) == len(payload)
        join()
        assert buffer == payload
        # And the channel goes on.
        a.send(b"next")
        assert b.recv(timeout=30) == b"next"


def test_descriptors_wait_with_their_message(no_fd_leak: None) -> None:
    a, b = Channel.pair()
    r, w = os.pipe()
    try:
        with a, b:
            with pytest.raises(TimeoutError):
                b.recv_with_fds(timeout=0.01)
            a.send(b"fd", fds=[w])
            payload, fds = b.recv_with_fds(timeout=30)
            assert payload == b"fd" and len(fds) == 1
            assert os.fstat(fds[0]).st_ino == os.fstat(w).st_ino
            os.close(fds[0])
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.parametrize("sock_type", [SOCK_STREAM, SOCK_SEQPACKET])
def test_end_of_file_while_waiting_is_channel_closed(sock_type: int, no_fd_leak: None) -> None:
    a, b = Channel.pair(sock_type)
    with b:
        join = in_thread(a.close)
        with pytest.raises(ChannelClosed):
            b.recv(timeout=30)
        join()


def test_a_held_request_goes_before_the_wait(no_fd_leak: None) -> None:
    a, b = Channel.pair(write_buffer=4096)  # both ends hold: b's reply too, until b flushes

    def reply() -> None:
        b.send(b.recv(timeout=30).upper())
        b.flush()

    join = in_thread(reply)
    with a, b:
        a.send(b"ping")  # held until a reads
        assert a.recv(timeout=30) == b"PING"
        join()


@pytest.mark.parametrize(
    ("timeout", "error", "match"),
    [
        (-1, ValueError, "timeout must be >= 0 seconds, not -1"),
        (math.nan, ValueError, "timeout must be >= 0 seconds, not nan"),
        ("1", TypeError, "timeout must be a number of seconds or None, not str"),
        (True, TypeError, "timeout must be a number of seconds or None, not bool"),
    ],
)
def test_bad_timeouts_are_refused_before_anything_is_read(
    timeout: object, error: type[Exception], match: str, no_fd_leak: None
) -> None:
    a, b = Channel.pair()
    with a, b:
        a.send(b"stays")
        with pytest.raises(error, match=match):
            b.recv(timeout=timeout)  # type: ignore[arg-type]
        with pytest.raises(error, match=match):
            b.recv_into(bytearray(10), timeout=timeout)  # type: ignore[arg-type]
        assert b.recv() == b"stays"
