"""How events stored by other processes arrive: a MongoDB change stream (cluster mode).

With several chatapp processes (``--processes``) or machines on one replica set, MongoDB is
the bus: every process watches the database and publishes each stored event to its own
buffers, its own included. No process publishes what it stores directly, so every buffer in
the cluster sees a room's events in one order: the order of the change stream, which is the
commit order, which ``EventStore.append`` makes the id order.

Never a gap, even across an interruption (MongoDB restarting, a failover):

1. The stream is (re)opened from a point in time taken *before* step 2: the last resume
   token the stream gave (after the last changes dispatched, or after a wait that brought
   none), or else the cluster time.
2. Every room loaded here is caught up by a query for the events after its last id.
3. Only then are the stream's changes consumed. Whatever 2 already published comes again in
   3 and is dropped by id (``MessageBuffer.publish`` ignores ids it has).

Changes are consumed in runs: one wait for the next change, then every change the driver
already holds from the same reply of the server, without waiting again
(``EventStore.next_changes``).
A run is dispatched as one ``publish`` per room (``Chat.deliver``), in stream order, and only
then does the resume token move past it: if dispatching fails, the reopened stream brings the
whole run again, and 3 drops what was published already. Changes arriving one at a time are
each a run of one, dispatched as soon as it arrives.

A room still loading when its events arrive holds them until it is loaded (``Chat.deliver``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from chatapp.store import EventStore, StoreError, to_event

if TYPE_CHECKING:
    from chatapp.chat import Chat

log = logging.getLogger(__name__)

# After the stream fails (MongoDB down, a failover), wait this long before reopening it, then
# double up to the maximum: retry fast after a blip, without spinning during an outage.
RETRY_FIRST_SECONDS, RETRY_MAX_SECONDS = 0.2, 5.0


class ChangeFeed:
    def __init__(self, store: EventStore, chat: Chat) -> None:
        self.store = store
        self.chat = chat
        self._token: Any = None
        self._task: asyncio.Task | None = None
        # Set once the stream is open and the loaded rooms are caught up (tests wait on it).
        self.ready = asyncio.Event()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    def forget_position(self) -> None:
        """Drop the resume token: the next (re)opening starts from now, as after an outage
        longer than the oplog keeps (the catch-up still closes the gap). Call while stopped."""
        self._token = None

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task  # _run handles every other error itself
            self._task = None

    async def _run(self) -> None:
        delay = RETRY_FIRST_SECONDS
        while True:
            try:
                await self._follow()
            except asyncio.CancelledError:
                raise
            except StoreError as exc:
                log.warning("change stream interrupted (%s); reopening in %.1f s", exc, delay)
            except Exception:
                log.exception("change stream failed; reopening in %.1f s", delay)
            if self.ready.is_set():
                delay = RETRY_FIRST_SECONDS  # it had been working: a new failure, retry soon
            self.ready.clear()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_SECONDS)
            if self._token is not None and delay >= RETRY_MAX_SECONDS:
                # The token may be what fails (too old for the oplog): start from now instead;
                # the catch-up below still closes any gap.
                self._token = None

    async def _follow(self) -> None:
        start = None if self._token is not None else await self.store.cluster_time()
        async with self.store.watch(resume_after=self._token, start_at=start) as stream:
            await self.chat.catch_up_rooms()
            self.ready.set()
            while stream.alive:
                changes, token = await self.store.next_changes(stream)
                self._dispatch(changes)
                if token is not None:
                    self._token = token  # only now: every change up to it is dispatched

    def _dispatch(self, changes: list[dict[str, Any]]) -> None:
        events: list[dict[str, Any]] = []
        for change in changes:
            collection = change["ns"]["coll"]
            if collection == "events":
                events.append(to_event(change["fullDocument"]))
            elif collection == "sessions":
                if events:  # keep stream order: what came before the logout goes first
                    self.chat.deliver(events)
                    events = []
                self.chat.session_gone(change["documentKey"]["_id"])
            elif collection == "signals":
                if events:  # keep stream order: a signal made before a message goes first
                    self.chat.deliver(events)
                    events = []
                self.chat.signal(change["fullDocument"])
            else:
                log.warning("change of unknown collection %r ignored", collection)
        if events:
            self.chat.deliver(events)
