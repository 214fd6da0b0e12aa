"""The HTTP contract (API.md): every endpoint and rule, as a client over the wire sees it.

Each test starts its own server (and gets its own database). Nothing here sleeps to wait for
something to happen: tests wait for the answer or the event itself. The only sleeps let a
timeout elapse on purpose.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from html.parser import HTMLParser
from urllib.parse import urlencode

import pytest

from tests.harness import WAIT_SECONDS, ChatServer, Client

ID_RE = re.compile(r"[0-9]{12}")


# -- helpers ----------------------------------------------------------------------------------


async def user(srv: ChatServer, nick: str) -> Client:
    """A client holding a session with ``nick``."""
    return await srv.client().join(nick)


async def history(client: Client, room: str, **params: object) -> dict:
    query = "?" + urlencode(params) if params else ""
    code, body = await client.get_json(f"/api/rooms/{room}/history{query}")
    assert code == 200, (code, body)
    return body


async def all_events(client: Client, room: str) -> list[dict]:
    return (await history(client, room, limit=200))["events"]


def messages(events: list[dict]) -> list[dict]:
    return [e for e in events if e["type"] == "message"]


def texts(events: list[dict]) -> list[str]:
    return [e["text"] for e in messages(events)]


async def sent(client: Client, room: str, text: str, client_id: str) -> dict:
    """Send a message that must be accepted; its event."""
    code, body = await client.send(room, text, client_id)
    assert code == 200, (code, body)
    return body["event"]


async def send_many(client: Client, room: str, count: int, chunk: int = 100) -> list[dict]:
    """Send m1..m<count> (concurrently, in chunks); their events in id order."""
    events: list[dict] = []
    for start in range(1, count + 1, chunk):
        numbers = range(start, min(start + chunk, count + 1))
        events += await asyncio.gather(*(sent(client, room, f"m{n}", f"c{n}") for n in numbers))
    return sorted(events, key=lambda e: e["id"])


async def enter(client: Client, room: str, nick: str) -> str:
    """Long-poll ``room`` until this session's own join event arrives; the cursor after it.

    Afterwards the session is present in the room (for the grace period), so later polls
    are not woken by a join of their own.
    """
    cursor = ""
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        code, body = await client.poll(room, cursor)
        assert code == 200, (code, body)
        cursor = body["cursor"]
        if any(e["type"] == "join" and e["nick"] == nick for e in body["events"]):
            return cursor
    raise AssertionError(f"{nick} never joined {room}")


async def parked(srv: ChatServer, room: str, count: int = 1) -> None:
    """Wait until ``count`` clients wait in ``room`` (a parked long-poll or an open socket).

    Looks inside the in-process server: parking is not visible on the wire, and this is what
    lets a test send strictly after a long-poll started waiting.
    """
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        buffer = srv.chat.loaded_room(room)
        if buffer is not None and len(buffer.waiting()) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"no long-poll parked in {room}")


def assert_error(code: int, body: object, status: int, error: str) -> None:
    """An error answer in the contract's shape: ``{"error": <code>, "message": <text>}``."""
    assert isinstance(body, dict) and (code, body.get("error")) == (status, error), (code, body)
    assert set(body) == {"error", "message"}, body
    assert isinstance(body["message"], str) and body["message"], body


def set_cookie(response, name: str) -> str:
    for header in response.headers.get_list("Set-Cookie"):
        if header.startswith(name + "="):
            return header
    raise AssertionError(f"no Set-Cookie for {name}: {response.headers.get_list('Set-Cookie')}")


class Inputs(HTMLParser):
    """The ``<input>`` fields of a page, by name, and the forms' actions."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.fields: dict[str, str | None] = {}
        self.actions: list[str | None] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "input" and a.get("name"):
            self.fields[a["name"]] = a.get("value")
        if tag == "form":
            self.actions.append(a.get("action"))


# -- GET/POST/DELETE /api/session --------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_session_is_null_before_joining_and_sets_xsrf_cookie(servers):
    srv = await servers.start()
    response = await srv.client().request("GET", "/api/session")
    assert response.code == 200
    assert json.loads(response.body) == {"nick": None}
    assert set_cookie(response, "_xsrf")


@pytest.mark.gen_test(timeout=30)
async def test_join_returns_nick_and_session_names_it(servers):
    srv = await servers.start()
    client = srv.client()
    assert await client.post_json("/api/session", {"nick": "an"}) == (200, {"nick": "an"})
    assert await client.get_json("/api/session") == (200, {"nick": "an"})


@pytest.mark.gen_test(timeout=30)
async def test_session_cookie_is_httponly_and_samesite_lax(servers):
    srv = await servers.start()
    client = srv.client()
    response = await client.request("POST", "/api/session", {"nick": "an"})
    assert response.code == 200
    cookie = set_cookie(response, "chatapp_session").lower()
    assert "httponly" in cookie
    assert "samesite=lax" in cookie


@pytest.mark.gen_test(timeout=30)
async def test_session_is_not_shared_with_other_clients(servers):
    srv = await servers.start()
    await user(srv, "an")
    assert await srv.client().get_json("/api/session") == (200, {"nick": None})


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize(
    "first, second",
    [("an", "an"), ("An", "an"), ("Tiếng", "tiếng"), ("Иван", "иван"), ("Иван", "ИВАН")],
)
async def test_taken_nickname_is_refused_case_insensitively(servers, first, second):
    srv = await servers.start()
    await user(srv, first)
    code, body = await srv.client().post_json("/api/session", {"nick": second})
    assert_error(code, body, 409, "nick_taken")


@pytest.mark.gen_test(timeout=30)
async def test_unicode_nicknames_are_accepted(servers):
    srv = await servers.start()
    for nick in ["Tiếng", "Иван", "李小龙", "a.b-c_d"]:
        assert await srv.client().post_json("/api/session", {"nick": nick}) == (200, {"nick": nick})


@pytest.mark.gen_test(timeout=30)
async def test_nicknames_with_combining_marks_are_accepted(servers):
    # "Any script": Devanagari vowel signs and decomposed accents are combining marks.
    srv = await servers.start()
    for nick in ["नमस्ते", "Tie\u0302\u0301ng"]:
        assert await srv.client().post_json("/api/session", {"nick": nick}) == (200, {"nick": nick})


@pytest.mark.gen_test(timeout=30)
async def test_one_nickname_typed_two_ways_is_taken(servers):
    srv = await servers.start()
    await user(srv, "Ti\u1ebfng")  # composed
    code, body = await srv.client().post_json("/api/session", {"nick": "Tie\u0302\u0301ng"})
    assert_error(code, body, 409, "nick_taken")


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize(
    "nick", ["", "   ", "a" * 33, "a b", "<b>", "a/b", "a\x00b", 5, None, ["an"], {"n": 1}]
)
async def test_invalid_nickname_is_refused(servers, nick):
    srv = await servers.start()
    client = srv.client()
    code, body = await client.post_json("/api/session", {"nick": nick})
    assert_error(code, body, 400, "bad_nick")
    assert await client.get_json("/api/session") == (200, {"nick": None})


@pytest.mark.gen_test(timeout=30)
async def test_nickname_of_32_characters_is_accepted(servers):
    srv = await servers.start()
    nick = "é" * 32
    assert await srv.client().post_json("/api/session", {"nick": nick}) == (200, {"nick": nick})


@pytest.mark.gen_test(timeout=30)
async def test_join_with_a_body_that_is_not_a_json_object_is_refused(servers):
    srv = await servers.start()
    client = srv.client()
    for body in ["not json", "[1, 2]"]:
        code, answer = await client.post_json("/api/session", body)
        assert code == 400 and set(answer) == {"error", "message"}, (code, answer)
    assert await client.get_json("/api/session") == (200, {"nick": None})


@pytest.mark.gen_test(timeout=30)
async def test_logout_answers_204_and_ends_the_session(servers):
    srv = await servers.start()
    client = await user(srv, "an")
    response = await client.request("DELETE", "/api/session")
    assert response.code == 204 and not response.body
    assert await client.get_json("/api/session") == (200, {"nick": None})
    code, body = await client.send("lobby", "hi", "c1")
    assert_error(code, body, 401, "no_session")


@pytest.mark.gen_test(timeout=30)
async def test_logout_frees_the_nickname_at_once(servers):
    srv = await servers.start()
    client = await user(srv, "an")
    assert (await client.request("DELETE", "/api/session")).code == 204
    assert await srv.client().post_json("/api/session", {"nick": "AN"}) == (200, {"nick": "AN"})


@pytest.mark.gen_test(timeout=30)
async def test_choosing_a_new_nickname_frees_the_old_one(servers):
    srv = await servers.start()
    client = await user(srv, "an")
    assert await client.post_json("/api/session", {"nick": "bo"}) == (200, {"nick": "bo"})
    assert await srv.client().post_json("/api/session", {"nick": "an"}) == (200, {"nick": "an"})


# -- XSRF ----------------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_join_without_xsrf_token_is_forbidden(servers):
    srv = await servers.start()
    client = srv.client()
    response = await client.request("POST", "/api/session", {"nick": "an"}, xsrf=False)
    assert_error(response.code, json.loads(response.body), 403, "forbidden")
    assert await srv.client().post_json("/api/session", {"nick": "an"}) == (200, {"nick": "an"})


@pytest.mark.gen_test(timeout=30)
async def test_send_without_xsrf_token_is_forbidden_and_stores_nothing(servers):
    srv = await servers.start()
    client = await user(srv, "an")  # has the _xsrf cookie, but does not echo it
    response = await client.request(
        "POST", "/api/rooms/lobby/messages", {"text": "hi", "client_id": "c1"}, xsrf=False
    )
    assert_error(response.code, json.loads(response.body), 403, "forbidden")
    assert await all_events(client, "lobby") == []


@pytest.mark.gen_test(timeout=30)
async def test_send_with_a_wrong_xsrf_token_is_forbidden(servers):
    srv = await servers.start()
    client = await user(srv, "an")
    response = await client.request(
        "POST", "/api/rooms/lobby/messages", {"text": "hi", "client_id": "c1"}, xsrf=False,
        headers={"X-XSRFToken": "forged"},
    )
    assert response.code == 403
    assert await all_events(client, "lobby") == []


@pytest.mark.gen_test(timeout=30)
async def test_logout_without_xsrf_token_is_forbidden_and_keeps_the_session(servers):
    srv = await servers.start()
    client = await user(srv, "an")
    response = await client.request("DELETE", "/api/session", xsrf=False)
    assert_error(response.code, json.loads(response.body), 403, "forbidden")
    assert await client.get_json("/api/session") == (200, {"nick": "an"})
    code, body = await srv.client().post_json("/api/session", {"nick": "an"})
    assert_error(code, body, 409, "nick_taken")


# -- POST /api/rooms/<room>/messages -------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_send_returns_the_event_in_the_contract_shape(servers):
    srv = await servers.start()
    client = await user(srv, "an")
    before = time.time()
    event = await sent(client, "lobby", "hi <b>", "c1")
    assert set(event) == {"id", "room", "type", "nick", "text", "ts"}
    assert ID_RE.fullmatch(event["id"])
    assert (event["room"], event["type"], event["nick"], event["text"]) == (
        "lobby", "message", "an", "hi <b>",
    )
    assert isinstance(event["ts"], float) and before - 1 <= event["ts"] <= time.time() + 1
    assert await all_events(client, "lobby") == [event]


@pytest.mark.gen_test(timeout=30)
async def test_ids_increase_with_every_message(servers):
    srv = await servers.start()
    client = await user(srv, "an")
    ids = [(await sent(client, "lobby", f"m{n}", f"c{n}"))["id"] for n in range(5)]
    assert ids == sorted(ids) and len(set(ids)) == 5


@pytest.mark.gen_test(timeout=30)
async def test_form_encoded_send_is_accepted(servers):
    srv = await servers.start()
    client = await user(srv, "an")
    response = await client.request(
        "POST", "/api/rooms/lobby/messages",
        form={"text": "hi from a form", "client_id": "c1", "_xsrf": client.cookies["_xsrf"]},
        xsrf=False,
    )
    assert response.code == 200, response.body
    event = json.loads(response.body)["event"]
    assert (event["nick"], event["text"]) == ("an", "hi from a form")
    assert await all_events(client, "lobby") == [event]


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("text", ["a\x00b", "a\x1bb", "a\x07b", "hi\x1f", "\x85hi"])
async def test_form_encoded_send_refuses_control_characters(servers, text):
    srv = await servers.start()
    client = await user(srv, "an")
    response = await client.request(
        "POST", "/api/rooms/lobby/messages", form={"text": text, "client_id": "c1"}
    )
    assert_error(response.code, json.loads(response.body), 400, "bad_text")
    assert await all_events(client, "lobby") == []


@pytest.mark.gen_test(timeout=30)
async def test_a_form_body_that_is_not_utf8_is_bad_json_and_stores_nothing(servers):
    # (Found by test_fuzz_actions: it was Tornado's bare "400 bad_request".)
    srv = await servers.start()
    client = await user(srv, "an")
    response = await client.request(
        "POST", "/api/rooms/lobby/messages", body=b"text=\x80&client_id=c1",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert_error(response.code, json.loads(response.body), 400, "bad_json")
    assert await all_events(client, "lobby") == []


@pytest.mark.gen_test(timeout=30)
async def test_form_line_breaks_are_stored_as_newlines(servers):
    # Browsers submit a textarea's line breaks as CRLF; the message must read the same as
    # one sent over the WebSocket with "\n".
    srv = await servers.start()
    client = await user(srv, "an")
    response = await client.request(
        "POST", "/api/rooms/lobby/messages", form={"text": "one\r\ntwo\rthree", "client_id": "c1"}
    )
    assert response.code == 200, response.body
    assert json.loads(response.body)["event"]["text"] == "one\ntwo\nthree"


@pytest.mark.gen_test(timeout=30)
async def test_send_without_session_is_refused(servers):
    srv = await servers.start()
    client = srv.client()
    code, body = await client.send("lobby", "hi", "c1")
    assert_error(code, body, 401, "no_session")
    assert await all_events(client, "lobby") == []


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize(
    "text",
    ["", "   ", "\n\t ", "a" * 2001, "a\x00b", "a\x1bb", "a\x7fb", "a\u0085b", "\ud800", 5, None],
)
async def test_bad_text_is_refused_and_stores_nothing(servers, text):
    srv = await servers.start()
    client = await user(srv, "an")
    code, body = await client.post_json(
        "/api/rooms/lobby/messages", {"text": text, "client_id": "c1"}
    )
    assert_error(code, body, 400, "bad_text")
    assert await all_events(client, "lobby") == []


@pytest.mark.gen_test(timeout=30)
async def test_text_of_2000_characters_is_accepted(servers):
    srv = await servers.start()
    client = await user(srv, "an")
    text = "ж" * 1999 + "😀"
    assert (await sent(client, "lobby", text, "c1"))["text"] == text


@pytest.mark.gen_test(timeout=30)
async def test_text_is_trimmed_and_otherwise_stored_exactly(servers):
    srv = await servers.start()
    client = await user(srv, "an")
    text = "line 1\n\tindented  <b>bold</b> & \"quotes\"\n\nTiếng Việt 😀"
    event = await sent(client, "lobby", f"  \n{text}\t \n", "c1")
    assert event["text"] == text
    assert texts(await all_events(client, "lobby")) == [text]


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("client_id", ["", "x" * 65, 5, None])
async def test_bad_client_id_is_refused(servers, client_id):
    srv = await servers.start()
    client = await user(srv, "an")
    code, body = await client.post_json(
        "/api/rooms/lobby/messages", {"text": "hi", "client_id": client_id}
    )
    assert code == 400 and set(body) == {"error", "message"}, (code, body)
    assert await all_events(client, "lobby") == []


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("room", ["a" * 65, "a%20b", "%C3%A9", "a.b"])
async def test_send_to_an_invalid_room_is_refused_and_stores_nothing(servers, room):
    srv = await servers.start()
    client = await user(srv, "an")
    code, body = await client.send(room, "hi", "c1")
    assert_error(code, body, 400, "bad_room")
    assert await srv.store.events.count_documents({}) == 0


@pytest.mark.gen_test(timeout=30)
async def test_room_name_of_64_characters_is_accepted(servers):
    srv = await servers.start()
    client = await user(srv, "an")
    room = "a-Z_9" * 12 + "abcd"
    assert (await sent(client, room, "hi", "c1"))["room"] == room


@pytest.mark.gen_test(timeout=30)
async def test_rooms_are_separate(servers):
    srv = await servers.start()
    client = await user(srv, "an")
    await sent(client, "one", "in one", "c1")
    await sent(client, "two", "in two", "c2")
    assert texts(await all_events(client, "one")) == ["in one"]
    assert texts(await all_events(client, "two")) == ["in two"]


@pytest.mark.gen_test(timeout=30)
async def test_body_over_64_kib_is_refused_as_too_large(servers):
    srv = await servers.start()
    client = await user(srv, "an")
    code, body = await client.post_json(
        "/api/rooms/lobby/messages", {"text": "a" * (64 * 1024), "client_id": "c1"}
    )
    assert_error(code, body, 413, "too_large")
    assert await all_events(client, "lobby") == []


@pytest.mark.gen_test(timeout=30)
async def test_sending_too_fast_is_rate_limited_and_refused_sends_store_nothing(servers):
    srv = await servers.start(rate_limit=2)  # bursts of 4
    client = await user(srv, "an")
    codes = []
    for n in range(6):
        code, body = await client.send("lobby", f"m{n}", f"c{n}")
        codes.append(code)
        if code != 200:
            assert_error(code, body, 429, "rate_limited")
    assert codes[:5] == [200, 200, 200, 200, 429]
    stored = texts(await all_events(client, "lobby"))
    assert stored == [f"m{n}" for n, code in enumerate(codes) if code == 200]


@pytest.mark.gen_test(timeout=30)
async def test_rate_limit_is_per_session(servers):
    srv = await servers.start(rate_limit=1)  # bursts of 2
    an, bo = await user(srv, "an"), await user(srv, "bo")
    for n in range(3):
        await an.send("lobby", f"a{n}", f"a{n}")
    assert (await bo.send("lobby", "b", "b"))[0] == 200


@pytest.mark.gen_test(timeout=30)
async def test_new_sessions_past_the_per_address_limit_are_refused_and_create_nothing(servers):
    srv = await servers.start(new_sessions_per_ip=3)
    squatter = srv.client()
    codes = []
    for n in range(4):
        code, body = await squatter.post_json("/api/session", {"nick": f"squat{n}"})
        codes.append(code)
    assert codes == [200, 200, 200, 429]
    assert_error(code, body, 429, "rate_limited")
    # Refused means not created: the nickname is free for someone at another address, and
    # the squatter still holds the session it had.
    other = srv.client()
    code, body = await other.post_json(
        "/api/session", {"nick": "squat3"}, headers={"X-Real-IP": "203.0.113.7"}
    )
    assert (code, body) == (200, {"nick": "squat3"})
    assert (await squatter.get_json("/api/session"))[1] == {"nick": "squat2"}
    # The join form says so too, in words.
    response = await srv.client().request("POST", "/join", form={"nick": "squat4"})
    assert response.code == 429
    assert "Too many new nicknames from your address" in response.body.decode()


@pytest.mark.gen_test(timeout=30)
async def test_repeated_client_id_returns_the_first_event_and_stores_it_once(servers):
    srv = await servers.start()
    client = await user(srv, "an")
    first = await sent(client, "lobby", "hi", "c1")
    assert await sent(client, "lobby", "hi", "c1") == first
    assert await sent(client, "lobby", "something else", "c1") == first
    assert await all_events(client, "lobby") == [first]


@pytest.mark.gen_test(timeout=30)
async def test_same_client_id_from_another_session_is_a_new_event(servers):
    srv = await servers.start()
    an, bo = await user(srv, "an"), await user(srv, "bo")
    a = await sent(an, "lobby", "hi", "c1")
    b = await sent(bo, "lobby", "hi", "c1")
    assert a["id"] != b["id"] and (a["nick"], b["nick"]) == ("an", "bo")
    assert await all_events(an, "lobby") == [a, b]


@pytest.mark.gen_test(timeout=30)
async def test_same_client_id_in_another_room_is_a_new_event(servers):
    srv = await servers.start()
    client = await user(srv, "an")
    one = await sent(client, "one", "hi", "c1")
    two = await sent(client, "two", "hi", "c1")
    assert (one["room"], two["room"]) == ("one", "two")
    assert await all_events(client, "one") == [one]
    assert await all_events(client, "two") == [two]


@pytest.mark.gen_test(timeout=30)
async def test_concurrent_duplicates_give_one_event(servers):
    srv = await servers.start()
    client = await user(srv, "an")
    events = await asyncio.gather(*(sent(client, "lobby", "hi", "c1") for _ in range(5)))
    assert all(e == events[0] for e in events)
    assert await all_events(client, "lobby") == [events[0]]


# -- GET /api/rooms/<room>/updates ---------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_updates_need_a_session(servers):
    srv = await servers.start()
    code, body = await srv.client().poll("lobby")
    assert_error(code, body, 401, "no_session")


@pytest.mark.gen_test(timeout=30)
async def test_updates_without_cursor_give_the_latest_history_size_events(servers):
    srv = await servers.start(history_size=5)
    client = await user(srv, "an")
    await enter(client, "lobby", "an")
    events = await send_many(client, "lobby", 8, chunk=1)
    code, body = await client.poll("lobby")
    assert code == 200
    assert body["events"] == events[-5:]
    assert texts(body["events"]) == ["m4", "m5", "m6", "m7", "m8"]
    assert body["cursor"] == events[-1]["id"]


@pytest.mark.gen_test(timeout=30)
async def test_updates_with_empty_cursor_start_at_the_first_event(servers):
    srv = await servers.start(history_size=5)
    client = await user(srv, "an")
    await enter(client, "lobby", "an")
    await send_many(client, "lobby", 8, chunk=1)
    code, body = await client.poll("lobby", "")
    assert code == 200
    assert body["events"] == await all_events(client, "lobby")
    assert [e["type"] for e in body["events"]] == ["join"] + ["message"] * 8
    assert body["cursor"] == body["events"][-1]["id"]


@pytest.mark.gen_test(timeout=30)
async def test_updates_answer_at_once_when_newer_events_exist(servers):
    srv = await servers.start()  # poll_timeout 25 s
    client = await user(srv, "an")
    cursor = await enter(client, "lobby", "an")
    events = await send_many(client, "lobby", 3)
    started = time.monotonic()
    code, body = await client.poll("lobby", cursor)
    assert time.monotonic() - started < 5
    assert (code, body) == (200, {"events": events, "cursor": events[-1]["id"]})


@pytest.mark.gen_test(timeout=30)
async def test_updates_at_the_last_event_wait_and_answer_empty_after_poll_timeout(servers):
    srv = await servers.start(poll_timeout=1)
    client = await user(srv, "an")
    await enter(client, "lobby", "an")
    last = (await sent(client, "lobby", "hi", "c1"))["id"]
    started = time.monotonic()
    code, body = await client.poll("lobby", last)
    elapsed = time.monotonic() - started
    assert (code, body) == (200, {"events": [], "cursor": last})
    assert 0.8 <= elapsed < 5


@pytest.mark.gen_test(timeout=30)
async def test_parked_long_poll_is_woken_by_a_new_message(servers):
    srv = await servers.start()  # poll_timeout 25 s: an answer now comes from the message
    an, bo = await user(srv, "an"), await user(srv, "bo")
    cursor = await enter(an, "lobby", "an")
    poll = asyncio.ensure_future(an.poll("lobby", cursor))
    await parked(srv, "lobby")
    started = time.monotonic()
    event = await sent(bo, "lobby", "wake up", "c1")
    code, body = await poll
    assert time.monotonic() - started < 5
    assert (code, body) == (200, {"events": [event], "cursor": event["id"]})


@pytest.mark.gen_test(timeout=30)
async def test_long_poll_gathered_with_a_send_returns_the_message(servers):
    srv = await servers.start()
    an, bo = await user(srv, "an"), await user(srv, "bo")
    cursor = await enter(an, "lobby", "an")
    (code, body), event = await asyncio.gather(
        an.poll("lobby", cursor), sent(bo, "lobby", "hello", "c1")
    )
    assert (code, body) == (200, {"events": [event], "cursor": event["id"]})


@pytest.mark.gen_test(timeout=60)
async def test_updates_hold_at_most_500_events_and_the_rest_follow(servers):
    srv = await servers.start()
    client = await user(srv, "an")
    await enter(client, "lobby", "an")
    sent_events = await send_many(client, "lobby", 520)
    code, first = await client.poll("lobby", "")
    assert code == 200 and len(first["events"]) == 500
    assert first["cursor"] == first["events"][-1]["id"]
    code, rest = await client.poll("lobby", first["cursor"])
    assert code == 200
    received = first["events"] + rest["events"]
    assert messages(received) == sent_events
    assert [e["type"] for e in received] == ["join"] + ["message"] * 520
    assert rest["cursor"] == sent_events[-1]["id"]


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("cursor", ["abc", "12", "0000000000001", "00000000000a", "999999999999"])
async def test_bad_cursor_is_refused(servers, cursor):
    srv = await servers.start()
    client = await user(srv, "an")
    await sent(client, "lobby", "hi", "c1")
    code, body = await client.poll("lobby", cursor)
    assert_error(code, body, 400, "bad_cursor")


@pytest.mark.gen_test(timeout=30)
async def test_cursor_just_past_the_last_issued_id_is_refused(servers):
    srv = await servers.start()
    client = await user(srv, "an")
    last = (await sent(client, "lobby", "hi", "c1"))["id"]
    code, body = await client.poll("lobby", str(int(last) + 1).zfill(12))
    assert_error(code, body, 400, "bad_cursor")


@pytest.mark.gen_test(timeout=30)
async def test_cursor_older_than_memory_is_served_from_the_store_without_gap_or_repeat(servers):
    srv = await servers.start(history_size=5)
    client = await user(srv, "an")
    await enter(client, "lobby", "an")
    events = await send_many(client, "lobby", 20, chunk=1)
    code, body = await client.poll("lobby", events[2]["id"])  # the cursor of m3
    assert code == 200
    assert body["events"] == events[3:]
    assert texts(body["events"]) == [f"m{n}" for n in range(4, 21)]
    assert body["cursor"] == events[-1]["id"]


@pytest.mark.gen_test(timeout=30)
async def test_events_of_a_room_survive_a_restart(servers):
    srv = await servers.start(history_size=5)
    client = await user(srv, "an")
    events = await send_many(client, "lobby", 3, chunk=1)
    await srv.stop()
    srv2 = await servers.start(history_size=5)
    other = await user(srv2, "bo")
    assert await all_events(other, "lobby") == events
    later = await sent(other, "lobby", "after", "c1")
    assert later["id"] > events[-1]["id"]


# -- GET /api/rooms/<room>/history ---------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_history_gives_the_latest_50_by_default_oldest_first(servers):
    srv = await servers.start()
    client = await user(srv, "an")
    events = await send_many(client, "lobby", 60)
    body = await history(client, "lobby")
    assert body == {"events": events[-50:], "has_more": True}


@pytest.mark.gen_test(timeout=30)
async def test_history_limit_goes_up_to_200(servers):
    srv = await servers.start()
    client = await user(srv, "an")
    events = await send_many(client, "lobby", 205)
    assert await history(client, "lobby", limit=200) == {"events": events[-200:], "has_more": True}
    assert await history(client, "lobby", limit=1) == {"events": events[-1:], "has_more": True}


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("limit", ["201", "0", "-1", "ten"])
async def test_history_limit_out_of_range_is_refused(servers, limit):
    srv = await servers.start()
    code, body = await srv.client().get_json(f"/api/rooms/lobby/history?limit={limit}")
    assert code == 400 and set(body) == {"error", "message"}, (code, body)


@pytest.mark.gen_test(timeout=30)
async def test_history_has_more_is_false_when_everything_fits(servers):
    srv = await servers.start()
    client = await user(srv, "an")
    events = await send_many(client, "lobby", 10)
    assert await history(client, "lobby", limit=10) == {"events": events, "has_more": False}
    assert await history(client, "lobby", limit=9) == {"events": events[1:], "has_more": True}


@pytest.mark.gen_test(timeout=30)
async def test_history_of_an_empty_room_is_empty(servers):
    srv = await servers.start()
    assert await history(srv.client(), "nobody-here") == {"events": [], "has_more": False}


@pytest.mark.gen_test(timeout=30)
async def test_history_before_pages_backwards_through_every_event_once(servers):
    srv = await servers.start(history_size=5)
    client = await user(srv, "an")
    events = await send_many(client, "lobby", 23)
    pages, before = [], None
    while True:
        params = {"limit": 5} if before is None else {"limit": 5, "before": before}
        page = await history(client, "lobby", **params)
        pages.append(page)
        if not page["has_more"]:
            break
        before = page["events"][0]["id"]
    assert [len(p["events"]) for p in pages] == [5, 5, 5, 5, 3]
    assert [p["has_more"] for p in pages] == [True] * 4 + [False]
    collected = [e for p in reversed(pages) for e in p["events"]]
    assert collected == events


@pytest.mark.gen_test(timeout=30)
async def test_history_before_the_first_event_is_empty(servers):
    srv = await servers.start()
    client = await user(srv, "an")
    first = (await send_many(client, "lobby", 3))[0]
    assert await history(client, "lobby", before=first["id"]) == {"events": [], "has_more": False}


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("before", ["abc", "12"])
async def test_history_with_a_bad_before_is_refused(servers, before):
    srv = await servers.start()
    code, body = await srv.client().get_json(f"/api/rooms/lobby/history?before={before}")
    assert_error(code, body, 400, "bad_cursor")


# -- GET /api/rooms/<room>/presence --------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_presence_lists_sorted_nicks_of_websockets_and_long_polls_in_the_room(servers):
    srv = await servers.start()
    bo, an = await user(srv, "bo"), await user(srv, "an")
    cy, dee = await user(srv, "cy"), await user(srv, "dee")
    await sent(dee, "lobby", "sending does not make you present", "c1")
    socket = await bo.ws("lobby")
    await socket.next("presence")
    await enter(an, "lobby", "an")  # a recent long-poll
    other = await cy.ws("elsewhere")
    await other.next("presence")
    assert await an.get_json("/api/rooms/lobby/presence") == (200, {"nicks": ["an", "bo"]})
    assert await an.get_json("/api/rooms/elsewhere/presence") == (200, {"nicks": ["cy"]})
    assert await an.get_json("/api/rooms/empty/presence") == (200, {"nicks": []})
    socket.close()
    other.close()


@pytest.mark.gen_test(timeout=30)
async def test_presence_counts_a_recent_long_poll(servers):
    srv = await servers.start()
    an = await user(srv, "an")
    await sent(an, "lobby", "hi", "c1")
    assert (await an.poll("lobby", ""))[0] == 200  # answered at once with "hi"
    assert (await an.get_json("/api/rooms/lobby/presence"))[1] == {"nicks": ["an"]}


@pytest.mark.gen_test(timeout=30)
async def test_logout_removes_from_presence_at_once(servers):
    srv = await servers.start()
    an, bo = await user(srv, "an"), await user(srv, "bo")
    await enter(an, "lobby", "an")
    await enter(bo, "lobby", "bo")
    assert (await an.request("DELETE", "/api/session")).code == 204
    assert await bo.get_json("/api/rooms/lobby/presence") == (200, {"nicks": ["bo"]})


# -- /healthz, errors, headers ---------------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_healthz_is_ok(servers):
    srv = await servers.start()
    assert await srv.client().get_json("/healthz") == (200, {"status": "ok"})


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize(
    "path", ["/api/rooms/a%20b/history", "/api/rooms/a%20b/updates", "/api/rooms/%C3%A9/presence"]
)
async def test_invalid_room_in_any_api_path_is_bad_room(servers, path):
    srv = await servers.start()
    client = await user(srv, "an")
    code, body = await client.get_json(path)
    assert_error(code, body, 400, "bad_room")


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/api/nope"),
        ("GET", "/api/rooms/lobby"),
        ("GET", "/api/rooms/lobby/nope"),
        ("POST", "/api/rooms/lobby/nope"),
    ],
)
async def test_unknown_api_path_is_a_json_404(servers, method, path):
    srv = await servers.start()
    client = srv.client()
    response = await client.request(method, path, {} if method == "POST" else None)
    assert response.headers["Content-Type"].startswith("application/json")
    assert_error(response.code, json.loads(response.body), 404, "not_found")


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/api/rooms/lobby/messages"),
        ("PUT", "/api/session"),
        ("POST", "/api/rooms/lobby/history"),
        ("DELETE", "/api/rooms/lobby/presence"),
        ("POST", "/healthz"),
    ],
)
async def test_wrong_method_is_a_json_405(servers, method, path):
    srv = await servers.start()
    response = await srv.client().request(method, path, {} if method != "GET" else None)
    assert response.headers["Content-Type"].startswith("application/json")
    assert_error(response.code, json.loads(response.body), 405, "method_not_allowed")


def assert_security_headers(response) -> None:
    csp = response.headers.get("Content-Security-Policy", "")
    directives = {d.split()[0]: d.split()[1:] for d in csp.split(";") if d.strip()}
    script_src = directives.get("script-src", directives.get("default-src"))
    assert script_src and "'unsafe-inline'" not in script_src, csp
    assert directives.get("frame-ancestors") == ["'none'"], csp
    assert response.headers.get("X-Content-Type-Options") == "nosniff"


@pytest.mark.gen_test(timeout=30)
async def test_api_responses_carry_security_headers(servers):
    srv = await servers.start()
    client = await user(srv, "an")
    for method, path, body in [
        ("GET", "/api/session", None),
        ("POST", "/api/rooms/lobby/messages", {"text": "hi", "client_id": "c1"}),
        ("POST", "/api/rooms/lobby/messages", {"text": "", "client_id": "c2"}),
        ("GET", "/api/rooms/lobby/history", None),
        ("GET", "/api/rooms/lobby/updates?cursor=", None),
        ("GET", "/api/rooms/lobby/presence", None),
        ("GET", "/api/nope", None),
        ("GET", "/healthz", None),
    ]:
        response = await client.request(method, path, body)
        assert_security_headers(response)


@pytest.mark.gen_test(timeout=30)
async def test_pages_carry_security_headers(servers):
    srv = await servers.start()
    client = srv.client()
    for path in ["/", "/r/lobby", "/nope", "/r/a%20b"]:
        assert_security_headers(await client.request("GET", path))
    await client.join("an")
    assert_security_headers(await client.request("GET", "/r/lobby"))


# -- pages -------------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_join_page_shows_a_form_with_nick_and_room(servers):
    srv = await servers.start()
    response = await srv.client().request("GET", "/")
    assert response.code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    form = Inputs(response.body.decode())
    assert "/join" in form.actions
    assert form.fields["room"] == "lobby" and "nick" in form.fields and "_xsrf" in form.fields


@pytest.mark.gen_test(timeout=30)
async def test_join_page_prefills_the_room_from_the_url(servers):
    srv = await servers.start()
    response = await srv.client().request("GET", "/?room=general")
    assert Inputs(response.body.decode()).fields["room"] == "general"


@pytest.mark.gen_test(timeout=30)
async def test_join_form_with_a_taken_nickname_shows_the_form_again(servers):
    srv = await servers.start()
    await user(srv, "an")
    client = srv.client()
    response = await client.request("POST", "/join", form={"nick": "AN", "room": "general"})
    assert response.code == 409
    page = response.body.decode()
    assert "That nickname is taken" in page
    form = Inputs(page)
    assert form.fields["room"] == "general" and form.fields["nick"] == "AN"
    assert "chatapp_session" not in client.cookies


@pytest.mark.gen_test(timeout=30)
async def test_join_form_with_an_invalid_nickname_says_why(servers):
    srv = await servers.start()
    client = srv.client()
    response = await client.request("POST", "/join", form={"nick": "<b>x", "room": "lobby"})
    assert response.code == 400
    page = response.body.decode()
    assert "Nicknames may contain only letters" in page
    assert "<b>x" not in page and "&lt;b&gt;x" in page
    assert "chatapp_session" not in client.cookies


@pytest.mark.gen_test(timeout=30)
async def test_join_form_success_redirects_to_the_room_with_a_session(servers):
    srv = await servers.start()
    client = srv.client()
    response = await client.request("POST", "/join", form={"nick": "an", "room": "general"})
    assert response.code == 303
    assert response.headers["Location"] == "/r/general"
    assert "httponly" in set_cookie(response, "chatapp_session").lower()
    assert await client.get_json("/api/session") == (200, {"nick": "an"})
    assert (await client.request("GET", "/r/general")).code == 200


@pytest.mark.gen_test(timeout=30)
async def test_join_form_without_xsrf_is_forbidden(servers):
    srv = await servers.start()
    client = srv.client()
    await client.request("GET", "/")
    response = await client.request("POST", "/join", form={"nick": "an"}, xsrf=False)
    assert response.code == 403
    assert await client.get_json("/api/session") == (200, {"nick": None})


@pytest.mark.gen_test(timeout=30)
async def test_room_page_without_session_redirects_to_the_join_form(servers):
    srv = await servers.start()
    response = await srv.client().request("GET", "/r/general")
    assert response.code == 302
    assert response.headers["Location"] == "/?room=general"


@pytest.mark.gen_test(timeout=30)
async def test_room_page_shows_the_latest_events_escaped(servers):
    srv = await servers.start(history_size=5)
    client = await user(srv, "an")
    await send_many(client, "lobby", 6, chunk=1)
    await sent(client, "lobby", "<script>alert(1)</script>", "x")
    response = await client.request("GET", "/r/lobby")
    assert response.code == 200
    page = response.body.decode()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script>alert" not in page
    assert "m6" in page and ">m1<" not in page  # the latest history_size events


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("room", ["//evil.com", "https://evil.com", "/\\evil.com", "%2F%2Fevil.com"])
async def test_join_page_never_redirects_off_site(servers, room):
    srv = await servers.start()
    client = await user(srv, "an")  # with a session, / redirects to the room
    response = await client.request("GET", "/?" + urlencode({"room": room}))
    if response.code in (301, 302, 303, 307, 308):
        assert response.headers["Location"].startswith("/r/"), response.headers["Location"]
    response = await client.request("POST", "/join", form={"nick": "bo", "room": room})
    assert response.code not in (301, 302, 303, 307, 308) or response.headers[
        "Location"
    ].startswith("/r/"), response.headers.get("Location")
