"""static/*.js stays ES5: old browsers are users too. Every file there is checked.

esprima (pure Python, no node at test time) parses up to ES2017, so parsing alone accepts
``let`` or arrow functions. The check therefore walks the syntax tree and the tokens and fails
on every construct newer than ES5 (and on ES2015+ built-ins an ES5 browser lacks, such as
``Promise`` and ``fetch``). What esprima cannot parse at all (``?.``, ``??``) fails as a
syntax error. The self-tests below prove each rule can fail.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import esprima
import pytest
from esprima.nodes import Node

ROOT = Path(__file__).resolve().parents[1]
STATIC_JS = sorted((ROOT / "static").glob("*.js"))
CHAT_JS = ROOT / "static" / "chat.js"
ROOM_TEMPLATE = ROOT / "templates" / "room.html"

# Node types that do not exist in ES5, with what a reader would call them.
ES2015_NODES = {
    "ArrowFunctionExpression": "arrow function",
    "ClassDeclaration": "class",
    "ClassExpression": "class",
    "MethodDefinition": "class method",
    "Super": "super",
    "TemplateLiteral": "template string",
    "TaggedTemplateExpression": "tagged template",
    "ForOfStatement": "for...of",
    "SpreadElement": "spread (...)",
    "RestElement": "rest parameter or element (...)",
    "AssignmentPattern": "default value (a = 1)",
    "ArrayPattern": "destructuring",
    "ObjectPattern": "destructuring",
    "YieldExpression": "yield",
    "AwaitExpression": "await",
    "MetaProperty": "new.target",
    "Import": "import()",
    "ImportDeclaration": "import",
    "ExportNamedDeclaration": "export",
    "ExportDefaultDeclaration": "export",
    "ExportAllDeclaration": "export",
}
# Globals an ES5 browser does not have. Feature-detect through ``window.X`` if ever needed.
ES2015_GLOBALS = {
    "Promise", "fetch", "Symbol", "Map", "Set", "WeakMap", "WeakSet", "Proxy", "Reflect",
    "AbortController", "URLSearchParams", "TextEncoder", "TextDecoder", "globalThis",
    "queueMicrotask", "structuredClone",
}
ES2015_STATICS = {
    "Object": {"assign", "entries", "values", "fromEntries", "getOwnPropertySymbols", "is"},
    "Array": {"from", "of"},
    "Number": {"isNaN", "isFinite", "isInteger", "parseFloat", "parseInt", "EPSILON"},
    "String": {"raw", "fromCodePoint"},
    "Math": {"trunc", "sign", "log2", "log10", "hypot", "cbrt", "imul", "fround", "clz32"},
}
ES2015_METHODS = {
    "includes", "startsWith", "endsWith", "padStart", "padEnd", "repeat", "findIndex",
    "codePointAt", "normalize", "flatMap", "trimStart", "trimEnd",
}
FUNCTIONS = ("FunctionDeclaration", "FunctionExpression")


def _children(node: Node):
    for value in vars(node).values():
        if isinstance(value, Node):
            yield value
        elif isinstance(value, list):
            yield from (v for v in value if isinstance(v, Node))


def _walk(node: Node, parents: tuple[Node, ...] = ()):
    yield node, parents
    for child in _children(node):
        yield from _walk(child, parents + (node,))


def _problem(node: Node, parents: tuple[Node, ...]) -> str | None:
    kind = node.type
    if kind in ES2015_NODES:
        return ES2015_NODES[kind]
    if kind == "VariableDeclaration" and node.kind != "var":
        return f"`{node.kind}` declaration (use var)"
    if kind in FUNCTIONS + ("ArrowFunctionExpression",):
        if getattr(node, "generator", False):
            return "generator function"
        if getattr(node, "isAsync", False) or getattr(node, "async", False):
            return "async function"
    if kind == "FunctionDeclaration" and parents:
        parent = parents[-1]
        in_function_body = (
            parent.type == "BlockStatement" and len(parents) > 1
            and parents[-2].type in FUNCTIONS
        )
        if parent.type != "Program" and not in_function_body:
            return "function declared inside a block (an error in ES5 strict mode)"
    if kind == "Property":
        if node.shorthand:
            return "shorthand property ({a})"
        if node.method:
            return "shorthand method ({m() {}})"
        if node.computed:
            return "computed property name ({[k]: v})"
    if kind in ("BinaryExpression", "AssignmentExpression") and node.operator.startswith("**"):
        return "exponent operator (**)"
    if kind == "Literal":
        regex = getattr(node, "regex", None)
        if regex is not None and set(regex.flags) - set("gim"):
            return f"regular expression flag(s) {''.join(sorted(set(regex.flags) - set('gim')))}"
        raw = node.raw or ""
        if re.match(r"0[bBoO]", raw):
            return "binary or octal literal (0b, 0o)"
        if raw[:1] in "'\"" and re.search(r"(?<!\\)(\\\\)*\\u\{", raw):
            return "code point escape (\\u{...})"
    if kind == "Identifier" and node.name in ES2015_GLOBALS:
        parent = parents[-1] if parents else None
        is_property_name = parent is not None and (
            (parent.type == "MemberExpression" and parent.property is node and not parent.computed)
            or (parent.type == "Property" and parent.key is node and not parent.computed)
        )
        if not is_property_name:
            return f"{node.name} (not in ES5 browsers)"
    if kind == "MemberExpression" and not node.computed and node.property.type == "Identifier":
        name = node.property.name
        obj = node.object
        if obj.type == "Identifier" and name in ES2015_STATICS.get(obj.name, ()):
            return f"{obj.name}.{name} (not in ES5 browsers)"
        if name in ES2015_METHODS:
            return f".{name}() (not in ES5 browsers)"
    return None


def es5_problems(source: str) -> list[str]:
    """Everything in ``source`` that an ES5 engine would not run; [] for plain ES5."""
    try:
        tree = esprima.parseScript(source, {"loc": True, "tokens": True})
    except esprima.Error as exc:
        return [f"syntax error (or syntax newer than ES2017): {exc}"]
    problems = []
    for node, parents in _walk(tree):
        problem = _problem(node, parents)
        if problem:
            problems.append(f"line {node.loc.start.line}: {problem}")
    tokens = tree.tokens
    for token, following in itertools.pairwise(tokens):
        if token.type == "Template":
            problems.append(f"line {token.loc.start.line}: template string")
        if token.value == "," and following.value == ")":
            problems.append(
                f"line {token.loc.start.line}: trailing comma in arguments or parameters"
            )
    return sorted(set(problems), key=lambda p: int(p.split()[1].rstrip(":")))


def assert_es5(path: Path) -> None:
    problems = es5_problems(path.read_text(encoding="utf-8"))
    assert not problems, f"{path.name} is not ES5:\n" + "\n".join(problems)


@pytest.mark.parametrize("path", STATIC_JS, ids=[p.name for p in STATIC_JS])
def test_static_js_is_es5(path: Path) -> None:
    assert_es5(path)


def test_every_static_file_is_checked_and_loaded_by_the_room_page() -> None:
    # A file added to static/ is parsed above (glob); one the room page does not load is a
    # mistake either way (dead code, or a page that misses a part).
    names = [p.stem for p in STATIC_JS]
    assert "chat" in names and len(names) >= 5, names
    listed = re.search(r"{% for name in \(([^)]*)\) %}", ROOM_TEMPLATE.read_text(encoding="utf-8"))
    assert listed, "templates/room.html no longer lists its scripts in one loop"
    loaded = re.findall(r'"([a-z]+)"', listed.group(1))
    assert sorted(loaded) == sorted(names)
    assert loaded[0] == "strings" and loaded[1] == "core" and loaded[-1] == "chat"


# -- the checker itself: each rule must be able to fail ------------------------------------------

NOT_ES5 = [
    "let x = 1;",
    "const x = 1;",
    "for (let i = 0; i < 3; i++) {}",
    "var f = () => 1;",
    "var f = function () { return [1].map(x => x * 2); };",
    "var s = `hello ${name}`;",
    "var s = tag`x`;",
    "class A {}",
    "var A = class {};",
    "for (var x of xs) {}",
    "f(...args);",
    "var a = [...b];",
    "var o = {...b};",
    "function f(a = 1) {}",
    "function f(...rest) {}",
    "var o = {a, b};",
    "var o = {m() { return 1; }};",
    "var o = {[key]: 1};",
    "var {a} = o;",
    "var [a, b] = xs;",
    "function* g() { yield 1; }",
    "async function f() { await g(); }",
    "var y = x ** 2;",
    "var r = /a/u;",
    "var r = /a/y;",
    "var n = 0b101;",
    "var n = 0o17;",
    "var s = '\\u{1F600}';",
    "function f() { return new.target; }",
    "(function () { 'use strict'; if (x) { function g() {} } }());",
    "f(a, b,);",
    "function f(a, b,) {}",
    "var p = new Promise(function (resolve) { resolve(); });",
    "fetch('/api/session');",
    "var m = new Map();",
    "var o = Object.assign({}, a);",
    "var a = Array.from(xs);",
    "if (s.includes('x')) {}",
    "if (s.startsWith('x')) {}",
    "var a = b?.c;",
    "var a = b ?? c;",
    "import x from 'y';",
]

ES5 = [
    "var x = 1;",
    "(function () { 'use strict'; function inner() { return 1; } return inner(); }());",
    "var o = {a: 1, 'b': 2, get c() { return 3; }, set c(v) {}};",
    "var o = {a: 1, b: 2,}; var xs = [1, 2,];",
    "var r = /a\\/b/gim;",
    "var s = 'a\\u00e9b';",
    "var n = 0x1F + 1e3;",
    "try { f(); } catch (e) { g(e); } finally { h(); }",
    "var d = o['default']; var e = o.default; var c = o.class;",
    "if (window.Promise) { window.Promise.resolve(); }",
    "var f = Object.freeze({}); var k = Object.keys(f); var t = JSON.stringify(k);",
    "var s = 'abc'.indexOf('b') >= 0 ? 'abc'.slice(1) : 'x';",
]


@pytest.mark.parametrize("source", NOT_ES5)
def test_checker_rejects_newer_syntax(source: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.js"
    path.write_text(source, encoding="utf-8")
    with pytest.raises(AssertionError):
        assert_es5(path)


@pytest.mark.parametrize("source", ES5)
def test_checker_accepts_es5(source: str) -> None:
    assert es5_problems(source) == []


def test_checker_rejects_chat_js_with_one_let_added(tmp_path: Path) -> None:
    path = tmp_path / "chat.js"
    path.write_text(CHAT_JS.read_text(encoding="utf-8") + "\nlet x = 1;\n", encoding="utf-8")
    with pytest.raises(AssertionError, match=r"`let` declaration"):
        assert_es5(path)
