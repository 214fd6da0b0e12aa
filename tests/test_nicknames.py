"""Safe nicknames: look-alikes are one nickname (UTS #39 skeletons), and nicknames that mix
scripts, hide characters or reorder text are refused; over the API, as a user meets them."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatapp import nicknames, rules
from chatapp.store import EventStore, connect
from tests.harness import ChatServer, Client, free_port
from tests.steps import user
from tests.test_fuzz import LoopThread

# (held, look-alike): the second is refused while the first is live.
CONFUSABLE_PAIRS = [
    ("ace", "асе"),  # Cyrillic а с е
    ("coco", "сосо"),  # Cyrillic с о
    ("pop", "рор"),  # Cyrillic р о
    ("TOP", "ΤΟΡ"),  # Greek capitals Τ Ο Ρ
    ("ANN", "ΑΝΝ"),  # Greek capitals Α Ν: folded first they would be "ανν" ("avv")
    ("kim", "ｋｉｍ"),  # full-width
    ("Lea", "lEA"),  # case
    ("Tiếng", "Tie\u0302\u0301ng"),  # composed vs combining marks
    ("ëe", "ёе"),  # Cyrillic ё е
    ("bob", "b0b"),  # digit zero
    ("ali", "a1i"),  # digit one
    ("corn", "com"),  # "rn" looks like "m"
]


async def take(srv: ChatServer, nick: str) -> tuple[int, dict]:
    client = srv.client()
    code, body = await client.post_json("/api/session", {"nick": nick})
    if code == 200:
        assert await client.get_json("/api/session") == (200, {"nick": nick})
    else:
        assert await client.get_json("/api/session") == (200, {"nick": None})
    return code, body


@pytest.mark.gen_test(timeout=60)
async def test_look_alike_nicknames_across_scripts_are_one_nickname(servers):
    srv = await servers.start()
    for held, alike in CONFUSABLE_PAIRS:
        assert await take(srv, held) == (200, {"nick": held}), held
        code, body = await take(srv, alike)
        assert (code, body["error"]) == (409, "nick_taken"), (held, alike, body)


@pytest.mark.gen_test(timeout=60)
async def test_a_look_alike_is_free_again_once_its_holder_leaves(servers):
    srv = await servers.start()
    holder = await user(srv, "ace")
    assert (await take(srv, "асе"))[0] == 409
    response = await holder.request("DELETE", "/api/session")
    assert response.code == 204
    assert await take(srv, "асе") == (200, {"nick": "асе"})


@pytest.mark.gen_test(timeout=60)
async def test_different_looking_nicknames_stay_apart(servers):
    srv = await servers.start()
    # Greek ν looks like v, not n; κ is not k: these are not look-alikes.
    for nick in ["no", "νο", "ki", "κι", "Москва", "東京", "abc東京", "ゆき", "Пётр"]:
        assert await take(srv, nick) == (200, {"nick": nick}), nick


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize(
    ("nick", "says"),
    [
        ("аnn", "mixes Cyrillic and Latin"),  # Cyrillic а among Latin
        ("pαypal", "mixes Greek and Latin"),
        ("Москвa", "mixes Cyrillic and Latin"),
        ("ab1١", "digits of different number systems"),
        ("anna\ufe05", "U+FE05 VARIATION SELECTOR-6"),
        ("an\u034fna", "U+034F COMBINING GRAPHEME JOINER"),
        ("\u3164", "U+3164 HANGUL FILLER"),
        ("a\u115fb", "U+115F HANGUL CHOSEONG FILLER"),
        ("an\u200bna", "invisible"),  # zero-width space
        ("an\u200dna", "invisible"),  # zero-width joiner
        ("ab\u00adc", "invisible"),  # soft hyphen
        ("a\u202eb", "U+202E RIGHT-TO-LEFT OVERRIDE"),
        ("a\u2066b", "bidirectional controls"),
        ("a\u200fb", "bidirectional controls"),
        ("___", "at least one letter or digit"),
        ("-.-", "at least one letter or digit"),
        ("a\ud800b", "lone surrogate"),  # a JSON body can carry one
        ("a\u0378b", "unassigned code points (U+0378)"),
    ],
)
async def test_unsafe_nicknames_are_refused_with_the_reason(servers, nick, says):
    srv = await servers.start()
    code, body = await take(srv, nick)
    assert (code, body["error"]) == (400, "bad_nick"), body
    assert says in body["message"], body


@pytest.mark.gen_test(timeout=60)
async def test_the_join_form_refuses_a_look_alike_with_the_reason(servers):
    srv = await servers.start()
    await user(srv, "pop")
    form = Client(srv.url)
    response = await form.request("POST", "/join", form={"nick": "рор", "room": "lobby"})
    assert response.code == 409
    assert "That nickname is taken." in response.body.decode()
    response = await form.request("POST", "/join", form={"nick": "аnn", "room": "lobby"})
    assert response.code == 400
    assert "mixes Cyrillic and Latin" in response.body.decode()


def test_the_unicode_version_is_the_pinned_wheels():
    """setup.py pins pyicu-wheels 2.15.2, which bundles ICU 77.1: a different ICU (another
    wheel, a system libicu) could give stored nicknames other keys."""
    assert (nicknames.ICU_VERSION, nicknames.UNICODE_VERSION) == ("77.1", "16.0")


# -- migration ------------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_sessions_stored_before_skeletons_keep_their_nickname(servers, mongo_uri, db_name):
    """A session document of the old schema (``nick_key`` only, under the old unique index)
    gets both keys when a new server starts: it keeps its nickname, its look-alikes are
    taken, and of two old sessions that now look alike only the first stays."""
    store = EventStore(connect(mongo_uri, 5.0), db_name)
    await store.sessions.create_index("nick_key", unique=True)
    far = 4e9
    await store.sessions.insert_many([
        {"_id": "old-1", "nick": "ace", "nick_key": "ace", "expires_at": far},
        {"_id": "old-2", "nick": "асе", "nick_key": "асе", "expires_at": far},
    ])
    srv = await servers.start()
    assert (await take(srv, "ace"))[0] == 409
    rows = await store.sessions.find({}, {"_id": 1, "skeleton": 1}).to_list(None)
    assert rows == [{"_id": "old-1", "skeleton": "ace"}]
    names = [i["name"] for i in await store.sessions.list_indexes().to_list(None)]
    assert "nick_key_1" not in names
    store.client.close()


# -- the property: one skeleton, one live holder ---------------------------------------------------

# Look-alikes of ASCII letters in other scripts and forms (one of each is enough for the
# property: hypothesis combines them).
ALIKES = {
    "a": ["a", "A", "а", "ａ", "Α"], "c": ["c", "C", "с", "ｃ"], "e": ["e", "E", "е", "ｅ", "Ε"],
    "o": ["o", "O", "о", "ο", "0", "ｏ", "Ο"], "p": ["p", "P", "р", "ρ", "Ρ", "ｐ"],
    "x": ["x", "X", "х", "χ", "Χ", "ｘ"], "i": ["i", "I", "і", "ι", "ｉ", "Ι"],
    "l": ["l", "1", "I", "ｌ"], "n": ["n", "N", "ｎ", "Ν"], "y": ["y", "у", "ｙ"],
}
words = st.lists(st.sampled_from(sorted(ALIKES)), min_size=1, max_size=6)


def spelling(word: list[str]) -> st.SearchStrategy[str]:
    return st.tuples(*[st.sampled_from(ALIKES[c]) for c in word]).map("".join)


pairs = words.flatmap(lambda w: st.tuples(spelling(w), spelling(w)))


@pytest.fixture(scope="module")
def live_server(mongod):
    uri = mongod if isinstance(mongod, str) else mongod.uri
    loop = LoopThread()
    srv = ChatServer(uri, f"chatapp_nicks_{uuid.uuid4().hex[:12]}", free_port(),
                     unused_session_ttl=3600.0, grace_period=3600.0)
    loop.run(srv.start())
    try:
        yield loop, srv
    finally:
        loop.run(srv.stop())
        loop.close()


def test_two_nicknames_with_one_skeleton_are_never_both_live(live_server):
    loop, srv = live_server
    live: dict[str, tuple[str, Client]] = {}  # skeleton -> (nick, its client)

    @settings(max_examples=60, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(pairs)
    def prop(pair):
        for nick in pair:
            client = Client(srv.url)
            code, body = loop.run(client.post_json("/api/session", {"nick": nick}))
            key = rules.nick_keys(nick).skeleton
            if code == 200:
                assert key not in live, ("two live holders of one skeleton", live[key], nick)
                live[key] = (nick, client)
            else:
                assert (code, body["error"]) in ((409, "nick_taken"), (400, "bad_nick")), body
                if code == 409:
                    assert any(
                        rules.nick_keys(held).skeleton == key
                        or rules.nick_keys(held).cased == rules.nick_keys(nick).cased
                        for held, _ in live.values()
                    ), (nick, body)
                client.close()

    prop()
    assert live, "no nickname was ever accepted: the property tested nothing"
    for nick, client in live.values():
        assert loop.run(client.get_json("/api/session")) == (200, {"nick": nick})
        client.close()
