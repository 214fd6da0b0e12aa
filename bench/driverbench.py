#!/usr/bin/env python
"""driverbench: the cost of one ``EventStore.append`` transaction, through Motor and through
PyMongo's native async client, against an embedded mongod.

The same transaction as ``chatapp.store.events`` (snapshot read concern, commit with write
concern majority, journaled), one message per append (what a room carries at 20 messages/s:
every message is its own batch), in two shapes:

  before   the idempotency read, the room's counter, the insert, the commit: 4 round trips
           (chatapp up to the optimistic insert)
  after    the counter, the insert, the commit: 3 round trips (the insert is tried first; the
           unique index on (room, sid, client_id) refuses a repeat, and only then is it read)

through ``motor`` (AsyncIOMotorClient: every operation is a blocking PyMongo call on a thread
of Motor's pool) and ``pymongo`` (``pymongo.AsyncMongoClient``, on the event loop itself);
and, for reference, ``store``: this checkout's own ``EventStore.append`` (Motor), and
``insert``: one plain insert with write concern majority outside a transaction (one round
trip). The variants run interleaved, in rounds of --chunk appends each, so that a shared
machine's noise falls on all of them alike. Per variant: each append's time (p50/p99/mean),
and each round trip's (every awaited operation timed on its own).

    python bench/driverbench.py                  # 2,000 appends per variant
    python bench/driverbench.py --appends 500 --json out.json

Prints one table; exits 1 if any append stored other than one event with the next id.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

import pymongo
from motor.motor_asyncio import AsyncIOMotorClient

from chatapp import search
from chatapp.store import MAJORITY_WRITE, TRANSACTION_READ, EventStore, connect

# Operations time out after this long, as the app's --mongo_timeout (its default) would have.
TIMEOUT_SECONDS = 5.0
# Seconds allowed for the embedded mongod to start.
START_SECONDS = 60.0

Timer = Callable[[Awaitable[Any]], Awaitable[Any]]


def percentile(ordered: list[float], p: float) -> float:
    k = min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))
    return ordered[k]


def summary(values: list[float]) -> dict[str, Any]:
    ordered = sorted(values)
    if not ordered:
        return {"n": 0}
    return {
        "n": len(ordered),
        "p50_ms": round(percentile(ordered, 50) * 1000, 3),
        "p99_ms": round(percentile(ordered, 99) * 1000, 3),
        "mean_ms": round(sum(ordered) / len(ordered) * 1000, 3),
    }


class Variant:
    """One way of appending: ``append(seq_expected)`` stores one message and checks its id."""

    def __init__(self, name: str, db: Any, client: Any, driver: str, shape: str) -> None:
        self.name = name
        self.db = db
        self.client = client
        self.driver = driver  # motor | pymongo
        self.shape = shape  # before | after | store | insert
        self.room = f"bench-{name}"
        self.appends: list[float] = []
        self.trips: list[float] = []
        self.trips_per_append: list[int] = []
        self.steps: dict[str, list[float]] = {}
        self.store = EventStore(client, db.name) if shape == "store" else None
        self.n = 0

    async def timed(self, step: str, op: Awaitable[Any]) -> Any:
        start = time.perf_counter()
        try:
            return await op
        finally:
            took = time.perf_counter() - start
            self.trips.append(took)
            self.steps.setdefault(step, []).append(took)

    def doc(self) -> dict[str, Any]:
        self.n += 1
        return {"type": "message", "nick": "bench", "ts": time.time(), "sid": "s1",
                "cid": f"c{self.n}", "text": f"message number {self.n} of the driver bench"}

    async def append(self) -> int:
        """Store one message; its seq."""
        doc = self.doc()
        before = len(self.trips)
        start = time.perf_counter()
        if self.shape == "store":
            assert self.store is not None
            [result] = await self.store.append(self.room, [doc], TIMEOUT_SECONDS)
            assert result.event is not None
            seq = int(result.event["id"])
        elif self.shape == "insert":
            row = dict(doc, room=self.room, seq=self.n, **search.index_fields(doc))
            await self.timed("insert", self.db.plain.insert_one(row))
            seq = self.n
        else:
            seq = await self.transaction(doc)
        self.appends.append(time.perf_counter() - start)
        self.trips_per_append.append(len(self.trips) - before)
        return seq

    async def transaction(self, doc: dict[str, Any]) -> int:
        events, counters = self.db.events, self.db.counters
        if self.driver == "motor":
            session = await self.client.start_session()
            session.start_transaction(read_concern=TRANSACTION_READ,
                                      write_concern=MAJORITY_WRITE)
        else:
            session = self.client.start_session()
            await session.start_transaction(read_concern=TRANSACTION_READ,
                                            write_concern=MAJORITY_WRITE)
        try:
            with pymongo.timeout(TIMEOUT_SECONDS):
                if self.shape == "before":
                    query = {"room": self.room, "cid": {"$in": [doc["cid"]]},
                             "sid": {"$in": [doc["sid"]]}}
                    found = await self.timed("read", events.find(query, session=session).to_list(None))
                    assert not found
                counter = await self.timed("counter", counters.find_one_and_update(
                    {"_id": self.room}, {"$inc": {"seq": 1}}, upsert=True,
                    return_document=pymongo.ReturnDocument.AFTER, session=session))
                row = dict(doc, room=self.room, seq=counter["seq"], **search.index_fields(doc))
                await self.timed("insert", events.insert_many([row], ordered=True, session=session))
                await self.timed("commit", session.commit_transaction())
        finally:
            await session.end_session()
        return int(counter["seq"])

    def report(self) -> dict[str, Any]:
        trips = self.trips_per_append
        return {
            "variant": self.name,
            "append": summary(self.appends),
            "round_trip": summary(self.trips),
            "round_trips_per_append": (round(sum(trips) / len(trips), 2) if trips else None),
            "steps": {step: summary(took) for step, took in self.steps.items()},
        }


async def prepare(db: Any) -> None:
    await db.events.create_index([("room", 1), ("seq", 1)], unique=True)
    await db.events.create_index([("room", 1), ("sid", 1), ("cid", 1)], unique=True,
                                 partialFilterExpression={"cid": {"$exists": True}})


async def run(args: argparse.Namespace, uri: str) -> dict[str, Any]:
    motor_client: AsyncIOMotorClient = connect(uri, TIMEOUT_SECONDS)
    native: Any = pymongo.AsyncMongoClient(
        uri, timeoutMS=int(TIMEOUT_SECONDS * 1000),
        serverSelectionTimeoutMS=int(TIMEOUT_SECONDS * 1000), tz_aware=False,
        w="majority", journal=True, readConcernLevel="majority")
    try:
        name = "driverbench"
        await motor_client.drop_database(name)
        await prepare(motor_client[name])
        await EventStore(motor_client, name).create_indexes()
        variants = [
            Variant("motor-before", motor_client[name], motor_client, "motor", "before"),
            Variant("motor-after", motor_client[name], motor_client, "motor", "after"),
            Variant("pymongo-before", native[name], native, "pymongo", "before"),
            Variant("pymongo-after", native[name], native, "pymongo", "after"),
            Variant("store", motor_client[name], motor_client, "motor", "store"),
            Variant("motor-insert", motor_client[name], motor_client, "motor", "insert"),
            Variant("pymongo-insert", native[name], native, "pymongo", "insert"),
        ]
        if args.only:
            variants = [v for v in variants if v.name in args.only.split(",")]
        # Warm up: connections in each pool, the rooms' counters created.
        for v in variants:
            for _ in range(args.warmup):
                await v.append()
            v.appends.clear()
            v.trips.clear()
            v.trips_per_append.clear()
            v.steps.clear()
        bad = 0
        done = 0
        while done < args.appends:
            chunk = min(args.chunk, args.appends - done)
            for v in variants:
                for _ in range(chunk):
                    seq = await v.append()
                    bad += seq != v.n
            done += chunk
        return {"appends_per_variant": args.appends, "wrong_ids": bad,
                "variants": [v.report() for v in variants]}
    finally:
        motor_client.close()
        await native.close()


def render(result: dict[str, Any]) -> str:
    lines = [
        (f"{result['appends_per_variant']} appends per variant, one message each; "
         f"wrong ids: {result['wrong_ids']}"),
        "",
        ("| variant | append p50 / p99 / mean (ms) | round trip p50 / p99 / mean (ms) "
         "| round trips per append |"),
        "| --- | --- | --- | --- |",
    ]
    for v in result["variants"]:
        a, t = v["append"], v["round_trip"]
        trip = (f"{t['p50_ms']} / {t['p99_ms']} / {t['mean_ms']}" if t.get("n")
                else "(inside the store)")
        lines.append(f"| {v['variant']} | {a['p50_ms']} / {a['p99_ms']} / {a['mean_ms']} "
                     f"| {trip} | {v['round_trips_per_append'] or '-'} |")
    lines += ["", "Each round trip, p50 / p99 (ms):", "",
              "| variant | read | counter | insert | commit |", "| --- | --- | --- | --- | --- |"]
    for v in result["variants"]:
        if not v["steps"]:
            continue
        cells = [(f"{v['steps'][s]['p50_ms']} / {v['steps'][s]['p99_ms']}" if s in v["steps"]
                  else "-") for s in ("read", "counter", "insert", "commit")]
        lines.append(f"| {v['variant']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--appends", type=int, default=2000, help="appends per variant (2000)")
    p.add_argument("--chunk", type=int, default=100,
                   help="appends of one variant before the next one's turn (100)")
    p.add_argument("--warmup", type=int, default=50, help="untimed appends per variant (50)")
    p.add_argument("--only", default="", help="comma-separated variant names to run")
    p.add_argument("--mongo_uri", default="", help="an existing replica set (default: embedded)")
    p.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON")
    args = p.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="driverbench-")
    mongo = None
    try:
        uri = args.mongo_uri
        if not uri:
            from chatapp.mongod import EmbeddedMongo

            mongo = EmbeddedMongo(os.path.join(tmp, "mongo"))
            uri = mongo.start(timeout=START_SECONDS)
        result = asyncio.run(run(args, uri))
    finally:
        if mongo is not None:
            mongo.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(render(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 1 if result["wrong_ids"] else 0


if __name__ == "__main__":
    sys.exit(main())
