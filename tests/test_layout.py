"""The shape of the channel classes: each kind of system call in one place.

The reasons a read or a write can fail, and what each one means for the channel
(wait, spin, end of file after a reset, "the channel is closed", a frame cut
short), are decided where the system call is made. A class that makes the same
call in several places decides them several times, and sooner or later
differently. So each channel class, with what it inherits from the package,
names each socket method that is a system call once: the ``recvmsg`` of every
read, the ``sendmsg`` of every write that is not the one-message fast path, the
fast path's ``send``, and the ``recv`` that peeks. (The decoder's fused
``read_commit`` is the protocol core's own read, called by the per-message paths:
not a socket method of these classes.)
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections import Counter

import pytest

from unix_socketpair import AsyncChannel, Channel
from unix_socketpair._channel import ChannelBase

SOCKET_CALLS = {
    "recv",
    "recv_into",
    "recvfrom",
    "recvfrom_into",
    "recvmsg",
    "recvmsg_into",
    "send",
    "sendall",
    "sendmsg",
    "sendto",
}


def socket_calls(cls: type) -> Counter[str]:
    """How many times the body of *cls* names each socket system call on its
    socket (``self._sock.<name>``)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    found: Counter[str] = Counter()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr in SOCKET_CALLS
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "_sock"
        ):
            found[node.attr] += 1
    return found


@pytest.mark.parametrize("cls", [Channel, AsyncChannel], ids=lambda c: c.__name__)
def test_each_system_call_has_one_call_site(cls: type) -> None:
    assert issubclass(cls, ChannelBase)
    total = socket_calls(cls) + socket_calls(ChannelBase)
    assert total, "no socket calls found: the test no longer sees the code"
    repeated = {name: count for name, count in total.items() if count > 1}
    assert not repeated, f"{cls.__name__} makes these system calls in several places: {repeated}"


def test_the_counter_sees_repeats() -> None:
    class Twice:
        def a(self) -> None:
            self._sock.recvmsg_into([], 0, 0)  # type: ignore[attr-defined]

        def b(self) -> None:
            self._sock.recvmsg_into([], 0, 0)  # type: ignore[attr-defined]

    assert socket_calls(Twice) == Counter({"recvmsg_into": 2})
