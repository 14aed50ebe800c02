"""Fixtures shared by every test module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support import open_fds


@pytest.fixture
def no_fd_leak() -> Iterator[None]:
    """Fail the test if it leaves more descriptors open than it found."""
    before = open_fds()
    yield
    leaked = open_fds() - before
    assert not leaked, f"descriptors leaked: {sorted(leaked)}"
