"""Which strings the catalogues must hold: Babel's extraction over the pages and scripts.

Three kinds of source, one configuration (``METHODS``, ``KEYWORDS``), used both by
``python -m chatapp.web.extract`` (rewrites ``chatapp/locale/chatapp.pot`` and merges it into
every ``<lang>/LC_MESSAGES/chatapp.po``) and by ``tests/test_i18n.py`` (fails when a string
has no translation):

- ``templates/*.html``: Tornado templates. ``extract_tornado`` hands the Python inside each
  ``{{ ... }}`` and ``{% ... %}`` to Babel's Python extractor. ``_("text")`` is a message;
  ``_("one", "many", count)`` (Tornado's ``locale.translate``) a plural one.
- ``chatapp/**.py``: ``N_("text")`` marks a string translated later (the join form's
  error messages, ``chatapp/web/locale.py``); ``_()`` as in the templates.
- ``static/*.js``: Babel's JavaScript extractor; ``tr("text")`` and ``trn("one", "many")``
  are the markers of ``static/strings.js``, the one table of the client's English strings
  (they look the text up through ``static/i18n.js``). Every other script asks for its words
  by key, ``chatapp.t("status.connecting", {args})`` / ``chatapp.tn(key, n, {args})``: those
  keys are not messages, and ``t``/``tn`` are deliberately no keywords here.

The trap: only literal strings are found. ``tr(name)`` or ``_("a" + b)`` extract nothing and
show English; put the whole sentence in the call, with placeholders (``%(name)s`` in Python,
``{name}`` in JavaScript).

Merging keeps obsolete entries (``#~``) and brings one back, translation and all, when its
string is used again: translations can be written before the code that uses them lands.
"""

from __future__ import annotations

import io
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from babel.messages.catalog import Catalog
from babel.messages.extract import extract, extract_from_dir
from babel.messages.pofile import read_po, write_po

ROOT = Path(__file__).resolve().parents[2]
LOCALE_DIR = ROOT / "chatapp" / "locale"
DOMAIN = "chatapp"
# (pattern relative to the project's root, Babel method): the first that matches wins.
METHODS = [
    ("templates/**.html", "chatapp.web.extract:extract_tornado"),
    ("chatapp/**.py", "python"),
    ("static/**.js", "javascript"),
]
# _ with one argument: a message; with three (Tornado's translate(one, many, count)): a
# plural. tr/trn: the markers of static/strings.js (not t/tn, which take keys).
KEYWORDS: dict[str, Any] = {
    "_": {None: None, 3: (1, 2)},
    "N_": None,
    "tr": None,
    "trn": (1, 2),
}
# "# TRANSLATORS: ..." just above a call reaches the translator.
COMMENT_TAGS = ["TRANSLATORS:"]
# {{ expression }} and {% statement %}; {# comments #} and text outside are not code.
_CODE = re.compile(r"\{\{(.*?)\}\}|\{%(.*?)%\}", re.DOTALL)


def extract_tornado(
    fileobj: IO[bytes], keywords: Any, comment_tags: Any, options: dict[str, Any]
) -> Iterator[tuple[int, str, Any, list[str]]]:
    """Babel extraction method for Tornado templates (``{{ _("...") }}``)."""
    source = fileobj.read().decode(options.get("encoding", "utf-8"))
    for match in _CODE.finditer(source):
        code = match.group(1) if match.group(1) is not None else match.group(2)
        first_line = source.count("\n", 0, match.start()) + 1
        for lineno, funcname, messages, comments in _python_messages(
            code, keywords, comment_tags
        ):
            yield first_line + lineno - 1, funcname, messages, comments


def _python_messages(code: str, keywords: Any, comment_tags: Any) -> Iterator[Any]:
    from babel.messages.extract import extract_python

    yield from extract_python(io.BytesIO(code.encode("utf-8")), keywords, comment_tags, {})


def template_catalog(root: Path = ROOT) -> Catalog:
    """Every translatable string of the project, with where it is used (the ``.pot``)."""
    catalog = Catalog(domain=DOMAIN, project="chatapp", charset="utf-8")
    for path in ("templates", "chatapp", "static"):
        method_map = [(p.split("/", 1)[1], m) for p, m in METHODS if p.startswith(path)]
        for filename, lineno, message, comments, context in extract_from_dir(
            root / path, method_map, keywords=KEYWORDS, comment_tags=COMMENT_TAGS,
            strip_comment_tags=True,
        ):
            catalog.add(message, None, [(f"{path}/{filename}", lineno)],
                        auto_comments=comments, context=context)
    return catalog


def extract_file(method: str, source: bytes) -> list[Any]:
    """The messages ``method`` finds in ``source`` (for tests of one snippet)."""
    return list(extract(method, io.BytesIO(source), keywords=KEYWORDS,
                        comment_tags=COMMENT_TAGS))


def languages(locale_dir: Path = LOCALE_DIR) -> list[str]:
    """The languages that have a catalogue (``<lang>/LC_MESSAGES/chatapp.po``)."""
    return sorted(p.parent.parent.name for p in locale_dir.glob(f"*/LC_MESSAGES/{DOMAIN}.po"))


def merge(catalog: Catalog, template: Catalog) -> None:
    """``template``'s strings into ``catalog``: new ones empty, gone ones obsolete, and an
    obsolete one that is used again brought back with its translation."""
    for key in list(catalog.obsolete):
        if key in template:
            catalog[key] = catalog.obsolete.pop(key)
    catalog.update(template, no_fuzzy_matching=True)


def update(locale_dir: Path = LOCALE_DIR) -> list[Path]:
    """Rewrite the ``.pot`` and merge it into every ``.po``; the files written."""
    template = template_catalog()
    written = [locale_dir / f"{DOMAIN}.pot"]
    with open(written[0], "wb") as f:
        write_po(f, template, width=100, omit_header=False, sort_output=False)
    for lang in languages(locale_dir):
        path = locale_dir / lang / "LC_MESSAGES" / f"{DOMAIN}.po"
        with open(path, "rb") as f:
            catalog = read_po(f, locale=lang, domain=DOMAIN)
        merge(catalog, template)
        with open(path, "wb") as f:
            write_po(f, catalog, width=100, include_previous=False)
        written.append(path)
    return written


def main(argv: list[str]) -> int:
    """``python -m chatapp.web.extract [init LANG]``: update the catalogues (or add one)."""
    if argv[:1] == ["init"] and len(argv) == 2:
        lang = argv[1]
        path = LOCALE_DIR / lang / "LC_MESSAGES" / f"{DOMAIN}.po"
        path.parent.mkdir(parents=True, exist_ok=True)
        catalog = Catalog(locale=lang, domain=DOMAIN, project="chatapp", charset="utf-8")
        with open(path, "wb") as f:
            write_po(f, catalog, width=100)
    elif argv:
        print(main.__doc__, file=sys.stderr)
        return 2
    for path in update():
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
