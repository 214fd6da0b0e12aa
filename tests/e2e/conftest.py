"""Fixtures for the browser tests: the real server in a subprocess, Chromium, simulated people.

- ``app_server``: ``python -m chatapp`` on a free port, against the test run's mongod, with its
  own ``--data_dir`` (so its cookie secret survives ``.restart()``). ``server_factory(**opts)``
  starts one with other options (``history_size=20``).
- ``browser``: one Chromium per module. Without ``/usr/bin/chromium`` (or Playwright) the tests
  are skipped with the reason; with ``CI`` set in the environment they fail instead.
- ``people``: ``people(server, "maya", room)`` opens a new browser context (its own cookies:
  one simulated person) and returns a ``Person`` with its page.
- ``blocking_proxy``: a TCP proxy in front of a server that passes plain HTTP and refuses
  WebSocket upgrades, as some corporate proxies do.

The server keeps its data in the database named ``chatapp`` (not configurable), which every
test shares: tests use unique room names and nicknames (``unique()``) so they never collide.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.procs import AppProcess

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
# Not UTC, so that a time shown in UTC instead of the reader's local time is noticed.
TIMEZONE = "Asia/Ho_Chi_Minh"
# Default wait for anything a person would see happen; reconnections pass their own.
WAIT_MS = 10_000
# Options that keep the tests fast: short long-polls, no rate limit, a 3 s grace period.
FAST_OPTIONS = {"poll_timeout": 5, "rate_limit": 0, "grace_period": 3}

# Before any page script runs: no WebSocket in this browser (an old browser, a locked-down one).
NO_WEBSOCKET = "delete window.WebSocket; window.WebSocket = undefined;"
# Records every value data-state had on <main id="chat">, to see it leave "connected" and
# come back (window.__states holds the old values; the current one is the attribute).
RECORD_STATES = """
(function () {
  window.__states = [];
  new MutationObserver(function (records) {
    for (var i = 0; i < records.length; i++) {
      if (records[i].target.id === "chat") { window.__states.push(records[i].oldValue); }
    }
  }).observe(document, {subtree: true, attributes: true, attributeOldValue: true,
                        attributeFilter: ["data-state"]});
})();
"""


def unique(prefix: str) -> str:
    """A nickname or room name no other test (or earlier run on the same database) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


# ------------------------------------------------------------------------------ the server


class AppServer(AppProcess):
    """``tests/procs.py``'s ``AppProcess`` against the test run's mongod, with FAST_OPTIONS:
    ``restart()`` keeps the port and the data_dir."""

    start_seconds = 30.0

    def __init__(self, mongo_uri: str, data_dir: Path, **options: Any) -> None:
        super().__init__(data_dir, mongo_uri, **{**FAST_OPTIONS, **options})


@pytest.fixture
def server_factory(mongo_uri: str, tmp_path: Path) -> Iterator[Callable[..., AppServer]]:
    """``server_factory(history_size=20)``: start a server with these options (and FAST_OPTIONS)."""
    started: list[AppServer] = []

    def start(**options: Any) -> AppServer:
        server = AppServer(mongo_uri, tmp_path / f"server{len(started)}", **options)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()
        # Shown by pytest with the report of a failing test.
        print(f"--- server log ({server.url}) ---\n{server.log_tail()}")


@pytest.fixture
def app_server(server_factory: Callable[..., AppServer]) -> AppServer:
    return server_factory()


# ------------------------------------------------------------------------------ the browser


def _browser_missing() -> str | None:
    if not os.path.exists(CHROMIUM):
        return "chromium not installed: apt-get install chromium"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright not installed: pip install -e '.[test]'"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without a browser (and without CI), skip at once: no mongod, no servers started."""
    reason = _browser_missing()
    if reason and not os.environ.get("CI"):
        here = Path(__file__).parent
        for item in items:
            if here in Path(item.fspath).parents:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    reason = _browser_missing()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set: the browser tests must run here)")
        pytest.skip(reason)
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=WAIT_MS)
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class Person:
    """One simulated person: a browser context (own cookies and storage) and its page."""

    def __init__(self, context: Any, base_url: str, nick: str, room: str) -> None:
        self.context = context
        self.base_url = base_url
        self.nick = nick
        self.room = room
        self.errors: list[str] = []
        self.page = self.new_page()

    def new_page(self) -> Any:
        page = self.context.new_page()
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        return page

    @property
    def chat(self) -> Any:
        return self.page.locator("#chat")

    @property
    def composer(self) -> Any:
        return self.page.get_by_label(f"Message #{self.room}")

    def submit_join(self) -> None:
        """Fill in the join form (the room comes from the URL) and submit it."""
        from playwright.sync_api import expect

        self.page.goto(f"{self.base_url}/?room={self.room}")
        self.page.get_by_label("Nickname").fill(self.nick)
        expect(self.page.get_by_label("Room")).to_have_value(self.room)
        self.page.get_by_role("button", name="Join room").click()

    def join(self, timeout: float = WAIT_MS) -> Person:
        """Join through the form, as a person does; wait until the page is connected."""
        self.submit_join()
        self.page.wait_for_url(f"**/r/{self.room}")
        self.wait_connected(timeout)
        return self

    def wait_connected(self, timeout: float = WAIT_MS) -> None:
        from playwright.sync_api import expect

        expect(self.chat).to_have_attribute("data-state", "connected", timeout=timeout)

    def transport(self) -> str:
        return self.chat.get_attribute("data-transport")

    def states(self) -> list[str]:
        """Every value data-state has had since the page loaded, the current one last."""
        return self.page.evaluate(
            "() => window.__states.concat([document.getElementById('chat')"
            ".getAttribute('data-state')]).filter(s => s !== null)"
        )

    def say(self, text: str) -> None:
        """Type the text into the composer and press Enter."""
        self.composer.fill(text)
        self.composer.press("Enter")

    def wait_for_message(self, text: str, timeout: float = WAIT_MS) -> None:
        """Wait until a stored message (one with a data-id) with exactly this text is shown."""
        self.page.wait_for_function(
            """text => Array.prototype.some.call(
                   document.querySelectorAll('#older li.msg[data-id] .text, #log li.msg[data-id] .text'),
                   el => el.textContent === text)""",
            arg=text, timeout=timeout,
        )

    def events(self) -> list[dict[str, str]]:
        """What the log shows, in order: each event's id, nick, type and text."""
        return self.page.evaluate(
            """() => Array.prototype.map.call(
                   document.querySelectorAll('#older li[data-id], #log li[data-id]'),
                   li => ({id: li.getAttribute('data-id'), nick: li.getAttribute('data-nick'),
                           type: li.classList.contains('msg') ? 'message'
                               : li.classList.contains('is-join') ? 'join' : 'leave',
                           text: li.classList.contains('msg')
                               ? li.querySelector('.text').textContent : null}))"""
        )

    def message_texts(self) -> list[str]:
        return [e["text"] for e in self.events() if e["type"] == "message"]

    def xsrf_headers(self) -> dict[str, str]:
        for cookie in self.context.cookies(self.base_url):
            if cookie["name"] == "_xsrf":
                return {"X-XSRFToken": cookie["value"]}
        raise AssertionError("no _xsrf cookie")


@pytest.fixture
def people(browser: Any) -> Iterator[Callable[..., Person]]:
    """``people(server, "maya", room, websocket=False, **context_options)``: a new person.

    The nickname gets a unique suffix unless ``exact_nick=True``. Fails the test if any page
    threw an uncaught JavaScript error.
    """
    made: list[Person] = []

    def make(
        server: AppServer | str,
        nick: str,
        room: str,
        *,
        websocket: bool = True,
        exact_nick: bool = False,
        **context_options: Any,
    ) -> Person:
        base_url = server if isinstance(server, str) else server.url
        options = {"timezone_id": TIMEZONE, "locale": "en-US", **context_options}
        context = browser.new_context(**options)
        context.set_default_timeout(WAIT_MS)
        context.add_init_script(RECORD_STATES)
        if not websocket:
            context.add_init_script(NO_WEBSOCKET)
        person = Person(context, base_url, nick if exact_nick else unique(nick), room)
        made.append(person)
        return person

    yield make
    errors = [f"{p.nick}: {e}" for p in made for e in p.errors]
    for person in made:
        person.context.close()
    assert not errors, "JavaScript errors in the page:\n" + "\n".join(errors)


class Bot:
    """Someone using the JSON API directly, with its own session (no page: never present)."""

    def __init__(self, context: Any, base_url: str, nick: str) -> None:
        self.context = context
        self.base_url = base_url
        self.nick = nick
        self.context.request.get(f"{base_url}/api/session")  # sets the _xsrf cookie
        response = self.context.request.post(
            f"{base_url}/api/session", data={"nick": nick}, headers=self._xsrf()
        )
        assert response.status == 200, response.text()

    def _xsrf(self) -> dict[str, str]:
        token = [c["value"] for c in self.context.cookies(self.base_url) if c["name"] == "_xsrf"]
        return {"X-XSRFToken": token[0]}

    def say(self, room: str, text: str, reply_to: str | None = None) -> dict[str, Any]:
        data = {"text": text, "client_id": uuid.uuid4().hex}
        if reply_to is not None:
            data["reply_to"] = reply_to
        response = self.context.request.post(
            f"{self.base_url}/api/rooms/{room}/messages", data=data, headers=self._xsrf()
        )
        assert response.status == 200, response.text()
        return response.json()["event"]


@pytest.fixture
def bots(browser: Any) -> Iterator[Callable[..., Bot]]:
    """``bots(server, "bot")``: a session that sends through ``POST .../messages``."""
    contexts: list[Any] = []

    def make(server: AppServer, nick: str) -> Bot:
        context = browser.new_context()
        contexts.append(context)
        return Bot(context, server.url, unique(nick))

    yield make
    for context in contexts:
        context.close()


# ------------------------------------------------------------------------------ a proxy


class UpgradeBlockingProxy:
    """A TCP proxy that forwards plain HTTP to ``upstream_port`` and blocks WebSocket upgrades.

    ``mode="refuse"``: answers an upgrade request ``403 Forbidden`` (what most filtering
    proxies do). ``mode="drop"``: closes the connection without an answer. ``mode="hang"``:
    never answers and keeps the connection open (a proxy that buffers, waiting for a response
    body that never comes). Every forwarded
    request is rewritten to ``Connection: close``, so each TCP connection carries exactly one
    request and only the first request head needs reading.
    """

    def __init__(self, upstream_port: int, mode: str = "refuse") -> None:
        assert mode in ("refuse", "drop", "hang")
        self.upstream_port = upstream_port
        self.mode = mode
        self.blocked = 0  # upgrade requests refused so far
        self.forwarded = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept_loop, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._closed = True
        self._listener.close()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
                if len(data) > 1 << 20:
                    return
            head, rest = data.split(b"\r\n\r\n", 1)
            if re.search(rb"^upgrade:[ \t]*websocket", head, re.IGNORECASE | re.MULTILINE):
                self.blocked += 1
                if self.mode == "refuse":
                    body = b"WebSocket connections are blocked by this proxy.\n"
                    conn.sendall(
                        b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\n"
                        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
                    )
                elif self.mode == "hang":
                    while not self._closed and conn.recv(65536):
                        pass
                return
            lines = [
                line for line in head.split(b"\r\n")
                if not re.match(rb"(connection|keep-alive|proxy-connection):", line, re.IGNORECASE)
            ]
            head = b"\r\n".join(lines + [b"Connection: close"])
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            self.forwarded += 1
            upstream.sendall(head + b"\r\n\r\n" + rest)
            threading.Thread(target=_pipe, args=(conn, upstream), daemon=True).start()
            _pipe(upstream, conn)
            _close(upstream)
        except OSError:
            pass
        finally:
            _close(conn)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked reading it
    except OSError:
        pass
    sock.close()


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            chunk = src.recv(65536)
            if not chunk:
                break
            dst.sendall(chunk)
    except OSError:
        pass
    try:
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass


@pytest.fixture
def blocking_proxy() -> Iterator[Callable[..., UpgradeBlockingProxy]]:
    """``blocking_proxy(server.port, mode="refuse")``: a proxy in front of the server."""
    proxies: list[UpgradeBlockingProxy] = []

    def make(upstream_port: int, mode: str = "refuse") -> UpgradeBlockingProxy:
        proxy = UpgradeBlockingProxy(upstream_port, mode)
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()
