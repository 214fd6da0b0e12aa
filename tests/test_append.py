"""``EventStore.append``: a batch of new messages is inserted without first reading its
client_ids (the unique index refuses a repeat, and only then is the batch read and tried
again). What a sender notices must not change: a repeat returns the first event, the next
message gets the next id (the refused attempt leaves no hole), and two writers sharing a room
still hand out every id once, in order.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from chatapp.store import EventStore, connect
from tests.steps import ROOM

# Appends per writer in the two-writer test: enough for their batches to collide on the
# counter and on shared client_ids, few enough to stay a second or two.
WRITES = 40


@pytest.fixture
def store(io_loop, mongo_uri, db_name):
    st = EventStore(connect(mongo_uri, 10), db_name)
    io_loop.run_sync(st.create_indexes)
    yield st
    st.client.close()


def message(cid: str, text: str = "hi", sid: str = "s1") -> dict[str, Any]:
    return {"type": "message", "nick": "an", "ts": 1.0, "sid": sid, "cid": cid, "text": text}


async def stored_ids(store: EventStore, room: str = ROOM) -> list[tuple[str, str, str]]:
    """(id, sid, cid) of every event of the room, in id order (as stored: the public form
    has no sid or client_id)."""
    rows = await store.events.find({"room": room}).sort("seq", 1).to_list(None)
    return [(str(r["seq"]), r.get("sid", ""), r.get("cid", "")) for r in rows]


@pytest.mark.gen_test(timeout=60)
async def test_a_repeat_in_a_batch_returns_the_first_event_and_the_rest_take_the_next_ids(store):
    [first] = await store.append(ROOM, [message("c1", "first")])
    results = await store.append(ROOM, [message("c2"), message("c1", "again"), message("c3")])
    assert [r.is_new for r in results] == [True, False, True]
    assert results[1].event == first.event  # the first text, not "again"
    ids = [int(r.event["id"]) for r in results]
    assert ids == [2, 1, 3]
    [after] = await store.append(ROOM, [message("c4")])
    assert int(after.event["id"]) == 4
    assert [cid for _, _, cid in await stored_ids(store)] == ["c1", "c2", "c3", "c4"]


@pytest.mark.gen_test(timeout=60)
async def test_a_repeated_action_in_a_batch_with_a_new_one_returns_the_first_event(store):
    [msg] = await store.append(ROOM, [message("m1", "hello")])
    target = msg.event["id"]
    reaction = {"type": "reaction", "nick": "an", "ts": 1.0, "sid": "s1", "cid": "r1",
                "target": target, "emoji": "👍", "on": True}
    [first] = await store.append(ROOM, [reaction])
    edit = {"type": "edit", "nick": "an", "ts": 1.0, "sid": "s1", "cid": "e1",
            "target": target, "text": "hello there"}
    again, edited = await store.append(ROOM, [dict(reaction), edit])
    assert (again.is_new, again.event) == (False, first.event)
    assert edited.is_new and int(edited.event["id"]) == int(first.event["id"]) + 1
    [current] = await store.before(ROOM, 2, 1)
    assert current["text"] == "hello there"
    assert current.get("reactions") == {"👍": ["an"]}


@pytest.mark.gen_test(timeout=120)
async def test_two_writers_sharing_client_ids_store_each_once_with_every_id_once(
        store, mongo_uri, db_name):
    other = EventStore(connect(mongo_uri, 10), db_name)  # another process's client
    try:
        async def write(st: EventStore, sid: str) -> list[str]:
            ids = []
            for i in range(WRITES):
                # Every third client_id is sent by both writers under one session (a retry
                # reaching the other process): stored once whoever gets there first.
                cid_sid = "shared" if i % 3 == 0 else sid
                [r] = await st.append(ROOM, [message(f"c{i}", sid=cid_sid)])
                ids.append(r.event["id"])
            return ids

        mine, theirs = await asyncio.gather(write(store, "a"), write(other, "b"))
    finally:
        other.client.close()
    rows = await stored_ids(store)
    assert [int(i) for i, _, _ in rows] == list(range(1, len(rows) + 1))  # no hole, no repeat
    keys = [(sid, cid) for _, sid, cid in rows]
    assert len(keys) == len(set(keys))
    shared = {i for i in range(WRITES) if i % 3 == 0}
    assert len(rows) == 2 * WRITES - len(shared)
    for i in shared:  # both writers were answered with the one stored event
        assert mine[i] == theirs[i]
