"""send_frame: the one-message fast path's frame and ``send(2)`` in one call.

The C version (``_speedups.send_frame``) and its pure-Python twin
(``_codec.py_send_frame``) must answer alike: the bytes on the wire, the count,
every error. Then what only a real kernel shows: a send that must wait releases
the GIL while it waits, and a signal handler's exception ends a send that
waits, with nothing sent.
"""

from __future__ import annotations

import errno
import signal
import socket
import textwrap
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import missing, run_python

from unix_socketpair import _codec

try:
    from unix_socketpair import _speedups
except ImportError:  # not built
    _speedups = None  # type: ignore[assignment]

NOSIGNAL = int(getattr(socket, "MSG_NOSIGNAL", 0))
DONTWAIT = int(socket.MSG_DONTWAIT)
LIMIT = _codec.SEND_FRAME_MAX
Send = Callable[[socket.socket, Any, int], int]


def _c_send() -> Send:
    if _speedups is None:
        missing("the C accelerator was not built (no C compiler or Python headers at install)")
    return _speedups.send_frame  # type: ignore[no-any-return]


@pytest.fixture(params=["python", "c"])
def send_frame(request: pytest.FixtureRequest) -> Send:
    return _codec.py_send_frame if request.param == "python" else _c_send()


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    with a, b:
        yield a, b


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    got = bytearray()
    while len(got) < n:
        chunk = sock.recv(n - len(got))
        assert chunk, "end of file before the whole frame"
        got += chunk
    return bytes(got)


def _fill(sock: socket.socket) -> int:
    """Fill *sock*'s send direction until the kernel takes nothing more."""
    total = 0
    chunk = b"\0" * 65536
    while True:
        try:
            total += sock.send(chunk, DONTWAIT)
        except BlockingIOError:
            return total


def test_the_constant_is_the_same_in_both() -> None:
    assert _c_send() is not None
    assert _speedups.SEND_FRAME_MAX == LIMIT  # type: ignore[union-attr]
    if not _codec.ACCELERATED:
        assert _codec.send_frame is _codec.py_send_frame
    else:
        assert _codec.send_frame is _speedups.send_frame  # type: ignore[union-attr]
    # The channels' fast paths call the C one, or make py_send_frame's send themselves.
    assert _codec.C_SEND is _codec.ACCELERATED


@pytest.mark.parametrize("size", [0, 1, 64, 255, 256, 65535 % LIMIT, LIMIT])
def test_frames_and_sends_whole(
    send_frame: Send, pair: tuple[socket.socket, socket.socket], size: int
) -> None:
    a, b = pair
    payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    assert send_frame(a, payload, NOSIGNAL) == size + 4
    assert _read_exactly(b, size + 4) == size.to_bytes(4, "big") + payload


@pytest.mark.parametrize("bad", [bytearray(b"x"), memoryview(b"x"), "x", None, 1])
def test_only_bytes(send_frame: Send, pair: tuple[socket.socket, socket.socket], bad: Any) -> None:
    a, b = pair
    with pytest.raises(TypeError, match=r"send_frame: data must be bytes, not "):
        send_frame(a, bad, NOSIGNAL)
    b.setblocking(False)
    with pytest.raises(BlockingIOError):
        b.recv(1)  # nothing was sent


def test_over_the_limit(send_frame: Send, pair: tuple[socket.socket, socket.socket]) -> None:
    a, _ = pair
    with pytest.raises(ValueError, match=rf"{LIMIT + 1} bytes is over the {LIMIT}-byte limit"):
        send_frame(a, b"x" * (LIMIT + 1), NOSIGNAL)


def test_a_closed_socket_is_ebadf(send_frame: Send) -> None:
    a, b = socket.socketpair()
    b.close()
    a.close()
    with pytest.raises(OSError) as info:
        send_frame(a, b"x", NOSIGNAL)
    assert info.value.errno == errno.EBADF


def test_a_closed_peer_is_a_broken_pipe_without_sigpipe(send_frame: Send) -> None:
    a, b = socket.socketpair()
    b.close()
    with a, pytest.raises(BrokenPipeError):
        send_frame(a, b"x", NOSIGNAL)


@pytest.mark.parametrize("blocking", [True, False])
def test_a_full_socket_that_cannot_wait(
    send_frame: Send, pair: tuple[socket.socket, socket.socket], blocking: bool
) -> None:
    a, _ = pair
    a.setblocking(blocking)
    _fill(a)
    # MSG_DONTWAIT, or a non-blocking socket: nothing goes, BlockingIOError.
    flags = NOSIGNAL | (DONTWAIT if blocking else 0)
    with pytest.raises(BlockingIOError):
        send_frame(a, b"x", flags)


def test_a_full_socket_waits_with_the_gil_released() -> None:
    """A blocking send waits until a thread drains the peer: that thread could
    not run if the GIL were held during the wait (the run would hang, and be
    killed by the timeout)."""
    code = textwrap.dedent(
        """
        import socket, sys, threading
        from unix_socketpair import _codec
        from unix_socketpair import _speedups
        for send_frame in (_codec.py_send_frame, _speedups.send_frame):
            a, b = socket.socketpair()
            chunk = b"\\0" * 65536
            filled = 0
            while True:
                try:
                    filled += a.send(chunk, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break
            got = bytearray()
            def drain():
                while len(got) < filled + 9:
                    got.extend(b.recv(1 << 20))
            t = threading.Thread(target=drain)
            t.start()
            assert send_frame(a, b"hello", socket.MSG_NOSIGNAL) == 9
            t.join()
            assert bytes(got[filled:]) == b"\\0\\0\\0\\x05hello", bytes(got[filled:])
            a.close(); b.close()
        print("ok")
        """
    )
    _c_send()
    result = run_python(code, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


class _Interrupted(Exception):
    pass


def test_a_signal_handler_that_raises_ends_a_wait(
    send_frame: Send, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair
    filled = _fill(a)
    fired = threading.Event()

    def handler(signum: int, frame: object) -> None:
        fired.set()
        raise _Interrupted

    old = signal.signal(signal.SIGALRM, handler)
    try:
        # The timer only interrupts the wait; where it lands does not change
        # the outcome checked below.
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        with pytest.raises(_Interrupted):
            send_frame(a, b"hello", NOSIGNAL)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert fired.is_set()
    # Nothing of the frame went: the peer reads the filler, then nothing.
    assert len(_read_exactly(b, filled)) == filled
    b.setblocking(False)
    with pytest.raises(BlockingIOError):
        b.recv(1)


@settings(max_examples=200, deadline=None)
@given(
    data=st.one_of(
        st.binary(max_size=300),
        st.integers(LIMIT - 2, LIMIT + 2).map(lambda n: b"\xab" * n),
        st.sampled_from([bytearray(b"ab"), "ab", None]),
    ),
    dontwait=st.booleans(),
)
def test_both_twins_answer_alike(data: Any, dontwait: bool) -> None:
    c_send = _c_send()
    flags = NOSIGNAL | (DONTWAIT if dontwait else 0)
    outcomes = []
    for send in (_codec.py_send_frame, c_send):
        a, b = socket.socketpair()
        with a, b:
            try:
                n = send(a, data, flags)
            except Exception as exc:
                outcomes.append((type(exc), str(exc)))
                continue
            outcomes.append((n, _read_exactly(b, n)))
    assert outcomes[0] == outcomes[1]
