"""``make_app()``: the routes and settings of the Tornado application."""

from __future__ import annotations

import logging
import os
import secrets
from typing import Any

import tornado.web
from tornado.httputil import HTTPServerRequest
from tornado.log import access_log

from chatapp import paths, rules
from chatapp.accounts import Accounts
from chatapp.chat import Chat
from chatapp.roles import Roles
from chatapp.web import api, base, pages, roles_api, rooms_api, search, ws
from chatapp.web.address import Edge, normal_origin
from chatapp.web.output import FairGate, OutputBudget

# Any path segment: the handlers check the name (rules.check_room), so a bad one gets the
# contract's 400 bad_room rather than a bare 404.
ROOM = r"([^/]+)"
# A message id, likewise checked by the core (rules.check_target: 404 no_such_message).
MESSAGE = r"([^/]+)"
# Cookie secrets are generated per installation and kept out of the code and the repository.
COOKIE_SECRET_FILE = "cookie_secret"


def make_app(
    chat: Chat,
    *,
    cookie_secret: str,
    poll_timeout: float = 25.0,
    allowed_origins: tuple[str, ...] = (),
    trusted_proxies: tuple[str, ...] = (),
    hosts: tuple[str, ...] = (),
    debug: bool = False,
    **settings: Any,
) -> tornado.web.Application:
    """The application. Serve it with ``xheaders=False`` (``web.server.make_server``): the
    proxy headers are believed from ``trusted_proxies`` only (``web.address.Edge``)."""
    routes = [
        (r"/", pages.JoinPage),
        (r"/join", pages.JoinPage),
        (rf"/r/{ROOM}", pages.RoomPage),
        (r"/lang", pages.LanguageSwitch),
        (r"/api/session", api.SessionAPI),
        (r"/api/account", api.AccountAPI),
        (rf"/api/rooms/{ROOM}/messages", api.MessagesAPI),
        (rf"/api/rooms/{ROOM}/messages/{MESSAGE}", api.MessageAPI),
        (rf"/api/rooms/{ROOM}/messages/{MESSAGE}/reactions", api.ReactionsAPI),
        (rf"/api/rooms/{ROOM}/updates", api.UpdatesAPI),
        (rf"/api/rooms/{ROOM}/history", api.HistoryAPI),
        (rf"/api/rooms/{ROOM}/presence", api.PresenceAPI),
        (rf"/api/rooms/{ROOM}/search", search.SearchAPI),
        (rf"/api/rooms/{ROOM}/ws", ws.RoomSocket),
        (rf"/api/rooms/{ROOM}/roles", roles_api.RoomRolesAPI),
        (rf"/api/rooms/{ROOM}/claim", roles_api.RoomClaimAPI),
        (rf"/api/rooms/{ROOM}/moderators/([^/]+)", roles_api.ModeratorsAPI),
        (rf"/api/rooms/{ROOM}/typing", rooms_api.TypingAPI),
        (rf"/api/rooms/{ROOM}/read", rooms_api.ReadAPI),
        (r"/api/rooms", rooms_api.RoomsAPI),
        (r"/api/me/rooms", rooms_api.MyRoomsAPI),
        (rf"/api/rooms/{ROOM}/moderation", roles_api.ModerationAPI),
        (r"/healthz", api.HealthAPI),
        # Anything else: a 404 in the contract's JSON shape under /api/, a page elsewhere,
        # both with the security headers (Tornado's own 404 handler has neither).
        (r"/api/.*", api.NotFoundAPI),
        (r".*", pages.NotFoundPage),
    ]
    return ChatApplication(
        routes,
        edge=Edge(trusted_proxies, hosts),
        output_budget=OutputBudget(),
        answer_gate=FairGate(),
        frame_budgets=ws.FrameBudgets(),
        chat=chat,
        accounts=settings.pop("accounts", None) or Accounts(chat),
        roles=Roles(chat.store, settings.pop("admins", ())),
        cookie_secret=cookie_secret,
        xsrf_cookies=True,
        xsrf_cookie_kwargs={"samesite": "Lax"},
        template_path=paths.template_path(),
        static_path=paths.static_path(),
        static_handler_class=pages.StaticFiles,
        poll_timeout=poll_timeout,
        # Compared as normal_origin() writes them: "https://Chat.example.com:443/" is
        # "https://chat.example.com".
        allowed_origins=tuple(normal_origin(o) or o for o in allowed_origins),
        # Larger frames cannot hold a valid message; Tornado closes the socket with 1009.
        websocket_max_message_size=rules.MAX_BODY_BYTES,
        # Pings find connections that vanished without a close (a laptop lid, a dead Wi-Fi),
        # so their session can leave the room after the grace period.
        websocket_ping_interval=25,
        websocket_ping_timeout=20,
        log_function=log_request,
        debug=debug,
        **settings,
    )


class ChatApplication(tornado.web.Application):
    """Every request, before routing: the client's address and scheme as ``--trusted_proxies``
    allow (``Edge.resolve``), and a Host outside ``--hosts`` refused with ``400 bad_host``, on
    every path (pages, API, WebSocket, static files) alike."""

    def find_handler(self, request: HTTPServerRequest, **kwargs: Any) -> Any:
        edge: Edge = self.settings["edge"]
        edge.resolve(request)
        if not edge.host_allowed(request):
            return self.get_handler_delegate(request, base.RefuseHost)
        return super().find_handler(request, **kwargs)


def log_request(handler: tornado.web.RequestHandler) -> None:
    """The access log: refusals and failures at INFO and above, the rest at DEBUG.

    Every long-poll answer is a request: logging each one at INFO would put a log line (and
    its formatting and I/O) on the path of every long-poll delivery.
    """
    status = handler.get_status()
    if status < 400:
        level = logging.DEBUG
    elif status < 500:
        level = logging.INFO
    else:
        level = logging.ERROR
    if access_log.isEnabledFor(level):
        request = handler.request
        access_log.log(level, "%d %s %.2fms", status, handler._request_summary(),
                       1000.0 * request.request_time())


def load_cookie_secret(data_dir: str) -> str:
    """The installation's cookie secret, created on first start and kept in ``data_dir``."""
    path = os.path.join(data_dir, COOKIE_SECRET_FILE)
    try:
        with open(path) as f:
            secret = f.read().strip()
        if secret:
            return secret
    except FileNotFoundError:
        pass
    os.makedirs(data_dir, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    # Readable by the owner alone: whoever holds it can forge any session.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    return secret
