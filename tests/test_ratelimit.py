"""``chatapp.ratelimit.Turns``: a session's sends keep their order around an awaited step.

(The user-level proof is in test_cluster.py: a burst of WebSocket frames on a cluster server is
stored in the order sent. These pin down the two cases that test cannot provoke at will.)
"""

from __future__ import annotations

import asyncio

import pytest

from chatapp.ratelimit import Turns


@pytest.mark.gen_test(timeout=10)
async def test_turns_run_in_the_order_asked_even_when_the_first_step_is_slowest():
    turns, done = Turns(), []

    async def step(name: str, delay: float) -> None:
        async with turns.turn("alice"):
            await asyncio.sleep(delay)  # the awaited part: a round trip to MongoDB
            done.append(name)

    await asyncio.gather(step("first", 0.05), step("second", 0), step("third", 0.01))
    assert done == ["first", "second", "third"]


@pytest.mark.gen_test(timeout=10)
async def test_a_cancelled_turn_neither_blocks_nor_cancels_the_others():
    turns, done = Turns(), []
    release = asyncio.Event()

    async def step(name: str, key: str = "alice") -> None:
        async with turns.turn(key):
            if name == "first":
                await release.wait()
            done.append(name)

    first = asyncio.ensure_future(step("first"))
    second = asyncio.ensure_future(step("second"))
    third = asyncio.ensure_future(step("third"))
    other = asyncio.ensure_future(step("bob's", key="bob"))  # another session: no waiting
    await other
    assert done == ["bob's"]
    second.cancel()  # a client gone while waiting for its turn
    await asyncio.sleep(0)
    release.set()
    await asyncio.gather(first, third)
    assert done == ["bob's", "first", "third"] and second.cancelled()
