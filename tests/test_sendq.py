"""SendQueue, the sans-IO send direction: its decisions checked directly (no
socket), a hypothesis state machine that drives it as a channel would against
a model of the byte stream, and the behaviour it gives both channel classes."""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

from unix_socketpair import (
    SOCK_DGRAM,
    SOCK_SEQPACKET,
    SOCK_STREAM,
    AsyncChannel,
    Channel,
    ChannelClosed,
    ProtocolError,
)
from unix_socketpair._sendq import (
    BROKEN,
    CLOSED,
    OPEN,
    SHUT,
    SHUTTING,
    SendQueue,
    advance,
)

Run = Callable[[Coroutine[Any, Any, None]], None]


def frame(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def joined(bufs: list[Any] | None) -> bytes:
    return b"".join(bytes(b) for b in bufs or [])


# -- decisions, one at a time ---------------------------------------------------------


def test_the_fast_path_of_a_plain_channel_closes_while_anything_is_held_or_in_flight() -> None:
    q = SendQueue(100)
    assert q.state is OPEN and q.fast == 100
    sent = q.start([b"abcdef"])
    assert q.fast == -1  # before the first system call
    sent.append(2)
    assert joined(q.remaining()) == b"cdef" and q.fast == -1
    q.cut()  # interrupted: the rest is held, and goes first
    assert bytes(q.held) == b"cdef" and q.frame is None and q.fast == -1
    q.wrote.append(4)
    assert q.written() == 0
    assert q.fast == -1  # opening it is refresh()'s job alone (the owner's lock)
    q.refresh()
    assert q.fast == 100


def test_a_packet_queue_never_has_a_fast_path() -> None:
    q = SendQueue(-1)
    q.refresh()
    assert q.fast == -1


def test_a_write_buffer_closes_the_fast_path_and_holds_small_frames_only() -> None:
    q = SendQueue(16)
    assert q.hold == 0
    q.buffer(64)
    assert q.fast == -1
    assert q.hold == len(frame(b"x" * 16)) and q.high == 64 and q.low == 0
    q = SendQueue(-1)
    q.buffer(64)
    assert q.hold == 0  # packets: nothing is held


def test_write_behind_keeps_its_fast_path_while_bytes_are_held_but_not_behind_a_direct_send() -> (
    None
):
    q = SendQueue(16, behind=True)
    q.buffer(256, 64)
    q.held += b"held"
    q.refresh()
    assert q.fast == 16  # the fast path appends to what is held
    q.enter_direct()
    assert q.fast == -1  # order: small ones wait behind a direct send
    q.enter_direct()
    q.leave_direct()
    assert q.fast == -1
    q.leave_direct()
    assert q.fast == 16


def test_shutdown_refuses_sends_but_not_drains() -> None:
    q = SendQueue(16)
    q.shut()
    assert q.state is SHUT and q.fast == -1
    with pytest.raises(BrokenPipeError, match="shutdown_write"):
        q.check()
    q.check(sending=False)  # a drain is fine
    q.refresh()
    assert q.fast == -1


def test_a_deferred_shutdown_is_due_once_the_held_bytes_are_written() -> None:
    q = SendQueue(16, behind=True)
    q.held += b"12345"
    q.shutting()
    assert q.state is SHUTTING and q.fast == -1 and not q.shut_due()
    with pytest.raises(BrokenPipeError):
        q.check()
    q.wrote.append(5)
    q.written()
    assert q.shut_due()
    q.shut()
    assert q.state is SHUT and not q.shut_due()
    q = SendQueue(16, behind=True)
    q.enter_direct()  # a message on its way out directly
    q.shutting()
    assert not q.shut_due()
    q.leave_direct()
    assert q.shut_due() and q.fast == -1


def test_a_failed_background_write_is_sticky_and_drops_what_is_held() -> None:
    q = SendQueue(16, behind=True)
    q.held += b"never arrives"
    q.wrote.append(3)
    q.fail(BrokenPipeError(errno.EPIPE, "Broken pipe"))
    assert q.state is BROKEN and not q.held and not q.wrote and q.fast == -1
    for sending in (True, False):
        for _ in range(2):  # every later call, each with its own exception
            with pytest.raises(BrokenPipeError) as info:
                q.check(sending)
            assert info.value.errno == errno.EPIPE
    q.fail(ConnectionResetError(errno.ECONNRESET, "reset"))  # the first failure wins
    assert q.error is not None and q.error.errno == errno.EPIPE
    q.refresh()
    assert q.fast == -1


def test_a_frame_that_failed_part_way_breaks_the_queue() -> None:
    q = SendQueue(16)
    q.start([b"abcdef"]).append(3)
    q.abandon("a send failed part way through a message")
    assert q.state is BROKEN and q.frame is None and q.fast == -1
    with pytest.raises(ProtocolError, match="cannot send any more: a send failed part way"):
        q.check()
    q.check(sending=False)  # nothing to raise to a drain: no byte was lost by it
    assert q.error is None


def test_a_frame_that_failed_before_any_byte_went_breaks_nothing() -> None:
    q = SendQueue(16)
    q.start([b"abcdef"])
    q.abandon("failed")
    assert q.state is OPEN and q.fast == 16
    q.start([b"def"], before=3)  # the rest of one the fast path started
    q.abandon("failed")
    assert q.state is BROKEN


def test_abandon_without_a_reason_only_forgets_the_frame() -> None:
    q = SendQueue(16)
    q.start([b"abcdef"]).append(3)
    q.abandon(None)
    assert q.state is OPEN and q.frame is None and q.fast == 16


def test_an_empty_frame_is_done_once_its_call_returned() -> None:
    q = SendQueue(-1)
    q.start([b""])
    assert q.remaining() == [b""]  # a wait before its call: still to send, as it was
    q.sent.append(0)
    assert q.remaining() is None and q.frame is None


def test_detach_copies_the_rest_and_keeps_counting_from_there() -> None:
    q = SendQueue(16, behind=True)
    caller = bytearray(b"abcdefgh")
    q.start([memoryview(caller)[:4], memoryview(caller)[4:]]).append(3)
    q.detach()
    caller[:] = b"XXXXXXXX"  # the caller may reuse its buffer now
    assert joined(q.remaining()) == b"defgh"
    q.sent.append(5)
    assert q.remaining() is None
    q.start([b"xy"])
    q.detach()  # before any byte went
    assert joined(q.remaining()) == b"xy"
    q.abandon("cut")
    assert q.state is OPEN  # nothing of it went


def test_close_is_final_and_refuses_with_ebadf() -> None:
    q = SendQueue(16)
    q.held += b"queued"
    q.close()
    assert q.state is CLOSED and q.fast == -1 and q.held == b"queued"  # the owner drops it
    assert q.drop() == 6 and not q.held
    for change in (q.refresh, q.shut, q.shutting, lambda: q.fail(OSError(errno.EPIPE, "x"))):
        change()
        assert q.state is CLOSED and q.fast == -1
    with pytest.raises(OSError) as info:
        q.check()
    assert info.value.errno == errno.EBADF
    q = SendQueue(16, behind=True)
    q.fail(BrokenPipeError(errno.EPIPE, "Broken pipe"))
    q.close()  # closed is final, whatever broke it before
    with pytest.raises(OSError) as info:
        q.check()
    assert info.value.errno == errno.EBADF
    q.check(sending=False)


def test_fork_drops_what_the_parent_held_or_was_sending() -> None:
    q = SendQueue(16)
    q.held += b"parent's"
    q.wrote.append(2)
    q.start([b"frame"]).append(1)
    q.forked()
    assert not q.held and not q.wrote and q.frame is None and not q.sent and q.fast == 16
    q.shut()
    q.forked()  # the socket is shared: still shut
    assert q.state is SHUT and q.fast == -1


def test_written_applies_every_recorded_count_exactly_once() -> None:
    q = SendQueue(16)
    q.held += b"abcdefghij"
    q.wrote.extend([2, 3])  # two writes whose counts were not applied yet
    assert q.written() == 5 and bytes(q.held) == b"fghij"
    assert q.written() == 5


@given(st.lists(st.binary(max_size=5), max_size=5), st.integers(min_value=0, max_value=30))
def test_advance_drops_exactly_the_first_bytes(parts: list[bytes], n: int) -> None:
    assert joined(advance(list(parts), n)) == b"".join(parts)[n:]


# -- the queue driven as a channel drives it, against a model of the stream -----------------


class QueueMachine(RuleBasedStateMachine):
    """Messages go to a modelled socket through a SendQueue, as the channels
    send them: by the fast path when it is open, held, or as a frame whose
    system calls take some bytes at a time, with interruptions (a count
    recorded and applied later; a frame cut or abandoned part way). Whatever
    happens, the socket's bytes, then the held bytes, then the rest of the
    frame in flight are exactly the frames accepted, in order: nothing lost,
    duplicated or reordered, until the queue is BROKEN."""

    def __init__(self) -> None:
        super().__init__()
        self.q: SendQueue | None = None
        self.wire = b""  # what the socket took
        self.accepted = b""  # every frame a send accepted, in order
        self.lost = False  # a frame was abandoned part way: the stream is cut

    @rule(behind=st.booleans(), high=st.sampled_from([0, 0, 32]))
    @precondition(lambda self: self.q is None)
    def make(self, behind: bool, high: int) -> None:
        self.q = SendQueue(8, behind=behind)
        if behind:
            self.q.buffer(64, 16)
        elif high:
            self.q.buffer(high)

    def _queue(self) -> SendQueue:
        assert self.q is not None
        return self.q

    @rule(data=st.binary(max_size=12))
    @precondition(lambda self: self.q is not None)
    def send_small(self, data: bytes) -> None:
        q = self._queue()
        f = frame(data)
        if len(data) <= q.fast:
            self.accepted += f
            if q.held:  # write-behind appends
                q.held += f
            else:
                self.wire += f
            return
        if q.state is not OPEN:
            with pytest.raises(OSError if q.state is not BROKEN or q.error else ProtocolError):
                q.check()
            return
        if q.frame is not None:
            self.interrupt()  # a cut frame's rest goes first (Channel: _repair_partial)
        if len(f) <= q.hold:
            q.held += f
            self.accepted += f
            return
        if q.held:
            return  # a channel writes what is held first: see write_held
        q.start([f[:2], f[2:]])
        self.accepted += f

    @rule(n=st.integers(min_value=0, max_value=10), apply=st.booleans())
    @precondition(lambda self: self.q is not None and self.q.held and not self.q.wrote)
    def write_held(self, n: int, apply: bool) -> None:
        q = self._queue()
        n = min(n, len(q.held))
        self.wire += bytes(q.held[:n])
        q.wrote.append(n)  # recorded "from C"
        if apply:  # else an exception came first: the next step applies it
            q.written()

    @rule()
    @precondition(lambda self: self.q is not None and self.q.wrote)
    def apply_writes(self) -> None:
        self._queue().written()

    @rule(n=st.integers(min_value=0, max_value=10))
    @precondition(lambda self: self.q is not None and self.q.frame is not None and not self.q.wrote)
    def send_part(self, n: int) -> None:
        q = self._queue()
        rest = joined(q.remaining())
        n = min(n, len(rest))
        self.wire += rest[:n]
        q.sent.append(n)
        q.remaining()

    @rule()
    @precondition(lambda self: self.q is not None and self.q.frame is not None)
    def interrupt(self) -> None:
        q = self._queue()
        went = q.went()
        rest = joined(q.remaining())
        q.cut()
        if not went:
            # Nothing of it went: it was not sent (the caller sees an error).
            self.accepted = self.accepted[: len(self.accepted) - len(rest)]

    @rule()
    @precondition(lambda self: self.q is not None and self.q.frame is not None)
    def detach(self) -> None:
        self._queue().detach()

    @rule()
    @precondition(lambda self: self.q is not None and self.q.frame is not None)
    def fail_part_way(self) -> None:
        q = self._queue()
        went = q.went()
        rest = joined(q.remaining())
        q.abandon("failed")
        self.accepted = self.accepted[: len(self.accepted) - len(rest)]
        if went:
            self.lost = True
            assert q.state is BROKEN

    @rule()
    @precondition(lambda self: self.q is not None and self.q.frame is None)
    def refresh(self) -> None:
        self._queue().refresh()

    @rule()
    @precondition(lambda self: self.q is not None and self.q.frame is None)
    def shutdown(self) -> None:
        q = self._queue()
        if q.held:
            q.shutting()
        else:
            q.shut()

    @invariant()
    def stream_is_exactly_what_was_accepted(self) -> None:
        q = self.q
        if q is None or self.lost:
            return
        q_rest = joined(q.remaining()) if q.frame is not None else b""
        pending = sum(q.wrote)
        assert self.wire + bytes(q.held[pending:]) + q_rest == self.accepted

    @invariant()
    def fast_path_only_when_safe(self) -> None:
        q = self.q
        if q is None or q.fast < 0:
            return
        assert q.state is OPEN and q.frame is None and not q.jobs
        assert q._behind or not (q.high or q.held)


QueueMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
TestQueueMachine = QueueMachine.TestCase


# -- what both channel classes get from it ------------------------------------------------


@pytest.mark.parametrize(
    ("sock_type", "write_buffer"),
    [(SOCK_STREAM, 0), (SOCK_STREAM, 4096), (SOCK_SEQPACKET, 0), (SOCK_DGRAM, 0)],
)
def test_every_send_after_shutdown_write_raises_broken_pipe(
    sock_type: int, write_buffer: int, no_fd_leak: None
) -> None:
    a, b = Channel.pair(sock_type, write_buffer=write_buffer)
    with a, b:
        a.send(b"before")
        a.shutdown_write()
        with pytest.raises(BrokenPipeError):
            a.send(b"after")  # was held and dropped later with a write buffer
        with pytest.raises(BrokenPipeError):
            a.send_many([b"after", b"again"])
        with pytest.raises(BrokenPipeError):
            a.send(b"with fds", fds=[b.fileno()])
        assert b.recv() == b"before"
        if sock_type != SOCK_DGRAM:
            with pytest.raises(ChannelClosed):
                b.recv(timeout=5)


@pytest.mark.parametrize("sock_type", [SOCK_STREAM, SOCK_SEQPACKET])
def test_async_sends_after_shutdown_write_raise_broken_pipe(
    sock_type: int, run: Run, no_fd_leak: None
) -> None:
    async def main() -> None:
        a, b = AsyncChannel.pair(sock_type)
        async with a, b:
            await a.send(b"before")
            a.shutdown_write()
            for call in (
                lambda: a.send(b"after"),
                lambda: a.send(b"x" * 100_000),
                lambda: a.send_many([b"after", b"again"]),
            ):
                with pytest.raises(BrokenPipeError):
                    await call()
            assert await b.recv() == b"before"
            with pytest.raises(ChannelClosed):
                await b.recv()

    run(main())


def test_a_dropped_async_send_error_is_sticky_on_the_queue(run: Run, no_fd_leak: None) -> None:
    async def main() -> None:
        a, b = AsyncChannel.pair()
        try:
            await a.send(b"first")  # straight out; the next ones are written behind
            await a.send(b"behind")
            b.close()
            await asyncio.sleep(0)  # the loop writes: the peer has gone
            for _ in range(2):
                with pytest.raises(BrokenPipeError):
                    await a.send(b"later")
            with pytest.raises(BrokenPipeError):
                await a.drain()
            assert a._sendq.state is BROKEN and not a._sendq.held
        finally:
            a.close()

    run(main())


@pytest.mark.parametrize("sock_type", [SOCK_SEQPACKET, SOCK_DGRAM])
def test_an_async_empty_packet_that_waits_for_room_is_still_sent(
    sock_type: int, run: Run, no_fd_leak: None
) -> None:
    async def main() -> None:
        a, b = AsyncChannel.pair(sock_type)
        async with a, b:
            filled = 0
            while True:  # fill the socket: the next send has to wait
                try:
                    a._sock.send(b"")
                except BlockingIOError:
                    break
                filled += 1
            sending = asyncio.ensure_future(a.send(b"", fds=[b.fileno()]))
            for _ in range(5):
                await asyncio.sleep(0)
            assert not sending.done()  # waiting for room
            for _ in range(filled):
                assert await b.recv() == b""
            await sending
            payload, fds = await b.recv_with_fds()
            for fd in fds:
                os.close(fd)
            assert payload == b"" and len(fds) == 1

    run(main())


def test_a_cancelled_async_send_copies_the_rest_so_the_caller_may_reuse_its_buffer(
    run: Run, no_fd_leak: None
) -> None:
    """Cancelled part way through a large message (in flight) and before another
    (not started): both arrive whole, as they were when sent, although the
    caller overwrote its buffers at once."""

    async def main() -> None:
        a, b = AsyncChannel.pair()
        async with a, b:
            first = bytearray(b"a" * (4 << 20))
            second = bytearray(b"b" * (1 << 20))
            sending = asyncio.ensure_future(a.send_many([first, second]))
            while not a._sendq.went():  # part of the first one went; the socket is full
                await asyncio.sleep(0)
            sending.cancel()
            with pytest.raises(asyncio.CancelledError):
                await sending
            first[:] = b"X" * len(first)
            second[:] = b"Y" * len(second)
            assert await b.recv() == b"a" * (4 << 20)
            assert await b.recv() == b"b" * (1 << 20)
            await a.send(b"after")
            assert await b.recv() == b"after"

    run(main())


def test_async_shutdown_write_waits_for_a_message_in_flight(run: Run, no_fd_leak: None) -> None:
    """shutdown_write() while a large message is part way out (the peer reads
    slowly): the message is completed, then the peer sees end of file; never a
    message cut short by the shutdown."""

    async def main() -> None:
        a, b = AsyncChannel.pair()
        async with a, b:
            big = b"z" * (4 << 20)
            sending = asyncio.ensure_future(a.send(big))
            while not a._sendq.went():  # part of it went; the socket is full
                await asyncio.sleep(0)
            a.shutdown_write()
            with pytest.raises(BrokenPipeError):
                await a.send(b"after")  # refused at once, as after any shutdown
            assert await b.recv() == big
            await sending
            with pytest.raises(ChannelClosed):
                await b.recv()

    run(main())
