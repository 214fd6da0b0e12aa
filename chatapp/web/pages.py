"""The pages a person uses: the join form and the chat page (rendered with its history),
in the reader's language (``chatapp/web/locale.py``), and the language switch."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import tornado.escape
import tornado.web

from chatapp import rules
from chatapp.errors import ChatError
from chatapp.web import locale
from chatapp.web.base import BaseHandler, ChatHandlerMixin


class JoinPage(locale.LocaleMixin, BaseHandler):
    """``GET /``: the join form. Someone who already has a session goes straight to the room."""

    async def get(self) -> None:
        room = self.get_argument("room", rules.DEFAULT_ROOM)
        if not rules.is_valid_room(room):
            room = rules.DEFAULT_ROOM
        if await self.current_session() is not None:
            self.redirect(f"/r/{room}")
            return
        self.render("join.html", room=room, nick="", error=None, registered=False)

    head = get  # uptime checkers use HEAD: the same answer without its body (Tornado drops it)

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
            # The rule's sentence in the reader's language (English when it has none).
            self.render("join.html", room=shown_room, nick=nick,
                        error=self.locale.translate(message), registered=registered)
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


class RoomPage(locale.LocaleMixin, BaseHandler):
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
        # Banned: a 403 page saying so and for how long (write_error), never the room.
        await self.chat.moderation.check_read(room, session, self.request.remote_ip or "")
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

    head = get  # uptime checkers use HEAD: the same answer without its body (Tornado drops it)

    def write_error(self, status_code: int, **kwargs: object) -> None:
        # Tornado passes exc_info as a (type, value, traceback) tuple; kwargs are untyped.
        exc = kwargs.get("exc_info", (None, None, None))[1]  # type: ignore[index]
        if isinstance(exc, ChatError):
            status_code = exc.status
            self.set_status(status_code)
        _ = self.locale.translate
        message = _("Sorry: the chat is unavailable (%(status)d). Try again in a moment.")
        message = message % {"status": status_code}
        if isinstance(exc, ChatError) and exc.code == "banned":
            message = exc.message  # why you may not see the room, and for how long
        self.finish(
            f'<!doctype html><html lang="{self.locale.code}"><title>chatapp</title>'
            f'<p id="refused" data-error="{exc.code if isinstance(exc, ChatError) else ""}">'
            f"{tornado.escape.xhtml_escape(message)}</p>"
        )


class LanguageSwitch(locale.LocaleMixin, BaseHandler):
    """``POST /lang`` (``lang``, ``next``): remember the language in a cookie and go back to
    the page it was chosen on. An unknown language is a 400 and changes nothing."""

    def post(self) -> None:
        lang = self.get_body_argument("lang", "")
        if lang not in locale.LANGUAGES:
            raise tornado.web.HTTPError(400, "unknown language")
        locale.remember(self, lang)
        self.redirect(locale.safe_next(self.get_body_argument("next", "/")), status=303)


class StaticFiles(ChatHandlerMixin, tornado.web.StaticFileHandler):
    """``/static/``: Tornado's static files, with the security headers too (nosniff above
    all: a script or style must never be guessed from its content)."""


class NotFoundPage(BaseHandler):
    """Any path no other route takes: Tornado's 404 page, with the security headers."""

    def check_xsrf_cookie(self) -> None:
        pass  # changes nothing; a wrong URL is a 404, not a 403

    def prepare(self) -> None:
        raise tornado.web.HTTPError(404)
