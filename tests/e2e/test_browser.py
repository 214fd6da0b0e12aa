"""End-to-end: people chatting in Chromium with the real server (``python -m chatapp``).

Each test is something a person would notice: messages arriving, on either transport; a
restart that loses or repeats nothing; a reload that keeps the nickname; text shown exactly
as typed; a phone and a keyboard being enough. Waits are on what the page shows (Playwright's
``expect``, ``wait_for_function``), never on the clock.
"""

from __future__ import annotations

import os
import re
import struct
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tests.e2e.conftest import ROOT, TIMEZONE, WAIT_MS, AppServer, Person, unique

pytestmark = pytest.mark.e2e

# Playwright is imported lazily by the fixtures (the tests skip without it); expect is only
# needed once a browser runs.
try:
    from playwright.sync_api import expect
except ImportError:  # pragma: no cover - the browser fixture skips (or fails under CI)
    expect = None  # type: ignore[assignment]

RECONNECT_MS = 30_000  # back-off after a restart: 1 s, 2 s, 4 s... plus jitter
DESKTOP = {"viewport": {"width": 1280, "height": 800}}
PHONE = {
    "viewport": {"width": 390, "height": 844},
    "device_scale_factor": 2,
    "is_mobile": True,
    "has_touch": True,
}
# Every run saves the screenshots to test-artifacts/ (ignored by git); with
# CHATAPP_UPDATE_SCREENSHOTS=1 they replace the README's copies in docs/img.
SCREENSHOTS = ROOT / (
    "docs/img" if os.environ.get("CHATAPP_UPDATE_SCREENSHOTS") else "test-artifacts"
)
CHAT_JS = (ROOT / "static" / "transport.js").read_text(encoding="utf-8")  # its timeouts
# How long the page waits for a WebSocket handshake before counting it as failed.
WS_OPEN_TIMEOUT_MS = int(re.search(r"WS_OPEN_TIMEOUT = (\d+)", CHAT_JS).group(1))
# A WebSocket that dies younger than this counts as "did not work" (a blocked upgrade).
WS_MIN_LIFETIME_MS = int(re.search(r"WS_MIN_LIFETIME = (\d+)", CHAT_JS).group(1))


# ------------------------------------------------------------------------------ helpers


def in_sync(server: AppServer, room: str, *persons: Person) -> list[dict[str, Any]]:
    """Wait until every page has caught up with the room; assert each shows its whole history
    (GET .../history) exactly: same events, same order, no gap, no duplicate. The events."""
    for _ in range(5):
        events = server.history(room)
        last = events[-1]["id"]
        for person in persons:
            person.page.wait_for_function(
                "id => window.chatapp.lastId() >= id", arg=last, timeout=WAIT_MS
            )
        events = server.history(room)
        if events[-1]["id"] == last:
            break
    expected = [(e["id"], e["type"], e["nick"], e.get("text")) for e in events]
    for person in persons:
        shown = [(e["id"], e["type"], e["nick"], e["text"]) for e in person.events()]
        ids = [e[0] for e in shown]
        assert len(ids) == len(set(ids)), f"{person.nick}'s page shows an event twice: {ids}"
        assert shown == expected, f"{person.nick}'s page differs from the room's history"
        expect(person.page.locator("#log li.pending")).to_have_count(0)
    return events


def message_line(person: Person, text: str) -> dict[str, Any]:
    """The nickname, time and data-ts of the (first) stored message with exactly this text."""
    return person.page.evaluate(
        """text => {
            const li = Array.prototype.find.call(
                document.querySelectorAll('#log li.msg[data-id]'),
                li => li.querySelector('.text').textContent === text);
            return li && {nick: li.querySelector('.nick').textContent,
                          time: li.querySelector('time').textContent,
                          ts: parseFloat(li.getAttribute('data-ts'))};
        }""",
        text,
    )


def assert_line(person: Person, text: str, nick: str) -> None:
    """The message shows its author and the local time it was sent, in the browser's locale
    (en-US: "07:08:09 AM"; a 24-hour locale: "07:08:09")."""
    line = message_line(person, text)
    assert line is not None, f"{text!r} is not shown to {person.nick}"
    sent = datetime.fromtimestamp(line["ts"], ZoneInfo(TIMEZONE))
    assert line["nick"] == nick
    # ICU puts a narrow no-break space before AM/PM in some versions, a space in others.
    shown = re.sub(r"[\u202f\u00a0]", " ", line["time"])
    assert re.fullmatch(r"\d\d:\d\d:\d\d( [AP]M)?", shown), line["time"]
    local = sent.strftime("%I:%M:%S %p" if shown.endswith("M") else "%H:%M:%S")
    assert shown == local, f"time shown {line['time']}, local time is {local}"


def message(person: Person, text: str) -> Any:
    """The locator of the stored message with exactly this text."""
    return person.page.locator("li.msg[data-id]").filter(
        has=person.page.locator(".text").get_by_text(text, exact=True)
    )


def tab_to(page: Any, element_id: str, limit: int = 15) -> list[str]:
    """Press Tab until the element has focus; the elements focused on the way."""
    path = []
    for _ in range(limit):
        page.keyboard.press("Tab")
        focused = page.evaluate(
            "() => { const e = document.activeElement;"
            " return e ? (e.id || e.tagName.toLowerCase()) : ''; }"
        )
        path.append(focused)
        if focused == element_id:
            return path
    raise AssertionError(f"#{element_id} not reachable with Tab; focus went {path}")


def set_hidden(page: Any, hidden: bool) -> None:
    """What switching to another tab does to a page (headless Chromium keeps every page
    visible): document.hidden and visibilityState change, then visibilitychange fires."""
    page.evaluate(
        """hidden => {
            if (hidden) {
                Object.defineProperty(document, 'hidden', {configurable: true, get: () => true});
                Object.defineProperty(document, 'visibilityState',
                                      {configurable: true, get: () => 'hidden'});
            } else {
                delete document.hidden;
                delete document.visibilityState;
            }
            document.dispatchEvent(new Event('visibilitychange'));
        }""",
        hidden,
    )


def wait_reconnected(person: Person, states_before: int) -> None:
    """Wait until the page is connected again after having left "connected".

    ``states_before`` is ``len(person.states())`` from before, which equals the length
    window.__states had then (it holds the initial null, states() the current value instead);
    window.__states grows only when the state changes.
    """
    person.page.wait_for_function(
        """n => window.__states.length > n
               && document.getElementById('chat').getAttribute('data-state') === 'connected'""",
        arg=states_before, timeout=RECONNECT_MS,
    )


def status(person: Person) -> Any:
    return person.page.get_by_role("status")


# ------------------------------------------------------------------------------ 1-3: transports


def test_two_pages_chat_over_websocket(app_server: AppServer, people: Any) -> None:
    room = unique("room")
    maya = people(app_server, "maya", room).join()
    linh = people(app_server, "linh", room).join()

    for person, other in ((maya, linh), (linh, maya)):
        assert person.transport() == "websocket"
        expect(status(person)).to_have_text("WebSocket · connected")
        expect(person.page.locator("#people-list li")).to_have_count(2)
        expect(person.page.locator("#people-list")).to_contain_text(f"{person.nick} (you)")
        expect(person.page.locator("#people-list")).to_contain_text(other.nick)
        expect(person.page.get_by_role("log")).to_have_attribute("aria-live", "polite")

    # Enter sends; the composer empties for the next message.
    maya.say("Hello Linh! 👋")
    expect(maya.composer).to_have_value("")
    # The Send button sends too.
    linh.composer.fill("Hi Maya, good to see you")
    linh.page.get_by_role("button", name="Send").click()

    for person in (maya, linh):
        person.wait_for_message("Hello Linh! 👋")
        person.wait_for_message("Hi Maya, good to see you")
        assert_line(person, "Hello Linh! 👋", maya.nick)
        assert_line(person, "Hi Maya, good to see you", linh.nick)
    in_sync(app_server, room, maya, linh)


def test_page_without_websocket_chats_with_websocket_page(
    app_server: AppServer, people: Any
) -> None:
    room = unique("room")
    maya = people(app_server, "maya", room).join()
    linh = people(app_server, "linh", room, websocket=False).join()

    assert linh.page.evaluate("typeof window.WebSocket") == "undefined"
    expect(linh.chat).to_have_attribute("data-transport", "longpoll")
    expect(status(linh)).to_have_text("Long-polling · connected")
    assert maya.transport() == "websocket"

    linh.say("Sent over plain HTTP")
    maya.wait_for_message("Sent over plain HTTP")
    maya.say("Received by long-polling")
    linh.wait_for_message("Received by long-polling")
    linh.say("Both ways ✔")
    maya.wait_for_message("Both ways ✔")
    expect(linh.page.locator("#people-list")).to_contain_text(maya.nick)
    expect(maya.page.locator("#people-list")).to_contain_text(linh.nick)
    in_sync(app_server, room, maya, linh)


@pytest.mark.parametrize("mode", ["refuse", "drop", "hang"])
def test_blocked_websocket_falls_back_to_long_polling(
    app_server: AppServer, people: Any, blocking_proxy: Any, mode: str
) -> None:
    """Behind a proxy that passes HTTP but blocks upgrades (403, a dropped connection, or no
    answer at all), the page switches to long-polling by itself and chats normally."""
    room = unique("room")
    proxy = blocking_proxy(app_server.port, mode)
    maya = people(app_server, "maya", room).join()
    linh = people(proxy.url, "linh", room)

    if mode == "hang":
        # Nothing ever answers the handshake: the page gives up after WS_OPEN_TIMEOUT (twice,
        # then falls back). The page's clock is moved on instead of waiting for it.
        linh.page.clock.install()
        with linh.page.expect_websocket():
            linh.submit_join()
        with linh.page.expect_websocket():
            linh.page.clock.fast_forward(WS_OPEN_TIMEOUT_MS + 500)
        linh.page.clock.fast_forward(WS_OPEN_TIMEOUT_MS + 500)
    else:
        linh.submit_join()

    expect(linh.chat).to_have_attribute("data-transport", "longpoll")
    linh.wait_connected()
    expect(status(linh)).to_have_text("Long-polling (WebSocket unavailable) · connected")
    assert proxy.blocked >= 2, "the page never tried a WebSocket"

    linh.say(f"Behind a proxy that blocks WebSocket ({mode})")
    maya.wait_for_message(f"Behind a proxy that blocks WebSocket ({mode})")
    maya.say("Still reaches you")
    linh.wait_for_message("Still reaches you")
    expect(maya.page.locator("#people-list")).to_contain_text(linh.nick)
    in_sync(app_server, room, maya, linh)


# ------------------------------------------------------------------------------ 4: restart


def test_server_restart_mid_conversation(app_server: AppServer, people: Any) -> None:
    room = unique("room")
    maya = people(app_server, "maya", room)  # WebSocket
    maya.page.clock.install()
    maya.join()
    linh = people(app_server, "linh", room, websocket=False).join()  # long-polling
    # The usual case: a socket open for a while (not one that died at once, which the page
    # treats as a blocked WebSocket). The page's clock is moved on instead of waiting.
    maya.page.clock.fast_forward(WS_MIN_LIFETIME_MS + 1000)
    maya.say("Before the restart")
    linh.say("Me too")
    for person in (maya, linh):
        person.wait_for_message("Before the restart")
        person.wait_for_message("Me too")
    seen = {p.nick: len(p.states()) for p in (maya, linh)}

    app_server.restart()

    for person in (maya, linh):
        wait_reconnected(person, seen[person.nick])
        assert set(person.states()[seen[person.nick]:-1]) & {"reconnecting", "connecting"}
    assert maya.transport() == "websocket"
    assert linh.transport() == "longpoll"

    maya.say("After the restart (WebSocket)")
    linh.say("After the restart (long-polling)")
    for person in (maya, linh):
        person.wait_for_message("After the restart (WebSocket)")
        person.wait_for_message("After the restart (long-polling)")
    in_sync(app_server, room, maya, linh)

    # Messages written while the server is down wait, then go out once it is back.
    app_server.stop()
    for person in (maya, linh):
        expect(person.chat).not_to_have_attribute("data-state", "connected")
    maya.say("Written while the server was down")
    linh.say("Me as well")
    for person in (maya, linh):
        pending = person.page.locator("#log li.pending")
        expect(pending).to_have_count(1)
        expect(pending.locator(".send-state")).to_have_text(
            re.compile("waiting for connection|not sent yet")
        )
    app_server.start()
    for person in (maya, linh):
        person.wait_for_message("Written while the server was down", timeout=RECONNECT_MS)
        person.wait_for_message("Me as well", timeout=RECONNECT_MS)
    events = in_sync(app_server, room, maya, linh)
    texts = [e.get("text") for e in events if e["type"] == "message"]
    assert texts.count("Written while the server was down") == 1
    assert texts.count("Me as well") == 1


def test_restart_does_not_announce_returning_people_again(
    app_server: AppServer, people: Any
) -> None:
    room = unique("room")
    maya = people(app_server, "maya", room).join()
    linh = people(app_server, "linh", room).join()
    maya.say("Before the restart")
    linh.wait_for_message("Before the restart")
    seen = {p.nick: len(p.states()) for p in (maya, linh)}
    app_server.restart()
    for person in (maya, linh):
        wait_reconnected(person, seen[person.nick])
    linh.say("After the restart")
    maya.wait_for_message("After the restart")
    events = in_sync(app_server, room, maya, linh)
    notices = [(e["type"], e["nick"]) for e in events if e["type"] != "message"]
    assert notices == [("join", maya.nick), ("join", linh.nick)]


# ------------------------------------------------------------------------------ 5: reload


def test_reload_keeps_nickname_and_shows_history(
    app_server: AppServer, people: Any
) -> None:
    room = unique("room")
    maya = people(app_server, "maya", room).join()
    linh = people(app_server, "linh", room).join()
    maya.say("First")
    linh.say("Second")
    linh.wait_for_message("First")
    maya.wait_for_message("Second")
    maya.say("Third")
    in_sync(app_server, room, maya, linh)

    maya.page.reload()
    expect(maya.page).to_have_url(f"{app_server.url}/r/{room}")
    expect(maya.page.locator("#join-form")).to_have_count(0)
    expect(maya.page.locator(".bar-me .nick")).to_have_text(maya.nick)
    maya.wait_connected()
    events = in_sync(app_server, room, maya, linh)
    assert maya.message_texts() == ["First", "Second", "Third"]
    # Within the grace period: nobody saw Maya leave and come back.
    assert [e["type"] for e in events if e["nick"] == maya.nick and e["type"] != "message"] == [
        "join"
    ]
    assert sorted(app_server.presence(room)) == sorted([maya.nick, linh.nick])

    # The history is in the page itself: it reads the same without any script.
    reader = people(
        app_server, maya.nick, room, exact_nick=True,
        java_script_enabled=False, storage_state=maya.context.storage_state(),
    )
    reader.page.goto(f"{app_server.url}/r/{room}")
    expect(reader.page.locator(".bar-me .nick")).to_have_text(maya.nick)
    assert reader.message_texts() == ["First", "Second", "Third"]


# ------------------------------------------------------------------------------ 6: text


EXACT_TEXTS = [
    "<b>bold</b>",
    '<img src=x onerror="window.__pwned=1">',
    "<script>window.__pwned=1</script>",
    "Tiếng Việt có dấu",
    "👋🏽🎉",
    "مرحبا بالعالم",
    "שלום",
    "two lines\n<i>and markup</i> &amp; an entity",
]
RTL_TEXTS = {"مرحبا بالعالم", "שלום"}


def assert_shown_exactly(person: Person, page: Any | None = None) -> None:
    page = page or person.page
    texts = page.evaluate(
        "() => Array.prototype.map.call(document.querySelectorAll('#log li.msg .text'),"
        " e => e.textContent)"
    )
    assert texts == EXACT_TEXTS
    assert page.evaluate("() => window.__pwned") is None, "a message ran script"
    markup = page.locator("#log b, #log img, #log script, #log i, #older *:not(li)")
    assert markup.count() == 0, "a message was turned into markup"
    directions = page.evaluate(
        "() => Array.prototype.map.call(document.querySelectorAll('#log li.msg .text'),"
        " e => e.matches(':dir(rtl)') ? 'rtl' : 'ltr')"
    )
    assert directions == ["rtl" if t in RTL_TEXTS else "ltr" for t in EXACT_TEXTS]


def test_text_shown_exactly_as_typed_and_never_run(app_server: AppServer, people: Any) -> None:
    # Without the Content-Security-Policy, so that escaping alone has to keep script out.
    room = unique("room")
    maya = people(app_server, "maya", room, bypass_csp=True).join()
    linh = people(app_server, "linh", room, websocket=False, bypass_csp=True).join()
    for i, text in enumerate(EXACT_TEXTS):
        (maya if i % 2 == 0 else linh).say(text)
        maya.wait_for_message(text)
        linh.wait_for_message(text)
    in_sync(app_server, room, maya, linh)
    for person in (maya, linh):  # the sender's page and the receiver's, live
        assert_shown_exactly(person)
    for person in (maya, linh):  # rendered by the server
        person.page.reload()
        person.wait_connected()
        assert_shown_exactly(person)
    reader = people(
        app_server, maya.nick, room, exact_nick=True, bypass_csp=True,
        java_script_enabled=False, storage_state=maya.context.storage_state(),
    )
    reader.page.goto(f"{app_server.url}/r/{room}")
    texts = reader.page.evaluate(
        "() => Array.prototype.map.call(document.querySelectorAll('#log li.msg .text'),"
        " e => e.textContent)"
    )
    assert texts == EXACT_TEXTS
    assert reader.page.locator("#log b, #log img, #log script, #log i").count() == 0


# ------------------------------------------------------------------------------ 7: phone


def test_phone_keyboard_only(app_server: AppServer, people: Any) -> None:
    room = unique("room")
    maya = people(app_server, "maya", room).join()
    linh = people(app_server, "linh", room, **PHONE)
    page = linh.page

    # Joining with the keyboard alone.
    page.goto(f"{app_server.url}/?room={room}")
    if page.evaluate("document.activeElement.id") != "nick":
        tab_to(page, "nick")
    page.keyboard.type(linh.nick)
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/r/{room}")
    linh.wait_connected()

    # Everything needed to write is on screen, and nothing is wider than the phone.
    for element in (linh.composer, page.get_by_role("button", name="Send")):
        expect(element).to_be_visible()
        box = element.bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 390, box
        assert box["y"] >= 0 and box["y"] + box["height"] <= 844, box
    assert page.evaluate("document.documentElement.scrollWidth") <= 390

    # From the top of the page, Tab reaches the composer.
    page.reload()
    linh.wait_connected()
    assert page.evaluate("document.activeElement === document.body")
    tab_to(page, "composer-text")
    page.keyboard.type("first line")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("second line")
    expect(linh.composer).to_have_value("first line\nsecond line")
    expect(page.locator("#log li.pending")).to_have_count(0)  # Shift+Enter sent nothing
    page.keyboard.press("Enter")

    text = "first line\nsecond line"
    linh.wait_for_message(text)
    maya.wait_for_message(text)
    expect(linh.composer).to_have_value("")
    expect(linh.composer).to_be_focused()
    for person in (linh, maya):
        shown = message(person, text).locator(".text")
        assert shown.inner_text() == text  # drawn as two lines, not joined with a space
        lines = shown.evaluate(
            """e => { const r = document.createRange(); r.selectNodeContents(e);
                      return new Set(Array.from(r.getClientRects(), c => Math.round(c.top))).size; }"""
        )
        assert lines == 2
    in_sync(app_server, room, maya, linh)


# ------------------------------------------------------------------------------ sending


def test_message_shows_sending_until_acknowledged(app_server: AppServer, people: Any) -> None:
    room = unique("room")
    maya = people(app_server, "maya", room).join()
    linh = people(app_server, "linh", room, websocket=False).join()
    held: list[Any] = []

    def hold(route: Any) -> None:
        held.append(route)
        route.request.frame.evaluate("() => { window.__held = true; }")

    linh.page.route("**/api/rooms/*/messages", hold)
    linh.say("Are you there?")
    linh.page.wait_for_function("() => window.__held === true")
    pending = linh.page.locator("#log li.pending")
    expect(pending).to_have_count(1)
    expect(pending.locator(".text")).to_have_text("Are you there?")
    expect(pending.locator(".send-state")).to_have_text("sending…")
    assert pending.get_attribute("data-id") is None
    assert "Are you there?" not in maya.message_texts()  # not stored yet

    held[0].continue_()
    expect(pending).to_have_count(0)
    expect(message(linh, "Are you there?")).to_have_count(1)
    maya.wait_for_message("Are you there?")
    assert_line(linh, "Are you there?", linh.nick)

    # Over WebSocket too: the dimmed line becomes the stored message.
    maya.say("Yes!")
    expect(maya.page.locator("#log li.pending")).to_have_count(0)
    expect(message(maya, "Yes!")).to_have_count(1)
    in_sync(app_server, room, maya, linh)


def test_failed_send_is_retried_with_same_client_id_and_shown_once(
    app_server: AppServer, people: Any
) -> None:
    room = unique("room")
    maya = people(app_server, "maya", room).join()
    linh = people(app_server, "linh", room, websocket=False).join()
    attempts: list[str] = []

    def lost_request(route: Any) -> None:
        attempts.append(route.request.post_data_json["client_id"])
        if len(attempts) == 1:
            route.abort("connectionreset")  # never reached the server
        else:
            route.continue_()

    linh.page.route("**/api/rooms/*/messages", lost_request)
    linh.say("The first try fails")
    expect(linh.page.locator("#log li.pending .send-state")).to_have_text(
        "not sent yet — retrying…"
    )
    maya.wait_for_message("The first try fails")
    linh.wait_for_message("The first try fails")
    assert len(attempts) == 2 and attempts[0] == attempts[1], attempts
    linh.page.unroute("**/api/rooms/*/messages")

    answers: list[str] = []

    def lost_answer(route: Any) -> None:
        answers.append(route.request.post_data_json["client_id"])
        if len(answers) == 1:
            route.fetch()  # stored by the server...
            route.abort("connectionreset")  # ...but the answer never reaches the page
        else:
            route.continue_()

    linh.page.route("**/api/rooms/*/messages", lost_answer)
    linh.say("Stored, but the answer was lost")
    maya.wait_for_message("Stored, but the answer was lost")
    linh.wait_for_message("Stored, but the answer was lost")
    assert len(set(answers)) == 1, answers
    events = in_sync(app_server, room, maya, linh)
    texts = [e.get("text") for e in events]
    assert texts.count("The first try fails") == 1
    assert texts.count("Stored, but the answer was lost") == 1


# ------------------------------------------------------------------------------ presence


def test_people_list_and_leave(app_server: AppServer, people: Any) -> None:
    room = unique("room")
    maya = people(app_server, "maya", room).join()
    linh = people(app_server, "linh", room, websocket=False).join()
    for person, other in ((maya, linh), (linh, maya)):
        expect(person.page.locator("#people-list li")).to_have_text(
            sorted([f"{person.nick} (you)", other.nick])
        )
        expect(person.page.locator("#people-count")).to_have_text("2")

    # A nickname in use cannot be taken.
    nora = people(app_server, maya.nick, room, exact_nick=True)
    nora.submit_join()
    expect(nora.page.get_by_role("alert")).to_contain_text("That nickname is taken")
    expect(nora.page.get_by_label("Nickname")).to_be_visible()

    # Leave. The server ends the session at once, closing Maya's socket; the answer to Leave
    # is made to arrive after the page has seen that close. Where she lands must not depend
    # on which comes first.
    def late_answer(route: Any) -> None:
        if route.request.method != "DELETE":
            route.continue_()
            return
        response = route.fetch()
        expect(maya.chat).not_to_have_attribute("data-state", "connected")
        route.fulfill(response=response)

    maya.page.route("**/api/session", late_answer)
    maya.page.get_by_role("button", name="Leave").click()
    expect(maya.page).to_have_url(f"{app_server.url}/")
    expect(maya.page.get_by_label("Nickname")).to_be_visible()
    expect(linh.page.locator("#people-list li")).to_have_text([f"{linh.nick} (you)"])
    expect(linh.page.locator("#people-count")).to_have_text("1")
    expect(linh.page.locator(f'#log li.is-leave[data-nick="{maya.nick}"]')).to_have_count(1)
    assert app_server.presence(room) == [linh.nick]

    # ...and the nickname is free again at once.
    nora.page.get_by_role("button", name="Join room").click()
    nora.page.wait_for_url(f"**/r/{room}")
    nora.wait_connected()
    expect(linh.page.locator("#people-list li")).to_have_text(
        sorted([f"{linh.nick} (you)", maya.nick])
    )
    in_sync(app_server, room, linh, nora)


# ------------------------------------------------------------------------------ scrolling


def test_load_older_pages_back_to_the_start(
    server_factory: Any, people: Any, bots: Any
) -> None:
    server = server_factory(history_size=20)
    room = unique("room")
    bot = bots(server, "bot")
    written = [f"message {i:03d}" for i in range(1, 131)]
    for text in written:
        bot.say(room, text)

    maya = people(server, "maya", room, **DESKTOP).join()
    page = maya.page
    load_older = page.get_by_role("button", name="Load older messages")
    expect(page.locator("#log li.msg")).to_have_count(20)  # the latest history_size
    assert maya.message_texts() == written[-20:]
    expect(page.locator("#room-start")).to_be_hidden()

    clicks = 0
    while load_older.is_visible():
        assert clicks < 10, "Load older never reached the start"
        shown = page.locator("li.msg[data-id]").count()
        load_older.scroll_into_view_if_needed()  # a person scrolls up to the button first
        first_id = page.locator("li.msg[data-id]").first.get_attribute("data-id")
        anchor = page.locator(f'li[data-id="{first_id}"]')
        top = anchor.bounding_box()["y"]
        load_older.click()
        clicks += 1
        page.wait_for_function(
            "n => document.querySelectorAll('li.msg[data-id]').length > n", arg=shown
        )
        # What was on screen stays where it was; the older messages appear above it.
        assert abs(anchor.bounding_box()["y"] - top) <= 2
    assert clicks == 3  # 20 shown, then pages of 50: 50, 50, 10
    assert maya.message_texts() == written
    expect(page.locator("#room-start")).to_be_visible()
    expect(page.locator("#room-start")).to_contain_text(f"very beginning of #{room}")
    in_sync(server, room, maya)


def test_new_messages_marker_when_scrolled_up(
    app_server: AppServer, people: Any, bots: Any
) -> None:
    room = unique("room")
    bot = bots(app_server, "bot")
    for i in range(1, 61):
        bot.say(room, f"line {i}")
    maya = people(app_server, "maya", room, **DESKTOP).join()
    page = maya.page
    jump = page.get_by_role("button", name=re.compile("New messages"))
    expect(message(maya, "line 60")).to_be_in_viewport()

    # At the bottom: a new message scrolls into view by itself.
    bot.say(room, "At the bottom")
    maya.wait_for_message("At the bottom")
    expect(message(maya, "At the bottom")).to_be_in_viewport()
    expect(jump).to_be_hidden()

    # Reading older messages: a new one does not move the view; a marker says it came.
    page.locator("#scroller").hover()
    page.mouse.wheel(0, -20000)
    page.wait_for_function("() => document.getElementById('scroller').scrollTop === 0")
    bot.say(room, "While you read")
    maya.wait_for_message("While you read")
    expect(jump).to_be_visible()
    assert page.evaluate("document.getElementById('scroller').scrollTop") == 0
    expect(message(maya, "While you read")).not_to_be_in_viewport()
    expect(message(maya, "line 1")).to_be_in_viewport()

    jump.click()
    expect(message(maya, "While you read")).to_be_in_viewport()
    expect(jump).to_be_hidden()
    expect(maya.composer).to_be_focused()


def test_unread_count_in_title_while_hidden(app_server: AppServer, people: Any) -> None:
    room = unique("room")
    maya = people(app_server, "maya", room).join()
    linh = people(app_server, "linh", room).join()
    title = f"#{room} — chatapp"
    linh.say("Seen at once")
    maya.wait_for_message("Seen at once")
    expect(maya.page).to_have_title(title)

    set_hidden(maya.page, True)
    linh.say("One")
    linh.say("Two")
    maya.wait_for_message("Two")
    expect(maya.page).to_have_title(f"(2) {title}")

    set_hidden(maya.page, False)
    expect(maya.page).to_have_title(title)
    linh.say("Three")
    maya.wait_for_message("Three")
    expect(maya.page).to_have_title(title)


# ------------------------------------------------------------------------------ screenshots


CONVERSATION = [
    ("Maya", "Morning all! Still on for the hike on Saturday? 🥾"),
    ("Tomás", "Yes! I'll bring coffee ☕ and the trail map."),
    ("Linh", "Count me in 🙌 What time do we meet?"),
    ("Maya", "8:00 at the north trailhead.\nParking is free before 9."),
    ("نور", "صباح الخير! سأحضر الفطور للجميع 🥐"),
    ("Tomás", "Perfect 👋🏽🎉 See you there"),
]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_screenshots(app_server: AppServer, people: Any) -> None:
    """desktop.png and phone.png of a short conversation (docs/img holds the README's)."""
    room = "weekend-hike"
    if app_server.history(room):  # a database reused from an earlier run
        room = unique("weekend-hike")
    nicks = {"Maya": None, "Tomás": None, "Linh": None, "نور": None}
    maya = people(app_server, "Maya", room, exact_nick=True, **DESKTOP).join()
    tomas = people(app_server, "Tomás", room, exact_nick=True).join()
    nicks.update(Maya=maya, Tomás=tomas)
    everyone = [maya, tomas]
    for who, text in CONVERSATION:
        if nicks[who] is None:
            options = PHONE if who == "Linh" else {}
            nicks[who] = people(app_server, who, room, exact_nick=True, **options).join()
            everyone.append(nicks[who])
        nicks[who].say(text)
        for person in everyone:
            person.wait_for_message(text)
    linh = nicks["Linh"]
    in_sync(app_server, room, *everyone)
    expect(maya.page.locator("#people-count")).to_have_text("4")

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for person, name, size in ((maya, "desktop", (1280, 800)), (linh, "phone", (780, 1688))):
        person.page.evaluate("document.fonts.ready.then(() => true)")
        expect(message(person, CONVERSATION[-1][1])).to_be_in_viewport()
        path = SCREENSHOTS / f"{name}.png"
        person.page.screenshot(path=path, animations="disabled", caret="hide")
        assert png_size(path) == size
    assert linh.page.evaluate("document.documentElement.scrollWidth") <= 390
