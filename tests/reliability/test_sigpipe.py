"""Point 6: SIGPIPE. In a child interpreter with SIGPIPE restored to its default action
(as embedders and ``subprocess(restore_signals=True)`` children have it), writing to a
closed peer raises ``BrokenPipeError`` and the process lives on.
"""

from __future__ import annotations

import textwrap

from support import run_python

from ._helpers import figure

CHILD = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    assert signal.getsignal(signal.SIGPIPE) == signal.SIG_DFL
    from unix_socketpair import (
        SOCK_SEQPACKET, SOCK_STREAM, AsyncChannel, Channel, spawn)

    def attempt(name, call):
        try:
            call()
        except BrokenPipeError:
            print(name, "BrokenPipeError", flush=True)
        except BaseException as exc:
            print(name, type(exc).__name__, flush=True)
        else:
            print(name, "no-error", flush=True)

    r, w = os.pipe()
    for sock_type, tname in [(SOCK_STREAM, "stream"), (SOCK_SEQPACKET, "seqpacket")]:
        # A packet of 1 MiB would be refused as too large before the peer is considered.
        for size in (1, 1 << 20 if sock_type == SOCK_STREAM else 100_000):
            a, b = Channel.pair(sock_type)
            b.close()
            with a:
                attempt(f"send[{tname},{size}]", lambda: a.send(b"x" * size))
        a, b = Channel.pair(sock_type)
        b.close()
        with a:
            attempt(f"send_many[{tname}]", lambda: a.send_many([b"a", b"b" * 100_000]))
        a, b = Channel.pair(sock_type)
        b.close()
        with a:
            attempt(f"send_fds[{tname}]", lambda: a.send(b"fd", fds=[w]))

    # A write buffer: the failure comes from the flush, the close, or a read's flush.
    a, b = Channel.pair(write_buffer=4096)
    b.close()
    a.send(b"held")
    attempt("write_buffer_flush", a.flush)
    a.send(b"held")
    attempt("write_buffer_close", a.close)
    a, b = Channel.pair(write_buffer=4096)
    b.close()
    with a:
        a.send(b"x" * 100)  # held
        attempt("write_buffer_full", lambda: a.send(b"x" * 5000))  # fills it: all go

    async def async_case():
        a, b = AsyncChannel.pair()
        b.close()
        async with a:
            await a.send(b"x" * (1 << 20))
    attempt("async_send", lambda: asyncio.run(async_case()))

    # A real child that has exited: its end is gone with it.
    with spawn(["true"]) as child:
        child.wait(timeout=30)
        attempt("spawned_child_exited", lambda: child.channel.send(b"x" * (1 << 20)))
    print("alive", flush=True)
    """
)


def test_writes_to_a_closed_peer_raise_and_the_process_lives() -> None:
    done = run_python(CHILD, timeout=60)
    lines = done.stdout.split("\n")
    figure("sigpipe", f"exit status {done.returncode}; " + "; ".join(filter(None, lines)))
    assert done.returncode == 0, f"status {done.returncode} (-13 is SIGPIPE)\n{done.stderr}"
    assert lines[-2:] == ["alive", ""]
    results = dict(line.split() for line in lines[:-2])
    assert len(results) == 13
    for case, outcome in results.items():
        assert outcome == "BrokenPipeError", f"{case}: {outcome}"
