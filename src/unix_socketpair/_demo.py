"""``unix-socketpair demo``: a guided, self-checking tour."""

from __future__ import annotations

import socket
from typing import TextIO

from ._pair import SOCK_DGRAM, SOCK_STREAM, socketpair


def _print_descriptors(out: TextIO) -> bool:
    stream_fds = socketpair(SOCK_STREAM)
    datagram_fds = socketpair(SOCK_DGRAM)
    try:
        out.write(f"streaming descriptors: {list(stream_fds)}\n")
        out.write(f"datagram descriptors:  {list(datagram_fds)}\n")
        return len(set(stream_fds + datagram_fds)) == 4
    finally:
        for fd in stream_fds + datagram_fds:
            socket.socket(fileno=fd).close()


def _hello_world(out: TextIO) -> bool:
    fd0, fd1 = socketpair(SOCK_STREAM, blocking=True)
    with socket.socket(fileno=fd0) as sock0, socket.socket(fileno=fd1) as sock1:
        sock0.sendall(b"Hello World!")
        sock0.close()  # the receiver sees end-of-file once the sender closes
        sock1.settimeout(5)
        chunks = []
        while chunk := sock1.recv(4096):
            chunks.append(chunk)
    received = b"".join(chunks).decode()
    out.write(f"{received}\n")
    return received == "Hello World!"


def run_demo(out: TextIO) -> int:
    """Run every step, report each, and return 0 if all passed, else 1."""
    steps = [
        ("print a stream pair and a datagram pair of descriptors", _print_descriptors),
        ("'Hello World!' from one wrapped socket to the other", _hello_world),
    ]
    failed = 0
    for number, (title, step) in enumerate(steps, 1):
        out.write(f"[{number}/{len(steps)}] {title}\n")
        try:
            ok = step(out)
        except Exception as exc:
            out.write(f"    error: {exc!r}\n")
            ok = False
        out.write(f"    {'ok' if ok else 'FAILED'}\n")
        failed += not ok
    verdict = "all steps passed" if not failed else f"{failed} of {len(steps)} steps FAILED"
    out.write(f"demo: {verdict}\n")
    return 0 if not failed else 1
