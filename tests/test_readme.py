"""Every example of the README and of docs/*.md runs, and prints what the page says it prints.

What counts as an example is defined in ``doc_examples``. Each one runs in a scratch directory,
so none can lean on the checkout's files (an installed package has no ``examples/``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from doc_examples import (
    DOCS,
    PAGES,
    PythonExample,
    Transcript,
    output_matches,
    printed_matches,
    python_examples,
    transcripts,
)
from support import ROOT, require, run_python

EXAMPLES = python_examples()
# The README's transcripts are run by test_cli.py, with the command line's other tests.
TRANSCRIPTS = transcripts([page for page in PAGES if page.parent == DOCS])


def test_the_pages_have_examples() -> None:
    count: dict[str, int] = {}
    for example in EXAMPLES:
        page = example.where.split(":")[0]
        count[page] = count.get(page, 0) + 1
    assert count["README.md"] >= 5
    # Each example of the Node.js add-on's README has its twin.
    assert count["docs/from-node.md"] >= 5
    for page in ("spawn", "channel", "socketpair", "quickstart"):
        assert count[f"docs/{page}.md"] >= 1, page
    assert any(t.where.startswith("docs/cli.md") for t in TRANSCRIPTS)


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.where for e in EXAMPLES])
def test_python_example_runs(example: PythonExample, tmp_path: Path) -> None:
    if '"node"' in example.code:
        require("node")
    if '"cc"' in example.code:
        require("cc")
    proc = run_python(example.code, cwd=tmp_path, timeout=90)
    assert proc.returncode == 0, f"{example.where} failed:\n{proc.stderr}"
    if example.expected is not None:
        assert printed_matches(example, proc.stdout), (proc.stdout, example.expected)


@pytest.mark.parametrize("transcript", TRANSCRIPTS, ids=[t.where for t in TRANSCRIPTS])
def test_console_transcript(transcript: Transcript, tmp_path: Path) -> None:
    """The block's commands run in order, in one scratch directory, and print as shown."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    for command, expected in transcript.steps:
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
        assert output_matches(expected, output), (
            f"{transcript.where}: $ {command}\nexpected:\n{expected}\ngot:\n{output}"
        )


def test_output_matcher() -> None:
    assert output_matches("a\n...\nz\n", "a\nb\nc\nz\n")
    assert output_matches("pid ... ok\n", "pid 1234 ok\n")
    assert not output_matches("a\nz\n", "a\nb\nz\n")
    assert not output_matches("pid ... ok\n", "pid 1234 failed\n")
    varying = PythonExample("x", "", "fds: [3, 4]\n", numbers_vary=True)
    assert printed_matches(varying, "fds: [17, 18]\n")
    assert not printed_matches(varying, "fds: [a, b]\n")


def test_python_used_is_this_venvs() -> None:
    # The examples must import the project under test, not some other install.
    proc = run_python("import unix_socketpair, sys; print(unix_socketpair.__file__)")
    assert str(ROOT / "src") in proc.stdout, (proc.stdout, sys.executable)
