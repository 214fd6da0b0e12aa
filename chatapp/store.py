"""All MongoDB access, through Motor: events, per-room id counters, sessions, presence leases
and the change stream.

Nothing else in chatapp imports motor or pymongo's collection API; swapping Motor for PyMongo's
own async client touches this file alone.

Collections:

- ``events``: one document per event, ``{room, seq, type, nick, ts, sid?, cid?}`` and its
  kind's fields (``kinds``). The public id is ``seq`` zero-padded (see ``rules.format_id``).
  A message's document holds its current state: an edit, delete or reaction updates it in the
  transaction that inserts the action (see "actions on messages" below).
- ``counters``: ``{_id: room, seq}``, the last sequence number handed out in a room.
- ``sessions``: a guest's ``{_id: sid, nick, skeleton, skeleton_cased, expires_at}``, unique
  indexes on both keys (``chatapp.nicknames``) making nickname uniqueness hold however many
  app processes share the database; an account's ``{_id: sid, nick, account, expires_at}``
  (one per device, so not under those indexes). See "accounts" at the end.
- ``accounts``: ``{_id: skeleton, cased, nick, hash, created}``; ``attempts``: counters of
  failed logins and of registrations. Both through ``AccountStore`` (at the end).
- ``rooms``: a room's owner and moderators, through ``RoleStore`` (at the end).
- ``members`` (cluster mode): presence, one document per (room, session); see
  ``join_member``.
- ``send_buckets`` (cluster mode): the send rate limit, one token bucket per session; see
  ``take_send_token``.
- ``reads`` (read markers) and ``signals`` (cluster typing): in ``store_rooms.py``
  (``EventStore.rooms``), this module's part for rooms, markers and signals.

Durability: writes are acknowledged by a majority of the replica set, journaled; reads see
only what a majority has (``connect``, and stated again on the reads the writer's promises
rest on: ``find_batch``, ``after``); ``append``'s transaction reads a snapshot and commits
with the majority. Nothing is left to the server's defaults.

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
from dataclasses import dataclass, field
from typing import Any

import pymongo
from motor.motor_asyncio import AsyncIOMotorClient
from pymongo.errors import DuplicateKeyError, ExecutionTimeout, NetworkTimeout, PyMongoError
from pymongo.read_concern import ReadConcern
from pymongo.write_concern import WriteConcern

from chatapp import kinds, search
from chatapp.errors import ChatError
from chatapp.nicknames import NickKeys
from chatapp.rules import format_id, parse_id
from chatapp.store_rooms import RoomStore

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

# Durability, stated rather than left to the server's defaults (which a replica set with an
# arbiter, or an old one, sets otherwise): a write is acknowledged once a majority of the
# members have it in their journal, so no failover or power cut can take it back.
MAJORITY_WRITE = WriteConcern("majority", j=True)
# What every read sees unless it says otherwise: only what a majority has, which no failover
# can roll back. The reads whose answer is acknowledged or published state it again.
MAJORITY_READ = ReadConcern("majority")
# A transaction reads one snapshot (its find of the batch's client_ids and the counter agree);
# committed with MAJORITY_WRITE, what it read is majority-committed too: the commit of a
# transaction that only found its sends stored already waits for a majority as well.
TRANSACTION_READ = ReadConcern("snapshot")
# A transaction that failed (its budget ran out, the connection dropped) is ended in a budget
# of its own, outside the expired one: an abort, or one more try of a commit whose outcome is
# unknown. Under the expired budget the driver does not even send them, and the transaction
# stays open on the server, holding the room's counter, so that every other send to the room
# fails on a write conflict until MongoDB expires it (transactionLifetimeLimitSeconds: 60 s by
# default, checked every 30 s). Half a second is a hundred times what an abort takes on a
# healthy primary; on a primary that is gone it is as good as lost (and so is the
# transaction: a primary that steps down aborts its transactions, a killed one has none).
END_TRANSACTION_SECONDS = 0.5


def connect(uri: str, timeout: float) -> AsyncIOMotorClient:
    """A Motor client whose every operation gives up after ``timeout`` seconds.

    The bound is what lets a send answer ``503 store_unavailable`` within seconds while
    MongoDB is down, instead of hanging until the driver's 30 s server-selection default.

    Writes are acknowledged by a majority, journaled (``MAJORITY_WRITE``); reads see what a
    majority has (``MAJORITY_READ``); reads go to the primary (the default, kept). A URI
    that sets ``w``, ``journal`` or ``readConcernLevel`` itself is overridden: chatapp's
    promise that an acknowledged message survives a failover rests on these.
    """
    return AsyncIOMotorClient(
        uri,
        timeoutMS=int(timeout * 1000),
        serverSelectionTimeoutMS=int(timeout * 1000),
        tz_aware=False,
        w=MAJORITY_WRITE.document["w"],
        journal=True,
        readConcernLevel=MAJORITY_READ.level,
    )


async def _end_failed_transaction(session: Any, committing: bool, exc: BaseException) -> bool:
    """End ``session``'s transaction, whose attempt failed with ``exc``, within
    ``END_TRANSACTION_SECONDS`` of its own; True if it committed after all.

    Before its commit: aborted. A commit whose outcome is unknown (no answer in time, the
    connection dropped) is tried once more (commitTransaction may be repeated: a commit that
    had landed answers success again): pymongo allows no abort after a commit was tried.
    A commit that failed for certain left nothing open on the server.
    """
    with pymongo.timeout(END_TRANSACTION_SECONDS):
        if session.in_transaction:
            # Not Motor's `async with`: its abort, failing too (the client closed at
            # shutdown), replaced the error, a cancellation included, and the writer then
            # retried forever: the process never exited.
            with contextlib.suppress(PyMongoError):
                await session.abort_transaction()
            return False
        if committing and isinstance(exc, PyMongoError) \
                and exc.has_error_label("UnknownTransactionCommitResult"):
            try:
                await session.commit_transaction()
            except PyMongoError:
                return False
            return True
    return False


def to_event(doc: dict[str, Any]) -> dict[str, Any]:
    """The public form of a stored event (the contract's shape, no internal fields): what
    its kind shows (``kinds.public``)."""
    return kinds.public(dict(doc, id=format_id(doc["seq"])))


@dataclass
class Appended:
    """What ``append`` did with one new event: stored it now, or found it stored before.

    For an action on a message (``kinds``), also: ``refusal``, the error when its target's
    state refused it (nothing stored, ``event`` None); ``reactions``, the target's reactions
    after a reaction (``event`` None when the reaction changed nothing)."""

    event: dict[str, Any] | None
    is_new: bool
    refusal: ChatError | None = None
    reactions: dict[str, list[str]] | None = None


class EventStore:
    def __init__(self, client: AsyncIOMotorClient, db_name: str = "chatapp") -> None:
        self.client = client
        db = client[db_name]
        self.events = db["events"]
        # The same collection with read concern majority stated on it: for the reads that
        # decide what is acknowledged or published (``find_batch``, ``after``).
        self.events_majority = self.events.with_options(read_concern=MAJORITY_READ)
        self.counters = db["counters"]
        self.sessions = db["sessions"]
        # Cluster presence: one document per (room, session), see "presence leases" below.
        self.members = db["members"]
        # Cluster rate limit: one token bucket per session, see ``take_send_token``.
        self.send_buckets = db["send_buckets"]
        # Read markers, the rooms directory, cluster signals (store_rooms.py).
        self.rooms = RoomStore(db)
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
        # Actions on a message: what a delete scrubs (its edits, replies quoting it).
        await self.events.create_index(
            [("room", ASC), ("target", ASC)], partialFilterExpression={"target": {"$exists": True}}
        )
        await self.events.create_index(
            [("room", ASC), ("reply_to", ASC)],
            partialFilterExpression={"reply_to": {"$exists": True}},
        )
        await AccountStore(self).create_indexes()
        await self.sessions.create_index("expires_at")
        # Cluster presence: "who is in this room", and the sweep's "whose leases all ran out".
        await self.members.create_index([("room", ASC), ("until_max", ASC)])
        await self.members.create_index("until_max")
        # A bucket nobody has drawn from since it refilled says nothing: MongoDB drops it.
        await self.send_buckets.create_index("expire_at", expireAfterSeconds=0)
        await self.rooms.create_indexes()
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
        never stored long after its senders were told it was not. A failed attempt is then
        ended (aborted, or its unknown commit tried once more) within
        ``END_TRANSACTION_SECONDS`` more, so that it does not hold the room's counter; the
        trap it avoids: ended under the expired budget, it stayed open on the server for up
        to 90 s and the room refused every send meanwhile.

        Committed with ``MAJORITY_WRITE`` from a ``snapshot``: a result, new or found, is
        one a majority has.
        """

        async def transaction(session: Any) -> list[Appended]:
            found = await self._find_sent(room, docs, session)
            fresh = [d for d in docs if _send_key(d) not in found]
            results: dict[int, Appended] = {}
            # Actions and replies, decided against their targets' state in this transaction.
            changes = await self._decide_on_targets(room, fresh, session)
            results.update(changes.answers)
            fresh = changes.accepted
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
                    results[id(doc)] = Appended(
                        to_event(row), True, reactions=changes.reactions.get(id(doc))
                    )
                await self._save_targets(room, changes, results, session)
            return [
                results.get(id(d)) or Appended(found[_send_key(d)], False) for d in docs
            ]

        # Not Motor's with_transaction: it retries a transient error (MongoDB unreachable
        # included) for 120 s whatever the client's timeout, so a batch whose senders were
        # told "503, nothing was stored" went on to be stored once MongoDB came back.
        # (Motor's stubs declare the ``options`` property as a method.)
        limit = timeout if timeout is not None else (
            self.client.options.timeout or 120.0)  # type: ignore[attr-defined]
        deadline = time.monotonic() + limit
        async with await self.client.start_session() as session:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:  # (pymongo.timeout(0) would mean "no limit at all")
                    raise ExecutionTimeout("no time left to store the batch")
                # No max_commit_time_ms: under pymongo.timeout the driver ignores it and
                # sends the budget left as the commit's maxTimeMS, which bounds it anyway.
                session.start_transaction(
                    read_concern=TRANSACTION_READ, write_concern=MAJORITY_WRITE
                )
                results: list[Appended] = []
                committing = False
                try:
                    with pymongo.timeout(left):
                        results = await transaction(session)
                        committing = True
                        await session.commit_transaction()
                    return results
                except BaseException as exc:
                    # Outside the expired budget: see END_TRANSACTION_SECONDS.
                    if await _end_failed_transaction(session, committing, exc):
                        return results  # the commit went through when tried again
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
        self, room: str, docs: list[dict[str, Any]], session: Any = None,
        collection: Any = None,
    ) -> dict[tuple[str, str], dict[str, Any]]:
        """Which of ``docs`` are stored: in ``append``'s transaction (its snapshot), or read
        through ``collection`` (``find_batch``'s majority reads)."""
        keys = {_send_key(d) for d in docs if "cid" in d}
        if not keys:
            return {}
        query = {
            "room": room,
            "cid": {"$in": sorted({cid for _, cid in keys})},
            "sid": {"$in": sorted({sid for sid, _ in keys})},
        }
        found = {}
        source = self.events if collection is None else collection  # (no bool() on these)
        async for row in source.find(query, session=session):
            key = (row["sid"], row["cid"])
            if key in keys:
                found[key] = to_event(row)
        return found

    async def find_batch(
        self, room: str, docs: list[dict[str, Any]]
    ) -> dict[tuple[str, str], dict[str, Any]]:
        """Which of ``docs`` are stored for good, by (sid, cid): to learn what a failed append
        did.

        Read concern ``majority``, stated here because the writer's promise rests on it: what
        this finds is acknowledged and published, so it must be what no failover can roll
        back. A ``local`` read on a primary that has lost its secondaries finds what only that
        primary holds: acknowledged, then lost, and its ids handed out again. Not found here
        does not mean never stored: a commit a majority has but has not yet confirmed becomes
        visible a moment later (a retry with the same client_id then returns it).
        """
        return await self._find_sent(room, docs, collection=self.events_majority)

    async def latest(self, room: str, limit: int) -> list[dict[str, Any]]:
        """The room's last ``limit`` events, oldest first."""
        cursor = self.events.find({"room": room}).sort("seq", DESC).limit(limit)
        rows = await cursor.to_list(limit)
        return [to_event(r) for r in reversed(rows)]

    async def after(self, room: str, seq: int, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` events with a sequence number above ``seq``, oldest first.

        Read concern ``majority`` (stated, not left to the client's default): the writer
        publishes what this returns (a gap) and cursors resume from it, so it must never
        return an event a failover can still roll back."""
        cursor = (
            self.events_majority.find({"room": room, "seq": {"$gt": seq}})
            .sort("seq", ASC).limit(limit)
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

    # -- actions on messages: the target's current state, in the append's transaction --------
    #
    # A message's document holds its current state (``kinds``): every edit, delete and
    # reaction updates it in the transaction that inserts the action, so a page of history is
    # one query. Decisions are made here, on the state this transaction reads: two actions on
    # one message (a delete and an edit from two tabs) cannot both pass on a stale state,
    # since every append of the room also writes its counter, and MongoDB lets only one of two
    # concurrent transactions commit it (the other retries from a fresh read).

    async def _decide_on_targets(
        self, room: str, docs: list[dict[str, Any]], session: Any
    ) -> _TargetChanges:
        """Which of ``docs`` (new, in order) are stored, and what they change: replies get
        their preview, actions their verdict (``kinds.decide``), each against the state the
        actions before it in the batch left."""
        changes = _TargetChanges()
        wanted = {parse_id(d[f]) for d in docs for f in ("target", "reply_to") if d.get(f)}
        if not wanted:
            changes.accepted = docs
            return changes
        targets = {
            row["seq"]: row
            async for row in self.events.find(
                {"room": room, "seq": {"$in": sorted(wanted)}}, session=session
            )
        }
        first_delete: dict[str, dict[str, Any]] = {}  # target -> this batch's delete of it
        for doc in docs:
            if doc.get("reply_to"):
                target = targets.get(parse_id(doc["reply_to"]))
                if target is None or target.get("type") != "message":
                    changes.answers[id(doc)] = Appended(None, False, refusal=ChatError(
                        "bad_reply", "reply_to must be the id of a message in this room.", 400))
                    continue
                doc["reply_preview"] = kinds.preview_of(target)
            if kinds.targets(doc):
                seq = parse_id(doc["target"])
                verdict = kinds.decide(doc, targets.get(seq))
                if verdict.refusal is not None:
                    changes.answers[id(doc)] = Appended(None, False, refusal=verdict.refusal)
                    continue
                if verdict.noop:
                    current = targets[seq].get("reactions", {})
                    changes.answers[id(doc)] = Appended(None, False, reactions=current)
                    continue
                if verdict.already_deleted:
                    if doc["target"] in first_delete:  # deleted earlier in this batch
                        changes.repeats.append((doc, first_delete[doc["target"]]))
                    else:
                        changes.answers[id(doc)] = await self._delete_event_of(
                            room, doc["target"], session)
                    continue
                assert verdict.state is not None
                targets[seq] = changes.states[seq] = verdict.state
                if doc["type"] == "delete":
                    first_delete[doc["target"]] = doc
                    changes.deleted.append(doc["target"])
                elif doc["type"] == "reaction":
                    changes.reactions[id(doc)] = verdict.state.get("reactions", {})
            changes.accepted.append(doc)
        return changes

    async def _delete_event_of(self, room: str, target: str, session: Any) -> Appended:
        row = await self.events.find_one(
            {"room": room, "type": "delete", "target": target}, session=session
        )
        if row is None:  # a tombstone without its delete event: not made by this code
            return Appended(None, False, refusal=ChatError(
                "deleted", "That message was deleted.", 409))
        return Appended(to_event(row), False)

    async def _save_targets(
        self, room: str, changes: _TargetChanges, results: dict[int, Appended], session: Any
    ) -> None:
        """Write the targets' new states, and take a deleted message's text out of what
        quotes it: its edit events and the previews of replies to it (``kinds.scrub``)."""
        for seq, state in changes.states.items():
            update: dict[str, Any] = {}
            kept = {f: state[f] for f in _STATE_FIELDS if f in state}
            gone = {f: "" for f in _STATE_FIELDS if f not in state}
            # The search index follows the current text in this same transaction: an edited
            # message is found by its new words only, a deleted one by none.
            index = search.index_fields(state)
            kept.update(index)
            gone.update({f: "" for f in search.INDEX_FIELDS if f not in index})
            if kept:
                update["$set"] = kept
            if gone:
                update["$unset"] = gone
            await self.events.update_one({"room": room, "seq": seq}, update, session=session)
        for target in changes.deleted:
            await self.events.update_many(
                {"room": room, "type": "edit", "target": target},
                {"$unset": {"text": "", "mentions": ""}}, session=session,
            )
            await self.events.update_many(
                {"room": room, "reply_to": target, "reply_preview.deleted": {"$ne": True}},
                {"$unset": {"reply_preview.text": ""}, "$set": {"reply_preview.deleted": True}},
                session=session,
            )
        for doc, first in changes.repeats:
            results[id(doc)] = Appended(results[id(first)].event, False)

    async def listed_before(
        self, room: str, seq: int | None, limit: int
    ) -> list[dict[str, Any]]:
        """Up to ``limit`` events just below ``seq`` (or the latest) of the kinds the
        current-state views list (messages, in their current state; joins, leaves), oldest
        first. Actions on messages are left out: their effect is in the messages."""
        query: dict[str, Any] = {"room": room, "type": {"$nin": kinds.UNLISTED}}
        if seq is not None:
            query["seq"] = {"$lt": seq}
        cursor = self.events.find(query).sort("seq", DESC).limit(limit)
        rows = await cursor.to_list(limit)
        return [to_event(r) for r in reversed(rows)]

    async def reactions_of(self, room: str, target: str) -> dict[str, list[str]]:
        """A message's reactions now ({} if none, or no such message)."""
        row = await self.events.find_one(
            {"room": room, "seq": parse_id(target)}, {"reactions": 1}
        )
        return (row or {}).get("reactions", {})

    # -- sessions -----------------------------------------------------------------------------

    async def free_expired_nick(self, key: NickKeys) -> list[str]:
        """Delete the guest sessions holding either key of a nickname if they are past their
        expiry (a sweep may not have run yet); the sids they had, so callers can forget them
        too."""
        freed = []
        for _ in range(2):  # at most one holder per key
            doc = await self.sessions.find_one_and_delete(
                {**_holds(key), "expires_at": {"$lt": time.time()}}, projection={"_id": 1}
            )
            if doc is None:
                break
            freed.append(doc["_id"])
        return freed

    async def claim_nick(self, sid: str, nick: str, key: NickKeys, expires_at: float) -> bool:
        """Record a new guest session; False when a session already has that nickname (an
        expired one is freed by ``free_expired_nick`` first)."""
        try:
            await self.sessions.insert_one(
                {"_id": sid, "nick": nick, "skeleton": key.skeleton,
                 "skeleton_cased": key.cased, "expires_at": expires_at}
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
        """A change stream of new events, of sessions that ended and of typing signals
        (anywhere in the cluster).

        Use as ``async with store.watch(...) as stream: async for change in stream``.
        """
        pipeline = [
            {"$match": {"$or": [
                {"ns.coll": self.events.name, "operationType": "insert"},
                {"ns.coll": self.sessions.name, "operationType": "delete"},
                {"ns.coll": self.rooms.signals.name, "operationType": "insert"},
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


# A message's fields that actions change (``kinds.apply``): written back whole.
_STATE_FIELDS = ("text", "mentions", "reply_to", "reply_preview", "edited", "deleted", "reactions")


@dataclass
class _TargetChanges:
    """What a batch's actions and replies decided (``_decide_on_targets``)."""

    accepted: list[dict[str, Any]] = field(default_factory=list)  # to store, in order
    answers: dict[int, Appended] = field(default_factory=dict)  # id(doc) -> not stored
    states: dict[int, dict[str, Any]] = field(default_factory=dict)  # seq -> new state
    deleted: list[str] = field(default_factory=list)  # ids of messages deleted now
    reactions: dict[int, dict[str, list[str]]] = field(default_factory=dict)  # id(doc) ->
    repeats: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)


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


# -- the server registry: which servers use this database, and in which mode -----------------
#
# ``servers``: ``{_id: server id, mode: "local" | "cluster", machine, host, pid, started,
# expires_at}``, one document per running server process (see ``chatapp/registry.py``, the
# only caller). ``expires_at`` is on MongoDB's clock (``$$NOW``), so app machines whose clocks
# differ still agree on which registrations are live; the TTL index only tidies up (MongoDB's
# TTL monitor runs once a minute), liveness is always decided by comparing with ``$$NOW``.


def _servers(store: EventStore) -> Any:
    return store.events.database["servers"]


async def create_server_index(store: EventStore) -> None:
    await _servers(store).create_index("expires_at", expireAfterSeconds=0)


async def register_server(
    store: EventStore, server_id: str, info: dict[str, Any], ttl: float
) -> None:
    """Record (or refresh) server ``server_id`` with ``info``, live for ``ttl`` s from now."""
    await _servers(store).update_one({"_id": server_id}, [
        {"$set": {**{k: {"$literal": v} for k, v in info.items()},
                  "started": {"$ifNull": ["$started", "$$NOW"]},
                  "expires_at": {"$add": ["$$NOW", int(ttl * 1000)]}}},
    ], upsert=True)


async def renew_server(store: EventStore, server_id: str, ttl: float) -> bool:
    """Extend the registration by ``ttl`` s from now; False if it is gone (it expired, or
    another server removed it as stale): the caller registers again."""
    result = await _servers(store).update_one(
        {"_id": server_id, "$expr": {"$gt": ["$expires_at", "$$NOW"]}},
        [{"$set": {"expires_at": {"$add": ["$$NOW", int(ttl * 1000)]}}}],
    )
    return bool(result.matched_count)


async def live_servers(store: EventStore) -> list[dict[str, Any]]:
    """Every registration not yet expired, with ``seconds_left`` until it does."""
    pipeline = [
        {"$match": {"$expr": {"$gt": ["$expires_at", "$$NOW"]}}},
        {"$addFields": {"seconds_left": {
            "$divide": [{"$subtract": ["$expires_at", "$$NOW"]}, 1000]}}},
    ]
    return await _servers(store).aggregate(pipeline).to_list(None)


async def remove_server(store: EventStore, server_id: str) -> None:
    await _servers(store).delete_one({"_id": server_id})


# -- accounts: registered nicknames, their sessions, failed attempts ----------------------------
#
# An account is ``{_id: skeleton, cased, nick, hash, created}``: its two keys are unique like a
# guest's. A guest session holding a key and an account with that key never both exist for
# long: registering first inserts the account, then turns the guest session into an account
# session; creating a guest session inserts it, then looks for an account with either key and
# deletes itself if it finds one (``Sessions.create``). Whichever of two racing writers comes
# second sees the other's document.


def _holds(key: NickKeys) -> dict[str, Any]:
    """(Query) guest sessions holding either key."""
    return {"$or": [{"skeleton": key.skeleton}, {"skeleton_cased": key.cased}]}


class AccountStore:
    """Accounts, account sessions and attempt counters, over an ``EventStore``'s database."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.sessions = store.sessions
        db = store.sessions.database
        self.accounts = db["accounts"]
        self.attempts = db["attempts"]

    async def create_indexes(self) -> None:
        guest = {"skeleton": {"$exists": True}}
        await self.sessions.create_index(
            "skeleton", unique=True, partialFilterExpression=guest
        )
        await self.sessions.create_index(
            "skeleton_cased", unique=True,
            partialFilterExpression={"skeleton_cased": {"$exists": True}},
        )
        await self.sessions.create_index("account")
        await self.migrate_session_keys()
        # The old rule's index (NFKC-casefold): weaker than the skeleton's, and it would
        # count every account session (no nick_key) as one more holder of the key null.
        with contextlib.suppress(pymongo.errors.OperationFailure):
            await self.sessions.drop_index("nick_key_1")
        await self.accounts.create_index("cased", unique=True)
        await self.attempts.create_index("expire_at", expireAfterSeconds=0)
        await RoleStore(self.store).create_indexes()

    async def migrate_session_keys(self) -> None:
        """Sessions stored before skeletons (only ``nick_key``) get both keys now. A session
        whose keys another already holds ("ann" and "аnn", both live under the old rule) is
        ended: the unique index cannot hold both, and its holder chooses again. A guest's
        session would expire within the grace period after its last connection anyway; this
        keeps a connected one."""
        from chatapp import nicknames  # (the store otherwise needs no Unicode data)

        old = {"skeleton": {"$exists": False}, "account": {"$exists": False}}
        async for doc in self.sessions.find(old, {"nick": 1}):
            key = nicknames.keys(doc["nick"])
            try:
                await self.sessions.update_one(
                    {"_id": doc["_id"]},
                    {"$set": {"skeleton": key.skeleton, "skeleton_cased": key.cased},
                     "$unset": {"nick_key": ""}},
                )
            except DuplicateKeyError:
                log.warning("session of %r ended: its nickname now looks like another's",
                            doc["nick"])
                await self.sessions.delete_one({"_id": doc["_id"]})

    async def find_account(self, key: NickKeys) -> dict[str, Any] | None:
        """The account holding either key, or None."""
        return await self.accounts.find_one(
            {"$or": [{"_id": key.skeleton}, {"cased": key.cased}]}
        )

    async def find_account_by_id(self, account: str) -> dict[str, Any] | None:
        return await self.accounts.find_one({"_id": account})

    async def insert_account(self, key: NickKeys, nick: str, hash_: str) -> bool:
        """False if an account holds either key already."""
        try:
            await self.accounts.insert_one(
                {"_id": key.skeleton, "cased": key.cased, "nick": nick, "hash": hash_,
                 "created": time.time()}
            )
        except DuplicateKeyError:
            return False
        return True

    async def set_hash(self, account: str, hash_: str) -> None:
        await self.accounts.update_one({"_id": account}, {"$set": {"hash": hash_}})

    async def delete_account(self, account: str) -> None:
        await self.accounts.delete_one({"_id": account})

    async def guest_to_account(self, sid: str, key: NickKeys, expires_at: float) -> bool:
        """The guest session ``sid`` holding ``key`` becomes a session of account ``key``."""
        result = await self.sessions.update_one(
            {"_id": sid, "skeleton": key.skeleton},
            {"$set": {"account": key.skeleton, "expires_at": expires_at},
             "$unset": {"skeleton": "", "skeleton_cased": ""}},
        )
        return result.modified_count == 1

    async def account_to_guest(self, sid: str, key: NickKeys, expires_at: float) -> bool:
        """The account session ``sid`` becomes a guest's holding ``key``; False if it is
        gone or a guest holds the key (then nothing changed)."""
        try:
            result = await self.sessions.update_one(
                {"_id": sid, "account": key.skeleton},
                {"$set": {"skeleton": key.skeleton, "skeleton_cased": key.cased,
                          "expires_at": expires_at},
                 "$unset": {"account": ""}},
            )
        except DuplicateKeyError:
            return False
        return result.modified_count == 1

    async def add_account_session(
        self, sid: str, nick: str, account: str, expires_at: float
    ) -> None:
        await self.sessions.insert_one(
            {"_id": sid, "nick": nick, "account": account, "expires_at": expires_at}
        )

    async def session_account(self, sid: str) -> str | None:
        """The account ``sid`` is a live session of, or None (a guest, or gone)."""
        doc = await self.sessions.find_one(
            {"_id": sid, "expires_at": {"$gte": time.time()}}, {"account": 1}
        )
        return doc.get("account") if doc else None

    async def account_sessions(self, account: str) -> list[str]:
        """The account's sessions, oldest expiry first."""
        rows = await self.sessions.find({"account": account}, {"_id": 1}).sort(
            "expires_at", ASC
        ).to_list(None)
        return [r["_id"] for r in rows]

    async def delete_sessions(self, sids: list[str]) -> None:
        if sids:
            await self.sessions.delete_many({"_id": {"$in": sids}})

    async def count_attempt(self, key: str, window: float) -> int:
        """Count one attempt under ``key`` (failed logins of a nickname, of an address...);
        how many there were in the window that began with the first of them. Shared by every
        process (one single-document update), forgotten by MongoDB when the window ends."""
        now = time.time()
        live = {"$gt": [{"$ifNull": ["$until", 0]}, now]}
        until = {"$cond": [live, "$until", now + window]}
        doc = await self.attempts.find_one_and_update(
            {"_id": key},
            [{"$set": {
                "n": {"$cond": [live, {"$add": ["$n", 1]}, 1]},
                "until": until,
                "expire_at": {"$toDate": {"$multiply": [until, 1000]}},
            }}],
            upsert=True, return_document=pymongo.ReturnDocument.AFTER, projection={"n": 1},
        )
        return int(doc["n"])

    async def attempts_counted(self, keys: list[str]) -> dict[str, int]:
        """The attempts counted under each of ``keys`` in their current windows."""
        rows = await self.attempts.find(
            {"_id": {"$in": keys}, "until": {"$gt": time.time()}}, {"n": 1}
        ).to_list(None)
        return {r["_id"]: int(r["n"]) for r in rows}

    async def clear_attempts(self, key: str) -> None:
        await self.attempts.delete_one({"_id": key})


# -- roles: room owners and moderators ----------------------------------------------------------
#
# ``rooms``: ``{_id: room, owner: account, owner_nick, moderators: [{key: account, nick}]}``,
# an account being its skeleton (an ``accounts`` _id). Admins are not stored: they are the
# ``--admins`` option, the same on every process.


class RoleStore:
    def __init__(self, store: EventStore) -> None:
        self.rooms = store.sessions.database["rooms"]

    async def create_indexes(self) -> None:
        # "Which rooms does this account hold a role in": when the account is deleted.
        await self.rooms.create_index("owner")
        await self.rooms.create_index("moderators.key")

    async def room(self, room: str) -> dict[str, Any] | None:
        return await self.rooms.find_one({"_id": room})

    async def claim(self, room: str, account: str, nick: str) -> bool:
        """Make ``account`` the owner of ``room`` if it has none; False if it has one. One
        single-document write: of two accounts claiming at once, one wins."""
        try:
            await self.rooms.update_one(
                {"_id": room, "owner": {"$exists": False}},
                {"$set": {"owner": account, "owner_nick": nick}}, upsert=True,
            )
        except DuplicateKeyError:
            return False  # the room's document exists, with an owner
        return True

    async def add_moderator(self, room: str, account: str, nick: str) -> None:
        await self.rooms.update_one(
            {"_id": room, "moderators.key": {"$ne": account}},
            {"$push": {"moderators": {"key": account, "nick": nick}}},
        )

    async def remove_moderator(self, room: str, account: str) -> None:
        await self.rooms.update_one({"_id": room}, {"$pull": {"moderators": {"key": account}}})

    async def forget_account(self, account: str) -> None:
        """The account was deleted: it owns and moderates nothing any more (whoever registers
        the nickname next must not inherit its rooms)."""
        await self.rooms.update_many(
            {"owner": account}, {"$unset": {"owner": "", "owner_nick": ""}}
        )
        await self.rooms.update_many(
            {"moderators.key": account}, {"$pull": {"moderators": {"key": account}}}
        )


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


# -- moderation: each room's mutes, bans and slow mode (chatapp/moderation.py) -------------


class ModerationStore:
    """Each room's moderation state (``chatapp.moderation``): one document per room in
    ``moderation``, ``{"_id": room, "mutes": [...], "bans": [...], "slow": seconds}``; each
    entry ``{"skeleton", "cased", "nick", "until", "addresses"}`` (``until`` None: for good)."""

    def __init__(self, store: EventStore) -> None:
        self.rooms = store.sessions.database["moderation"]

    async def state(self, room: str) -> dict[str, Any]:
        return await self.rooms.find_one({"_id": room}) or {}

    async def put(self, room: str, field: str, skeleton: str, entry: dict[str, Any] | None) -> None:
        """Replace the ``field`` ("mutes" or "bans") entry of ``skeleton`` by ``entry`` (None:
        drop it), dropping entries that ran out too. Two writes: of two moderators acting on
        one person at once, the later one's entry stands (or both, until one runs out)."""
        now = time.time()
        await self.rooms.update_one(
            {"_id": room},
            {"$pull": {field: {"$or": [{"skeleton": skeleton},
                                       {"until": {"$lt": now}}]}}},
            upsert=True,
        )
        if entry is not None:
            await self.rooms.update_one({"_id": room}, {"$push": {field: entry}})

    async def add_addresses(self, room: str, skeleton: str, addresses: list[str]) -> None:
        await self.rooms.update_one(
            {"_id": room, "bans.skeleton": skeleton},
            {"$addToSet": {"bans.$.addresses": {"$each": addresses}}},
        )

    async def set_slow(self, room: str, seconds: float) -> None:
        await self.rooms.update_one({"_id": room}, {"$set": {"slow": seconds}}, upsert=True)
