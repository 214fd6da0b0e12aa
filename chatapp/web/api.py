"""The JSON API, including the long-poll transport (``GET .../updates``)."""

from __future__ import annotations

import random

import tornado.web

from chatapp import rules
from chatapp.buffer import Batch
from chatapp.chat import HISTORY_DEFAULT, HISTORY_MAX, PollWaiter
from chatapp.errors import ChatError
from chatapp.store import StoreError
from chatapp.web.base import JSONHandler

# Each long-poll waits a random 90-100 % of poll_timeout, so that thousands of clients parked
# at the same moment (say, after a restart) do not all come back in the same instant.
POLL_JITTER = 0.1


class SessionAPI(JSONHandler):
    async def get(self) -> None:
        self.xsrf_token  # noqa: B018 -- reading it sets the _xsrf cookie, as the contract says
        session = await self.current_session()
        self.write_json({"nick": session.nick if session else None})

    async def post(self) -> None:
        nick = self.body_fields().get("nick")
        current = await self.current_session()
        session = await self.chat.sessions.create(nick, self.request.remote_ip or "")
        if current is not None:
            await self.chat.end_session(current)
        self.set_session_cookie(session)
        self.write_json({"nick": session.nick})

    async def delete(self) -> None:
        session = await self.current_session()
        if session is not None:
            await self.chat.end_session(session)
        self.clear_cookie("chatapp_session")
        self.set_status(204)
        self.finish()


class MessagesAPI(JSONHandler):
    """``POST /api/rooms/<room>/messages``: send over plain HTTP."""

    async def post(self, room: str) -> None:
        session = await self.require_session()
        fields = self.body_fields()
        event = await self.chat.send(session, room, fields.get("text"), fields.get("client_id"))
        self.write_json({"event": event})


class UpdatesAPI(JSONHandler):
    """``GET /api/rooms/<room>/updates?cursor=<id>``: the long-poll transport."""

    waiter: PollWaiter | None = None

    async def get(self, room: str) -> None:
        rules.check_room(room)
        session = await self.require_session()
        cursor = self.get_query_argument("cursor", None)
        if cursor is not None:
            rules.check_cursor(cursor)
        timeout = self.settings["poll_timeout"] * random.uniform(1 - POLL_JITTER, 1)
        entries = await self.chat.poll(
            session, room, cursor, timeout, self.request.remote_ip or "", self._park
        )
        if entries is None:
            if self.request.connection.stream.closed():
                return  # the client is gone; nobody to answer
            raise ChatError("no_session", "The session has ended.", 401)
        # The events were encoded once when published (and a woken batch joined once for all
        # its waiters): splice them, don't re-encode.
        new_cursor = entries[-1].id if entries else (cursor or "")
        events = entries.json_array if isinstance(entries, Batch) else ",".join(
            e.json for e in entries
        )
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.set_header("Cache-Control", "no-store")
        self.finish('{"events":[' + events + '],"cursor":"' + new_cursor + '"}')

    def _park(self, waiter: PollWaiter) -> None:
        self.waiter = waiter

    def on_connection_close(self) -> None:
        # Drop the waiter at once: a closed connection must not hold a place in the room.
        if self.waiter is not None:
            self.waiter.cancel()


class HistoryAPI(JSONHandler):
    async def get(self, room: str) -> None:
        rules.check_room(room)
        before = self.get_query_argument("before", None) or None
        limit = rules.check_limit(
            self.get_query_argument("limit", None), HISTORY_DEFAULT, HISTORY_MAX
        )
        around = self.get_query_argument("around", None)
        if around is not None:
            if not rules.check_cursor(around):
                raise ChatError("bad_cursor", "around must be the id of an event.", 400)
            await self._around(room, around, limit)
            return
        events, has_more = await self.chat.history(room, before, limit)
        self.write_json({"events": events, "has_more": has_more})

    async def _around(self, room: str, around: str, limit: int) -> None:
        """``?around=<id>``: the event and up to ``limit`` - 1 others, half before it, the
        rest after (a search result in context). ``has_more``: older ones exist;
        ``has_newer``: newer ones too. Ids within a room are consecutive, so "the next n" is
        "the n before id + n + 1"."""
        seq = rules.parse_id(around)
        older, has_more = await self.chat.history(room, rules.format_id(seq + 1), limit // 2 + 1)
        wanted = limit - len(older)
        # One more than wanted tells whether newer ones exist.
        newer, _ = await self.chat.history(room, rules.format_id(seq + wanted + 2), wanted + 1)
        newer = [e for e in newer if rules.parse_id(e["id"]) > seq]
        self.write_json({
            "events": older + newer[:wanted], "has_more": has_more,
            "has_newer": len(newer) > wanted,
        })


class PresenceAPI(JSONHandler):
    async def get(self, room: str) -> None:
        rules.check_room(room)
        self.write_json({"nicks": await self.chat.present(room)})


class HealthAPI(JSONHandler):
    async def get(self) -> None:
        try:
            await self.chat.store.ping()
        except StoreError as exc:
            self.write_json(
                {"status": "unavailable", "error": "store_unavailable",
                 "message": f"MongoDB is unreachable: {type(exc).__name__}"},
                status=503,
            )
            return
        self.write_json({"status": "ok"})


class NotFoundAPI(JSONHandler):
    """Any other path under ``/api/``: ``404 not_found``, whatever the method."""

    def check_xsrf_cookie(self) -> None:
        pass  # changes nothing; a wrong URL is a 404, not a 403

    def prepare(self) -> None:
        raise tornado.web.HTTPError(404, "There is no such API endpoint.")
