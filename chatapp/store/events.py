"""Events: ``append`` (new events, in order, in one transaction) and the reads of a room's
history.

Collections: ``events`` (one document per event, see the package's docstring) and
``counters`` (``{_id: room, seq}``, the last sequence number handed out in a room).

Idempotency: a unique index on (room, sid, cid); ``append`` inserts a batch of new messages
without reading its client_ids first, and reads them only when the index refuses one (see
``append``).

Ordering: ``append`` takes the next sequence numbers from the room's counter and inserts the
events in one transaction. Two writers (tasks or processes) that append to the same room at
once both update the counter document, so MongoDB lets only one commit and retries the other
against the new counter: a committed event never has a smaller id than one committed before it.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import pymongo
from motor.motor_asyncio import AsyncIOMotorClient
from pymongo.errors import BulkWriteError, DuplicateKeyError, ExecutionTimeout, PyMongoError

from chatapp import search
from chatapp.rules import parse_id
from chatapp.store.actions import TargetsMixin
from chatapp.store.client import (
    ASC,
    DESC,
    END_TRANSACTION_SECONDS,
    MAJORITY_WRITE,
    TRANSACTION_READ,
    _end_failed_transaction,
)
from chatapp.store.documents import Appended, to_event
from chatapp.store.orphans import OrphanSessions, may_be_left_open

# After a write conflict on a room's counter, a retry waits up to this long (at random).
CONFLICT_BACKOFF_SECONDS = 0.02
# MongoDB's error code for an insert that a unique index refuses.
DUPLICATE_KEY = 11000


class EventsMixin(TargetsMixin):
    """``EventStore``'s events: append and the reads (``events``, ``events_majority``,
    ``counters``); an append's actions are decided by ``TargetsMixin``."""

    client: AsyncIOMotorClient
    events_majority: Any
    counters: Any
    _orphans: OrphanSessions | None = None  # made by the first append

    # -- events -------------------------------------------------------------------------------

    async def append(
        self, room: str, docs: list[dict[str, Any]], timeout: float | None = None
    ) -> list[Appended]:
        """Store ``docs`` (events without ``seq``) in order, atomically, with fresh ids.

        A doc whose ``(sid, cid)`` is already stored in the room is not stored again: its
        result is the stored event with ``is_new=False``. Either every new doc is stored or
        none is (a transaction), so a failure never leaves half a batch behind.

        Three round trips for a batch of new messages: the counter, the insert, the commit.
        Its client_ids are not read first: the unique index on (room, sid, cid) refuses a
        repeat, the refused attempt is aborted whole (its counter increment with it, so no id
        is skipped), and the batch is tried once more, reading them in the transaction's
        snapshot. A batch with actions or replies reads its client_ids and its targets in one
        query (its decisions depend on what is stored, and a repeated action must return its
        first event, not be decided again).

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

        async def transaction(session: Any, read_first: bool) -> list[Appended]:
            found: dict[tuple[str, str], dict[str, Any]] = {}
            targets: dict[int, dict[str, Any]] = {}
            if read_first or _targets_wanted(docs):
                found, targets = await self._read_batch(room, docs, session)
            fresh = [d for d in docs if _send_key(d) not in found]
            results: dict[int, Appended] = {}
            # Actions and replies, decided against their targets' state in this transaction.
            changes = await self._decide_on_targets(room, fresh, targets, session)
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
        # Optimistic: a batch of new messages (no targets to read) is inserted without first
        # reading which of its client_ids are stored; the unique index on (room, sid, cid)
        # refuses a repeat, and only then is the batch tried again, reading first.
        read_first = False
        if self._orphans is None:
            self._orphans = OrphanSessions()
        await self._orphans.end(self.client, min(END_TRANSACTION_SECONDS, limit))
        left_open = False  # the last attempt may have left its transaction on the server
        session_id = None
        try:
            async with await self.client.start_session() as session:
                # (Motor's stubs declare the ``session_id`` property as a method.)
                session_id = dict(session.session_id)  # type: ignore[call-overload]
                return await self._attempts(session, transaction, deadline, read_first)
        except BaseException as exc:
            left_open = may_be_left_open(exc)
            raise
        finally:
            if left_open and session_id is not None:
                self._orphans.remember(session_id)

    async def _attempts(
        self, session: Any, transaction: Any, deadline: float, read_first: bool
    ) -> list[Appended]:
        """``append``'s attempts at ``transaction``, in ``session``, until ``deadline``."""
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
                    results = await transaction(session, read_first)
                    committing = True
                    await session.commit_transaction()
                return results
            except BaseException as exc:
                # Outside the expired budget: see END_TRANSACTION_SECONDS.
                if await _end_failed_transaction(session, committing, exc):
                    return results  # the commit went through when tried again
                # A repeated client_id, refused by the unique index (the transaction is
                # aborted: nothing of it stays): again, reading what is stored first.
                if not read_first and _refused_as_repeat(exc):
                    read_first = True
                    continue
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

    async def _read_batch(
        self, room: str, docs: list[dict[str, Any]], session: Any
    ) -> tuple[dict[tuple[str, str], dict[str, Any]], dict[int, dict[str, Any]]]:
        """In ``append``'s transaction (its snapshot), one query: which of ``docs`` are stored
        (by (sid, cid), public form), and the stored messages their actions and replies
        target (by seq, stored form)."""
        keys = {_send_key(d) for d in docs if "cid" in d}
        wanted = _targets_wanted(docs)
        clauses = [c for c in (_sent_clause(keys), {"seq": {"$in": sorted(wanted)}} if wanted
                               else None) if c is not None]
        if not clauses:
            return {}, {}
        query = dict(clauses[0], room=room) if len(clauses) == 1 else {
            "$or": [dict(c, room=room) for c in clauses]}
        found, targets = {}, {}
        async for row in self.events.find(query, session=session):
            key = (row.get("sid", ""), row.get("cid", ""))
            if key in keys:
                found[key] = to_event(row)
            if row["seq"] in wanted:
                targets[row["seq"]] = row
        return found, targets

    async def _find_sent(
        self, room: str, docs: list[dict[str, Any]], collection: Any
    ) -> dict[tuple[str, str], dict[str, Any]]:
        """Which of ``docs`` are stored, read through ``collection``."""
        keys = {_send_key(d) for d in docs if "cid" in d}
        clause = _sent_clause(keys)
        if clause is None:
            return {}
        found = {}
        async for row in collection.find(dict(clause, room=room)):
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


def _send_key(doc: dict[str, Any]) -> tuple[str, str]:
    return (doc.get("sid", ""), doc.get("cid", ""))


def _sent_clause(keys: set[tuple[str, str]]) -> dict[str, Any] | None:
    """A query for the events stored under ``keys`` (and maybe a few more: the pairs of
    every sid with every cid, filtered by the caller), served by the (room, sid, cid) index."""
    if not keys:
        return None
    return {"cid": {"$in": sorted({cid for _, cid in keys})},
            "sid": {"$in": sorted({sid for sid, _ in keys})}}


def _targets_wanted(docs: list[dict[str, Any]]) -> set[int]:
    """The seqs of the messages that ``docs``' actions and replies target."""
    return {parse_id(d[f]) for d in docs for f in ("target", "reply_to") if d.get(f)}


def _refused_as_repeat(exc: BaseException) -> bool:
    """Whether ``exc`` is a unique index refusing an insert: a client_id already stored."""
    if isinstance(exc, BulkWriteError):
        return any(e.get("code") == DUPLICATE_KEY for e in exc.details.get("writeErrors", []))
    return isinstance(exc, DuplicateKeyError)
