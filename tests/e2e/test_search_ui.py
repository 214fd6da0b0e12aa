"""The search box (static/search.js) in Chromium, as a person uses it: the room page carries
it (its container in the bar, search.js in the page's scripts).
"""

from __future__ import annotations

from typing import Any

from tests.e2e.conftest import AppServer, Person, unique

# Playwright is imported lazily by the fixtures (the tests skip without it).


def with_search(person: Person) -> Person:
    """``person``, once the page's search box is ready."""
    from playwright.sync_api import expect

    expect(person.page.get_by_role("button", name="Search")).to_be_visible()
    return person


def results(person: Person) -> Any:
    return person.page.get_by_role("option")


def test_search_as_you_type_highlights_safely_and_opens_in_context(
    server_factory: Any, people: Any, tmp_path: Any
) -> None:
    from playwright.sync_api import expect

    server: AppServer = server_factory(history_size=5)
    room = unique("room")
    maya = people(server, "maya", room).join()
    maya.say("Hẹn gặp ở Hòa Bình <b>nhé</b>")
    for i in range(8):
        maya.say(f"filler {i}")
    maya.wait_for_message("filler 7")
    linh = with_search(people(server, "linh", room).join())
    page = linh.page

    page.locator("#scroller").focus()
    page.keyboard.press("/")  # the shortcut opens and focuses the box
    box = page.get_by_label(f"Search messages in #{room}")
    expect(box).to_be_focused()
    box.press_sequentially("hoa binh", delay=30)  # typed without accents
    expect(results(linh)).to_have_count(1)
    found = results(linh).first
    expect(found.locator(".text")).to_have_text("Hẹn gặp ở Hòa Bình <b>nhé</b>")  # as text
    assert found.locator("b").count() == 0
    expect(found.locator("mark")).to_have_text(["Hòa", "Bình"])

    # Not in the log on the page (only the last 5 events are): shown in context, marked.
    found.click()
    hit = page.locator(".search-context .search-hit")
    expect(hit).to_contain_text("Hẹn gặp ở Hòa Bình")
    expect(page.locator(".search-context li")).not_to_have_count(0)

    # A message that is in the log: scrolled to and marked there.
    box.fill("filler 7")
    expect(results(linh).locator(".text")).to_have_text(["filler 7"])
    results(linh).first.click()
    expect(page.locator("#log .search-hit .text")).to_have_text("filler 7")

    box.press("Escape")
    expect(box).to_be_hidden()
    page.keyboard.press("Control+k")
    expect(box).to_be_focused()
    box.fill("nothing like this")
    expect(page.locator(".search-status")).to_have_text("No messages match.")
    page.screenshot(path=str(tmp_path / "search.png"))  # to look at when it fails
    assert not linh.errors, linh.errors
