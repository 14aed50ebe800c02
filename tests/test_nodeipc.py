"""Node IPC protocol, sans-IO: the json-mode codec (checked against the real node),
the advanced-mode frame decoder, and NodeProtocol's internal messages and handle
handshake, driven in-process between two protocol objects."""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support_node import NodeCodec

from unix_socketpair import MessageTooLarge, ProtocolError
from unix_socketpair._nodeipc import (
    CLOSED,
    MAX_HANDLE_RETRANSMISSIONS,
    NEED_DATA,
    FrameDecoder,
    Handle,
    HandleRefused,
    JsonLineDecoder,
    Message,
    NodeProtocol,
    Write,
    describe_handle,
    encode_advanced,
    encode_json,
    is_internal,
    node_environment,
    take_node_environment,
)
from unix_socketpair._v8 import serialize


@pytest.fixture(scope="module")
def node() -> Iterator[NodeCodec]:
    peer = NodeCodec()
    yield peer
    peer.close()


def drain(decoder: JsonLineDecoder | FrameDecoder) -> list[Any]:
    """Every value the decoder holds; errors are recorded in place as their classes."""
    out: list[Any] = []
    while True:
        try:
            value = decoder.next()
        except (ProtocolError, MessageTooLarge) as exc:
            out.append(type(exc))
            continue
        if value is NEED_DATA or value is CLOSED:
            return [*out, value] if value is CLOSED else out
        out.append(value)


# ------------------------------------------------------------------------ json mode


def test_json_lines_are_what_json_stringify_writes(node: NodeCodec) -> None:
    for value in [
        {"a": [1, -2, "x y", None, True, False], "b": {}},
        'caf\u00e9 \u20ac \U0001f600 \u2028 \\ " \n \t \x00 \x7f',
        "lone \ud800 and \udfff",
        [],
        0,
        -(2**53),
        0.5,
    ]:
        line = encode_json(value)
        assert line.endswith(b"\n") and line.count(b"\n") == 1
        assert node.ask("json", line) == line, value


def test_lone_surrogates_survive_the_round_trip_through_node(node: NodeCodec) -> None:
    line = encode_json(["\ud800", "a\udc00b"])
    assert b"\\ud800" in line and b"\\udc00" in line
    decoder = JsonLineDecoder()
    decoder.feed(node.ask("json", line))
    assert decoder.next() == ["\ud800", "a\udc00b"]


@pytest.mark.parametrize("value", [math.nan, [math.inf], {"k": -math.inf}])
def test_nan_and_infinity_are_value_errors(value: object) -> None:
    with pytest.raises(ValueError, match="cannot send this value as JSON"):
        encode_json(value)


def test_unencodable_is_type_error_and_cycles_value_error() -> None:
    with pytest.raises(TypeError):
        encode_json({"k": object()})
    with pytest.raises(TypeError):
        encode_json({(1, 2): "tuple key"})
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(ValueError, match="Circular"):
        encode_json(loop)


def test_partial_lines_are_kept_across_feeds() -> None:
    decoder = JsonLineDecoder()
    stream = b'{"a":1}\n[2,3]\n"\xc3\xa9"\n'
    for byte in stream[:-1]:
        decoder.feed(bytes([byte]))
    assert drain(decoder) == [{"a": 1}, [2, 3]]
    decoder.feed(b"\n")
    assert drain(decoder) == ["\u00e9"]
    decoder.feed(b"")
    assert drain(decoder) == [CLOSED]


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"NaN",
        b"Infinity",
        b"-Infinity",
        b"[1,]",
        b"{'a':1}",
        b"1 2",
        b"\xff",
        b"\xef\xbb\xbf1",
    ],
    ids=repr,
)
def test_lines_json_parse_rejects_are_protocol_errors_and_the_stream_goes_on(line: bytes) -> None:
    decoder = JsonLineDecoder()
    decoder.feed(b"1\n" + line + b"\n2\n")
    assert drain(decoder) == [1, ProtocolError, 2]


def test_whitespace_json_parse_accepts_is_accepted() -> None:
    decoder = JsonLineDecoder()
    decoder.feed(b' \t{"a" : [ 1 ]}\r\n')
    assert decoder.next() == {"a": [1]}


def test_deep_nesting_is_a_protocol_error() -> None:
    decoder = JsonLineDecoder()
    decoder.feed(b"[" * 100_000 + b"]" * 100_000 + b"\n")
    with pytest.raises(ProtocolError, match="not JSON"):
        decoder.next()


def test_a_line_over_the_limit_raises_before_its_newline_and_is_skipped() -> None:
    decoder = JsonLineDecoder(max_message_size=10)
    decoder.feed(b'"ok"\n"0123456')
    assert decoder.next() == "ok"
    assert decoder.next() is NEED_DATA
    decoder.feed(b"789")  # 12 bytes buffered: over the limit, newline still to come
    with pytest.raises(MessageTooLarge) as info:
        decoder.next()
    assert info.value.limit == 10 and info.value.size > 10
    decoder.feed(b"x" * 1000)  # skipped, not buffered
    decoder.feed(b'yy"\n"next"\n')
    assert drain(decoder) == ["next"]


def test_a_whole_line_over_the_limit_reports_its_size() -> None:
    decoder = JsonLineDecoder(max_message_size=10)
    decoder.feed(b'"0123456789"\n1\n')
    with pytest.raises(MessageTooLarge) as info:
        decoder.next()
    assert (info.value.size, info.value.limit) == (12, 10)
    assert decoder.next() == 1


def test_end_of_file_inside_a_line_is_a_protocol_error() -> None:
    decoder = JsonLineDecoder()
    decoder.feed(b'1\n{"a":')
    decoder.feed(b"")
    assert decoder.next() == 1
    with pytest.raises(ProtocolError, match="end of file inside a line: 5 bytes"):
        decoder.next()
    assert decoder.next() is CLOSED


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(codec=None, exclude_categories=())),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.text(st.characters(codec=None, exclude_categories=())), inner, max_size=4
        )
    ),
    max_leaves=16,
)


def _normal_text(text: str) -> str:
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")


def normal_json(value: Any) -> Any:
    if isinstance(value, str):
        return _normal_text(value)
    if isinstance(value, list):
        return [normal_json(item) for item in value]
    if isinstance(value, dict):
        return {_normal_text(key): normal_json(item) for key, item in value.items()}
    return value


@given(st.lists(json_values, max_size=5), st.data())
def test_json_round_trip_in_any_chunking(values: list[Any], data: st.DataObject) -> None:
    stream = b"".join(encode_json(value) for value in values)
    decoder = JsonLineDecoder()
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        if end > start:
            decoder.feed(stream[start:end])
    decoder.feed(b"")
    assert drain(decoder) == [normal_json(value) for value in values] + [CLOSED]


def as_doubles(value: Any) -> Any:
    """Every number as the double it is in JavaScript."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, list):
        return [as_doubles(item) for item in value]
    if isinstance(value, dict):
        return {key: as_doubles(item) for key, item in value.items()}
    return value


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_json_round_trip_through_node(node: NodeCodec, value: Any) -> None:
    decoder = JsonLineDecoder()
    decoder.feed(node.ask("json", encode_json(value)))
    # JSON.stringify writes a whole double above 2**53 in integer notation, which
    # reads as an int that is not always that double's exact value (the same number
    # to JavaScript): compare numbers as doubles.
    assert as_doubles(decoder.next()) == as_doubles(normal_json(value))


@given(st.lists(st.binary(min_size=1, max_size=12), max_size=8))
def test_json_fuzz_values_or_protocol_errors_only(chunks: list[bytes]) -> None:
    decoder = JsonLineDecoder(max_message_size=16)
    for chunk in [*chunks, b""]:
        decoder.feed(chunk)
        drain(decoder)  # raises anything but ProtocolError/MessageTooLarge


# -------------------------------------------------------------------- advanced mode


def test_advanced_frames_are_what_node_ipc_writes(node: NodeCodec) -> None:
    value = {"a": {"x": 1, "y": "\u20ac"}, "b": b"\x00\x01", "c": {2: None}, "d": {7}}
    frame = encode_advanced(value)
    assert frame[:4] == struct.pack(">I", len(frame) - 4) and frame[4:6] == b"\xff\x0f"
    assert node.ask("ipc", frame) == frame


def test_frames_split_anywhere_decode_in_order() -> None:
    stream = b"".join(encode_advanced(value) for value in [1, "two", [3], {"four": 4}])
    decoder = FrameDecoder()
    for byte in stream:
        decoder.feed(bytes([byte]))
    decoder.feed(b"")
    assert drain(decoder) == [1, "two", [3], {"four": 4}, CLOSED]


def test_a_frame_over_the_limit_is_reported_at_its_header_and_skipped() -> None:
    decoder = FrameDecoder(max_message_size=100)
    big = encode_advanced("x" * 200)
    decoder.feed(encode_advanced(1) + big[:50])
    assert decoder.next() == 1
    with pytest.raises(MessageTooLarge) as info:
        decoder.next()
    assert (info.value.size, info.value.limit) == (len(big) - 4, 100)
    decoder.feed(big[50:120])
    decoder.feed(big[120:] + encode_advanced("after"))
    assert drain(decoder) == ["after"]


def test_a_bad_payload_is_a_protocol_error_and_the_next_frame_decodes() -> None:
    decoder = FrameDecoder()
    decoder.feed(struct.pack(">I", 3) + b"\xff\x0fQ" + encode_advanced("next"))
    with pytest.raises(ProtocolError, match="unknown V8 tag 0x51"):
        decoder.next()
    assert decoder.next() == "next"


def test_end_of_file_inside_a_frame_is_a_protocol_error() -> None:
    decoder = FrameDecoder()
    decoder.feed(encode_advanced("abc")[:-1])
    decoder.feed(b"")
    with pytest.raises(ProtocolError, match="end of file inside a message"):
        decoder.next()
    assert decoder.next() is CLOSED


@given(st.lists(st.binary(min_size=1, max_size=12), max_size=8))
def test_frame_fuzz_values_or_protocol_errors_only(chunks: list[bytes]) -> None:
    decoder = FrameDecoder(max_message_size=64)
    for chunk in [*chunks, b""]:
        decoder.feed(chunk)
        drain(decoder)


# ------------------------------------------------------------------------- protocol


def pipe_end_open(read_end: int) -> bool:
    """Whether any copy of the pipe's write end is still open (no EOF on read_end)."""
    os.set_blocking(read_end, False)
    try:
        return os.read(read_end, 1) != b""
    except BlockingIOError:
        return True


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    yield r, w
    for fd in (r, w):
        with contextlib.suppress(OSError):
            os.close(fd)


def deliver(sender: NodeProtocol, receiver: NodeProtocol, *, drop_fds: bool = False) -> None:
    """Move what *sender* has to write into *receiver*, as the kernel would: each
    descriptor duplicated into the receiver (or dropped, as with MSG_CTRUNC)."""
    for write in sender.data_to_send():
        fds = [] if drop_fds else [os.dup(fd) for fd in write.fds]
        receiver.receive_data(write.data, fds)


def messages(protocol: NodeProtocol) -> list[Any]:
    out = []
    while True:
        message = protocol.next_message()
        if message is NEED_DATA or message is CLOSED:
            return out
        assert isinstance(message, Message)
        out.append(message)


@pytest.mark.parametrize("mode", ["json", "advanced"])
def test_plain_messages_and_internal_ones(mode: Any) -> None:
    a, b = NodeProtocol(mode), NodeProtocol(mode)
    for value in [1, {"cmd": "NODE_CLUSTER", "x": 1}, {"cmd": "NODE_"}, {"cmd": 5}, "end"]:
        a.send(value)
    deliver(a, b)
    assert [m.value for m in messages(b)] == [1, {"cmd": "NODE_"}, {"cmd": 5}, "end"]
    assert b.data_to_send() == []


def test_is_internal_is_node_s_rule() -> None:
    assert is_internal({"cmd": "NODE_X"})
    assert not is_internal({"cmd": "NODE_"})
    assert not is_internal({"cmd": "node_x"})
    assert not is_internal(["NODE_X"])
    assert not is_internal({"msg": {"cmd": "NODE_X"}})


@pytest.mark.parametrize("mode", ["json", "advanced"])
def test_handle_is_acked_and_later_messages_wait_for_the_ack(
    mode: Any, pipe: tuple[int, int]
) -> None:
    r, w = pipe
    a, b = NodeProtocol(mode), NodeProtocol(mode)
    ticket = a.send({"with": "fd"}, Handle(w, "net.Socket"))
    assert a.send("after") == 0 and a.outcome(0)  # plain messages have no outcome to wait for
    assert not a.outcome(ticket) and a.awaiting_answer
    (write,) = a.data_to_send()
    assert write.fds == (w,)
    assert a.data_to_send() == []  # "after" is held until the ACK
    b.receive_data(write.data, [os.dup(w)])
    (got,) = messages(b)
    assert got.value == {"with": "fd"} and got.handle_type == "net.Socket"
    assert got.fd is not None and os.path.sameopenfile(got.fd, w)
    os.close(got.fd)  # ours now
    deliver(b, a)  # the ACK
    assert a.outcome(ticket) and not a.awaiting_answer
    assert not pipe_end_open(r)  # the protocol closed its copy after the ACK
    deliver(a, b)
    assert [m.value for m in messages(b)] == ["after"]


def test_nack_retransmits_then_the_handle_is_refused(pipe: tuple[int, int]) -> None:
    r, w = pipe
    a, b = NodeProtocol(), NodeProtocol()
    ticket = a.send("h", Handle(w, "net.Socket"))
    a.send("queued")
    sent = 0
    while True:
        writes = a.data_to_send()
        handle_writes = [x for x in writes if x.fds]
        sent += len(handle_writes)
        for x in writes:
            b.receive_data(x.data, [])  # the descriptor never arrives
        if not handle_writes:
            break
        assert messages(b) == []
        (nack,) = b.data_to_send()
        assert json.loads(nack.data) == {"cmd": "NODE_HANDLE_NACK"}
        a.receive_data(nack.data)
    assert sent == 1 + MAX_HANDLE_RETRANSMISSIONS
    with pytest.raises(HandleRefused, match="refused 4 times"):
        a.outcome(ticket)
    assert not pipe_end_open(r)
    assert [m.value for m in messages(b)] == ["queued"]


def test_end_of_file_refuses_a_pending_handle_and_closes_unclaimed_fds(
    pipe: tuple[int, int],
) -> None:
    r, w = pipe
    a = NodeProtocol()
    ticket = a.send("h", Handle(os.dup(w), "net.Server"))
    a.receive_data(b"1\n", [w])  # a descriptor no NODE_HANDLE message claims
    a.receive_data(b"")
    with pytest.raises(HandleRefused, match="closed the channel"):
        a.outcome(ticket)
    assert [m.value for m in messages(a)] == [1]
    assert a.next_message() is CLOSED
    assert not pipe_end_open(r)


def test_close_closes_every_descriptor_it_owns(pipe: tuple[int, int]) -> None:
    r, w = pipe
    a, b = NodeProtocol("advanced"), NodeProtocol("advanced")
    a.send(1, Handle(os.dup(w), "net.Socket"))  # pending
    a.send(2, Handle(os.dup(w), "dgram.Socket", "udp4"))  # held
    b.receive_data(a.data_to_send()[0].data, [os.dup(w)])  # delivered, not taken
    b.receive_data(b"", [os.dup(w)])  # unclaimed at end of file
    os.close(w)
    a.close()
    b.close()
    assert not pipe_end_open(r)


def test_send_errors_leave_nothing_queued_and_the_fd_with_the_caller(
    pipe: tuple[int, int],
) -> None:
    _r, w = pipe
    a = NodeProtocol()
    with pytest.raises(ValueError):
        a.send(math.nan)
    with pytest.raises(TypeError):
        a.send(object(), Handle(w, "net.Socket"))
    with pytest.raises(TypeError, match="handle type"):
        a.send(1, Handle(w, "tty.Socket"))
    with pytest.raises(TypeError, match="udp4 or udp6"):
        a.send(1, Handle(w, "dgram.Socket"))
    assert a.data_to_send() == [] and not a.awaiting_answer
    assert os.fstat(w)  # still open: still the caller's


def test_a_handle_message_starts_its_own_write() -> None:
    a = NodeProtocol()
    r, w = os.pipe()
    try:
        a.send(1)
        a.send(2)
        a.send(3, Handle(w, "net.Socket"))
        writes = a.data_to_send()
        assert [x.fds for x in writes] == [(), (w,)]
        assert writes[0] == Write(b"1\n2\n")
    finally:
        a.close()
        os.close(r)


def test_unknown_handle_type_is_nacked_and_reported(pipe: tuple[int, int]) -> None:
    r, w = pipe
    b = NodeProtocol()
    b.receive_data(b'{"cmd":"NODE_HANDLE","type":"tty.TTY","msg":1}\n', [w])
    with pytest.raises(ProtocolError, match=r"unknown type 'tty\.TTY'"):
        b.next_message()
    assert [json.loads(x.data) for x in b.data_to_send()] == [{"cmd": "NODE_HANDLE_NACK"}]
    assert not pipe_end_open(r)


def test_advanced_internal_messages_use_v8_too() -> None:
    b = NodeProtocol("advanced")
    payload = serialize({"cmd": "NODE_HANDLE", "type": "net.Socket", "msg": None})
    b.receive_data(struct.pack(">I", len(payload)) + payload)
    (nack,) = b.data_to_send()
    assert nack.data == encode_advanced({"cmd": "NODE_HANDLE_NACK"})


def test_describe_handle() -> None:
    stream_a, stream_b = socket.socketpair()
    listener = socket.create_server(("127.0.0.1", 0))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    unix_dgram, unix_dgram2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    loose = socket.socket()
    with stream_a, stream_b, listener, udp, udp6, unix_dgram, unix_dgram2, loose:
        assert describe_handle(stream_a) == ("net.Socket", None)
        assert describe_handle(listener) == ("net.Server", None)
        assert describe_handle(udp) == ("dgram.Socket", "udp4")
        assert describe_handle(udp6) == ("dgram.Socket", "udp6")
        with pytest.raises(TypeError, match="UDP"):
            describe_handle(unix_dgram)
        with pytest.raises(TypeError, match="listening"):
            describe_handle(loose)


def test_node_s_retransmission_format_is_unwrapped_and_acked_once(pipe: tuple[int, int]) -> None:
    # What Node 20 writes when it retransmits a NACKed net.Socket (seen on the wire).
    _r, w = pipe
    first = {"cmd": "NODE_HANDLE", "type": "net.Socket", "msg": {"kind": "client"}}
    b = NodeProtocol()
    b.receive_data(encode_json({"cmd": "NODE_HANDLE", "type": "net.Native", "msg": first}), [w])
    (message,) = messages(b)
    assert message.value == {"kind": "client"} and message.handle_type == "net.Socket"
    assert message.fd == w
    assert [json.loads(x.data) for x in b.data_to_send()] == [{"cmd": "NODE_HANDLE_ACK"}]


@settings(max_examples=50, deadline=None)
@given(
    st.sampled_from(["json", "advanced"]),
    st.lists(st.tuples(st.integers(0, 1000), st.booleans()), max_size=12),
    st.data(),
)
def test_any_mix_of_handles_arrives_in_order_with_its_descriptors(
    mode: Any, plan: list[tuple[int, bool]], data: st.DataObject
) -> None:
    from support import open_fds

    before = open_fds()
    r, w = os.pipe()
    a, b = NodeProtocol(mode), NodeProtocol(mode)
    tickets = []
    for value, with_handle in plan:
        handle = Handle(os.dup(w), "net.Socket") if with_handle else None
        tickets.append(a.send(value, handle))
    got: list[Message] = []
    while True:
        writes = a.data_to_send()
        if not writes:
            break
        for write in writes:
            # The kernel may split a write anywhere; the descriptors come with its start.
            cut = data.draw(st.integers(0, len(write.data)))
            b.receive_data(write.data[:cut] or write.data, [os.dup(fd) for fd in write.fds])
            if cut and cut < len(write.data):
                b.receive_data(write.data[cut:])
        got += messages(b)
        for answer in b.data_to_send():
            a.receive_data(answer.data)
    assert [m.value for m in got] == [value for value, _ in plan]
    for message, (_, with_handle) in zip(got, plan, strict=True):
        assert (message.fd is not None) == with_handle
        if message.fd is not None:
            assert os.path.sameopenfile(message.fd, w)
            os.close(message.fd)
    assert all(a.outcome(ticket) for ticket in tickets) and not a.awaiting_answer
    a.close()
    b.close()
    os.close(r)
    os.close(w)
    assert open_fds() == before


def test_node_environment_round_trip() -> None:
    environ = {"PATH": "/bin", **node_environment(3, "advanced")}
    assert take_node_environment(environ) == (3, "advanced")
    assert environ == {"PATH": "/bin"}  # removed, as Node removes them
    assert take_node_environment({"NODE_CHANNEL_FD": "4"}) == (4, "json")


@pytest.mark.parametrize(
    ("environ", "match"),
    [
        ({}, "NODE_CHANNEL_FD is not set"),
        ({"NODE_CHANNEL_FD": "x"}, "not a descriptor number"),
        ({"NODE_CHANNEL_FD": "-1"}, "negative"),
        ({"NODE_CHANNEL_FD": "3", "NODE_CHANNEL_SERIALIZATION_MODE": "v8"}, "'json' or"),
    ],
)
def test_take_node_environment_errors(environ: dict[str, str], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        take_node_environment(environ)
    assert environ == {}
    with pytest.raises(ValueError, match="serialization"):
        node_environment(3, "v8")  # type: ignore[arg-type]


# ------------------------------------------------------- batch and fast-path equivalents


def batch(decoder: JsonLineDecoder | FrameDecoder) -> list[Any]:
    """``decoder.drain()`` with errors recorded as their classes, as drain() above does."""
    return [
        type(item) if isinstance(item, (ProtocolError, MessageTooLarge)) else item
        for item in decoder.drain()
    ]


def _json_stream_parts() -> st.SearchStrategy[list[bytes]]:
    line = st.one_of(
        json_values.map(encode_json),
        st.sampled_from([b"NaN\n", b"\n", b"{\n", b" 1 \n", b"\xff\n", b'"' + b"x" * 40 + b'"\n']),
    )
    return st.lists(line, max_size=6)


@given(_json_stream_parts(), st.data(), st.sampled_from([16, 64, 1 << 20]))
def test_json_drain_gives_what_next_gives_in_any_chunking(
    lines: list[bytes], data: st.DataObject, limit: int
) -> None:
    stream = b"".join(lines) + data.draw(st.binary(max_size=3))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    one, many = JsonLineDecoder(limit), JsonLineDecoder(limit)
    by_next: list[Any] = []
    by_batch: list[Any] = []
    chunks = [
        stream[start:end] for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True)
    ]
    for chunk in [*filter(None, chunks), b""]:  # b"" last: the end of file
        one.feed(chunk)
        many.feed(chunk)
        by_next += drain(one)
        by_batch += batch(many)
    assert by_batch == by_next
    assert by_batch[-1] is CLOSED


@given(st.lists(st.binary(max_size=12), max_size=6), st.data())
def test_frame_drain_gives_what_next_gives(chunks: list[bytes], data: st.DataObject) -> None:
    frames = [encode_advanced(v) for v in data.draw(st.lists(json_values, max_size=3))]
    stream = b"".join(frames + chunks)
    one, many = FrameDecoder(64), FrameDecoder(64)
    cut = data.draw(st.integers(0, len(stream)))
    by_next: list[Any] = []
    by_batch: list[Any] = []
    for chunk in [*filter(None, (stream[:cut], stream[cut:])), b""]:
        one.feed(chunk)
        many.feed(chunk)
        by_next += drain(one)
        by_batch += batch(many)
    assert by_batch == by_next


@pytest.mark.parametrize("mode", ["json", "advanced"])
def test_send_plain_hands_the_bytes_over_only_when_nothing_waits_before_them(
    mode: Any, pipe: tuple[int, int]
) -> None:
    _, w = pipe
    a, b = NodeProtocol(mode), NodeProtocol(mode)
    first = a.send_plain("first")
    assert first is not None and not a.has_output  # the caller writes it
    b.receive_data(first)
    ticket = a.send("h", Handle(w, "net.Socket"))
    assert a.send_plain("held") is None  # behind the handle, as send() holds it
    (write,) = a.data_to_send()
    b.receive_data(write.data, [os.dup(w)])
    assert b.has_output  # b's ACK is queued: b's own plain message must follow it
    assert b.send_plain("reply") is None
    deliver(b, a)
    assert a.outcome(ticket)
    deliver(a, b)
    got = messages(b)
    assert [m.value for m in got] == ["first", "h", "held"]
    for m in got:
        if m.fd is not None:
            os.close(m.fd)
    assert [m.value for m in messages(a)] == ["reply"]


def test_next_value_skips_the_wrapping_only_for_messages_without_a_descriptor(
    pipe: tuple[int, int],
) -> None:
    _, w = pipe
    a, b = NodeProtocol(), NodeProtocol()
    a.send({"plain": 1})
    deliver(a, b)
    deliver(b, a)
    a.send("with", Handle(w, "net.Socket"))
    a.send(["after"])
    deliver(a, b)
    assert b.next_value() == {"plain": 1}
    got = b.next_value()
    assert type(got) is Message and got.value == "with" and got.fd is not None
    os.close(got.fd)
    deliver(b, a)  # the ACK releases ["after"]
    deliver(a, b)
    assert b.next_message() == Message(["after"])
    assert b.next_value() is NEED_DATA
