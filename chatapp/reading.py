"""Where events are read: cursors, the long-poll, history pages.

``Reader.updates`` is the one answer to "what happened after this cursor": from the room's
buffer when it reaches back that far, else from the store; never a gap, never a repeat. The
long-poll (``Reader.poll``) parks a ``PollWaiter`` on the buffer *before* reading, so an event
published between the read and the wait still wakes it.
"""

from __future__ import annotations

import asyncio
import math
import weakref
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from chatapp import metrics, rules
from chatapp.buffer import Entry, MessageBuffer
from chatapp.errors import ChatError, store_unavailable
from chatapp.rooms import MAX_UPDATES, Rooms
from chatapp.sessions import Session
from chatapp.store import EventStore, StoreError

if TYPE_CHECKING:
    from chatapp.membership import Membership

# The contract: history pages default to 50 events and hold at most 200.
HISTORY_DEFAULT, HISTORY_MAX = 50, 200


class PollWaiter:
    """A parked long-poll: finishes with the first batch of events published after it."""

    def __init__(self, cursor: str | None = None, signals: str | None = None) -> None:
        loop = asyncio.get_running_loop()
        self._future: asyncio.Future = loop.create_future()
        # Resolved once ``Chat.poll`` has returned: the handler has written its answer then.
        self.answered: asyncio.Future = loop.create_future()
        self.cursor = cursor or ""
        # The client's signals version (``signals=``), or None: it did not ask for them.
        self.signals = signals
        # The room's version now (``RoomSignals.version``), set once parked.
        self.version: Callable[[], str] = lambda: ""
        self.address = ""  # the client's, for a guest's ban by address (set by poll)
        self._woken: list[Entry] | None = None  # what woke it, to be answered (``Wakeups``)

    def wake(self, entries: list[Entry]) -> None:
        if entries and entries[0].id <= self.cursor:
            # Cluster: a cursor from another process can be ahead of this one's buffer (its
            # feed lags); what the feed brings up to the cursor, the client already has.
            entries = [e for e in entries if e.id > self.cursor]
            if not entries:
                return
        if self._future.done():
            return  # answered: the client's next poll reads these from its cursor
        if self._woken is None:
            # Answered from the loop's next turn on (``Wakeups``), not now.
            self._woken = entries
            wakeups().add(self)
        else:
            # Published while this poll waited for its turn: the one answer carries both (a
            # room of a thousand polls answers a busy sender in a few cycles, not one each).
            # A new list: the first batch is shared by every waiter it woke.
            last = self._woken[-1].id if self._woken else self.cursor
            more = [e for e in entries if e.id > last]
            if more:
                self._woken = [*self._woken, *more]

    def answer(self) -> None:
        """Answer what woke it (``Wakeups`` calls this)."""
        if not self._future.done():
            self._future.set_result(self._woken)

    def signals_changed(self, wire: bytes) -> None:
        if self.signals is not None and self.signals != self.version():
            self.wake([])  # answer now: the handler adds the lists (``RoomSignals.state``)

    def cancel(self) -> None:
        """The client closed the connection: stop waiting now, answer nothing."""
        if not self._future.done():
            self._future.set_result(None)

    def session_ended(self) -> None:
        self.cancel()

    def moderated(self, error: ChatError, code: int) -> None:
        """Kicked or banned (``chatapp.moderation``): the poll answers ``error``."""
        if not self._future.done():
            self._future.set_exception(error)

    def shutdown(self) -> None:
        self.wake([])  # answer "nothing new" now; the client polls again, elsewhere

    async def wait(self, timeout: float, timeouts: PollTimeouts | None = None) -> list[Entry] | None:
        """Wait for the answer; "nothing new" ([]) after ``timeout`` s (with ``timeouts``: up
        to ``TIMEOUT_TICK`` s sooner, on a timer shared with the polls due then)."""
        # Not wait_for + shield, which wrap every parked poll in two more futures and a task.
        metrics.PARKED_POLLS.inc()
        if timeouts is None:
            timer = asyncio.get_running_loop().call_later(timeout, self.wake, [])
            try:
                return await self._future
            finally:
                metrics.PARKED_POLLS.dec()
                timer.cancel()
        tick = timeouts.add(self, timeout)
        try:
            return await self._future
        finally:
            metrics.PARKED_POLLS.dec()
            timeouts.discard(self, tick)


# Parked polls time out on shared timers, one per tick of this many seconds, instead of one
# timer each (a timer set and cancelled per poll cycle, and a heap of thousands of them). A
# poll then answers up to this much sooner than its timeout: within the 2.5 s of jitter polls
# have anyway (``web.api.POLL_JITTER``), and never later than ``poll_timeout``.
TIMEOUT_TICK = 1.0
# ... but never sooner than this share of its time-out: a short poll_timeout (a test's, a
# proxy's) keeps a timer of its own rather than answer at half its time.
TICK_EARLY_MAX = 0.1


class PollTimeouts:
    """The time-outs of the parked polls of one ``Reader``: the waiters due in each tick, and
    one timer per tick that has any, which answers them all "nothing new"."""

    def __init__(self) -> None:
        self._due: dict[float, set[PollWaiter]] = {}

    def add(self, waiter: PollWaiter, timeout: float) -> float:
        """Due at the tick just before ``timeout`` s from now (never later: the contract says
        "waits up to poll_timeout"); a time-out too short for that keeps its own timer."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        tick = math.floor((now + timeout) / TIMEOUT_TICK) * TIMEOUT_TICK
        if now + timeout - tick > timeout * TICK_EARLY_MAX:
            tick = now + timeout
        due = self._due.get(tick)
        if due is None:
            due = self._due[tick] = set()
            loop.call_at(tick, self._expire, tick)
        due.add(waiter)
        return tick

    def discard(self, waiter: PollWaiter, tick: float) -> None:
        due = self._due.get(tick)
        if due is not None:
            due.discard(waiter)

    def _expire(self, tick: float) -> None:
        for waiter in self._due.pop(tick, ()):
            waiter.wake([])

    def waiting(self) -> int:
        """Polls with a time-out still to come."""
        return sum(len(due) for due in self._due.values())


# Woken long-polls are answered this many per turn of the event loop. A message to a room of
# a thousand polls wakes them all at once, and answering them all in one turn would hold up
# everything else that long (~0.3 ms each, with the client's next poll): the sender's answer,
# and each of the storage round trips of the next message, which each wait for a turn. With
# a few per turn, the next messages are stored while the room is still being answered, and
# the polls answered later carry them too (``PollWaiter.wake``): one poll cycle delivers many
# messages. Measured (bench/pollrace.py, 1,000 pollers, a sender waiting for each answer):
# 50 per turn gave 1,700 deliveries/s (the sender's append took 250-450 ms, queued behind the
# room), 10 gave 7,800/s, 5 gave 13,000/s, 3 gave 17,500/s, 1 gave 36,000/s; the p99 of a
# delivery rose from 670 to 950 ms between 10 and 1 (the last poll of a room waits longer).
WAKE_CHUNK = 4
# ... but a queue is answered within this many turns at most: each turn costs the loop a pass
# of its own (a poll of every socket), and 10,000 polls woken at once, 4 a turn, took 1.3 s
# to answer against 0.6 s at 50 a turn. A room of 1,000 keeps 4 a turn; 10,000, 40.
WAKE_TURNS = 250


class Wakeups:
    """Woken long-polls waiting to be answered, in the order woken, ``WAKE_CHUNK`` per turn
    of one event loop (more for a long queue: ``WAKE_TURNS``). Whoever woke them (a publish,
    whose sender is answered after it) runs to its end first."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: deque[PollWaiter] = deque()
        self.scheduled = False

    def add(self, waiter: PollWaiter) -> None:
        self.queue.append(waiter)
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self._run)

    def _run(self) -> None:
        queue = self.queue
        for _ in range(min(max(WAKE_CHUNK, len(queue) // WAKE_TURNS), len(queue))):
            queue.popleft().answer()
        if queue:
            self.loop.call_soon(self._run)  # the next turn: I/O and timers run in between
        else:
            self.scheduled = False


_wakeups: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Wakeups] = (
    weakref.WeakKeyDictionary())


def wakeups() -> Wakeups:
    """The running loop's ``Wakeups``."""
    loop = asyncio.get_running_loop()
    found = _wakeups.get(loop)
    if found is None:
        found = _wakeups[loop] = Wakeups(loop)
    return found


class View(list[Entry]):
    """A newcomer's first answer (no cursor): the current state of the room's latest events.
    ``cursor`` is where the log stood when it was read: the client resumes from there, not
    from its last listed event, so the actions after that one are not sent again (they are
    already in the state shown). ``has_more``: older listed events exist."""

    cursor: str = ""
    has_more: bool = False


class Reader:
    def __init__(
        self, store: EventStore, rooms: Rooms, membership: Membership, history_size: int
    ) -> None:
        self.store = store
        self.rooms = rooms
        self.membership = membership
        self.history_size = history_size
        self.timeouts = PollTimeouts()

    async def open_room(self, room: str, cursor: str | None = None) -> MessageBuffer:
        """The room's buffer, once ``cursor`` (if any) is known to be an id this server
        issued in it; ``bad_cursor`` otherwise, before anything else happens."""
        buffer = await self.rooms.get(room)
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
            return await self._current(room, buffer)
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

    async def newcomer(self, room: str) -> View:
        """The room's latest ``history_size`` listed events in their current state: what
        the page and a first answer without a cursor show."""
        return await self._current(room, await self.rooms.get(room))

    async def _current(self, room: str, buffer: MessageBuffer) -> View:
        view = View()
        view.cursor = buffer.last_id  # read before anything else can be published
        held = buffer.current(self.history_size)
        if held is not None:
            entries, view.has_more = held
        else:
            # Memory holds fewer listed events than a newcomer is shown (the tail is mostly
            # reactions and edits): one query, bounded by the cursor so nothing newer than
            # it is in the view and then sent again.
            try:
                events = await self.store.listed_before(
                    room, rules.parse_id(view.cursor) + 1, self.history_size + 1)
            except StoreError:
                raise store_unavailable() from None
            view.has_more = len(events) > self.history_size
            entries = [Entry(e) for e in events[-self.history_size:]]
        view.extend(entries)
        return view

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
        """The long-poll: events after ``cursor`` at once if there are any, else wait up to
        ``timeout`` seconds for the next ones ([] if none came). Counts as a connection for
        presence while it waits (unless not ``present``: caps only, see ``connect``). None
        if the client went away (``PollWaiter.cancel``, which ``on_park`` receives the waiter
        for) or the session ended meanwhile.

        With ``signals`` (the client's signals version, "" to start) it also answers ([]) as
        soon as the room's presence or typing lists differ from that version."""
        waiter = PollWaiter(cursor, signals)
        waiter.address = address
        if on_park is not None:
            on_park(waiter)
        buffer = await self.membership.connect(session, room, waiter, address, present)
        try:
            # Parked before reading, so an event published between the read and the wait
            # still wakes us.
            waiter.version = buffer.signals.version
            buffer.add_waiter(waiter)
            entries = await self.updates(room, cursor)
            if entries or cursor is None:
                return entries
            if signals is not None and signals != buffer.signals.version():
                return entries  # the lists changed since the client's version: tell it now
            return await waiter.wait(timeout, self.timeouts)
        finally:
            buffer.remove_waiter(waiter)
            self.membership.disconnect(session, room, waiter, address)
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
            # One extra tells whether there is more without a second query. Messages come in
            # their current state; the actions on them are not listed (``kinds``).
            events = await self.store.listed_before(room, seq, limit + 1)
        except StoreError:
            raise store_unavailable() from None
        has_more = len(events) > limit
        return (events[1:] if has_more else events), has_more
