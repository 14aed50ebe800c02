"""``spawn`` / ``spawn_async``: start a child with its end of a socketpair at a chosen fd.

The parent keeps one end (``Child.socket``); the child finds the other at exactly the
descriptor number it was promised (``fd=3`` by default, or its stdin and stdout with
``fd="stdio"``) and learns that number from ``SOCKETPAIR_FD`` in its environment.

How the descriptor gets to its number
-------------------------------------
This is the whole difficulty, and the reasoning behind the choice is here, at the spot.

``subprocess.Popen`` gives us everything but one thing: its ``_posixsubprocess``
fork/exec runs no Python code in the child (safe while other threads run), closes *every*
other descriptor (``close_fds=True``, even ones somebody made inheritable), reports a
failed ``exec`` as ``FileNotFoundError``/``PermissionError`` in the parent, supports
``cwd``/``env``/pipes, and is what ``asyncio``'s subprocess transport calls
(``AsyncChild.process`` must be an ``asyncio.subprocess.Process``). Its one gap:
``pass_fds`` keeps a descriptor at the number it has *in the parent*, and the only
``dup2`` it performs in the child is onto 0, 1 and 2.

Rejected, measured or read:

* ``preexec_fn=lambda: os.dup2(...)``: runs Python between fork and exec, documented as
  unsafe with threads (it can deadlock), and disables ``vfork``.
* ``os.posix_spawn`` with ``POSIX_SPAWN_DUP2``: python-free, but ``os`` (3.10-3.12) has
  no ``closefrom`` action (glibc 2.34's ``addclosefrom_np`` is not exposed), so closing the
  other inheritable descriptors means one ``POSIX_SPAWN_CLOSE`` per number listed from
  ``/proc/self/fd``, which races with other threads; it has no ``cwd`` (``addchdir_np``
  is not exposed either); and it yields a pid, not a ``Popen`` (asyncio's transport
  builds its own ``Popen`` and cannot adopt one).
* ``/bin/sh -c 'exec 3<&7 "$@"'``: the shell turns a failed ``exec`` into exit status
  126/127 (no exception, no errno) and runs ``ENOEXEC`` files as shell scripts.
* ``dup2()`` onto the number in the parent: the number may belong to another thread's
  file; ``dup2`` would silently close it under them.

So the planner (:func:`_plan`, shared by ``spawn`` and ``spawn_async``) picks one of two:

1. **Direct** (no extra exec): for every target number ``T >= 3`` the parent makes its
   own descriptor sit at ``T`` *without* taking ``T`` from anyone, with
   ``fcntl(src, F_DUPFD_CLOEXEC, T)``: that returns the lowest *free* number ``>= T``
   atomically. If it is ``T`` we now own ``T`` (close-on-exec, so a concurrent spawn in
   another thread does not inherit it) and ``Popen(pass_fds=[T])`` hands it over. When the
   source already *is* ``T`` nothing is duplicated. Targets 0-2 go through
   ``stdin=``/``stdout=``. A module lock around claim + ``Popen`` keeps our own threads
   from stealing each other's numbers; the claimed copies are closed once ``Popen``
   returns.
2. **Exec helper** (a number is taken by a descriptor that is not the one to put there, the
   ``fd_map`` sources form a cycle such as ``{3: fd4, 4: fd3}``, or the caller asked for
   a step between fork and exec: the parent-death signal): ``Popen`` runs
   ``_exec_helper``, a ~150-line C program compiled when the package is installed, with the
   sources at their own numbers. It moves every source above all targets, ``dup2``s each
   one onto its target, sets what was asked (``PR_SET_PDEATHSIG``), and ``execve``s the
   program over the same candidates ``Popen`` computes (first error other than
   ENOENT/ENOTDIR wins; never a shell fallback on ENOEXEC). A failure is written as
   ``E:<errno>`` to a close-on-exec report pipe; the parent reads it to end-of-file (EOF
   alone means the exec succeeded) and raises the ``OSError(errno, strerror, program)``
   ``Popen`` would. The pid is the program's pid after the exec. Measured with
   ``unix-socketpair bench --case spawn`` on a loaded 2-core VM: 1.8x to 2.3x a plain
   ``Popen`` of ``true`` (the Python trampoline it replaces: ~18x). The floor is the
   second ``exec`` itself: a static helper that does nothing costs ~0.8x a ``Popen`` of
   ``true`` (built statically when the platform allows: cheaper than a dynamic one).

   Only when the helper could not be built (no C compiler at install time) the same
   argv goes to ``python -I -S -c`` :data:`_TRAMPOLINE`, which does the same in Python
   (~15-20 ms: an interpreter start).

Either way the child inherits nothing but 0-2, its socket and ``fd_map`` (``close_fds``),
and the parent's copy of the child's end is closed before ``spawn`` returns or raises.

Exception safety
----------------
Every step releases what it took, on every path, the way trio's ``_open_process`` does
it: one undo list (:class:`_Undo`, a lighter ``ExitStack``) that always runs (the child's
end, claimed numbers, the report pipe) and one that runs only on failure (the parent's
end, the started process: killed and reaped). A Python signal handler runs between two
bytecodes of the main thread and may raise there; so in the main thread ``spawn`` defers
the Python handlers (:class:`_Signals`) while it creates and registers descriptors and
runs ``Popen``, and runs any that came due at the end, inside the failure cleanup's
reach. ``spawn_async`` lets them run while it awaits (the event loop must). The ``Popen``
object registers itself before it forks, so a child started by a ``Popen`` that is then
interrupted is still killed and reaped.
"""

from __future__ import annotations

import _signal as _c_signal  # type: ignore[import-not-found]
import contextlib
import fcntl
import os
import resource
import select
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import (
    IO,
    TYPE_CHECKING,
    Any,
    ClassVar,
    Generic,
    Literal,
    Protocol,
    TypeVar,
    cast,
    overload,
)

from ._ancillary import enable_passcred
from ._pair import SOCK_STREAM, check_type, socketpair

if TYPE_CHECKING:  # imported on first use of ``.channel``
    import asyncio

    from ._aio import AsyncChannel
    from ._aionode import AsyncNodeChannel
    from ._channel import Channel
    from ._nodechannel import NodeChannel

__all__ = ["ENV_VAR", "AsyncChild", "Child", "spawn", "spawn_async", "spawn_on"]

#: The environment variable that tells the child where its socket is: a number or ``stdio``.
ENV_VAR = "SOCKETPAIR_FD"

_Arg = str | bytes | os.PathLike[str] | os.PathLike[bytes]
# What subprocess accepts for stdin/stdout/stderr: None, PIPE, DEVNULL, an fd, a file object.
_Stdio = int | IO[Any] | None


class _HasFileno(Protocol):
    def fileno(self) -> int: ...


# Serialises claim + Popen between our own spawning threads (see the module docstring).
_LOCK = threading.Lock()

#: The exec helper compiled at install time (see the module docstring); may be absent.
HELPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_exec_helper")
_HELPER_PROTOCOL = "usp1"

# The Python fallback of the exec helper: same argv, same report (see the module docstring).
_TRAMPOLINE = r"""
import os, sys
report = int(sys.argv[2])
def fail(kind, number):
    os.write(report, b"%c:%d" % (kind, number))
    os._exit(255)
def main():
    global report
    import _signal, errno, fcntl
    a = [os.fsencode(x) for x in sys.argv[1:]]
    os.set_inheritable(report, False)
    parent, deathsig = int(a[2]), int(a[3])
    if deathsig:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(1, deathsig, 0, 0, 0) != 0:  # PR_SET_PDEATHSIG
            fail(70, ctypes.get_errno())
        if os.getppid() != parent:
            os._exit(128 + deathsig)
    if a[4] == b"1":
        os.environb[b"LISTEN_PID"] = b"%d" % os.getpid()
    moves = [] if a[5] == b"-" else [tuple(map(int, m.split(b":"))) for m in a[5].split(b",")]
    program, argv = a[6], a[7:] or [a[6]]
    if moves:
        sources = {s for s, _ in moves}
        targets = {t for _, t in moves}
        high = max(sources | targets | {report}) + 1
        moved = {s: fcntl.fcntl(s, fcntl.F_DUPFD_CLOEXEC, high) for s in sources}
        new_report = fcntl.fcntl(report, fcntl.F_DUPFD_CLOEXEC, high)
        os.close(report)
        report = new_report
        for fd in sources - targets:
            os.close(fd)
        for s, t in moves:
            os.dup2(moved[s], t)
        for fd in moved.values():
            os.close(fd)
    for name in ("SIGPIPE", "SIGXFZ", "SIGXFSZ"):
        if hasattr(_signal, name):
            _signal.signal(getattr(_signal, name), _signal.SIG_DFL)
    env = os.environb
    if b"/" in program:
        paths = [program]
    else:
        paths = [os.path.join(os.fsencode(d), program) for d in os.get_exec_path(env)]
    first, last = 0, errno.ENOENT
    for path in paths:
        try:
            os.execve(path, argv if argv[0] else [path], env)
        except OSError as e:
            last = e.errno
            if not first and last not in (errno.ENOENT, errno.ENOTDIR):
                first = last
    fail(69, first or last)
try:
    main()
except OSError as e:
    fail(70, e.errno or 0)
"""

_helper_ok: bool | None = None


def _helper_available() -> bool:
    global _helper_ok
    if _helper_ok is None:
        _helper_ok = os.access(HELPER, os.X_OK)
    return _helper_ok


# SIGKILL and SIGSTOP cannot have handlers.
_UNCATCHABLE = {signal.SIGKILL, signal.SIGSTOP}


class _Signals:
    """Defer Python signal handlers while descriptors are created and registered.

    A Python signal handler runs in the main thread between two bytecodes and may raise
    there (``KeyboardInterrupt``, a timer's exception): between creating a descriptor and
    registering it for cleanup, that would leak it. Blocking the signals
    (``pthread_sigmask``) is not enough: the kernel then delivers a process-directed
    signal to another thread (asyncio's child watcher, any worker), whose C handler marks
    it due, and the main thread runs the Python handler at its next check anyway. So
    :meth:`hold` swaps every Python-level handler for one that only notes the signal, and
    :meth:`release` puts them back and runs the noted ones, there (where the caller's
    cleanup still reaches). The C handlers are untouched: ``set_wakeup_fd`` (asyncio's
    ``add_signal_handler``) still sees every signal, once. Only the main thread runs
    Python handlers and may change them; elsewhere this does nothing.
    """

    _NUMBERS: ClassVar[tuple[int, ...]] = tuple(
        int(n) for n in signal.valid_signals() if n not in _UNCATCHABLE
    )

    def __init__(self) -> None:
        self._main = threading.current_thread() is threading.main_thread()
        self._saved: dict[int, Any] | None = None
        self._due: list[int] = []

    def _note(self, signum: int, frame: FrameType | None) -> None:
        if signum not in self._due:  # like the kernel: one pending signal of a kind
            self._due.append(signum)

    def hold(self) -> None:
        """Defer the Python handlers (idempotent).

        A handler may still run (and raise) while they are being swapped; the swap is
        then completed, in a ``finally``, before the exception leaves. (Once a signal's
        handler is swapped it only notes: each kind can interrupt the swap once.)
        """
        if not self._main or self._saved is not None:
            return
        saved: dict[int, Any] = {}
        self._saved = saved  # first: release() restores exactly what was swapped
        swapped = False
        try:
            self._swap(saved)
            swapped = True
        finally:
            if not swapped:  # interrupted: finish it (a second pass is harmless)
                self._swap(saved)

    def _swap(self, saved: dict[int, Any]) -> None:
        note = self._note
        for signum in self._NUMBERS:
            handler = _c_signal.getsignal(signum)
            if callable(handler) and handler != note:
                saved[signum] = handler
                _c_signal.signal(signum, note)

    def release(self) -> None:
        """Restore the handlers and run those whose signal came meanwhile (they may raise).

        If one raises, the signals still due are kept for the next :meth:`release`.
        """
        saved, self._saved = self._saved, None
        if saved is None:
            return
        try:
            for signum, handler in saved.items():
                _c_signal.signal(signum, handler)
        finally:  # all of them, even if a restored handler ran and raised meanwhile
            for signum, handler in saved.items():
                _c_signal.signal(signum, handler)
        while self._due:
            signum = self._due.pop(0)
            saved[signum](signum, sys._getframe(1))


class _Popen(subprocess.Popen[bytes]):
    """A ``Popen`` that appends itself to *started* before it forks.

    So the child of a ``Popen`` interrupted after the fork (its pid is set, but the
    object never reached us) is still found, killed and reaped by the failure cleanup.
    """

    def __init__(self, started: list[subprocess.Popen[bytes]], *args: Any, **kwargs: Any) -> None:
        started.append(self)
        super().__init__(*args, **kwargs)


def _reap_started(started: list[subprocess.Popen[bytes]]) -> None:
    """Failure cleanup: kill and reap any child a ``_Popen`` of ours started."""
    for process in started:
        if getattr(process, "pid", None) is None:
            continue  # interrupted before the fork
        if process.returncode is None:
            with contextlib.suppress(OSError):
                process.kill()
            process.wait()
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                stream.close()


# --------------------------------------------------------------------------- validation


def _check_args(args: Sequence[_Arg] | _Arg) -> list[_Arg]:
    if isinstance(args, (str, bytes, os.PathLike)):
        return [args]
    argv = list(args)
    if not argv:
        raise ValueError("spawn() args must name a program (got an empty sequence)")
    return argv


def _check_fd(fd: object) -> int | None:
    """Return the target number, or ``None`` for ``"stdio"``."""
    if fd == "stdio":
        return None
    if isinstance(fd, bool) or not isinstance(fd, int):
        raise TypeError(f"spawn() fd must be an int >= 0 or 'stdio', not {fd!r}")
    return _check_number(fd, "spawn() fd")


def _check_number(fd: int, what: str) -> int:
    if fd < 0:
        raise ValueError(f"{what} must be >= 0, not {fd}")
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if limit != resource.RLIM_INFINITY and fd >= limit:
        # The child inherits our limit: it could not hold a descriptor with that number.
        raise ValueError(f"{what} {fd} is not below the descriptor limit (RLIMIT_NOFILE {limit})")
    return fd


def _fileno(obj: int | _HasFileno, what: str) -> int:
    if isinstance(obj, bool):
        raise TypeError(f"{what} must be a descriptor or have fileno(), not bool")
    fd = obj if isinstance(obj, int) else obj.fileno()
    if not isinstance(fd, int) or fd < 0:
        raise ValueError(f"{what} must be a descriptor >= 0, not {fd!r}")
    try:
        fcntl.fcntl(fd, fcntl.F_GETFD)
    except OSError as exc:
        raise OSError(exc.errno, f"{what}: descriptor {fd} is not open") from exc
    return fd


def _check_fd_map(fd_map: Mapping[int, int | _HasFileno] | None, taken: set[int]) -> dict[int, int]:
    result: dict[int, int] = {}
    for target, source in (fd_map or {}).items():
        if isinstance(target, bool) or not isinstance(target, int):
            raise TypeError(f"fd_map keys must be descriptor numbers, not {target!r}")
        _check_number(target, "fd_map key")
        if target in taken:
            raise ValueError(f"fd_map[{target}] collides with the socket's own descriptor")
        result[target] = _fileno(source, f"fd_map[{target}]")
    return result


def _child_env(env: Mapping[str, str] | None, target: int | None) -> dict[bytes, bytes]:
    """The child's environment, as bytes (what ``Popen`` passes on without re-encoding).

    Copying ``os.environ`` decodes and re-encodes every variable: measured at a tenth of
    a ``Popen``'s cost for a typical environment; ``os.environb`` is copied as it is.
    Without *env*, the result is shared (:func:`_inherited_env`): never modify it.
    """
    number = b"stdio" if target is None else b"%d" % target
    if env is None:
        return _inherited_env(number)
    result = {os.fsencode(key): os.fsencode(value) for key, value in env.items()}
    result[_ENV_KEY] = number
    return result


_ENV_KEY = ENV_VAR.encode()
# How many child environments _inherited_env keeps (one per SOCKETPAIR_FD value).
_INHERITED_KEPT = 8
# The copy of os.environb the kept environments were made from, and those environments.
_inherited: tuple[dict[bytes, bytes], dict[bytes, dict[bytes, bytes]]] = ({}, {})


def _inherited_env(value: bytes) -> dict[bytes, bytes]:
    """``os.environb`` plus ``SOCKETPAIR_FD=value``: one dict, shared by every spawn while
    ``os.environ`` stays the same (the caller must not modify it).

    ``spawn_async`` keeps the environment it passes until its child has started: with a
    thousand children starting at once, a copy each (1.2 KiB) was freed among the
    children's long-lived objects and stayed in the parent's RSS as heap holes. Checking
    that the environment is unchanged compares ``os.environ``'s own dict with the copy
    (C-level, no allocation: 0.4 us against 20 us for a copy). Where that dict is not
    there (another implementation), every call copies. Thread-safe: a race only makes
    the same environment twice.
    """
    global _inherited
    data = getattr(os.environb, "_data", None)
    snapshot, made = _inherited
    if not isinstance(data, dict):  # no dict to compare with: a fresh copy
        snapshot, made = dict(os.environb), {}
    elif snapshot != data:
        snapshot, made = dict(data), {}
        _inherited = (snapshot, made)
    env = made.get(value)
    if env is None:
        env = dict(snapshot)
        env[_ENV_KEY] = value
        if len(made) >= _INHERITED_KEPT:
            made.clear()
        made[value] = env
    return env


def _placements(target: int | None, child_fd: int, extra: Mapping[int, int]) -> dict[int, int]:
    placements = dict(extra)
    for number in (0, 1) if target is None else (target,):
        placements[number] = child_fd
    return placements


# ----------------------------------------------------------------------------- planner


@dataclass
class _Launch:
    """The ``Popen`` arguments for one child (the one place they are listed).

    ``report`` is the read end of the exec helper's report pipe, or -1 on the direct path.
    The descriptors the plan creates are registered with the caller's ``always`` stack.
    """

    argv: list[_Arg]
    executable: str | None
    pass_fds: tuple[int, ...]
    env: dict[bytes, bytes]
    stdin: _Stdio
    stdout: _Stdio
    stderr: _Stdio
    cwd: _Arg | None
    temps: list[int]
    new_group: bool = False
    report: int = -1

    def popen_kwargs(self) -> dict[str, Any]:
        return {
            "executable": self.executable,
            "stdin": self.stdin,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "pass_fds": self.pass_fds,
            "close_fds": True,
            "env": self.env,
            "cwd": self.cwd,
            **_group_kwargs(self.new_group),
        }


def _group_kwargs(new_group: bool) -> dict[str, Any]:
    """Popen arguments that start the child in a process group of its own (or not).

    ``process_group=0`` exists from Python 3.11; 3.10 can only start a new session, which
    also detaches the child from the controlling terminal.
    """
    if not new_group:
        return {}
    if sys.version_info >= (3, 11):
        return {"process_group": 0}
    return {"start_new_session": True}


class _Undo:
    """Callbacks run last-registered first: what ``contextlib.ExitStack`` does for us,
    in a list of tuples.

    ``spawn_async`` holds two of these while it waits for its child to start. With a
    thousand children starting at once, two ``ExitStack``s (a 760-byte deque each, from
    malloc, and a closure per callback) were ~3.5 KiB per child that, freed once the child
    was up, stayed in the parent's RSS as heap holes among the children's long-lived
    objects; these lists are ~0.5 KiB.

    :meth:`close` (or :meth:`aclose`) runs every callback even if some raise; the last
    exception propagates, with the earlier ones as its ``__context__`` (as ``ExitStack``).
    A callback is taken off before it runs: callers run these with Python signal
    handlers deferred (:class:`_Signals`), so none is skipped. Not thread-safe (one
    spawn's own).
    """

    __slots__ = ("_calls",)

    def __init__(self) -> None:
        # (function, arguments, whether its result must be awaited)
        self._calls: list[tuple[Callable[..., Any], tuple[Any, ...], bool]] = []

    def callback(self, function: Callable[..., object], /, *args: Any) -> None:
        self._calls.append((function, args, False))

    def push_async_callback(
        self, function: Callable[..., Awaitable[object]], /, *args: Any
    ) -> None:
        self._calls.append((function, args, True))

    def __enter__(self) -> _Undo:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Run the callbacks (none may be async: see :meth:`aclose`)."""
        calls = self._calls
        while calls:
            function, args, _ = calls.pop()
            try:
                function(*args)
            except BaseException:
                self.close()
                raise

    async def aclose(self) -> None:
        """Run the callbacks, awaiting the async ones. Cancelled in one, it still runs
        the others, then the cancellation propagates."""
        calls = self._calls
        while calls:
            function, args, is_async = calls.pop()
            try:
                result = function(*args)
                if is_async:
                    await result
            except BaseException:
                await self.aclose()
                raise


def _close_all(fds: list[int]) -> None:
    """Close and forget every descriptor in *fds* (idempotent)."""
    while fds:
        os.close(fds.pop())


def _above_stdio(fd: int, temps: list[int]) -> int:
    """A close-on-exec duplicate of *fd* numbered 3 or more, added to *temps*."""
    copy = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    temps.append(copy)
    return copy


def _plan(req: _Request, placements: Mapping[int, int], temps: list[int], always: _Undo) -> _Launch:
    """Decide how the child gets each ``target -> parent fd`` of *placements* (see above).

    Borrows the sources (never closes them). Every descriptor it creates goes into
    ``launch.temps`` (to close once ``Popen`` returns; the caller registers that list for
    cleanup before calling), except the report pipe's read end, which *always* closes.
    """
    stdio = list(req.std)
    for number, name in enumerate(("stdin", "stdout", "stderr")):
        if number in placements:
            if stdio[number] is not None:
                raise ValueError(f"{name} is taken by the socket or fd_map; pass {name}=None")
            stdio[number] = placements[number]
    high = {t: s for t, s in sorted(placements.items()) if t >= 3}
    launch = _Launch(
        list(req.argv),
        None,
        tuple(high),
        req.env,
        stdio[0],
        stdio[1],
        stdio[2],
        req.cwd,
        temps,
        req.new_group,
    )
    if not (req.deathsig or req.listen):  # both need a step between fork and exec
        for target, source in high.items():
            if source == target:
                continue
            temps.append(fcntl.fcntl(source, fcntl.F_DUPFD_CLOEXEC, target))
            if temps[-1] != target:  # taken by someone else: the helper places it
                _close_all(temps)
                break
        else:
            return launch
    _plan_helper(launch, req, high, always)
    return launch


def _plan_helper(launch: _Launch, req: _Request, high: Mapping[int, int], always: _Undo) -> None:
    relocated: dict[int, int] = {}
    moves = []
    for target, source in high.items():
        if source <= 2:  # Popen's own dup2 onto 0-2 happens first and would clobber it
            if source not in relocated:
                relocated[source] = _above_stdio(source, launch.temps)
            source = relocated[source]
        moves.append(f"{source}:{target}")
    read_end, write_end = os.pipe()
    launch.temps.append(write_end)
    always.callback(os.close, read_end)
    if write_end <= 2:
        write_end = _above_stdio(write_end, launch.temps)
    launch.report = read_end
    if _helper_available():
        launch.executable = HELPER
        head: list[_Arg] = [HELPER]
    elif sys.executable:
        launch.executable = sys.executable
        head = [sys.executable, "-I", "-S", "-c", _TRAMPOLINE]
    else:
        raise RuntimeError("spawn() needs its exec helper or sys.executable for this placement")
    launch.argv = [
        *head,
        _HELPER_PROTOCOL,
        str(write_end),
        str(os.getpid()),
        str(req.deathsig),
        "1" if req.listen else "0",
        ",".join(moves) or "-",
        req.argv[0],
        *req.argv,
    ]
    sources = {int(m.split(":")[0]) for m in moves}
    launch.pass_fds = tuple(sorted(sources | {write_end}))


def _report_error(data: bytes, program: _Arg) -> BaseException:
    """Turn the helper's report into the exception ``Popen`` would have raised."""
    kind, _, detail = data.partition(b":")
    if kind in (b"E", b"F") and detail.isdigit():
        number = int(detail)
        if kind == b"E":
            return OSError(number, os.strerror(number), program)
        return OSError(number, os.strerror(number))
    return subprocess.SubprocessError(f"spawn() could not start {program!r}: {data!r}")


def _read_report(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
    return b"".join(chunks)


async def _aread_report(fd: int) -> bytes:
    import asyncio  # here, not at the top: importing the package stays asyncio-free

    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    done: asyncio.Future[None] = loop.create_future()
    chunks: list[bytes] = []

    def readable() -> None:
        if done.done():
            return
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            return
        except OSError as exc:
            done.set_exception(exc)
            return
        if chunk:
            chunks.append(chunk)
        else:
            done.set_result(None)

    try:  # add_reader inside: an exception right after it must not leave fd registered
        loop.add_reader(fd, readable)
        await done
    finally:
        loop.remove_reader(fd)
    return b"".join(chunks)


# ----------------------------------------------------------------------------- request


@dataclass(frozen=True)
class _Request:
    """A spawn request, fully validated before anything is created."""

    argv: list[_Arg]
    target: int | None
    extra: dict[int, int]
    env: dict[bytes, bytes]
    cwd: _Arg | None
    std: tuple[_Stdio, _Stdio, _Stdio]
    channel_options: dict[str, Any] | None = None
    deathsig: int = 0
    new_group: bool = False
    listen: bool = False  # systemd socket activation: LISTEN_PID set between fork and exec


def _check_channel_options(
    options: Mapping[str, Any] | None, allowed: tuple[str, ...]
) -> dict[str, Any] | None:
    if options is None:
        return None
    if not isinstance(options, Mapping):
        raise TypeError(f"channel_options must be a mapping, not {type(options).__name__}")
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(
            f"channel_options: unknown option(s) {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(allowed)}"
        )
    return dict(options)


def _prepare(
    args: Sequence[_Arg] | _Arg,
    fd: int | str,
    fd_map: Mapping[int, int | _HasFileno] | None,
    env: Mapping[str, str] | None,
    cwd: _Arg | None,
    std: tuple[_Stdio, _Stdio, _Stdio],
    channel_options: dict[str, Any] | None = None,
    deathsig: int = 0,
    new_group: bool = False,
    listen_fds: bool = False,
    fd_names: Mapping[int, str] | None = None,
) -> _Request:
    argv = _check_args(args)
    target = _check_fd(fd)
    extra = _check_fd_map(fd_map, {0, 1} if target is None else {target})
    if deathsig and not sys.platform.startswith("linux"):
        raise OSError(f"a parent-death signal needs Linux (PR_SET_PDEATHSIG), not {sys.platform}")
    child_env = _child_env(env, target)
    if listen_fds:
        child_env = {**child_env, **_listen_env(target, extra, fd_names)}  # not in place: shared
    elif fd_names is not None:
        raise ValueError("fd_names goes with listen_fds=True")
    return _Request(
        argv, target, extra, child_env, cwd, std, channel_options, deathsig, new_group, listen_fds
    )


#: The first descriptor of systemd's socket activation protocol (``SD_LISTEN_FDS_START``).
_LISTEN_START = 3


def _listen_env(
    target: int | None, extra: Mapping[int, int], names: Mapping[int, str] | None
) -> dict[bytes, bytes]:
    """``LISTEN_FDS`` and ``LISTEN_FDNAMES`` for systemd socket activation.

    The child's descriptors (the socket and every ``fd_map`` entry) must be exactly
    3 ... 3+n-1, as ``sd_listen_fds()`` assumes. ``LISTEN_PID`` (the child's own pid) is
    set by the exec helper between fork and exec.
    """
    if target is None:
        raise ValueError("listen_fds needs the socket at a descriptor number, not fd='stdio'")
    numbers = sorted({target, *extra})
    for expected, number in enumerate(numbers, _LISTEN_START):
        if number != expected:
            raise ValueError(
                f"listen_fds needs descriptors {_LISTEN_START}..{_LISTEN_START + len(numbers) - 1}"
                f" with no gap: {expected} is missing (got {numbers})"
            )
    env = {b"LISTEN_FDS": b"%d" % len(numbers)}
    if names is not None:
        unknown = sorted(set(names) - set(numbers))
        if unknown:
            raise ValueError(f"fd_names names descriptors the child does not get: {unknown}")
        for number, name in names.items():
            if not isinstance(name, str):
                raise TypeError(f"fd_names[{number}] must be a str, not {type(name).__name__}")
            if not name or len(name) > 255 or ":" in name or not name.isprintable():
                raise ValueError(
                    f"fd_names[{number}] = {name!r}: a name is 1 to 255 printable characters"
                    " without ':'"
                )
        joined = ":".join(names.get(number, "unknown") for number in numbers)
        env[b"LISTEN_FDNAMES"] = os.fsencode(joined)
    return env


def _start(
    req: _Request,
    placements: Mapping[int, int],
    signals: _Signals,
    always: _Undo,
    on_failure: _Undo,
) -> subprocess.Popen[bytes]:
    """Start the child (blocking); the shared sync half of ``spawn`` and ``spawn_on``.

    Called with Python signal handlers deferred. The process is registered with
    *on_failure* (killed and reaped) before it exists.
    """
    started: list[subprocess.Popen[bytes]] = []
    on_failure.callback(_reap_started, started)
    temps: list[int] = []
    always.callback(_close_all, temps)
    with _LOCK:
        launch = _plan(req, placements, temps, always)
        # Handlers stay deferred across Popen too: CPython's _execute_child loses the pid
        # of a running child if an exception lands right after its fork_exec call.
        process = _Popen(started, launch.argv, **launch.popen_kwargs())
        _close_all(temps)  # the child has its copies; the report's write end must go too
    if launch.report >= 0:
        data = _read_report(launch.report)
        if data:
            process.wait()
            raise _report_error(data, req.argv[0])
    process.args = req.argv
    return process


def _new_pair(
    sock_type: int,
    target: int | None,
    on_failure: _Undo,
    always: _Undo,
) -> tuple[socket.socket, int]:
    """Create the pair; the parent's socket is closed by *on_failure*, the child's fd by *always*.

    If one end already has the target number, the child gets that one (no copy needed).
    Both ends are blocking: the child's must be, and ``spawn_async`` switches the parent's.
    Called with signals held off, so the registration cannot be skipped.
    """
    a, b = socketpair(sock_type, blocking=True)
    parent_fd, child_fd = (b, a) if a == target else (a, b)
    always.callback(os.close, child_fd)
    try:
        sock = socket.socket(fileno=parent_fd)
    except BaseException:
        os.close(parent_fd)
        raise
    on_failure.callback(sock.close)
    # Before the child exists, so the kernel stamps everything it ever sends us
    # with its real credentials (Channel.peer_credentials() reports them; the
    # pair's SO_PASSCRED names us, its creator).
    enable_passcred(sock)
    return sock, child_fd


def _wait_exit(process: subprocess.Popen[bytes], timeout: float | None) -> int:
    """``process.wait(timeout)``, without its polling where the OS allows.

    ``Popen.wait`` with a timeout sleeps in a loop (0.5 ms, then doubling), which made
    leaving ``with spawn(...)`` cost about a millisecond more than the child took to exit
    (measured: ~2x a plain ``Popen().wait()`` of ``true``). On Linux a pidfd becomes
    readable the moment the child exits: wait for that in ``poll``, then reap.

    Raises:
        subprocess.TimeoutExpired: *timeout* seconds passed first (the child is not reaped).
    """
    pidfd_open = getattr(os, "pidfd_open", None)
    if timeout is None or pidfd_open is None or process.returncode is not None:
        return process.wait(timeout)
    try:
        pidfd = pidfd_open(process.pid)
    except OSError:  # an old kernel, or no such process any more: let Popen find out
        return process.wait(timeout)
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        if not poller.poll(max(0, min(int(timeout * 1000) + 1, 2**31 - 1))):
            raise subprocess.TimeoutExpired(process.args, timeout)
    finally:
        os.close(pidfd)
    return process.wait()


def _shut(sock: socket.socket) -> None:
    """Shut both directions, so the child sees end-of-file even if another process
    (a fork-based worker) still holds a copy of our end. Never raises."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


# The kind of channel a Child hands out: a Channel, or with spawn(node_ipc=...) a NodeChannel.
_C = TypeVar("_C", bound="Channel | NodeChannel")


class Child(Generic[_C]):
    """A child process holding the other end of a socketpair; returned by :func:`spawn`.

    The ``Child`` owns the parent's end (:attr:`socket`, or :attr:`channel` once used) and
    the :attr:`process`. Use it as a context manager: leaving the block closes the parent's
    end (the child sees end-of-file), waits up to :attr:`exit_timeout` seconds for the child
    to exit, then kills it, and always reaps it: no zombie is left behind. (``SOCK_DGRAM``
    has no end-of-file: a datagram child that waits for more is killed after the timeout.)

    Thread-safety: the channel follows its own rules (a ``Channel`` may be shared by
    threads); :meth:`close`, :meth:`wait`, :meth:`kill` and leaving the block are meant
    for the thread that owns the Child. Interruption: an exception raised by a signal
    handler while leaving the block still kills and reaps the child before it propagates.
    """

    #: Seconds ``__exit__`` waits for the child after closing the socket, before SIGKILL.
    exit_timeout: float = 5.0

    def __init__(
        self, process: subprocess.Popen[bytes], sock: socket.socket, channel: _C | None = None
    ) -> None:
        self._process = process
        self._socket = sock
        self._channel: _C | None = channel

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self._process.pid

    @property
    def process(self) -> subprocess.Popen[bytes]:
        """The ``subprocess.Popen`` (its ``stdin``/``stdout``/``stderr`` pipes if any)."""
        return self._process

    @property
    def socket(self) -> socket.socket:
        """The parent's end: a blocking, close-on-exec ``socket.socket`` owned by the Child."""
        return self._socket

    @property
    def channel(self) -> _C:
        """A framed-message ``Channel`` over :attr:`socket` (with the ``channel_options``
        given to :func:`spawn`; made on first use if there were none); with
        ``spawn(node_ipc=...)`` a :class:`NodeChannel`, made before the child started.

        The channel then owns the socket; closing the Child closes the channel.
        """
        if self._channel is None:
            from ._channel import Channel

            self._channel = cast(_C, Channel(self._socket))
        return self._channel

    @property
    def returncode(self) -> int | None:
        """``Popen.returncode``: None until :meth:`wait` (or ``process.poll()``) saw it exit."""
        return self._process.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the child to exit and return its status (``Popen.wait`` semantics).

        Raises:
            subprocess.TimeoutExpired: *timeout* seconds passed first.
        """
        return _wait_exit(self._process, timeout)

    def terminate(self) -> None:
        """Send SIGTERM (nothing happens if the child has already been reaped)."""
        self._process.terminate()

    def kill(self) -> None:
        """Send SIGKILL (nothing happens if the child has already been reaped)."""
        self._process.kill()

    def close(self) -> None:
        """Close the parent's end (idempotent); the child sees end-of-file. Does not wait.

        Messages the channel holds back (``write_buffer``) are sent first. The socket is
        shut down before it is closed, so the child sees end-of-file even when another
        process holds a copy of our end (e.g. a worker forked meanwhile).

        Raises:
            BrokenPipeError: the child had closed its end before the held messages could
                go (the socket is closed nonetheless).
        """
        channel = self._channel
        try:
            if channel is not None and not channel.closed:
                channel.flush()
        finally:
            _shut(self._socket)
            if channel is not None:
                channel.close()
            self._socket.close()

    def __enter__(self) -> Child[_C]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            try:
                self.close()
            except OSError:
                if exc is None:
                    raise  # unsent messages are news; a block's own exception is bigger news
            _wait_exit(self._process, self.exit_timeout)
        except subprocess.TimeoutExpired:
            pass
        finally:
            if self._process.returncode is None:  # timed out, or interrupted while waiting
                self._process.kill()
            self._process.wait()
            for stream in (self._process.stdin, self._process.stdout, self._process.stderr):
                if stream is not None:
                    stream.close()

    def __repr__(self) -> str:
        return f"<Child pid={self.pid} returncode={self.returncode}>"


_CHANNEL_OPTIONS = ("max_message_size", "max_fds", "spin", "write_buffer")
_ASYNC_CHANNEL_OPTIONS = ("max_message_size", "max_fds", "spin")
_NODE_CHANNEL_OPTIONS = ("max_message_size",)


def _node_ipc_env(
    node_ipc: object, fd: object, sock_type: int, env: Mapping[str, str] | None
) -> dict[str, str]:
    """The child's environment for ``spawn(node_ipc=...)``; ``ValueError`` for a mode,
    socket type or *fd* Node cannot use (before anything is created)."""
    from ._nodeipc import node_environment

    if node_ipc not in ("json", "advanced"):
        raise ValueError(f"node_ipc must be 'json' or 'advanced', not {node_ipc!r}")
    if sock_type != SOCK_STREAM:
        raise ValueError("node_ipc needs type=SOCK_STREAM: Node reads its channel as a stream")
    if isinstance(fd, bool) or not isinstance(fd, int):
        raise ValueError(
            f"node_ipc needs the channel at a descriptor number (NODE_CHANNEL_FD), not fd={fd!r}"
        )
    base = os.environ if env is None else env
    return {**base, **node_environment(fd, node_ipc)}


@overload
def spawn(
    args: Sequence[_Arg] | _Arg,
    *,
    fd: int | str = 3,
    type: int = SOCK_STREAM,
    fd_map: Mapping[int, int | _HasFileno] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: _Arg | None = None,
    stdin: _Stdio = None,
    stdout: _Stdio = None,
    stderr: _Stdio = None,
    channel_options: Mapping[str, Any] | None = None,
    listen_fds: bool = False,
    fd_names: Mapping[int, str] | None = None,
    node_ipc: None = None,
) -> Child[Channel]: ...


@overload
def spawn(
    args: Sequence[_Arg] | _Arg,
    *,
    fd: int | str = 3,
    type: int = SOCK_STREAM,
    fd_map: Mapping[int, int | _HasFileno] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: _Arg | None = None,
    stdin: _Stdio = None,
    stdout: _Stdio = None,
    stderr: _Stdio = None,
    channel_options: Mapping[str, Any] | None = None,
    listen_fds: bool = False,
    fd_names: Mapping[int, str] | None = None,
    node_ipc: Literal["json", "advanced"],
) -> Child[NodeChannel]: ...


def spawn(
    args: Sequence[_Arg] | _Arg,
    *,
    fd: int | str = 3,
    type: int = SOCK_STREAM,
    fd_map: Mapping[int, int | _HasFileno] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: _Arg | None = None,
    stdin: _Stdio = None,
    stdout: _Stdio = None,
    stderr: _Stdio = None,
    channel_options: Mapping[str, Any] | None = None,
    listen_fds: bool = False,
    fd_names: Mapping[int, str] | None = None,
    node_ipc: Literal["json", "advanced"] | None = None,
) -> Child[Any]:
    """Start *args* with one end of a new socketpair at descriptor *fd* in the child.

    Args:
        args: the program and its arguments, as for ``subprocess.Popen`` (no shell).
        fd: the child's descriptor number for its end (default 3), or ``"stdio"`` for its
            stdin *and* stdout. The child's end is blocking and inheritable there; the
            child's environment gets ``SOCKETPAIR_FD=<fd>`` (``stdio``).
        type: ``SOCK_STREAM`` (default), ``SOCK_DGRAM`` or ``SOCK_SEQPACKET``.
        fd_map: more descriptors for the child, ``{child number: parent fd or object with
            fileno()}``, e.g. ``{4: other_pair_end}``. Borrowed: the caller still owns and
            must close them. Overlaps and cycles (``{3: fd4, 4: fd3}``) are fine.
        env: the child's environment (default: ours), plus ``SOCKETPAIR_FD``.
        cwd: the child's working directory.
        stdin, stdout, stderr: as for ``Popen``, for the streams the socket and fd_map do
            not occupy (passing one that is occupied raises ``ValueError``).
        channel_options: keyword arguments for :attr:`Child.channel`'s ``Channel``
            (``max_message_size``, ``max_fds``, ``spin``, ``write_buffer``). The channel is
            then made over the parent's end *before* the child starts, so a bad option
            raises here and no child is left behind.
        listen_fds: systemd socket activation: the child gets ``LISTEN_FDS=<n>`` and
            ``LISTEN_PID=<its own pid>`` (set between fork and exec by the exec helper), so
            ``sd_listen_fds()`` finds its descriptors. They (the socket at *fd* and the
            ``fd_map`` entries) must be exactly 3 ... 3+n-1, else ``ValueError``.
        fd_names: with *listen_fds*, ``{child number: name}`` for ``LISTEN_FDNAMES``
            (``sd_listen_fds_with_names()``); numbers left out are named ``unknown``. A
            name is 1 to 255 printable characters without ``:``.
        node_ipc: ``"json"`` or ``"advanced"``: the child is a Node.js program (or any
            program speaking Node's IPC) whose ``process.send()`` channel is the socket:
            its environment gets ``NODE_CHANNEL_FD=<fd>`` and
            ``NODE_CHANNEL_SERIALIZATION_MODE=<node_ipc>``, and :attr:`Child.channel` is
            a :class:`NodeChannel` (made before the child starts; the only
            ``channel_options`` is ``max_message_size``). Needs ``type=SOCK_STREAM`` and
            a descriptor number for *fd* (``ValueError`` otherwise).

    The child inherits no other descriptor of ours. The parent's copy of the child's end
    is closed before this returns or raises. Thread-safe.

    Returns:
        A :class:`Child` owning the parent's end and the process.

    Raises:
        FileNotFoundError, PermissionError, OSError: the program could not be executed,
            exactly as ``subprocess.Popen`` raises them (``filename`` is ``args[0]``).
            Nothing is left open and no process is left behind.
        TypeError, ValueError: bad arguments or channel options (before any child exists).
        Any exception a signal handler raises meanwhile: then, too, nothing is left open
            and any child already started is killed and reaped.
    """
    return _spawn(
        args,
        fd,
        type,
        fd_map,
        env,
        cwd,
        (stdin, stdout, stderr),
        channel_options,
        listen_fds=listen_fds,
        fd_names=fd_names,
        node_ipc=node_ipc,
    )


def _spawn(
    args: Sequence[_Arg] | _Arg,
    fd: int | str,
    type: int,
    fd_map: Mapping[int, int | _HasFileno] | None,
    env: Mapping[str, str] | None,
    cwd: _Arg | None,
    std: tuple[_Stdio, _Stdio, _Stdio],
    channel_options: Mapping[str, Any] | None,
    deathsig: int = 0,
    new_group: bool = False,
    listen_fds: bool = False,
    fd_names: Mapping[int, str] | None = None,
    node_ipc: Literal["json", "advanced"] | None = None,
) -> Child[Any]:
    """:func:`spawn`, plus what only the command line asks for (see :func:`_spawn_on`)."""
    sock_type = check_type(type)
    if node_ipc is not None:
        env = _node_ipc_env(node_ipc, fd, sock_type, env)
    allowed = _CHANNEL_OPTIONS if node_ipc is None else _NODE_CHANNEL_OPTIONS
    options = _check_channel_options(channel_options, allowed)
    req = _prepare(
        args, fd, fd_map, env, cwd, std, options, deathsig, new_group, listen_fds, fd_names
    )
    signals = _Signals()
    signals.hold()
    on_failure = _Undo()
    try:
        with _Undo() as always:
            sock, child_fd = _new_pair(sock_type, req.target, on_failure, always)
            channel: Channel | NodeChannel | None = None
            if node_ipc is not None:
                from ._nodechannel import NodeChannel

                channel = NodeChannel(sock, node_ipc, **(options or {}))
                on_failure.callback(channel.close)
            elif options is not None:
                from ._channel import Channel

                channel = Channel(sock, **options)
                on_failure.callback(channel.close)
            placements = _placements(req.target, child_fd, req.extra)
            process = _start(req, placements, signals, always, on_failure)
        child: Child[Any] = Child(process, sock, channel)
        # The last call: a deferred handler may raise in it, and is then cleaned up after.
        # (Nothing may run between a successful return from it and ours.)
        signals.release()
    except BaseException:
        _fail(signals, on_failure)
        raise
    return child


def _fail(signals: _Signals, on_failure: _Undo) -> None:
    """Run the failure cleanup with the handlers deferred, then the ones that came due."""
    try:
        signals.hold()
    finally:  # a handler that raised during hold() must not skip the cleanup
        try:
            on_failure.close()
        finally:
            signals.release()


def spawn_on(
    args: Sequence[_Arg] | _Arg,
    sock: int | _HasFileno,
    *,
    fd: int | str = 3,
    fd_map: Mapping[int, int | _HasFileno] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: _Arg | None = None,
    stdin: _Stdio = None,
    stdout: _Stdio = None,
    stderr: _Stdio = None,
) -> subprocess.Popen[bytes]:
    """Like :func:`spawn`, but give the child an existing socket (or any descriptor).

    *sock* is borrowed: the caller still owns it and closes its copy when the child
    should be the only holder. (To hand a :class:`Child`'s own socket on this way, close
    it with ``child.socket.close()``: ``Child.close()`` shuts the socket down, for every
    process that holds it.) Returns the ``Popen``; the caller reaps it.
    """
    return _spawn_on(args, sock, fd, fd_map, env, cwd, (stdin, stdout, stderr))


def _spawn_on(
    args: Sequence[_Arg] | _Arg,
    sock: int | _HasFileno,
    fd: int | str,
    fd_map: Mapping[int, int | _HasFileno] | None,
    env: Mapping[str, str] | None,
    cwd: _Arg | None,
    std: tuple[_Stdio, _Stdio, _Stdio],
    deathsig: int = 0,
    new_group: bool = False,
) -> subprocess.Popen[bytes]:
    """:func:`spawn_on` plus two things only the command line asks for (Linux-only parts
    say so): *deathsig*, the signal the child gets when the thread that started it exits
    (``PR_SET_PDEATHSIG``, set by the exec helper between fork and exec; Linux only,
    ``OSError`` elsewhere), and *new_group*, a process group of its own for the child."""
    source = _fileno(sock, "spawn_on() sock")
    req = _prepare(args, fd, fd_map, env, cwd, std, None, deathsig, new_group)
    signals = _Signals()
    signals.hold()
    on_failure = _Undo()
    try:
        with _Undo() as always:
            process = _start(
                req, _placements(req.target, source, req.extra), signals, always, on_failure
            )
        signals.release()  # the last call (see _spawn)
    except BaseException:
        _fail(signals, on_failure)
        raise
    return process


# -------------------------------------------------------------------------- AsyncChild


_AC = TypeVar("_AC", bound="AsyncChannel | AsyncNodeChannel")


class AsyncChild(Generic[_AC]):
    """The asyncio twin of :class:`Child`; returned by :func:`spawn_async`.

    Owns the parent's end (:attr:`socket`, non-blocking; or :attr:`channel`) and the
    process. :meth:`aclose` (and leaving ``async with``) writes what the channel's
    write-behind buffer holds (for at most :attr:`exit_timeout` seconds), shuts and closes
    the parent's end, waits up to :attr:`exit_timeout` seconds for the child, then kills
    it, and always reaps it: it takes at most about twice :attr:`exit_timeout`.

    Thread-safety: like every asyncio object, use it from its event loop's thread only.
    Cancellation: cancelling :meth:`aclose` (or the task leaving ``async with``) still
    kills the child if it is running; the channel is closed either way.

    Raises (from :meth:`aclose`): nothing for a child's exit status, which is in
    :attr:`returncode`; a send's ``BrokenPipeError`` already reported is not raised again.
    """

    #: Seconds :meth:`aclose` waits for the child after closing the socket, before SIGKILL
    #: (and the longest it spends writing buffered messages first).
    exit_timeout: float = 5.0

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        sock: socket.socket,
        channel: _AC | None = None,
    ) -> None:
        self._process = process
        self._socket = sock
        self._channel: _AC | None = channel

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self._process.pid

    @property
    def process(self) -> asyncio.subprocess.Process:
        """The ``asyncio.subprocess.Process``."""
        return self._process

    @property
    def socket(self) -> socket.socket:
        """The parent's end: a non-blocking, close-on-exec socket owned by the AsyncChild."""
        return self._socket

    @property
    def channel(self) -> _AC:
        """An ``AsyncChannel`` over :attr:`socket` (with the ``channel_options`` given to
        :func:`spawn_async`; made on first use if there were none). It then owns the socket.
        With ``spawn_async(node_ipc=...)``: an ``AsyncNodeChannel``, made before the start."""
        if self._channel is None:
            from ._aio import AsyncChannel

            self._channel = cast(_AC, AsyncChannel(self._socket))
        return self._channel

    @property
    def returncode(self) -> int | None:
        """The exit status once the child has exited and been reaped, else None."""
        return self._process.returncode

    async def wait(self) -> int:
        """Wait for the child to exit; return its status (negative: killed by that signal)."""
        return await self._process.wait()

    def terminate(self) -> None:
        """Send SIGTERM unless the child has already exited."""
        if self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.terminate()

    def kill(self) -> None:
        """Send SIGKILL unless the child has already exited."""
        if self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()

    async def aclose(self) -> None:
        """Close the parent's end, wait for the child, kill it if it lingers, reap it.

        Idempotent; on return :attr:`returncode` is set. Messages still in the channel's
        write-behind buffer are written first, for at most :attr:`exit_timeout` seconds
        (what a live child has not taken by then is dropped). A child that already closed
        its end cannot take them: that is not an error here (``send``/``drain`` report it
        as ``BrokenPipeError``; the exit status tells the rest), so this does not raise it.
        The socket is shut down before it is closed, so the child sees end-of-file even if
        another process holds a copy of our end. Then the child has :attr:`exit_timeout`
        seconds to exit before SIGKILL. Cancelled meanwhile, it still kills and reaps the
        child before the cancellation propagates.
        """
        import asyncio  # here, not at the top: importing the package stays asyncio-free

        channel = self._channel
        try:
            if channel is not None and not channel.closed:
                with contextlib.suppress(asyncio.TimeoutError, ConnectionError):
                    await asyncio.wait_for(channel.drain(), self.exit_timeout)
            _shut(self._socket)
            if channel is not None:
                channel.close()
            self._socket.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._process.wait(), self.exit_timeout)
        finally:
            if channel is not None:
                channel.close()
            self._socket.close()
            if self._process.returncode is None:
                self.kill()
            await _reap(self._process)

    async def __aenter__(self) -> AsyncChild[_AC]:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<AsyncChild pid={self.pid} returncode={self.returncode}>"


async def _reap(process: asyncio.subprocess.Process) -> None:
    """Wait for a (killed) child to be reaped, even if cancelled meanwhile (then re-raise)."""
    import asyncio

    waiter = asyncio.ensure_future(process.wait())
    cancelled = False
    while not waiter.done():
        try:
            await asyncio.shield(waiter)
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError


@overload
async def spawn_async(
    args: Sequence[_Arg] | _Arg,
    *,
    fd: int | str = 3,
    type: int = SOCK_STREAM,
    fd_map: Mapping[int, int | _HasFileno] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: _Arg | None = None,
    stdin: _Stdio = None,
    stdout: _Stdio = None,
    stderr: _Stdio = None,
    channel_options: Mapping[str, Any] | None = None,
    listen_fds: bool = False,
    fd_names: Mapping[int, str] | None = None,
    node_ipc: None = None,
) -> AsyncChild[AsyncChannel]: ...


@overload
async def spawn_async(
    args: Sequence[_Arg] | _Arg,
    *,
    fd: int | str = 3,
    type: int = SOCK_STREAM,
    fd_map: Mapping[int, int | _HasFileno] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: _Arg | None = None,
    stdin: _Stdio = None,
    stdout: _Stdio = None,
    stderr: _Stdio = None,
    channel_options: Mapping[str, Any] | None = None,
    listen_fds: bool = False,
    fd_names: Mapping[int, str] | None = None,
    node_ipc: Literal["json", "advanced"],
) -> AsyncChild[AsyncNodeChannel]: ...


async def spawn_async(
    args: Sequence[_Arg] | _Arg,
    *,
    fd: int | str = 3,
    type: int = SOCK_STREAM,
    fd_map: Mapping[int, int | _HasFileno] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: _Arg | None = None,
    stdin: _Stdio = None,
    stdout: _Stdio = None,
    stderr: _Stdio = None,
    channel_options: Mapping[str, Any] | None = None,
    listen_fds: bool = False,
    fd_names: Mapping[int, str] | None = None,
    node_ipc: Literal["json", "advanced"] | None = None,
) -> AsyncChild[Any]:
    """The asyncio twin of :func:`spawn`: same arguments, same guarantees, same errors.

    The child is started with ``asyncio.create_subprocess_exec`` (so ``stdout=PIPE`` gives
    a ``StreamReader``) with the same ``Popen`` arguments, from the same planner, as
    ``spawn``'s. The parent's end is switched to non-blocking (the child's stays blocking).
    *channel_options* go to ``AsyncChannel`` (``max_message_size``, ``max_fds``, ``spin``), made
    before the child starts. With *node_ipc* (see :func:`spawn`), :attr:`AsyncChild.channel`
    is an ``AsyncNodeChannel`` (option: ``max_message_size``).

    Thread-safety and cancellation: call it from the event loop's thread. Cancelled (or
    interrupted by a signal handler's exception) at any point, it leaves nothing behind:
    no descriptor open and no child unreaped.

    Returns:
        An :class:`AsyncChild` owning the parent's end and the process.

    Raises:
        TypeError, ValueError: bad arguments (as :func:`spawn`), before anything starts.
        OSError: the program could not be started (``FileNotFoundError``,
            ``PermissionError``, with ``filename`` set), or a system call failed.
    """
    import asyncio  # here, not at the top: importing the package stays asyncio-free

    sock_type = check_type(type)
    if node_ipc is not None:
        env = _node_ipc_env(node_ipc, fd, sock_type, env)
    allowed = _ASYNC_CHANNEL_OPTIONS if node_ipc is None else _NODE_CHANNEL_OPTIONS
    options = _check_channel_options(channel_options, allowed)
    req = _prepare(
        args, fd, fd_map, env, cwd, (stdin, stdout, stderr), options, 0, False, listen_fds, fd_names
    )
    signals = _Signals()
    signals.hold()
    on_failure = _Undo()
    try:
        with _Undo() as always:
            sock, child_fd = _new_pair(sock_type, req.target, on_failure, always)
            sock.setblocking(False)
            channel: AsyncChannel | AsyncNodeChannel | None = None
            if node_ipc is not None:
                from ._aionode import AsyncNodeChannel

                channel = AsyncNodeChannel(sock, node_ipc, **(options or {}))
                on_failure.callback(channel.close)
            elif options is not None:
                from ._aio import AsyncChannel

                channel = AsyncChannel(sock, **options)
                on_failure.callback(channel.close)
            temps: list[int] = []
            always.callback(_close_all, temps)
            # No lock here: a threading lock held across an await could block the loop.
            # Without it a concurrent spawn may hold a claimed number; the exec helper
            # then places ours, which is just a little slower. (Only what is needed
            # after the await stays in this frame: see _Undo.)
            launch = _plan(req, _placements(req.target, child_fd, req.extra), temps, always)
            # Registered before it exists: hold() below may raise (a handler that ran
            # as they were swapped) once the process is there.
            created: list[asyncio.subprocess.Process] = []
            on_failure.push_async_callback(_kill_and_reap_all, created)
            try:
                signals.release()  # the event loop runs with its handlers
                created.append(
                    await asyncio.create_subprocess_exec(*launch.argv, **launch.popen_kwargs())
                )
            finally:
                signals.hold()
            process = created[0]
            _close_all(temps)
            if launch.report >= 0:
                try:
                    signals.release()
                    data = await _aread_report(launch.report)
                finally:
                    signals.hold()
                if data:
                    raise _report_error(data, req.argv[0])
        child: AsyncChild[Any] = AsyncChild(process, sock, channel)
        signals.release()  # the last call (see _spawn)
    except BaseException:
        await _afail(signals, on_failure)
        raise
    return child


async def _afail(signals: _Signals, on_failure: _Undo) -> None:
    """The failure cleanup of ``spawn_async`` (see :func:`_fail`)."""
    try:
        signals.hold()
    finally:  # a handler that raised during hold() must not skip the cleanup
        try:
            await on_failure.aclose()
        finally:
            signals.release()


async def _kill_and_reap_all(created: list[asyncio.subprocess.Process]) -> None:
    for process in created:
        await _kill_and_reap(process)


async def _kill_and_reap(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
    await _reap(process)
