"""Arbitrary input at the message-action endpoints and frames (hypothesis), against a real
server: ``PATCH``/``DELETE /api/rooms/<room>/messages/<id>``, ``POST .../reactions``, and the
``edit``, ``delete``, ``react`` and ``send`` (with ``reply_to``) WebSocket frames.

Whatever was sent: never a 5xx and no ERROR logged; every error is in the contract's shape,
with one of the contract's codes; a refusal stores nothing (the room's log does not grow); an
acceptance is an event of the right kind aimed at the right message; the socket stays open.
And after all examples, the room's current state is what replaying its log gives.

The machinery (one server on a loop of its own, ``Live``) is test_fuzz.py's; see there.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from hypothesis import event as tally
from hypothesis import given
from hypothesis import strategies as st

from tests import test_fuzz
from tests.acting import replay
from tests.harness import Client, Socket
from tests.test_fuzz import (
    CONTENT_TYPES,
    FUZZ,
    assert_api_answer,
    client_ids,
    close,
    json_values,
    nasty_json,
    stored_form,
    texts,
)

# The module's server, as test_fuzz.py's (a module-scoped fixture: one here too).
live = test_fuzz.live

ACTION_ERRORS = {"no_such_message", "not_yours", "deleted", "bad_emoji", "bad_reply",
                 "bad_reaction", "bad_text", "bad_client_id", "bad_json", "too_large",
                 "too_many_reactions"}
EMOJI = ["👍", "👍🏽", "👩‍💻", "🇫🇷", "❤", "❤️", "1️⃣", "🏽", "a", "👍👍", "", " 👍", "\u200d"]
emojis = st.one_of(st.sampled_from(EMOJI), st.text(max_size=6), json_values)


class Room:
    """The fuzzed room: messages by the fuzzer and by someone else, one deleted, a join."""

    def __init__(self, live: Any, tag: str) -> None:
        self.live, self.name = live, f"fuzz-{tag}"
        self.nick = f"{tag}-fuzzer"
        self.me = live.user(self.nick)
        self.other = live.user(f"{tag}-other")
        self.mine = [self._send(self.me, f"mine {i}") for i in range(3)]
        self.theirs = self._send(self.other, f"theirs @{self.nick}")
        gone = self._send(self.me, "deleted soon")
        response = live.run(self.me.request("DELETE", f"/api/rooms/{self.name}/messages/{gone}"))
        assert response.code == 200, response.body
        self.sock: Socket = live.run(self._socket())  # its join is an id that is no message
        self.firsts: dict[str, dict[str, Any]] = {}  # client_id -> the first event
        self.targets = [*self.mine, self.theirs, gone, "000000000001", "999999999999"]

    def _send(self, client: Client, text: str) -> str:
        code, body = self.live.run(client.send(self.name, text, text))
        assert code == 200, body
        return body["event"]["id"]

    async def _socket(self) -> Socket:
        """Open, and its join stored: nothing stored in the background while fuzzing."""
        sock = await self.me.ws(self.name)
        while True:
            event = (await sock.next("event"))["event"]
            if event["type"] == "join" and event["nick"] == self.nick:
                return sock

    def log_end(self) -> int:
        return self.live.run(self.live.srv.store.last_seq(self.name))

    def check_current_state(self) -> None:
        """/history shows exactly what replaying the whole log gives."""
        code, page = self.live.run(self.me.get_json(f"/api/rooms/{self.name}/history?limit=200"))
        assert code == 200 and not page["has_more"], page
        log: list[dict[str, Any]] = []
        cursor = ""
        while True:
            code, body = self.live.run(self.me.poll(self.name, cursor))
            assert code == 200, body
            if not body["events"]:
                break
            log += body["events"]
            cursor = body["cursor"]
        state: dict[str, dict[str, Any]] = {}
        replay(state, log)
        assert state == {e["id"]: e for e in page["events"] if e["type"] == "message"}


# Mostly one of the room's targets (an index into Room.targets), else anything.
indexes = st.sampled_from(range(7))
targets_of = st.one_of(indexes, indexes, indexes, st.text(max_size=14), json_values)
# Fields a real client sends, so that the accepted paths are fuzzed as much as the refusals;
# repeated client_ids exercise idempotency across kinds.
plausible = st.fixed_dictionaries({
    "text": st.sampled_from(["fixed", "  edited @x  ", "<b>", "@ws-act-fuzzer hi"]) | texts,
    "client_id": st.uuids().map(str) | st.sampled_from(["c1", "c2", "c3"]),
    "emoji": st.sampled_from(EMOJI[:7]),
    "on": st.booleans(),
})


def pick(room: Room, target: Any) -> Any:
    return room.targets[target] if isinstance(target, int) and 0 <= target < 7 else target


def check_accepted(room: Room, kind: str, fields: dict[str, Any], target: Any,
                   answer: dict[str, Any]) -> None:
    event, nick = answer["event"], room.nick
    if kind == "react" and event is None:  # changed nothing
        assert isinstance(answer["reactions"], dict), answer
        return
    cid = fields.get("client_id", f"delete-{target}")
    first = room.firsts.setdefault(cid, event)
    if first is not event:  # a repeated client_id: the first result, whatever was asked
        assert (event["id"], event["type"]) == (first["id"], first["type"]), (fields, answer)
        return
    assert event["type"] == {"edit": "edit", "delete": "delete", "react": "reaction",
                             "send": "message"}[kind], (fields, answer)
    if kind == "send":
        assert event.get("reply_to") == fields.get("reply_to") and event["nick"] == nick, answer
        return
    assert event["target"] == target, (fields, answer)
    if kind == "edit":
        assert event["nick"] == nick, answer
        if "text" in fields:  # (not known for a form body: fields is {})
            assert event["text"] == stored_form(fields["text"]), (fields, answer)
    if kind == "react":
        assert isinstance(answer["reactions"], dict) and event["emoji"], answer


# -- HTTP ---------------------------------------------------------------------------------------

bodies = st.one_of(
    plausible.map(json.dumps),
    plausible.map(json.dumps),
    st.fixed_dictionaries({}, optional={"text": texts, "client_id": client_ids,
                                        "emoji": emojis, "on": json_values}).map(json.dumps),
    json_values.map(json.dumps),
    nasty_json,
    st.binary(max_size=100),
)
requests = st.tuples(
    st.sampled_from(["edit", "delete", "react"]), targets_of, bodies,
    st.sampled_from(CONTENT_TYPES[:3]),
)


def test_any_action_request_is_refused_in_the_contract_or_stored_as_asked(live):
    room = Room(live, "http-act")

    @FUZZ
    @given(requests)
    def prop(sent):
        kind, target, body, content_type = sent
        target = pick(room, target)
        method, suffix = {"edit": ("PATCH", ""), "delete": ("DELETE", ""),
                          "react": ("POST", "/reactions")}[kind]
        path = f"/api/rooms/{room.name}/messages/{quote(str(target), safe='')}{suffix}"
        before = room.log_end()
        response = live.run(room.me.request(
            method, path, body, headers={"Content-Type": content_type}))
        answer = assert_api_answer(response, sent)
        live.errors.assert_none(sent)
        tally(f"{kind}: {response.code} {(answer or {}).get('error', '')}")
        if response.code != 200:
            assert answer["error"] in ACTION_ERRORS | {"not_found"}, (sent, answer)
            assert room.log_end() == before, ("a refusal stored something", sent, answer)
            return
        try:
            fields = json.loads(body) if content_type != CONTENT_TYPES[2] else {}
        except ValueError:
            fields = {}
        check_accepted(room, kind, fields if isinstance(fields, dict) else {}, target, answer)
        if answer["event"] is None or answer["event"]["id"] <= f"{before:012d}":
            assert room.log_end() == before, (sent, answer)  # nothing new, or a repeat

    prop()
    room.check_current_state()


# -- WebSocket frames ---------------------------------------------------------------------------

frame_types = st.sampled_from(["edit", "delete", "react", "send"])
frames = st.one_of(
    st.tuples(frame_types, targets_of, plausible).map(
        lambda t: dict(t[2], type=t[0], target=t[1])),
    st.tuples(targets_of, plausible).map(lambda t: dict(t[1], type="send", reply_to=t[0])),
    st.fixed_dictionaries(
        {"type": frame_types},
        optional={"target": targets_of, "text": texts, "client_id": client_ids,
                  "emoji": emojis, "on": json_values, "reply_to": targets_of},
    ),
)


async def exchange(sock: Socket, frame: dict[str, Any]) -> dict[str, Any]:
    """Send one frame; the ack or error frame that answers it."""
    await sock.conn.write_message(json.dumps(frame))
    while True:
        answer = await sock.next()
        if answer["type"] in ("ack", "error"):
            return answer


def test_any_action_frame_is_answered_and_a_refusal_stores_nothing(live):
    room = Room(live, "ws-act")

    @FUZZ
    @given(frames)
    def prop(frame):
        for key in ("target", "reply_to"):
            if key in frame:
                frame[key] = pick(room, frame[key])
        before = room.log_end()
        answer = live.run(exchange(room.sock, frame))
        live.errors.assert_none(frame)
        tally(f"{frame['type']}: {answer['type']} {answer.get('error', '')}")
        if answer["type"] == "error":
            assert answer["error"] in ACTION_ERRORS, (frame, answer)
            assert isinstance(answer["message"], str) and answer["message"], answer
            assert room.log_end() == before, ("a refusal stored something", frame, answer)
            return
        assert answer["client_id"] == frame.get("client_id"), (frame, answer)
        check_accepted(room, frame["type"], frame, frame.get("target"), answer)
        assert not room.sock.closed

    prop()
    room.check_current_state()
    live.run(close(room.sock))  # on the server's loop, as every use of the socket
