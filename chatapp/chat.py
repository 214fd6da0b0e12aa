"""Where every event enters: ``Chat``, the one core both transports call.

The WebSocket handler and the HTTP handlers are thin adapters over these methods; every rule
(validation, rate limit, idempotency, storing, publishing, cursors, presence) lives in the
modules this one puts together, never in a handler:

    send(), edit(), delete(), react() -> sending.Sender -> rules -> rooms.Rooms.writer
                  -> store (in id order; an action decided and applied to its target in the
                  same transaction, kinds.py) -> MessageBuffer.publish -> waiters
    updates(), poll(), history()  -> reading.Reader
    typing(), signal()            -> signals.Signals -> mode -> RoomSignals (not stored)
    mark_read(), my_rooms(), directory() -> markers.Markers
    connect(), disconnect(), sweep() -> membership.Membership (presence, joins, leaves)
    one process or a cluster      -> mode.LocalMode / mode.ClusterMode, chosen here once
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from chatapp import kinds, metrics, rules
from chatapp.buffer import Entry, MessageBuffer
from chatapp.errors import ChatError, store_unavailable
from chatapp.feed import ChangeFeed
from chatapp.limits import CappedPresence, ConnectionLimits
from chatapp.markers import Markers
from chatapp.membership import Membership
from chatapp.mode import ClusterMode, LocalMode
from chatapp.moderation import Moderation, not_moderator
from chatapp.reading import HISTORY_DEFAULT, HISTORY_MAX, PollWaiter, Reader, View
from chatapp.rooms import MAX_UPDATES, ROOM_IDLE_SECONDS, Rooms
from chatapp.roster import LocalRoster, SharedRoster
from chatapp.sending import Sender
from chatapp.sessions import Session, Sessions
from chatapp.signals import TYPING_SECONDS, Signals
from chatapp.store import EventStore, ModerationStore, StoreError

if TYPE_CHECKING:
    from chatapp.roles import Roles

__all__ = ["HISTORY_DEFAULT", "HISTORY_MAX", "MAX_UPDATES", "Chat", "PollWaiter", "View"]

log = logging.getLogger(__name__)

# How often presence and session expiry are checked. Leaves are announced at most this late
# after the grace period; 5 s is well inside what people notice.
SWEEP_SECONDS = 5.0


class Chat:
    def __init__(
        self,
        store: EventStore,
        *,
        history_size: int = 100,
        rate_limit: float = 10.0,
        grace_period: float = 60.0,
        unused_session_ttl: float = 120.0,
        store_timeout: float = 4.0,
        max_connections_per_session: int = 20,
        max_connections_per_ip: int = 1000,
        new_sessions_per_ip: int = 30,
        cluster: bool = False,
        typing_seconds: float = TYPING_SECONDS,
    ) -> None:
        self.store = store
        self.history_size = history_size
        self.rate_limit = rate_limit
        self.grace_period = grace_period
        self.store_timeout = store_timeout
        self.presence = CappedPresence(grace_period)  # rooms per session, joins' rate
        # Cluster mode: several processes on one replica set are one chat (see mode.py).
        self.mode: LocalMode = (
            ClusterMode(store, self.presence, grace_period, rate_limit, self) if cluster
            else LocalMode(store, self.presence, grace_period, rate_limit)
        )
        self.sessions = Sessions(
            store, unused_session_ttl, new_sessions_per_ip, self.mode.take_session_token)
        self.limits: ConnectionLimits = self.mode.connection_limits(
            max_connections_per_session, max_connections_per_ip)
        self.rooms = Rooms(store, self.mode, history_size, store_timeout)
        self.membership = Membership(
            self.rooms, self.mode, self.presence, self.sessions, self.limits, grace_period
        )
        self.reader = Reader(store, self.rooms, self.membership, history_size)
        self.sender = Sender(self.rooms, self.mode, rate_limit)
        self.signals = Signals(self._typed, self.sender.take_token, typing_seconds)
        self.markers = Markers(store, self.mode, self.open_room)
        self.membership.on_join = self.markers.joined
        # Mutes, bans, slow mode: checked on every path, changed by every published event.
        self.moderation = Moderation(ModerationStore(store), self.presence, self.mode.slow_turn)
        self.rooms.on_publish = self.moderation.published
        self.membership.guard = self.sender.guard = self.moderation
        self._sweeper: asyncio.Task | None = None

    @property
    def cluster(self) -> bool:
        return self.mode.cluster

    @property
    def roster(self) -> LocalRoster | SharedRoster:
        return self.mode.roster

    @property
    def feed(self) -> ChangeFeed | None:
        """The change feed (cluster mode), or None."""
        return self.mode.feed

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Restore presence from before a restart, then start the periodic sweep (leaves,
        session expiry: the cleanup that older chat designs ran as a cron job) and, in a
        cluster, the change feed. Call before serving."""
        await self.membership.restore()
        if self._sweeper is None:
            self._sweeper = asyncio.ensure_future(self._sweep_forever())
        await self.mode.start()

    async def flush(self, timeout: float) -> None:
        """Wait (up to ``timeout`` s) until what every room has queued is stored or failed.

        Shutdown calls it again once the connections are closed, before closing the store:
        a send that came in meanwhile was otherwise cut off in flight."""
        pending = self.rooms.writers_idle()
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    async def stop(self, timeout: float = 5.0) -> None:
        """Shut down: let queued sends be stored (up to ``timeout`` s), then tell every
        connection the server is going away, so clients reconnect and resume elsewhere."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        pending = self.rooms.writers_idle()
        await self.mode.stop()
        if pending:
            await asyncio.wait(pending, timeout=timeout)
        answering = []
        for waiter in self.rooms.waiters():
            waiter.shutdown()
            if isinstance(waiter, PollWaiter):
                answering.append(waiter.answered)
        if answering:
            # A woken long-poll answers from its own task: let it, before the caller closes
            # the connections (and the answers with them).
            await asyncio.wait(answering, timeout=timeout)

    # -- rooms --------------------------------------------------------------------------------

    async def room(self, name: str) -> MessageBuffer:
        """The room's buffer, loading its latest events from the store on first use."""
        return await self.rooms.get(name)

    def loaded_room(self, name: str) -> MessageBuffer | None:
        """The room's buffer if it is in memory now; loads nothing."""
        return self.rooms.loaded(name)

    def evict_idle_rooms(self, idle_for: float = ROOM_IDLE_SECONDS) -> list[str]:
        """Drop rooms nobody uses from memory; their names."""
        return self.rooms.evict_idle(idle_for, self.presence.has_members)

    # -- sending ------------------------------------------------------------------------------

    async def send(
        self, session: Session, room: str, text: Any, client_id: Any, reply_to: Any = None
    ) -> dict[str, Any]:
        """Store a message (a reply to message ``reply_to``) and deliver it to the room; the
        stored event.

        A repeat of ``client_id`` by the same session in the same room stores and delivers
        nothing and returns the first result again; so do ``edit``, ``delete``, ``react``.
        """
        self.signals.sent(session.sid, room)
        return await self.sender.send(session, room, text, client_id, reply_to)

    async def edit(
        self, session: Session, room: str, target: Any, text: Any, client_id: Any
    ) -> dict[str, Any]:
        """Edit your message ``target``: the edit event. ``no_such_message``, ``not_yours``,
        ``deleted``, and the send errors."""
        return await self.sender.edit(session, room, target, text, client_id)

    async def delete(
        self, session: Session, room: str, target: Any, client_id: Any = None,
        roles: Roles | None = None,
    ) -> dict[str, Any]:
        """Delete message ``target``: the delete event (the first one, if it was deleted
        already). ``no_such_message``, ``not_yours``.

        Someone else's message may be deleted by a moderator of the room (``roles`` says who
        is one): that delete is the moderation action ``delete``, so the log says a
        moderator did it, exactly as when it comes through the moderation endpoint.
        """
        try:
            return await self.sender.delete(session, room, target, client_id)
        except ChatError as exc:
            if exc.code != "not_yours" or roles is None:
                raise
            if not await self._is_moderator(roles, session, room):
                raise
        event, _ = await self._moderate(
            session, room, {"action": "delete", "target": target}, client_id)
        assert event is not None
        return event

    async def react(
        self, session: Session, room: str, target: Any, emoji: Any, on: Any, client_id: Any
    ) -> tuple[dict[str, Any] | None, dict[str, list[str]]]:
        """Your reaction ``emoji`` on message ``target``, added (``on``) or taken back: the
        event (None when it changed nothing) and the message's reactions now.
        ``no_such_message``, ``deleted``, ``bad_emoji``."""
        return await self.sender.react(session, room, target, emoji, on, client_id)

    async def moderate(
        self, session: Session, room: str, fields: dict[str, Any], roles: Roles
    ) -> dict[str, Any]:
        """A moderation action (``chatapp.moderation``) by ``session``: the ``moderation``
        event stored (after the delete event, for ``delete``). ``not_moderator``,
        ``bad_moderation``, and the delete's errors."""
        rules.check_room(room)
        if not await self._is_moderator(roles, session, room):
            raise not_moderator()
        return (await self._moderate(session, room, fields))[1]

    async def _is_moderator(self, roles: Roles, session: Session, room: str) -> bool:
        try:
            return await roles.may_moderate(session, room)
        except StoreError:
            raise store_unavailable() from None

    async def _moderate(
        self, session: Session, room: str, fields: dict[str, Any], client_id: Any = None
    ) -> tuple[dict[str, Any] | None, dict[str, Any]]:
        """The moderation action ``fields`` by ``session``, whose role was checked: the
        delete event (for ``delete``; else None) and the ``moderation`` event stored."""
        try:
            doc = await self.moderation.prepare(session, room, fields)
        except StoreError:
            raise store_unavailable() from None
        deleted = None
        if doc["action"] == "delete":
            deleted = await self.sender.delete(session, room, doc["target"], client_id,
                                               moderator=True)
        await self.rooms.get(room)
        appended = await self.rooms.writer(room).write(doc)
        assert appended.event is not None  # a moderation event is always stored
        return deleted, appended.event

    # -- reading ------------------------------------------------------------------------------

    async def open_room(self, room: str, cursor: str | None = None) -> MessageBuffer:
        """The room's buffer, once ``cursor`` (if any) is known to be an id this server
        issued in it; ``bad_cursor`` otherwise, before anything else happens."""
        return await self.reader.open_room(room, cursor)

    async def updates(self, room: str, cursor: str | None, limit: int = MAX_UPDATES) -> list[Entry]:
        """Events after ``cursor`` (at most ``limit``), oldest first (see ``Reader.updates``)."""
        return await self.reader.updates(room, cursor, limit)

    async def newcomer_view(self, room: str) -> View:
        """What a newcomer is shown: the latest ``history_size`` listed events in their
        current state, the log's cursor to resume from, and whether older ones exist."""
        return await self.reader.newcomer(room)

    async def poll(
        self,
        session: Session,
        room: str,
        cursor: str | None,
        timeout: float,
        address: str,
        on_park: Callable[[PollWaiter], None] | None = None,
        present: bool = True,
        signals: str | None = None,
    ) -> list[Entry] | None:
        """The long-poll (see ``Reader.poll``)."""
        return await self.reader.poll(
            session, room, cursor, timeout, address, on_park, present=present, signals=signals)

    # -- signals (not stored) -----------------------------------------------------------------

    async def typing(self, session: Session, room: str) -> None:
        """The session is typing in ``room`` (throttled, rate-limited: ``signals.Signals``)."""
        await self.signals.typing(session.sid, session.nick, room)

    async def _typed(self, room: str, nick: str, ts: float, until: float) -> None:
        await self.mode.typing(await self.rooms.get(room), nick, ts, until)

    def signal(self, doc: dict[str, Any]) -> None:
        """A signal any process of the cluster made, from the change feed."""
        kind = doc.get("kind")
        if kind == "typing":
            buffer = self.rooms.loaded(doc.get("room", ""))
            if buffer is not None:  # a room nobody here follows needs no typists
                buffer.signals.typing(doc["nick"], doc["ts"], doc["until"])
        else:
            log.warning("signal of unknown kind %r ignored", kind)

    def signals_of(self, room: str) -> dict[str, Any]:
        """The room's signals as a long-poll that asked for them is answered."""
        buffer = self.rooms.loaded(room)
        if buffer is None:
            return {"signals": "", "presence": [], "typing": []}
        return buffer.signals.state()

    # -- read markers and lists of rooms --------------------------------------------------------

    async def mark_read(self, session: Session, room: str, event_id: Any) -> None:
        """Move the identity's read marker in ``room`` forward to ``event_id``."""
        await self.markers.mark_read(session, room, event_id)

    async def my_rooms(self, session: Session) -> list[dict[str, Any]]:
        """The rooms the identity joined, with read marker and counts."""
        return await self.markers.my_rooms(session)

    async def directory(self, names: list[str] | None = None) -> list[dict[str, Any]]:
        """Rooms with people (fullest first), or the rooms ``names``."""
        return await self.markers.directory(names)

    async def history(
        self, room: str, before: str | None, limit: int
    ) -> tuple[list[dict[str, Any]], bool]:
        """Up to ``limit`` events just before ``before`` (or the latest), oldest first, and
        whether older ones exist."""
        return await self.reader.history(room, before, limit)

    async def present(self, room: str) -> list[str]:
        """The nicknames present in ``room``, sorted."""
        return await self.membership.present(room)

    # -- connections and sessions -------------------------------------------------------------

    async def connect(
        self, session: Session, room: str, conn: Any, address: str
    ) -> MessageBuffer:
        """Count a connection as open in ``room`` (see ``Membership.connect``); pair every
        successful one with one ``disconnect``."""
        return await self.membership.connect(session, room, conn, address)

    def disconnect(self, session: Session, room: str, conn: Any, address: str) -> None:
        """The connection closed; the session leaves after the grace period unless it returns."""
        self.membership.disconnect(session, room, conn, address)

    async def end_session(self, session: Session) -> None:
        """Log out: the nickname is free at once, and the session leaves every room now."""
        await self._forget_session(session.sid)
        try:
            await self.sessions.end(session.sid)
        except StoreError:
            raise store_unavailable() from None

    async def _forget_session(self, sid: str) -> None:
        await self.membership.remove_session(sid)
        self.sender.forget(sid)

    def session_gone(self, sid: str) -> None:
        """The feed saw a session end (logged out or expired, in any process of the cluster)."""
        self.sessions.forget(sid)
        asyncio.ensure_future(self._forget_session(sid))

    # -- cluster mode: what the change feed brings -----------------------------------------------

    def deliver(self, events: list[dict[str, Any]]) -> None:
        """Events stored by any process of the cluster, in the change stream's order: publish
        them here, all of a room's in one batch (one write per socket), in that order."""
        metrics.feed_brought(events)
        by_room: dict[str, list[dict[str, Any]]] = {}
        for event in events:
            by_room.setdefault(event["room"], []).append(event)
        for room, batch in by_room.items():
            if self.rooms.deliver(room, batch) and any(
                event["type"] in kinds.PRESENCE_KINDS for event in batch
            ):
                self.rooms.presence_changed(room)  # a join or leave: once for the batch

    async def catch_up_rooms(self) -> None:
        """What the feed missed while it was not following (it is (re)opening): each loaded
        room's events after its buffer's last id, and sessions that ended meanwhile."""
        for sid in await self.sessions.ended_meanwhile():
            await self._forget_session(sid)
        await self.rooms.catch_up()

    # -- the sweep ----------------------------------------------------------------------------

    async def sweep(self) -> None:
        """Announce leaves past the grace period; keep live sessions alive; expire the rest;
        forget refilled rate-limit buckets and idle rooms."""
        await self.membership.sweep()
        self.sender.prune()
        self.signals.prune()
        self.evict_idle_rooms()

    async def _sweep_forever(self) -> None:
        # A short grace period (tests, demos) needs a sweep at least as often.
        interval = min(SWEEP_SECONDS, max(0.1, self.grace_period / 2))
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sweep()
            except StoreError as exc:
                log.warning("sweep failed, will retry: %s", exc)
            except Exception:
                log.exception("sweep failed")
