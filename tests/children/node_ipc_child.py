"""A Python child of a Node.js parent (examples/node_parent.js), speaking Node's IPC on
the descriptor Node names in NODE_CHANNEL_FD, with the tests' minimal NodeProtocol loop.
The conversation is the one examples/node_ipc_child.js documents."""

from __future__ import annotations

import os
import socket
import stat
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/, for the driver

from interop.node_driver import NodePeer

from unix_socketpair import ChannelClosed
from unix_socketpair._nodeipc import take_node_environment

fd, mode = take_node_environment(os.environ)
assert "NODE_CHANNEL_FD" not in os.environ
assert stat.S_ISSOCK(os.fstat(fd).st_mode), "NODE_CHANNEL_FD is not a socket"
sock = socket.socket(fileno=fd)
assert sock.family == socket.AF_UNIX and sock.type == socket.SOCK_STREAM

peer = NodePeer(sock, mode)
try:
    while True:
        message, handle = peer.recv_with_handle(timeout=30)
        if message["op"] == "upper":
            peer.send({"text": message["text"].upper()})
        elif message["op"] == "serve":
            assert handle is not None and handle.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
            peer.send({"serving": handle.getsockname()[1]})
            with handle:
                # The socket is non-blocking as Node left it (O_NONBLOCK belongs to the
                # open file description Node shares): wait with a timeout, which keeps it so.
                handle.settimeout(30)
                connection, _ = handle.accept()
            with connection:
                connection.sendall(message["text"].encode())
        elif message["op"] == "bye":
            break
except ChannelClosed:
    sys.exit("the parent closed the channel first")
finally:
    peer.close()
