"""The rooms this process holds in memory: each one's ``MessageBuffer`` and ``RoomWriter``.

A room is loaded on first use (its latest events, one query), kept while someone uses it, and
dropped when idle (``evict_idle``); its next visitor loads it again. Every room has one writer,
which stores its events in id order (``writer.py``); the mode says who publishes them.

The trap: in a cluster the feed may bring a room's events while the room is still loading;
they may be newer than what the load's query saw, so they are held and published once the
buffer exists (``deliver``), and the buffer drops what it already has by id.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from chatapp import metrics, rules
from chatapp.buffer import Entry, MessageBuffer, Waiter
from chatapp.errors import store_unavailable
from chatapp.mode import LocalMode
from chatapp.store import EventStore, StoreError
from chatapp.writer import RoomWriter

log = logging.getLogger(__name__)

# The contract: at most 500 events in one long-poll answer; a client far behind asks again.
# Also the size of one catch-up query of the cluster feed.
MAX_UPDATES = 500
# A room nobody has asked for in this long, with nobody connected, is dropped from memory;
# its next visitor loads it again from MongoDB (one query). Without this, every room ever
# opened would keep its buffer until the process ends.
ROOM_IDLE_SECONDS = 600.0


class Rooms:
    def __init__(
        self, store: EventStore, mode: LocalMode, history_size: int, store_timeout: float
    ) -> None:
        self.store = store
        self.mode = mode
        self.history_size = history_size
        self.store_timeout = store_timeout
        self._rooms: dict[str, MessageBuffer] = {}
        self._loading: dict[str, asyncio.Future] = {}
        self._writers: dict[str, RoomWriter] = {}
        # Events the feed brought for rooms still loading: published once they are loaded.
        self._held: dict[str, list[dict[str, Any]]] = {}
        # Told of every batch any room publishes, however it came (chatapp.moderation).
        self.on_publish: Callable[[str, list[Entry]], None] | None = None

    async def get(self, name: str) -> MessageBuffer:
        """The room's buffer, loading its latest events from the store on first use."""
        buffer = self._rooms.get(name)
        if buffer is not None:
            buffer.touched = time.monotonic()
            return buffer
        rules.check_room(name)
        loading = self._loading.get(name)
        if loading is None:
            loading = self._loading[name] = asyncio.ensure_future(self._load(name))
        try:
            return await asyncio.shield(loading)
        finally:
            if loading.done():
                self._loading.pop(name, None)

    async def _load(self, name: str) -> MessageBuffer:
        # What the feed brings meanwhile is held: it may be newer than what the query sees.
        held = self._held.setdefault(name, [])
        try:
            # One more than we keep: if it exists, it is the floor (older events exist).
            events = await self.store.latest(name, self.history_size + 1)
        except StoreError as exc:
            log.warning("loading room %s failed: %s", name, exc)
            raise store_unavailable() from None
        finally:
            self._held.pop(name, None)
        floor = ""
        if len(events) > self.history_size:
            floor = events.pop(0)["id"]
        buffer = self._rooms.setdefault(
            name, MessageBuffer(name, self.history_size, events, floor)
        )
        metrics.rooms_in_memory(len(self._rooms))
        buffer.on_publish = self.on_publish
        buffer.publish(held)  # anything already in the tail is dropped by id
        self.presence_changed(name)
        return buffer

    def loaded(self, name: str) -> MessageBuffer | None:
        """The room's buffer if it is in memory now (loads nothing)."""
        return self._rooms.get(name)

    def names(self) -> list[str]:
        """The rooms in memory now."""
        return list(self._rooms)

    def writer(self, room: str) -> RoomWriter:
        """The room's one writer. The room must be loaded (``get``)."""
        writer = self._writers.get(room)
        if writer is None:
            publish, last_published = self.mode.writer_hooks(self._rooms[room])
            writer = self._writers[room] = RoomWriter(
                room, self.store, publish, self.store_timeout, last_published=last_published
            )
        return writer

    def writers_idle(self) -> list[asyncio.Future]:
        """One future per writer, resolved once what it has queued so far is stored or failed."""
        return [w.idle() for w in self._writers.values()]

    def waiters(self) -> Iterator[Waiter]:
        """Everyone waiting in any room (a copy: waking one may remove it)."""
        for buffer in list(self._rooms.values()):
            yield from buffer.waiting()

    def presence_changed(self, room: str) -> None:
        """Tell the room's WebSockets the new list of nicknames (nothing if not loaded)."""
        buffer = self._rooms.get(room)
        if buffer is not None:
            self.mode.presence_changed(room, buffer)

    def deliver(self, room: str, events: list[dict[str, Any]]) -> bool:
        """Publish stored events (in id order) to the room if loaded, or hold them for it if
        it is loading; True if they were published now."""
        buffer = self._rooms.get(room)
        if buffer is not None:
            buffer.publish(events)
            return True
        if room in self._held:
            self._held[room].extend(events)
        return False

    async def catch_up(self) -> None:
        """Publish each loaded room's stored events after its buffer's last id (what the
        cluster feed missed while it was not following)."""
        for room, buffer in list(self._rooms.items()):
            while True:
                events = await self.store.after(room, rules.parse_id(buffer.last_id),
                                                MAX_UPDATES)
                buffer.publish(events)
                if len(events) < MAX_UPDATES:
                    break
            self.presence_changed(room)

    async def reactions_of(self, room: str, target: str) -> dict[str, list[str]]:
        """A message's reactions now, from the store (memory may lag it, in a cluster)."""
        try:
            return await self.store.reactions_of(room, target)
        except StoreError:
            raise store_unavailable() from None

    def evict_idle(self, idle_for: float, in_use: Callable[[str], bool]) -> list[str]:
        """Drop rooms nobody asked for in ``idle_for`` seconds, with no waiter, no queued
        write and not ``in_use`` (someone present); their names."""
        cutoff = time.monotonic() - idle_for
        evicted = []
        for name, buffer in list(self._rooms.items()):
            writer = self._writers.get(name)
            if (buffer.has_waiters() or buffer.touched > cutoff or in_use(name)
                    or (writer is not None and writer.busy)):
                continue
            del self._rooms[name]
            self._writers.pop(name, None)
            evicted.append(name)
        metrics.rooms_in_memory(len(self._rooms))
        return evicted
