"""echo_peer.py: echo every message back, with the file descriptors it came with.

    SOCKETPAIR_FD=3 python examples/echo_peer.py     (or spawn([...], fd=3) from Python)

``Channel.from_env()`` adopts the socket named by SOCKETPAIR_FD (a number, or
"stdio"); the framing is the one in docs/protocol.md, so this child is
interchangeable with echo_peer.c. Exits when the peer closes its end.
"""

from __future__ import annotations

import os

from unix_socketpair import Channel, ChannelClosed


def main() -> None:
    with Channel.from_env() as channel:
        while True:
            try:
                message, fds = channel.recv_with_fds()
            except ChannelClosed:
                return
            channel.send(message, fds=fds)
            for fd in fds:  # the peer has its own copies now
                os.close(fd)


if __name__ == "__main__":
    main()
