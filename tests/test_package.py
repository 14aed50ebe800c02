"""The public surface: what `import unix_socketpair` gives, and what it costs."""

from __future__ import annotations

import pytest
from support import run_python

import unix_socketpair


def test_every_public_name_resolves() -> None:
    for name in unix_socketpair.__all__:
        assert getattr(unix_socketpair, name) is not None, name
    assert set(unix_socketpair.__all__) <= set(dir(unix_socketpair))


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        unix_socketpair.nope  # type: ignore[attr-defined]  # noqa: B018


def test_import_does_not_import_asyncio_until_asked() -> None:
    proc = run_python(
        "import sys, unix_socketpair\n"
        "print('asyncio' in sys.modules)\n"
        "from unix_socketpair import AsyncChannel\n"
        "print('asyncio' in sys.modules, AsyncChannel.__name__)\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "True", "AsyncChannel"]


def test_version_is_the_same_everywhere() -> None:
    proc = run_python("import runpy; runpy.run_module('unix_socketpair', run_name='__main__')")
    assert proc.returncode == 2  # no subcommand: usage error
    proc = run_python(
        "import sys; sys.argv = ['x', '--version']\n"
        "import runpy; runpy.run_module('unix_socketpair', run_name='__main__')"
    )
    assert proc.stdout.strip() == f"unix-socketpair {unix_socketpair.__version__}"
