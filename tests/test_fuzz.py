"""Arbitrary input at every endpoint and frame type (hypothesis), against a real server.

What every property asserts, whatever was sent: never a 5xx and never a server-side traceback
(no ERROR record is logged); every JSON API error is ``{"error": str, "message": str}``; a
WebSocket answers a bad frame with an ``error`` frame, stays open and still acks a valid send
afterwards; and the contract's invariants hold: ids strictly increase, every stored text obeys
the text rules, an accepted text is stored exactly as sent after trimming (CR LF and CR become
LF), and no two live nicknames share a confusable skeleton (case, composition, look-alikes).

How hypothesis and the event loop meet. pytest-tornado gives each test its own IOLoop, and
hypothesis calls the test body many times; an async body per example would need a server per
example (seconds each). Instead ONE server per module runs on an asyncio loop in a background
thread that this module owns (``LoopThread``), started before the first property and stopped
after the last. The property tests are plain synchronous ``@given`` functions; each step hands
a coroutine of the ordinary test harness (``Client``, ``Socket``) to that loop with
``asyncio.run_coroutine_threadsafe`` and blocks on its result. So the code under test and the
clients run exactly as in the rest of the suite (same loop, real sockets), while hypothesis
drives, shrinks and replays examples from the main thread. Server state (rooms, sessions)
persists across examples; each property keeps a small model of what it has stored or holds
(``Live``), which is also what makes replays during shrinking predictable.

A property is an inner ``@given`` function called from the test, so that the full-history
invariant checks run once after all of its examples.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import threading
import unicodedata
import uuid
from typing import Any
from urllib.parse import quote, quote_from_bytes, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from chatapp import rules
from tests.harness import WAIT_SECONDS, ChatServer, Client, Socket, free_port

FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,  # nothing written into the work tree; failures print their example
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

ID_RE = re.compile(r"[0-9]{12}")
ROOM_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
ERROR_STATUSES = {400, 401, 403, 404, 405, 409, 413}

# -- the contract, as a client reads it (API.md "Rules that hold on every path") -------------


def stored_form(text: object) -> str | None:
    """What the server must store for ``text``, or None if it must refuse it: CR LF and CR
    become LF; no control characters but newline and tab (lone surrogates cannot be stored
    either); surrounding white space trimmed; 1-2000 characters."""
    if not isinstance(text, str):
        return None
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if any(unicodedata.category(c) in ("Cc", "Cs") and c not in "\n\t" for c in text):
        return None
    text = text.strip()
    return text if 1 <= len(text) <= 2000 else None


def valid_client_id(cid: object) -> bool:
    return isinstance(cid, str) and 1 <= len(cid) <= 64


def obeys_text_rules(text: object) -> bool:
    return isinstance(text, str) and stored_form(text) == text and "\r" not in text


def obeys_nick_rules(nick: object) -> bool:
    """1-32 letters or digits of one script (tests/test_nicknames.py checks which), ``_ - .``,
    a combining mark after the first, at least one letter or digit."""
    return (
        isinstance(nick, str)
        and 1 <= len(nick) <= 32
        and any(c.isalnum() for c in nick)
        and all(
            c.isalnum() or c in "_-." or (i and unicodedata.category(c).startswith("M"))
            for i, c in enumerate(nick)
        )
    )


def nick_key(nick: str) -> str:
    """The UTS #39 skeleton: case, composition and look-alikes (chatapp/nicknames.py)."""
    return rules.nick_keys(nick).skeleton


def looks_like_a_held_nick(nick: str, held: dict[str, tuple[str, Client]]) -> bool:
    """Either key of ``nick`` equal to that of a nickname held (``chatapp.nicknames.keys``)."""
    keys = rules.nick_keys(nick)
    return any(
        keys.skeleton == nick_key(n) or keys.cased == rules.nick_keys(n).cased
        for n, _ in held.values()
    )


def parse_body(body: bytes) -> Any:
    """What a JSON body means, or ``ValueError`` for one that is not JSON."""
    try:
        return json.loads(body or b"{}")
    except (ValueError, RecursionError) as exc:
        raise ValueError(exc) from None


# -- strategies -------------------------------------------------------------------------------

scalars = (
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids, max_size=3),
    max_leaves=8,
)
# Characters that matter to the rules: every kind of white space and line break, controls,
# markup, quotes, a lone surrogate, astral characters and marks.
TRICKY = (
    " \t\n\r\x0b\x0c\x00\x1b\x7f\x85\x9f\u00a0\u2028\u2029\u3000\u200b\ufeff"
    "<>&\"'`\\/{}%#?;=+x\u00e9e\u0301\U0001f600\ud800\udfff"
)
texts = st.one_of(
    st.text(max_size=40),
    # Pasted lines, as each kind of browser and OS sends line breaks (twice as likely).
    lines := st.tuples(st.lists(st.text(st.characters(categories=["L", "N", "P", "S", "Zs"]),
                                        min_size=1, max_size=8), min_size=2, max_size=4),
              st.sampled_from(["\n", "\r\n", "\r", "\t", "\r\r\n"])).map(lambda t: t[1].join(t[0])),
    lines,
    st.text(st.sampled_from(TRICKY), min_size=1, max_size=20),
    st.text(st.characters(categories=["Cc", "Cs", "Zs", "Zl", "Zp", "Mn"]), max_size=8),
    # Around the 2000-character limit, with white space that trimming may or may not remove.
    st.tuples(st.sampled_from(["", " ", "\n", "\r\n"]), st.integers(1995, 2005),
              st.sampled_from(["", " ", "\t", "\r"])).map(lambda t: t[0] + "y" * t[1] + t[2]),
)
client_ids = st.one_of(
    st.uuids().map(str),  # fresh: the usual case
    st.text(min_size=0, max_size=70),
    st.sampled_from(["a", "A", "0", "x" * 64, "x" * 65, ""]),  # repeats: idempotency
    json_values,
)
# Raw bodies no JSON encoder would produce: deep nesting, huge numbers, bad encodings.
nasty_json = st.one_of(
    st.sampled_from([2, 999, 1_000, 5_000, 60_000]).map(lambda n: b"[" * n),
    st.sampled_from([2, 999, 1_000, 5_000]).map(lambda n: b'{"text":' * n),
    st.integers(4_000, 6_000).map(lambda n: b'{"text": "x", "client_id": ' + b"9" * n + b"}"),
    st.sampled_from([b"\xff\xfe{\x00}\x00", b"\xef\xbb\xbf{}", b'{"text": "\\ud800"}', b"NaN",
                     b'{"text": "a", "text": 1}', b"\x00"]),
)
CONTENT_TYPES = ["application/json", "text/plain", "application/x-www-form-urlencoded",
                 "multipart/form-data; boundary=x", "application/json; charset=latin-1"]


def no_surrogates(s: str) -> bool:
    return not any(unicodedata.category(c) == "Cs" for c in s)


# -- the server, on a loop of our own -----------------------------------------------------------


class LoopThread:
    """An asyncio loop running in a background thread; ``run`` blocks on a coroutine there."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzz-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 3 * WAIT_SECONDS) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(WAIT_SECONDS)
        self.loop.close()


class ErrorLog(logging.Handler):
    """Every ERROR record (an uncaught exception in a handler or a task is one)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def assert_none(self, what: object) -> None:
        records, self.records = self.records, []
        assert not records, (what, [self.format(r) for r in records])


class Live:
    """The module's server, its clients, and a model of what the properties stored."""

    def __init__(self, loop: LoopThread, srv: ChatServer, errors: ErrorLog) -> None:
        self.loop, self.srv, self.errors = loop, srv, errors
        self.clients: list[Client] = []
        # nick_key -> (nick, client) for every session the properties hold.
        self.held: dict[str, tuple[str, Client]] = {}
        # (room, sender's client_id) -> the event the server stored for it, per sender.
        self.sent: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.last_id: dict[str, str] = {}

    def run(self, coro: Any) -> Any:
        return self.loop.run(coro)

    def client(self) -> Client:
        async def make() -> Client:
            return self.srv.client()

        client = self.run(make())
        self.clients.append(client)
        return client

    def user(self, nick: str) -> Client:
        client = self.client()
        code, body = self.run(client.post_json("/api/session", {"nick": nick}))
        assert code == 200, (code, body)
        self.held[nick_key(nick)] = (nick, client)
        return client

    def expect_send(self, nick: str, room: str, text: Any, cid: Any) -> tuple[str, Any]:
        """What a send must answer: ("error", code) or ("event", expected event fields)."""
        stored = stored_form(text)
        if stored is None:
            return "error", "bad_text"
        if not valid_client_id(cid):
            return "error", "bad_client_id"
        first = self.sent.get((nick, room, cid))
        if first is not None:
            return "event", first
        return "event", {"room": room, "type": "message", "nick": nick, "text": stored}

    def accepted(self, nick: str, room: str, cid: str, expected: dict, event: dict) -> None:
        """Check a stored event against what was expected, and remember it."""
        assert isinstance(event, dict) and ID_RE.fullmatch(event.get("id", "")), event
        assert isinstance(event.get("ts"), float), event
        if (nick, room, cid) in self.sent:
            assert event == expected, ("a repeated client_id must return the first event",
                                       event, expected)
            return
        assert {k: event.get(k) for k in expected} == expected, (event, expected)
        # "mentions": the @nicks the text holds, found by the server (contract, part 2).
        assert set(event) - {"mentions"} == {"id", "room", "type", "nick", "text", "ts"}, event
        assert event["id"] > self.last_id.get(room, ""), ("ids must increase", event)
        self.last_id[room] = event["id"]
        self.sent[(nick, room, cid)] = event

    def check_room(self, room: str, reader: Client) -> None:
        """The room's whole history: ids strictly increase, every text obeys the rules, and
        every event a property saw accepted is stored exactly as it was acknowledged."""
        events: list[dict] = []
        before = ""
        while True:
            query = urlencode({"limit": 200, **({"before": before} if before else {})})
            code, body = self.run(reader.get_json(f"/api/rooms/{room}/history?{query}"))
            assert code == 200, (code, body)
            events = body["events"] + events
            if not body["has_more"]:
                break
            before = body["events"][0]["id"]
        ids = [e["id"] for e in events]
        assert all(ID_RE.fullmatch(i) for i in ids), ids
        assert all(a < b for a, b in itertools.pairwise(ids)), "ids must strictly increase"
        assert all(e["room"] == room for e in events)
        for e in events:
            if e["type"] == "message":
                assert obeys_text_rules(e["text"]), e
            else:
                assert e["type"] in ("join", "leave") and "text" not in e, e
            assert obeys_nick_rules(e["nick"]), e
        by_id = {e["id"]: e for e in events}
        for (_, r, _), event in self.sent.items():
            if r == room:
                assert by_id.get(event["id"]) == event, ("stored differently", event)


@pytest.fixture(scope="module")
def live(mongod):
    uri = mongod if isinstance(mongod, str) else mongod.uri
    errors = ErrorLog()
    logging.getLogger().addHandler(errors)
    loop = LoopThread()
    srv = ChatServer(
        uri, f"chatapp_fuzz_{uuid.uuid4().hex[:12]}", free_port(),
        # Long enough that no session expires while the module runs; a parked long-poll
        # (a fuzzed cursor that is the latest) answers almost at once; a busy machine's slow
        # MongoDB write is not mistaken for a 503.
        unused_session_ttl=3600.0, grace_period=3600.0, poll_timeout=0.05, store_timeout=20.0,
    )
    loop.run(srv.start())
    state = Live(loop, srv, errors)
    try:
        yield state
    finally:
        for client in state.clients:
            client.close()
        loop.run(srv.stop())
        loop.close()
        logging.getLogger().removeHandler(errors)


def assert_api_answer(response: Any, what: object) -> Any:
    """Not a 5xx; an error is in the contract's shape. The parsed body."""
    assert response.code < 500, (what, response.code, response.body[:300])
    body = json.loads(response.body) if response.body else None
    if response.code >= 400:
        assert response.code in ERROR_STATUSES, (what, response.code, body)
        assert isinstance(body, dict) and set(body) == {"error", "message"}, (what, body)
        assert isinstance(body["error"], str) and body["error"], (what, body)
        assert isinstance(body["message"], str) and body["message"], (what, body)
    return body


# -- (a) POST /api/session ---------------------------------------------------------------------

# Nicknames that collide as often as they differ: one name spelt another way (case, decomposed
# accents, surrounding white space), and small alphabets (the Kelvin sign, dotted and dotless i).
SPELLINGS = [str.upper, str.lower, str.title, str.swapcase,
             lambda n: unicodedata.normalize("NFD", n), lambda n: f" {n}\t"]
nicks = st.one_of(
    st.tuples(st.sampled_from(["an", "Bo", "émile", "ǅemal", "kelvin", "straße", "ΣΊΣΥΦΟΣ"]),
              st.sampled_from(SPELLINGS)).map(lambda t: t[1](t[0])),
    st.text(st.sampled_from("aAbB_-.é\u0301Kk\u212aİıi \t<\"'\x00"), min_size=0, max_size=6),
    st.text(max_size=40),
    st.from_regex(r"[A-Za-z0-9_.-]{1,32}", fullmatch=True),
)
session_bodies = st.one_of(
    nicks.map(lambda n: ("json", {"nick": n})),
    st.dictionaries(st.sampled_from(["nick", "sid", "id", "nick "]), json_values, max_size=3)
    .map(lambda d: ("json", d)),
    json_values.map(lambda v: ("json", v)),
    nicks.filter(no_surrogates).map(lambda n: ("form", {"nick": n})),
    st.tuples(st.binary(max_size=200) | nasty_json, st.sampled_from(CONTENT_TYPES))
    .map(lambda t: ("raw", t)),
    nasty_json.map(lambda b: ("raw", (b, "application/json"))),
)


def test_any_session_body_answers_in_the_contract_and_nicknames_stay_unique(live):
    @FUZZ
    @given(session_bodies)
    def prop(sent):
        live.errors.records.clear()
        kind, payload = sent
        client = live.client()
        if kind == "json":
            response = live.run(client.request("POST", "/api/session", json.dumps(payload)))
            fields = payload
        elif kind == "form":
            response = live.run(client.request("POST", "/api/session", form=payload))
            fields = payload
        else:
            raw, content_type = payload
            response = live.run(client.request(
                "POST", "/api/session", raw, headers={"Content-Type": content_type}))
            try:
                fields = parse_body(raw) if content_type.startswith("application/json") else None
            except ValueError:
                fields = "not json"
        body = assert_api_answer(response, sent)
        live.errors.assert_none(sent)
        nick = fields.get("nick") if isinstance(fields, dict) else None

        if response.code == 200:
            got = body["nick"]
            assert set(body) == {"nick"} and obeys_nick_rules(got), (sent, body)
            if isinstance(nick, str):
                assert got == nick.strip(), (sent, body)
            assert nick_key(got) not in live.held, ("nickname taken twice", got, live.held)
            live.held[nick_key(got)] = (got, client)
            assert live.run(client.get_json("/api/session")) == (200, {"nick": got})
        elif response.code == 409:
            assert body["error"] == "nick_taken"
            if fields is not None:  # (None: a form body of arbitrary bytes)
                assert isinstance(nick, str) and looks_like_a_held_nick(
                    nick.strip(), live.held), (sent, body)
        else:
            assert response.code == 400, (sent, response.code, body)
            assert body["error"] in ("bad_nick", "bad_json", "bad_request"), (sent, body)
            if (isinstance(nick, str) and re.fullmatch(r"[A-Za-z0-9_.-]{1,32}", nick.strip())
                    and re.search("[A-Za-z0-9]", nick)):
                assert looks_like_a_held_nick(nick.strip(), live.held), (
                    "valid nick refused", sent, body)
            if fields == "not json":
                assert body["error"] == "bad_json", (sent, body)
        assert "chatapp_session" in client.cookies or response.code != 200

    prop()
    # Every nickname handed out is still held by its own session, and by no other.
    keys = set()
    for key, (nick, client) in live.held.items():
        assert live.run(client.get_json("/api/session")) == (200, {"nick": nick})
        assert nick_key(nick) == key and key not in keys
        keys.add(key)


# -- (b) POST /api/rooms/<room>/messages -------------------------------------------------------

message_fields = st.fixed_dictionaries(
    {"text": texts, "client_id": client_ids},
    optional={"nick": json_values, "room": json_values, "type": json_values,
              "id": json_values, "ts": json_values, "sid": json_values},
)
message_bodies = st.one_of(
    message_fields.map(lambda f: ("json", f)),
    message_fields.map(lambda f: ("json", f)),
    message_fields.filter(
        lambda f: isinstance(f["text"], str) and no_surrogates(f["text"])
        and isinstance(f["client_id"], str) and no_surrogates(f["client_id"])
    ).map(lambda f: ("form", {"text": f["text"], "client_id": f["client_id"]})),
    json_values.map(lambda v: ("json", v)),
    st.tuples(st.binary(max_size=200) | nasty_json, st.sampled_from(CONTENT_TYPES))
    .map(lambda t: ("raw", t)),
    nasty_json.map(lambda b: ("raw", (b, "application/json"))),
)


def test_any_message_body_is_refused_in_the_contract_or_stored_exactly(live):
    room, nick = "fuzz-http", "http-fuzzer"
    sender = live.user(nick)

    @FUZZ
    @given(message_bodies)
    def prop(sent):
        live.errors.records.clear()
        kind, payload = sent
        path = f"/api/rooms/{room}/messages"
        fields: Any = payload
        if kind == "json":
            response = live.run(sender.request("POST", path, json.dumps(payload)))
        elif kind == "form":
            response = live.run(sender.request("POST", path, form=payload))
        else:
            raw, content_type = payload
            response = live.run(sender.request(
                "POST", path, raw, headers={"Content-Type": content_type}))
            if content_type.startswith("application/json") or content_type == "text/plain":
                try:
                    fields = parse_body(raw)
                except ValueError:
                    fields = "not json"
            else:
                fields = None  # a form body of arbitrary bytes: shape checks only
        body = assert_api_answer(response, sent)
        live.errors.assert_none(sent)

        if fields is None:
            if response.code == 200:
                live.accepted(nick, room, f"?{uuid.uuid4()}", {"nick": nick, "room": room,
                              "type": "message"}, body["event"])
            return
        if not isinstance(fields, dict):
            assert (response.code, body["error"]) == (400, "bad_json"), (sent, body)
            return
        outcome, expected = live.expect_send(nick, room, fields.get("text"),
                                             fields.get("client_id"))
        if outcome == "error":
            assert (response.code, body["error"]) == (400, expected), (sent, body)
            return
        assert response.code == 200 and set(body) == {"event"}, (sent, response.code, body)
        live.accepted(nick, room, fields["client_id"], expected, body["event"])

    prop()
    live.check_room(room, sender)


def test_any_text_is_refused_or_stored_exactly_as_sent_after_trimming_on_every_transport(live):
    """The text rule alone, with a fresh client_id each time, so nearly every example is a
    send that reaches the rule: JSON, form and WebSocket must agree, byte for byte."""
    room, nick = "fuzz-text", "text-fuzzer"
    sender = live.user(nick)
    sock = live.run(sender.ws(room))
    live.run(sock.next("presence"))

    @FUZZ
    @given(st.one_of(lines, texts), st.sampled_from(["json", "form", "ws"]))
    def prop(text, transport):
        live.errors.records.clear()
        if transport == "form" and not no_surrogates(text):
            transport = "json"  # a form cannot carry a lone surrogate
        cid = uuid.uuid4().hex
        outcome, expected = live.expect_send(nick, room, text, cid)
        if transport == "ws":
            frame = live.run(exchange(sock, json.dumps(
                {"type": "send", "text": text, "client_id": cid})))
            if outcome == "error":
                assert (frame["type"], frame["error"]) == ("error", expected), (text, frame)
                return
            assert frame["type"] == "ack", (text, frame)
            event = frame["event"]
        else:
            fields = {"text": text, "client_id": cid}
            path = f"/api/rooms/{room}/messages"
            response = live.run(sender.request("POST", path, json.dumps(fields))
                                if transport == "json" else
                                sender.request("POST", path, form=fields))
            body = assert_api_answer(response, (text, transport))
            if outcome == "error":
                assert (response.code, body["error"]) == (400, expected), (text, body)
                return
            assert response.code == 200, (text, transport, body)
            event = body["event"]
        live.accepted(nick, room, cid, expected, event)
        live.errors.assert_none((text, transport))

    prop()
    live.run(close(sock))
    live.check_room(room, sender)


# -- (c) query strings and room path segments --------------------------------------------------

rooms = st.one_of(
    st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True).map(lambda r: ("text", r)),
    st.sampled_from(["lobby", "fuzz-http", "a" * 64, "a" * 65, ".", "..", "%", "a b", "é"])
    .map(lambda r: ("text", r)),
    st.text(max_size=70).filter(no_surrogates).map(lambda r: ("text", r)),
    st.binary(min_size=1, max_size=20).map(lambda b: ("bytes", b)),  # invalid UTF-8 too
)
# Near misses of the real formats, and anything at all.
cursors = st.one_of(
    st.none(),
    st.just(""),
    st.from_regex(r"[0-9]{10,14}", fullmatch=True),
    st.sampled_from(["000000000000", "000000000001", "999999999999", "٠٠٠٠٠٠٠٠٠٠٠١",
                     " 000000000001", "-00000000001", "1e11"]),
    st.text(max_size=20).filter(no_surrogates),
)
limits = st.one_of(
    st.none(),
    st.integers(-5, 205).map(str),
    st.sampled_from(["", " 5", "+5", "5.0", "1e2", "٣", "1_0", "0x10", "9" * 5000, "nan"]),
    st.text(max_size=10).filter(no_surrogates),
)
raw_queries = st.binary(max_size=60).map(lambda b: quote_from_bytes(b, safe="=&"))


def room_segment(room: tuple[str, Any]) -> str:
    kind, value = room
    return quote(value, safe="") if kind == "text" else quote_from_bytes(value, safe="")


def query(params: dict[str, str | None]) -> str:
    kept = {k: v for k, v in params.items() if v is not None}
    return "?" + urlencode(kept) if kept else ""


def as_read(value: str | None) -> str | None:
    """A query argument as the server reads it (Tornado's ``get_query_argument``): control
    characters other than tab, LF and CR become spaces, then surrounding white space goes."""
    return None if value is None else re.sub(r"[\x00-\x08\x0e-\x1f]", " ", value).strip()


def is_cursor(value: str | None) -> bool:
    value = as_read(value)
    return value is None or value == "" or bool(ID_RE.fullmatch(value))


def check_events(events: Any, after: str = "") -> None:
    ids = [e["id"] for e in events]
    assert all(ID_RE.fullmatch(i) for i in ids), events
    assert all(a < b for a, b in itertools.pairwise(ids)), ids
    assert not ids or ids[0] > after, (after, ids)


def test_any_room_cursor_before_and_limit_is_answered_in_the_contract(live):
    reader = live.user("query-fuzzer")
    anonymous = live.client()
    code, _ = live.run(reader.send("lobby", "hello", "q-1"))
    assert code == 200

    @FUZZ
    @given(rooms, cursors, cursors, limits, raw_queries)
    def prop(room, cursor, before, limit, raw):
        live.errors.records.clear()
        segment = room_segment(room)
        name = room[1] if room[0] == "text" else room[1].decode("utf-8", "replace")
        valid_room = bool(ROOM_RE.fullmatch(name))

        # updates: a valid room and cursor answer 200 (at once or after the short poll).
        path = f"/api/rooms/{segment}/updates{query({'cursor': cursor})}"
        response = live.run(reader.request("GET", path))
        body = assert_api_answer(response, path)
        if response.code == 200:
            assert valid_room and is_cursor(cursor), (path, body)
            check_events(body["events"], as_read(cursor) or "")
            assert body["cursor"] == (body["events"][-1]["id"] if body["events"]
                                      else as_read(cursor) or ""), body
        elif valid_room and is_cursor(cursor):
            # Only a cursor past the last id issued is refused.
            assert (response.code, body["error"]) == (400, "bad_cursor"), (path, body)
        elif segment:
            assert response.code == 400, (path, body)
            assert body["error"] in ("bad_room", "bad_cursor", "bad_request"), (path, body)

        # history
        path = f"/api/rooms/{segment}/history{query({'before': before, 'limit': limit})}"
        response = live.run(reader.request("GET", path))
        body = assert_api_answer(response, path)
        limit = as_read(limit)
        plain_limit = limit is None or limit == "" or re.fullmatch(r"[0-9]{1,4}", limit)
        if response.code == 200:
            assert valid_room and is_cursor(before), (path, body)
            check_events(body["events"])
            assert isinstance(body["has_more"], bool)
            if plain_limit:
                assert len(body["events"]) <= (int(limit) if limit else 50), body
            if as_read(before):
                assert all(e["id"] < as_read(before) for e in body["events"]), body
        elif valid_room and is_cursor(before) and plain_limit:
            assert (response.code, body["error"]) == (400, "bad_limit"), (path, body)
            assert not 1 <= int(limit) <= 200, (path, body)  # type: ignore[arg-type]
        elif segment:
            assert response.code == 400, (path, body)

        # presence, and anything at all as the query string
        for client, path in ((reader, f"/api/rooms/{segment}/presence?{raw}"),
                             (anonymous, f"/api/rooms/{segment}/history?{raw}"),
                             (anonymous, f"/api/rooms/{segment}/updates?{raw}")):
            response = live.run(client.request("GET", path))
            body = assert_api_answer(response, path)
            assert response.code != 200 or valid_room, (path, body)

        # the chat page: never a 5xx, and a page only for a valid name
        response = live.run(reader.request("GET", f"/r/{segment}?{raw}"))
        assert response.code in ((200,) if valid_room else (400, 404)), (segment, response.code)

        # the WebSocket: opens for a valid room and cursor, else a plain-HTTP refusal
        status = live.run(ws_status(reader, segment, cursor))
        if valid_room and is_cursor(cursor):
            # A well-formed cursor past the last id issued is refused, as a plain HTTP 400 or
            # in an error frame before the socket closes.
            assert status in (("open",), ("http", 400, "bad_cursor"), ("frame", "bad_cursor")), (
                segment, cursor, status)
        elif segment:
            assert status[:2] == ("http", 400), (segment, cursor, status)
        else:
            assert status == ("http", 404, "not_found"), status
        live.errors.assert_none((room, cursor, before, limit, raw))

    prop()


async def close(sock: Socket) -> None:
    sock.close()
    await sock.closed_with()


async def ws_status(client: Client, segment: str, cursor: str | None) -> tuple[Any, ...]:
    """("open",) if the socket opened (it is closed again); ("frame", code) if it opened only
    to say why it must close; else ("http", status, code) for a refusal before the upgrade,
    whose body must be in the contract's shape."""
    url = client.base_url.replace("http", "ws", 1) + (
        f"/api/rooms/{segment}/ws{query({'cursor': cursor})}")
    request = HTTPRequest(url, headers={"Cookie": client._cookie_header()})
    try:
        sock = Socket(await websocket_connect(request))
    except HTTPClientError as exc:
        assert exc.code < 500, (url, exc.code)
        body = json.loads(exc.response.body)  # type: ignore[union-attr]
        assert set(body) == {"error", "message"}, (url, body)
        return ("http", exc.code, body["error"])
    frame = await sock.next()
    await close(sock)
    if frame["type"] == "error":
        return ("frame", frame["error"])
    assert frame["type"] in ("event", "presence"), frame
    return ("open",)


# -- (d) WebSocket frames ------------------------------------------------------------------------

send_frames = st.fixed_dictionaries(
    {"type": st.one_of(st.just("send"), json_values)},
    optional={"text": texts, "client_id": client_ids, "nick": json_values,
              "room": json_values, "id": json_values, "ts": json_values, "sid": json_values},
)
frames = st.one_of(
    st.fixed_dictionaries({"type": st.just("send"), "text": texts, "client_id": client_ids})
    .map(lambda f: ("text", json.dumps(f))),
    send_frames.map(lambda f: ("text", json.dumps(f))),
    send_frames.map(lambda f: ("binary", json.dumps(f).encode())),
    json_values.map(lambda v: ("text", json.dumps(v))),
    st.text(max_size=60).filter(no_surrogates).map(lambda s: ("text", s)),
    st.binary(max_size=200).map(lambda b: ("binary", b)),
    nasty_json.map(lambda b: ("binary", b)),
    nasty_json.map(lambda b: ("text", b.decode("utf-8", "replace"))),
)


async def exchange(sock: Socket, data: str | bytes) -> dict[str, Any]:
    """Send one frame; the ack or error frame that answers it (events and presence of the
    room are skipped)."""
    await sock.conn.write_message(data, binary=isinstance(data, bytes))
    while True:
        frame = await sock.next()
        if frame["type"] in ("ack", "error"):
            return frame


def test_any_websocket_frame_is_answered_and_the_socket_keeps_working(live):
    room, nick = "fuzz-ws", "ws-fuzzer"
    sender = live.user(nick)
    fresh = itertools.count()
    socks: list[Socket] = []

    async def socket() -> Socket:
        """The open socket; a new one if the last example got it closed (that example has
        failed already: this keeps the failure from spilling into the next ones)."""
        if not socks or socks[-1].closed or socks[-1].conn.close_code is not None:
            socks.append(await sender.ws(room))
            await socks[-1].next("presence")
        return socks[-1]

    @FUZZ
    @given(st.lists(frames, min_size=1, max_size=4))
    def prop(sent):
        live.errors.records.clear()
        sock = live.run(socket())
        for kind, data in sent:
            frame = live.run(exchange(sock, data))
            try:
                parsed = json.loads(data)
            except (ValueError, RecursionError):
                parsed = None
            live.errors.assert_none(data)
            if not isinstance(parsed, dict) or parsed.get("type") != "send":
                assert frame["type"] == "error" and frame["error"] == "bad_frame", (data, frame)
                assert isinstance(frame["message"], str) and frame["message"]
                continue
            text, cid = parsed.get("text"), parsed.get("client_id")
            outcome, expected = live.expect_send(nick, room, text, cid)
            if outcome == "error":
                assert frame["type"] == "error" and frame["error"] == expected, (data, frame)
                assert frame.get("client_id") == (cid if isinstance(cid, str) else None), frame
                continue
            assert frame["type"] == "ack" and frame["client_id"] == cid, (data, frame)
            live.accepted(nick, room, cid, expected, frame["event"])
        # Still open, and still sending.
        cid = f"still-{next(fresh)}-{uuid.uuid4().hex[:8]}"
        ack = live.run(exchange(sock, json.dumps(
            {"type": "send", "text": "still here", "client_id": cid})))
        assert ack["type"] == "ack" and ack["client_id"] == cid, ack
        live.accepted(nick, room, cid, {"text": "still here", "nick": nick}, ack["event"])
        assert not sock.closed and sock.conn.close_code is None

    prop()
    live.run(close(socks[-1]))
    live.check_room(room, sender)
