"""Acting on a message (contract, part 2: "More kinds of events, one log", "Acting on a
message"): every row of the table and every error, over HTTP and over a WebSocket.

What a user notices: a reply shows what it answers; an edit changes the text everywhere and
says "edited"; a deleted message's text is gone for everyone, for good; reactions count
people, each once; and a client that reads the log (live, or resuming) ends up with exactly
what /history shows.
"""

from __future__ import annotations

import pytest

from tests.acting import Actor, current, joined, replay
from tests.steps import (
    ROOM,
    history,
    new_cid,
    open_ws,
    poll,
    poll_until,
)

TRANSPORTS = ["http", "ws"]


async def pair(servers, transport: str, **options) -> tuple[Actor, Actor]:
    srv = await servers.start(**options)
    return (await Actor.join(srv, "an", transport), await Actor.join(srv, "bo", transport))


def close(*actors: Actor) -> None:
    for actor in actors:
        actor.close()


# -- reply ----------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.gen_test(timeout=30)
async def test_a_reply_carries_what_it_answers_taken_when_it_was_sent(servers, transport):
    an, bo = await pair(servers, transport)
    original = (await an.send("x" * 150)).ok()
    reply = (await bo.send("agreed", reply_to=original["id"])).ok()
    assert reply["reply_to"] == original["id"]
    assert reply["reply_preview"] == {"nick": "an", "text": "x" * 140}
    # Taken at send time: a later edit of the original does not change the reply's preview.
    (await an.edit(original["id"], "changed")).ok()
    page = await history(an.client)
    assert current(page, reply["id"])["reply_preview"] == {"nick": "an", "text": "x" * 140}
    close(an, bo)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.gen_test(timeout=30)
async def test_a_reply_to_what_is_not_a_message_of_the_room_is_refused(servers, transport):
    an, bo = await pair(servers, transport)
    sock, join = await joined(an.client)
    other_room = await Actor.join(servers.started[0], "cy", "http", room="elsewhere")
    for text in ("in", "another", "room"):
        elsewhere = (await other_room.send(text)).ok()  # ids this room has not reached
    assert join["id"] < elsewhere["id"]
    for reply_to in ["999999999999", join["id"], elsewhere["id"], "42", 42, ["x"]]:
        answer = await bo.send("re", reply_to=reply_to)
        assert (answer.status, answer.error) == (400, "bad_reply"), (reply_to, answer.body)
    assert [e for e in await history(an.client) if e["type"] == "message"] == []
    sock.close()
    close(an, bo, other_room)


# -- mentions --------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_mentions_are_found_by_the_server_case_insensitively_each_once(servers):
    an, bo = await pair(servers, "http")
    event = (await an.send("@bo look, @BO! mail me at an@example.org, @cy.")).ok()
    assert event["mentions"] == ["bo", "cy"]
    assert "mentions" not in (await an.send("no one here")).ok()
    edit = (await an.edit(event["id"], "now only @dz")).ok()
    assert edit["mentions"] == ["dz"]
    assert current(await history(an.client), event["id"])["mentions"] == ["dz"]
    close(an, bo)


# -- edit -------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.gen_test(timeout=30)
async def test_the_sender_edits_a_message_and_everyone_sees_the_new_text(servers, transport):
    an, bo = await pair(servers, transport)
    watcher, _, _ = await open_ws(bo.client)
    message = (await an.send("helo  ")).ok()
    edit = (await an.edit(message["id"], "  hello <b>")).ok()
    assert {k: edit[k] for k in ("type", "nick", "target", "text")} == {
        "type": "edit", "nick": "an", "target": message["id"], "text": "hello <b>"}
    assert edit["id"] > message["id"]
    # Live: the message, then the edit, as events of the log.
    seen = [f["event"] for f in watcher.frames if f["type"] == "event"]
    while not any(e["id"] == edit["id"] for e in seen):
        seen.append((await watcher.next("event"))["event"])
    assert [e["type"] for e in seen[-2:]] == ["message", "edit"]
    # The current state: the edited text, and when; the edit itself is not listed.
    page = await history(an.client)
    assert current(page, message["id"])["text"] == "hello <b>"
    assert current(page, message["id"])["edited"] == edit["ts"]
    assert all(e["type"] != "edit" for e in page)
    watcher.close()
    close(an, bo)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.gen_test(timeout=30)
async def test_only_the_sender_may_edit_and_bad_edits_change_nothing(servers, transport):
    an, bo = await pair(servers, transport)
    sock, join = await joined(an.client)
    message = (await an.send("mine")).ok()
    refused = [
        (await bo.edit(message["id"], "theirs"), 403, "not_yours"),
        (await an.edit("999999999999", "nothing there"), 404, "no_such_message"),
        (await an.edit(join["id"], "a join"), 404, "no_such_message"),
        (await an.edit("not-an-id", "x"), 404, "no_such_message"),
        (await an.edit(message["id"], "   "), 400, "bad_text"),
        (await an.edit(message["id"], "x" * 2001), 400, "bad_text"),
        (await an.edit(message["id"], "ok", cid="c" * 65), 400, "bad_client_id"),
    ]
    for answer, status, error in refused:
        assert (answer.status, answer.error) == (status, error), answer.body
    page = await history(an.client)
    assert current(page, message["id"]) == message  # unchanged, not "edited"
    assert [e["type"] for e in page if e["type"] not in ("join",)] == ["message"]
    sock.close()
    close(an, bo)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.gen_test(timeout=30)
async def test_repeating_an_edits_client_id_returns_the_first_edit(servers, transport):
    an, bo = await pair(servers, transport)
    message = (await an.send("one")).ok()
    first = (await an.edit(message["id"], "two", cid="e1")).ok()
    again = (await an.edit(message["id"], "three", cid="e1")).ok()
    assert again == first
    assert current(await history(an.client), message["id"])["text"] == "two"
    events, _ = await poll(bo.client, message["id"])
    assert [e["id"] for e in events if e["type"] == "edit"] == [first["id"]]
    close(an, bo)


# -- delete ------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.gen_test(timeout=30)
async def test_a_deleted_messages_text_is_gone_from_every_later_answer(servers, transport):
    an, bo = await pair(servers, transport)
    _, before = await poll(bo.client, None)
    message = (await an.send("secret @bo")).ok()
    edit = (await an.edit(message["id"], "more secret")).ok()
    reply = (await bo.send("what secret?", reply_to=message["id"])).ok()
    (await bo.react(message["id"], "👍")).ok()
    delete = (await an.delete(message["id"])).ok()
    assert {k: delete[k] for k in ("type", "nick", "target")} == {
        "type": "delete", "nick": "an", "target": message["id"]}

    tombstone = {k: message[k] for k in ("id", "room", "type", "nick", "ts")}
    tombstone["deleted"] = True
    page = await history(an.client)
    assert current(page, message["id"]) == tombstone
    assert current(page, reply["id"])["reply_preview"] == {"nick": "an", "deleted": True}
    newcomer, _ = await poll(bo.client, None)
    resumed, _ = await poll_until(bo.client, before, "what secret?")
    ws, backlog, _ = await open_ws(bo.client, cursor=before)
    for answer in (page, newcomer, resumed, backlog):
        assert "secret" not in repr([e for e in answer if e["id"] != reply["id"]])
        assert current(answer, message["id"]) == tombstone
        assert "text" not in current(answer, reply["id"])["reply_preview"]
    assert all("text" not in e for e in resumed + backlog if e["id"] == edit["id"])
    ws.close()
    close(an, bo)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.gen_test(timeout=30)
async def test_deleting_twice_returns_the_first_delete_and_only_the_sender_may(servers,
                                                                                transport):
    an, bo = await pair(servers, transport)
    message = (await an.send("to go")).ok()
    answer = await bo.delete(message["id"])
    assert (answer.status, answer.error) == (403, "not_yours")
    assert (await an.delete("999999999999")).error == "no_such_message"
    first = (await an.delete(message["id"])).ok()
    assert (await an.delete(message["id"])).ok() == first  # another client_id, same answer
    # A deleted message takes no edits or reactions.
    for refused in (await an.edit(message["id"], "back"), await bo.react(message["id"], "👍")):
        assert (refused.status, refused.error) == (409, "deleted"), refused.body
    events, _ = await poll(bo.client, message["id"])
    assert [e["type"] for e in events] == ["delete"]
    close(an, bo)


@pytest.mark.gen_test(timeout=30)
async def test_a_delete_over_http_needs_no_body(servers):
    an, _bo = await pair(servers, "http")
    message = (await an.send("bye")).ok()
    response = await an.client.request("DELETE", f"/api/rooms/{ROOM}/messages/{message['id']}")
    assert response.code == 200, response.body
    assert current(await history(an.client), message["id"])["deleted"] is True
    close(an, _bo)


# -- react -------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.gen_test(timeout=30)
async def test_reactions_are_a_set_per_person_in_the_order_people_reacted(servers, transport):
    an, bo = await pair(servers, transport)
    message = (await an.send("react to me")).ok()
    first = await bo.react(message["id"], "👍")
    assert first.ok()["type"] == "reaction" and first.event["on"] is True  # type: ignore
    assert first.reactions == {"👍": ["bo"]}
    assert (await an.react(message["id"], "🎉")).reactions == {"👍": ["bo"], "🎉": ["an"]}
    assert (await an.react(message["id"], "👍")).reactions == {"👍": ["bo", "an"], "🎉": ["an"]}
    # Adding one already there, removing one not there: nothing stored, the current map.
    for noop in (await bo.react(message["id"], "👍"), await bo.react(message["id"], "🎉", False)):
        assert noop.status == 200 and noop.event is None, noop.body
        assert noop.reactions == {"👍": ["bo", "an"], "🎉": ["an"]}
    off = await bo.react(message["id"], "👍", False)
    assert off.ok()["on"] is False and off.reactions == {"👍": ["an"], "🎉": ["an"]}
    assert current(await history(an.client), message["id"])["reactions"] == {
        "👍": ["an"], "🎉": ["an"]}
    events, _ = await poll(an.client, message["id"])
    assert [(e["nick"], e["emoji"], e["on"]) for e in events if e["type"] == "reaction"] == [
        ("bo", "👍", True), ("an", "🎉", True), ("an", "👍", True), ("bo", "👍", False)]
    close(an, bo)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.gen_test(timeout=30)
async def test_a_reaction_is_one_emoji_grapheme(servers, transport):
    an, bo = await pair(servers, transport)
    message = (await an.send("emoji")).ok()
    for emoji in ["👍🏽", "👩‍💻", "👨‍👩‍👧", "🇫🇷", "1️⃣", "🏴󠁧󠁢󠁳󠁣󠁴󠁿"]:
        assert (await bo.react(message["id"], emoji)).ok()["emoji"] == emoji
    # Written without its variation selector, a heart is the same reaction as with it.
    assert (await an.react(message["id"], "❤")).ok()["emoji"] == "❤️"
    assert (await bo.react(message["id"], "❤️")).reactions["❤️"] == ["an", "bo"]  # type: ignore
    for bad in ["a", "👍👍", "", "🏽", "👍 ", ":+1:", "\u200d", 128077, None, ["👍"], "x" * 40]:
        answer = await bo.react(message["id"], bad)
        assert (answer.status, answer.error) == (400, "bad_emoji"), (bad, answer.body)
    answer = await bo.react(message["id"], "👍", on="yes")
    assert (answer.status, answer.error) == (400, "bad_reaction")
    assert (await bo.react("999999999999", "👍")).error == "no_such_message"
    page = await history(an.client)
    assert list(current(page, message["id"])["reactions"]) == [
        "👍🏽", "👩‍💻", "👨‍👩‍👧", "🇫🇷", "1️⃣", "🏴󠁧󠁢󠁳󠁣󠁴󠁿", "❤️"]
    close(an, bo)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.gen_test(timeout=30)
async def test_repeating_a_reactions_client_id_returns_the_first_event(servers, transport):
    an, bo = await pair(servers, transport)
    message = (await an.send("once")).ok()
    first = await bo.react(message["id"], "👍", cid="r1")
    (await an.react(message["id"], "👍")).ok()
    again = await bo.react(message["id"], "👍", False, cid="r1")  # a repeat: not a removal
    assert again.ok() == first.event
    assert again.reactions == {"👍": ["bo", "an"]}
    close(an, bo)


# -- one log: live, resumed, newcomer -----------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.gen_test(timeout=40)
async def test_a_client_replaying_the_log_ends_with_what_history_shows(servers, transport):
    """Live over a socket, and by long-poll from the start: every action arrives as an event
    of the log, and applying them gives exactly the current state of /history."""
    an, bo = await pair(servers, transport)
    live, _, _ = await open_ws(bo.client, cursor="")
    m1 = (await an.send("first")).ok()
    m2 = (await bo.send("second", reply_to=m1["id"])).ok()
    (await an.edit(m1["id"], "first, edited")).ok()
    (await bo.react(m1["id"], "👍")).ok()
    (await an.react(m2["id"], "🎉")).ok()
    (await bo.delete(m2["id"])).ok()
    (await bo.react(m1["id"], "👍", False)).ok()
    last = (await an.send("last")).ok()

    page = await history(an.client)
    shown = {e["id"]: e for e in page if e["type"] == "message"}
    polled, _ = await poll_until(bo.client, "", "last")
    frames = []
    while not any(f["type"] == "event" and f["event"]["id"] == last["id"] for f in frames):
        frames.append(await live.next())
    for log in (polled, [f["event"] for f in frames if f["type"] == "event"]):
        state: dict = {}
        replay(state, log)
        assert state == shown
    live.close()
    close(an, bo)


@pytest.mark.gen_test(timeout=40)
async def test_a_newcomer_sees_current_state_even_when_memory_holds_only_actions(servers):
    """history_size=5: the last five events of the log are reactions, so the newcomer's
    answer is read from MongoDB, still in current state, with the log's end as its cursor."""
    an, bo = await pair(servers, "http", history_size=5)
    messages = [(await an.send(f"m{i}")).ok() for i in range(3)]
    for emoji in ["👍", "🎉", "😀", "🙂", "🚀", "🔥"]:
        (await bo.react(messages[0]["id"], emoji)).ok()
    events, cursor = await poll(bo.client, None)
    assert [e["type"] for e in events][-3:] == ["message"] * 3
    assert all(e["type"] not in ("edit", "delete", "reaction") for e in events)
    assert list(current(events, messages[0]["id"])["reactions"]) == [
        "👍", "🎉", "😀", "🙂", "🚀", "🔥"]
    later = (await an.send("after")).ok()
    resumed, _ = await poll(bo.client, cursor)
    # Nothing of what the first answer showed comes again (bo's own join is new).
    assert [e for e in resumed if e["type"] != "join"] == [later]
    assert all(e["id"] > cursor for e in resumed)
    ws, backlog, _ = await open_ws(bo.client)
    assert [e["id"] for e in backlog] == [e["id"] for e in events + resumed]
    ws.close()
    close(an, bo)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.gen_test(timeout=40)
async def test_a_resume_older_than_memory_gets_actions_on_messages_older_than_its_cursor(
        servers, transport):
    an, bo = await pair(servers, "http", history_size=5)
    old = (await an.send("old")).ok()
    cursor = old["id"]  # a client that saw "old", then went away
    edit = (await an.edit(old["id"], "old, edited")).ok()
    reaction = (await bo.react(old["id"], "👍")).ok()
    for i in range(8):  # pushes the actions out of the buffer of five
        (await an.send(f"filler {i}")).ok()
    assert servers.started[0].chat.loaded_room(ROOM).floor > cursor
    if transport == "http":
        resumed, _ = await poll_until(bo.client, cursor, "filler 7")
    else:
        ws, resumed, _ = await open_ws(bo.client, cursor=cursor)
        ws.close()
    assert [e["id"] for e in resumed[:2]] == [edit["id"], reaction["id"]]
    assert resumed[0]["text"] == "old, edited" and resumed[1]["emoji"] == "👍"
    close(an, bo)


@pytest.mark.gen_test(timeout=60)
async def test_actions_survive_a_restart_and_a_cursor_from_before_it_gets_them(servers):
    srv = await servers.start()
    an = await Actor.join(srv, "an", "http")
    message = (await an.send("before the restart")).ok()
    _, cursor = await poll(an.client, message["id"])
    (await an.edit(message["id"], "edited")).ok()
    (await an.react(message["id"], "👍")).ok()
    await srv.stop()
    srv = await servers.start(port=srv.port)
    (await an.react(message["id"], "🎉")).ok()
    events, _ = await poll(an.client, cursor)
    assert [e["type"] for e in events if e["type"] != "join"] == ["edit", "reaction", "reaction"]
    shown = current(await history(an.client), message["id"])
    assert shown["text"] == "edited" and shown["reactions"] == {"👍": ["an"], "🎉": ["an"]}
    (await an.delete(message["id"])).ok()
    events, _ = await poll(an.client, cursor)
    assert "edited" not in repr(events)
    close(an)


@pytest.mark.gen_test(timeout=30)
async def test_actions_are_rate_limited_like_sends(servers):
    srv = await servers.start(rate_limit=1)
    an = await Actor.join(srv, "an", "http")
    message = (await an.send("hi")).ok()
    answers = [await an.react(message["id"], e) for e in ["👍", "🎉", "😀", "🙂"]]
    assert "rate_limited" in [a.error for a in answers]
    close(an)


@pytest.mark.gen_test(timeout=30)
async def test_an_unknown_frame_type_gets_an_error_frame_and_the_socket_stays(servers):
    an, bo = await pair(servers, "ws")
    assert an.sock is not None
    an.sock.conn.write_message('{"type": "pin", "target": "000000000001"}')
    assert (await an.sock.next("error"))["error"] == "bad_frame"
    assert (await an.send("still here", cid=new_cid())).ok()["text"] == "still here"
    close(an, bo)


EMOJI_21 = list("😀😁😂🤣😃😄😅😆😉😊😋😎😍😘🥰😗😙🥲😚🙂🤗")


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.gen_test(timeout=40)
async def test_reactions_per_person_and_per_message_are_bounded(servers, transport, monkeypatch):
    an, bo = await pair(servers, transport)
    message = (await an.send("popular")).ok()
    for emoji in EMOJI_21[:20]:
        (await bo.react(message["id"], emoji)).ok()
    refused = await bo.react(message["id"], EMOJI_21[20])
    assert (refused.status, refused.error) == (409, "too_many_reactions"), refused.body
    (await bo.react(message["id"], EMOJI_21[0], False)).ok()  # one back: room for another
    assert (await bo.react(message["id"], EMOJI_21[20])).ok()["emoji"] == EMOJI_21[20]
    # The message's own bound (1000 in all): lowered here, so two people reach it.
    monkeypatch.setattr("chatapp.rules.MAX_REACTIONS_PER_MESSAGE", 22)
    (await an.react(message["id"], "👍")).ok()
    (await an.react(message["id"], "👎")).ok()
    refused = await an.react(message["id"], "🎉")
    assert (refused.status, refused.error) == (409, "too_many_reactions"), refused.body
    assert sum(map(len, current(await history(an.client), message["id"])["reactions"]
                   .values())) == 22
    close(an, bo)


@pytest.mark.gen_test(timeout=30)
async def test_a_reply_to_a_deleted_message_quotes_no_text(servers):
    an, bo = await pair(servers, "http")
    message = (await an.send("gone soon")).ok()
    (await an.delete(message["id"])).ok()
    reply = (await bo.send("too late", reply_to=message["id"])).ok()
    assert reply["reply_preview"] == {"nick": "an", "deleted": True}
    close(an, bo)


@pytest.mark.gen_test(timeout=40)
async def test_an_event_of_a_kind_this_version_does_not_know_is_shown_by_its_base_fields(
        servers):
    """A newer version in the same cluster (a rolling upgrade) may store kinds this one does
    not know: they are read, listed and resumed with their base fields, and change nothing."""
    srv = await servers.start()
    an = await Actor.join(srv, "an", "http")
    message = (await an.send("before")).ok()
    # The one look inside: written as a newer version's writer would.
    await srv.store.append(ROOM, [{"type": "poll", "nick": "cy", "ts": 1.0, "target": message["id"],
                                   "question": "lunch?", "sid": "s", "cid": "c"}])
    await srv.stop()
    srv = await servers.start(port=srv.port)  # loads the room again, the new kind with it
    after = (await an.send("after")).ok()
    for events in ((await poll(an.client, message["id"]))[0], await history(an.client),
                   (await poll(an.client, None))[0]):
        unknown = [e for e in events if e["type"] == "poll"]
        assert len(unknown) == 1 and set(unknown[0]) == {"id", "room", "type", "nick", "ts"}
        assert current(events, after["id"])["text"] == "after"
    assert current(await history(an.client), message["id"])["text"] == "before"
    close(an)
