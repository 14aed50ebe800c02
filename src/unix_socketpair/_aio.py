"""``AsyncChannel``: the message channel on asyncio, a thin twin of ``Channel``.

Every system call is the same non-blocking step ``Channel`` uses (from
``ChannelBase``); only the waiting differs. We wait with
``loop.add_reader``/``add_writer`` on the raw non-blocking socket rather than
with a transport because transports cannot ``sendmsg`` descriptors, and rather
than with ``loop.sock_recv*`` because those have no ``recvmsg``. A step is
tried first and the loop is only involved when the kernel says ``EAGAIN``:
with data waiting, ``await channel.recv()`` does not touch the event loop at
all. This works the same under uvloop.

Sending is write-behind, as in asyncio's own transports, but bounded: a small
message (up to 16 KiB, without descriptors) is sent at once if the channel is
idle, and otherwise copied into a buffer that is written with one system call
the next time the event loop runs (many messages coalesced). ``await send()``
returns at once while that buffer is under 256 KiB and waits for it to drain
otherwise, so a slow reader makes senders wait instead of making memory grow.
Large messages and messages with descriptors wait for the buffer to empty and
then go out directly (never copied; descriptors with their message's first
byte and no other message's, as the wire format requires).
"""

from __future__ import annotations

import asyncio
import errno
import os
import select
import socket
import weakref
from collections.abc import AsyncIterator, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ._ancillary import SCM_MAX_FD
from ._channel import (
    _MAX_SPIN,
    _MSG_DONTWAIT,
    _NO_ANC,
    _NO_FDS,
    _PROBE_READS,
    MSG_NOSIGNAL,
    ChannelBase,
    _check_limit,
    _writable,
)
from ._codec import (
    C_SEND,
    C_TAKE,
    DEFAULT_MAX_MESSAGE_SIZE,
    HEADER_SIZE,
    NEED_DATA,
    NOT_USUAL,
    Buffer,
    _pack,
    send_frame,
    take_frame,
)
from ._errors import ChannelClosed

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["AsyncChannel"]

# The fast path's send: never waits (the socket is non-blocking; saying so in
# the flags too lets the C send_frame keep the GIL).
_SEND_FLAGS = MSG_NOSIGNAL | _MSG_DONTWAIT
# Stop reading ahead once this much is buffered and unclaimed.
_PAUSE_BYTES = 256 * 1024
# ... or once this many received descriptors wait for their messages to be
# taken: read-ahead must not fill the descriptor table (then the kernel
# truncates what arrives: MSG_CTRUNC).
_PAUSE_FDS = 256
# Write-behind buffer: send() waits once this much is queued, until it is down
# to the low-water mark (a quarter, as asyncio's transports do).
_HIGH_WATER = 256 * 1024
_LOW_WATER = _HIGH_WATER // 4
# Adaptive spinning (see _spin_wait): a wait whose tries found data earns a
# credit, up to _SPIN_CREDIT_MAX; a wait whose tries all failed costs
# _SPIN_FAIL_COST. So spinning goes on while at least two waits in three end
# in a try (then it pays: each of those saves a sleep and a wake-up, which cost
# more than a window of tries), survives a burst of failures (the peer's CPU
# taken for a while by another process), and stops otherwise.
_SPIN_CREDIT_MAX = 16
_SPIN_FAIL_COST = 2


class _Job:
    """One message waiting to go out directly: its buffers and descriptors.
    Once it starts, the send queue's frame record has them (``bufs`` is None)."""

    __slots__ = ("anc", "bufs")

    def __init__(self, bufs: list[Buffer], anc: list[Any]) -> None:
        self.bufs: list[Buffer] | None = bufs
        self.anc = anc


def _on_readable(ref: weakref.ref[AsyncChannel]) -> None:
    """The reader callback of every channel.

    The loop holds only a weak reference: a channel dropped while its reader
    is registered is collected (ResourceWarning, socket closed), not kept
    alive by the loop until it closes. The stream read that every round trip
    makes is done here rather than in a method of the channel (one Python
    call less per message)."""
    channel = ref()
    if channel is None:
        return
    dec = channel._dec
    if channel._read_error is None:
        # Eager: move what the kernel has into the decoder now, and stay
        # registered (the next wait costs no epoll_ctl). Reading stops when an
        # error is kept for the task (so a registered reader means no error).
        # A payload read straight into a caller's buffer is the exception: the
        # decoder answers NOT_USUAL, having read nothing, and the task reads
        # (asked only then: no property call on the usual path).
        n = 0
        try:
            # _read_once() inlined: the read and, for the usual read, its
            # accounting, in one call (read_commit).
            try:
                n = channel._read(dec, channel._sock, channel._rbase)
            except OSError as exc:
                channel._after_read(0, exc)
            else:
                if n <= 0 and (n != NOT_USUAL or not dec.reading_direct):
                    channel._after_read(n)
        except BlockingIOError:
            return  # nothing there after all
        except Exception as exc:
            channel._read_error = exc
            channel._stop_reading()
        if n != NOT_USUAL or not dec.reading_direct:
            fut = channel._read_waiter
            if fut is not None:
                channel._read_waiter = None
                if not fut.done():
                    fut.set_result(None)
            elif channel._reading and (
                dec.at_eof or dec.buffered() >= _PAUSE_BYTES or dec.pending_fds() >= _PAUSE_FDS
            ):
                channel._stop_reading()
            return
    channel._wake_reader()


# Tracebacks: an exception that leaves a coroutine (a CancelledError above all)
# carries the frames it passed through, and asyncio keeps it for a while (the
# finished task holds it; the task that awaited that task holds it until its
# own step ends). A frame that still holds ``self`` would keep a dropped channel
# alive, its socket open and without a ResourceWarning, for as long. So every
# coroutine below that can wait deletes ``self`` from its frame when an
# exception leaves it (zero cost on the normal path).


def _woken_by_close() -> ChannelClosed:
    return ChannelClosed("close() was called while this call was waiting")


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class AsyncChannel(ChannelBase):
    """The asyncio twin of :class:`~unix_socketpair.Channel`: same wire format,
    same errors, coroutines for everything that may wait.

    ``AsyncChannel(sock_or_fd, *, max_message_size=64 MiB, max_fds=253, spin=0)``

    The constructor is synchronous and may run outside a coroutine; the channel
    binds to the running loop the first time it has to wait, and must then
    stay on that loop (using it from another loop raises ``RuntimeError``). The
    socket is switched to non-blocking mode; the channel owns it (as
    ``Channel`` does). A bad option raises ``TypeError``/``ValueError`` before
    the socket is adopted (the caller still owns it then).

    *spin* (0 to 1000, default 0): a receive that finds nothing queued looks
    that many more times (``poll`` with no timeout) before its task sleeps in
    the event loop, so that a peer answering within microseconds costs no
    sleep and wake-up. The event loop does not run meanwhile (other tasks wait:
    opt in where round-trip latency matters most); the write-behind buffer is
    written first. It adapts: spinning stops once fewer than about two waits
    in three end in a try, and is tried again 256 waits later. About 100 to
    200 suits a peer on another CPU (docs/performance.md).

    Any number of tasks may ``send`` at once (messages are never interleaved:
    a task finishes its message before the next starts); only one task at a
    time may receive (a second concurrent receiver gets ``RuntimeError``).
    :meth:`close`, from any task or callback of the channel's loop, wakes every
    task waiting in the channel with ``ChannelClosed`` (the channel is not
    thread-safe: from another thread use ``loop.call_soon_threadsafe``).

    ``send`` may return before the kernel has taken a small message: it is then
    held (copied) in a write-behind buffer of at most about 256 KiB, written
    when the event loop next runs. :meth:`drain` waits until it is all written;
    :meth:`aclose` (and ``async with``) writes it before closing; a plain
    :meth:`close` drops it. If writing it fails (the peer closed:
    ``BrokenPipeError``), the error is raised by the next ``send``,
    ``send_many``, ``drain`` or ``aclose``, and by every one after it.
    Cancelling a ``send`` part way through a message leaves the stream
    unusable for sending (later sends raise ``ProtocolError``); cancelling a
    receive loses nothing (a message being read straight into the caller's
    buffer by ``recv_into`` goes back into the channel, whole, for the next
    receive).
    """

    _blocking = False

    __slots__ = (
        "_burst",
        "_drain_waiters",
        "_flush_handle",
        "_flushing",
        "_loop",
        "_read_error",
        "_read_waiter",
        "_reading",
        "_send_lock",
        "_spin_credit",
        "_spin_poll",
        "_spin_probe",
        "_spin_tries",
        "_wbuf",
        "_write_waiter",
    )

    def __init__(
        self,
        sock_or_fd: socket.socket | int,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_fds: int = SCM_MAX_FD,
        spin: int = 0,
    ) -> None:
        # Checked before the socket is adopted, so a bad value leaves it to the caller.
        self._spin_tries = _check_limit("spin", spin, 0, _MAX_SPIN)
        self._spin_credit = _SPIN_CREDIT_MAX // 2 if spin else 0
        self._spin_probe = 0
        self._spin_poll: select.poll | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._read_waiter: asyncio.Future[None] | None = None
        self._write_waiter: asyncio.Future[None] | None = None
        self._reading = False
        self._read_error: Exception | None = None
        # Made on first use (most channels never send anything large or with
        # descriptors): an idle channel is small (10,000 of them at once).
        self._send_lock: asyncio.Lock | None = None
        # Write-behind (see the module docstring): the send queue holds the
        # bytes (_wbuf is its buffer) and decides. _burst: a message went out
        # directly and the loop has not run since, so the next one is
        # buffered and coalesced rather than costing its own system call.
        self._burst = False
        self._flush_handle: asyncio.Handle | None = None
        self._flushing = False  # our writer callback is registered
        self._drain_waiters: list[tuple[int, asyncio.Future[None]]] | None = None
        super().__init__(sock_or_fd, max_message_size=max_message_size, max_fds=max_fds)
        # The socket is non-blocking; saying so in every read's flags too lets
        # the C read_commit keep the GIL around a read that cannot wait.
        self._rbase |= _MSG_DONTWAIT
        self._sendq.buffer(_HIGH_WATER, _LOW_WATER)
        self._wbuf = self._sendq.held

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
            loop.add_reader(self._sock.fileno(), _on_readable, weakref.ref(self))
            self._reading = True

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._sock.fileno())

    def _wake_reader(self) -> None:
        """Packets, and a payload read straight into a caller's buffer: the
        task reads; the reader callback only wakes it."""
        fut = self._read_waiter
        if fut is not None:
            self._read_waiter = None
            if not fut.done():
                fut.set_result(None)
        self._stop_reading()

    # Receiving waits are on the hot path of every round trip, so they are
    # plain functions that return the future to await (no coroutine of their
    # own), and the loop is looked up only the first time (get_running_loop()
    # costs a getpid() system call on CPython 3.11). Awaiting the future from a
    # task of another loop then fails in asyncio itself ("attached to a
    # different loop"); the next receive names our rule (see _arm_read).

    def _arm_read(self) -> asyncio.Future[None]:
        """Register interest in the socket becoming readable; return the
        future the reader callback completes (close() fails it)."""
        waiter = self._read_waiter
        if waiter is not None and not waiter.done():
            self._bind()  # another loop is the likelier mistake: name it
            raise RuntimeError("another task is already receiving on this channel")
        self._check_open()
        loop = self._loop or self._bind()
        self._burst = False  # the loop runs before our next send
        if not self._reading:
            self._start_reading(loop)
        fut: asyncio.Future[None] = loop.create_future()
        self._read_waiter = fut
        return fut

    def _fill_or_arm(self) -> asyncio.Future[None] | None:
        """Get more stream bytes into the decoder: at once if the kernel has
        some (``None``), else the future to await before trying again.

        Raises the error the reader callback ran into, once. With ``spin``,
        looks again a few times before arming (see _spin_wait)."""
        if self._reading and self._read_waiter is None and not self._spin_tries:
            # Every wait of a round trip: the reader is registered (so the
            # channel is open, bound to its loop, with no error kept) and its
            # callback reads eagerly, so there is nothing to try before waiting.
            self._burst = False  # the loop runs before our next send
            fut = self._read_waiter = self._loop.create_future()  # type: ignore[union-attr]
            return fut
        err = self._read_error
        if err is not None:
            self._read_error = None
            raise err
        if not self._reading:
            # Not registered (first read, or paused): nobody has looked yet.
            # Peek first: a channel that waits for its first message (10,000
            # idle ones at once) gets its receive buffer only when data comes.
            try:
                ready = self._sock.recv(1, socket.MSG_PEEK) is not None
            except BlockingIOError:
                ready = False
            except OSError:
                ready = True  # _fill() raises it as a channel error
            if ready:
                try:
                    self._read_once()
                    return None
                except BlockingIOError:
                    pass
        elif self._spin_tries and self._spin_wait():
            try:
                self._read_once()
                return None
            except BlockingIOError:
                pass
        # _arm_read() inlined: this is every stream wait.
        waiter = self._read_waiter
        loop = self._loop
        if (waiter is not None and not waiter.done()) or self._closed or loop is None:
            return self._arm_read()
        self._burst = False  # the loop runs before our next send
        if not self._reading:
            self._start_reading(loop)
        fut = self._read_waiter = loop.create_future()
        return fut

    def _spin_wait(self) -> bool:
        """Look up to ``spin`` times whether the socket became readable, without
        waiting; True as soon as it is (then the caller reads).

        Waking a task costs a sleep in the event loop, a wake-up, a callback and
        a task step; a peer that answers within a few microseconds is cheaper
        to wait for awake. Spinning adapts (see _SPIN_CREDIT_MAX): with no
        credit left the channel waits at once (no tries: they would only take
        CPU from other tasks and from a peer sharing our CPU), and tries again
        _PROBE_READS waits later. While it spins the event loop does not run:
        the write-behind buffer is written first, or no spinning is done."""
        if not self._spin_credit:
            self._spin_probe -= 1
            if self._spin_probe > 0:
                return False
            self._spin_credit = _SPIN_FAIL_COST
        if self._wbuf:
            # Our last messages wait for the loop to write them: the peer
            # cannot answer them while we spin.
            self._flush_now()
            if self._wbuf:
                return False
        # A try is poll() with no timeout: no exception per failed try, and the
        # read stays the caller's own.
        poll = self._spin_poll
        if poll is None:
            poll = self._spin_poll = select.poll()
            poll.register(self._sock.fileno(), select.POLLIN)
        for _ in range(self._spin_tries):
            if poll.poll(0):
                self._spin_credit = min(self._spin_credit + 1, _SPIN_CREDIT_MAX)
                self._burst = False  # a wait ended: the next send goes out at once
                return True
        self._spin_credit = max(self._spin_credit - _SPIN_FAIL_COST, 0)
        if not self._spin_credit:
            self._spin_probe = _PROBE_READS
        return False

    async def _wait_readable(self) -> None:
        """Wait until the socket is readable (packets and direct reads, which
        read in the task)."""
        if self._spin_tries and self._spin_wait():
            return
        fut = self._arm_read()
        try:
            await fut
        except BaseException:
            del self  # see the note on tracebacks
            raise

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
            del self  # see the note on tracebacks

    # -- life cycle ---------------------------------------------------------

    def close(self) -> None:
        """Close the channel now (see ``Channel.close``); idempotent. Every task
        waiting in the channel when it is called (in a receive, ``send``,
        ``send_many``, ``drain`` or ``aclose``) is woken with ``ChannelClosed``;
        a waiting ``async for`` just stops. A call made after it raises
        ``OSError(EBADF)``. Messages still in the write-behind buffer are
        dropped (:meth:`aclose` writes them first)."""
        if self._closed:
            return
        self._stop_reading()
        loop = self._loop
        if (
            loop is not None
            and not loop.is_closed()
            and (self._write_waiter is not None or self._flushing)
        ):
            loop.remove_writer(self._sock.fileno())
        self._flushing = False
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._sendq.close()  # a later send takes the checked path: EBADF, not buffered
        self._sendq.drop()
        waiters = [self._read_waiter, self._write_waiter]
        waiters.extend(fut for _, fut in self._drain_waiters or ())
        for waiter in waiters:
            if waiter is not None and not waiter.done():
                waiter.set_exception(_woken_by_close())
        self._read_waiter = self._write_waiter = None
        self._drain_waiters = None
        self._read_error = None
        self._spin_poll = None
        super().close()

    async def aclose(self) -> None:
        """Write what the write-behind buffer holds, then close the channel.

        Waits while the peer is alive but not reading; a peer that has gone
        ends the wait (``BrokenPipeError``). Cancel it (e.g. with
        ``asyncio.timeout``) to give up: the channel is closed either way and
        unwritten data is dropped.

        Raises:
            BrokenPipeError: (after closing) buffered data could not be written
                because the peer has closed; also if an earlier background
                write failed and no ``send``/``drain`` reported it yet.
        """
        if self._closed:
            return
        try:
            if self._wbuf or self._sendq.error is not None:
                await self._drain_to(0)
        finally:
            self.close()
            del self  # see the note on tracebacks

    async def drain(self) -> None:
        """Wait until the write-behind buffer is written to the kernel.

        Raises:
            BrokenPipeError: the peer closed before all of it was written.
            ChannelClosed: :meth:`close` was called while this waited.
            OSError: ``EBADF`` if the channel was already closed.
        """
        self._check_open()
        try:
            await self._drain_to(0)
        except BaseException:
            del self  # see the note on tracebacks
            raise

    def shutdown_write(self) -> None:
        """As ``Channel.shutdown_write``; buffered messages are written first
        (the shutdown happens once the write-behind buffer is empty and the
        messages already on their way out, sent directly, are complete; later
        sends raise ``BrokenPipeError`` at once)."""
        self._check_open()
        if self._wbuf:
            self._flush_now()
        if self._wbuf or self._sendq.jobs:
            # _flush_now() shuts the socket down once nothing is held and no
            # message is on its way out (the one in flight is completed).
            self._sendq.shutting()
        else:
            super().shutdown_write()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """:meth:`aclose`; when leaving with an exception, just :meth:`close`
        (buffered data is dropped rather than waited for)."""
        if exc_type is None:
            try:
                await self.aclose()
            except BaseException:
                del self  # see the note on tracebacks
                raise
        else:
            self.close()

    # -- sending ------------------------------------------------------------

    async def send(self, data: Buffer, *, fds: Iterable[int] = _NO_FDS) -> None:
        """Send one message. Same contract and errors as ``Channel.send``, except
        that a small message may still be in the write-behind buffer when this
        returns (see the class docstring): its bytes were copied, so the caller
        may reuse *data* at once; an error writing it is raised later.
        """
        # The send queue closes this path while a direct send is queued or
        # running (order), and once shut, broken or closed (SendQueue.refresh).
        sendq = self._sendq
        if fds is _NO_FDS and type(data) is bytes and len(data) <= sendq.fast:
            wbuf = sendq.held
            if wbuf or self._burst:
                wbuf += _pack(len(data))
                wbuf += data
                if self._flush_handle is None and not self._flushing:
                    self._flush_handle = self._bind().call_soon(self._flush)
                if len(wbuf) >= sendq.high:
                    try:
                        await self._drain_to(sendq.low, sending=True)
                    except BaseException:
                        del self  # see the note on tracebacks
                        raise
                return
            try:
                sent = (
                    send_frame(self._sock, data, _SEND_FLAGS)
                    if C_SEND
                    else self._sock.send(_pack(len(data)) + data, _SEND_FLAGS)
                )
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                raise self._send_error(exc, [data]) from exc
            self._burst = True
            if sent == len(data) + HEADER_SIZE:
                return
            wbuf += memoryview(_pack(len(data)) + data)[sent:]
            self._start_flushing()
            return
        bufs, anc = self._prepare(data, fds)
        try:
            await self._run([_Job(bufs, anc)])
        except BaseException:
            del self  # see the note on tracebacks
            raise

    async def send_many(self, messages: Iterable[Buffer]) -> None:
        """Send many messages, coalesced (see ``Channel.send_many``); whatever
        the write-behind buffer held goes first. Cancelling it delivers every
        message of it, as :meth:`send` does (the caller must not change the
        buffers it passed until the channel is drained)."""
        self._check_send()
        jobs = [_Job(bufs, []) for bufs in self._frames(list(messages), self._max)]
        try:
            await self._run(jobs)
        except BaseException:
            del self  # see the note on tracebacks
            raise

    async def _run(self, jobs: list[_Job]) -> None:
        """Send *jobs* in order, in a task of their own: the message is accepted
        into the send queue before this coroutine first waits, and a
        cancellation of the caller only stops its waiting (the unsent rest is
        copied, so the caller may reuse its buffers); the messages are
        delivered whole regardless. An error the caller no longer waits for
        is kept and raised by the next send, drain or aclose."""
        loop = self._bind()
        self._sendq.enter_direct()
        task = loop.create_task(self._send_jobs(jobs))
        try:
            await asyncio.shield(task)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                if not task.done():
                    self._detach(jobs)
                # Nobody waits for its outcome now: keep an error for later calls.
                task.add_done_callback(self._job_done)
            del self, task, exc  # see the note on tracebacks
            raise

    def _detach(self, jobs: list[_Job]) -> None:
        """Copy what is left of *jobs* (their caller was cancelled; they go on)."""
        if jobs and jobs[0].bufs is None:
            # They started (in order): the frame in flight, if any, is one of
            # them (their task holds the send lock until they are all sent).
            self._sendq.detach()
        for job in jobs:
            if job.bufs is not None:
                job.bufs = [b"".join([bytes(memoryview(b)) for b in job.bufs])]

    async def _send_jobs(self, jobs: list[_Job]) -> None:
        try:
            if self._send_lock is None:
                self._send_lock = asyncio.Lock()
            async with self._send_lock:
                if self._closed:  # while these waited for the lock
                    raise _woken_by_close()
                # Buffered messages go first; then these directly (descriptors
                # travel with their message's first byte and no other's).
                await self._drain_to(0, sending=True)
                for job in jobs:
                    await self._send_job(job)
        finally:
            self._sendq.leave_direct()
            if self._sendq.shut_due():
                self._flush_now()  # the deferred shutdown_write()
            del self  # see the note on tracebacks

    def _job_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()  # retrieved here, so never "never retrieved"
        if exc is not None and not self._closed:
            self._sendq.fail(exc if isinstance(exc, OSError) else OSError(errno.EIO, str(exc)))

    # -- the write-behind buffer ----------------------------------------------

    def _flush_now(self) -> None:
        """One write of the buffer (no waiting); on failure the send queue keeps
        the error and drops the buffer. Shuts the socket down once the buffer
        is empty if shutdown_write() asked to; wakes drainers whose mark is
        reached."""
        sendq = self._sendq
        wbuf = self._wbuf
        if wbuf and not self._closed:
            try:
                self._sendmsg((wbuf,), _NO_ANC, sendq.wrote)
            except BlockingIOError:
                pass
            except OSError as exc:
                err = self._send_error(exc, [])
                sendq.fail(err if isinstance(err, OSError) else OSError(errno.EIO, str(err)))
            sendq.written()
        if not wbuf and self._flushing:
            # Nothing left to write: unregister now, so that a direct send that
            # follows may wait for writability with its own callback.
            self._flushing = False
            if self._loop is not None and not self._loop.is_closed() and not self._closed:
                self._loop.remove_writer(self._sock.fileno())
        if sendq.shut_due() and not self._closed:
            try:
                ChannelBase.shutdown_write(self)
            except OSError as exc:
                sendq.fail(exc)
        if self._drain_waiters:
            # A failure drops the buffer: every drainer's mark is reached.
            size = len(wbuf)
            keep = []
            for mark, fut in self._drain_waiters:
                if size <= mark:
                    if not fut.done():
                        fut.set_result(None)
                else:
                    keep.append((mark, fut))
            self._drain_waiters = keep or None

    def _flush(self) -> None:
        """The event loop's turn: write what accumulated; keep writing as the
        socket becomes writable."""
        self._flush_handle = None
        self._burst = False
        self._flush_now()
        if self._wbuf and not self._closed:
            self._start_flushing()

    def _start_flushing(self) -> None:
        if not self._flushing:
            self._bind().add_writer(self._sock.fileno(), self._flush)
            self._flushing = True

    async def _drain_to(self, mark: int, sending: bool = False) -> None:
        """Wait until at most *mark* bytes are buffered; raise a write error
        (and, when *sending*, refuse a message after shutdown_write())."""
        sendq = self._sendq
        wbuf = self._wbuf
        while True:
            sendq.check(sending)
            if len(wbuf) <= mark:
                return
            self._check_open()
            self._flush_now()
            if len(wbuf) <= mark:
                continue
            loop = self._bind()
            self._start_flushing()
            fut: asyncio.Future[None] = loop.create_future()
            entry = (mark, fut)
            if self._drain_waiters is None:
                self._drain_waiters = []
            self._drain_waiters.append(entry)
            try:
                await fut
            except BaseException:
                if self._drain_waiters and entry in self._drain_waiters:
                    self._drain_waiters.remove(entry)
                del self  # see the note on tracebacks
                raise

    async def _send_job(self, job: _Job) -> None:
        """Send *job* directly; the caller holds the send lock. Its byte counts
        go to the send queue's frame record (from C), which says what is left
        (a copy, after a wait, if the caller was cancelled meanwhile)."""
        sendq = self._sendq
        rest, anc = job.bufs, job.anc
        assert rest is not None
        sendq.start(rest)
        job.bufs = None  # the record has them now (see _detach)
        try:
            while rest is not None:
                self._check_open()
                try:
                    self._sendmsg(rest, anc, sendq.sent)
                    anc = []
                except BlockingIOError:
                    await self._wait_writable()
                rest = sendq.remaining()
        except OSError as exc:
            err = self._send_error(exc, sendq.frame[0] if sendq.frame else [])
            sendq.abandon(None)
            del self  # see the note on tracebacks
            raise err from exc
        except BaseException:
            sendq.abandon("a send was interrupted part way through a message")
            del self  # see the note on tracebacks
            raise

    # -- receiving ----------------------------------------------------------

    def _fill(self, bufs: tuple[memoryview, ...] | None = None) -> None:
        """One non-blocking read into the decoder (end of file included), into
        *bufs* (default: the decoder's buffer), then its accounting; a result
        an exception left in the inbox is accounted for instead. Raises
        ``BlockingIOError`` (nothing there) having changed nothing."""
        dec = self._dec
        inbox = dec.inbox
        if not inbox:
            if bufs is None:
                bufs = (dec.get_buffer(),)
            try:
                self._recvmsg(bufs, self._rbase, inbox)
            except OSError as exc:
                raise self._read_exc(exc)  # noqa: B904 (its cause is set when it is new)
        if self._closed and not inbox[0][0]:
            self._woken_by_close()
        dec.commit_read()

    def _read_again(self, bufs: tuple[memoryview, ...], inbox: list[tuple[Any, ...]]) -> None:
        """read_commit found nothing to read: the caller waits for the loop."""
        raise self._read_exc(BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN)))

    def _read_once(self) -> None:
        """:meth:`_fill` for a stream read into the decoder's own buffer, through
        read_commit (which accounts for the usual read itself). Raises
        ``BlockingIOError`` (nothing there) having changed nothing."""
        try:
            n = self._read(self._dec, self._sock, self._rbase)
        except OSError as exc:
            self._after_read(0, exc)
        else:
            if n <= 0:
                self._after_read(n)

    async def _fill_async(self) -> None:
        """Get more stream bytes into the decoder, waiting if need be."""
        fut = self._fill_or_arm()
        if fut is not None:
            try:
                await fut
            except BaseException:
                del self  # see the note on tracebacks
                raise

    async def recv(self) -> bytes:
        """Return the next message (see ``Channel.recv``)."""
        dec = self._dec
        handed: list[Any] = []
        dec.handed = handed  # (only Channel's signal rollback reads it)
        try:
            # With the accelerator, the two usual answers (a whole message
            # buffered; nothing at all, so wait: every round trip starts so)
            # come from take_frame in C, with no Python frame (C_TAKE);
            # anything else, and the pure-Python path (where take_frame would be
            # two calls), from next_message().
            msg: object = take_frame(dec, None, handed, NEED_DATA) if C_TAKE else None
            if msg is None:
                msg = dec.next_message()
            while msg is NEED_DATA:
                if self._reading and self._read_waiter is None and not self._spin_tries:
                    # _fill_or_arm()'s first case inlined (the wait of every
                    # round trip: one Python call less per message).
                    self._burst = False
                    fut = self._read_waiter = self._loop.create_future()  # type: ignore[union-attr]
                else:
                    fut = self._fill_or_arm()
                if fut is not None:
                    await fut
                msg = take_frame(dec, None, handed, NEED_DATA) if C_TAKE else None
                if msg is None:
                    msg = dec.next_message()
        except BaseException:
            del self  # see the note on tracebacks
            raise
        return msg  # type: ignore[return-value]

    async def recv_with_fds(self) -> tuple[bytes, list[int]]:
        """Return the next message and its descriptors (see ``Channel.recv_with_fds``)."""
        self._check_open()
        dec = self._dec
        dec.handed = []
        try:
            result = dec.next_message_with_fds()
            while result is NEED_DATA:
                fut = self._fill_or_arm()
                if fut is not None:
                    await fut
                result = dec.next_message_with_fds()
        except BaseException:
            del self  # see the note on tracebacks
            raise
        return result  # type: ignore[return-value]

    async def recv_into(self, buffer: Buffer) -> int:
        """Receive the next message into *buffer* (see ``Channel.recv_into``).
        Cancelling it loses nothing: a message being read straight into
        *buffer* goes back into the channel, from *buffer*, as it stands when
        the cancellation arrives."""
        target = _writable(buffer)
        try:
            self._check_open()
            dec = self._dec
            dec.handed = []
            size = dec.into(target)
            while size is NEED_DATA:
                if not dec.begin_direct(target):
                    await self._fill_async()
                    size = dec.into(target)
                    continue
                # Straight into *target*: this task reads (the reader callback
                # only wakes it).
                waiter = self._read_waiter
                if waiter is not None and not waiter.done():
                    raise RuntimeError("another task is already receiving on this channel")
                try:
                    while True:
                        try:
                            self._fill(dec.read_buffers())
                            break
                        except BlockingIOError:
                            await self._wait_readable()
                except BaseException as exc:
                    dec.into_failed(exc)
                    raise
                size = dec.into(target)
            return size  # type: ignore[return-value]
        except BaseException:
            del self  # see the note on tracebacks
            raise

    def __aiter__(self) -> AsyncIterator[bytes]:
        """``async for message in channel``: each message until the peer closes."""
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        try:
            dec = self._dec
            ready = dec.iter_ready
            next_message = dec.next_message
            # One message at a time (a round trip) costs no batch generator
            # and no question to the decoder; a second message in a row without
            # a wait starts a batch, which goes through iter_ready().
            batch = False
            while True:
                handed: list[Any] = []
                dec.handed = handed  # (only Channel's signal rollback reads it)
                # As in recv(): the usual answers from take_frame in C.
                msg: object = take_frame(dec, None, handed, NEED_DATA) if C_TAKE else None
                if msg is None:
                    msg = next_message()
                while msg is NEED_DATA:
                    batch = False
                    fut = self._fill_or_arm()
                    if fut is not None:
                        await fut
                    msg = take_frame(dec, None, handed, NEED_DATA) if C_TAKE else None
                    if msg is None:
                        msg = next_message()
                yield msg  # type: ignore[misc]
                if batch:
                    for msg in ready():
                        yield msg
                batch = True
        except ChannelClosed:
            return
        except BaseException:
            del self  # see the note on tracebacks
            raise

    async def recv_many(self, max_messages: int | None = None) -> list[bytes]:
        """Every whole message already received (at most *max_messages*),
        waiting only until there is at least one (see ``Channel.recv_many``).
        Descriptors that came with them are closed. Cancelling it loses nothing."""
        if max_messages is None:
            count = 1 << 62
        elif isinstance(max_messages, bool) or not isinstance(max_messages, int):
            raise TypeError(f"max_messages must be an int, not {type(max_messages).__name__}")
        elif max_messages < 1:
            raise ValueError(f"max_messages must be at least 1, not {max_messages}")
        else:
            count = max_messages
        dec = self._dec
        dec.handed = []
        out = dec.take_ready(count)
        try:
            while not out:
                fut = self._fill_or_arm()
                if fut is not None:
                    await fut
                dec.handed = []
                out = dec.take_ready(count)
        except BaseException:
            del self  # see the note on tracebacks
            raise
        if dec.ONE_PER_READ:
            # Each read yields one packet: read the ones already queued too.
            while len(out) < count and not dec.at_eof:
                try:
                    self._fill()
                except (OSError, ChannelClosed):
                    break  # (raised again by the next call, which takes nothing first)
                dec.take_more(out, count)  # type: ignore[union-attr]
        return out
