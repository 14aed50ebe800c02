"""The blocking Channel over real socketpairs and real child processes."""

from __future__ import annotations

import os

import pytest

from unix_socketpair import SOCK_DGRAM, SOCK_SEQPACKET, SOCK_STREAM, Channel, ChannelClosed

ALL_TYPES = [SOCK_STREAM, SOCK_SEQPACKET, SOCK_DGRAM]


@pytest.mark.parametrize("sock_type", ALL_TYPES)
def test_round_trip_small_and_empty(sock_type: int, no_fd_leak: None) -> None:
    a, b = Channel.pair(sock_type)
    with a, b:
        for message in (b"hello", b"", bytearray(b"ba"), memoryview(b"mv")):
            a.send(message)
            assert b.recv() == bytes(message)
        b.send(b"back")
        assert a.recv() == b"back"


def test_fds_travel_with_their_message(no_fd_leak: None) -> None:
    a, b = Channel.pair()
    r, w = os.pipe()
    try:
        with a, b:
            a.send(b"before")
            a.send(b"with", fds=[r, w])
            a.send(b"after")
            assert b.recv_with_fds() == (b"before", [])
            payload, fds = b.recv_with_fds()
            assert payload == b"with" and len(fds) == 2
            for fd in fds:
                assert not os.get_inheritable(fd)
                os.close(fd)
            assert b.recv_with_fds() == (b"after", [])
    finally:
        os.close(r)
        os.close(w)


def test_iteration_ends_at_clean_eof(no_fd_leak: None) -> None:
    a, b = Channel.pair()
    with b:
        with a:
            a.send_many([b"%d" % i for i in range(1000)])
        assert list(b) == [b"%d" % i for i in range(1000)]
        with pytest.raises(ChannelClosed):
            b.recv()
