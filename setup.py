"""Build steps that pyproject.toml cannot express; everything else is in pyproject.toml.

Two optional C parts, each compiled at install time when a C compiler (and, for the
extension, Python's headers) is there, and each with a pure-Python path that behaves
the same when it is not:

* ``unix_socketpair._speedups``, the framing loops (``docs/accelerator.md``):
  ``optional=True``, so a failed build prints a warning (``pip install -v``) and the
  package installs without it.
* ``unix_socketpair/_exec_helper``, the small program with which ``spawn()`` places a
  descriptor on a number the parent already holds; without it ``spawn()`` falls back
  to a slower Python trampoline.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_py import build_py

SOURCE = Path("src") / "unix_socketpair" / "_exec_helper.c"


class BuildWithHelper(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:
            target = SOURCE.with_suffix("")
        else:
            target = Path(self.build_lib) / "unix_socketpair" / "_exec_helper"
        cc = shlex.split(os.environ.get("CC", "cc"))
        command = [*cc, "-O2", "-Wall", "-o", str(target), str(SOURCE)]
        # Static first: measured, its exec is ~15% cheaper (no dynamic loader), and the
        # helper's exec is on the path of every spawn() onto a taken number.
        for flags in (["-static"], []):
            try:
                subprocess.run([*command, *flags], check=True, capture_output=True)
                return
            except (OSError, subprocess.CalledProcessError) as exc:
                error = exc
        sys.stderr.write(
            f"warning: could not build the spawn exec helper ({error}); spawn() will use "
            "its slower Python fallback for descriptor numbers the parent holds\n"
        )


# The extension module makes the wheel a platform wheel (it holds compiled code either
# way: the helper program too).
setup(
    cmdclass={"build_py": BuildWithHelper},
    ext_modules=[
        Extension(
            "unix_socketpair._speedups",
            ["src/unix_socketpair/_speedups.c"],
            optional=True,
        )
    ],
)
