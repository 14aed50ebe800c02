"""Transfer through a channel pair while a timer signal fires every millisecond.

Run as ``python eintr.py blocking|blocking-write-buffer|asyncio|uvloop MIB``. A
``SIGALRM`` handler (installed with ``signal.signal``, so blocking system calls really are
interrupted: no ``SA_RESTART``) counts the signals. At least MIB MiB and at least 200
signals go through, in messages of varied sizes cut from a seeded random block; sender and
receiver each hash what they saw. Prints one JSON line.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import signal
import sys
import threading
import time

from unix_socketpair import AsyncChannel, Channel

MIB = 1 << 20
MIN_SIGNALS = 200
signals = 0


def on_alarm(signum: int, frame: object) -> None:
    global signals
    signals += 1


def messages(total: int) -> list[tuple[int, int]]:
    """(offset, length) slices of the block: sizes from 0 bytes to 1 MiB, *total* bytes."""
    rng = random.Random(1)
    out = []
    sent = 0
    while sent < total:
        length = rng.choice([0, 1, 7, 100, 4096, 65536, 300_000, MIB])
        out.append((rng.randrange(MIB), length))
        sent += length
    return out


BLOCK = memoryview(random.Random(2).randbytes(2 * MIB))


def run_blocking(total: int, write_buffer: int = 0) -> dict[str, object]:
    sender, receiver = Channel.pair(write_buffer=write_buffer)
    sent_digest = hashlib.sha256()
    rounds = 0

    def send_all() -> None:
        nonlocal rounds
        with sender:
            while True:
                for offset, length in messages(total):
                    piece = BLOCK[offset : offset + length]
                    sent_digest.update(piece)
                    sender.send(piece)
                rounds += 1
                if signals >= MIN_SIGNALS:
                    break

    thread = threading.Thread(target=send_all)
    thread.start()
    got = hashlib.sha256()
    received = count = 0
    buffer = bytearray(MIB)
    with receiver:
        while True:
            # Alternate the two receive paths: a fresh bytes, and into a reused buffer.
            if count % 2:
                try:
                    n = receiver.recv_into(buffer)
                except EOFError:
                    break
                got.update(memoryview(buffer)[:n])
            else:
                try:
                    data = receiver.recv()
                except EOFError:
                    break
                got.update(data)
                n = len(data)
            received += n
            count += 1
    thread.join()
    return {
        "rounds": rounds,
        "messages": count,
        "bytes": received,
        "ok": got.digest() == sent_digest.digest(),
    }


async def run_async(total: int) -> dict[str, object]:
    sender, receiver = AsyncChannel.pair()
    sent_digest = hashlib.sha256()
    rounds = 0

    async def send_all() -> None:
        nonlocal rounds
        async with sender:
            while True:
                for offset, length in messages(total):
                    piece = BLOCK[offset : offset + length]
                    sent_digest.update(piece)
                    await sender.send(piece)
                rounds += 1
                if signals >= MIN_SIGNALS:
                    break

    task = asyncio.ensure_future(send_all())
    got = hashlib.sha256()
    received = count = 0
    async with receiver:
        async for data in receiver:
            got.update(data)
            received += len(data)
            count += 1
    await task
    return {
        "rounds": rounds,
        "messages": count,
        "bytes": received,
        "ok": got.digest() == sent_digest.digest(),
    }


def main() -> None:
    mode, mib = sys.argv[1], int(sys.argv[2])
    signal.signal(signal.SIGALRM, on_alarm)
    signal.siginterrupt(signal.SIGALRM, True)
    signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)
    start = time.monotonic()
    try:
        if mode == "blocking":
            report = run_blocking(mib * MIB)
        elif mode == "blocking-write-buffer":
            # Small messages held and flushed 64 KiB at a time, large ones after them.
            report = run_blocking(mib * MIB, write_buffer=64 * 1024)
        elif mode == "uvloop":
            import uvloop

            loop = uvloop.new_event_loop()
            try:
                report = loop.run_until_complete(run_async(mib * MIB))
            finally:
                loop.close()
        else:
            report = asyncio.run(run_async(mib * MIB))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
    report["elapsed"] = time.monotonic() - start
    report["signals"] = signals
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
