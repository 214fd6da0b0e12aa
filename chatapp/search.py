"""Search text: normalisation, the terms a message is indexed under, and query matching.

Pure functions, no I/O: ``chatapp.store`` writes ``index_fields(doc)`` into each message document
(in the same transaction as the event) and asks MongoDB for the messages holding every term
of ``Query.terms``; ``Query.matches`` then checks each candidate's text exactly. docs/SEARCH.md
says what matches what; this module is that page in code.

Normalisation (``normalize``), the same for a message and for a query:

1. NFKC (full-width and half-width forms, ligatures, compatibility characters), casefold
   (``ß`` -> ``ss``, ``Σ``/``ς`` -> ``σ``), NFKC again (casefold's output need not be NFKC).
2. NFD, then ``DROPPED_RANGES`` removed: the diacritics of Latin, Greek and Cyrillic (the
   combining-mark blocks: ``ё`` -> ``е``, ``ơ`` -> ``o``, ``İ`` -> casefold ``i̇`` -> ``i``),
   Arabic harakat and tatweel, Hebrew points, emoji skin tones and variation selectors
   (``👍🏽`` is ``👍``). Marks of other scripts are spelling, not decoration (Thai vowel and
   tone marks, Devanagari vowel signs, Japanese dakuten: ``が`` stays apart from ``か``), and
   are kept.
3. Letters that are not "a letter plus a mark" but are searched as one: ``FOLD_LETTERS``
   (``đ`` -> ``d``, dotless ``ı`` -> ``i``, ``ł`` -> ``l``, ``ø`` -> ``o``, ...).
4. NFC (Hangul syllables, split by NFD, are composed again).

Tokens (``tokens``): runs of word characters (``\\w``: letters, marks, digits, ``_``) and emoji.
A run is split where it passes between scripts written with spaces and scripts written
without (``UNSPACED_CLASS``: Han, Hiragana, Katakana, Thai, Lao, Khmer, Myanmar, and Hangul,
whose words carry particles: ``한국`` finds ``한국어를``): an unspaced run is one token,
found by any part of it, through its characters and character bigrams.

The trap: index and query must normalise with the very same tables. Those come from Python's
``unicodedata`` and the pinned ``regex`` package; a change of either (or of anything here)
must bump ``INDEX_VERSION``, which makes the upgrade task (``chatapp/reindex.py``) index every
message again.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from typing import Any

import regex

from chatapp.rules import nick_key

# Bump on any change to what a text is indexed under (tables, rules, term encoding): stored
# messages with another ``tv`` are indexed again by the upgrade task.
INDEX_VERSION = 1
# The contract: a query is at most 200 characters.
MAX_QUERY_CHARS = 200
# Words longer than this are indexed by their first MAX_TERM_CHARS characters (the exact check
# of each candidate then tells a 60-letter word from another with the same start): keeps index
# keys small whatever people paste.
MAX_TERM_CHARS = 32
# The last word of a query matches as a prefix through "prefix terms", the first 1..PREFIX_MAX
# characters of each word, written ``pre*``. A longer typed prefix uses its first PREFIX_MAX
# characters as the term, and the exact check does the rest. 4 keeps the index about 3 times
# the size of a words-only one (docs/BENCHMARKS.md) while a 4-character prefix is selective.
PREFIX_MAX = 4
# A query asks MongoDB for at most this many terms (a long pasted CJK phrase has a bigram per
# character): the first ones already narrow the candidates, the exact check does the rest.
MAX_QUERY_TERMS = 6
PREFIX_MARK = "*"  # not a word character: a prefix term never equals a word
FROM_MARK = "from:"  # ditto: the sender's term, "from:" + the nickname's key

# Letters searched as the plain letter that NFD does not reach (they do not decompose).
FOLD_LETTERS = {
    "đ": "d",  # Vietnamese, Serbo-Croatian (casefold of Đ)
    "ı": "i",  # Turkish dotless i (İ casefolds to i + a combining dot, removed as a mark)
    "ł": "l",  # Polish
    "ø": "o",  # Danish, Norwegian
    "ħ": "h",  # Maltese
    "ŧ": "t",  # Sami
    "ð": "d",  # Icelandic
    "þ": "th",  # Icelandic
    "æ": "ae",
    "œ": "oe",
}
# Characters dropped after NFD, as (first, last) code points:
DROPPED_RANGES = [
    # Diacritics: the combining-mark blocks that Latin, Greek and Cyrillic use (accents,
    # horn, breve, diaeresis, the dot of İ, Cyrillic titlo). Thai, Indic, Japanese (dakuten)
    # and other scripts have their marks in their own blocks: those are spelling, and kept.
    (0x0300, 0x036F), (0x0483, 0x0489), (0x1AB0, 0x1AFF), (0x1DC0, 0x1DFF),
    (0x20D0, 0x20FF), (0xFE20, 0xFE2F),
    # Arabic harakat and Quranic marks, and the tatweel (a stretching stroke, U+0640).
    (0x0610, 0x061A), (0x064B, 0x065F), (0x0670, 0x0670), (0x06D6, 0x06ED),
    (0x0640, 0x0640),
    # Hebrew cantillation and points (niqqud), not its punctuation.
    (0x0591, 0x05BD), (0x05BF, 0x05BF), (0x05C1, 0x05C2), (0x05C4, 0x05C5),
    (0x05C7, 0x05C7),
    # Emoji skin tones and variation selectors 15/16: 👍🏽 is 👍.
    (0x1F3FB, 0x1F3FF), (0xFE0E, 0xFE0F),
]
_FOLD = str.maketrans(
    {**FOLD_LETTERS, **{chr(c): None for a, b in DROPPED_RANGES for c in range(a, b + 1)}}
)
UNSPACED_CLASS = (
    r"\p{scx=Han}\p{scx=Hiragana}\p{scx=Katakana}\p{scx=Thai}\p{scx=Lao}\p{scx=Khmer}"
    r"\p{scx=Myanmar}\p{scx=Hangul}"
)
_UNSPACED_RUN = regex.compile(rf"[{UNSPACED_CLASS}]+")
# One token: an emoji (with its ZWJ sequence, or a flag's two regional indicators), a run of
# word characters of unspaced scripts, or one of other word characters.
_TOKEN = regex.compile(
    r"\p{Extended_Pictographic}(?:\u200d\p{Extended_Pictographic})*|\p{RI}{2}"
    rf"|[{UNSPACED_CLASS}]+|(?:(?![{UNSPACED_CLASS}])\w)+"
)
_ASCII_WORD = regex.compile(r"[A-Za-z0-9_]+")  # \w, for ASCII text
# A query: "a phrase", from:nick, or a word (anything up to the next space or quote).
_QUERY_PART = regex.compile(r'"([^"]*)"?|(\S*?)from:(\S+)|([^\s"]+)')


def normalize(text: str) -> str:
    """The text as search compares it (steps 1-4 of the module's docstring)."""
    if text.isascii():
        return text.lower()  # the same result, 20 times faster: most chat is ASCII
    text = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    text = unicodedata.normalize("NFD", text).translate(_FOLD)
    return unicodedata.normalize("NFC", text)


def is_unspaced(token: str) -> bool:
    return bool(_UNSPACED_RUN.match(token))


def tokens(normalized: str) -> list[str]:
    """The tokens of a normalised text, in order (see the module's docstring)."""
    if normalized.isascii():
        return _ASCII_WORD.findall(normalized)  # the same tokens, several times faster
    return [m.group() for m in _TOKEN.finditer(normalized)]


def ngrams(run: str) -> list[str]:
    """An unspaced run's characters and character bigrams: any part of it holds them all."""
    return list(run) + [run[i:i + 2] for i in range(len(run) - 1)]


def word_terms(token: str) -> list[str]:
    """The terms one token is indexed under."""
    if is_unspaced(token):
        return ngrams(token)
    return [token[:MAX_TERM_CHARS]] + [
        token[:k] + PREFIX_MARK for k in range(1, min(len(token), PREFIX_MAX) + 1)
    ]


def from_term(nick: str) -> str:
    return FROM_MARK + nick_key(nick)


def index_terms(text: str, nick: str) -> list[str]:
    """Every term a message with ``text`` by ``nick`` is indexed under, each once, sorted."""
    terms = {from_term(nick)}
    for token in set(tokens(normalize(text))):
        terms.update(word_terms(token))
    return sorted(terms)


# The fields ``index_fields`` writes into a message's document.
INDEX_FIELDS = ("terms", "tv")


def index_fields(doc: dict[str, Any]) -> dict[str, Any]:
    """The search fields to store in an event document (``store.append`` adds them to each
    row): ``terms`` and the index version ``tv`` for a message with text, nothing otherwise
    (joins, leaves, a deleted message: never found)."""
    text = doc.get("text")
    if doc.get("type") != "message" or not isinstance(text, str) or doc.get("deleted"):
        return {}
    return {"terms": index_terms(text, doc.get("nick", "")), "tv": INDEX_VERSION}


def bad_query(q: object) -> str | None:
    """Why ``q`` cannot be searched (the reason for ``400 bad_query``), or None."""
    if not isinstance(q, str) or not q.strip():
        return "The search is empty."
    if len(q) > MAX_QUERY_CHARS:
        return f"The search is longer than {MAX_QUERY_CHARS} characters."
    return None


@dataclass
class Query:
    """A parsed query: what every candidate must hold (see ``parse``)."""

    words: list[str] = field(default_factory=list)  # whole tokens (unspaced: any part)
    prefix: str | None = None  # the last word, as a prefix of a token
    phrases: list[list[str]] = field(default_factory=list)  # token sequences
    senders: list[str] = field(default_factory=list)  # from: terms

    @property
    def terms(self) -> list[str]:
        """What to ask the index for: every candidate holds all of these (at most
        MAX_QUERY_TERMS; the sender first: it is cheap and often the most selective)."""
        terms: list[str] = list(self.senders)
        for word in self.words + [w for phrase in self.phrases for w in phrase]:
            terms += _query_terms(word)
        if self.prefix is not None:
            if is_unspaced(self.prefix):
                terms += _query_terms(self.prefix)
            else:
                terms.append(self.prefix[:PREFIX_MAX] + PREFIX_MARK)
        return list(dict.fromkeys(terms))[:MAX_QUERY_TERMS]

    def is_empty(self) -> bool:
        return not (self.words or self.prefix or self.phrases or self.senders)

    def matches(self, text: str, nick: str) -> bool:
        """Whether a message with ``text`` by ``nick`` matches: the exact check behind the
        index (which only narrows the candidates)."""
        if self.senders and from_term(nick) not in self.senders:
            return False
        toks = tokens(normalize(text))
        for word in self.words:
            if not any(_holds(t, word) for t in toks):
                return False
        if self.prefix is not None and not any(
            _holds(t, self.prefix) if is_unspaced(self.prefix) else t.startswith(self.prefix)
            for t in toks
        ):
            return False
        return all(_holds_phrase(toks, phrase) for phrase in self.phrases)


def _query_terms(word: str) -> list[str]:
    """What a query word asks the index for: the word (its first MAX_TERM_CHARS); for an
    unspaced one its bigrams (every character is in one of them), or the one character."""
    if not is_unspaced(word):
        return [word[:MAX_TERM_CHARS]]
    if len(word) == 1:
        return [word]
    return [word[i:i + 2] for i in range(len(word) - 1)]


def _holds(token: str, word: str) -> bool:
    """A text token holds a query word: the same word; for an unspaced one, any part."""
    return word in token if is_unspaced(word) else token == word


def _holds_phrase(toks: list[str], phrase: list[str]) -> bool:
    """The phrase's tokens occur one after another; at an unspaced edge, a part of a token
    counts (``"東京に"`` is inside ``私は東京に住んでいます``)."""
    joined = " " + " ".join(toks) + " "
    wanted = " ".join(phrase)
    start = joined.find(wanted)
    while start >= 0:
        end = start + len(wanted)
        if (joined[start - 1] == " " or is_unspaced(phrase[0][0])) and (
            joined[end] == " " or is_unspaced(phrase[-1][-1])
        ):
            return True
        start = joined.find(wanted, start + 1)
    return False


def parse(q: str) -> Query:
    """A query as typed: words, ``"a phrase"``, ``from:nick``; the last bare word matches as
    a prefix unless the query ends with a space (the person finished typing it)."""
    query = Query()
    bare: list[str] = []
    for m in _QUERY_PART.finditer(q):
        phrase, before_from, sender, word = m.group(1), m.group(2), m.group(3), m.group(4)
        if phrase is not None:
            toks = tokens(normalize(phrase))
            if len(toks) > 1:
                query.phrases.append(toks)
            else:
                query.words += toks  # a one-word phrase is a whole word
        elif sender is not None:
            bare += tokens(normalize(before_from))
            query.senders.append(from_term(sender))
        else:
            bare += tokens(normalize(word))
    if bare and not q[-1:].isspace() and not q.rstrip().endswith('"'):
        query.prefix = bare.pop()
    query.words = list(dict.fromkeys(query.words + bare))
    return query


def spans(text: str, query: Query) -> list[list[int]]:
    """Where ``text`` matches ``query``'s words, as [start, end) offsets in UTF-16 code units
    (what JavaScript strings count), for the page to highlight with text nodes (never HTML).

    A spaced word is highlighted whole; an unspaced query word only where it occurs inside a
    longer run (``東京`` in ``私は東京に住んでいます``)."""
    wanted = list(dict.fromkeys(query.words + [w for p in query.phrases for w in p]))
    found: list[tuple[int, int]] = []
    for match in _TOKEN.finditer(text):
        run, base = match.group(), match.start()
        for tok in tokens(normalize(run)):
            if tok in wanted or (query.prefix and not is_unspaced(query.prefix)
                                 and tok.startswith(query.prefix)):
                found.append((base, match.end()))
                break
        for word in wanted + ([query.prefix] if query.prefix else []):
            if is_unspaced(word) and word in normalize(run):
                found += [(base + i, base + j) for i, j in _occurrences(run, word)]
    return [[_utf16(text, a), _utf16(text, b)] for a, b in sorted(set(found))]


def _occurrences(run: str, word: str) -> list[tuple[int, int]]:
    """Where the unspaced ``word`` occurs in the original ``run`` (normalised piecewise; an
    NFKC half-width kana may stand for a longer or shorter piece, hence the window)."""
    out = []
    i = 0
    while i < len(run):
        for j in range(i + 1, min(len(run), i + 2 * len(word)) + 1):
            if normalize(run[i:j]) == word:
                out.append((i, j))
                i = j - 1
                break
        i += 1
    return out


def _utf16(text: str, index: int) -> int:
    """A code-point offset into ``text`` as a UTF-16 offset."""
    return index + sum(1 for ch in text[:index] if ord(ch) > 0xFFFF)
