"""The Node IPC examples, run for real: examples/node_ipc_child.js driven from Python,
and examples/node_parent.js driving a Python child (and, for comparison, the Node
child): the same conversation in json and advanced mode."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from support import EXAMPLES, require

from interop.node_driver import NodePeer, start_node
from unix_socketpair import ChannelClosed

PYTHON_CHILD = Path(__file__).resolve().parent.parent / "children" / "node_ipc_child.py"
MODES = ["json", "advanced"]


@pytest.mark.parametrize("mode", MODES)
def test_node_ipc_child_example_from_python(mode: str, no_fd_leak: None) -> None:
    sock, child = start_node(mode, EXAMPLES / "node_ipc_child.js")
    peer = NodePeer(sock, mode)  # type: ignore[arg-type]
    try:
        peer.send({"op": "upper", "text": "hello \u00e9"})
        assert peer.recv() == {"text": "HELLO \u00c9"}
        with socket.create_server(("127.0.0.1", 0)) as listener:
            port = listener.getsockname()[1]
            peer.send({"op": "serve", "text": "from the example"}, handle=listener)
        assert peer.recv() == {"serving": port}
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            assert client.recv(100) == b"from the example"
        peer.send({"op": "bye"})
        with pytest.raises(ChannelClosed):
            peer.recv()
    finally:
        peer.close()
    assert child.wait(timeout=30) == 0


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("language", ["python", "node"])
def test_node_parent_example(mode: str, language: str) -> None:
    node = require("node")
    if language == "python":
        child = [sys.executable, str(PYTHON_CHILD)]
    else:
        child = [node, str(EXAMPLES / "node_ipc_child.js")]
    flags = ["--advanced"] if mode == "advanced" else []
    done = subprocess.run(
        [node, str(EXAMPLES / "node_parent.js"), *flags, *child],
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
