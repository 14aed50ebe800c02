"""spawn(): real children (C, Node.js, shell, tr, cat) get their end at exactly the fd asked for."""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import ROOT, compile_c, open_fds, require, require_exec_helper, run_python

from unix_socketpair import (
    SOCK_DGRAM,
    SOCK_SEQPACKET,
    SOCK_STREAM,
    Channel,
    ChannelClosed,
    Child,
    _spawn,
    socketpair,
    spawn,
)
from unix_socketpair._spawn import spawn_on

CHILDREN = ROOT / "tests" / "children"
EXAMPLES = ROOT / "examples"
TIMEOUT = 20.0  # bound on every wait for a child; they answer in milliseconds


@dataclass(frozen=True)
class Fd:
    """One line of the C child's report on a descriptor it holds."""

    inode: int
    so_type: int  # 0 when it is not a socket
    nonblocking: bool
    cloexec: bool


def fdlist() -> str:
    return str(compile_c(CHILDREN / "fdlist.c"))


def recv_until(sock: socket.socket, end: bytes) -> bytes:
    sock.settimeout(TIMEOUT)
    data = b""
    while not data.endswith(end):
        chunk = sock.recv(65536)
        assert chunk, f"end-of-file before {end!r}; got {data!r}"
        data += chunk
    return data


def recv_all(sock: socket.socket) -> bytes:
    sock.settimeout(TIMEOUT)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def report(sock: socket.socket) -> dict[int, Fd]:
    """Read the C child's descriptor report (on a stream socket)."""
    lines = recv_until(sock, b"end\n").decode().splitlines()[:-1]
    result = {}
    for line in lines:
        fd, inode, so_type, nonblocking, cloexec = map(int, line.split())
        result[fd] = Fd(inode, so_type, bool(nonblocking), bool(cloexec))
    return result


def echo(sock: socket.socket, payload: bytes) -> bytes:
    sock.sendall(payload)
    return recv_until(sock, payload[-1:]) if payload else b""


def inode(fd: int) -> int:
    return os.fstat(fd).st_ino


def lowest_free_fd() -> int:
    probe = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    os.close(probe)
    return probe


@pytest.fixture(params=["helper", "python"])
def foreign_fd(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """A descriptor of the parent that is *not* ours to move (here /dev/null).

    Each test that takes one runs twice: with the C exec helper that places descriptors
    on taken numbers, and with its Python fallback (used where the helper was not built).
    """
    if request.param == "helper":
        require_exec_helper()
    monkeypatch.setattr(_spawn, "_helper_ok", request.param == "helper")
    fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    yield fd
    os.close(fd)


def assert_reaped(pid: int) -> None:
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


# ------------------------------------------------------------------ placement and isolation


@pytest.mark.parametrize("number", [3, 5, 64])
def test_c_child_sees_only_its_socket_at_the_number(no_fd_leak: None, number: int) -> None:
    with spawn([fdlist()], fd=number) as child:
        fds = report(child.socket)
        assert set(fds) == {0, 1, 2, number}, fds
        assert fds[number].so_type == socket.SOCK_STREAM
        assert not fds[number].nonblocking, "the child's socket must be blocking"
        assert not fds[number].cloexec, "the child's socket must survive its own exec"
        assert echo(child.socket, b"ping\n") == b"ping\n"
    assert child.returncode == 0


def test_number_taken_by_another_descriptor_of_the_parent(
    no_fd_leak: None, foreign_fd: int
) -> None:
    null_inode = inode(foreign_fd)
    with spawn([fdlist()], fd=foreign_fd) as child:
        fds = report(child.socket)
        assert set(fds) == {0, 1, 2, foreign_fd}, fds
        assert fds[foreign_fd].so_type == socket.SOCK_STREAM
        assert fds[foreign_fd].inode != null_inode
        assert not fds[foreign_fd].nonblocking and not fds[foreign_fd].cloexec
        assert echo(child.socket, b"through the trampoline\n") == b"through the trampoline\n"
    assert child.returncode == 0
    # The parent's own descriptor at that number was left alone.
    assert inode(foreign_fd) == null_inode
    assert os.read(foreign_fd, 10) == b""


def test_parent_descriptor_of_the_childs_end_already_has_the_number() -> None:
    # The new pair takes the two lowest free numbers; ask for the first one. In a fresh
    # interpreter: in this one, a thread or a collection left by another test may open
    # or close a descriptor between the probe and the pair, and move the numbers.
    code = f"""
import os, socket, sys
from unix_socketpair import spawn
probe = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
os.close(probe)
with spawn([{fdlist()!r}], fd=probe) as child:
    child.socket.settimeout(20)
    data = b""
    while not data.endswith(b"end\\n"):
        data += child.socket.recv(65536)
    parent = child.socket.fileno()
    child.socket.sendall(b"same number\\n")
    echoed = b""
    while not echoed.endswith(b"\\n"):
        echoed += child.socket.recv(64)
print(probe, parent, echoed == b"same number\\n")
print(data.decode(), end="")
"""
    proc = run_python(code, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    first, *lines = proc.stdout.splitlines()
    number, parent, echoed = first.split()
    number_ = int(number)
    fds = {}
    for line in lines[:-1]:
        fd, _inode, so_type, nonblocking, cloexec = map(int, line.split())
        fds[fd] = (so_type, bool(nonblocking), bool(cloexec))
    assert lines[-1] == "end"
    assert set(fds) == {0, 1, 2, number_}, fds
    assert fds[number_] == (socket.SOCK_STREAM, False, False)
    # The pair took `number` and the next one; the child was given the end at `number`.
    assert int(parent) == number_ + 1
    assert echoed == "True"


def test_fd_map_source_already_at_its_number(no_fd_leak: None) -> None:
    d0, d1 = socketpair(SOCK_DGRAM)
    try:
        with spawn([fdlist()], fd=3 if d1 != 3 else 4, fd_map={d1: d1}) as child:
            fds = report(child.socket)
            assert fds[d1].inode == inode(d1) and fds[d1].so_type == socket.SOCK_DGRAM
            assert not fds[d1].cloexec
    finally:
        os.close(d0)
        os.close(d1)


@pytest.mark.parametrize("sock_type", [SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET])
def test_fd_map_dgram_pair_at_fd_4(no_fd_leak: None, sock_type: int) -> None:
    d0, d1 = socketpair(SOCK_DGRAM, blocking=True)
    try:
        with spawn([fdlist()], fd=3, fd_map={4: d1}, type=sock_type) as child:
            if sock_type == SOCK_STREAM:
                fds = report(child.socket)
            else:  # one datagram holds the whole report
                child.socket.settimeout(TIMEOUT)
                lines = child.socket.recv(65536).decode().splitlines()
                assert lines[-1] == "end"
                fds = {
                    int(f): Fd(int(i), int(t), bool(int(n)), bool(int(c)))
                    for f, i, t, n, c in (line.split() for line in lines[:-1])
                }
            assert set(fds) == {0, 1, 2, 3, 4}, fds
            assert fds[3].so_type == sock_type
            assert fds[4].so_type == socket.SOCK_DGRAM and fds[4].inode == inode(d1)
            assert not fds[4].cloexec
            # fd_map is borrowed: the caller's descriptor is still open and works.
            os.write(d1, b"still mine")
            assert os.read(d0, 100) == b"still mine"
            if sock_type == SOCK_DGRAM:  # no end-of-file on datagrams: an empty one stops it
                child.socket.send(b"")
    finally:
        os.close(d0)
        os.close(d1)


def test_fd_map_with_swapped_numbers(no_fd_leak: None) -> None:
    # {N: b, N+1: a} where a sits at N and b at N+1 in the parent: a cycle only the
    # child can resolve. The socket's own target N+2 is occupied by a third source.
    s0, s1 = socketpair(SOCK_STREAM)
    d0, d1 = socketpair(SOCK_DGRAM)
    base = max(open_fds()) + 10
    a = fcntl.fcntl(d1, fcntl.F_DUPFD_CLOEXEC, base)
    b = fcntl.fcntl(s1, fcntl.F_DUPFD_CLOEXEC, a + 1)
    c = fcntl.fcntl(s0, fcntl.F_DUPFD_CLOEXEC, b + 1)
    assert (b, c) == (a + 1, a + 2), "the numbers above the open ones should be free"
    try:
        with spawn([fdlist()], fd=c, fd_map={a: b, b: a}) as child:
            fds = report(child.socket)
            assert set(fds) == {0, 1, 2, a, b, c}, fds
            assert fds[a].inode == inode(s1) and fds[a].so_type == socket.SOCK_STREAM
            assert fds[b].inode == inode(d1) and fds[b].so_type == socket.SOCK_DGRAM
            assert fds[c].inode not in (inode(s0), inode(s1))
            assert not any(fds[n].cloexec for n in (a, b, c))
            assert echo(child.socket, b"cycle\n") == b"cycle\n"
        # The parent's descriptors at those numbers are untouched.
        assert (inode(a), inode(b), inode(c)) == (inode(d1), inode(s1), inode(s0))
    finally:
        for fd in (s0, s1, d0, d1, a, b, c):
            os.close(fd)


def test_fd_map_swapping_fds_3_and_4_in_a_fresh_process() -> None:
    # The literal case: in a fresh interpreter the pair lands on 3 and 4, and the child
    # is to get them the other way round, {3: 4, 4: 3}, with its stream socket at 5.
    code = f"""
import os, sys
from unix_socketpair import SOCK_DGRAM, socketpair, spawn
a, b = socketpair(SOCK_DGRAM)
assert (a, b) == (3, 4), (a, b)
with spawn([{fdlist()!r}], fd=5, fd_map={{3: b, 4: a}}) as child:
    child.socket.settimeout(20)
    data = b""
    while not data.endswith(b"end\\n"):
        data += child.socket.recv(65536)
fds = {{int(line.split()[0]): int(line.split()[1]) for line in data.decode().splitlines()[:-1]}}
print(sorted(fds), fds[3] == os.fstat(4).st_ino, fds[4] == os.fstat(3).st_ino)
"""
    proc = run_python(code, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "[0, 1, 2, 3, 4, 5] True True\n"


def test_fd_map_entry_from_parent_stdio(no_fd_leak: None) -> None:
    # A source numbered 0-2 must survive Popen's own dup2 onto 0-2 (stdin=/stdout=).
    with spawn([fdlist()], fd="stdio", fd_map={7: 0, 8: 2}) as child:
        fds = report(child.socket)
        assert set(fds) == {0, 1, 2, 7, 8}, fds
        assert fds[7].inode == inode(0) and fds[8].inode == inode(2)
        assert fds[0].inode == fds[1].inode and fds[0].so_type == socket.SOCK_STREAM


# ----------------------------------------------------------------------- real children


def test_shell_child_reads_and_writes_fd_3(no_fd_leak: None) -> None:
    script = 'read line <&3; echo "got $line via $SOCKETPAIR_FD" >&3'
    with spawn(["sh", "-c", script], fd=3) as child:
        child.socket.sendall(b"hello\n")
        assert recv_all(child.socket) == b"got hello via 3\n"
    assert child.returncode == 0


def test_node_child_wraps_fd_3_in_net_socket(no_fd_leak: None) -> None:
    node = require("node")
    with spawn([node, str(CHILDREN / "echo.js")], fd=3) as child:
        assert echo(child.socket, b"from python\n") == b"from python\n"
        child.socket.shutdown(socket.SHUT_WR)
        assert recv_all(child.socket) == b""
    assert child.returncode == 0


@pytest.mark.parametrize(
    ("args", "expected"),
    [(["tr", "a-z", "A-Z"], b"HELLO, WORLD\n"), (["cat"], b"hello, world\n")],
)
def test_stdio_mode_with_standard_tools(no_fd_leak: None, args: list[str], expected: bytes) -> None:
    with spawn(args, fd="stdio") as child:
        child.socket.sendall(b"hello, world\n")
        child.socket.shutdown(socket.SHUT_WR)
        assert recv_all(child.socket) == expected
    assert child.returncode == 0


def test_stdio_mode_environment_and_report(no_fd_leak: None) -> None:
    with spawn(["sh", "-c", 'printf %s "$SOCKETPAIR_FD"'], fd="stdio") as child:
        assert recv_all(child.socket) == b"stdio"
    with spawn([fdlist()], fd="stdio") as child:
        fds = report(child.socket)
        assert set(fds) == {0, 1, 2}
        assert fds[0].inode == fds[1].inode and fds[0].so_type == socket.SOCK_STREAM
        assert not fds[0].nonblocking


def test_fd_0_only_leaves_stdout_to_the_caller(no_fd_leak: None) -> None:
    with spawn(["tr", "a-z", "A-Z"], fd=0, stdout=subprocess.PIPE) as child:
        child.socket.sendall(b"abc\n")
        child.socket.close()
        assert child.process.stdout is not None
        assert child.process.stdout.read() == b"ABC\n"


def test_environment_and_cwd(no_fd_leak: None, tmp_path: Path) -> None:
    script = 'printf "%s %s %s" "$SOCKETPAIR_FD" "$EXTRA" "$(pwd)" >&5'
    env = {"PATH": os.environ["PATH"], "EXTRA": "yes"}
    with spawn(["sh", "-c", script], fd=5, env=env, cwd=tmp_path) as child:
        assert recv_all(child.socket) == f"5 yes {tmp_path}".encode()


def test_environment_reaches_the_child_through_the_trampoline(
    no_fd_leak: None, foreign_fd: int
) -> None:
    script = 'printf "%s|%s|%s" "$SOCKETPAIR_FD" "$EXTRA" "$1"'
    weird = "spaces and = and \u00e9\u20ac"
    env = {"PATH": os.environ["PATH"], "EXTRA": weird}
    args = ["sh", "-c", script, "sh", "arg \u00fc"]
    with spawn(args, fd=foreign_fd, env=env, stdout=subprocess.PIPE) as child:
        out, _ = child.process.communicate(timeout=TIMEOUT)
    assert out.decode() == f"{foreign_fd}|{weird}|arg \u00fc"
    assert child.process.args == args


def test_signal_dispositions_match_popen(no_fd_leak: None, foreign_fd: int) -> None:
    # Python ignores SIGPIPE; Popen restores it for the child. So must the trampoline.
    args = ["grep", "-E", "^Sig(Ign|Blk)", "/proc/self/status"]
    plain = subprocess.run(args, capture_output=True, check=True, timeout=TIMEOUT).stdout
    for number in (64, foreign_fd):
        with spawn(args, fd=number, stdout=subprocess.PIPE) as child:
            out, _ = child.process.communicate(timeout=TIMEOUT)
        assert out == plain


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, f"end-of-file after {len(data)} of {size} bytes"
        data += chunk
    return data


def recv_frame(sock: socket.socket) -> bytes:
    sock.settimeout(TIMEOUT)
    (size,) = struct.unpack(">I", recv_exact(sock, 4))
    return recv_exact(sock, size)


@pytest.mark.parametrize("language", ["c", "node"])
def test_example_children_answer_framed_messages(no_fd_leak: None, language: str) -> None:
    if language == "c":
        args = [str(compile_c(EXAMPLES / "child_upper.c"))]
    else:
        args = [require("node"), str(EXAMPLES / "child_upper.js")]
    messages = [b"hello", b"", b"x" * 300_000, bytes(range(256))]
    with spawn(args, fd=3) as child:
        # All at once: the child must cope with several messages (and halves) per read.
        child.socket.sendall(b"".join(frame(m) for m in messages))
        replies = [recv_frame(child.socket) for _ in messages]
    assert replies == [m.upper() for m in messages]
    assert child.returncode == 0


def test_example_shell_child_answers_lines(no_fd_leak: None) -> None:
    with spawn(["sh", str(EXAMPLES / "child_upper.sh")], fd=3) as child:
        child.socket.sendall(b"one\n")
        assert recv_until(child.socket, b"\n") == b"ONE\n"
        child.socket.sendall(b"two words\n")
        assert recv_until(child.socket, b"\n") == b"TWO WORDS\n"
    assert child.returncode == 0


# ------------------------------------------------------------------------------ channel


def upper_children() -> dict[str, list[str]]:
    return {
        "c": [str(compile_c(EXAMPLES / "child_upper.c"))],
        "node": [require("node"), str(EXAMPLES / "child_upper.js")],
        "python": [sys.executable, str(EXAMPLES / "child_upper.py")],
    }


@pytest.mark.parametrize("language", ["c", "node", "python"])
def test_channel_talks_to_a_child_in_any_language(no_fd_leak: None, language: str) -> None:
    args = upper_children()[language]
    with spawn(args, fd=3) as child:
        assert isinstance(child.channel, Channel)
        assert child.channel is child.channel, "made once, on first use"
        child.channel.send(b"job")
        assert child.channel.recv() == b"JOB"
        child.channel.send_many([b"one", b"two"])
        assert [child.channel.recv(), child.channel.recv()] == [b"ONE", b"TWO"]
    assert child.returncode == 0
    assert child.channel.closed


def test_channel_recv_raises_channel_closed_when_the_child_exits(no_fd_leak: None) -> None:
    with spawn(["sh", "-c", "exit 0"], fd=3) as child, pytest.raises(ChannelClosed):
        child.channel.recv()


def test_python_child_on_stdio_uses_channel_from_env(no_fd_leak: None) -> None:
    with spawn([sys.executable, str(EXAMPLES / "child_upper.py")], fd="stdio") as child:
        child.channel.send(b"over stdio")
        assert child.channel.recv() == b"OVER STDIO"
    assert child.returncode == 0


def test_python_child_at_a_taken_number(no_fd_leak: None, foreign_fd: int) -> None:
    with spawn([sys.executable, str(EXAMPLES / "child_upper.py")], fd=foreign_fd) as child:
        child.channel.send(b"relocated")
        assert child.channel.recv() == b"RELOCATED"
    assert child.returncode == 0


# --------------------------------------------------------------------------------- errors


@pytest.fixture(params=["free", "taken"])
def target(request: pytest.FixtureRequest, foreign_fd: int) -> int:
    """A free number (placed without a helper) or a taken one (placed by the trampoline)."""
    return 64 if request.param == "free" else foreign_fd


def _popen_error(args: list[str]) -> OSError:
    with pytest.raises(OSError) as info:
        subprocess.Popen(args)
    return info.value


@pytest.mark.parametrize("program", ["/nonexistent/program", "no-such-program-on-path"])
def test_missing_program_raises_like_subprocess(target: int, program: str) -> None:
    before = open_fds()
    with pytest.raises(FileNotFoundError) as info:
        spawn([program, "arg"], fd=target)
    assert open_fds() == before
    expected = _popen_error([program, "arg"])
    assert (info.value.errno, info.value.filename, str(info.value)) == (
        expected.errno,
        expected.filename,
        str(expected),
    )


def test_empty_program_name_raises_like_subprocess(target: int) -> None:
    before = open_fds()
    with pytest.raises(OSError) as info:
        spawn([""], fd=target)
    assert open_fds() == before
    expected = _popen_error([""])
    assert (type(info.value), info.value.errno) == (type(expected), expected.errno)


def test_non_executable_program_raises_permission_error(target: int, tmp_path: Path) -> None:
    program = tmp_path / "not-executable"
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(stat.S_IRUSR | stat.S_IWUSR)
    before = open_fds()
    with pytest.raises(PermissionError) as info:
        spawn([str(program)], fd=target)
    assert open_fds() == before
    expected = _popen_error([str(program)])
    assert (info.value.errno, info.value.filename) == (expected.errno, expected.filename)


def test_exec_format_error_raises_like_subprocess(target: int, tmp_path: Path) -> None:
    program = tmp_path / "no-shebang"
    program.write_bytes(b"\x00\x01not a program\n")
    program.chmod(0o755)
    before = open_fds()
    with pytest.raises(OSError) as info:
        spawn([str(program)], fd=target)
    assert open_fds() == before
    assert info.value.errno == _popen_error([str(program)]).errno


def test_bad_cwd_raises_like_subprocess(no_fd_leak: None, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        spawn(["true"], fd=3, cwd=tmp_path / "missing")


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"fd": -1}, ValueError),
        ({"fd": "stdout"}, TypeError),
        ({"fd": True}, TypeError),
        ({"fd": 1.5}, TypeError),
        ({"type": 99}, ValueError),
        ({"fd": 3, "fd_map": {3: 0}}, ValueError),
        ({"fd": "stdio", "fd_map": {1: 2}}, ValueError),
        ({"fd": 3, "fd_map": {-2: 0}}, ValueError),
        ({"fd": "stdio", "stdin": subprocess.DEVNULL}, ValueError),
        ({"fd": 1, "stdout": subprocess.DEVNULL}, ValueError),
        ({"fd": 3, "fd_map": {0: 2}, "stdin": subprocess.DEVNULL}, ValueError),
        ({"fd": 3, "fd_map": {"4": 0}}, TypeError),
        ({"fd": 1 << 40}, ValueError),
        ({"fd": 3, "fd_map": {1 << 40: 0}}, ValueError),
    ],
)
def test_bad_arguments_are_refused_before_anything_starts(
    no_fd_leak: None, kwargs: dict[str, object], error: type[Exception]
) -> None:
    with pytest.raises(error):
        spawn(["true"], **kwargs)  # type: ignore[arg-type]


def test_fd_map_with_a_closed_descriptor(no_fd_leak: None) -> None:
    closed = lowest_free_fd()
    with pytest.raises(OSError) as info:
        spawn(["true"], fd_map={4: closed})
    assert "not open" in str(info.value)


def test_empty_args(no_fd_leak: None) -> None:
    with pytest.raises(ValueError):
        spawn([])


# ---------------------------------------------------------------- EOF, reaping, ownership


def test_parent_copy_of_the_childs_end_is_closed(no_fd_leak: None) -> None:
    before = open_fds()
    child = spawn(["sh", "-c", "exit 7"], fd=3)
    try:
        assert open_fds() - before == {child.socket.fileno()}
        # Only the child held the other end: its exit is our EOF, promptly.
        assert recv_all(child.socket) == b""
        assert child.wait(TIMEOUT) == 7
        assert child.returncode == 7
    finally:
        child.close()


def test_eof_after_the_child_exits_with_data_in_flight(no_fd_leak: None) -> None:
    with spawn(["sh", "-c", "echo bye >&3"], fd=3) as child:
        assert recv_all(child.socket) == b"bye\n"


def test_context_exit_closes_the_socket_so_the_child_sees_eof(no_fd_leak: None) -> None:
    with spawn(["sh", "-c", "cat <&3 >/dev/null; exit 3"], fd=3) as child:
        child.socket.sendall(b"some data")
    assert child.returncode == 3
    assert child.socket.fileno() == -1
    assert_reaped(child.pid)


def test_context_exit_kills_a_child_that_ignores_eof(no_fd_leak: None) -> None:
    with spawn(["sleep", "30"], fd=3) as child:
        child.exit_timeout = 0.2
    assert child.returncode == -signal.SIGKILL
    assert_reaped(child.pid)


def test_context_exit_reaps_after_an_exception(no_fd_leak: None) -> None:
    with pytest.raises(KeyError), spawn(["sleep", "30"], fd=3) as child:
        child.exit_timeout = 0.1
        raise KeyError("boom")
    assert child.returncode is not None
    assert_reaped(child.pid)


def test_terminate_and_kill(no_fd_leak: None) -> None:
    with spawn(["sleep", "30"], fd=3) as child:
        child.terminate()
        assert child.wait(TIMEOUT) == -signal.SIGTERM
        child.kill()  # already reaped: no error, no signal to a recycled pid
    with spawn(["sleep", "30"], fd=3) as child:
        child.kill()
        assert child.wait(TIMEOUT) == -signal.SIGKILL
    assert isinstance(child, Child) and str(child.pid) in repr(child)


def test_spawn_on_an_existing_socket(no_fd_leak: None) -> None:
    a, b = socket.socketpair()
    with a, b:
        process = spawn_on(["sh", "-c", "echo on-$SOCKETPAIR_FD >&6"], b, fd=6)
        assert process.wait(TIMEOUT) == 0
        a.settimeout(TIMEOUT)
        assert a.recv(100) == b"on-6\n"
        assert b.fileno() >= 0, "spawn_on borrows the socket"


# ---------------------------------------------------------------------------- threads


def test_threads_spawning_concurrently_each_child_sees_only_its_own_socket(
    no_fd_leak: None,
) -> None:
    program = fdlist()
    failures: list[str] = []
    stop = threading.Event()

    def churn() -> None:  # other threads creating (and closing) pairs all the while
        while not stop.is_set():
            a, b = socketpair()
            os.close(a)
            os.close(b)

    def worker(index: int) -> None:
        try:
            for n in range(25):
                token = f"token-{index}-{n}\n".encode()
                with spawn([program], fd=3) as child:
                    fds = report(child.socket)
                    if set(fds) != {0, 1, 2, 3} or fds[3].so_type != socket.SOCK_STREAM:
                        failures.append(f"child {index}/{n} holds {sorted(fds)}")
                    if echo(child.socket, token) != token:
                        failures.append(f"child {index}/{n} echoed someone else's data")
                if child.returncode != 0:
                    failures.append(f"child {index}/{n} exited with {child.returncode}")
        except Exception as exc:
            failures.append(f"worker {index}: {exc!r}")

    churners = [threading.Thread(target=churn) for _ in range(2)]
    workers = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in churners + workers:
        thread.start()
    for thread in workers:
        thread.join(100)
    stop.set()
    for thread in churners:
        thread.join(10)
    assert not any(thread.is_alive() for thread in churners + workers)
    assert not failures, failures[:5]
