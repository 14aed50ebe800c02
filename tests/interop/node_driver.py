"""A minimal blocking loop around NodeProtocol, for the interop tests only.

The library's channel classes will wrap the protocol with their own I/O; this is the
least code that moves bytes and descriptors between a socket and the protocol, so the
tests can prove the wire protocol against a real Node process today.
"""

from __future__ import annotations

import array
import os
import select
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from support import require

from unix_socketpair import ChannelClosed
from unix_socketpair._nodeipc import (
    CLOSED,
    NEED_DATA,
    Handle,
    Message,
    NodeProtocol,
    Serialization,
    describe_handle,
    node_environment,
)

NODE_CHILD = Path(__file__).resolve().parent.parent / "children" / "node_ipc.js"
_FD_SPACE = socket.CMSG_SPACE(16 * array.array("i").itemsize)


def start_node(
    mode: Serialization, script: Path = NODE_CHILD, **popen: Any
) -> tuple[socket.socket, subprocess.Popen[str]]:
    """Start ``node script`` with its IPC channel on a new socketpair; return our end."""
    ours, theirs = socket.socketpair()
    with theirs:
        child = subprocess.Popen(
            [require("node"), str(script)],
            pass_fds=[theirs.fileno()],
            env={**os.environ, **node_environment(theirs.fileno(), mode)},
            text=True,
            **popen,
        )
    return ours, child


def send_raw(sock: socket.socket, data: bytes, fds: tuple[int, ...] = ()) -> None:
    """One write: *data* with *fds* attached to its first byte."""
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    view = memoryview(data)
    while view:
        sent = sock.sendmsg([view], ancillary)
        ancillary = []
        view = view[sent:]


def recv_raw(sock: socket.socket, timeout: float = 10) -> tuple[bytes, list[int]]:
    """One read (b"" at end of file) and the descriptors that came with it."""
    readable, _, _ = select.select([sock], [], [], timeout)
    if not readable:
        raise TimeoutError("the node child said nothing")
    data, ancillary, flags, _ = sock.recvmsg(65536, _FD_SPACE, socket.MSG_CMSG_CLOEXEC)
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.extend(array.array("i", payload[: len(payload) - len(payload) % 4]))
    assert not flags & socket.MSG_CTRUNC
    return data, fds


class NodePeer:
    """Blocking send/recv over *sock* with the Node IPC protocol in *mode*."""

    def __init__(self, sock: socket.socket, mode: Serialization) -> None:
        self.sock = sock
        self.protocol = NodeProtocol(mode)

    def _flush(self) -> None:
        for write in self.protocol.data_to_send():
            send_raw(self.sock, write.data, write.fds)

    def _pump(self, deadline: float) -> None:
        data, fds = recv_raw(self.sock, max(0.0, deadline - time.monotonic()))
        self.protocol.receive_data(data, fds)
        self._flush()  # our ACKs, and what an ACK released

    def send(self, value: object, handle: socket.socket | None = None, timeout: float = 10) -> None:
        """Send *value* (with a duplicate of *handle*); with a handle, wait for the ACK."""
        described = None
        if handle is not None:
            kind, dgram_type = describe_handle(handle)
            described = Handle(os.dup(handle.fileno()), kind, dgram_type)
        try:
            ticket = self.protocol.send(value, described)
        except BaseException:
            if described is not None:
                os.close(described.fd)
            raise
        self._flush()
        deadline = time.monotonic() + timeout
        while not self.protocol.outcome(ticket):
            self._pump(deadline)

    def recv_with_handle(self, timeout: float = 10) -> tuple[Any, socket.socket | None]:
        deadline = time.monotonic() + timeout
        while True:
            message = self.protocol.next_message()
            if message is NEED_DATA:
                self._pump(deadline)
            elif message is CLOSED:
                raise ChannelClosed("the node child closed the channel")
            else:
                assert isinstance(message, Message)
                handle = None if message.fd is None else socket.socket(fileno=message.fd)
                return message.value, handle

    def recv(self, timeout: float = 10) -> Any:
        value, handle = self.recv_with_handle(timeout)
        assert handle is None, "a handle came with this message"
        return value

    def close(self) -> None:
        self.protocol.close()
        self.sock.close()
