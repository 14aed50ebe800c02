"""The framing loops: the pure-Python and the C implementation give the same results and
raise the same errors on every input; the C one compiles cleanly, has no undefined
behaviour on the inputs we feed it, and leaks no references; CI proves it is built."""

from __future__ import annotations

import array
import ctypes
import importlib
import mmap
import os
import struct
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import IN_CI, ROOT, missing, require, run_python

import unix_socketpair
from unix_socketpair import _framing

SOURCE = ROOT / "src" / "unix_socketpair" / "_speedups.c"
PURE = os.environ.get("UNIX_SOCKETPAIR_PURE") == "1"
MAX_FRAME = 0xFFFFFFFF


def _load_speedups() -> ModuleType | None:
    try:
        return importlib.import_module("unix_socketpair._speedups")
    except ImportError:
        return None


SPEEDUPS = _load_speedups()


@pytest.fixture(scope="module")
def c() -> ModuleType:
    """The C implementation, imported directly (whatever UNIX_SOCKETPAIR_PURE says)."""
    if SPEEDUPS is None:
        missing("the C accelerator was not built (no C compiler or Python headers at install)")
    return SPEEDUPS


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def outcome(function: Callable[..., Any], *args: Any) -> tuple[Any, ...]:
    """What a call gives: ``("ok", result)`` or ``("raised", type, message)``."""
    try:
        return ("ok", function(*args))
    except Exception as exc:
        return ("raised", type(exc), str(exc))


# --- which implementation is in use ---------------------------------------------------------


def test_the_flag_says_which_implementation_is_in_use() -> None:
    assert unix_socketpair.ACCELERATED is _framing.ACCELERATED
    if PURE:
        assert not _framing.ACCELERATED
    elif IN_CI:
        # CI builds the accelerator: this run proves it was built and is used.
        assert _framing.ACCELERATED, (
            "CI=true and UNIX_SOCKETPAIR_PURE unset: the C accelerator must be in use "
            "(was it built? see `pip install -v .`)"
        )
    else:
        assert (SPEEDUPS is not None) == _framing.ACCELERATED
    if _framing.ACCELERATED:
        assert SPEEDUPS is not None
        assert _framing.split_frames is SPEEDUPS.split_frames
        assert _framing.join_frames is SPEEDUPS.join_frames
    else:
        assert _framing.split_frames is _framing.py_split_frames
        assert _framing.join_frames is _framing.py_join_frames


@pytest.mark.parametrize("value", ["1", "0", "", None])
def test_only_pure_equal_to_1_forces_python(value: str | None) -> None:
    env = {k: v for k, v in os.environ.items() if k != "UNIX_SOCKETPAIR_PURE"}
    if value is not None:
        env["UNIX_SOCKETPAIR_PURE"] = value
    proc = run_python(
        "import unix_socketpair as u\nprint(u.ACCELERATED, u._framing.split_frames.__module__)",
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    expected = value != "1" and SPEEDUPS is not None
    module = "unix_socketpair._speedups" if expected else "unix_socketpair._framing"
    assert proc.stdout.split() == [str(expected), module]


# --- split_frames: unit tests, run against both -------------------------------------------


@pytest.fixture(params=["python", "c"])
def split(request: pytest.FixtureRequest) -> Callable[..., tuple[list[bytes], int]]:
    if request.param == "python":
        return _framing.py_split_frames
    module: ModuleType = request.getfixturevalue("c")
    return module.split_frames  # type: ignore[no-any-return]


@pytest.fixture(params=["python", "c"])
def join(request: pytest.FixtureRequest) -> Callable[..., bytes]:
    if request.param == "python":
        return _framing.py_join_frames
    module: ModuleType = request.getfixturevalue("c")
    return module.join_frames  # type: ignore[no-any-return]


STREAM = frame(b"abc") + frame(b"") + frame(b"x" * 10) + b"\x00\x00"


def test_split_returns_whole_frames_and_where_they_stop(split: Callable[..., Any]) -> None:
    assert split(STREAM, 0, len(STREAM), 100, 100) == ([b"abc", b"", b"x" * 10], len(STREAM) - 2)


def test_split_limit_exactly_at_and_just_over(split: Callable[..., Any]) -> None:
    # A frame of exactly `limit` bytes passes; one byte over stops at its header.
    assert split(STREAM, 0, len(STREAM), 10, 100) == ([b"abc", b"", b"x" * 10], len(STREAM) - 2)
    assert split(STREAM, 0, len(STREAM), 9, 100) == ([b"abc", b""], 11)
    assert split(STREAM, 0, len(STREAM), 0, 100) == ([], 0)
    assert split(STREAM, 7, len(STREAM), 0, 100) == ([b""], 11)
    assert split(STREAM, 0, len(STREAM), -1, 100) == ([], 0)


def test_split_max_count(split: Callable[..., Any]) -> None:
    assert split(STREAM, 0, len(STREAM), 100, 0) == ([], 0)
    assert split(STREAM, 0, len(STREAM), 100, 1) == ([b"abc"], 7)
    assert split(STREAM, 0, len(STREAM), 100, 2) == ([b"abc", b""], 11)


def test_split_truncated_header_and_payload(split: Callable[..., Any]) -> None:
    whole = frame(b"hello")
    for end in range(len(whole)):
        assert split(whole, 0, end, 100, 100) == ([], 0), end
    assert split(whole, 0, len(whole), 100, 100) == ([b"hello"], len(whole))
    assert split(whole, 2, 2, 100, 100) == ([], 2)  # pos == end, even mid-frame
    assert split(b"", 0, 0, 100, 100) == ([], 0)


def test_split_reads_only_between_pos_and_end(split: Callable[..., Any]) -> None:
    data = b"junk" + frame(b"mid") + b"\xff\xff\xff\xff"
    assert split(data, 4, 11, 100, 100) == ([b"mid"], 11)
    assert split(data, 4, 10, 100, 100) == ([], 4)


def test_split_largest_header_is_just_a_frame_that_is_not_whole(
    split: Callable[..., Any],
) -> None:
    data = b"\xff\xff\xff\xff" + b"x" * 8
    assert split(data, 0, len(data), 2**40, 100) == ([], 0)
    assert split(data, 0, len(data), 2**100, 2**100) == ([], 0)


def test_split_accepts_every_contiguous_buffer(split: Callable[..., Any]) -> None:
    raw = frame(b"abcd") + frame(b"")
    expected = ([b"abcd", b""], len(raw))
    with mmap.mmap(-1, len(raw)) as mapped:
        mapped[:] = raw
        buffers: list[Any] = [
            raw,
            bytearray(raw),
            memoryview(raw),
            memoryview(b"??" + raw)[2:],
            mapped,
            array.array("B", raw),
            memoryview(raw).cast("I"),  # read as its bytes, whatever the item format
            memoryview(raw).cast("B", (2, 6)),
            (ctypes.c_uint32.__ctype_be__ * 3).from_buffer_copy(raw),  # format ">I"
        ]
        for buf in buffers:
            result = split(buf, 0, len(raw), 100, 100)
            assert result == expected, buf
            assert all(type(payload) is bytes for payload in result[0])
        del buffers, buf  # the mmap cannot close while a view of it is alive


def test_split_payloads_are_copies(split: Callable[..., Any]) -> None:
    buf = bytearray(frame(b"abc"))
    (payload,), _ = split(buf, 0, len(buf), 100, 100)
    buf[4:7] = b"xyz"
    assert payload == b"abc"


BAD_SPLIT_CALLS: list[tuple[tuple[Any, ...], type[Exception], str]] = [
    (("text", 0, 0, 0, 0), TypeError, "buf must be a C-contiguous bytes-like object, got <class "),
    ((None, 0, 0, 0, 0), TypeError, "got <class 'NoneType'>"),
    ((memoryview(bytes(8))[::2], 0, 0, 0, 0), TypeError, "C-contiguous"),
    ((b"", 0.0, 0, 0, 0), TypeError, "'float' object cannot be interpreted as an integer"),
    ((b"", 0, "1", 0, 0), TypeError, "'str' object cannot be interpreted as an integer"),
    ((b"", 0, 0, None, 0), TypeError, "'NoneType' object cannot"),
    ((b"", 0, 0, 0, 1.5), TypeError, "'float' object cannot"),
    ((b"abc", -1, 2, 0, 0), ValueError, r"got pos=-1, end=2, len\(buf\)=3"),
    ((b"abc", 2, 1, 0, 0), ValueError, "got pos=2, end=1"),
    ((b"abc", 0, 4, 0, 0), ValueError, r"got pos=0, end=4, len\(buf\)=3"),
    ((b"abc", 2**64, 2**65, 0, 0), ValueError, f"got pos={2**64}, end={2**65}"),
    ((b"abc", -(2**64), 0, 0, 0), ValueError, f"got pos={-(2**64)}"),
    ((b"abc", 0, 3, 0, -1), ValueError, "max_count must be >= 0, got -1"),
    ((b"abc", 0, 3, 0, -(2**70)), ValueError, f"max_count must be >= 0, got {-(2**70)}"),
]


@pytest.mark.parametrize(("args", "error", "message"), BAD_SPLIT_CALLS)
def test_split_bad_arguments(
    split: Callable[..., Any], args: tuple[Any, ...], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        split(*args)


def test_split_released_or_closed_buffers_raise_value_error(split: Callable[..., Any]) -> None:
    view = memoryview(b"abcd")
    view.release()
    with pytest.raises(ValueError, match="released memoryview"):
        split(view, 0, 0, 0, 0)
    mapped = mmap.mmap(-1, 16)
    mapped.close()
    with pytest.raises(ValueError, match="mmap closed"):
        split(mapped, 0, 0, 0, 0)


def test_split_wrong_arity_or_keywords_are_type_errors(split: Callable[..., Any]) -> None:
    with pytest.raises(TypeError):
        split(b"", 0, 0, 0)
    with pytest.raises(TypeError):
        split(b"", 0, 0, 0, 0, 0)
    with pytest.raises(TypeError):
        split(b"", 0, 0, 0, max_count=0)


def test_split_releases_the_buffer_on_every_path(split: Callable[..., Any]) -> None:
    # A bytearray cannot be resized while a buffer of it is held: resizing it after
    # each call proves the call released it, whether it returned or raised.
    buf = bytearray(STREAM)
    before = sys.getrefcount(buf)
    for args in [
        (0, len(buf), 100, 100),
        (0, len(buf), 100, 0),
        (0, 2, 100, 100),
        (5, 3, 100, 100),
        (0, len(buf) + 1, 100, 100),
        (0, len(buf), 100, -1),
    ]:
        outcome(split, buf, *args)
        buf.append(0)
        del buf[-1]
    outcome(split, memoryview(buf)[::2], 0, 0, 0, 0)
    buf.append(0)
    assert sys.getrefcount(buf) == before


# --- join_frames: unit tests ------------------------------------------------------------------


def test_join_frames_every_message(join: Callable[..., bytes]) -> None:
    messages = [b"abc", b"", b"x" * 300]
    expected = b"".join(frame(m) for m in messages)
    assert join(messages) == expected
    assert join(tuple(messages)) == expected
    assert join([]) == b""
    assert join(()) == b""
    assert type(join([b"a"])) is bytes


class _Bytes(bytes):
    pass


BAD_JOIN_CALLS: list[tuple[Any, type[Exception], str]] = [
    ("abc", TypeError, "messages must be a list or a tuple, got <class 'str'>"),
    (iter([b"a"]), TypeError, "messages must be a list or a tuple, got <class 'list_iterator'>"),
    (type("L", (list,), {})([b"a"]), TypeError, "messages must be a list or a tuple, got <class "),
    ([b"a", "b"], TypeError, "item 1 is <class 'str'>, not bytes"),
    ([b"a", bytearray(b"b")], TypeError, "item 1 is <class 'bytearray'>, not bytes"),
    ((memoryview(b"a"),), TypeError, "item 0 is <class 'memoryview'>, not bytes"),
    ([b"a", _Bytes(b"b")], TypeError, "item 1 is <class 'test_framing._Bytes'>, not bytes"),
    ([b"a", None, 3], TypeError, "item 1 is <class 'NoneType'>"),
]


@pytest.mark.parametrize(("messages", "error", "message"), BAD_JOIN_CALLS)
def test_join_bad_arguments(
    join: Callable[..., bytes], messages: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        join(messages)


def test_join_refuses_a_message_over_the_header_limit(join: Callable[..., bytes]) -> None:
    # bytes(n) is calloc'd: 4 GiB of untouched zero pages cost no real memory here.
    try:
        huge = bytes(MAX_FRAME + 1)
    except MemoryError:
        pytest.skip("this machine cannot reserve 4 GiB of address space")
    with pytest.raises(OverflowError, match=r"item 1 is 4294967296 bytes, over the frame limit"):
        join([b"a", huge, "not even bytes"])
    with pytest.raises(TypeError, match="item 0 is <class 'str'>"):
        join(["first", huge])


def test_join_leaves_the_reference_counts_as_they_were(join: Callable[..., bytes]) -> None:
    item = b"payload-" + bytes(8)
    messages = [item] * 5
    before = sys.getrefcount(item), sys.getrefcount(messages)
    join(messages)
    outcome(join, [*messages, "bad"])
    del messages[-1:]
    assert (sys.getrefcount(item) + 1, sys.getrefcount(messages)) == before


# --- the two implementations, side by side, on random input -----------------------------------

# Mostly small payloads; now and then one around 1 KiB, where the Python version
# switches from copying the region first to slicing the buffer.
payloads = st.lists(st.binary(max_size=40) | st.binary(min_size=1020, max_size=1030), max_size=12)
# Frames, with now and then a header replaced by random bytes (a corrupt or huge length).
streams = st.lists(
    st.one_of(payloads.map(lambda ps: b"".join(frame(p) for p in ps)), st.binary(max_size=8)),
    max_size=4,
).map(b"".join)
limits = st.one_of(st.integers(-2, 45), st.just(2**32), st.integers(-(2**70), 2**70))
counts = st.one_of(st.integers(0, 15), st.just(2**80))
WRAPPERS: list[Callable[[bytes], Any]] = [
    bytes,
    bytearray,
    memoryview,
    lambda b: memoryview(b"??" + b)[2:],
    lambda b: array.array("B", b),
]


@settings(max_examples=250, deadline=None)
@given(
    data=streams,
    cuts=st.lists(st.integers(0, 200), max_size=6),
    limit=limits,
    max_count=counts,
    wrap=st.sampled_from(WRAPPERS),
)
def test_split_matches_python_on_random_streams_split_anywhere(
    c: ModuleType,
    data: bytes,
    cuts: list[int],
    limit: int,
    max_count: int,
    wrap: Callable[[bytes], Any],
) -> None:
    """Feed the stream as a receiver would (in chunks, into a buffer); every call agrees."""
    buf = bytearray()
    pos = 0
    points = sorted({min(cut, len(data)) for cut in cuts} | {len(data)})
    start = 0
    for point in points:
        buf += data[start:point]
        start = point
        while True:
            view = wrap(bytes(buf))
            expected = outcome(_framing.py_split_frames, view, pos, len(buf), limit, max_count)
            assert outcome(c.split_frames, view, pos, len(buf), limit, max_count) == expected
            assert expected[0] == "ok"
            got, pos = expected[1]
            if not got or max_count == 0:
                break
        if pos > 16:  # compact, as a receiver does
            del buf[:pos]
            pos = 0


@settings(max_examples=400, deadline=None)
@given(
    data=st.binary(max_size=64),
    pos=st.one_of(st.integers(-3, 70), st.integers(-(2**70), 2**70), st.sampled_from([1.0, None])),
    end=st.one_of(st.integers(-3, 70), st.sampled_from([2**64, "3"])),
    limit=st.one_of(limits, st.sampled_from([0.5, None])),
    max_count=st.one_of(st.integers(-3, 10), st.just(-(2**80)), st.sampled_from([1.0, b"1"])),
    wrap=st.sampled_from(
        [*WRAPPERS, str, lambda b: memoryview(b)[::2], lambda b: memoryview(b)[::-1]]
    ),
)
def test_split_matches_python_on_any_arguments(
    c: ModuleType,
    data: bytes,
    pos: Any,
    end: Any,
    limit: Any,
    max_count: Any,
    wrap: Callable[[bytes], Any],
) -> None:
    buf = wrap(data)
    expected = outcome(_framing.py_split_frames, buf, pos, end, limit, max_count)
    assert outcome(c.split_frames, buf, pos, end, limit, max_count) == expected


items = st.one_of(
    st.binary(max_size=40),
    st.binary(max_size=40),
    st.binary(max_size=4).map(bytearray),
    st.binary(max_size=4).map(memoryview),
    st.binary(max_size=4).map(_Bytes),
    st.text(max_size=3),
    st.integers(),
    st.none(),
)


@settings(max_examples=200, deadline=None)
@given(
    messages=st.lists(st.one_of(st.binary(max_size=40)), max_size=20) | st.lists(items, max_size=6),
    container=st.sampled_from([list, tuple, iter, type("L", (list,), {})]),
)
def test_join_matches_python(c: ModuleType, messages: list[Any], container: Any) -> None:
    expected = outcome(_framing.py_join_frames, container(messages))
    assert outcome(c.join_frames, container(messages)) == expected
    if all(type(m) is bytes for m in messages) and container in (list, tuple):
        assert expected == ("ok", b"".join(frame(m) for m in messages))


@settings(max_examples=200, deadline=None)
@given(messages=st.lists(st.binary(max_size=300), max_size=30), limit=limits)
def test_join_then_split_round_trips(c: ModuleType, messages: list[bytes], limit: int) -> None:
    for join_frames, split_frames in (
        (_framing.py_join_frames, _framing.py_split_frames),
        (c.join_frames, c.split_frames),
    ):
        data = join_frames(messages)
        got, pos = split_frames(data, 0, len(data), limit, len(messages))
        kept = 0
        while kept < len(messages) and len(messages[kept]) <= limit:
            kept += 1
        assert got == messages[:kept]
        assert pos == sum(4 + len(m) for m in messages[:kept])


# --- the C source: compiles cleanly, no undefined behaviour, no leaks -----------------------


def _python_include() -> list[str]:
    paths = sysconfig.get_paths()
    include = sorted({paths["include"], paths["platinclude"]})
    if not any((Path(p) / "Python.h").exists() for p in include):
        missing(f"Python.h is not in {include}: the Python headers are not installed")
    return [f"-I{p}" for p in include]


def _build(tmp_path: Path, *flags: str) -> Path:
    """Compile the accelerator as CI's strictest build would; return the shared object."""
    cc = require("cc")
    target = tmp_path / "_speedups.so"
    result = subprocess.run(
        [
            cc,
            "-shared",
            "-fPIC",
            "-std=c11",
            "-Wall",
            "-Wextra",
            "-Werror",
            *flags,
            *_python_include(),
            "-o",
            str(target),
            str(SOURCE),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return target


# Loads a built shared object as unix_socketpair._speedups (in a fresh interpreter).
_LOAD = """
import importlib.machinery, importlib.util, sys
loader = importlib.machinery.ExtensionFileLoader("unix_socketpair._speedups", sys.argv[1])
spec = importlib.util.spec_from_loader(loader.name, loader)
c = importlib.util.module_from_spec(spec)
loader.exec_module(c)
sys.modules[loader.name] = c
"""

# Many random and hostile inputs through the C module, checked against Python.
_EXERCISE = """
import random, struct
from unix_socketpair import _framing

def outcome(f, *a):
    try:
        return ("ok", f(*a))
    except Exception as e:
        return (type(e), str(e))

rng = random.Random(1)
SIZES = [0, 1, 3, 4, 5, 64, 300, 1023, 1024, 2000]
for _ in range(3000):
    sizes = [rng.choice(SIZES) for _ in range(rng.randrange(8))]
    ps = [rng.randbytes(size) for size in sizes]
    data = b"".join(struct.pack(">I", len(p)) + p for p in ps) + rng.randbytes(rng.randrange(9))
    if rng.random() < 0.3 and len(data) >= 4:
        i = rng.randrange(len(data) - 3)
        header = rng.choice([b"\\xff\\xff\\xff\\xff", b"\\x7f\\xff\\xff\\xff"])
        data = data[:i] + header + data[i + 4:]
    n = len(data)
    pos = rng.choice([0, rng.randrange(n + 1), n, -1, n + 1, 2**63 - 1, -(2**63), 2**70])
    end = rng.choice([n, rng.randrange(n + 1), 0, n + 1, 2**63 - 1, 2**70])
    limit = rng.choice([2**31 - 1, 2**32 - 1, 2**32, 2**63 - 1, -(2**63), 2**70, 0, -1, 64])
    count = rng.choice([0, 1, 3, 2**62, 2**63 - 1, 2**70, -1])
    buf = rng.choice([bytes, bytearray, memoryview])(data)
    a = outcome(_framing.py_split_frames, buf, pos, end, limit, count)
    b = outcome(c.split_frames, buf, pos, end, limit, count)
    assert a == b, (data, pos, end, limit, count, a, b)
    if rng.random() < 0.2:
        ps.insert(rng.randrange(len(ps) + 1), rng.choice(["s", None, bytearray(b"b")]))
    messages = rng.choice([list, tuple])(ps)
    assert outcome(c.join_frames, messages) == outcome(_framing.py_join_frames, messages)
print("exercised")
"""


def test_c_source_compiles_with_all_warnings_as_errors(tmp_path: Path) -> None:
    built = _build(tmp_path, "-O2", "-Wconversion", "-Wshadow", "-Wstrict-prototypes")
    proc = subprocess.run(
        [sys.executable, "-c", _LOAD + _EXERCISE, str(built)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "exercised"


def test_c_has_no_undefined_behaviour_on_hostile_input(tmp_path: Path) -> None:
    # Every UB check of UndefinedBehaviorSanitizer (overflow, shifts, alignment, bounds
    # of known-size objects), fatal on the first report.
    built = _build(tmp_path, "-O1", "-g", "-fsanitize=undefined", "-fno-sanitize-recover=all")
    proc = subprocess.run(
        [sys.executable, "-c", _LOAD + _EXERCISE, str(built)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"},
    )
    assert "runtime error" not in proc.stderr, proc.stderr
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "exercised"


# A million 64-byte frames through join_frames and split_frames, in big batches and in
# small ones (so that a leak per call shows as much as a leak per frame), then every
# error path many times; the memory still allocated afterwards must not have grown.
_LEAK = """
import gc, sys, tracemalloc
from unix_socketpair import _speedups as c

payload = bytes(range(64))
big, small = [payload] * 10_000, [payload] * 10
hostile = bytearray(b"\\x00\\x00\\x00\\x05abc")

def run(messages, rounds):
    for _ in range(rounds):
        data = c.join_frames(messages)
        frames, end = c.split_frames(data, 0, len(data), 1 << 20, 1 << 30)
        assert end == len(data) and len(frames) == len(messages)

def errors(rounds):
    for _ in range(rounds):
        for args in ((hostile, 0, 99, 9, 9), (hostile, 0, 8, 9, -1), ("x", 0, 0, 0, 0),
                     (memoryview(hostile)[::2], 0, 0, 0, 0), (hostile, 1.0, 0, 0, 0),
                     (hostile, 2**70, 0, 0, 0)):
            try:
                c.split_frames(*args)
            except (TypeError, ValueError):
                pass
            else:
                raise AssertionError(args)
        for bad in ([payload, "x"], "x", (payload, None)):
            try:
                c.join_frames(bad)
            except TypeError:
                pass
            else:
                raise AssertionError(bad)
        c.split_frames(hostile, 0, len(hostile), 9, 9)

def measure():
    gc.collect()
    return tracemalloc.get_traced_memory()[0], sys.getallocatedblocks()

run(big, 2); run(small, 100); errors(100)
refs = getattr(sys, "gettotalrefcount", lambda: 0)()
tracemalloc.start()
before = measure()
run(big, 50)
run(small, 50_000)
errors(3_000)
after = measure()
refs = getattr(sys, "gettotalrefcount", lambda: 0)() - refs
print(after[0] - before[0], after[1] - before[1], refs)
"""


def test_c_leaks_nothing_over_a_million_frames(c: ModuleType) -> None:
    proc = run_python(_LEAK, timeout=60)
    assert proc.returncode == 0, proc.stderr
    grown_bytes, grown_blocks, grown_refs = map(int, proc.stdout.split())
    # A leaked object per call would be >= 400 KiB here; per frame, >= 16 MiB.
    assert grown_bytes < 32 * 1024, grown_bytes
    assert grown_blocks < 1000, grown_blocks
    assert grown_refs < 1000, grown_refs  # 0 unless this is a debug build of Python


@pytest.mark.parametrize(
    "args",
    [(0, len(STREAM) + 1, 100, 100), (5, 3, 100, 100), (0, len(STREAM), 100, -1)],
)
def test_split_releases_the_buffer_even_while_its_error_is_alive(
    split: Callable[..., Any], args: tuple[int, ...]
) -> None:
    # The exception (and its traceback, with the frames of the call) is still alive
    # here: the buffer must already be released, as it is in C, where it never lingers.
    buf = bytearray(STREAM)
    with pytest.raises(ValueError) as raised:
        split(buf, *args)
    buf.append(0)
    strided = bytearray(8)
    with pytest.raises(TypeError):
        split(memoryview(strided)[::2], 0, 0, 0, 0)
    strided.append(0)
    assert raised.value.__traceback__ is not None


# --- take_frame: one whole message out of a decoder, without the caller's lock --------------


def _decoder_in(state: str) -> Any:
    """A StreamDecoder in one of the states take_frame must tell apart."""
    from unix_socketpair._codec import StreamDecoder

    decoder = StreamDecoder(max_message_size=100)
    if state == "whole":
        decoder.receive_data(frame(b"first") + frame(b"second")[:3])
    elif state == "empty payload":
        decoder.receive_data(frame(b""))
    elif state == "partial":
        decoder.receive_data(frame(b"first")[:6])
    elif state == "header only":
        decoder.receive_data(frame(b"x" * 50)[:4])
    elif state == "over the limit":
        decoder.receive_data(struct.pack(">I", 101) + b"x" * 101)
    elif state == "with descriptors":
        r, w = os.pipe()
        os.close(w)
        decoder.receive_data(frame(b"fds"), [r])
    elif state == "at end of file":
        decoder.receive_data(b"")
    elif state == "closed":
        decoder.receive_data(frame(b"first"))
        decoder.close()
    elif state == "all taken":
        decoder.receive_data(frame(b"first"))
        assert decoder.next_message() == b"first"
    elif state == "in a direct read":
        decoder = StreamDecoder()
        target = memoryview(bytearray(100_000))
        decoder.receive_data(struct.pack(">I", 80_000) + b"x" * 10)
        assert decoder.into(target) is not None
        assert decoder.begin_direct(target)
    # ("nothing yet": a new decoder.)
    return decoder


TAKE_STATES = [
    "whole",
    "empty payload",
    "partial",
    "header only",
    "over the limit",
    "with descriptors",
    "at end of file",
    "closed",
    "nothing yet",
    "all taken",
]


@pytest.mark.parametrize("state", TAKE_STATES)
def test_take_frame_c_and_python_agree(c: ModuleType, state: str) -> None:
    """The same result, the same record and the same decoder state afterwards: a whole
    message only when no descriptor, error, end of file or limit is in the way."""
    import threading

    from unix_socketpair._codec import py_take_frame

    results = []
    for take in (py_take_frame, c.take_frame):
        decoder = _decoder_in(state)
        record: list[bytes] = []
        got = take(decoder, threading.Lock(), record)
        results.append((got, record, decoder.buffered()))
        decoder.close()
    assert results[0] == results[1]
    expected = {"whole": b"first", "empty payload": b""}.get(state)
    assert results[1][0] == expected
    assert results[1][1] == ([] if expected is None else [expected])


@pytest.mark.parametrize("state", TAKE_STATES)
def test_take_frame_in_c_declines_while_another_holds_the_lock(c: ModuleType, state: str) -> None:
    """While a receiver holds the lock (it may be changing the decoder), the C version
    takes nothing and changes nothing (the pure one waits for the lock instead)."""
    import threading

    decoder = _decoder_in(state)
    before = decoder.buffered()
    lock = threading.Lock()
    record: list[bytes] = []
    with lock:
        assert c.take_frame(decoder, lock, record) is None
    assert (record, decoder.buffered()) == ([], before)
    decoder.close()


@pytest.mark.parametrize("state", [*TAKE_STATES, "in a direct read"])
def test_take_frame_answers_need_when_the_decoder_simply_holds_nothing(
    c: ModuleType, state: str
) -> None:
    """With a fourth argument, *need*: that object instead of None when the decoder is
    open and holds no byte (next_message() would answer NEED_DATA at once), so that a
    receiver learns "wait" without a call to next_message(). In every other state the
    answer is the three-argument one. Both twins agree, and change nothing."""
    from unix_socketpair._codec import NEED_DATA, py_take_frame

    answers = []
    for take in (py_take_frame, c.take_frame):
        decoder = _decoder_in(state)
        plain = _decoder_in(state)
        record: list[bytes] = []
        got = take(decoder, None, record, NEED_DATA)
        without = take(plain, None, [], None)
        answers.append((got, record, decoder.buffered()))
        if state in ("nothing yet", "all taken"):
            assert got is NEED_DATA
            assert record == []
            assert decoder.next_message() is NEED_DATA
        else:
            assert got == without
        decoder.close()
        plain.close()
    assert answers[0] == answers[1]


def test_take_frame_checks_its_arguments(c: ModuleType) -> None:
    from unix_socketpair._codec import NEED_DATA, StreamDecoder, py_take_frame

    decoder = StreamDecoder()
    for take in (py_take_frame, c.take_frame):
        with pytest.raises(TypeError):
            take(decoder, None)
        with pytest.raises(TypeError):
            take(decoder, None, [], NEED_DATA, None)
    with pytest.raises(TypeError, match="record"):
        c.take_frame(decoder, None, (), NEED_DATA)
    # Not a stream decoder (a PacketDecoder's messages go through its own methods):
    # nothing the C version can take, and it changes nothing.
    record: list[bytes] = []
    assert c.take_frame(object(), None, record, NEED_DATA) is None
    assert record == []


def test_take_frame_then_next_message_goes_on_in_order(c: ModuleType) -> None:
    import threading

    from unix_socketpair._codec import NEED_DATA, StreamDecoder

    decoder = StreamDecoder()
    decoder.receive_data(frame(b"a") + frame(b"bb") + frame(b"ccc")[:2])
    record: list[bytes] = []
    assert c.take_frame(decoder, threading.Lock(), record) == b"a"
    assert decoder.next_message() == b"bb"
    assert c.take_frame(decoder, None, record) is None
    decoder.receive_data(frame(b"ccc")[2:])
    assert c.take_frame(decoder, None, record) == b"ccc"
    assert record == [b"a", b"ccc"]
    assert decoder.next_message() is NEED_DATA
