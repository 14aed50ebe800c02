"""unix-socketpair: the real POSIX ``socketpair()`` for Python.

Public surface only; the implementation lives in private modules.
"""

from ._aio import AsyncChannel
from ._ancillary import Credentials
from ._channel import Channel
from ._errors import (
    ChannelClosed,
    ChannelError,
    FdError,
    FdsTruncated,
    MessageTooLarge,
    ProtocolError,
    TooManyFds,
)
from ._pair import SOCK_DGRAM, SOCK_SEQPACKET, SOCK_STREAM, socketpair
from ._spawn import AsyncChild, Child, spawn, spawn_async
from ._version import __version__

__all__ = [
    "SOCK_DGRAM",
    "SOCK_SEQPACKET",
    "SOCK_STREAM",
    "AsyncChannel",
    "AsyncChild",
    "Channel",
    "ChannelClosed",
    "ChannelError",
    "Child",
    "Credentials",
    "FdError",
    "FdsTruncated",
    "MessageTooLarge",
    "ProtocolError",
    "TooManyFds",
    "__version__",
    "socketpair",
    "spawn",
    "spawn_async",
]
