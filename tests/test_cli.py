"""The ``unix-socketpair`` command end to end: real processes, real children, no terminal.

Every test runs the command as a subprocess (``python -m unix_socketpair``), feeds it
stdin and checks its stdout, stderr and exit status. The README's console examples of the
"Command line" section are run too, and must print what the README says.
"""

from __future__ import annotations

import hashlib
import os
import re
import select
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import ROOT, compile_c, require

from unix_socketpair._cli import main

CHILDREN = Path(__file__).resolve().parent / "cli_children"
MiB = 1024 * 1024
PY = sys.executable


def cli(*args: str) -> list[str]:
    return [PY, "-m", "unix_socketpair", *args]


def run(
    *args: str, input: bytes = b"", timeout: float = 30, **kwargs: object
) -> subprocess.CompletedProcess[bytes]:
    """Run the command with *input* on stdin; capture stdout and stderr."""
    return subprocess.run(
        cli(*args),
        input=input,
        capture_output=True,
        timeout=timeout,
        check=False,
        **kwargs,  # type: ignore[arg-type]
    )


def assert_no_traceback(proc: subprocess.CompletedProcess[bytes]) -> None:
    assert b"Traceback" not in proc.stderr, proc.stderr.decode()


def gone(pid: int) -> bool:
    """True if no process *pid* exists (a zombie still counts as existing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def read_line(stream: object, deadline: float) -> bytes:
    """Read one line from a pipe's file object without hanging past *deadline*."""
    fd = stream.fileno()  # type: ignore[attr-defined]
    line = b""
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        assert left > 0, f"no full line in time (got {line!r})"
        if not select.select([fd], [], [], left)[0]:
            continue
        byte = os.read(fd, 1)
        assert byte, f"EOF before a full line (got {line!r})"
        line += byte
    return line


# --------------------------------------------------------------------- version and help


def test_version() -> None:
    from unix_socketpair import __version__

    proc = run("--version")
    assert proc.returncode == 0
    assert proc.stdout.decode() == f"unix-socketpair {__version__}\n"


def test_console_script_is_installed() -> None:
    script = Path(PY).parent / "unix-socketpair"
    proc = subprocess.run([str(script), "--version"], capture_output=True, timeout=30, check=False)
    assert proc.returncode == 0 and proc.stdout.startswith(b"unix-socketpair ")


@pytest.mark.parametrize("command", [[], ["demo"], ["exec"], ["link"]])
def test_help_has_usage_and_examples(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*command, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: unix-socketpair {' '.join(command)}".rstrip())
    assert "example" in out
    assert "unix-socketpair " + " ".join(command) in out.split("example", 1)[1]


def test_help_names_every_subcommand() -> None:
    out = run("--help").stdout.decode()
    for name in ("demo", "exec", "link", "bench"):
        assert re.search(rf"^\s+{name}\s", out, re.MULTILINE), out


def test_bench_help() -> None:
    proc = run("bench", "--help")
    try:
        import unix_socketpair._bench  # noqa: F401
    except ModuleNotFoundError:
        assert proc.returncode == 1
        assert b"bench: the benchmarks are not part of this installation" in proc.stderr
    else:
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith(b"usage: unix-socketpair bench")
        assert b"examples:" in proc.stdout


# ------------------------------------------------------------------------ exit statuses


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bogus"], "invalid choice: 'bogus'"),
        ([], "required: COMMAND"),
        (["exec"], "a command is needed after '--'"),
        (["exec", "--"], "a command is needed after '--'"),
        (["exec", "cat"], "the command goes after '--'"),
        (["exec", "--fd", "x", "--", "true"], "not a descriptor number: 'x'"),
        (["exec", "--fd", "-1", "--", "true"], "cannot be negative"),
        (["exec", "--null", "--", "true"], "--null goes with --frames"),
        (["exec", "--kill-after", "soon", "--", "true"], "not a number of seconds: 'soon'"),
        (["exec", "--kill-after", "-1", "--", "true"], "seconds must be >= 0"),
        (["exec", "--fd", "99999999", "--", "true"], "over the descriptor limit"),
        (["exec", "--fd", "3", "--stdio", "--", "true"], "not allowed with argument --fd"),
        (["exec", "--type", "raw", "--", "true"], "invalid choice: 'raw'"),
        (["exec", "--bogus", "--", "true"], "unrecognized arguments: --bogus"),
        (["link", "--", "true"], "two commands are needed"),
        (["link", "--", "true", "--"], "a command is missing after the separator '--'"),
        (["link", "--", "--", "true"], "a command is missing before the separator '--'"),
        (["demo", "extra"], "unrecognized arguments: extra"),
        (["demo", "--", "x"], "unrecognized arguments: -- x"),
    ],
)
def test_bad_usage_exits_2_with_one_error_line_and_the_usage(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # In-process (argparse is all there is to it); the subprocess test below covers
    # the real exit status once.
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert lines[0].startswith("usage: unix-socketpair")
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1 and errors[0] == lines[-1]
    assert lines[-1].startswith("unix-socketpair")
    assert message in lines[-1]


def test_bad_usage_exit_status_in_a_real_process() -> None:
    proc = run("exec", "--type", "raw", "--", "true")
    assert proc.returncode == 2
    assert (
        proc.stderr.decode()
        .splitlines()[-1]
        .startswith("unix-socketpair exec: error: argument --type: invalid choice: 'raw'")
    )


@pytest.mark.parametrize("mode", [["exec"], ["exec", "--stdio"], ["link"]])
def test_command_not_found_exits_127(mode: list[str]) -> None:
    tail = ["--", "true"] if mode == ["link"] else []
    proc = run(*mode, "--", "no-such-command-here", *tail)
    assert proc.returncode == 127
    assert proc.stderr == b"unix-socketpair: no-such-command-here: command not found\n"


def test_link_second_command_not_found_exits_127_and_stops_the_first() -> None:
    started = time.monotonic()
    proc = run("link", "--", "sleep", "30", "--", "no-such-command-here")
    assert proc.returncode == 127
    assert proc.stderr == b"unix-socketpair: no-such-command-here: command not found\n"
    assert time.monotonic() - started < 20  # the sleeping first command was stopped


def test_not_executable_exits_126(tmp_path: Path) -> None:
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(stat.S_IRUSR | stat.S_IWUSR)
    proc = run("exec", "--", str(script))
    assert proc.returncode == 126
    assert proc.stderr == f"unix-socketpair: {script}: permission denied\n".encode()


@pytest.mark.parametrize("status", [0, 1, 7, 255])
def test_exit_status_is_the_childs(status: int) -> None:
    proc = run("exec", "--", "sh", "-c", f"exit {status}")
    assert proc.returncode == status
    assert proc.stderr == b""


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM, signal.SIGSEGV])
def test_killed_child_gives_128_plus_signal(signum: signal.Signals) -> None:
    proc = run("exec", "--", "sh", "-c", f"kill -{signum.name[3:]} $$")
    assert proc.returncode == 128 + signum
    assert_no_traceback(proc)


# ---------------------------------------------------------------------------- exec: bytes


def test_exec_stdio_tr() -> None:
    proc = run("exec", "--stdio", "--", "tr", "a-z", "A-Z", input=b"hello, tr\n")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"HELLO, TR\n", b"")


def test_exec_fd3_shell_child_reads_and_writes_its_socket() -> None:
    proc = run(
        "exec",
        "--",
        "sh",
        "-c",
        'read line <&3; echo "fd $SOCKETPAIR_FD got: $line" >&3',
        input=b"over the socket\n",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"fd 3 got: over the socket\n"


def test_exec_when_fd3_is_taken_in_the_tool_itself() -> None:
    # Started with its own fd 3 open (on /dev/null), the tool still gives the child its
    # socket at 3, and the child holds nothing else of ours.
    code = (
        "import os\n"
        "def is_open(fd):  # listdir's own descriptor is listed, but closed again\n"
        "    try: return os.fstat(fd) is not None\n"
        "    except OSError: return False\n"
        "fds = sorted(fd for fd in map(int, os.listdir('/proc/self/fd')) if is_open(fd))\n"
        "kind = os.readlink('/proc/self/fd/3').split(':')[0]\n"
        "os.write(3, f'{kind} {fds}'.encode())"
    )
    proc = subprocess.run(
        ["sh", "-c", 'exec 3</dev/null; exec "$@"', "sh", *cli("exec", "--", PY, "-c", code)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"socket [0, 1, 2, 3]"


def test_exec_other_fd_number() -> None:
    proc = run("exec", "--fd", "7", "--", "sh", "-c", "tr a-z A-Z <&7 >&7", input=b"seven\n")
    assert (proc.returncode, proc.stdout) == (0, b"SEVEN\n")


def test_exec_childs_stdin_is_not_ours() -> None:
    # Without --stdio the tool reads stdin itself; the child must not compete for it.
    proc = run("exec", "--", "sh", "-c", "cat; echo done >&3", input=b"for the socket\n")
    assert (proc.returncode, proc.stdout) == (0, b"done\n")


def test_half_close_lets_the_child_see_eof_and_answer() -> None:
    code = (
        "import socket; s = socket.socket(fileno=3); data = b''\n"
        "while chunk := s.recv(65536): data += chunk\n"
        "s.sendall(b'after EOF: %d bytes' % len(data))"
    )
    proc = run("exec", "--", PY, "-c", code, input=b"x" * 100_000)
    assert (proc.returncode, proc.stdout) == (0, b"after EOF: 100000 bytes")


def test_10_mib_binary_both_ways_through_cat_on_stdio() -> None:
    payload = os.urandom(10 * MiB)
    proc = run("exec", "--stdio", "--", "cat", input=payload, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout) == len(payload)
    assert hashlib.sha256(proc.stdout).digest() == hashlib.sha256(payload).digest()


def test_10_mib_binary_both_ways_through_fd3() -> None:
    payload = os.urandom(10 * MiB)
    proc = run("exec", "--", "sh", "-c", "cat <&3 >&3", input=payload, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert hashlib.sha256(proc.stdout).digest() == hashlib.sha256(payload).digest()


def test_10_mib_from_a_child_that_exits_at_once_all_arrives() -> None:
    # The child writes 10 MiB as fast as the socket takes it and exits without closing
    # anything itself: everything it wrote must still reach stdout.
    code = (
        "import hashlib, os, sys\n"
        "data = os.urandom(10 * 1024 * 1024); view = memoryview(data)\n"
        "while view: view = view[os.write(3, view):]\n"
        "sys.stderr.write(hashlib.sha256(data).hexdigest()); sys.stderr.flush(); os._exit(0)"
    )
    proc = run("exec", "--", PY, "-c", code, timeout=60)
    assert proc.returncode == 0
    assert len(proc.stdout) == 10 * MiB
    assert hashlib.sha256(proc.stdout).hexdigest() == proc.stderr.decode()


def test_10_mib_to_a_child_checksummed_there() -> None:
    payload = os.urandom(10 * MiB)
    code = (
        "import hashlib, socket\n"
        "s = socket.socket(fileno=3); h = hashlib.sha256(); n = 0\n"
        "while chunk := s.recv(1 << 16): h.update(chunk); n += len(chunk)\n"
        "print(n, h.hexdigest())"
    )
    proc = run("exec", "--", PY, "-c", code, input=payload, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode() == f"{len(payload)} {hashlib.sha256(payload).hexdigest()}\n"


def test_stdin_from_a_regular_file_and_dev_null(tmp_path: Path) -> None:
    source = tmp_path / "input"
    source.write_bytes(b"from a file\n" * 1000)
    with source.open("rb") as stdin:
        proc = subprocess.run(
            cli("exec", "--stdio", "--", "cat"), stdin=stdin, capture_output=True, timeout=30
        )
    assert (proc.returncode, proc.stdout) == (0, source.read_bytes())
    proc = subprocess.run(
        cli("exec", "--stdio", "--", "cat"),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=30,
    )
    assert (proc.returncode, proc.stdout) == (0, b"")


def test_a_grandchild_holding_the_socket_does_not_keep_exec_waiting() -> None:
    # The child exits; a background process it started still has fd 3. exec ends with
    # the child (after delivering its output), as documented, instead of waiting for it.
    started = time.monotonic()
    proc = run("exec", "--", "sh", "-c", "sleep 30 >/dev/null 2>&1 & echo $! >&3; exit 4")
    try:
        assert proc.returncode == 4
        assert time.monotonic() - started < 20
    finally:
        os.kill(int(proc.stdout), signal.SIGKILL)  # the background sleep we caused


@pytest.mark.parametrize("closed", ["<&-", ">&-"])
def test_started_with_stdin_or_stdout_closed(closed: str) -> None:
    # The socketpair must not take the free number 0 or 1 and be mistaken for stdio.
    script = f'exec {closed}; exec "$@"'
    code = (
        "import os, sys\n"
        "for _ in range(64): os.write(3, bytes(16384))\n"
        "sys.stderr.write(sys.stdin.read())"
    )
    proc = subprocess.run(
        ["sh", "-c", script, "sh", *cli("exec", "--", PY, "-c", code)],
        input=b"",
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (bytes(1024 * 1024) if closed == "<&-" else b"")
    assert proc.stderr == b""


def test_reader_of_stdout_going_away_stops_the_child() -> None:
    # Like `yes | head -1`: when nobody reads our output any more, the child's next
    # write fails (EPIPE) and everything ends instead of spinning forever.
    code = "import os\nwhile True: os.write(3, b'y\\n' * 4096)"
    with subprocess.Popen(
        cli("exec", "--", PY, "-c", code),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        assert read_line(proc.stdout, time.monotonic() + 20) == b"y\n"
        proc.stdout.close()
        assert proc.wait(timeout=20) != 0  # the child failed writing: BrokenPipeError
        assert b"BrokenPipeError" in proc.stderr.read()


# --------------------------------------------------------------------------- exec: frames


def test_frames_on_a_stream_socket_round_trip_as_lines() -> None:
    # cat echoes the framed bytes unchanged, so each line comes back as one message.
    lines = b"first\n\nthird line with spaces\nlast line without newline"
    proc = run("exec", "--frames", "--", "sh", "-c", "cat <&3 >&3", input=lines)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"first\n\nthird line with spaces\nlast line without newline\n"


def test_frames_are_length_prefixed_big_endian() -> None:
    code = "import os, sys\nsys.stdout.write(os.read(3, 100).hex())"
    proc = run("exec", "--frames", "--", PY, "-c", code, input=b"hi\n")
    assert proc.stdout == b"00000002" + b"hi".hex().encode()


def test_frames_with_a_c_child() -> None:
    binary = compile_c(CHILDREN / "frames_reverse.c")
    proc = run("exec", "--frames", "--", str(binary), input=b"hello\nsocketpair\n\nabc\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"olleh\nriaptekcos\n\ncba\n"


def test_frames_with_a_node_child() -> None:
    node = require("node")
    proc = run(
        "exec", "--frames", "--", node, str(CHILDREN / "frames_upper.js"), input=b"one\ntwo\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"ONE\nTWO\n"


def test_frames_10_mib_line_through_a_c_child() -> None:
    binary = compile_c(CHILDREN / "frames_reverse.c")
    line = os.urandom(5 * MiB).hex().encode()  # 10 MiB of text, one line
    proc = run("exec", "--frames", "--", str(binary), input=line + b"\n", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == line[::-1] + b"\n"


@pytest.mark.parametrize("kind", ["seqpacket", "dgram"])
def test_frames_on_packet_sockets_are_one_packet_per_line(kind: str) -> None:
    code = (
        "import socket; s = socket.socket(fileno=3)\n"
        "for _ in range(3): s.send(b'got %d bytes' % len(s.recv(65536)))"
    )
    proc = run("exec", "--type", kind, "--frames", "--", PY, "-c", code, input=b"a\nbb\nccc\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"got 1 bytes\ngot 2 bytes\ngot 3 bytes\n"


def test_dgram_without_frames_ends_with_the_child() -> None:
    # No end-of-file on datagrams: the child's exit is what ends the relay.
    code = (
        "import socket; s = socket.socket(fileno=3); d = s.recv(100)\n"
        "s.send(b'got ' + d); s.send(b'!')"
    )
    proc = run("exec", "--type", "dgram", "--", PY, "-c", code, input=b"abc")
    assert (proc.returncode, proc.stdout) == (0, b"got abc!")


def test_seqpacket_without_frames_keeps_packets_and_sees_eof() -> None:
    code = (
        "import socket; s = socket.socket(fileno=3); sizes = []\n"
        "while packet := s.recv(65536): sizes.append(len(packet))\n"
        "s.send(repr(sum(sizes)).encode())"
    )
    proc = run("exec", "--type", "seqpacket", "--", PY, "-c", code, input=b"z" * 200_000)
    assert (proc.returncode, proc.stdout) == (0, b"200000")


def test_frames_protocol_error_is_reported_and_the_child_stopped() -> None:
    # A child that does not speak the framing: 0xffffffff is far over the 64 MiB limit.
    code = "import os, time\nos.write(3, b'\\xff' * 8)\ntime.sleep(30)"
    proc = run("exec", "--frames", "--", PY, "-c", code)
    assert proc.returncode != 0
    assert proc.stderr.startswith(
        b"unix-socketpair: the child broke the framing: the peer declared a message of "
        b"4294967295 bytes, over max_message_size (67108864 bytes)"
    )
    assert_no_traceback(proc)


def test_frames_child_exiting_inside_a_message_is_reported() -> None:
    code = "import os\nos.write(3, b'\\x00\\x00\\x00\\x10abc')"
    proc = run("exec", "--frames", "--", PY, "-c", code)
    assert proc.returncode == 1
    assert proc.stderr.startswith(
        b"unix-socketpair: the child broke the framing: end of file inside a message: "
        b"3 of its 16 payload bytes arrived"
    )


# ------------------------------------------------------------------------------ signals


# Runs the tool with the signals it forwards at their default action even if this test
# run ignores them (background jobs ignore SIGINT and SIGQUIT, nohup SIGHUP): a tool
# started with a signal ignored rightly leaves it ignored.
_SIGNALS_DEFAULT = (
    "import os, signal, sys\n"
    "for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):\n"
    "    signal.signal(signum, signal.SIG_DFL)\n"
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
)


def _start_with_pid_reporting_child(*mode: str, child_code: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [PY, "-c", _SIGNALS_DEFAULT, *cli(*mode, "--", PY, "-c", child_code)[1:]],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


_SLEEPER = (
    "import os, signal, time\n"
    "signal.signal(signal.SIGINT, signal.SIG_DFL)  # even if our parent ignored it\n"
    "os.write(3, b'%d\\n' % os.getpid())\n"
    "time.sleep(60)"
)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signal_is_forwarded_and_no_child_is_left(signum: signal.Signals) -> None:
    with _start_with_pid_reporting_child("exec", child_code=_SLEEPER) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        child_pid = int(read_line(proc.stdout, time.monotonic() + 20))
        proc.send_signal(signum)
        assert proc.wait(timeout=20) == 128 + signum
        stderr = proc.stderr.read()
    assert b"Traceback" not in stderr, stderr.decode()
    assert gone(child_pid), "the child outlived the tool"


def test_child_that_handles_sigterm_decides_the_status() -> None:
    code = (
        "import os, signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(5))\n"
        "os.write(3, b'%d\\n' % os.getpid())\n"
        "time.sleep(60)"
    )
    with _start_with_pid_reporting_child("exec", child_code=code) as proc:
        assert proc.stdout is not None
        read_line(proc.stdout, time.monotonic() + 20)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 5


def test_sigterm_reaches_both_linked_children() -> None:
    # One write() each: the two children share stderr, and their lines must not mix.
    code = "import os, time\nos.write(2, b'%d\\n' % os.getpid())\ntime.sleep(60)"
    with subprocess.Popen(
        cli("link", "--", PY, "-c", code, "--", PY, "-c", code),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    ) as proc:
        assert proc.stderr is not None
        deadline = time.monotonic() + 20
        pids = {int(read_line(proc.stderr, deadline)), int(read_line(proc.stderr, deadline))}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 128 + signal.SIGTERM
        assert b"Traceback" not in proc.stderr.read()
    assert all(gone(pid) for pid in pids)


# --------------------------------------------------------------------------------- link


def test_link_stdio_ping_pong() -> None:
    proc = run(
        "link",
        "--",
        "sh",
        "-c",
        'echo ping; read reply; echo "left got: $reply" >&2',
        "--",
        "sh",
        "-c",
        'read msg; echo "pong after $msg"',
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"", b"left got: pong after ping\n")


def test_link_at_an_fd_number_with_a_c_child() -> None:
    binary = compile_c(CHILDREN / "frames_reverse.c")
    # The shell sends one framed message "abc" on fd 5 and prints what comes back.
    sender = r"printf '\000\000\000\003abc' >&5; exec head -c 7 <&5"
    proc = run("link", "--fd", "5", "--", "sh", "-c", sender, "--", str(binary))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"\x00\x00\x00\x03cba"


def test_link_separator_lets_the_first_command_have_double_dash() -> None:
    proc = run(
        "link",
        "--separator",
        "::",
        "--",
        "sh",
        "-c",
        'echo "$1"',
        "--",
        "--literal",
        "::",
        "sh",
        "-c",
        'read line; echo "got $line" >&2',
    )
    assert (proc.returncode, proc.stderr) == (0, b"got --literal\n")


@pytest.mark.parametrize(
    ("first", "second", "status"),
    [
        ("read x; exit 4", "exit 3", 4),  # CMD1 ends after CMD2, yet its status wins
        ("exit 5", "read x; exit 6", 5),
        ("read x; exit 0", "exit 6", 6),
        ("exit 0", "read x; exit 7", 7),
        ("exit 0", "exit 0", 0),
    ],
)
def test_link_exits_with_the_first_non_zero_status(first: str, second: str, status: int) -> None:
    proc = run("link", "--", "sh", "-c", first, "--", "sh", "-c", second)
    assert proc.returncode == status


def test_link_killed_child_gives_128_plus_signal() -> None:
    proc = run("link", "--", "sh", "-c", "kill -KILL $$", "--", "cat")
    assert proc.returncode == 137


def test_link_with_a_node_child() -> None:
    node = require("node")
    sender = r"printf '\000\000\000\004ping' >&3; exec head -c 8 <&3"
    proc = run(
        "link", "--fd", "3", "--", "sh", "-c", sender, "--", node, str(CHILDREN / "frames_upper.js")
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"\x00\x00\x00\x04PING"


# ------------------------------------------------------------------ README console blocks

README = ROOT / "README.md"
_FENCE = re.compile(r"^```console\n(.*?)^```\n", re.MULTILINE | re.DOTALL)


def _command_line_section() -> str:
    text = README.read_text()
    start = text.find("\n## Command line\n")
    if start < 0:
        return ""
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


def _console_blocks() -> list[list[tuple[str, str]]]:
    """Per console block of the section: (command, expected output) for each ``$`` line."""
    blocks = []
    for block in _FENCE.finditer(_command_line_section()):
        examples: list[tuple[str, str]] = []
        lines = block.group(1).splitlines()
        index = 0
        while index < len(lines):
            command = lines[index][2:]
            assert lines[index].startswith("$ "), f"not a command: {lines[index]!r}"
            while command.endswith("\\"):  # continued on the next line
                index += 1
                command += "\n" + lines[index]
            index += 1
            expected = ""
            while index < len(lines) and not lines[index].startswith("$ "):
                expected += lines[index] + "\n"
                index += 1
            examples.append((command, expected))
        blocks.append(examples)
    return blocks


def _matches(expected: str, output: str) -> bool:
    """``...`` alone on a line stands for any number of lines, inside a line for any text."""
    pattern = ""
    for line in expected.splitlines():
        if line == "...":
            pattern += r"(?:.*\n)*?"
        else:
            pattern += ".*".join(re.escape(part) for part in line.split("...")) + r"\n"
    return re.fullmatch(pattern, output) is not None


CONSOLE_BLOCKS = _console_blocks()


def test_readme_documents_every_subcommand_with_an_example() -> None:
    commands = [command for block in CONSOLE_BLOCKS for command, _ in block]
    for name in ("demo", "exec", "link", "bench", "--version"):
        assert any(f"unix-socketpair {name}" in command for command in commands), name


@pytest.mark.parametrize(
    "block", CONSOLE_BLOCKS, ids=[block[0][0][:40] for block in CONSOLE_BLOCKS]
)
def test_readme_console_block(block: list[tuple[str, str]], tmp_path: Path) -> None:
    """The block's commands run in order, in one scratch directory, and print as shown."""
    env = dict(os.environ, PATH=f"{Path(PY).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    for command, expected in block:
        if "unix-socketpair demo" in command:
            require("cc")
            require("node")
        proc = subprocess.run(
            ["sh", "-c", command],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env=env,
            timeout=60,
            check=False,
        )
        output = proc.stdout.decode()
        assert _matches(expected, output), f"$ {command}\nexpected:\n{expected}\ngot:\n{output}"


def test_console_matcher() -> None:
    assert _matches("a\n...\nz\n", "a\nb\nc\nz\n")
    assert _matches("a\n...\nz\n", "a\nz\n")
    assert _matches("pid ... ok\n", "pid 1234 ok\n")
    assert not _matches("a\nz\n", "a\nb\nz\n")
    assert not _matches("pid ... ok\n", "pid 1234 failed\n")
