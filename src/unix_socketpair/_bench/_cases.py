"""The variants of cases 1 to 4, in Python, and the case plan.

Two-process variants fork a real child (``multiprocessing``'s ``fork``
context), so the sender and the receiver each have their own interpreter and
GIL. The child blocks on a "go" pipe until the parent has started its clock;
the parent, the receiving side, times from that moment to the last message.
Sockets are created before the fork, each side closes the other's end.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import multiprocessing
import os
import socket
import struct
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from functools import partial
from typing import Any, Protocol, TypeVar

from .._ancillary import ANCBUFSIZE
from ._harness import Case, Clock, Sample, Unavailable, Variant
from ._limits import CPrograms
from ._spawn_cases import spawn_case

__all__ = ["build_cases"]

KiB = 1024
MiB = 1024 * 1024
STREAM_CHUNKS = (4 * KiB, 64 * KiB, 1 * MiB)
_HEADER = struct.Struct(">I")
_MP = multiprocessing.get_context("fork")
_MSG_NOSIGNAL = int(getattr(socket, "MSG_NOSIGNAL", 0))
_MSG_CMSG_CLOEXEC = int(getattr(socket, "MSG_CMSG_CLOEXEC", 0))
_SO_PASSCRED: int | None = getattr(socket, "SO_PASSCRED", None)
_T = TypeVar("_T")


class _Closable(Protocol):
    def close(self) -> None: ...


class _Race(Clock):
    """A clock that also releases the child: ``go()`` lets it start sending."""

    def __init__(self, go_fd: int) -> None:
        super().__init__()
        self._go_fd = go_fd

    def go(self) -> None:
        os.write(self._go_fd, b"g")

    def start_and_go(self) -> None:
        self.start()
        self.go()


def _payload(size: int) -> bytes:
    # Not bytes(size): calloc'd zeros map the shared zero page and copy unrealistically fast.
    return (bytes(range(256)) * (size // 256 + 1))[:size]


def _child_entry(
    body: Callable[[Callable[[], None]], None], go_fd: int, parent_ends: Sequence[_Closable]
) -> None:
    for end in parent_ends:
        end.close()

    def wait_go() -> None:
        if os.read(go_fd, 1) != b"g":
            os._exit(0)  # the parent gave up before starting: nothing to do

    body(wait_go)


def _two_process(
    child: Callable[[Callable[[], None]], None],
    parent: Callable[[_Race], int],
    child_ends: Sequence[_Closable],
    parent_ends: Sequence[_Closable],
) -> Sample:
    """Fork *child* (given ``wait_go``), run *parent* here; return the parent's timed sample.

    Closes *child_ends* here right after the fork and *parent_ends* at the end,
    whatever happens; a child still alive then is killed.
    """
    go_r, go_w = os.pipe()
    process = None
    try:
        process = _MP.Process(target=_child_entry, args=(child, go_r, parent_ends), daemon=True)
        process.start()
        os.close(go_r)
        go_r = -1
        for end in child_ends:
            end.close()
        race = _Race(go_w)
        units = parent(race)
    finally:
        if go_r >= 0:
            os.close(go_r)
        os.close(go_w)
        for end in (*child_ends, *parent_ends):
            end.close()
        exitcode = None
        if process is not None and process.pid is not None:
            process.join(10)
            if process.exitcode is None:
                process.kill()
                process.join()
            exitcode = process.exitcode
            process.close()
    if exitcode != 0:
        raise RuntimeError(f"the child exited with status {exitcode}")
    return Sample(race.elapsed(), units)


def _run_async(main: Callable[[], Coroutine[Any, Any, _T]], uvloop: bool) -> _T:
    """Run *main()* on a new event loop (uvloop's if asked); close the loop after."""
    loop: asyncio.AbstractEventLoop
    if uvloop:
        loop = importlib.import_module("uvloop").new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    try:
        result: _T = loop.run_until_complete(main())
        return result
    finally:
        loop.close()


async def _aclose(obj: object) -> None:
    """Close an async channel whether its ``close()`` is a coroutine or not."""
    close = getattr(obj, "aclose", None) or obj.close  # type: ignore[attr-defined]
    result = close()
    if inspect.isawaitable(result):
        await result


def _expect(got: int, expected: int, what: str) -> int:
    if got != expected:
        raise RuntimeError(f"received {got} {what}, expected {expected}")
    return got


# --- what the project rows need -------------------------------------------------------------


def _project(name: str) -> Any:
    import unix_socketpair

    obj = getattr(unix_socketpair, name, None)
    if obj is None:
        raise Unavailable(f"unix_socketpair.{name} is not available in this version")
    return obj


def _need_channel() -> None:
    _project("Channel")


def _need_channel_option(name: str) -> None:
    _need_channel()
    if name not in inspect.signature(_project("Channel")).parameters:
        raise Unavailable(f"this version's Channel has no {name} option")


def _need_async_channel() -> None:
    _project("AsyncChannel")


def _need_passcred() -> None:
    if _SO_PASSCRED is None:
        raise Unavailable("this platform has no SO_PASSCRED")


def _need_uvloop() -> None:
    try:
        importlib.import_module("uvloop")
    except ImportError as exc:
        raise Unavailable("uvloop is not installed") from exc


def _need_async_channel_uvloop() -> None:
    _need_async_channel()
    _need_uvloop()


def _need_async_channel_option(name: str, *, uvloop: bool = False) -> None:
    _need_async_channel()
    if uvloop:
        _need_uvloop()
    if name not in inspect.signature(_project("AsyncChannel")).parameters:
        raise Unavailable(f"this version's AsyncChannel has no {name} option")


# --- case 1: create + close -----------------------------------------------------------------


def _create_project(n: int) -> Sample:
    from .._pair import socketpair

    close = os.close
    clock = Clock()
    clock.start()
    for _ in range(n):
        a, b = socketpair()
        close(a)
        close(b)
    clock.stop()
    return Sample(clock.elapsed(), n)


def _create_channel_pair(n: int) -> Sample:
    pair = _project("Channel").pair
    clock = Clock()
    clock.start()
    for _ in range(n):
        a, b = pair()
        a.close()
        b.close()
    clock.stop()
    return Sample(clock.elapsed(), n)


def _create_socket_detach(n: int) -> Sample:
    pair, close = socket.socketpair, os.close
    clock = Clock()
    clock.start()
    for _ in range(n):
        a, b = pair()
        close(a.detach())
        close(b.detach())
    clock.stop()
    return Sample(clock.elapsed(), n)


def _create_socket_close(n: int) -> Sample:
    pair = socket.socketpair
    clock = Clock()
    clock.start()
    for _ in range(n):
        a, b = pair()
        a.close()
        b.close()
    clock.stop()
    return Sample(clock.elapsed(), n)


def _create_pipe(n: int) -> Sample:
    pipe, close = os.pipe, os.close
    clock = Clock()
    clock.start()
    for _ in range(n):
        r, w = pipe()
        close(r)
        close(w)
    clock.stop()
    return Sample(clock.elapsed(), n)


# --- case 2: one-way stream -----------------------------------------------------------------


def _stream_over(a: socket.socket, b: socket.socket, size: int, n: int) -> Sample:
    """Child ``sendall``s *n* chunks of *size* into *b*; parent ``recv_into``s from *a*."""
    payload = memoryview(_payload(size))

    def child(wait_go: Callable[[], None]) -> None:
        wait_go()
        for _ in range(n):
            b.sendall(payload)
        b.close()

    def parent(race: _Race) -> int:
        buf = bytearray(size)
        recv_into, total = a.recv_into, 0
        race.start_and_go()
        while received := recv_into(buf):
            total += received
        race.stop()
        return _expect(total, size * n, "bytes")

    return _two_process(child, parent, [b], [a])


def _stream_socketpair(size: int, n: int) -> Sample:
    a, b = socket.socketpair()
    return _stream_over(a, b, size, n)


def _stream_tcp(size: int, n: int) -> Sample:
    with socket.create_server(("127.0.0.1", 0)) as server:
        b = socket.create_connection(server.getsockname()[:2])
        try:
            a, _ = server.accept()
        except BaseException:
            b.close()
            raise
    return _stream_over(a, b, size, n)


class _Fd:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _stream_pipe(size: int, n: int) -> Sample:
    r, w = os.pipe()
    rd, wr = _Fd(r), _Fd(w)
    payload = memoryview(_payload(size))

    def child(wait_go: Callable[[], None]) -> None:
        wait_go()
        for _ in range(n):
            view = payload
            while view:
                view = view[os.write(w, view) :]
        wr.close()

    def parent(race: _Race) -> int:
        buf = bytearray(size)
        readv, bufs, total = os.readv, [buf], 0
        race.start_and_go()
        while received := readv(r, bufs):
            total += received
        race.stop()
        return _expect(total, size * n, "bytes")

    return _two_process(child, parent, [wr], [rd])


# --- case 3: framed messages ----------------------------------------------------------------


def _framed_pipe(size: int, n: int) -> Sample:
    r, w = _MP.Pipe(duplex=False)
    payload = _payload(size)

    def child(wait_go: Callable[[], None]) -> None:
        wait_go()
        send = w.send_bytes
        for _ in range(n):
            send(payload)
        w.close()

    def parent(race: _Race) -> int:
        recv, total = r.recv_bytes, 0
        race.start_and_go()
        for _ in range(n):
            total += len(recv())
        race.stop()
        return _expect(total, size * n, "bytes")

    return _two_process(child, parent, [w], [r])


def _recv_exactly(sock: socket.socket, count: int) -> bytes:
    chunks = []
    while count:
        data = sock.recv(count)
        if not data:
            raise EOFError("peer closed inside a message")
        chunks.append(data)
        count -= len(data)
    return b"".join(chunks)


def _framed_naive(size: int, n: int) -> Sample:
    a, b = socket.socketpair()
    payload = _payload(size)

    def child(wait_go: Callable[[], None]) -> None:
        wait_go()
        header = _HEADER.pack(size)
        for _ in range(n):
            b.sendall(header + payload)
        b.close()

    def parent(race: _Race) -> int:
        total, unpack = 0, _HEADER.unpack
        race.start_and_go()
        for _ in range(n):
            (length,) = unpack(_recv_exactly(a, 4))
            total += len(_recv_exactly(a, length))
        race.stop()
        return _expect(total, size * n, "bytes")

    return _two_process(child, parent, [b], [a])


def _framed_asyncio(size: int, n: int) -> Sample:
    a, b = socket.socketpair()
    payload = _payload(size)

    def child(wait_go: Callable[[], None]) -> None:
        async def main() -> None:
            _, writer = await asyncio.open_unix_connection(sock=b)
            wait_go()
            header = _HEADER.pack(size)
            for _ in range(n):
                # One write per message: two would cost the baseline a second
                # system call whenever the transport's buffer is empty.
                writer.write(header + payload)
                await writer.drain()
            writer.close()
            await writer.wait_closed()

        _run_async(main, uvloop=False)

    def parent(race: _Race) -> int:
        async def main() -> int:
            reader, writer = await asyncio.open_unix_connection(sock=a)
            total, unpack = 0, _HEADER.unpack
            race.start_and_go()
            for _ in range(n):
                (length,) = unpack(await reader.readexactly(4))
                total += len(await reader.readexactly(length))
            race.stop()
            writer.close()
            await writer.wait_closed()
            return total

        return _expect(_run_async(main, uvloop=False), size * n, "bytes")

    return _two_process(child, parent, [b], [a])


def _framed_channel(
    size: int, n: int, *, into: bool = False, bare_sender: bool = False, **options: Any
) -> Sample:
    """A Channel sends, a Channel receives (*into*: into one reused buffer).

    *bare_sender*: the floor of every framing sender that makes one system call
    per message. The child packs each message's header from its length, joins
    it to the payload and makes one ``send(frame, MSG_NOSIGNAL)``, with no
    Python around it; the receiver is the same as the ``Channel`` row's, so the
    two rows differ by ``Channel.send``'s own cost alone.
    """
    channel_class = _project("Channel")
    a, b = socket.socketpair()
    payload = _payload(size)

    def bare(wait_go: Callable[[], None]) -> None:
        pack, data, send, flags = _HEADER.pack, payload, b.send, _MSG_NOSIGNAL
        length = _HEADER.size + len(data)
        wait_go()
        for _ in range(n):
            # A small send on a blocking socket is all or nothing; never count wrong.
            if send(pack(len(data)) + data, flags) != length:
                raise RuntimeError("a small frame was sent in part")
        b.close()

    def child(wait_go: Callable[[], None]) -> None:
        if bare_sender:
            bare(wait_go)
            return
        channel = channel_class(b, **options)
        wait_go()
        send = channel.send
        for _ in range(n):
            send(payload)
        channel.close()

    def parent(race: _Race) -> int:
        channel = channel_class(a)
        total = 0
        try:
            if into:
                buf = bytearray(size)
                recv_into = channel.recv_into
                race.start_and_go()
                for _ in range(n):
                    total += recv_into(buf)
            else:
                recv = channel.recv
                race.start_and_go()
                for _ in range(n):
                    total += len(recv())
            race.stop()
        finally:
            channel.close()
        return _expect(total, size * n, "bytes")

    return _two_process(child, parent, [b], [a])


def _batch(size: int) -> int:
    """Messages per ``send_many`` call: about 64 KiB of them, at least 4."""
    return max(4, 64 * KiB // (size + 4))


def _framed_channel_many(size: int, n: int) -> Sample:
    channel_class = _project("Channel")
    a, b = socket.socketpair()
    payload = _payload(size)

    def child(wait_go: Callable[[], None]) -> None:
        channel = channel_class(b)
        batch = [payload] * _batch(size)
        full, rest = divmod(n, len(batch))
        wait_go()
        for _ in range(full):
            channel.send_many(batch)
        channel.send_many(batch[:rest])
        channel.close()

    def parent(race: _Race) -> int:
        channel = channel_class(a)
        total = 0
        try:
            race.start_and_go()
            for message in channel:
                total += len(message)
            race.stop()
        finally:
            channel.close()
        return _expect(total, size * n, "bytes")

    return _two_process(child, parent, [b], [a])


def _framed_async_channel(size: int, n: int, *, uvloop: bool = False) -> Sample:
    channel_class = _project("AsyncChannel")
    a, b = socket.socketpair()
    payload = _payload(size)

    def child(wait_go: Callable[[], None]) -> None:
        async def main() -> None:
            channel = channel_class(b)
            wait_go()
            send = channel.send
            for _ in range(n):
                await send(payload)
            await _aclose(channel)

        _run_async(main, uvloop=uvloop)

    def parent(race: _Race) -> int:
        async def main() -> int:
            channel = channel_class(a)
            total = 0
            try:
                recv: Callable[[], Awaitable[bytes]] = channel.recv
                race.start_and_go()
                for _ in range(n):
                    total += len(await recv())
                race.stop()
            finally:
                await _aclose(channel)
            return total

        return _expect(_run_async(main, uvloop=uvloop), size * n, "bytes")

    return _two_process(child, parent, [b], [a])


def _framed_async_channel_many(size: int, n: int) -> Sample:
    channel_class = _project("AsyncChannel")
    a, b = socket.socketpair()
    payload = _payload(size)

    def child(wait_go: Callable[[], None]) -> None:
        async def main() -> None:
            channel = channel_class(b)
            batch = [payload] * _batch(size)
            full, rest = divmod(n, len(batch))
            wait_go()
            for _ in range(full):
                await channel.send_many(batch)
            await channel.send_many(batch[:rest])
            await _aclose(channel)

        _run_async(main, uvloop=False)

    def parent(race: _Race) -> int:
        async def main() -> int:
            channel = channel_class(a)
            total = 0
            try:
                race.start_and_go()
                async for message in channel:
                    total += len(message)
                race.stop()
            finally:
                await _aclose(channel)
            return total

        return _expect(_run_async(main, uvloop=False), size * n, "bytes")

    return _two_process(child, parent, [b], [a])


# --- case 4: ping-pong ----------------------------------------------------------------------

_WARMUP = 50


def _rtt_socket(n: int) -> Sample:
    a, b = socket.socketpair()

    def child(wait_go: Callable[[], None]) -> None:
        wait_go()
        while data := b.recv(1):
            b.send(data)
        b.close()

    def parent(race: _Race) -> int:
        send, recv = a.send, a.recv
        race.go()
        for _ in range(_WARMUP):
            send(b"x")
            recv(1)
        race.start()
        for _ in range(n):
            send(b"x")
            recv(1)
        race.stop()
        return n

    return _two_process(child, parent, [b], [a])


def _rtt_channel(n: int, **options: Any) -> Sample:
    channel_class = _project("Channel")
    a, b = socket.socketpair()

    def child(wait_go: Callable[[], None]) -> None:
        channel = channel_class(b, **options)
        wait_go()
        for message in channel:
            channel.send(message)
        channel.close()

    def parent(race: _Race) -> int:
        channel = channel_class(a, **options)
        try:
            send, recv = channel.send, channel.recv
            race.go()
            for _ in range(_WARMUP):
                send(b"x")
                recv()
            race.start()
            for _ in range(n):
                send(b"x")
                recv()
            race.stop()
        finally:
            channel.close()
        return n

    return _two_process(child, parent, [b], [a])


# A 1-byte message as the stream framing carries it: what the channel rows exchange.
_FRAME_1 = b"\x00\x00\x00\x01x"


def _recv_rest(sock: socket.socket, view: memoryview, got: int) -> None:
    """Complete a frame of ``len(view)`` bytes of which *got* are in (the rare path)."""
    while got < len(view):
        received = sock.recvmsg_into((view[got:],), ANCBUFSIZE, _MSG_CMSG_CLOEXEC)[0]
        if not received:
            raise EOFError(f"peer closed after {got} of {len(view)} bytes of a frame")
        got += received


def _rtt_floor_recvmsg(n: int, *, passcred: bool = False) -> Sample:
    """The floor of any framed reader that can receive descriptors.

    Both sides ``send`` the 5-byte frame of a 1-byte message and read it with
    ``recvmsg_into`` with control room for the most descriptors plus a
    credentials record (a reader using ``recv`` would let the kernel silently
    destroy descriptors sent to it), until the 5 bytes are in; nothing is
    parsed. With *passcred*, ``SO_PASSCRED`` is on at both ends, as on every
    channel, so each read also carries the kernel's credentials record.
    """
    a, b = socket.socketpair()
    if passcred and _SO_PASSCRED is not None:
        try:
            for end in (a, b):
                end.setsockopt(socket.SOL_SOCKET, _SO_PASSCRED, 1)
        except BaseException:
            a.close()
            b.close()
            raise
    size = len(_FRAME_1)

    def child(wait_go: Callable[[], None]) -> None:
        buf = bytearray(size)
        view = memoryview(buf)
        bufs, recvmsg_into, send = (view,), b.recvmsg_into, b.send
        room, rflags, sflags, length = ANCBUFSIZE, _MSG_CMSG_CLOEXEC, _MSG_NOSIGNAL, size
        wait_go()
        while True:
            got = recvmsg_into(bufs, room, rflags)[0]
            if got != length:
                if not got:
                    break
                _recv_rest(b, view, got)
            if send(buf, sflags) != length:
                raise RuntimeError("a small frame was sent in part")
        view.release()
        b.close()

    def parent(race: _Race) -> int:
        buf = bytearray(size)
        view = memoryview(buf)
        bufs, recvmsg_into, send = (view,), a.recvmsg_into, a.send
        frame, room, rflags, sflags, length = (
            _FRAME_1, ANCBUFSIZE, _MSG_CMSG_CLOEXEC, _MSG_NOSIGNAL, size
        )  # fmt: skip

        def exchange(count: int) -> None:
            # One call per loop, not per round trip: the loop itself runs on locals.
            for _ in range(count):
                if send(frame, sflags) != length:
                    raise RuntimeError("a small frame was sent in part")
                got = recvmsg_into(bufs, room, rflags)[0]
                if got != length:
                    _recv_rest(a, view, got)

        try:
            race.go()
            exchange(_WARMUP)
            race.start()
            exchange(n)
            race.stop()
        finally:
            view.release()
        if buf != frame:
            raise RuntimeError(f"the echo was {bytes(buf)!r}, not {frame!r}")
        return n

    return _two_process(child, parent, [b], [a])


def _rtt_pipe(n: int) -> Sample:
    a, b = _MP.Pipe()

    def child(wait_go: Callable[[], None]) -> None:
        wait_go()
        try:
            while True:
                b.send_bytes(b.recv_bytes())
        except EOFError:
            b.close()

    def parent(race: _Race) -> int:
        send, recv = a.send_bytes, a.recv_bytes
        race.go()
        for _ in range(_WARMUP):
            send(b"x")
            recv()
        race.start()
        for _ in range(n):
            send(b"x")
            recv()
        race.stop()
        return n

    return _two_process(child, parent, [b], [a])


def _rtt_asyncio(n: int, *, uvloop: bool = False) -> Sample:
    a, b = socket.socketpair()

    def child(wait_go: Callable[[], None]) -> None:
        async def main() -> None:
            reader, writer = await asyncio.open_unix_connection(sock=b)
            wait_go()
            while data := await reader.read(1):
                writer.write(data)
            writer.close()
            await writer.wait_closed()

        _run_async(main, uvloop=uvloop)

    def parent(race: _Race) -> int:
        async def main() -> None:
            reader, writer = await asyncio.open_unix_connection(sock=a)
            race.go()
            for i in range(_WARMUP + n):
                if i == _WARMUP:
                    race.start()
                writer.write(b"x")
                await reader.readexactly(1)
            race.stop()
            writer.close()
            await writer.wait_closed()

        _run_async(main, uvloop=uvloop)
        return n

    return _two_process(child, parent, [b], [a])


def _rtt_async_channel(n: int, *, uvloop: bool = False, **options: Any) -> Sample:
    channel_class = _project("AsyncChannel")
    a, b = socket.socketpair()

    def child(wait_go: Callable[[], None]) -> None:
        async def main() -> None:
            channel = channel_class(b, **options)
            wait_go()
            async for message in channel:
                await channel.send(message)
            await _aclose(channel)

        _run_async(main, uvloop=uvloop)

    def parent(race: _Race) -> int:
        async def main() -> None:
            channel = channel_class(a, **options)
            try:
                send, recv = channel.send, channel.recv
                race.go()
                for i in range(_WARMUP + n):
                    if i == _WARMUP:
                        race.start()
                    await send(b"x")
                    await recv()
                race.stop()
            finally:
                await _aclose(channel)

        _run_async(main, uvloop=uvloop)
        return n

    return _two_process(child, parent, [b], [a])


# --- the plan -------------------------------------------------------------------------------


def _size_name(size: int) -> str:
    if size >= MiB:
        return f"{size // MiB} MiB"
    if size >= KiB:
        return f"{size // KiB} KiB"
    return f"{size} B"


def _framed(run: Callable[..., Sample], size: int, **options: Any) -> Callable[[int], Sample]:
    """Bind a framed variant (which counts bytes) to *size*; count messages below 1 KiB."""

    def sample(n: int) -> Sample:
        result: Sample = run(size, n, **options)
        return result if size >= KiB else Sample(result.seconds, result.units // size)

    return sample


def _bind_c(c: CPrograms, program: str, size: int | None = None) -> Callable[[int], Sample]:
    """A C limit program as a variant; ``framed`` counts bytes at 1 KiB and above."""

    def sample(n: int) -> Sample:
        if size is None:
            return c.run(program, n)
        result = c.run(program, n, size)
        if program == "framed" and size >= KiB:
            return Sample(result.seconds, result.units * size)
        return result

    return sample


def _create_case(c: CPrograms, first: int) -> Case:
    return Case(
        "create",
        "1. Pair creation + close",
        "Create a connected pair and close both ends, in a loop, in one process.",
        "pair/s",
        [
            Variant("unix_socketpair.socketpair()", _create_project, first, "project", "project"),
            Variant("Channel.pair() + close()", _create_channel_pair, first, "project", "channel"),
            Variant(
                "socket.socketpair() + detach()", _create_socket_detach, first, key="socket-detach"
            ),
            Variant(
                "socket.socketpair() + close()", _create_socket_close, first, key="socket-close"
            ),
            Variant("os.pipe()", _create_pipe, first, key="os-pipe"),
            Variant(
                "C socketpair(2) + close(2)", _bind_c(c, "create"), first, "limit", "c", c.available
            ),
        ],
        split=4,
    )


def _stream_case(c: CPrograms, size: int, first: int) -> Case:
    return Case(
        f"stream-{_size_name(size).replace(' ', '').lower()}",
        f"2. One-way stream, {_size_name(size)} chunks",
        "A child writes chunks as fast as it can; the parent reads into one reused buffer.",
        "B/s",
        [
            Variant(
                "socketpair: sendall / recv_into",
                partial(_stream_socketpair, size),
                first,
                key="socketpair",
            ),
            Variant("os.pipe: write / readv", partial(_stream_pipe, size), first, key="os-pipe"),
            Variant(
                "TCP 127.0.0.1: sendall / recv_into", partial(_stream_tcp, size), first, key="tcp"
            ),
            Variant(
                "C write(2) / read(2)", _bind_c(c, "stream", size), first, "limit", "c", c.available
            ),
        ],
        size=size,
    )


def _framed_case(c: CPrograms, size: int, first: int) -> Case:
    large = size >= KiB
    variants = [
        Variant(
            "multiprocessing.Pipe send_bytes / recv_bytes",
            _framed(_framed_pipe, size),
            first,
            "pipe",
            "pipe",
        ),
        Variant(
            "socket naive framing (sendall hdr+data / recv)",
            _framed(_framed_naive, size),
            first,
            key="naive",
        ),
        Variant(
            "asyncio StreamReader.readexactly", _framed(_framed_asyncio, size), first, key="asyncio"
        ),
        Variant(
            "Channel send / recv",
            _framed(_framed_channel, size),
            first,
            "project",
            "channel",
            _need_channel,
        ),
    ]
    if not large:
        # Right under the row it bounds: Channel.send makes one system call per message too.
        variants.append(
            Variant(
                "socket send(header + payload) per message / Channel recv (floor)",
                _framed(_framed_channel, size, bare_sender=True),
                first,
                "other",
                "floor-send",
                _need_channel,
            )
        )
        # The sender holds small messages and sends them 64 KiB at a time
        # (close() sends the rest before the child exits).
        variants.append(
            Variant(
                "Channel(write_buffer=64 KiB) send / recv",
                _framed(_framed_channel, size, write_buffer=64 * KiB),
                first,
                "project",
                "channel-buffered",
                partial(_need_channel_option, "write_buffer"),
            )
        )
    variants += [
        Variant(
            "Channel send_many / iteration",
            _framed(_framed_channel_many, size),
            first,
            "project",
            "channel-many",
            _need_channel,
        ),
    ]
    if large:
        variants.append(
            Variant(
                "Channel send / recv_into reused buffer",
                _framed(_framed_channel, size, into=True),
                first,
                "project",
                "channel-recv-into",
                _need_channel,
            )
        )
    variants += [
        Variant(
            "AsyncChannel send / recv (asyncio loop)",
            _framed(_framed_async_channel, size),
            first,
            "project",
            "async-channel",
            _need_async_channel,
        ),
        Variant(
            "AsyncChannel send_many / async iteration",
            _framed(_framed_async_channel_many, size),
            first,
            "project",
            "async-channel-many",
            _need_async_channel,
        ),
        Variant(
            "AsyncChannel send / recv (uvloop)",
            _framed(_framed_async_channel, size, uvloop=True),
            first,
            "project",
            "async-channel-uvloop",
            _need_async_channel_uvloop,
        ),
    ]
    if not large:
        from ._zmq_cases import framed_zmq, need_zmq  # it imports this module

        variants.append(
            Variant(
                "pyzmq PAIR over ipc:// send / recv",
                _framed(framed_zmq, size),
                first,
                key="zmq",
                available=need_zmq,
            )
        )
    if large:
        variants.append(
            Variant(
                "socket sendall / recv_into, no framing",
                partial(_stream_socketpair, size),
                first,
                key="raw-stream",
            )
        )
    variants.append(
        Variant("C buffered framing", _bind_c(c, "framed", size), first, "limit", "c", c.available)
    )
    return Case(
        f"framed-{_size_name(size).replace(' ', '').lower()}",
        f"3. One-way framed messages, {_size_name(size)}",
        "A child sends length-prefixed messages; the parent receives each one whole.",
        "B/s" if large else "msg/s",
        variants,
        size=size,
    )


def _rtt_case(c: CPrograms, first: int) -> Case:
    from ._zmq_cases import need_zmq, rtt_zmq  # it imports this module

    return Case(
        "rtt",
        "4. Round trip, 1-byte ping-pong",
        "The parent sends one byte (or a 1-byte message), the child echoes it back.",
        "s/op",
        [
            Variant("socket send / recv", _rtt_socket, first, key="socket"),
            Variant(
                "Channel send / recv", _rtt_channel, first, "project", "channel", _need_channel
            ),
            Variant(
                "Channel send / recv, spin=0 (always sleep at once)",
                partial(_rtt_channel, spin=0),
                first,
                "project",
                "channel-spin0",
                partial(_need_channel_option, "spin"),
            ),
            Variant(
                "socket send(frame) / recvmsg_into, fd room (floor)",
                _rtt_floor_recvmsg,
                first,
                key="floor-recvmsg",
            ),
            Variant(
                "socket send(frame) / recvmsg_into, fd room, SO_PASSCRED (floor)",
                partial(_rtt_floor_recvmsg, passcred=True),
                first,
                key="floor-recvmsg-passcred",
                available=_need_passcred,
            ),
            Variant("multiprocessing.Pipe", _rtt_pipe, first, "pipe", "pipe"),
            Variant("asyncio streams write / readexactly", _rtt_asyncio, first, key="asyncio"),
            Variant(
                "AsyncChannel send / recv (asyncio loop)",
                _rtt_async_channel,
                first,
                "project",
                "async-channel",
                _need_async_channel,
            ),
            Variant(
                "asyncio streams write / readexactly (uvloop)",
                partial(_rtt_asyncio, uvloop=True),
                first,
                key="asyncio-uvloop",
                available=_need_uvloop,
            ),
            Variant(
                "AsyncChannel send / recv (uvloop)",
                partial(_rtt_async_channel, uvloop=True),
                first,
                "project",
                "async-channel-uvloop",
                _need_async_channel_uvloop,
            ),
            Variant(
                "AsyncChannel(spin=200) send / recv (uvloop)",
                partial(_rtt_async_channel, uvloop=True, spin=200),
                first,
                "project",
                "async-channel-uvloop-spin",
                partial(_need_async_channel_option, "spin", uvloop=True),
            ),
            Variant(
                "pyzmq PAIR over ipc:// send / recv", rtt_zmq, first, key="zmq", available=need_zmq
            ),
            Variant(
                "C write(2) / read(2)", _bind_c(c, "pingpong"), first, "limit", "c", c.available
            ),
        ],
    )


def build_cases(c: CPrograms, *, quick: bool) -> list[Case]:
    """Cases 1 to 4 with their variants (case 5, scale, lives in ``_scale``).

    The first sizes only set the sizing run: every sample is then sized to
    the harness's target duration.
    """
    shrink = 4 if quick else 1
    cases = [_create_case(c, 4000 // shrink)]
    cases += [_stream_case(c, size, max(4, 8 * MiB // size) // shrink) for size in STREAM_CHUNKS]
    cases.append(_framed_case(c, 64, 20000 // shrink))
    cases.append(_framed_case(c, MiB, max(2, 16 // shrink)))
    cases.append(_rtt_case(c, 2000 // shrink))
    cases.append(spawn_case(100 // shrink))
    from ._framing_cases import build_framing_cases  # it imports this module

    cases += build_framing_cases(c, quick=quick)
    return cases
