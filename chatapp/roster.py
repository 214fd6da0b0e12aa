"""Who is present in a room: the answer for one process, and for a cluster of them.

``Chat`` asks its roster two questions when a session's first local connection to a room opens
or its last one is gone for the grace period: is that a join (or a leave) of the chat as a
whole? And it asks for the room's list of nicknames.

``LocalRoster``: a single process. Its own books (``presence.Presence``) are the whole truth;
every answer is immediate, with no round trip to MongoDB.

``SharedRoster``: several processes on one replica set (cluster mode).

Each process knows its own connections (``presence.Presence``). In a cluster a session may
have a tab on one process and another tab on a second, so "the first connection" and "the
last one gone" are questions for all processes together. This module answers them from a
``members`` collection holding one document per (room, session): a lease per process that has
the member connected (renewed by every sweep while it does), and whether the room was told
"join" or "leave" last. Each answer is one atomic update of that document, so two tabs
opening (or closing) on two processes at the same moment make one join (or one leave). A
process that dies stops renewing; once every lease of a member has run out, the first other
process whose sweep notices announces the leave.

"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable

from chatapp.presence import Presence
from chatapp.rules import nick_key
from chatapp.store import EventStore, StoreError

log = logging.getLogger(__name__)

# How long past the grace period a lease lasts: a sweep renews it every few seconds, so only a
# process that stopped sweeping (it died) lets it run out.
LEASE_MARGIN_SECONDS = 15.0


def process_id() -> str:
    """A name for this process, unique in the cluster and readable in the database."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class LocalRoster:
    """One process: every local join is a join, every local leave a leave, answered at once.

    The books are also copied to MongoDB (leases, off the join path), for one reason: a
    restart. ``restore`` brings back who was present as members gone since the restart, so a
    page that reconnects within the grace period is no new join, and one that never comes
    back gets its leave when the grace period ends.
    """

    def __init__(self, presence: Presence, store: EventStore, grace: float) -> None:
        self.presence = presence
        self.store = store
        self.grace = grace
        self.me = process_id()

    def _lease(self, last_seen: float | None = None) -> float:
        return (last_seen or time.time()) + self.grace + LEASE_MARGIN_SECONDS

    async def restore(self) -> list[str]:
        """Seed the books with the members of the previous run; the rooms they were in."""
        rooms = set()
        for room, sid, nick in await self.store.all_members():
            if self.presence.seed(room, sid, nick):
                rooms.add(room)
        await self.store.take_over_members(self.me, self._lease())
        return sorted(rooms)

    async def join(self, room: str, sid: str, nick: str) -> bool:
        _in_background(self.store.join_member(room, sid, nick, self.me, self._lease()))
        return True

    async def leave(self, room: str, sid: str) -> bool:
        _in_background(self.store.leave_member(room, sid, self.me, time.time()))
        return True

    async def renew(self, last_seen: dict[tuple[str, str], float]) -> None:
        await self.store.renew_members(
            self.me, {key: self._lease(seen) for key, seen in last_seen.items()}
        )

    async def orphans(self) -> list[tuple[str, str, str]]:
        return []  # no other process to outlive

    async def nicks(self, room: str) -> list[str]:
        return self.presence.nicks(room)


def _in_background(write: Awaitable[object]) -> None:
    """A copy of the books that must not delay a join: logged, never raised."""

    async def run() -> None:
        try:
            await write
        except StoreError as exc:
            log.warning("could not record presence: %s", exc)

    asyncio.ensure_future(run())


class SharedRoster:
    """Several processes: membership leases in MongoDB decide joins, leaves and the list.

    A restarted process needs no ``restore``: its predecessor's leases are "another process"
    until they run out, so returning pages are no new join, and the rest leave as orphans.
    """

    async def restore(self) -> list[str]:
        return []


    def __init__(self, store: EventStore, grace: float) -> None:
        self.store = store
        self.grace = grace
        self.me = process_id()

    def _lease(self, last_seen: float | None = None) -> float:
        return (last_seen or time.time()) + self.grace + LEASE_MARGIN_SECONDS

    async def join(self, room: str, sid: str, nick: str) -> bool:
        """This process holds the member now; True if it was not present (a real join). Of
        several processes joining one member at once, exactly one gets True."""
        return await self.store.join_member(room, sid, nick, self.me, self._lease())

    async def leave(self, room: str, sid: str) -> bool:
        """This process no longer holds the member; True if no other process does (a real
        leave). Of several processes leaving one member at once, exactly one gets True."""
        return await self.store.leave_member(room, sid, self.me, time.time())

    async def renew(self, last_seen: dict[tuple[str, str], float]) -> None:
        """Renew this process's leases: ``last_seen`` maps (room, sid) to when it was last
        connected here (now, for an open connection)."""
        await self.store.renew_members(
            self.me, {key: self._lease(seen) for key, seen in last_seen.items()}
        )

    async def orphans(self) -> list[tuple[str, str, str]]:
        """Members whose every lease ran out (their process died): (room, sid, nick) for each
        this call removed, so that exactly one process announces each leave."""
        return await self.store.remove_expired_members(time.time())

    async def nicks(self, room: str) -> list[str]:
        return sorted(await self.store.present_nicks(room, time.time()), key=nick_key)
