"""The page in three engines: Chromium, WebKitGTK (Safari's engine) and Firefox ESR.

What differs between engines is rendering and the transports, so that is what runs in each:
joining, sending, a message reaching a second page over WebSocket and over long-polling,
text shown as typed (never as markup), and right-to-left text drawn on the right. Driven
over WebDriver (``tests/e2e/webdriver.py``); the Playwright suite (``test_browser.py``)
covers the rest in Chromium. An engine that is not installed is skipped with what to
install; with ``CI`` set it fails instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.e2e.conftest import AppServer, unique
from tests.e2e.webdriver import (
    ENGINES,
    VirtualDisplay,
    WebPerson,
    engine_missing,
    start_driver,
)

pytestmark = [
    pytest.mark.e2e,
    # Selenium's own WebKitGTK driver class still uses its deprecated constructor argument.
    pytest.mark.filterwarnings("ignore:setting remote_server_addr:DeprecationWarning"),
]

ARABIC = "صباح الخير يا أصدقاء"  # "Good morning, friends"
LATIN = "Good morning, friends"


class DriverPool:
    """Browser sessions kept for the module, per (engine, language): starting one costs
    seconds (10 s for Firefox on a busy machine), so each test borrows sessions and gives
    them back cleaned -- the cookies and storage of the site it used deleted, the page left
    -- so the next test's person is new to the server. Owns the Xvfb display WebKit draws
    into (started with the first WebKit session), stopped after the last session quit."""

    def __init__(self) -> None:
        self.idle: dict[tuple[str, str], list[Any]] = {}
        self.started: list[Any] = []
        self.screen: VirtualDisplay | None = None

    def borrow(self, engine: str, language: str) -> Any:
        idle = self.idle.setdefault((engine, language), [])
        if idle:
            return idle.pop()
        if engine == "webkit" and self.screen is None:
            self.screen = VirtualDisplay()
        driver = start_driver(engine, self.screen, language)
        self.started.append(driver)
        return driver

    def give_back(self, engine: str, language: str, driver: Any) -> None:
        from selenium.common.exceptions import WebDriverException

        try:
            if driver.current_url.startswith("http"):
                driver.execute_script("localStorage.clear(); sessionStorage.clear();")
                driver.delete_all_cookies()  # every test server is on 127.0.0.1
            driver.get("about:blank")  # closes the page's connections
        except WebDriverException:
            self.started.remove(driver)
            driver.quit()
            return
        self.idle[(engine, language)].append(driver)

    def close(self) -> None:
        try:
            for driver in self.started:
                driver.quit()
        finally:  # a crashed browser must not keep Xvfb running
            if self.screen is not None:
                self.screen.stop()


@pytest.fixture(scope="module")
def pool() -> Iterator[DriverPool]:
    sessions = DriverPool()
    yield sessions
    sessions.close()


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    reason = engine_missing(request.param)
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set: the browser tests must run in every engine)")
        pytest.skip(reason)
    return request.param


@pytest.fixture
def web_people(engine: str, pool: DriverPool) -> Iterator[Callable[..., WebPerson]]:
    """``web_people(server, "maya", room)``: a new person (own browser session) in ``engine``."""
    borrowed: list[tuple[str, Any]] = []

    def make(server: AppServer | str, nick: str, room: str, language: str = "en-US") -> WebPerson:
        base_url = server if isinstance(server, str) else server.url
        driver = pool.borrow(engine, language)
        borrowed.append((language, driver))
        return WebPerson(driver, base_url, unique(nick), room)

    yield make
    for language, driver in borrowed:
        pool.give_back(engine, language, driver)


def assert_in_sync(server: AppServer, room: str, *persons: WebPerson) -> None:
    """Each page shows exactly the room's stored messages, in order, each once."""
    texts = [e["text"] for e in server.history(room) if e["type"] == "message"]
    for person in persons:
        person.until(lambda d, p=person: p.message_texts() == texts,
                     f"shows the room's messages {texts}")


def test_two_pages_chat_over_websocket(app_server: AppServer, web_people: Any) -> None:
    room = unique("room")
    maya = web_people(app_server, "maya", room).join()
    linh = web_people(app_server, "linh", room).join()
    assert maya.transport() == linh.transport() == "websocket"

    maya.say("Hello Linh, over WebSocket")
    linh.wait_for_message("Hello Linh, over WebSocket")
    linh.say("Hi Maya, got it")
    maya.wait_for_message("Hi Maya, got it")
    assert_in_sync(app_server, room, maya, linh)


def test_long_polling_page_chats_with_websocket_page(
    app_server: AppServer, web_people: Any, blocking_proxy: Any
) -> None:
    """Behind a proxy that refuses WebSocket upgrades the page falls back to long-polling
    by itself, and chats both ways with a WebSocket page."""
    room = unique("room")
    proxy = blocking_proxy(app_server.port, "refuse")
    maya = web_people(app_server, "maya", room).join()
    linh = web_people(proxy.url, "linh", room).join()
    assert linh.transport() == "longpoll"
    assert maya.transport() == "websocket"
    assert proxy.blocked >= 1, "the page never tried a WebSocket"

    linh.say("Sent over plain HTTP")
    maya.wait_for_message("Sent over plain HTTP")
    maya.say("Received by long-polling")
    linh.wait_for_message("Received by long-polling")
    assert_in_sync(app_server, room, maya, linh)


def test_text_is_shown_as_typed(app_server: AppServer, web_people: Any) -> None:
    room = unique("room")
    maya = web_people(app_server, "maya", room).join()
    linh = web_people(app_server, "linh", room).join()
    markup = '<b>not bold</b> & <img src=x onerror="document.title=1"> &amp;'
    maya.say(markup)
    for person in (maya, linh):
        person.wait_for_message(markup)
        assert person.script(
            "return document.querySelectorAll('#log .text b, #log .text img').length") == 0
        assert person.script("return document.title") != "1"
    # A reload draws the history from the server's template: escaped there too.
    linh.driver.refresh()
    linh.wait_connected()
    linh.wait_for_message(markup)
    assert linh.script("return document.querySelectorAll('#log .text b, #log .text img').length") == 0


def assert_right_to_left(box: dict[str, Any]) -> None:
    """The glyphs sit against the right edge of the text's box, far from the left one."""
    gap_left, gap_right = box["textLeft"] - box["left"], box["right"] - box["textRight"]
    assert box["direction"] == "rtl", box
    assert gap_right <= 2 and gap_left > 100, f"Arabic text not on the right: {box}"


def assert_left_to_right(box: dict[str, Any]) -> None:
    gap_left, gap_right = box["textLeft"] - box["left"], box["right"] - box["textRight"]
    assert box["direction"] == "ltr", box
    assert gap_left <= 2 and gap_right > 100, f"Latin text not on the left: {box}"


def test_right_to_left_message_is_drawn_on_the_right(
    app_server: AppServer, web_people: Any
) -> None:
    """An Arabic message is aligned right, a Latin one left, both live and after a reload
    (the template's copy), whatever the engine (WebKit and Firefox resolved the alignment
    against the left-to-right list before the fix)."""
    room = unique("room")
    maya = web_people(app_server, "maya", room).join()
    linh = web_people(app_server, "linh", room).join()
    maya.say(ARABIC)
    maya.say(LATIN)
    for person in (maya, linh):
        person.wait_for_message(ARABIC)
        person.wait_for_message(LATIN)
        assert_right_to_left(person.message_box(ARABIC))
        assert_left_to_right(person.message_box(LATIN))
    linh.driver.refresh()
    linh.wait_connected()
    linh.wait_for_message(LATIN)
    assert_right_to_left(linh.message_box(ARABIC))
    assert_left_to_right(linh.message_box(LATIN))


def page_language(person: WebPerson) -> Any:
    return person.script(
        "return [document.documentElement.lang,"
        " window.chatappI18n ? window.chatappI18n.lang : null];")


def test_page_in_the_browsers_language_and_the_switch(
    app_server: AppServer, web_people: Any
) -> None:
    """A browser set to Russian gets the page in Russian; the switch changes it to
    Vietnamese, and the choice outlasts a reload and the way into the room."""
    from selenium.webdriver.common.by import By

    room = unique("room")
    anna = web_people(app_server, "anna", room, language="ru-RU")
    anna.driver.get(f"{app_server.url}/?room={room}")
    anna.until(lambda d: page_language(anna) == ["ru", "ru"], "the page in Russian")
    assert anna.driver.find_element(By.CSS_SELECTOR, "label[for=nick]").text == "Ник"
    assert anna.driver.find_element(By.CSS_SELECTOR, "#join-form button").text == "Войти"

    anna.driver.find_element(By.CSS_SELECTOR, ".lang-switch button[value=vi]").click()
    anna.until(lambda d: page_language(anna) == ["vi", "vi"], "the page in Vietnamese")
    assert anna.driver.current_url.endswith(f"/?room={room}")  # back where she was
    assert anna.driver.find_element(By.CSS_SELECTOR, "label[for=nick]").text == "Biệt danh"
    anna.join()
    assert page_language(anna) == ["vi", "vi"]
    send = anna.driver.find_element(By.ID, "send")
    assert send.text == "Gửi"
    # static/i18n.js: the catalogue's plural rule, English for what has no translation.
    anna.driver.find_element(By.CSS_SELECTOR, ".lang-switch button[value=ru]").click()
    anna.until(lambda d: page_language(anna) == ["ru", "ru"], "the room in Russian")
    anna.wait_connected()
    assert anna.script(
        "var i = window.chatappI18n; return [1, 2, 5, 11, 21, 112, 1001, 1002].map(i.pluralIndex);"
    ) == [0, 1, 2, 2, 0, 2, 0, 1]
    assert anna.script(
        "return window.chatappI18n.tn('{n} new line', '{n} new lines', 3, {x: 1});"
    ) == "3 new lines"
    shown = anna.script("return window.chatappI18n.time(new Date(2026, 0, 2, 7, 8, 9));")
    assert shown.replace("\u200e", "") in ("07:08:09", "7:08:09"), shown
