"""Point 7: signals and EINTR. A timer signal every millisecond during a large transfer
through blocking and asyncio channels: every byte arrives, in order (SHA-256 compared).

Runs in a child interpreter, whose ``ITIMER_REAL`` is free (pytest-timeout may use this
process's). Size: ``USP_EINTR_MIB`` (default 100 MiB, the issue's figure: well under a
second here); the transfer repeats until at least 200 signals have fired, whatever the size.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ._helpers import CHILDREN, figure, knob

MIB_TOTAL = knob("USP_EINTR_MIB", 100, 100)


@pytest.mark.parametrize("mode", ["blocking", "blocking-write-buffer", "asyncio", "uvloop"])
def test_timer_signal_every_millisecond_loses_nothing(mode: str) -> None:
    if mode == "uvloop":
        pytest.importorskip("uvloop")
    done = subprocess.run(
        [sys.executable, str(CHILDREN / "eintr.py"), mode, str(MIB_TOTAL)],
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    figure(
        f"eintr.{mode}",
        f"{report['bytes'] / (1 << 20):.0f} MiB in {report['messages']} messages "
        f"({report['rounds']} rounds of {MIB_TOTAL} MiB), {report['signals']} SIGALRM, "
        f"{report['elapsed']:.2f} s, checksum {'equal' if report['ok'] else 'DIFFERENT'}",
    )
    assert report["ok"], "the bytes received differ from the bytes sent"
    assert report["bytes"] >= MIB_TOTAL << 20
    assert report["signals"] >= 200
