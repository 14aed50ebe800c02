"""The wheel works anywhere: built from this checkout, installed into a fresh virtual
environment, its command runs from another directory with nothing of the checkout at hand."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import venv
import zipfile
from collections.abc import Iterator
from email.parser import Parser
from pathlib import Path

import pytest
from support import ROOT, require

import unix_socketpair


def _build(kind: str, out: Path) -> Path:
    # No isolation: the build backend (setuptools) comes with the development tools, so
    # nothing is downloaded. Its scratch files go to build/ and src/*.egg-info, which
    # .gitignore covers.
    proc = subprocess.run(
        [sys.executable, "-m", "build", f"--{kind}", "--no-isolation", "--outdir", str(out), "."],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (built,) = out.glob("unix_socketpair-*.whl" if kind == "wheel" else "unix_socketpair-*.tar.gz")
    return built


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build("wheel", tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The ``bin`` directory of a fresh venv with only the wheel installed in it."""
    env_dir = tmp_path_factory.mktemp("fresh") / "venv"
    venv.create(env_dir, with_pip=False)  # this venv's pip installs into it: no download
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(env_dir / "bin" / "python"),
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            "--disable-pip-version-check",
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    yield env_dir / "bin"


def _run(bin_dir: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # Only the fresh venv and the system's tools on PATH; no PYTHONPATH leading back here.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    return subprocess.run(
        [str(bin_dir / "unix-socketpair"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )


def test_wheel_metadata_has_the_one_version(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        fields = Parser().parsestr(archive.read(metadata).decode())
    assert fields["Version"] == unix_socketpair.__version__
    assert wheel.name.startswith(f"unix_socketpair-{unix_socketpair.__version__}-")
    assert fields["Requires-Python"] == ">=3.10"
    assert fields.get_all("Requires-Dist") is None or all(
        "extra ==" in req for req in fields.get_all("Requires-Dist")
    )  # no runtime dependency
    # What the package needs at run time ships inside it.
    assert "unix_socketpair/py.typed" in names
    assert any(n.startswith("unix_socketpair/_bench/c/") and n.endswith(".c") for n in names)


def test_sdist_holds_the_whole_project(tmp_path: Path) -> None:
    sdist = _build("sdist", tmp_path)
    with tarfile.open(sdist) as archive:
        top = f"unix_socketpair-{unix_socketpair.__version__}/"
        names = {name.removeprefix(top) for name in archive.getnames()}
    for needed in (
        "CHANGELOG.md",
        "Makefile",
        "README.md",
        "docs/conf.py",
        "docs/reference.md",
        "examples/echo_peer.c",
        "tests/support.py",
        "tests/conftest.py",
        "src/unix_socketpair/_version.py",
    ):
        assert needed in names, needed
    assert not any(name.startswith("docs/_build") or "__pycache__" in name for name in names)


def test_installed_command_reports_its_version(installed: Path, tmp_path: Path) -> None:
    proc = _run(installed, "--version", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"unix-socketpair {unix_socketpair.__version__}\n"
    # ...and it is the installed copy, not this checkout's sources.
    where = subprocess.run(
        [
            str(installed / "python"),
            "-c",
            "import unix_socketpair; print(unix_socketpair.__file__)",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert where.stdout.startswith(str(installed.parent)), where.stdout + where.stderr
    assert str(ROOT) not in where.stdout


def test_installed_demo_passes_from_another_directory(installed: Path, tmp_path: Path) -> None:
    require("cc")
    require("node")
    proc = _run(installed, "demo", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "demo: PASS: all 6 steps passed" in proc.stdout
    assert list(tmp_path.iterdir()) == []  # it left nothing behind in the working directory
