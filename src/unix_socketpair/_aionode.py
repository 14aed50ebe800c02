"""The asyncio twin of :class:`~unix_socketpair._nodechannel.NodeChannel`.

Same protocol object, same non-waiting steps; only the waiting differs: the channel
registers one reader and one writer callback with the event loop (``add_reader`` /
``add_writer`` on the non-blocking socket) while some task waits, the callback does
the read or lets the writes go, and every waiting task is woken to look again.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import AsyncIterator
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ._errors import ChannelClosed
from ._nodechannel import NodeChannelBase
from ._nodeipc import DEFAULT_MAX_MESSAGE_SIZE, NEED_DATA, Serialization

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["AsyncNodeChannel"]


class AsyncNodeChannel(NodeChannelBase):
    """:class:`NodeChannel` for asyncio: the same constructor, :meth:`pair` and
    :meth:`from_env`, the same values, handles, ownership and errors, with
    ``await`` instead of blocking and no ``timeout=`` (wrap a call in
    ``asyncio.timeout()`` or ``asyncio.wait_for()``).

    The channel binds to the event loop that first makes it wait. Any number of
    tasks may send and receive at once: sends go out one after another, whole
    (with a handle, the next send starts once the peer answered), and each
    message goes to one receiving task. Like every asyncio object, it is used from
    its event loop's thread only.

    Cancellation loses nothing received: what was read stays queued for the next
    receive. A send cancelled after its value was queued (while it writes or waits
    for a handle's answer) still goes out, before anything sent later; a send
    cancelled while it waits its turn sends nothing.
    """

    def __init__(
        self,
        sock_or_fd: socket.socket | int,
        serialization: Serialization = "json",
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    ) -> None:
        super().__init__(sock_or_fd, serialization, max_message_size=max_message_size)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: list[asyncio.Future[None]] = []
        self._reading = False
        self._writing = False
        self._error: BaseException | None = None
        self._send_lock = asyncio.Lock()

    # -- sending --------------------------------------------------------------

    async def send(self, value: object, handle: socket.socket | None = None) -> None:
        """Send *value*, with *handle* if given; return once it is written (with a
        handle: once the peer acknowledged it). Raises as :meth:`NodeChannel.send`
        (bad values before anything is queued)."""
        self._check_open()
        async with self._send_lock:
            ticket = self._queue(value, handle)
            await self._flush()
            while not self._sent(ticket):
                await self._pump()

    async def drain(self) -> None:
        """Write what a cancelled send left queued (return at once if nothing is)."""
        self._check_open()
        await self._flush()

    # -- receiving ------------------------------------------------------------

    async def recv_with_handle(self) -> tuple[Any, socket.socket | None]:
        """The next message's value and its handle (a ``socket.socket`` the caller
        owns), or ``None``. Raises as :meth:`NodeChannel.recv_with_handle`."""
        self._check_open()
        while (item := self._next()) is NEED_DATA:
            await self._pump()
        return self._with_handle(item)

    async def recv(self) -> Any:
        """The next message's value (a handle that came with it is closed)."""
        value, handle = await self.recv_with_handle()
        if handle is not None:
            handle.close()
        return value

    def __aiter__(self) -> AsyncIterator[Any]:
        """The values of the messages until the peer closes the channel."""
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        while True:
            try:
                yield await self.recv()
            except ChannelClosed:
                return

    # -- life cycle -------------------------------------------------------------

    def close(self) -> None:
        """Close the channel now (see :meth:`NodeChannel.close`); a task waiting in a
        send or receive gets ``OSError(EBADF)``."""
        if self._closed:
            return
        self._disarm()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(OSError(errno.EBADF, "the Node IPC channel was closed"))
        self._waiters.clear()
        self._release()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- waiting ----------------------------------------------------------------

    def _bind(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise RuntimeError("this AsyncNodeChannel is bound to another event loop")
        return loop

    async def _flush(self) -> None:
        while not self._write_ready():
            await self._wait(write=True)

    async def _pump(self) -> None:
        """Wait until a read happened (done by the reader callback), then write what it
        produced (ACKs)."""
        await self._wait(write=False)
        await self._flush()

    async def _wait(self, *, write: bool) -> None:
        """Wait until the callback read something or (with *write*) the socket is
        writable; raise what the read raised. Reading goes on meanwhile either way."""
        self._raise_error()
        loop = self._bind()
        fut: asyncio.Future[None] = loop.create_future()
        self._waiters.append(fut)
        fd = self._sock.fileno()
        if not self._reading and not self._eof:
            loop.add_reader(fd, self._on_event, False)
            self._reading = True
        if write and not self._writing:
            loop.add_writer(fd, self._on_event, True)
            self._writing = True
        try:
            await fut
        finally:
            if fut in self._waiters:
                self._waiters.remove(fut)
            if not self._waiters:
                self._disarm()
        self._raise_error()

    def _on_event(self, writable: bool) -> None:
        if not writable:
            try:
                if not self._read():
                    return  # nothing there after all
            except Exception as exc:
                self._error = exc
        waiters, self._waiters = self._waiters, []
        self._disarm()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _disarm(self) -> None:
        loop = self._loop
        usable = loop is not None and not loop.is_closed() and not self._closed
        if self._reading:
            self._reading = False
            if usable:
                assert loop is not None
                loop.remove_reader(self._sock.fileno())
        if self._writing:
            self._writing = False
            if usable:
                assert loop is not None
                loop.remove_writer(self._sock.fileno())

    def _raise_error(self) -> None:
        # A failed read (the connection reset) stays the channel's state: every
        # later wait raises it too.
        if self._error is not None:
            raise self._error
