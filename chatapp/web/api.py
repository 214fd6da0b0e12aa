"""The JSON API, including the long-poll transport (``GET .../updates``)."""

from __future__ import annotations

import random
from typing import cast

import tornado.web
from tornado.http1connection import HTTP1Connection

from chatapp import rules
from chatapp.accounts import Accounts
from chatapp.buffer import Batch, encode
from chatapp.errors import ChatError
from chatapp.reading import HISTORY_DEFAULT, HISTORY_MAX, PollWaiter, View
from chatapp.store import StoreError
from chatapp.web.base import JSONHandler
from chatapp.web.output import gated

# Each long-poll waits a random 90-100 % of poll_timeout, so that thousands of clients parked
# at the same moment (say, after a restart) do not all come back in the same instant.
POLL_JITTER = 0.1


class SessionAPI(JSONHandler):
    async def get(self) -> None:
        self.xsrf_token  # noqa: B018 -- reading it sets the _xsrf cookie, as the contract says
        session = await self.current_session()
        self.write_json({"nick": session.nick if session else None})

    head = get  # HEAD answers as GET does, without the body (Tornado drops it)

    async def post(self) -> None:
        """Take a nickname as a guest (``{"nick"}``), or log in to an account's nickname
        (``{"nick", "password"}``, see ``AccountAPI``)."""
        fields = self.body_fields()
        current = await self.current_session()
        address = self.request.remote_ip or ""
        if "password" in fields:
            session = await accounts_of(self).login(fields.get("nick"), fields["password"], address)
        else:
            session = await self.chat.sessions.create(fields.get("nick"), address)
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


def accounts_of(handler: tornado.web.RequestHandler) -> Accounts:
    return handler.settings["accounts"]


class AccountAPI(JSONHandler):
    """``/api/account``: the current session's account. ``GET`` -> ``{"nick", "registered"}``;
    ``POST {"password"}`` registers the session's nickname (``201``); ``DELETE
    {"password"}`` deletes the account (this device stays, as a guest; the others end)."""

    async def get(self) -> None:
        session = await self.require_session()
        registered = await accounts_of(self).registered(session)
        self.write_json({"nick": session.nick, "registered": registered})

    async def post(self) -> None:
        session = await self.require_session()
        password = self.body_fields().get("password")
        session = await accounts_of(self).register(
            session, password, self.request.remote_ip or ""
        )
        self.write_json({"nick": session.nick}, status=201)

    async def delete(self) -> None:
        session = await self.require_session()
        password = self.body_fields().get("password")
        session = await accounts_of(self).delete(session, password, self.request.remote_ip or "")
        self.write_json({"nick": session.nick, "registered": False})


class MessagesAPI(JSONHandler):
    """``POST /api/rooms/<room>/messages``: send (or reply) over plain HTTP."""

    async def post(self, room: str) -> None:
        session = await self.require_session_in(room)
        fields = self.body_fields()
        event = await self.chat.send(session, room, fields.get("text"), fields.get("client_id"),
                                     fields.get("reply_to"))
        self.write_json({"event": event})


class MessageAPI(JSONHandler):
    """``PATCH`` (edit) and ``DELETE`` ``/api/rooms/<room>/messages/<id>``."""

    async def patch(self, room: str, target: str) -> None:
        session = await self.require_session_in(room)
        fields = self.body_fields()
        event = await self.chat.edit(session, room, target, fields.get("text"),
                                     fields.get("client_id"))
        self.write_json({"event": event})

    async def delete(self, room: str, target: str) -> None:
        session = await self.require_session_in(room)
        # A DELETE may carry no body: the client_id, if any, in one or in the query string.
        client_id = self.get_query_argument("client_id", None)
        if self.request.body:
            client_id = self.body_fields().get("client_id", client_id)
        event = await self.chat.delete(session, room, target, client_id,
                                       self.settings["roles"])
        self.write_json({"event": event})


class ReactionsAPI(JSONHandler):
    """``POST /api/rooms/<room>/messages/<id>/reactions`` ``{"emoji", "on", "client_id"}``."""

    async def post(self, room: str, target: str) -> None:
        session = await self.require_session_in(room)
        fields = self.body_fields()
        event, reactions = await self.chat.react(
            session, room, target, fields.get("emoji"), _form_bool(fields.get("on")),
            fields.get("client_id"),
        )
        self.write_json({"event": event, "reactions": reactions})


def _form_bool(value: object) -> object:
    """A form body's "true"/"false" as JSON's; anything else as it came (the rules judge)."""
    return {"true": True, "false": False}.get(value, value) if isinstance(value, str) else value


class UpdatesAPI(JSONHandler):
    """``GET /api/rooms/<room>/updates?cursor=<id>&signals=<version>``: the long-poll
    transport. With ``signals`` it also answers when presence or typing changed since that
    version, and every answer carries the lists (``RoomSignals.state``).

    A poll counts as presence (joins the room) only when it carries the XSRF token in
    ``X-XSRFToken``, as the page's polls do: a GET is what any other site can make a
    visitor's browser send with their cookie (an ``<img src>``), and it must change nothing.
    Without the token it is answered all the same, as a read, still counted against the
    connection caps while it waits. No HEAD (405): a long-poll waits for events and counts
    as presence, neither of which a HEAD wants."""

    waiter: PollWaiter | None = None

    async def get(self, room: str) -> None:
        rules.check_room(room)
        session = await self.require_session()
        cursor = self.get_query_argument("cursor", None)
        if cursor is not None:
            rules.check_cursor(cursor)
        signals = self.get_query_argument("signals", None)
        timeout = self.settings["poll_timeout"] * random.uniform(1 - POLL_JITTER, 1)
        entries = await self.chat.poll(
            session, room, cursor, timeout, self.request.remote_ip or "", self._park,
            present=self.carries_xsrf_header(), signals=signals,
        )
        if entries is None:
            # Tornado's HTTPServer always serves a request over an HTTP1Connection.
            if cast(HTTP1Connection, self.request.connection).stream.closed():
                return  # the client is gone; nobody to answer
            raise ChatError("no_session", "The session has ended.", 401)
        # The events were encoded once when published (and a woken batch joined once for all
        # its waiters): splice them, don't re-encode.
        if isinstance(entries, View):
            new_cursor = entries.cursor  # the log's end: what the view already shows
        else:
            new_cursor = entries[-1].id if entries else (cursor or "")
        events = entries.json_array if isinstance(entries, Batch) else ",".join(
            e.json for e in entries
        )
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.set_header("Cache-Control", "no-store")
        extra = "" if signals is None else "," + self._signal_fields(room)
        self.finish('{"events":[' + events + '],"cursor":"' + new_cursor + '"' + extra + "}")

    def _signal_fields(self, room: str) -> str:
        buffer = self.chat.rooms.loaded(room)
        if buffer is None:
            return encode(self.chat.signals_of(room))[1:-1]
        return buffer.signals.state_fields()  # encoded once per change of the lists

    def _park(self, waiter: PollWaiter) -> None:
        self.waiter = waiter

    def on_connection_close(self) -> None:
        # Drop the waiter at once: a closed connection must not hold a place in the room.
        if self.waiter is not None:
            self.waiter.cancel()


class HistoryAPI(JSONHandler):
    @gated  # a page of up to 200 events: built a few at a time, each address in turn
    async def get(self, room: str) -> None:
        rules.check_room(room)
        await self.chat.moderation.check_read(
            room, await self.current_session(), self.request.remote_ip or "")
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

    head = get  # HEAD answers as GET does, without the body (Tornado drops it)
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

    head = get  # HEAD answers as GET does, without the body (Tornado drops it)


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

    head = get  # uptime checkers use HEAD; the same status, without the body


class NotFoundAPI(JSONHandler):
    """Any other path under ``/api/``: ``404 not_found``, whatever the method."""

    def check_xsrf_cookie(self) -> None:
        pass  # changes nothing; a wrong URL is a 404, not a 403

    def prepare(self) -> None:
        raise tornado.web.HTTPError(404, "There is no such API endpoint.")
