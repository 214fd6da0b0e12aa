"""Caps on open connections (WebSockets and parked long-polls), per session and per address;
and on the rooms one session is present in, and how fast it joins them.

Each connection holds a socket, a file descriptor and a place in a waiter list; without a cap,
one script with a stolen or fresh session could hold thousands and starve everyone else. Each
room a session joins is a stored join event, and later a leave: without a cap, one session
polling thousands of rooms stored thousands of each, and everyone's sends waited behind them.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from chatapp.errors import ChatError
from chatapp.presence import Member, Presence
from chatapp.ratelimit import TokenBucket


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
        if self.per_address and self._addresses[address] >= self.per_address:
            raise ChatError(
                "too_many_connections",
                f"Your address already has {self.per_address} open connections.",
                429,
            )
        self._sessions[sid] += 1
        self._addresses[address] += 1

    def open_connections(self) -> int:
        """How many connections are counted as open now, in all."""
        return sum(self._sessions.values())

    def release(self, sid: str, address: str) -> None:
        for counter, key in ((self._sessions, sid), (self._addresses, address)):
            counter[key] -= 1
            if counter[key] <= 0:
                del counter[key]


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
