"""The Node.js IPC cases: a Python parent over ``NodeChannel`` against a Node parent
over ``child_process.fork``, both talking to the same Node child (``node/child.js``).

Each sample starts a fresh child (outside the clock), waits for its "ready" message,
then times the measured part from the parent's side: for the stream case, from the
request until the last of *n* messages has been received; for the round trip, *n*
exchanges after a warm-up. The Node rows run ``node/parent.js``, which forks the child
and prints its own timing, so that both parents are timed the same way.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from .._nodeipc import Serialization
from ._harness import Case, Clock, Sample, Unavailable, Variant

__all__ = ["MESSAGE", "build_node_cases"]

_HERE = Path(__file__).resolve().parent / "node"
_CHILD = _HERE / "child.js"
_PARENT = _HERE / "parent.js"
_WARMUP = 50  # round trips before the clock starts, as parent.js does
#: The message both parents exchange: ``JSON.stringify`` makes it a 64-byte line
#: (newline included); V8's serializer makes it 44 bytes + the 4-byte length.
MESSAGE = {"seq": 1, "text": "x" * 44}
_SERIALIZATIONS: tuple[Serialization, ...] = ("json", "advanced")


def _node() -> str:
    path = shutil.which("node")
    if path is None:
        raise Unavailable("node not found on PATH")
    return path


def _need_node() -> None:
    _node()


def _node_parent(kind: str, serialization: Serialization, n: int) -> Sample:
    """Run ``parent.js``; its printed seconds are the sample."""
    result = subprocess.run(
        [_node(), str(_PARENT), kind, serialization, str(n), json.dumps(MESSAGE)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"the Node parent failed ({result.returncode}): {result.stderr[-500:]}")
    seconds, units = result.stdout.split()
    if int(units) != n:
        raise RuntimeError(f"the Node parent counted {units} messages, expected {n}")
    return Sample(float(seconds), n)


def _python_parent(kind: str, serialization: Serialization, n: int) -> Sample:
    """The same exchange as ``parent.js``, with ``spawn(node_ipc=...)`` and NodeChannel."""
    from .._spawn import spawn

    clock = Clock()
    with spawn([_node(), str(_CHILD)], node_ipc=serialization) as child:
        channel = child.channel
        try:
            if channel.recv(timeout=30) != {"ready": True}:
                raise RuntimeError("the Node child did not say it was ready")
            recv, send = channel.recv, channel.send
            if kind == "stream":
                clock.start()
                send({"op": "stream", "n": n, "message": MESSAGE})
                for _ in range(n - 1):
                    recv()
                last = recv()
                clock.stop()
            else:
                send({"op": "echo"})
                for _ in range(_WARMUP):
                    send(MESSAGE)
                    recv()
                clock.start()
                for _ in range(n - 1):
                    send(MESSAGE)
                    recv()
                send(MESSAGE)
                last = recv()
                clock.stop()
        finally:
            channel.close()  # the child sees the disconnect and exits
        if child.wait(timeout=30) != 0:
            raise RuntimeError(f"the Node child exited with status {child.returncode}")
    if last != MESSAGE:
        raise RuntimeError(f"the last message was {last!r}, expected {MESSAGE!r}")
    return Sample(clock.elapsed(), n)


def _bind(
    run: Callable[[str, Serialization, int], Sample], kind: str, mode: Serialization
) -> Callable[[int], Sample]:
    return lambda n: run(kind, mode, n)


def _variants(kind: str, first_n: int) -> list[Variant]:
    variants = []
    for mode in _SERIALIZATIONS:
        variants.append(
            Variant(f"Node parent, child_process.fork ({mode})", _bind(_node_parent, kind, mode),
                    first_n, "other", f"node-{mode}", _need_node)
        )  # fmt: skip
        variants.append(
            Variant(f"NodeChannel ({mode})", _bind(_python_parent, kind, mode),
                    first_n, "project", f"nodechannel-{mode}", _need_node)
        )  # fmt: skip
    return variants


def build_node_cases(*, quick: bool) -> list[Case]:
    """The stream and round-trip cases of Node's IPC channel."""
    shrink = 4 if quick else 1
    return [
        Case(
            "node-64b",
            "Node.js IPC, 64 B messages from a Node child to its parent",
            "Messages per second received by the parent from a Node child that calls "
            "process.send() in a loop; the same child for every row.",
            "msg/s",
            _variants("stream", 20000 // shrink),
            size=64,
        ),
        Case(
            "node-rtt",
            "Node.js IPC round trip, 64 B message, to a Node child that echoes it",
            "Seconds per round trip (send, the child's process.send() of the same value, "
            "receive); the same child for every row.",
            "s/op",
            _variants("rtt", 2000 // shrink),
        ),
    ]
