"""Every example of the README and of docs/*.md runs, and prints what the page says it prints.

What counts as an example is defined in ``doc_examples``. Each one runs in a scratch directory,
so none can lean on the checkout's files (an installed package has no ``examples/``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from doc_examples import (
    CHILD_LANGUAGES,
    CHILDREN_PAGE,
    DOCS,
    NOT_CODE,
    PAGES,
    ChildProgram,
    PythonExample,
    Transcript,
    block_kinds,
    child_programs,
    output_matches,
    printed_matches,
    python_examples,
    transcripts,
)
from support import ROOT, require, run_python

from unix_socketpair import spawn

EXAMPLES = python_examples()
CHILDREN = child_programs()
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


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_code_block_is_run(page: Path) -> None:
    """No code on a page escapes the tests: each block is of a kind they run."""
    for where, language in block_kinds(page):
        if page == CHILDREN_PAGE and language in CHILD_LANGUAGES:
            continue
        assert language in ("python", "console", *NOT_CODE), f"{where}: a ```{language} block"


def _build_child(program: ChildProgram, tmp_path: Path) -> list[str]:
    """The command that runs *program*, compiled first if its language needs it."""
    suffix = {"c": ".c", "js": ".js", "rust": ".rs", "sh": ".sh"}[program.language]
    source = tmp_path / f"upper{suffix}"
    source.write_text(program.source)
    binary = str(tmp_path / "upper")
    if program.language == "c":
        cc = require("cc")
        subprocess.run([cc, "-O2", "-Wall", "-Werror", "-o", binary, str(source)], check=True)
        return [binary]
    if program.language == "rust":
        rustc = require("rustc")
        subprocess.run([rustc, "-O", "-D", "warnings", "-o", binary, str(source)], check=True)
        return [binary]
    if program.language == "js":
        return [require("node"), str(source)]
    return ["sh", str(source)]


def test_every_language_of_the_children_page_has_a_child() -> None:
    assert sorted(program.language for program in CHILDREN) == sorted(CHILD_LANGUAGES)


@pytest.mark.parametrize("program", CHILDREN, ids=[p.where for p in CHILDREN])
def test_child_program_answers_and_exits(program: ChildProgram, tmp_path: Path) -> None:
    args = _build_child(program, tmp_path)
    with spawn(args, fd=3, cwd=tmp_path) as child:
        child.socket.sendall(b"hello from python\nsecond line\n")
        child.socket.shutdown(socket.SHUT_WR)  # end of input: the child finishes and exits
        child.socket.settimeout(30)
        answer = b""
        while chunk := child.socket.recv(4096):
            answer += chunk
        assert child.wait(timeout=30) == 0
    assert answer == b"HELLO FROM PYTHON\nSECOND LINE\n"


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
