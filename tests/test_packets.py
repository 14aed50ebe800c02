"""The packet decoder on its own (sans-IO): raw ``recvmsg_into`` results in, messages out,
with the receive direction's state named at every step."""

from __future__ import annotations

import array
import os
import socket

import pytest
from support import is_open

from unix_socketpair import ChannelClosed, FdsTruncated, ProtocolError, TooManyFds
from unix_socketpair._codec import NEED_DATA, ReceiveState, StreamDecoder
from unix_socketpair._packets import PacketDecoder

CREDS = (socket.SOL_SOCKET, socket.SCM_CREDENTIALS, b"\0" * 12)


def feed(dec: PacketDecoder, data: bytes, fds: list[int] = (), flags: int = 0) -> None:  # type: ignore[assignment]
    """What a read of one packet carrying *data* (and *fds*) appends, then its commit."""
    dec.get_buffer()[: len(data)] = data
    anc = [CREDS]
    if fds:
        anc.append((socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes()))
    dec.inbox.append((len(data), anc, flags, None))
    dec.commit_read()


def eof(dec: PacketDecoder) -> None:
    dec.inbox.append((0, [], 0, None))
    dec.commit_read()


def test_messages_come_in_order_and_the_state_is_named_at_each_step() -> None:
    dec = PacketDecoder(1024, 4, passcred=True, dgram=False)
    assert dec.state is ReceiveState.OPEN and dec.next_message() is NEED_DATA
    feed(dec, b"one")
    feed(dec, b"")  # an empty message: it carries credentials, so it is not the end
    eof(dec)
    assert dec.state is ReceiveState.AT_EOF and dec.at_eof
    assert dec.take_ready(10) == [b"one", b""]
    with pytest.raises(ChannelClosed):
        dec.next_message()
    dec.close()
    assert dec.state is ReceiveState.CLOSED
    with pytest.raises(OSError, match="closed"):
        dec.next_message()


def test_a_failure_is_raised_in_its_place_and_breaks_the_decoder(no_fd_leak: None) -> None:
    dec = PacketDecoder(1024, 1, passcred=True, dgram=False)
    r, w = os.pipe()  # "received": the decoder owns them
    try:
        feed(dec, b"before")
        feed(dec, b"too many", [r, w])
        assert dec.state is ReceiveState.BROKEN  # no more input is wanted
        assert not is_open(r) and not is_open(w)  # closed on arrival
        out: list[bytes] = []
        dec.take_more(out, 10)
        assert out == [b"before"]  # take_more stops before the failure
        with pytest.raises(TooManyFds) as info:
            dec.next_message()
        assert (info.value.count, info.value.limit) == (2, 1)
        with pytest.raises(ProtocolError, match="unusable"):
            dec.next_message()
    finally:
        dec.close()


def test_truncated_descriptors_cost_one_message_and_keep_the_decoder_open(
    no_fd_leak: None,
) -> None:
    dec = PacketDecoder(1024, 4, passcred=True, dgram=True)
    r, w = os.pipe()
    os.close(w)
    feed(dec, b"cut", [r], flags=socket.MSG_CTRUNC)
    feed(dec, b"after")
    assert not is_open(r)
    with pytest.raises(FdsTruncated):
        dec.next_message()
    assert dec.state is ReceiveState.OPEN
    assert dec.next_message() == b"after"
    dec.close()


def test_put_back_makes_taken_messages_the_next_ones_again() -> None:
    dec = PacketDecoder(1024, 4, passcred=True, dgram=False)
    for data in (b"a", b"b", b"c"):
        feed(dec, data)
    taken = dec.take_ready(2)
    assert taken == [b"a", b"b"] and dec.handed == [b"a", b"b"]
    dec.put_back(taken)
    assert taken == [] and dec.handed == []
    assert dec.take_ready(10) == [b"a", b"b", b"c"]
    dec.close()


def test_a_packet_larger_than_the_callers_buffer_stays_queued_whole() -> None:
    dec = PacketDecoder(1024, 4, passcred=True, dgram=False)
    target = memoryview(bytearray(4))
    assert dec.into(target) is NEED_DATA
    assert dec.begin_direct(target)
    first, rest = dec.read_buffers()
    assert first.obj is target.obj  # the caller's buffer is read into first
    first[:4] = b"0123"
    rest[:2] = b"45"
    dec.inbox.append((6, [CREDS], 0, None))
    dec.commit_read()
    with pytest.raises(ValueError, match="6 bytes"):
        dec.into(target)
    assert dec.next_message() == b"012345"
    dec.close()


def test_both_decoders_name_the_same_states() -> None:
    stream = StreamDecoder()
    assert stream.state is ReceiveState.OPEN
    stream.receive_data(b"\0\0\0\1x")
    stream.receive_data(b"")
    assert stream.state is ReceiveState.AT_EOF
    assert stream.next_message() == b"x"
    with pytest.raises(ChannelClosed):
        stream.next_message()
    broken = StreamDecoder(max_message_size=1)
    with pytest.raises(ProtocolError):
        broken.receive_data(b"\0\0\0\2xy")
        broken.next_message()
    assert broken.state is ReceiveState.BROKEN
    broken.close()
    assert broken.state is ReceiveState.CLOSED


def _decoder(kind: str) -> StreamDecoder | PacketDecoder:
    if kind == "stream":
        return StreamDecoder(1024, 4)
    return PacketDecoder(1024, 4, passcred=True, dgram=False)


@pytest.mark.parametrize("kind", ["stream", "packet"])
def test_close_closes_the_descriptors_of_a_read_not_yet_accounted_for(kind: str) -> None:
    # A read's raw result is recorded before it is accounted for (an exception
    # from a signal handler may come between): the decoder owns its descriptors.
    dec = _decoder(kind)
    r, w = os.pipe()
    dec.get_buffer()[:1] = b"x"
    anc = [CREDS, (socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [r, w]).tobytes())]
    dec.inbox.append((1, anc, 0, None))
    dec.close()
    assert not is_open(r) and not is_open(w)
    assert dec.inbox == [] and dec.state is ReceiveState.CLOSED


def test_close_closes_the_descriptors_of_a_message_read_into_a_buffer_not_yet_delivered() -> None:
    # A direct read completed the message (its descriptors are recorded for
    # into() to deliver), then the channel closed before into() ran.
    size = 70_000  # large enough to be read straight into the caller's buffer
    dec = StreamDecoder(1 << 20, 4)
    r, w = os.pipe()
    dec.get_buffer()[:5] = size.to_bytes(4, "big") + b"h"
    anc = [CREDS, (socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [r, w]).tobytes())]
    dec.inbox.append((5, anc, 0, None))
    dec.commit_read()
    target = memoryview(bytearray(size))
    assert dec.into(target) is NEED_DATA
    assert dec.begin_direct(target)
    (buf,) = dec.read_buffers()
    assert len(buf) == size - 1
    dec.inbox.append((size - 1, [CREDS], 0, None))
    dec.commit_read()
    assert is_open(r)  # recorded for into() to deliver
    dec.close()
    assert not is_open(r) and not is_open(w)
