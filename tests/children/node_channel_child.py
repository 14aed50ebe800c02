"""A Python child of a Node.js parent (examples/node_parent.js) written with the public
API: NodeChannel.from_env() finds the channel Node gave it. The conversation is the one
examples/node_ipc_child.js documents."""

from __future__ import annotations

import os
import socket

from unix_socketpair import NodeChannel

with NodeChannel.from_env() as channel:
    assert "NODE_CHANNEL_FD" not in os.environ
    assert "NODE_CHANNEL_SERIALIZATION_MODE" not in os.environ
    while True:
        message, handle = channel.recv_with_handle(timeout=30)
        if message["op"] == "upper":
            channel.send({"text": message["text"].upper()}, timeout=30)
        elif message["op"] == "serve":
            assert handle is not None and handle.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
            channel.send({"serving": handle.getsockname()[1]}, timeout=30)
            with handle:
                handle.settimeout(30)  # Node left it non-blocking
                connection, _ = handle.accept()
            with connection:
                connection.sendall(message["text"].encode())
        elif message["op"] == "bye":
            break
