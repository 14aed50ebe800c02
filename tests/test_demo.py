"""``unix-socketpair demo``: it passes here, fails clearly without its tools, never hangs."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import require

from unix_socketpair import _demo
from unix_socketpair._spawn import Child


def run_demo_process(env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "unix_socketpair", "demo"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def test_demo_passes_every_step() -> None:
    require("cc")
    require("node")
    proc = run_demo_process()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr == ""
    lines = proc.stdout.splitlines()
    assert re.fullmatch(r"demo: PASS: all 6 steps passed in \d+\.\d s", lines[-1])
    assert [line for line in lines if line.strip() in ("ok", "FAILED")] == ["    ok"] * 6
    assert "it answered 'HELLO FROM PYTHON'" in proc.stdout
    assert "reversed it: riaptekcos" in proc.stdout
    assert "got back 'TR READS ITS STDIN AND WRITES ITS STDOUT'" in proc.stdout
    assert "read from the pipe's read end: 'written by the C child (pid" in proc.stdout


def test_demo_without_cc_and_node_says_so_and_fails(tmp_path: Path) -> None:
    # A PATH with tr alone: the C, Node.js and fd-passing steps cannot run.
    tr = shutil.which("tr")
    assert tr is not None
    (tmp_path / "tr").symlink_to(tr)
    env = dict(os.environ, PATH=str(tmp_path))
    started = time.monotonic()
    proc = run_demo_process(env)
    assert time.monotonic() - started < 30
    assert proc.returncode == 1
    out = proc.stdout
    assert "cannot run: no C compiler: `cc` is not on PATH" in out
    assert "cannot run: Node.js is not installed (`node` is not on PATH)" in out
    assert "cannot run: it needs the C child of step 3 (no C compiler" in out
    verdicts = [line.strip() for line in out.splitlines() if line.strip() in ("ok", "FAILED")]
    assert verdicts == ["ok", "ok", "FAILED", "FAILED", "ok", "FAILED"]
    assert out.splitlines()[-1].startswith("demo: FAIL: 3 of 6 steps failed in ")
    assert "Traceback" not in proc.stderr


def test_a_stuck_step_is_stopped_by_its_timeout(
    monkeypatch: pytest.MonkeyPatch, no_fd_leak: None
) -> None:
    children: list[Child] = []

    def never_answers(tour: _demo._Tour) -> bool:
        with tour.spawn(["sleep", "30"], fd=3) as child:
            children.append(child)
            child.channel.recv()  # sleep never sends: only the watchdog ends this
        return True

    monkeypatch.setattr(_demo, "STEP_TIMEOUT", 0.5)
    monkeypatch.setattr(_demo, "STEPS", [("a child that never answers", never_answers)])
    out = io.StringIO()
    started = time.monotonic()
    assert _demo.run_demo(out) == 1
    assert time.monotonic() - started < 10
    text = out.getvalue()
    assert "    timed out after 0.5 s: the child was killed\n    FAILED\n" in text
    assert text.splitlines()[-1].startswith("demo: FAIL: 1 of 1 steps failed")
    assert children[0].returncode == -9  # killed and reaped


def test_a_failing_step_is_reported_and_the_next_still_runs(
    monkeypatch: pytest.MonkeyPatch, no_fd_leak: None
) -> None:
    def breaks(tour: _demo._Tour) -> bool:
        raise RuntimeError("something broke")

    def says_no(tour: _demo._Tour) -> bool:
        tour.say("the answer was wrong")
        return False

    monkeypatch.setattr(
        _demo,
        "STEPS",
        [("breaks", breaks), ("says no", says_no), ("descriptors", _demo._print_descriptors)],
    )
    out = io.StringIO()
    assert _demo.run_demo(out) == 1
    text = out.getvalue()
    assert "[1/3] breaks\n    error: RuntimeError: something broke\n    FAILED\n" in text
    assert "[2/3] says no\n    the answer was wrong\n    FAILED\n" in text
    assert re.search(r"\[3/3\] descriptors\n(    .*\n)*    ok\n", text)
    assert text.splitlines()[-1].startswith("demo: FAIL: 2 of 3 steps failed")
