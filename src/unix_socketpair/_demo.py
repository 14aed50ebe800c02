"""``unix-socketpair demo``: a guided, self-checking tour.

Six steps: Python twins of the Node.js add-on's two examples, then real children in other
languages over a socketpair (C compiled on the spot with ``cc``, Node.js, ``tr`` on its
stdio), then a file descriptor passed to the C child. Each step prints what it did and
what came back, and checks it. Every step runs under a watchdog that kills its children
when the step's time is up, so a stuck child turns into a clear failure, never a hang.
"""

from __future__ import annotations

import os
import select
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from ._pair import SOCK_DGRAM, SOCK_STREAM, socketpair

if TYPE_CHECKING:
    from ._channel import Channel
    from ._spawn import Child

STEP_TIMEOUT = 10.0  # seconds; a step takes well under one

# The C child: speaks the Channel's stream framing on fd 3 (4-byte big-endian length, then
# the payload). It answers each message with the payload in upper case; a message that
# arrives with a file descriptor (SCM_RIGHTS) gets a line written into that descriptor
# instead. It exits when the parent closes its end.
C_CHILD = r"""
#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int read_full(int fd, unsigned char *buf, size_t len) {
    while (len > 0) {
        ssize_t n = read(fd, buf, len);
        if (n <= 0) return -1;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

static int write_full(int fd, const void *data, size_t len) {
    const unsigned char *buf = data;
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) return -1;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

static int send_message(int sock, const char *payload, uint32_t len) {
    unsigned char header[4] = {len >> 24, len >> 16, len >> 8, len};
    return write_full(sock, header, 4) || write_full(sock, payload, len) ? -1 : 0;
}

int main(void) {
    const int sock = 3;
    for (;;) {
        unsigned char header[4];
        union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } control;
        struct iovec iov = {header, sizeof header};
        struct msghdr msg;
        memset(&msg, 0, sizeof msg);
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.buf;
        msg.msg_controllen = sizeof control.buf;
        /* The descriptors travel with the first byte of their message: receive them here. */
        ssize_t n = recvmsg(sock, &msg, 0);
        if (n == 0) return 0; /* the parent closed its end: we are done */
        if (n < 0) { perror("recvmsg"); return 1; }
        int passed = -1;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS)
                memcpy(&passed, CMSG_DATA(c), sizeof passed);
        }
        if (n < 4 && read_full(sock, header + n, 4 - (size_t)n)) return 1;
        uint32_t len = (uint32_t)header[0] << 24 | (uint32_t)header[1] << 16
                     | (uint32_t)header[2] << 8 | header[3];
        unsigned char *payload = malloc(len + 1);
        if (payload == NULL || read_full(sock, payload, len)) return 1;
        char reply[256];
        if (passed >= 0) {
            char line[128];
            int size = snprintf(line, sizeof line,
                                "written by the C child (pid %d) into the descriptor it got\n",
                                (int)getpid());
            int failed = write_full(passed, line, (size_t)size);
            close(passed);
            snprintf(reply, sizeof reply, "%s", failed ? "could not write into the descriptor"
                                                       : "wrote a line into the descriptor");
            if (send_message(sock, reply, (uint32_t)strlen(reply))) return 1;
        } else {
            for (uint32_t i = 0; i < len; i++) payload[i] = (unsigned char)toupper(payload[i]);
            if (send_message(sock, (char *)payload, len)) return 1;
        }
        free(payload);
    }
}
"""

# The Node.js child: wraps fd 3 in net.Socket, as the Node.js add-on's README does, and answers each
# framed message with the text reversed.
NODE_CHILD = r"""
const net = require('net');
const sock = new net.Socket({fd: 3, readable: true, writable: true});
let pending = Buffer.alloc(0);
sock.on('data', (data) => {
  pending = Buffer.concat([pending, data]);
  while (pending.length >= 4 && pending.length >= 4 + pending.readUInt32BE(0)) {
    const end = 4 + pending.readUInt32BE(0);
    const text = pending.subarray(4, end).toString();
    pending = pending.subarray(end);
    const reply = Buffer.from(`node ${process.version} reversed it: ` +
                              [...text].reverse().join(''));
    const header = Buffer.alloc(4);
    header.writeUInt32BE(reply.length);
    sock.write(Buffer.concat([header, reply]));
  }
});
sock.on('end', () => sock.end());
"""


class _Watchdog:
    """Kills the registered children if the step is not done within *seconds*."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.fired = False
        self._children: list[Child[Any]] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def watch(self, child: Child[Any]) -> Child[Any]:
        with self._lock:
            self._children.append(child)
            if self.fired:
                child.kill()
        return child

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            for child in self._children:
                child.kill()

    def __enter__(self) -> _Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._timer.cancel()


class _Tour:
    """What the steps share: the output, a scratch directory, the compiled C child."""

    def __init__(self, out: TextIO, scratch: Path) -> None:
        self.out = out
        self.scratch = scratch
        self.c_child: Path | None = None
        self.c_problem = "the C step did not run"
        self.dog = _Watchdog(STEP_TIMEOUT)

    def say(self, text: str) -> None:
        self.out.write(f"    {text}\n")
        self.out.flush()

    def spawn(self, args: list[str], **options: object) -> Child[Channel]:
        from ._spawn import spawn

        return self.dog.watch(spawn(args, **options))  # type: ignore[call-overload]


def _print_descriptors(tour: _Tour) -> bool:
    stream_fds = socketpair(SOCK_STREAM)
    datagram_fds = socketpair(SOCK_DGRAM)
    try:
        tour.say(f"streaming descriptors: {list(stream_fds)}")
        tour.say(f"datagram descriptors:  {list(datagram_fds)}")
        return len(set(stream_fds + datagram_fds)) == 4
    finally:
        for fd in stream_fds + datagram_fds:
            os.close(fd)


def _hello_world(tour: _Tour) -> bool:
    fd0, fd1 = socketpair(SOCK_STREAM, blocking=True)
    with socket.socket(fileno=fd0) as sock0, socket.socket(fileno=fd1) as sock1:
        sock0.sendall(b"Hello World!")
        sock0.close()  # the receiver sees end-of-file once the sender closes
        sock1.settimeout(STEP_TIMEOUT)
        chunks = []
        while chunk := sock1.recv(4096):
            chunks.append(chunk)
    received = b"".join(chunks).decode()
    tour.say(f"sent 'Hello World!' through fd {fd0}, received through fd {fd1}: {received!r}")
    return received == "Hello World!"


def _c_child(tour: _Tour) -> bool:
    cc = shutil.which("cc")
    if cc is None:
        tour.c_problem = "no C compiler: `cc` is not on PATH"
        tour.say(f"cannot run: {tour.c_problem}")
        return False
    source = tour.scratch / "child.c"
    binary = tour.scratch / "child"
    source.write_text(C_CHILD)
    started = time.monotonic()
    build = subprocess.run(
        [cc, "-O2", "-Wall", "-o", str(binary), str(source)],
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT,
        check=False,
    )
    if build.returncode != 0:
        tour.c_problem = "the C child did not compile"
        tour.say(f"cc failed (status {build.returncode}):\n{build.stderr}")
        return False
    tour.c_child = binary
    tour.say(f"compiled a C child with {cc} in {time.monotonic() - started:.2f} s")
    with tour.spawn([str(binary)], fd=3) as child:
        tour.say(f"started it (pid {child.pid}) with its end of a socketpair at fd 3")
        child.channel.send(b"hello from python")
        reply = child.channel.recv()
        tour.say(f"sent 'hello from python', it answered {reply.decode()!r}")
    tour.say(f"closed our end: the child saw end-of-file and exited with {child.returncode}")
    return reply == b"HELLO FROM PYTHON" and child.returncode == 0


def _node_child(tour: _Tour) -> bool:
    node = shutil.which("node")
    if node is None:
        tour.say("cannot run: Node.js is not installed (`node` is not on PATH)")
        return False
    with tour.spawn([node, "-e", NODE_CHILD], fd=3) as child:
        tour.say(f"started node (pid {child.pid}); it wraps fd 3 in net.Socket")
        child.channel.send(b"socketpair")
        reply = child.channel.recv().decode()
        tour.say(f"sent 'socketpair', it answered {reply!r}")
    tour.say(f"closed our end: node exited with {child.returncode}")
    return reply.endswith("reversed it: riaptekcos") and child.returncode == 0


def _tr_on_stdio(tour: _Tour) -> bool:
    with tour.spawn(["tr", "a-z", "A-Z"], fd="stdio") as child:
        child.socket.sendall(b"tr reads its stdin and writes its stdout")
        child.socket.shutdown(socket.SHUT_WR)  # end of tr's input
        received = b""
        while chunk := child.socket.recv(4096):  # ends when tr exits
            received += chunk
    tour.say("`tr a-z A-Z` with the socket as its stdin and stdout (no pipes)")
    tour.say("sent 'tr reads its stdin and writes its stdout', then SHUT_WR (end of input)")
    tour.say(f"got back {received.decode()!r}; tr exited with {child.returncode}")
    return received == b"TR READS ITS STDIN AND WRITES ITS STDOUT" and child.returncode == 0


def _read_pipe(fd: int, deadline: float) -> bytes:
    data = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise TimeoutError("nothing more came through the pipe in time")
        chunk = os.read(fd, 4096)
        if not chunk:
            return data
        data += chunk


def _pass_a_descriptor(tour: _Tour) -> bool:
    if tour.c_child is None:
        tour.say(f"cannot run: it needs the C child of step 3 ({tour.c_problem})")
        return False
    read_end, write_end = os.pipe()
    try:
        with tour.spawn([str(tour.c_child)], fd=3) as child:
            try:
                child.channel.send(b"write into this", fds=[write_end])
            finally:
                os.close(write_end)  # the child has its own copy now; EOF comes with its close
            tour.say(f"made a pipe; sent its write end (fd {write_end}) to the C child")
            reply = child.channel.recv().decode()
            tour.say(f"the child answered {reply!r}")
            line = _read_pipe(read_end, time.monotonic() + STEP_TIMEOUT).decode()
            tour.say(f"read from the pipe's read end: {line.strip()!r}")
    finally:
        os.close(read_end)
    expected = f"written by the C child (pid {child.pid}) into the descriptor it got\n"
    return line == expected and child.returncode == 0


STEPS: list[tuple[str, Callable[[_Tour], bool]]] = [
    ("print a stream pair and a datagram pair of descriptors", _print_descriptors),
    ("'Hello World!' from one wrapped socket to the other", _hello_world),
    ("a C child, compiled now, speaking the framing on fd 3", _c_child),
    ("a Node.js child speaking the framing on fd 3", _node_child),
    ("tr in stdio mode: the socket is its stdin and stdout", _tr_on_stdio),
    ("pass a file descriptor: the C child writes into our pipe", _pass_a_descriptor),
]


def run_demo(out: TextIO) -> int:
    """Run every step, report each, and return 0 if all passed, else 1.

    Never raises for a failing step (its error is printed) and never hangs: each step
    has ``STEP_TIMEOUT`` seconds before its children are killed.
    """
    failed = 0
    started = time.monotonic()
    out.write(f"unix-socketpair demo: {len(STEPS)} steps\n")
    with tempfile.TemporaryDirectory(prefix="unix-socketpair-demo-") as scratch:
        tour = _Tour(out, Path(scratch))
        for number, (title, step) in enumerate(STEPS, 1):
            out.write(f"\n[{number}/{len(STEPS)}] {title}\n")
            out.flush()
            tour.dog = _Watchdog(STEP_TIMEOUT)
            try:
                with tour.dog:
                    ok = step(tour)
            except Exception as exc:
                ok = False
                if tour.dog.fired:
                    tour.say(f"timed out after {STEP_TIMEOUT:g} s: the child was killed")
                else:
                    tour.say(f"error: {type(exc).__name__}: {exc}")
            if ok and tour.dog.fired:
                ok = False
                tour.say(f"timed out after {STEP_TIMEOUT:g} s: the child was killed")
            out.write(f"    {'ok' if ok else 'FAILED'}\n")
            failed += not ok
    elapsed = time.monotonic() - started
    if failed:
        verdict = f"FAIL: {failed} of {len(STEPS)} steps failed"
    else:
        verdict = f"PASS: all {len(STEPS)} steps passed"
    out.write(f"\ndemo: {verdict} in {elapsed:.1f} s\n")
    out.flush()
    return 0 if not failed else 1
