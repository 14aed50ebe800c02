"""Point 10: credentials. ``peer_credentials()`` on the parent's channel reports the
child's real pid, uid and gid, and a parent can use it to refuse an unexpected peer.
"""

from __future__ import annotations

import os
import sys
import textwrap

from unix_socketpair import Channel, spawn

from ._helpers import bounded

NOBODY = 65534


def test_pair_in_one_process_reports_this_process() -> None:
    a, b = Channel.pair()
    with a, b:
        creds = a.peer_credentials()
        assert (creds.pid, creds.uid, creds.gid) == (os.getpid(), os.getuid(), os.getgid())


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
