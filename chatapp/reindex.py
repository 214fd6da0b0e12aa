"""The search upgrade: index the history stored before search existed, while serving.

New messages are indexed as they are stored (``store.append``), edits and deletions by
``SearchStore.reindex`` in their own transaction. What this task adds is the messages
stored before: it walks the events collection in ``_id`` order (one order across every room;
``seq`` is per room) in batches of ``BATCH``, indexes each message whose ``tv`` is not the
current ``search.INDEX_VERSION``, and after each batch stores how far it got in MongoDB
(``meta`` collection, ``search_backfill``). Stopped at any point (a restart, a crash, a
cancellation), it resumes from that marker; a batch cut short is done again, which changes
nothing (indexing is idempotent). A new ``INDEX_VERSION`` starts the walk from the beginning.

Several processes may run it at once (a cluster): each write is conditional (the text it read,
not yet at the current version), so they never undo each other or an edit; they only share
the work badly. The trap: during a rolling upgrade, a process still on the old code stores
messages without terms, possibly behind the walk. Once every process runs the new code,
call ``EventStore.search.reset_backfill()`` and restart one process: the walk runs
again and indexes only what is missing (docs/SEARCH.md).
"""

from __future__ import annotations

import asyncio
import logging

from chatapp import search
from chatapp.store import EventStore, StoreError

log = logging.getLogger(__name__)

# Messages read and indexed per step: one read, one bulk write; at ~0.2 ms of CPU each to
# make the terms, a batch holds the event loop well under the 100 ms people would notice.
BATCH = 500
# Pause between batches: gives the server's own work (sends, polls) the event loop and
# MongoDB first. 500 messages per 50 ms leaves most of a core to the chat, and still indexes
# a million messages in well under an hour.
PAUSE_SECONDS = 0.05
# After a store error (MongoDB away), try again this much later.
RETRY_SECONDS = 5.0


class SearchUpgrade:
    """``start()`` the walk in the background, ``stop()`` it (it resumes on the next start);
    ``run()`` walks to the end in the caller's task (tests, a one-off command)."""

    def __init__(self, store: EventStore, batch: int = BATCH,
                 pause: float = PAUSE_SECONDS) -> None:
        self.store, self.batch, self.pause = store, batch, pause
        self._task: asyncio.Task | None = None
        self.indexed = 0  # messages this object indexed (for logs and tests)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run_until_done())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _run_until_done(self) -> None:
        while True:
            try:
                await self.run()
                return
            except StoreError as exc:
                log.warning("search upgrade paused (%s); retrying in %.0f s", exc, RETRY_SECONDS)
                await asyncio.sleep(RETRY_SECONDS)

    async def run(self, max_batches: int | None = None) -> bool:
        """Index batches from the stored marker on, to the end of the history (True) or for
        ``max_batches`` batches (False if there may be more)."""
        searches = self.store.search
        marker = await searches.backfill_marker()
        current = marker is not None and marker.get("version") == search.INDEX_VERSION
        if current and marker and marker.get("done"):
            return True
        after = marker.get("after") if current and marker else None
        if after is None:
            log.info("search upgrade: indexing the stored history (version %d)",
                     search.INDEX_VERSION)
        batches = 0
        while max_batches is None or batches < max_batches:
            docs = await searches.unindexed(after, self.batch)
            if not docs:
                await searches.save_backfill_marker(after, done=True)
                log.info("search upgrade: done (%d messages indexed here)", self.indexed)
                return True
            self.indexed += await searches.index_batch(docs)
            after = docs[-1]["_id"]
            await searches.save_backfill_marker(after, done=False)
            batches += 1
            if self.pause:
                await asyncio.sleep(self.pause)
        return False
