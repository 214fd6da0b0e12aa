"""A crowd in one room (issue 14, C10k): what each person's socket is sent while thousands join.

The presence list is the whole list of names, sent to every socket: in a room of thousands
filling up, one frame per 50 ms window was O(N^2) bytes (signals.PRESENCE_BYTES_PER_SECOND).
These tests drive one room's ``RoomSignals`` with stand-in sockets, as ``MessageBuffer`` does.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from chatapp.signals import MAX_PRESENCE_COALESCE_SECONDS, RoomSignals
from tests.harness import WAIT_SECONDS


class Socket:
    """A waiter that keeps the presence lists it was sent."""

    def __init__(self) -> None:
        self.lists: list[list[str]] = []

    def signals_changed(self, wire: bytes) -> None:
        # One unmasked text frame of < 64 KiB: a 4-byte header (0x81, 126, length).
        self.lists.append(json.loads(wire[4:] if wire[1] == 126 else wire[2:])["nicks"])


async def join_one_by_one(signals: RoomSignals, names: list[str], gap: float) -> None:
    for k in range(1, len(names) + 1):
        signals.set_presence(names[:k])
        await asyncio.sleep(gap)  # people arriving, not a wait for the server


async def settled(sockets: list[Socket], final: list[str]) -> None:
    deadline = asyncio.get_running_loop().time() + MAX_PRESENCE_COALESCE_SECONDS + WAIT_SECONDS
    while not all(s.lists and s.lists[-1] == final for s in sockets):
        assert asyncio.get_running_loop().time() < deadline, "the last list never came"
        await asyncio.sleep(0.05)


@pytest.mark.gen_test(timeout=60)
async def test_a_big_room_filling_up_sends_each_socket_a_few_lists_not_one_per_window():
    sockets = [Socket() for _ in range(2000)]
    signals = RoomSignals(lambda: list(sockets))
    # 100 people with long names join over about a second: 100 x 30 bytes to 2,000 sockets is
    # 6 MB a frame, which one frame per 50 ms window (20 of them) would send every socket.
    names = [f"person-{k:03d}-with-a-long-nickname"[:30] for k in range(100)]
    await join_one_by_one(signals, names, 0.01)
    await settled(sockets, names)
    counts = {len(s.lists) for s in sockets}
    assert max(counts) <= 10, counts  # one per 50 ms window was 20 or more
    assert all(s.lists[-1] == names for s in sockets)  # everyone ends with the whole list


@pytest.mark.gen_test(timeout=60)
async def test_a_small_room_hears_of_every_join_that_comes_a_moment_apart():
    sockets = [Socket() for _ in range(3)]
    signals = RoomSignals(lambda: list(sockets))
    names = ["an", "bo", "cy", "di"]
    await join_one_by_one(signals, names, 0.2)
    await settled(sockets, names)
    for s in sockets:
        assert s.lists == [names[:k] for k in range(1, 5)]
