"""The code examples of the README and of docs/*.md, as the tests run them.

Two kinds of fenced block are examples:

- a ```python block is a program. It must exit 0; when the next block is a ```text block
  introduced by a paragraph starting with "prints", the program's stdout must be exactly that
  text (with "numbers may vary" in the paragraph, any number matches any number).
- a ```console block whose first line starts with ``$ `` is a transcript: each ``$`` line is a
  shell command (continued on the next line after a trailing backslash), the lines up to the
  next ``$`` its output. ``...`` alone on a line stands for any number of lines, inside a line
  for any text.

- a ```c, ```js, ```rust or ```sh block of docs/children.md is a complete child program that
  answers what it reads on fd 3 in upper case and exits when the parent closes its end.

```console blocks without ``$`` are lists of commands to type; ```text blocks and blocks with
no language (outputs, byte dumps) are not code. No other kind of block may appear.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from support import ROOT

DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]

_FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.MULTILINE | re.DOTALL)


@dataclass
class PythonExample:
    where: str  # "docs/spawn.md:17"
    code: str
    expected: str | None  # the ```text block that follows, if introduced with "prints"
    numbers_vary: bool


@dataclass
class ChildProgram:
    where: str
    language: str  # "c", "js", "rust" or "sh"
    source: str


CHILD_LANGUAGES = ("c", "js", "rust", "sh")
CHILDREN_PAGE = DOCS / "children.md"
NOT_CODE = ("text", "")


@dataclass
class Transcript:
    where: str
    steps: list[tuple[str, str]]  # (command, expected output)


def _where(page: Path, text: str, offset: int) -> str:
    return f"{page.relative_to(ROOT)}:{text.count(chr(10), 0, offset) + 1}"


def python_examples(pages: list[Path] = PAGES) -> list[PythonExample]:
    examples = []
    for page in pages:
        text = page.read_text()
        blocks = list(_FENCE.finditer(text))
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
            where = _where(page, text, block.start())
            examples.append(PythonExample(where, block.group(2), expected, numbers_vary))
    return examples


def child_programs() -> list[ChildProgram]:
    text = CHILDREN_PAGE.read_text()
    return [
        ChildProgram(_where(CHILDREN_PAGE, text, block.start()), block.group(1), block.group(2))
        for block in _FENCE.finditer(text)
        if block.group(1) in CHILD_LANGUAGES
    ]


def block_kinds(page: Path) -> list[tuple[str, str]]:
    """(where, language) of every fenced block of *page*."""
    text = page.read_text()
    return [(_where(page, text, b.start()), b.group(1)) for b in _FENCE.finditer(text)]


def transcripts(pages: list[Path] = PAGES) -> list[Transcript]:
    found = []
    for page in pages:
        text = page.read_text()
        for block in _FENCE.finditer(text):
            lines = block.group(2).splitlines()
            if block.group(1) != "console" or not lines or not lines[0].startswith("$ "):
                continue
            steps: list[tuple[str, str]] = []
            index = 0
            while index < len(lines):
                command = lines[index][2:]
                while command.endswith("\\"):  # continued on the next line
                    index += 1
                    command += "\n" + lines[index]
                index += 1
                expected = ""
                while index < len(lines) and not lines[index].startswith("$ "):
                    expected += lines[index] + "\n"
                    index += 1
                steps.append((command, expected))
            found.append(Transcript(_where(page, text, block.start()), steps))
    return found


def output_matches(expected: str, output: str) -> bool:
    """``...`` alone on a line stands for any number of lines, inside a line for any text."""
    pattern = ""
    for line in expected.splitlines():
        if line == "...":
            pattern += r"(?:.*\n)*?"
        else:
            pattern += ".*".join(re.escape(part) for part in line.split("...")) + r"\n"
    return re.fullmatch(pattern, output) is not None


def printed_matches(example: PythonExample, stdout: str) -> bool:
    """Whether *stdout* is what the example says it prints."""
    assert example.expected is not None
    if example.numbers_vary:
        pattern = re.sub(r"\\d|\d+", r"\\d+", re.escape(example.expected))
        return re.fullmatch(pattern, stdout) is not None
    return stdout == example.expected
