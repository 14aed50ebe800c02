"""The documentation's shape: the API reference names every public name, the README is short
and task first, and no user-facing text speaks the project's internal jargon.

(The examples on the pages are run by test_readme.py; ``make docs`` builds the site with
warnings as errors, which CI runs.)"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from doc_examples import DOCS, PAGES
from support import ROOT, run_python

import unix_socketpair

REFERENCE = DOCS / "reference.md"
README = ROOT / "README.md"
# A directive that documents a name: ".. autofunction:: unix_socketpair.spawn", or a
# further name of a multi-name ".. data::" directive on its own line.
_DOCUMENTED = re.compile(
    r"^(?:\.\. (?:auto)?(?:function|class|exception|data)::)?\s+unix_socketpair\.(\w+)\s*$",
    re.MULTILINE,
)


def _documented() -> list[str]:
    return _DOCUMENTED.findall(REFERENCE.read_text())


def test_reference_documents_every_public_name_once() -> None:
    documented = _documented()
    assert sorted(documented) == sorted(unix_socketpair.__all__), (
        "missing: " + ", ".join(sorted(set(unix_socketpair.__all__) - set(documented))),
        "not public: " + ", ".join(sorted(set(documented) - set(unix_socketpair.__all__))),
    )


def test_reference_pattern_sees_directives() -> None:
    # The pattern must not match prose mentioning a name, only directive lines.
    text = ".. autoclass:: unix_socketpair.Channel\n   :members:\n\nSee unix_socketpair.Child.\n"
    assert _DOCUMENTED.findall(text) == ["Channel"]
    assert _DOCUMENTED.findall(".. data:: unix_socketpair.A\n          unix_socketpair.B\n") == [
        "A",
        "B",
    ]


def test_every_page_is_in_the_site() -> None:
    index = (DOCS / "index.md").read_text()
    listed = set(re.findall(r"^([\w-]+)$", index, re.MULTILINE))
    pages = {page.stem for page in DOCS.glob("*.md")} - {"index", "README"}
    assert pages <= listed, pages - listed


def test_readme_is_short_and_task_first() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= 300
    head = "\n".join(lines[:60])
    assert "make demo" in head and "make test" in head
    assert "## Which tool for which job" in "\n".join(lines)
    # Every link into docs/ names a page that exists.
    for target in re.findall(r"\]\((docs/[\w.-]+\.md)(?:#[\w-]+)?\)", "\n".join(lines)):
        assert (ROOT / target).exists(), target


@pytest.mark.parametrize("page", [*PAGES, ROOT / "CHANGELOG.md"], ids=lambda p: p.name)
def test_no_internal_jargon_on_pages(page: Path) -> None:
    text = page.read_text()
    assert not re.search(r"\bseed\b", text, re.IGNORECASE)
    assert not re.search(r"\bissues? \d", text, re.IGNORECASE)


@pytest.mark.parametrize("command", [[], ["demo"], ["exec"], ["link"], ["bench"]])
def test_no_internal_jargon_in_help(command: list[str]) -> None:
    proc = run_python(
        "import runpy, sys\n"
        f"sys.argv = ['unix-socketpair', *{command!r}, '--help']\n"
        "runpy.run_module('unix_socketpair', run_name='__main__')",
    )
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout
    assert not re.search(r"\bseed\b", proc.stdout, re.IGNORECASE), proc.stdout
    assert not re.search(r"\bissues? \d", proc.stdout, re.IGNORECASE), proc.stdout


def test_version_has_one_source() -> None:
    # pyproject.toml reads the version from _version.py; nothing else spells it.
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject
    assert 'version = { attr = "unix_socketpair._version.__version__" }' in pyproject
    assert f"## {unix_socketpair.__version__}" in (ROOT / "CHANGELOG.md").read_text()
    assert sys.modules["unix_socketpair"].__version__ == unix_socketpair._version.__version__
