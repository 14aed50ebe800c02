"""read_commit: one read from a stream socket and its accounting in one call.

The C version (``_speedups.read_commit``) and its pure-Python twin
(``StreamDecoder.read_commit``) are driven over the same byte streams, split the
same ways, with and without descriptors and credentials, to end of file: every
answer, every message, every error and the decoder's state after each step must be
the same. Then what only a real kernel shows: ``MSG_CTRUNC``, a reset, a signal
whose handler runs (or raises) while the read waits, and that nothing leaks.
"""

from __future__ import annotations

import array
import asyncio
import os
import random
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from support import missing, run_python
from test_framing import _LOAD, _build

import unix_socketpair
from unix_socketpair import AsyncChannel, Channel, _codec
from unix_socketpair._ancillary import ANCBUFSIZE, enable_passcred
from unix_socketpair._codec import AGAIN, NEED_DATA, NOT_USUAL, StreamDecoder
from unix_socketpair._packets import PacketDecoder

try:
    from unix_socketpair import _speedups
except ImportError:  # not built
    _speedups = None  # type: ignore[assignment]

PURE = os.environ.get("UNIX_SOCKETPAIR_PURE") == "1"
FLAGS = int(getattr(socket, "MSG_CMSG_CLOEXEC", 0))
Read = Callable[[Any, Any, int], int]


def _c_module() -> ModuleType:
    if _speedups is None:
        missing("the C accelerator was not built (no C compiler or Python headers at install)")
    return _speedups


@pytest.fixture(params=["python", "c"])
def read(request: pytest.FixtureRequest) -> Read:
    if request.param == "python":
        return StreamDecoder.read_commit
    return _c_module().read_commit  # type: ignore[no-any-return]


@pytest.fixture
def c_read() -> Read:
    return _c_module().read_commit  # type: ignore[no-any-return]


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


# --- the driver: one scenario through one implementation, everything recorded ------------


def _send(sock: socket.socket, data: bytes, nfds: int) -> None:
    """Send *data* with *nfds* descriptors (read ends of new pipes) in one sendmsg."""
    fds: list[int] = []
    for _ in range(nfds):
        r, w = os.pipe()
        os.close(w)
        fds.append(r)
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    try:
        assert sock.sendmsg([data], anc) == len(data)
    finally:
        for fd in fds:
            os.close(fd)


def _state(dec: StreamDecoder) -> tuple[Any, ...]:
    return (
        dec._rpos,
        dec._wpos,
        dec._base,
        len(dec._buf),
        dec.creds,
        len(dec.inbox),
        dec.state.name,
        dec.pending_fds(),
    )


def _drain(dec: StreamDecoder, log: list[Any]) -> None:
    while True:
        try:
            got = dec.next_message_with_fds()
        except Exception as exc:
            log.append(("raised", type(exc).__name__, str(exc)))
            return
        if got is NEED_DATA:
            return
        payload, fds = got  # type: ignore[misc]
        for fd in fds:
            assert not os.get_inheritable(fd)
            os.close(fd)
        log.append(("message", payload, len(fds)))


def drive(
    read: Read,
    steps: list[tuple[Any, ...]],
    *,
    passcred: bool = True,
    max_size: int = 1 << 20,
) -> list[Any]:
    """Feed *steps* (``("data", bytes, nfds)``, ``("eof",)``) through a socketpair
    and *read*; after each step read until nothing is there. Returns the log."""
    a, b = socket.socketpair()
    a.setblocking(False)
    if passcred:
        enable_passcred(a)
    dec = StreamDecoder(max_size)
    log: list[Any] = []
    try:
        for step in steps:
            if step[0] == "eof":
                b.shutdown(socket.SHUT_WR)
            else:
                _send(b, step[1], step[2])
            for _ in range(10_000):
                try:
                    answer = read(dec, a, FLAGS)
                except Exception as exc:
                    log.append(("read raised", type(exc).__name__, str(exc)))
                    break
                if answer == 0:
                    try:
                        dec.commit_read()
                    except Exception as exc:
                        log.append(("commit raised", type(exc).__name__, str(exc)))
                log.append(("read", answer, _state(dec)))
                _drain(dec, log)
                if answer in (AGAIN, NOT_USUAL):
                    break
            else:
                raise AssertionError("reads never ran dry")
    finally:
        a.close()
        b.close()
        dec.close()
    return log


def both(steps: list[tuple[Any, ...]], **kw: Any) -> list[Any]:
    """The log of the C version; fails unless the pure one's is the same."""
    c_log = drive(_c_module().read_commit, steps, **kw)
    py_log = drive(StreamDecoder.read_commit, steps, **kw)
    assert c_log == py_log
    return c_log


def _random_steps(rng: random.Random) -> list[tuple[Any, ...]]:
    sizes = [0, 1, 3, 5, 100, 1000, 1020, 3000, 70_000]
    stream = b"".join(frame(rng.randbytes(rng.choice(sizes))) for _ in range(rng.randrange(1, 12)))
    if rng.random() < 0.2:  # a header over the limit, or junk
        stream += rng.choice([struct.pack(">I", 1 << 21) + b"xx", rng.randbytes(3)])
    steps: list[tuple[Any, ...]] = []
    pos = 0
    while pos < len(stream):
        cut = min(len(stream), pos + rng.choice([1, 2, 4, 7, 100, 1024, 5000, 80_000]))
        nfds = rng.choice([0, 0, 0, 1, 3])
        steps.append(("data", stream[pos:cut], nfds))
        pos = cut
    if rng.random() < 0.8:
        steps.append(("eof",))
    return steps


# --- C against Python ---------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(40))
def test_c_and_python_agree_on_random_streams(seed: int) -> None:
    """Random frames (empty to 70 KB), random splits, descriptors on random chunks
    (some in the middle of a message: a ProtocolError), junk, end of file: the same
    answers, messages, errors and decoder state after every read."""
    rng = random.Random(seed)
    log = both(_random_steps(rng), passcred=seed % 4 != 0, max_size=1 << 20)
    assert any(entry[0] == "read" for entry in log)


def test_the_usual_read_is_accounted_for_in_the_call(read: Read) -> None:
    log = drive(read, [("data", frame(b"ping"), 0), ("data", frame(b"pong") * 2, 0)])
    reads = [entry[1] for entry in log if entry[0] == "read"]
    assert reads == [8, AGAIN, 16, AGAIN]
    assert [entry[1] for entry in log if entry[0] == "message"] == [b"ping", b"pong", b"pong"]
    # Credentials kept from the read (this process sent it).
    first = next(entry for entry in log if entry[0] == "read")
    pid, uid, gid = struct.unpack("3i", first[2][4])
    assert (pid, uid, gid) == (os.getpid(), os.getuid(), os.getgid())


def test_a_read_with_descriptors_or_end_of_file_is_left_to_commit_read(read: Read) -> None:
    log = drive(read, [("data", frame(b"fds"), 2), ("data", frame(b"plain"), 0), ("eof",)])
    reads = [entry[1] for entry in log if entry[0] == "read"]
    assert reads == [0, AGAIN, 9, AGAIN, 0, NOT_USUAL]
    messages = [entry[1:] for entry in log if entry[0] == "message"]
    assert messages == [(b"fds", 2), (b"plain", 0)]
    assert log[-1][0] == "raised" and log[-1][1] == "ChannelClosed"


def test_without_credentials_and_in_odd_states(read: Read) -> None:
    # No SO_PASSCRED: no control data at all, still the usual case.
    log = drive(read, [("data", frame(b"x"), 0)], passcred=False)
    assert [entry[1] for entry in log if entry[0] == "read"] == [5, AGAIN]
    assert log[0][2][4] is None  # no credentials record
    # End of file inside a message: ProtocolError, then the decoder is not usual.
    log = drive(read, [("data", frame(b"abc")[:5], 0), ("eof",)])
    assert ("raised", "ProtocolError") in [entry[:2] for entry in log]
    assert log[-1][1] == NOT_USUAL or log[-1][0] == "raised"


def test_descriptors_inside_a_message_break_the_stream_the_same_way() -> None:
    data = frame(b"y" * 100)
    log = both([("data", data[:50], 0), ("data", data[50:], 1)])
    assert ("raised", "ProtocolError") in [entry[:2] for entry in log]


def test_a_decoder_not_in_its_usual_state_reads_nothing(read: Read) -> None:
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        b.send(frame(b"waiting"))
        dec = StreamDecoder()
        dec.inbox.append((0, [], 0, None))  # a read not yet accounted for
        assert read(dec, a, FLAGS) == NOT_USUAL
        dec.inbox.clear()
        dec.receive_data(frame(b"z" * 70_000)[:10])
        dec.begin_direct(memoryview(bytearray(70_000)))  # a direct read under way
        assert read(dec, a, FLAGS) == NOT_USUAL
        assert a.recv(100) == frame(b"waiting")  # nothing was read
        dec.close()
        assert read(dec, a, FLAGS) == NOT_USUAL


def test_errors_are_the_sockets_own(read: Read) -> None:
    # A reset: the peer closed with our data unread.
    a, b = socket.socketpair()
    with a:
        a.setblocking(False)
        a.send(b"unread")
        b.close()
        dec = StreamDecoder()
        with pytest.raises(ConnectionResetError) as reset:
            read(dec, a, FLAGS)
        assert reset.value.errno == 104
        assert dec.inbox == [] and dec._wpos == 0
    # A closed socket: EBADF, as its own methods say.
    with pytest.raises(OSError) as closed:
        read(StreamDecoder(), a, FLAGS)
    assert closed.value.errno == 9


def test_a_read_that_cannot_wait_does_not_wait_on_a_blocking_socket(read: Read) -> None:
    # MSG_DONTWAIT is the read's own promise (the C version keeps the GIL
    # around such a read): on a blocking socket, nothing there is AGAIN at
    # once, not a wait. The timer turns a wait into a failure, not a hang.
    def expired(signum: int, frame: object) -> None:
        raise TimeoutError("read_commit waited despite MSG_DONTWAIT")

    a, b = socket.socketpair()
    old = signal.signal(signal.SIGALRM, expired)
    try:
        with a, b:
            assert a.getblocking()
            enable_passcred(a)
            dec = StreamDecoder()
            signal.setitimer(signal.ITIMER_REAL, 2.0)
            assert read(dec, a, FLAGS | socket.MSG_DONTWAIT) == AGAIN
            assert dec.inbox == [] and dec._wpos == 0
            b.send(frame(b"now"))
            assert read(dec, a, FLAGS | socket.MSG_DONTWAIT) == 7
            assert dec.next_message() == b"now"
            signal.setitimer(signal.ITIMER_REAL, 0)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_the_control_buffer_is_the_python_paths(c_read: Read) -> None:
    assert _c_module().ANCBUFSIZE == ANCBUFSIZE


def test_c_refuses_a_decoder_without_the_slots(c_read: Read) -> None:
    a, b = socket.socketpair()
    with a, b:
        packets = PacketDecoder(100, 10, passcred=False, dgram=False)
        with pytest.raises((TypeError, AttributeError)):
            c_read(packets, a, FLAGS)
        with pytest.raises(TypeError):
            c_read(StreamDecoder(), a)  # type: ignore[call-arg]
        # And it still works on the class it is meant for afterwards.
        b.send(frame(b"ok"))
        assert c_read(StreamDecoder(), a, FLAGS) == 6


def test_truncated_control_data_gives_fds_truncated_both_ways() -> None:
    """MSG_CTRUNC (the receiver is out of descriptor slots): the raw result is left to
    commit_read, the message raises FdsTruncated, nothing leaks, the next message is
    fine."""
    code = """
import os, resource, socket, array, struct, sys
from unix_socketpair._codec import StreamDecoder
from unix_socketpair import FdsTruncated
impl = sys.argv[1]
if impl == "c":
    from unix_socketpair._speedups import read_commit
else:
    read_commit = StreamDecoder.read_commit
a, b = socket.socketpair()
r, w = os.pipe()
open_now = len(os.listdir("/proc/self/fd"))
b.sendmsg([struct.pack(">I", 1) + b"x"],
          [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [r, w, r, w]))])
dec = StreamDecoder()
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
highest = max(int(n) for n in os.listdir("/proc/self/fd"))
resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 3, hard))
answer = read_commit(dec, a, socket.MSG_CMSG_CLOEXEC)
print("answer", answer, dec.inbox[0][2] & socket.MSG_CTRUNC != 0)
dec.commit_read()
try:
    dec.next_message_with_fds()
except FdsTruncated:
    print("truncated")
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
assert len(os.listdir("/proc/self/fd")) == open_now, "an fd leaked"
b.send(struct.pack(">I", 2) + b"ok")
print("next", read_commit(dec, a, socket.MSG_CMSG_CLOEXEC), dec.next_message())
"""
    impls = ["python"] + (["c"] if _speedups is not None else [])
    outputs = set()
    for impl in impls:
        result = subprocess.run(
            [sys.executable, "-c", code, impl], capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.split("\n")[:3] == ["answer 0 True", "truncated", "next 6 b'ok'"]
        outputs.add(result.stdout)
    assert len(outputs) == 1


# --- signals ------------------------------------------------------------------------------


def test_a_signal_whose_handler_returns_restarts_the_wait(read: Read) -> None:
    """EINTR as CPython handles it: the handler runs (here it sends the data the read
    waits for) and the read is tried again, rather than failing with EINTR."""
    a, b = socket.socketpair()
    ran: list[int] = []

    def handler(signum: int, frame_: object) -> None:
        ran.append(signum)
        b.send(frame(b"woken"))

    old = signal.signal(signal.SIGALRM, handler)
    try:
        with a, b:
            dec = StreamDecoder()
            signal.setitimer(signal.ITIMER_REAL, 0.05)
            answer = read(dec, a, FLAGS)  # blocking socket: waits for the signal
            assert ran == [signal.SIGALRM]
            assert answer == 9
            assert dec.next_message() == b"woken"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class Interrupt(Exception):
    pass


def test_a_signal_handler_exception_during_the_wait_reads_nothing(read: Read) -> None:
    a, b = socket.socketpair()

    def handler(signum: int, frame_: object) -> None:
        raise Interrupt

    old = signal.signal(signal.SIGALRM, handler)
    try:
        with a, b:
            dec = StreamDecoder()
            dec.receive_data(frame(b"held")[:3])  # something partial, to see it kept
            before = _state(dec)
            signal.setitimer(signal.ITIMER_REAL, 0.05)
            with pytest.raises(Interrupt):
                read(dec, a, FLAGS)
            assert _state(dec) == before
            b.send(frame(b"held")[3:])
            a.setblocking(False)
            assert read(dec, a, FLAGS) > 0
            assert dec.next_message() == b"held"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# A thread sends frames while a 0.3 ms timer's handler raises in the main thread,
# which reads with read_commit and takes messages. Every byte sent must be accounted
# for exactly once: the C version records a read before any Python code can run, so
# the handler can only raise before the read (nothing read) or after it (recorded).
_STORM = """
import os, signal, socket, struct, sys, threading
from unix_socketpair._codec import NEED_DATA, StreamDecoder
from unix_socketpair._speedups import read_commit
from unix_socketpair._ancillary import enable_passcred
from unix_socketpair import ChannelClosed

class Interrupt(Exception):
    pass

armed = False
raised = 0
def handler(signum, frame):
    global raised
    if armed:  # only around the call: before it, during its wait, just after it
        raised += 1
        raise Interrupt
signal.signal(signal.SIGALRM, handler)

a, b = socket.socketpair()
enable_passcred(a)
COUNT = 20000
def sender():
    for i in range(COUNT):
        b.send(struct.pack(">I", 4) + struct.pack(">I", i))
    b.shutdown(socket.SHUT_WR)
thread = threading.Thread(target=sender)
thread.start()
dec = StreamDecoder()
got = []
signal.setitimer(signal.ITIMER_REAL, 0.0003, 0.0003)
done = False
while not done:
    armed = True
    try:
        read_commit(dec, a, socket.MSG_CMSG_CLOEXEC)
    except Interrupt:
        pass
    armed = False
    if dec.inbox:  # a read left to commit_read (its answer, 0, may not have been seen)
        dec.commit_read()
    while True:
        try:
            msg = dec.next_message()
        except ChannelClosed:
            done = True
            break
        if msg is NEED_DATA:
            break
        got.append(struct.unpack(">I", msg)[0])
signal.setitimer(signal.ITIMER_REAL, 0)
thread.join()
assert got == list(range(COUNT)), (len(got), [i for i, g in enumerate(got) if g != i][:3])
print(raised)
"""


def test_a_storm_of_raising_signal_handlers_loses_no_byte(c_read: Read) -> None:
    interrupts = 0
    for _ in range(5):
        result = run_python(_STORM, timeout=60)
        assert result.returncode == 0, result.stderr[-2000:]
        interrupts += int(result.stdout)
        if interrupts >= 20:
            break
    assert interrupts >= 20, f"only {interrupts} interrupts: nothing tested"


# --- the channels choose at construction ----------------------------------------------------


def test_channels_choose_their_read_at_construction() -> None:
    expected = StreamDecoder.read_commit if PURE or _speedups is None else _speedups.read_commit
    assert _codec.read_commit is expected
    assert (not PURE and _speedups is not None) == unix_socketpair.ACCELERATED
    a, b = Channel.pair()
    with a, b:
        assert a._read is expected
    p, q = Channel.pair(socket.SOCK_SEQPACKET)
    with p, q:
        assert p._read is PacketDecoder.read_commit
    x, y = socket.socketpair()
    channel = AsyncChannel(x)
    try:
        assert channel._read is expected
        # Its socket is non-blocking, and its reads say so (see above).
        assert channel._rbase & socket.MSG_DONTWAIT
        assert not a._rbase & socket.MSG_DONTWAIT  # a blocking receive waits in the read
    finally:
        channel.close()
        y.close()


def test_the_reader_callback_leaves_a_direct_read_to_the_task() -> None:
    # While a payload goes straight into recv_into()'s buffer the decoder
    # answers NOT_USUAL without reading: the callback only wakes the task and
    # unregisters (a registered reader would be called again at every turn of
    # the loop while the socket stays readable).
    big = b"d" * 300_000
    data = frame(big)

    async def main() -> None:
        x, y = socket.socketpair()
        with y:
            channel = AsyncChannel(x)
            try:
                target = bytearray(len(big))
                task = asyncio.ensure_future(channel.recv_into(target))
                y.sendall(data[:1000])
                while not channel._dec.reading_direct:  # the task reads directly
                    await asyncio.sleep(0)
                await asyncio.sleep(0)
                assert not task.done()
                # From a thread: more than the socket holds, read as it comes.
                sender = asyncio.ensure_future(asyncio.to_thread(y.sendall, data[1000:]))
                assert await asyncio.wait_for(task, 30) == len(big)
                await sender
                assert target == big
                assert not channel._reading  # the callback unregistered
                y.sendall(frame(b"next"))
                assert await channel.recv() == b"next"
            finally:
                channel.close()

    asyncio.run(main())


@pytest.mark.parametrize("how", ["recv", "iteration"])
def test_async_recv_takes_the_message_its_wake_up_brought_in_one_call(
    how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With the accelerator, recv() (and async iteration) learns "wait" (nothing
    # buffered: NEED_DATA) and then takes the message that woke it with the C
    # take_frame (no Python frame); a message it declines (descriptors
    # pending) goes through next_message(), which closes them, as before. The
    # pure-Python path keeps next_message() alone. Same answers either way.
    from unix_socketpair import _aio
    from unix_socketpair._codec import NEED_DATA

    taken: list[object] = []
    real = _aio.take_frame

    def counting(*args: Any) -> object:
        msg = real(*args)
        taken.append(msg)
        return msg

    monkeypatch.setattr(_aio, "take_frame", counting)

    async def main() -> list[bytes]:
        x, y = socket.socketpair()
        with y:
            channel = AsyncChannel(x)
            messages = aiter(channel)
            try:
                got = []
                for payload, nfds in [(b"ping", 0), (b"with fds", 2), (b"pong", 0)]:
                    wait = channel.recv() if how == "recv" else anext(messages)
                    task = asyncio.ensure_future(wait)
                    await asyncio.sleep(0)  # recv() waits
                    assert not task.done()
                    _send(y, frame(payload), nfds)
                    got.append(await asyncio.wait_for(task, 30))
                return got
            finally:
                channel.close()

    before = set(os.listdir("/proc/self/fd"))
    assert asyncio.run(main()) == [b"ping", b"with fds", b"pong"]
    assert set(os.listdir("/proc/self/fd")) <= before  # the descriptors were closed
    expected = (
        []
        if PURE or _speedups is None
        else [NEED_DATA, b"ping", NEED_DATA, None, NEED_DATA, b"pong"]
    )
    assert taken == expected


# --- leaks and the C source -----------------------------------------------------------------


_LEAKS = """
import gc, os, socket, struct, sys, tracemalloc, array
from unix_socketpair._codec import NEED_DATA, StreamDecoder
from unix_socketpair._ancillary import enable_passcred
from unix_socketpair import _speedups as c

a, b = socket.socketpair()
a.setblocking(False)
enable_passcred(a)
dec = StreamDecoder()
ping = struct.pack(">I", 1) + b"x"

def usual(rounds):
    for _ in range(rounds):
        assert c.send_frame(b, b"x", socket.MSG_NOSIGNAL) == len(ping)
        assert c.read_commit(dec, a, socket.MSG_CMSG_CLOEXEC) == 5
        # take_frame: the message, then "wait" (as a round trip's receive asks)
        assert c.take_frame(dec, None, dec.handed, NEED_DATA) == b"x"
        assert c.take_frame(dec, None, dec.handed, NEED_DATA) is NEED_DATA
        dec.handed.clear()  # (the channel's record of what it took)

def raw(rounds):
    r, w = os.pipe()
    for _ in range(rounds):
        b.sendmsg([ping], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [r, w]))])
        assert c.read_commit(dec, a, socket.MSG_CMSG_CLOEXEC) == 0
        dec.commit_read()
        payload, fds = dec.next_message_with_fds()
        assert payload == b"x" and len(fds) == 2
        dec.handed.clear()
        for fd in fds:
            os.close(fd)
    os.close(r)
    os.close(w)

closed = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
closed.close()
def errors(rounds):
    for _ in range(rounds):
        assert c.read_commit(dec, a, socket.MSG_CMSG_CLOEXEC) == -1
        try:
            c.read_commit(StreamDecoder(), closed, 0)
        except OSError:
            pass
        else:
            raise AssertionError
        for bad in ((dec, a), (dec, a, "x"), (dec, object(), 0), (object(), a, 0)):
            try:
                c.read_commit(*bad)
            except (TypeError, AttributeError):
                pass
            else:
                raise AssertionError(bad)
        busy = StreamDecoder()
        busy.inbox.append((0, [], 0, None))
        assert c.read_commit(busy, a, 0) == -2
        assert c.take_frame(object(), None, [], NEED_DATA) is None
        try:
            c.send_frame(closed, b"x", socket.MSG_NOSIGNAL)
        except OSError:
            pass
        else:
            raise AssertionError
        for bad in ((b, bytearray(b"x"), 0), (b, b"x"), (b, b"x", "0"), (b, b"x" * 16385, 0)):
            try:
                c.send_frame(*bad)
            except (TypeError, ValueError):
                pass
            else:
                raise AssertionError(bad)
        for bad in ((dec, None), (dec, None, ()), (dec, None, [], NEED_DATA, 0)):
            try:
                c.take_frame(*bad)
            except TypeError:
                pass
            else:
                raise AssertionError(bad)

def measure():
    gc.collect()
    fds = len(os.listdir("/proc/self/fd"))
    return tracemalloc.get_traced_memory()[0], sys.getallocatedblocks(), fds

usual(1000); raw(100); errors(100)
refs = getattr(sys, "gettotalrefcount", lambda: 0)()
tracemalloc.start()
before = measure()
usual(50_000)
raw(5_000)
errors(5_000)
after = measure()
refs = getattr(sys, "gettotalrefcount", lambda: 0)() - refs
print(after[0] - before[0], after[1] - before[1], after[2] - before[2], refs)
"""


def test_c_leaks_no_memory_references_or_descriptors(c_read: Read) -> None:
    result = run_python(_LEAKS, timeout=120)
    assert result.returncode == 0, result.stderr
    grown_bytes, grown_blocks, grown_fds, grown_refs = map(int, result.stdout.split())
    # One object leaked per call would be >= 1.5 MB here.
    assert grown_bytes < 32 * 1024, grown_bytes
    assert grown_blocks < 1000, grown_blocks
    assert grown_fds == 0
    assert grown_refs < 1000, grown_refs  # 0 unless this is a debug build of Python


# The built module's read_commit against the pure one, on a few random streams.
_EXERCISE = """
import random, sys
sys.path.insert(0, sys.argv[2])
import test_read_commit as t
from unix_socketpair._codec import StreamDecoder
for seed in range(12):
    steps = t._random_steps(random.Random(seed))
    assert t.drive(c.read_commit, steps) == t.drive(StreamDecoder.read_commit, steps), seed
import socket
from unix_socketpair._codec import py_send_frame
for size in (0, 1, 4095, 16384):
    got = []
    for send in (py_send_frame, c.send_frame):
        a, b = socket.socketpair()
        got.append((send(a, bytes(size), socket.MSG_NOSIGNAL), b.recv(size + 8)))
        a.close(); b.close()
    assert got[0] == got[1], size
print("exercised")
"""


@pytest.mark.parametrize(
    "flags",
    [
        ("-O2", "-Wconversion", "-Wshadow", "-Wstrict-prototypes"),
        ("-O1", "-g", "-fsanitize=undefined", "-fno-sanitize-recover=all"),
    ],
    ids=["warnings", "ubsan"],
)
def test_c_source_compiles_cleanly_and_behaves(tmp_path: Path, flags: tuple[str, ...]) -> None:
    built = _build(tmp_path, *flags)
    result = subprocess.run(
        [sys.executable, "-c", _LOAD + _EXERCISE, str(built), str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"},
    )
    assert "runtime error" not in result.stderr, result.stderr
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "exercised"
