"""Channel(write_buffer=N): small messages held back and sent together, in order,
never held across a read, a shutdown or a close."""

from __future__ import annotations

import gc
import os
import random
import socket

import pytest
from support import in_thread

from unix_socketpair import (
    SOCK_DGRAM,
    SOCK_SEQPACKET,
    Channel,
    ChannelClosed,
    socketpair,
)


def queued(channel: Channel) -> int:
    """Bytes waiting in *channel*'s socket, read without taking them."""
    sock = socket.socket(fileno=os.dup(channel.fileno()))
    try:
        return len(sock.recv(1 << 20, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except BlockingIOError:
        return 0
    finally:
        sock.close()


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (-1, ValueError, "write_buffer must be between 0 and 67108864, not -1"),
        (64 * 1024 * 1024 + 1, ValueError, "write_buffer must be between"),
        ("4096", TypeError, "write_buffer must be an int, not str"),
        (True, TypeError, "write_buffer must be an int, not bool"),
    ],
)
def test_bad_write_buffer_is_refused(
    value: object, error: type[Exception], match: str, no_fd_leak: None
) -> None:
    with pytest.raises(error, match=match):
        Channel.pair(write_buffer=value)


@pytest.mark.parametrize("sock_type", [SOCK_SEQPACKET, SOCK_DGRAM])
@pytest.mark.parametrize("as_socket", [False, True])
def test_packet_channels_refuse_a_write_buffer_and_give_back_the_socket(
    sock_type: int, as_socket: bool, no_fd_leak: None
) -> None:
    a, b = socketpair(sock_type)
    try:
        target: socket.socket | int = socket.socket(fileno=a) if as_socket else a
        with pytest.raises(ValueError, match="write_buffer needs a SOCK_STREAM channel"):
            Channel(target, write_buffer=4096)
        os.fstat(a)  # still open: the caller still owns it
        if isinstance(target, socket.socket):
            assert target.fileno() == a
            target.detach()
    finally:
        os.close(a)
        os.close(b)


def test_small_messages_are_held_until_the_buffer_fills(no_fd_leak: None) -> None:
    a, b = Channel.pair(write_buffer=100)
    with a, b:
        assert a.write_buffer == b.write_buffer == 100  # pair() gives both the options
        for i in range(9):
            a.send(bytes([i]) * 7)  # 11 bytes framed: 99 bytes held after nine
        assert queued(b) == 0
        a.send(b"tenth")  # 108 >= 100: everything goes, in one system call
        assert queued(b) == 9 * 11 + 9
        assert [b.recv() for _ in range(10)] == [bytes([i]) * 7 for i in range(9)] + [b"tenth"]


def test_flush_and_order_with_descriptors_and_large_messages(no_fd_leak: None) -> None:
    a, b = Channel.pair(write_buffer=1 << 20)
    r, w = os.pipe()
    try:
        with a, b:
            a.send(b"one")
            a.send(bytearray(b"two"))
            a.send(memoryview(b"three"))
            assert queued(b) == 0
            a.send(b"with fd", fds=[w])  # sends what is held first
            a.send(b"four")
            a.send(b"L" * 100_000)  # larger than 16 KiB: not held, goes after "four"
            a.send(b"five")
            assert queued(b) > 0
            a.flush()
            got = []
            for _ in range(7):
                payload, fds = b.recv_with_fds()
                got.append((payload, len(fds)))
                for fd in fds:
                    assert os.fstat(fd).st_ino == os.fstat(w).st_ino
                    os.close(fd)
            assert got == [
                (b"one", 0),
                (b"two", 0),
                (b"three", 0),
                (b"with fd", 1),
                (b"four", 0),
                (b"L" * 100_000, 0),
                (b"five", 0),
            ]
            a.flush()  # nothing held: nothing to do
            assert queued(b) == 0
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.parametrize("how", ["recv", "recv_with_fds", "recv_into", "iteration"])
def test_a_read_sends_what_is_held_first(how: str, no_fd_leak: None) -> None:
    """Request and reply without flush(): the request goes before we wait."""
    a, b = Channel.pair(write_buffer=1 << 16)

    def echo() -> None:
        for message in b:
            b.send(message.upper())

    join = in_thread(echo)
    try:
        with a:
            for word in (b"ping", b"pong", b""):
                a.send(word)
                if how == "recv":
                    assert a.recv() == word.upper()
                elif how == "recv_with_fds":
                    assert a.recv_with_fds() == (word.upper(), [])
                elif how == "recv_into":
                    buffer = bytearray(16)
                    size = a.recv_into(buffer)
                    assert buffer[:size] == word.upper()
                else:
                    assert next(iter(a)) == word.upper()
            a.shutdown_write()
            join()
    finally:
        b.close()


def test_close_and_shutdown_send_what_is_held(no_fd_leak: None) -> None:
    a, b = Channel.pair(write_buffer=4096)
    with b:
        with a:
            a.send(b"before shutdown")
            a.shutdown_write()
            assert b.recv() == b"before shutdown"
            with pytest.raises(ChannelClosed):
                b.recv()
        c, d = Channel.pair(write_buffer=4096)
        with d:
            c.send(b"last words")
            c.close()
            assert d.recv() == b"last words"
            with pytest.raises(ChannelClosed):
                d.recv()


def test_a_closed_peer_is_reported_by_the_flush_and_the_held_messages_dropped(
    no_fd_leak: None,
) -> None:
    a, b = Channel.pair(write_buffer=4096)
    b.close()
    a.send(b"held")  # nothing goes yet: no error yet
    with pytest.raises(BrokenPipeError):
        a.flush()
    a.flush()  # dropped: nothing held, nothing to report
    a.send(b"again")
    with pytest.raises(BrokenPipeError):
        a.close()
    assert a.closed
    with pytest.raises(OSError, match="closed"):
        a.send(b"after close")
    with pytest.raises(OSError, match="closed"):
        a.flush()


def test_an_exception_in_the_block_is_not_replaced_by_a_failed_flush(no_fd_leak: None) -> None:
    a, b = Channel.pair(write_buffer=4096)
    b.close()
    with pytest.raises(KeyError), a:
        a.send(b"held")
        raise KeyError("the block's own error")
    assert a.closed


def test_an_unclosed_channel_says_it_dropped_held_messages(no_fd_leak: None) -> None:
    a, b = Channel.pair(write_buffer=4096)
    a.send(b"never sent")
    with pytest.warns(ResourceWarning, match="dropped 14 bytes of messages it held back"):
        del a
        gc.collect()
    with pytest.raises(ChannelClosed):
        b.recv()
    b.close()


def test_send_many_sends_what_is_held_first(no_fd_leak: None) -> None:
    a, b = Channel.pair(write_buffer=4096)
    with a, b:
        a.send(b"first")
        a.send_many([b"second", b"third"])
        a.shutdown_write()
        assert list(b) == [b"first", b"second", b"third"]


@pytest.mark.parametrize("seed", range(5))
def test_random_sequences_arrive_whole_and_in_order(seed: int, no_fd_leak: None) -> None:
    rng = random.Random(seed)
    a, b = Channel.pair(write_buffer=rng.choice([1, 64, 4096, 65536]))
    r, w = os.pipe()
    sent: list[tuple[bytes, int]] = []
    received: list[tuple[bytes, int]] = []

    def reader() -> None:
        for _ in range(400):
            payload, fds = b.recv_with_fds()
            received.append((payload, len(fds)))
            for fd in fds:
                os.close(fd)

    join = in_thread(reader)
    try:
        with a:
            for i in range(400):
                size = rng.choice([0, 1, 60, 5000, 16 * 1024, 16 * 1024 + 1, 70_000])
                payload = rng.randbytes(size)
                nfds = 1 if rng.random() < 0.05 else 0
                kind = rng.choice([bytes, bytearray, memoryview])
                a.send(kind(payload), fds=[w] * nfds)
                sent.append((payload, nfds))
                if i % 97 == 0:
                    a.flush()
            a.flush()
            join()
    finally:
        b.close()
        os.close(r)
        os.close(w)
    assert received == sent


def test_a_sender_thread_and_a_flushing_reader_thread_share_the_buffer(
    no_fd_leak: None,
) -> None:
    """The reader's flush before each read and the sender's appends never
    interleave bytes: 20,000 echoed messages come back whole and in order."""
    a, b = Channel.pair(write_buffer=512)
    count = 20_000

    def echo() -> None:
        for message in b:
            b.send(message)

    def sender() -> None:
        for i in range(count):
            a.send(i.to_bytes(4, "big") * (i % 7))
        a.flush()

    join_echo = in_thread(echo)
    join_sender = in_thread(sender)
    try:
        for i in range(count):
            assert a.recv() == i.to_bytes(4, "big") * (i % 7)
        join_sender()
        a.shutdown_write()
        join_echo()
    finally:
        a.close()
        b.close()
