"""MongoDB access for read markers, the rooms directory and cluster signals (the store's part
for them: ``EventStore.rooms``). Like the rest of ``chatapp.store``, the only place these
collections are touched.

Collections:

- ``reads``: ``{_id: "<identity>\\0<room>", identity, room, seq, touched, expire_at}``, one
  per identity and room it joined: its read marker (``seq`` of the last message it read).
  ``advance_marker`` moves it with ``$max`` in one update, so concurrent PUTs never move it
  back. A marker untouched for ``MARKER_TTL_SECONDS`` is dropped by MongoDB (TTL index): an
  outsider making sessions cannot fill the collection for good.
- ``signals`` (cluster mode): a capped collection of typing signals, watched by every
  process's change stream (``EventStore.watch``) and never read otherwise; capped, so it
  never grows past ``SIGNALS_BYTES`` whatever the typing.

Counting unread messages is bounded: one query per room on the ``(room, type, seq)`` index,
reading at most ``limit`` messages after the marker.
"""

from __future__ import annotations

import datetime
from typing import Any

import pymongo
from pymongo.errors import CollectionInvalid, DuplicateKeyError, OperationFailure

ASC, DESC = pymongo.ASCENDING, pymongo.DESCENDING

# A marker (and the "joined" record it is) nobody touched for 30 days is forgotten: sessions
# live far shorter, and an account that comes back after a month starts with nothing unread.
MARKER_TTL_SECONDS = 30 * 24 * 3600
# Signals are read once, by the change stream, within a second: 4 MiB holds tens of thousands
# of them, far more than any burst the feed lags behind.
SIGNALS_BYTES = 4 * 1024 * 1024
# MongoDB's error code when a collection exists already.
NAMESPACE_EXISTS = 48


def _expire_at() -> datetime.datetime:
    # The client is not tz_aware: naive UTC, as MongoDB's TTL monitor compares it.
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    return now + datetime.timedelta(seconds=MARKER_TTL_SECONDS)


def _marker_id(identity: str, room: str) -> str:
    # NUL cannot occur in a room name or an identity: the two parts stay apart.
    return f"{identity}\x00{room}"


class RoomStore:
    def __init__(self, db: Any) -> None:
        self.db = db
        self.events = db["events"]
        self.reads = db["reads"]
        self.members = db["members"]
        self.signals = db["signals"]

    async def create_indexes(self) -> None:
        # Unread counts: messages of a room after a marker, nothing else scanned.
        await self.events.create_index([("room", ASC), ("type", ASC), ("seq", ASC)])
        # "My rooms", most recently used first.
        await self.reads.create_index([("identity", ASC), ("touched", DESC)])
        await self.reads.create_index("expire_at", expireAfterSeconds=0)
        try:
            await self.db.create_collection("signals", capped=True, size=SIGNALS_BYTES)
        except CollectionInvalid:
            pass  # exists already
        except OperationFailure as exc:
            if exc.code != NAMESPACE_EXISTS:
                raise  # another process created it between the check and the create: fine

    # -- read markers -------------------------------------------------------------------------

    async def ensure_marker(self, identity: str, room: str, seq: int, now: float) -> None:
        """The identity joined ``room``: its marker starts at ``seq`` unless it has one."""
        await self._upsert(identity, room, {
            "$setOnInsert": {"identity": identity, "room": room, "seq": seq},
            "$set": {"touched": now, "expire_at": _expire_at()},
        })

    async def advance_marker(self, identity: str, room: str, seq: int, now: float) -> None:
        """Move the identity's marker in ``room`` to ``seq`` if that is further: one update,
        so of concurrent moves the furthest wins, whatever their order."""
        await self._upsert(identity, room, {
            "$setOnInsert": {"identity": identity, "room": room},
            "$max": {"seq": seq},
            "$set": {"touched": now, "expire_at": _expire_at()},
        })

    async def _upsert(self, identity: str, room: str, update: dict[str, Any]) -> None:
        key = {"_id": _marker_id(identity, room)}
        try:
            await self.reads.update_one(key, update, upsert=True)
        except DuplicateKeyError:
            # Two first upserts at once: one inserted, the other now finds it.
            await self.reads.update_one(key, update, upsert=True)

    async def markers_of(self, identity: str, limit: int) -> list[tuple[str, int]]:
        """(room, seq) of the identity's markers, most recently touched first."""
        rows = await self.reads.find(
            {"identity": identity}, {"room": 1, "seq": 1}
        ).sort("touched", DESC).limit(limit).to_list(limit)
        return [(r["room"], int(r.get("seq", 0))) for r in rows]

    async def forget_markers(self, identity: str) -> None:
        await self.reads.delete_many({"identity": identity})

    async def messages_after(self, room: str, seq: int, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` messages of ``room`` after ``seq``: sender, mentions, deleted."""
        rows = await self.events.find(
            {"room": room, "type": "message", "seq": {"$gt": seq}},
            {"_id": 0, "sid": 1, "nick": 1, "mentions": 1, "deleted": 1},
        ).sort([("type", ASC), ("seq", ASC)]).limit(limit).to_list(limit)
        return list(rows)

    async def last_events(self, rooms: list[str]) -> dict[str, tuple[int, float]]:
        """Each room's last event: (seq, ts), for those that have one; one query."""
        if not rooms:
            return {}
        pipeline = [
            {"$match": {"room": {"$in": rooms}}},
            {"$sort": {"room": 1, "seq": -1}},  # the (room, seq) index: one entry per room
            {"$group": {"_id": "$room", "seq": {"$first": "$seq"}, "ts": {"$first": "$ts"}}},
        ]
        out = {}
        async for row in self.events.aggregate(pipeline):
            out[row["_id"]] = (int(row["seq"]), float(row["ts"]))
        return out

    # -- cluster mode: who is where, and signals ---------------------------------------------

    async def people_counts(
        self, now: float, rooms: list[str] | None, limit: int
    ) -> dict[str, int]:
        """Present members per room (leases live), the fullest ``limit`` rooms, or ``rooms``."""
        match: dict[str, Any] = {"until_max": {"$gt": now}}
        if rooms is not None:
            match["room"] = {"$in": rooms}
        pipeline = [
            {"$match": match},
            {"$group": {"_id": "$room", "n": {"$sum": 1}}},
            {"$sort": {"n": -1, "_id": 1}},
            {"$limit": limit},
        ]
        return {r["_id"]: int(r["n"]) async for r in self.members.aggregate(pipeline)}

    async def insert_signal(self, doc: dict[str, Any]) -> None:
        """A typing signal for every process's change stream."""
        await self.signals.insert_one(dict(doc))
