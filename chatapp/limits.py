"""Caps on open connections (WebSockets and parked long-polls), per session and per address;
and on the rooms one session is present in, and how fast it joins them.

Each connection holds a socket, a file descriptor and a place in a waiter list; without a cap,
one script with a stolen or fresh session could hold thousands and starve everyone else. Each
room a session joins is a stored join event, and later a leave: without a cap, one session
polling thousands of rooms stored thousands of each, and everyone's sends waited behind them.

In a cluster (``mode.ClusterMode``) the per-address cap holds across processes:
``SharedConnectionLimits``. The per-session cap and the room caps stay per process: a session
is one person's tabs, and its rooms' joins are rate-limited where they are made.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import Counter
from typing import Any

from chatapp.errors import ChatError
from chatapp.presence import Member, Presence
from chatapp.ratelimit import TokenBucket
from chatapp.store import EventStore, StoreError

log = logging.getLogger(__name__)


class ConnectionLimits:
    """Counts open connections; ``acquire`` refuses the one past a cap (0 means no cap)."""

    def __init__(self, per_session: int, per_address: int) -> None:
        self.per_session = per_session
        self.per_address = per_address
        self._sessions: Counter[str] = Counter()
        self._addresses: Counter[str] = Counter()

    def acquire(self, sid: str, address: str) -> None:
        if self.per_session and self._sessions[sid] >= self.per_session:
            raise ChatError(
                "too_many_connections",
                f"This session already has {self.per_session} open connections; "
                "close some tabs.",
                429,
            )
        if self.per_address and self._address_full(address):
            raise ChatError(
                "too_many_connections",
                f"Your address already has {self.per_address} open connections.",
                429,
            )
        self._sessions[sid] += 1
        self._addresses[address] += 1

    def _address_full(self, address: str) -> bool:
        """True if ``address`` may open no more connections here."""
        return self._addresses[address] >= self.per_address

    def open_connections(self) -> int:
        """How many connections are counted as open now, in all."""
        return sum(self._sessions.values())

    def address_connections(self, address: str) -> int:
        """Connections ``address`` holds open in this process."""
        return self._addresses[address]

    def release(self, sid: str, address: str) -> None:
        for counter, key in ((self._sessions, sid), (self._addresses, address)):
            counter[key] -= 1
            if counter[key] <= 0:
                del counter[key]


# How often each process of a cluster publishes its connections per address and reads the
# others': the window in which a burst across processes is judged on counts that old. Two
# small round trips a second per process, none on the accept path.
SHARE_SECONDS = 1.0
# A process's published counts hold this long: five missed refreshes (a slow MongoDB, a long
# pause) before a live process's connections are forgotten; a killed process's stop counting
# within LEASE_SECONDS + SHARE_SECONDS (6 s) everywhere.
LEASE_SECONDS = 5.0
# An address is published only from a process where it holds at least 1/HIDDEN_PARTS of the
# cap's per-process share (1 when the cap is small): ordinary people (a few connections each)
# are never published, so the documents stay small, and what goes unpublished is below
# cap / HIDDEN_PARTS over all processes together.
HIDDEN_PARTS = 10


class SharedConnectionLimits(ConnectionLimits):
    """The per-address cap held across the processes of a cluster, with no MongoDB round trip
    on the accept path.

    Every ``SHARE_SECONDS`` each process publishes its connections per address and reads the
    other processes' (``EventStore.share_connections``: a lease per process, so a killed
    process's connections stop counting within ``LEASE_SECONDS + SHARE_SECONDS``). From what
    it read, with ``P`` live processes, ``C`` the cap, ``L`` this process's count of the
    address then and ``O`` the others', it gives itself a quota until the next refresh: ``L``
    plus its share of the headroom, ``ceil((C - L - O) / P)``; or ``C - O`` when there is no
    headroom (the address is at or over the cap: nothing new until it is back under it).
    ``acquire`` compares with the quota: a dict lookup, as in one process.

    How far over the cap a burst across processes can go: if all saw the same counts, the
    shares add up to the headroom, plus at most one per process for rounding up. The counts a
    process reads miss what the others accepted since they last published, at most one share
    each, so its own share is too large by at most its part of theirs: together below one
    more headroom. An address therefore holds less than twice the cap plus one per process,
    however the burst is timed, and only until the next refreshes, which see the excess and
    give it a quota of nothing (connections already open are not closed). Plus what goes
    unpublished (``HIDDEN_PARTS``): under a tenth of the cap.

    The trap: an address whose connections all reach one process (a load balancer hashing
    addresses) fills the cap by shares: with 2 processes half of the headroom per refresh, so
    half the cap at once, 90 % after 3 s, all of a cap of 1000 after about 10 s.

    MongoDB unreachable: the refresh fails, is logged, and the quotas stay as they were: no
    new share, and the others' last counts still count. So a process neither refuses everyone
    (reading goes on without MongoDB, and connections are what readers need) nor falls back
    to the per-process cap; an address gains at most one share per process while it lasts.
    Before its first refresh (at start, before it serves) a process counts alone.
    """

    def __init__(self, per_session: int, per_address: int, store: EventStore, me: str) -> None:
        super().__init__(per_session, per_address)
        self.store, self.me = store, me
        self._processes = 1
        self._elsewhere: dict[str, int] = {}  # the others' counts, at the last refresh
        self._quota: dict[str, int] = {}  # this process's, of addresses it held then
        self._task: asyncio.Task[None] | None = None

    def _address_full(self, address: str) -> bool:
        quota = self._quota.get(address)
        if quota is None:
            quota = self._share(0, self._elsewhere.get(address, 0))
        return self._addresses[address] >= quota

    def _share(self, here: int, elsewhere: int) -> int:
        headroom = self.per_address - here - elsewhere
        if headroom <= 0:
            return here + headroom
        return here + math.ceil(headroom / self._processes)

    async def refresh(self) -> bool:
        """Publish this process's counts, read the others', set the quotas; False (logged)
        if MongoDB failed."""
        if not self.per_address:
            return True
        least = max(1, self.per_address // (HIDDEN_PARTS * self._processes))
        counts = {a: n for a, n in self._addresses.items() if n >= least}
        try:
            self._processes, self._elsewhere = await self.store.share_connections(
                self.me, counts, LEASE_SECONDS)
        except StoreError as exc:
            log.warning("connection counts not shared, keeping the last quotas: %s", exc)
            return False
        self._processes = max(1, self._processes)
        # Only the addresses that count: the others' quota, worked out when one connects, is
        # their share from nothing, which what they hold here (below ``least``) fits in.
        self._quota = {a: self._share(n, self._elsewhere.get(a, 0))
                       for a, n in self._addresses.items()
                       if n >= least or a in self._elsewhere}
        return True

    async def start(self) -> None:
        """The first refresh (before serving), then one every ``SHARE_SECONDS``."""
        await self.refresh()
        if self._task is None and self.per_address:
            self._task = asyncio.ensure_future(self._refresh_forever())

    async def stop(self) -> None:
        """Stop refreshing; this process's connections stop counting at once."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.per_address:
            try:
                await self.store.drop_connections(self.me)
            except StoreError as exc:
                log.warning("connection counts left to expire: %s", exc)

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(SHARE_SECONDS)  # read each time: a test may tune it
            try:
                await self.refresh()
            except Exception:
                log.exception("connection counts not shared")


# One person has a tab or two per room and a few rooms open; 50 rooms at once is far beyond
# that, and stops one session (a script polling thousands of rooms without a cursor) from
# storing a join in each, and later a leave in each.
MAX_ROOMS_PER_SESSION = 50
# Joins one session may make (each is a stored event, and later a leave): the whole room cap
# at once (a browser restoring its tabs), then one every 2 s. Leaves need no limit of their
# own: a session leaves only rooms it joined.
JOIN_RATE = 0.5
JOIN_BURST = MAX_ROOMS_PER_SESSION


class CappedPresence(Presence):
    """``Presence`` with a cap on the rooms one session is a member of (connected, or within
    its grace period) and a rate limit on its joins.

    ``admit(room, sid)`` refuses (a ``ChatError``, 429) the connection that would make the
    session join one room too many, or join too fast; call it before loading the room (a
    refused room then costs nothing), then ``connect``. Connections of one session admitted
    while others load can pass the cap together, by at most the session's connection cap.
    Joining a room the session is already a member of is always admitted and costs nothing.
    """

    def __init__(
        self,
        grace: float,
        max_rooms: int = MAX_ROOMS_PER_SESSION,
        join_rate: float = JOIN_RATE,
        join_burst: float = JOIN_BURST,
    ) -> None:
        super().__init__(grace)
        self.max_rooms, self.join_rate, self.join_burst = max_rooms, join_rate, join_burst
        self._rooms_of: dict[str, set[str]] = {}
        self._joins: dict[str, TokenBucket] = {}

    def admit(self, room: str, sid: str) -> None:
        rooms = self._rooms_of.get(sid, set())
        if room in rooms:
            return
        if len(rooms) >= self.max_rooms:
            raise ChatError(
                "too_many_rooms",
                f"This session is already in {self.max_rooms} rooms; close some first.",
                429,
            )
        bucket = self._joins.get(sid)
        if bucket is None:
            bucket = self._joins[sid] = TokenBucket(self.join_rate, self.join_burst)
        if not bucket.take():
            raise ChatError(
                "rate_limited", "You are joining rooms too fast; wait a moment.", 429)

    def connect(self, room: str, sid: str, nick: str, conn: Any) -> bool:
        joined = super().connect(room, sid, nick, conn)
        if joined:
            self._rooms_of.setdefault(sid, set()).add(room)
        return joined

    def seed(self, room: str, sid: str, nick: str) -> bool:
        seeded = super().seed(room, sid, nick)
        if seeded:
            self._rooms_of.setdefault(sid, set()).add(room)
        return seeded

    def expired(self) -> list[tuple[str, Member]]:
        left = super().expired()
        for room, member in left:
            self._left(member.sid, room)
        for sid, bucket in list(self._joins.items()):
            if sid not in self._rooms_of and bucket.is_full():
                del self._joins[sid]
        return left

    def remove_session(self, sid: str) -> list[tuple[str, Member]]:
        self._rooms_of.pop(sid, None)
        self._joins.pop(sid, None)
        return super().remove_session(sid)

    def _left(self, sid: str, room: str) -> None:
        rooms = self._rooms_of.get(sid)
        if rooms is not None:
            rooms.discard(room)
            if not rooms:
                del self._rooms_of[sid]
