"""Point 10: credentials. ``peer_credentials()`` on the parent's channel reports the
child's real pid, uid and gid, and a parent can use it to refuse an unexpected peer.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
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
    with tempfile.TemporaryDirectory() as directory:
        # A directory the other user may enter, holding a copy of the echo child.
        os.chmod(directory, 0o755)
        echo = shutil.copy(compile_c(CHILDREN / "echo.c"), directory)
        args = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", echo]
        with spawn(args, stderr=subprocess.PIPE) as child:
            child.channel.send(b"who are you?")
            assert child.channel.recv() == b"who are you?"
            creds = child.channel.peer_credentials()
            figure("credentials.other_user", f"child pid {child.pid} as uid {NOBODY}: {creds}")
            assert (creds.pid, creds.uid, creds.gid) == (child.pid, NOBODY, NOBODY)
            # What a parent that only trusts its own user does with such a peer:
            refused = creds.uid != os.getuid()
            if refused:
                child.channel.close()
            assert refused


def test_the_sender_is_named_even_when_it_is_a_grandchild() -> None:
    """The credentials are the kernel's stamp on what was read: a grandchild that
    inherited the socket and wrote to it is named, not the child that spawned it."""
    code = textwrap.dedent(
        """
        import os
        from unix_socketpair import Channel
        with Channel.from_env() as channel:
            pid = os.fork()
            if pid == 0:
                channel.send(str(os.getpid()).encode())
                os._exit(0)
            os.waitpid(pid, 0)
        """
    )
    with spawn([sys.executable, "-c", code]) as child:
        grandchild = int(bounded(child.channel.recv, 30, "the grandchild's message"))
        creds = child.channel.peer_credentials()
        assert child.wait(timeout=30) == 0
    figure("credentials.grandchild", f"child {child.pid}, grandchild {grandchild}: {creds}")
    assert grandchild != child.pid
    assert creds.pid == grandchild
