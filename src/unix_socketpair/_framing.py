"""The framing hot loops, in one place: split a buffer into frames, join messages into frames.

These two functions are the whole per-message cost of batched sending and receiving
(``send_many``, ``recv_many``, iteration); everything else is per system call. They
are pure functions over buffers, with no state and no I/O, so that an optional C
implementation can replace them with exactly the same contract.

Wire format: each frame is a 4-byte unsigned big-endian length, then that many
payload bytes (``docs/protocol.md``).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing_extensions import Buffer
else:
    Buffer = bytes | bytearray | memoryview

__all__ = ["join_frames", "split_frames"]

_HEADER = struct.Struct(">I")


def split_frames(
    buf: Buffer, pos: int, end: int, limit: int, max_count: int
) -> tuple[list[bytes], int]:
    """The payloads of the whole frames in ``buf[pos:end]``, and where they stop.

    Returns ``(payloads, next_pos)``: each payload a new ``bytes``; *next_pos* the
    offset of the first byte not consumed. Stops before the first frame that is
    not whole, before a header that declares more than *limit* bytes (*next_pos*
    is then that header's offset and the caller decides what that means), or
    after *max_count* payloads. Never raises for the contents of *buf*.

    Requires ``0 <= pos <= end <= len(buf)`` and ``max_count >= 0``.
    """
    view = memoryview(buf)
    unpack_from = _HEADER.unpack_from
    out: list[bytes] = []
    append = out.append
    while len(out) < max_count and end - pos >= 4:
        size = unpack_from(view, pos)[0]
        stop = pos + 4 + size
        if size > limit or stop > end:
            break
        append(view[pos + 4 : stop].tobytes())
        pos = stop
    return out, pos


def join_frames(messages: list[bytes]) -> bytes:
    """Frame every message of *messages* (a list of ``bytes``) into one buffer.

    The caller has checked the types and the sizes (each at most 0xFFFFFFFF).
    """
    pack = _HEADER.pack
    parts: list[bytes] = [b""] * (2 * len(messages))
    parts[0::2] = [pack(len(m)) for m in messages]
    parts[1::2] = messages
    return b"".join(parts)
