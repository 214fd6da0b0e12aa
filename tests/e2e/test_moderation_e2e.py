"""Moderation in a real Chromium: the room's owner mutes a guest from the menu on its
nickname, then bans it; the victim's page says why each time, and the room stays shut to it
after a reload."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.conftest import WAIT_MS, AppServer, unique

pytestmark = pytest.mark.e2e

PASSWORD = "a long enough password"


def owner_of(app_server: AppServer, people: Any, room: str) -> Any:
    """"cy", who registered the nickname and claimed ``room``: its page shows the owner's
    tools (reloaded after the claim)."""
    cy = people(app_server, "cy", room).join()
    response = cy.context.request.post(
        f"{app_server.url}/api/account", data={"password": PASSWORD}, headers=cy.xsrf_headers())
    assert response.status == 201, response.text()
    response = cy.context.request.post(
        f"{app_server.url}/api/rooms/{room}/claim", data={}, headers=cy.xsrf_headers())
    assert response.status == 200, response.text()
    cy.page.reload()
    cy.wait_connected()
    return cy


def test_an_owner_mutes_then_bans_and_the_victim_sees_why(
    app_server: AppServer, people: Any
) -> None:
    from playwright.sync_api import expect

    room = unique("room")
    cy = owner_of(app_server, people, room)
    settings = cy.page.locator("#room-settings")
    expect(settings.locator("summary")).to_have_text("Room settings")

    bo = people(app_server, "bo", room).join()
    bo.say("spam spam spam")
    cy.wait_for_message("spam spam spam")

    # The owner's panel: slow mode on, then off again; both pages show each change.
    settings.locator("summary").click()
    settings.get_by_label("Slow mode").select_option("30")
    settings.get_by_role("button", name="Set").click()
    expect(bo.page.locator("#log li.is-moderation").last).to_contain_text(
        "set slow mode: one message every 30 s")
    bo.say("one more")
    bo.wait_for_message("one more")
    bo.say("and another")
    expect(bo.page.locator("#log li.msg", has_text="and another")).to_contain_text("Slow mode")
    settings.get_by_label("Slow mode").select_option("0")
    settings.get_by_role("button", name="Set").click()
    expect(cy.page.locator("#log li.is-moderation").last).to_contain_text("ended slow mode")

    # The menu on bo's nickname in the people list.
    cy.page.locator("#people-list .nick", has_text=bo.nick).click()
    menu = cy.page.get_by_role("menu")
    menu.get_by_label("Reason (optional)").fill("flood")
    menu.get_by_role("menuitem", name="Mute for 10 min").click()
    line = f"muted {bo.nick} for 10 min: flood"
    for person in (cy, bo):
        expect(person.page.locator("#log li.is-moderation").last).to_contain_text(line)
    bo.say("can I still talk?")
    expect(bo.page.locator("#notice")).to_contain_text("You are muted here", timeout=WAIT_MS)
    expect(bo.page.locator("#notice")).to_contain_text("more seconds")

    # The menu on bo's nickname on its message this time.
    cy.page.locator("#log li.msg .nick", has_text=bo.nick).first.click()
    cy.page.get_by_role("menu").get_by_role("menuitem", name="Ban for good").click()
    banner = bo.page.locator("#moderated")
    expect(banner).to_contain_text("You are banned from this room", timeout=WAIT_MS)
    expect(banner).to_contain_text("for good")
    expect(bo.composer).to_be_disabled()
    expect(cy.page.locator("#log li.is-moderation").last).to_contain_text(f"banned {bo.nick}")

    response = bo.page.goto(f"{app_server.url}/r/{room}")
    assert response is not None and response.status == 403
    expect(bo.page.locator("#refused")).to_contain_text("banned")


def test_a_moderator_deletes_someone_elses_message_from_its_toolbar(
    app_server: AppServer, people: Any
) -> None:
    from playwright.sync_api import expect

    room = unique("room")
    cy = owner_of(app_server, people, room)
    bo = people(app_server, "bo", room).join()
    dee = people(app_server, "dee", room).join()
    bo.say("rude words")
    for person in (cy, dee):
        person.wait_for_message("rude words")

    label = f"Delete {bo.nick}'s message (as a moderator)"
    # Only the moderator's page offers it.
    for person in (dee, bo):
        message = person.page.locator("li.msg[data-id]", has_text="rude words")
        message.hover()
        expect(message.get_by_role("button", name=label)).to_have_count(0)
    message = cy.page.locator("li.msg[data-id]", has_text="rude words")
    message.hover()
    message.get_by_role("button", name=label).click()
    message.locator(".confirm").get_by_role("button", name="Delete").click()
    for person in (cy, bo, dee):
        gone = person.page.locator("li.msg.deleted")
        expect(gone).to_have_count(1)
        expect(person.page.locator("#log")).not_to_contain_text("rude words")
        expect(person.page.locator("#log li.is-moderation").last).to_contain_text("deleted")
