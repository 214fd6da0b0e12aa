"""Signals: who is present and who is typing in a room. Not stored, no ids, one path for both
transports.

A room's ``RoomSignals`` (one per ``MessageBuffer``) holds the two lists and tells the room's
waiters when either changed, through the same waiter list as events:
``Waiter.signals_changed(wire)`` with the changed lists' frames, encoded once for every socket.
A WebSocket writes those bytes; a parked long-poll that asked for signals (``signals=``)
answers with the lists (``state()``), and one that did not ignores them.

Coalescing: changes within a short window share one emission (``PRESENCE_COALESCE_SECONDS``
for presence, ``TYPING_COALESCE_SECONDS`` for typing; the earlier pending deadline wins), so
a burst costs each socket one frame per window, not one per change. A re-signal from someone
already typing changes nothing and costs nothing but moving their expiry.

Ordering, the trap: a message from someone typing must never arrive *before* a typing frame
that still lists them. So ``before_events`` runs inside ``MessageBuffer.publish`` before any
waiter is woken: the senders of the published messages leave the typing set, and a pending
change (this one, or an older one) is emitted at once, ahead of the events. A typing signal
made before the sender's last message (a slow signal overtaken by the message, in a cluster)
is stale and ignored (``typing``).

The version (``version()``) is a digest of the lists as last emitted, not a counter: every
process of a cluster that holds the same lists gives the same version, so a long-poll client
sent to another process does not get an immediate answer for nothing new (and a restart does
not invalidate it).

``Signals`` is the process-wide entry: the per-session throttle and the sender's rate limit,
then the mode (``LocalMode.typing``: this room now; ``ClusterMode.typing``: through MongoDB,
so every process hears it).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from chatapp import rules
from chatapp.errors import ChatError

if TYPE_CHECKING:
    from chatapp.buffer import Waiter

# The contract: a nick leaves the typing set this long after its last signal.
TYPING_SECONDS = 6.0
# The page sends a typing signal at most every 3 s; a session's signals in one room are
# accepted at most once per this many seconds, a little under 3 so a conforming page's every
# signal counts despite timer jitter, while a client signalling per keystroke costs one
# signal per 2.5 s (one rate-limit token, in a cluster one MongoDB insert) instead of ten a
# second. With the 6 s expiry, two accepted signals are never far enough apart for a steady
# typer to flicker out of the set.
TYPING_THROTTLE_SECONDS = 2.5
# A burst of joins (a room filling again after a restart) would otherwise send every socket one
# ever longer list per join: O(N^2) bytes for N people. Changes within this window share one
# frame; 50 ms is well below what a person notices in a list of names.
PRESENCE_COALESCE_SECONDS = 0.05
# Each presence frame is the whole list, to every socket: in a big room filling up that is still
# O(N^2) bytes at one frame per window (10,000 sockets told of 2,000 names, 24 KB, is 240 MB a
# frame; at 3,000 sockets the frames took a quarter of the server's CPU in a connect storm). So
# after a frame, the next waits until the room's frames average at most this many bytes a
# second (writing 10 MB to sockets is ~10 % of a core here): a quiet room still hears of a
# join within PRESENCE_COALESCE_SECONDS, a room of thousands filling up once a second or so...
PRESENCE_BYTES_PER_SECOND = 10 * 1024 * 1024
# ...and never later than this, however big the room.
MAX_PRESENCE_COALESCE_SECONDS = 5.0
# Typing changes (people starting, and their 6 s running out) share a frame per this window:
# at most 4 typing frames per socket per second however many people type, and "an is typing"
# shows a quarter second late at worst, far inside the contract's 1 s for long-polls.
TYPING_COALESCE_SECONDS = 0.25
# A typing signal for an unknown nick can arrive from the feed; a room holds at most this many
# typists (beyond it, new ones are not listed): the list on the wire stays bounded.
MAX_TYPING = 100
# Who sent last when is kept per room to spot stale signals; past this many senders, those
# older than any signal that could still count are forgotten (memory stays bounded).
MAX_SENDERS_KEPT = 1000


def _frame(kind: str, nicks: list[str]) -> bytes:
    # Imported here: buffer.py holds a RoomSignals per room, so it imports this module.
    from chatapp.buffer import encode, websocket_text_frame

    return websocket_text_frame(encode({"type": kind, "nicks": nicks}).encode())


class RoomSignals:
    """One room's presence and typing lists, and their coalesced delivery to its waiters."""

    def __init__(self, waiting: Callable[[], list[Waiter]]) -> None:
        self._waiting = waiting
        self.presence: list[str] = []
        self._typing: dict[str, float] = {}  # nick -> wall time its typing ends
        self._last_sent: dict[str, float] = {}  # nick -> ts of its latest message
        self._emitted_typing: list[str] = []
        self._dirty_presence = False
        self._dirty_typing = False
        self._flush_call: asyncio.TimerHandle | None = None
        self._flush_at = 0.0
        self._expiry_call: asyncio.TimerHandle | None = None
        self._presence_wire: bytes | None = None
        self._typing_wire: bytes | None = None
        self._version: str | None = None
        self._state_fields: tuple[str, str] | None = None  # (version, encoded state)
        self._presence_cost = 0  # bytes the last presence frame took, all waiters together
        self._presence_sent_at = 0.0  # loop time of that frame

    # -- what changes the lists ---------------------------------------------------------------

    def set_presence(self, nicks: list[str]) -> None:
        """The room's new list of nicknames; the waiters hear of it within a moment."""
        if nicks == self.presence:
            return
        self.presence = nicks  # a socket opening now is sent this list at once
        self._presence_wire = None
        self._version = None
        self._dirty_presence = True
        self._schedule(self._presence_delay())

    def typing(self, nick: str, ts: float, until: float) -> None:
        """``nick`` typed at wall time ``ts``; listed until ``until`` unless they send first.
        Stale (before their last message, or already over): ignored."""
        now = time.time()
        if until <= now or ts < self._last_sent.get(nick, 0.0):
            return
        if nick not in self._typing:
            if len(self._typing) >= MAX_TYPING:
                return
            self._dirty_typing = True
            self._schedule(TYPING_COALESCE_SECONDS)
        self._typing[nick] = max(until, self._typing.get(nick, 0.0))
        self._schedule_expiry()

    def before_events(self, events: Iterable[dict[str, Any]]) -> None:
        """Called by ``MessageBuffer.publish`` before it wakes anyone with ``events``: their
        senders stop typing, and whatever change is pending goes out first."""
        for event in events:
            if event.get("type") == "message":
                nick = event.get("nick", "")
                self._last_sent[nick] = max(self._last_sent.get(nick, 0.0), event.get("ts", 0.0))
                if self._typing.pop(nick, None) is not None:
                    self._dirty_typing = True
        if len(self._last_sent) > MAX_SENDERS_KEPT:
            self._forget_old_senders(time.time())
        # A pending presence change of a big room keeps its spacing (it has no order to keep
        # with messages); typing, and presence when it is due anyway, go first.
        if self._dirty_typing or (self._dirty_presence
                                  and self._presence_delay() <= PRESENCE_COALESCE_SECONDS):
            self._flush()

    def _forget_old_senders(self, now: float) -> None:
        cutoff = now - TYPING_SECONDS * 2
        for nick, ts in list(self._last_sent.items()):
            if ts < cutoff:  # older than any signal that could still count
                del self._last_sent[nick]

    # -- what waiters read ----------------------------------------------------------------------

    def typing_nicks(self) -> list[str]:
        """Who is typing, as last emitted (sorted as people read a list)."""
        return list(self._emitted_typing)

    def version(self) -> str:
        """A digest of the lists (typing as last emitted): equal lists, equal version, in any
        process."""
        if self._version is None:
            text = "\x00".join(self.presence) + "\x01" + "\x00".join(self._emitted_typing)
            self._version = hashlib.blake2b(text.encode(), digest_size=8).hexdigest()
        return self._version

    def state(self) -> dict[str, Any]:
        """What a long-poll that asked for signals answers with."""
        return {"signals": self.version(), "presence": list(self.presence),
                "typing": self.typing_nicks()}

    def state_fields(self) -> str:
        """``state()`` encoded as the members of a JSON object (no braces), once per version:
        every answer of a long-poll that asked for signals carries it, and with a thousand
        people present encoding the list for each answer was most of the answer's cost."""
        version = self.version()
        if self._state_fields is None or self._state_fields[0] != version:
            from chatapp.buffer import encode  # see _frame

            self._state_fields = (version, encode(self.state())[1:-1])
        return self._state_fields[1]

    def presence_wire(self) -> bytes:
        """The ``presence`` frame for the current list, encoded once for every socket."""
        if self._presence_wire is None:
            self._presence_wire = _frame("presence", self.presence)
        return self._presence_wire

    def typing_wire(self) -> bytes:
        if self._typing_wire is None:
            self._typing_wire = _frame("typing", self._emitted_typing)
        return self._typing_wire

    def opening_wire(self) -> bytes:
        """What a new socket is sent after its backlog: the presence frame, and the typing
        frame when someone is typing."""
        if self._emitted_typing:
            return self.presence_wire() + self.typing_wire()
        return self.presence_wire()

    # -- timers -------------------------------------------------------------------------------

    def _schedule(self, delay: float) -> None:
        loop = asyncio.get_running_loop()
        at = loop.time() + delay
        if self._flush_call is not None:
            if self._flush_at <= at:
                return
            self._flush_call.cancel()
        self._flush_at = at
        self._flush_call = loop.call_at(at, self._flush)

    def _presence_delay(self) -> float:
        """How long the next presence frame waits (PRESENCE_BYTES_PER_SECOND)."""
        spacing = min(MAX_PRESENCE_COALESCE_SECONDS,
                      self._presence_cost / PRESENCE_BYTES_PER_SECOND)
        since = asyncio.get_running_loop().time() - self._presence_sent_at
        return max(PRESENCE_COALESCE_SECONDS, spacing - since)

    def _schedule_expiry(self) -> None:
        if self._expiry_call is not None or not self._typing:
            return
        delay = max(0.0, min(self._typing.values()) - time.time())
        self._expiry_call = asyncio.get_running_loop().call_later(delay, self._expire)

    def _expire(self) -> None:
        self._expiry_call = None
        now = time.time()
        for nick, until in list(self._typing.items()):
            if until <= now:
                del self._typing[nick]
                self._dirty_typing = True
        self._forget_old_senders(now)
        if self._dirty_typing:
            self._schedule(TYPING_COALESCE_SECONDS)
        self._schedule_expiry()

    def _flush(self) -> None:
        if self._flush_call is not None:
            self._flush_call.cancel()
            self._flush_call = None
        wire = b""
        presence = self._dirty_presence
        if presence:
            self._dirty_presence = False
            wire += self.presence_wire()
        if self._dirty_typing:
            self._dirty_typing = False
            typing = sorted(self._typing, key=rules.nick_key)
            if typing != self._emitted_typing:
                self._emitted_typing = typing
                self._typing_wire = None
                wire += self.typing_wire()
        if not wire:
            return
        self._version = None
        # Copy: a long-poll waiter removes itself from the set while being woken.
        waiters = self._waiting()
        if presence:
            self._presence_cost = len(wire) * len(waiters)
            self._presence_sent_at = asyncio.get_running_loop().time()
        for waiter in waiters:
            waiter.signals_changed(wire)


def typing_too_fast() -> ChatError:
    return ChatError("rate_limited", "You are sending too fast; wait a moment.", 429)


class Signals:
    """Where a typing signal enters (both transports): throttled per session and room, then
    charged to the sender's rate limit, then handed to the mode, which delivers it."""

    def __init__(
        self,
        deliver: Callable[[str, str, float, float], Any],
        take_token: Callable[[str], bool],
        typing_seconds: float = TYPING_SECONDS,
        throttle_seconds: float = TYPING_THROTTLE_SECONDS,
    ) -> None:
        self._deliver = deliver
        self._take_token = take_token
        self.typing_seconds = typing_seconds
        self.throttle_seconds = throttle_seconds
        self._last: dict[tuple[str, str], float] = {}  # (sid, room) -> monotonic accepted

    async def typing(self, sid: str, nick: str, room: str) -> bool:
        """``nick`` (session ``sid``) is typing in ``room``; False if throttled (a signal
        within ``throttle_seconds`` of the last accepted one says nothing new). Raises
        ``rate_limited`` when the session has no token left."""
        rules.check_room(room)
        now = time.monotonic()
        key = (sid, room)
        if now - self._last.get(key, -self.throttle_seconds) < self.throttle_seconds:
            return False
        if not self._take_token(sid):
            raise typing_too_fast()
        self._last[key] = now
        ts = time.time()
        await self._deliver(room, nick, ts, ts + self.typing_seconds)
        return True

    def sent(self, sid: str, room: str) -> None:
        """The session sent a message in ``room``: its next typing signal counts at once."""
        self._last.pop((sid, room), None)

    def prune(self) -> None:
        """Forget throttles that have run out (the sweep calls this)."""
        cutoff = time.monotonic() - self.throttle_seconds
        for key, at in list(self._last.items()):
            if at < cutoff:
                del self._last[key]
