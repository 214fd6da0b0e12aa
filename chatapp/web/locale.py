"""The pages in the reader's language: English, Russian, Vietnamese (gettext catalogues).

- Catalogues: ``chatapp/locale/<lang>/LC_MESSAGES/chatapp.po`` (committed; English is the
  source language and has none). ``load()`` compiles each into its ``.mo`` with Babel when
  the ``.mo`` is missing or older than the ``.po`` -- beside it, or in a private temporary
  directory when the install is read-only -- and hands them to Tornado's gettext support.
  ``.mo`` files are build output, never committed.
- Choice: the ``chatapp_lang`` cookie (set by the switch, ``POST /lang``) when it names a
  language we have; otherwise the best match of ``Accept-Language``; otherwise English.
- Client strings: ``client_strings(locale)`` is what the page embeds as JSON for
  ``static/i18n.js``: the translations of the strings used in ``static/*.js`` and a plural
  table (see ``plural_table``).

The trap: Tornado caches one ``Locale`` per code for the life of the process and reads the
catalogues once, so ``load()`` runs once per process (the first page asks for it); a changed
``.po`` needs a restart.
"""

from __future__ import annotations

import gettext
import json
import logging
import os
import tempfile
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

import tornado.locale
import tornado.web

log = logging.getLogger(__name__)

DOMAIN = "chatapp"
LOCALE_DIR = Path(__file__).resolve().parents[1] / "locale"
# Each language by its own name, as the switch shows it; English first (the default).
LANGUAGES = {"en": "English", "ru": "Русский", "vi": "Tiếng Việt"}
DEFAULT_LANGUAGE = "en"
LANG_COOKIE = "chatapp_lang"
# A chosen language is a lasting preference: a year, renewed by every switch.
LANG_COOKIE_DAYS = 365
# Client plural forms are looked up in a table of this many counts (see plural_table).
PLURAL_TABLE_SIZE = 200

_lock = threading.Lock()
_loaded = threading.Event()


def N_(message: str) -> str:
    """Marks a string for extraction that is translated later, where it is shown."""
    return message


# What the join form can show when it refuses a nickname or a room (ChatError.message,
# exactly as chatapp/rules.py and sessions.py word them): translated by message, since one
# code (bad_nick) has several. tests/test_i18n.py checks these are the messages raised.
PAGE_ERRORS = (
    N_("Room names are 1-64 letters, digits, '-' or '_'."),
    N_("Nicknames are 1-32 characters."),
    N_("Nicknames may contain only letters, digits, '_', '-' and '.'."),
    N_("That nickname is taken."),
    N_("Too many new nicknames from your address; try again in a minute."),
    N_("The message store is unavailable; nothing was stored. Retry with the same client_id."),
)


def compile_catalogues(source: Path, target: Path) -> list[str]:
    """Compile every ``source/<lang>/LC_MESSAGES/chatapp.po`` that is newer than its ``.mo``
    in ``target`` (the same tree); the languages found. Fuzzy entries are left out, as
    msgfmt does. Written to a temporary name and renamed: processes starting together never
    read half a file."""
    from babel.messages.mofile import write_mo
    from babel.messages.pofile import read_po

    found = []
    for po in sorted(source.glob(f"*/LC_MESSAGES/{DOMAIN}.po")):
        lang = po.parent.parent.name
        found.append(lang)
        mo = target / lang / "LC_MESSAGES" / f"{DOMAIN}.mo"
        if mo.exists() and mo.stat().st_mtime >= po.stat().st_mtime:
            continue
        with open(po, "rb") as f:
            catalog = read_po(f, locale=lang, domain=DOMAIN)
        mo.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=mo.parent, prefix=f".{DOMAIN}-", suffix=".mo")
        with os.fdopen(fd, "wb") as f:
            write_mo(f, catalog, use_fuzzy=False)
        os.replace(tmp, mo)
    return found


def load() -> None:
    """Compile (where needed) and load the catalogues into Tornado; once per process."""
    if _loaded.is_set():  # every page asks: no lock once done
        return
    with _lock:
        if _loaded.is_set():  # another thread loaded them while this one waited
            return
        target = LOCALE_DIR
        try:
            compile_catalogues(LOCALE_DIR, target)
        except OSError as exc:  # a read-only install: compile into a directory of our own
            target = Path(tempfile.mkdtemp(prefix="chatapp-locale-"))
            log.info("compiling the catalogues into %s (%s)", target, exc)
            compile_catalogues(LOCALE_DIR, target)
        tornado.locale.set_default_locale(DEFAULT_LANGUAGE)
        tornado.locale.load_gettext_translations(str(target), DOMAIN)
        _loaded.set()


def choose(cookie: str | None, accept_language: str | None) -> str:
    """The language code for a request: the cookie's when valid, else Accept-Language's best
    match among LANGUAGES (quality values honoured), else the default."""
    if cookie is not None and cookie in LANGUAGES:
        return cookie
    ranked: list[tuple[float, int, str]] = []
    for i, part in enumerate((accept_language or "").split(",")):
        fields = part.strip().split(";")
        tag = fields[0].strip().lower()
        quality = 1.0
        for param in fields[1:]:
            name, _, value = param.strip().partition("=")
            if name == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        primary = tag.split("-")[0]
        if primary in LANGUAGES and quality > 0:
            ranked.append((-quality, i, primary))
    return min(ranked)[2] if ranked else DEFAULT_LANGUAGE


class LocaleMixin(tornado.web.RequestHandler):
    """For the page handlers: ``self.locale`` from the cookie or Accept-Language, and the
    template namespace the base template needs (languages, the client strings' JSON)."""

    def get_user_locale(self) -> tornado.locale.Locale:
        load()
        code = choose(self.get_cookie(LANG_COOKIE), self.request.headers.get("Accept-Language"))
        return tornado.locale.get(code)

    def get_template_namespace(self) -> dict[str, Any]:
        namespace = super().get_template_namespace()
        namespace["languages"] = LANGUAGES
        namespace["i18n_json"] = client_json(self.locale.code)
        return namespace


def remember(handler: tornado.web.RequestHandler, lang: str) -> None:
    """Set the language cookie (``lang`` must be one of LANGUAGES)."""
    if lang not in LANGUAGES:
        raise ValueError(lang)
    handler.set_cookie(LANG_COOKIE, lang, expires_days=LANG_COOKIE_DAYS, samesite="Lax",
                       secure=handler.request.protocol == "https")


def safe_next(target: str) -> str:
    """A path on this site to go back to; anything else (another host: ``//evil``,
    ``https://...``, a backslash trick) becomes ``/``."""
    if target.startswith("/") and not target.startswith(("//", "/\\")):
        return target
    return "/"


# ------------------------------------------------------------------------------ client


def plural_table(expression: str) -> list[int]:
    """The gettext plural form index for n = 0 .. PLURAL_TABLE_SIZE - 1.

    static/i18n.js cannot evaluate the catalogue's C expression (the page's CSP allows no
    eval), so the server evaluates it. The rules of every language compare only n, n % 10
    and n % 100 with numbers below 100, so for n >= 200 the form is that of
    100 + n % 100, which the table holds.
    """
    rule = gettext.c2py(expression)
    return [rule(n) for n in range(PLURAL_TABLE_SIZE)]


@lru_cache(maxsize=len(LANGUAGES))
def client_strings(code: str, locale_dir: Path = LOCALE_DIR) -> dict[str, Any]:
    """``{"lang", "plural", "messages"}`` for static/i18n.js: each string used in
    static/*.js (by its source text) to its translation, a list of forms for a plural.
    Untranslated and fuzzy entries are left out (the page shows the English)."""
    from babel.messages.plurals import get_plural
    from babel.messages.pofile import read_po

    messages: dict[str, Any] = {}
    expression = get_plural(code).plural_expr
    po = locale_dir / code / "LC_MESSAGES" / f"{DOMAIN}.po"
    if po.exists():
        with open(po, "rb") as f:
            catalog = read_po(f, locale=code, domain=DOMAIN)
        expression = catalog.plural_expr
        for message in catalog:
            if not message.id or message.fuzzy or not message.string:
                continue
            if not any(name.startswith("static/") for name, _ in message.locations):
                continue
            if isinstance(message.id, (tuple, list)):  # a plural: (singular, plural)
                forms = list(message.string)
                if all(forms):
                    messages[str(message.id[0])] = forms
            else:
                messages[message.id] = message.string
    return {"lang": code, "plural": plural_table(expression), "messages": messages}


@lru_cache(maxsize=len(LANGUAGES))
def client_json(code: str) -> str:
    """client_strings as JSON safe inside <script type="application/json">: no "<" at all,
    so neither "</script>" nor "<!--" can end or change the block."""
    text = json.dumps(client_strings(code), ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c")
