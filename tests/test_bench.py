"""The benchmark harness runs end to end and reports every row (no speed assertions)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import unix_socketpair
from unix_socketpair._bench import _command

# Every case and the key of every row it must report: measured, or "unavailable"
# with a reason (no cc, no uvloop, a library feature not in this version).
EXPECTED_ROWS = {
    "create": ["project", "channel", "socket-detach", "socket-close", "os-pipe", "c"],
    "stream-4kib": ["socketpair", "os-pipe", "tcp", "c"],
    "stream-64kib": ["socketpair", "os-pipe", "tcp", "c"],
    "stream-1mib": ["socketpair", "os-pipe", "tcp", "c"],
    "framed-64b": [
        "pipe",
        "naive",
        "asyncio",
        "channel",
        "floor-send",
        "channel-buffered",
        "channel-many",
        "async-channel",
        "async-channel-many",
        "async-channel-uvloop",
        "zmq",
        "c",
    ],
    "framed-1mib": [
        "pipe",
        "naive",
        "asyncio",
        "channel",
        "channel-many",
        "channel-recv-into",
        "async-channel",
        "async-channel-many",
        "async-channel-uvloop",
        "raw-stream",
        "c",
    ],
    "rtt": [
        "socket",
        "channel",
        "channel-spin0",
        "floor-recvmsg",
        "floor-recvmsg-passcred",
        "pipe",
        "asyncio",
        "async-channel",
        "asyncio-uvloop",
        "async-channel-uvloop",
        "async-channel-uvloop-spin",
        "zmq",
        "c",
    ],
    "spawn": ["popen", "spawn-taken", "spawn-free", "spawn-stdio"],
    "batched-64b": ["pipe", "many-c", "many-py", "floor-c", "floor-py", "c"],
    "framing-loops-64b": ["split-py", "split-c", "join-py", "join-c"],
    "node-64b": ["node-json", "nodechannel-json", "node-advanced", "nodechannel-advanced"],
    "node-rtt": ["node-json", "nodechannel-json", "node-advanced", "nodechannel-advanced"],
    "scale": ["spawn-async", "asyncio-subprocess", "idle-channels"],
}


LOW_NOFILE = 128


def _bench(tmp_path: Path, *args: str, nofile: int = 0) -> subprocess.CompletedProcess[str]:
    """Run the harness; with *nofile*, under that soft ``RLIMIT_NOFILE``."""
    command = [sys.executable, "-m", "unix_socketpair._bench", *args]
    if nofile:
        command = ["sh", "-c", f'ulimit -S -n {nofile} && exec "$0" "$@"', *command]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=100,
        cwd=tmp_path,
    )


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    tmp_path = tmp_path_factory.mktemp("bench")
    # A soft descriptor limit too low for the scale case, which must raise it.
    result = _bench(tmp_path, "--quick", "--json", "bench.json", nofile=LOW_NOFILE)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "bench.json").read_text())
    return result.stdout, report


def test_quick_run_reports_every_row(quick_run: tuple[str, dict[str, Any]]) -> None:
    stdout, report = quick_run
    cases = {case["id"]: case for case in report["cases"]}
    assert list(cases) == list(EXPECTED_ROWS)
    for case_id, keys in EXPECTED_ROWS.items():
        rows = cases[case_id]["rows"]
        assert [row["key"] for row in rows] == keys, case_id
        for row in rows:
            where = f"{case_id}/{row['key']}"
            assert row["status"] in ("ok", "unavailable"), f"{where}: {row['reason']}"
            assert row["name"] in stdout, where
            if row["status"] == "unavailable":
                assert row["reason"], where
                continue
            assert len(row["samples"]) == cases[case_id]["rounds"], where
            assert 0 < row["min"] <= row["median"] <= row["max"], where
    for key in ("nproc", "cpu", "kernel", "python"):
        assert report["machine"][key], key
    assert all(check["target"] for check in report["targets"])


# Rows shown beside a target, by the field of the target check that names them:
# "floors" (rows that do only what any implementation must) and "options" (the same
# API with a non-default option); (case, key) -> the target, and how its line shows one.
SEND_PROMISE = (
    "Channel.send / recv carries 64 B messages one at a time at least 1.5x as fast as "
    "multiprocessing.Pipe"
)
RTT_PROMISE = "a Channel round trip takes at most 1.15x the time of a bare socket's send / recv"
BESIDE = {
    "floors": (
        {
            ("framed-64b", "floor-send"): SEND_PROMISE,
            ("rtt", "floor-recvmsg"): RTT_PROMISE,
            ("rtt", "floor-recvmsg-passcred"): RTT_PROMISE,
            ("batched-64b", "floor-c"): _command.BATCHED_C,
            ("batched-64b", "floor-py"): _command.BATCHED_PY,
        },
        "{label}, the floor: {value}",
    ),
    "options": (
        {
            ("framed-64b", "channel-buffered"): SEND_PROMISE,
            ("rtt", "channel-spin0"): RTT_PROMISE,
        },
        "{label}: {value}",
    ),
}


@pytest.mark.parametrize("field", sorted(BESIDE))
def test_quick_run_reports_rows_beside_their_targets(
    field: str, quick_run: tuple[str, dict[str, Any]]
) -> None:
    expected, shown = BESIDE[field]
    stdout, report = quick_run
    rows = {(case["id"], row["key"]): row for case in report["cases"] for row in case["rows"]}
    checks = {check["target"]: check for check in report["targets"]}
    named = {
        entry["key"]: check["target"]
        for check in report["targets"]
        for entry in check.get(field, [])
    }
    assert named == {key: target for (_, key), target in expected.items()}
    for (case_id, key), target in expected.items():
        row = rows[case_id, key]
        # Measured wherever the platform has the socket option the row needs.
        # The C accelerator's rows, wherever it is in use.
        no_passcred = key.endswith("passcred") and not hasattr(socket, "SO_PASSCRED")
        no_accelerator = key.endswith("-c") and not report["machine"]["accelerated"]
        if no_passcred or no_accelerator:
            assert row["status"] == "unavailable", row
        else:
            assert row["status"] == "ok", row
        (entry,) = [e for e in checks[target][field] if e["key"] == key]
        # Never part of whether the target is met: that is the default row's alone.
        check = checks[target]
        if check["achieved"] is None:  # its own row is unavailable here (the C accelerator's)
            assert check["met"] is None
        else:
            assert check["met"] == (check["achieved"] >= check["minimum"])
        lines = _promise_lines(stdout, target)
        if row["status"] != "ok":
            assert entry["achieved"] is None
            assert shown.format(label=entry["label"], value="—") in lines
            continue
        assert entry["achieved"] > 0
        assert shown.format(label=entry["label"], value=f"{entry['achieved']:.2f}") in lines


def _promise_lines(stdout: str, promise: str) -> list[str]:
    """The report's lines about *promise*: its status line, then its indented details."""
    lines = stdout.splitlines()
    (start,) = [i for i, line in enumerate(lines) if line.endswith(f"] {promise}")]
    details = []
    for line in lines[start + 1 :]:
        if not line.startswith("      "):
            break
        details.append(line.strip())
    return [lines[start], *details]


def test_quick_run_reports_every_promise_for_users(
    quick_run: tuple[str, dict[str, Any]],
) -> None:
    stdout, report = quick_run
    assert "issue" not in stdout.lower()
    assert "met:" in stdout and "MISSED:" in stdout and "not measured:" in stdout
    for check in report["targets"]:
        status = {None: "not measured", True: "met", False: "MISSED"}[check["met"]]
        assert check["status"] == status
        lines = _promise_lines(stdout, check["target"])
        assert lines[0] == f"  [{status}] {check['target']}"
        assert lines[1].startswith("measured ") and ", promised " in lines[1]


# A promise that no run can keep, one that every run keeps, and one about a case not run.
_PROMISE_RUN = """
import sys
from unix_socketpair._bench import _command
minimum = float(sys.argv[1])
case = sys.argv[2]
_command.TARGETS = (
    _command.Target("a promise made for the test", case, "project", "socket-detach", minimum),
)
sys.exit(_command.main(sys.argv[3:]))
"""


@pytest.mark.parametrize(
    ("minimum", "case", "check", "status", "returncode"),
    [
        ("inf", "create", True, "MISSED", 3),
        ("inf", "create", False, "MISSED", 0),
        ("0", "create", True, "met", 0),
        ("inf", "rtt", True, "not measured", 0),
    ],
)
def test_check_fails_only_on_a_missed_promise(
    tmp_path: Path, minimum: str, case: str, check: bool, status: str, returncode: int
) -> None:
    args = ["--quick", "--case", "create", "--rounds", "1", *(["--check"] if check else [])]
    proc = subprocess.run(
        [sys.executable, "-c", _PROMISE_RUN, minimum, case, *args],
        capture_output=True,
        text=True,
        timeout=100,
        cwd=tmp_path,
    )
    assert proc.returncode == returncode, proc.stdout + proc.stderr
    assert f"  [{status}] a promise made for the test\n" in proc.stdout


def test_quick_run_measures_the_limit_when_cc_is_there(
    quick_run: tuple[str, dict[str, Any]],
) -> None:
    _, report = quick_run
    limit_rows = [row for case in report["cases"] for row in case["rows"] if row["kind"] == "limit"]
    assert len(limit_rows) == 8
    if shutil.which("cc") is None:
        assert all("cc" in row["reason"] for row in limit_rows)
    else:
        assert all(row["status"] == "ok" for row in limit_rows), limit_rows


def test_quick_run_scale_case_leaks_no_descriptor(quick_run: tuple[str, dict[str, Any]]) -> None:
    _, report = quick_run
    (scale,) = [case["rows"][0] for case in report["cases"] if case["id"] == "scale"]
    assert scale["key"] == "spawn-async"
    if scale["status"] == "unavailable":
        assert "spawn_async" in scale["reason"] or "AsyncChannel" in scale["reason"]
        return
    assert scale["children"] == 50
    assert scale["fds_leaked"] == 0
    assert scale["per_child_kib"] >= 0
    assert scale["nofile_soft_before"] == LOW_NOFILE
    assert scale["nofile_soft_after"] > LOW_NOFILE


def test_plot_needs_matplotlib_or_draws(tmp_path: Path) -> None:
    result = _bench(tmp_path, "--quick", "--case", "stream-4kib", "--plot", "bench.png")
    if importlib.util.find_spec("matplotlib") is None:
        assert result.returncode == 2
        assert "matplotlib" in result.stderr
        assert not (tmp_path / "bench.png").exists()
    else:
        assert result.returncode == 0, result.stderr
        assert (tmp_path / "bench.png").read_bytes().startswith(b"\x89PNG")


def test_unknown_case_is_refused(tmp_path: Path) -> None:
    result = _bench(tmp_path, "--case", "nonsense")
    assert result.returncode == 2
    assert "nonsense" in result.stderr


def test_quick_run_says_which_framing_is_in_use(quick_run: tuple[str, dict[str, Any]]) -> None:
    stdout, report = quick_run
    machine = report["machine"]
    # The harness ran with this process's environment (UNIX_SOCKETPAIR_PURE included).
    assert machine["accelerated"] is unix_socketpair.ACCELERATED
    assert f"\nframing: {machine['framing']}\n" in stdout
    assert machine["framing"].startswith("C" if unix_socketpair.ACCELERATED else "pure Python")
    rows = {
        (case["id"], row["key"]): row["status"] for case in report["cases"] for row in case["rows"]
    }
    # The pure-Python rows run everywhere; the C rows only where the accelerator is in use.
    for case_id, key in [
        ("batched-64b", "many-py"),
        ("batched-64b", "floor-py"),
        ("framing-loops-64b", "split-py"),
        ("framing-loops-64b", "join-py"),
    ]:
        assert rows[case_id, key] == "ok"
        c_key = key.replace("-py", "-c")
        assert rows[case_id, c_key] == ("ok" if unix_socketpair.ACCELERATED else "unavailable")


def test_quick_run_measures_node_ipc_beside_a_node_parent(
    quick_run: tuple[str, dict[str, Any]],
) -> None:
    from support import require

    require("node")  # under CI=true a missing node fails here, not as "unavailable"
    stdout, report = quick_run
    cases = {case["id"]: case for case in report["cases"]}
    for case_id in ("node-64b", "node-rtt"):
        for row in cases[case_id]["rows"]:
            assert row["status"] == "ok", f"{case_id}/{row['key']}: {row['reason']}"
    checks = {check["target"]: check for check in report["targets"]}
    for promise in (_command.NODE_STREAM, _command.NODE_RTT):
        assert checks[promise]["achieved"] > 0
        assert checks[promise]["met"] == (checks[promise]["achieved"] >= checks[promise]["minimum"])
        assert _promise_lines(stdout, promise)[0].endswith(f"] {promise}")


def test_node_rows_say_node_not_found_without_node(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "unix_socketpair._bench", "--quick", "--rounds", "1",
         "--case", "node-rtt", "--json", "bench.json"],
        capture_output=True, text=True, timeout=100, cwd=tmp_path, env={"PATH": str(empty)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (case,) = json.loads((tmp_path / "bench.json").read_text())["cases"]
    assert [row["status"] for row in case["rows"]] == ["unavailable"] * 4
    assert all(row["reason"] == "node not found on PATH" for row in case["rows"])
    assert "unavailable: node not found on PATH" in proc.stdout


def test_quick_run_idle_row_names_the_channels_it_held(
    quick_run: tuple[str, dict[str, Any]],
) -> None:
    from unix_socketpair._bench._scale import IDLE_PER_CHILD

    stdout, report = quick_run
    (case,) = [case for case in report["cases"] if case["id"] == "scale"]
    (idle,) = [row for row in case["rows"] if row["key"] == "idle-channels"]
    assert idle["status"] == "ok", idle["reason"]
    held = 50 * IDLE_PER_CHILD  # --quick: 50 children; the raised soft limit allows them all
    assert idle["children"] == held
    assert f"per channel ({held} channels)" in stdout
