"""Case 5, scale: many concurrent children, each one echo round trip, from one loop.

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

__all__ = ["measure", "worker"]

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


def worker(children: int, mode: str = "spawn-async") -> None:
    """Run the case once in this process and print its figures as one JSON line.

    *mode* is ``"spawn-async"`` (the project) or ``"asyncio-subprocess"`` (the baseline).
    """
    limits = _raise_nofile(children)
    fds_before = _open_fds()
    rss_before = _status_kib("VmRSS")
    started = time.perf_counter()
    rss_all_up = asyncio.run(_echo_all(children, b"ping", mode))
    wall = time.perf_counter() - started
    rss_peak = _status_kib("VmHWM")
    fds_after = _open_fds()
    figures: dict[str, Any] = {
        "children": children,
        "wall_s": wall,
        "rss_before_kib": rss_before,
        "rss_all_up_kib": rss_all_up,
        "rss_peak_kib": rss_peak,
        "per_child_kib": (rss_peak - rss_before) / children,
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
