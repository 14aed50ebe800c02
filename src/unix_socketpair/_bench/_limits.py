"""The physical limit: small C programs, compiled with ``cc`` at run time.

The sources ship with the package (``c/*.c``). They are compiled once per run
into a temporary directory that the harness removes at the end. Each program
prints one line, ``<elapsed seconds> <units of work>``, timed by itself around
exactly the work (its child's start-up is not timed).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

from ._harness import Sample, Unavailable

__all__ = ["CPrograms"]

PROGRAMS = ("create", "stream", "framed", "pingpong")


class CPrograms:
    """Compiles the limit programs on first use and runs them.

    Call ``close()`` (or use as a context manager) to remove the build directory.
    """

    def __init__(self) -> None:
        self._dir: Path | None = None
        self._error: str | None = None

    def __enter__(self) -> CPrograms:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def _build(self) -> Path:
        if self._error is not None:
            raise Unavailable(self._error)
        if self._dir is not None:
            return self._dir
        cc = shutil.which("cc")
        if cc is None:
            self._error = "no C compiler: `cc` is not on PATH"
            raise Unavailable(self._error)
        build = Path(tempfile.mkdtemp(prefix="unix-socketpair-bench-"))
        try:
            sources = resources.files(__package__).joinpath("c")
            for name in (*PROGRAMS, "common"):
                suffix = ".h" if name == "common" else ".c"
                source = sources.joinpath(name + suffix)
                if not source.is_file():
                    raise FileNotFoundError(f"C source {name}{suffix} is not installed")
                (build / (name + suffix)).write_text(source.read_text())
            for name in PROGRAMS:
                result = subprocess.run(
                    [cc, "-O2", "-Wall", "-o", str(build / name), str(build / f"{name}.c")],
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
                if result.returncode != 0:
                    raise RuntimeError(f"cc failed on {name}.c: {result.stderr.strip()}")
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            shutil.rmtree(build, ignore_errors=True)
            self._error = f"could not build the C limit programs: {exc}"
            raise Unavailable(self._error) from exc
        self._dir = build
        return build

    def available(self) -> None:
        """Raise ``Unavailable`` (with the reason) unless the programs are built."""
        self._build()

    def run(self, program: str, *args: int) -> Sample:
        """Run *program* with *args*; return its self-timed sample."""
        binary = self._build() / program
        result = subprocess.run(
            [str(binary), *map(str, args)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{program} exited with {result.returncode}: {result.stderr.strip()}"
            )
        seconds, units = result.stdout.split()
        return Sample(float(seconds), int(units))
