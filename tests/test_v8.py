"""The V8 serializer subset (advanced mode's payload), checked against the real V8:
Node's bytes read by our decoder, our bytes read by Node, and round trips through
Node for generated values."""

from __future__ import annotations

import contextlib
import math
import struct
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import require
from support_node import NodeCodec, NodeCodecError

from unix_socketpair import ProtocolError
from unix_socketpair._v8 import HEADER, deserialize, serialize

UTC = timezone.utc
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def node() -> Iterator[NodeCodec]:
    peer = NodeCodec()
    yield peer
    peer.close()


def node_serialize(expressions: list[str]) -> list[bytes]:
    """v8.serialize() of each JavaScript expression, computed by the real node."""
    import subprocess

    script = "const v8 = require('v8');\n" + "".join(
        f"console.log(v8.serialize({expr}).toString('hex'));\n" for expr in expressions
    )
    out = subprocess.run(
        [require("node"), "-e", script], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return [bytes.fromhex(line) for line in out.split()]


# ------------------------------------------------------------------- node -> python

FROM_NODE: list[tuple[str, Any]] = [
    ("null", None),
    ("undefined", None),
    ("true", True),
    ("false", False),
    ("0", 0),
    ("-1", -1),
    ("2 ** 31 - 1", 2**31 - 1),
    ("-(2 ** 31)", -(2**31)),
    ("2 ** 31", 2**31),  # a double on the wire, a whole number: int
    ("2 ** 53 - 1", 2**53 - 1),
    ("0.5 * 4", 2),
    ("0.1", 0.1),
    ("1e300", 1e300),
    ("Infinity", math.inf),
    ("2 ** 53", float(2**53)),  # beyond the safe range: stays a float
    ("0n", 0),
    ("-1n", -1),
    ("2n ** 64n", 2**64),
    ("-(2n ** 100n) - 7n", -(2**100) - 7),
    ("''", ""),
    ("'abc'", "abc"),
    ("'\\u00e9\\u00ff'", "\u00e9\u00ff"),  # one-byte (Latin-1)
    ("'\\u20ac'", "\u20ac"),  # two-byte
    ("'a\\u20ac'", "a\u20ac"),
    ("'\\ud83d\\ude00'", "\U0001f600"),
    ("'\\ud800x'", "\ud800x"),  # a lone surrogate survives
    ("[]", []),
    ("[1, 'two', [3]]", [1, "two", [3]]),
    ("[1, , 3]", [1, None, 3]),
    ("(() => { const a = []; a[5] = 'x'; return a; })()", [None] * 5 + ["x"]),
    ("(() => { const a = [1, 2]; a.extra = 3; return a; })()", [1, 2]),
    ("{}", {}),
    ("{a: 1, b: {c: null}}", {"a": 1, "b": {"c": None}}),
    ("{1: 'one', 4294967294: 'big', x: 2}", {"1": "one", "4294967294": "big", "x": 2}),
    ("new Date(0)", EPOCH),
    ("new Date(-1)", EPOCH - timedelta(milliseconds=1)),
    ("new Date(Date.UTC(2026, 0, 2, 3, 4, 5, 678))", datetime(2026, 1, 2, 3, 4, 5, 678000, UTC)),
    ("new Map([[1, 'a'], ['b', 2], [2.5, null]])", {1: "a", "b": 2, 2.5: None}),
    ("new Set([1, 'a', 2n ** 70n])", {1, "a", 2**70}),
    ("Buffer.from('hi')", b"hi"),
    ("new Uint8Array([0, 255])", b"\x00\xff"),
    ("Buffer.alloc(0)", b""),
    ("new ArrayBuffer(2)", b"\x00\x00"),
]


def test_node_values_read_as_the_table_says() -> None:
    encoded = node_serialize([expr for expr, _ in FROM_NODE])
    for (expr, expected), data in zip(FROM_NODE, encoded, strict=True):
        got = deserialize(data, node_ipc=False)
        assert got == expected and type(got) is type(expected), (expr, got)


def test_negative_zero_and_nan_from_node() -> None:
    zero, nan = (deserialize(data, node_ipc=False) for data in node_serialize(["-0", "NaN"]))
    assert zero == 0 and math.copysign(1, zero) == -1 and type(zero) is float
    assert math.isnan(nan)


def test_shared_references_and_cycles_from_node() -> None:
    shared, cycle = node_serialize(
        [
            "(() => { const o = {k: 1}; return [o, o, {o}]; })()",
            "(() => { const o = {name: 'me'}; o.self = o; o.list = [o]; return o; })()",
        ]
    )
    items = deserialize(shared, node_ipc=False)
    assert items[0] is items[1] is items[2]["o"]
    me = deserialize(cycle, node_ipc=False)
    assert me["self"] is me and me["list"][0] is me


def test_header_is_what_node_20_writes() -> None:
    (data,) = node_serialize(["null"])
    assert data[:2] == HEADER == b"\xff\x0f"
    assert serialize(None) == b"\xff\x0f0"


@pytest.mark.parametrize(
    ("expr", "name"),
    [
        ("/a/g", "'R' (RegExp)"),
        ("new Error('x')", "'r' (Error)"),
        ("new String('x')", "'s' (String object)"),
        ("new Float64Array(1)", "Float64Array"),
        ("new Int16Array(1)", "Int16Array"),
    ],
)
def test_unsupported_node_values_are_named(expr: str, name: str) -> None:
    (data,) = node_serialize([expr])
    with pytest.raises(ProtocolError, match=name.replace("(", r"\(").replace(")", r"\)")):
        deserialize(data, node_ipc=False)


# ------------------------------------------------------------------- python -> node

TO_NODE: list[tuple[Any, str]] = [
    (None, "null"),
    (True, "true"),
    (7, "7"),
    (-(2**31), "-2147483648"),
    (2**31, "2147483648"),
    (2**53 - 1, "9007199254740991"),
    (2**53, "9007199254740992n"),
    (-(2**64), "-18446744073709551616n"),
    (0.25, "0.25"),
    (-0.0, "-0"),
    (math.inf, "Infinity"),
    (math.nan, "NaN"),
    ("", "''"),
    ("caf\u00e9", "'café'"),
    ("\u20ac\U0001f600", "'€😀'"),
    ([1, [2, (3,)]], "[ 1, [ 2, [ 3 ] ] ]"),
    ({"a": 1, "1": 2}, "{ '1': 2, a: 1 }"),
    ({1: "a", "b": 2}, "Map(2) { 1 => 'a', 'b' => 2 }"),
    ({3: None}, "Map(1) { 3 => null }"),
    (frozenset({"x"}), "Set(1) { 'x' }"),
    (b"hi", "<Buffer 68 69>"),
    (bytearray(b"\x00"), "<Buffer 00>"),
    (memoryview(b"abcdef")[::2], "<Buffer 61 63 65>"),
    (datetime(2026, 1, 2, 3, 4, 5, 678999, UTC), "2026-01-02T03:04:05.678Z"),
    (datetime(1969, 12, 31, 23, 59, 59, 999999, UTC), "1969-12-31T23:59:59.999Z"),
    (
        datetime(2026, 1, 2, 4, 4, 5, tzinfo=timezone(timedelta(hours=1))),
        "2026-01-02T03:04:05.000Z",
    ),
]


@pytest.mark.parametrize("node_ipc", [False, True], ids=["v8.deserialize", "ipc"])
def test_python_values_arrive_as_the_table_says(node: NodeCodec, node_ipc: bool) -> None:
    for value, shown in TO_NODE:
        data = serialize(value, node_ipc=node_ipc)
        if node_ipc:
            got = node.show(struct.pack(">I", len(data)) + data, "showipc")
        else:
            got = node.show(data)
        assert got == shown, value


def test_python_shared_references_arrive_shared(node: NodeCodec) -> None:
    inner: dict[str, Any] = {"k": 1}
    loop: list[Any] = []
    loop.append(loop)
    data = serialize([inner, inner, loop], node_ipc=False)
    assert node.show(data) == "[ { k: 1 }, { k: 1 }, <ref *1> [ [Circular *1] ] ]"
    # V8 writes an object reference only for the same object: Node kept the sharing.
    items = deserialize(node.ask("v8", data), node_ipc=False)
    assert items[0] is items[1] and items[2][0] is items[2]


def test_two_byte_strings_are_aligned_like_v8(node: NodeCodec) -> None:
    # V8 pads so that UTF-16 data starts at an even offset; check both parities.
    for value in ["\u20ac", {"a": "\u20ac"}, {"ab": "\u20ac"}, {"x": "x\u20ac", "yy": "\u20acy"}]:
        data = serialize(value, node_ipc=False)
        assert node.ask("v8", data) == data


# ------------------------------------------------------------- errors before output


@pytest.mark.parametrize(
    "value",
    [object(), 1j, {"k": [object()]}, [lambda: None], datetime.now(UTC).date()],
)
def test_unsupported_python_values_raise_type_error(value: object) -> None:
    with pytest.raises(TypeError, match="cannot send"):
        serialize(value)


def test_naive_datetime_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="naive datetime"):
        serialize([datetime(2026, 1, 1)])


# ------------------------------------------------------------------ hostile input


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "version tag"),
        (b"\x0f\xff0", "version tag"),
        (b"\xff\x10" + b"0", "version 16 is not supported"),
        (b"\xff\x0f", "truncated"),
        (b'\xff\x0f"\x05ab', "count of 5 does not fit"),
        (b"\xff\x0fN\x00\x00", "truncated: 8 bytes needed"),
        (b"\xff\x0f00", "1 bytes follow"),
        (b"\xff\x0fQ", "unknown V8 tag 0x51"),
        (b"\xff\x0fA\x01I\x02$\x00\x02", "trailer"),
        (b'\xff\x0fo"\x01aI\x02{\x02', "declares 2 entries, 1 were read"),
        (b"\xff\x0f^\x00", "reference to object 0"),
        (b"\xff\x0fc\x03abc", "odd byte length"),
        (b"\xff\x0fA\xff\xff\xff\xff\x0f", "does not fit"),
        (b"\xff\x0fa\xff\xff\xff\xff\x0f@\x00\xff\xff\xff\xff\x0f", "sparse array of length"),
        (b"\xff\x0f;o{\x00I\x02:\x02", "Map key of type dict"),
        (b"\xff\x0fD" + struct.pack("<d", math.nan), "Date of nan"),
        (b"\xff\x0fI\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", "longer than 10 bytes"),
        (b"\xff\x0f" + b"A\x01" * 100_000, "nested deeper"),
    ],
)
def test_bad_input_is_a_protocol_error_naming_the_fault(data: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        deserialize(data)


@given(st.binary(max_size=64))
def test_fuzz_parses_or_raises_protocol_error(data: bytes) -> None:
    for payload in (data, HEADER + data):
        with contextlib.suppress(ProtocolError):
            deserialize(payload)


# --------------------------------------------------------------------- round trips


def _text() -> st.SearchStrategy[str]:
    return st.text(st.characters(codec=None, exclude_categories=()), max_size=20)


def _normal_text(text: str) -> str:
    # Two surrogate code points that form a pair are one character in JavaScript.
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")


def _millis(when: datetime) -> datetime:
    return EPOCH + timedelta(milliseconds=(when - EPOCH) // timedelta(milliseconds=1))


def normal(value: Any) -> Any:
    """What a value reads back as (the module docstring's mapping)."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, float):
        if value.is_integer() and abs(value) <= 2**53 - 1 and math.copysign(1, value) > 0:
            return int(value)
        return value
    if isinstance(value, str):
        return _normal_text(value)
    if isinstance(value, (list, tuple)):
        return [normal(item) for item in value]
    if isinstance(value, (set, frozenset)):
        return {normal(item) for item in value}
    if isinstance(value, dict):
        return {normal(key): normal(item) for key, item in value.items()}
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, datetime):
        return _millis(value)
    return value


keys = st.one_of(st.integers(-(2**40), 2**40), _text(), st.floats(allow_nan=False))
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    _text(),
    st.binary(max_size=16),
    st.datetimes(timezones=st.just(UTC)),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.dictionaries(_text(), inner, max_size=4),
        st.dictionaries(keys, inner, max_size=4),
        st.frozensets(keys, max_size=4),
    ),
    max_leaves=20,
)


@given(values)
def test_round_trip(value: Any) -> None:
    for node_ipc in (True, False):
        assert deserialize(serialize(value, node_ipc=node_ipc), node_ipc=node_ipc) == normal(value)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values)
def test_round_trip_through_node(node: NodeCodec, value: Any) -> None:
    data = serialize(value, node_ipc=False)
    assert deserialize(node.ask("v8", data), node_ipc=False) == normal(value)
    frame = serialize(value)
    again = node.ask("ipc", struct.pack(">I", len(frame)) + frame)
    assert deserialize(again[4:]) == normal(value)


def test_node_refuses_what_we_refuse_to_read(node: NodeCodec) -> None:
    # The decoder is not laxer than V8 where it matters: truncation.
    data = serialize({"a": [1, 2, "x"]}, node_ipc=False)
    with pytest.raises(NodeCodecError):
        node.ask("v8", data[:-1])
    with pytest.raises(ProtocolError):
        deserialize(data[:-1], node_ipc=False)
