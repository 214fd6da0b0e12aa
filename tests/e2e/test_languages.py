"""The page in Russian and Vietnamese, end to end in Chromium: joined and used in the
browser's language, and the README's screenshots of it (desktop-ru.png, desktop-vi.png;
saved like test_browser.py's: test-artifacts/, or docs/img with CHATAPP_UPDATE_SCREENSHOTS=1).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.conftest import AppServer, unique
from tests.e2e.test_browser import DESKTOP, SCREENSHOTS, in_sync, message, png_size

pytestmark = pytest.mark.e2e

try:
    from playwright.sync_api import expect
except ImportError:  # pragma: no cover - the browser fixture skips (or fails under CI)
    expect = None  # type: ignore[assignment]

# language: (browser locale, room, the page's words a person sees, the conversation)
LANGUAGES = {
    "ru": ("ru-RU", "pokhod", {"nickname": "Ник", "join": "Войти", "send": "Отправить",
                               "people": "Здесь сейчас", "leave": "Выйти"}, [
        ("Аня", "Всем привет! В субботу идём в поход? 🥾"),
        ("Дмитрий", "Да! Я возьму кофе ☕ и карту маршрута."),
        ("Ольга", "Я с вами 🙌 Во сколько встречаемся?"),
        ("Аня", "В 8:00 у северного входа.\nПарковка бесплатная до 9."),
        ("Дмитрий", "Отлично 👋 До встречи"),
    ]),
    "vi": ("vi-VN", "di-bo", {"nickname": "Biệt danh", "join": "Vào phòng", "send": "Gửi",
                              "people": "Đang ở đây", "leave": "Rời phòng"}, [
        ("Thảo", "Chào cả nhà! Thứ Bảy mình vẫn đi leo núi chứ? 🥾"),
        ("Minh", "Có chứ! Mình sẽ mang cà phê ☕ và bản đồ."),
        ("Hưng", "Cho mình đi với 🙌 Mấy giờ gặp nhau?"),
        ("Thảo", "8 giờ ở cổng phía bắc.\nGửi xe miễn phí trước 9 giờ."),
        ("Minh", "Tuyệt 👋 Hẹn gặp lại"),
    ]),
}


@pytest.mark.parametrize("lang", sorted(LANGUAGES))
def test_the_page_in_the_browsers_language(app_server: AppServer, people: Any, lang: str) -> None:
    """Joined, chatted in and shown in the browser's language; the screenshot for the README."""
    browser_locale, room, words, conversation = LANGUAGES[lang]
    if app_server.history(room):  # a database reused from an earlier run
        room = unique(room)
    persons: dict[str, Any] = {}
    for nick, _ in conversation:
        if nick in persons:
            continue
        options = DESKTOP if not persons else {}
        person = people(app_server, nick, room, exact_nick=True, locale=browser_locale,
                        **options)
        page = person.page
        page.goto(f"{app_server.url}/?room={room}")
        expect(page.locator("html")).to_have_attribute("lang", lang)
        page.get_by_label(words["nickname"]).fill(nick)
        page.get_by_role("button", name=words["join"], exact=True).click()
        page.wait_for_url(f"**/r/{room}")
        person.wait_connected()
        expect(page.get_by_role("button", name=words["send"])).to_be_visible()
        expect(page.get_by_role("button", name=words["leave"])).to_be_visible()
        expect(page.locator("#people .people-title")).to_have_text(words["people"])
        persons[nick] = person
    for nick, text in conversation:
        composer = persons[nick].page.locator("#composer-text")  # labelled in the language
        composer.fill(text)
        composer.press("Enter")
        for person in persons.values():
            person.wait_for_message(text)
    everyone = list(persons.values())
    in_sync(app_server, room, *everyone)

    first = everyone[0]
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    first.page.evaluate("document.fonts.ready.then(() => true)")
    expect(message(first, conversation[-1][1])).to_be_in_viewport()
    path = SCREENSHOTS / f"desktop-{lang}.png"
    first.page.screenshot(path=path, animations="disabled", caret="hide")
    assert png_size(path) == (1280, 800)
