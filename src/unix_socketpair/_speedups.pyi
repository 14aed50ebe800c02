# The C implementation of the framing loops (optional; see _framing.py for the contract).
from typing import Any

from typing_extensions import Buffer

def split_frames(
    buf: Buffer, pos: int, end: int, limit: int, max_count: int, /
) -> tuple[list[bytes], int]: ...
def join_frames(messages: list[bytes] | tuple[bytes, ...], /) -> bytes: ...
def take_frame(decoder: Any, lock: Any, record: list[bytes], /) -> bytes | None: ...
