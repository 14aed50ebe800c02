"""The message channel's exception hierarchy, in one place.

Every class derives from :class:`ChannelError` *and* from the built-in that
fits, so callers can catch either the specific class, the channel's base, or
the built-in they already handle (``EOFError``, ``ValueError``, ``OSError``).

=======================  ==========================================================
``ChannelClosed``        clean end-of-file at a message boundary (``EOFError``)
``ProtocolError``        the peer broke the framing; the channel is unusable
                         (``ValueError``)
``MessageTooLarge``      a message does not fit: the caller's buffer, the
                         channel's ``max_message_size`` or the socket's packet
                         limit (``ValueError``)
``FdError``              descriptors could not be delivered whole; every one
                         that did arrive was closed (``OSError``)
``TooManyFds``           more descriptors than ``max_fds`` (``FdError``)
``FdsTruncated``         the kernel truncated the control data (``MSG_CTRUNC``)
``HandleRefused``        a Node IPC peer did not take a handle (``FdError``)
=======================  ==========================================================
"""

from __future__ import annotations

__all__ = [
    "ChannelClosed",
    "ChannelError",
    "FdError",
    "FdsTruncated",
    "HandleRefused",
    "MessageTooLarge",
    "ProtocolError",
    "TooManyFds",
]


class ChannelError(Exception):
    """Base class of every error the message channel raises itself.

    System-call failures the channel merely passes on (``BrokenPipeError``,
    ``ConnectionResetError``, ...) keep their usual ``OSError`` classes.
    """


class ChannelClosed(ChannelError, EOFError):
    """The peer closed its end (or shut down writing) at a message boundary.

    Raised by ``recv*()``; iteration simply ends instead. Nothing was lost: every
    message sent before the end of file has been delivered.
    """


class ProtocolError(ChannelError, ValueError):
    """The peer broke the framing: end of file inside a message, a declared
    length over ``max_message_size``, or descriptors that do not sit at the
    start of a message.

    The message names the byte counts. Once raised, the channel is *broken*:
    every later ``recv*()`` raises ``ProtocolError`` again (the stream position
    is lost), and any descriptors that were queued have been closed.
    """


class MessageTooLarge(ChannelError, ValueError):
    """A message is larger than what can hold or carry it.

    Attributes:
        size: the message's size in bytes (the buffer size needed).
        limit: the size that was exceeded (the caller's buffer, the channel's
            ``max_message_size``, or the socket's packet limit).

    Raised by ``recv_into()`` when the caller's buffer is too small: the message
    (and its descriptors) stays queued, so retry with a buffer of ``size``
    bytes. Raised by ``send()`` before anything is sent when a message is over
    ``max_message_size`` or, on ``SOCK_SEQPACKET``/``SOCK_DGRAM``, over what one
    packet can carry (``EMSGSIZE``).
    """

    def __init__(self, message: str, *, size: int, limit: int) -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit


class FdError(ChannelError, OSError):
    """File descriptors passed with a message could not be delivered whole.

    Every descriptor that did arrive has already been closed; none leaks.
    The channel is broken afterwards (see :class:`ProtocolError`) because the
    message they belonged to can no longer be delivered as sent.
    """


class TooManyFds(FdError):
    """More descriptors than the channel's ``max_fds`` (on send: before anything
    is sent; on receive: the peer sent more, and all of them were closed).

    Attributes:
        count: how many descriptors were sent or arrived.
        limit: the channel's ``max_fds``.
    """

    def __init__(self, message: str, *, count: int, limit: int) -> None:
        super().__init__(message)
        self.count = count
        self.limit = limit


class FdsTruncated(FdError):
    """The kernel truncated the control data (``MSG_CTRUNC``): some descriptors
    were dropped by the kernel; the ones that did arrive have been closed."""


class HandleRefused(FdError):
    """A Node IPC peer did not take a handle: it answered ``NODE_HANDLE_NACK`` to
    every retransmission, or closed the channel before answering. The message that
    carried the handle was not delivered (messages sent after it were); the
    duplicate that was to travel is closed, the caller's socket is untouched."""
