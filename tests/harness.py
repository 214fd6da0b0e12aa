"""Test helpers: an in-process chat server, and an HTTP + WebSocket client that keeps cookies.

The client speaks to the server only over the wire (HTTP, WebSocket), as a browser would.
"""

from __future__ import annotations

import asyncio
import json
import socket
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import urlencode

from tornado.httpclient import AsyncHTTPClient, HTTPRequest, HTTPResponse
from tornado.httpserver import HTTPServer
from tornado.websocket import WebSocketClientConnection, websocket_connect

from chatapp.app import make_app
from chatapp.chat import Chat
from chatapp.store import EventStore, connect
from chatapp.web.server import make_server

# Long enough for a loaded CI machine, short enough that a missing event fails the test fast.
WAIT_SECONDS = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ChatServer:
    """One chatapp server, in this process and event loop, as ``python -m chatapp`` builds it."""

    def __init__(self, mongo_uri: str, db_name: str, port: int, **options: Any) -> None:
        self.mongo_uri, self.db_name, self.port = mongo_uri, db_name, port
        self.options = options
        self.server: HTTPServer | None = None

    async def start(self) -> ChatServer:
        opts = {
            "history_size": 100, "rate_limit": 0, "grace_period": 60.0,
            "unused_session_ttl": 120.0, "store_timeout": 4.0,
            # Every test client comes from 127.0.0.1; the limit's own tests turn it on.
            "new_sessions_per_ip": 0,
        }
        poll_timeout = self.options.pop("poll_timeout", 25.0)
        allowed_origins = self.options.pop("allowed_origins", ())
        # Test clients all come from 127.0.0.1: trusting it lets a test come from another
        # address with X-Real-IP; the trusted-proxy tests pass their own list.
        trusted_proxies = self.options.pop("trusted_proxies", ("127.0.0.1",))
        hosts = self.options.pop("hosts", ())
        write_timeout = self.options.pop("write_timeout", 30.0)
        # make_server's: max_connections, idle_connection_timeout, body_timeout.
        server_settings = {k: self.options.pop(k) for k in list(self.options)
                           if k in ("max_connections", "idle_connection_timeout", "body_timeout")}
        admins = self.options.pop("admins", ())
        ws_compression = self.options.pop("ws_compression", True)
        opts.update(self.options)
        self.store = EventStore(connect(self.mongo_uri, opts["store_timeout"]), self.db_name)
        await self.store.create_indexes()
        self.chat = Chat(self.store, **opts)
        await self.chat.start()
        self.app = make_app(
            self.chat,
            cookie_secret="test-secret-" + self.db_name,
            poll_timeout=poll_timeout,
            allowed_origins=allowed_origins,
            trusted_proxies=trusted_proxies,
            hosts=hosts,
            write_timeout=write_timeout,
            admins=admins,
            ws_compression=ws_compression,
        )
        self.server = make_server(self.app, **server_settings)
        self.server.listen(self.port, "127.0.0.1")
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> Client:
        return Client(self.url)

    async def stop(self) -> None:
        """Stop as SIGTERM does: stop listening, store what is in flight, close connections."""
        if self.server is None:
            return
        self.server.stop()
        await self.chat.stop(timeout=5)
        await self.server.close_all_connections()
        await self.chat.flush(timeout=5)  # sends that came in while connections were closing
        self.store.client.close()
        self.server = None

    def close_now(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.store.client.close()
            self.server = None


class ServerFactory:
    def __init__(self, mongo_uri: str, db_name: str) -> None:
        self.mongo_uri, self.db_name = mongo_uri, db_name
        self.started: list[ChatServer] = []

    async def start(self, port: int | None = None, **options: Any) -> ChatServer:
        server = ChatServer(self.mongo_uri, self.db_name, port or free_port(), **options)
        self.started.append(server)
        return await server.start()

    def close_all(self, io_loop: Any = None) -> None:
        for server in self.started:
            if io_loop is not None and server.server is not None:
                # A clean stop: in-flight writes finish before the store's client closes.
                io_loop.run_sync(server.stop, timeout=15)
            server.close_now()


class Client:
    """A browser-like client: keeps cookies, echoes the XSRF token, never raises on 4xx."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.cookies: dict[str, str] = {}
        self.http = AsyncHTTPClient(force_instance=True)

    def _cookie_header(self) -> str:
        return "; ".join(f"{k}={v}" for k, v in self.cookies.items())

    def _keep_cookies(self, response: HTTPResponse) -> None:
        for header in response.headers.get_list("Set-Cookie"):
            cookie = SimpleCookie()
            cookie.load(header)
            for name, morsel in cookie.items():
                if morsel["expires"] and "1970" in morsel["expires"] or morsel.value == "":
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.value

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        form: dict[str, str] | None = None,
        xsrf: bool = True,
        headers: dict[str, str] | None = None,
        timeout: float = 60,
    ) -> HTTPResponse:
        hdrs = dict(headers or {})
        if self.cookies:
            hdrs["Cookie"] = self._cookie_header()
        data = None
        if method in ("POST", "DELETE", "PUT", "PATCH"):
            if xsrf:
                if "_xsrf" not in self.cookies:
                    await self.request("GET", "/api/session")
                    hdrs["Cookie"] = self._cookie_header()
                hdrs["X-XSRFToken"] = self.cookies["_xsrf"]
            if form is not None:
                data = urlencode(form)
                hdrs["Content-Type"] = "application/x-www-form-urlencoded"
            elif body is not None:
                data = body if isinstance(body, (str, bytes)) else json.dumps(body)
                hdrs.setdefault("Content-Type", "application/json")
            else:
                data = "" if method != "DELETE" else None
        request = HTTPRequest(
            self.base_url + path, method=method, headers=hdrs, body=data,
            follow_redirects=False, request_timeout=timeout,
            allow_nonstandard_methods=True,
        )
        response = await self.http.fetch(request, raise_error=False)
        if response.code == 599:
            raise response.error  # type: ignore[misc]
        self._keep_cookies(response)
        return response

    async def get_json(self, path: str, **kw: Any) -> tuple[int, Any]:
        response = await self.request("GET", path, **kw)
        return response.code, _json(response)

    async def post_json(self, path: str, body: Any, **kw: Any) -> tuple[int, Any]:
        response = await self.request("POST", path, body, **kw)
        return response.code, _json(response)

    async def join(self, nick: str) -> Client:
        code, body = await self.post_json("/api/session", {"nick": nick})
        assert code == 200, (code, body)
        return self

    async def send(self, room: str, text: str, client_id: str) -> tuple[int, Any]:
        return await self.post_json(
            f"/api/rooms/{room}/messages", {"text": text, "client_id": client_id}
        )

    async def poll(
        self, room: str, cursor: str | None = None, xsrf: bool = True,
        signals: str | None = None,
    ) -> tuple[int, Any]:
        """A long-poll, with the XSRF token in ``X-XSRFToken`` as the page sends it (without
        it the poll does not count as presence); asking for signals too with ``signals``."""
        params = {k: v for k, v in (("cursor", cursor), ("signals", signals)) if v is not None}
        query = "?" + urlencode(params) if params else ""
        headers = {}
        if xsrf:
            if "_xsrf" not in self.cookies:
                await self.request("GET", "/api/session")
            headers["X-XSRFToken"] = self.cookies.get("_xsrf", "")
        return await self.get_json(f"/api/rooms/{room}/updates{query}", headers=headers)

    async def ws(
        self, room: str, cursor: str | None = None, origin: str | None = None,
        headers: dict[str, str] | None = None, compression: dict[str, Any] | None = None,
    ) -> Socket:
        """A WebSocket to ``room``; with ``compression`` (Tornado's compression_options, ``{}``
        for its defaults) it offers permessage-deflate, as browsers do."""
        query = "" if cursor is None else "?" + urlencode({"cursor": cursor})
        url = self.base_url.replace("http", "ws", 1) + f"/api/rooms/{room}/ws{query}"
        headers = {**(headers or {}), "Cookie": self._cookie_header()}
        if origin:
            headers["Origin"] = origin
        conn = await websocket_connect(HTTPRequest(url, headers=headers),
                                       compression_options=compression)
        return Socket(conn)

    def close(self) -> None:
        self.http.close()


class Socket:
    """A WebSocket client that hands out frames by type, waiting for events, not sleeping."""

    def __init__(self, conn: WebSocketClientConnection) -> None:
        self.conn = conn
        self.frames: list[dict[str, Any]] = []
        self.closed = False

    async def _read(self, timeout: float) -> dict[str, Any] | None:
        message = await asyncio.wait_for(self.conn.read_message(), timeout)
        if message is None:
            self.closed = True
            return None
        frame = json.loads(message)
        self.frames.append(frame)
        return frame

    async def next(self, type_: str | None = None, timeout: float = WAIT_SECONDS) -> dict[str, Any]:
        """The next frame (of ``type_``, skipping others); fails on timeout or close."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            frame = await self._read(max(0.01, deadline - loop.time()))
            if frame is None:
                raise AssertionError(
                    f"socket closed ({self.conn.close_code}) waiting for {type_}"
                )
            if type_ is None or frame["type"] == type_:
                return frame

    async def events(self, count: int, timeout: float = WAIT_SECONDS) -> list[dict[str, Any]]:
        """The next ``count`` events (from ``event`` frames)."""
        return [(await self.next("event", timeout))["event"] for _ in range(count)]

    async def nothing_more(self, type_: str = "event", within: float = 0.3) -> None:
        """Assert no frame of ``type_`` arrives within ``within`` seconds."""
        try:
            while True:
                frame = await self._read(within)
                if frame is None:
                    return
                assert frame["type"] != type_, f"unexpected frame {frame}"
        except TimeoutError:
            return

    def send(self, text: str, client_id: str) -> None:
        self.conn.write_message(json.dumps({"type": "send", "text": text, "client_id": client_id}))

    async def closed_with(self, timeout: float = WAIT_SECONDS) -> int | None:
        """Read until the server closes; the close code."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.closed:
            await self._read(max(0.01, deadline - loop.time()))
        return self.conn.close_code

    def close(self) -> None:
        self.conn.close()


def _json(response: HTTPResponse) -> Any:
    if not response.body:
        return None
    try:
        return json.loads(response.body)
    except ValueError:
        return response.body.decode(errors="replace")
