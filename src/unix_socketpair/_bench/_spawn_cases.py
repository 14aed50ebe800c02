"""The spawn case: what placing the child's end at its number costs, next to a plain Popen.

Every row starts ``true`` and waits for it (the program does nothing, so the figure is
the cost of starting and reaping a child). ``Popen`` is the reference: the least any
child-starting call does. The ``spawn`` rows add a socketpair, its placement and the
wait; "taken" holds the target number in the parent during the run (as pytest, a server
or a library often does), "free" uses a number nobody holds.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from collections.abc import Callable

from ._harness import Case, Clock, Sample, Unavailable, Variant

__all__ = ["spawn_case"]

_TAKEN = 3
_FREE = 100


def _program() -> str:
    path = shutil.which("true")
    if path is None:
        raise Unavailable("no `true` program on PATH")
    return path


def _need_program() -> None:
    _program()


def _need_free() -> None:
    _program()
    try:
        os.fstat(_FREE)
    except OSError:
        return
    raise Unavailable(f"descriptor {_FREE} is open in the benchmark process")


def _hold(number: int) -> int:
    """Make sure *number* is open here for the run; return the fd to close after, or -1."""
    try:
        os.fstat(number)
        return -1
    except OSError:
        pass
    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    if null == number:
        return null
    try:
        held = fcntl.fcntl(null, fcntl.F_DUPFD_CLOEXEC, number)
    finally:
        os.close(null)
    if held != number:
        os.close(held)
        raise RuntimeError(f"could not hold descriptor {number}")
    return held


def _popen(n: int) -> Sample:
    argv = [_program()]
    clock = Clock()
    clock.start()
    for _ in range(n):
        subprocess.Popen(argv, close_fds=True).wait()
    clock.stop()
    return Sample(clock.elapsed(), n)


def _spawn(fd: int | str, hold: int | None, n: int) -> Sample:
    from .._spawn import spawn

    argv = [_program()]
    held = _hold(hold) if hold is not None else -1
    try:
        clock = Clock()
        clock.start()
        for _ in range(n):
            with spawn(argv, fd=fd) as child:
                child.wait()
        clock.stop()
    finally:
        if held >= 0:
            os.close(held)
    return Sample(clock.elapsed(), n)


def _bind(fd: int | str, hold: int | None) -> Callable[[int], Sample]:
    return lambda n: _spawn(fd, hold, n)


def spawn_case(n: int) -> Case:
    """Starting and reaping ``true``: ``spawn`` at each placement against ``Popen``."""
    return Case(
        "spawn",
        "spawn() placement vs subprocess.Popen (start and reap `true`)",
        "Seconds per child started and reaped. The spawn rows include the socketpair, "
        "the placement of the child's end and closing it; 'taken' means the parent holds "
        "that number itself during the run.",
        "s/op",
        [
            Variant("subprocess.Popen(close_fds=True)", _popen, n, key="popen",
                    available=_need_program),
            Variant(f"spawn(fd={_TAKEN}), {_TAKEN} taken", _bind(_TAKEN, _TAKEN), n,
                    "project", "spawn-taken", _need_program),
            Variant(f"spawn(fd={_FREE}), {_FREE} free", _bind(_FREE, None), n,
                    "project", "spawn-free", _need_free),
            Variant("spawn(fd='stdio')", _bind("stdio", None), n, "project", "spawn-stdio",
                    _need_program),
        ],
    )  # fmt: skip
