"""The channel under threads, signals, partial sends, timeouts, fork, asyncio
cancellation, descriptor pressure and memory bounds: one test (or a small group)
per way the first channel core could be broken from outside.

Every blocking wait here has a deadline, every thread is a daemon joined with a
timeout, every child process is reaped: a defect makes a test fail with an
assertion that names it, never hang.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
from concurrency_support import (
    Worker,
    drain_socket,
    shut_down,
    wait_blocked,
)

from unix_socketpair import (
    SOCK_DGRAM,
    SOCK_SEQPACKET,
    SOCK_STREAM,
    Channel,
    ChannelClosed,
    Credentials,
    ProtocolError,
    spawn,
)
from unix_socketpair._ancillary import close_fds

ALL_TYPES = [SOCK_STREAM, SOCK_SEQPACKET, SOCK_DGRAM]
LINUX = sys.platform.startswith("linux")


def indexed(i: int, size: int, tag: int = 0) -> bytes:
    """Message *i* of *size* bytes (>= 5): tag, index, then a filler that depends
    on both, so a cut, shifted or merged message never passes for a whole one."""
    head = bytes([tag]) + i.to_bytes(4, "big")
    fill = bytes([(i * 7 + tag) % 251 + 1])
    return head + fill * (size - len(head))


def index_of(message: bytes, size: int | None = None, tag: int = 0) -> int:
    """The index of a message made by :func:`indexed`; fail if it is not whole."""
    assert len(message) >= 5, f"a {len(message)}-byte message cannot be a whole one"
    i = int.from_bytes(message[1:5], "big")
    expected = indexed(i, size if size is not None else len(message), message[0])
    if message != expected:
        at = next(k for k in range(len(message)) if message[k] != expected[k])
        pytest.fail(
            f"message {i} (tag {message[0]}, {len(message)} bytes) is not whole: "
            f"it differs from what was sent from byte {at} on"
        )
    return i


# == 1. threads: send and send_many are atomic per message; each message has one receiver ==

BIG = 300_000


@pytest.mark.parametrize("how", ["send+send", "send_many+send"])
def test_two_sender_threads_never_interleave_a_message(how: str, no_fd_leak: None) -> None:
    """Two threads sending 300 KB messages on one Channel: the peer reads every
    message whole (each sender's in its own order), never a length made of payload."""
    a, b = Channel.pair()
    count = 16

    def sender(tag: int, many: bool) -> None:
        messages = [indexed(i, BIG, tag) for i in range(count)]
        if many:
            for start in range(0, count, 4):
                a.send_many(messages[start : start + 4])
        else:
            for message in messages:
                a.send(message)

    senders = [
        Worker(lambda: sender(1, how.startswith("send_many")), "sender 1"),
        Worker(lambda: sender(2, False), "sender 2"),
    ]
    got: dict[int, list[int]] = {1: [], 2: []}
    try:
        for _ in range(2 * count):
            message = b.recv(timeout=20)
            tag = message[0]
            assert tag in got, f"a message starts with {tag}: bytes of two messages were mixed"
            got[tag].append(index_of(message, BIG, tag))
    finally:
        b.close()  # frees a sender stuck on the full socket after a failure
        for worker in senders:
            worker.wait(10)
        a.close()
    for worker in senders:
        worker.join(1)
    assert got == {1: list(range(count)), 2: list(range(count))}


def _receive_all(channel: Channel, how: str, out: list[bytes]) -> None:
    """Receive with *how* until end of file, appending to *out*."""
    if how == "iteration":
        for message in channel:
            out.append(message)
        return
    buffer = bytearray(64)
    while True:
        try:
            if how == "recv":
                out.append(channel.recv())
            elif how == "recv_with_fds":
                message, fds = channel.recv_with_fds()
                close_fds(fds)
                out.append(message)
            else:
                n = channel.recv_into(buffer)
                out.append(bytes(buffer[:n]))
        except ChannelClosed:
            return


@pytest.mark.parametrize(
    "hows",
    [
        ("recv", "recv"),
        ("recv_into", "recv_into"),
        ("recv_with_fds", "recv_with_fds"),
        ("iteration", "iteration"),
        ("recv", "recv_into"),
        ("iteration", "recv_with_fds"),
    ],
    ids="+".join,
)
def test_two_receiver_threads_get_each_message_exactly_once(
    hows: tuple[str, str], no_fd_leak: None
) -> None:
    """20,000 twelve-byte messages read by two threads of one Channel: together
    they receive each exactly once, none lost, none duplicated, none torn."""
    a, b = Channel.pair()
    count = 20_000
    outs: list[list[bytes]] = [[], []]

    def sender() -> None:
        for i in range(count):
            a.send(b"%012d" % i)
        a.shutdown_write()

    workers = [
        Worker(lambda: _receive_all(b, hows[0], outs[0]), f"receiver 1 ({hows[0]})"),
        Worker(lambda: _receive_all(b, hows[1], outs[1]), f"receiver 2 ({hows[1]})"),
    ]
    send = Worker(sender, "sender")
    try:
        send.join(30)
        for worker in workers:
            worker.join(30)
    finally:
        shut_down(b.fileno())
        for worker in [*workers, send]:
            worker.wait(5)
        a.close()
        b.close()
    received = outs[0] + outs[1]
    torn = [m for m in received if len(m) != 12 or not m.isdigit()]
    assert not torn, f"{len(torn)} torn messages, e.g. {torn[:3]}"
    numbers = sorted(int(m) for m in received)
    duplicated = len(numbers) - len(set(numbers))
    lost = count - len(set(numbers))
    assert (lost, duplicated) == (0, 0), f"{lost} messages lost, {duplicated} duplicated"


# == 2. one sender and one receiver thread per end never deadlock ==


@pytest.mark.parametrize("write_buffer", [0, 4096])
@pytest.mark.parametrize("size", [100, 5000])
def test_a_sender_and_a_receiver_thread_per_end_never_deadlock(
    write_buffer: int, size: int, no_fd_leak: None
) -> None:
    """Both ends of a pair each run a sender thread and a receiver thread, 2 MB each
    way: everything arrives, in order. (With a write buffer, the first core's
    receivers waited on the write lock held by their own sender, which waited for
    the other side's receiver.)"""
    a, b = Channel.pair(write_buffer=write_buffer)
    count = 2_000_000 // size

    def send_all(channel: Channel, tag: int) -> None:
        for i in range(count):
            channel.send(indexed(i, size, tag))
        channel.flush()

    def receive_all(channel: Channel, tag: int) -> None:
        for i in range(count):
            assert index_of(channel.recv(), size, tag) == i

    workers = [
        Worker(lambda: send_all(a, 1), "a's sender"),
        Worker(lambda: send_all(b, 2), "b's sender"),
        Worker(lambda: receive_all(a, 2), "a's receiver"),
        Worker(lambda: receive_all(b, 1), "b's receiver"),
    ]
    deadline = time.monotonic() + 15
    try:
        for worker in workers:
            if not worker.wait(max(deadline - time.monotonic(), 0.01)):
                stuck = [w.name for w in workers if not w.done]
                pytest.fail(f"deadlock: {', '.join(stuck)} still blocked after 15 s")
    finally:
        for channel in (a, b):
            shut_down(channel.fileno())
        for worker in workers:
            worker.wait(5)
        for channel in (a, b):
            with contextlib.suppress(OSError):  # held data cannot go after the shutdown
                channel.close()
    for worker in workers:
        worker.join(1)


# == 3. close() from another thread wakes every blocked call; send has a timeout ==

CALLS: dict[str, Callable[[Channel], Any]] = {
    "recv": lambda ch: ch.recv(),
    "recv_into": lambda ch: ch.recv_into(bytearray(1 << 16)),
    "recv_with_fds": lambda ch: ch.recv_with_fds(),
    "iteration": lambda ch: list(ch),
    "send": lambda ch: ch.send(b"s" * 4096),
}


def _fill_until_send_blocks(a: Channel, b: Channel) -> None:
    """Queue data from *a* to *b* until one more send would block."""
    raw = socket.socket(fileno=os.dup(a.fileno()))
    try:
        if a.type == SOCK_STREAM:
            frame = (4096).to_bytes(4, "big") + b"f" * 4096
            while True:
                try:
                    raw.send(frame, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    return
        while True:
            try:
                raw.send(b"f" * 4096, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
    finally:
        raw.close()


@pytest.mark.parametrize("sock_type", ALL_TYPES, ids=["stream", "seqpacket", "dgram"])
@pytest.mark.parametrize("call", list(CALLS))
def test_close_from_another_thread_wakes_a_blocked_call(
    call: str, sock_type: int, no_fd_leak: None
) -> None:
    """A thread blocked in *call* raises ChannelClosed soon after another thread
    calls close() (contract: within 100 ms; asserted: within 2 s, for a loaded
    machine). Iteration may instead simply stop. A call started after close()
    raises OSError(EBADF)."""
    a, b = Channel.pair(sock_type)
    try:
        if call == "send":
            _fill_until_send_blocks(a, b)
        worker = Worker(lambda: CALLS[call](a), f"{call} on {a!r}")
        wait_blocked(worker)
        closed_at = time.monotonic()
        a.close()
        if not worker.wait(2.0):
            # Free the thread before failing (the peer sends, or drains).
            if call == "send":
                drain_socket(b.fileno(), 2)
            else:
                b.send(b"unstick")
                b.close()
            worker.wait(5)
            pytest.fail(f"close() did not wake a thread blocked in {call}() within 2 s")
        assert worker.finished_at is not None
        took = worker.finished_at - closed_at
        if call == "iteration" and worker.error is None:
            assert worker.result == []
        else:
            assert isinstance(worker.error, ChannelClosed), (
                f"{call}() woken by close() raised {worker.error!r}, not ChannelClosed"
            )
        assert took < 2.0
        with pytest.raises(OSError) as info:
            CALLS[call](a)
        assert info.value.errno == 9  # EBADF
    finally:
        a.close()
        b.close()


def _send_until_timeout(a: Channel, how: str, size: int, sent: list[int]) -> int:
    """Send indexed messages with a 0.2 s timeout until one times out; return its index."""
    for i in range(100_000):
        message = indexed(i, size)
        try:
            if how == "send":
                a.send(message, timeout=0.2)  # type: ignore[call-arg]
            else:
                a.send_many([message], timeout=0.2)  # type: ignore[call-arg]
        except TimeoutError:
            return i
        sent.append(i)
    pytest.fail("100,000 sends to a peer that does not read never timed out")


def check_received_prefix(
    received: list[bytes], sent: list[int], maybe: set[int], size: int, ending: BaseException | None
) -> None:
    """The invariant after an interrupted or timed-out send: the peer saw whole
    messages only, in order, none twice; every message whose send returned;
    others (*maybe*) at most once."""
    indices = [index_of(m, size) for m in received]
    assert indices == sorted(set(indices)), f"out of order or duplicated: {indices[:20]}..."
    missing = set(sent) - set(indices)
    assert not missing, f"messages whose send() returned never arrived: {sorted(missing)[:10]}"
    extra = set(indices) - set(sent) - maybe
    assert not extra, f"messages nobody sent arrived: {sorted(extra)}"
    assert ending is None or isinstance(ending, (ChannelClosed, ProtocolError)), ending


def _reader(channel: Channel, out: list[bytes]) -> BaseException | None:
    """Receive until end of file; return ChannelClosed or the error that ended it."""
    while True:
        try:
            out.append(channel.recv(timeout=20))
        except (ChannelClosed, ProtocolError) as exc:
            return exc


@pytest.mark.parametrize("how", ["send", "send_many"])
@pytest.mark.parametrize("size", [100, 300_000])
def test_send_timeout_never_corrupts_the_stream(how: str, size: int, no_fd_leak: None) -> None:
    """send()/send_many() with timeout= raise TimeoutError when the peer does not
    read. Afterwards the peer only ever sees whole messages, in order, none twice:
    the timed-out one at most once; later sends either complete (the started
    frame goes first) or are refused with a clear exception."""
    a, b = Channel.pair()
    sent: list[int] = []
    received: list[bytes] = []
    refused: BaseException | None = None
    try:
        timed_out = {_send_until_timeout(a, how, size, sent)}
        reader = Worker(lambda: _reader(b, received), "reader")
        for i in range(max(timed_out) + 1, max(timed_out) + 6):
            try:
                a.send(indexed(i, size), timeout=20)  # type: ignore[call-arg]
            except TimeoutError:
                timed_out.add(i)
            except Exception as exc:  # the channel refuses further sends: allowed
                refused = exc
                break
            else:
                sent.append(i)
        a.close()
        ending = reader.join(30)
    finally:
        a.close()
        b.close()
    if refused is None:
        assert isinstance(ending, ChannelClosed), f"the stream ended with {ending!r}"
    check_received_prefix(received, sent, timed_out, size, ending)


# == 6. recv(timeout) bounds the flush of held data; huge timeouts mean "wait" ==


def test_recv_timeout_bounds_the_flush_of_held_data(no_fd_leak: None) -> None:
    """recv(timeout=0.5) while the write buffer holds 2 MB the peer does not read
    raises TimeoutError in about 0.5 s (asserted: within 3 s), not once the flush
    is done; the held messages are still delivered afterwards, in order."""
    a, b = Channel.pair(write_buffer=8 << 20)
    count = 2000
    try:
        for i in range(count):
            a.send(indexed(i, 1000))
        worker = Worker(lambda: a.recv(timeout=0.5), "recv(timeout=0.5)")
        returned = worker.wait(3.0)
        received: list[bytes] = []
        reader = Worker(lambda: _reader(b, received), "reader")
        if not returned:
            worker.wait(10)
            pytest.fail("recv(timeout=0.5) had not returned after 3 s (it waited for the flush)")
        assert isinstance(worker.error, TimeoutError), worker.error
        a.flush()
        a.shutdown_write()
        assert isinstance(reader.join(20), ChannelClosed)
        assert [index_of(m, 1000) for m in received] == list(range(count))
    finally:
        shut_down(b.fileno())
        a.close()
        b.close()


@pytest.mark.parametrize("timeout", [math.inf, 3e6], ids=["inf", "3e6"])
@pytest.mark.parametrize("how", ["recv", "recv_with_fds", "recv_into", "send"])
@pytest.mark.parametrize("sock_type", [SOCK_STREAM, SOCK_DGRAM], ids=["stream", "dgram"])
def test_huge_timeouts_mean_wait(
    how: str, timeout: float, sock_type: int, no_fd_leak: None
) -> None:
    """timeout=math.inf and timeout=3e6 wait like None: the call blocks, then
    completes when the data arrives (or is read), with no OverflowError."""
    a, b = Channel.pair(sock_type)
    try:
        if how == "send":
            _fill_until_send_blocks(a, b)
            worker = Worker(lambda: a.send(b"last", timeout=timeout), how)  # type: ignore[call-arg]
            wait_blocked(worker)
            drained = Worker(lambda: drain_socket(b.fileno(), 3), "drain")
            worker.join(10)
            drained.join(10)
            return
        calls: dict[str, Callable[[], bytes]] = {
            "recv": lambda: a.recv(timeout=timeout),
            "recv_with_fds": lambda: a.recv_with_fds(timeout=timeout)[0],
            "recv_into": lambda: (buf := bytearray(16))[: a.recv_into(buf, timeout=timeout)],
        }
        worker = Worker(calls[how], how)
        wait_blocked(worker)
        b.send(b"arrives")
        assert bytes(worker.join(10)) == b"arrives"
    finally:
        shut_down(a.fileno())
        a.close()
        b.close()


# == 14-17. credentials after EOF, bad fd numbers, fds= objects, from_env ==

SEND_THEN_EXIT = """
import os
from unix_socketpair import Channel
channel = Channel.from_env()
channel.send(str(os.getpid()).encode())
channel.close()
"""

SEND_BAD_FRAME_THEN_EXIT = """
import os, socket
fd = int(os.environ["SOCKETPAIR_FD"])
sock = socket.socket(fileno=fd)
sock.sendall({frame!r})
sock.close()
"""

ENDINGS = {
    "eof": SEND_THEN_EXIT,
    # a declared length over max_message_size
    "too-long": SEND_BAD_FRAME_THEN_EXIT.format(frame=b"\xff\xff\xff\xffgarbage"),
    # end of file inside a message
    "cut-short": SEND_BAD_FRAME_THEN_EXIT.format(frame=b"\x00\x00\x00\x64abc"),
}


@pytest.mark.skipif(not LINUX, reason="per-message credentials are Linux's")
@pytest.mark.parametrize("ending", list(ENDINGS))
def test_credentials_after_the_end_still_name_the_peer(ending: str, no_fd_leak: None) -> None:
    """After end of file (or a ProtocolError), peer_credentials() names the child
    that sent last, not this process (the pair's creator)."""
    with spawn([sys.executable, "-c", ENDINGS[ending]]) as child:
        channel = child.channel
        assert child.wait(timeout=30) == 0
        if ending == "eof":
            assert int(channel.recv(timeout=10)) == child.pid
            with pytest.raises(ChannelClosed):
                channel.recv(timeout=10)
        else:
            with pytest.raises(ProtocolError):
                channel.recv(timeout=10)
        assert channel.peer_credentials() == Credentials(child.pid, os.getuid(), os.getgid())
        channel.close()


@pytest.mark.parametrize("sock_type", ALL_TYPES, ids=["stream", "seqpacket", "dgram"])
def test_a_bad_fd_number_is_ebadf_naming_it_and_the_channel_still_works(
    sock_type: int, no_fd_leak: None
) -> None:
    a, b = Channel.pair(sock_type)
    with a, b:
        with pytest.raises(OSError) as info:
            a.send(b"x", fds=[99999])
        assert info.value.errno == 9  # EBADF
        assert "99999" in str(info.value), f"the error does not name the fd: {info.value}"
        assert "closed" not in str(info.value), f"the channel is not closed: {info.value}"
        a.send(b"still fine")
        assert b.recv(timeout=10) == b"still fine"


@pytest.mark.parametrize("sock_type", ALL_TYPES, ids=["stream", "seqpacket", "dgram"])
def test_fds_accepts_objects_with_fileno(sock_type: int, no_fd_leak: None, tmp_path: Any) -> None:
    """send(fds=[...]) takes sockets and files as spawn(fd_map=) does; they stay
    the caller's, the peer gets duplicates of the same open files."""
    a, b = Channel.pair(sock_type)
    spare = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b, spare, open(tmp_path / "f", "wb") as file:
        a.send(b"objects", fds=[spare, file])  # type: ignore[list-item]
        message, fds = b.recv_with_fds(timeout=10)
        try:
            assert message == b"objects"
            assert [os.fstat(fd).st_ino for fd in fds] == [
                os.fstat(spare.fileno()).st_ino,
                os.fstat(file.fileno()).st_ino,
            ]
        finally:
            close_fds(fds)
        assert spare.fileno() >= 0 and not file.closed


@pytest.mark.parametrize("cls_name", ["Channel", "AsyncChannel"])
def test_from_env_removes_the_variable(
    cls_name: str, monkeypatch: pytest.MonkeyPatch, no_fd_leak: None
) -> None:
    """Channel.from_env() deletes SOCKETPAIR_FD from os.environ, so that a
    grandchild does not inherit a number that means nothing to it."""
    import unix_socketpair

    cls = getattr(unix_socketpair, cls_name)
    mine, other = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    other.close()
    monkeypatch.setenv("SOCKETPAIR_FD", str(mine.fileno()))
    channel = cls.from_env()
    try:
        mine.detach()  # the channel owns it now
        assert "SOCKETPAIR_FD" not in os.environ
    finally:
        channel.close()
