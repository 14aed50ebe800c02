"""Helpers shared by the tests: fd counting, required tools, compiling C children,
a peer thread."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
IN_CI = os.environ.get("CI") == "true"


def open_fds() -> set[int]:
    """The descriptors open in this process right now (from ``/proc/self/fd``)."""
    fds = {int(name) for name in os.listdir("/proc/self/fd")}
    # listdir's own directory descriptor is listed, but already closed again.
    return {fd for fd in fds if is_open(fd)}


def is_open(fd: int) -> bool:
    """Whether *fd* is an open descriptor of this process."""
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def missing(message: str) -> NoReturn:
    """Something a test needs is not on this machine: skip, but fail under ``CI=true``
    (where every tool, header and build a test needs must be there)."""
    if IN_CI:
        pytest.fail(message + " (CI=true: it must be there)")
    pytest.skip(message)


def require(tool: str) -> str:
    """Return the path of *tool*; skip without it, but fail under ``CI=true``."""
    path = shutil.which(tool)
    if path is None:
        missing(f"{tool!r} is not on PATH; this test needs the real thing")
    return path


def require_exec_helper() -> str:
    """Return the path of spawn()'s C exec helper; skip without it, but fail under ``CI=true``.

    It is compiled when the package is installed (``make setup``), if a C compiler exists.
    """
    from unix_socketpair._spawn import HELPER

    if not os.access(HELPER, os.X_OK):
        missing("spawn()'s exec helper was not built (no C compiler at install time?)")
    return HELPER


_compiled: dict[Path, Path] = {}
_build_dir = Path(tempfile.mkdtemp(prefix="usp-test-cc-"))


def compile_c(source: Path, *extra_flags: str) -> Path:
    """Compile a C program with ``cc`` (once per test session) and return the binary."""
    source = Path(source)
    key = source.resolve()
    if key in _compiled:
        return _compiled[key]
    cc = require("cc")
    digest = hashlib.sha1(str(key).encode()).hexdigest()[:8]
    binary = _build_dir / f"{source.stem}-{digest}"
    subprocess.run(
        [cc, "-O2", "-Wall", "-Werror", "-o", str(binary), str(source), *extra_flags],
        check=True,
    )
    _compiled[key] = binary
    return binary


def run_python(
    code: str, *, timeout: float = 60, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """Run *code* in a fresh interpreter of this venv; return the completed process."""
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


def in_thread(target: Callable[[], object]) -> Callable[[], None]:
    """Run *target* in a thread; return a join() that re-raises its failure
    (and fails if the thread is still running a minute later)."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            target()
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=run)
    thread.start()

    def join() -> None:
        thread.join(timeout=60)
        assert not thread.is_alive(), "the thread hung"
        if failure:
            raise failure[0]

    return join
