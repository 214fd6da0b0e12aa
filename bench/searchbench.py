#!/usr/bin/env python
"""searchbench: how fast search is on a large history, and what indexing adds to each send.

Starts MongoDB (embedded, in a temporary directory, unless --mongo_uri is given), generates
--messages messages straight into MongoDB with insert_many (not through the server: fast
enough to reach a million on two shared cores), each with the search fields that
``store.append`` would write, in two layouts: all in one room, and spread over --rooms rooms.
Then it times ``EventStore.search.find`` (the whole search path but HTTP: the index query,
the exact check of each candidate, the page) for kinds of queries, and, with --text, the same
two-word queries on MongoDB's own $text index for comparison. Finally the cost added to each
send: ``EventStore.append`` of one message with and without the search index.

The text is synthetic: words drawn from a Zipf distribution over a vocabulary (Latin-script
words with and without diacritics, Cyrillic, and CJK phrases), 3-25 words a message, so some
words are in a third of the messages and most are rare, as in real chat.

    python bench/searchbench.py --messages 200000 --queries 200
    python bench/searchbench.py --messages 1000000 --layouts one --text
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from chatapp import mongod, search
from chatapp.mongod import EmbeddedMongo
from chatapp.store import EventStore, connect

# Vocabulary size: a chat's working vocabulary; the Zipf tail makes most words rare.
VOCABULARY = 30_000
# Zipf exponent near 1: the classic shape of word frequencies in natural text.
ZIPF_S = 1.05
# Documents per insert_many: big enough to amortise round trips, small enough for memory.
CHUNK = 5_000
NICKS = [f"user{i}" for i in range(200)]
SYLLABLES = ["ba", "ко", "lu", "mi", "hòa", "đi", "nê", "ти", "sa", "ró", "ka", "ён", "po", "ße"]
CJK = "東京大阪私は住んでいます会社学校電車時間今日明日天気好中国人北京上海"


def make_vocabulary(rng: random.Random) -> list[str]:
    words: set[str] = set()
    while len(words) < VOCABULARY:
        if rng.random() < 0.1:
            words.add("".join(rng.choice(CJK) for _ in range(rng.randint(2, 5))))
        else:
            words.add("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4))))
    return sorted(words, key=lambda w: (len(w), w))


def zipf_weights(n: int) -> list[float]:
    return [1 / (k ** ZIPF_S) for k in range(1, n + 1)]


class Corpus:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.vocab = make_vocabulary(self.rng)
        self.rng.shuffle(self.vocab)  # rank is not length
        self.cum = list(_accumulate(zipf_weights(len(self.vocab))))

    def words(self, k: int) -> list[str]:
        return self.rng.choices(self.vocab, cum_weights=self.cum, k=k)

    def text(self) -> str:
        return " ".join(self.words(self.rng.randint(3, 25)))

    def rank(self, lo: int, hi: int) -> str:
        """A word whose frequency rank is in [lo, hi)."""
        return self.vocab[self.rng.randrange(lo, hi)]


def _accumulate(values: list[float]) -> list[float]:
    total, out = 0.0, []
    for v in values:
        total += v
        out.append(total)
    return out


async def generate(store: EventStore, corpus: Corpus, n: int, rooms: list[str]) -> float:
    """Insert ``n`` messages, round-robin over ``rooms``; seconds taken."""
    t0 = time.perf_counter()
    seqs = {r: 0 for r in rooms}
    batch: list[dict[str, Any]] = []
    now = time.time() - n
    for i in range(n):
        room = rooms[i % len(rooms)]
        seqs[room] += 1
        doc = {"type": "message", "nick": corpus.rng.choice(NICKS), "text": corpus.text(),
               "ts": now + i, "room": room, "seq": seqs[room]}
        doc.update(search.index_fields(doc))
        batch.append(doc)
        if len(batch) >= CHUNK:
            await store.events.insert_many(batch, ordered=False)
            batch = []
            if (i + 1) % 100_000 == 0:
                print(f"  {i + 1} messages, {time.perf_counter() - t0:.0f} s", flush=True)
    if batch:
        await store.events.insert_many(batch, ordered=False)
    for room, seq in seqs.items():
        await store.counters.update_one({"_id": room}, {"$set": {"seq": seq}}, upsert=True)
    return time.perf_counter() - t0


def query_kinds(corpus: Corpus) -> dict[str, Any]:
    """Query generators by kind: ``kind -> () -> q``."""
    top, mid = 30, 1000
    v = len(corpus.vocab)
    return {
        "two common words": lambda: f"{corpus.rank(0, top)} {corpus.rank(0, top)} ",
        "common + rare": lambda: f"{corpus.rank(0, top)} {corpus.rank(mid, v)} ",
        "two mid words": lambda: f"{corpus.rank(top, mid)} {corpus.rank(top, mid)} ",
        "two rare words": lambda: f"{corpus.rank(mid, v)} {corpus.rank(mid, v)} ",
        "word + prefix (typing)": lambda: (
            f"{corpus.rank(0, mid)} {corpus.rank(0, mid)[:3]}"),
        "one prefix, 2 chars": lambda: corpus.rank(0, mid)[:2],
        "phrase": lambda: '"' + " ".join(corpus.words(2)) + '"',
        "from:nick + word": lambda: f"from:{corpus.rng.choice(NICKS)} {corpus.rank(0, mid)} ",
    }


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def mongod_cpu(port: int) -> float:
    """CPU seconds used so far by the mongod listening on ``port`` (Linux /proc)."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
            if b"--port" in args and args[args.index(b"--port") + 1] == str(port).encode():
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            continue
    return float("nan")


async def time_queries(store: EventStore, room: str, corpus: Corpus, count: int,
                       port: int) -> None:
    """Wall-clock p50/p99 of each kind of query, and the CPU one query costs (this process
    plus mongod): on a machine shared with other work, the CPU is what the query itself
    needs, the wall clock includes waiting for a core."""
    print(f"  {'query kind':<24} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'hits/page':>9} "
          f"{'CPU ms/query (py+mongod)':>25} {'partial':>7}")
    for kind, make in query_kinds(corpus).items():
        times, hits, partial = [], [], 0
        cpu0, mcpu0 = time.process_time(), mongod_cpu(port)
        for _ in range(count):
            query = search.parse(make())
            t0 = time.perf_counter()
            page = await store.search.find(room, query, None, 20)
            times.append((time.perf_counter() - t0) * 1000)
            hits.append(len(page.events))
            partial += page.partial
        py = (time.process_time() - cpu0) / count * 1000
        mg = (mongod_cpu(port) - mcpu0) / count * 1000
        print(f"  {kind:<24} {statistics.median(times):8.1f} {pct(times, 0.99):8.1f} "
              f"{max(times):8.1f} {statistics.mean(hits):9.1f} "
              f"{py + mg:10.1f} ({py:.1f}+{mg:.1f}) {partial:>10}", flush=True)


async def time_text_index(
    store: EventStore, room: str, corpus: Corpus, count: int, port: int
) -> None:
    """The same two-word queries on MongoDB's $text (language "none": no stemming)."""
    t0 = time.perf_counter()
    await store.events.create_index([("room", 1), ("text", "text")], name="text_cmp",
                                    default_language="none")
    print(f"  $text index built in {time.perf_counter() - t0:.0f} s")
    kinds = query_kinds(corpus)
    for kind in ("two common words", "common + rare", "two mid words", "two rare words"):
        times = []
        cpu0, mcpu0 = time.process_time(), mongod_cpu(port)
        for _ in range(count):
            a, b = kinds[kind]().split()
            t0 = time.perf_counter()
            await store.events.find(
                {"room": room, "$text": {"$search": f'"{a}" "{b}"'}}, {"terms": 0}
            ).sort("seq", -1).limit(21).to_list(21)
            times.append((time.perf_counter() - t0) * 1000)
        cpu = (time.process_time() - cpu0 + mongod_cpu(port) - mcpu0) / count * 1000
        print(f"  $text {kind:<18} {statistics.median(times):8.1f} {pct(times, 0.99):8.1f} "
              f"{max(times):8.1f} {'':>9} {cpu:10.1f}", flush=True)
    await store.events.drop_index("text_cmp")


async def time_sends(store: EventStore, corpus: Corpus, count: int) -> None:
    """``append`` of one message at a time, with the search index and without."""
    async def run(label: str) -> None:
        times = []
        for i in range(count):
            doc = {"type": "message", "nick": "bench", "text": corpus.text(), "ts": time.time(),
                   "sid": "s", "cid": f"{label}{i}"}
            t0 = time.perf_counter()
            await store.append("sendroom", [doc])
            times.append((time.perf_counter() - t0) * 1000)
        print(f"  append, {label:<16} p50 {statistics.median(times):6.2f} ms  "
              f"p99 {pct(times, 0.99):6.2f} ms")
    await run("with search")
    await store.events.drop_index("room_terms_seq")
    await run("without search")
    await store.search.create_indexes()
    texts = [corpus.text() for _ in range(2000)]
    t0 = time.perf_counter()
    for text in texts:
        search.index_terms(text, "bench")
    per = (time.perf_counter() - t0) / len(texts) * 1e6
    print(f"  index_terms() alone: {per:.0f} us a message (mean {statistics.mean(len(t) for t in texts):.0f} chars)")


async def main_async(args: argparse.Namespace, uri: str) -> None:
    corpus = Corpus(args.seed)
    port = int(uri.split("//")[1].split("/")[0].split(",")[0].rsplit(":", 1)[1])
    layouts = {"one": ["big"], "many": [f"r{i:03d}" for i in range(args.rooms)]}
    for name in args.layouts.split(","):
        rooms = layouts[name]
        store = EventStore(connect(uri, 600), f"searchbench_{name}")
        print(f"layout {name}: {args.messages} messages in {len(rooms)} room(s); load average "
              f"{os.getloadavg()[0]:.1f} (2 cores: above 2, others share them)")
        if args.reuse and await store.events.estimated_document_count() == args.messages:
            secs = 0.0  # generated by an earlier run with --keep, the same --messages and seed
        else:
            await store.events.drop()
            await store.create_indexes()
            # Built after the bulk insert (one sorted build, not a million random inserts into
            # a B-tree larger than the cache): generation takes minutes, not an hour.
            await store.events.drop_index("room_terms_seq")
            secs = await generate(store, corpus, args.messages, rooms)
        t0 = time.perf_counter()
        await store.create_indexes()
        print(f"  search index built in {time.perf_counter() - t0:.0f} s", flush=True)
        stats = await store.events.database.command("collStats", "events")
        sizes = stats["indexSizes"]
        print(f"  generated in {secs:.0f} s; data {stats['size'] / 2**20:.0f} MiB, search index "
              f"{sizes.get('room_terms_seq', 0) / 2**20:.0f} MiB, (room, seq) index "
              f"{sizes.get('room_1_seq_1', 0) / 2**20:.0f} MiB")
        print(f"  queries on room {rooms[0]}; load average {os.getloadavg()[0]:.1f}")
        await time_queries(store, rooms[0], corpus, args.queries, port)
        if args.text:
            await time_text_index(store, rooms[0], corpus, min(args.queries, 50), port)
        if name == args.layouts.split(",")[0]:
            await time_sends(store, corpus, args.sends)
        if not args.keep:
            await store.events.database.client.drop_database(f"searchbench_{name}")
        store.client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--rooms", type=int, default=100, help="rooms of the 'many' layout")
    parser.add_argument("--layouts", default="one,many", help="one, many or both")
    parser.add_argument("--queries", type=int, default=200, help="queries of each kind")
    parser.add_argument("--sends", type=int, default=300)
    parser.add_argument("--text", action="store_true", help="compare with MongoDB's $text")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the generated databases")
    parser.add_argument("--reuse", action="store_true",
                        help="with --mongo_uri: use databases an earlier run kept, if complete")
    parser.add_argument("--mongo_uri", default="")
    parser.add_argument("--cache-gb", type=float, default=mongod.CACHE_SIZE_GB,
                        help="WiredTiger cache of the embedded MongoDB (its default: %(default)s)")
    args = parser.parse_args()
    mongod.CACHE_SIZE_GB = args.cache_gb
    if args.mongo_uri:
        asyncio.run(main_async(args, args.mongo_uri))
        return 0
    with tempfile.TemporaryDirectory(prefix="searchbench-") as data, EmbeddedMongo(data) as m:
        asyncio.run(main_async(args, m.uri))
    return 0


if __name__ == "__main__":
    sys.exit(main())
