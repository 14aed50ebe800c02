"""A channel pair against a reference model: random sequences of send, send_many,
send with descriptors, recv, recv_with_fds, recv_into (large enough or too small),
a receive that gives up at once (timeout=0, or a cancelled asyncio receive) and
close, driven by hypothesis. The model is one deque of expected messages per
direction.

Invariants: every message received is the next one expected in its direction (none
lost, none duplicated, none torn), its descriptors are the ones sent with it, a
receive that gives up takes nothing, and at the end no descriptor is left open.
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections import deque
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from support import open_fds

from unix_socketpair import (
    SOCK_SEQPACKET,
    SOCK_STREAM,
    AsyncChannel,
    Channel,
    ChannelClosed,
    MessageTooLarge,
)
from unix_socketpair._ancillary import close_fds

# What may be queued in one direction without a reader: well under a socket's
# buffer (each small message costs the kernel about 1 KiB of it), so that no
# send in the model ever blocks.
MAX_QUEUED = 24
MAX_QUEUED_BYTES = 32 * 1024

messages = st.binary(max_size=3000)


class ChannelModel(RuleBasedStateMachine):
    """Channel pair (a <-> b) against two deques of expected messages."""

    cls: Any = Channel
    sock_type = SOCK_STREAM

    def __init__(self) -> None:
        super().__init__()
        self.fds_before = open_fds()
        self.loop = asyncio.new_event_loop() if self.cls is AsyncChannel else None
        self.ends = dict(zip("ab", self.cls.pair(self.sock_type), strict=True))
        # expected[x]: messages (payload, inodes of fds) on their way *to* end x
        self.expected: dict[str, deque[tuple[bytes, list[int]]]] = {"a": deque(), "b": deque()}
        self.closed: set[str] = set()
        self.r, self.w = os.pipe()

    # -- helpers --------------------------------------------------------------

    def run(self, coro: Any) -> Any:
        assert self.loop is not None

        async def bounded() -> Any:
            return await asyncio.wait_for(coro, timeout=10)

        return self.loop.run_until_complete(bounded())

    def call(self, end: str, name: str, *args: Any, **kwargs: Any) -> Any:
        result = getattr(self.ends[end], name)(*args, **kwargs)
        return self.run(result) if self.loop is not None else result

    @staticmethod
    def other(end: str) -> str:
        return "b" if end == "a" else "a"

    def room(self, to: str, sizes: list[int]) -> bool:
        queue = self.expected[to]
        return (
            len(queue) + len(sizes) <= MAX_QUEUED
            and sum(len(m) for m, _ in queue) + sum(sizes) <= MAX_QUEUED_BYTES
        )

    def can_send(self, end: str) -> bool:
        return end not in self.closed and self.other(end) not in self.closed

    def next_expected(self, end: str) -> tuple[bytes, list[int]]:
        queue = self.expected[end]
        assert queue, "the model expects nothing here"
        return queue.popleft()

    def inode(self, fd: int) -> int:
        return os.fstat(fd).st_ino

    # -- sending --------------------------------------------------------------

    @rule(end=st.sampled_from("ab"), data=st.data(), message=messages)
    def send(self, end: str, data: st.DataObject, message: bytes) -> None:
        to = self.other(end)
        if not self.can_send(end) or not self.room(to, [len(message)]):
            return
        kind = data.draw(st.sampled_from(["bytes", "bytearray", "memoryview"]))
        payload: Any = {"bytes": message, "bytearray": bytearray(message)}.get(
            kind, memoryview(message)
        )
        self.call(end, "send", payload)
        self.expected[to].append((message, []))

    @rule(end=st.sampled_from("ab"), batch=st.lists(messages, max_size=5))
    def send_many(self, end: str, batch: list[bytes]) -> None:
        to = self.other(end)
        if not self.can_send(end) or not self.room(to, [len(m) for m in batch]):
            return
        self.call(end, "send_many", batch)
        self.expected[to].extend((m, []) for m in batch)

    @rule(end=st.sampled_from("ab"), message=messages, count=st.integers(1, 3))
    def send_with_fds(self, end: str, message: bytes, count: int) -> None:
        to = self.other(end)
        if not self.can_send(end) or not self.room(to, [len(message)]):
            return
        fds = [self.r, self.w, self.r][:count]
        self.call(end, "send", message, fds=fds)
        self.expected[to].append((message, [self.inode(fd) for fd in fds]))

    # -- receiving ------------------------------------------------------------

    def can_receive(self, end: str) -> bool:
        return end not in self.closed and bool(self.expected[end])

    @rule(end=st.sampled_from("ab"))
    def recv(self, end: str) -> None:
        if not self.can_receive(end):
            return
        expected, _ = self.next_expected(end)
        assert self.call(end, "recv") == expected

    @rule(end=st.sampled_from("ab"))
    def recv_with_fds(self, end: str) -> None:
        if not self.can_receive(end):
            return
        expected, inodes = self.next_expected(end)
        message, fds = self.call(end, "recv_with_fds")
        try:
            assert message == expected
            assert [self.inode(fd) for fd in fds] == inodes
        finally:
            close_fds(fds)

    @rule(end=st.sampled_from("ab"), slack=st.integers(0, 100))
    def recv_into(self, end: str, slack: int) -> None:
        if not self.can_receive(end):
            return
        expected, _ = self.expected[end][0]
        buffer = bytearray(len(expected) + slack)
        n = self.call(end, "recv_into", buffer)
        self.next_expected(end)
        assert bytes(buffer[:n]) == expected

    @rule(end=st.sampled_from("ab"), short=st.integers(1, 50))
    def recv_into_too_small(self, end: str, short: int) -> None:
        """The message stays queued (the model's deque is not touched)."""
        if not self.can_receive(end):
            return
        expected, _ = self.expected[end][0]
        if len(expected) < short:
            return
        with pytest.raises(MessageTooLarge) as info:
            self.call(end, "recv_into", bytearray(len(expected) - short))
        assert info.value.size == len(expected)

    @rule(end=st.sampled_from("ab"))
    def receive_that_gives_up(self, end: str) -> None:
        """Nothing queued: a receive with timeout=0 (Channel) or a cancelled one
        (AsyncChannel) gives up and takes nothing."""
        if end in self.closed or self.expected[end] or self.other(end) in self.closed:
            return
        channel = self.ends[end]
        if self.loop is None:
            with pytest.raises(TimeoutError):
                channel.recv(timeout=0)
            return

        async def cancelled() -> None:
            task = asyncio.ensure_future(channel.recv())
            for _ in range(3):
                await asyncio.sleep(0)
            assert not task.done()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        self.run(cancelled())

    @rule(end=st.sampled_from("ab"))
    def timeout_zero_with_a_message_queued(self, end: str) -> None:
        if self.loop is not None or not self.can_receive(end):
            return
        expected, _ = self.expected[end][0]
        # The message is in the kernel already (Channel sends synchronously).
        assert self.ends[end].recv(timeout=0) == expected
        self.next_expected(end)

    # -- closing --------------------------------------------------------------

    @rule(end=st.sampled_from("ab"))
    def close(self, end: str) -> None:
        if end in self.closed:
            return
        channel = self.ends[end]
        if self.loop is not None:
            self.run(channel.aclose())
        else:
            channel.close()
        self.closed.add(end)
        self.expected[end].clear()  # what it had not read is gone with it

    @precondition(lambda self: bool(self.closed))
    @rule(end=st.sampled_from("ab"))
    def after_close(self, end: str) -> None:
        """A closed end refuses with EBADF; its peer reads what was queued, then
        ChannelClosed."""
        if end in self.closed:
            with pytest.raises(OSError) as info:
                self.call(end, "send", b"x")
            assert info.value.errno == errno.EBADF
            return
        if self.expected[end]:
            return  # recv rules take them
        with pytest.raises(ChannelClosed):
            self.call(end, "recv")

    @invariant()
    def model_is_bounded(self) -> None:
        for queue in self.expected.values():
            assert len(queue) <= MAX_QUEUED

    def teardown(self) -> None:
        for end in "ab":
            self.ends[end].close()
        if self.loop is not None:
            self.loop.close()
        os.close(self.r)
        os.close(self.w)
        leaked = open_fds() - self.fds_before
        assert not leaked, f"descriptors leaked: {sorted(leaked)}"

    @initialize()
    def start(self) -> None:
        pass


SETTINGS = settings(
    max_examples=50,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


class StreamChannelModel(ChannelModel):
    cls = Channel
    sock_type = SOCK_STREAM


class SeqpacketChannelModel(ChannelModel):
    cls = Channel
    sock_type = SOCK_SEQPACKET


class StreamAsyncChannelModel(ChannelModel):
    cls = AsyncChannel
    sock_type = SOCK_STREAM


TestStreamChannel = StreamChannelModel.TestCase
TestStreamChannel.settings = SETTINGS
TestSeqpacketChannel = SeqpacketChannelModel.TestCase
TestSeqpacketChannel.settings = SETTINGS
TestStreamAsyncChannel = StreamAsyncChannelModel.TestCase
TestStreamAsyncChannel.settings = SETTINGS
