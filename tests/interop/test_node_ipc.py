"""Interop: a real Node child that uses only process.on('message') / process.send(),
started with NODE_CHANNEL_FD on a socketpair, talking to NodeProtocol in both
serialization modes, handles in both directions; and the wire facts of Node's own
side (it NACKs a handle message without a descriptor, holds later messages until
the answer, retransmits 3 times) checked with raw bytes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import pytest

from interop.node_driver import NodePeer, recv_raw, send_raw, start_node
from unix_socketpair import ChannelClosed
from unix_socketpair._nodeipc import CLOSED, NEED_DATA, JsonLineDecoder, NodeProtocol, encode_json

MODES = ["json", "advanced"]


@pytest.fixture(params=MODES)
def node(request: pytest.FixtureRequest, no_fd_leak: None) -> Iterator[NodePeer]:
    sock, child = start_node(request.param)
    peer = NodePeer(sock, request.param)
    try:
        yield peer
        peer.send({"op": "bye"})
        with pytest.raises(ChannelClosed):
            peer.recv()
        assert child.wait(timeout=30) == 0
    finally:
        peer.close()
        if child.poll() is None:
            child.kill()
            child.wait()


def test_values_both_ways(node: NodePeer) -> None:
    values: list[Any] = [None, True, 0, -7, 2**31, 0.5, "", "caf\u00e9 \u20ac \U0001f600"]
    values += [[1, [2, {"x": None}]], {"nested": {"list": [1, "two"]}}]
    for value in values:
        node.send({"op": "echo", "value": value})
        assert node.recv() == value


def test_order_kept_over_many_messages(node: NodePeer) -> None:
    node.send({"op": "count", "n": 2000})
    assert [node.recv() for _ in range(2000)] == list(range(2000))


@pytest.mark.parametrize("node", ["advanced"], indirect=True)
def test_advanced_mode_carries_the_structured_clone_types(node: NodePeer) -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, 678000, timezone.utc)
    value = {"map": {1: "a"}, "set": {"x"}, "big": 2**64, "buf": b"\x00\xff", "when": when}
    node.send({"op": "show", "value": value})
    assert node.recv() == (
        "{ map: Map(1) { 1 => 'a' }, set: Set(1) { 'x' }, big: 18446744073709551616n, "
        "buf: <Buffer 00 ff>, when: 2026-01-02T03:04:05.678Z }"
    )
    node.send({"op": "echo", "value": value})
    assert node.recv() == value


@pytest.mark.parametrize("node", ["json"], indirect=True)
def test_json_mode_buffer_arrives_as_its_to_json(node: NodePeer) -> None:
    node.send({"op": "buffer", "text": "hi"})
    assert node.recv() == {"type": "Buffer", "data": [104, 105]}


@pytest.mark.parametrize("node", ["advanced"], indirect=True)
def test_advanced_mode_buffer_arrives_as_bytes(node: NodePeer) -> None:
    node.send({"op": "buffer", "text": "hi"})
    assert node.recv() == b"hi"


# ------------------------------------------------------------------ python -> node


def test_connected_socket_to_node(node: NodePeer) -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        node.send({"text": "via node"}, handle=theirs)
        theirs.close()  # node holds its own copy now
        assert node.recv() == {"kind": "Socket", "text": "via node"}
        assert ours.recv(100) == b"via node"


def test_listening_server_to_node(node: NodePeer) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        node.send({"text": "node accepted"}, handle=listener)
    assert node.recv() == {"kind": "Server", "listening": True, "text": "node accepted"}
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        assert client.recv(100) == b"node accepted"


def test_udp_socket_to_node(node: NodePeer) -> None:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sent,
    ):
        receiver.bind(("127.0.0.1", 0))
        receiver.settimeout(10)
        sent.bind(("127.0.0.1", 0))
        node.send({"text": "datagram", "port": receiver.getsockname()[1]}, handle=sent)
        assert node.recv() == {"kind": "Socket", "type": "udp4", "text": "datagram"}
        data, source = receiver.recvfrom(100)
        assert data == b"datagram" and source == sent.getsockname()


# ------------------------------------------------------------------ node -> python


def test_listening_server_from_node_accepts_connections(node: NodePeer) -> None:
    node.send({"op": "serve"})
    message, server = node.recv_with_handle()
    assert server is not None
    with server:
        assert server.type == socket.SOCK_STREAM
        assert server.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        assert server.getsockname()[1] == message["port"]
        node.send({"op": "close-server"})  # from now on only our copy accepts
        assert node.recv() == {"closed": True}
        server.settimeout(10)
        with socket.create_connection(("127.0.0.1", message["port"]), timeout=10) as client:
            accepted, _ = server.accept()
            with accepted:
                accepted.sendall(b"accepted by python")
                assert client.recv(100) == b"accepted by python"


def test_connected_socket_from_node(node: NodePeer) -> None:
    node.send({"op": "connect"})
    message, conn = node.recv_with_handle()
    assert message == {"kind": "client"} and conn is not None
    with conn:
        assert conn.family == socket.AF_INET and conn.type == socket.SOCK_STREAM
        node.send({"op": "write", "text": "written by node"})
        conn.settimeout(10)
        received = b""
        while chunk := conn.recv(100):
            received += chunk
        assert received == b"written by node"


# ----------------------------------------------------- node's side, byte for byte


def _next_values(sock: socket.socket, decoder: JsonLineDecoder, fds: list[int]) -> list[Any]:
    while True:
        values = []
        while (value := decoder.next()) is not NEED_DATA and value is not CLOSED:
            values.append(value)
        if values or value is CLOSED:
            return values
        data, got = recv_raw(sock)
        fds.extend(got)
        decoder.feed(data)


def test_node_nacks_a_handle_message_without_a_descriptor() -> None:
    sock, child = start_node("json")
    with sock:
        send_raw(sock, encode_json({"cmd": "NODE_HANDLE", "type": "net.Socket", "msg": 1}))
        decoder, fds = JsonLineDecoder(), list[int]()
        assert _next_values(sock, decoder, fds) == [{"cmd": "NODE_HANDLE_NACK"}]
        assert fds == []
    assert child.wait(timeout=30) == 0


def test_node_holds_later_messages_until_the_ack() -> None:
    sock, child = start_node("json", stdout=subprocess.PIPE)
    assert child.stdout is not None
    fds: list[int] = []
    with sock:
        send_raw(sock, encode_json({"op": "hold"}))
        decoder = JsonLineDecoder()
        (handle_message,) = _next_values(sock, decoder, fds)
        assert handle_message == {
            "cmd": "NODE_HANDLE",
            "type": "net.Socket",
            "msg": {"kind": "client"},
        }
        assert len(fds) == 1  # on the same write as the message
        # Node sent "after" right behind the handle, but holds it until we answer:
        assert json.loads(child.stdout.readline()) == {"queued": 1}
        send_raw(sock, encode_json({"cmd": "NODE_HANDLE_ACK"}))
        assert _next_values(sock, decoder, fds) == ["after"]
        for fd in fds:
            socket.socket(fileno=fd).close()
    assert child.wait(timeout=30) == 0
    child.stdout.close()


def test_node_retransmits_a_nacked_handle_three_times_then_gives_up() -> None:
    sock, child = start_node("json", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert child.stdout is not None and child.stderr is not None
    fds: list[int] = []
    seen: list[Any] = []
    with sock:
        send_raw(sock, encode_json({"op": "hold"}))
        decoder = JsonLineDecoder()
        while "after" not in seen:
            for value in _next_values(sock, decoder, fds):
                seen.append(value)
                if isinstance(value, dict) and value.get("cmd") == "NODE_HANDLE":
                    send_raw(sock, encode_json({"cmd": "NODE_HANDLE_NACK"}))
        for fd in fds:
            socket.socket(fileno=fd).close()
    first, *again = seen[:-1]
    assert first == {"cmd": "NODE_HANDLE", "type": "net.Socket", "msg": {"kind": "client"}}
    # A retransmission wraps the first message again, as a raw handle ("net.Native").
    assert again == [{"cmd": "NODE_HANDLE", "type": "net.Native", "msg": first}] * 3
    assert seen[-1] == "after"
    assert len(fds) == 4  # each retransmission carries the descriptor again
    assert child.wait(timeout=30) == 0
    assert "SentHandleNotReceivedWarning" in child.stderr.read()
    child.stdout.close()
    child.stderr.close()


def test_node_protocol_answers_node_s_handle_by_itself() -> None:
    # The same exchange with NodeProtocol on our side: the ACK is automatic.
    sock, child = start_node("advanced", stdout=subprocess.PIPE)
    assert child.stdout is not None
    peer = NodePeer(sock, "advanced")
    try:
        peer.send({"op": "hold"})
        message, conn = peer.recv_with_handle()
        assert message == {"kind": "client"} and conn is not None
        conn.close()
        assert peer.recv() == "after"
        assert isinstance(peer.protocol, NodeProtocol)
        peer.send({"op": "bye"})
        with pytest.raises(ChannelClosed):
            peer.recv()
    finally:
        peer.close()
    assert child.wait(timeout=30) == 0
    child.stdout.close()


class _LosesFirstDescriptor(NodePeer):
    """Drops the descriptors of the first read that has any (as MSG_CTRUNC would)."""

    lost = 0

    def _pump(self, deadline: float) -> None:
        data, fds = recv_raw(self.sock, max(0.0, deadline - time.monotonic()))
        if fds and not self.lost:
            self.lost = len(fds)
            for fd in fds:
                os.close(fd)
            fds = []
        self.protocol.receive_data(data, fds)
        self._flush()


@pytest.mark.parametrize("mode", MODES)
def test_node_protocol_nacks_a_lost_descriptor_and_takes_node_s_retransmission(
    mode: Any, no_fd_leak: None
) -> None:
    sock, child = start_node(mode, stdout=subprocess.DEVNULL)
    peer = _LosesFirstDescriptor(sock, mode)
    try:
        peer.send({"op": "hold"})
        message, conn = peer.recv_with_handle()
        assert peer.lost == 1
        assert message == {"kind": "client"} and conn is not None
        with conn:
            assert conn.type == socket.SOCK_STREAM and conn.family == socket.AF_INET
        assert peer.recv() == "after"
        peer.send({"op": "bye"})
        with pytest.raises(ChannelClosed):
            peer.recv()
    finally:
        peer.close()
    assert child.wait(timeout=30) == 0


def test_a_second_ack_kills_a_node_sender() -> None:
    # Why NodeProtocol answers each descriptor exactly once.
    sock, child = start_node("json", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert child.stderr is not None
    fds: list[int] = []
    with sock:
        send_raw(sock, encode_json({"op": "hold"}))
        decoder = JsonLineDecoder()
        (handle_message,) = _next_values(sock, decoder, fds)
        assert handle_message["cmd"] == "NODE_HANDLE"
        send_raw(sock, encode_json({"cmd": "NODE_HANDLE_ACK"}) * 2)
        assert _next_values(sock, decoder, fds) == ["after"]
        for fd in fds:
            os.close(fd)
        assert child.wait(timeout=30) == 1
    assert "ERR_INTERNAL_ASSERTION" in child.stderr.read()
    child.stderr.close()
