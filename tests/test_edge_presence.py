"""Presence that an outsider cannot inflate (issue 13): a long-poll joins a room only with the
XSRF token, and one session cannot be present in, or store joins for, more than a few dozen
rooms."""

from __future__ import annotations

import asyncio

import pytest

from chatapp.errors import ChatError
from chatapp.limits import MAX_ROOMS_PER_SESSION, CappedPresence
from tests.harness import Client
from tests.steps import ROOM, eventually, history, is_join, post, user

# Rooms one session asks for in the flood test: far past the cap, bounded for the suite.
FLOOD_ROOMS = 300


async def cross_site_poll(client: Client, room: str = ROOM, cursor: str | None = None):
    """What another site's page can make the victim's browser send: a GET with the cookies
    (SameSite=Lax lets a top-level GET carry them), and no X-XSRFToken header."""
    return await client.poll(room, cursor, xsrf=False)


@pytest.mark.gen_test(timeout=60)
async def test_a_poll_without_the_xsrf_token_joins_nobody_and_stores_nothing(servers):
    srv = await servers.start()
    an, bo = await user(srv, "an"), await user(srv, "bo")
    code, body = await cross_site_poll(an)
    assert code == 200, body
    # Still a read: it waits, and answers with what is sent meanwhile.
    task = asyncio.ensure_future(cross_site_poll(an, ROOM, body["cursor"]))
    await post(bo, "hello")
    code, body = await task
    assert code == 200 and [e["text"] for e in body["events"]] == ["hello"], body
    assert (await an.get_json(f"/api/rooms/{ROOM}/presence"))[1]["nicks"] == []
    # A token that is not the visitor's own does not count either.
    code, _ = await an.get_json(f"/api/rooms/{ROOM}/updates",
                                headers={"X-XSRFToken": "2|00|00|00"})
    assert code == 200
    assert not any(is_join(e, "an") for e in await history(bo))
    # The page's poll, with the token, does join.
    code, body = await an.poll(ROOM)
    assert code == 200

    async def joined() -> bool:  # the join is stored in the background
        return any(is_join(e, "an") for e in await history(bo))

    await eventually(joined, "an's join")
    assert [e["nick"] for e in await history(bo) if e["type"] == "join"] == ["an"]
    assert (await an.get_json(f"/api/rooms/{ROOM}/presence"))[1]["nicks"] == ["an"]


@pytest.mark.gen_test(timeout=120)
async def test_one_session_polling_hundreds_of_rooms_joins_at_most_the_cap(servers):
    srv = await servers.start()
    flooder, bo = await user(srv, "flooder"), await user(srv, "bo")
    rooms = [f"flood-{n}" for n in range(FLOOD_ROOMS)]
    answers: list[tuple[int, dict]] = []
    for start in range(0, len(rooms), 10):
        answers += await asyncio.gather(*(flooder.poll(r) for r in rooms[start:start + 10]))
    codes = [code for code, _ in answers]
    assert codes.count(200) == MAX_ROOMS_PER_SESSION, codes
    refused = [body for code, body in answers if code != 200]
    assert {(b["error"]) for b in refused} == {"too_many_rooms"}, refused[:3]
    assert "50 rooms" in refused[0]["message"]
    # Someone else is served meanwhile, and a room the flooder is already in still works.
    assert (await post(bo, "still here"))["text"] == "still here"
    assert (await flooder.poll(rooms[0]))[0] == 200
    joins = 0
    for room in rooms:
        joins += sum(is_join(e, "flooder") for e in await history(bo, room))
    assert joins <= MAX_ROOMS_PER_SESSION, joins
    # The refusal is per session: bo still joins a room of its own.
    assert (await bo.poll("elsewhere"))[0] == 200


def test_joins_past_the_join_rate_are_refused_even_after_leaving_the_rooms():
    presence = CappedPresence(grace=0.0, max_rooms=10, join_rate=0.001, join_burst=3)
    conns = {room: object() for room in ("a", "b", "c")}
    for room, conn in conns.items():
        presence.admit(room, "s1")
        assert presence.connect(room, "s1", "an", conn)
    for room, conn in conns.items():
        presence.disconnect(room, "s1", conn)
    assert len(presence.expired()) == 3  # gone: rooms are free again, the joins are spent
    with pytest.raises(ChatError) as refused:
        presence.admit("d", "s1")
    assert refused.value.code == "rate_limited"
    presence.admit("d", "s2")  # another session has its own budget
