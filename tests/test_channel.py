"""The blocking Channel over real socketpairs and real child processes."""

from __future__ import annotations

import array
import errno
import gc
import os
import random
import select
import socket
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest
from support import EXAMPLES, in_thread, open_fds, run_python

from unix_socketpair import (
    SOCK_DGRAM,
    SOCK_SEQPACKET,
    SOCK_STREAM,
    Channel,
    ChannelClosed,
    ChannelError,
    Credentials,
    MessageTooLarge,
    ProtocolError,
    TooManyFds,
    socketpair,
    spawn,
)
from unix_socketpair._ancillary import SCM_MAX_FD, close_fds

ALL_TYPES = [SOCK_STREAM, SOCK_SEQPACKET, SOCK_DGRAM]
HEADER = struct.Struct(">I")


@pytest.fixture
def pair(no_fd_leak: None) -> Iterator[tuple[Channel, Channel]]:
    a, b = Channel.pair()
    with a, b:
        yield a, b


def inode(fd: int) -> int:
    return os.fstat(fd).st_ino


def closed(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return True
    return False


# -- round trips ----------------------------------------------------------------


@pytest.mark.parametrize("sock_type", ALL_TYPES)
def test_round_trip_small_and_empty(sock_type: int, no_fd_leak: None) -> None:
    a, b = Channel.pair(sock_type)
    with a, b:
        assert a.type == sock_type and b.fileno() >= 0
        for message in (b"hello", b"", bytearray(b"ba"), memoryview(b"xmvx")[1:3]):
            a.send(message)
            assert b.recv() == bytes(message)
        b.send(b"back")
        assert a.recv() == b"back"


def test_ten_mib_both_ways(pair: tuple[Channel, Channel]) -> None:
    a, b = pair
    big = os.urandom(1 << 20) * 10
    join = in_thread(lambda: a.send(big))
    assert b.recv() == big
    join()
    join = in_thread(lambda: b.send(memoryview(big)))
    buffer = bytearray(len(big) + 10)
    assert a.recv_into(buffer) == len(big)
    join()
    assert buffer[: len(big)] == big


def test_hundred_thousand_messages_both_ways(pair: tuple[Channel, Channel]) -> None:
    a, b = pair
    messages = [b"%d" % i for i in range(100_000)]
    join = in_thread(lambda: a.send_many(messages))
    assert [b.recv() for _ in messages] == messages
    join()

    def one_by_one() -> None:
        for m in messages:
            b.send(m)
        b.shutdown_write()

    join = in_thread(one_by_one)
    assert list(a) == messages
    join()


def test_echo_through_a_python_child(no_fd_leak: None) -> None:
    ours, theirs = socketpair()
    try:
        child = subprocess.Popen(
            [sys.executable, str(EXAMPLES / "echo_peer.py")],
            env={**os.environ, "SOCKETPAIR_FD": str(theirs)},
            pass_fds=[theirs],
        )
    finally:
        os.close(theirs)
    with Channel(ours) as channel:  # a non-blocking socket handed in works too
        channel.send_many([b"a", b"", b"b" * 100_000])
        assert [channel.recv() for _ in range(3)] == [b"a", b"", b"b" * 100_000]
        # The kernel stamped the echoes with the child's identity, not the creator's.
        cred = channel.peer_credentials()
        assert cred == Credentials(child.pid, os.getuid(), os.getgid())
        channel.shutdown_write()
        assert list(channel) == []
    assert child.wait(timeout=30) == 0


# -- descriptors ----------------------------------------------------------------


@pytest.mark.parametrize("sock_type", ALL_TYPES)
def test_fds_interleaved_reach_their_own_message(sock_type: int, no_fd_leak: None) -> None:
    """Messages with and without fds, small and large, all queued before the
    receiver reads (so it reads in large chunks): each fd arrives with its own
    message and no other."""
    rng = random.Random(4)
    pipes = [os.pipe() for _ in range(20)]
    limit = 150_000 if sock_type == SOCK_STREAM else 1000
    plan: list[tuple[bytes, list[int]]] = []
    for i in range(120):
        size = rng.choice([0, 1, 60, 1000, limit])
        fds = [p[rng.randrange(2)] for p in rng.sample(pipes, rng.choice([0, 0, 1, 3]))]
        plan.append((bytes([i % 256]) * size, fds))
    a, b = Channel.pair(sock_type)
    try:
        with a, b:
            join = in_thread(lambda: [a.send(m, fds=f) for m, f in plan])
            for payload, fds in plan:
                got, got_fds = b.recv_with_fds()
                try:
                    assert got == payload
                    assert [inode(fd) for fd in got_fds] == [inode(fd) for fd in fds]
                    assert all(not os.get_inheritable(fd) for fd in got_fds)
                finally:
                    for fd in got_fds:
                        os.close(fd)
            join()
    finally:
        for r, w in pipes:
            os.close(r)
            os.close(w)


def test_kernel_never_merges_reads_across_fd_messages(no_fd_leak: None) -> None:
    """The Linux behaviour the decoder relies on, checked on the raw socket."""
    a, b = socket.socketpair()
    r, w = os.pipe()
    try:
        with a, b:
            a.sendall(b"plain1")
            a.sendmsg([b"FD1"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [r]))])
            a.sendall(b"plain2")
            a.sendmsg([b"FD2"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [w]))])
            chunks = []
            for _ in range(2):
                data, anc, _, _ = b.recvmsg(1000, socket.CMSG_SPACE(16))
                chunks.append(data)
                for _, _, fds in anc:
                    for fd in array.array("i", fds):
                        os.close(fd)
            # A read ends with the buffer that carried fds; it may start earlier.
            assert chunks == [b"plain1FD1", b"plain2FD2"]
    finally:
        os.close(r)
        os.close(w)


def test_recv_and_iteration_close_unrequested_fds(pair: tuple[Channel, Channel]) -> None:
    a, b = pair
    r, w = os.pipe()
    try:
        before = set(os.listdir("/proc/self/fd"))
        a.send(b"one", fds=[r, w])
        a.send(b"two", fds=[r])
        a.send(b"three", fds=[w])
        assert b.recv() == b"one"
        buffer = bytearray(10)
        assert b.recv_into(buffer) == 3
        a.shutdown_write()
        assert list(b) == [b"three"]
        assert set(os.listdir("/proc/self/fd")) == before
    finally:
        os.close(r)
        os.close(w)


def test_too_many_fds(no_fd_leak: None) -> None:
    a, b = Channel.pair(max_fds=2)
    r, w = os.pipe()
    try:
        with a, b:
            with pytest.raises(TooManyFds) as info:
                a.send(b"x", fds=[r, w, r])
            assert (info.value.count, info.value.limit) == (3, 2)
            a.send(b"sentinel")
            assert b.recv() == b"sentinel"  # nothing of the refused message was sent
            # A peer not bound by our limit sends three: all closed, channel broken.
            raw = socket.socket(fileno=os.dup(a.fileno()))
            with raw:
                raw.sendmsg(
                    [HEADER.pack(1) + b"x"],
                    [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [r, w, r]))],
                )
            with pytest.raises(TooManyFds, match="3 file descriptors"):
                b.recv_with_fds()
            with pytest.raises(ProtocolError, match="unusable"):
                b.recv()
    finally:
        os.close(r)
        os.close(w)


def test_truncated_control_data_closes_what_arrived() -> None:
    """MSG_CTRUNC from the kernel (here: the receiver is out of descriptors)."""
    result = run_python(
        """
import os, resource
from unix_socketpair import Channel, FdsTruncated
a, b = Channel.pair()
r, w = os.pipe()
open_now = len(os.listdir("/proc/self/fd"))
a.send(b"x", fds=[r, w, r, w])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
highest = max(int(n) for n in os.listdir("/proc/self/fd"))
resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 3, hard))
try:
    b.recv_with_fds()
except FdsTruncated as exc:
    print("truncated:", exc)
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
assert len(os.listdir("/proc/self/fd")) == open_now, "an fd leaked"
print("ok")
"""
    )
    assert result.returncode == 0, result.stderr
    assert "truncated: the kernel truncated" in result.stdout
    assert result.stdout.strip().endswith("ok")


# -- errors ---------------------------------------------------------------------


def test_eof_at_a_boundary_and_inside_a_message(no_fd_leak: None) -> None:
    a, b = Channel.pair()
    with b:
        with a:
            a.send(b"last")
        assert b.recv() == b"last"
        with pytest.raises(ChannelClosed) as info:
            b.recv()
        assert isinstance(info.value, EOFError)
        assert list(b) == []

    for data, expect in [(b"\x00\x00", "2 of its 4"), (HEADER.pack(10) + b"abc", "3 of its 10")]:
        x, y = socket.socketpair()
        with x, Channel(y) as channel:
            x.sendall(data)
            x.close()
            with pytest.raises(ProtocolError, match=expect) as info2:
                channel.recv()
            assert "unusable" in str(info2.value)
            with pytest.raises(ProtocolError, match="unusable"):
                channel.recv()


def test_declared_length_over_the_limit(no_fd_leak: None) -> None:
    x, y = socket.socketpair()
    with x, Channel(y, max_message_size=1000) as channel:
        x.sendall(HEADER.pack(1001))
        with pytest.raises(ProtocolError, match=r"1001 bytes, over max_message_size \(1000"):
            channel.recv()
    x, y = socket.socketpair()
    with x, Channel(y) as channel:
        x.sendall(HEADER.pack(0xFFFFFFFF))  # never allocated
        with pytest.raises(ProtocolError, match="4294967295"):
            channel.recv()


@pytest.mark.parametrize("sock_type", ALL_TYPES)
def test_recv_into_too_small_keeps_the_message(sock_type: int, no_fd_leak: None) -> None:
    a, b = Channel.pair(sock_type)
    r, w = os.pipe()
    try:
        with a, b:
            a.send(b"0123456789", fds=[r])
            a.send(b"next")
            small = bytearray(4)
            with pytest.raises(MessageTooLarge) as info:
                b.recv_into(small)
            assert (info.value.size, info.value.limit) == (10, 4)
            assert isinstance(info.value, (ValueError, ChannelError))
            message, fds = b.recv_with_fds()  # still queued, fds and all
            assert message == b"0123456789" and [inode(fd) for fd in fds] == [inode(r)]
            os.close(fds[0])
            assert b.recv_into(small) == 4 and small == b"next"
    finally:
        os.close(r)
        os.close(w)


def test_recv_into_needs_a_writable_buffer(pair: tuple[Channel, Channel]) -> None:
    _, b = pair
    with pytest.raises(TypeError, match="writable"):
        b.recv_into(b"read-only")
    with pytest.raises(TypeError):
        b.recv_into("text")  # type: ignore[arg-type]


@pytest.mark.parametrize("sock_type", [SOCK_SEQPACKET, SOCK_DGRAM])
def test_packet_over_what_the_socket_carries(sock_type: int, no_fd_leak: None) -> None:
    a, b = Channel.pair(sock_type)
    with a, b:
        sndbuf = a._sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        with pytest.raises(MessageTooLarge, match="SO_SNDBUF") as info:
            a.send(b"x" * (sndbuf + 1))
        assert info.value.size == sndbuf + 1 and 0 < info.value.limit < sndbuf + 1
        a.send(b"fits")
        assert b.recv() == b"fits"


def test_send_over_max_message_size(no_fd_leak: None) -> None:
    a, b = Channel.pair(max_message_size=10)
    with a, b:
        with pytest.raises(MessageTooLarge, match="11 bytes"):
            a.send(b"x" * 11)
        with pytest.raises(MessageTooLarge):
            a.send_many([b"ok", b"x" * 11])
        a.send(b"x" * 10)
        assert b.recv() == b"x" * 10  # nothing before it was sent


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda c: c.send("text"), "bytes-like"),
        (lambda c: c.send(12), "bytes-like"),
        (lambda c: c.send(b"x", fds=["3"]), "int"),
        (lambda c: c.send(b"x", fds=[True]), "int"),
        (lambda c: c.send(b"x", fds=3), "iterable"),
        (lambda c: c.send_many([b"a", "b"]), "bytes-like"),
    ],
)
def test_type_errors_before_anything_is_sent(
    pair: tuple[Channel, Channel], call: Callable[[Channel], object], match: str
) -> None:
    a, b = pair
    with pytest.raises(TypeError, match=match):
        call(a)
    a.send(b"sentinel")
    assert b.recv() == b"sentinel"


@pytest.mark.parametrize("sock_type", ALL_TYPES)
def test_writing_to_a_closed_peer_is_broken_pipe_not_sigpipe(sock_type: int) -> None:
    """Even with SIGPIPE at its default action, as an embedder may leave it."""
    result = run_python(
        f"""
import signal
from unix_socketpair import Channel
signal.signal(signal.SIGPIPE, signal.SIG_DFL)
a, b = Channel.pair({sock_type})
b.close()
try:
    a.send(b"x" * 100)
except BrokenPipeError as exc:
    print("BrokenPipeError", exc.errno)
"""
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["BrokenPipeError", str(errno.EPIPE)]


def test_seqpacket_empty_message_is_not_eof(no_fd_leak: None) -> None:
    a, b = Channel.pair(SOCK_SEQPACKET)
    with b:
        with a:
            a.send_many([b"", b"x", b""])
        assert list(b) == [b"", b"x", b""]


def test_shutdown_write_keeps_receiving(pair: tuple[Channel, Channel]) -> None:
    a, b = pair
    a.send(b"last")
    a.shutdown_write()
    assert list(b) == [b"last"]
    b.send(b"still")
    assert a.recv() == b"still"
    with pytest.raises(BrokenPipeError):
        a.send(b"after")


# -- construction and life cycle ------------------------------------------------


def test_constructor_checks_without_closing(no_fd_leak: None) -> None:
    r, w = os.pipe()
    try:
        with pytest.raises(OSError, match="not a usable socket"):
            Channel(r)
        assert not closed(r)
    finally:
        os.close(r)
        os.close(w)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as inet:
        with pytest.raises(ValueError, match="AF_UNIX"):
            Channel(inet)
        assert inet.fileno() >= 0
    with pytest.raises(TypeError):
        Channel("3")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_fds"):
        Channel.pair(max_fds=254)


def test_close_is_idempotent_and_later_use_is_ebadf(no_fd_leak: None) -> None:
    a, b = Channel.pair()
    b.send(b"queued, never read")
    b.close()
    a.close()
    a.close()
    assert a.closed and a.fileno() == -1
    for call in (lambda: a.send(b"x"), a.recv, a.peer_credentials, a.shutdown_write):
        with pytest.raises(OSError) as info:
            call()
        assert info.value.errno == errno.EBADF


def test_unclosed_channel_warns(no_fd_leak: None) -> None:
    a, b = Channel.pair()
    b.close()
    with pytest.warns(ResourceWarning, match="unclosed <Channel SOCK_STREAM"):
        del a
        gc.collect()


def test_from_fd_and_credentials(no_fd_leak: None) -> None:
    x, y = socketpair()
    with Channel.from_fd(x) as a, Channel(y) as b:
        assert a.peer_credentials() == Credentials(os.getpid(), os.getuid(), os.getgid())
        assert b.peer_credentials().pid == os.getpid()


CHILD = """
from unix_socketpair import Channel
with Channel.from_env() as channel:
    channel.send(b"child says " + channel.recv())
    print(channel.peer_credentials().pid)
"""


def test_from_env_with_a_descriptor_number(no_fd_leak: None) -> None:
    ours, theirs = socketpair()
    try:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD],
            env={**os.environ, "SOCKETPAIR_FD": str(theirs)},
            pass_fds=[theirs],
            stdout=subprocess.PIPE,
            text=True,
        )
    finally:
        os.close(theirs)
    with Channel(ours) as channel:
        channel.send(b"hi")
        assert channel.recv() == b"child says hi"
    out, _ = child.communicate(timeout=30)
    assert child.returncode == 0
    assert int(out) == os.getpid()  # the sender of "hi" (also the pair's creator)


def test_from_env_stdio(no_fd_leak: None) -> None:
    ours, theirs = socketpair(blocking=True)
    try:
        child = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from unix_socketpair import Channel\n"
                "c = Channel.from_env()\nc.send(c.recv()[::-1])\nc.close()",
            ],
            env={**os.environ, "SOCKETPAIR_FD": "stdio"},
            stdin=theirs,
            stdout=theirs,
        )
    finally:
        os.close(theirs)
    with Channel(ours) as channel:
        channel.send(b"stressed")
        assert channel.recv() == b"desserts"
    assert child.wait(timeout=30) == 0


@pytest.mark.parametrize(
    ("value", "match"),
    [(None, "SOCKETPAIR_FD is not set"), ("three", "not a descriptor"), ("-1", "negative")],
)
def test_from_env_errors(value: str | None, match: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SOCKETPAIR_FD"}
    if value is not None:
        env["SOCKETPAIR_FD"] = value
    result = run_python(
        "from unix_socketpair import Channel\n"
        "try:\n    Channel.from_env()\nexcept ValueError as exc:\n    print(exc)\n",
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert match in result.stdout


def test_from_env_names_a_bad_descriptor() -> None:
    result = run_python(
        "from unix_socketpair import Channel\n"
        "try:\n    Channel.from_env()\nexcept OSError as exc:\n    print(exc)\n",
        env={**os.environ, "SOCKETPAIR_FD": "97"},
    )
    assert "SOCKETPAIR_FD=97" in result.stdout


@pytest.mark.parametrize("size", [100, 1 << 20])
def test_peer_gone_inside_a_message_while_ours_is_unread(size: int, no_fd_leak: None) -> None:
    """A peer that dies holding unread data of ours makes the kernel report
    ECONNRESET rather than end of file: still a truncated message, on every path."""
    for how in ("recv", "recv_into"):
        x, y = socket.socketpair()
        with Channel(y) as channel:
            channel.send(b"never read")

            def peer(x: socket.socket = x) -> None:
                with x:
                    x.sendall(HEADER.pack(size) + b"y" * (size // 2))

            join = in_thread(peer)
            with pytest.raises(ProtocolError, match=f"{size // 2} of its {size} payload"):
                if how == "recv":
                    channel.recv()
                else:
                    channel.recv_into(bytearray(size))
            join()


# -- peer credentials -------------------------------------------------------------

LINUX = sys.platform.startswith("linux")
linux_only = pytest.mark.skipif(not LINUX, reason="per-message credentials are Linux's")

SEND_PID_AFTER_GO = """
import os
from unix_socketpair import Channel
with Channel.from_env() as channel:
    assert channel.recv() == b"go"
    channel.send(str(os.getpid()).encode())
    assert list(channel) == []  # until the parent closes
"""


@linux_only
@pytest.mark.parametrize("sock_type", [SOCK_STREAM, SOCK_SEQPACKET])
def test_credentials_name_the_child_that_sent(sock_type: int, no_fd_leak: None) -> None:
    with spawn([sys.executable, "-c", SEND_PID_AFTER_GO], type=sock_type) as child:
        channel = child.channel
        # Nothing sent yet by the child: the pair's creator (this process) answers.
        assert channel.peer_credentials() == Credentials(os.getpid(), os.getuid(), os.getgid())
        channel.send(b"go")
        assert int(channel.recv()) == child.pid
        assert channel.peer_credentials() == Credentials(child.pid, os.getuid(), os.getgid())
        channel.close()
        assert child.wait(timeout=30) == 0


@linux_only
def test_credentials_of_unread_data_are_peeked_without_taking_fds(no_fd_leak: None) -> None:
    code = SEND_PID_AFTER_GO.replace(
        "channel.send(str(os.getpid()).encode())",
        "channel.send(str(os.getpid()).encode(), fds=[0, 1, 2])",
    )
    with spawn([sys.executable, "-c", code]) as child:
        channel = child.channel
        channel.send(b"go")
        # Wait for the child's message to be queued, without reading it.
        ready = select.select([channel], [], [], 30)[0]
        assert ready == [channel]
        before = open_fds()
        assert channel.peer_credentials().pid == child.pid
        assert open_fds() == before  # the peek installed none of the three descriptors
        data, fds = channel.recv_with_fds()
        try:
            assert int(data) == child.pid
            assert len(fds) == 3  # still queued for the real read, all of them
        finally:
            close_fds(fds)
        channel.close()
        assert child.wait(timeout=30) == 0


GRANDCHILD = """
import os, subprocess, sys
from unix_socketpair import Channel
fd = int(os.environ["SOCKETPAIR_FD"])
grandchild = subprocess.run(
    [sys.executable, "-c",
     "import os; from unix_socketpair import Channel; "
     "c = Channel.from_env(); c.send(str(os.getpid()).encode()); c.close()"],
    pass_fds=[fd], check=True, timeout=60,
)
with Channel.from_env() as channel:
    channel.send(str(os.getpid()).encode())
    assert list(channel) == []  # until the parent closes
"""


@linux_only
def test_a_grandchild_writer_is_reported_as_itself(no_fd_leak: None) -> None:
    with spawn([sys.executable, "-c", GRANDCHILD]) as child:
        channel = child.channel
        grandchild_pid = int(channel.recv())
        assert grandchild_pid not in (child.pid, os.getpid())
        assert channel.peer_credentials().pid == grandchild_pid
        assert int(channel.recv()) == child.pid
        assert channel.peer_credentials().pid == child.pid
        channel.close()
        assert child.wait(timeout=60) == 0


@linux_only
@pytest.mark.parametrize("sock_type", ALL_TYPES)
def test_credentials_with_max_fds_in_one_message(sock_type: int, no_fd_leak: None) -> None:
    """The credentials record and 253 descriptors fit in one read: no MSG_CTRUNC."""
    a, b = Channel.pair(sock_type)
    r, w = os.pipe()
    with a, b:
        try:
            a.send(b"many", fds=[r] * SCM_MAX_FD)
        finally:
            os.close(r)
        data, fds = b.recv_with_fds()
        try:
            assert data == b"many"
            assert len(fds) == SCM_MAX_FD
            assert {inode(fd) for fd in fds} == {inode(w)}  # read end and write end share one
        finally:
            close_fds(fds)
            os.close(w)
        assert b.peer_credentials() == Credentials(os.getpid(), os.getuid(), os.getgid())


@linux_only
def test_data_sent_before_the_channel_existed_is_not_credited(no_fd_leak: None) -> None:
    """Unstamped data (pid 0 from the kernel) falls back to the pair's creator."""
    ours, theirs = socketpair(blocking=True)
    try:
        child = subprocess.Popen(
            [sys.executable, "-c", f"import os; os.write({theirs}, bytes([0, 0, 0, 2]) + b'hi')"],
            pass_fds=[theirs],
        )
        assert child.wait(timeout=30) == 0
    finally:
        os.close(theirs)
    with Channel(ours) as channel:
        assert channel.recv() == b"hi"
        assert channel.peer_credentials() == Credentials(os.getpid(), os.getuid(), os.getgid())
