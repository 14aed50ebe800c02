"""child_upper.py: a Python child that answers every message with it in upper case.

    spawn([sys.executable, "examples/child_upper.py"], fd=3)   (README: "Spawning a child")

spawn() put our end of the socketpair at the descriptor named by SOCKETPAIR_FD (a number, or
"stdio"); ``Channel.from_env()`` finds it there and speaks the parent's framing (a 4-byte
big-endian length, then the bytes), so the C and Node.js children next to this one are
interchangeable with it.
"""

from __future__ import annotations

from unix_socketpair import Channel


def main() -> None:
    with Channel.from_env() as channel:
        for message in channel:  # stops when the parent closes its end
            channel.send(message.upper())


if __name__ == "__main__":
    main()
