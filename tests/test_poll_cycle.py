"""The long-poll cycle made cheap (issue 14) keeps its promises: a poll with nothing new
answers empty no later than its time-out (polls share one timer per second), and the polls a
message wakes are answered in the order woken, each with the message, once."""

from __future__ import annotations

import asyncio

import pytest

from chatapp.buffer import Entry
from chatapp.reading import TIMEOUT_TICK, PollTimeouts, PollWaiter


@pytest.mark.gen_test(timeout=30)
async def test_parked_polls_answer_nothing_new_on_time_on_a_shared_timer():
    loop = asyncio.get_running_loop()
    timeouts = PollTimeouts()
    waiters = [PollWaiter("000000000001") for _ in range(20)]
    started = loop.time()
    answers = asyncio.gather(*(w.wait(2.5, timeouts) for w in waiters))
    await asyncio.sleep(0)  # let them park
    assert timeouts.waiting() == 20
    assert await answers == [[]] * 20
    # Never later than asked (the contract's "waits up to poll_timeout"), at most a tick
    # sooner; the loop's clock, so a busy machine makes it later, never earlier.
    assert loop.time() - started >= 2.5 - TIMEOUT_TICK
    assert timeouts.waiting() == 0


@pytest.mark.gen_test(timeout=30)
async def test_a_short_time_out_keeps_its_own_timer_and_a_woken_poll_carries_what_came_next():
    timeouts = PollTimeouts()
    short = PollWaiter("000000000001")
    assert await short.wait(0.2, timeouts) == []
    woken = PollWaiter("000000000001")
    task = asyncio.ensure_future(woken.wait(20, timeouts))
    await asyncio.sleep(0)
    entry = Entry({"id": "000000000002", "room": "r", "type": "message", "text": "hi"})
    later = Entry({"id": "000000000003", "room": "r", "type": "message", "text": "again"})
    woken.wake([entry])
    woken.wake([entry])  # the same batch again (a feed catching up): not repeated
    woken.wake([later])  # a second publish before it ran: the same answer carries it
    assert await task == [entry, later]
    woken.wake([Entry({"id": "000000000004", "room": "r", "type": "message", "text": "x"})])
    assert timeouts.waiting() == 0  # answered: a publish after that changes nothing


@pytest.mark.gen_test(timeout=30)
async def test_many_woken_polls_are_all_answered_in_the_order_woken():
    waiters = [PollWaiter("000000000001") for _ in range(237)]  # several turns' worth
    order: list[int] = []

    async def one(i: int, w: PollWaiter) -> None:
        assert await w.wait(20) == [entry]
        order.append(i)

    entry = Entry({"id": "000000000002", "room": "r", "type": "message", "text": "hi"})
    tasks = [asyncio.ensure_future(one(i, w)) for i, w in enumerate(waiters)]
    await asyncio.sleep(0)
    for w in waiters:
        w.wake([entry])
    await asyncio.gather(*tasks)
    assert order == list(range(len(waiters)))
