"""How events travel, proven over the wire (API.md: "event", "WebSocket", the long-poll).

Every test starts its own server(s) and speaks to them only as clients do: HTTP with cookies,
and WebSockets. Nothing sleeps to wait for an event: readers wait for the frame or the answer
they expect, and "nothing more, no duplicate" is proven by a marker message sent afterwards
being the very next thing received. The only sleeps let a configured timeout (grace period,
unused-session TTL) elapse. The one look inside the server is the count of parked long-polls
(``MessageBuffer.waiters``): a client cannot see when its request is parked.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from tornado.httpclient import HTTPClientError

from tests.harness import WAIT_SECONDS, Client, Socket
from tests.steps import (
    ROOM,
    assert_increasing,
    events_until,
    eventually,
    frames_until,
    is_join,
    is_message,
    messages,
    open_ws,
    parked_poll,
    parked_polls,
    poll,
    poll_until,
    post,
    start_polling,
    texts,
    user,
)

# Text that must arrive exactly as typed: markup, emoji (with a skin tone and a ZWJ family),
# Vietnamese diacritics, right-to-left Arabic, newlines and tabs inside, JSON's own specials.
TEXTS = [
    "<b>hi</b>",
    "emoji 😀🎉 👍🏽 👨‍👩‍👧",
    "Tiếng Việt: Xin chào thế giới, đường phố Hà Nội",
    "مرحبا بالعالم، كيف حالك؟",
    "first line\nsecond line\n\tindented",
    'quotes " \\ backslash & <script>alert(1)</script>',
]


# -- helpers --------------------------------------------------------------------------------


async def wait_joins(sock: Socket, nicks: set[str]) -> list[dict[str, Any]]:
    """Read events until every nick in ``nicks`` has joined; the events read."""
    events: list[dict[str, Any]] = []
    missing = set(nicks)
    while missing:
        frame = await sock.next("event")
        events.append(frame["event"])
        if frame["event"]["type"] == "join":
            missing.discard(frame["event"]["nick"])
    return events


# -- WebSocket to WebSocket -----------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_ws_message_reaches_every_socket_in_the_room_once_in_order_exactly(servers):
    srv = await servers.start()
    alice, bob, carol = [await user(srv, n) for n in ("alice", "bob", "carol")]
    a, _, _ = await open_ws(alice)
    b, _, _ = await open_ws(bob)
    c, _, _ = await open_ws(carol, "elsewhere")

    for i, text in enumerate(TEXTS):
        a.send(text, f"m{i}")
    a.send("end", "end")

    for sock in (a, b):
        received = messages(await events_until(sock, "end"))
        assert [(e["nick"], e["room"], e["text"]) for e in received] == [
            ("alice", ROOM, t) for t in [*TEXTS, "end"]
        ]
        assert_increasing(received)
    # Another room hears none of it: carol's own message is the first message she gets.
    c.send("over here", "c1")
    received = await events_until(c, "over here")
    assert texts(received) == ["over here"]
    assert {e["room"] for e in received} == {"elsewhere"}


# -- across transports ----------------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_message_posted_by_a_polling_client_reaches_websockets(servers):
    srv = await servers.start()
    alice, bob = await user(srv, "alice"), await user(srv, "bob")
    await start_polling(alice)
    b, _, _ = await open_ws(bob)

    sent = [await post(alice, text) for text in TEXTS]

    assert messages(await events_until(b, TEXTS[-1])) == sent


@pytest.mark.gen_test(timeout=30)
async def test_websocket_send_wakes_a_parked_long_poll(servers):
    srv = await servers.start()
    alice, bob = await user(srv, "alice"), await user(srv, "bob")
    a, _, _ = await open_ws(alice)
    cursor = await start_polling(bob)
    waiting = await parked_poll(srv, bob, cursor)

    a.send("<b>hi</b> 👋 مرحبا", "c1")
    ack = await a.next("ack")

    events, new_cursor = await waiting
    assert events == [ack["event"]]
    assert new_cursor == ack["event"]["id"]


@pytest.mark.gen_test(timeout=30)
async def test_one_message_wakes_parked_long_polls_and_websockets_alike(servers):
    srv = await servers.start()
    sender = await user(srv, "sender")
    s, _, _ = await open_ws(sender)
    pollers = [await user(srv, f"poller{i}") for i in range(3)]
    for p in pollers:
        await start_polling(p)
    sockets = [(await open_ws(await user(srv, f"ws{i}")))[0] for i in range(3)]
    # Once the sender has seen everyone join, nothing else is on its way.
    seen = await wait_joins(s, {f"poller{i}" for i in range(3)} | {f"ws{i}" for i in range(3)})
    tasks = [asyncio.ensure_future(poll(p, seen[-1]["id"])) for p in pollers]
    await eventually(lambda: parked_polls(srv) == 3, "three parked polls")

    s.send("one for all", "c1")
    event = (await s.next("ack"))["event"]

    for events, cursor in await asyncio.gather(*tasks):
        assert (events, cursor) == ([event], event["id"])
    for sock in sockets:
        assert messages(await events_until(sock, "one for all")) == [event]
    # ... and each socket got it once: the next message is the next one sent.
    s.send("marker", "c2")
    for sock in sockets:
        assert texts(await sock.events(1)) == ["marker"]


# -- what the sender sees -------------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_websocket_sender_gets_an_ack_with_its_client_id_and_the_stored_event(servers):
    srv = await servers.start()
    alice, bob = await user(srv, "alice"), await user(srv, "bob")
    a, _, _ = await open_ws(alice)
    b, _, _ = await open_ws(bob)

    a.send("  hello <i>there</i>\n", "my-client-id")
    frames = await frames_until(a, lambda f: f["type"] == "ack")

    ack = frames[-1]
    assert ack["client_id"] == "my-client-id"
    event = ack["event"]
    assert {k: event[k] for k in ("room", "type", "nick", "text")} == {
        "room": ROOM, "type": "message", "nick": "alice", "text": "hello <i>there</i>",
    }
    assert isinstance(event["ts"], float) and abs(event["ts"] - time.time()) < 60
    # The sender's own stream carries the event too, and so does everyone else's.
    assert {"type": "event", "event": event} in frames
    assert messages(await events_until(b, "hello <i>there</i>")) == [event]
    code, history = await bob.get_json(f"/api/rooms/{ROOM}/history")
    assert code == 200 and history["events"][-1] == event


@pytest.mark.gen_test(timeout=30)
async def test_resending_a_client_id_on_either_transport_returns_the_first_event_only(servers):
    srv = await servers.start()
    alice, bob = await user(srv, "alice"), await user(srv, "bob")
    a, _, _ = await open_ws(alice)
    b, _, _ = await open_ws(bob)
    a.send("once", "same-id")
    first = (await a.next("ack"))["event"]

    # The answer was lost, say: the client retries on a new socket, then over HTTP.
    a.close()
    a2, _, _ = await open_ws(alice, cursor=first["id"])
    a2.send("once", "same-id")
    assert (await a2.next("ack"))["event"] == first
    code, body = await alice.send(ROOM, "once", "same-id")
    assert (code, body) == (200, {"event": first})

    a2.send("marker", "other-id")
    assert texts(await events_until(b, "marker")) == ["once", "marker"]


@pytest.mark.gen_test(timeout=30)
async def test_websocket_empty_text_gets_bad_text_with_its_client_id_and_nothing_is_sent(servers):
    srv = await servers.start()
    alice, bob = await user(srv, "alice"), await user(srv, "bob")
    a, _, _ = await open_ws(alice)
    b, _, _ = await open_ws(bob)

    a.send(" \n\t ", "blank-1")
    error = await a.next("error")
    assert error["error"] == "bad_text" and error["client_id"] == "blank-1"
    assert error["message"]

    a.send("after", "ok-1")
    assert (await a.next("ack"))["client_id"] == "ok-1"
    assert texts(await events_until(b, "after")) == ["after"]


@pytest.mark.gen_test(timeout=30)
async def test_malformed_frames_get_an_error_frame_and_the_socket_keeps_working(servers):
    srv = await servers.start()
    alice = await user(srv, "alice")
    a, backlog, _ = await open_ws(alice)
    if not any(is_join(e, "alice") for e in backlog):
        await wait_joins(a, {"alice"})  # so that the next frame is the answer
    malformed: list[str | bytes] = [
        "not json", "{", "[1, 2]", '"send"', "42", "null",
        '{"text": "no type", "client_id": "c"}',
        '{"type": "shout", "text": "unknown type", "client_id": "c"}',
        b"\xff\xfe not utf-8",
    ]
    for raw in malformed:
        await a.conn.write_message(raw, binary=isinstance(raw, bytes))
        frame = await a.next()  # the very next frame answers it
        assert frame["type"] == "error", (raw, frame)
        assert isinstance(frame["error"], str) and frame["message"], (raw, frame)

    a.send("still here", "ok")
    ack = await a.next("ack")
    assert ack["event"]["text"] == "still here"
    assert not a.closed


@pytest.mark.gen_test(timeout=30)
async def test_a_frame_of_64_kib_is_answered_but_a_larger_one_closes_the_socket(servers):
    srv = await servers.start()
    alice = await user(srv, "alice")
    a, _, _ = await open_ws(alice)
    limit = 64 * 1024

    def frame_of(size: int) -> str:
        empty = json.dumps({"type": "send", "text": "", "client_id": "big"})
        return json.dumps({"type": "send", "text": "x" * (size - len(empty)), "client_id": "big"})

    assert len(frame_of(limit).encode()) == limit
    a.conn.write_message(frame_of(limit))
    error = await a.next("error")
    assert (error["error"], error["client_id"]) == ("bad_text", "big")  # too long, not too big

    a.conn.write_message(frame_of(limit + 1))
    assert await a.closed_with() == 1009  # "message too big"


# -- many senders at once -------------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_concurrent_senders_reach_everyone_once_in_one_order(servers):
    srv = await servers.start()
    n = 50
    ws_a, ws_b, http_c, watcher, poller = [
        await user(srv, nick) for nick in ("ws_a", "ws_b", "http_c", "watcher", "poller")
    ]
    sa, _, _ = await open_ws(ws_a)
    sb, _, _ = await open_ws(ws_b)
    sw, _, _ = await open_ws(watcher)
    cursor = await start_polling(poller)
    expected = {f"{nick} {i}" for nick in ("ws_a", "ws_b", "http_c") for i in range(n)}

    async def http_sender() -> None:
        for i in range(n):
            await post(http_c, f"http_c {i}")

    async def ws_receiver(sock: Socket) -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []
        while len(got) < len(expected):
            got += messages(await sock.events(1))
        return got

    async def poll_receiver(cursor: str) -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []
        while len(got) < len(expected):
            events, cursor = await poll(poller, cursor)
            got += messages(events)
        return got

    receivers = [ws_receiver(s) for s in (sa, sb, sw)] + [poll_receiver(cursor)]
    for i in range(n):  # both sockets queue all their frames at once
        sa.send(f"ws_a {i}", f"a{i}")
        sb.send(f"ws_b {i}", f"b{i}")
    seen = await asyncio.gather(http_sender(), *receivers)
    seen = seen[1:]

    order = [e["id"] for e in seen[0]]
    for got in seen:
        assert [e["id"] for e in got] == order  # one order, everywhere
        assert sorted(e["text"] for e in got) == sorted(expected)  # each exactly once
    assert_increasing(seen[0])
    for nick in ("ws_a", "ws_b", "http_c"):  # each sender's messages in the order sent
        assert [e["text"] for e in seen[0] if e["nick"] == nick] == [
            f"{nick} {i}" for i in range(n)
        ]
    code, history = await watcher.get_json(f"/api/rooms/{ROOM}/history?limit=200")
    assert code == 200 and not history["has_more"]
    assert messages(history["events"]) == seen[0]
    # Nothing more: the next message anyone gets is the next one sent.
    sw.send("marker", "m")
    for sock in (sa, sb, sw):
        assert texts(await sock.events(1)) == ["marker"]


# -- resuming with a cursor -----------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_websocket_with_a_cursor_gets_exactly_the_events_after_it_then_live_ones(servers):
    srv = await servers.start()
    alice, bob = await user(srv, "alice"), await user(srv, "bob")
    sent = [await post(alice, f"m{i}") for i in range(6)]

    b, backlog, _ = await open_ws(bob, cursor=sent[2]["id"])
    assert backlog[:3] == sent[3:]

    live = await post(alice, "live")
    received = backlog + await events_until(b, "live")
    # Then only what happened since: bob's own arrival (once) and the live message.
    assert [e for e in received if not is_join(e, "bob")] == sent[3:] + [live]
    assert len(received) == len(sent[3:]) + 2


@pytest.mark.gen_test(timeout=30)
async def test_without_a_cursor_a_newcomer_gets_the_latest_history_size_events(servers):
    srv = await servers.start(history_size=5)
    alice, bob, carol = [await user(srv, n) for n in ("alice", "bob", "carol")]
    sent = [await post(alice, f"m{i}") for i in range(8)]

    events, cursor = await poll(carol)
    assert (events, cursor) == (sent[-5:], sent[-1]["id"])
    events, _ = await poll(carol, cursor)  # then only carol's own arrival
    assert [(e["type"], e["nick"]) for e in events] == [("join", "carol")]
    room_log = sent + events

    _, backlog, _ = await open_ws(bob)
    assert backlog[:5] == room_log[-5:]
    assert all(is_join(e, "bob") for e in backlog[5:])  # only bob's own arrival may follow


TRANSPORT_PAIRS = [("ws", "ws"), ("poll", "poll"), ("ws", "poll"), ("poll", "ws")]


async def read_until_then_leave(transport: str, client: Client, sender: Client, text: str) -> str:
    """Be a client of ``transport`` until the message ``text`` arrives; then go away. The
    cursor held."""
    if transport == "ws":
        sock, _, _ = await open_ws(client)
        await post(sender, text)
        cursor = (await events_until(sock, text))[-1]["id"]
        sock.close()
        return cursor
    cursor = await start_polling(client)
    await post(sender, text)
    _, cursor = await poll_until(client, cursor, text)
    return cursor


async def assert_resumes_exactly(
    transport: str, client: Client, sender: Client, cursor: str, missed: list[dict[str, Any]]
) -> None:
    """Coming back with ``cursor`` over ``transport`` yields ``missed`` and then, with no
    repeat and no extra join, the next message sent."""
    if transport == "ws":
        sock, backlog, _ = await open_ws(client, cursor=cursor)
        assert backlog == missed
        marker = await post(sender, "marker")
        assert await sock.events(1) == [marker]
        sock.close()
        return
    events, cursor = await poll(client, cursor)
    assert (events, cursor) == (missed, missed[-1]["id"])
    marker = await post(sender, "marker")
    assert await poll(client, cursor) == ([marker], marker["id"])


@pytest.mark.parametrize("first,then", TRANSPORT_PAIRS)
@pytest.mark.gen_test(timeout=30)
async def test_reconnecting_with_the_cursor_gets_exactly_what_was_missed(servers, first, then):
    srv = await servers.start()
    alice, bob = await user(srv, "alice"), await user(srv, "bob")
    cursor = await read_until_then_leave(first, bob, alice, "last seen")

    missed = [await post(alice, text) for text in ("missed 1", "missed 2", "missed 3")]

    await assert_resumes_exactly(then, bob, alice, cursor, missed)


@pytest.mark.parametrize("transport", ["ws", "poll"])
@pytest.mark.gen_test(timeout=30)
async def test_a_cursor_older_than_memory_is_served_from_mongodb_exactly(servers, transport):
    srv = await servers.start(history_size=5)
    alice, bob = await user(srv, "alice"), await user(srv, "bob")
    cursor = await read_until_then_leave("ws", bob, alice, "last seen")

    missed = [await post(alice, f"missed {i}") for i in range(12)]
    assert srv.chat.loaded_room(ROOM).floor > cursor  # memory no longer reaches back to it

    await assert_resumes_exactly(transport, bob, alice, cursor, missed)


@pytest.mark.gen_test(timeout=30)
async def test_a_client_more_than_500_events_behind_gets_them_all(servers):
    srv = await servers.start(history_size=5)
    alice, bob = await user(srv, "alice"), await user(srv, "bob")
    a, _, _ = await open_ws(alice)
    cursor = await read_until_then_leave("ws", bob, alice, "last seen")
    for i in range(520):
        a.send(f"bulk {i}", f"bulk-{i}")
    missed = [e for e in await events_until(a, "bulk 519") if e["id"] > cursor]
    assert [e["text"] for e in missed] == [f"bulk {i}" for i in range(520)]

    # The WebSocket sends everything before the live ones ...
    _, backlog, _ = await open_ws(bob, cursor=cursor)
    assert backlog == missed
    # ... the long-poll answers 500 at a time.
    events, next_cursor = await poll(bob, cursor)
    assert (events, next_cursor) == (missed[:500], missed[499]["id"])
    events, next_cursor = await poll(bob, next_cursor)
    assert (events, next_cursor) == (missed[500:], missed[-1]["id"])


# -- restart --------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_stopping_the_server_closes_sockets_going_away_and_answers_parked_polls(servers):
    srv = await servers.start()
    alice, bob = await user(srv, "alice"), await user(srv, "bob")
    a, _, _ = await open_ws(alice)
    cursor = await start_polling(bob)
    waiting = await parked_poll(srv, bob, cursor)

    await srv.stop()

    assert await waiting == ([], cursor)  # "nothing new": poll again, with the same cursor
    assert await a.closed_with() == 1001  # going away: reconnect


@pytest.mark.gen_test(timeout=30)
async def test_after_a_restart_history_is_intact_and_new_ids_are_greater(servers):
    srv = await servers.start()
    alice = await user(srv, "alice")
    a, _, _ = await open_ws(alice)
    for i in range(3):
        a.send(f"before {i}", f"b{i}")
    await events_until(a, "before 2")
    code, before = await alice.get_json(f"/api/rooms/{ROOM}/history")
    assert code == 200 and texts(before["events"]) == ["before 0", "before 1", "before 2"]
    await srv.stop()

    await servers.start(port=srv.port)
    code, after = await alice.get_json(f"/api/rooms/{ROOM}/history")
    assert (code, after) == (200, before)
    event = await post(alice, "after")
    assert event["id"] > before["events"][-1]["id"]
    code, history = await alice.get_json(f"/api/rooms/{ROOM}/history")
    assert history["events"] == before["events"] + [event]


@pytest.mark.parametrize("transport", ["ws", "poll"])
@pytest.mark.gen_test(timeout=30)
async def test_a_cursor_from_before_a_restart_resumes_exactly(servers, transport):
    srv = await servers.start()
    alice, bob = await user(srv, "alice"), await user(srv, "bob")
    cursor = await read_until_then_leave(transport, bob, alice, "last seen")
    missed = [await post(alice, f"missed {i}") for i in range(3)]
    await srv.stop()

    await servers.start(port=srv.port)
    missed.append(await post(alice, "missed after restart"))

    if transport == "ws":
        b, received, _ = await open_ws(bob, cursor=cursor)
        assert received[:4] == missed
        marker = await post(alice, "marker")
        received += await events_until(b, "marker")
    else:
        received, cursor = await poll(bob, cursor)
        assert received[:4] == missed
        marker = await post(alice, "marker")
        received += (await poll_until(bob, cursor, "marker"))[0]
    # Bob was present before the restart and came back within the grace period: his return
    # is no new join, and nothing else differs.
    assert received == missed + [marker]


@pytest.mark.gen_test(timeout=30)
async def test_after_a_restart_only_people_who_do_not_return_leave(servers):
    srv = await servers.start(grace_period=1)
    alice, bob = await user(srv, "alice"), await user(srv, "bob")
    a_sock, _, _ = await open_ws(alice)
    _b_sock, _, nicks = await open_ws(bob)  # held open: bob stays connected
    assert nicks == ["alice", "bob"]
    cursor = (await post(alice, "before the restart"))["id"]
    await srv.stop()

    await servers.start(port=srv.port, grace_period=1)
    a_sock, backlog, nicks = await open_ws(alice, cursor=cursor)
    # Both are still present: bob may yet come back within the grace period.
    assert backlog == [] and nicks == ["alice", "bob"]
    # He does not: one leave, after the grace period; alice's return was no new join.
    frames = await frames_until(a_sock, lambda f: f["type"] == "event")
    assert [(f["event"]["type"], f["event"]["nick"]) for f in frames if f["type"] == "event"] == [
        ("leave", "bob")
    ]
    marker = await post(alice, "marker")
    assert await events_until(a_sock, "marker") == [marker]


@pytest.mark.gen_test(timeout=30)
async def test_sessions_stay_valid_across_a_restart(servers):
    srv = await servers.start()
    alice, bob = await user(srv, "alice"), await user(srv, "bob")
    await srv.stop()

    srv = await servers.start(port=srv.port)
    assert await alice.get_json("/api/session") == (200, {"nick": "alice"})
    b, _, _ = await open_ws(bob)
    sent = await post(alice, "still me")
    assert sent["nick"] == "alice"
    assert messages(await events_until(b, "still me")) == [sent]
    # And the nickname is still held.
    code, body = await srv.client().post_json("/api/session", {"nick": "ALICE"})
    assert (code, body["error"]) == (409, "nick_taken")


# -- who may open a WebSocket ---------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_websocket_without_a_session_is_refused_with_403(servers):
    srv = await servers.start()
    with pytest.raises(HTTPClientError) as refused:
        await srv.client().ws(ROOM)
    assert refused.value.code == 403


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("cursor", ["abc", "000000000099"])
async def test_websocket_with_a_cursor_never_issued_is_refused_with_400(servers, cursor):
    # Refused before the upgrade, as plain HTTP: a client must not mistake it for a
    # connection problem and retry the same cursor forever.
    srv = await servers.start()
    alice = await user(srv, "alice")
    with pytest.raises(HTTPClientError) as refused:
        await alice.ws(ROOM, cursor=cursor)
    assert refused.value.code == 400
    assert json.loads(refused.value.response.body)["error"] == "bad_cursor"


@pytest.mark.gen_test(timeout=30)
async def test_websocket_from_a_foreign_origin_is_refused_with_403(servers):
    srv = await servers.start()
    alice = await user(srv, "alice")
    for origin in ("http://evil.example", f"http://127.0.0.1.evil.example:{srv.port}", "null"):
        with pytest.raises(HTTPClientError) as refused:
            await alice.ws(ROOM, origin=origin)
        assert refused.value.code == 403, origin
    # A refused socket never joined the room.
    assert await alice.get_json(f"/api/rooms/{ROOM}/presence") == (200, {"nicks": []})


@pytest.mark.gen_test(timeout=30)
async def test_websocket_with_no_origin_its_own_origin_or_an_allowed_one_opens(servers):
    srv = await servers.start(allowed_origins=("http://friend.example",))
    alice = await user(srv, "alice")
    for origin in (None, srv.url, "http://friend.example"):
        sock, _, nicks = await open_ws(alice, origin=origin)
        assert nicks == ["alice"], origin
        sock.close()
    with pytest.raises(HTTPClientError) as refused:
        await alice.ws(ROOM, origin="http://evil.example")
    assert refused.value.code == 403


# -- presence, join and leave ---------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_opening_a_websocket_joins_once_and_tells_everyone_who_is_here(servers):
    srv = await servers.start()
    zed, amy = await user(srv, "zed"), await user(srv, "amy")
    z, z_backlog, nicks = await open_ws(zed)
    assert nicks == ["zed"]

    tab1, backlog1, nicks1 = await open_ws(amy)
    tab2, backlog2, nicks2 = await open_ws(amy)  # a second tab of the same session
    assert nicks1 == nicks2 == ["amy", "zed"]  # sorted

    z.send("marker", "m")
    frames = await frames_until(z, lambda f: is_message(f, "marker"))
    # What each connection was shown at opening plus what came since: the room's whole log.
    expected = [("join", "zed"), ("join", "amy"), ("message", "zed")]
    events = z_backlog + [f["event"] for f in frames if f["type"] == "event"]
    assert [(e["type"], e["nick"]) for e in events] == expected
    assert [f["nicks"] for f in frames if f["type"] == "presence"] == [["amy", "zed"]]
    for tab, backlog in ((tab1, backlog1), (tab2, backlog2)):
        events = backlog + await events_until(tab, "marker")
        assert [(e["type"], e["nick"]) for e in events] == expected


@pytest.mark.gen_test(timeout=30)
async def test_a_sockets_join_comes_before_a_message_sent_once_it_is_open(servers):
    # The first socket of a room that is not loaded yet: the race is widest there.
    srv = await servers.start()
    alice, bob = await user(srv, "alice"), await user(srv, "bob")
    for i in range(10):
        room = f"fresh{i}"
        sock = await bob.ws(room)  # the handshake is done: bob is in the room
        sent = await post(alice, "hi bob", room)
        events = await events_until(sock, "hi bob")
        assert [(e["type"], e["nick"]) for e in events] == [("join", "bob"), ("message", "alice")]
        assert events[-1] == sent
        sock.close()


@pytest.mark.gen_test(timeout=30)
async def test_closing_the_last_websocket_leaves_only_after_the_grace_period(servers):
    grace = 1.0
    srv = await servers.start(grace_period=grace)
    alice, bob = await user(srv, "alice"), await user(srv, "bob")
    a, _, _ = await open_ws(alice)
    b, _, _ = await open_ws(bob)
    await wait_joins(a, {"bob"})

    closed_at = time.monotonic()
    b.close()
    frames = await frames_until(a, lambda f: f["type"] == "event")
    left_after = time.monotonic() - closed_at

    assert (frames[-1]["event"]["type"], frames[-1]["event"]["nick"]) == ("leave", "bob")
    assert left_after >= grace
    assert [f["nicks"] for f in frames if f["type"] == "presence"] == [["alice"]]
    assert await alice.get_json(f"/api/rooms/{ROOM}/presence") == (200, {"nicks": ["alice"]})


@pytest.mark.gen_test(timeout=30)
async def test_closing_a_tab_or_reconnecting_within_the_grace_period_is_no_leave_or_join(
    servers,
):
    grace = 1.0
    srv = await servers.start(grace_period=grace)
    alice, bob, carol = [await user(srv, n) for n in ("alice", "bob", "carol")]
    a, _, _ = await open_ws(alice)
    bob_tab1, _, _ = await open_ws(bob)
    bob_tab2, _, _ = await open_ws(bob)
    c, _, _ = await open_ws(carol)
    await wait_joins(a, {"bob", "carol"})

    bob_tab1.close()  # bob closes one of his two tabs; the other stays open
    c.close()  # carol reloads her page
    await c.closed_with()
    c, _, nicks = await open_ws(carol)
    assert nicks == ["alice", "bob", "carol"]
    await asyncio.sleep(grace + 1.0)  # let the grace period and a sweep pass

    a.send("marker", "m")
    assert [(e["type"], e["text"]) for e in await a.events(1)] == [("message", "marker")]
    assert texts(await events_until(bob_tab2, "marker")) == ["marker"]  # still live
    assert await alice.get_json(f"/api/rooms/{ROOM}/presence") == (
        200, {"nicks": ["alice", "bob", "carol"]}
    )


@pytest.mark.gen_test(timeout=30)
async def test_a_long_polling_session_is_present_while_it_polls(servers):
    srv = await servers.start()
    alice, carol = await user(srv, "alice"), await user(srv, "carol")
    a, _, _ = await open_ws(alice)

    await start_polling(carol)

    frames = await frames_until(a, lambda f: f["type"] == "event" and is_join(f["event"], "carol"))
    assert [f["nicks"] for f in frames if f["type"] == "presence"] == [["alice", "carol"]]
    assert await alice.get_json(f"/api/rooms/{ROOM}/presence") == (
        200, {"nicks": ["alice", "carol"]}
    )


@pytest.mark.gen_test(timeout=30)
async def test_logging_out_leaves_at_once_and_closes_the_sessions_connections(servers):
    srv = await servers.start(grace_period=60)
    alice, bob = await user(srv, "alice"), await user(srv, "bob")
    a, _, _ = await open_ws(alice)
    tab1, _, _ = await open_ws(bob)
    tab2, _, _ = await open_ws(bob)
    await wait_joins(a, {"bob"})
    _, cursor = await poll(bob)  # bob's join is stored: this is the latest cursor
    waiting = asyncio.ensure_future(bob.poll(ROOM, cursor))
    await eventually(lambda: parked_polls(srv) == 1, "bob's parked poll")

    response = await bob.request("DELETE", "/api/session")
    assert response.code == 204

    frames = await frames_until(a, lambda f: f["type"] == "event")
    event = frames[-1]["event"]
    assert (event["type"], event["nick"]) == ("leave", "bob")  # now, not after 60 s
    assert [f["nicks"] for f in frames if f["type"] == "presence"] == [["alice"]]
    for tab in (tab1, tab2):
        assert await tab.closed_with() is not None
    code, body = await waiting
    assert (code, body["error"]) == (401, "no_session")
    assert await srv.client().post_json("/api/session", {"nick": "bob"}) == (
        200, {"nick": "bob"}
    )


@pytest.mark.gen_test(timeout=30)
async def test_a_session_that_never_connects_frees_its_nickname_after_the_ttl(servers):
    srv = await servers.start(unused_session_ttl=1)
    idle = await user(srv, "idle")
    other = srv.client()
    code, body = await other.post_json("/api/session", {"nick": "idle"})
    assert (code, body["error"]) == (409, "nick_taken")

    deadline = time.monotonic() + WAIT_SECONDS
    while code != 200:
        assert time.monotonic() < deadline, "the unused session never expired"
        await asyncio.sleep(0.1)
        code, body = await other.post_json("/api/session", {"nick": "idle"})

    assert body == {"nick": "idle"}
    assert await idle.get_json("/api/session") == (200, {"nick": None})


@pytest.mark.gen_test(timeout=30)
async def test_a_connected_session_keeps_its_nickname_past_the_unused_ttl(servers):
    ttl = 1.0
    # The sweep that keeps connected sessions alive runs every grace/2 s: inside the TTL.
    srv = await servers.start(unused_session_ttl=ttl, grace_period=1)
    busy = await user(srv, "busy")
    sock, _, _ = await open_ws(busy)  # and stays connected

    await asyncio.sleep(ttl + 1.0)  # let the unused-session TTL pass

    code, body = await srv.client().post_json("/api/session", {"nick": "busy"})
    assert (code, body["error"]) == (409, "nick_taken")
    assert await busy.get_json("/api/session") == (200, {"nick": "busy"})
    sock.send("still busy", "c1")
    assert (await sock.next("ack"))["event"]["nick"] == "busy"


# -- a long-poll whose client goes away -----------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_a_long_poll_closed_by_its_client_leaves_the_waiter_list_at_once(servers):
    srv = await servers.start(poll_timeout=25)
    carol, dave = await user(srv, "carol"), await user(srv, "dave")
    await start_polling(carol)
    cursor = await start_polling(dave)  # dave's join is the last event
    staying = await parked_poll(srv, dave, cursor)

    _, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    cookies = "; ".join(f"{k}={v}" for k, v in carol.cookies.items())
    writer.write(
        f"GET /api/rooms/{ROOM}/updates?cursor={cursor} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{srv.port}\r\nCookie: {cookies}\r\n\r\n".encode()
    )
    await eventually(lambda: parked_polls(srv) == 2, "carol's poll parked")

    writer.close()
    await eventually(lambda: parked_polls(srv) == 1, "carol's poll dropped", timeout=2)

    # The other poll is still parked, and still served.
    event = await post(carol, "still served")
    assert await staying == ([event], event["id"])


# -- memory: idle rooms ---------------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_an_idle_room_leaves_memory_and_comes_back_intact(servers):
    srv = await servers.start()
    alice = await user(srv, "alice")
    sent = [await post(alice, f"m{i}", "quiet") for i in range(3)]
    busy, _, _ = await open_ws(alice)  # someone stays in ROOM

    evicted = srv.chat.evict_idle_rooms(idle_for=0)
    assert evicted == ["quiet"]  # not ROOM: it has a connection
    # The next visitor finds it as it was; new ids continue after the old ones.
    events, _ = await poll(alice, "", room="quiet")
    assert messages(events) == sent
    later = await post(alice, "after", "quiet")
    assert later["id"] > sent[-1]["id"]
    busy.close()
