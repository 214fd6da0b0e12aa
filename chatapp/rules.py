"""Every input rule and limit of the contract, in one place.

A rule changes here and nowhere else: the HTTP API, the WebSocket, the pages and the store all
call these functions.
"""

from __future__ import annotations

import re
import unicodedata

import emoji as emoji_data

from chatapp import nicknames
from chatapp.errors import ChatError

# The contract: text is 1-2000 characters. Long enough for a pasted stack trace, short enough
# that one message cannot fill a screen for everyone.
MAX_TEXT_CHARS = 2000
# Nicknames are shown in every line of the log; 32 characters keeps them on one line.
MAX_NICK_CHARS = 32
# Room names appear in URLs; 64 characters is plenty and keeps URLs and indexes small.
MAX_ROOM_CHARS = 64
# client_id only needs to be unique per session and room; 64 characters fits a UUID or two.
MAX_CLIENT_ID_CHARS = 64
# A request or WebSocket frame larger than this cannot carry a valid message (2000 characters
# of at most 4 UTF-8 bytes, JSON-escaped, plus fields), so it is refused before parsing.
MAX_BODY_BYTES = 64 * 1024

# A reply quotes the start of what it answers: 140 characters is a line or two, enough to
# recognise the message, too little to repost it.
MAX_PREVIEW_CHARS = 140
# The longest single emoji is a ZWJ family or a tagged flag (about 10 code points); 32 is a
# cheap bound checked before the lookup.
MAX_EMOJI_CHARS = 32

# Reactions are stored in their message's document, which MongoDB caps at 16 MB and every
# page of history carries: a message takes at most 1000 (person, emoji) reactions (about
# 50 KB), and one person at most 20 of them, so that nobody alone can use the room up.
MAX_REACTIONS_PER_MESSAGE = 1000
MAX_REACTIONS_PER_PERSON = 20

DEFAULT_ROOM = "lobby"

_ROOM_RE = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_ROOM_CHARS}}}")
# Ids are zero-padded decimal sequence numbers: fixed width makes string order equal numeric
# order, which is what the contract promises clients. 12 digits last for a trillion events.
ID_DIGITS = 12
_ID_RE = re.compile(rf"[0-9]{{{ID_DIGITS}}}")
# Newline and tab are the only control characters a chat line may carry.
_ALLOWED_CONTROLS = {"\n", "\t"}
# Bidirectional embeddings and overrides (LRE, RLE, PDF, LRO, RLO: U+202A-U+202E) make text
# display in an order other than the one it was typed in ("0001$" shown as "$1000"), and an
# unterminated one reorders whatever the page shows after it. Refused. The isolates
# (U+2066-U+2069) and the marks (U+200E, U+200F), which mixed-direction text needs, stay:
# an isolate cannot reach outside its own span, and the page shows every message in its own
# element (dir=auto), which closes any isolate left open.
_BIDI_OVERRIDES = frozenset("\u202a\u202b\u202c\u202d\u202e")
_NICK_PUNCTUATION = {"_", "-", "."}


def check_room(room: str) -> str:
    if not isinstance(room, str) or not _ROOM_RE.fullmatch(room):
        raise ChatError(
            "bad_room", "Room names are 1-64 letters, digits, '-' or '_'.", 400
        )
    return room


def is_valid_room(room: str) -> bool:
    return isinstance(room, str) and bool(_ROOM_RE.fullmatch(room))


def check_text(text: object) -> str:
    """The text as it will be stored: surrounding white space trimmed, otherwise untouched.

    The one change besides trimming: line breaks become ``\n``. HTML forms submit a textarea's
    line breaks as CRLF, and a message must look the same whichever way it was sent.
    """
    if not isinstance(text, str):
        raise ChatError("bad_text", "The message text must be a string.", 400)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    # Refused before trimming: strip() would quietly drop some controls at the ends.
    for ch in text:
        if ch not in _ALLOWED_CONTROLS and _is_control(ch):
            raise ChatError(
                "bad_text", "The message contains control characters.", 400
            )
        if ch in _BIDI_OVERRIDES:
            raise ChatError(
                "bad_text",
                f"The message contains a bidirectional override (U+{ord(ch):04X}), which "
                "would show the text in another order than it was typed; use the isolates "
                "U+2066-U+2069 or the marks U+200E/U+200F instead.",
                400,
            )
    text = text.strip()
    if not text:
        raise ChatError("bad_text", "The message is empty.", 400)
    if len(text) > MAX_TEXT_CHARS:
        raise ChatError(
            "bad_text", f"The message is longer than {MAX_TEXT_CHARS} characters.", 400
        )
    return text


def _is_control(ch: str) -> bool:
    # Cc are the C0/C1 controls; Cs are lone surrogates, which cannot be stored as UTF-8.
    return unicodedata.category(ch) in ("Cc", "Cs")


def check_nick(nick: object) -> str:
    """A nickname as typed, minus surrounding white space; letters and digits of one script
    (``nicknames.check_safe``: no invisible or bidi characters, no mixed scripts)."""
    if not isinstance(nick, str):
        raise ChatError("bad_nick", "The nickname must be a string.", 400)
    nick = nick.strip()
    if not 1 <= len(nick) <= MAX_NICK_CHARS:
        raise ChatError(
            "bad_nick", f"Nicknames are 1-{MAX_NICK_CHARS} characters.", 400
        )
    # First: an invisible or bidi character gets its own message, not "only letters...".
    nicknames.check_safe(nick)
    for i, ch in enumerate(nick):
        # Combining marks (Devanagari vowel signs, a decomposed "é") belong to the letter
        # before them: "any script" needs them.
        if not (ch.isalnum() or ch in _NICK_PUNCTUATION or (i and _is_mark(ch))):
            raise ChatError(
                "bad_nick",
                "Nicknames may contain only letters, digits, '_', '-' and '.'.",
                400,
            )
    return nick


def _is_mark(ch: str) -> bool:
    return unicodedata.category(ch).startswith("M")


def nick_key(nick: str) -> str:
    """How nicknames sort and compare for display: case-insensitive, and "é" typed two ways
    is one spelling. NOT what uniqueness compares: that is ``nick_keys`` (look-alikes too);
    sorting people by skeletons would put "bo2" before "bo1" ("1" looks like "l")."""
    return unicodedata.normalize("NFKC", nick).casefold()


def find_mentions(text: str) -> list[str]:
    """The nicknames written as ``@nick`` in ``text``: nickname characters after an ``@``
    that does not follow a letter or digit (``a@b.org`` is no mention), each once (compared
    as nicknames are, case-insensitively), spelled as first written. A trailing ``.`` or
    ``-`` ends the sentence, not the nickname."""
    found: dict[str, str] = {}
    i = text.find("@")
    while i != -1:
        j = i + 1
        if i == 0 or not (text[i - 1].isalnum() or text[i - 1] in _NICK_PUNCTUATION):
            while j < len(text) and (text[j].isalnum() or text[j] in _NICK_PUNCTUATION
                                     or (j > i + 1 and _is_mark(text[j]))):
                j += 1
            nick = text[i + 1:j].rstrip(".-")
            if 1 <= len(nick) <= MAX_NICK_CHARS:
                found.setdefault(nick_key(nick), nick)
        i = text.find("@", j)
    return list(found.values())


_FULLY_QUALIFIED = emoji_data.STATUS["fully_qualified"]


def check_emoji(value: object) -> str:
    """One emoji (one emoji grapheme: skin tones, ZWJ sequences, flags, keycaps), as the
    pinned ``emoji`` package's copy of Unicode's list knows it. Written without its variation
    selector (``❤`` for ``❤️``), it is stored fully qualified, so both count as one reaction."""
    if isinstance(value, str) and 1 <= len(value) <= MAX_EMOJI_CHARS:
        for candidate in (value, value[:1] + "\ufe0f" + value[1:], value + "\ufe0f"):
            entry = emoji_data.EMOJI_DATA.get(candidate)
            if entry is not None and entry["status"] == _FULLY_QUALIFIED:
                return candidate
    raise ChatError("bad_emoji", "A reaction is one emoji.", 400)


def check_on(on: object) -> bool:
    """A reaction's ``on``: true (add yours) or false (take it back); absent means true."""
    if on is None:
        return True
    if not isinstance(on, bool):
        raise ChatError("bad_reaction", '"on" must be true or false.', 400)
    return on


def check_target(target: object) -> str:
    """A message id as a target: anything that is not an id names no message."""
    if isinstance(target, str) and _ID_RE.fullmatch(target):
        return target
    raise ChatError("no_such_message", "There is no such message in this room.", 404)


def check_reply_to(reply_to: object) -> str | None:
    if reply_to is None:
        return None
    if isinstance(reply_to, str) and _ID_RE.fullmatch(reply_to):
        return reply_to
    raise ChatError("bad_reply", "reply_to must be the id of a message in this room.", 400)


def nick_keys(nick: str) -> nicknames.NickKeys:
    """What uniqueness compares, among live guests and accounts alike: two UTS #39 confusable
    skeletons (see ``chatapp.nicknames``), so "Ann", "аnn" (Cyrillic а), "ａｎｎ" and "ann" are
    one nickname. ``.skeleton`` (the skeleton of the NFKC-casefolded name) names an
    account; a ban "by skeleton" should compare both keys."""
    return nicknames.keys(nick)


def check_client_id(client_id: object) -> str:
    if not isinstance(client_id, str) or not 1 <= len(client_id) <= MAX_CLIENT_ID_CHARS:
        raise ChatError(
            "bad_client_id",
            f"client_id must be a string of 1-{MAX_CLIENT_ID_CHARS} characters.",
            400,
        )
    return client_id


def check_cursor(cursor: object) -> str:
    """A cursor is "" (before the first event) or an id this server issues."""
    if cursor == "" or (isinstance(cursor, str) and _ID_RE.fullmatch(cursor)):
        return cursor
    raise ChatError("bad_cursor", "That cursor is not one this server issued.", 400)


def format_id(seq: int) -> str:
    return str(seq).zfill(ID_DIGITS)


def parse_id(event_id: str) -> int:
    return int(event_id) if event_id else 0


def check_limit(raw: str | None, default: int, maximum: int) -> int:
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ChatError("bad_limit", f"limit must be a number from 1 to {maximum}.", 400)
    if not 1 <= value <= maximum:
        raise ChatError("bad_limit", f"limit must be a number from 1 to {maximum}.", 400)
    return value
