"""Search properties (hypothesis), at the store on a real mongod:

- a stored message is found by any of its own words, typed as the normaliser sees it (whole
  word, or as the prefix being typed), and by the original spelling of the word too;
- normalising is idempotent, so a query typed from a normalised text means the same;
- once un-indexed (``SearchStore.reindex`` with no text: a deletion), it is never found.
"""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatapp import search
from chatapp.store import EventStore, connect

ROOM = "props"
# Letters people type, from every script the issue names, with the traps: precomposed and
# decomposed accents, đ, ß, ё, İ/ı, full-width Latin, half-width katakana, harakat, Thai
# marks, Hangul, emoji with skin tones.
ALPHABET = (
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    "àáâãèéêìíòóôõùúýăđĐơưạảấầẩẫậắằẳẵặẹẻẽếềểễệỉịọỏốồổỗộớờởỡợụủứừửữựỳỵỷỹ"
    "äöüÄÖÜßẞçÇœŒæÆøØåÅłŁ"
    "абвгдеёжзийклмнопрстуфхцчшщъыьэюяЁЖИЙ"
    "İıŞşĞğ"
    "ａｂｃＡＢＣ１２３"
    "東京大阪私住北京中国人会社日本語"
    "あいうえおかきくけこがぎ"
    "アイウエオカキクケコガギｱｲｳｶﾞ"
    "กขคงจฉชซญดตถทนบปผพฟภมยรลวศสหอฮะาิีึืุูเแโใไ่้๊๋"
    "ابتثجحخدذرزسشصضطظعغفقكلمنهويةىأإآ"
    "\u064b\u064c\u064d\u064e\u064f\u0650\u0651\u0652\u0640"
    "한국어문장배우"
    "\u0301\u0300\u0303\u0308\u0323"
    "👍🎉😀❤🏽🏿"
)
SEPARATORS = [" ", "  ", ", ", ". ", "\n", " - ", "!", "?", "'", "(", ")"]

words = st.text(alphabet=ALPHABET, min_size=1, max_size=12)
messages = st.lists(
    st.tuples(words, st.sampled_from(SEPARATORS)), min_size=1, max_size=12
).map(lambda parts: "".join(w + s for w, s in parts).strip()).filter(bool)


def in_loop(test: Any) -> Any:
    """Run ``test(store, loop)`` with an EventStore on the test's own event loop."""

    def run(mongo_uri: str, db_name: str) -> None:
        loop = asyncio.new_event_loop()
        store = EventStore(connect(mongo_uri, 10), db_name)
        try:
            loop.run_until_complete(store.create_indexes())
            test(store, loop)
        finally:
            store.client.close()
            loop.close()

    run.__name__ = test.__name__
    return run




async def store_message(store: EventStore, text: str, nick: str) -> int:
    [appended] = await store.append(ROOM, [{"type": "message", "nick": nick, "text": text,
                                            "ts": 1.0}])
    return int(appended.event["id"])


async def finds(store: EventStore, q: str) -> set[int]:
    """Every seq a query finds (all pages)."""
    out: set[int] = set()
    before = None
    query = search.parse(q)
    while True:
        page = await store.search.find(ROOM, query, before, 50)
        out.update(int(e["id"]) for e in page.events)
        if not page.has_more:
            return out
        before = page.before


PROPS = settings(
    max_examples=60, deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@given(text=st.text(alphabet=ALPHABET, max_size=40))
@settings(max_examples=300, deadline=None)
def test_normalising_twice_changes_nothing(text):
    once = search.normalize(text)
    assert search.normalize(once) == once
    assert search.tokens(once) == search.tokens(search.normalize(once))


def test_a_message_is_found_by_any_of_its_words(mongo_uri, db_name):
    @in_loop
    def check_all(store: EventStore, loop: asyncio.AbstractEventLoop) -> None:
        @PROPS
        @given(text=messages, data=st.data())
        def check(text: str, data: st.DataObject) -> None:
            seq = loop.run_until_complete(store_message(store, text, "Nick"))
            toks = search.tokens(search.normalize(text))
            if not toks:
                return  # punctuation only: nothing to find it by
            word = data.draw(st.sampled_from(toks))
            if is_unspaced := search.is_unspaced(word):
                i = data.draw(st.integers(0, len(word) - 1))
                word = word[i:data.draw(st.integers(i + 1, len(word)))]  # any part
            for q in (word + " ", word, f"from:nick {word}", f'"{word}"'):
                assert seq in loop.run_until_complete(finds(store, q)), (text, q, is_unspaced)

        check()

    check_all(mongo_uri, db_name)


def test_a_message_is_found_by_its_words_as_written(mongo_uri, db_name):
    """The words as written, accents and width and case included, find the message too."""

    @in_loop
    def check_all(store: EventStore, loop: asyncio.AbstractEventLoop) -> None:
        @PROPS
        @given(parts=st.lists(words, min_size=1, max_size=6))
        def check(parts: list[str]) -> None:
            text = " ".join(parts)
            seq = loop.run_until_complete(store_message(store, text, "an"))
            for part in parts:
                if search.tokens(search.normalize(part)):
                    assert seq in loop.run_until_complete(finds(store, part)), (text, part)

        check()

    check_all(mongo_uri, db_name)


def test_a_message_is_never_found_once_unindexed(mongo_uri, db_name):
    @in_loop
    def check_all(store: EventStore, loop: asyncio.AbstractEventLoop) -> None:
        @PROPS
        @given(text=messages)
        def check(text: str) -> None:
            seq = loop.run_until_complete(store_message(store, text, "an"))
            loop.run_until_complete(store.events.update_one(
                {"room": ROOM, "seq": seq}, {"$set": {"deleted": True}, "$unset": {"text": ""}}))
            loop.run_until_complete(store.search.reindex(ROOM, seq, "an", None))
            queries = [*search.tokens(search.normalize(text)), text[:200], "from:an"]
            for q in queries:
                if search.bad_query(q) is None and not search.parse(q).is_empty():
                    assert seq not in loop.run_until_complete(finds(store, q)), (text, q)

        check()

    check_all(mongo_uri, db_name)
