"""``unix-socketpair bench``: arguments, the run, the report, the JSON and the plot."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from .. import ACCELERATED, __version__
from . import _scale
from ._cases import build_cases
from ._framing_cases import implementation
from ._harness import (
    Case,
    Progress,
    Row,
    Settings,
    Unavailable,
    case_steps,
    format_case,
    run_case,
)
from ._limits import CPrograms
from ._node_cases import build_node_cases

__all__ = ["add_bench_arguments", "main", "run_bench"]

QUICK = Settings(target=0.02, rounds=3, sample_timeout=60)
FULL = Settings(target=0.12, rounds=15, sample_timeout=120)
SCALE_CHILDREN_QUICK = 50
SCALE_CHILDREN_FULL = 1000


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``bench`` options to *parser* (the CLI's ``bench`` subparser)."""
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a short run of every case (a few seconds): proves the harness, not the speed",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON to FILE")
    parser.add_argument(
        "--plot",
        metavar="FILE.png",
        help="draw throughput against message size to FILE.png (needs matplotlib)",
    )
    parser.add_argument(
        "--rounds", type=int, metavar="N", help="samples per row (default 15, quick 3)"
    )
    parser.add_argument(
        "--target",
        type=float,
        metavar="SECONDS",
        help="duration of one sample (default 0.12, quick 0.02)",
    )
    parser.add_argument(
        "--children",
        type=int,
        metavar="N",
        help=f"children in the scale case (default {SCALE_CHILDREN_FULL}, "
        f"quick {SCALE_CHILDREN_QUICK})",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit with status 3 if a promise measured in this run was missed (without "
        "--check a miss is reported and the status stays 0)",
    )
    parser.add_argument(
        "--case",
        action="append",
        metavar="ID",
        help="run only this case (repeatable): create, stream-4kib, stream-64kib, "
        "stream-1mib, framed-64b, framed-1mib, rtt, batched-64b, framing-loops-64b, spawn, "
        "node-64b, node-rtt, scale",
    )


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        uvloop_version: str | None = importlib.import_module("uvloop").__version__
    except ImportError:
        uvloop_version = None
    return {
        "loadavg_1min": os.getloadavg()[0],
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "kernel": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "unix_socketpair": __version__,
        "framing": implementation(),
        "accelerated": ACCELERATED,
        "uvloop": uvloop_version,
    }


@dataclass(frozen=True)
class Target:
    """A speed promise: row *key* of case *case* is at least *minimum* times better than
    row *reference* of the same case.

    *name* states the promise as a user reads it in the report. "Times better" is
    throughput / reference throughput, or for a time per operation reference time / time,
    so that higher is better everywhere.
    """

    name: str
    case: str
    key: str
    reference: str
    minimum: float  # the least acceptable "times better" ratio
    # Rows (key, label) of the same case that do the least any implementation
    # must do; their ratio to the same reference shows what bounds the target.
    floors: tuple[tuple[str, str], ...] = ()
    # Rows (key, label) of the same API with a non-default option, shown beside
    # the target (which is always judged on the default row).
    options: tuple[tuple[str, str], ...] = ()


# Promises that other places name too (the benchmark's tests find rows beside them).
BATCHED_C = (
    "with the C accelerator, Channel.send_many + recv_many carries 64 B messages at least 20x "
    "as fast as multiprocessing.Pipe"
)
BATCHED_PY = (
    "in pure Python, Channel.send_many + recv_many carries 64 B messages at least 5x as fast "
    "as multiprocessing.Pipe"
)

NODE_STREAM = (
    "NodeChannel (json) receives 64 B messages from a Node child at least as fast as a Node "
    "parent over child_process.fork"
)
NODE_RTT = (
    "a NodeChannel (json) round trip to a Node child takes at most 1.2x the time of a Node "
    "parent's over child_process.fork"
)

TARGETS = (
    Target("socketpair() creates pairs at no less than 95% of the speed of "
           "socket.socketpair() + detach()", "create", "project", "socket-detach", 0.95),
    Target("Channel.pair() creates channel pairs at no less than half the speed of "
           "socket.socketpair() + close()", "create", "channel", "socket-close", 0.5),
    Target("Channel.send_many + iteration carries 64 B messages at least 5x as fast as "
           "multiprocessing.Pipe", "framed-64b", "channel-many", "pipe", 5.0),
    Target("Channel.send / recv carries 64 B messages one at a time at least 1.5x as fast as "
           "multiprocessing.Pipe", "framed-64b", "channel", "pipe", 1.5,
           (("floor-send", "a bare framing send per message"),),
           (("channel-buffered", "with write_buffer=64 KiB"),)),
    Target("AsyncChannel carries 64 B messages at least 2x as fast as asyncio streams "
           "with readexactly", "framed-64b", "async-channel", "asyncio", 2.0),
    Target("Channel.recv carries 1 MiB messages at least 2x as fast as multiprocessing.Pipe",
           "framed-1mib", "channel", "pipe", 2.0),
    Target("Channel.recv_into carries 1 MiB messages at no less than 80% of the speed of "
           "a bare socket's sendall / recv_into", "framed-1mib", "channel-recv-into",
           "raw-stream", 0.8),
    Target("Channel.recv_into carries 1 MiB messages at no less than 80% of the speed of "
           "C doing the same framing", "framed-1mib", "channel-recv-into", "c", 0.8),
    Target("a Channel round trip takes at most 1.15x the time of a bare socket's send / recv",
           "rtt", "channel", "socket", 1 / 1.15,
           (("floor-recvmsg", "recvmsg_into with fd room"),
            ("floor-recvmsg-passcred", "the same with SO_PASSCRED")),
           (("channel-spin0", "with spin=0"),)),
    Target(BATCHED_C, "batched-64b", "many-c",
           "pipe", 20.0, (("floor-c", "a socket with join_frames/split_frames alone"),)),
    Target(BATCHED_PY, "batched-64b", "many-py",
           "pipe", 5.0, (("floor-py", "a socket with join_frames/split_frames alone"),)),
    Target("with the C accelerator, splitting 64 B frames is at least 5x as fast as in pure "
           "Python", "framing-loops-64b", "split-c",
           "split-py", 5.0),
    Target("with the C accelerator, joining 64 B frames is at least 5x as fast as in pure "
           "Python", "framing-loops-64b", "join-c",
           "join-py", 5.0),
    Target("an AsyncChannel round trip takes at most the time of asyncio streams' "
           "(default loop)", "rtt", "async-channel", "asyncio", 1.0),
    Target("on uvloop, an AsyncChannel round trip takes at most the time of asyncio streams'",
           "rtt", "async-channel-uvloop", "asyncio-uvloop", 1.0),
    Target("on uvloop, an AsyncChannel(spin=200) round trip takes at most 2x a blocking "
           "Channel's", "rtt", "async-channel-uvloop-spin", "channel", 0.5),
    Target("spawn() with the fd number already taken costs at most 2x a plain Popen",
           "spawn", "spawn-taken", "popen", 0.5),
    Target("spawn() at a free fd number costs at most 1.5x a plain Popen", "spawn",
           "spawn-free", "popen", 1 / 1.5),
    Target("spawn(fd='stdio') costs at most 1.5x a plain Popen", "spawn", "spawn-stdio",
           "popen", 1 / 1.5),
    Target(NODE_STREAM, "node-64b", "nodechannel-json", "node-json", 1.0),
    Target(NODE_RTT, "node-rtt", "nodechannel-json", "node-json", 1 / 1.2),
)  # fmt: skip

SCALE_PROMISE = "spawn_async leaves no descriptor open after its children are done"
SCALE_MEMORY_PROMISE = (
    "spawn_async costs the parent no more memory per child than asyncio's own subprocess pipes"
)
IDLE_PROMISE = (
    "10,000 idle AsyncChannels, each with a task waiting in recv(), take at most 40 MiB of RSS"
)
IDLE_LIMIT_KIB = 40 * 1024 / 10_000  # per channel


def _ratio(case: Case | None, rows: dict[str, Row], key: str, reference: str) -> float | None:
    """Row *key* against row *reference* as "times better" (higher is better everywhere)."""
    row, ref = rows.get(key), rows.get(reference)
    if case is None or not (row and ref and row.median and ref.median):
        return None
    ratio = row.median / ref.median
    return ratio if case.higher_is_better else 1 / ratio  # for latency, "times faster"


def _beside(
    case: Case | None, rows: dict[str, Row], reference: str, entries: tuple[tuple[str, str], ...]
) -> list[dict[str, Any]]:
    """Rows (key, label) shown beside a target, with their ratio to its reference."""
    return [
        {"key": key, "label": label, "achieved": _ratio(case, rows, key, reference)}
        for key, label in entries
    ]


def _check_targets(
    cases: Sequence[Case], results: dict[str, list[Row]], scale: Sequence[Row]
) -> list[dict[str, Any]]:
    by_id = {case.id: case for case in cases}
    checks: list[dict[str, Any]] = []
    for target in TARGETS:
        case = by_id.get(target.case)
        rows = {row.key: row for row in results.get(target.case, [])}
        ratio = _ratio(case, rows, target.key, target.reference)
        met = None if ratio is None else ratio >= target.minimum
        checks.append(
            {
                "target": target.name,
                "minimum": target.minimum,
                "achieved": ratio,
                "met": met,
                "status": _status(met),
                # Neither is part of "met": what the least possible implementation
                # achieves, and the same API with a non-default option.
                "floors": _beside(case, rows, target.reference, target.floors),
                "options": _beside(case, rows, target.reference, target.options),
            }
        )
    by_key = {row.key: row for row in scale}
    spawn_row, pipes_row = by_key.get("spawn-async"), by_key.get("asyncio-subprocess")
    if spawn_row is not None and pipes_row is not None:
        ours, theirs = spawn_row.extra.get("per_child_kib"), pipes_row.extra.get("per_child_kib")
        met = None if ours is None or theirs is None else ours <= theirs
        checks.append(
            {
                "target": SCALE_MEMORY_PROMISE,
                "minimum": theirs,
                "promised": "—" if theirs is None else f"≤ {theirs:.2f} KiB per child",
                "unit": " KiB per child",
                "achieved": ours,
                "met": met,
                "status": _status(met),
            }
        )
    idle_row = by_key.get("idle-channels")
    if idle_row is not None:
        per_channel = idle_row.extra.get("per_child_kib")
        met = None if per_channel is None else per_channel <= IDLE_LIMIT_KIB
        checks.append(
            {
                "target": IDLE_PROMISE,
                "minimum": IDLE_LIMIT_KIB,
                "promised": f"≤ {IDLE_LIMIT_KIB:.2f} KiB per channel",
                "unit": " KiB per channel",
                "achieved": per_channel,
                "met": met,
                "status": _status(met),
            }
        )
    for row in scale:
        if row.key != "spawn-async":
            continue
        leaked = row.extra.get("fds_leaked")
        met = None if leaked is None else leaked == 0
        checks.append(
            {
                "target": SCALE_PROMISE,
                "minimum": 0,
                "achieved": leaked,
                "met": met,
                "status": _status(met),
            }
        )
    return checks


SCALE_MODES = (
    ("spawn-async", "project", "spawn_async(['cat'], fd='stdio') + AsyncChannel echo"),
    ("asyncio-subprocess", "other", "asyncio.create_subprocess_exec('cat', PIPE) + readexactly"),
    ("idle-channels", "project", "idle AsyncChannel.pair()s, a task waiting in each recv()"),
)


def _run_scale(children: int, settings: Settings, progress: Progress, case: Case) -> list[Row]:
    """Both scale variants, interleaved, each run in a fresh interpreter."""
    rows = [Row(name, key, kind) for key, kind, name in SCALE_MODES]
    runs: dict[str, list[dict[str, Any]]] = {key: [] for key, _, _ in SCALE_MODES}
    for row in rows:
        try:
            _scale.available(row.key)
        except Unavailable as exc:
            row.status, row.reason = "unavailable", str(exc)
    for _ in range(settings.rounds):
        for row in rows:
            progress.step(case, row.name, "measuring")
            if row.status != "ok":
                continue
            try:
                runs[row.key].append(
                    _scale.measure(children, row.key, timeout=max(120.0, children * 0.5))
                )
            except Exception as exc:
                row.status, row.reason = "failed", f"{type(exc).__name__}: {exc}"
    for row in rows:
        done = runs[row.key]
        if row.status != "ok" or not done:
            continue
        row.values = [run["wall_s"] for run in done]
        row.units = children
        row.extra = {
            # What the worker held: IDLE_PER_CHILD channels per child in the idle row.
            "children": done[0]["children"],
            "rss_before_kib": statistics.median(run["rss_before_kib"] for run in done),
            "rss_peak_kib": max(run["rss_peak_kib"] for run in done),
            "per_child_kib": statistics.median(run["per_child_kib"] for run in done),
            "fds_leaked": max(run["fds_leaked"] for run in done),
            "fds_before": done[0]["fds_before"],
            "nofile_soft_before": done[0]["nofile_soft_before"],
            "nofile_soft_after": done[0]["nofile_soft_after"],
            "nofile_hard": done[0]["nofile_hard"],
        }
    return rows


def _format_scale(case: Case, rows: Sequence[Row], children: int) -> str:
    lines = [f"{case.title}: {children} children"]
    for row in rows:
        if row.status != "ok":
            lines.append(f"  {row.name}: {row.status}: {row.reason}")
            continue
        x = row.extra
        walls = row.values
        lines += [
            f"  {row.name}",
            f"    wall time        {statistics.median(walls):.3f} s (min-max {min(walls):.3f}-"
            f"{max(walls):.3f} s, {len(walls)} runs)",
            f"    parent RSS       {x['rss_before_kib'] / 1024:.1f} MiB before, peak "
            f"{x['rss_peak_kib'] / 1024:.1f} MiB: {x['per_child_kib']:.1f} KiB per "
            + (f"channel ({x['children']} channels)" if row.key == "idle-channels" else "child"),
            f"    descriptors      {x['fds_before']} before, {x['fds_leaked']} leaked after",
        ]
        if x["nofile_soft_after"] != x["nofile_soft_before"]:
            lines.append(
                f"    RLIMIT_NOFILE    soft limit raised from {x['nofile_soft_before']} to "
                f"{x['nofile_soft_after']} (hard {x['nofile_hard']})"
            )
        else:
            lines.append(
                f"    RLIMIT_NOFILE    soft limit {x['nofile_soft_before']} was enough, not raised"
            )
    return "\n".join(lines)


_PROMISES_HEADER = """\
Promises: what the library promises, and whether this run kept each one
  Each ratio is "times better" than the reference named in the promise (for a round trip:
  the reference's time / the channel's time), so higher is better everywhere.
  met:          this run measured at least the promised ratio.
  MISSED:       this run measured less. Figures depend on the machine and its load: rerun
                on an idle machine and compare with the performance page of the
                documentation before reading a miss as a regression.
  not measured: the rows it compares were not run (see --case) or are unavailable here.
  With --check a missed promise makes the exit status 3."""


def _status(met: bool | None) -> str:
    """One promise's outcome, as the report and the JSON name it."""
    if met is None:
        return "not measured"
    return "met" if met else "MISSED"


def _format_targets(checks: Sequence[dict[str, Any]]) -> str:
    lines = [_PROMISES_HEADER]
    for check in checks:
        achieved = check["achieved"]
        if achieved is None:
            shown = "—"
        elif isinstance(achieved, float):
            shown = f"{achieved:.2f}"
        else:
            shown = str(achieved)
        want = "0" if check["minimum"] == 0 else f"≥ {check['minimum']:.2f}"
        if "promised" in check:  # a limit, not a ratio (memory)
            want = check["promised"]
            if achieved is not None:
                shown = f"{achieved:.2f}{check['unit']}"
        beside = []
        for floor in check.get("floors", ()):
            value = "—" if floor["achieved"] is None else f"{floor['achieved']:.2f}"
            beside.append(f"{floor['label']}, the floor: {value}")
        for option in check.get("options", ()):
            value = "—" if option["achieved"] is None else f"{option['achieved']:.2f}"
            beside.append(f"{option['label']}: {value}")
        lines.append(f"  [{_status(check['met'])}] {check['target']}")
        lines.append(f"      measured {shown}, promised {want}")
        lines += [f"      {note}" for note in beside]
    if any(check.get("floors") for check in checks):
        lines.append(
            "  (a floor: the same ratio for a row that does only what any implementation must,"
            "\n  shown for information; whether a promise is met depends on its own row only)"
        )
    return "\n".join(lines)


def _size_label(size: int) -> str:
    for unit, name in ((2**20, "MiB"), (2**10, "KiB")):
        if size >= unit:
            return f"{size // unit} {name}"
    return f"{size} B"


def plot(path: str, cases: Sequence[Case], results: dict[str, list[Row]]) -> None:
    """Draw bytes/s against chunk or message size, one line per variant.

    The project's rows are solid, the C limit dashed, the alternatives dotted.

    Raises:
        ImportError: matplotlib is not installed (an optional extra).
    """
    importlib.import_module("matplotlib").use("Agg")
    plt = importlib.import_module("matplotlib.pyplot")

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    for ax, prefix, title in (
        (axes[0], "stream-", "One-way stream"),
        (axes[1], "framed-", "One-way framed messages"),
    ):
        series: dict[str, list[tuple[int, float]]] = {}
        kinds: dict[str, str] = {}
        sizes: set[int] = set()
        for case in cases:
            if not case.id.startswith(prefix) or case.size is None:
                continue
            for row in results.get(case.id, []):
                if row.median is None:
                    continue
                rate = row.median * (case.size if case.unit == "msg/s" else 1)
                series.setdefault(row.name, []).append((case.size, rate / 2**20))
                kinds[row.name] = row.kind
                sizes.add(case.size)
        for name, points in series.items():
            points.sort()
            style = {"limit": "--", "project": "-"}.get(kinds[name], ":")
            ax.plot(
                [p[0] for p in points],
                [p[1] for p in points],
                style,
                marker="o",
                linewidth=2.2 if kinds[name] == "project" else 1.4,
                label=name,
            )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ticks = sorted(sizes)
        ax.set_xticks(ticks, [_size_label(size) for size in ticks])
        ax.set_xlabel("chunk / message size (bytes)")
        ax.set_ylabel("MiB/s")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_bench(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run the benchmarks *args* asks for; print the tables; return the exit status.

    The status is 0 when every row was measured or is unavailable here (a
    missing ``cc``, uvloop or library feature), 1 when a row failed, 2 on bad
    arguments or a missing plotting library, and 3 with ``--check`` when a
    promise measured in this run was missed (without ``--check`` a miss is
    only reported).
    """
    out = out if out is not None else sys.stdout
    base = QUICK if args.quick else FULL
    settings = Settings(
        target=args.target if args.target else base.target,
        rounds=args.rounds if args.rounds else base.rounds,
        sample_timeout=base.sample_timeout,
    )
    children = args.children or (SCALE_CHILDREN_QUICK if args.quick else SCALE_CHILDREN_FULL)
    if settings.rounds < 1 or settings.target <= 0 or children < 1:
        print("bench: --rounds, --target and --children must be positive", file=sys.stderr)
        return 2
    if args.plot:
        try:
            importlib.import_module("matplotlib")
        except ImportError:
            print(
                "bench: --plot needs matplotlib, which is not installed "
                "(pip install 'unix-socketpair[plot]' or pip install matplotlib)",
                file=sys.stderr,
            )
            return 2

    info = machine()
    with CPrograms() as c:
        cases = build_cases(c, quick=args.quick) + build_node_cases(quick=args.quick)
        scale_case = Case(
            "scale",
            "5. Scale: concurrent children, one echo each over AsyncChannel, one event loop",
            "Spawn every child, wait until all are alive, echo one message each, close.",
            "s",
            [],
        )
        wanted = set(args.case) if args.case else None
        known = {case.id for case in cases} | {"scale"}
        if wanted and wanted - known:
            print(f"bench: unknown case(s): {', '.join(sorted(wanted - known))}", file=sys.stderr)
            return 2
        cases = [case for case in cases if wanted is None or case.id in wanted]
        do_scale = wanted is None or "scale" in wanted
        steps = sum(case_steps(case, settings) for case in cases)
        scale_settings = Settings(target=0, rounds=1 if args.quick else 3)
        steps += scale_settings.rounds * len(SCALE_MODES) if do_scale else 0
        progress = Progress(steps)

        print(
            f"unix-socketpair {info['unix_socketpair']} benchmark"
            f"{' (--quick: figures are not meaningful)' if args.quick else ''}\n"
            f"machine: {info['nproc']} CPUs, {info['cpu']}, {info['kernel']}, "
            f"{info['python']}, uvloop {info['uvloop'] or 'not installed'}, "
            f"load average {info['loadavg_1min']:.2f} at the start\n"
            f"framing: {info['framing']}\n"
            f"each row: median of {settings.rounds} interleaved samples of ~{settings.target}s "
            "(case 1: four times as many, four times shorter)",
            file=out,
            flush=True,
        )
        results: dict[str, list[Row]] = {}
        for case in cases:
            results[case.id] = run_case(case, settings, progress)
            print("\n" + format_case(case, results[case.id]), file=out, flush=True)
        scale: list[Row] = []
        if do_scale:
            scale = _run_scale(children, scale_settings, progress, scale_case)
            print("\n" + _format_scale(scale_case, scale, children), file=out, flush=True)
        progress.finish()

    checks = _check_targets(cases, results, scale)
    print("\n" + _format_targets(checks), file=out, flush=True)
    info["loadavg_1min_end"] = os.getloadavg()[0]
    print(f"load average {info['loadavg_1min_end']:.2f} at the end", file=out, flush=True)
    report = {
        "machine": info,
        "quick": bool(args.quick),
        "rounds": settings.rounds,
        "target_seconds": settings.target,
        "cases": [
            {
                "id": case.id,
                "title": case.title,
                "explain": case.explain,
                "unit": case.unit,
                "higher_is_better": case.higher_is_better,
                "size": case.size,
                "rounds": settings.rounds * case.split,
                "rows": [row.to_json() for row in results[case.id]],
            }
            for case in cases
        ]
        + (
            [
                {
                    "id": scale_case.id,
                    "title": scale_case.title,
                    "explain": scale_case.explain,
                    "unit": scale_case.unit,
                    "higher_is_better": False,
                    "size": None,
                    "rounds": scale_settings.rounds,
                    "rows": [row.to_json() for row in scale],
                }
            ]
            if do_scale
            else []
        ),
        "targets": checks,
    }
    if args.json:
        with open(args.json, "w") as file:
            json.dump(report, file, indent=2)
            file.write("\n")
    if args.plot:
        plot(args.plot, cases, results)
        print(f"plot written to {args.plot}", file=out)
    rows = [row for case_rows in results.values() for row in case_rows]
    rows += scale
    if any(row.status == "failed" for row in rows):
        return 1
    if args.check and any(check["met"] is False for check in checks):
        return 3
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m unix_socketpair._bench``: the same as ``unix-socketpair bench``."""
    parser = argparse.ArgumentParser(
        prog="unix-socketpair bench",
        description="Every case side by side with the C limit and the alternatives.",
    )
    add_bench_arguments(parser)
    return run_bench(parser.parse_args(argv))
