"""One process or a cluster: the behaviour that differs, as one object chosen at start.

``Chat`` never asks "am I in a cluster?"; it asks its mode. What differs:

- who publishes a stored event to the room's buffer (``writer_hooks``): in one process the
  room's writer does, right after storing; in a cluster the change feed does, for every
  process's events in commit order (publishing ours here too could put ours ahead of an
  earlier one stored elsewhere);
- who decides joins, leaves and the list of who is present (``roster``): this process's own
  books, or leases in MongoDB shared by every process;
- how a changed list reaches the sockets (``presence_changed``): at once from the books, or
  after one query of MongoDB per burst of changes;
- the send rate limit (``send_turn``, ``take_shared_token``): one process's bucket is the
  whole truth, or a bucket per session in MongoDB holds it across every process;
- the per-address caps: new sessions (``take_session_token``: this process's bucket, or also
  a bucket per address in MongoDB) and open connections (``connection_limits``: this
  process's count, or ``limits.SharedConnectionLimits``, counts shared every second);
- how a typing signal reaches the room (``typing``): straight to this process's buffer, or
  through MongoDB (a capped ``signals`` collection the change feed follows) to every
  process's, this one's included, in the change stream's order with the events;
- who counts the people in each room for the directory (``people``): the books, or leases.

``LocalMode`` is one process; ``ClusterMode`` is the multi-process subclass (as
python-socketio's ``AsyncPubSubManager`` is of its local manager).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from chatapp.buffer import MessageBuffer
from chatapp.errors import store_unavailable
from chatapp.feed import ChangeFeed
from chatapp.limits import ConnectionLimits, SharedConnectionLimits
from chatapp.presence import Presence
from chatapp.ratelimit import BURST_FACTOR, SlowClock, Turns
from chatapp.roster import LocalRoster, SharedRoster, process_id
from chatapp.store import NEW_SESSION, SEND, SLOW_MODE, EventStore, StoreError

if TYPE_CHECKING:
    from chatapp.chat import Chat

log = logging.getLogger(__name__)

Publish = Callable[[list[dict[str, Any]]], Any]


def _published_by_the_feed(events: list[dict[str, Any]]) -> None:
    """Cluster mode: stored events are published when the change feed brings them."""


class LocalMode:
    """One process: its writers publish, its books decide presence, its buckets the rate."""

    cluster = False

    def __init__(
        self, store: EventStore, presence: Presence, grace_period: float, rate_limit: float
    ) -> None:
        self.store = store
        self.presence = presence
        self.rate_limit = rate_limit
        self.roster: LocalRoster | SharedRoster = LocalRoster(presence, store, grace_period)
        self.feed: ChangeFeed | None = None
        self._slow = SlowClock()

    async def start(self) -> None:
        """Start what the mode runs in the background (nothing, in one process)."""

    async def stop(self) -> None:
        """Stop it, before the last sends are flushed."""

    def writer_hooks(self, buffer: MessageBuffer) -> tuple[Publish, Callable[[], str] | None]:
        """For the room's ``RoomWriter``: what to call with stored events, and the id the
        buffer ends at (which enables the writer's gap check)."""
        return buffer.publish, (lambda: buffer.last_id)

    def send_turn(self, sid: str) -> contextlib.AbstractAsyncContextManager[Any]:
        """Held from the shared rate-limit check to the writer's queue, so that one session's
        sends keep their order across that wait. Nothing to wait for here."""
        return contextlib.nullcontext()

    async def take_shared_token(self, sid: str) -> bool:
        """The rate limit beyond this process's own bucket: none."""
        return True

    def connection_limits(self, per_session: int, per_address: int) -> ConnectionLimits:
        """The caps on open connections (0: no cap): this process's counts."""
        return ConnectionLimits(per_session, per_address)

    async def take_session_token(self, address: str, rate: float, capacity: float) -> bool:
        """The new-session limit beyond this process's own bucket for ``address``: none."""
        return True

    async def slow_turn(self, room: str, person: str, seconds: float) -> float | None:
        """Slow mode: None if ``person`` (a nickname skeleton) may send in ``room`` now,
        else the seconds left. This process's clock."""
        return self._slow.take(room, person, seconds)

    def presence_changed(self, room: str, buffer: MessageBuffer) -> None:
        """Tell the room's WebSockets the new list of nicknames."""
        buffer.set_presence(self.presence.nicks(room))

    async def typing(self, buffer: MessageBuffer, nick: str, ts: float, until: float) -> None:
        """``nick`` typed in the buffer's room at ``ts``: listed until ``until``."""
        buffer.signals.typing(nick, ts, until)

    async def people(self, rooms: list[str] | None, limit: int) -> dict[str, int]:
        """People present per room: the ``limit`` fullest rooms, or those of ``rooms``."""
        counts = self.presence.counts()
        if rooms is not None:
            return {r: counts[r] for r in rooms if r in counts}
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:limit])


class ClusterMode(LocalMode):
    """Several processes on one replica set are one chat: MongoDB is the bus.

    Events reach the buffers through the change feed (this process's own too), presence is
    decided across processes (``roster.SharedRoster``), the send rate limit is a bucket per
    session in MongoDB, the new-session limit a bucket per address there, and connections
    per address are counted across processes (``limits.SharedConnectionLimits``).
    """

    cluster = True

    def __init__(
        self, store: EventStore, presence: Presence, grace_period: float, rate_limit: float,
        chat: Chat,
    ) -> None:
        super().__init__(store, presence, grace_period, rate_limit)
        self.roster = SharedRoster(store, grace_period)
        self.feed = ChangeFeed(store, chat)
        self._send_turns = Turns()
        self._presence_refresh: set[str] = set()
        self._limits: SharedConnectionLimits | None = None

    async def start(self) -> None:
        assert self.feed is not None
        if self._limits is not None:
            await self._limits.start()  # the others' counts known before serving
        self.feed.start()

    async def stop(self) -> None:
        assert self.feed is not None
        await self.feed.stop()
        if self._limits is not None:
            await self._limits.stop()

    def connection_limits(self, per_session: int, per_address: int) -> ConnectionLimits:
        self._limits = SharedConnectionLimits(per_session, per_address, self.store, process_id())
        return self._limits

    async def slow_turn(self, room: str, person: str, seconds: float) -> float | None:
        # One clock for the cluster: a bucket of one token that refills in ``seconds``, so a
        # person whose sends reach two processes still gets one message per interval.
        try:
            return await self.store.take_token_or_wait(
                SLOW_MODE, f"{room}\x00{person}", 1 / seconds, 1)
        except StoreError:
            raise store_unavailable() from None

    async def take_session_token(self, address: str, rate: float, capacity: float) -> bool:
        # Like a send: this process's bucket refused a flood before this round trip. MongoDB
        # unreachable refuses (503): the session could not be stored anyway.
        try:
            return await self.store.take_token(NEW_SESSION, address, rate, capacity)
        except StoreError:
            raise store_unavailable() from None

    def writer_hooks(self, buffer: MessageBuffer) -> tuple[Publish, Callable[[], str] | None]:
        # The feed publishes every stored event, ours included, in the change stream's order;
        # no gap check either: the feed's catch-up closes gaps.
        return _published_by_the_feed, None

    def send_turn(self, sid: str) -> contextlib.AbstractAsyncContextManager[Any]:
        if self.rate_limit <= 0:
            return contextlib.nullcontext()
        return self._send_turns.turn(sid)

    async def take_shared_token(self, sid: str) -> bool:
        # This process's bucket stops a flood before this; the session's bucket in MongoDB
        # holds the rate across every process its sends reach (round robin, two tabs).
        if self.rate_limit <= 0:
            return True
        try:
            return await self.store.take_token(
                SEND, sid, self.rate_limit, self.rate_limit * BURST_FACTOR
            )
        except StoreError:
            raise store_unavailable() from None

    def presence_changed(self, room: str, buffer: MessageBuffer) -> None:
        if room not in self._presence_refresh:
            # Asked of MongoDB; several changes in a burst share one query.
            self._presence_refresh.add(room)
            asyncio.ensure_future(self._refresh_presence(room, buffer))

    async def typing(self, buffer: MessageBuffer, nick: str, ts: float, until: float) -> None:
        # Every process hears it from the change feed (``Chat.signal``), this one too: one
        # order with the events, so a signal made before a message is never shown after it.
        try:
            await self.store.rooms.insert_signal(
                {"kind": "typing", "room": buffer.room, "nick": nick, "ts": ts, "until": until})
        except StoreError:
            raise store_unavailable() from None

    async def people(self, rooms: list[str] | None, limit: int) -> dict[str, int]:
        try:
            return await self.store.rooms.people_counts(time.time(), rooms, limit)
        except StoreError:
            raise store_unavailable() from None

    async def _refresh_presence(self, room: str, buffer: MessageBuffer) -> None:
        await asyncio.sleep(0)  # let the rest of this burst of changes arrive first
        # From here on, a new change schedules a new refresh: none is missed.
        self._presence_refresh.discard(room)
        try:
            buffer.set_presence(await self.roster.nicks(room))
        except StoreError as exc:
            log.warning("presence of %s unavailable: %s", room, exc)
