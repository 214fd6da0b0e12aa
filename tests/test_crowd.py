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
from tests.steps import ROOM, new_cid, user


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


# -- keep-alive pings: one pinger for every socket (chatapp.web.pinger) ----------------------


async def silent_socket(srv, client) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket whose client never answers anything, pings included (a laptop lid shut)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    writer.write((f"GET /api/rooms/{ROOM}/ws HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\n"
                  "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                  "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                  f"Cookie: {client._cookie_header()}\r\n\r\n").encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT_SECONDS)
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


async def text_arrives(sock, text: str) -> None:
    while (await sock.next("event", WAIT_SECONDS + 10))["event"].get("text") != text:
        pass


@pytest.mark.gen_test(timeout=60)
async def test_a_socket_that_stops_answering_pings_is_closed_and_the_others_stay(servers):
    srv = await servers.start()
    # A short interval for the test (25 s in the app); read when the first socket opens.
    srv.app.settings.update(websocket_ping_interval=0.3)
    an, bo = await user(srv, "an"), await user(srv, "bo")
    an_sock = await an.ws(ROOM)
    # Tornado's client answers pings by itself, as long as its frames are read.
    still_here = asyncio.ensure_future(text_arrives(an_sock, "still here"))
    reader, writer = await silent_socket(srv, bo)
    seen = b""
    while True:  # until the server closes it: its ping, then its close frame
        chunk = await asyncio.wait_for(reader.read(65536), WAIT_SECONDS + 5)
        if not chunk:
            break
        seen += chunk
    writer.close()
    assert b"\x89\x00" in seen  # an empty ping, unanswered...
    assert b"\x88" in seen and b"ping timed out" in seen  # ...then closed for it
    # an's socket answered every round and still works.
    an_sock.send("still here", new_cid())
    await still_here
    an_sock.close()
    for c in (an, bo):
        c.close()


# -- the garbage collector: survivors of a full collection are frozen (web/server.py) ---------


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


def test_a_cycle_that_died_after_being_frozen_is_still_collected_once_unfrozen(monkeypatch):
    import gc
    import weakref

    from chatapp.web.server import FreezeSurvivors

    FreezeSurvivors.install()
    monkeypatch.setattr(FreezeSurvivors, "unfreeze_at", float("inf"))
    node = Node()
    alive = weakref.ref(node)
    gc.collect()  # node survives it: frozen
    del node
    gc.collect()
    assert alive() is not None  # frozen: not traversed, not freed (the price of the pauses)
    monkeypatch.setattr(FreezeSurvivors, "unfreeze_at", 0.0)
    gc.collect()  # due: unfrozen after this one
    gc.collect()  # sees everything again
    assert alive() is None
    # Young garbage is collected as ever.
    young = weakref.ref(Node())
    gc.collect()
    assert young() is None
