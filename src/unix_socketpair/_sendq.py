"""The send direction of a channel, sans-IO: every decision, no system call.

:class:`SendQueue` is what the blocking :class:`~unix_socketpair.Channel` and
the asyncio :class:`~unix_socketpair.AsyncChannel` both keep for sending:

- the direction's **state**, one named value (:class:`SendState`): ``OPEN``;
  ``SHUTTING`` (``shutdown_write()`` was called while bytes were held: they go
  first, then the socket is shut down); ``SHUT``; ``BROKEN`` (a frame went
  out only in part and cannot be completed, or a write nobody waited for
  failed: ``why`` says which, and every later send is refused with it);
  ``CLOSED`` (the channel closed; the channel's own ``closed`` stays the
  lifecycle, this is only the send direction's end);
- the **held bytes** (``held``): whole frames, or the rest of one a timeout or
  a signal cut short, that must reach the socket before any new message
  (a ``write_buffer``, the asyncio write-behind buffer), with water marks;
- the **frame in flight** (``frame``): the buffers of the message being sent
  and the byte count of every system call made for it, from which the rest is
  derived, moved into ``held`` (:meth:`cut`), or declared lost (:meth:`abandon`);
- the **fast path** decision (``fast``): the largest ``bytes`` message a channel
  may send without taking its send lock, computed in :meth:`refresh` only.

The I/O classes make the system calls and report what they did. Counts go into
a list *from C* (``queue.wrote.extend(map(sock.sendmsg, ((queue.held,),), ...))``,
``queue.sent.extend(map(sock.sendmsg, ...))``) so that no bytecode runs between a
call returning and its result being recorded; they are applied later by a step
that calls nothing between its stores (:meth:`written`, :meth:`remaining`,
:meth:`cut`). An exception raised between two bytecodes (a signal handler's, a
cancellation) therefore leaves the queue consistent: the next call applies what
was recorded.

Thread-safety is the owner's: ``Channel`` changes the queue under its send lock
(and appends to or writes ``held`` under its queue lock); :meth:`refresh` may
*open* the fast path, so it must only run where no other thread is sending a
frame. Transitions that close it (:meth:`shut`, :meth:`close`, :meth:`fail`)
are safe from anywhere.
"""

from __future__ import annotations

import enum
import errno
from typing import TYPE_CHECKING, Final

from ._errors import ProtocolError

if TYPE_CHECKING:
    from typing_extensions import Buffer
else:
    Buffer = bytes | bytearray | memoryview

__all__ = ["BROKEN", "CLOSED", "OPEN", "SHUT", "SHUTTING", "SendQueue", "SendState", "advance"]

_HEADER_SIZE: Final = 4


class SendState(enum.Enum):
    """The send direction's state (see the module docstring)."""

    OPEN = "open"
    SHUTTING = "shutting"
    SHUT = "shut"
    BROKEN = "broken"
    CLOSED = "closed"


OPEN: Final = SendState.OPEN
SHUTTING: Final = SendState.SHUTTING
SHUT: Final = SendState.SHUT
BROKEN: Final = SendState.BROKEN
CLOSED: Final = SendState.CLOSED


def advance(bufs: list[Buffer], sent: int) -> list[Buffer]:
    """Drop the first *sent* bytes from *bufs* (slicing, never copying)."""
    while bufs:
        first = memoryview(bufs[0]).cast("B")
        if sent < first.nbytes:
            return [first[sent:], *bufs[1:]]
        sent -= first.nbytes
        bufs = bufs[1:]
    return bufs


def _copy(bufs: list[Buffer]) -> bytes:
    return b"".join([bytes(memoryview(part)) for part in bufs])


class SendQueue:
    """The send side of one channel (see the module docstring).

    ``SendQueue(small, behind=False)``: *small* is the largest message of the
    fast path (-1: none, the packet types); *behind* says that the fast path
    itself appends to ``held`` (asyncio's write-behind), so held bytes do not
    close it. :meth:`buffer` turns on holding small messages.

    Attributes the I/O classes use: ``fast``; ``held`` and ``wrote`` (never
    rebound: channels keep aliases); ``sent``, the counts of the frame in
    flight (a new list from each :meth:`start` and :meth:`detach`);
    ``hold``, ``high``, ``low``: see :meth:`buffer`. The I/O classes compare
    these numbers inline on their hot paths (a method call would cost more
    than the rest of a small send's Python).
    """

    __slots__ = (
        "_behind",
        "fast",
        "frame",
        "held",
        "high",
        "hold",
        "jobs",
        "low",
        "sent",
        "small",
        "state",
        "why",
        "wrote",
    )

    def __init__(self, small: int, *, behind: bool = False) -> None:
        self.small = small
        self._behind = behind
        self.state = OPEN
        # BROKEN: a str (a frame cut part way: ProtocolError) or the OSError a
        # write nobody waited for ran into (raised again, a copy each time).
        self.why: str | OSError | None = None
        self.held = bytearray()
        self.wrote: list[int] = []  # counts of writes of ``held`` not yet applied
        self.sent: list[int] = []  # counts of the system calls of the frame in flight
        # The frame in flight: (buffers not yet sent when it was recorded, their
        # size, bytes of the same frame that went before them).
        self.frame: tuple[list[Buffer], int, int] | None = None
        self.jobs = 0  # direct sends queued or running (asyncio): small ones wait behind
        self.high = 0
        self.low = 0
        self.hold = 0  # see buffer()
        self.fast = small  # what refresh() decides for a new queue

    def __repr__(self) -> str:
        why = f" ({self.why})" if self.why is not None else ""
        return f"<SendQueue {self.state.value}{why} held={len(self.held)} fast={self.fast}>"

    # -- decisions ------------------------------------------------------------

    def refresh(self) -> None:
        """Decide the fast path (the only place that does).

        =============================  =============================================
        Channel, no write buffer       open while nothing is held or in flight
        Channel with a write buffer    never: a small message is held under the lock
        AsyncChannel (``behind``)      open unless a direct send is queued/running
        =============================  =============================================

        and never unless OPEN. Opens it: call it only where no other thread
        is sending a frame (Channel: under the send lock).
        """
        self.fast = (
            self.small
            if self.state is OPEN
            and self.frame is None
            and not self.jobs
            and (self._behind or not (self.high or self.held))
            else -1
        )

    def check(self, sending: bool = True) -> None:
        """Raise what a send (*sending*) or a drain must raise now, if anything.

        Raises:
            OSError: a copy of the error a write nobody waited for ran into
                (sticky); ``EBADF`` once CLOSED (*sending* only).
            ProtocolError: a frame was cut part way (*sending* only).
            BrokenPipeError: after ``shutdown_write()`` (*sending* only).
        """
        state = self.state
        if state is OPEN:
            return
        why = self.why
        if isinstance(why, OSError):
            raise OSError(why.errno, why.strerror)
        if not sending:
            return
        if state is CLOSED:
            raise OSError(errno.EBADF, "the channel is closed")
        if state is BROKEN:
            raise ProtocolError(f"the channel cannot send any more: {why}")
        raise BrokenPipeError(errno.EPIPE, "shutdown_write() was called: no more sending")

    @property
    def error(self) -> OSError | None:
        """The sticky error of a failed background write, if any."""
        why = self.why
        return why if isinstance(why, OSError) else None

    @property
    def pending(self) -> bool:
        """Bytes held, or a frame in flight: something must go before a new message."""
        return bool(self.held) or self.frame is not None

    # -- configuration and transitions -----------------------------------------

    def buffer(self, high: int, low: int = 0) -> None:
        """Hold small messages: a frame of up to ``hold`` bytes (a message of up
        to ``small``) without descriptors is held rather than sent (Channel's
        write buffer; asyncio's fast path holds by itself) until ``high``
        bytes are; a writer that finds ``high`` reached waits until ``low``
        are left."""
        self.high = high
        self.low = low
        self.hold = self.small + _HEADER_SIZE if self.small >= 0 else 0
        self.refresh()

    def shutting(self) -> None:
        """``shutdown_write()`` with bytes held or direct sends under way:
        refuse new messages; the owner shuts the socket down once nothing is
        held or under way (see :meth:`shut_due`)."""
        if self.state is OPEN:
            self.state = SHUTTING
            self.fast = -1

    def shut_due(self) -> bool:
        """True when the deferred shutdown of :meth:`shutting` should happen now."""
        return self.state is SHUTTING and not self.held and not self.jobs

    def shut(self) -> None:
        """The socket was shut down for writing: refuse new messages."""
        if self.state is OPEN or self.state is SHUTTING:
            self.state = SHUT
            self.fast = -1

    def fail(self, error: OSError) -> None:
        """A write nobody waited for failed: drop what is held (it cannot
        arrive) and raise *error* from every later send and drain. The first
        failure wins."""
        if self.state is not BROKEN and self.state is not CLOSED:
            self.state, self.why, self.fast = BROKEN, error, -1
        self.drop()

    def close(self) -> None:
        """The channel closed: nothing more goes (``held`` is the owner's to drop)."""
        self.state, self.why, self.fast = CLOSED, None, -1

    def drop(self) -> int:
        """Forget what is held (and the counts of its writes); return its size."""
        size = len(self.held)
        self.held.clear()
        self.wrote.clear()
        return size

    def forked(self) -> None:
        """In a child after ``fork()``: what the parent held or was sending is
        the parent's to send."""
        self.drop()
        self.frame = None
        self.sent = []
        self.refresh()

    def enter_direct(self) -> None:
        """A direct send (asyncio: a message not held) is queued: small
        messages wait behind it, so order is kept."""
        self.jobs += 1
        self.fast = -1

    def leave_direct(self) -> None:
        self.jobs -= 1
        self.refresh()

    # -- held bytes -------------------------------------------------------------

    def written(self) -> int:
        """Apply the counts in ``wrote`` to ``held``; return the bytes still held."""
        held = self.held
        wrote = self.wrote
        while wrote:
            # Calls nothing between the two deletions: a count is applied
            # exactly once, whatever exception interrupts the owner.
            n = wrote[0]
            del held[:n]
            del wrote[0]
        return len(held)

    # -- the frame in flight -------------------------------------------------------

    def start(self, bufs: list[Buffer], before: int = 0) -> list[int]:
        """Record *bufs* (*before*: bytes of the same frame already sent) as the
        frame in flight, before its first system call; closes the fast path.
        Returns the list the owner appends the calls' counts to (``sent``)."""
        size = sum(memoryview(b).nbytes for b in bufs)
        sent: list[int] = []
        self.sent, self.frame, self.fast = sent, (bufs, size, before), -1
        return sent

    def remaining(self) -> list[Buffer] | None:
        """What is left of the frame in flight after the counts in ``sent``
        (sliced, not copied); None once a call was made and all of it went
        (then the frame is forgotten and the fast path decided again: see
        :meth:`refresh`)."""
        frame = self.frame
        if frame is None:
            return None
        bufs, size, _ = frame
        sent = self.sent
        done = sum(sent)
        if done >= size and sent:  # (an empty packet still takes its one call)
            self.frame = None
            self.refresh()
            return None
        return advance(bufs, done) if done else bufs

    def went(self) -> bool:
        """Did any byte of the frame in flight go?"""
        frame = self.frame
        return frame is not None and bool(sum(self.sent) or frame[2])

    def cut(self) -> None:
        """An interruption (a timeout, a signal handler's exception) left the
        frame in flight: if part of it went, copy its rest into ``held``
        (goes first, so the peer sees the whole message), in one step with
        forgetting the frame, so it happens exactly once. The owner serialises
        this with writers of ``held``."""
        frame = self.frame
        if frame is None:
            return
        bufs, size, before = frame
        done = sum(self.sent)
        if (done or before) and done < size:
            rest = _copy(advance(bufs, done))
            # ``+=`` on a bytearray and the store after it check for no
            # pending signal: an exception cannot fall between them.
            self.held += rest
            self.frame = None
        else:
            self.frame = None
            self.refresh()

    def detach(self) -> None:
        """Copy what is left of the frame in flight, so that the caller's buffers
        are free again (asyncio: its caller was cancelled; the send goes on)."""
        frame = self.frame
        if frame is None:
            return
        bufs, _, before = frame
        done = sum(self.sent)
        rest = _copy(advance(bufs, done))
        self.frame, self.sent = ([rest], len(rest), before + done), []

    def abandon(self, reason: str | None) -> None:
        """The frame in flight cannot be completed (a system call failed, or
        the send was stopped for good). If part of it went and *reason* is
        given, the direction is BROKEN: no later message could be framed."""
        if reason is not None and self.went():
            self.frame = None
            if self.state is not CLOSED:
                self.state, self.why, self.fast = BROKEN, reason, -1
            return
        self.frame = None
        self.refresh()
