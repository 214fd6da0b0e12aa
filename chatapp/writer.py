"""Where an event is committed: one writer per room turns concurrent sends into ordered batches.

Events must reach clients in id order, with no gaps: a client's cursor jumps over anything
published out of order. So each room has one writer, which stores a batch (every send queued
while the previous batch was being stored: group commit), then publishes it, then takes the
next. Batching keeps throughput high under load; the single writer keeps the order simple.

If MongoDB fails while storing a batch, the outcome is unknown (the commit may have happened
just before the connection dropped). The writer then holds the room's queue and reads back what
was stored before doing anything else, so that a stored event is always published, and always
before anything stored after it. Senders waiting longer than ``timeout`` get
``store_unavailable``; if their event had not been taken into a batch yet, it never will be.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from chatapp.errors import store_unavailable
from chatapp.store import Appended, EventStore, StoreError

log = logging.getLogger(__name__)

# A batch larger than this is split: a bigger transaction holds the counter document longer
# and makes the first sender of the batch wait for the last one's encoding.
MAX_BATCH = 500
# While MongoDB is unreachable, how often the writer tries to learn what the failed batch did.
RESOLVE_RETRY_SECONDS = 0.5

Key = tuple[str, str]


class _Pending:
    __slots__ = ("doc", "future")

    def __init__(self, doc: dict[str, Any], future: asyncio.Future) -> None:
        self.doc = doc
        self.future = future


class RoomWriter:
    def __init__(
        self,
        room: str,
        store: EventStore,
        publish: Callable[[list[dict[str, Any]]], Any],
        timeout: float,
    ) -> None:
        self.room = room
        self.store = store
        self.publish = publish
        self.timeout = timeout
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
            future = asyncio.get_running_loop().create_future()
            pending = _Pending(doc, future)
            self._inflight[key] = future
            self._queue.append(pending)
            if self._task is None:
                self._task = asyncio.ensure_future(self._drain())
        return self._outcome(key, future, pending)

    async def _outcome(
        self, key: Key, future: asyncio.Future, pending: _Pending | None
    ) -> Appended:
        try:
            result = await asyncio.wait_for(asyncio.shield(future), self.timeout)
        except TimeoutError:
            if pending is not None and pending in self._queue:
                # Not yet in a batch: withdraw it, so "nothing was stored" stays true.
                self._queue.remove(pending)
                self._inflight.pop(key, None)
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
        try:
            while self._queue:
                batch = self._queue[:MAX_BATCH]
                del self._queue[:MAX_BATCH]
                results = await self._store(batch)
                stored = [r.event for r in results if r is not None and r.is_new]
                if stored:
                    self.publish(stored)
                for pending, result in zip(batch, results):
                    self._inflight.pop((pending.doc["sid"], pending.doc["cid"]), None)
                    if not pending.future.done():
                        pending.future.set_result(result)
        finally:
            self._task = None

    async def _store(self, batch: list[_Pending]) -> list[Appended | None]:
        docs = [p.doc for p in batch]
        try:
            return await self.store.append(self.room, docs)
        except StoreError as exc:
            log.warning("storing %d event(s) in %s failed: %s", len(docs), self.room, exc)
        # Unknown outcome: learn it before anything later in this room can be stored.
        while True:
            try:
                found = await self.store.find_batch(self.room, docs)
                break
            except StoreError:
                await asyncio.sleep(RESOLVE_RETRY_SECONDS)
        results: list[Appended | None] = []
        for doc in docs:
            event = found.get((doc["sid"], doc["cid"]))
            # Stored by the failed attempt: it is new to clients, so publish it.
            results.append(Appended(event, True) if event else None)
        if found:
            log.info("%d event(s) in %s were stored despite the error", len(found), self.room)
        return results
