"""Where events wait: one ``MessageBuffer`` per room, holding recent events and waiters.

Every event of a room passes through ``MessageBuffer.publish`` exactly once, in id order, after
it is stored. Publishing wakes every waiter of the room in one pass, whatever its transport:
a WebSocket connection writes a frame, a parked long-poll finishes its response.

Each event is encoded to JSON once, when it is published (``Entry``); transports write those
same strings to every client instead of encoding the event again per connection.
"""

from __future__ import annotations

import bisect
import itertools
import json
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from chatapp import kinds, metrics
from chatapp.frames import deflate_frames, payloads, websocket_text_frame, window_for
from chatapp.signals import PRESENCE_COALESCE_SECONDS, RoomSignals

__all__ = [
    "PRESENCE_COALESCE_SECONDS", "Batch", "Entry", "MessageBuffer", "Waiter",
    "websocket_text_frame",
]


def encode(obj: Any) -> str:
    # Compact separators: this string is written once per delivery, so every byte counts.
    # ensure_ascii=False keeps non-Latin text at its UTF-8 size instead of \uXXXX escapes.
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


# Kinds whose publishing changes an entry already held (see MessageBuffer._apply).
_ACTIONS = frozenset(k.name for k in kinds.KINDS.values() if k.targets)


class Entry:
    """One published event and its encodings, shared by every delivery of it."""

    __slots__ = ("event", "frame", "id", "json", "wire")

    def __init__(self, event: dict[str, Any]) -> None:
        self.event = event
        self.id: str = event["id"]
        self.json = encode(event)
        # The WebSocket message, built by splicing rather than re-encoding the event...
        self.frame = '{"type":"event","event":' + self.json + "}"
        # ...and its complete frame on the wire, so that fan-out to N sockets is N writes of
        # the same bytes instead of N encodings.
        self.wire = websocket_text_frame(self.frame.encode())


class Batch(list):
    """Entries published together. The joined encodings are computed once, on first use, and
    shared by every waiter woken with this batch; so are its compressed frames, once per
    distinct (window, takeover) a socket agreed to (``chatapp.frames``)."""

    _wire: bytes | None = None
    _json: str | None = None
    _deflated: dict[tuple[int, bool], bytes] | None = None
    _size = 0
    # The last socket's parameters and their frames: sockets agreeing to the same parameters
    # share one Deflate object (chatapp.web.deflate), so most lookups are one identity test.
    _last: tuple[Deflate, bytes] | None = None

    @property
    def wire(self) -> bytes:
        if self._wire is None:
            self._wire = b"".join(e.wire for e in self)
        return self._wire

    def deflated(self, params: Deflate) -> bytes:
        """The batch as compressed frames for a socket that agreed to ``params``: one deflate
        per distinct (window, takeover), whatever the number of sockets (this runs once per
        socket: it must be cheap). Written whole: its messages may share a window."""
        last = self._last
        if last is not None and last[0] is params:
            return last[1]
        if self._deflated is None:
            self._deflated = {}
            self._size = len(self.wire)
        key = (window_for(self._size, params.window_bits), params.takeover and len(self) > 1)
        wire = self._deflated.get(key)
        if wire is None:
            wire = self._deflated[key] = deflate_frames(
                [p for e in self for p in payloads(e.wire)], *key)
        self._last = (params, wire)
        return wire

    @property
    def json_array(self) -> str:
        """The events as the inside of a JSON array: ``{...},{...}``."""
        if self._json is None:
            self._json = ",".join(e.json for e in self)
        return self._json


class Deflate(Protocol):
    """What a socket agreed to in its permessage-deflate handshake (chatapp.web.deflate)."""

    @property
    def window_bits(self) -> int:
        """The most window bits its messages may use."""

    @property
    def takeover(self) -> bool:
        """Whether messages written together may share one window."""


class Waiter(Protocol):
    """Something waiting for a room's events: a WebSocket connection or a parked long-poll."""

    def wake(self, entries: list[Entry]) -> None:
        """Called with new entries, in id order, right after they are published."""

    def signals_changed(self, wire: bytes) -> None:
        """Called when the room's list of present nicknames or of typists changed, with the
        changed lists' ``presence`` and ``typing`` frames ready to write (``signals.py``)."""

    def shutdown(self) -> None:
        """The server is stopping: end the wait so the client reconnects elsewhere."""


class MessageBuffer:
    """The recent events of one room, and everyone waiting for the next ones.

    Holds the last ``size`` events. ``floor`` is the id just below the oldest one held: every
    event with an id above ``floor`` is in memory, so a cursor at or above ``floor`` is
    answered from here; an older one from the store.
    """

    def __init__(self, room: str, size: int, events: list[dict[str, Any]], floor: str) -> None:
        self.room = room
        self.size = size
        self.entries: deque[Entry] = deque((Entry(e) for e in events), maxlen=size)
        self._ids: deque[str] = deque((e.id for e in self.entries), maxlen=size)
        self.floor = floor
        self._waiters: set[Waiter] = set()
        # When someone last asked for this room (see Rooms.evict_idle).
        self.touched = time.monotonic()
        # Presence and typing: not stored, delivered through the same waiters (signals.py).
        self.signals = RoomSignals(self.waiting)
        # Told of every published batch before the waiters (moderation: Rooms sets it).
        self.on_publish: Callable[[str, list[Entry]], None] | None = None
        # current()'s answer for (limit, last_id): every socket opening without a cursor asks
        # the same until the next publish (a connect storm of 10,000 asked it 10,000 times).
        self._current: tuple[tuple[int, str], list[Entry], bool] | None = None

    def add_waiter(self, waiter: Waiter) -> None:
        """Wake ``waiter`` with every batch published from now on, until removed."""
        self._waiters.add(waiter)

    def remove_waiter(self, waiter: Waiter) -> None:
        self._waiters.discard(waiter)

    def waiting(self) -> list[Waiter]:
        """Who waits here now (a copy)."""
        return list(self._waiters)

    def has_waiters(self) -> bool:
        return bool(self._waiters)

    @property
    def last_id(self) -> str:
        return self._ids[-1] if self._ids else self.floor

    def since(self, cursor: str) -> list[Entry] | None:
        """Entries newer than ``cursor``, or None when the buffer no longer reaches back there."""
        if cursor < self.floor:
            return None
        start = bisect.bisect_right(self._ids, cursor)
        newer = len(self._ids) - start
        if newer <= 0:
            return []
        # From the right end: a poll asks for the last few, not a copy of the whole buffer.
        return list(itertools.islice(reversed(self.entries), newer))[::-1]

    def find(self, event_id: str) -> dict[str, Any] | None:
        """The event ``event_id`` as memory holds it now, or None if it is not held."""
        i = bisect.bisect_left(self._ids, event_id)
        if i < len(self._ids) and self._ids[i] == event_id:
            return self.entries[i].event
        return None

    def latest(self, limit: int) -> list[Entry]:
        """The last ``limit`` entries of the log, actions included."""
        if limit >= len(self.entries):
            return list(self.entries)
        return list(self.entries)[-limit:]

    def current(self, limit: int) -> tuple[list[Entry], bool] | None:
        """The current-state view (``kinds``): the last ``limit`` listed entries, each message
        as it is now, and whether older ones exist; None when memory holds fewer than
        ``limit`` of them and older events exist (the store must answer)."""
        key = (limit, self.last_id)  # entries change only in publish(), which moves last_id
        if self._current is not None and self._current[0] == key:
            return list(self._current[1]), self._current[2]
        listed = [e for e in self.entries if kinds.is_listed(e.event)]
        if len(listed) < limit and self.floor:
            return None
        self._current = (key, listed[-limit:], bool(self.floor) or len(listed) > limit)
        return list(self._current[1]), self._current[2]

    def publish(self, events: Iterable[dict[str, Any]]) -> list[Entry]:
        """Add stored events (in id order) and wake every waiter once with all of them."""
        new = Batch()
        for event in events:
            if event["id"] <= self.last_id:
                continue  # already published: publishing twice must not deliver twice
            if len(self.entries) == self.size:
                self.floor = self._ids[0]
            entry = Entry(event)
            self.entries.append(entry)
            self._ids.append(entry.id)
            new.append(entry)
            if event["type"] in _ACTIONS:
                self._apply(event, new)
        if new:
            metrics.delivered(len(new), len(self._waiters))
            # Senders stop typing, and a pending signal goes first: it happened before these.
            self.signals.before_events(e.event for e in new)
            # Copy: a long-poll waiter removes itself from the set while being woken.
            if self.on_publish is not None:
                # First: a kicked person's connections end with an error rather than a
                # batch (a woken poll would answer 200 and be back at once).
                self.on_publish(self.room, new)
            for waiter in list(self._waiters):
                waiter.wake(new)
        return new

    def _apply(self, action: dict[str, Any], new: Batch) -> None:
        """Bring what memory holds to its current state after ``action`` (``kinds.apply``,
        and ``kinds.scrub`` after a delete), so that every later answer from memory shows it
        as the store does. Entries of this very batch are replaced in it too: a delete in
        the same batch as the edit or reply it scrubs sends neither's text to anyone."""
        target = action["target"]
        i = bisect.bisect_left(self._ids, target)
        if i < len(self._ids) and self._ids[i] == target:
            self._replace(i, kinds.apply(self.entries[i].event, action), new)
        if action["type"] == "delete":
            for i, entry in enumerate(self.entries):
                scrubbed = kinds.scrub(entry.event, target)
                if scrubbed is not entry.event:
                    self._replace(i, scrubbed, new)

    def _replace(self, i: int, event: dict[str, Any], new: Batch) -> None:
        old = self.entries[i]
        if event == old.event:
            return
        entry = self.entries[i] = Entry(event)
        if new and old.id >= new[0].id:
            new[new.index(old)] = entry

    @property
    def nicks(self) -> list[str]:
        return self.signals.presence

    def set_presence(self, nicks: list[str]) -> None:
        """The room's new list of nicknames; its waiters hear of it within a moment."""
        self.signals.set_presence(nicks)

    def presence_wire(self) -> bytes:
        """The ``presence`` frame for the current list, encoded once for every socket."""
        return self.signals.presence_wire()
