"""The optional C accelerator of the framing loops; everything else is in pyproject.toml.

``optional=True``: where there is no C compiler or no Python headers, the build
prints a warning (shown by ``pip install -v``) and installs the pure-Python
package, which behaves identically (``docs/accelerator.md``).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "unix_socketpair._speedups",
            ["src/unix_socketpair/_speedups.c"],
            optional=True,
        )
    ]
)
