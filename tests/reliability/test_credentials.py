"""Point 10: credentials. ``peer_credentials()`` on the parent's channel reports the
child's real pid, uid and gid, and a parent can use it to refuse an unexpected peer.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest
from support import compile_c

from unix_socketpair import Channel, spawn

from ._helpers import CHILDREN, bounded, figure

NOBODY = 65534


def test_pair_in_one_process_reports_this_process() -> None:
    a, b = Channel.pair()
    with a, b:
        creds = a.peer_credentials()
        assert (creds.pid, creds.uid, creds.gid) == (os.getpid(), os.getuid(), os.getgid())


def test_spawned_child_is_identified_by_its_real_pid() -> None:
    echo = str(compile_c(CHILDREN / "echo.c"))
    with spawn([echo]) as child:
        child.channel.send(b"hello")
        assert child.channel.recv() == b"hello"
        creds = child.channel.peer_credentials()
        figure("credentials.child", f"child pid {child.pid}, parent pid {os.getpid()}: {creds}")
        assert creds.pid == child.pid
        assert creds.uid == os.getuid()
        assert creds.gid == os.getgid()


def test_child_sees_the_parent() -> None:
    code = textwrap.dedent(
        """
        from unix_socketpair import Channel
        with Channel.from_env() as channel:
            c = channel.peer_credentials()
            channel.send(f"{c.pid} {c.uid} {c.gid}".encode())
        """
    )
    with spawn([sys.executable, "-c", code]) as child:
        pid, uid, gid = map(int, bounded(child.channel.recv, 30, "the child's report").split())
        assert child.wait(timeout=30) == 0
    assert (pid, uid, gid) == (os.getpid(), os.getuid(), os.getgid())


@pytest.mark.skipif(os.geteuid() != 0, reason="changing the child's uid needs root")
def test_refusing_a_child_running_as_another_user() -> None:
    """The documented use: check the peer before trusting it, and refuse a stranger."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv is not installed")
    echo = str(compile_c(CHILDREN / "echo.c"))
    os.chmod(os.path.dirname(echo), 0o755)
    args = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", echo]
    with spawn(args, stderr=subprocess.PIPE) as child:
        child.channel.send(b"who are you?")
        assert child.channel.recv() == b"who are you?"
        creds = child.channel.peer_credentials()
        figure("credentials.other_user", f"child pid {child.pid} as uid {NOBODY}: {creds}")
        refused = creds.uid != os.getuid()
        assert (creds.pid, creds.uid, creds.gid) == (child.pid, NOBODY, NOBODY)
        assert refused
