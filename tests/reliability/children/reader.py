"""A Channel reader under a hostile peer, measuring its own memory.

Run as ``python reader.py MAX_MESSAGE_SIZE`` with the socket at the descriptor
named by ``SOCKETPAIR_FD``. It reads messages until the first exception, then prints
one JSON line: the exception's class (and bases), its text, the messages and bytes read,
the peak resident memory growth in KiB and the seconds it took; then tries one more
``recv()`` to show what a used-up channel does.

The address space is capped (``RLIMIT_AS``) at 1 GiB above the current size, so a
reader that tried to allocate what a peer merely declares (4 GiB) fails loudly
(``MemoryError``) instead of quietly succeeding on an overcommitting kernel.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import sys
import time

from unix_socketpair import Channel


def status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise LookupError(field)


def main() -> None:
    max_size = int(sys.argv[1])
    channel = Channel(int(os.environ["SOCKETPAIR_FD"]), max_message_size=max_size)
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
            message = channel.recv()
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
        channel.recv()
        report["after"] = "returned"
    except BaseException as exc:
        report["after"] = type(exc).__name__
    channel.close()
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
