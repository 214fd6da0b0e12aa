"""Who is present in which room, counted by open connections, with a grace period.

A session joins a room when its first connection there opens (a WebSocket, or a pending
long-poll) and leaves when its last one has been gone for ``grace`` seconds. The grace period
is what lets a page reload, or the gap between two long-polls, pass without a leave and a join.
This module only keeps the books; ``Chat`` turns its answers into join and leave events.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from chatapp.rules import nick_key


@dataclass
class Member:
    sid: str
    nick: str
    connections: set[Any] = field(default_factory=set)
    gone_since: float = 0.0  # when the last connection closed; meaningful with none open
    # How ``nicks`` sorts it, computed once: the list is sorted again at every join, and a room
    # of 2,000 filling up computed 2 million keys (O(N^2)).
    sort_key: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.sort_key = nick_key(self.nick)


class Presence:
    def __init__(self, grace: float) -> None:
        self.grace = grace
        self._rooms: dict[str, dict[str, Member]] = {}

    def connect(self, room: str, sid: str, nick: str, conn: Any) -> bool:
        """Count ``conn`` as open; True when it makes the session join the room."""
        members = self._rooms.setdefault(room, {})
        member = members.get(sid)
        joined = member is None
        if member is None:
            member = members[sid] = Member(sid, nick)
        member.connections.add(conn)
        return joined

    def seed(self, room: str, sid: str, nick: str) -> bool:
        """Bring back a member of a previous run, as gone since now; False if already here."""
        members = self._rooms.setdefault(room, {})
        if sid in members:
            return False
        members[sid] = Member(sid, nick, gone_since=time.monotonic())
        return True

    def disconnect(self, room: str, sid: str, conn: Any) -> None:
        member = self._rooms.get(room, {}).get(sid)
        if member is not None and conn in member.connections:
            member.connections.discard(conn)
            if not member.connections:
                member.gone_since = time.monotonic()

    def expired(self) -> list[tuple[str, Member]]:
        """Forget members gone longer than the grace period; they have left their rooms."""
        cutoff = time.monotonic() - self.grace
        left = []
        for room, members in list(self._rooms.items()):
            for sid, member in list(members.items()):
                if not member.connections and member.gone_since <= cutoff:
                    del members[sid]
                    left.append((room, member))
            if not members:
                del self._rooms[room]
        return left

    def remove_session(self, sid: str) -> list[tuple[str, Member]]:
        """Forget a session everywhere at once (it logged out)."""
        left = []
        for room, members in list(self._rooms.items()):
            member = members.pop(sid, None)
            if member is not None:
                left.append((room, member))
            if not members:
                del self._rooms[room]
        return left

    def counts(self) -> dict[str, int]:
        """Members per room (those in their grace period too, as ``nicks`` lists them)."""
        return {room: len(members) for room, members in self._rooms.items()}

    def members(self, room: str) -> list[Member]:
        """The room's members on this process (a copy), with their open connections."""
        return list(self._rooms.get(room, {}).values())

    def has_members(self, room: str) -> bool:
        return room in self._rooms

    def nicks(self, room: str) -> list[str]:
        # Sorted as people read a list: "an" before "Bo", whatever the case.
        members = self._rooms.get(room, {}).values()
        return [m.nick for m in sorted(members, key=lambda m: m.sort_key)]

    def last_seen_in_rooms(self) -> dict[tuple[str, str], float]:
        """(room, sid) -> when the member was last connected here: now if it is."""
        now = time.monotonic()
        return {
            (room, sid): now if member.connections else member.gone_since
            for room, members in self._rooms.items()
            for sid, member in members.items()
        }

    def last_seen(self) -> dict[str, float]:
        """For each session with a member record: now if connected, else when it went away.

        Used to keep each session's expiry ``grace`` seconds after its last connection.
        """
        now = time.monotonic()
        seen: dict[str, float] = {}
        for members in self._rooms.values():
            for sid, member in members.items():
                t = now if member.connections else member.gone_since
                seen[sid] = max(seen.get(sid, 0.0), t)
        return seen
