"""NodeChannel against a real Node process: values in both serialization modes, handles
both ways, iteration until Node disconnects, a Python child of a Node parent
(NodeChannel.from_env), and errors raised where they belong."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import pytest
from support import require

from unix_socketpair import NodeChannel, ProtocolError, spawn
from unix_socketpair._nodeipc import node_environment

MODES = ["json", "advanced"]
TESTS = Path(__file__).resolve().parent.parent
NODE_CHILD = TESTS / "children" / "node_ipc.js"
EXAMPLES = TESTS.parent / "examples"


def start(mode: str, *args: str) -> tuple[NodeChannel, subprocess.Popen[bytes]]:
    ours, theirs = socket.socketpair()
    with theirs:
        child = subprocess.Popen(
            [require("node"), *args],
            pass_fds=[theirs.fileno()],
            env={**os.environ, **node_environment(theirs.fileno(), mode)},  # type: ignore[arg-type]
        )
    return NodeChannel(ours, mode), child  # type: ignore[arg-type]


@pytest.fixture(params=MODES)
def node(request: pytest.FixtureRequest, no_fd_leak: None) -> Iterator[NodeChannel]:
    channel, child = start(request.param, str(NODE_CHILD))
    try:
        with channel:
            yield channel
            channel.send({"op": "bye"}, timeout=10)
            assert list(channel) == []  # Node disconnects: the iteration ends
        assert child.wait(timeout=30) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_values_round_trip(node: NodeChannel) -> None:
    values: list[Any] = [None, True, 0, -7, 2**31, 0.5, "", "caf\u00e9 \U0001f600"]
    values += [[1, [2, {"x": None}]], {"nested": {"list": [1, "two"]}}]
    for value in values:
        node.send({"op": "echo", "value": value}, timeout=10)
        assert node.recv(timeout=10) == value


@pytest.mark.parametrize("node", ["advanced"], indirect=True)
def test_advanced_values_round_trip(node: NodeChannel) -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, 678000, timezone.utc)
    value = {"map": {1: "a"}, "set": {"x"}, "big": 2**64, "buf": b"\x00\xff", "when": when}
    node.send({"op": "echo", "value": value}, timeout=10)
    assert node.recv(timeout=10) == value


@pytest.mark.parametrize("node", ["json"], indirect=True)
def test_json_buffer_arrives_as_its_to_json(node: NodeChannel) -> None:
    node.send({"op": "buffer", "text": "hi"})
    assert node.recv(timeout=10) == {"type": "Buffer", "data": [104, 105]}


def test_iteration_in_order(node: NodeChannel) -> None:
    node.send({"op": "count", "n": 500})
    received = []
    for value in node:
        received.append(value)
        if value == 499:
            break
    assert received == list(range(500))


def test_connected_socket_to_node(node: NodeChannel) -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        node.send({"text": "via node"}, theirs, timeout=10)  # returns once Node ACKed
        theirs.close()  # Node holds its own copy
        assert node.recv(timeout=10) == {"kind": "Socket", "text": "via node"}
        ours.settimeout(10)
        assert ours.recv(100) == b"via node"


def test_listening_server_to_node(node: NodeChannel) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        node.send({"text": "node accepted"}, listener, timeout=10)
    assert node.recv(timeout=10) == {"kind": "Server", "listening": True, "text": "node accepted"}
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        assert client.recv(100) == b"node accepted"


def test_listening_server_from_node_accepts(node: NodeChannel) -> None:
    node.send({"op": "serve"})
    message, server = node.recv_with_handle(timeout=10)
    assert server is not None
    with server:
        assert server.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        assert server.getsockname()[1] == message["port"]
        node.send({"op": "close-server"})
        assert node.recv(timeout=10) == {"closed": True}
        server.settimeout(10)
        with socket.create_connection(("127.0.0.1", message["port"]), timeout=10) as client:
            accepted, _ = server.accept()
            with accepted:
                accepted.sendall(b"accepted by python")
                assert client.recv(100) == b"accepted by python"


def test_connected_socket_from_node(node: NodeChannel) -> None:
    node.send({"op": "connect"})
    message, conn = node.recv_with_handle(timeout=10)
    assert message == {"kind": "client"} and conn is not None
    with conn:
        node.send({"op": "write", "text": "written by node"})
        conn.settimeout(10)
        received = b""
        while chunk := conn.recv(100):
            received += chunk
        assert received == b"written by node"


@pytest.mark.parametrize("node", ["json"], indirect=True)
def test_bad_values_raise_before_anything_is_sent(node: NodeChannel) -> None:
    with pytest.raises(ValueError, match="JSON"):
        node.send({"op": "echo", "value": float("nan")})
    with pytest.raises(TypeError):
        node.send({"op": "echo", "value": object()})
    # Node would have died on a bad line: it is alive and answers.
    node.send({"op": "echo", "value": "still here"})
    assert node.recv(timeout=10) == "still here"


def test_a_bad_line_from_the_peer_is_a_protocol_error(no_fd_leak: None) -> None:
    # A peer that writes straight to the descriptor, past Node's own serializer.
    script = (
        "require('fs').writeSync(Number(process.argv[1]), 'NaN\\n' + JSON.stringify('ok') + '\\n')"
    )
    ours, theirs = socket.socketpair()
    with theirs:
        child = subprocess.Popen(
            [require("node"), "-e", script, str(theirs.fileno())], pass_fds=[theirs.fileno()]
        )
    with NodeChannel(ours) as channel:
        with pytest.raises(ProtocolError, match="not JSON"):
            channel.recv(timeout=10)
        assert channel.recv(timeout=10) == "ok"
        assert list(channel) == []
    assert child.wait(timeout=30) == 0


@pytest.mark.parametrize("mode", MODES)
def test_python_child_of_a_node_parent(mode: str) -> None:
    node = require("node")
    flags = ["--advanced"] if mode == "advanced" else []
    done = subprocess.run(
        [
            node,
            str(EXAMPLES / "node_parent.js"),
            *flags,
            sys.executable,
            str(TESTS / "children" / "node_channel_child.py"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:2] == [
        'parent got {"text":"HELLO"}',
        f'parent got {{"text":"OVER {mode.upper()} IPC"}}',
    ]
    assert lines[2].startswith('parent got {"serving":')
    assert lines[3:] == [
        'parent read "served by the child" from the handed-over server',
        "child exited with 0",
    ]


@pytest.mark.parametrize("mode", MODES)
def test_spawn_node_ipc(mode: Literal["json", "advanced"], no_fd_leak: None) -> None:
    with spawn([require("node"), str(NODE_CHILD)], node_ipc=mode) as child:
        channel = child.channel
        assert isinstance(channel, NodeChannel) and channel.serialization == mode
        channel.send({"op": "echo", "value": {"from": "spawn"}}, timeout=10)
        assert channel.recv(timeout=10) == {"from": "spawn"}
        ours, theirs = socket.socketpair()
        with ours, theirs:
            channel.send({"text": "handle after spawn"}, theirs, timeout=10)
            assert channel.recv(timeout=10) == {"kind": "Socket", "text": "handle after spawn"}
            ours.settimeout(10)
            assert ours.recv(100) == b"handle after spawn"
        channel.send({"op": "bye"}, timeout=10)
        assert list(channel) == []
    assert child.returncode == 0


def test_udp_socket_to_node(node: NodeChannel) -> None:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sent,
    ):
        receiver.bind(("127.0.0.1", 0))
        receiver.settimeout(10)
        sent.bind(("127.0.0.1", 0))
        node.send({"text": "datagram", "port": receiver.getsockname()[1]}, sent, timeout=10)
        assert node.recv(timeout=10) == {"kind": "Socket", "type": "udp4", "text": "datagram"}
        data, source = receiver.recvfrom(100)
        assert data == b"datagram" and source == sent.getsockname()
