"""All MongoDB access, through Motor: events, per-room id counters, sessions, presence leases
and the change stream.

Nothing else in chatapp imports motor or pymongo's collection API; swapping Motor for PyMongo's
own async client touches this file alone.

Collections:

- ``events``: one document per event, ``{room, seq, type, nick, text?, ts, sid?, cid?}``. The
  public id is ``seq`` zero-padded (see ``rules.format_id``).
- ``counters``: ``{_id: room, seq}``, the last sequence number handed out in a room.
- ``sessions``: ``{_id: sid, nick, nick_key, expires_at}``; a unique index on ``nick_key``
  makes nickname uniqueness hold however many app processes share the database.
- ``members`` (cluster mode): presence, one document per (room, session); see
  ``join_member``.
- ``send_buckets`` (cluster mode): the send rate limit, one token bucket per session; see
  ``take_send_token``.

Ordering: ``append`` takes the next sequence numbers from the room's counter and inserts the
events in one transaction. Two writers (tasks or processes) that append to the same room at
once both update the counter document, so MongoDB lets only one commit and retries the other
against the new counter: a committed event never has a smaller id than one committed before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import pymongo
from motor.motor_asyncio import AsyncIOMotorClient
from pymongo.errors import DuplicateKeyError, ExecutionTimeout, NetworkTimeout, PyMongoError

from chatapp import search
from chatapp.rules import format_id

log = logging.getLogger(__name__)

ASC, DESC = pymongo.ASCENDING, pymongo.DESCENDING

# Store errors that a caller should report as "store unavailable" rather than as a bug.
StoreError = PyMongoError
# After a write conflict on a room's counter, a retry waits up to this long (at random).
CONFLICT_BACKOFF_SECONDS = 0.02
# How long one wait of the change stream on the server lasts when nothing happens. It must be
# below the client's timeoutMS (which bounds every operation, getMores included).
MAX_AWAIT_MS = 1000
# At most this many changes are taken in one run, so that one publish, like one of the
# writer's batches, wakes a long-poll with no more than the contract's 500 events. Changes
# left in the driver make the next run, without another wait on the server.
MAX_CHANGE_RUN = 500


def connect(uri: str, timeout: float) -> AsyncIOMotorClient:
    """A Motor client whose every operation gives up after ``timeout`` seconds.

    The bound is what lets a send answer ``503 store_unavailable`` within seconds while
    MongoDB is down, instead of hanging until the driver's 30 s server-selection default.
    """
    return AsyncIOMotorClient(
        uri,
        timeoutMS=int(timeout * 1000),
        serverSelectionTimeoutMS=int(timeout * 1000),
        tz_aware=False,
    )


def to_event(doc: dict[str, Any]) -> dict[str, Any]:
    """The public form of a stored event (the contract's shape, no internal fields)."""
    event = {
        "id": format_id(doc["seq"]),
        "room": doc["room"],
        "type": doc["type"],
        "nick": doc["nick"],
        "ts": doc["ts"],
    }
    if "text" in doc:
        event["text"] = doc["text"]
    return event


@dataclass
class Appended:
    """What ``append`` did with one new event: stored it now, or found it stored before."""

    event: dict[str, Any]
    is_new: bool


class EventStore:
    def __init__(self, client: AsyncIOMotorClient, db_name: str = "chatapp") -> None:
        self.client = client
        db = client[db_name]
        self.events = db["events"]
        self.counters = db["counters"]
        self.sessions = db["sessions"]
        # Cluster presence: one document per (room, session), see "presence leases" below.
        self.members = db["members"]
        # Cluster rate limit: one token bucket per session, see ``take_send_token``.
        self.send_buckets = db["send_buckets"]
        # Search: the index of message texts, and the upgrade's progress (see the end).
        self.search = SearchStore(self.events, db["meta"])

    async def create_indexes(self) -> None:
        # Every read is "events of a room by seq", forwards or backwards.
        await self.events.create_index([("room", ASC), ("seq", ASC)], unique=True)
        # Idempotent sends: one event per (room, session, client_id). Partial, because join
        # and leave events have no client_id.
        await self.events.create_index(
            [("room", ASC), ("sid", ASC), ("cid", ASC)],
            unique=True,
            partialFilterExpression={"cid": {"$exists": True}},
        )
        await self.sessions.create_index("nick_key", unique=True)
        await self.sessions.create_index("expires_at")
        # Cluster presence: "who is in this room", and the sweep's "whose leases all ran out".
        await self.members.create_index([("room", ASC), ("until_max", ASC)])
        await self.members.create_index("until_max")
        # A bucket nobody has drawn from since it refilled says nothing: MongoDB drops it.
        await self.send_buckets.create_index("expire_at", expireAfterSeconds=0)
        await self.search.create_indexes()

    async def ping(self) -> None:
        await self.client.admin.command("ping")

    # -- events -------------------------------------------------------------------------------

    async def append(
        self, room: str, docs: list[dict[str, Any]], timeout: float | None = None
    ) -> list[Appended]:
        """Store ``docs`` (events without ``seq``) in order, atomically, with fresh ids.

        A doc whose ``(sid, cid)`` is already stored in the room is not stored again: its
        result is the stored event with ``is_new=False``. Either every new doc is stored or
        none is (a transaction), so a failure never leaves half a batch behind.

        Gives up (raises) after ``timeout`` seconds in all, retries included (default: the
        client's ``timeoutMS``): nothing is attempted or retried after that, so a batch is
        never stored long after its senders were told it was not.
        """

        async def transaction(session: Any) -> list[Appended]:
            found = await self._find_sent(room, docs, session)
            fresh = [d for d in docs if _send_key(d) not in found]
            results: dict[int, Appended] = {}
            if fresh:
                counter = await self.counters.find_one_and_update(
                    {"_id": room},
                    {"$inc": {"seq": len(fresh)}},
                    upsert=True,
                    return_document=pymongo.ReturnDocument.AFTER,
                    session=session,
                )
                first = counter["seq"] - len(fresh) + 1
                rows = [dict(d, room=room, seq=first + i, **search.index_fields(d))
                        for i, d in enumerate(fresh)]
                await self.events.insert_many(rows, ordered=True, session=session)
                for doc, row in zip(fresh, rows):
                    results[id(doc)] = Appended(to_event(row), True)
            return [
                results.get(id(d)) or Appended(found[_send_key(d)], False) for d in docs
            ]

        # Not Motor's with_transaction: it retries a transient error (MongoDB unreachable
        # included) for 120 s whatever the client's timeout, so a batch whose senders were
        # told "503, nothing was stored" went on to be stored once MongoDB came back.
        limit = timeout if timeout is not None else (self.client.options.timeout or 120.0)
        deadline = time.monotonic() + limit
        with pymongo.timeout(limit):
            async with await self.client.start_session() as session:
                while True:
                    session.start_transaction()
                    try:
                        results = await transaction(session)
                        await session.commit_transaction()
                        return results
                    except BaseException as exc:
                        if session.in_transaction:
                            # Not Motor's `async with`: its abort, failing too (the client
                            # closed at shutdown), replaced the error, a cancellation included,
                            # and the writer then retried forever: the process never exited.
                            with contextlib.suppress(PyMongoError):
                                await session.abort_transaction()
                        # A write conflict on the room's counter (another writer committed
                        # first): try again against the new counter, in the time left.
                        if (isinstance(exc, PyMongoError)
                                and exc.has_error_label("TransientTransactionError")
                                and time.monotonic() < deadline):
                            # A short random pause: writers colliding on one counter would
                            # otherwise collide again at once, and spin while a dead
                            # process's transaction still holds it.
                            await asyncio.sleep(random.uniform(0, CONFLICT_BACKOFF_SECONDS))
                            continue
                        raise

    async def _find_sent(
        self, room: str, docs: list[dict[str, Any]], session: Any = None
    ) -> dict[tuple[str, str], dict[str, Any]]:
        keys = {_send_key(d) for d in docs if "cid" in d}
        if not keys:
            return {}
        query = {
            "room": room,
            "cid": {"$in": sorted({cid for _, cid in keys})},
            "sid": {"$in": sorted({sid for sid, _ in keys})},
        }
        found = {}
        async for row in self.events.find(query, session=session):
            key = (row["sid"], row["cid"])
            if key in keys:
                found[key] = to_event(row)
        return found

    async def find_batch(
        self, room: str, docs: list[dict[str, Any]]
    ) -> dict[tuple[str, str], dict[str, Any]]:
        """Which of ``docs`` are stored, by (sid, cid): to learn what a failed append did."""
        return await self._find_sent(room, docs)

    async def latest(self, room: str, limit: int) -> list[dict[str, Any]]:
        """The room's last ``limit`` events, oldest first."""
        cursor = self.events.find({"room": room}).sort("seq", DESC).limit(limit)
        rows = await cursor.to_list(limit)
        return [to_event(r) for r in reversed(rows)]

    async def after(self, room: str, seq: int, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` events with a sequence number above ``seq``, oldest first."""
        cursor = (
            self.events.find({"room": room, "seq": {"$gt": seq}}).sort("seq", ASC).limit(limit)
        )
        return [to_event(r) for r in await cursor.to_list(limit)]

    async def before(self, room: str, seq: int | None, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` events just below ``seq`` (or the latest), oldest first."""
        query: dict[str, Any] = {"room": room}
        if seq is not None:
            query["seq"] = {"$lt": seq}
        cursor = self.events.find(query).sort("seq", DESC).limit(limit)
        rows = await cursor.to_list(limit)
        return [to_event(r) for r in reversed(rows)]

    async def last_seq(self, room: str) -> int:
        counter = await self.counters.find_one({"_id": room})
        return counter["seq"] if counter else 0

    # -- sessions -----------------------------------------------------------------------------

    async def free_expired_nick(self, key: str) -> str | None:
        """Delete the session holding nickname ``key`` if it is past its expiry (a sweep may
        not have run yet); the sid it had, so callers can forget it too."""
        doc = await self.sessions.find_one_and_delete(
            {"nick_key": key, "expires_at": {"$lt": time.time()}}, projection={"_id": 1}
        )
        return doc["_id"] if doc else None

    async def claim_nick(self, sid: str, nick: str, key: str, expires_at: float) -> bool:
        """Record a new session; False when a session already has that nickname (an expired
        one is freed by ``free_expired_nick`` first)."""
        try:
            await self.sessions.insert_one(
                {"_id": sid, "nick": nick, "nick_key": key, "expires_at": expires_at}
            )
        except DuplicateKeyError:
            return False
        return True

    async def live_session_ids(self, sids: list[str]) -> set[str]:
        """Which of ``sids`` are still stored (not logged out or expired)."""
        rows = await self.sessions.find({"_id": {"$in": sids}}, {"_id": 1}).to_list(None)
        return {r["_id"] for r in rows}

    async def get_session(self, sid: str) -> dict[str, Any] | None:
        doc = await self.sessions.find_one({"_id": sid, "expires_at": {"$gte": time.time()}})
        return doc

    async def delete_session(self, sid: str) -> None:
        await self.sessions.delete_one({"_id": sid})

    async def extend_sessions(self, sids: list[str], expires_at: float) -> None:
        if sids:
            await self.sessions.update_many(
                {"_id": {"$in": sids}}, {"$max": {"expires_at": expires_at}}
            )

    async def expired_sessions(self, now: float) -> list[str]:
        rows = await self.sessions.find({"expires_at": {"$lt": now}}, {"_id": 1}).to_list(None)
        return [r["_id"] for r in rows]

    async def delete_sessions(self, sids: list[str], now: float) -> None:
        # Re-check expiry so a session extended meanwhile (by another process) survives.
        await self.sessions.delete_many({"_id": {"$in": sids}, "expires_at": {"$lt": now}})


    # -- cluster mode: the change stream and presence leases ------------------------------------

    async def cluster_time(self) -> Any:
        """MongoDB's current cluster time: where a change stream opened now would start."""
        reply = await self.client.admin.command("ping")
        return reply["operationTime"]

    def watch(self, resume_after: Any = None, start_at: Any = None) -> Any:
        """A change stream of new events and of sessions that ended (anywhere in the cluster).

        Use as ``async with store.watch(...) as stream: async for change in stream``.
        """
        pipeline = [
            {"$match": {"$or": [
                {"ns.coll": self.events.name, "operationType": "insert"},
                {"ns.coll": self.sessions.name, "operationType": "delete"},
            ]}}
        ]
        return self.events.database.watch(
            pipeline,
            resume_after=resume_after,
            start_at_operation_time=start_at if resume_after is None else None,
            # Below the client's timeoutMS, so an idle stream waits instead of timing out.
            max_await_time_ms=MAX_AWAIT_MS,
        )

    async def next_changes(self, stream: Any) -> tuple[list[dict[str, Any]], Any]:
        """The next run of changes of ``stream`` (``watch``'s, opened), and the resume token
        to store once they are dispatched (None if none yet).

        One wait for the next change, then every change the driver already holds from the
        same reply, up to ``MAX_CHANGE_RUN``, without waiting again: a burst of events is
        published as one batch instead of one at a time.
        """
        # The blocking pymongo calls run on a thread, as Motor runs them; one run at a time,
        # as Motor's own try_next() would be.
        return await asyncio.to_thread(_take_available, stream.delegate)

    async def take_send_token(self, sid: str, rate: float, capacity: float) -> bool:
        """Take one token from the session's send bucket, shared by every process of the
        cluster: True if there was one (the send may go ahead).

        The bucket refills at ``rate`` tokens a second up to ``capacity``, on MongoDB's clock
        (``$$NOW``), so app machines whose clocks differ still agree. Refill, check and take
        are one single-document update: two processes drawing at once cannot both take the
        last token.
        """
        now_ms = {"$toLong": "$$NOW"}
        refill_ms = capacity / rate * 1000
        doc = await self.send_buckets.find_one_and_update(
            {"_id": sid},
            [
                {"$set": {
                    "tokens": {"$min": [capacity, {"$add": [
                        {"$ifNull": ["$tokens", capacity]},
                        {"$multiply": [rate / 1000, {"$subtract": [
                            now_ms, {"$ifNull": ["$stamp", now_ms]},
                        ]}]},
                    ]}]},
                    "stamp": now_ms,
                }},
                {"$set": {"ok": {"$gte": ["$tokens", 1]}}},
                {"$set": {
                    "tokens": {"$cond": ["$ok", {"$subtract": ["$tokens", 1]}, "$tokens"]},
                    # Full again by then: a fresh bucket would be the same.
                    "expire_at": {"$add": ["$$NOW", refill_ms]},
                }},
            ],
            upsert=True,
            projection={"ok": 1},
            return_document=pymongo.ReturnDocument.AFTER,
        )
        return bool(doc["ok"])

    # Presence leases. One document per (room, session):
    #
    #     {_id, room, sid, nick, announced: bool, leases: [{p: process, until: time}],
    #      until_max: the latest "until"}
    #
    # Each process that has the member connected holds a lease, renewed by its sweep.
    # ``announced`` says whether the room was last told "join" (true) or "leave" (false).
    # Every change of ``announced`` is one single-document update that also reads the
    # leases, so it is atomic: of two processes joining (or leaving) the same member at the
    # same moment, exactly one sees the change and announces it.

    async def join_member(
        self, room: str, sid: str, nick: str, me: str, until: float
    ) -> bool:
        """Hold a lease on (room, sid) for process ``me``; True if this call announced the
        member (nobody had: a real join), False if it was present already."""
        others = _leases_except(me)
        before = await self._update_member(room, sid, [
            {"$set": {
                "room": {"$literal": room}, "sid": {"$literal": sid},
                "nick": {"$literal": nick}, "announced": True,
                "leases": {"$concatArrays": [others, [{"p": {"$literal": me}, "until": until}]]},
            }},
            _SET_UNTIL_MAX,
        ], upsert=True)
        return before is None or not before.get("announced")

    async def leave_member(self, room: str, sid: str, me: str, now: float) -> bool:
        """Drop process ``me``'s lease on (room, sid); True if this call ended the member's
        presence (no other process holds a live lease: a real leave)."""
        others = _leases_except(me)
        others_live = {"$filter": {"input": others, "cond": {"$gt": ["$$this.until", now]}}}
        before = await self._update_member(room, sid, [
            {"$set": {
                # Both from the document as it was: the stage sees its input, not its output.
                "announced": {"$and": [
                    {"$eq": ["$announced", True]}, {"$gt": [{"$size": others_live}, 0]},
                ]},
                "leases": others,
            }},
            _SET_UNTIL_MAX,
        ], upsert=False)
        # The update's decision, made again from what it saw (the same ``now``).
        return bool(before and before.get("announced") and not any(
            lease["p"] != me and lease["until"] > now for lease in before.get("leases", [])
        ))

    async def _update_member(
        self, room: str, sid: str, pipeline: list[dict[str, Any]], upsert: bool
    ) -> dict[str, Any] | None:
        """Apply ``pipeline`` to the member's document; the document as it was before."""
        for attempt in range(2):
            try:
                return await self.members.find_one_and_update(
                    {"_id": _member_id(room, sid)}, pipeline, upsert=upsert,
                    projection={"announced": 1, "leases": 1},
                    return_document=pymongo.ReturnDocument.BEFORE,
                )
            except DuplicateKeyError:
                # Two upserts creating the same document at once: the loser's second attempt
                # finds the winner's document (MongoDB usually retries this itself).
                if attempt:
                    raise
        return None  # not reached

    async def renew_members(self, me: str, leases: dict[tuple[str, str], float]) -> None:
        """Extend process ``me``'s leases: ``leases`` maps (room, sid) to the new end."""
        # Members connected now share one lease time: usually one update for all of them.
        by_until: dict[float, list[str]] = {}
        for (room, sid), until in leases.items():
            by_until.setdefault(until, []).append(_member_id(room, sid))
        for until, ids in by_until.items():
            await self.members.update_many(
                {"_id": {"$in": ids}, "leases.p": me},
                {"$max": {"leases.$.until": until, "until_max": until}},
            )

    async def remove_expired_members(self, now: float) -> list[tuple[str, str, str]]:
        """Announced members whose every lease ran out (their processes died): (room, sid,
        nick) of each that this call marked as gone, so one process announces each leave.
        Also forgets documents nobody holds any more."""
        gone = []
        expired = {"announced": True, "until_max": {"$lt": now}}
        async for doc in self.members.find(expired, {"room": 1, "sid": 1, "nick": 1}):
            result = await self.members.update_one(
                {"_id": doc["_id"], **expired}, {"$set": {"announced": False}}
            )
            if result.modified_count:
                gone.append((doc["room"], doc["sid"], doc["nick"]))
        await self.members.delete_many({"announced": False, "until_max": {"$lt": now}})
        return gone

    async def all_members(self) -> list[tuple[str, str, str]]:
        """(room, sid, nick) of every announced member, leases live or run out (one
        process's restart)."""
        rows = await self.members.find(
            {"announced": True}, {"room": 1, "sid": 1, "nick": 1}
        ).to_list(None)
        return [(r["room"], r["sid"], r["nick"]) for r in rows]

    async def take_over_members(self, me: str, until: float) -> None:
        """Make every lease this process's (one process restarted: they are all its own)."""
        await self.members.delete_many({"announced": {"$ne": True}})
        await self.members.update_many(
            {}, {"$set": {"leases": [{"p": me, "until": until}], "until_max": until}}
        )

    async def present_nicks(self, room: str, now: float) -> list[str]:
        return await self.members.distinct("nick", {"room": room, "until_max": {"$gt": now}})


def _member_id(room: str, sid: str) -> str:
    # NUL cannot occur in a room name or a session id: the two parts stay apart.
    return f"{room}\x00{sid}"


def _leases_except(me: str) -> dict[str, Any]:
    """(Aggregation expression) the document's leases of processes other than ``me``."""
    return {"$filter": {
        "input": {"$ifNull": ["$leases", []]}, "cond": {"$ne": ["$$this.p", {"$literal": me}]},
    }}


# (Aggregation stage) ``until_max`` from ``leases``; 0 when there are none, so a document
# nobody holds counts as run out.
_SET_UNTIL_MAX = {"$set": {"until_max": {"$ifNull": [{"$max": "$leases.until"}, 0]}}}


def _send_key(doc: dict[str, Any]) -> tuple[str, str]:
    return (doc.get("sid", ""), doc.get("cid", ""))


def _take_available(stream: Any) -> tuple[list[dict[str, Any]], Any]:
    """Blocking: the next changes of a pymongo ``ChangeStream``, and the resume token to store
    once they are dispatched (None if none yet).

    Waits for the first change as ``try_next()`` does (at most one getMore, returning [] if it
    brings nothing), then takes the changes the driver already holds from the same reply, up
    to ``MAX_CHANGE_RUN``, with ``try_next()`` too: every change still goes through pymongo's
    own resume-token bookkeeping. Changes already received are never waited for.
    """
    changes: list[dict[str, Any]] = []
    change = stream.try_next()
    while change is not None:
        changes.append(change)
        if len(changes) >= MAX_CHANGE_RUN or not _holds_more(stream):
            break
        change = stream.try_next()
    return changes, stream.resume_token


def _holds_more(stream: Any) -> bool:
    """Whether the stream's cursor holds more changes already received, so that the next
    ``try_next()`` returns one without asking the server.

    pymongo has no public API for this: it is the private ``_has_next()`` of the stream's
    cursor, which ``ChangeStream.try_next`` itself relies on (pymongo 4.x). If a pymongo
    release renames it, this says False and the feed goes back to one change per run: slower
    under load, never wrong.
    """
    try:
        return bool(stream._cursor._has_next())
    except AttributeError:
        return False


# -- search (chatapp/search.py decides the terms; docs/SEARCH.md says why this index) ---------
#
# A message document carries ``terms`` (its normalised words, word prefixes, n-grams of
# unspaced scripts and its sender's term) and ``tv`` (the index version they were made with).
# One multikey index, {room, terms, seq: -1}, partial so that joins, leaves and deleted
# messages take no room in it, answers "messages of this room holding term t, newest first".

# A search page reads at most this many candidates (index hits that the exact check may
# refuse; checking one costs ~0.1 ms of CPU): bounds one page's work whatever the query; the
# page then says where to go on.
SEARCH_MAX_SCAN = 500
# ... and MongoDB may spend at most this long on it: a query whose every term is common while
# they rarely meet would otherwise walk a large part of the room. The page found so far is
# returned, marked partial.
SEARCH_MAX_MS = 1000
# Counting a query's terms to find its rarest stops here: a term in more messages than this
# is "common", and among common terms any may lead (docs/SEARCH.md). Counting is a covered
# index scan; 1000 keys cost well under a millisecond.
SEARCH_COUNT_CAP = 1000
# A query of several terms is answered by intersecting the terms' seqs on the index
# (``_intersect``), reading this many seqs of the leading term at a time: ~2,000 index keys
# cost about a millisecond, and a chunk finds a page when the terms meet in 1 % of messages.
SEARCH_INTERSECT_CHUNK = 2000
# When every term reached SEARCH_COUNT_CAP and a first chunk did not fill the page, the terms
# are counted again up to this (index keys only, ~10 ms at most), to lead with the rarest.
SEARCH_RECOUNT_CAP = 10_000
# Search fields never leave the store with an event.
_NO_SEARCH_FIELDS = {"terms": 0, "tv": 0}
# The upgrade's progress marker: a document of the ``meta`` collection.
BACKFILL_MARKER = "search_backfill"


@dataclass
class SearchPage:
    """One page of search results, newest first, and where the next page starts (``before``:
    the lowest seq looked at, which is below the last result's when the scan bound cut the
    page short)."""

    events: list[dict[str, Any]]
    has_more: bool
    before: int | None
    partial: bool = False  # SEARCH_MAX_MS ran out: there may be matches not looked at


class SearchStore:
    """The search half of the store, on ``EventStore``'s collections (``EventStore.search``).

    ``reindex`` is THE call for "a message's current text changed": an edit passes the new
    text, a delete passes None (un-index); pass the edit's or delete's transaction session so
    that the event and the index change commit together.
    """

    def __init__(self, events: Any, meta: Any) -> None:
        self.events, self.meta = events, meta

    async def create_indexes(self) -> None:
        await self.events.create_index(
            [("room", ASC), ("terms", ASC), ("seq", DESC)],
            name="room_terms_seq",
            partialFilterExpression={"terms": {"$exists": True}},
        )

    async def reindex(
        self, room: str, seq: int, nick: str, text: str | None, session: Any = None
    ) -> None:
        """Index message ``seq`` of ``room`` under ``text`` (by ``nick``), or un-index it
        (``text`` None: deleted). In the caller's transaction when given its ``session``.

        The trap: ``find`` checks each candidate's ``text`` field exactly, so the caller also
        sets the document's ``text`` to the current text (as an edit does anyway)."""
        fields = search.index_fields({"type": "message", "nick": nick, "text": text})
        update = {"$set": fields} if fields else {"$unset": {"terms": "", "tv": ""}}
        await self.events.update_one({"room": room, "seq": seq}, update, session=session)

    async def find(
        self, room: str, query: search.Query, before: int | None, limit: int
    ) -> SearchPage:
        """Up to ``limit`` messages matching ``query`` below seq ``before``, newest first.

        The index narrows by every term (counting them, then intersecting their seqs on the
        index, see ``_rarest_first`` and ``_intersect``: a few index-only queries), one query
        reads the candidates newest first, ``query.matches`` checks each one's text exactly,
        and the cursor is read until ``limit`` + 1 match or SEARCH_MAX_SCAN candidates were
        read."""
        base: dict[str, Any] = {"room": room}
        if before is not None:
            base["seq"] = {"$lt": before}
        found: list[dict[str, Any]] = []
        low = before
        try:
            with pymongo.timeout(SEARCH_MAX_MS / 1000):
                terms, tied = await self._rarest_first(base, query.terms, SEARCH_COUNT_CAP)
                if not terms:
                    return SearchPage([], False, None)
                filt = dict(base, terms={"$all": terms})
                exhausted = True
                if len(terms) > 1:
                    seqs, exhausted = await self._intersect(base, terms, limit + 1, tied)
                    if tied and not exhausted and len(seqs) <= limit:
                        # Every term is common and one chunk did not fill the page: which
                        # is rarer matters now; count further, and start again behind it.
                        terms, _ = await self._rarest_first(base, terms, SEARCH_RECOUNT_CAP)
                        seqs, exhausted = await self._intersect(base, terms, limit + 1)
                    filt = {"room": room, "seq": {"$in": seqs}}
                cursor = self.events.find(filt, _NO_SEARCH_FIELDS)
                cursor = cursor.sort("seq", DESC).batch_size(max(limit + 1, 50))
                if "terms" in filt:
                    cursor = cursor.hint("room_terms_seq")
                scanned = 0
                try:
                    async for doc in cursor:
                        scanned += 1
                        low = doc["seq"]
                        if query.matches(doc.get("text", ""), doc["nick"]):
                            found.append(doc)
                            if len(found) > limit:
                                break
                        if scanned >= SEARCH_MAX_SCAN:
                            return SearchPage([to_event(d) for d in found], True, low)
                finally:
                    with contextlib.suppress(PyMongoError):
                        await cursor.close()
        except (ExecutionTimeout, NetworkTimeout):
            # The time ran out (on the server, or waiting for its answer, which a loaded
            # machine makes the first to strike): what was found is shown; going on makes
            # sense only below what was looked at.
            return SearchPage([to_event(d) for d in found], low != before, low, partial=True)
        if len(found) <= limit and not exhausted:
            # The intersection stopped at its bound before the page was full: go on below.
            return SearchPage([to_event(d) for d in found], True, low)
        has_more = len(found) > limit
        found = found[:limit]
        return SearchPage(
            [to_event(d) for d in found], has_more, found[-1]["seq"] if has_more else None
        )

    async def _intersect(
        self, base: dict[str, Any], terms: list[str], want: int, one_chunk: bool = False
    ) -> tuple[list[int], bool]:
        """Seqs of messages matching ``base`` that hold every term, newest first, found on the
        index alone (covered scans: no message is read), and whether there are no more.

        The leading term's seqs are read newest first, SEARCH_INTERSECT_CHUNK at a time; of
        each chunk, the seqs that the next term has too are asked for with ``$in``, then the
        next term's, and so on; chunks are read until ``want`` seqs are found, or
        SEARCH_MAX_SCAN, or the leading term has no more (or after one chunk if
        ``one_chunk``). Cost: a few index keys per message of the leading term looked at,
        whether or not the terms meet."""
        room, upper = base["room"], base.get("seq", {}).get("$lt")
        found: list[int] = []
        while len(found) < want:
            lead: dict[str, Any] = {"room": room, "terms": terms[0]}
            if upper is not None:
                lead["seq"] = {"$lt": upper}
            chunk = await self._seqs(lead, SEARCH_INTERSECT_CHUNK)
            if not chunk:
                return found, True
            upper, seqs = chunk[-1], chunk
            for term in terms[1:]:
                seqs = await self._seqs({"room": room, "terms": term, "seq": {"$in": seqs}}, 0)
                if not seqs:
                    break
            found += seqs
            if len(chunk) < SEARCH_INTERSECT_CHUNK:
                return found, True
            if len(found) >= SEARCH_MAX_SCAN or one_chunk:
                break
        return found, False

    async def _seqs(self, filt: dict[str, Any], limit: int) -> list[int]:
        """The seqs of ``filt`` (room and one term) newest first, from the index alone."""
        cursor = self.events.find(filt, {"_id": 0, "seq": 1}).sort("seq", DESC)
        cursor = cursor.hint("room_terms_seq").batch_size(SEARCH_INTERSECT_CHUNK)
        if limit:
            cursor = cursor.limit(limit)
        return [row["seq"] async for row in cursor]

    async def _rarest_first(
        self, base: dict[str, Any], terms: list[str], cap: int
    ) -> tuple[list[str], bool]:
        """``terms``, the rarest first ([] when one occurs nowhere), each counted up to
        ``cap``; and whether they all reached it (a tie: any may be the rarest).

        MongoDB's planner scans a multikey index for the FIRST element of ``$all`` only and
        checks the others on each document it fetches: the term that leads decides the
        cost. So the terms are counted first (covered index scans, in one round trip)."""
        if len(terms) < 2:
            return terms, False
        counts = await self._count_terms(base, terms, cap)
        if min(counts) == 0:
            return [], False
        ranked = [t for _, t in sorted(zip(counts, terms), key=lambda ct: ct[0])]
        return ranked, min(counts) == cap

    async def _count_terms(self, base: dict[str, Any], terms: list[str], cap: int) -> list[int]:
        """How many messages (at most ``cap``) match ``base`` and hold each term; one round
        trip: the counts one after another on the server."""

        def count(i: int) -> list[dict[str, Any]]:
            return [{"$match": dict(base, terms=terms[i])}, {"$limit": cap},
                    {"$group": {"_id": i, "n": {"$sum": 1}}}]

        pipeline = count(0) + [
            {"$unionWith": {"coll": self.events.name, "pipeline": count(i)}}
            for i in range(1, len(terms))
        ]
        counts = [0] * len(terms)
        async for row in self.events.aggregate(pipeline):
            counts[row["_id"]] = row["n"]
        return counts

    # The upgrade (chatapp/reindex.py): walk every event by _id, index what is not indexed
    # at INDEX_VERSION, remember how far it got.

    async def unindexed(self, after: Any, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` messages past ``_id`` ``after`` (None: from the first) not indexed
        at the current version, in ``_id`` order."""
        filt: dict[str, Any] = {"type": "message", "tv": {"$ne": search.INDEX_VERSION}}
        if after is not None:
            filt["_id"] = {"$gt": after}
        cursor = self.events.find(filt, {"terms": 0}).sort("_id", ASC).limit(limit)
        return await cursor.to_list(limit)

    async def index_batch(self, docs: list[dict[str, Any]]) -> int:
        """Index ``docs`` (as ``unindexed`` read them); how many were written. A message
        edited or deleted since it was read is left alone: its edit indexed it already."""
        ops = []
        for doc in docs:
            fields = search.index_fields(doc)
            if fields:
                ops.append(pymongo.UpdateOne(
                    {"_id": doc["_id"], "text": doc["text"],
                     "tv": {"$ne": search.INDEX_VERSION}},
                    {"$set": fields},
                ))
        if not ops:
            return 0
        result = await self.events.bulk_write(ops, ordered=False)
        return result.modified_count

    async def backfill_marker(self) -> dict[str, Any] | None:
        """The upgrade's progress: ``{version, after, done}``, or None before it started."""
        return await self.meta.find_one({"_id": BACKFILL_MARKER})

    async def save_backfill_marker(self, after: Any, done: bool) -> None:
        await self.meta.update_one(
            {"_id": BACKFILL_MARKER},
            {"$set": {"version": search.INDEX_VERSION, "after": after, "done": done}},
            upsert=True,
        )

    async def reset_backfill(self) -> None:
        """Make the next upgrade walk the whole history again (it indexes only what is not
        indexed at the current version): after a rolling upgrade, or a restore of old data."""
        await self.meta.delete_one({"_id": BACKFILL_MARKER})
