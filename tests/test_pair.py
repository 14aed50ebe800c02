"""socketpair(): the seed's contract, its flags, its errors, and the seed's scenario in Node."""

from __future__ import annotations

import fcntl
import os
import re
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest
from support import open_fds, require, run_python

import unix_socketpair
from unix_socketpair import SOCK_DGRAM, SOCK_SEQPACKET, SOCK_STREAM, socketpair

TYPES = [SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET]
TYPE_IDS = ["stream", "dgram", "seqpacket"]


@pytest.fixture
def pair_of() -> Iterator[list[int]]:
    """Collects fds created by a test and closes them afterwards."""
    fds: list[int] = []
    yield fds
    for fd in fds:
        os.close(fd)


def test_constants_equal_the_socket_modules() -> None:
    assert unix_socketpair.SOCK_STREAM == socket.SOCK_STREAM
    assert unix_socketpair.SOCK_DGRAM == socket.SOCK_DGRAM
    assert unix_socketpair.SOCK_SEQPACKET == socket.SOCK_SEQPACKET


def test_default_is_a_stream_pair_of_two_ints(pair_of: list[int]) -> None:
    fds = socketpair()
    pair_of.extend(fds)
    assert isinstance(fds, tuple)
    assert len(fds) == 2
    assert all(type(fd) is int for fd in fds)
    assert fds[0] != fds[1]
    with socket.socket(fileno=os.dup(fds[0])) as s:
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) == socket.SOCK_STREAM
        assert s.family == socket.AF_UNIX


@pytest.mark.parametrize("blocking", [False, True])
@pytest.mark.parametrize("inheritable", [False, True])
@pytest.mark.parametrize("sock_type", TYPES, ids=TYPE_IDS)
def test_flags_and_type_of_each_fd(
    pair_of: list[int], sock_type: int, blocking: bool, inheritable: bool
) -> None:
    fds = socketpair(sock_type, blocking=blocking, inheritable=inheritable)
    pair_of.extend(fds)
    for fd in fds:
        status = fcntl.fcntl(fd, fcntl.F_GETFL)
        fd_flags = fcntl.fcntl(fd, fcntl.F_GETFD)
        assert bool(status & os.O_NONBLOCK) is (not blocking)
        assert bool(fd_flags & fcntl.FD_CLOEXEC) is (not inheritable)
        assert os.get_inheritable(fd) is inheritable
        assert os.get_blocking(fd) is blocking
        with socket.socket(fileno=os.dup(fd)) as s:
            assert s.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) == sock_type
            assert s.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN) == socket.AF_UNIX


@pytest.mark.parametrize("sock_type", TYPES, ids=TYPE_IDS)
def test_connected_both_ways(sock_type: int) -> None:
    fd0, fd1 = socketpair(sock_type, blocking=True)
    with socket.socket(fileno=fd0) as a, socket.socket(fileno=fd1) as b:
        a.settimeout(5)
        b.settimeout(5)
        a.sendall(b"ping")
        assert b.recv(16) == b"ping"
        b.sendall(b"pong")
        assert a.recv(16) == b"pong"


@pytest.mark.parametrize("sock_type", [SOCK_DGRAM, SOCK_SEQPACKET], ids=["dgram", "seqpacket"])
def test_packet_types_keep_message_boundaries(sock_type: int) -> None:
    fd0, fd1 = socketpair(sock_type, blocking=True)
    with socket.socket(fileno=fd0) as a, socket.socket(fileno=fd1) as b:
        b.settimeout(5)
        for message in (b"one", b"", b"three33"):
            a.send(message)
        assert [b.recv(100) for _ in range(3)] == [b"one", b"", b"three33"]


def test_stream_type_does_not_keep_boundaries() -> None:
    # The contrast that makes the packet test meaningful.
    fd0, fd1 = socketpair(SOCK_STREAM, blocking=True)
    with socket.socket(fileno=fd0) as a, socket.socket(fileno=fd1) as b:
        a.send(b"one")
        a.send(b"two")
        a.close()
        b.settimeout(5)
        data = b""
        while chunk := b.recv(100):
            data += chunk
        assert data == b"onetwo"


def test_keyword_type_and_socketkind_enum_accepted(pair_of: list[int]) -> None:
    pair_of.extend(socketpair(type=socket.SocketKind.SOCK_DGRAM))
    with socket.socket(fileno=os.dup(pair_of[0])) as s:
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) == socket.SOCK_DGRAM


@pytest.mark.parametrize("bad", [True, False, "SOCK_STREAM", 1.0, None, b"\x01", [1]], ids=repr)
def test_non_int_type_is_a_type_error(bad: object, no_fd_leak: None) -> None:
    with pytest.raises(TypeError, match=r"socketpair\(\) type must be an int"):
        socketpair(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [0, -1, 4, 10, socket.SOCK_RAW, socket.SOCK_RDM, 2**70])
def test_other_int_is_a_value_error_naming_the_three_types(bad: int, no_fd_leak: None) -> None:
    with pytest.raises(ValueError) as info:
        socketpair(bad)
    message = str(info.value)
    for name in ("SOCK_STREAM", "SOCK_DGRAM", "SOCK_SEQPACKET"):
        assert name in message
    assert repr(bad) in message


@pytest.mark.parametrize("option", ["blocking", "inheritable"])
@pytest.mark.parametrize("bad", [1, "yes", None])
def test_options_must_be_bool(option: str, bad: object, no_fd_leak: None) -> None:
    with pytest.raises(TypeError, match=f"{option} must be a bool"):
        socketpair(SOCK_STREAM, **{option: bad})  # type: ignore[arg-type]


def test_options_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        socketpair(SOCK_STREAM, True)  # type: ignore[misc]


def test_bad_input_is_refused_before_any_system_call() -> None:
    """Under strace, a refused call makes no socketpair(2) at all."""
    strace = require("strace")
    code = textwrap.dedent(
        """
        import sys, unix_socketpair
        sys.stderr.write("MARK-BEGIN\\n"); sys.stderr.flush()
        for bad in (True, "x", 99):
            try:
                unix_socketpair.socketpair(bad)
            except (TypeError, ValueError):
                pass
        sys.stderr.write("MARK-END\\n"); sys.stderr.flush()
        """
    )
    trace = _strace(strace, code)
    between = trace.split("MARK-BEGIN", 1)[1].split("MARK-END", 1)[0]
    assert "socketpair(" not in between


def _strace(strace: str, code: str) -> str:
    proc = subprocess.run(
        [strace, "-f", "-e", "trace=socketpair,fcntl,ioctl,write", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def test_one_system_call_creates_both_fds_with_their_flags() -> None:
    """strace: SOCK_CLOEXEC|SOCK_NONBLOCK in the one socketpair(2), no fcntl on the fds."""
    if not sys.platform.startswith("linux"):
        pytest.skip("the atomic-flags guarantee is checked on Linux")
    strace = require("strace")
    code = textwrap.dedent(
        """
        import sys, unix_socketpair
        sys.stderr.write("MARK-BEGIN\\n"); sys.stderr.flush()
        fds = unix_socketpair.socketpair()
        sys.stderr.write("MARK-END %d %d\\n" % fds); sys.stderr.flush()
        """
    )
    trace = _strace(strace, code)
    between = trace.split("MARK-BEGIN", 1)[1].split("MARK-END", 1)
    calls = [line for line in between[0].splitlines() if "(" in line and "write(2" not in line]
    found = re.search(r"(\d+) (\d+)", between[1])
    assert found, between[1]
    fd0, fd1 = found.groups()
    socketpair_calls = [line for line in calls if "socketpair(" in line]
    assert len(socketpair_calls) == 1, calls
    (call,) = socketpair_calls
    assert "SOCK_STREAM|SOCK_CLOEXEC|SOCK_NONBLOCK" in call
    assert f"[{fd0}, {fd1}]" in call
    # No fcntl/ioctl touches the new fds between creation and return.
    others = [line for line in calls if "socketpair(" not in line]
    assert not [line for line in others if f"({fd0}," in line or f"({fd1}," in line], others


def test_descriptor_exhaustion_raises_emfile_and_leaks_nothing() -> None:
    code = textwrap.dedent(
        """
        import errno, os, resource
        import unix_socketpair

        def count():
            return len(os.listdir("/proc/self/fd"))

        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        held = []
        try:
            while True:
                held.append(os.open(os.devnull, os.O_RDONLY))
        except OSError as exc:
            assert exc.errno == errno.EMFILE
        # Free exactly one slot: socketpair() needs two, so it must fail with EMFILE.
        os.close(held.pop())
        before = count()
        try:
            unix_socketpair.socketpair()
        except OSError as exc:
            assert exc.errno == errno.EMFILE, exc.errno
            assert "socketpair()" in str(exc), str(exc)
            print("EMFILE", str(exc))
        else:
            raise SystemExit("socketpair() did not fail")
        assert count() == before, (count(), before)
        for fd in held:
            os.close(fd)
        print("unchanged")
        """
    )
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    assert "EMFILE [Errno 24] socketpair() failed" in proc.stdout
    assert "unchanged" in proc.stdout


def test_oserror_keeps_errno_and_names_socketpair() -> None:
    # EMFILE through the same path, in-process, via a tight soft limit in a child.
    proc = run_python(
        "import resource, errno, unix_socketpair\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (3, 3))\n"
        "try:\n"
        "    unix_socketpair.socketpair()\n"
        "except OSError as e:\n"
        "    print(e.errno == errno.EMFILE, type(e).__name__, e.strerror)\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[:2] == ["True", "OSError"]
    assert "socketpair()" in proc.stdout


def test_ten_thousand_cycles_leave_the_fd_count_unchanged() -> None:
    before = open_fds()
    for sock_type in TYPES:
        for _ in range(10_000 // len(TYPES) + 1):
            fd0, fd1 = socketpair(sock_type)
            os.close(fd0)
            os.close(fd1)
    assert open_fds() == before


def test_seed_scenario_node_child_wraps_fd3_in_net_socket() -> None:
    """The seed's own use: Python makes the pair, Node gets one end at fd 3."""
    node = require("node")
    js = textwrap.dedent(
        """
        const net = require('net');
        const sock = new net.Socket({fd: 3, readable: true, writable: true});
        let got = Buffer.alloc(0);
        sock.on('data', (d) => { got = Buffer.concat([got, d]); });
        sock.on('end', () => { sock.end('node got: ' + got.toString()); });
        """
    )
    parent_fd, child_fd = socketpair(SOCK_STREAM)
    try:
        # The seed's stdio array puts the end at fd 3 in the child. Moving it there in
        # this process could clobber one of pytest's fds, so bash (dash takes only fds
        # 0-9 in redirections) does the move in
        # the child (the spawn helper does this without a shell).
        move = "" if child_fd == 3 else f" 3<&{child_fd} {child_fd}<&-"
        try:
            proc = subprocess.Popen(
                [require("bash"), "-c", f'exec "$0" -e "$1"{move}', node, js], pass_fds=(child_fd,)
            )
        finally:
            os.close(child_fd)  # the seed's warning: close the child's end right after spawn
        with socket.socket(fileno=parent_fd) as sock:
            parent_fd = -1
            sock.settimeout(30)
            sock.sendall(b"hello from python")
            sock.shutdown(socket.SHUT_WR)
            reply = b""
            while chunk := sock.recv(4096):
                reply += chunk
        assert proc.wait(timeout=30) == 0
        assert reply == b"node got: hello from python"
    finally:
        if parent_fd != -1:
            os.close(parent_fd)
