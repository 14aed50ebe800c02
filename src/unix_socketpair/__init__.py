"""unix-socketpair: the real POSIX ``socketpair()`` for Python.

Public surface only; the implementation lives in private modules.
"""

from typing import TYPE_CHECKING

from ._ancillary import Credentials
from ._channel import Channel
from ._errors import (
    ChannelClosed,
    ChannelError,
    FdError,
    FdsTruncated,
    HandleRefused,
    MessageTooLarge,
    ProtocolError,
    TooManyFds,
)
from ._framing import ACCELERATED
from ._nodechannel import NodeChannel
from ._pair import SOCK_DGRAM, SOCK_SEQPACKET, SOCK_STREAM, socketpair
from ._spawn import AsyncChild, Child, spawn, spawn_async
from ._version import __version__

if TYPE_CHECKING:
    from ._aio import AsyncChannel
    from ._aionode import AsyncNodeChannel


def __getattr__(name: str) -> object:
    # AsyncChannel is imported on first use, so that `import unix_socketpair` (and the
    # command-line tool) does not pay for importing asyncio (~0.1 s) unless it is used.
    if name == "AsyncChannel":
        from ._aio import AsyncChannel

        globals()[name] = AsyncChannel  # later look-ups find it directly
        return AsyncChannel
    if name == "AsyncNodeChannel":
        from ._aionode import AsyncNodeChannel

        globals()[name] = AsyncNodeChannel
        return AsyncNodeChannel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "ACCELERATED",
    "SOCK_DGRAM",
    "SOCK_SEQPACKET",
    "SOCK_STREAM",
    "AsyncChannel",
    "AsyncChild",
    "AsyncNodeChannel",
    "Channel",
    "ChannelClosed",
    "ChannelError",
    "Child",
    "Credentials",
    "FdError",
    "FdsTruncated",
    "HandleRefused",
    "MessageTooLarge",
    "NodeChannel",
    "ProtocolError",
    "TooManyFds",
    "__version__",
    "socketpair",
    "spawn",
    "spawn_async",
]
