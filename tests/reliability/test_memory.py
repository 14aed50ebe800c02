"""Memory a channel commits before any peer has sent anything (part of point 4: bounded
memory). Measured in a child interpreter, so the test runner's own memory stays out of it.
"""

from __future__ import annotations

import json
import textwrap

import pytest
from support import run_python

from ._helpers import figure

CHILD = textwrap.dedent(
    """
    import json, socket
    from unix_socketpair import Channel

    def rss_kib():
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])

    kind = getattr(socket, {kind!r})
    Channel.pair(kind)[0].close()  # warm up: imports, first allocations
    before = rss_kib()
    held = [Channel.pair(kind) for _ in range(20)]
    grown = rss_kib() - before
    for a, b in held:
        a.close()
        b.close()
    print(json.dumps({{"per_channel_kib": grown / 40}}))
    """
)


@pytest.mark.parametrize("kind", ["SOCK_STREAM", "SOCK_DGRAM", "SOCK_SEQPACKET"])
def test_an_idle_channel_commits_little_memory(kind: str) -> None:
    done = run_python(CHILD.format(kind=kind))
    assert done.returncode == 0, done.stderr
    per_channel = json.loads(done.stdout)["per_channel_kib"]
    figure(f"memory.idle_channel[{kind}]", f"{per_channel:.0f} KiB resident per channel")
    # The stream decoder starts with 16 KiB and grows only while reads fill it;
    # a packet channel's buffer is a mapping that costs nothing until written.
    assert per_channel < 128
