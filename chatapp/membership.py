"""Who is in a room: connections counted, joins and leaves announced, sessions kept alive.

A connection (a WebSocket, or a parked long-poll) is counted by ``connect`` and uncounted by
``disconnect``; the first one of a session in a room may be a join, the last one gone for the
grace period a leave (``presence.Presence`` keeps this process's books, the mode's roster
decides for the chat as a whole). Joins and leaves are events like messages: queued on the
room's writer, stored, then delivered.

The trap: a join must be queued before anything its connection can send, so ``connect``
queues it without suspending in between (a ``LocalRoster`` answers at once).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from chatapp import metrics
from chatapp.buffer import MessageBuffer
from chatapp.errors import ChatError, store_unavailable
from chatapp.limits import CappedPresence, ConnectionLimits
from chatapp.mode import LocalMode
from chatapp.presence import Member, Presence
from chatapp.rooms import Rooms
from chatapp.sessions import Session, Sessions
from chatapp.store import StoreError

if TYPE_CHECKING:
    from chatapp.moderation import Moderation

log = logging.getLogger(__name__)


class Membership:
    def __init__(
        self,
        rooms: Rooms,
        mode: LocalMode,
        presence: Presence,
        sessions: Sessions,
        limits: ConnectionLimits,
        grace_period: float,
    ) -> None:
        self.rooms = rooms
        self.mode = mode
        self.presence = presence
        self.sessions = sessions
        self.limits = limits
        self.grace_period = grace_period
        # Told of each session's first local connection to a room (read markers: "joined"),
        # with where the room's log ends then.
        self.on_join: Callable[[str, Session, str], None] | None = None
        self.guard: Moderation | None = None  # bans (set by Chat)

    async def restore(self) -> None:
        """Bring back presence from before a restart: its members' leaves will be announced
        in their rooms after the grace period, unless they come back."""
        try:
            for room in await self.mode.roster.restore():
                await self.rooms.get(room)
        except (StoreError, ChatError) as exc:
            log.warning("presence from before the restart is lost: %s", exc)

    async def connect(
        self, session: Session, room: str, conn: Any, address: str, present: bool = True
    ) -> MessageBuffer:
        """Count a connection (a WebSocket, or a pending long-poll) from ``address`` as open in
        ``room``. Refuses it (``too_many_connections``) past the per-session or per-address
        cap. Every successful ``connect`` must be paired with one ``disconnect``. Not
        ``present``: counted against the caps, but no presence and no join."""
        if self.guard is not None:
            await self.guard.check_read(room, session, address)  # banned
        self.limits.acquire(session.sid, address)
        try:
            if present and isinstance(self.presence, CappedPresence):
                # Before loading: a refused room costs no query and no buffer.
                self.presence.admit(room, session.sid)  # too_many_rooms, joins too fast
            buffer = await self.rooms.get(room)
        except BaseException:
            self.limits.release(session.sid, address)
            raise
        metrics.connection_opened(conn)
        if present and self.presence.connect(room, session.sid, session.nick, conn):
            self.rooms.presence_changed(room)
            if self.on_join is not None:
                self.on_join(room, session, buffer.last_id)
            # A LocalRoster answers without suspending, so the join is queued before anything
            # this connection can send.
            if await self._roster_says(self.mode.roster.join(room, session.sid, session.nick)):
                self.announce(room, "join", session)
        return buffer

    async def _roster_says(self, answer: Awaitable[bool]) -> bool:
        try:
            return await answer
        except StoreError as exc:
            # A join or leave is not worth failing a connection for; the store is down anyway.
            log.warning("presence unavailable: %s", exc)
            return False

    def disconnect(self, session: Session, room: str, conn: Any, address: str) -> None:
        """The connection closed; the session leaves after the grace period unless it returns."""
        self.limits.release(session.sid, address)
        metrics.connection_closed(conn)
        self.presence.disconnect(room, session.sid, conn)

    async def remove_session(self, sid: str) -> None:
        """The session ended: its connections close and it leaves every room now."""
        for room, member in self.presence.remove_session(sid):
            self.rooms.presence_changed(room)
            for conn in list(member.connections):
                conn.session_ended()
            if await self._roster_says(self.mode.roster.leave(room, sid)):
                self.announce(room, "leave", member)

    async def present(self, room: str) -> list[str]:
        """The nicknames present in ``room``, sorted."""
        try:
            return await self.mode.roster.nicks(room)
        except StoreError:
            raise store_unavailable() from None

    def announce(self, room: str, kind: str, member: Member | Session) -> asyncio.Future:
        """Queue a join or leave event now, behind whatever was sent before it and ahead of
        whatever is sent after; it is stored and delivered in the background (the returned
        task), logged, never raised, if the store fails. The room is loaded: a member is
        present only in rooms ``connect`` loaded."""
        doc = {"type": kind, "nick": member.nick, "ts": time.time(),
               "sid": member.sid, "cid": f"{kind}-{secrets.token_hex(8)}"}
        return asyncio.ensure_future(self._record(room, doc, self.rooms.writer(room).write(doc)))

    async def _record(self, room: str, doc: dict[str, Any], stored: Awaitable[Any]) -> None:
        try:
            await stored
        except ChatError as exc:
            log.warning("could not record %s of %s in %s: %s", doc["type"], doc["nick"], room, exc)

    async def sweep(self) -> None:
        """Announce leaves past the grace period; keep live sessions alive; expire the rest."""
        roster = self.mode.roster
        for room, member in self.presence.expired():
            self.rooms.presence_changed(room)
            if await self._roster_says(roster.leave(room, member.sid)):
                await self.rooms.get(room)  # loaded already, unless its loading failed at start
                self.announce(room, "leave", member)
        for room, sid, nick in await roster.orphans():
            # Left in a process that died: announced by whichever process noticed first.
            await self.rooms.get(room)
            self.announce(room, "leave", Member(sid, nick))
        now_wall, now_mono = time.time(), time.monotonic()
        await roster.renew({
            key: now_wall - (now_mono - seen)
            for key, seen in self.presence.last_seen_in_rooms().items()
        })
        last_seen = {
            sid: now_wall - (now_mono - seen) + self.grace_period
            for sid, seen in self.presence.last_seen().items()
        }
        await self.sessions.keep_alive(last_seen)
        await self.sessions.sweep()
