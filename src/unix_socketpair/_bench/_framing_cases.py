"""The cases of the framing accelerator: batched 64 B messages with and without it,
and the two framing loops alone.

The batched rows each run in a fresh interpreter, one with the C accelerator and
one with ``UNIX_SOCKETPAIR_PURE=1``, so that one run shows both side by side
(the implementation is chosen once, at import). The loop rows call both
implementations in this process.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from functools import partial

from .. import _framing
from ._cases import (
    _batch,
    _bind_c,
    _expect,
    _framed,
    _framed_pipe,
    _payload,
    _project,
    _Race,
    _two_process,
)
from ._harness import Case, Clock, Sample, Unavailable, Variant
from ._limits import CPrograms

__all__ = ["build_framing_cases", "implementation"]

_PURE_ENV = "UNIX_SOCKETPAIR_PURE"
# Frames per split_frames/join_frames call in the loop rows: about 64 KiB of
# 64 B frames, what one receive of the channel's buffer holds.
_LOOP_BATCH = 1000


def implementation() -> str:
    """Which framing implementation this process uses, and why, in a few words."""
    if _framing.ACCELERATED:
        return "C accelerator"
    if os.environ.get(_PURE_ENV) == "1":
        return f"pure Python ({_PURE_ENV}=1)"
    return "pure Python (the C accelerator was not built)"


def _need_accelerator() -> None:
    if not _framing.ACCELERATED:
        raise Unavailable(f"the C accelerator is not in use here: {implementation()}")


def _receives_with() -> str:
    """``recv_many`` where the channel has it, else iteration (both batch their decoding)."""
    return "recv_many" if hasattr(_project("Channel"), "recv_many") else "iteration"


def _batched(size: int, n: int) -> Sample:
    """*n* messages of *size* bytes: ``send_many`` in a child, ``recv_many`` here."""
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
            if _receives_with() == "recv_many":
                count = 0
                while count < n:
                    messages = channel.recv_many()
                    count += len(messages)
                    total += sum(map(len, messages))
            else:
                for message in channel:
                    total += len(message)
            race.stop()
        finally:
            channel.close()
        return _expect(total, size * n, "bytes")

    return _two_process(child, parent, [b], [a])


def _floor(size: int, n: int) -> Sample:
    """The least a batched channel must do: ``join_frames`` + ``sendall`` in a child,
    ``recv_into`` a reused buffer + ``split_frames`` here; no Channel."""
    a, b = socket.socketpair()
    payload = _payload(size)

    def child(wait_go: Callable[[], None]) -> None:
        batch = [payload] * _batch(size)
        full, rest = divmod(n, len(batch))
        data, tail = _framing.join_frames(batch), _framing.join_frames(batch[:rest])
        wait_go()
        for _ in range(full):
            b.sendall(data)
        b.sendall(tail)
        b.close()

    def parent(race: _Race) -> int:
        split, recv_into = _framing.split_frames, a.recv_into
        buf = bytearray(256 * 1024)
        view = memoryview(buf)
        pos = end = count = total = 0
        race.start_and_go()
        while count < n:
            if end == len(buf):  # keep the partial frame at the start
                view[: end - pos] = view[pos:end]
                pos, end = 0, end - pos
            received = recv_into(view[end:])
            if not received:
                raise EOFError("the sender closed early")
            end += received
            messages, pos = split(buf, pos, end, 1 << 20, 1 << 30)
            count += len(messages)
            total += sum(map(len, messages))
        race.stop()
        view.release()
        return _expect(total, size * n, "bytes")

    return _two_process(child, parent, [b], [a])


def _in_fresh_interpreter(size: int, n: int, *, name: str, pure: bool) -> Sample:
    """``name(size, n)`` of this module in a new interpreter that imports the project
    with or without the C accelerator."""
    env = {key: value for key, value in os.environ.items() if key != _PURE_ENV}
    if pure:
        env[_PURE_ENV] = "1"
    code = (
        "import sys\n"
        "from unix_socketpair import _framing\n"
        f"from unix_socketpair._bench._framing_cases import {name}\n"
        f"if _framing.ACCELERATED == {pure}:\n"
        "    sys.exit('not the implementation asked for')\n"
        f"sample = {name}({size}, {n})\n"
        "print(sample.seconds, sample.units)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"the measuring interpreter failed: {result.stderr.strip()[-300:]}")
    seconds, units = result.stdout.split()
    return Sample(float(seconds), int(units))


def _batched_case(c: CPrograms, size: int, first: int) -> Case:
    how = f"send_many / {_receives_with()}"
    return Case(
        f"batched-{size}b",
        f"6. Batched {size} B messages, with and without the C accelerator",
        f"A child sends {size} B messages with Channel.send_many; the parent takes every "
        f"whole message received at once ({how}). Each Channel row runs in its own "
        "interpreter, with or without the accelerator.",
        "msg/s",
        [
            Variant(
                "multiprocessing.Pipe send_bytes / recv_bytes",
                _framed(_framed_pipe, size),
                first,
                "pipe",
                "pipe",
            ),
            Variant(
                f"Channel {how}, C accelerator",
                _framed(_in_fresh_interpreter, size, name="_batched", pure=False),
                first,
                "project",
                "many-c",
                _need_accelerator,
            ),
            Variant(
                f"Channel {how}, pure Python",
                _framed(_in_fresh_interpreter, size, name="_batched", pure=True),
                first,
                "project",
                "many-py",
            ),
            Variant(
                "socket sendall(join_frames) / recv_into + split_frames, C (floor)",
                _framed(_in_fresh_interpreter, size, name="_floor", pure=False),
                first,
                "other",
                "floor-c",
                _need_accelerator,
            ),
            Variant(
                "socket sendall(join_frames) / recv_into + split_frames, Python (floor)",
                _framed(_in_fresh_interpreter, size, name="_floor", pure=True),
                first,
                "other",
                "floor-py",
            ),
            Variant(
                "C buffered framing", _bind_c(c, "framed", size), first, "limit", "c", c.available
            ),
        ],
        size=size,
    )


def _split_loop(split: Callable[..., tuple[list[bytes], int]], size: int, n: int) -> Sample:
    data = _framing.py_join_frames([_payload(size)] * _LOOP_BATCH)
    end = len(data)
    clock = Clock()
    clock.start()
    for _ in range(max(1, n // _LOOP_BATCH)):
        frames, pos = split(data, 0, end, 1 << 20, 1 << 30)
    clock.stop()
    _expect(pos + len(frames), end + _LOOP_BATCH, "bytes and frames")
    return Sample(clock.elapsed(), max(1, n // _LOOP_BATCH) * _LOOP_BATCH)


def _join_loop(join: Callable[[list[bytes]], bytes], size: int, n: int) -> Sample:
    messages = [_payload(size)] * _LOOP_BATCH
    clock = Clock()
    clock.start()
    for _ in range(max(1, n // _LOOP_BATCH)):
        data = join(messages)
    clock.stop()
    _expect(len(data), (size + 4) * _LOOP_BATCH, "bytes")
    return Sample(clock.elapsed(), max(1, n // _LOOP_BATCH) * _LOOP_BATCH)


def _accelerated(loop: Callable[..., Sample], name: str) -> Callable[[int, int], Sample]:
    def run(size: int, n: int) -> Sample:
        from .. import _speedups

        return loop(getattr(_speedups, name), size, n)

    return run


def _loops_case(size: int, first: int) -> Case:
    return Case(
        f"framing-loops-{size}b",
        f"7. The framing loops alone, {size} B frames, pure Python vs C accelerator",
        f"split_frames and join_frames over {_LOOP_BATCH} frames per call, in one "
        "process: no socket, only the per-message work the accelerator replaces.",
        "msg/s",
        [
            Variant(
                "split_frames, pure Python",
                partial(_split_loop, _framing.py_split_frames, size),
                first,
                "project",
                "split-py",
            ),
            Variant(
                "split_frames, C accelerator",
                partial(_accelerated(_split_loop, "split_frames"), size),
                first,
                "project",
                "split-c",
                _need_accelerator,
            ),
            Variant(
                "join_frames, pure Python",
                partial(_join_loop, _framing.py_join_frames, size),
                first,
                "project",
                "join-py",
            ),
            Variant(
                "join_frames, C accelerator",
                partial(_accelerated(_join_loop, "join_frames"), size),
                first,
                "project",
                "join-c",
                _need_accelerator,
            ),
        ],
        size=size,
        split=4,
    )


def build_framing_cases(c: CPrograms, *, quick: bool) -> list[Case]:
    """The batched case and the loops case, at 64 B."""
    shrink = 4 if quick else 1
    return [_batched_case(c, 64, 20000 // shrink), _loops_case(64, 20000 // shrink)]
