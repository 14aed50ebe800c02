"""spawn() and spawn_async() interrupted at random points by an exception from a signal handler.

A 1 ms interval timer whose handler raises lands inside every step of starting a child
over hundreds of spawns (the handler's frame check excludes only what is not ours to fix,
see the script). Whatever step it hits, everything that step took must be released: no
descriptor left open, no child left unreaped.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

COUNT = 600

SCRIPT = r"""
import asyncio, gc, json, os, signal, subprocess, sys
from unix_socketpair import spawn, spawn_async

MODE, COUNT, FD = sys.argv[1], int(sys.argv[2]), sys.argv[3]
FD = FD if FD == "stdio" else int(FD)

class Tick(Exception):
    pass

armed = False
ours = set()  # the code of spawn() and spawn_async()
not_ours = set()

def handler(signum, frame):
    # Only while spawn()/spawn_async() itself runs (it is on the stack): not in this
    # script's loop, and not in the event loop's own machinery while spawn_async() waits
    # (an exception there breaks the loop, not the spawn), nor in asyncio's own code
    # that spawn_async() calls (asyncio is not written to survive one). Every other
    # frame, ours and Popen's, is fair game.
    if not armed or frame is None or frame.f_code in not_ours:
        return
    f = frame
    while f is not None:
        if f.f_code in ours:
            raise Tick
        if f.f_code.co_filename.startswith(ASYNCIO):
            return  # called by asyncio (threading, subprocess under its transport, ...)
        f = f.f_back

def fds():
    return {int(n) for n in os.listdir("/proc/self/fd")}

def run_sync():
    global armed
    interrupted = 0
    for _ in range(COUNT):
        try:
            armed = True
            child = spawn(["true"], fd=FD)
            armed = False
        except Tick:
            armed = False
            interrupted += 1
            continue
        with child:
            child.wait()
    return interrupted

async def run_async():
    global armed
    interrupted = 0
    for _ in range(COUNT):
        try:
            armed = True
            child = await spawn_async(["true"], fd=FD)
            armed = False
        except Tick:
            armed = False
            interrupted += 1
            continue
        async with child:
            await child.wait()
    return interrupted

import unix_socketpair._spawn as impl
ours.update({impl.spawn.__code__, impl.spawn_async.__code__})
not_ours.add(handler.__code__)
ASYNCIO = os.path.dirname(asyncio.__file__) + os.sep
held = os.open(os.devnull, os.O_RDONLY)  # keep fd 3 taken: the placement has work to do
before = fds()
signal.signal(signal.SIGALRM, handler)
signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)
try:
    if MODE == "sync":
        interrupted = run_sync()
    else:
        interrupted = asyncio.run(run_async())
finally:
    signal.setitimer(signal.ITIMER_REAL, 0)
    armed = False
gc.collect()
leaked = sorted(fds() - before)
unreaped = 0
while True:
    try:
        pid, _ = os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        break
    if pid == 0:  # some child is alive: count it, then wait for it
        unreaped += 1
        os.waitpid(-1, 0)
        continue
    unreaped += 1
print(json.dumps({"leaked": leaked, "unreaped": unreaped, "interrupted": interrupted}))
"""


def _run(mode: str, count: int, fd: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode, str(count), fd],
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("fd", ["3", "9", "stdio"])
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_interrupted_spawns_leave_no_descriptor_and_no_child(mode: str, fd: str) -> None:
    result = _run(mode, COUNT, fd)
    assert result["interrupted"], "the timer never interrupted a spawn: the test proves nothing"
    assert result["leaked"] == [], result
    assert result["unreaped"] == 0, result


class _Tick(Exception):
    pass


def _raise_once_at_first_look(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make the first look at a handler raise, as a handler that raises there would."""
    import unix_socketpair._spawn as impl

    real = impl._c_signal.getsignal
    looks: list[int] = []

    def getsignal(signum: int) -> object:
        looks.append(signum)
        if len(looks) == 1:
            raise _Tick
        return real(signum)

    monkeypatch.setattr(impl._c_signal, "getsignal", getsignal)
    return looks


def test_the_failure_cleanup_runs_although_a_handler_raises_as_it_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # spawn() failed (say, a deferred handler raised as they were put back): its
    # cleanup defers the handlers again, and a signal may land right then. The child
    # must still be killed and reaped, and the handlers left as they were.
    import signal

    import unix_socketpair._spawn as impl

    before = {n: signal.getsignal(n) for n in impl._Signals._NUMBERS}
    cleaned: list[str] = []
    on_failure = impl._Undo()
    on_failure.callback(cleaned.append, "reaped")
    looks = _raise_once_at_first_look(monkeypatch)
    with pytest.raises(_Tick):
        impl._fail(impl._Signals(), on_failure)
    assert looks, "the cleanup never deferred the handlers: the test proves nothing"
    assert cleaned == ["reaped"]
    assert {n: signal.getsignal(n) for n in impl._Signals._NUMBERS} == before


def test_handlers_are_deferred_although_a_handler_raises_while_they_are_swapped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import signal

    import unix_socketpair._spawn as impl

    class Usr1(Exception):
        pass

    def raising(signum: int, frame: object) -> None:
        raise Usr1

    previous = signal.signal(signal.SIGUSR1, raising)
    try:
        signals = impl._Signals()
        _raise_once_at_first_look(monkeypatch)
        with pytest.raises(_Tick):
            signals.hold()
        try:
            signal.raise_signal(signal.SIGUSR1)
        except Usr1:
            signals.release()
            pytest.fail("SIGUSR1 ran its handler: hold() gave up when a handler raised")
        with pytest.raises(Usr1):  # release() runs the noted one
            signals.release()
        assert signal.getsignal(signal.SIGUSR1) is raising
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_the_async_failure_cleanup_runs_although_a_handler_raises_as_it_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import asyncio

    import unix_socketpair._spawn as impl

    cleaned: list[str] = []

    async def reap() -> None:
        cleaned.append("reaped")

    async def main() -> None:
        on_failure = impl._Undo()
        on_failure.push_async_callback(reap)
        looks = _raise_once_at_first_look(monkeypatch)
        with pytest.raises(_Tick):
            await impl._afail(impl._Signals(), on_failure)
        assert looks

    asyncio.run(main())
    assert cleaned == ["reaped"]


def test_the_undo_list_runs_every_callback_last_first_even_when_some_raise() -> None:
    import asyncio

    import unix_socketpair._spawn as impl

    ran: list[object] = []

    def fail(name: str) -> None:
        ran.append(name)
        raise _Tick(name)

    undo = impl._Undo()
    undo.callback(ran.append, 1)
    undo.callback(fail, "first")
    undo.callback(ran.append, 3)
    undo.callback(fail, "second")
    with pytest.raises(_Tick) as raised, undo:
        pass
    assert ran == ["second", 3, "first", 1]
    # The last exception propagates, the earlier one as its context (as ExitStack).
    assert raised.value.args == ("first",)
    assert isinstance(raised.value.__context__, _Tick)
    assert raised.value.__context__.args == ("second",)
    undo.close()  # each callback runs once
    assert ran == ["second", 3, "first", 1]

    async def cancelled() -> None:
        ran.append("cancelled")
        raise asyncio.CancelledError

    async def main() -> None:
        undo = impl._Undo()
        undo.callback(ran.append, "sync")
        undo.push_async_callback(cancelled)
        undo.push_async_callback(asyncio.sleep, 0)
        with pytest.raises(asyncio.CancelledError):
            await undo.aclose()

    ran.clear()
    asyncio.run(main())
    assert ran == ["cancelled", "sync"]
