"""A persistent Node.js process that runs the wire codecs' other side (tests/children/
node_codec.js): one request line in, one answer line out, so that property tests can
cross-check hundreds of values against the real V8 and JSON implementations quickly."""

from __future__ import annotations

import subprocess
from pathlib import Path

from support import require

CODEC_PEER = Path(__file__).resolve().parent / "children" / "node_codec.js"


class NodeCodecError(Exception):
    """Node could not read what it was given (its error message)."""


class NodeCodec:
    """Ask a real Node process to read and re-write values (see node_codec.js)."""

    def __init__(self) -> None:
        node = require("node")
        self._process = subprocess.Popen(
            # --expose-internals: the IPC serializer is Node's own internal module, and
            # reading it through Node is the point.
            [node, "--expose-internals", str(CODEC_PEER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def ask(self, mode: str, data: bytes) -> bytes:
        """Node's answer to *data* in *mode*; raises NodeCodecError if Node refused it."""
        stdin, stdout = self._process.stdin, self._process.stdout
        assert stdin is not None and stdout is not None
        stdin.write(f"{mode} {data.hex()}\n")
        stdin.flush()
        answer = stdout.readline()
        assert answer, "the node codec peer died"
        status, _, payload = answer.rstrip("\n").partition(" ")
        if status != "ok":
            raise NodeCodecError(payload)
        return bytes.fromhex(payload)

    def show(self, data: bytes, mode: str = "show") -> str:
        """util.inspect() of the value Node reads from *data*."""
        return self.ask(mode, data).decode()

    def close(self) -> None:
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.close()
        self._process.wait(timeout=30)
        self._process.stdout.close()
