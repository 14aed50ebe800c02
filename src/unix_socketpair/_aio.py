"""``AsyncChannel``: the message channel on asyncio, a thin twin of ``Channel``.

Every system call is the same non-blocking step ``Channel`` uses (from
``ChannelBase``); only the waiting differs. We wait with
``loop.add_reader``/``add_writer`` on the raw non-blocking socket rather than
with a transport because transports cannot ``sendmsg`` descriptors, and rather
than with ``loop.sock_recv*`` because those have no ``recvmsg``. A step is
tried first and the loop is only involved when the kernel says ``EAGAIN``:
with data waiting, ``await channel.recv()`` does not touch the event loop at
all. This works the same under uvloop.

Back-pressure: ``await send()`` returns once the kernel has taken every byte of
the message; nothing is queued in user space, so a slow reader makes senders
wait instead of making memory grow.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import AsyncIterator, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ._ancillary import SCM_MAX_FD, close_fds
from ._channel import (
    _NO_FDS,
    MSG_NOSIGNAL,
    ChannelBase,
    _advance,
    _writable,
)
from ._codec import (
    DEFAULT_MAX_MESSAGE_SIZE,
    HEADER_SIZE,
    NEED_DATA,
    Buffer,
    _pack,
    encode_many,
)
from ._errors import ChannelClosed

if TYPE_CHECKING:
    import socket

    from typing_extensions import Self

__all__ = ["AsyncChannel"]

# Stop reading ahead once this much is buffered and unclaimed.
_PAUSE_BYTES = 256 * 1024


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class AsyncChannel(ChannelBase):
    """The asyncio twin of :class:`~unix_socketpair.Channel`: same wire format,
    same errors, coroutines for everything that may wait.

    The constructor is synchronous and may run outside a coroutine; the channel
    binds to the running loop the first time it has to wait, and must then
    stay on that loop. The socket is switched to non-blocking mode; the channel
    owns it (as ``Channel`` does).

    Any number of tasks may ``send`` at once (messages are never interleaved:
    a task finishes its message before the next starts); only one task at a
    time may receive (a second concurrent receiver gets ``RuntimeError``).
    Cancelling a ``send`` part way through a message leaves the stream
    unusable for sending (later sends raise ``ProtocolError``); cancelling a
    receive loses nothing, except in ``recv_into`` of a message being read
    straight into the caller's buffer, which breaks the channel.
    """

    _blocking = False

    __slots__ = (
        "_loop",
        "_read_error",
        "_read_waiter",
        "_reading",
        "_send_lock",
        "_write_waiter",
    )

    def __init__(
        self,
        sock_or_fd: socket.socket | int,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_fds: int = SCM_MAX_FD,
    ) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._read_waiter: asyncio.Future[None] | None = None
        self._write_waiter: asyncio.Future[None] | None = None
        self._reading = False
        self._read_error: Exception | None = None
        self._send_lock = asyncio.Lock()
        super().__init__(sock_or_fd, max_message_size=max_message_size, max_fds=max_fds)

    # -- waiting ------------------------------------------------------------

    def _bind(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise RuntimeError("this AsyncChannel is bound to another event loop")
        return loop

    # Reading works like asyncio's own socket transport: while a stream channel
    # is being read, its reader callback stays registered and moves whatever the
    # kernel has into the decoder (one recvmsg per wakeup, no epoll_ctl churn);
    # it pauses once _PAUSE_BYTES are buffered and unclaimed, so a receiver that
    # stops reading makes the *sender* wait, not our memory grow. Packet
    # channels, and a payload read straight into a caller's buffer, only use
    # the callback as a wake-up and read in the task.

    def _start_reading(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._reading:
            loop.add_reader(self._sock.fileno(), self._on_readable)
            self._reading = True

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._sock.fileno())

    def _on_readable(self) -> None:
        dec = self._dec
        eager = self._stream and not dec.reading_direct
        if eager and self._read_error is None:
            try:
                self._fill()
            except BlockingIOError:
                return  # nothing there after all; stay registered
            except Exception as exc:
                self._read_error = exc
        fut = self._read_waiter
        if fut is not None:
            self._read_waiter = None
            if not fut.done():
                fut.set_result(None)
            if not eager:
                self._stop_reading()
        elif (
            not eager
            or self._read_error is not None
            or dec.at_eof
            or dec.buffered() >= _PAUSE_BYTES
        ):
            self._stop_reading()

    async def _wait_readable(self) -> None:
        if self._read_waiter is not None:
            raise RuntimeError("another task is already receiving on this channel")
        self._check_open()
        loop = self._bind()
        self._start_reading(loop)
        fut: asyncio.Future[None] = loop.create_future()
        self._read_waiter = fut
        try:
            await fut
        finally:
            if self._read_waiter is fut:
                self._read_waiter = None

    def _raise_read_error(self) -> None:
        err = self._read_error
        if err is not None:
            self._read_error = None
            raise err

    async def _wait_writable(self) -> None:
        self._check_open()
        loop = self._bind()
        fd = self._sock.fileno()
        fut: asyncio.Future[None] = loop.create_future()
        self._write_waiter = fut
        loop.add_writer(fd, _wake, fut)
        try:
            await fut
        finally:
            self._write_waiter = None
            if not self._closed:
                loop.remove_writer(fd)

    # -- life cycle ---------------------------------------------------------

    def close(self) -> None:
        """Close the channel now (see ``Channel.close``). A task waiting in a
        send or receive gets ``OSError(EBADF)``."""
        if self._closed:
            return
        self._stop_reading()
        loop = self._loop
        if loop is not None and not loop.is_closed() and self._write_waiter is not None:
            loop.remove_writer(self._sock.fileno())
        for waiter in (self._read_waiter, self._write_waiter):
            if waiter is not None and not waiter.done():
                waiter.set_exception(OSError(errno.EBADF, "the channel was closed"))
        self._read_waiter = self._write_waiter = None
        self._read_error = None
        super().close()

    async def aclose(self) -> None:
        """Close the channel (the same as :meth:`close`, for ``async with``)."""
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- sending ------------------------------------------------------------

    async def send(self, data: Buffer, *, fds: Iterable[int] = _NO_FDS) -> None:
        """Send one message; return once the kernel has taken all of it.

        Same contract and errors as ``Channel.send``.
        """
        if (
            fds is _NO_FDS
            and type(data) is bytes
            and len(data) <= self._small
            and not self._send_lock.locked()
        ):
            frame = _pack(len(data)) + data
            try:
                sent = self._sock.send(frame, MSG_NOSIGNAL)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                raise self._send_error(exc, [data]) from exc
            if sent == len(frame):
                return
            await self._send_locked([frame], [], sent)
            return
        bufs, anc = self._prepare(data, fds)
        await self._send_locked(bufs, anc, 0)

    async def send_many(self, messages: Iterable[Buffer]) -> None:
        """Send many messages, coalesced (see ``Channel.send_many``)."""
        self._check_send()
        if self._stream:
            async with self._send_lock:
                for bufs in encode_many(messages, self._max):
                    await self._send_all(bufs, [], 0)
            return
        if isinstance(messages, (list, tuple)):
            for item in messages:
                self._prepare(item, _NO_FDS)
        async with self._send_lock:
            for item in messages:
                bufs, anc = self._prepare(item, _NO_FDS)
                await self._send_all(bufs, anc, 0)

    async def _send_locked(self, bufs: list[Buffer], anc: list[Any], sent: int) -> None:
        async with self._send_lock:
            await self._send_all(bufs, anc, sent)

    async def _send_all(self, bufs: list[Buffer], anc: list[Any], sent: int) -> None:
        """Send *bufs* (of which *sent* bytes already went); caller holds the lock."""
        if sent:
            bufs = _advance(bufs, sent)
            anc = []
        partial = sent > 0
        sock = self._sock
        try:
            while bufs:
                self._check_send()
                try:
                    sent = sock.sendmsg(bufs, anc, MSG_NOSIGNAL)
                except BlockingIOError:
                    await self._wait_writable()
                    continue
                bufs = _advance(bufs, sent)
                anc = []
                partial = True
        except OSError as exc:
            raise self._send_error(exc, bufs) from exc
        except BaseException:
            if partial and bufs:
                self._break_send("a send was cancelled part way through a message")
            raise

    # -- receiving ----------------------------------------------------------

    async def _fill_async(self) -> None:
        """Get more stream bytes into the decoder (see the note on reading)."""
        self._raise_read_error()
        if not self._reading:
            try:
                self._fill()
                return
            except BlockingIOError:
                pass
        await self._wait_readable()
        self._raise_read_error()

    async def recv(self) -> bytes:
        """Return the next message (see ``Channel.recv``)."""
        if self._stream:
            dec = self._dec
            msg = dec.next_message()
            while msg is NEED_DATA:
                await self._fill_async()
                msg = dec.next_message()
            return msg  # type: ignore[return-value]
        payload, fds = await self._packet_message_async()
        close_fds(fds)
        return payload

    async def recv_with_fds(self) -> tuple[bytes, list[int]]:
        """Return the next message and its descriptors (see ``Channel.recv_with_fds``)."""
        self._check_open()
        if self._stream:
            dec = self._dec
            result = dec.next_message_with_fds()
            while result is NEED_DATA:
                await self._fill_async()
                result = dec.next_message_with_fds()
            return result  # type: ignore[return-value]
        return await self._packet_message_async()

    async def _packet_message_async(self) -> tuple[bytes, list[int]]:
        self._check_open()
        while True:
            try:
                return self._packet_message()
            except BlockingIOError:
                await self._wait_readable()

    async def recv_into(self, buffer: Buffer) -> int:
        """Receive the next message into *buffer* (see ``Channel.recv_into``)."""
        target = _writable(buffer)
        self._check_open()
        if not self._stream:
            while True:
                try:
                    size, fds = self._packet_into(target)
                    break
                except BlockingIOError:
                    await self._wait_readable()
            close_fds(fds)
            return size
        dec = self._dec
        while True:
            next_size = dec.next_size()
            if next_size is NEED_DATA:
                await self._fill_async()
                continue
            size = int(next_size)  # type: ignore[arg-type]
            if size > len(target):
                raise self._too_small(size, len(target))
            if dec.buffered() >= HEADER_SIZE + size or self._wants_direct(size):
                break
            await self._fill_async()
        if self._read_waiter is not None:
            raise RuntimeError("another task is already receiving on this channel")
        size, copied = dec.read_into(target)
        if copied == size:
            close_fds(dec.take_fds_for_buffered(size))
            return size
        try:
            while True:
                try:
                    n, done = self._direct_step(target[copied:size])
                except BlockingIOError:
                    await self._wait_readable()
                    continue
                if done is not None:
                    close_fds(done)
                    return size
                copied += n
        except BaseException:
            dec.abort_direct()
            raise

    def __aiter__(self) -> AsyncIterator[bytes]:
        """``async for message in channel``: each message until the peer closes."""
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        if not self._stream:
            while True:
                try:
                    yield await self.recv()
                except ChannelClosed:
                    return
        ready = self._dec.iter_ready
        fill = self._fill_async
        try:
            while True:
                for msg in ready():
                    yield msg
                await fill()
        except ChannelClosed:
            return
