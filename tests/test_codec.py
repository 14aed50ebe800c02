"""The sans-IO codec: framing, fd attribution and every decoding error, without sockets."""

from __future__ import annotations

import itertools
import os
import struct
import tracemalloc
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import is_open

from unix_socketpair import ChannelClosed, MessageTooLarge, ProtocolError, TooManyFds
from unix_socketpair._codec import NEED_DATA, StreamDecoder, encode, encode_many

HEADER = struct.Struct(">I")

# Descriptor numbers far above anything open: the decoder only passes them along
# in these tests, and closing one by mistake would be a harmless EBADF.
FAKE_FD = 1_000_000


def frame(*payloads: bytes) -> bytes:
    return b"".join(HEADER.pack(len(p)) + p for p in payloads)


def drain(decoder: StreamDecoder) -> Iterator[tuple[bytes, list[int]]]:
    while True:
        result = decoder.next_message_with_fds()
        if result is NEED_DATA:
            return
        assert isinstance(result, tuple)
        yield result


# -- encoding -----------------------------------------------------------------


def test_worked_example_from_the_protocol_document() -> None:
    assert b"".join(encode(b"hi")) == b"\x00\x00\x00\x02hi"
    assert b"".join(encode(b"")) == b"\x00\x00\x00\x00"
    batches = list(encode_many([b"hi", b"", bytearray(b"abc")]))
    assert b"".join(b"".join(bytes(x) for x in batch) for batch in batches) == (
        b"\x00\x00\x00\x02hi\x00\x00\x00\x00\x00\x00\x00\x03abc"
    )


def test_large_payload_is_not_copied() -> None:
    payload = b"x" * (1 << 20)
    header, body = encode(payload)
    assert header == HEADER.pack(1 << 20)
    assert body is payload
    (batch,) = list(encode_many([b"small", payload]))
    assert batch[1] is payload
    assert batch[0] == frame(b"small") + HEADER.pack(1 << 20)


def test_bytes_likes_are_accepted_by_content() -> None:
    import array

    ints = array.array("i", [1, 2])
    assert b"".join(bytes(b) for b in encode(ints)) == HEADER.pack(8) + ints.tobytes()
    assert b"".join(encode(memoryview(b"abcdef")[1:3])) == frame(b"bc")


@pytest.mark.parametrize("bad", ["text", 42, None, [b"a"], object()])
def test_non_bytes_like_is_a_type_error(bad: object) -> None:
    with pytest.raises(TypeError, match="bytes-like"):
        encode(bad)
    with pytest.raises(TypeError, match="bytes-like"):
        list(encode_many([b"ok", bad]))


def test_bad_item_in_a_list_raises_before_any_batch() -> None:
    batches = encode_many([b"x" * 100_000] * 8 + ["bad"])
    with pytest.raises(TypeError):
        next(batches)


def test_over_the_limit_is_refused_when_encoding() -> None:
    with pytest.raises(MessageTooLarge) as info:
        encode(b"x" * 11, max_message_size=10)
    assert (info.value.size, info.value.limit) == (11, 10)
    assert "11" in str(info.value) and "10" in str(info.value)
    with pytest.raises(MessageTooLarge):
        list(encode_many([b"x" * 11], max_message_size=10))


def test_many_small_messages_are_coalesced_into_few_buffers() -> None:
    batches = list(encode_many([b"m" * 60] * 10_000))
    assert 1 < len(batches) <= 4  # about 256 KiB each
    assert b"".join(b"".join(b) for b in batches) == frame(*[b"m" * 60] * 10_000)


# -- decoding -----------------------------------------------------------------


def test_one_byte_at_a_time() -> None:
    payloads = [b"", b"a", b"hello world", bytes(range(256)) * 300]
    decoder = StreamDecoder()
    out = []
    for byte in frame(*payloads):
        decoder.receive_data(bytes([byte]))
        out.extend(p for p, _ in drain(decoder))
    assert out == payloads
    decoder.receive_data(b"")
    with pytest.raises(ChannelClosed):
        decoder.next_message()


def test_iter_ready_matches_next_message_and_stops_losslessly() -> None:
    payloads = [b"%d" % i for i in range(1000)] + [b"tail" * 1000]
    decoder = StreamDecoder()
    data = frame(*payloads)
    decoder.receive_data(data[:-10])
    got = []
    for message in decoder.iter_ready():
        got.append(message)
        if len(got) == 500:
            break
    assert decoder.next_message() == payloads[500]  # nothing lost by stopping early
    got.append(payloads[500])
    got.extend(decoder.iter_ready())
    assert got == payloads[:-1]
    decoder.receive_data(data[-10:])
    assert list(decoder.iter_ready()) == payloads[-1:]


@settings(max_examples=150, deadline=None)
@given(
    payloads=st.lists(st.binary(max_size=300), max_size=60),
    cuts=st.lists(st.integers(min_value=1, max_value=400), min_size=1, max_size=30),
    stop_after=st.integers(min_value=0, max_value=60),
)
def test_iter_messages_reads_through_fill_until_end_of_file(
    payloads: list[bytes], cuts: list[int], stop_after: int
) -> None:
    """Any split of the stream, any point to stop at: the messages come out
    whole and in order, stopping loses nothing, end of file just ends."""
    data = frame(*payloads)
    pieces = []
    pos = 0
    for cut in itertools.cycle(cuts):
        if pos >= len(data):
            break
        pieces.append(data[pos : pos + cut])
        pos += cut
    pieces.append(b"")  # end of file
    feed = iter(pieces)
    decoder = StreamDecoder()
    calls = []

    def fill() -> None:
        piece = next(feed)
        calls.append(len(piece))
        decoder.receive_data(piece)

    got = []
    for message in decoder.iter_messages(fill):
        got.append(message)
        if len(got) == stop_after:
            break
    got.extend(decoder.iter_messages(fill))  # a second iteration goes on from there
    assert got == payloads
    assert calls == [len(p) for p in pieces]  # fill only when no whole message was in
    with pytest.raises(ChannelClosed):
        decoder.next_message()


def test_iter_messages_raises_what_broken_framing_and_fill_raise() -> None:
    decoder = StreamDecoder()
    feed = iter([frame(b"ok") + HEADER.pack(10) + b"abc", b""])
    messages = decoder.iter_messages(lambda: decoder.receive_data(next(feed)))
    assert next(messages) == b"ok"
    with pytest.raises(ProtocolError, match="3 of its 10 payload"):
        next(messages)

    def failing() -> None:
        raise ConnectionError("the read failed")

    with pytest.raises(ConnectionError, match="the read failed"):
        next(StreamDecoder().iter_messages(failing))


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"\x00\x00", ["header", "2 of its 4"]),
        (HEADER.pack(10) + b"abc", ["3 of its 10 payload"]),
    ],
)
def test_eof_inside_a_message(data: bytes, words: list[str]) -> None:
    decoder = StreamDecoder()
    decoder.receive_data(data)
    assert decoder.next_message() is NEED_DATA
    decoder.receive_data(b"")
    with pytest.raises(ProtocolError) as info:
        decoder.next_message()
    for word in words:
        assert word in str(info.value)
    assert "unusable" in str(info.value)
    with pytest.raises(ProtocolError, match="unusable"):
        decoder.next_message()


def test_declared_length_over_the_limit() -> None:
    decoder = StreamDecoder(max_message_size=100)
    decoder.receive_data(frame(b"ok") + HEADER.pack(101))
    assert decoder.next_message() == b"ok"
    with pytest.raises(ProtocolError) as info:
        decoder.next_message()
    assert "101" in str(info.value) and "100" in str(info.value)
    with pytest.raises(ProtocolError):
        decoder.next_size()


def test_an_absurd_declared_length_never_allocates() -> None:
    decoder = StreamDecoder()
    tracemalloc.start()
    try:
        decoder.receive_data(HEADER.pack(0xFFFFFFFF))
        with pytest.raises(ProtocolError, match="4294967295"):
            decoder.next_message()
        # Within the limit but mostly missing: memory follows what arrived.
        decoder = StreamDecoder()
        decoder.receive_data(HEADER.pack(60 * 1024 * 1024) + b"x" * 10)
        assert decoder.next_message() is NEED_DATA
        decoder.get_buffer()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024 * 1024


def test_fds_go_to_the_last_message_starting_in_their_chunk() -> None:
    decoder = StreamDecoder()
    # Linux: a read may hold earlier plain messages, then the fd message's start.
    decoder.receive_data(frame(b"a", b"b") + frame(b"with")[:3], [FAKE_FD])
    decoder.receive_data(frame(b"with")[3:] + frame(b"after"))
    assert list(drain(decoder)) == [(b"a", []), (b"b", []), (b"with", [FAKE_FD]), (b"after", [])]


def _pipe_fds() -> list[int]:
    r, w = os.pipe()
    return [r, w]


def test_fds_inside_a_payload_are_an_error_and_are_closed(no_fd_leak: None) -> None:
    decoder = StreamDecoder()
    data = frame(b"x" * 100)
    decoder.receive_data(data[:50])
    fds = _pipe_fds()
    decoder.receive_data(data[50:60], fds)
    decoder.receive_data(data[60:])
    with pytest.raises(ProtocolError, match="inside the message"):
        decoder.next_message()
    assert not any(is_open(fd) for fd in fds)


def test_too_many_fds_are_closed(no_fd_leak: None) -> None:
    """Closed on arrival; refused (TooManyFds) by the call that takes their
    message, after the messages before it; the decoder is unusable from then on."""
    decoder = StreamDecoder(max_fds=1)
    fds = _pipe_fds()
    decoder.receive_data(frame(b"before"))
    decoder.receive_data(frame(b"x"), fds)
    assert not any(is_open(fd) for fd in fds)
    assert decoder.next_message() == b"before"
    with pytest.raises(TooManyFds) as info:
        decoder.next_message()
    assert (info.value.count, info.value.limit) == (2, 1)
    with pytest.raises(ProtocolError):
        decoder.next_message()


def test_next_message_closes_fds_and_close_closes_queued_ones(no_fd_leak: None) -> None:
    decoder = StreamDecoder()
    first, second = _pipe_fds(), _pipe_fds()
    decoder.receive_data(frame(b"one"), first)
    decoder.receive_data(frame(b"two"), second)
    assert decoder.next_message() == b"one"
    assert not any(is_open(fd) for fd in first)
    assert all(is_open(fd) for fd in second)
    decoder.close()
    assert not any(is_open(fd) for fd in second)


def test_recv_into_protocol_keeps_an_oversized_message_queued() -> None:
    decoder = StreamDecoder()
    decoder.receive_data(frame(b"0123456789"))
    assert decoder.next_size() == 10
    target = memoryview(bytearray(10))
    assert decoder.read_into(target) == (10, 10)
    assert bytes(target) == b"0123456789"
    assert decoder.take_fds_for_buffered(10) == []
    assert decoder.next_size() is NEED_DATA


def test_direct_read_of_a_large_payload() -> None:
    decoder = StreamDecoder()
    payload = bytes(range(256)) * 1000
    data = frame(payload)
    decoder.receive_data(data[:1000], [FAKE_FD])
    target = memoryview(bytearray(len(payload)))
    size, copied = decoder.read_into(target)
    assert (size, copied) == (len(payload), 996)
    target[copied:] = data[1000:]
    assert decoder.direct_updated(len(data) - 1000) == [FAKE_FD]
    assert bytes(target) == payload


# -- properties ---------------------------------------------------------------

messages_strategy = st.lists(
    st.tuples(st.binary(max_size=300), st.booleans()),
    max_size=30,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages=messages_strategy, cuts=st.lists(st.integers(min_value=0), max_size=40))
def test_any_split_round_trips(messages: list[tuple[bytes, bool]], cuts: list[int]) -> None:
    """Arbitrary messages, some with fds, cut at arbitrary byte boundaries as
    Linux may deliver them (a chunk with fds holds their message's start and
    no later message start) come out whole, each with its own fds."""
    data = frame(*(payload for payload, _ in messages))
    starts = []
    position = 0
    for payload, _ in messages:
        starts.append(position)
        position += 4 + len(payload)
    points = {c % (len(data) + 1) for c in cuts}
    for (payload, has_fds), start in zip(messages, starts, strict=False):
        if has_fds:
            points.add(start + 4 + len(payload))  # the kernel stops after the fd buffer
    bounds = sorted(points | {0, len(data)})
    decoder = StreamDecoder()
    fd_of = {start: FAKE_FD + i for i, start in enumerate(starts) if messages[i][1]}
    out: list[tuple[bytes, list[int]]] = []
    for lo, hi in itertools.pairwise(bounds):
        if lo == hi:
            continue
        fds = [fd_of[s] for s in starts if lo <= s < hi and s in fd_of]
        decoder.receive_data(data[lo:hi], fds)
        out.extend(drain(decoder))
    expected = [
        (payload, [fd_of[start]] if has_fds else [])
        for (payload, has_fds), start in zip(messages, starts, strict=False)
    ]
    assert out == expected
    decoder.receive_data(b"")
    with pytest.raises(ChannelClosed):
        decoder.next_message()


@settings(max_examples=500, deadline=None)
@given(
    data=st.binary(max_size=200),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=10),
    eof=st.booleans(),
)
def test_any_bytes_give_messages_need_data_or_protocol_error(
    data: bytes, cuts: list[int], eof: bool
) -> None:
    """The h11 fuzz invariant: arbitrary input either parses or raises
    ProtocolError (ChannelClosed at a clean end); nothing else, ever."""
    decoder = StreamDecoder(max_message_size=64)
    bounds = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    try:
        for lo, hi in itertools.pairwise(bounds):
            if lo < hi:
                decoder.receive_data(data[lo:hi])
            while True:
                message = decoder.next_message()
                if message is NEED_DATA:
                    break
                assert isinstance(message, bytes) and len(message) <= 64
        if eof:
            decoder.receive_data(b"")
            while decoder.next_message() is not NEED_DATA:
                pass
    except (ProtocolError, ChannelClosed):
        pass


def test_next_size_raises_once_the_rest_can_never_come() -> None:
    decoder = StreamDecoder()
    decoder.receive_data(HEADER.pack(100) + b"x" * 10)
    assert decoder.next_size() == 100
    decoder.receive_data(b"")
    with pytest.raises(ProtocolError, match="10 of its 100 payload bytes"):
        decoder.next_size()


def test_a_large_message_buffer_is_reserved_whole_up_to_the_reserve_limit() -> None:
    """Once a large message's header is in, its buffer holds all of it at once (an
    anonymous mapping: pages cost memory only as bytes arrive), so it is never
    copied from buffer to buffer; above 256 MiB it grows with what arrives."""
    mib = 1024 * 1024
    for declared, most in [(16 * mib, 15 * mib), (300 * mib, 2 * mib)]:
        decoder = StreamDecoder(max_message_size=1024 * mib)
        decoder.receive_data(HEADER.pack(declared) + b"x" * mib)
        room = len(decoder.get_buffer())
        if declared <= 256 * mib:
            assert room == declared - mib  # exactly the rest: reserved whole
        else:
            assert 0 < room <= most
        decoder.close()
