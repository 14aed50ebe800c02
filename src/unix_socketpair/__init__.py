"""unix-socketpair: the real POSIX ``socketpair()`` for Python.

Public surface only; the implementation lives in private modules.
"""

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
    "Channel",
    "ChannelClosed",
    "ChannelError",
    "Credentials",
    "FdError",
    "FdsTruncated",
    "MessageTooLarge",
    "ProtocolError",
    "SOCK_DGRAM",
    "SOCK_SEQPACKET",
    "SOCK_STREAM",
    "AsyncChild",
    "Child",
    "__version__",
    "socketpair",
    "spawn",
    "spawn_async",
]
