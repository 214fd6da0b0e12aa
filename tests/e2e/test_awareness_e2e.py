"""End-to-end: awareness in Chromium. Who is typing shows and goes (WebSocket and
long-polling pages alike); a mention reaches a hidden page as a title count of its own and,
with notification permission granted by the test, as a notification whose body is the plain
text; switching rooms in the sidebar happens without a reload and keeps each room's unread
count right.

Waits are on what the page shows, never on the clock.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.e2e.conftest import AppServer, Person, unique

pytestmark = pytest.mark.e2e

try:
    from playwright.sync_api import expect
except ImportError:  # pragma: no cover - the browser fixture skips (or fails under CI)
    expect = None  # type: ignore[assignment]

# The typing line lasts 6 s after the last signal (the contract): a generous bound above it.
TYPING_GONE_MS = 15_000
# The rooms sidebar refreshes its counts every 10 s (static/rooms.js): a bound above it.
ROOMS_REFRESH_MS = 25_000

# Notifications the page makes, recorded (headless Chromium shows none), and every request
# for permission (there must be none on page load).
RECORD_NOTIFICATIONS = """(() => {
    window.__notes = [];
    window.__asked = 0;
    const Real = window.Notification;
    if (!Real) { return; }
    function Recording(title, options) {
        window.__notes.push({title: title, body: (options || {}).body});
        return new Real(title, options);
    }
    Recording.requestPermission = function () {
        window.__asked++;
        return Real.requestPermission.apply(Real, arguments);
    };
    Object.defineProperty(Recording, 'permission', {get: () => Real.permission});
    window.Notification = Recording;
})();"""


def set_hidden(page: Any, hidden: bool) -> None:
    """What switching to another tab does to a page (headless Chromium keeps every page
    visible)."""
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


def typing_line(person: Person) -> Any:
    return person.page.locator("#typing")


def room_badge(person: Person, room: str) -> Any:
    return person.page.locator(f"#rooms-list li:has(a[data-room='{room}']) .unread-count")


def test_a_typing_line_appears_and_goes(app_server: AppServer, people: Any) -> None:
    room = unique("typing")
    maya = people(app_server, "maya", room).join()
    linh = people(app_server, "linh", room).join()
    linh.composer.press_sequentially("hel")
    expect(typing_line(maya)).to_have_text(f"{linh.nick} is typing…")
    expect(typing_line(linh)).to_have_text("")  # never myself
    linh.composer.press_sequentially("lo")
    linh.composer.press("Enter")
    maya.wait_for_message("hello")
    expect(typing_line(maya)).to_have_text("")  # sending ended it
    linh.composer.press_sequentially("more")
    expect(typing_line(maya)).to_have_text(f"{linh.nick} is typing…")
    # linh stops typing without sending: the line goes once the signal runs out.
    expect(typing_line(maya)).to_have_text("", timeout=TYPING_GONE_MS)


def test_a_long_polling_page_sees_typing(app_server: AppServer, people: Any) -> None:
    room = unique("lptyping")
    maya = people(app_server, "maya", room, websocket=False).join()
    assert maya.transport() == "longpoll"
    linh = people(app_server, "linh", room, websocket=False).join()
    linh.composer.press_sequentially("hi")
    expect(typing_line(maya)).to_have_text(f"{linh.nick} is typing…")
    linh.composer.press("Enter")
    maya.wait_for_message("hi")
    expect(typing_line(maya)).to_have_text("")


def test_a_mention_raises_the_title_count_and_notifies(
    app_server: AppServer, people: Any, bots: Any
) -> None:
    room = unique("mention")
    maya = people(app_server, "maya", room, permissions=["notifications"])
    maya.context.add_init_script(RECORD_NOTIFICATIONS)
    maya.join()
    bo = bots(app_server, unique("bo"))
    title = f"#{room} — chatapp"
    set_hidden(maya.page, True)
    bo.say(room, "just chatting")
    bo.say(room, f"@{maya.nick} <b>look</b>")
    maya.wait_for_message(f"@{maya.nick} <b>look</b>")
    expect(maya.page).to_have_title(f"(2, @1) {title}")
    notes = maya.page.evaluate("() => window.__notes")
    assert notes == [{"title": f"{bo.nick} mentioned you in #{room}",
                      "body": f"@{maya.nick} <b>look</b>"}]  # plain text, as sent
    line = maya.page.locator("#log li.msg.mentions-me")
    expect(line).to_have_count(1)
    set_hidden(maya.page, False)
    expect(maya.page).to_have_title(title)
    assert maya.page.evaluate("() => window.__asked") == 0  # nothing asked on its own


def test_the_notify_button_asks_only_when_pressed(app_server: AppServer, people: Any) -> None:
    room = unique("ask")
    maya = people(app_server, "maya", room)
    maya.context.add_init_script(RECORD_NOTIFICATIONS)
    maya.join()
    button = maya.page.get_by_role("button", name="Notify me")
    expect(button).to_be_visible()
    assert maya.page.evaluate("() => window.__asked") == 0
    button.click()
    maya.page.wait_for_function("() => window.__asked === 1")


def test_switching_rooms_keeps_each_rooms_unread_count_right(
    app_server: AppServer, people: Any, bots: Any
) -> None:
    first, second = unique("first"), unique("second")
    maya = people(app_server, "maya", first).join()
    bo = bots(app_server, unique("bo"))
    maya.page.evaluate("() => { window.__sameDocument = true; }")
    box = maya.page.get_by_placeholder("Find or create a room")
    box.fill(second)
    box.press("Enter")
    expect(maya.page).to_have_url(re.compile(f"/r/{second}$"))
    maya.wait_connected()
    expect(maya.page.locator("h1.room-name")).to_contain_text(second)
    assert maya.page.evaluate("() => window.__sameDocument") is True  # no reload
    bo.say(first, "one")
    bo.say(first, "two")
    bo.say(second, "here")
    maya.wait_for_message("here")
    expect(room_badge(maya, first)).to_have_text("2", timeout=ROOMS_REFRESH_MS)
    expect(room_badge(maya, second)).to_have_count(0)  # the room in view
    # Opening it moves my marker to what is in view (one PUT .../read, a moment later).
    with maya.page.expect_request(lambda r: r.method == "PUT" and r.url.endswith(
            f"/api/rooms/{first}/read")):
        maya.page.locator(f"#rooms-list a[data-room='{first}']").click()
        expect(maya.page).to_have_url(re.compile(f"/r/{first}$"))
        maya.wait_for_message("two")
    expect(maya.page.locator("#log .new-divider")).to_have_count(1)  # above "one"
    assert maya.page.evaluate("() => window.__sameDocument") is True
    # Read here: back in the second room, the first one counts nothing any more...
    bo.say(second, "later")
    maya.page.go_back()
    expect(maya.page).to_have_url(re.compile(f"/r/{second}$"))
    maya.wait_for_message("later")
    expect(room_badge(maya, first)).to_have_count(0, timeout=ROOMS_REFRESH_MS)
    # ...and after a full reload the counts are the server's, the same.
    maya.page.reload()
    maya.wait_connected()
    expect(room_badge(maya, first)).to_have_count(0)
    expect(maya.page.locator(f"#rooms-list a[data-room='{first}']")).to_be_visible()
