"""The moving parts of ``unix-socketpair exec`` and ``link``: relay, child watch, signals.

* :func:`relay` copies this process's stdin to a socket and the socket to stdout, both
  ways at once, in one thread, with ``poll()``.
* :class:`ChildWatch` tells when a child has exited *without reaping it* (a pidfd on
  Linux, so the pid cannot be reused under us), and signals it safely.
* :class:`SignalForwarder` passes SIGINT, SIGTERM, SIGHUP and SIGQUIT on to the children
  instead of dying with a traceback and leaving them orphaned.
* :func:`wait_all` reaps several children (``link``), sleeping in ``poll()`` on their pidfds.

stdin and stdout are left in blocking mode on purpose: their open file descriptions are
shared with the shell (and with the child, which inherits stdout), so switching them to
non-blocking would leak into other processes. ``poll()`` says when they are ready; one
``os.read`` then does not wait, and one ``os.write`` waits at most until the reader of
stdout makes room for the chunk (the other direction is only delayed meanwhile: nothing
we do is needed for that reader to progress). Our own end of the socket is ours alone and
is switched to non-blocking. Regular files work too: ``poll()`` reports them always ready
(``epoll`` would refuse them, which is why this module does not use ``selectors``' default).
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import socket
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Iterable
from types import FrameType, TracebackType

from ._codec import DEFAULT_MAX_MESSAGE_SIZE, StreamDecoder, encode
from ._errors import ChannelClosed, MessageTooLarge, ProtocolError

__all__ = [
    "FORWARDED_SIGNALS",
    "ChildWatch",
    "RelayError",
    "SignalForwarder",
    "exit_status",
    "relay",
    "wait_all",
]

_CHUNK = 256 * 1024
# One stdin read becomes one packet on SOCK_DGRAM/SOCK_SEQPACKET without --frames; 64 KiB fits
# under Linux's default socket buffer (212,992 bytes), the ceiling of a unix packet.
_PACKET_CHUNK = 64 * 1024
MAX_FRAME = DEFAULT_MAX_MESSAGE_SIZE
_MSG_NOSIGNAL: int = getattr(socket, "MSG_NOSIGNAL", 0)
# macOS poll() does not work on terminals; select() does. Linux poll() works on everything.
_USE_POLL = sys.platform.startswith("linux") and hasattr(select, "poll")

FORWARDED_SIGNALS: tuple[signal.Signals, ...] = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
)
# Requests to terminate: after forwarding one, --kill-after starts counting.
_TERMINATING = (signal.SIGTERM, signal.SIGHUP)


class RelayError(Exception):
    """The relay had to stop early; ``str()`` is a one-line message for the user."""


def exit_status(returncode: int) -> int:
    """Return the shell's view of a ``Popen.returncode``: 128+N for death by signal N."""
    return 128 - returncode if returncode < 0 else returncode


class ChildWatch:
    """Watch one child process: has it exited? Signal it without a pid-reuse race.

    Uses a pidfd (Linux 5.3+) when it can: readable once the child has exited, still valid
    until we close it, and ``pidfd_send_signal`` never hits a recycled pid. Elsewhere it
    falls back to ``Popen.poll()`` (the relay then wakes every 50 ms to ask).

    The watch owns its pidfd and closes it in :meth:`wait`; the ``Popen`` stays the
    caller's. Only :meth:`wait` reaps the child.
    """

    def __init__(self, process: subprocess.Popen[bytes], *, group: bool = False) -> None:
        self.process = process
        self.group = group  # the child leads a process group: signal the whole group
        self._pidfd = -1
        pidfd_open = getattr(os, "pidfd_open", None)
        if pidfd_open is not None:
            with contextlib.suppress(OSError):  # ENOSYS on old kernels, EPERM in sandboxes
                self._pidfd = pidfd_open(process.pid)

    def fileno(self) -> int | None:
        """The pidfd to poll for readability (= exited), or None without pidfds."""
        return self._pidfd if self._pidfd >= 0 else None

    def exited(self) -> bool:
        """True once the child has exited (it may still be unreaped)."""
        if self.process.returncode is not None:
            return True
        if self._pidfd >= 0:
            return bool(_wait_ready([self._pidfd], [], 0)[0])
        return self.process.poll() is not None

    def send_signal(self, signum: int) -> None:
        """Send *signum* to the child (its whole group, if it leads one) unless it has been
        reaped; never raises. (Until we reap it, its pid, and so its group id, cannot be
        reused.)"""
        if self.process.returncode is not None:
            return
        with contextlib.suppress(OSError):
            if self.group:
                os.killpg(self.process.pid, signum)
            elif self._pidfd >= 0:
                signal.pidfd_send_signal(self._pidfd, signum)
            else:
                self.process.send_signal(signum)

    def wait(self) -> int:
        """Reap the child (blocking), close the pidfd, return the exit status (128+N)."""
        returncode = self.process.wait()
        self.close()
        return exit_status(returncode)

    def close(self) -> None:
        """Close the pidfd (idempotent); does not touch the child."""
        fd, self._pidfd = self._pidfd, -1
        if fd >= 0:
            os.close(fd)


class SignalForwarder:
    """Context manager: while active, SIGINT/SIGTERM/SIGHUP/SIGQUIT go to the watched children.

    This process does not die of them (no ``KeyboardInterrupt`` traceback, no orphans): it
    keeps relaying until the children exit and then exits with their status, e.g. 130
    after Ctrl-C killed the child. A signal that arrives before any child is watched is
    remembered in :attr:`received` and sent to children as they are added. Signals this
    process was started with ignored (``nohup``, background jobs) stay ignored. Outside the
    main thread (where Python cannot install handlers) it does nothing.

    The children are meant to run in process groups of their own (``ChildWatch(group=
    True)``): then a terminal's Ctrl-C reaches this process only, and each child's group
    gets it exactly once, from here. Ctrl-Z (SIGTSTP) stops the children's groups and then
    this process; when the shell continues it (SIGCONT), the children continue too.

    *kill_after*: seconds after a forwarded SIGTERM or SIGHUP (a request to terminate)
    after which children still running get SIGKILL, as ``timeout -k`` does; ``None``
    waits for ever. The timer runs in a thread, so it fires while this process waits.
    """

    def __init__(
        self,
        signals: Iterable[signal.Signals] = FORWARDED_SIGNALS,
        *,
        kill_after: float | None = None,
    ) -> None:
        self._signals = tuple(signals)
        self._previous: dict[signal.Signals, signal._HANDLER] = {}
        self._children: list[ChildWatch] = []
        self._kill_after = kill_after
        self._timer: threading.Timer | None = None
        self.received: list[int] = []

    def add(self, child: ChildWatch) -> None:
        """Forward signals to *child* from now on (and any already received)."""
        self._children.append(child)
        for signum in self.received:
            child.send_signal(signum)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)
        for child in self._children:
            child.send_signal(signum)
        if signum in _TERMINATING and self._kill_after is not None and self._timer is None:
            self._timer = threading.Timer(self._kill_after, self._kill)
            self._timer.daemon = True
            self._timer.start()

    def _kill(self) -> None:
        for child in list(self._children):
            child.send_signal(signal.SIGKILL)

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        for child in self._children:
            child.send_signal(signal.SIGTSTP)
        os.kill(os.getpid(), signal.SIGSTOP)  # returns once the shell continues us
        for child in self._children:
            child.send_signal(signal.SIGCONT)

    def __enter__(self) -> SignalForwarder:
        handlers = {signum: self._handle for signum in self._signals}
        if hasattr(signal, "SIGTSTP"):
            handlers[signal.SIGTSTP] = self._stop
        for signum, handler in handlers.items():
            try:
                previous = signal.getsignal(signum)
                if previous == signal.SIG_IGN:
                    continue
                signal.signal(signum, handler)
            except ValueError:  # not the main thread
                continue
            self._previous[signum] = previous
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()


def wait_all(watches: list[ChildWatch]) -> list[int]:
    """Wait until every child has exited and reap them all.

    Returns the exit statuses (128+N for death by signal N) in the order of *watches*.
    (Not in the order they exited: when one child's exit makes the other exit, both are
    often gone by the time we look, so that order cannot be told reliably.)
    """
    statuses: dict[int, int] = {}
    while len(statuses) < len(watches):
        for index, watch in enumerate(watches):
            if index not in statuses and watch.exited():
                statuses[index] = watch.wait()
        pending = [watch for index, watch in enumerate(watches) if index not in statuses]
        if pending:
            fds = [fd for fd in (watch.fileno() for watch in pending) if fd is not None]
            _wait_ready(fds, [], None if len(fds) == len(pending) else 0.05)
    return [statuses[index] for index in range(len(watches))]


def _wait_ready(
    reads: list[int], writes: list[int], timeout: float | None
) -> tuple[set[int], set[int]]:
    """Wait until one of *reads* is readable or one of *writes* is writable.

    Hang-ups and errors count as ready, so that the next read or write reports them.
    Retries on EINTR by itself (PEP 475), after any signal handler has run.
    """
    if not _USE_POLL:
        r, w, x = select.select(reads, writes, [], timeout)
        return set(r) | (set(x) & set(reads)), set(w)
    poller = select.poll()
    masks: dict[int, int] = {}
    for fd in reads:
        masks[fd] = masks.get(fd, 0) | select.POLLIN
    for fd in writes:
        masks[fd] = masks.get(fd, 0) | select.POLLOUT
    for fd, mask in masks.items():
        poller.register(fd, mask)
    trouble = select.POLLHUP | select.POLLERR | select.POLLNVAL
    ready = poller.poll(None if timeout is None else timeout * 1000)
    readable = {fd for fd, ev in ready if ev & (select.POLLIN | trouble) and fd in reads}
    writable = {fd for fd, ev in ready if ev & (select.POLLOUT | trouble) and fd in writes}
    return readable, writable


class _Relay:
    """State of one relay; see :func:`relay`."""

    def __init__(
        self,
        sock: socket.socket,
        child: ChildWatch,
        *,
        frames: bool,
        stdin_fd: int,
        stdout_fd: int,
        end: bytes = b"\n",
    ) -> None:
        self.sock = sock
        self.end = end  # --frames: what ends a message on stdin and stdout
        self.fd = sock.fileno()
        self.child = child
        self.frames = frames
        self.stream = sock.type == socket.SOCK_STREAM
        self.sock_has_eof = sock.type != socket.SOCK_DGRAM
        self.stdin_fd = stdin_fd
        self.stdout_fd = stdout_fd
        # stdin -> socket. For packets, each item is one packet (sent whole or not at all).
        self.stdin_open = True
        self.sock_writable = True
        self.to_sock: deque[memoryview] = deque()
        self.lines = bytearray()  # --frames: the unfinished last line of stdin
        # socket -> stdout. The receive buffer is reused: no read until it is written out.
        self.sock_readable = True
        self.stdout_open = True
        self.to_out: deque[memoryview] = deque()
        self.buffer = bytearray(_CHUNK)
        # --frames on SOCK_STREAM: the Channel's own sans-IO decoder (no second copy of
        # the framing here); it refuses an absurd declared length before allocating.
        self.decoder = StreamDecoder() if frames and self.stream else None

    # -- stdin -> socket ------------------------------------------------------------------

    def read_stdin(self) -> None:
        size = _CHUNK if self.stream or self.frames else _PACKET_CHUNK
        try:
            data = os.read(self.stdin_fd, size)
        except BlockingIOError:
            return
        except OSError:  # EBADF (closed stdin), EIO (lost terminal): nothing more to read
            data = b""
        if not data:
            self.stdin_open = False
            if self.frames and self.lines:
                self._queue_message(bytes(self.lines))
                self.lines.clear()
            return
        if not self.frames:
            self.to_sock.append(memoryview(data))
            return
        self.lines += data
        if self.end in data:  # only then is there a line to send (and to split for)
            *complete, rest = self.lines.split(self.end)
            for line in complete:
                self._queue_message(line)
            self.lines[:] = rest
        if len(self.lines) > MAX_FRAME:
            raise RelayError(f"an input line is longer than {MAX_FRAME} bytes")

    def _queue_message(self, payload: bytes | bytearray) -> None:
        if not self.stream:
            self.to_sock.append(memoryview(bytes(payload)))
            return
        try:
            buffers = encode(bytes(payload))
        except MessageTooLarge as exc:
            raise RelayError(f"an input line is too long: {exc}") from exc
        self.to_sock.extend(memoryview(buffer).cast("B") for buffer in buffers)

    def write_sock(self) -> None:
        while self.to_sock:
            data = self.to_sock[0]
            try:
                sent = self.sock.send(data, _MSG_NOSIGNAL)
            except BlockingIOError:
                return
            except (BrokenPipeError, ConnectionResetError, ConnectionRefusedError):
                self._stop_writing_sock()  # the child closed its end: stop feeding it
                return
            except OSError as exc:
                if exc.errno == errno.EMSGSIZE:
                    raise RelayError(
                        f"a message of {len(data)} bytes is too large for one packet"
                    ) from exc
                raise
            if sent < len(data):  # only on SOCK_STREAM: packets go whole or not at all
                self.to_sock[0] = data[sent:]
            else:
                self.to_sock.popleft()

    def _stop_writing_sock(self) -> None:
        self.sock_writable = False
        self.stdin_open = False
        self.to_sock.clear()

    def maybe_half_close(self) -> None:
        """Once stdin has ended and all of it is sent, tell the child: SHUT_WR."""
        if self.sock_writable and not self.stdin_open and not self.to_sock:
            self.sock_writable = False
            # On SOCK_DGRAM the peer is not told (the kernel has no EOF for datagrams).
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_WR)

    # -- socket -> stdout -----------------------------------------------------------------

    def read_sock(self) -> bool:
        """Receive once; return False if nothing was there (EAGAIN)."""
        if self.decoder is not None:
            return self._read_frames(self.decoder)
        view = memoryview(self.buffer)
        try:
            if self.stream:
                n = self.sock.recv_into(view)
                flags = 0
            else:
                n, _, flags, _ = self.sock.recvmsg_into([view])
        except BlockingIOError:
            return False
        except ConnectionResetError:
            self.sock_readable = False
            return True
        if flags & socket.MSG_TRUNC:
            raise RelayError(f"the child sent a packet larger than {len(view)} bytes")
        if n == 0 and self.sock_has_eof:
            # EOF. (An empty SOCK_SEQPACKET packet reads the same way: the kernel cannot
            # tell them apart.) An empty datagram is a message, printed as an empty line.
            self.sock_readable = False
        elif self.frames:
            self.to_out.append(memoryview(bytes(view[:n]) + self.end))
        elif n:
            self.to_out.append(view[:n])
        return True

    def _read_frames(self, decoder: StreamDecoder) -> bool:
        try:
            n = self.sock.recv_into(decoder.get_buffer())
        except BlockingIOError:
            return False
        except ConnectionResetError:
            n = 0
        decoder.buffer_updated(n)
        try:
            while isinstance(message := decoder.next_message(), bytes):
                self.to_out.append(memoryview(message + self.end))
        except ChannelClosed:
            self.sock_readable = False
        except ProtocolError as exc:
            raise RelayError(f"the child broke the framing: {exc}") from exc
        return True

    def write_stdout(self) -> None:
        while self.to_out:
            data = self.to_out[0]
            try:
                written = os.write(self.stdout_fd, data)
            except BlockingIOError:
                return
            except OSError:  # EPIPE: nobody reads our output any more
                self._stop_reading_sock()
                return
            if written < len(data):
                self.to_out[0] = data[written:]
            else:
                self.to_out.popleft()

    def _stop_reading_sock(self) -> None:
        """Like a pipeline: the child dies of SIGPIPE (or, ignoring it, gets EPIPE).

        A pipe's writer gets SIGPIPE when it writes after the reader left, even if it was
        blocked in that write. A socket's writer does not when it was blocked (or just
        woken): Linux then returns EPIPE alone, and ``yes`` prints "Broken pipe" and exits
        1 where ``yes | head -1`` is silent with 141. Our stdout only ever breaks while we
        write what the child wrote, so the child is a writer: it is sent SIGPIPE itself,
        then the socket is shut for reading (for a child that ignores SIGPIPE: EPIPE).
        """
        self.stdout_open = False
        self.sock_readable = False
        self.to_out.clear()
        self.child.send_signal(signal.SIGPIPE)
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RD)

    def flush_stdout(self) -> None:
        """Write out everything queued, waiting for stdout as needed."""
        while self.to_out and self.stdout_open:
            self.write_stdout()
            if self.to_out and self.stdout_open:
                _wait_ready([], [self.stdout_fd], None)

    # -- the loop -------------------------------------------------------------------------

    def run(self) -> None:
        pidfd = self.child.fileno()
        child_done = False
        while True:
            self.maybe_half_close()
            if child_done or (pidfd is None and self.child.exited()):
                self.drain()
                return
            # When stdout broke, keep our end open until the child exits, so that its next
            # write fails with EPIPE (as in a pipeline), not with ECONNRESET from our closing
            # a socket with unread data. (A datagram sender is told nothing by SHUT_RD; it
            # learns of our close, by ECONNREFUSED: so return at once for those.)
            idle = not (self.stdin_open or self.to_sock or self.sock_readable or self.to_out)
            if idle and (self.stdout_open or not self.sock_has_eof):
                return  # both directions done; the caller waits for the child
            reads, writes = [], []
            if self.stdin_open and not self.to_sock:
                reads.append(self.stdin_fd)
            if self.to_sock:
                writes.append(self.fd)
            if self.sock_readable and not self.to_out:
                reads.append(self.fd)
            if self.to_out:
                writes.append(self.stdout_fd)
            if pidfd is not None:
                reads.append(pidfd)
            readable, writable = _wait_ready(reads, writes, None if pidfd is not None else 0.05)
            child_done = pidfd in readable
            if self.stdout_fd in writable:
                self.write_stdout()
            if self.fd in writable:
                self.write_sock()
            if self.fd in readable and self.sock_readable and not self.to_out:
                self.read_sock()
                self.write_stdout()  # usually ready: saves a poll() round trip
            if self.stdin_fd in readable and self.stdin_open and not self.to_sock:
                self.read_stdin()
                self.write_sock()

    def drain(self) -> None:
        """The child has exited: everything it wrote is queued in our socket. Deliver it.

        The socket is shut for reading first: a grandchild still holding the child's end
        can add nothing more (its writes fail with EPIPE, as when a pipe's reader left), so
        this ends however slowly stdout drains.
        """
        self.stdin_open = False
        self.to_sock.clear()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RD)
        self.flush_stdout()
        while self.sock_readable and self.stdout_open and self.read_sock():
            self.flush_stdout()

    def check_complete(self) -> None:
        if self.decoder is not None and self.decoder.buffered() and self.stdout_open:
            raise RelayError(
                f"the child's output ended in the middle of a message ({self.decoder.buffered()} "
                "bytes of it received)"
            )


def relay(
    sock: socket.socket,
    child: ChildWatch,
    *,
    frames: bool = False,
    stdin_fd: int = 0,
    stdout_fd: int = 1,
    end: bytes = b"\n",
) -> None:
    """Relay *stdin_fd* to *sock* and *sock* to *stdout_fd* until there is nothing left.

    Ends when the child has exited (after delivering everything it wrote: it is all
    in our receive queue by then), or earlier when both directions are done: stdin
    ended (and *sock* was half-closed with ``SHUT_WR``) and the child closed its end.
    The caller then reaps the child. Output that grandchildren write to the socket after
    the child has exited is not waited for.

    If stdout is closed by its reader, the socket is shut for reading, so the child's next
    write fails with EPIPE, as in a shell pipeline. If the child closes its end, stdin is
    no longer read.

    With *frames*, each stdin line (without its newline) is sent as one message, and each
    message received is written as one line. *end* is what ends a line, in and out: a
    newline by default, ``b"\\0"`` for messages that may contain newlines. On SOCK_STREAM
    a message is a 4-byte big-endian length and the payload; on SOCK_DGRAM/SOCK_SEQPACKET,
    one packet.

    *sock* stays the caller's; it is switched to non-blocking mode.

    Raises:
        RelayError: the child broke the framing (a length over the limit, or its output
            ended inside a message), or a message does not fit in a packet.
    """
    sock.setblocking(False)
    state = _Relay(sock, child, frames=frames, stdin_fd=stdin_fd, stdout_fd=stdout_fd, end=end)
    state.run()
    state.check_complete()
