"""Every ```python block of the README runs, and prints what the README says it prints."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass

import pytest
from support import ROOT, run_python

README = ROOT / "README.md"
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.MULTILINE | re.DOTALL)


@dataclass
class Example:
    line: int
    code: str
    expected: str | None  # the ```text block that follows, if introduced with "prints"
    numbers_vary: bool


def _examples() -> list[Example]:
    text = README.read_text()
    blocks = list(_FENCE.finditer(text))
    examples = []
    for index, block in enumerate(blocks):
        if block.group(1) != "python":
            continue
        expected = None
        numbers_vary = False
        if index + 1 < len(blocks) and blocks[index + 1].group(1) == "text":
            between = text[block.end() : blocks[index + 1].start()].strip()
            if between.startswith("prints"):
                expected = blocks[index + 1].group(2)
                numbers_vary = "numbers may vary" in between
        line = text.count("\n", 0, block.start()) + 1
        examples.append(Example(line, block.group(2), expected, numbers_vary))
    return examples


EXAMPLES = _examples()


def test_the_readme_has_examples() -> None:
    assert len(EXAMPLES) >= 5


@pytest.mark.parametrize("example", EXAMPLES, ids=[f"README.md:{e.line}" for e in EXAMPLES])
def test_readme_example_runs(example: Example) -> None:
    proc = run_python(example.code, cwd=ROOT, timeout=90)
    assert proc.returncode == 0, f"README.md:{example.line} failed:\n{proc.stderr}"
    if example.expected is not None:
        if example.numbers_vary:
            pattern = re.sub(r"\\d|\d+", r"\\d+", re.escape(example.expected))
            assert re.fullmatch(pattern, proc.stdout), (proc.stdout, example.expected)
        else:
            assert proc.stdout == example.expected


def test_python_used_is_this_venvs() -> None:
    # The examples must import the project under test, not some other install.
    proc = run_python("import unix_socketpair, sys; print(unix_socketpair.__file__)")
    assert str(ROOT / "src") in proc.stdout, (proc.stdout, sys.executable)
