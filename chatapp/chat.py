"""Where every event enters: ``Chat``, the one core both transports call.

The WebSocket handler and the HTTP handlers are thin adapters over these methods; every rule
(validation, rate limit, idempotency, storing, publishing, cursors, presence) lives here or in
the modules this one calls, never in a handler.

    send() -> rules -> RoomWriter (store, in id order) -> MessageBuffer.publish -> waiters
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from chatapp import rules
from chatapp.buffer import Entry, MessageBuffer
from chatapp.errors import ChatError, store_unavailable
from chatapp.feed import ChangeFeed
from chatapp.limits import CappedPresence, ConnectionLimits
from chatapp.presence import Member
from chatapp.ratelimit import BURST_FACTOR, TokenBucket, Turns
from chatapp.roster import LocalRoster, SharedRoster
from chatapp.sessions import Session, Sessions
from chatapp.store import EventStore, StoreError
from chatapp.writer import RoomWriter

log = logging.getLogger(__name__)

# The contract: at most 500 events in one long-poll answer; a client far behind asks again.
MAX_UPDATES = 500
# The contract: history pages default to 50 events and hold at most 200.
HISTORY_DEFAULT, HISTORY_MAX = 50, 200
# How often presence and session expiry are checked. Leaves are announced at most this late
# after the grace period; 5 s is well inside what people notice.
SWEEP_SECONDS = 5.0
# A room nobody has asked for in this long, with nobody connected, is dropped from memory;
# its next visitor loads it again from MongoDB (one query). Without this, every room ever
# opened would keep its buffer until the process ends.
ROOM_IDLE_SECONDS = 600.0


def _published_by_the_feed(events: list[dict[str, Any]]) -> None:
    """Cluster mode: stored events are published when the change feed brings them."""


class PollWaiter:
    """A parked long-poll: finishes with the first batch of events published after it."""

    def __init__(self, cursor: str | None = None) -> None:
        loop = asyncio.get_running_loop()
        self._future: asyncio.Future = loop.create_future()
        # Resolved once ``Chat.poll`` has returned: the handler has written its answer then.
        self.answered: asyncio.Future = loop.create_future()
        self.cursor = cursor or ""

    def wake(self, entries: list[Entry]) -> None:
        if entries and entries[0].id <= self.cursor:
            # Cluster: a cursor from another process can be ahead of this one's buffer (its
            # feed lags); what the feed brings up to the cursor, the client already has.
            entries = [e for e in entries if e.id > self.cursor]
            if not entries:
                return
        if not self._future.done():
            self._future.set_result(entries)

    def presence_changed(self, wire: bytes) -> None:
        pass  # long-poll clients ask for presence themselves

    def cancel(self) -> None:
        """The client closed the connection: stop waiting now, answer nothing."""
        if not self._future.done():
            self._future.set_result(None)

    def session_ended(self) -> None:
        self.cancel()

    def shutdown(self) -> None:
        self.wake([])  # answer "nothing new" now; the client polls again, elsewhere

    async def wait(self, timeout: float) -> list[Entry] | None:
        # One timer that answers "nothing new": cheaper than wait_for + shield, which wrap
        # every parked poll in two more futures and a task.
        timer = asyncio.get_running_loop().call_later(timeout, self.wake, [])
        try:
            return await self._future
        finally:
            timer.cancel()


def _too_fast() -> ChatError:
    return ChatError("rate_limited", "You are sending messages too fast; wait a moment.", 429)


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
    ) -> None:
        self.store = store
        self.history_size = history_size
        self.rate_limit = rate_limit
        self.grace_period = grace_period
        self.store_timeout = store_timeout
        self.sessions = Sessions(store, unused_session_ttl, new_sessions_per_ip)
        self.presence = CappedPresence(grace_period)
        self.limits = ConnectionLimits(max_connections_per_session, max_connections_per_ip)
        # Cluster mode: several processes on one replica set are one chat. Events reach the
        # buffers through the change feed (also this process's own), and presence is decided
        # across processes (roster.SharedRoster).
        self.cluster = cluster
        self.roster: LocalRoster | SharedRoster = (
            SharedRoster(store, grace_period) if cluster
            else LocalRoster(self.presence, store, grace_period)
        )
        self.feed = ChangeFeed(store, self) if cluster else None
        # Events the feed brought for rooms still loading: published once they are loaded.
        self._held: dict[str, list[dict[str, Any]]] = {}
        self._presence_refresh: set[str] = set()
        self._rooms: dict[str, MessageBuffer] = {}
        self._loading: dict[str, asyncio.Future] = {}
        self._writers: dict[str, RoomWriter] = {}
        self._buckets: dict[str, TokenBucket] = {}
        self._send_turns = Turns()
        self._sweeper: asyncio.Task | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Restore presence from before a restart, then start the periodic sweep (leaves,
        session expiry: the cleanup that older chat designs ran as a cron job) and, in a
        cluster, the change feed. Call before serving."""
        try:
            for room in await self.roster.restore():
                await self.room(room)  # its members' leaves will be announced there
        except (StoreError, ChatError) as exc:
            log.warning("presence from before the restart is lost: %s", exc)
        if self._sweeper is None:
            self._sweeper = asyncio.ensure_future(self._sweep_forever())
        if self.feed is not None:
            self.feed.start()

    async def flush(self, timeout: float) -> None:
        """Wait (up to ``timeout`` s) until what every room has queued is stored or failed.

        Shutdown calls it again once the connections are closed, before closing the store:
        a send that came in meanwhile was otherwise cut off in flight."""
        pending = [w.idle() for w in self._writers.values()]
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    async def stop(self, timeout: float = 5.0) -> None:
        """Shut down: let queued sends be stored (up to ``timeout`` s), then tell every
        connection the server is going away, so clients reconnect and resume elsewhere."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        pending = [w.idle() for w in self._writers.values()]
        if self.feed is not None:
            await self.feed.stop()
        if pending:
            await asyncio.wait(pending, timeout=timeout)
        answering = []
        for buffer in self._rooms.values():
            for waiter in list(buffer.waiters):
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
        buffer.publish(held)  # anything already in the tail is dropped by id
        self._presence_changed(name)
        return buffer

    def _writer(self, room: str) -> RoomWriter:
        writer = self._writers.get(room)
        if writer is None:
            buffer = self._rooms[room]
            # In a cluster the feed publishes every stored event, ours included, in the order
            # of the change stream; publishing here too could put ours ahead of an earlier one.
            publish = _published_by_the_feed if self.cluster else buffer.publish
            writer = self._writers[room] = RoomWriter(
                room, self.store, publish, self.store_timeout,
                last_published=None if self.cluster else (lambda: buffer.last_id),
            )
        return writer

    # -- sending ------------------------------------------------------------------------------

    async def send(
        self, session: Session, room: str, text: Any, client_id: Any
    ) -> dict[str, Any]:
        """Store a message and deliver it to the room; the stored event.

        A repeat of ``client_id`` by the same session in the same room stores and delivers
        nothing and returns the first event again.
        """
        rules.check_room(room)
        text = rules.check_text(text)
        client_id = rules.check_client_id(client_id)
        if not self._take_token(session.sid):
            raise _too_fast()
        doc = {"type": "message", "nick": session.nick, "text": text, "ts": time.time(),
               "sid": session.sid, "cid": client_id}
        if self.cluster and self.rate_limit > 0:
            # This process's bucket above stops a flood here; the session's bucket in MongoDB
            # holds the rate across every process its sends reach (round robin, two tabs).
            async with self._send_turns.turn(session.sid):
                if not await self._take_shared_token(session.sid):
                    raise _too_fast()
                await self.room(room)
                stored = self._writer(room).write(doc)  # in line now, in arrival order
        else:
            await self.room(room)
            stored = self._writer(room).write(doc)
        return (await stored).event

    async def _take_shared_token(self, sid: str) -> bool:
        try:
            return await self.store.take_send_token(
                sid, self.rate_limit, self.rate_limit * BURST_FACTOR
            )
        except StoreError:
            raise store_unavailable() from None

    def _take_token(self, sid: str) -> bool:
        if self.rate_limit <= 0:
            return True
        bucket = self._buckets.get(sid)
        if bucket is None:
            bucket = self._buckets[sid] = TokenBucket(self.rate_limit)
        return bucket.take()

    def _announce(self, room: str, kind: str, member: Member | Session) -> asyncio.Future:
        """Queue a join or leave event now, behind whatever was sent before it and ahead of
        whatever is sent after; it is stored and delivered in the background (the returned
        task), logged, never raised, if the store fails. The room is loaded: a member is
        present only in rooms ``connect`` loaded."""
        doc = {"type": kind, "nick": member.nick, "ts": time.time(),
               "sid": member.sid, "cid": f"{kind}-{secrets.token_hex(8)}"}
        return asyncio.ensure_future(self._record(room, doc, self._writer(room).write(doc)))

    async def _record(self, room: str, doc: dict[str, Any], stored: Awaitable[Any]) -> None:
        try:
            await stored
        except ChatError as exc:
            log.warning("could not record %s of %s in %s: %s", doc["type"], doc["nick"], room, exc)

    # -- reading ------------------------------------------------------------------------------

    async def open_room(self, room: str, cursor: str | None = None) -> MessageBuffer:
        """The room's buffer, once ``cursor`` (if any) is known to be an id this server
        issued in it; ``bad_cursor`` otherwise, before anything else happens."""
        buffer = await self.room(room)
        if cursor is not None:
            rules.check_cursor(cursor)
            if cursor > buffer.last_id:
                # Newer than anything published here: valid only if the store handed it out.
                await self._check_issued(room, cursor)
        return buffer

    async def updates(self, room: str, cursor: str | None, limit: int = MAX_UPDATES) -> list[Entry]:
        """Events after ``cursor`` (at most ``limit``), oldest first; [] when none are newer.

        ``cursor=None`` means "what a newcomer sees": the latest ``history_size`` events.
        Answered from memory when the buffer reaches back to the cursor, else from the store:
        either way, never a gap and never a repeat.
        """
        buffer = await self.open_room(room, cursor)
        if cursor is None:
            return buffer.latest(self.history_size)
        if cursor > buffer.last_id:
            return []  # issued (open_room checked) but not yet published here
        entries = buffer.since(cursor)
        if entries is not None:
            return entries[:limit]
        try:
            events = await self.store.after(room, rules.parse_id(cursor), limit)
        except StoreError:
            raise store_unavailable() from None
        return [Entry(e) for e in events]

    async def poll(
        self,
        session: Session,
        room: str,
        cursor: str | None,
        timeout: float,
        address: str,
        on_park: Callable[[PollWaiter], None] | None = None,
        present: bool = True,
    ) -> list[Entry] | None:
        """The long-poll: events after ``cursor`` at once if there are any, else wait up to
        ``timeout`` seconds for the next ones ([] if none came). Counts as a connection for
        presence while it waits (unless not ``present``: caps only, see ``connect``). None if the client went away (``PollWaiter.cancel``, which
        ``on_park`` receives the waiter for) or the session ended meanwhile."""
        waiter = PollWaiter(cursor)
        if on_park is not None:
            on_park(waiter)
        buffer = await self.connect(session, room, waiter, address, present)
        try:
            # Parked before reading, so an event published between the read and the wait
            # still wakes us.
            buffer.waiters.add(waiter)
            entries = await self.updates(room, cursor)
            if entries or cursor is None:
                return entries
            return await waiter.wait(timeout)
        finally:
            buffer.waiters.discard(waiter)
            self.disconnect(session, room, waiter, address)
            if not waiter.answered.done():
                waiter.answered.set_result(None)

    async def _check_issued(self, room: str, cursor: str) -> None:
        try:
            last = await self.store.last_seq(room)
        except StoreError:
            raise store_unavailable() from None
        if rules.parse_id(cursor) > last:
            raise ChatError("bad_cursor", "That cursor is not one this server issued.", 400)

    async def history(
        self, room: str, before: str | None, limit: int
    ) -> tuple[list[dict[str, Any]], bool]:
        """Up to ``limit`` events just before ``before`` (or the latest), oldest first, and
        whether older ones exist."""
        rules.check_room(room)
        if before is not None:
            rules.check_cursor(before)
        seq = rules.parse_id(before) if before else None
        try:
            # One extra tells whether there is more without a second query.
            events = await self.store.before(room, seq, limit + 1)
        except StoreError:
            raise store_unavailable() from None
        has_more = len(events) > limit
        return (events[1:] if has_more else events), has_more

    async def present(self, room: str) -> list[str]:
        """The nicknames present in ``room``, sorted."""
        try:
            return await self.roster.nicks(room)
        except StoreError:
            raise store_unavailable() from None

    # -- connections and presence --------------------------------------------------------------

    async def connect(
        self, session: Session, room: str, conn: Any, address: str, present: bool = True
    ) -> MessageBuffer:
        """Count a connection (a WebSocket, or a pending long-poll) from ``address`` as open in
        ``room``. Refuses it (``too_many_connections``) past the per-session or per-address
        cap. Every successful ``connect`` must be paired with one ``disconnect``. Not
        ``present``: counted against the caps, but no presence and no join."""
        self.limits.acquire(session.sid, address)
        try:
            if present:  # before loading: a refused room costs no query and no buffer
                self.presence.admit(room, session.sid)  # too_many_rooms, joins too fast
            buffer = await self.room(room)
        except BaseException:
            self.limits.release(session.sid, address)
            raise
        if present and self.presence.connect(room, session.sid, session.nick, conn):
            self._presence_changed(room)
            # A LocalRoster answers without suspending, so the join is queued before anything
            # this connection can send.
            if await self._roster_says(self.roster.join(room, session.sid, session.nick)):
                self._announce(room, "join", session)
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
        self.presence.disconnect(room, session.sid, conn)

    async def end_session(self, session: Session) -> None:
        """Log out: the nickname is free at once, and the session leaves every room now."""
        await self._forget_session(session.sid)
        try:
            await self.sessions.end(session.sid)
        except StoreError:
            raise store_unavailable() from None

    async def _forget_session(self, sid: str) -> None:
        for room, member in self.presence.remove_session(sid):
            self._presence_changed(room)
            for conn in list(member.connections):
                conn.session_ended()
            if await self._roster_says(self.roster.leave(room, sid)):
                self._announce(room, "leave", member)
        self._buckets.pop(sid, None)

    def session_gone(self, sid: str) -> None:
        """The feed saw a session end (logged out or expired, in any process of the cluster)."""
        self.sessions.forget(sid)
        asyncio.ensure_future(self._forget_session(sid))

    def _presence_changed(self, room: str) -> None:
        """Tell the room's WebSockets the new list of nicknames."""
        buffer = self._rooms.get(room)
        if buffer is None:
            return
        if not self.cluster:
            buffer.set_presence(self.presence.nicks(room))
        elif room not in self._presence_refresh:
            # Asked of MongoDB; several changes in a burst share one query.
            self._presence_refresh.add(room)
            asyncio.ensure_future(self._refresh_presence(room, buffer))

    async def _refresh_presence(self, room: str, buffer: MessageBuffer) -> None:
        await asyncio.sleep(0)  # let the rest of this burst of changes arrive first
        # From here on, a new change schedules a new refresh: none is missed.
        self._presence_refresh.discard(room)
        try:
            buffer.set_presence(await self.roster.nicks(room))
        except StoreError as exc:
            log.warning("presence of %s unavailable: %s", room, exc)

    # -- cluster mode: what the change feed brings -----------------------------------------------

    def deliver(self, events: list[dict[str, Any]]) -> None:
        """Events stored by any process of the cluster, in the change stream's order: publish
        them here, all of a room's in one batch (one write per socket), in that order."""
        by_room: dict[str, list[dict[str, Any]]] = {}
        for event in events:
            by_room.setdefault(event["room"], []).append(event)
        for room, batch in by_room.items():
            buffer = self._rooms.get(room)
            if buffer is not None:
                buffer.publish(batch)
                if any(event["type"] != "message" for event in batch):
                    self._presence_changed(room)  # a join or leave: once for the batch
            elif room in self._held:
                self._held[room].extend(batch)

    async def catch_up_rooms(self) -> None:
        """What the feed missed while it was not following (it is (re)opening): each loaded
        room's events after its buffer's last id, and sessions that ended meanwhile."""
        for sid in await self.sessions.ended_meanwhile():
            await self._forget_session(sid)
        for room, buffer in list(self._rooms.items()):
            while True:
                events = await self.store.after(room, rules.parse_id(buffer.last_id),
                                                MAX_UPDATES)
                buffer.publish(events)
                if len(events) < MAX_UPDATES:
                    break
            self._presence_changed(room)

    async def sweep(self) -> None:
        """Announce leaves past the grace period; keep live sessions alive; expire the rest."""
        for room, member in self.presence.expired():
            self._presence_changed(room)
            if await self._roster_says(self.roster.leave(room, member.sid)):
                await self.room(room)  # loaded already, unless its loading failed at start
                self._announce(room, "leave", member)
        for room, sid, nick in await self.roster.orphans():
            # Left in a process that died: announced by whichever process noticed first.
            await self.room(room)
            self._announce(room, "leave", Member(sid, nick))
        now_wall, now_mono = time.time(), time.monotonic()
        await self.roster.renew({
            key: now_wall - (now_mono - seen)
            for key, seen in self.presence.last_seen_in_rooms().items()
        })
        last_seen = {
            sid: now_wall - (now_mono - seen) + self.grace_period
            for sid, seen in self.presence.last_seen().items()
        }
        await self.sessions.keep_alive(last_seen)
        await self.sessions.sweep()
        for sid, bucket in list(self._buckets.items()):
            if bucket.is_full():
                del self._buckets[sid]
        self.evict_idle_rooms()

    def evict_idle_rooms(self, idle_for: float = ROOM_IDLE_SECONDS) -> list[str]:
        """Drop rooms nobody uses from memory; their names."""
        cutoff = time.monotonic() - idle_for
        evicted = []
        for name, buffer in list(self._rooms.items()):
            writer = self._writers.get(name)
            if (buffer.waiters or buffer.touched > cutoff or self.presence.has_members(name)
                    or (writer is not None and writer.busy)):
                continue
            del self._rooms[name]
            self._writers.pop(name, None)
            evicted.append(name)
        return evicted

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
