"""Read markers and the lists of rooms: a marker only moves forward (concurrent PUTs too),
"my rooms" counts what I have not read and what mentions me, right after a restart as well,
and the directory lists the fullest rooms first, at most 100.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from chatapp import markers
from tests.aware import directory, mark_read, my_rooms
from tests.harness import Client
from tests.steps import ROOM, eventually, open_ws, post, start_polling, unique, user
from tests.test_accounts import login, registered_user
from tests.test_cluster import cluster


async def joined(client: Client, room: str = ROOM) -> dict:
    """Open the room (a WebSocket) until it is among my rooms; my entry for it."""
    sock, _, _ = await open_ws(client, room)
    found: dict = {}

    async def listed() -> bool:
        found.update(await my_rooms(client))
        return room in found

    await eventually(listed, f"{room} among my rooms")
    sock.close()
    return found[room]


@pytest.mark.gen_test(timeout=60)
async def test_my_rooms_count_unread_messages_and_mentions_after_my_marker(servers):
    srv = await servers.start()
    an, bo = await user(srv, "an"), await user(srv, "bo")
    entry = await joined(an)
    assert entry["unread"] == 0 and entry["mentions"] == 0  # nothing before I came counts
    m1 = await post(bo, "hello")
    await post(bo, "hi @AN, look")  # mentions compare as nicknames do
    await post(an, "my own message is never unread")
    m4 = await post(bo, "and @cy")
    mine = (await my_rooms(an))[ROOM]
    assert (mine["unread"], mine["mentions"], mine["last_id"]) == (3, 1, m4["id"])
    assert (await mark_read(an, m1["id"]))[0] == 204
    mine = (await my_rooms(an))[ROOM]
    assert (mine["read"], mine["unread"], mine["mentions"]) == (m1["id"], 2, 1)
    await mark_read(an, m4["id"])
    mine = (await my_rooms(an))[ROOM]
    assert (mine["unread"], mine["mentions"]) == (0, 0)
    assert ROOM not in await my_rooms(await user(srv, "cy"))  # cy never joined
    for c in (an, bo):
        c.close()


@pytest.mark.gen_test(timeout=90)
async def test_an_accounts_devices_share_one_read_marker_and_its_own_messages(servers):
    srv = await servers.start()
    phone = await registered_user(srv, "ann")
    laptop, code, _ = await login(srv, "ann")
    assert code == 200
    bo = await user(srv, "bo")
    await joined(phone)
    await post(laptop, "sent from the laptop: mine on every device")
    m2 = await post(bo, "hello ann")
    mine = (await my_rooms(phone))[ROOM]
    assert (mine["unread"], mine["last_id"]) == (1, m2["id"])
    assert (await mark_read(laptop, m2["id"]))[0] == 204  # read on the laptop...
    mine = (await my_rooms(phone))[ROOM]
    assert (mine["read"], mine["unread"]) == (m2["id"], 0)  # ...is read on the phone
    for c in (phone, laptop, bo):
        c.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_long_poll_joins_the_room_too(servers):
    srv = await servers.start()
    an = await user(srv, "an")
    await start_polling(an)
    await eventually(lambda: _has_room(an), "the room among my rooms")
    an.close()


async def _has_room(client: Client) -> bool:
    return ROOM in await my_rooms(client)


@pytest.mark.gen_test(timeout=60)
async def test_a_read_marker_never_moves_back_even_under_concurrent_puts(servers):
    srv = await servers.start()
    an, bo = await user(srv, "an"), await user(srv, "bo")
    await joined(an)
    ids = [(await post(bo, f"m{i}"))["id"] for i in range(12)]
    await mark_read(an, ids[5])
    await mark_read(an, ids[2])  # older: changes nothing
    assert (await my_rooms(an))[ROOM]["read"] == ids[5]
    # Many tabs at once, in any order: the furthest wins.
    order = ids * 2
    random.shuffle(order)
    codes = await asyncio.gather(*(mark_read(an, i) for i in order))
    assert {c for c, _ in codes} == {204}
    mine = (await my_rooms(an))[ROOM]
    assert (mine["read"], mine["unread"]) == (ids[-1], 0)
    for c in (an, bo):
        c.close()


@pytest.mark.gen_test(timeout=60)
async def test_bad_read_markers_are_refused_and_change_nothing(servers):
    srv = await servers.start()
    an, bo = await user(srv, "an"), await user(srv, "bo")
    await joined(an)
    m1 = await post(bo, "one")
    await mark_read(an, m1["id"])
    for bad in ("nonsense", 12, None, "999999999999"):  # the last: not issued in this room
        response = await an.request("PUT", f"/api/rooms/{ROOM}/read", {"id": bad})
        assert response.code == 400, (bad, response.code)
    response = await an.request("PUT", f"/api/rooms/{ROOM}/read", {"id": m1["id"]}, xsrf=False)
    assert response.code == 403
    anon = srv.client()
    assert (await mark_read(anon, m1["id"]))[0] == 401
    assert (await anon.get_json("/api/me/rooms"))[0] == 401
    mine = (await my_rooms(an))[ROOM]
    assert mine["read"] == m1["id"]
    for c in (an, bo, anon):
        c.close()


@pytest.mark.gen_test(timeout=90)
async def test_counts_are_right_right_after_a_restart(servers):
    srv = await servers.start()
    an, bo = await user(srv, "an"), await user(srv, "bo")
    other = unique("other")
    await joined(an)
    await joined(an, other)
    first = await post(bo, "one")
    await post(bo, "@an two")
    await post(bo, "three", room=other)
    await mark_read(an, first["id"])
    before = await my_rooms(an)
    await srv.stop()
    srv = await servers.start(port=srv.port)
    after = await my_rooms(an)
    assert after == before
    assert (after[ROOM]["unread"], after[ROOM]["mentions"]) == (1, 1)
    assert (after[other]["unread"], after[other]["mentions"]) == (1, 0)
    for c in (an, bo):
        c.close()


@pytest.mark.gen_test(timeout=60)
async def test_unread_counts_stop_at_the_cap(servers, monkeypatch):
    monkeypatch.setattr(markers, "UNREAD_CAP", 5)  # the contract's 1000, made quick to reach
    srv = await servers.start()
    an, bo = await user(srv, "an"), await user(srv, "bo")
    await joined(an)
    for i in range(8):
        await post(bo, f"m{i}")
    assert (await my_rooms(an))[ROOM]["unread"] == 5
    for c in (an, bo):
        c.close()


@pytest.mark.gen_test(timeout=90)
async def test_the_directory_lists_rooms_with_people_fullest_first_at_most_100(servers):
    srv = await servers.start(max_connections_per_session=0, max_connections_per_ip=0)
    busy, middle, quiet = unique("busy"), unique("middle"), unique("quiet")
    people = [await user(srv, f"p{i}") for i in range(3)]
    socks = []
    for room, count in ((quiet, 1), (busy, 3), (middle, 2)):
        for person in people[:count]:
            socks.append((await open_ws(person, room))[0])
    last = await post(people[0], "latest", room=busy)
    code, body = await directory(people[0])
    assert code == 200
    listed = [r["room"] for r in body["rooms"]]
    assert listed[:3] == [busy, middle, quiet], listed
    top = body["rooms"][0]
    assert (top["people"], top["last_id"], top["last_ts"]) == (3, last["id"], last["ts"])
    # A crowd of rooms: the list stops at 100, the fullest still first. (Spread over the
    # three people: one session may be present in at most 50 rooms, limits.CappedPresence.)
    for i in range(105):
        socks.append((await open_ws(people[i % 3], f"{quiet}-{i}"))[0])
    body = (await directory(people[0]))[1]
    assert len(body["rooms"]) == 100
    assert [r["room"] for r in body["rooms"][:2]] == [busy, middle]
    for sock in socks:
        sock.close()
    for c in people:
        c.close()


@pytest.mark.gen_test(timeout=60)
async def test_the_directory_answers_for_named_rooms_present_or_not(servers):
    srv = await servers.start()
    an = await user(srv, "an")
    here, empty = unique("here"), unique("empty")
    sock, _, _ = await open_ws(an, here)
    event = await post(an, "hi", room=here)
    code, body = await directory(an, f"{empty},{here}")
    assert code == 200
    assert body["rooms"] == [
        {"room": empty, "people": 0, "last_id": "", "last_ts": None},
        {"room": here, "people": 1, "last_id": event["id"], "last_ts": event["ts"]},
    ]
    assert (await directory(an, "bad room!"))[0] == 400
    assert (await directory(an, ",".join(f"r{i}" for i in range(101))))[0] == 400
    sock.close()
    an.close()


@pytest.mark.gen_test(timeout=90)
async def test_the_directory_counts_people_on_every_cluster_process(servers):
    a, b = await cluster(servers, 2)
    room = unique("shared")
    an, bo = await user(a, "an"), await user(b, "bo")
    socks = [(await open_ws(an, room))[0], (await open_ws(bo, room))[0]]

    async def both_counted() -> bool:
        rooms = (await directory(an, room))[1]["rooms"]
        return rooms[0]["people"] == 2

    await eventually(both_counted, "both people counted")
    assert [r["room"] for r in (await directory(bo))[1]["rooms"]] == [room]
    for sock in socks:
        sock.close()
    for c in (an, bo):
        c.close()
