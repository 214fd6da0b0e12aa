"""Where an event is committed: one writer per room turns concurrent sends into ordered batches.

Events must reach clients in id order, with no gaps: a client's cursor jumps over anything
published out of order. So each room has one writer, which stores a batch (every send queued
while the previous batch was being stored: group commit), then publishes it, then takes the
next. Batching keeps throughput high under load; the single writer keeps the order simple.

Every sender is answered within ``timeout`` seconds (and at most twice
``APPEND_GRACE_SECONDS`` more when its batch's outcome is a moment away):

- a send still queued when its time is up is withdrawn and answered ``store_unavailable``:
  it will never be stored; so is one whose time left, when its batch is formed, is below
  ``MIN_APPEND_SECONDS``: a batch is never started with a budget too small to finish (it
  would take the room's counter and fail part way). (A send put back in the queue after a
  read-back, below, is never tried again either, but its first try may yet turn out to
  have been stored: a retry with its client_id finds it.)
- a batch is given the time its oldest sender has left. If MongoDB has not committed it by
  then, the outcome is unknown (the commit may have happened just before the connection
  dropped): the writer reads back what was stored before storing anything else in the room,
  so that a stored event is always published, and before anything stored after it. Sends
  found unstored that still have time go back to the head of the queue; the others are
  answered ``store_unavailable``, as is any sender whose time runs out during the read-back
  (safe to retry with the same client_id: a retry returns the event if it was stored).

What is acknowledged or published is only ever what a majority of the replica set has, so
no failover can take it back: appends commit with write concern ``majority`` (journaled),
and the read-back (``find_batch``) and the gap read (``after``) use read concern
``majority``. The trap: a ``local`` read-back on a primary that has lost its secondaries
finds the batch it could not replicate, and acknowledges it; the next primary never had it
and hands its ids to other messages. A read-back at ``majority`` may miss a commit that a
majority has but has not confirmed yet (a new primary's first moments): those sends are
retried, and the retry finds the event stored (``is_new=False``); it is published then, as
is any stored event, new or found, above the last one published.

And since a room's ids have no holes (the counter and the events change in one transaction), a
batch whose first id is not the next one reveals events committed even later than that (a
frozen MongoDB resuming, a commit confirmed after its read-back): they are read (asked until
MongoDB answers, like the read-back) and published first.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from chatapp import metrics
from chatapp.errors import store_unavailable
from chatapp.rules import parse_id
from chatapp.store import END_TRANSACTION_SECONDS, Appended, EventStore, StoreError

log = logging.getLogger(__name__)

# A batch larger than this is split: a bigger transaction holds the counter document longer
# and makes the first sender of the batch wait for the last one's encoding.
MAX_BATCH = 500
# While MongoDB is unreachable, how often the writer tries to learn what the failed batch did.
RESOLVE_RETRY_SECONDS = 0.5
# An append is given its oldest sender's time left, and this much more to report back before
# the writer stops waiting for it: the store ends a failed transaction in a budget of its own
# (END_TRANSACTION_SECONDS) after the batch's has run out, and half a second more covers a
# loaded machine getting round to the answer.
APPEND_GRACE_SECONDS = END_TRANSACTION_SECONDS + 0.5
# A batch is never started with less time than this (or a quarter of the senders' timeout,
# if that is smaller: a tiny --mongo_timeout still gets tries). A batch is three round trips
# (the counter, the insert, the commit; one more to read client_ids or targets when it must:
# ``EventStore.append``) and the commit waits for a majority to journal it: 5-10 ms on a
# healthy set, tens of ms on a loaded machine. Given less, it
# mostly fails part way, and failing part way is what costs: an abort, a read-back holding
# the room. Sends with less time left have waited most of their time already (a failover):
# they are answered store_unavailable at once, never tried; the client retries.
MIN_APPEND_SECONDS = 0.25

Key = tuple[str, str]


class _Pending:
    __slots__ = ("appending", "deadline", "doc", "future")

    def __init__(self, doc: dict[str, Any], future: asyncio.Future, deadline: float) -> None:
        self.doc = doc
        self.future = future
        self.deadline = deadline  # loop time by which the sender must have its answer
        self.appending = False  # in a batch whose (bounded) append is under way


class RoomWriter:
    def __init__(
        self,
        room: str,
        store: EventStore,
        publish: Callable[[list[dict[str, Any]]], Any],
        timeout: float,
        last_published: Callable[[], str] | None = None,
    ) -> None:
        """``publish`` receives stored events in id order. ``last_published`` (the id the
        room's buffer ends at) enables the gap check; a cluster, whose change feed publishes,
        passes None."""
        self.room = room
        self.store = store
        self.publish = publish
        self.timeout = timeout
        self.last_published = last_published
        self._queue: list[_Pending] = []
        # Sends queued or being stored, by (sid, client_id): a repeat while the first is still
        # in flight shares its outcome instead of racing it.
        self._inflight: dict[Key, asyncio.Future] = {}
        self._task: asyncio.Task | None = None

    def write(self, doc: dict[str, Any]) -> Coroutine[Any, Any, Appended]:
        """Store ``doc`` and publish it; await the stored event (or the one stored before for
        the same sid and cid). Raises ``store_unavailable`` after ``timeout`` seconds.

        ``doc`` is queued when this is called, not when the result is awaited: a caller that
        cannot wait (a join announced while a connection opens) still gets its place in line.
        """
        key = (doc["sid"], doc["cid"])
        future = self._inflight.get(key)
        pending = None
        if future is None:
            loop = asyncio.get_running_loop()
            future = loop.create_future()
            pending = _Pending(doc, future, loop.time() + self.timeout)
            self._inflight[key] = future
            self._queue.append(pending)
            if self._task is None:
                self._task = asyncio.ensure_future(self._drain())
        return self._outcome(key, future, pending)

    async def _outcome(
        self, key: Key, future: asyncio.Future, pending: _Pending | None
    ) -> Appended:
        wait = self.timeout
        if pending is not None:
            wait = pending.deadline - asyncio.get_running_loop().time()
        try:
            result = await asyncio.wait_for(asyncio.shield(future), wait)
        except TimeoutError:
            if pending is None or not pending.appending:
                if pending is not None and pending in self._queue:
                    # Not yet in a batch: withdraw it, so "nothing was stored" stays true.
                    self._queue.remove(pending)
                    self._inflight.pop(key, None)
                raise store_unavailable() from None
            # In a batch whose append is bounded by this very deadline: its answer, stored or
            # not, is a moment away; answering 503 now could deny a commit that succeeds.
            try:
                result = await asyncio.wait_for(asyncio.shield(future), APPEND_GRACE_SECONDS * 2)
            except TimeoutError:
                raise store_unavailable() from None
        if result is None:
            raise store_unavailable()
        return result

    @property
    def busy(self) -> bool:
        return self._task is not None or bool(self._queue)

    def idle(self) -> asyncio.Future:
        """Resolves once everything queued so far has been stored (or failed)."""
        if self._task is None:
            future = asyncio.get_running_loop().create_future()
            future.set_result(None)
            return future
        return asyncio.shield(self._task)

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        batch: list[_Pending] = []
        try:
            while self._queue:
                batch = self._take_batch(loop.time())
                if not batch:
                    continue
                docs = [p.doc for p in batch]
                # The oldest sender's time left bounds the whole batch (see the module doc).
                time_left = min(p.deadline for p in batch) - loop.time()
                for pending in batch:
                    pending.appending = True
                try:
                    results: list[Appended | None] = list(await asyncio.wait_for(
                        self.store.append(self.room, docs, time_left),
                        time_left + APPEND_GRACE_SECONDS,
                    ))
                except (StoreError, TimeoutError) as exc:
                    log.warning("storing %d event(s) in %s failed: %s", len(docs), self.room, exc)
                    now = loop.time()
                    for pending in batch:
                        pending.appending = False
                    # Out of time: answered now, not after the read-back (MongoDB may be gone
                    # for long); if the commit happened after all, a retry returns the event.
                    late = [p for p in batch if p.deadline <= now]
                    self._answer(late, [None] * len(late))
                    results = await self._read_back(docs)
                    batch, results = self._retry_unstored(batch, results, loop.time())
                # Found ones too: a commit given up on that landed after all was never
                # published (``_publish_in_order`` drops what was). Refused or no-op actions
                # carry no event.
                await self._publish_in_order(
                    [r.event for r in results if r and r.event is not None])
                self._answer(batch, results)
        finally:
            self._task = None
            # A bug (an unexpected exception) or a cancellation must not leave a batch
            # unanswered: its keys would stay in flight, and every retry of them would wait
            # on a future nobody resolves, answered 503 for ever.
            # (What is still queued is taken by the next write's task, or withdrawn at its
            # deadline.)
            self._abandon(batch)

    def _abandon(self, batch: list[_Pending]) -> None:
        """Answer ``store_unavailable`` to whoever in ``batch`` has no answer yet."""
        for pending in batch:
            key = (pending.doc["sid"], pending.doc["cid"])
            if self._inflight.get(key) is pending.future:
                del self._inflight[key]
            if not pending.future.done():
                pending.future.set_result(None)

    def _take_batch(self, now: float) -> list[_Pending]:
        """The next batch off the queue, without the sends whose time left is too short to
        store them (answered store_unavailable now: see ``MIN_APPEND_SECONDS``)."""
        batch = self._queue[:MAX_BATCH]
        del self._queue[:MAX_BATCH]
        least = min(MIN_APPEND_SECONDS, self.timeout / 4)
        short = [p for p in batch if p.deadline - now < least]
        if short:
            log.warning("%d send(s) to %s had too little time left to be tried", len(short),
                        self.room)
            self._answer(short, [None] * len(short))
            batch = [p for p in batch if p.deadline - now >= least]
        return batch

    def _retry_unstored(
        self, batch: list[_Pending], results: list[Appended | None], now: float
    ) -> tuple[list[_Pending], list[Appended | None]]:
        """Put sends found unstored that still have time back at the head of the queue; the
        rest of the batch, with its results, to be answered now."""
        again = [p for p, r in zip(batch, results) if r is None and p.deadline > now]
        if not again:
            return batch, results
        self._queue[:0] = again
        retried = {id(p) for p in again}
        kept = [(p, r) for p, r in zip(batch, results) if id(p) not in retried]
        return [p for p, _ in kept], [r for _, r in kept]

    def _answer(self, batch: list[_Pending], results: list[Appended | None]) -> None:
        for pending, result in zip(batch, results):
            self._inflight.pop((pending.doc["sid"], pending.doc["cid"]), None)
            if not pending.future.done():
                pending.future.set_result(result)

    async def _read_back(self, docs: list[dict[str, Any]]) -> list[Appended | None]:
        """What a failed append stored after all: asked until MongoDB answers, holding the
        room's queue meanwhile, so nothing later in the room is stored before it."""
        while True:
            try:
                found = await self.store.find_batch(self.room, docs)
                break
            except StoreError:
                await asyncio.sleep(RESOLVE_RETRY_SECONDS)
        if found:
            log.info("%d event(s) in %s were stored despite the error", len(found), self.room)
        # Stored by the failed attempt: new to clients, so published as new.
        return [
            Appended(found[key], True) if key in found else None
            for key in ((d["sid"], d["cid"]) for d in docs)
        ]

    async def _publish_in_order(self, events: list[dict[str, Any]]) -> None:
        """Publish what is not yet published of ``events`` (stored ones, new or found), in id
        order, after any unpublished events below them (``_gap``)."""
        if self.last_published is not None:
            last = parse_id(self.last_published())
            events = sorted(
                (e for e in events if parse_id(e["id"]) > last), key=lambda e: parse_id(e["id"])
            )
            if events and parse_id(events[0]["id"]) > last + 1:
                events = await self._gap(last, parse_id(events[0]["id"])) + events
        if events:
            metrics.stored(events)
            self.publish(events)

    async def _gap(self, last: int, first: int) -> list[dict[str, Any]]:
        """Events committed between ``last`` and ``first`` that were never published: a
        commit that landed after its batch was given up on. Asked until MongoDB answers:
        publishing ``first`` without them would move every reader's cursor past them."""
        while True:
            try:
                missed = await self.store.after(self.room, last, first - last - 1)
                break
            except StoreError as exc:
                log.warning("could not read ids %d-%d of %s: %s", last + 1, first - 1,
                            self.room, exc)
                await asyncio.sleep(RESOLVE_RETRY_SECONDS)
        log.info("publishing %d event(s) of %s committed after their batch gave up",
                 len(missed), self.room)
        return missed
