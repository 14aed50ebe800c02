"""Case 5, scale: many concurrent children, each one echo round trip, from one loop;
and many idle channels, each with a task waiting to receive.

Each measurement runs in a fresh interpreter (``python -c`` running
``worker()`` below) so that its peak RSS and descriptor count belong to the
case alone, not to the benchmarks that ran before it in the harness.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

from ._harness import Unavailable

__all__ = ["IDLE_PER_CHILD", "measure", "worker"]

# The idle-channels row holds this many channels per child of the other rows:
# 10,000 for the default 1,000 children.
IDLE_PER_CHILD = 10

# Descriptors per child the parent may hold at once (its socket end, a pidfd or
# pipe for the exit status, the loop's bookkeeping), plus the interpreter's own.
_FDS_PER_CHILD = 4
_FDS_BASE = 256


def _status_kib(field: str) -> int:
    """A memory figure of this process from ``/proc/self/status`` (``VmRSS``, ``VmHWM``), KiB.

    Not ``ru_maxrss``: Linux carries that across ``execve`` from the process that
    forked us, so a fresh interpreter would start with its parent's peak.
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd")) - 1  # listdir's own descriptor


def _raise_nofile(children: int) -> dict[str, int]:
    """Raise the soft ``RLIMIT_NOFILE`` to what *children* need (up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = children * _FDS_PER_CHILD + _FDS_BASE
    if hard != resource.RLIM_INFINITY:
        needed = min(needed, hard)
    if needed > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    return {"nofile_soft_before": soft, "nofile_soft_after": max(soft, needed), "nofile_hard": hard}


async def _echo_all(children: int, message: bytes, mode: str) -> int:
    """Start *children* ``cat``s, wait until all are alive, echo *message* through each.

    Returns the resident memory (KiB) at the moment every child was alive.
    """
    import unix_socketpair

    spawn_async: Any = getattr(unix_socketpair, "spawn_async", None)
    all_up = asyncio.Event()
    spawned = 0
    failed: list[BaseException] = []
    rss_all_up = 0

    async def started() -> bool:
        """Count this child in; return False if another one failed to start."""
        nonlocal spawned, rss_all_up
        spawned += 1
        if spawned == children:
            rss_all_up = _status_kib("VmRSS")
            all_up.set()
        await all_up.wait()  # every child alive at once before any echo
        return not failed

    async def check(reply: bytes) -> None:
        if reply != message:
            raise RuntimeError(f"cat echoed {reply!r}, expected {message!r}")

    async def one_channel() -> None:
        try:
            child = await spawn_async(["cat"], fd="stdio")
        except BaseException as exc:
            failed.append(exc)
            all_up.set()
            raise
        async with child:
            if await started():
                await child.channel.send(message)
                await check(await child.channel.recv())

    async def one_pipes() -> None:
        # The baseline: the same echo with asyncio's own subprocess pipes and
        # the same framing, read with StreamReader.readexactly.
        try:
            process = await asyncio.create_subprocess_exec(
                "cat", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
            )
        except BaseException as exc:
            failed.append(exc)
            all_up.set()
            raise
        assert process.stdin is not None and process.stdout is not None
        try:
            if await started():
                frame = len(message).to_bytes(4, "big") + message
                process.stdin.write(frame)
                await process.stdin.drain()
                await check((await process.stdout.readexactly(len(frame)))[4:])
        finally:
            process.stdin.close()
            await process.wait()

    one = one_channel if mode == "spawn-async" else one_pipes
    results = await asyncio.gather(*(one() for _ in range(children)), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        raise RuntimeError(f"{len(errors)} of {children} children failed: {errors[0]!r}")
    return rss_all_up


async def _idle_channels(count: int) -> tuple[int, int]:
    """Hold *count* ``AsyncChannel``s (*count* / 2 pairs), each with a task
    waiting in ``recv()``; return the RSS (KiB) with all of them waiting, and
    how many waiters ended with ``ChannelClosed`` once the channels were closed."""
    from unix_socketpair import AsyncChannel, ChannelClosed

    channels: list[Any] = []
    try:
        for _ in range(count // 2):
            channels.extend(AsyncChannel.pair())
        waiters = [asyncio.ensure_future(channel.recv()) for channel in channels]
        # Every waiter has run up to its wait (one loop pass runs them all).
        await asyncio.sleep(0)
        if any(waiter.done() for waiter in waiters):
            raise RuntimeError("a receive on an idle channel returned")
        rss = _status_kib("VmRSS")
    finally:
        for channel in channels:
            channel.close()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    return rss, sum(isinstance(result, ChannelClosed) for result in results)


def worker(children: int, mode: str = "spawn-async") -> None:
    """Run the case once in this process and print its figures as one JSON line.

    *mode* is ``"spawn-async"`` (the project), ``"asyncio-subprocess"`` (the
    baseline), or ``"idle-channels"`` (``IDLE_PER_CHILD * children`` idle
    ``AsyncChannel``s, no child processes; "per child" then means per channel).
    """
    units = children * IDLE_PER_CHILD if mode == "idle-channels" else children
    limits = _raise_nofile(units)
    if mode == "idle-channels":
        # One descriptor per channel: as many as the hard limit allows.
        units = max(2, min(units, limits["nofile_soft_after"] - _FDS_BASE) // 2 * 2)
    if mode == "idle-channels":
        import unix_socketpair  # noqa: F401  (its import is not the channels' cost)

    fds_before = _open_fds()
    rss_before = _status_kib("VmRSS")
    started = time.perf_counter()
    if mode == "idle-channels":
        rss_all_up, closed = asyncio.run(_idle_channels(units))
        if closed != units:
            raise RuntimeError(f"{units - closed} of {units} waiters did not see ChannelClosed")
    else:
        rss_all_up = asyncio.run(_echo_all(children, b"ping", mode))
    wall = time.perf_counter() - started
    rss_peak = _status_kib("VmHWM")
    fds_after = _open_fds()
    figures: dict[str, Any] = {
        "children": units,
        "wall_s": wall,
        "rss_before_kib": rss_before,
        "rss_all_up_kib": rss_all_up,
        "rss_peak_kib": rss_peak,
        "per_child_kib": (rss_peak - rss_before) / units,
        "fds_before": fds_before,
        "fds_after": fds_after,
        "fds_leaked": fds_after - fds_before,
        **limits,
    }
    print(json.dumps(figures))


def available(mode: str) -> None:
    """Raise ``Unavailable`` unless *mode*'s needs (``cat``, ``spawn_async``) are there."""
    import shutil

    import unix_socketpair

    if mode == "idle-channels":
        if getattr(unix_socketpair, "AsyncChannel", None) is None:
            raise Unavailable("unix_socketpair.AsyncChannel is not available in this version")
        return
    if shutil.which("cat") is None:
        raise Unavailable("`cat` is not on PATH")
    if mode != "spawn-async":
        return
    if getattr(unix_socketpair, "spawn_async", None) is None:
        raise Unavailable("unix_socketpair.spawn_async is not available in this version")
    if getattr(unix_socketpair, "AsyncChannel", None) is None:
        raise Unavailable("unix_socketpair.AsyncChannel is not available in this version")


def measure(children: int, mode: str, timeout: float) -> dict[str, Any]:
    """Run ``worker(children, mode)`` in a fresh interpreter; return its figures."""
    code = f"from unix_socketpair._bench._scale import worker; worker({int(children)}, {mode!r})"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        tail = result.stderr.strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeError(f"scale worker exited with {result.returncode}: {tail[0]}")
    figures: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return figures
