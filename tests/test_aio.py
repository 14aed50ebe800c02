"""AsyncChannel over real socketpairs, on the default loop (and uvloop when installed)."""

from __future__ import annotations

import asyncio
import os

import pytest

from unix_socketpair import SOCK_DGRAM, SOCK_SEQPACKET, SOCK_STREAM, AsyncChannel

ALL_TYPES = [SOCK_STREAM, SOCK_SEQPACKET, SOCK_DGRAM]


@pytest.mark.parametrize("sock_type", ALL_TYPES)
def test_round_trip_small_and_empty(sock_type: int, no_fd_leak: None) -> None:
    async def main() -> None:
        a, b = AsyncChannel.pair(sock_type)
        async with a, b:
            for message in (b"hello", b"", bytearray(b"ba"), memoryview(b"mv")):
                await a.send(message)
                assert await b.recv() == bytes(message)
            await b.send(b"back")
            assert await a.recv() == b"back"

    asyncio.run(main())


def test_fds_and_iteration(no_fd_leak: None) -> None:
    async def main() -> None:
        a, b = AsyncChannel.pair()
        r, w = os.pipe()
        try:
            async with b:
                async with a:
                    await a.send(b"plain")
                    await a.send(b"with", fds=[r])
                    await a.send_many([b"%d" % i for i in range(1000)])
                assert await b.recv_with_fds() == (b"plain", [])
                payload, fds = await b.recv_with_fds()
                assert payload == b"with" and len(fds) == 1
                os.close(fds[0])
                assert [m async for m in b] == [b"%d" % i for i in range(1000)]
        finally:
            os.close(r)
            os.close(w)

    asyncio.run(main())
