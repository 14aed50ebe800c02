"""Helpers of the thread, signal, fork and conformance tests: bounded threads,
"is this thread asleep in the kernel" (read from /proc, not guessed with a sleep),
and a way to free a thread stuck in a system call so that a failing test fails
instead of hanging."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

# Kernel wait channels that mean "waiting for the GIL or a lock" or "sleeping on
# a timer", not "inside a socket call".
_NOT_IN_IO = ("futex", "nanosleep", "hrtimer")


class Worker:
    """Run *target* in a daemon thread; remember its result or its exception.

    A daemon thread, so that a call that never returns (the defect under test)
    cannot keep the test runner alive; :meth:`join` fails the test with *name*
    instead of hanging.
    """

    def __init__(self, target: Callable[[], Any], name: str = "worker") -> None:
        self.name = name
        self.result: Any = None
        self.error: BaseException | None = None
        self.finished_at: float | None = None
        self._target = target
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.result = self._target()
        except BaseException as exc:
            self.error = exc
        finally:
            self.finished_at = time.monotonic()

    @property
    def done(self) -> bool:
        return not self.thread.is_alive()

    def wait(self, timeout: float) -> bool:
        """Wait up to *timeout* seconds; return whether the thread has finished."""
        self.thread.join(timeout)
        return not self.thread.is_alive()

    def join(self, timeout: float = 30) -> Any:
        """The thread's result; re-raise its exception; fail if it still runs
        after *timeout* seconds."""
        if not self.wait(timeout):
            pytest.fail(f"{self.name} did not finish within {timeout} s (hang)")
        if self.error is not None:
            raise self.error
        return self.result


def _asleep(task: Path) -> bool:
    try:
        state = (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
        wchan = (task / "wchan").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state == "S" and wchan not in ("", "0") and not any(w in wchan for w in _NOT_IN_IO)


def asleep_in_kernel(thread: threading.Thread) -> bool:
    """True if *thread* sleeps in a system call other than a lock or timer wait
    (a recv/send/poll on a socket: what "blocked in recv" means)."""
    return _asleep(Path(f"/proc/self/task/{thread.native_id}"))


def process_asleep(pid: int) -> bool:
    """As :func:`asleep_in_kernel`, for the main thread of process *pid*."""
    return _asleep(Path(f"/proc/{pid}/task/{pid}"))


def wait_blocked(worker: Worker, timeout: float = 10) -> None:
    """Return once *worker*'s thread is asleep in a socket system call, seen twice
    in a row 5 ms apart (a spinning reader passes through short sleeps)."""
    deadline = time.monotonic() + timeout
    seen = 0
    while time.monotonic() < deadline:
        if worker.done:
            if worker.error is not None:
                raise worker.error
            pytest.fail(f"{worker.name} returned {worker.result!r} instead of blocking")
        seen = seen + 1 if asleep_in_kernel(worker.thread) else 0
        if seen >= 3:
            return
        time.sleep(0.005)  # polling a condition, with a deadline
    pytest.fail(f"{worker.name} never blocked in a system call within {timeout} s")


def wait_done_or_on_lock(worker: Worker, timeout: float = 10) -> None:
    """Return once *worker* has finished or waits on a lock (a futex), seen three
    times in a row 5 ms apart (a wait for the GIL is shorter than that)."""
    task = Path(f"/proc/self/task/{worker.thread.native_id}")
    deadline = time.monotonic() + timeout
    seen = 0
    while time.monotonic() < deadline:
        if worker.done:
            return
        try:
            on_lock = "futex" in (task / "wchan").read_text()
        except (FileNotFoundError, ProcessLookupError):
            on_lock = False
        seen = seen + 1 if on_lock else 0
        if seen >= 3:
            return
        time.sleep(0.005)  # polling a condition, with a deadline
    pytest.fail(f"{worker.name} neither finished nor waited on a lock within {timeout} s")


def drain_socket(fd: int, seconds: float = 5, until: Callable[[], bool] | None = None) -> int:
    """Read and discard what arrives on *fd* (a dup is used) for up to *seconds*,
    until end of file or until *until()* is true; return the bytes read. Frees a
    sender stuck on a full socket."""
    sock = socket.socket(fileno=os.dup(fd))
    total = 0
    try:
        sock.settimeout(0.05)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not (until is not None and until()):
            try:
                data = sock.recv(1 << 20)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            total += len(data)
    finally:
        sock.close()
    return total


def shut_down(fd: int) -> None:
    """``shutdown(SHUT_RDWR)`` the socket behind *fd* (through a dup): wakes every
    thread blocked in a stream or seqpacket call on it, whatever the channel
    does. Used only to clean up after a failed assertion."""
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()


def queued_bytes(fd: int) -> int:
    """Bytes waiting to be read on socket *fd* (``SIOCINQ``/``FIONREAD``)."""
    import fcntl
    import struct
    import termios

    raw = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
    return int(struct.unpack("i", raw)[0])
