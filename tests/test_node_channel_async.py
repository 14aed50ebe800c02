"""AsyncNodeChannel between two Python ends (and against a real Node child via
spawn_async(node_ipc=...)): values, handles with their ACK, concurrent tasks,
cancellation, ownership."""

from __future__ import annotations

import asyncio
import socket
from typing import Any, Literal

import pytest
from support import require

from unix_socketpair import (
    AsyncNodeChannel,
    ChannelClosed,
    HandleRefused,
    NodeChannel,
    spawn_async,
)

MODES: list[Literal["json", "advanced"]] = ["json", "advanced"]


@pytest.mark.parametrize("mode", MODES)
def test_values_and_iteration(mode: Literal["json", "advanced"], no_fd_leak: None) -> None:
    async def main() -> None:
        left, right = AsyncNodeChannel.pair(mode)
        async with right:
            async with left:
                for value in [None, 1, "two", [3], {"four": 4.5}]:
                    await left.send(value)
            assert [value async for value in right] == [None, 1, "two", [3], {"four": 4.5}]
            with pytest.raises(ChannelClosed):
                await right.recv()

    asyncio.run(main())


def test_handle_with_its_ack_while_another_task_receives(no_fd_leak: None) -> None:
    async def main() -> None:
        left, right = AsyncNodeChannel.pair()
        a, b = socket.socketpair()
        with a, b:
            async with left, right:
                # The receiving task of `left` and its sending task run at once.
                echo = asyncio.ensure_future(left.recv())
                received = asyncio.ensure_future(right.recv_with_handle())
                await asyncio.wait_for(left.send({"handle": True}, a), 10)  # ACKed
                value, handle = await asyncio.wait_for(received, 10)
                assert value == {"handle": True} and handle is not None
                with handle:
                    handle.sendall(b"via the handle")
                    assert b.recv(100) == b"via the handle"
                await right.send("back")
                assert await asyncio.wait_for(echo, 10) == "back"

    asyncio.run(main())


def test_concurrent_sends_do_not_interleave(no_fd_leak: None) -> None:
    async def main() -> None:
        left, right = AsyncNodeChannel.pair()
        async with left, right:
            big = "x" * 300_000  # more than the socket buffer: the sends wait
            sends = [asyncio.ensure_future(left.send([i, big])) for i in range(5)]
            received = [await right.recv() for _ in range(5)]
            await asyncio.gather(*sends)
            assert sorted(v[0] for v in received) == list(range(5))
            assert all(v[1] == big for v in received)

    asyncio.run(main())


def test_cancelled_recv_loses_nothing(no_fd_leak: None) -> None:
    async def main() -> None:
        left, right = AsyncNodeChannel.pair()
        async with left, right:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(right.recv(), 0.05)
            await left.send("after the cancel")
            assert await right.recv() == "after the cancel"

    asyncio.run(main())


def test_refused_handle_when_the_peer_leaves(no_fd_leak: None) -> None:
    async def main() -> None:
        ours, theirs = socket.socketpair()
        a, b = socket.socketpair()
        with ours, a, b:
            async with AsyncNodeChannel(theirs) as channel:
                ours.shutdown(socket.SHUT_WR)
                with pytest.raises(HandleRefused):
                    await channel.send("x", a)

    asyncio.run(main())


def test_close_wakes_a_waiting_receiver(no_fd_leak: None) -> None:
    async def main() -> None:
        left, right = AsyncNodeChannel.pair()
        async with left:
            waiting = asyncio.ensure_future(right.recv())
            await asyncio.sleep(0)  # let it start waiting
            right.close()
            with pytest.raises(OSError, match="closed"):
                await waiting

    asyncio.run(main())


def test_async_and_blocking_ends_interoperate(no_fd_leak: None) -> None:
    a, b = socket.socketpair()
    blocking = NodeChannel(a, "advanced")

    async def main() -> None:
        async with AsyncNodeChannel(b, "advanced") as channel:
            blocking.send({b"bytes": {1, 2}})
            assert await channel.recv() == {b"bytes": {1, 2}}

    with blocking:
        asyncio.run(main())


@pytest.mark.parametrize("mode", MODES)
def test_spawn_async_node_ipc(mode: Literal["json", "advanced"], no_fd_leak: None) -> None:
    node = require("node")
    script = (
        "process.on('message', (m, h) => {"
        " if (h) { h.end(m.text, () => process.send('written')); }"
        " else if (m === 'bye') { process.disconnect(); }"
        " else { process.send({ echo: m }); } })"
    )

    async def main() -> None:
        child = await spawn_async([node, "-e", script], node_ipc=mode)
        async with child:
            channel = child.channel
            assert isinstance(channel, AsyncNodeChannel)
            await channel.send({"n": 1})
            assert await asyncio.wait_for(channel.recv(), 10) == {"echo": {"n": 1}}
            ours, theirs = socket.socketpair()
            with ours, theirs:
                await asyncio.wait_for(channel.send({"text": "async handle"}, theirs), 10)
                assert await asyncio.wait_for(channel.recv(), 10) == "written"
                ours.settimeout(10)
                assert ours.recv(100) == b"async handle"
            await channel.send("bye")
            rest: list[Any] = [value async for value in channel]
            assert rest == []
        assert child.returncode == 0

    asyncio.run(main())


def test_spawn_async_node_ipc_refuses_stdio(no_fd_leak: None) -> None:
    with pytest.raises(ValueError, match="descriptor number"):
        asyncio.run(spawn_async(["/nonexistent/program"], node_ipc="json", fd="stdio"))
