"""NodeChannel between two Python ends: values, handles, errors, timeouts, ownership.
(Against a real Node process: tests/interop/test_node_channel.py.)"""

from __future__ import annotations

import array
import os
import socket
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from unix_socketpair import (
    ChannelClosed,
    HandleRefused,
    MessageTooLarge,
    NodeChannel,
    ProtocolError,
    spawn,
)

MODES = ["json", "advanced"]


@pytest.fixture(params=MODES)
def pair(
    request: pytest.FixtureRequest, no_fd_leak: None
) -> Iterator[tuple[NodeChannel, NodeChannel]]:
    left, right = NodeChannel.pair(request.param)
    with left, right:
        yield left, right


def test_values_round_trip(pair: tuple[NodeChannel, NodeChannel]) -> None:
    left, right = pair
    values = [None, True, 7, -0.5, "caf\u00e9", [1, [2]], {"a": {"b": None}}]
    for value in values:
        left.send(value)
    assert [right.recv(timeout=5) for _ in values] == values


def test_iteration_ends_when_the_peer_closes(pair: tuple[NodeChannel, NodeChannel]) -> None:
    left, right = pair
    for i in range(100):
        left.send(i)
    left.close()
    assert list(right) == list(range(100))
    with pytest.raises(ChannelClosed):
        right.recv()


def test_handle_is_acknowledged_and_owned_by_the_receiver(
    pair: tuple[NodeChannel, NodeChannel],
) -> None:
    left, right = pair
    a, b = socket.socketpair()
    with a, b:
        done: list[BaseException | None] = []

        def sender() -> None:
            try:
                left.send({"here": "a"}, a, timeout=5)
                left.send("after")
                done.append(None)
            except BaseException as exc:  # reported below
                done.append(exc)

        thread = threading.Thread(target=sender)
        thread.start()
        value, handle = right.recv_with_handle(timeout=5)
        assert value == {"here": "a"} and handle is not None
        with handle:
            assert right.recv(timeout=5) == "after"
            thread.join(5)
            assert done == [None]
            handle.sendall(b"through the handle")
            assert b.recv(100) == b"through the handle"


def test_send_with_a_handle_waits_for_the_ack_and_times_out(
    pair: tuple[NodeChannel, NodeChannel],
) -> None:
    left, right = pair
    a, b = socket.socketpair()
    with a, b:
        with pytest.raises(TimeoutError):
            left.send("x", a, timeout=0.05)
        # The receiver answers on its next receive; the held handle goes through.
        value, handle = right.recv_with_handle(timeout=5)
        assert value == "x" and handle is not None
        handle.close()
        left.send("y", timeout=5)  # waits for the ACK, then goes out
        assert right.recv(timeout=5) == "y"


def test_handle_refused_when_the_peer_leaves_first(no_fd_leak: None) -> None:
    ours, theirs = socket.socketpair()
    a, b = socket.socketpair()
    with ours, a, b, NodeChannel(theirs) as channel:
        ours.shutdown(socket.SHUT_WR)  # the peer reads on, but will never answer
        with pytest.raises(HandleRefused, match="closed the channel before answering"):
            channel.send("x", a, timeout=5)
        assert ours.recv(100).startswith(b'{"cmd":"NODE_HANDLE","type":"net.Socket"')
        assert a.fileno() >= 0  # the caller's socket is untouched


@pytest.mark.parametrize("value", [float("nan"), float("inf"), {"x": [float("-inf")]}])
def test_nan_is_a_value_error_before_sending(value: object, no_fd_leak: None) -> None:
    left, right = NodeChannel.pair("json")
    with left, right:
        with pytest.raises(ValueError, match="JSON"):
            left.send(value)
        left.send("next")
        assert right.recv(timeout=5) == "next"  # nothing else was written


@pytest.mark.parametrize("mode", MODES)
def test_unencodable_is_a_type_error_before_sending(mode: str, no_fd_leak: None) -> None:
    left, right = NodeChannel.pair(mode)  # type: ignore[arg-type]
    with left, right:
        with pytest.raises(TypeError):
            left.send(object())
        left.send("next")
        assert right.recv(timeout=5) == "next"


def test_a_bad_line_is_a_protocol_error_and_is_skipped(no_fd_leak: None) -> None:
    ours, theirs = socket.socketpair()
    with ours, NodeChannel(theirs) as channel:
        ours.sendall(b"NaN\n[1]\n")
        with pytest.raises(ProtocolError, match="not JSON"):
            channel.recv(timeout=5)
        assert channel.recv(timeout=5) == [1]


def test_a_line_over_the_limit_is_message_too_large(no_fd_leak: None) -> None:
    ours, theirs = socket.socketpair()
    with ours, NodeChannel(theirs, max_message_size=10) as channel:
        ours.sendall(b'"' + b"x" * 20 + b'"\n"ok"\n')
        with pytest.raises(MessageTooLarge):
            channel.recv(timeout=5)
        assert channel.recv(timeout=5) == "ok"


def test_recv_timeout_loses_nothing(no_fd_leak: None) -> None:
    ours, theirs = socket.socketpair()
    with ours, NodeChannel(theirs) as channel:
        ours.sendall(b'{"half":')
        with pytest.raises(TimeoutError):
            channel.recv(timeout=0.05)
        ours.sendall(b"1}\n")
        assert channel.recv(timeout=5) == {"half": 1}


def test_close_closes_a_handle_not_yet_received(no_fd_leak: None) -> None:
    ours, theirs = socket.socketpair()
    a, b = socket.socketpair()
    with ours, a, b:
        channel = NodeChannel(theirs)
        # One write: a plain message, then a handle message with its descriptor.
        handle_line = b'{"cmd":"NODE_HANDLE","type":"net.Socket","msg":"v"}\n'
        ours.sendmsg(
            [b'"first"\n' + handle_line],
            [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [a.fileno()]))],
        )
        assert channel.recv(timeout=5) == "first"  # the handle now waits in the channel
        assert ours.recv(100) == b'{"cmd":"NODE_HANDLE_ACK"}\n'  # answered at once
        channel.close()  # no_fd_leak: the queued descriptor was closed


def test_adopting_the_wrong_socket_leaves_it_to_the_caller() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        with pytest.raises(ValueError, match="SOCK_STREAM"):
            NodeChannel(a)
        with pytest.raises(ValueError, match="SOCK_STREAM"):
            NodeChannel(a.fileno())
        assert a.fileno() >= 0
        os.fstat(a.fileno())  # still open


def test_from_env_takes_both_variables(monkeypatch: pytest.MonkeyPatch, no_fd_leak: None) -> None:
    a, b = socket.socketpair()
    with NodeChannel(a, "advanced") as peer:
        monkeypatch.setenv("NODE_CHANNEL_FD", str(b.detach()))
        monkeypatch.setenv("NODE_CHANNEL_SERIALIZATION_MODE", "advanced")
        with NodeChannel.from_env() as channel:
            assert channel.serialization == "advanced"
            assert "NODE_CHANNEL_FD" not in os.environ
            assert "NODE_CHANNEL_SERIALIZATION_MODE" not in os.environ
            channel.send(b"bytes")
            assert peer.recv(timeout=5) == b"bytes"


def test_closed_channel_raises(no_fd_leak: None) -> None:
    left, right = NodeChannel.pair()
    right.close()
    left.close()
    assert left.closed and left.fileno() == -1
    with pytest.raises(OSError):
        left.send(1)
    with pytest.raises(OSError):
        left.recv()


# ------------------------------------------------------------------ spawn(node_ipc=...)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"node_ipc": "yaml"}, "json' or 'advanced"),
        ({"node_ipc": "json", "type": socket.SOCK_SEQPACKET}, "SOCK_STREAM"),
        ({"node_ipc": "json", "fd": "stdio"}, "descriptor number"),
    ],
)
def test_spawn_node_ipc_refuses_what_node_cannot_use(
    options: dict[str, Any], match: str, no_fd_leak: None
) -> None:
    # A missing program would raise FileNotFoundError: the check comes first.
    with pytest.raises(ValueError, match=match):
        spawn(["/nonexistent/program"], **options)


def test_spawn_node_ipc_channel_options(no_fd_leak: None) -> None:
    with pytest.raises(TypeError, match="max_fds"):
        spawn(["/nonexistent/program"], node_ipc="json", channel_options={"max_fds": 1})


def test_spawn_node_ipc_sets_the_environment_and_the_channel(no_fd_leak: None) -> None:
    script = (
        "import os, socket\n"
        "from unix_socketpair import NodeChannel\n"
        "env = dict(os.environ)\n"
        "with NodeChannel.from_env() as channel:\n"
        "    channel.send([env['NODE_CHANNEL_FD'], env['NODE_CHANNEL_SERIALIZATION_MODE'],\n"
        "                  'NODE_CHANNEL_FD' in os.environ])\n"
    )
    with spawn([sys.executable, "-c", script], fd=5, node_ipc="advanced") as child:
        assert isinstance(child.channel, NodeChannel)
        assert child.channel.serialization == "advanced"
        assert child.channel.recv(timeout=30) == ["5", "advanced", False]
        assert list(child.channel) == []
    assert child.returncode == 0


def test_a_handle_node_cannot_rebuild_is_a_type_error_before_sending(no_fd_leak: None) -> None:
    left, right = NodeChannel.pair()
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with left, right, a, b:
        with pytest.raises(TypeError, match="handle"):
            left.send("x", a)  # a Unix datagram socket
        with pytest.raises(TypeError, match=r"socket\.socket"):
            left.send("x", a.fileno())  # type: ignore[arg-type]
        left.send("next")
        assert right.recv(timeout=5) == "next"  # nothing else was written
