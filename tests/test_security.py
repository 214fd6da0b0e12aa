"""The security properties of docs/SECURITY.md, each proven the way an attacker would try it.

Over the wire unless the property is about a file (the cookie secret, static/chat.js). Each
test starts its own server (``servers`` fixture). Tests already in test_api.py and
test_delivery.py (missing XSRF tokens, foreign and ``null`` WebSocket origins, escaped room
page, the first open-redirect payloads) are not repeated here; these extend them.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import stat
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote, urlencode, urljoin, urlparse

import esprima
import pytest
import tornado.web
from tornado.httpclient import HTTPClientError
from tornado.httpserver import HTTPServer

from chatapp.app import load_cookie_secret
from tests.harness import ChatServer, Client, free_port

ROOM = "lobby"
SESSION = "chatapp_session"
CHAT_JS = Path(__file__).resolve().parents[1] / "static" / "chat.js"


# -- helpers ----------------------------------------------------------------------------------


async def user(srv: ChatServer, nick: str) -> Client:
    return await srv.client().join(nick)


def sid_of(srv: ChatServer, client: Client) -> str:
    """The session id inside a client's signed cookie (signed, not encrypted: its holder can
    read it, which is why knowing it must not be enough to act as that session)."""
    raw = tornado.web.decode_signed_value(
        srv.app.settings["cookie_secret"], SESSION, client.cookies[SESSION])
    assert raw
    return raw.decode()


def with_cookie(srv: ChatServer, value: str, like: Client | None = None) -> Client:
    """A client presenting ``value`` as its session cookie (and ``like``'s XSRF pair)."""
    client = srv.client()
    if like is not None:
        client.cookies["_xsrf"] = like.cookies["_xsrf"]
    client.cookies[SESSION] = value
    return client


async def all_events(client: Client, room: str = ROOM) -> list[dict]:
    code, body = await client.get_json(f"/api/rooms/{room}/history?limit=200")
    assert code == 200, (code, body)
    return body["events"]


def texts(events: list[dict]) -> list[str]:
    return [e["text"] for e in events if e["type"] == "message"]


def assert_error(response, status: int) -> dict:
    assert response.code == status, (response.code, response.body[:200])
    body = json.loads(response.body)
    assert set(body) == {"error", "message"}, body
    return body


def set_cookie(response, name: str) -> str:
    for header in response.headers.get_list("Set-Cookie"):
        if header.startswith(name + "="):
            return header
    raise AssertionError(f"no Set-Cookie for {name}: {response.headers.get_list('Set-Cookie')}")


def attributes(set_cookie_header: str) -> dict[str, str]:
    parts = [p.strip() for p in set_cookie_header.split(";")[1:]]
    return {p.split("=", 1)[0].lower(): (p.split("=", 1) + [""])[1].lower() for p in parts if p}


async def acts_as_nobody(srv: ChatServer, client: Client) -> None:
    """The client's cookie names no session on any path: API, long-poll, send, page, socket."""
    assert await client.get_json("/api/session") == (200, {"nick": None})
    response = await client.request("GET", f"/api/rooms/{ROOM}/updates")
    assert assert_error(response, 401)["error"] == "no_session"
    response = await client.request(
        "POST", f"/api/rooms/{ROOM}/messages", {"text": "as whom?", "client_id": "forged"})
    assert assert_error(response, 401)["error"] == "no_session"
    response = await client.request("GET", f"/r/{ROOM}")
    assert (response.code, response.headers["Location"]) == (302, f"/?room={ROOM}")
    with pytest.raises(HTTPClientError) as refused:
        await client.ws(ROOM)
    assert refused.value.code == 403


# -- forged and tampered cookies --------------------------------------------------------------


def forgeries(srv: ChatServer, victim: Client) -> dict[str, str]:
    sid = sid_of(srv, victim)
    secret = srv.app.settings["cookie_secret"]
    return {
        "random value": secrets.token_urlsafe(32),
        "the bare session id, unsigned": sid,
        "a query operator": '{"$ne": null}',
        "signed with another secret": tornado.web.create_signed_value(
            "another-secret", SESSION, sid).decode(),
        "signed with another secret, old format": tornado.web.create_signed_value(
            "another-secret", SESSION, sid, version=1).decode(),
        "signed for another cookie name": tornado.web.create_signed_value(
            secret, "_xsrf", sid).decode(),
        "empty": "",
    }


@pytest.mark.gen_test(timeout=60)
async def test_forged_session_cookies_are_no_session_and_never_the_victim(servers):
    srv = await servers.start()
    alice = await user(srv, "alice")
    for label, value in forgeries(srv, alice).items():
        forger = with_cookie(srv, value, like=alice)
        await acts_as_nobody(srv, forger)
        # Logging "out" with it ends nobody's session.
        assert (await forger.request("DELETE", "/api/session")).code == 204, label
    assert await alice.get_json("/api/session") == (200, {"nick": "alice"})
    assert texts(await all_events(alice)) == []


@pytest.mark.gen_test(timeout=60)
async def test_a_valid_cookie_with_any_one_character_changed_is_no_session(servers):
    srv = await servers.start()
    alice = await user(srv, "alice")
    await user(srv, "bob")
    value = alice.cookies[SESSION]
    for i, ch in enumerate(value):
        for other in {"A" if ch != "A" else "B", chr(ord(ch) ^ 1)}:
            tampered = value[:i] + other + value[i + 1:]
            code, body = await with_cookie(srv, tampered).get_json("/api/session")
            assert (code, body) == (200, {"nick": None}), (i, tampered, code, body)
    # One full check of the forged identity on every path, for a change in the signature.
    await acts_as_nobody(srv, with_cookie(srv, value[:-1] + ("0" if value[-1] != "0" else "1"),
                                          like=alice))
    assert await alice.get_json("/api/session") == (200, {"nick": "alice"})


@pytest.mark.gen_test(timeout=60)
async def test_the_cookie_of_a_session_that_logged_out_is_no_session_even_for_its_nickname(
        servers):
    srv = await servers.start()
    alice = await user(srv, "alice")
    old_cookie = alice.cookies[SESSION]
    assert (await alice.request("DELETE", "/api/session")).code == 204
    await acts_as_nobody(srv, with_cookie(srv, old_cookie, like=alice))
    # Someone else takes the nickname: the old cookie does not become them either.
    mallory = await user(srv, "alice")
    replay = with_cookie(srv, old_cookie, like=alice)
    await acts_as_nobody(srv, replay)
    assert await mallory.get_json("/api/session") == (200, {"nick": "alice"})


# -- identity comes from the session alone ------------------------------------------------------

# Every field a client might try to choose for itself.
SPOOFED = {"nick": "bob", "room": "elsewhere", "id": "999999999999", "ts": 0.0,
           "type": "join"}


@pytest.mark.gen_test(timeout=60)
async def test_identity_fields_in_a_posted_message_change_nothing_about_the_event(servers):
    srv = await servers.start()
    alice, bob = await user(srv, "alice"), await user(srv, "bob")
    bobs_sid = sid_of(srv, bob)  # even the real session id of someone else
    before = time.time()
    sent = []
    for i, form in enumerate((False, True)):
        fields = dict(SPOOFED, sid=bobs_sid, text=f"from alice {i}", client_id=f"c{i}")
        if form:
            response = await alice.request(
                "POST", f"/api/rooms/{ROOM}/messages", form={k: str(v) for k, v in fields.items()})
        else:
            response = await alice.request("POST", f"/api/rooms/{ROOM}/messages", fields)
        assert response.code == 200, response.body
        sent.append(json.loads(response.body)["event"])
    stored = [e for e in await all_events(alice) if e["type"] == "message"]
    assert stored == sent
    for i, event in enumerate(stored):
        assert (event["nick"], event["room"], event["type"], event["text"]) == (
            "alice", ROOM, "message", f"from alice {i}")
        assert event["id"] != SPOOFED["id"] and before - 1 <= event["ts"] <= time.time() + 1
    assert await all_events(alice, "elsewhere") == []
    # Bob's own client_ids are still his: alice's "c0" did not use his session.
    code, body = await bob.send(ROOM, "bob's own", "c0")
    assert code == 200 and body["event"]["nick"] == "bob" and body["event"]["text"] == "bob's own"


@pytest.mark.gen_test(timeout=60)
async def test_identity_fields_in_a_websocket_frame_change_nothing_about_the_event(servers):
    srv = await servers.start()
    alice, bob = await user(srv, "alice"), await user(srv, "bob")
    sock = await alice.ws(ROOM)
    await sock.next("presence")
    before = time.time()
    frame = dict(SPOOFED, type="send", sid=sid_of(srv, bob), text="hi from alice",
                 client_id="w1")
    await sock.conn.write_message(json.dumps(frame))
    ack = await sock.next("ack")
    event = ack["event"]
    assert (event["nick"], event["room"], event["type"], event["text"]) == (
        "alice", ROOM, "message", "hi from alice")
    assert event["id"] != SPOOFED["id"] and before - 1 <= event["ts"] <= time.time() + 1
    assert [e for e in await all_events(bob) if e["type"] == "message"] == [event]
    assert await all_events(bob, "elsewhere") == []
    sock.close()


# -- XSRF on every state-changing request -------------------------------------------------------

# (method, path, JSON body or None, form fields or None)
STATE_CHANGING = {
    "POST /join": ("POST", "/join", None, {"nick": "mallory", "room": ROOM}),
    "POST /api/session": ("POST", "/api/session", {"nick": "mallory"}, None),
    "DELETE /api/session": ("DELETE", "/api/session", None, None),
    "POST messages (JSON)": ("POST", f"/api/rooms/{ROOM}/messages",
                             {"text": "forged", "client_id": "x1"}, None),
    "POST messages (form)": ("POST", f"/api/rooms/{ROOM}/messages", None,
                             {"text": "forged", "client_id": "x2"}),
}


async def forged_request(client: Client, name: str, token: str | None, *,
                         headers: dict[str, str] | None = None):
    """The request ``name`` with ``token`` as its XSRF token (header for JSON, ``_xsrf`` field
    for forms), whatever the client's ``_xsrf`` cookie says."""
    method, path, body, form = STATE_CHANGING[name]
    hdrs = dict(headers or {})
    if form is not None:
        form = dict(form, **({"_xsrf": token} if token is not None else {}))
    elif token is not None:
        hdrs["X-XSRFToken"] = token
    return await client.request(method, path, body, form=form, xsrf=False, headers=hdrs)


async def nothing_changed(srv: ChatServer, alice: Client) -> None:
    assert await alice.get_json("/api/session") == (200, {"nick": "alice"})
    assert "forged" not in texts(await all_events(alice))
    # "mallory" was never taken: a newcomer can have it.
    await user(srv, "mallory")


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("name", list(STATE_CHANGING))
@pytest.mark.parametrize("case", ["cookie only", "wrong token", "another client's token",
                                  "token without its cookie"])
async def test_state_changing_requests_without_the_matching_xsrf_token_are_refused(
        servers, name, case):
    srv = await servers.start()
    alice = await user(srv, "alice")
    mallory = srv.client()
    await mallory.request("GET", "/api/session")  # her own, valid, XSRF pair
    token = {
        "cookie only": None,
        "wrong token": "2|00000000|" + "0" * 32 + "|" + str(int(time.time())),
        "another client's token": mallory.cookies["_xsrf"],
        "token without its cookie": alice.cookies["_xsrf"],
    }[case]
    victim = with_cookie(srv, alice.cookies[SESSION], like=alice)
    if case == "token without its cookie":
        del victim.cookies["_xsrf"]
    response = await forged_request(victim, name, token)
    assert response.code == 403, (name, case, response.code, response.body[:200])
    if "/api/" in name:
        assert_error(response, 403)
    assert SESSION not in {c.split("=")[0] for c in response.headers.get_list("Set-Cookie")}
    await nothing_changed(srv, alice)


@pytest.mark.gen_test(timeout=60)
async def test_a_cross_site_form_post_is_refused_on_every_state_changing_endpoint(servers):
    """What an attacker's page can make a visitor's browser send: the visitor's cookies (an
    old browser without SameSite), another site's Origin and Referer, any field but the
    token it cannot read."""
    srv = await servers.start()
    alice = await user(srv, "alice")
    cross_site = {"Origin": "https://evil.example", "Referer": "https://evil.example/chat.html"}
    for name in STATE_CHANGING:
        for token in (None, "", "guess"):
            victim = with_cookie(srv, alice.cookies[SESSION], like=alice)
            response = await forged_request(victim, name, token, headers=cross_site)
            assert response.code == 403, (name, token, response.code)
    await nothing_changed(srv, alice)


# -- the WebSocket's Origin check (test_delivery covers foreign, null and allowed origins) ----


@pytest.mark.gen_test(timeout=60)
async def test_websocket_origins_that_only_look_like_this_server_are_refused(servers):
    srv = await servers.start(allowed_origins=("http://friend.example",))
    alice = await user(srv, "alice")
    here = f"127.0.0.1:{srv.port}"
    for origin in (
        f"http://127.0.0.1:{free_port()}",  # same host, another port: another origin
        "http://127.0.0.1",  # same host, default port
        f"http://localhost:{srv.port}",  # another name for the same machine
        f"http://{here}@evil.example",  # userinfo trick
        f"http://evil.example/{here}",  # path trick
        f"http://evil.example?{here}",
        "http://friend.example.evil.example",  # an allowed origin as a prefix
        "http://friend.example:8080",  # an allowed origin on another port
        "https://friend.example",  # an allowed origin with another scheme
        "http://evil.friend.example",
    ):
        with pytest.raises(HTTPClientError) as refused:
            await alice.ws(ROOM, origin=origin)
        assert refused.value.code == 403, origin
    assert await alice.get_json(f"/api/rooms/{ROOM}/presence") == (200, {"nicks": []})


# -- cookie attributes --------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_xsrf_cookie_is_samesite_lax_and_session_cookie_from_the_form_is_httponly_lax(
        servers):
    srv = await servers.start()
    client = srv.client()
    for path in ("/", "/api/session"):
        fresh = srv.client()
        xsrf = attributes(set_cookie(await fresh.request("GET", path), "_xsrf"))
        assert xsrf.get("samesite") == "lax" and xsrf.get("path") == "/", (path, xsrf)
    response = await client.request("POST", "/join", form={"nick": "an", "room": ROOM})
    assert response.code == 303
    session = attributes(set_cookie(response, SESSION))
    assert "httponly" in session and session.get("samesite") == "lax", session
    assert session.get("path") == "/", session
    assert "secure" not in session  # plain HTTP: a Secure cookie would never come back


@pytest.mark.gen_test(timeout=60)
async def test_session_cookie_is_secure_when_the_request_came_over_https(servers):
    """``python -m chatapp`` serves with ``xheaders=True`` (behind a TLS-terminating proxy
    that sets X-Forwarded-Proto). The test harness's server does not, so the same app is
    served here a second time the way __main__ serves it."""
    srv = await servers.start()
    proxied = HTTPServer(srv.app, xheaders=True)
    port = free_port()
    proxied.listen(port, "127.0.0.1")
    try:
        https = {"X-Forwarded-Proto": "https"}
        client = Client(f"http://127.0.0.1:{port}")
        response = await client.request("POST", "/api/session", {"nick": "an"}, headers=https)
        assert response.code == 200
        assert "secure" in attributes(set_cookie(response, SESSION))
        client = Client(f"http://127.0.0.1:{port}")
        response = await client.request("POST", "/join", form={"nick": "bo", "room": ROOM},
                                        headers=https)
        assert response.code == 303
        assert "secure" in attributes(set_cookie(response, SESSION))
        # Over plain HTTP the same server sets no Secure flag.
        client = Client(f"http://127.0.0.1:{port}")
        response = await client.request("POST", "/api/session", {"nick": "cy"})
        assert "secure" not in attributes(set_cookie(response, SESSION))
    finally:
        proxied.stop()


# -- security headers on every kind of response --------------------------------------------------


def assert_security_headers(response, what: object) -> None:
    csp = response.headers.get("Content-Security-Policy", "")
    directives = {d.split()[0]: d.split()[1:] for d in csp.split(";") if d.strip()}
    script_src = directives.get("script-src", directives.get("default-src"))
    assert script_src == ["'self'"], (what, csp)
    assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp, (what, csp)
    assert directives.get("frame-ancestors") == ["'none'"], (what, csp)
    assert response.headers.get("X-Content-Type-Options") == "nosniff", what


@pytest.mark.gen_test(timeout=60)
async def test_every_kind_of_response_carries_the_security_headers(servers):
    """test_api covers API answers and pages; these are the other kinds of response."""
    srv = await servers.start()
    alice = await user(srv, "alice")
    anonymous = srv.client()
    await anonymous.request("GET", "/")
    checks = [
        ("static script", alice, "GET", "/static/chat.js", None, {}, 200),
        ("static style", alice, "GET", "/static/chat.css", None, {}, 200),
        ("static HEAD", alice, "HEAD", "/static/chat.js", None, {}, 200),
        ("static 404", alice, "GET", "/static/nope.js", None, {}, 404),
        ("XSRF 403, API", anonymous, "POST", "/api/session", {"nick": "x"}, {"xsrf": False}, 403),
        ("XSRF 403, page", anonymous, "POST", "/join", None,
         {"xsrf": False, "form": {"nick": "x"}}, 403),
        ("redirect to join", anonymous, "GET", f"/r/{ROOM}", None, {}, 302),
        ("redirect to room", alice, "GET", "/?room=general", None, {}, 302),
        ("405", alice, "PUT", "/api/session", {}, {}, 405),
        ("413", alice, "POST", f"/api/rooms/{ROOM}/messages", "x" * 70_000, {}, 413),
        ("WebSocket refused, plain GET", anonymous, "GET", f"/api/rooms/{ROOM}/ws", None, {},
         403),
    ]
    for what, client, method, path, body, kw, status in checks:
        response = await client.request(method, path, body, **kw)
        assert response.code == status, (what, response.code)
        assert_security_headers(response, what)
    response = await alice.request("POST", "/join", form={"nick": "bo", "room": ROOM})
    assert response.code == 303
    assert_security_headers(response, "303 after joining")
    for origin in ("http://evil.example", None):
        client = alice if origin else anonymous
        with pytest.raises(HTTPClientError) as refused:
            await client.ws(ROOM, origin=origin)
        assert refused.value.code == 403
        assert_security_headers(refused.value.response, f"WebSocket 403 ({origin})")


# -- autoescaping -------------------------------------------------------------------------------

HOSTILE_TEXTS = [
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(1)>',
    "'><svg onload=alert(1)>",
    "{{ 7*7 }} {{ handler.settings['cookie_secret'] }}",
    "{% raw handler.settings['cookie_secret'] %}",
    "{% module xsrf_form_html() %}{# comment #}",
    "</textarea></div></li></ol><script src=//evil.example/x.js></script>",
    "&lt;already escaped&gt; &amp; &#x3C;script&#x3E;",
    "javascript:alert(1)",
]


class Page(HTMLParser):
    """The elements of a page: tags with attributes, and the text of each message."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.message_texts: list[str] = []
        self._in_text = 0
        self._script_body = ""
        self._in_script = False
        self.data_blocks: list[str] = []  # <script type="application/json">: data, never run
        self._in_data = False
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "div" and "text" in (a.get("class") or "").split():
            self._in_text = 1
            self.message_texts.append("")
        elif self._in_text:
            self._in_text += 1
        self._in_data = tag == "script" and a.get("type") == "application/json"
        self._in_script = tag == "script" and not self._in_data
        if self._in_data:
            self.data_blocks.append("")

    def handle_endtag(self, tag: str) -> None:
        if self._in_text:
            self._in_text -= 1
        self._in_script = False
        self._in_data = False

    def handle_data(self, data: str) -> None:
        if self._in_text:
            self.message_texts[-1] += data
        if self._in_script:
            self._script_body += data
        if self._in_data:
            self.data_blocks[-1] += data


def assert_nothing_runs(page: Page) -> None:
    scripts = [a for tag, a in page.tags if tag == "script" and a.get("type") != "application/json"]
    assert scripts and all((a.get("src") or "").startswith("/static/") for a in scripts), scripts
    assert page._script_body.strip() == "", page._script_body
    for block in page.data_blocks:  # JSON data: nothing in it can end the element or start one
        assert "<" not in block and ">" not in block, block
        json.loads(block)
    for tag, a in page.tags:
        assert tag not in ("img", "svg", "iframe", "object", "embed"), (tag, a)
        assert not [k for k in a if k.startswith("on")], (tag, a)
        for k in ("href", "src", "action"):
            assert not (a.get(k) or "").lower().startswith("javascript:"), (tag, a)


@pytest.mark.gen_test(timeout=60)
async def test_the_room_page_shows_hostile_messages_as_text_and_nothing_runs(servers):
    srv = await servers.start()
    alice = await user(srv, "alice")
    for i, text in enumerate(HOSTILE_TEXTS):
        code, body = await alice.send(ROOM, text, f"h{i}")
        assert code == 200, body
    response = await alice.request("GET", f"/r/{ROOM}")
    assert response.code == 200
    html = response.body.decode()
    page = Page(html)
    assert page.message_texts == HOSTILE_TEXTS  # shown exactly as typed, as text
    assert_nothing_runs(page)
    # The page data the script draws from carries the same texts, exactly.
    data = json.loads(page.data_blocks[0])
    assert [e["text"] for e in data["events"] if e["type"] == "message"] == HOSTILE_TEXTS
    assert "{{ 7*7 }}" in html and srv.app.settings["cookie_secret"] not in html
    # One form only (the composer's): the message's xsrf_form_html() stayed text.
    assert [a.get("name") for t, a in page.tags if t == "input"].count("_xsrf") == 1


@pytest.mark.gen_test(timeout=60)
async def test_the_join_form_shows_a_hostile_nickname_back_as_text(servers):
    srv = await servers.start()
    client = srv.client()
    nick = '"><img src=x onerror=alert(1)><script>alert(2)</script>'
    response = await client.request("POST", "/join", form={"nick": nick, "room": ROOM})
    assert response.code == 400
    page = Page(response.body.decode())
    values = {a.get("name"): a.get("value") for t, a in page.tags if t == "input"}
    assert values["nick"] == nick
    assert_nothing_runs(page)
    # A hostile ?room= is not reflected at all.
    response = await client.request("GET", "/?" + urlencode({"room": '"><script>x</script>'}))
    page = Page(response.body.decode())
    assert {a.get("name"): a.get("value") for t, a in page.tags if t == "input"}["room"] == ROOM
    assert_nothing_runs(page)


# -- the client script never turns data into markup -----------------------------------------------

# Sinks that parse a string as HTML or code. Allow-list: none; chat.js builds every element
# with createElement and fills it with textContent / createTextNode.
HTML_PROPERTIES = {"innerHTML", "outerHTML"}
HTML_METHODS = {"insertAdjacentHTML", "write", "writeln", "createContextualFragment",
                "parseFromString"}
CODE_CALLS = {"eval", "Function"}


def markup_sinks(source: str) -> list[str]:
    """Every place ``source`` hands a string to an HTML or code parser."""
    found: list[str] = []

    def is_string(arg) -> bool:  # a literal or a concatenation: code built from a string
        return arg.type in ("Literal", "BinaryExpression", "TemplateLiteral")

    def visit(node, metadata) -> None:
        where = f"line {node.loc.start.line}"
        if node.type == "AssignmentExpression" and node.left.type == "MemberExpression":
            prop = node.left.property
            name = prop.value if node.left.computed and prop.type == "Literal" else prop.name
            if name in HTML_PROPERTIES:
                found.append(f"{where}: assigns {name}")
        if node.type not in ("CallExpression", "NewExpression"):
            return
        callee, args = node.callee, node.arguments
        if callee.type == "MemberExpression" and not callee.computed:
            name = callee.property.name
        elif callee.type == "Identifier":
            name = callee.name
        else:
            return
        if (name in HTML_METHODS and callee.type == "MemberExpression") or name in CODE_CALLS:
            found.append(f"{where}: calls {name}")
        elif name in ("setTimeout", "setInterval") and args and is_string(args[0]):
            found.append(f"{where}: {name} with a string")
        elif name == "setAttribute" and args and args[0].type == "Literal" and \
                str(args[0].value).lower().startswith("on"):
            found.append(f"{where}: sets an event handler attribute")

    esprima.parseScript(source, {"loc": True}, visit)
    return found


def test_chat_js_never_turns_data_into_markup_or_code():
    for script in sorted(CHAT_JS.parent.glob("*.js")):  # every file of the client
        assert markup_sinks(script.read_text(encoding="utf-8")) == [], script.name


@pytest.mark.parametrize("snippet", [
    "el.innerHTML = text;",
    "el['outerHTML'] = text;",
    "el.insertAdjacentHTML('beforeend', text);",
    "document.write(text);",
    "eval(text);",
    "new Function(text);",
    "setTimeout('go(' + text + ')', 1);",
    "el.setAttribute('onclick', text);",
])
def test_the_markup_sink_check_finds_each_sink(snippet):
    assert markup_sinks(snippet), snippet


# -- no open redirect ---------------------------------------------------------------------------

# test_api covers //evil.com, https://evil.com, /\evil.com and %2F%2Fevil.com on / and /join.
REDIRECT_PAYLOADS = [
    "\\\\evil.com", "/%5Cevil.com", "..%2F..%2Fevil.com", "../../evil.com", "lobby/../../x",
    "%0d%0aLocation:%20https://evil.com", "\r\nLocation: https://evil.com",
    "lobby\r\nSet-Cookie: chatapp_session=x", "/\t/evil.com", "javascript:alert(1)",
    "lobby?next=//evil.com", "lobby#//evil.com", "\u3000//evil.com", "%00//evil.com",
    "lobby%2F..%2F..%2F%2Fevil.com", "ｅｖｉｌ．ｃｏｍ",
]


def assert_on_site(response, base: str, what: object) -> None:
    assert response.code < 500, (what, response.code)
    if response.code not in (301, 302, 303, 307, 308):
        return
    location = response.headers["Location"]
    assert re.match(r"/[^/\\]", location), (what, location)
    assert not re.search(r"[\r\n\t\x00]", location), (what, location)
    assert urlparse(urljoin(base + "/", location)).netloc == urlparse(base).netloc, (
        what, location)
    # Nothing the payload carried became a header of its own.
    assert [c for c in response.headers.get_list("Set-Cookie") if c.startswith(SESSION + "=x")] \
        == [], what


@pytest.mark.gen_test(timeout=60)
async def test_no_redirect_ever_leaves_the_site(servers):
    srv = await servers.start()
    alice = await user(srv, "alice")  # with a session, / and /join redirect to the room
    anonymous = srv.client()
    await anonymous.request("GET", "/")
    for n, payload in enumerate(REDIRECT_PAYLOADS):
        for client in (alice, anonymous):
            response = await client.request("GET", "/?" + urlencode({"room": payload}))
            assert_on_site(response, srv.url, ("GET /", payload))
            response = await client.request("GET", "/?room=" + payload.replace(" ", "%20")
                                            .replace("\r", "%0d").replace("\n", "%0a"))
            assert_on_site(response, srv.url, ("GET / raw", payload))
            response = await client.request("POST", "/join",
                                            form={"nick": f"n{n}x", "room": payload})
            assert response.code in (400, 303), (payload, response.code)
            assert_on_site(response, srv.url, ("POST /join", payload))
            response = await client.request("GET", "/r/" + quote(payload, safe=""))
            assert response.code in (200, 302, 404), (payload, response.code)
            assert_on_site(response, srv.url, ("GET /r/", payload))


# -- MongoDB query injection --------------------------------------------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_query_operators_in_any_field_are_refused_as_the_wrong_type(servers):
    """Every value that reaches a MongoDB query is checked to be a string (or a number parsed
    from one) first; an operator object is a type error, never part of a query."""
    srv = await servers.start()
    alice = await user(srv, "alice")
    operator = {"$ne": None}
    code, body = await srv.client().post_json("/api/session", {"nick": operator})
    assert (code, body["error"]) == (400, "bad_nick")
    code, body = await srv.client().post_json("/api/session", {"nick": {"$regex": ".*"}})
    assert (code, body["error"]) == (400, "bad_nick")
    path = f"/api/rooms/{ROOM}/messages"
    code, body = await alice.post_json(path, {"text": "x", "client_id": operator})
    assert (code, body["error"]) == (400, "bad_client_id")
    code, body = await alice.post_json(path, {"text": operator, "client_id": "c"})
    assert (code, body["error"]) == (400, "bad_text")
    for query in ("before[$gt]=&limit=5", "before=%7B%22%24gt%22%3A%22%22%7D",
                  "limit[$ne]=1", "limit=%7B%7D"):
        code, body = await alice.get_json(f"/api/rooms/{ROOM}/history?{query}")
        assert code in (200, 400), (query, code, body)
        if code == 200:  # an unknown parameter is ignored, not passed on
            assert body == {"events": [], "has_more": False}, (query, body)
    code, body = await alice.get_json(f"/api/rooms/{ROOM}/updates?cursor=%7B%22%24gt%22%3A0%7D")
    assert (code, body["error"]) == (400, "bad_cursor")
    assert texts(await all_events(alice)) == []
    assert await alice.get_json("/api/session") == (200, {"nick": "alice"})


# -- secrets ------------------------------------------------------------------------------------


def test_the_cookie_secret_is_generated_per_installation_private_and_kept(tmp_path):
    old_umask = os.umask(0)  # even with a permissive umask
    try:
        first = load_cookie_secret(str(tmp_path / "one"))
    finally:
        os.umask(old_umask)
    path = tmp_path / "one" / "cookie_secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first) >= 43 and len(set(first)) > 16  # at least 256 bits, not a pattern
    assert load_cookie_secret(str(tmp_path / "one")) == first  # kept across restarts
    second = load_cookie_secret(str(tmp_path / "two"))
    assert second != first  # not a constant
    # And not in the repository: no tracked text file carries it or a hard-coded default.
    root = Path(__file__).resolve().parents[1]
    for source in list((root / "chatapp").rglob("*.py")) + [root / "config"]:
        if source.is_file():
            assert first not in source.read_text(encoding="utf-8", errors="replace")


@pytest.mark.gen_test(timeout=60)
async def test_session_ids_are_long_random_and_never_reused(servers):
    srv = await servers.start()
    sids = []
    for i in range(12):
        client = await user(srv, "same")  # one nickname, taken and freed again and again
        sids.append(sid_of(srv, client))
        assert (await client.request("DELETE", "/api/session")).code == 204
    for i in range(12):
        sids.append(sid_of(srv, await user(srv, f"u{i}")))
    assert len(set(sids)) == len(sids)
    for sid in sids:
        assert re.fullmatch(r"[A-Za-z0-9_-]{22,}", sid), sid  # >= 128 bits of base64url
    # Not sequential or time-based: no two share even a 5-character prefix or suffix.
    assert len({s[:5] for s in sids}) == len(sids) and len({s[-5:] for s in sids}) == len(sids)
