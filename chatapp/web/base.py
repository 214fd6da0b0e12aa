"""What every handler shares: the session cookie, JSON errors and security headers."""

from __future__ import annotations

import json
import logging
import time
import weakref
from asyncio import Future
from typing import Any

import tornado.web
from tornado.http1connection import HTTP1Connection

from chatapp import rules
from chatapp.chat import Chat
from chatapp.errors import ChatError, store_unavailable
from chatapp.sessions import Session
from chatapp.store import StoreError
from chatapp.web.output import (
    SMALL_ANSWER_BYTES,
    WRITE_SECONDS,
    OutputBudget,
    bound_send_buffer,
    watch_answer,
)

log = logging.getLogger(__name__)

SESSION_COOKIE = "chatapp_session"
# The cookie only names the session; the server decides when the session expires. A month
# keeps a returning visitor's cookie around long enough to be recognised if still live.
SESSION_COOKIE_DAYS = 30

# No inline script or style anywhere: what a stored message could smuggle into a page has
# nothing to run. connect-src allows the page's own WebSocket (ws: and wss: on the same host).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)

# Tornado's own errors (XSRF refusal, unknown route, wrong method), in the contract's shape.
_STATUS_CODES = {
    400: "bad_request",
    401: "no_session",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    500: "internal_error",
    503: "unavailable",
}


# What a keep-alive connection's requests proved about their cookies is kept this long: a
# long-poll client sends the same Cookie header on every request, and verifying it again
# (parsing the header, the HMAC of the signed session cookie, the XSRF token's) was a tenth
# of a poll cycle. Short enough that the signed cookie's own age limit still applies.
VERIFIED_SECONDS = 60.0


class Verified:
    """What one connection's latest Cookie header was found to hold: the session id its
    signed cookie names (None: none valid), and which ``X-XSRFToken`` values match its
    ``_xsrf`` cookie. Each answer is a pure function of the headers (and the server's
    secret), so the cache is keyed on them exactly: a proxy's pooled connection carrying
    other visitors' requests only misses it."""

    __slots__ = ("cookie", "sid", "until", "xsrf")

    def __init__(self, cookie: str, sid: str | None) -> None:
        self.cookie = cookie
        self.sid = sid
        self.until = time.monotonic() + VERIFIED_SECONDS
        self.xsrf: dict[str, bool] = {}  # at most XSRF_KEPT entries


# Tokens remembered per connection: the page sends one; more is someone trying several.
XSRF_KEPT = 4
# One entry per open connection (its IOStream), gone with it.
_verified: weakref.WeakKeyDictionary[Any, Verified] = weakref.WeakKeyDictionary()


SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}


class ChatHandlerMixin:
    """What every handler of ours has, the WebSocket included: the core and the headers."""

    application: tornado.web.Application

    @property
    def chat(self) -> Chat:
        return self.application.settings["chat"]

    def set_default_headers(self) -> None:
        for name, value in SECURITY_HEADERS.items():
            # A mixin: the handler it is mixed into has set_header.
            self.set_header(name, value)  # type: ignore[attr-defined]


class BaseHandler(ChatHandlerMixin, tornado.web.RequestHandler):

    def finish(self, chunk: str | bytes | dict[str, Any] | None = None) -> Future[None]:
        """Write the answer, counting it against the unread-output budget until the client
        has taken it (``output.OutputBudget``): a large answer that does not fit is refused
        (``ChatError``, answered instead by a small error), and any answer still not taken
        after ``output.WRITE_SECONDS`` closes its connection."""
        if chunk is not None:
            self.write(chunk)
        # What finish() is about to write (Tornado keeps it in this list until then).
        size = sum(len(part) for part in self._write_buffer)
        release = None
        if size > SMALL_ANSWER_BYTES and not self._finished:
            budget: OutputBudget = self.settings["output_budget"]
            release = budget.reserve(self.request.remote_ip or "", size)
        connection = self.request.connection
        if release is not None and isinstance(connection, HTTP1Connection) and \
                not connection.stream.closed():
            bound_send_buffer(connection.stream.socket)
        future = super().finish()
        if isinstance(connection, HTTP1Connection):
            watch_answer(future, release, connection.close,
                         self.settings.get("write_timeout", WRITE_SECONDS))
        elif release is not None:
            release()
        return future

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        log_handler_exception(self, typ, value, tb)

    def send_error(self, status_code: int = 500, **kwargs: Any) -> None:
        status_code, kwargs = as_chat_error(status_code, kwargs)
        super().send_error(status_code, **kwargs)

    async def current_session(self) -> Session | None:
        sid = self.verified().sid
        if not sid:
            return None
        return await self.chat.sessions.get(sid)

    def verified(self) -> Verified:
        """This request's cookies, verified: from the connection's cache when its previous
        request sent the very same Cookie header (``Verified``)."""
        cookie = self.request.headers.get("Cookie", "")
        # Keyed on the stream: Tornado makes a new HTTP1Connection for every request of a
        # keep-alive connection, over the same IOStream.
        stream = getattr(self.request.connection, "stream", None)
        known = _verified.get(stream) if stream is not None else None
        if known is not None and known.cookie == cookie and known.until > time.monotonic():
            return known
        raw = self.get_signed_cookie(SESSION_COOKIE)
        known = Verified(cookie, raw.decode() if raw else None)
        if stream is not None:
            _verified[stream] = known
        return known

    async def require_session(self) -> Session:
        session = await self.current_session()
        if session is None:
            raise ChatError("no_session", "Choose a nickname first.", 401)
        return session

    async def require_session_in(self, room: str) -> Session:
        """``require_session``, and ``403 banned`` if the session or (for a guest) this
        request's address is banned from ``room`` (``chatapp.moderation``): a write's check
        by address, which the core does not see."""
        session = await self.require_session()
        rules.check_room(room)
        await self.chat.moderation.check_read(room, session, self.request.remote_ip or "")
        return session

    def carries_xsrf_header(self) -> bool:
        """True when ``X-XSRFToken`` holds this visitor's XSRF token. Only the site's own pages
        can send it: another site can neither read the ``_xsrf`` cookie nor add a header to a
        cross-site request (that needs CORS, which this server never grants). A GET that
        changes state (a long-poll counting as presence) asks this first."""
        token = self.request.headers.get("X-Xsrftoken")
        if not token or "_xsrf" in self.request.arguments:
            return False  # check_xsrf_cookie would read an _xsrf argument before the header
        known = self.verified()
        ok = known.xsrf.get(token)
        if ok is None:
            try:
                self.check_xsrf_cookie()
                ok = True
            except tornado.web.HTTPError:
                ok = False
            if len(known.xsrf) < XSRF_KEPT:
                known.xsrf[token] = ok
        return ok

    def set_session_cookie(self, session: Session) -> None:
        self.set_signed_cookie(
            SESSION_COOKIE,
            session.sid,
            expires_days=SESSION_COOKIE_DAYS,
            httponly=True,
            samesite="Lax",
            secure=self.request.protocol == "https",
        )


class JSONHandler(BaseHandler):
    """API handlers: JSON in, JSON out, every error as ``{"error", "message"}``."""

    def prepare(self) -> None:
        length = self.request.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > rules.MAX_BODY_BYTES:
            raise ChatError("too_large", "The request body is larger than 64 KiB.", 413)

    def compute_etag(self) -> None:
        # API answers are no-store and change with every event: hashing each one (every
        # long-poll answer included) for an ETag would be work no client can use.
        return None

    def write_json(self, obj: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(obj, ensure_ascii=False, separators=(",", ":")))

    def body_fields(self) -> dict[str, Any]:
        """The request's fields: a JSON object, or a form body for old browsers."""
        content_type = self.request.headers.get("Content-Type", "")
        if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            # Decoded as sent: get_body_argument would turn control characters into spaces
            # and strip, so the text rules would not see what the client sent.
            try:
                return {
                    k: self.decode_argument(v[-1], name=k)
                    for k, v in self.request.body_arguments.items()
                }
            except tornado.web.HTTPError:  # a field that is not UTF-8: as unreadable as bad JSON
                raise ChatError("bad_json", "The request body is not valid UTF-8.", 400) from None
        try:
            fields = json.loads(self.request.body or b"{}")
        # RecursionError: nesting deeper than the parser allows ("[[[[..."), still not a 500.
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise ChatError("bad_json", "The request body is not valid JSON.", 400) from None
        if not isinstance(fields, dict):
            raise ChatError("bad_json", "The request body must be a JSON object.", 400)
        return fields

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        fields: dict[str, Any] = {}
        if isinstance(exc, ChatError):
            code, message, fields = exc.code, exc.message, exc.fields
        elif isinstance(exc, tornado.web.HTTPError) and exc.log_message and status_code < 500:
            code, message = _STATUS_CODES.get(status_code, "error"), exc.log_message % exc.args
        else:
            code = _STATUS_CODES.get(status_code, "error")
            message = self._reason
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps({**fields, "error": code, "message": message}))

class RefuseHost(JSONHandler):
    """Any request whose ``Host`` is not one of ``--hosts`` (DNS rebinding: a name the
    attacker controls, pointed at this server's address)."""

    def check_xsrf_cookie(self) -> None:
        pass  # refused below whatever the method; nothing is changed

    def prepare(self) -> None:
        raise ChatError(
            "bad_host",
            f"This server does not answer for the host name {self.request.host_name!r}.",
            400,
        )


def as_chat_error(status_code: int, kwargs: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """A refusal's own status; MongoDB failing anywhere becomes ``503 store_unavailable``."""
    exc = kwargs.get("exc_info", (None, None, None))[1]
    if isinstance(exc, StoreError):
        exc = store_unavailable()
        kwargs = dict(kwargs, exc_info=(ChatError, exc, None))
    if isinstance(exc, ChatError):
        status_code = exc.status
    return status_code, kwargs


def log_handler_exception(
    handler: tornado.web.RequestHandler, typ: Any, value: Any, tb: Any
) -> None:
    if isinstance(value, ChatError):
        return  # a refusal we chose, not a fault worth a traceback
    if isinstance(value, StoreError):
        log.warning("%s %s: MongoDB unavailable: %s", handler.request.method,
                    handler.request.path, value)
        return
    tornado.web.RequestHandler.log_exception(handler, typ, value, tb)
