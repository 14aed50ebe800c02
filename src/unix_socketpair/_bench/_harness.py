"""The harness: run variants side by side, interleaved, and summarise them.

A *case* is one question ("64-byte messages, one way: how many per second?");
its *variants* are the answers we compare (``multiprocessing.Pipe``, the
project's ``Channel``, a C program...). Each variant is first run once to warm
up and to size its work so that one sample takes about ``target`` seconds, then
every variant of the case runs once per round, round after round (A B C A B C
...), so that a drift of the machine (another process, frequency scaling) hits
every variant alike. A row reports the median of the rounds and their range.
"""

from __future__ import annotations

import signal
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, TextIO

__all__ = [
    "Case",
    "Clock",
    "Progress",
    "Row",
    "Sample",
    "Settings",
    "Unavailable",
    "Variant",
    "run_case",
]


class Unavailable(Exception):
    """A variant cannot run here (a missing module, no ``cc``); the row says why."""


class SampleTimeout(Exception):
    """One sample took longer than the harness allows (a hang in a variant)."""


@dataclass(frozen=True)
class Sample:
    """One measurement: *units* of work (bytes, messages, round trips) in *seconds*."""

    seconds: float
    units: int


class Clock:
    """The stopwatch a variant's measured side holds.

    ``start()`` takes the first reading, ``stop()`` the last; a variant calls
    them around exactly the work it is measured on, so that process start-up
    and event-loop creation stay out of the figure.
    """

    def __init__(self) -> None:
        self.started: float | None = None
        self.stopped: float | None = None

    def start(self) -> None:
        self.started = time.perf_counter()

    def stop(self) -> None:
        self.stopped = time.perf_counter()

    def elapsed(self) -> float:
        """Seconds between ``start()`` and ``stop()``; raises if either is missing."""
        if self.started is None or self.stopped is None:
            raise RuntimeError("the variant did not start and stop its clock")
        return self.stopped - self.started


@dataclass(frozen=True)
class Variant:
    """One row of a case.

    ``run(n)`` does *n* units of work and returns the sample. ``first_n`` is the
    work of the sizing run. ``available()`` returns ``None`` or raises
    ``Unavailable`` with the reason. ``kind`` is ``"limit"`` for the C row,
    ``"pipe"`` for ``multiprocessing.Pipe`` (the two references every other row
    is divided by), ``"project"`` for this library's rows, else ``"other"``.
    """

    name: str
    run: Callable[[int], Sample]
    first_n: int
    kind: str = "other"
    key: str = ""
    available: Callable[[], None] = lambda: None
    max_n: int = 10**9


@dataclass(frozen=True)
class Case:
    """A question and the variants that answer it."""

    id: str
    title: str
    explain: str
    unit: str  # "B/s", "msg/s", "pair/s", "s/op"
    variants: Sequence[Variant]
    size: int | None = None  # chunk or message size, for the plot
    # Cheap in-process cases take this many times more, this many times shorter,
    # samples: the same time, finer interleaving, a steadier median under load.
    split: int = 1

    @property
    def higher_is_better(self) -> bool:
        return self.unit != "s/op"


@dataclass
class Row:
    """The summary of one variant's samples (rates, or seconds per operation)."""

    name: str
    key: str
    kind: str
    status: str = "ok"  # "ok", "unavailable" or "failed"
    reason: str = ""
    values: list[float] = field(default_factory=list)
    units: int = 0
    vs_limit: float | None = None
    vs_pipe: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "key": self.key,
            "kind": self.kind,
            "status": self.status,
            "reason": self.reason,
            "median": self.median,
            "min": min(self.values) if self.values else None,
            "max": max(self.values) if self.values else None,
            "samples": self.values,
            "units_per_sample": self.units,
            "vs_limit": self.vs_limit,
            "vs_pipe": self.vs_pipe,
            **self.extra,
        }


@dataclass(frozen=True)
class Settings:
    """How long and how often: ``target`` seconds per sample, ``rounds`` samples per row."""

    target: float
    rounds: int
    sample_timeout: float = 120.0


class Progress:
    """One line on stderr that says where the run is (rewritten in place on a terminal)."""

    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self.total = total
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.started = time.monotonic()
        self._last_case = ""

    def step(self, case: Case, variant: str, phase: str) -> None:
        self.done += 1
        elapsed = time.monotonic() - self.started
        if self.tty:
            line = (
                f"[{self.done:4d}/{self.total}] {elapsed:5.1f}s {case.title}: {variant} ({phase})"
            )
            self.stream.write("\r\x1b[K" + line[:110])
            self.stream.flush()
        elif case.id != self._last_case:
            self._last_case = case.id
            self.stream.write(f"[{self.done:4d}/{self.total}] {elapsed:5.1f}s {case.title}\n")
            self.stream.flush()

    def finish(self) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K")
        elapsed = time.monotonic() - self.started
        self.stream.write(f"benchmark finished in {elapsed:.1f}s\n")
        self.stream.flush()


@contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    """Raise ``SampleTimeout`` in this (main) thread if the block outlives *seconds*."""

    def expire(signum: int, frame: FrameType | None) -> None:
        raise SampleTimeout(f"a sample took longer than {seconds:.0f}s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _measure(variant: Variant, n: int, settings: Settings) -> Sample:
    with _deadline(settings.sample_timeout):
        return variant.run(n)


def _size(variant: Variant, sample: Sample, settings: Settings) -> int:
    """The work for one sample of about ``settings.target`` seconds."""
    n = int(settings.target * variant.first_n / max(sample.seconds, 1e-6))
    return max(1, min(n, variant.max_n))


def case_steps(case: Case, settings: Settings) -> int:
    """How many progress steps ``run_case`` takes for *case*."""
    return len(case.variants) * (settings.rounds * case.split + 1)


def run_case(case: Case, settings: Settings, progress: Progress) -> list[Row]:
    """Run every variant of *case* interleaved; return one row per variant.

    A variant that is unavailable, or raises, yields a row saying so; the
    other variants go on.
    """
    settings = Settings(
        settings.target / case.split, settings.rounds * case.split, settings.sample_timeout
    )
    rows = [Row(v.name, v.key or v.name, v.kind) for v in case.variants]
    sizes: list[int] = []
    for variant, row in zip(case.variants, rows, strict=True):
        progress.step(case, variant.name, "sizing")
        try:
            variant.available()
            first = _measure(variant, variant.first_n, settings)
            sizes.append(_size(variant, first, settings))
        except Unavailable as exc:
            row.status, row.reason = "unavailable", str(exc)
            sizes.append(0)
        except Exception as exc:
            row.status, row.reason = "failed", f"{type(exc).__name__}: {exc}"
            sizes.append(0)
    for _ in range(settings.rounds):
        for variant, row, n in zip(case.variants, rows, sizes, strict=True):
            progress.step(case, variant.name, "measuring")
            if row.status != "ok":
                continue
            try:
                sample = _measure(variant, n, settings)
            except Exception as exc:
                row.status, row.reason = "failed", f"{type(exc).__name__}: {exc}"
                row.values.clear()
                continue
            row.units = sample.units
            if case.higher_is_better:
                row.values.append(sample.units / max(sample.seconds, 1e-12))
            else:
                row.values.append(sample.seconds / max(sample.units, 1))
    _ratios(case, rows)
    return rows


def _ratios(case: Case, rows: list[Row]) -> None:
    """Fill each row's ratio to the C limit and to ``multiprocessing.Pipe``.

    A ratio above 1 is always better: for latency it is reference / row.
    """

    def reference(kind: str) -> float | None:
        for row in rows:
            if row.kind == kind and row.median:
                return row.median
        return None

    limit, pipe = reference("limit"), reference("pipe")
    for row in rows:
        value = row.median
        if not value:
            continue
        if case.higher_is_better:
            row.vs_limit = value / limit if limit else None
            row.vs_pipe = value / pipe if pipe else None
        else:
            row.vs_limit = limit / value if limit else None
            row.vs_pipe = pipe / value if pipe else None


# --- formatting -----------------------------------------------------------------------------


def _scale_for(value: float, unit: str) -> tuple[float, str]:
    """The divisor and the unit name to show *value* (and its neighbours) in."""
    if unit == "B/s":
        for size, name in ((2**30, "GiB/s"), (2**20, "MiB/s"), (2**10, "KiB/s")):
            if value >= size:
                return size, name
        return 1, "B/s"
    if unit == "s/op":
        return (1e-6, "µs") if value < 1e-3 else (1e-3, "ms")
    if unit.endswith("/s"):
        base = unit[:-2]
        for factor, prefix in ((1e6, "M "), (1e3, "k ")):
            if value >= factor:
                return factor, f"{prefix}{base}/s"
        return 1, unit
    return 1, unit


def format_value(value: float, unit: str, like: float | None = None) -> str:
    """A human figure: ``3.42 GiB/s``, ``1.25 M msg/s``, ``12.8 µs``.

    With *like*, the figure is scaled as *like* would be (for a min-max range).
    """
    factor, name = _scale_for(value if like is None else like, unit)
    return f"{value / factor:.2f} {name}"


def format_case(case: Case, rows: Sequence[Row]) -> str:
    """The text table of one case: median, min-max, ratios to C and to Pipe."""
    better = "higher is better" if case.higher_is_better else "lower is better"
    lines = [f"{case.title}  ({better}; ratios > 1 mean faster than the reference)"]
    width = max(len(r.name) for r in rows) + 2
    lines.append(
        f"  {'variant':<{width}}{'median':>16}  {'min-max':>18}  {'vs C':>6}  {'vs Pipe':>7}"
    )
    for row in rows:
        if row.status != "ok" or not row.values:
            lines.append(f"  {row.name:<{width}}{row.status}: {row.reason}")
            continue
        median = format_value(statistics.median(row.values), case.unit)
        low, high = min(row.values), max(row.values)
        spread = "-".join(
            format_value(v, case.unit, statistics.median(row.values)).split(" ")[0]
            for v in (low, high)
        )
        vs_c = f"{row.vs_limit:.2f}" if row.vs_limit is not None else "—"
        vs_pipe = f"{row.vs_pipe:.2f}" if row.vs_pipe is not None else "—"
        lines.append(f"  {row.name:<{width}}{median:>16}  {spread:>18}  {vs_c:>6}  {vs_pipe:>7}")
    return "\n".join(lines)
