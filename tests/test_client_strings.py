"""static/strings.js is the browser client's one table of English strings, and it is whole.

- Every value of its STRINGS table is a marker call with literal strings: ``tr("text")`` or
  ``trn("one", "many")``. Those are the extraction keywords (chatapp/web/extract.py), so a
  string added any other way (a bare literal, ``tr(name)``, ``tr("a" + b)``) would never
  reach the catalogue and would stay English: it fails here.
- Every key another script asks for, ``chatapp.t("key")`` / ``chatapp.tn("key", n)`` (or
  through its local ``var t = chatapp.t``), is in the table; ``tn`` asks for plural entries.
- The extraction takes the markers' strings, and none of the keys, as messages.

Parsed with esprima, like tests/test_es5.py: no node at test time. The self-tests below run
the same checks on snippets, so each rule is shown to fail.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import esprima
from esprima.nodes import Node

from chatapp.web import extract

ROOT = Path(__file__).resolve().parents[1]
STRINGS_JS = ROOT / "static" / "strings.js"
# Markers and how many literal arguments each takes (static/strings.js).
MARKERS = {"tr": 1, "trn": 2}
# Files that define the lookups rather than use them.
DEFINERS = {"strings.js", "i18n.js"}


def walk(node: Any) -> Iterator[Node]:
    if isinstance(node, Node):
        yield node
        for value in vars(node).values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def parse(source: str) -> Node:
    return esprima.parseScript(source, {"loc": True})


def table(source: str) -> Node:
    """The object literal assigned to ``var STRINGS``."""
    for node in walk(parse(source)):
        if (node.type == "VariableDeclarator" and node.id.name == "STRINGS"
                and node.init is not None and node.init.type == "ObjectExpression"):
            return node.init
    raise AssertionError("no `var STRINGS = {...}` in strings.js")


def is_text(node: Node) -> bool:
    return node.type == "Literal" and isinstance(node.value, str)


def entries(source: str) -> tuple[dict[str, tuple[str, ...]], list[str]]:
    """The table's entries ({key: marker's strings}, plural ones with two) and the problems:
    a value that is not a marker call with literal strings."""
    found: dict[str, tuple[str, ...]] = {}
    problems = []
    for prop in table(source).properties:
        key = prop.key.value if is_text(prop.key) else getattr(prop.key, "name", "?")
        value = prop.value
        line = prop.loc.start.line
        callee = value.callee if value.type == "CallExpression" else None
        name = callee.name if callee is not None and callee.type == "Identifier" else None
        if name not in MARKERS:
            problems.append(f"{key!r} (line {line}): not wrapped in tr(...) or trn(...)")
        elif len(value.arguments) != MARKERS[name] or not all(map(is_text, value.arguments)):
            problems.append(f"{key!r} (line {line}): {name}() needs {MARKERS[name]} literal "
                            "string(s), nothing computed")
        else:
            found[key] = tuple(a.value for a in value.arguments)
    return found, problems


def lookup_name(callee: Node, aliases: set[str]) -> str | None:
    """"t" or "tn" when the call is chatapp.t/chatapp.tn (or a local alias of chatapp.t)."""
    if callee.type == "Identifier" and callee.name in aliases:
        return "t"
    if (callee.type == "MemberExpression" and not callee.computed
            and callee.object.type == "Identifier" and callee.object.name == "chatapp"
            and callee.property.name in ("t", "tn")):
        return str(callee.property.name)
    return None


def key_shapes(node: Node) -> Iterator[tuple[str, str]]:
    """("key", k) for a literal key, ("prefix", p) for "p" + something; nothing for a
    variable (checked where it is chosen, e.g. events.js's hasOwnProperty)."""
    if is_text(node):
        yield "key", node.value
    elif node.type == "ConditionalExpression":
        yield from key_shapes(node.consequent)
        yield from key_shapes(node.alternate)
    elif node.type == "BinaryExpression" and node.operator == "+" and is_text(node.left):
        yield "prefix", node.left.value


def asked_for(source: str) -> list[tuple[str, str, str, int]]:
    """(lookup, shape, key, line) of every chatapp.t/tn call in a script."""
    tree = parse(source)
    aliases = {
        node.id.name for node in walk(tree)
        if node.type == "VariableDeclarator" and node.init is not None
        and node.init.type == "MemberExpression" and not node.init.computed
        and getattr(node.init.object, "name", None) == "chatapp"
        and node.init.property.name == "t"
    }
    asked = []
    for node in walk(tree):
        if node.type != "CallExpression" or not node.arguments:
            continue
        name = lookup_name(node.callee, aliases)
        if name:
            for shape, key in key_shapes(node.arguments[0]):
                asked.append((name, shape, key, node.loc.start.line))
    return asked


def missing_keys(scripts: dict[str, str], known: dict[str, tuple[str, ...]]) -> list[str]:
    problems = []
    for filename, source in sorted(scripts.items()):
        for name, shape, key, line in asked_for(source):
            where = f"{filename}:{line}"
            if shape == "prefix":
                if not any(k.startswith(key) for k in known):
                    problems.append(f"{where}: no key starts with {key!r}")
            elif key not in known:
                problems.append(f"{where}: {key!r} is not in STRINGS")
            elif name == "tn" and len(known[key]) != 2:
                problems.append(f"{where}: {key!r} is asked for a count but is not trn()")
    return problems


def static_scripts() -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted((ROOT / "static").glob("*.js"))
            if p.name not in DEFINERS}


# ------------------------------------------------------------------------------ the table


def test_every_client_string_is_a_marker_call_with_literals() -> None:
    found, problems = entries(STRINGS_JS.read_text(encoding="utf-8"))
    assert not problems, "static/strings.js:\n" + "\n".join(problems)
    assert len(found) > 50  # the table was found at all
    assert len(found["status.retry"]) == 2  # a count shown: a plural entry


def test_every_key_the_scripts_ask_for_is_in_the_table() -> None:
    found, _ = entries(STRINGS_JS.read_text(encoding="utf-8"))
    scripts = static_scripts()
    asked = {key for source in scripts.values() for _, _, key, _ in asked_for(source)}
    assert {"send.sending", "title.unread", "account.register", "status."} <= asked  # calls found
    problems = missing_keys(scripts, found)
    assert not problems, "\n".join(problems)


def test_the_catalogue_holds_the_markers_strings_and_no_keys() -> None:
    found, _ = entries(STRINGS_JS.read_text(encoding="utf-8"))
    ids = {m.id for m in extract.template_catalog() if m.id}
    for key, strings in found.items():
        assert (strings if len(strings) == 2 else strings[0]) in ids, key
        assert key not in ids, f"the key {key!r} was extracted as a message"


# ------------------------------------------------------------------------------ self-tests


def test_a_string_not_in_a_marker_is_flagged() -> None:
    source = """(function () {
      var name = "x";
      var STRINGS = {
        "a.ok": tr("Fine"),
        "b.ok": trn("{n} cat", "{n} cats"),
        "c.bare": "Not wrapped",
        "d.computed": tr(name),
        "e.built": tr("a" + "b"),
        "f.half": trn("{n} dog"),
        "g.other": t("Wrong marker")
      };
    }());"""
    found, problems = entries(source)
    assert found == {"a.ok": ("Fine",), "b.ok": ("{n} cat", "{n} cats")}
    assert [p.split(" (")[0] for p in problems] == [
        "'c.bare'", "'d.computed'", "'e.built'", "'f.half'", "'g.other'"]


def test_a_key_not_in_the_table_is_flagged() -> None:
    known = {"a.one": ("One",), "b.many": ("{n} x", "{n} xs"), "status.on": ("on",)}
    scripts = {"x.js": """(function () {
      var t = chatapp.t;
      var c = { t: function () {} };
      t("a.one"); chatapp.t("b.many", {n: 2}); chatapp.tn("b.many", 3);
      t("missing.one"); chatapp.t(yes ? "a.one" : "missing.two");
      chatapp.tn("a.one", 2); t("status." + state); t("nothing." + state);
      c.t("not.a.lookup"); t(variable);
    }());"""}
    assert missing_keys(scripts, known) == [
        "x.js:5: 'missing.one' is not in STRINGS",
        "x.js:5: 'missing.two' is not in STRINGS",
        "x.js:6: 'a.one' is asked for a count but is not trn()",
        "x.js:6: no key starts with 'nothing.'",
    ]
