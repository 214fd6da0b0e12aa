"""Accounts in a real Chromium: register the nickname from the room page, then log in to it
from another browser through the join form, which asks for the password."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.conftest import WAIT_MS, AppServer, unique

pytestmark = pytest.mark.e2e

PASSWORD = "a long enough password"


def test_register_then_log_in_on_a_second_browser(app_server: AppServer, people: Any) -> None:
    from playwright.sync_api import expect

    room = unique("room")
    maya = people(app_server, "maya", room).join()
    panel = maya.page.locator("#account")
    panel.locator("summary").click()
    expect(panel.locator("#account-status")).to_contain_text("Register")
    panel.get_by_label("Password").fill("short")
    panel.get_by_role("button", name="Register").click()
    # The browser's own minlength check stops it, or the server's answer is shown.
    panel.get_by_label("Password").fill(PASSWORD)
    panel.get_by_role("button", name="Register").click()
    status = panel.locator("#account-status")
    expect(status).to_contain_text(f"\u201c{maya.nick}\u201d is registered")
    expect(panel.get_by_role("button", name="Delete account")).to_be_visible()

    # Another browser, the same nickname: the join form asks for the password.
    phone = people(app_server, maya.nick, room, exact_nick=True)
    phone.submit_join()
    expect(phone.page.locator("#join-error")).to_contain_text("This nickname is registered")
    phone.page.get_by_label("Password").fill("not the password")
    phone.page.get_by_role("button", name="Join room").click()
    expect(phone.page.locator("#join-error")).to_contain_text("do not match")
    phone.page.get_by_label("Password").fill(PASSWORD)
    phone.page.get_by_role("button", name="Join room").click()
    phone.page.wait_for_url(f"**/r/{room}")
    phone.wait_connected()

    # Both pages are the same person: a message from the phone shows under the nickname.
    phone.say("sent from my phone")
    for person in (maya, phone):
        person.wait_for_message("sent from my phone", timeout=WAIT_MS)
    line = maya.page.locator("#log li.msg", has_text="sent from my phone")
    expect(line.locator(".nick")).to_have_text(maya.nick)


def test_the_nickname_panel_sits_under_the_people_list(app_server: AppServer, people: Any) -> None:
    """On a wide screen "Your nickname" shares the people list's column instead of taking a
    column of its own away from the conversation."""
    from playwright.sync_api import expect

    maya = people(app_server, "maya", unique("room"), viewport={"width": 1400, "height": 800})
    maya.join()
    page = maya.page
    page.locator("#account summary").click()
    expect(page.get_by_label("Password")).to_be_visible()
    listing = page.locator("#people").bounding_box()
    panel = page.locator("#account").bounding_box()
    conversation = page.locator(".conversation").bounding_box()
    assert listing and panel and conversation
    assert abs(panel["x"] - listing["x"]) < 1 and abs(panel["width"] - listing["width"]) < 1
    assert panel["y"] >= listing["y"] + listing["height"] - 1
    assert panel["x"] >= conversation["x"] + conversation["width"] - 1
    # Nothing but the two side columns is taken from the conversation's width.
    assert conversation["width"] >= 1400 - 2 * listing["width"] - 20
