"""The pyzmq rows are optional: without pyzmq they say so instead of failing."""

from __future__ import annotations

import sys

import pytest

from unix_socketpair._bench import _zmq_cases
from unix_socketpair._bench._harness import Unavailable


def test_without_pyzmq_the_rows_say_it_is_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "zmq", None)  # import zmq now raises ImportError
    with pytest.raises(Unavailable, match=r"pyzmq is not installed .*unix-socketpair\[bench\]"):
        _zmq_cases.need_zmq()
