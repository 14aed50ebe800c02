"""Raw-socket peers for the hostile tests: they speak (or break) the wire format by hand.

They use nothing of the channel's code, so a bug shared by the channel and its own
tests cannot hide here.
"""

from __future__ import annotations

import array
import fcntl
import json
import os
import select
import socket
import struct
import subprocess
import sys
import termios
import time

from unix_socketpair import socketpair

from ._helpers import CHILDREN

READER = CHILDREN / "reader.py"


def frame(payload: bytes) -> bytes:
    """One stream-framed message: 4-byte unsigned big-endian length, then the payload."""
    return struct.pack(">I", len(payload)) + payload


def unread(sock: socket.socket) -> int:
    """Bytes this socket has sent that the peer has not read yet (``SIOCOUTQ``)."""
    buf = array.array("i", [0])
    fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, buf)
    return buf[0]


def wait_drained(sock: socket.socket, deadline: float) -> None:
    """Return once the peer has read everything *sock* sent; raise TimeoutError at *deadline*."""
    while unread(sock):
        if time.monotonic() > deadline:
            raise TimeoutError("the reader stopped reading")
        time.sleep(0)


def send_fds(sock: socket.socket, data: bytes, fds: list[int]) -> int:
    """Send *data* with *fds* attached as one SCM_RIGHTS message; return bytes sent."""
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    return sock.sendmsg([data], ancillary)


class HostileReader:
    """A ``Channel`` reader in a child Python process, fed by a raw socket held here.

    The child measures its own peak memory growth (see ``children/reader.py``), so the
    test runner's memory does not blur the figure.
    """

    def __init__(self, max_message_size: int, *extra: str) -> None:
        ours, theirs = socketpair(blocking=True)
        self.sock = socket.socket(fileno=ours)
        try:
            self.process = subprocess.Popen(
                [sys.executable, str(READER), str(max_message_size), *extra],
                pass_fds=(theirs,),
                env={**os.environ, "SOCKETPAIR_FD": str(theirs)},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        except BaseException:
            self.sock.close()
            raise
        finally:
            os.close(theirs)

    def report(self, *, eof: bool = True, timeout: float = 30) -> dict[str, object]:
        """Wait (bounded) for the reader's JSON report, then close the raw socket.

        With *eof*, the raw socket is closed first (the reader sees end of file);
        without, it stays open until the reader has reported.
        """
        if eof:
            self.sock.close()
        try:
            out, err = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.communicate()
            raise AssertionError(f"the reader did not finish within {timeout} s") from None
        finally:
            self.sock.close()
        assert self.process.returncode == 0, err
        report: dict[str, object] = json.loads(out)
        return report

    def close(self) -> None:
        self.sock.close()
        if self.process.poll() is None:
            self.process.kill()
        self.process.communicate()


def all_copies_closed(read_end: int, timeout: float = 10) -> bool:
    """True when the pipe's write end is closed everywhere (its read end sees EOF)."""
    ready, _, _ = select.select([read_end], [], [], timeout)
    return bool(ready) and os.read(read_end, 1) == b""
