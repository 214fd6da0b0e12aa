"""Search (API.md part 2, "Search"; docs/SEARCH.md): what a person typing a query finds.

Over the wire: messages sent through the API in many languages, then searched as a person
would type. At the store: re-indexing on an edit and un-indexing on a delete, in the caller's
transaction, and the upgrade that indexes history stored before search existed, interrupted
and resumed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from chatapp import search
from chatapp.reindex import SearchUpgrade
from chatapp.store import EventStore, connect
from tests.harness import ChatServer, Client
from tests.procs import AppProcess, running
from tests.steps import ROOM, eventually, post, unique, user
from tests.test_es5 import assert_es5

SEARCH_JS = Path(__file__).resolve().parents[1] / "static" / "search.js"

# Messages of the tests below: (nick, text). Every script the contract names.
MESSAGES = [
    ("an", "Chào buổi sáng, Hòa Bình! Đà Nẵng hôm nay đẹp quá"),  # Vietnamese
    ("bo", "Ёжик в тумане — лучший мультфильм"),  # Russian
    ("cy", "Die Straße nach Köln ist gesperrt"),  # German
    ("dz", "On se retrouve au café près de l'église ?"),  # French
    ("an", "我们明天在北京见面"),  # Chinese
    ("bo", "私は東京に住んでいます"),  # Japanese
    ("cy", "สวัสดีครับ ยินดีต้อนรับ"),  # Thai
    ("dz", "مَرْحَبًا بِكُمْ في القاهرة"),  # Arabic with harakat
    ("an", "Party tonight 🎉🎉 bring snacks 👍🏽"),  # emoji
    ("bo", "İstanbul'da ılık bir gün"),  # Turkish dotted and dotless i
    ("cy", "한국어를 배우고 있어요"),  # Korean
    ("dz", "トウキョウタワーに行こう"),  # Japanese in katakana
]


async def search_for(client: Client, q: str, room: str = ROOM, **params: Any) -> dict[str, Any]:
    code, body = await client.get_json(
        f"/api/rooms/{room}/search?" + urlencode(dict(params, q=q))
    )
    assert code == 200, (q, code, body)
    return body


async def found_texts(client: Client, q: str, room: str = ROOM, **params: Any) -> list[str]:
    return [r["text"] for r in (await search_for(client, q, room, **params))["results"]]


async def room_with_messages(srv: ChatServer) -> Client:
    """The MESSAGES sent by their nicks to ROOM, oldest first; a reader's client."""
    clients: dict[str, Client] = {}
    for nick, text in MESSAGES:
        if nick not in clients:
            clients[nick] = await user(srv, nick)
        await post(clients[nick], text)
    return await user(srv, "reader")


# -- what matches what, over the wire ---------------------------------------------------------

# (query as typed, the message it must find)
FINDS = [
    ("hoa binh", MESSAGES[0][1]),  # no accents
    ("da nang", MESSAGES[0][1]),  # đ typed as d
    ("HÒA", MESSAGES[0][1]),  # case
    ("ежик", MESSAGES[1][1]),  # ё typed as е
    ("ЁЖИК", MESSAGES[1][1]),
    ("strasse", MESSAGES[2][1]),  # ß as ss
    ("STRASSE koln", MESSAGES[2][1]),
    ("ｃａｆｅ", MESSAGES[3][1]),  # full-width
    ("eglise", MESSAGES[3][1]),
    ("北京", MESSAGES[4][1]),  # any part of an unspaced run
    ("東京", MESSAGES[5][1]),
    ("住んで", MESSAGES[5][1]),
    ("ﾄｳｷｮｳ", MESSAGES[11][1]),  # half-width katakana
    ("東京タワー", None),  # kanji are not katakana
    ("สวัสดี", MESSAGES[6][1]),
    ("مرحبا", MESSAGES[7][1]),  # typed without harakat
    ("القاهرة", MESSAGES[7][1]),
    ("🎉", MESSAGES[8][1]),
    ("👍", MESSAGES[8][1]),  # skin tone ignored
    ("👍🏿", MESSAGES[8][1]),
    ("istanbul", MESSAGES[9][1]),  # İ as i
    ("ilik", MESSAGES[9][1]),  # ı as i
    ("ILIK", MESSAGES[9][1]),
    ("한국어", MESSAGES[10][1]),  # Korean particles stay on the word: part of it finds it
    ("мульт", MESSAGES[1][1]),  # the last word as a prefix
    ("mult", None),  # Latin letters are not Cyrillic ones
]


@pytest.mark.gen_test(timeout=60)
async def test_every_script_is_found_without_case_accents_or_width(servers):
    srv = await servers.start()
    reader = await room_with_messages(srv)
    for q, expected in FINDS:
        texts = await found_texts(reader, q)
        if expected is None:
            assert texts == [], q
        else:
            assert texts == [expected], q


@pytest.mark.gen_test(timeout=60)
async def test_the_last_word_is_a_prefix_the_others_whole_words(servers):
    srv = await servers.start()
    an = await user(srv, "an")
    await post(an, "the meeting moved to Thursday")
    await post(an, "meet me at the station")
    assert await found_texts(an, "meet") == [
        "meet me at the station", "the meeting moved to Thursday"]  # newest first
    assert await found_texts(an, "meet ") == ["meet me at the station"]  # finished word
    assert await found_texts(an, "meet thur") == []  # "meet" is a whole word here
    assert await found_texts(an, "meeting thur") == ["the meeting moved to Thursday"]
    assert await found_texts(an, "thursdayx") == []
    long_prefix = "moved thursda"  # longer than the prefix terms: checked exactly
    assert await found_texts(an, long_prefix) == ["the meeting moved to Thursday"]


@pytest.mark.gen_test(timeout=60)
async def test_phrases_match_words_in_order(servers):
    srv = await servers.start()
    an = await user(srv, "an")
    await post(an, "new york is big")
    await post(an, "york has a new minster")
    assert await found_texts(an, '"new york"') == ["new york is big"]
    assert await found_texts(an, 'york new') == ["york has a new minster", "new york is big"]
    assert await found_texts(an, '"NEW YÖRK" big') == ["new york is big"]
    assert await found_texts(an, '"york new"') == []
    assert await found_texts(an, '"東京に"') == []
    await post(an, "私は東京に住んでいます")
    assert await found_texts(an, '"東京に"') == ["私は東京に住んでいます"]
    assert await found_texts(an, "京に住") == ["私は東京に住んでいます"]
    assert await found_texts(an, "東に") == []  # both characters, but not together


@pytest.mark.gen_test(timeout=60)
async def test_from_keeps_one_senders_messages(servers):
    srv = await servers.start()
    reader = await room_with_messages(srv)
    an_texts = [t for n, t in reversed(MESSAGES) if n == "an"]
    assert await found_texts(reader, "from:an") == an_texts
    assert await found_texts(reader, "from:AN") == an_texts  # nicknames ignore case
    assert await found_texts(reader, "from:an 北京") == [MESSAGES[4][1]]
    assert await found_texts(reader, "from:bo 北京") == []
    assert await found_texts(reader, "from:nobody") == []


@pytest.mark.gen_test(timeout=60)
async def test_results_are_newest_first_and_paged_with_before(servers):
    srv = await servers.start()
    an = await user(srv, "an")
    sent = [await post(an, f"report number {i}") for i in range(7)]
    await post(an, "something else")
    first = await search_for(an, "report", limit=3)
    assert [r["id"] for r in first["results"]] == [e["id"] for e in sent[:3:-1]]
    assert first["has_more"] is True and first["next_before"] == sent[4]["id"]
    second = await search_for(an, "report", limit=3, before=first["next_before"])
    assert [r["id"] for r in second["results"]] == [e["id"] for e in sent[3:0:-1]]
    third = await search_for(an, "report", limit=3, before=second["next_before"])
    assert [r["id"] for r in third["results"]] == [sent[0]["id"]]
    assert third["has_more"] is False and third["next_before"] is None
    result = third["results"][0]
    assert {k: result[k] for k in sent[0]} == sent[0]  # the message as the log has it


@pytest.mark.gen_test(timeout=60)
async def test_highlight_marks_the_matching_words_in_utf16_offsets(servers):
    srv = await servers.start()
    an = await user(srv, "an")
    text = "🎉 Hòa Bình và hoa"
    await post(an, text)
    [result] = (await search_for(an, "hoa"))["results"]
    utf16 = text.encode("utf-16-le")
    marked = [utf16[2 * a:2 * b].decode("utf-16-le") for a, b in result["highlight"]]
    assert marked == ["Hòa", "hoa"]
    await post(an, "私は東京に住んでいます")
    [result] = (await search_for(an, "東京"))["results"]
    assert result["highlight"] == [[2, 4]]


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("q", ["", "   ", "x" * 201, "!!! ...", '""'])
async def test_a_bad_query_is_refused(servers, q):
    srv = await servers.start()
    an = await user(srv, "an")
    code, body = await an.get_json(f"/api/rooms/{ROOM}/search?" + urlencode({"q": q}))
    assert (code, body["error"]) == (400, "bad_query")
    assert body["message"]


@pytest.mark.gen_test(timeout=60)
async def test_bad_limit_before_and_room_are_refused(servers):
    srv = await servers.start()
    an = await user(srv, "an")
    for params, error in [({"limit": "51"}, "bad_limit"), ({"limit": "0"}, "bad_limit"),
                          ({"before": "x"}, "bad_cursor")]:
        code, body = await an.get_json(
            f"/api/rooms/{ROOM}/search?" + urlencode(dict(params, q="hi")))
        assert (code, body["error"]) == (400, error)
    code, body = await an.get_json("/api/rooms/no%20spaces/search?q=hi")
    assert (code, body["error"]) == (400, "bad_room")
    assert (await search_for(an, "x" * 200))["results"] == []  # 200 is allowed


@pytest.mark.gen_test(timeout=60)
async def test_search_stays_in_its_room_and_skips_joins(servers):
    srv = await servers.start()
    an = await user(srv, "an")
    await post(an, "secret plan", room="other")
    assert await found_texts(an, "secret") == []
    assert [r["text"] for r in (await search_for(an, "plan", room="other"))["results"]] == [
        "secret plan"]


@pytest.mark.gen_test(timeout=60)
async def test_history_around_shows_a_message_in_context(servers):
    srv = await servers.start()
    an = await user(srv, "an")
    sent = [await post(an, f"m{i}") for i in range(10)]
    code, body = await an.get_json(f"/api/rooms/{ROOM}/history?around={sent[5]['id']}&limit=4")
    assert code == 200, body
    assert [e.get("text") for e in body["events"]] == ["m3", "m4", "m5", "m6"]
    assert body["has_more"] is True and body["has_newer"] is True
    code, body = await an.get_json(f"/api/rooms/{ROOM}/history?around={sent[9]['id']}&limit=4")
    assert [e.get("text") for e in body["events"]] == ["m7", "m8", "m9"]
    assert body["has_newer"] is False
    code, body = await an.get_json(f"/api/rooms/{ROOM}/history?around=")
    assert (code, body["error"]) == (400, "bad_cursor")


# -- at the store: the one call for "a message's text changed" ---------------------------------


@pytest.fixture
def store(io_loop, mongo_uri, db_name):
    st = EventStore(connect(mongo_uri, 10), db_name)
    io_loop.run_sync(st.create_indexes)
    yield st
    st.client.close()


async def stored(store: EventStore, text: str, nick: str = "an", room: str = ROOM) -> int:
    [appended] = await store.append(room, [{"type": "message", "nick": nick, "text": text,
                                           "ts": 1.0}])
    return int(appended.event["id"])


async def store_finds(store: EventStore, q: str, room: str = ROOM) -> list[int]:
    page = await store.search.find(room, search.parse(q), None, 50)
    return [int(e["id"]) for e in page.events]


async def edit(store: EventStore, seq: int, text: str | None, session: Any = None) -> None:
    """What the edit (text) or delete (None) code does to the message: its new current state
    and, in the same transaction, ``reindex``."""
    change = {"$set": {"text": text}} if text is not None else {
        "$set": {"deleted": True}, "$unset": {"text": ""}}
    await store.events.update_one({"room": ROOM, "seq": seq}, change, session=session)
    await store.search.reindex(ROOM, seq, "an", text, session=session)


@pytest.mark.gen_test(timeout=60)
async def test_reindex_finds_the_new_text_and_not_the_old(store):
    seq = await stored(store, "lunch at noon")
    await edit(store, seq, "dinner at eight")
    assert await store_finds(store, "lunch ") == []
    assert await store_finds(store, "dinner") == [seq]


@pytest.mark.gen_test(timeout=60)
async def test_reindex_with_no_text_unindexes_a_deleted_message(store):
    seq = await stored(store, "delete me soon")
    other = await stored(store, "keep me soon")
    await edit(store, seq, None)
    assert await store_finds(store, "soon") == [other]
    assert await store_finds(store, "from:an") == [other]


@pytest.mark.gen_test(timeout=60)
async def test_reindex_commits_and_aborts_with_the_callers_transaction(store):
    seq = await stored(store, "old words")
    async with await store.client.start_session() as session:
        session.start_transaction()
        await edit(store, seq, None, session=session)
        await session.abort_transaction()
    assert await store_finds(store, "old") == [seq]
    async with await store.client.start_session() as session:
        session.start_transaction()
        await edit(store, seq, "new words", session=session)
        await session.commit_transaction()
    assert await store_finds(store, "old") == []
    assert await store_finds(store, "new") == [seq]


# -- the upgrade ------------------------------------------------------------------------------


async def old_history(store: EventStore, texts: list[str], room: str = ROOM) -> list[int]:
    """Messages stored as before search: no terms (and joins between them)."""
    docs: list[dict[str, Any]] = []
    for i, text in enumerate(texts):
        docs.append({"room": room, "seq": 2 * i + 1, "type": "join", "nick": "an", "ts": 1.0})
        docs.append({"room": room, "seq": 2 * i + 2, "type": "message", "nick": "an",
                     "text": text, "ts": 1.0})
    await store.events.insert_many(docs)
    await store.counters.insert_one({"_id": room, "seq": len(docs)})
    return [d["seq"] for d in docs if d["type"] == "message"]


@pytest.mark.gen_test(timeout=60)
async def test_upgrade_indexes_old_history_and_resumes_after_an_interruption(store):
    seqs = await old_history(store, [f"ancient word{i} hòa" for i in range(10)])
    assert await store_finds(store, "hoa") == []
    first = SearchUpgrade(store, batch=3, pause=0)
    assert await first.run(max_batches=2) is False  # interrupted after two batches
    marker = await store.search.backfill_marker()
    assert marker and marker["done"] is False and marker["version"] == search.INDEX_VERSION
    assert len(await store_finds(store, "hoa")) == 6
    fresh = await stored(store, "fresh hòa")  # sent during the upgrade: indexed at once
    second = SearchUpgrade(store, batch=3, pause=0)  # a restarted server
    assert await second.run() is True
    assert second.indexed == len(seqs) - first.indexed  # nothing done twice
    assert await store_finds(store, "hoa") == [fresh] + seqs[::-1]
    assert await store_finds(store, "word7") == [seqs[7]]
    assert (await store.search.backfill_marker() or {})["done"] is True
    third = SearchUpgrade(store, batch=3, pause=0)
    assert await third.run() is True and third.indexed == 0


@pytest.mark.gen_test(timeout=60)
async def test_upgrade_leaves_a_message_edited_meanwhile_as_its_edit_indexed_it(store):
    [seq] = await old_history(store, ["before the edit"])
    [doc] = await store.search.unindexed(None, 10)  # the upgrade has read it ...
    await edit(store, seq, "after the edit")  # ... an edit comes first
    assert await store.search.index_batch([doc]) == 0
    assert await store_finds(store, "before ") == []
    assert await store_finds(store, "after") == [seq]


@pytest.mark.gen_test(timeout=60)
async def test_upgrade_started_in_the_background_can_be_stopped_and_resumed(store):
    await old_history(store, [f"bulk {i}" for i in range(40)])
    upgrade = SearchUpgrade(store, batch=5, pause=0)
    upgrade.start()
    await upgrade.stop()  # wherever it was
    again = SearchUpgrade(store, batch=5, pause=0)
    assert await again.run() is True
    assert len(await store_finds(store, "bulk")) == 40


def test_search_js_is_es5_and_never_writes_html():
    source = SEARCH_JS.read_text(encoding="utf-8")
    assert_es5(SEARCH_JS)
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write"):
        assert sink not in source, sink


@pytest.mark.gen_test(timeout=60)
async def test_a_search_out_of_time_returns_what_it_found_marked_partial(store, monkeypatch):
    from chatapp.store import search as store_module

    for i in range(30):
        await stored(store, f"slow word{i}")
    monkeypatch.setattr(store_module, "SEARCH_MAX_MS", 0.001)
    page = await store.search.find(ROOM, search.parse("slow"), None, 20)
    assert page.partial is True and page.has_more is False and page.events == []


@pytest.mark.gen_test(timeout=120)
async def test_a_server_started_on_old_history_indexes_it_while_serving(mongo_uri, tmp_path):
    """``python -m chatapp`` (which uses the database "chatapp") on history from before
    search: it serves at once, and the history becomes searchable without a restart."""
    store = EventStore(connect(mongo_uri, 10), "chatapp")
    room = unique("upgrade")
    await old_history(store, ["đã lâu rồi", "old news"], room=room)
    await store.search.reset_backfill()  # as after restoring old data (other tests ran here)
    store.client.close()
    async with running(AppProcess(tmp_path / "app", mongo_uri)) as app:
        reader = await user(app, "reader")
        code, _ = await reader.get_json(f"/api/rooms/{room}/history")
        assert code == 200  # serving

        async def found() -> bool:
            return bool((await search_for(reader, "da lau", room=room))["results"])

        await eventually(found, "the old history to be indexed", timeout=60)
        assert await found_texts(reader, "old", room=room) == ["old news"]


@pytest.mark.gen_test(timeout=60)
async def test_pages_of_a_two_word_search_cover_every_match_once_in_order(store, monkeypatch):
    """The intersection reads the leading word's seqs a chunk at a time: with tiny chunks,
    scan bounds and counts, paging still finds every match once, newest first."""
    from chatapp.store import search as store_module

    monkeypatch.setattr(store_module, "SEARCH_INTERSECT_CHUNK", 3)
    monkeypatch.setattr(store_module, "SEARCH_MAX_SCAN", 4)
    monkeypatch.setattr(store_module, "SEARCH_COUNT_CAP", 2)  # a tie: counted again
    monkeypatch.setattr(store_module, "SEARCH_RECOUNT_CAP", 100)
    expected = []
    for i in range(40):
        text = f"alpha {i}" + (" beta" if i % 7 == 0 else "") + (" gamma" if i % 2 else "")
        seq = await stored(store, text)
        if i % 7 == 0:
            expected.append(seq)
    got, before, pages = [], None, 0
    query = search.parse("alpha beta")
    while True:
        page = await store.search.find(ROOM, query, before, 2)
        got += [int(e["id"]) for e in page.events]
        pages += 1
        if not page.has_more:
            break
        assert page.before is not None and pages < 50
        before = page.before
    assert got == expected[::-1]
