"""spawn(listen_fds=True): systemd socket activation, checked by the real libsystemd.

The child is a C program linked against ``libsystemd.so.0`` that calls
``sd_listen_fds_with_names()``: it only reports descriptors when ``LISTEN_PID`` is its own
pid, which spawn sets between fork and exec (the exec helper, or its Python fallback).
"""

from __future__ import annotations

import ctypes.util
import os
import re
import signal
import socket
import sys
from collections.abc import Iterator

import pytest
from support import ROOT, compile_c, missing, require_exec_helper

from unix_socketpair import _spawn, socketpair, spawn, spawn_async

CHILDREN = ROOT / "tests" / "children"


def sd_listen() -> str:
    if ctypes.util.find_library("systemd") is None:
        missing("libsystemd is not installed; this test needs the real thing")
    return str(compile_c(CHILDREN / "sd_listen.c", "-l:libsystemd.so.0"))


@pytest.fixture(params=["helper", "python"])
def exec_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    if request.param == "helper":
        require_exec_helper()
    monkeypatch.setattr(_spawn, "_helper_ok", request.param == "helper")
    yield


def test_one_socket_is_found_by_sd_listen_fds(no_fd_leak: None, exec_path: None) -> None:
    with spawn([sd_listen(), "1"], listen_fds=True) as child:
        assert child.channel.recv() == b"1 unknown"
        assert child.wait(20) == 0


def test_names_and_fd_map(no_fd_leak: None, exec_path: None) -> None:
    a, b = socketpair()
    try:
        with spawn(
            [sd_listen(), "2", "control", "data"],
            listen_fds=True,
            fd_map={4: b},
            fd_names={3: "control", 4: "data"},
        ) as child:
            assert child.channel.recv() == b"2 control data"
            assert child.wait(20) == 0
    finally:
        os.close(a)
        os.close(b)


def test_unnamed_descriptors_are_unknown(no_fd_leak: None) -> None:
    a, b = socketpair()
    try:
        with spawn(
            [sd_listen(), "2", "unknown", "data"],
            listen_fds=True,
            fd_map={4: b},
            fd_names={4: "data"},
        ) as child:
            assert child.channel.recv() == b"2 unknown data"
            assert child.wait(20) == 0
    finally:
        os.close(a)
        os.close(b)


def test_spawn_async_listen_fds(no_fd_leak: None) -> None:
    import asyncio

    async def main() -> bytes:
        async with await spawn_async(
            [sd_listen(), "1", "svc"], listen_fds=True, fd_names={3: "svc"}
        ) as child:
            reply = await child.channel.recv()
            assert await child.wait() == 0
            return reply

    assert asyncio.run(main()) == b"1 svc"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fd": 4}, "3 is missing"),
        ({"fd": "stdio"}, "not fd='stdio'"),
        ({"fd_map": {5: 0}}, "4 is missing"),
        ({"fd_names": {3: "a:b"}}, "without ':'"),
        ({"fd_names": {3: ""}}, "1 to 255"),
        ({"fd_names": {3: "x" * 256}}, "1 to 255"),
        ({"fd_names": {3: "tab\there"}}, "printable"),
        ({"fd_names": {9: "x"}}, "does not get: [9]"),
    ],
)
def test_bad_activation_arguments_raise_before_anything_starts(
    no_fd_leak: None, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        spawn(["true"], listen_fds=True, **kwargs)  # type: ignore[arg-type]


def test_fd_names_without_listen_fds_is_refused(no_fd_leak: None) -> None:
    with pytest.raises(ValueError, match="goes with listen_fds"):
        spawn(["true"], fd_names={3: "x"})


def test_without_listen_fds_the_child_gets_no_listen_pid(no_fd_leak: None) -> None:
    with spawn(["sh", "-c", 'echo "${LISTEN_PID-none}" >&3']) as child:
        child.socket.settimeout(20)
        assert child.socket.recv(100) == b"none\n"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_same_step_sets_the_parent_death_signal(no_fd_leak: None, exec_path: None) -> None:
    # What the command line asks for: PR_SET_PDEATHSIG, read back with PR_GET_PDEATHSIG (2).
    code = (
        "import ctypes, os\n"
        "value = ctypes.c_int()\n"
        "ctypes.CDLL(None).prctl(2, ctypes.byref(value))\n"
        "os.write(3, b'%d' % value.value)\n"
    )
    child = _spawn._spawn(
        [sys.executable, "-c", code], 3, socket.SOCK_STREAM, None, None, None,
        (None, None, None), None, deathsig=signal.SIGKILL,
    )  # fmt: skip
    with child:
        child.socket.settimeout(20)
        assert child.socket.recv(16) == b"%d" % signal.SIGKILL
