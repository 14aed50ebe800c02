"""A Channel reader under a hostile peer, measuring its own memory.

Run as ``python reader.py MAX_MESSAGE_SIZE [recv|recv_into|async_recv_into]`` with the
socket at the descriptor named by ``SOCKETPAIR_FD``. It reads messages until the first
exception, then prints one JSON line: the exception's class (and bases), its text, the
messages and bytes read, the peak resident memory growth in KiB and the seconds it took;
then tries one more read to show what a used-up channel does.

The address space is capped (``RLIMIT_AS``) at 1 GiB above the current size, so a
reader that tried to allocate what a peer merely declares (4 GiB) fails loudly
(``MemoryError``) instead of quietly succeeding on an overcommitting kernel.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import resource
import sys
import time
from collections.abc import Callable

from unix_socketpair import AsyncChannel, Channel


def status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise LookupError(field)


def reader_of(how: str, fd: int, max_size: int) -> tuple[Callable[[], bytes], Callable[[], None]]:
    """A function returning the next message the way *how* says, and a closer."""
    if how == "recv":
        channel = Channel(fd, max_message_size=max_size)
        return channel.recv, channel.close
    buffer = bytearray(1 << 20)
    if how == "recv_into":
        channel = Channel(fd, max_message_size=max_size)
        return lambda: bytes(buffer[: channel.recv_into(buffer)]), channel.close
    loop = asyncio.new_event_loop()
    achannel = AsyncChannel(fd, max_message_size=max_size)

    def recv() -> bytes:
        return bytes(buffer[: loop.run_until_complete(achannel.recv_into(buffer))])

    def close() -> None:
        achannel.close()
        loop.close()

    return recv, close


def main() -> None:
    max_size = int(sys.argv[1])
    how = sys.argv[2] if len(sys.argv) > 2 else "recv"
    recv, close = reader_of(how, int(os.environ["SOCKETPAIR_FD"]), max_size)
    vm_kib = status_kib("VmSize")
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, ((vm_kib << 10) + (1 << 30), hard))
    # Reset the peak (VmHWM) to the current RSS, so the peak below is this loop's own.
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")
    rss_before = status_kib("VmRSS")
    messages = 0
    received = 0
    digest = hashlib.sha256()
    start = time.monotonic()
    report: dict[str, object] = {}
    try:
        while True:
            message = recv()
            digest.update(len(message).to_bytes(4, "big") + message)
            received += len(message)
            messages += 1
    except BaseException as exc:
        report["error"] = type(exc).__name__
        report["bases"] = [cls.__name__ for cls in type(exc).__mro__]
        report["text"] = str(exc)
    report["elapsed"] = time.monotonic() - start
    report["growth_kib"] = status_kib("VmHWM") - rss_before
    report["messages"] = messages
    report["bytes"] = received
    report["sha256"] = digest.hexdigest()
    try:
        recv()
        report["after"] = "returned"
    except BaseException as exc:
        report["after"] = type(exc).__name__
    close()
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
