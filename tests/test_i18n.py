"""The pages in English, Russian and Vietnamese: catalogues complete, the right one chosen.

- Every string of the templates, of the join form's errors and of the ``tr()``/``trn()``
  markers in static/*.js has a non-empty, non-fuzzy translation in each catalogue (plural
  forms all filled, placeholders kept): a new string without one fails here.
- static/strings.js, the client's one table of English strings: every value is a marker call
  with literals (so the extraction sees it), and every key the other scripts ask for through
  ``chatapp.t``/``chatapp.tn`` is in it.
- Accept-Language and the remembered switch choose the language; the pages come out in it.
- The machinery: .po compiled to .mo when stale, client strings and plural tables for
  static/i18n.js.
"""

from __future__ import annotations

import gettext
import json
import os
import re
import shutil
from pathlib import Path

import pytest
from babel.messages.catalog import Catalog
from babel.messages.pofile import read_po, write_po

from chatapp import rules
from chatapp.errors import ChatError, store_unavailable
from chatapp.web import extract, locale
from tests.harness import Client
from tests.test_es5 import assert_es5

ROOT = Path(__file__).resolve().parents[1]
TRANSLATED = ("ru", "vi")
PLACEHOLDER = re.compile(r"%\(\w+\)[sd]|\{\w+\}")


def read_catalog(lang: str, locale_dir: Path = locale.LOCALE_DIR) -> Catalog:
    with open(locale_dir / lang / "LC_MESSAGES" / "chatapp.po", "rb") as f:
        return read_po(f, locale=lang, domain="chatapp")


def untranslated(template: Catalog, catalog: Catalog) -> list[str]:
    """What of ``template`` ``catalog`` cannot show: missing, fuzzy, empty (any plural form),
    or with other placeholders than the source."""
    problems = []
    for message in template:
        if not message.id:
            continue
        where = ", ".join(f"{f}:{n}" for f, n in message.locations)
        found = catalog.get(message.id)
        ids = message.id if isinstance(message.id, tuple) else (message.id,)
        if found is None or found.fuzzy:
            problems.append(f"{ids[0]!r} ({where}): no translation")
            continue
        forms = found.string if isinstance(found.string, tuple) else (found.string,)
        if not forms or not all(forms):
            problems.append(f"{ids[0]!r} ({where}): empty translation")
            continue
        wanted = sorted(set(PLACEHOLDER.findall(ids[-1])) | set(PLACEHOLDER.findall(ids[0])))
        for form in forms:
            if sorted(set(PLACEHOLDER.findall(form))) != wanted:
                problems.append(f"{ids[0]!r} ({where}): placeholders {form!r}")
    return problems


# ------------------------------------------------------------------------------ catalogues


def test_there_is_a_catalogue_for_each_language_but_english() -> None:
    assert extract.languages() == sorted(TRANSLATED)
    assert set(locale.LANGUAGES) == {"en", *TRANSLATED}


@pytest.mark.parametrize("lang", TRANSLATED)
def test_every_string_of_the_pages_and_scripts_is_translated(lang: str) -> None:
    template = extract.template_catalog()
    sources = {f.split("/")[0] for m in template for f, _ in m.locations}
    assert {"templates", "chatapp"} <= sources
    assert len(template) > 30  # the extraction found the pages' strings at all
    problems = untranslated(template, read_catalog(lang))
    assert not problems, f"{lang}: not in the catalogue:\n" + "\n".join(problems)


def test_the_check_catches_a_string_missing_from_the_catalogue(tmp_path: Path) -> None:
    """A new string in a template or a tr() marker in a script is found, and flagged; the
    keys other scripts ask for (chatapp.t("key")) are not messages."""
    (tmp_path / "templates").mkdir()
    (tmp_path / "static").mkdir()
    (tmp_path / "chatapp").mkdir()
    (tmp_path / "templates" / "x.html").write_text(
        '<p>{{ _("Send") }}</p>\n<p>{{ _("A brand new sentence") }}</p>\n'
        '{% set n = 2 %}<p>{{ _("%(n)d cat", "%(n)d cats", n) % {"n": n} }}</p>\n',
        encoding="utf-8")
    (tmp_path / "static" / "y.js").write_text(
        'var a = tr("Send"); var b = trn("{n} dog", "{n} dogs"); var c = tr("Also new");\n'
        'var d = chatapp.t("status.connecting"); var e = chatapp.tn("title.unread", 2);\n',
        encoding="utf-8")
    template = extract.template_catalog(tmp_path)
    ids = [m.id for m in template if m.id]
    assert ids == ["Send", "A brand new sentence", ("%(n)d cat", "%(n)d cats"),
                   ("{n} dog", "{n} dogs"), "Also new"]
    problems = untranslated(template, read_catalog("ru"))
    assert [p.split(" (")[0] for p in problems] == [
        "'A brand new sentence'", "'%(n)d cat'", "'{n} dog'", "'Also new'"]
    assert "templates/x.html:2" in problems[0]


def test_a_translation_that_loses_a_placeholder_is_flagged() -> None:
    template = Catalog(locale="ru")
    template.add("Message #%(room)s")
    catalog = Catalog(locale="ru")
    catalog.add("Message #%(room)s", "Сообщение")
    assert untranslated(template, catalog) == [
        "'Message #%(room)s' (): placeholders 'Сообщение'"]


def join_form_errors() -> list[str]:
    """Every refusal the join form can show, raised by the code that raises it."""
    shown = []
    for call in (lambda: rules.check_room("no spaces"), lambda: rules.check_nick(""),
                 lambda: rules.check_nick("a b")):
        with pytest.raises(ChatError) as refused:
            call()
        shown.append(refused.value.message)
    shown.append(store_unavailable().message)
    # Raised only against a database (sessions.py); their wording is checked in the source.
    sessions = (ROOT / "chatapp" / "sessions.py").read_text(encoding="utf-8")
    for message in ("That nickname is taken.",
                    "Too many new nicknames from your address; try again in a minute."):
        assert json.dumps(message) in sessions, f"sessions.py no longer says {message!r}"
        shown.append(message)
    return shown


def test_the_join_forms_errors_are_the_ones_marked_for_translation() -> None:
    assert sorted(join_form_errors()) == sorted(locale.PAGE_ERRORS)


# ------------------------------------------------------------------------------ choosing


@pytest.mark.parametrize(("cookie", "accept", "chosen"), [
    (None, None, "en"),
    (None, "ru-RU,ru;q=0.9,en-US;q=0.8,en;q=0.7", "ru"),
    (None, "vi-VN", "vi"),
    (None, "fr-FR, de;q=0.9, vi;q=0.5, ru;q=0.4", "vi"),  # the best one we have
    (None, "en;q=0.5, ru;q=0.9", "ru"),  # by quality, not position
    (None, "ru;q=0, vi;q=0.1", "vi"),  # q=0: "not this one"
    (None, "de, fr", "en"),
    (None, "ru;q=nonsense", "en"),
    ("vi", "ru-RU", "vi"),  # the switch wins over the browser
    ("xx", "ru-RU", "ru"),  # an unknown cookie value is ignored
    ("", "vi", "vi"),
])
def test_language_choice(cookie: str | None, accept: str | None, chosen: str) -> None:
    assert locale.choose(cookie, accept) == chosen


@pytest.mark.parametrize(("target", "back"), [
    ("/r/lobby", "/r/lobby"), ("/?room=x", "/?room=x"), ("//evil.example/", "/"),
    ("https://evil.example/", "/"), ("/\\evil.example", "/"), ("", "/"),
])
def test_the_switch_only_goes_back_to_this_site(target: str, back: str) -> None:
    assert locale.safe_next(target) == back


# ------------------------------------------------------------------------------ machinery


def test_catalogues_compile_when_stale_and_skip_fuzzy(tmp_path: Path) -> None:
    source = tmp_path / "src"
    shutil.copytree(locale.LOCALE_DIR, source, ignore=shutil.ignore_patterns("*.mo"))
    po = source / "ru" / "LC_MESSAGES" / "chatapp.po"
    catalog = read_catalog("ru", source)
    catalog["Send"].flags.add("fuzzy")
    with open(po, "wb") as f:
        write_po(f, catalog)
    target = tmp_path / "out"
    assert locale.compile_catalogues(source, target) == ["ru", "vi"]
    mo = target / "ru" / "LC_MESSAGES" / "chatapp.mo"
    ru = gettext.translation("chatapp", str(target), languages=["ru"])
    assert ru.gettext("Leave") == "Выйти"
    assert ru.gettext("Send") == "Send"  # fuzzy: not trusted, as msgfmt does
    assert ru.ngettext("one", "many", 5) == "many"
    built = mo.stat().st_mtime_ns
    locale.compile_catalogues(source, target)
    assert mo.stat().st_mtime_ns == built  # up to date: not rewritten
    catalog["Leave"].string = "Уйти"
    with open(po, "wb") as f:
        write_po(f, catalog)
    os.utime(po, ns=(built + 10**9, built + 10**9))  # edited after the build
    locale.compile_catalogues(source, target)
    with open(mo, "rb") as f:
        assert gettext.GNUTranslations(f).gettext("Leave") == "Уйти"


def test_plural_tables_hold_every_count() -> None:
    """static/i18n.js looks up n >= 200 as 100 + n % 100: true of these languages' rules."""
    from babel.messages.plurals import get_plural

    for lang in locale.LANGUAGES:
        expression = get_plural(lang).plural_expr
        rule = gettext.c2py(expression)
        table = locale.plural_table(expression)
        assert len(table) == locale.PLURAL_TABLE_SIZE
        for n in range(5000):
            looked_up = table[n] if n < len(table) else table[100 + n % 100]
            assert looked_up == rule(n), (lang, n)
    ru = locale.plural_table(get_plural("ru").plural_expr)
    assert [ru[n] for n in (1, 2, 5, 11, 12, 21, 22, 25, 111, 121)] == [0, 1, 2, 2, 2, 0, 1, 2, 2, 0]


def test_client_strings_are_the_scripts_translations(tmp_path: Path) -> None:
    catalog = Catalog(locale="ru", domain="chatapp")
    catalog.add("Send", "Отправить", locations=[("static/chat.js", 3)])
    catalog.add(("{n} file", "{n} files"), ("{n} файл", "{n} файла", "{n} файлов"),
                locations=[("static/chat.js", 4)])
    catalog.add("Only on the server", "Только на сервере", locations=[("templates/x.html", 1)])
    catalog.add("Doubtful", "Сомнительно", locations=[("static/chat.js", 5)], flags=["fuzzy"])
    catalog.add("Untranslated", "", locations=[("static/chat.js", 6)])
    catalog.add(("{n} dog", "{n} dogs"), ("{n} собака", "", ""),
                locations=[("static/chat.js", 7)])
    path = tmp_path / "ru" / "LC_MESSAGES" / "chatapp.po"
    path.parent.mkdir(parents=True)
    with open(path, "wb") as f:
        write_po(f, catalog)
    strings = locale.client_strings("ru", tmp_path)
    assert strings["lang"] == "ru"
    assert strings["messages"] == {
        "Send": "Отправить", "{n} file": ["{n} файл", "{n} файла", "{n} файлов"]}
    assert strings["plural"][:6] == [2, 0, 1, 1, 1, 2]
    assert locale.client_strings("en", tmp_path)["plural"][:3] == [1, 0, 1]


def test_i18n_js_is_es5() -> None:
    assert_es5(ROOT / "static" / "i18n.js")


def test_client_json_cannot_end_its_script_block() -> None:
    for code in locale.LANGUAGES:
        text = locale.client_json(code)
        assert "<" not in text
        assert json.loads(text)["lang"] == code


def test_merge_brings_back_an_obsolete_translation() -> None:
    """Translations written before the code that uses them (chat.js) survive an update
    and return when the string appears."""
    catalog = Catalog(locale="ru")
    catalog.add("Kept", "Оставлено")
    template = Catalog()
    template.add("New", locations=[("static/chat.js", 1)])
    extract.merge(catalog, template)
    assert catalog.get("Kept") is None and "Kept" in catalog.obsolete
    assert not catalog["New"].string
    template.add("Kept", locations=[("static/chat.js", 2)])
    extract.merge(catalog, template)
    assert catalog["Kept"].string == "Оставлено"
    assert catalog["Kept"].locations == [("static/chat.js", 2)]


# ------------------------------------------------------------------------------ the pages


def html_lang(body: str) -> str:
    match = re.search(r'<html lang="([^"]+)"', body)
    assert match, body[:200]
    return match.group(1)


def embedded_strings(body: str) -> dict[str, object]:
    match = re.search(r'<script type="application/json" id="i18n">(.*?)</script>', body, re.DOTALL)
    assert match, "no i18n block in the page"
    return json.loads(match.group(1))


@pytest.mark.gen_test(timeout=60)
async def test_pages_in_the_browsers_language_and_the_remembered_switch(servers) -> None:
    srv = await servers.start()
    client = Client(srv.url)
    russian = {"Accept-Language": "ru-RU,ru;q=0.9,en;q=0.5"}

    page = (await client.request("GET", "/", headers=russian)).body.decode()
    assert html_lang(page) == "ru"
    assert "Войти в комнату — chatapp" in page and ">Ник</label>" in page
    assert embedded_strings(page)["lang"] == "ru"
    assert 'aria-pressed="true"><span aria-hidden="true">RU' in page

    # Refused in the reader's language.
    refused = await client.request("POST", "/join", form={"nick": "a b", "room": "lobby"},
                                   headers=russian)
    assert refused.code == 400
    assert "Ник может содержать только буквы" in refused.body.decode()

    # The switch: remembered over the browser's language, and back where it was used.
    switched = await client.request("POST", "/lang", form={"lang": "vi", "next": "/?room=x"},
                                    headers=russian)
    assert switched.code == 303 and switched.headers["Location"] == "/?room=x"
    assert client.cookies[locale.LANG_COOKIE] == "vi"
    page = (await client.request("GET", "/?room=x", headers=russian)).body.decode()
    assert html_lang(page) == "vi" and ">Biệt danh</label>" in page

    joined = await client.request("POST", "/join", form={"nick": "linh", "room": "lobby"})
    assert joined.code == 303
    room = (await client.request("GET", "/r/lobby", headers=russian)).body.decode()
    assert html_lang(room) == "vi"
    assert 'placeholder="Nhắn vào #lobby"' in room and ">Gửi</button>" in room
    assert "bạn là <strong" in room and ">linh</strong>" in room

    english = await client.request("POST", "/lang", form={"lang": "en", "next": "/r/lobby"})
    assert english.headers["Location"] == "/r/lobby"
    room = (await client.request("GET", "/r/lobby", headers=russian)).body.decode()
    assert html_lang(room) == "en" and ">Send</button>" in room
    assert embedded_strings(room)["messages"] == {}


@pytest.mark.gen_test(timeout=60)
async def test_the_switch_refuses_what_it_does_not_know(servers) -> None:
    srv = await servers.start()
    client = Client(srv.url)
    bad = await client.request("POST", "/lang", form={"lang": "xx", "next": "/"})
    assert bad.code == 400 and locale.LANG_COOKIE not in client.cookies
    forged = await client.request("POST", "/lang", form={"lang": "ru"}, xsrf=False)
    assert forged.code == 403 and locale.LANG_COOKIE not in client.cookies
    away = await client.request("POST", "/lang", form={"lang": "ru", "next": "//evil.example"})
    assert away.code == 303 and away.headers["Location"] == "/"
