"""Helpers of the reliability suite: size knobs, figures, bounded waits, zombie checks."""

from __future__ import annotations

import os
import resource
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

CHILDREN = Path(__file__).resolve().parent / "children"
FULL = os.environ.get("USP_FULL") == "1"

T = TypeVar("T")


def knob(name: str, default: int, full: int) -> int:
    """The size of a test: ``$name`` if set, else *full* under ``USP_FULL=1``, else *default*."""
    value = os.environ.get(name)
    if value is not None:
        return int(value)
    return full if FULL else default


def figure(name: str, text: str) -> None:
    """Print one measured figure of a test (shown by ``pytest -s``, and on failure)."""
    print(f"FIGURE {name}: {text}")


def bounded(fn: Callable[[], T], seconds: float, what: str) -> T:
    """Run *fn* in a thread and return its result; fail the test if it takes over *seconds*.

    A hang becomes a clear failure naming *what* hung, instead of a pytest-timeout
    traceback. The thread is a daemon, so a hung call cannot keep the runner alive.
    """
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.append(fn())
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"{what} did not return within {seconds} s (hang)")
    if error:
        raise error[0]
    return result[0]


def process_state(pid: int) -> str | None:
    """The state letter of process *pid* (``"Z"`` for a zombie), or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name is in parentheses and may contain spaces: split after the last ")".
    return stat.rsplit(")", 1)[1].split()[0]


def zombie_children() -> list[int]:
    """The pids of this process's children that have exited but were not reaped."""
    me = os.getpid()
    zombies = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] == "Z" and int(fields[1]) == me:
            zombies.append(int(entry))
    return zombies


def assert_reaped(pid: int) -> None:
    """Fail if *pid* is still a zombie (exited but never waited for)."""
    assert process_state(pid) != "Z", f"child {pid} is a zombie"


def raise_nofile(needed: int) -> None:
    """Raise the soft ``RLIMIT_NOFILE`` to at least *needed* (up to the hard limit), or skip."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"needs {needed} descriptors, the hard RLIMIT_NOFILE is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


class Stopwatch:
    """Elapsed wall-clock seconds since creation."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start
