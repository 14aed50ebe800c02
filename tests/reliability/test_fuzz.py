"""Point 9: fuzzing the codec. Arbitrary byte streams, cut at arbitrary places, fed
through every input path of the decoder and drained through every output path: it
returns messages, asks for more (``NEED_DATA``), or raises ``ProtocolError`` (and
``ChannelClosed`` once end of file was fed, ``TooManyFds`` once more descriptors than
allowed were) -- nothing else, ever. And the messages it returns are exactly those a
ten-line reference parser finds in the same bytes, whatever the cuts.

Size: ``USP_FUZZ_EXAMPLES`` examples per property (default 300, 5,000 under
``USP_FULL=1``). atheris is not used: it is not installable here without a compiler
toolchain for libFuzzer, and hypothesis already drives the decoder's state machine.
"""

from __future__ import annotations

import itertools
import os
import struct
from dataclasses import dataclass

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from support import open_fds

from unix_socketpair import ChannelClosed, ProtocolError, TooManyFds
from unix_socketpair._codec import NEED_DATA, StreamDecoder, encode, encode_many

from ._helpers import figure, knob

EXAMPLES = knob("USP_FUZZ_EXAMPLES", 300, 5000)
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


RAN = {"examples": 0, "messages": 0}


@dataclass
class Reference:
    """What a correct decoder makes of *stream*: its messages, then how it ends."""

    messages: list[bytes]
    end: str  # "need-data", "closed", "protocol"


def reference(stream: bytes, limit: int, eof: bool) -> Reference:
    messages = []
    pos = 0
    while len(stream) - pos >= 4:
        (size,) = struct.unpack_from(">I", stream, pos)
        if size > limit:
            return Reference(messages, "protocol")
        if len(stream) - pos - 4 < size:
            break
        messages.append(stream[pos + 4 : pos + 4 + size])
        pos += 4 + size
    if not eof:
        return Reference(messages, "need-data")
    return Reference(messages, "closed" if pos == len(stream) else "protocol")


def cuts(stream: bytes, points: list[int]) -> list[bytes]:
    edges = sorted({0, len(stream), *(p % (len(stream) + 1) for p in points)})
    return [stream[a:b] for a, b in itertools.pairwise(edges)]


# Streams that look like framing often enough to get past the first header: small
# declared lengths, valid frames, and raw garbage, glued together.
small_frame = st.binary(max_size=64).map(lambda b: struct.pack(">I", len(b)) + b)
header = st.integers(0, 0xFFFFFFFF).map(lambda n: struct.pack(">I", n))
streams = st.lists(
    st.one_of(small_frame, small_frame, small_frame, header, st.binary(max_size=40)),
    max_size=12,
).map(b"".join)
# Small limits only: the decoder sets aside room for a declared length as soon as the
# header is in (up to the limit), so random headers under a 4 GiB limit would make each
# example zero-fill gigabytes. The limit logic is the same at every size.
limits = st.sampled_from([0, 1, 16, 100, 1 << 16, 1 << 20])


def drain(decoder: StreamDecoder, out: list[bytes], mode: str) -> object:
    """Take messages until NEED_DATA; return NEED_DATA or the exception raised."""
    try:
        while True:
            if mode == "next_message":
                msg = decoder.next_message()
            elif mode == "with_fds":
                result = decoder.next_message_with_fds()
                if result is NEED_DATA:
                    return NEED_DATA
                msg, fds = result  # type: ignore[misc]
                for fd in fds:
                    os.close(fd)
            else:
                msg = _read_buffered(decoder)
            if msg is NEED_DATA:
                return NEED_DATA
            assert isinstance(msg, bytes), f"the decoder returned {msg!r}"
            out.append(msg)
    except (ProtocolError, ChannelClosed, TooManyFds) as exc:
        return exc


def _read_buffered(decoder: StreamDecoder) -> object:
    """next_size() + read_into(), the recv_into path, for messages fully buffered."""
    size = decoder.next_size()
    if size is NEED_DATA:
        return NEED_DATA
    assert isinstance(size, int)
    if decoder.buffered() < 4 + size:
        return NEED_DATA
    target = bytearray(size)
    got, copied = decoder.read_into(memoryview(target))
    assert (got, copied) == (size, size)
    for fd in decoder.take_fds_for_buffered(size):
        os.close(fd)
    return bytes(target)


def feed(decoder: StreamDecoder, piece: bytes, path: str) -> None:
    if path == "receive_data":
        decoder.receive_data(piece)
        return
    done = 0
    while done < len(piece):
        space = decoder.get_buffer()
        assert len(space) > 0
        n = min(len(space), len(piece) - done)
        space[:n] = piece[done : done + n]
        decoder.buffer_updated(n)
        done += n


def run(stream: bytes, points: list[int], limit: int, eof: bool, path: str, mode: str) -> None:
    expected = reference(stream, limit, eof)
    RAN["examples"] += 1
    RAN["messages"] += len(expected.messages)
    decoder = StreamDecoder(limit)
    got: list[bytes] = []
    outcome: object = NEED_DATA
    pieces = cuts(stream, points) + ([b""] if eof else [])
    try:
        for piece in pieces:
            if piece == b"":
                decoder.receive_data(b"") if path == "receive_data" else decoder.buffer_updated(0)
            else:
                feed(decoder, piece, path)
            outcome = drain(decoder, got, mode)
            if outcome is not NEED_DATA:
                break
    except ProtocolError as exc:  # raised while feeding (data after end of file)
        outcome = exc
    try:
        assert got == expected.messages
        if expected.end == "need-data":
            assert outcome is NEED_DATA
        elif expected.end == "closed":
            assert isinstance(outcome, ChannelClosed), repr(outcome)
        else:
            assert isinstance(outcome, ProtocolError), repr(outcome)
            # Once broken, always broken: the next call says so again.
            assert isinstance(drain(decoder, [], mode), ProtocolError)
    finally:
        decoder.close()


@FUZZ
@given(
    stream=streams,
    points=st.lists(st.integers(0, 1000), max_size=20),
    limit=limits,
    eof=st.booleans(),
    path=st.sampled_from(["receive_data", "get_buffer"]),
    mode=st.sampled_from(["next_message", "with_fds"]),
)
def test_arbitrary_streams_arbitrary_cuts(
    stream: bytes, points: list[int], limit: int, eof: bool, path: str, mode: str
) -> None:
    run(stream, points, limit, eof, path, mode)


@FUZZ
@given(
    stream=streams,
    points=st.lists(st.integers(0, 1000), max_size=20),
    limit=limits,
    path=st.sampled_from(["receive_data", "get_buffer"]),
)
def test_arbitrary_streams_through_the_recv_into_path(
    stream: bytes, points: list[int], limit: int, path: str
) -> None:
    """``next_size()`` + ``read_into()``, as ``recv_into`` uses them, without end of file."""
    run(stream, points, limit, False, path, "read_into")


@FUZZ
@example(stream=b"\x00\x00\x00\x01", points=[], limit=1, path="receive_data")
@given(
    stream=streams,
    points=st.lists(st.integers(0, 1000), max_size=20),
    limit=limits,
    path=st.sampled_from(["receive_data", "get_buffer"]),
)
def test_arbitrary_streams_through_the_recv_into_path_then_eof(
    stream: bytes, points: list[int], limit: int, path: str
) -> None:
    """After end of file the decoder never asks for more: ``next_size()`` once returned
    a size here, and ``recv_into`` read again forever (the example above)."""
    run(stream, points, limit, True, path, "read_into")


@FUZZ
@given(stream=st.binary(max_size=300), limit=limits, eof=st.booleans())
def test_raw_bytes_one_at_a_time(stream: bytes, limit: int, eof: bool) -> None:
    run(stream, list(range(len(stream))), limit, eof, "receive_data", "next_message")


@FUZZ
@given(
    messages=st.lists(st.binary(max_size=20_000), max_size=20),
    points=st.lists(st.integers(0, 1 << 20), max_size=30),
    many=st.booleans(),
)
def test_what_the_encoder_writes_comes_back(
    messages: list[bytes], points: list[int], many: bool
) -> None:
    if many:
        stream = b"".join(bytes(b) for batch in encode_many(messages) for b in batch)
    else:
        stream = b"".join(bytes(b) for m in messages for b in encode(m))
    decoder = StreamDecoder()
    got: list[bytes] = []
    for piece in [*cuts(stream, points), b""]:
        decoder.receive_data(piece)
        outcome = drain(decoder, got, "next_message")
    decoder.close()
    assert got == messages
    assert isinstance(outcome, ChannelClosed)


@FUZZ
@given(
    stream=streams,
    points=st.lists(st.integers(0, 1000), max_size=8),
    fd_counts=st.lists(st.integers(0, 6), max_size=8),
    max_fds=st.integers(0, 4),
    eof=st.booleans(),
    mode=st.sampled_from(["next_message", "with_fds", "read_into"]),
)
def test_descriptors_anywhere_are_returned_or_closed(
    stream: bytes,
    points: list[int],
    fd_counts: list[int],
    max_fds: int,
    eof: bool,
    mode: str,
) -> None:
    """Real descriptors attached to arbitrary chunks: whatever the outcome, every one is
    handed to the caller (who closes it here) or closed by the decoder."""
    before = open_fds()
    decoder = StreamDecoder(1 << 16, max_fds)
    got: list[bytes] = []
    pieces = cuts(stream, points)
    try:
        for i, piece in enumerate(pieces):
            count = fd_counts[i] if i < len(fd_counts) else 0
            fds = [os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC) for _ in range(count)]
            try:
                decoder.receive_data(piece, fds)
            except (ProtocolError, TooManyFds):
                break
            if drain(decoder, got, mode) is not NEED_DATA:
                break
        else:
            if eof:
                decoder.receive_data(b"")
                drain(decoder, got, mode)
    finally:
        decoder.close()
    assert open_fds() == before


def test_figure() -> None:
    """Runs last in this module: how much the properties above exercised."""
    figure(
        "fuzz",
        f"{EXAMPLES} examples per property; {RAN['examples']} reference-checked streams "
        f"decoding to {RAN['messages']} messages",
    )
    assert RAN["examples"] > 0
