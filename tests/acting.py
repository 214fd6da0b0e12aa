"""Acting on messages (reply, edit, delete, react) the same way over HTTP and a WebSocket.

An ``Actor`` is a user with a transport: ``"http"`` (the JSON API) or ``"ws"`` (frames on an
open socket, answered by ``ack`` or ``error`` frames carrying the client_id). Each action
returns an ``Answer`` in one shape whichever transport carried it, so a test of a contract
row runs over both by parametrizing the transport.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tests.harness import Client, Socket
from tests.steps import ROOM, frames_until, is_join, new_cid, open_ws, user


@dataclass
class Answer:
    status: int  # the HTTP status; over a WebSocket 200 for an ack, the error's own otherwise
    error: str | None
    event: dict[str, Any] | None
    reactions: dict[str, list[str]] | None
    body: Any

    def ok(self) -> dict[str, Any] | None:
        assert self.status == 200 and self.error is None, self.body
        return self.event


# The statuses of the contract's errors, to check a WebSocket error against the HTTP one.
STATUS = {"no_such_message": 404, "not_yours": 403, "deleted": 409, "bad_emoji": 400,
          "bad_reply": 400, "bad_text": 400, "bad_client_id": 400, "bad_reaction": 400,
          "rate_limited": 429, "too_many_reactions": 409}


class Actor:
    def __init__(self, client: Client, transport: str, room: str = ROOM) -> None:
        self.client, self.transport, self.room = client, transport, room
        self.nick: str = client.nick  # type: ignore[attr-defined]
        self.sock: Socket | None = None

    @classmethod
    async def join(cls, base: Any, nick: str, transport: str, room: str = ROOM) -> Actor:
        actor = cls(await user(base, nick), transport, room)
        if transport == "ws":
            actor.sock, _, _ = await open_ws(actor.client, room)
        return actor

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.client.close()

    # -- the four actions -------------------------------------------------------------------

    async def send(self, text: Any, reply_to: Any = None, cid: str | None = None) -> Answer:
        fields: dict[str, Any] = {"text": text, "client_id": cid or new_cid()}
        if reply_to is not None:
            fields["reply_to"] = reply_to
        return await self._do("send", "POST", "/messages", fields)

    async def edit(self, target: Any, text: Any, cid: str | None = None) -> Answer:
        return await self._do("edit", "PATCH", f"/messages/{target}",
                              {"text": text, "client_id": cid or new_cid()}, target)

    async def delete(self, target: Any, cid: str | None = None) -> Answer:
        return await self._do("delete", "DELETE", f"/messages/{target}",
                              {"client_id": cid or new_cid()}, target)

    async def react(self, target: Any, emoji: Any, on: Any = True,
                    cid: str | None = None) -> Answer:
        return await self._do("react", "POST", f"/messages/{target}/reactions",
                              {"emoji": emoji, "on": on, "client_id": cid or new_cid()}, target)

    async def _do(self, frame_type: str, method: str, path: str, fields: dict[str, Any],
                  target: Any = None) -> Answer:
        if self.transport == "http":
            response = await self.client.request(method, f"/api/rooms/{self.room}{path}", fields)
            body = json.loads(response.body) if response.body else None
            if response.code != 200:
                return Answer(response.code, body.get("error"), None, None, body)
            return Answer(200, None, body.get("event"), body.get("reactions"), body)
        assert self.sock is not None
        frame = dict(fields, type=frame_type)
        if target is not None:
            frame["target"] = target
        self.sock.conn.write_message(json.dumps(frame))
        cid = fields["client_id"]
        frames = await frames_until(
            self.sock, lambda f: f["type"] in ("ack", "error") and f.get("client_id") == cid)
        answer = frames[-1]
        if answer["type"] == "error":
            return Answer(STATUS.get(answer["error"], 400), answer["error"], None, None, answer)
        return Answer(200, None, answer.get("event"), answer.get("reactions"), answer)


async def joined(client: Client, room: str = ROOM) -> tuple[Socket, dict[str, Any]]:
    """Open a socket for ``client`` and wait for its join event (an id that is no message);
    the socket (close it) and the join."""
    sock, backlog, _ = await open_ws(client, room)
    nick = client.nick  # type: ignore[attr-defined]
    joins = [e for e in backlog if is_join(e, nick)]
    while not joins:
        event = (await sock.next("event"))["event"]
        joins = [event] if is_join(event, nick) else []
    return sock, joins[0]


def current(events: list[dict[str, Any]], event_id: str) -> dict[str, Any]:
    """The event ``event_id`` among ``events`` (a page of history, a newcomer's answer)."""
    found = [e for e in events if e["id"] == event_id]
    assert len(found) == 1, (event_id, events)
    return found[0]


def replay(state: dict[str, dict[str, Any]], events: list[dict[str, Any]]) -> None:
    """What a client does with the log: keep messages by id, apply actions to those it holds
    (and ignore the others), as the contract says; ``state`` is updated in place."""
    for event in events:
        kind = event["type"]
        if kind == "message":
            state[event["id"]] = dict(event)
            continue
        target = state.get(event.get("target", ""))
        if target is None or target.get("deleted"):
            continue
        if kind == "edit" and "text" in event:
            target["text"], target["edited"] = event["text"], event["ts"]
            target.pop("mentions", None)
            if event.get("mentions"):
                target["mentions"] = event["mentions"]
        elif kind == "delete":
            state[event["target"]] = {k: target[k] for k in ("id", "room", "type", "nick", "ts")}
            state[event["target"]]["deleted"] = True
        elif kind == "reaction":
            reactions = target.setdefault("reactions", {})
            nicks = reactions.setdefault(event["emoji"], [])
            if event["on"] and event["nick"] not in nicks:
                nicks.append(event["nick"])
            if not event["on"] and event["nick"] in nicks:
                nicks.remove(event["nick"])
            target["reactions"] = {e: n for e, n in reactions.items() if n}
            if not target["reactions"]:
                del target["reactions"]
