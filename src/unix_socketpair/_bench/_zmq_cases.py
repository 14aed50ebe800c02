"""pyzmq rows: a ``PAIR`` socket over ``ipc://`` (a Unix domain socket), the
message queue users reach for instead of a socketpair channel.

pyzmq is an optional benchmark dependency (``pip install 'unix-socketpair[bench]'``);
without it these rows say "unavailable" with that reason. Neither process
touches ZeroMQ before the fork: each makes its own context (a context's I/O
thread does not survive ``fork()``), the parent binds, the child connects, and
one message each way proves the connection before the clock starts.
"""

from __future__ import annotations

import importlib
import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

from ._cases import _WARMUP, _expect, _payload, _Race, _two_process
from ._harness import Sample, Unavailable

__all__ = ["framed_zmq", "need_zmq", "rtt_zmq"]


def _zmq() -> Any:
    return importlib.import_module("zmq")


def need_zmq() -> None:
    """Raise ``Unavailable`` unless pyzmq can be imported."""
    try:
        _zmq()
    except ImportError as exc:
        raise Unavailable("pyzmq is not installed (pip install 'unix-socketpair[bench]')") from exc


def _with_endpoint(run: Callable[[str], Sample]) -> Sample:
    """Run *run* with a fresh ``ipc://`` endpoint in a private directory, removed after."""
    directory = tempfile.mkdtemp(prefix="usp-zmq-")
    try:
        return run(f"ipc://{os.path.join(directory, 'pair')}")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _child_socket(endpoint: str) -> tuple[Any, Any]:
    zmq = _zmq()
    context = zmq.Context()
    sock = context.socket(zmq.PAIR)
    sock.connect(endpoint)
    sock.send(b"ready")
    return context, sock


def _parent_socket(endpoint: str) -> tuple[Any, Any]:
    zmq = _zmq()
    context = zmq.Context()
    sock = context.socket(zmq.PAIR)
    sock.bind(endpoint)
    if sock.recv() != b"ready":
        raise RuntimeError("the child's first message was not b'ready'")
    return context, sock


def framed_zmq(size: int, n: int) -> Sample:
    """The child sends *n* messages of *size* bytes; the parent receives each whole."""
    payload = _payload(size)

    def run(endpoint: str) -> Sample:
        def child(wait_go: Callable[[], None]) -> None:
            context, sock = _child_socket(endpoint)
            try:
                wait_go()
                send = sock.send
                for _ in range(n):
                    send(payload, copy=True)
                sock.recv()  # the parent's "done": everything was delivered
            finally:
                sock.close(linger=0)
                context.term()

        def parent(race: _Race) -> int:
            context, sock = _parent_socket(endpoint)
            try:
                recv = sock.recv
                total = 0
                race.start_and_go()
                for _ in range(n):
                    total += len(recv(copy=True))
                race.stop()
                sock.send(b"done")
            finally:
                sock.close(linger=1000)
                context.term()
            return _expect(total, size * n, "bytes")

        return _two_process(child, parent, [], [])

    return _with_endpoint(run)


def rtt_zmq(n: int) -> Sample:
    """1-byte ping-pong: the parent sends, the child echoes."""

    def run(endpoint: str) -> Sample:
        def child(wait_go: Callable[[], None]) -> None:
            context, sock = _child_socket(endpoint)
            try:
                wait_go()
                send, recv = sock.send, sock.recv
                while (message := recv()) != b"":
                    send(message)
            finally:
                sock.close(linger=0)
                context.term()

        def parent(race: _Race) -> int:
            context, sock = _parent_socket(endpoint)
            try:
                send, recv = sock.send, sock.recv
                race.go()
                for _ in range(_WARMUP):
                    send(b"x")
                    recv()
                race.start()
                for _ in range(n):
                    send(b"x")
                    recv()
                race.stop()
                send(b"")  # the child stops
            finally:
                sock.close(linger=1000)
                context.term()
            return n

        return _two_process(child, parent, [], [])

    return _with_endpoint(run)
