"""End-to-end: acting on a message in Chromium (reply, edit, delete, react), on both transports.

What a person would notice: an action taken in one page shows in every other page of the
room, live; a page that was cut off meanwhile catches up exactly when it comes back (its
cursor is newer than the messages the actions aim at); a page opened afresh shows the same;
every action works from the keyboard and is announced. "Exactly" is checked against the
room's ``/history`` (messages in their current state): same ids, texts, tombstones,
"(edited)" markers, reactions (who, in order) and reply targets, nothing twice.

The server side of these actions is the contract's part 2 ("Acting on a message"); the
tests need it. Waits are on what the page shows, never on the clock.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.e2e.conftest import WAIT_MS, AppServer, Person, unique

pytestmark = pytest.mark.e2e

try:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect
except ImportError:  # pragma: no cover - the browser fixture skips (or fails under CI)
    expect = None  # type: ignore[assignment]
    PlaywrightTimeout = TimeoutError  # type: ignore[misc,assignment]

THUMBS = "\U0001F44D"
PARTY = "\U0001F389"
# How long a page cut off from the network may take to notice and to come back: its
# back-off (1 s, 2 s, 4 s... plus jitter) and, over WebSocket, the close.
RECONNECT_MS = 30_000

# The current state of every message the page shows, as the contract's /history gives it.
PAGE_STATE = """() => Array.prototype.map.call(
    document.querySelectorAll('#older li[data-id], #log li[data-id]'),
    li => {
        if (!li.classList.contains('msg')) {
            return {id: li.getAttribute('data-id'), nick: li.getAttribute('data-nick'),
                    type: 'other'};
        }
        const text = li.querySelector(':scope > .text');
        const reactions = {};
        li.querySelectorAll('.reactions .chip').forEach(chip => {
            reactions[chip.getAttribute('data-emoji')] = chip.getAttribute('title').split(', ');
        });
        const ref = li.querySelector(':scope > .reply-ref');
        return {id: li.getAttribute('data-id'), nick: li.getAttribute('data-nick'),
                type: 'message', text: text ? text.textContent : null,
                deleted: !!li.querySelector(':scope > .tombstone'),
                edited: !!li.querySelector('.edited'), reactions: reactions,
                reply_to: ref ? ref.getAttribute('data-target') : null};
    })"""


def server_state(server: AppServer, room: str) -> list[dict[str, Any]]:
    """The room's /history in the shape PAGE_STATE reads from a page."""
    state = []
    for e in server.history(room):
        if e["type"] != "message":
            state.append({"id": e["id"], "nick": e["nick"], "type": "other"})
            continue
        state.append({
            "id": e["id"], "nick": e["nick"], "type": "message",
            "text": None if e.get("deleted") else e["text"],
            "deleted": bool(e.get("deleted")), "edited": bool(e.get("edited")),
            "reactions": e.get("reactions", {}), "reply_to": e.get("reply_to"),
        })
    return state


def caught_up(server: AppServer, room: str, *persons: Person) -> list[dict[str, Any]]:
    """Wait until each page shows the room exactly as /history does; the state."""
    expected = server_state(server, room)
    for person in persons:
        try:
            person.page.wait_for_function(
                f"expected => JSON.stringify(({PAGE_STATE})()) === JSON.stringify(expected)",
                arg=expected, timeout=RECONNECT_MS,
            )
        except PlaywrightTimeout:
            pass  # the assertion below shows the difference
        shown = person.page.evaluate(PAGE_STATE)
        ids = [line["id"] for line in shown]
        assert len(ids) == len(set(ids)), f"{person.nick}'s page shows an event twice"
        assert shown == expected
    return expected


def line(person: Person, text: str) -> Any:
    """The stored message whose text is exactly this."""
    page = person.page
    return page.locator("li.msg[data-id]").filter(
        has=page.locator(".text").get_by_text(text, exact=True)
    )


def line_by_id(person: Person, event_id: str) -> Any:
    return person.page.locator(f'li.msg[data-id="{event_id}"]')


def event_id(person: Person, text: str) -> str:
    found = line(person, text)
    expect(found).to_have_count(1)
    return found.get_attribute("data-id")


def act(person: Person, message: Any, action: str) -> None:
    """Press one of a message's action buttons (Reply, React, Edit, Delete)."""
    message.hover()
    message.locator(".actions").get_by_role("button", name=action).click()


def editor(message: Any) -> Any:
    return message.get_by_role("textbox", name="New text of your message")


def chip(message: Any, emoji: str) -> Any:
    return message.locator(f'.reactions .chip[data-emoji="{emoji}"]')


class Outage:
    """Cuts a person's pages off the server and back: HTTP through the browser's offline
    mode, WebSockets through a route (Chromium's offline mode leaves an open WebSocket
    alone). Made before the page first connects, so every WebSocket goes through it."""

    def __init__(self, person: Person, websocket: bool) -> None:
        self.person = person
        self.down = False
        self.open: list[Any] = []
        if websocket:  # the route's own script would give a page without WebSocket one
            person.context.route_web_socket("**/ws*", self._route)

    def _route(self, ws: Any) -> None:
        if self.down:
            ws.close(code=1011, reason="outage")  # the page sees a socket that dies at once
            return
        ws.connect_to_server()
        self.open.append(ws)

    def begin(self) -> None:
        """Cut off, and wait until the page notices (it leaves "connected")."""
        self.down = True
        self.person.context.set_offline(True)
        for ws in self.open:
            ws.close(code=1011, reason="outage")
        self.open.clear()
        self.person.page.wait_for_function(
            "() => document.getElementById('chat').getAttribute('data-state') !== 'connected'",
            timeout=RECONNECT_MS,
        )

    def end(self) -> None:
        """Back on the network; wait until the page is connected again."""
        self.down = False
        self.person.context.set_offline(False)
        self.person.wait_connected(RECONNECT_MS)


def announced(person: Person, text: str) -> None:
    expect(person.page.locator("#announcer")).to_have_text(text)


# ------------------------------------------------------------------------------ the story


@pytest.mark.parametrize("transport", ["websocket", "longpoll"])
def test_reply_edit_delete_react_live_and_after_being_away(
    app_server: AppServer, people: Any, transport: str
) -> None:
    websocket = transport == "websocket"
    room = unique("room")
    maya = people(app_server, "maya", room).join()
    linh = people(app_server, "linh", room, websocket=websocket).join()
    kim = people(app_server, "kim", room, websocket=websocket)   # will be cut off
    outage = Outage(kim, websocket)
    kim.join()
    ana = people(app_server, "ana", room, websocket=websocket).join()   # will be closed
    assert linh.transport() == transport and kim.transport() == transport
    for text in ("hello there", "typo mesage", "delete me"):
        maya.say(text)
        for person in (linh, kim, ana):
            person.wait_for_message(text)
    hello = event_id(maya, "hello there")
    typo = event_id(maya, "typo mesage")
    doomed = event_id(maya, "delete me")

    # Kim's page loses the network; Ana closes hers. Both know every message so far.
    outage.begin()
    ana_context = ana.context
    ana.page.close()

    # A reply, with its preview; a click on the preview goes to the original.
    act(linh, line(linh, "hello there"), "Reply")
    expect(linh.page.locator("#reply-bar")).to_contain_text("hello there")
    announced(linh, f"Replying to {maya.nick}. Escape cancels.")
    answer = f"hi @{maya.nick}"
    linh.composer.fill(answer)
    linh.composer.press("Enter")
    expect(linh.page.locator("#reply-bar")).to_be_hidden()
    for person in (maya, linh):
        reply = line(person, answer)
        expect(reply.locator(".reply-ref")).to_contain_text("hello there")
        expect(reply.locator(".reply-ref")).to_contain_text(maya.nick)
    # It names Maya: her page marks it, Linh's does not.
    expect(line(maya, answer)).to_have_class(re.compile(r"\bmentions-me\b"))
    expect(line(linh, answer)).not_to_have_class(re.compile(r"\bmentions-me\b"))
    line(maya, answer).locator(".reply-ref").click()
    expect(line_by_id(maya, hello)).to_be_focused()

    # An edit, in place: Enter saves.
    act(maya, line(maya, "typo mesage"), "Edit your message")
    box = editor(line_by_id(maya, typo))
    expect(box).to_be_focused()
    expect(box).to_have_value("typo mesage")
    box.fill("typo message")
    box.press("Enter")
    for person in (maya, linh):
        edited = line_by_id(person, typo)
        expect(edited.locator(".text")).to_have_text("typo message")
        expect(edited.locator(".edited")).to_have_text("(edited)")
        expect(edited.locator(".edited")).to_have_attribute(
            "title", re.compile(r"^edited \d\d:\d\d:\d\d(\s[AP]M)?$"))
    announced(linh, f"{maya.nick} edited a message: typo message")

    # A delete, after a confirmation; the text is gone from every page.
    act(maya, line(maya, "delete me"), "Delete your message")
    expect(maya.page.get_by_text("Delete this message for everyone?")).to_be_visible()
    maya.page.locator(f'li[data-id="{doomed}"] .confirm').get_by_role("button", name="Delete").click()
    for person in (maya, linh):
        expect(line_by_id(person, doomed).locator(".tombstone")).to_have_text("message deleted")
        assert "delete me" not in person.page.locator("#log").inner_text()
    announced(linh, f"{maya.nick} deleted a message")

    # Reactions: the picker, a chip click that adds and one that removes, free entry.
    act(linh, line(linh, "hello there"), f"React to the message by {maya.nick}")
    linh.page.get_by_role("button", name=f"React with {THUMBS}").click()
    thumbs = chip(line_by_id(maya, hello), THUMBS)
    expect(thumbs).to_have_text(f"{THUMBS}1")
    expect(thumbs).to_have_attribute("title", linh.nick)
    expect(thumbs).to_have_attribute("aria-pressed", "false")
    announced(maya, f"{linh.nick} reacted {THUMBS}")
    thumbs.click()
    for person in (maya, linh):
        expect(chip(line_by_id(person, hello), THUMBS)).to_have_attribute(
            "title", f"{linh.nick}, {maya.nick}")
    expect(thumbs).to_have_attribute("aria-pressed", "true")
    thumbs.click()
    expect(chip(line_by_id(linh, hello), THUMBS)).to_have_attribute("title", linh.nick)
    act(maya, line(maya, "hello there"), f"React to the message by {maya.nick}")
    other = maya.page.get_by_label("Other emoji")
    other.fill(PARTY)
    other.press("Enter")
    expect(chip(line_by_id(linh, hello), PARTY)).to_have_attribute("title", maya.nick)

    state = caught_up(app_server, room, maya, linh)
    assert [s["reactions"] for s in state if s["id"] == hello] == [
        {THUMBS: [linh.nick], PARTY: [maya.nick]}
    ]

    # Kim comes back: the actions aimed at messages older than her cursor reach her.
    outage.end()
    caught_up(app_server, room, kim)
    # Ana opens the room again: the page shows every message in its current state.
    ana.page = ana.new_page()
    assert ana.context is ana_context
    ana.page.goto(f"{app_server.url}/r/{room}")
    ana.wait_connected()
    caught_up(app_server, room, ana)
    assert "delete me" not in ana.page.content()


# ------------------------------------------------------------------------------ keyboard


def test_every_action_from_the_keyboard(app_server: AppServer, people: Any) -> None:
    room = unique("room")
    maya = people(app_server, "maya", room).join()
    linh = people(app_server, "linh", room, websocket=False).join()
    maya.say("first")
    maya.say("second")
    linh.wait_for_message("second")
    page = maya.page
    maya.composer.focus()

    # Up arrow in the empty composer edits the last message; Escape cancels.
    page.keyboard.press("ArrowUp")
    box = editor(line(maya, "second"))
    expect(box).to_be_focused()
    page.keyboard.press("Escape")
    expect(box).to_have_count(0)
    expect(maya.composer).to_be_focused()
    announced(maya, "Edit cancelled.")
    # Up again, and Enter saves.
    page.keyboard.press("ArrowUp")
    expect(box).to_be_focused()
    page.keyboard.press("End")
    page.keyboard.type(" (fixed)")
    page.keyboard.press("Enter")
    linh.wait_for_message("second (fixed)")
    expect(maya.composer).to_be_focused()

    # Shift+Tab from the composer reaches the newest message's actions.
    target = line(maya, "second (fixed)")
    for _ in range(6):
        page.keyboard.press("Shift+Tab")
        if page.evaluate("() => document.activeElement.getAttribute('data-action')") == "reply":
            break
    expect(target.get_by_role("button", name=f"Reply to {maya.nick}")).to_be_focused()
    page.keyboard.press("Enter")
    expect(maya.composer).to_be_focused()
    page.keyboard.press("Escape")
    expect(page.locator("#reply-bar")).to_be_hidden()
    announced(maya, "Reply cancelled.")

    # React with the keyboard: the picker opens on its first emoji.
    react = target.get_by_role("button", name=f"React to the message by {maya.nick}")
    react.focus()
    page.keyboard.press("Enter")
    expect(target.get_by_role("button", name=f"React with {THUMBS}")).to_be_focused()
    page.keyboard.press("Enter")
    expect(chip(line(linh, "second (fixed)"), THUMBS)).to_have_attribute("title", maya.nick)
    expect(react).to_be_focused()

    # Delete with the keyboard: the confirmation starts on Cancel; Escape keeps the message.
    target_id = target.get_attribute("data-id")
    target = line_by_id(maya, target_id)
    delete = target.get_by_role("button", name="Delete your message")
    delete.focus()
    page.keyboard.press("Enter")
    expect(target.get_by_role("button", name="Cancel")).to_be_focused()
    page.keyboard.press("Escape")
    expect(delete).to_be_focused()
    announced(maya, "Not deleted.")
    page.keyboard.press("Enter")
    page.keyboard.press("Shift+Tab")
    expect(target.locator(".confirm").get_by_role("button", name="Delete")).to_be_focused()
    page.keyboard.press("Enter")
    expect(line_by_id(linh, target_id).locator(".tombstone")).to_have_text("message deleted")
    expect(target).to_be_focused()
    caught_up(app_server, room, maya, linh)


# ------------------------------------------------------------------------------ escaping


def test_edits_reactions_and_previews_are_shown_as_text(app_server: AppServer, people: Any) -> None:
    room = unique("room")
    maya = people(app_server, "maya", room, bypass_csp=True).join()
    linh = people(app_server, "linh", room, websocket=False, bypass_csp=True).join()
    markup = '<img src=x onerror="window.__pwned=1">'
    maya.say(markup)
    linh.wait_for_message(markup)
    act(linh, line(linh, markup), "Reply")
    linh.composer.fill("<b>reply</b>")
    linh.composer.press("Enter")
    act(maya, line(maya, markup), "Edit your message")
    box = editor(line(maya, markup))
    box.fill("<script>window.__pwned=1</script>")
    box.press("Enter")
    for person in (maya, linh):
        person.wait_for_message("<script>window.__pwned=1</script>")
        expect(line(person, "<b>reply</b>").locator(".reply-ref")).to_contain_text(markup)
        assert person.page.locator("#log img, #log b, #log script").count() == 0
        assert person.page.evaluate("() => window.__pwned") is None
    caught_up(app_server, room, maya, linh)
    # Opened afresh: the page data carries the same texts, still only as text.
    maya.page.reload()
    maya.wait_connected()
    caught_up(app_server, room, maya)
    assert maya.page.locator("#log img, #log b, #log script").count() == 0
    assert maya.page.evaluate("() => window.__pwned") is None


def test_a_reply_to_an_old_message_loads_history_to_show_it(
    server_factory: Any, people: Any, bots: Any
) -> None:
    server = server_factory(history_size=20)
    room = unique("room")
    bot = bots(server, "bot")
    first = bot.say(room, "the very first")
    for i in range(30):
        bot.say(room, f"filler {i}")
    maya = people(server, "maya", room).join()
    # A reply (over HTTP, as any client may) to a message the page does not hold.
    bot.say(room, "about the first", reply_to=first["id"])
    maya.wait_for_message("about the first")
    expect(maya.page.locator(f'li[data-id="{first["id"]}"]')).to_have_count(0)
    line(maya, "about the first").locator(".reply-ref").click()
    original = line_by_id(maya, first["id"])
    expect(original).to_be_focused(timeout=WAIT_MS)
    expect(original.locator(".text")).to_have_text("the very first")


# ------------------------------------------------------------------------------ refusals


def test_a_refused_action_says_why_and_the_message_stays_as_it_is(
    app_server: AppServer, people: Any
) -> None:
    room = unique("room")
    maya = people(app_server, "maya", room, websocket=False).join()
    linh = people(app_server, "linh", room).join()
    maya.say("keep me")
    linh.wait_for_message("keep me")
    kept = line(maya, "keep me")

    # Not one emoji: the server refuses (400 bad_emoji); no chip anywhere.
    act(maya, kept, f"React to the message by {maya.nick}")
    other = maya.page.get_by_label("Other emoji")
    other.fill("abc")
    other.press("Enter")
    expect(maya.page.locator("#notice")).to_contain_text("A reaction is one emoji")
    announced(maya, re.compile("That did not work"))

    # An edit the server refuses (here: answered 409 deleted on the way): the text shown
    # while saving goes back to the stored one.
    def refuse(route: Any) -> None:
        route.fulfill(status=409, content_type="application/json",
                      body='{"error": "deleted", "message": "That message was deleted."}')

    maya.page.route("**/api/rooms/*/messages/*", refuse)
    act(maya, kept, "Edit your message")
    box = editor(kept)
    box.fill("changed")
    box.press("Enter")
    expect(maya.page.locator("#notice")).to_contain_text("That message was deleted.")
    expect(kept.locator(".text")).to_have_text("keep me")
    expect(kept).not_to_have_class(re.compile(r"\bsaving\b"))
    maya.page.unroute("**/api/rooms/*/messages/*")
    assert caught_up(app_server, room, maya, linh)[-1]["reactions"] == {}
