"""The pages a person uses: the join form and the chat page (rendered with its history)."""

from __future__ import annotations

from urllib.parse import urlencode

import tornado.web

from chatapp import rules
from chatapp.errors import ChatError
from chatapp.web.base import BaseHandler, ChatHandlerMixin


class JoinPage(BaseHandler):
    """``GET /``: the join form. Someone who already has a session goes straight to the room."""

    async def get(self) -> None:
        room = self.get_argument("room", rules.DEFAULT_ROOM)
        if not rules.is_valid_room(room):
            room = rules.DEFAULT_ROOM
        if await self.current_session() is not None:
            self.redirect(f"/r/{room}")
            return
        self.render("join.html", room=room, nick="", error=None, registered=False)

    async def post(self) -> None:
        """``POST /join``: choose a nickname, or log in to a registered one with its password
        (the form shows the password field once the nickname turns out to be registered);
        303 to the room, or the form again with why not."""
        nick = self.get_body_argument("nick", "")
        # Not stripped: a password is exactly what was typed.
        password = self.get_body_argument("password", "", strip=False)
        room = self.get_body_argument("room", "") or rules.DEFAULT_ROOM
        address = self.request.remote_ip or ""
        try:
            rules.check_room(room)
            current = await self.current_session()
            if current is not None and rules.nick_keys(current.nick) == rules.nick_keys(
                rules.check_nick(nick)
            ):
                session = current  # choosing the nickname you already hold
            elif password:
                session = await self.settings["accounts"].login(nick, password, address)
            else:
                session = await self.chat.sessions.create(nick, address)
            if current is not None and session is not current:
                await self.chat.end_session(current)
        except ChatError as exc:
            self.set_status(exc.status)
            shown_room = room if rules.is_valid_room(room) else rules.DEFAULT_ROOM
            registered = exc.code == "nick_registered" or bool(password)
            message = exc.message
            if exc.code == "nick_registered":
                message = ("This nickname is registered. Enter its password to log in, "
                           "or choose another nickname.")
            self.render("join.html", room=shown_room, nick=nick, error=message,
                        registered=registered)
            return
        self.set_session_cookie(session)
        self.redirect(f"/r/{room}", status=303)


class RoomPage(BaseHandler):
    """``GET /r/<room>``: the chat page, already holding the room's latest events."""

    async def get(self, room: str) -> None:
        if not rules.is_valid_room(room):
            self.send_error(404)
            return
        session = await self.current_session()
        if session is None:
            self.redirect("/?" + urlencode({"room": room}))
            return
        entries = await self.chat.updates(room, None)
        buffer = await self.chat.room(room)
        events = [e.event for e in entries]
        # Older events exist when the buffer does not reach back to the room's start, or
        # holds more than the page shows.
        has_more = bool(buffer.floor) or len(buffer.entries) > len(events)
        self.set_header("Cache-Control", "no-store")
        self.render(
            "room.html",
            room=room,
            nick=session.nick,
            events=events,
            cursor=events[-1]["id"] if events else "",
            has_more=has_more,
            nicks=await self.chat.present(room),
        )

    def write_error(self, status_code: int, **kwargs: object) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]  # type: ignore[index]
        if isinstance(exc, ChatError):
            status_code = exc.status
            self.set_status(status_code)
        self.finish(
            f"<!doctype html><title>chatapp</title><p>Sorry: the chat is unavailable "
            f"({status_code}). Try again in a moment.</p>"
        )


class StaticFiles(ChatHandlerMixin, tornado.web.StaticFileHandler):
    """``/static/``: Tornado's static files, with the security headers too (nosniff above
    all: a script or style must never be guessed from its content)."""


class NotFoundPage(BaseHandler):
    """Any path no other route takes: Tornado's 404 page, with the security headers."""

    def check_xsrf_cookie(self) -> None:
        pass  # changes nothing; a wrong URL is a 404, not a 403

    def prepare(self) -> None:
        raise tornado.web.HTTPError(404)
