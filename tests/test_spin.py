"""Channel(spin=N): a receive tries N times without sleeping, then sleeps; nothing else changes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import pytest
from support import require

from unix_socketpair import (
    SOCK_DGRAM,
    SOCK_SEQPACKET,
    SOCK_STREAM,
    AsyncChannel,
    Channel,
    ChannelClosed,
    socketpair,
)

ALL_TYPES = [SOCK_STREAM, SOCK_SEQPACKET, SOCK_DGRAM]


@pytest.mark.parametrize(
    ("spin", "error", "match"),
    [
        (-1, ValueError, "spin must be between 0 and 1000, not -1"),
        (1001, ValueError, "spin must be between 0 and 1000, not 1001"),
        ("3", TypeError, "spin must be an int, not str"),
        (True, TypeError, "spin must be an int, not bool"),
        (2.0, TypeError, "spin must be an int, not float"),
    ],
)
@pytest.mark.parametrize("cls", [Channel, AsyncChannel])
def test_bad_spin_is_refused_before_anything_is_adopted(
    cls: type[Channel] | type[AsyncChannel],
    spin: object,
    error: type[Exception],
    match: str,
    no_fd_leak: None,
) -> None:
    fds = socketpair()
    try:
        with pytest.raises(error, match=match):
            cls(fds[0], spin=spin)  # type: ignore[arg-type]
        os.fstat(fds[0])  # still open: the caller still owns it
    finally:
        os.close(fds[0])
        os.close(fds[1])
    with pytest.raises(error, match=match):
        cls.pair(spin=spin)  # type: ignore[arg-type]


@pytest.mark.parametrize("sock_type", ALL_TYPES)
@pytest.mark.parametrize("spin", [1, 5])
def test_spinning_channels_carry_everything(sock_type: int, spin: int, no_fd_leak: None) -> None:
    """Messages, empty messages, descriptors and end of file, with the reader
    usually waiting (the peer answers from a thread)."""
    a, b = Channel.pair(sock_type, spin=spin)
    messages = [b"", b"x", bytes(range(256)) * 40, b"last"]
    r, w = os.pipe()
    failure: list[BaseException] = []

    def peer() -> None:
        try:
            for message in messages:
                got, fds = b.recv_with_fds()
                assert got == message
                b.send(got, fds=fds)
                for fd in fds:
                    os.close(fd)
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=peer)
    thread.start()
    try:
        with a:
            for i, message in enumerate(messages):
                a.send(message, fds=[w] if i % 2 else [])
                if i == 2:
                    buffer = bytearray(len(message))
                    assert a.recv_into(buffer) == len(message)
                    assert buffer == message
                elif i % 2:
                    got, fds = a.recv_with_fds()
                    assert got == message
                    assert len(fds) == 1
                    assert os.fstat(fds[0]).st_ino == os.fstat(w).st_ino
                    os.close(fds[0])
                else:
                    assert a.recv() == message
            thread.join(timeout=60)
            assert not thread.is_alive()
            assert not failure, failure
            if sock_type != SOCK_DGRAM:  # a datagram socket never sees end of file
                b.close()
                with pytest.raises(ChannelClosed):
                    a.recv()
                assert list(a) == []
    finally:
        thread.join(timeout=60)
        b.close()
        os.close(r)
        os.close(w)


# The main thread blocks in recv(); a second thread sends only once the main
# thread sleeps in a system call on the channel's descriptor (/proc/.../syscall
# names the call's first argument: the fd), so the trace shows every attempt.
_WHEN_MAIN_SLEEPS = textwrap.dedent(
    """
    import os, sys, threading
    MAIN = threading.get_native_id()

    def when_main_sleeps_on(fd):
        # Return once the main thread is in a blocking system call on *fd*: its third
        # argument (recvmsg's flags) without MSG_DONTWAIT (0x40). A non-blocking try also
        # shows up here while strace holds it at its entry or exit, and must not count.
        path = f"/proc/self/task/{MAIN}/syscall"
        while True:
            with open(path) as f:
                fields = f.read().split()
            if (
                fields[0] != "running"
                and int(fields[1], 16) == fd
                and not int(fields[3], 16) & 0x40
            ):
                return
            os.sched_yield()
    """
)
_TRACED = _WHEN_MAIN_SLEEPS + textwrap.dedent(
    """
    from unix_socketpair import Channel
    spin = int(sys.argv[1])
    a, b = Channel.pair(spin=spin)

    def sender():
        when_main_sleeps_on(a.fileno())
        b.send(b"late")

    t = threading.Thread(target=sender)
    sys.stderr.write("MARK-BEGIN fd=%d\\n" % a.fileno())
    sys.stderr.flush()
    t.start()
    assert a.recv() == b"late"
    t.join()
    sys.stderr.write("MARK-END\\n")
    sys.stderr.flush()
    a.close()
    b.close()
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="strace and /proc: Linux")
@pytest.mark.parametrize("spin", [0, 1, 4])
def test_a_receive_tries_spin_times_then_sleeps(spin: int) -> None:
    strace = require("strace")
    proc = subprocess.run(
        [strace, "-f", "-e", "trace=recvmsg", sys.executable, "-c", _TRACED, str(spin)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    rest = proc.stderr.partition("MARK-BEGIN fd=")[2]
    fd, _, rest = rest.partition("\n")
    between = rest.partition("MARK-END")[0]
    calls = [line for line in between.splitlines() if f"recvmsg({fd}," in line]
    tries = [line for line in calls if "MSG_DONTWAIT" in line]
    waits = [line for line in calls if "MSG_DONTWAIT" not in line]
    assert len(tries) == spin, calls
    assert all("EAGAIN" in line for line in tries), tries
    # One read that sleeps and then returns the 8 bytes (header + "late").
    assert len(waits) == 1, calls
    resumed = [line for line in between.splitlines() if "recvmsg resumed>" in line]
    assert any(line.rstrip().endswith("= 8") for line in resumed + waits), between


# Five-plus waits in a row, each one sleeping for sure (the sender waits for
# that), then data already queued; markers between them split the trace.
_ADAPTIVE = _WHEN_MAIN_SLEEPS + textwrap.dedent(
    """
    from unix_socketpair import Channel
    from unix_socketpair import _channel
    _channel._PROBE_READS = 3
    a, b = Channel.pair(spin=3)
    go = threading.Semaphore(0)

    def sender():
        while go.acquire() and not stop:
            when_main_sleeps_on(a.fileno())
            b.send(b"late")

    stop = False
    t = threading.Thread(target=sender)
    t.start()
    b.send(b"first")
    os.write(2, b"FIRST\\n")
    assert a.recv() == b"first"
    for i in range(8):
        os.write(2, b"WAIT\\n")
        go.release()
        assert a.recv() == b"late"
    stop = True
    go.release()
    t.join()
    b.send(b"queued")
    os.write(2, b"QUEUED\\n")
    assert a.recv() == b"queued"
    os.write(2, b"END\\n")
    a.close()
    b.close()
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="strace and /proc: Linux")
def test_spinning_stops_after_failed_waits_and_is_tried_again() -> None:
    """Data already queued is read by the first (non-blocking) try and costs no
    credit. Credit 4: waits 1-4 try 3 times each and find nothing, so waits 5
    and 6 sleep at once; after _PROBE_READS (3 here) reads the 7th spins again,
    fails, and the 8th sleeps at once, as does the read of queued data after it."""
    strace = require("strace")
    proc = subprocess.run(
        [strace, "-f", "-e", "trace=recvmsg,write", sys.executable, "-c", _ADAPTIVE],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    segments = proc.stderr.split('write(2, "')[1:]
    tries, waits, first = [], [], []
    for segment in segments:
        calls = [line for line in segment.splitlines() if "recvmsg(" in line]
        if segment.startswith("FIRST"):
            first = calls
        elif segment.startswith(("WAIT", "QUEUED")):
            tries.append(sum("MSG_DONTWAIT" in line and "EAGAIN" in line for line in calls))
            waits.append(sum("MSG_DONTWAIT" not in line for line in calls))
    assert len(first) == 1, proc.stderr
    assert "MSG_DONTWAIT" in first[0], first
    assert first[0].rstrip().endswith("= 9"), first
    assert tries == [3, 3, 3, 3, 0, 0, 3, 0, 0], proc.stderr
    # Each of these ends in exactly one read without MSG_DONTWAIT (which sleeps
    # for the 8 waits and returns at once for the queued message).
    assert waits == [1] * 9, proc.stderr
