"""``unix-socketpair exec``/``link`` under attack: terminals, SIGKILL, stubborn children,
endless grandchildren, broken pipes, and every example its help prints.

Real processes throughout: the command runs as ``python -m unix_socketpair``; a terminal is
a real pseudo-terminal whose line discipline sends Ctrl-C to the foreground process group.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import require
from test_cli import _SIGNALS_DEFAULT, cli, gone, read_line, run

PY = sys.executable
BIN = str(Path(sys.executable).parent)


def _deadline(seconds: float = 20) -> float:
    return time.monotonic() + seconds


# ------------------------------------------------------------- one Ctrl-C, one SIGINT

# Counts the SIGINTs it gets; says "ready" on its socket, and at end-of-file how many.
_COUNTER = (
    "import os, signal\n"
    "n = 0\n"
    "def count(signum, frame):\n"
    "    global n\n"
    "    n += 1\n"
    "signal.signal(signal.SIGINT, count)\n"
    "os.write(3, b'ready\\n')\n"
    "while os.read(3, 1024): pass\n"
    "os.write(3, b'sigints=%d\\n' % n)\n"
)


def _with_sigint_default(*args: str) -> list[str]:
    """The command, started with SIGINT at its default action even where this test run
    ignores it (a background job): a tool started with SIGINT ignored rightly keeps it so."""
    return [PY, "-c", _SIGNALS_DEFAULT, *cli(*args)[1:]]


def test_ctrl_c_on_a_terminal_reaches_the_child_once() -> None:
    setsid = require("setsid")
    master, slave = os.openpty()
    try:
        # setsid -c: a new session whose controlling terminal is the pty (our stdin), so
        # the tool's process group is the terminal's foreground group, as under a shell.
        with subprocess.Popen(
            [setsid, "-c", *_with_sigint_default("exec", "--", PY, "-c", _COUNTER)],
            stdin=slave,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        ) as proc:
            os.close(slave)
            slave = -1
            assert proc.stdout is not None and proc.stderr is not None
            assert read_line(proc.stdout, _deadline()) == b"ready\n"
            os.write(master, b"\x03")  # Ctrl-C: the terminal signals its foreground group
            os.write(master, b"\x04")  # Ctrl-D at the start of a line: end of input
            out = proc.stdout.read()
            assert proc.wait(timeout=20) == 0, proc.stderr.read()
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    assert out == b"sigints=1\n"


def test_sigint_sent_to_the_tool_alone_still_reaches_the_child_once() -> None:
    with subprocess.Popen(
        _with_sigint_default("exec", "--", PY, "-c", _COUNTER),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        assert read_line(proc.stdout, _deadline()) == b"ready\n"
        proc.send_signal(signal.SIGINT)
        proc.stdin.close()
        out = proc.stdout.read()
        assert proc.wait(timeout=20) == 0
    assert out == b"sigints=1\n"


# ---------------------------------------------------------------------------- no orphans

_REPORT_PID_AND_SLEEP = "import os, time\nos.write(3, b'%d\\n' % os.getpid())\ntime.sleep(60)"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("command", ["exec", "link"])
def test_sigkill_to_the_tool_takes_its_children_along(command: str) -> None:
    if command == "exec":
        args = cli("exec", "--", PY, "-c", _REPORT_PID_AND_SLEEP)
    else:
        code = "import os, time\nos.write(2, b'%d\\n' % os.getpid())\ntime.sleep(60)"
        args = cli("link", "--", PY, "-c", code, "--", PY, "-c", code)
    with subprocess.Popen(
        args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:
        stream = proc.stdout if command == "exec" else proc.stderr
        deadline = _deadline()
        pids = [int(read_line(stream, deadline)) for _ in range(1 if command == "exec" else 2)]
        proc.kill()
        proc.wait(timeout=20)
    deadline = _deadline()
    while not all(gone(pid) or _zombie(pid) for pid in pids):
        assert time.monotonic() < deadline, "a child outlived the SIGKILLed tool"
        time.sleep(0.01)  # polling a condition with a deadline


def _zombie(pid: int) -> bool:
    """Dead but not yet reaped by its new parent (init or a subreaper)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True


# ---------------------------------------------------------------- --kill-after


_IGNORES_TERM = (
    "import os, signal, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "os.write(3, b'%d\\n' % os.getpid())\n"
    "while True: time.sleep(60)"
)


def test_kill_after_ends_a_child_that_ignores_sigterm() -> None:
    with subprocess.Popen(
        cli("exec", "--kill-after", "0.2", "--", PY, "-c", _IGNORES_TERM),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        pid = int(read_line(proc.stdout, _deadline()))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 128 + signal.SIGKILL
        assert b"Traceback" not in proc.stderr.read()
    assert gone(pid)


def test_kill_after_has_a_default_and_never_disables_it() -> None:
    out = run("exec", "--help").stdout.decode()
    assert re.search(r"--kill-after SECONDS.*\(default: 10;", " ".join(out.split()))
    # "never": a SIGTERM-ignoring child is not killed; it ends when its stdin does.
    code = (
        "import os, signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "os.write(3, b'ready\\n')\nwhile os.read(3, 1024): pass\n"
    )
    with subprocess.Popen(
        cli("exec", "--kill-after", "never", "--", PY, "-c", code),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    ) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        assert read_line(proc.stdout, _deadline()) == b"ready\n"
        proc.send_signal(signal.SIGTERM)
        proc.stdin.close()
        assert proc.wait(timeout=20) == 0


# ------------------------------------------------------- grandchildren are not waited for


def test_a_grandchild_that_keeps_writing_does_not_keep_the_tool_relaying() -> None:
    # The child starts `yes` on its socket in the background and exits once told to (when
    # `yes` is in full flow); our stdout drains slowly (a reader that takes 64 KiB per
    # 5 ms: a load, not a clock).
    with subprocess.Popen(
        cli("exec", "--", "sh", "-c", "yes >&3 & echo $! >&2; read go <&3"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None and proc.stdin is not None
        grandchild = int(read_line(proc.stderr, _deadline()))
        assert read_line(proc.stdout, _deadline()) == b"y\n"
        proc.stdin.write(b"go\n")
        proc.stdin.close()
        received = 0
        deadline = _deadline()
        while chunk := os.read(proc.stdout.fileno(), 65536):
            received += len(chunk)
            assert time.monotonic() < deadline, f"still relaying after {received} bytes"
            time.sleep(0.005)
        assert proc.wait(timeout=20) == 0
    deadline = _deadline()
    while not (gone(grandchild) or _zombie(grandchild)):  # its next write failed: EPIPE
        assert time.monotonic() < deadline, "the grandchild still writes into a dead socket"
        time.sleep(0.01)


# ---------------------------------------------------------------------- exit statuses


def test_an_input_line_over_the_limit_is_our_error_status_1() -> None:
    from unix_socketpair._relay import MAX_FRAME

    proc = run(
        "exec",
        "--frames",
        "--",
        "sh",
        "-c",
        "cat <&3 >/dev/null",
        input=b"x" * (MAX_FRAME + 2),
    )
    assert proc.returncode == 1
    assert b"longer than" in proc.stderr


def test_exec_stdio_yes_into_head_behaves_like_a_pipeline() -> None:
    tool = " ".join(shlex.quote(a) for a in cli("exec", "--stdio", "--", "yes"))
    for _ in range(20):
        proc = subprocess.run(
            ["bash", "-c", f"{tool} | head -1 >/dev/null; echo ${{PIPESTATUS[0]}}"],
            capture_output=True,
            timeout=30,
        )
        assert (proc.stdout, proc.stderr) == (b"141\n", b"")


# ------------------------------------------------------------------ smaller points


def test_missing_interpreter_is_named(tmp_path: Path) -> None:
    script = tmp_path / "script"
    script.write_text("#!/nonexistent/interpreter\n")
    script.chmod(0o755)
    proc = run("exec", "--", str(script))
    assert proc.returncode == 126
    assert (
        proc.stderr
        == (
            f"unix-socketpair: {script}: bad interpreter: /nonexistent/interpreter: "
            "No such file or directory\n"
        ).encode()
    )


def test_frames_null_keeps_a_newline_inside_a_message() -> None:
    proc = run(
        "exec",
        "--frames",
        "--null",
        "--",
        "sh",
        "-c",
        "cat <&3 >&3",
        input=b"two\nlines\0second\0",
    )
    assert (proc.returncode, proc.stdout) == (0, b"two\nlines\0second\0")


@pytest.mark.parametrize(
    ("fd", "script", "expected"),
    [
        ("0", "tr a-z A-Z", b"HI\n"),  # stdin is the socket, stdout is ours
        ("1", "echo hi", b"hi\n"),  # stdout is the socket
        ("2", "echo hi >&2", b"hi\n"),  # stderr is the socket
    ],
)
def test_fd_0_1_2_are_accepted_as_by_spawn(fd: str, script: str, expected: bytes) -> None:
    proc = run("exec", "--fd", fd, "--", "sh", "-c", script, input=b"hi\n")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, expected, b"")


# ------------------------------------------------------- every example of every --help


def _help_examples() -> list[str]:
    texts = [run(*args, "--help").stdout.decode() for args in ([], ["exec"], ["link"], ["demo"])]
    texts.append(run("bench", "--help").stdout.decode())
    examples = []
    for text in texts:
        found = re.search(r"^examples?:\n((?:  .*\n?)+)", text, re.MULTILINE)
        assert found, text
        examples.extend(line.strip() for line in found.group(1).splitlines())
    return examples


EXAMPLES = _help_examples()


@pytest.mark.parametrize("example", EXAMPLES)
def test_every_help_example_works_as_printed(example: str, tmp_path: Path) -> None:
    if example == "unix-socketpair demo":
        require("cc")
        require("node")
    assert "unix-socketpair" in example
    path = os.pathsep.join([BIN, os.environ.get("PATH", "")])
    assert shutil.which("unix-socketpair", path=path), "the console script is not installed"
    proc = subprocess.run(
        ["sh", "-c", f"set -e; {example}"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ, "PATH": path},
    )
    assert proc.returncode == 0, (example, proc.stdout, proc.stderr)
    assert proc.stdout or proc.stderr, f"{example!r} printed nothing"
    assert b"Traceback" not in proc.stderr


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()[0]


def _wait_state(pid: int, wanted: set[str]) -> None:
    deadline = _deadline()
    while _state(pid) not in wanted:
        assert time.monotonic() < deadline, f"{pid} stays {_state(pid)}, not {wanted}"
        time.sleep(0.01)  # polling a condition with a deadline


def test_ctrl_z_stops_the_child_with_the_tool_and_continue_resumes_both() -> None:
    code = "import os\nos.write(3, b'%d\\n' % os.getpid())\nwhile os.read(3, 1024): pass\n"
    with subprocess.Popen(
        cli("exec", "--", PY, "-c", code),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        start_new_session=True,  # as a shell's job: its own process group
    ) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        child = int(read_line(proc.stdout, _deadline()))
        os.killpg(proc.pid, signal.SIGTSTP)  # what the terminal sends on Ctrl-Z
        _wait_state(proc.pid, {"T"})
        _wait_state(child, {"T"})
        os.killpg(proc.pid, signal.SIGCONT)  # what the shell sends on fg
        _wait_state(proc.pid, {"S", "R"})
        _wait_state(child, {"S", "R"})
        proc.stdin.close()
        assert proc.wait(timeout=20) == 0
