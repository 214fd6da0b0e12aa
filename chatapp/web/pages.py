"""The pages a person uses: the join form and the chat page (rendered with its history)."""

from __future__ import annotations

import json
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
        self.render("join.html", room=room, nick="", error=None)

    async def post(self) -> None:
        """``POST /join``: choose a nickname; 303 to the room, or the form again with why not."""
        nick = self.get_body_argument("nick", "")
        room = self.get_body_argument("room", "") or rules.DEFAULT_ROOM
        try:
            rules.check_room(room)
            current = await self.current_session()
            if current is not None and rules.nick_key(current.nick) == rules.nick_key(nick.strip()):
                session = current  # choosing the nickname you already hold
            else:
                session = await self.chat.sessions.create(nick, self.request.remote_ip or "")
                if current is not None:
                    await self.chat.end_session(current)
        except ChatError as exc:
            self.set_status(exc.status)
            shown_room = room if rules.is_valid_room(room) else rules.DEFAULT_ROOM
            self.render("join.html", room=shown_room, nick=nick, error=exc.message)
            return
        self.set_session_cookie(session)
        self.redirect(f"/r/{room}", status=303)


def page_limits() -> dict[str, int]:
    """The limits the page repeats to people (the composer's counter, the edit box), taken
    from the rules so that a limit changes in one place."""
    return {
        "max_text": rules.MAX_TEXT_CHARS,
        "max_nick": rules.MAX_NICK_CHARS,
        "max_preview": rules.MAX_PREVIEW_CHARS,
        "max_emoji": rules.MAX_EMOJI_CHARS,
    }


# Inside <script type="application/json"> nothing is decoded: "</script>" or "<!--" in a
# message would end or confuse the element. JSON allows these escapes in strings, so the
# page's JSON.parse reads the same text back. U+2028/2029 are escaped for old parsers.
_SCRIPT_JSON_ESCAPES = {
    "<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029",
}


def script_json(data: object) -> str:
    """``data`` as JSON that is safe inside a ``<script type="application/json">`` element."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    for raw, escaped in _SCRIPT_JSON_ESCAPES.items():
        text = text.replace(raw, escaped)
    return text


class RoomPage(BaseHandler):
    """``GET /r/<room>``: the chat page, already holding the room's latest events.

    The events travel as page data (JSON) that static/events.js draws, the same renderer as
    for every later event; the template adds a plain <noscript> copy for a browser without
    JavaScript. Both escape every text (the JSON by script_json, the copy by autoescape).
    """

    async def get(self, room: str) -> None:
        if not rules.is_valid_room(room):
            self.send_error(404)
            return
        session = await self.current_session()
        if session is None:
            self.redirect("/?" + urlencode({"room": room}))
            return
        # The messages in their current state, and the log's cursor when they were read: the
        # script resumes from there, so the actions already shown are not sent again.
        view = await self.chat.newcomer_view(room)
        events = [e.event for e in view]
        has_more = view.has_more
        nicks = await self.chat.present(room)
        data = {
            "room": room,
            "nick": session.nick,
            "cursor": view.cursor,
            "has_more": has_more,
            "events": events,
            "nicks": nicks,
            "limits": page_limits(),
        }
        self.set_header("Cache-Control", "no-store")
        self.render(
            "room.html",
            room=room,
            nick=session.nick,
            events=events,
            has_more=has_more,
            nicks=nicks,
            page_json=script_json(data),
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
