"""Moderation: mute, unmute, kick, ban, unban, slow mode and delete, and where they hold.

Rules:

- Who: the room's owner, a moderator or an admin (``roles.Roles.may_moderate``), else
  ``403 not_moderator``. Anyone can be the subject, a moderator included (an owner stops a
  moderator gone rogue by removing the role first, then unmuting or unbanning).
- Every action is a ``moderation`` event in the room's log (``kinds``): ``action``,
  ``subject``, ``until`` (absent: for good, or not timed), ``seconds``, ``reason``,
  ``target`` (delete). The state it changes (mutes, bans, slow mode) is written to MongoDB
  (``store.ModerationStore``) *before* the event is stored, so whoever sees the event finds
  the state behind it, after a restart too.
- Muted: no sending, editing or reacting in the room (``403 muted``, with the time left).
- Banned: no reading or writing the room (``403 banned``): connect (WebSocket, long-poll),
  the page, history, and every write. A person is matched by either of the two nickname
  skeletons (``rules.nick_keys``: "bo", "Bо" with a Cyrillic о and "ｂｏ" are one); a *guest*
  is matched by address too (the addresses its connections came from): a new nickname from
  the same address is still banned. A registered account is matched by its nickname only
  (it cannot take another without a password), so an address shared with a moderator (an
  office NAT) never locks the moderator out.
- Connections are put out through their ``moderated(error, close_code)`` (``ws.RoomSocket``,
  ``reading.PollWaiter``), found in this process's presence (``Presence.members``).
- Kick (and ban): the subject's connections to the room close at once on every process: a
  WebSocket gets an ``error`` frame (``kicked`` / ``banned``) and closes with
  ``CLOSE_KICKED`` / ``CLOSE_BANNED``; a parked long-poll answers ``403 kicked`` /
  ``banned``. A kicked person may come back at once.
- Slow mode: one message per ``seconds`` per person (``429 slow_mode`` with the time left);
  0 ends it. The clock is the mode's (``slow_turn``): this process's, or in a cluster one
  bucket per person in MongoDB, so sends that reach two processes still get one per interval.

Where it holds: every process keeps a small state per room (``RoomRules``), loaded from
MongoDB on first use and changed by ``published``, which the room's buffer calls with every
batch it publishes, whichever way the events came (this process's writer, or the cluster's
change feed): so a check is a dict lookup, never a query per message, and an action holds on
every process as soon as its event reaches it.

The trap: a state being loaded when an event arrives may predate the event. ``published``
counts the room's events; a load that saw one arrive meanwhile is done again.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from chatapp import rules
from chatapp.buffer import Entry
from chatapp.errors import ChatError, store_unavailable
from chatapp.nicknames import NickKeys
from chatapp.presence import Presence
from chatapp.sessions import Session
from chatapp.store import ModerationStore, StoreError

log = logging.getLogger(__name__)

# ``mode.LocalMode.slow_turn``: (room, nickname skeleton, seconds) -> None if the person may
# send now, else the seconds left.
SlowTurn = Callable[[str, str, float], Awaitable[float | None]]

ACTIONS = ("mute", "unmute", "kick", "ban", "unban", "slow_mode", "delete")
# Actions on a person (a ``subject``); slow_mode and delete act on the room and a message.
ON_PEOPLE = frozenset({"mute", "unmute", "kick", "ban", "unban"})
# A timed mute or ban lasts at most a year: longer is "for good" (no seconds).
MAX_SECONDS = 365 * 24 * 3600
# Slow mode of more than an hour per message is a closed room; say so with a ban instead.
MAX_SLOW_SECONDS = 3600
# A reason is a line in the room, not an essay; the contract's messages are longer.
MAX_REASON_CHARS = 200
# Application close codes (4000-4999 are the application's): the page tells them apart from
# a restart (1001) or a slow client (1013) and does not reconnect by itself after these.
CLOSE_KICKED, CLOSE_BANNED = 4001, 4003
# Addresses remembered per room per nickname skeleton, for a guest's ban by address: the
# latest few (a phone switching networks), never an unbounded list per person.
ADDRESSES_KEPT = 4
# Rooms' address books kept: the most recently used ones (a process serves many rooms).
ADDRESS_BOOK_PEOPLE = 10_000
# Rooms whose state is kept in memory: every room read is checked, so without a cap every
# room ever asked for would stay. One dropped is loaded again (one query) when next asked
# for.
CACHED_ROOMS = 10_000


@dataclass
class RoomRules:
    """One room's moderation state on this process."""

    mutes: list[dict[str, Any]] = field(default_factory=list)
    bans: list[dict[str, Any]] = field(default_factory=list)
    slow: float = 0.0

    @classmethod
    def of(cls, doc: dict[str, Any]) -> RoomRules:
        return cls(list(doc.get("mutes", [])), list(doc.get("bans", [])),
                   float(doc.get("slow", 0) or 0))

    def put(self, field_: str, skeleton: str, entry: dict[str, Any] | None) -> None:
        entries = [e for e in getattr(self, field_) if e["skeleton"] != skeleton]
        if entry is not None:
            entries.append(entry)
        setattr(self, field_, entries)


def _left(entry: dict[str, Any], now: float) -> float | None:
    """Seconds left of a mute or ban (math.inf: for good), None if it ran out."""
    until = entry.get("until")
    if until is None:
        return math.inf
    return until - now if until > now else None


def _match(entries: Iterable[dict[str, Any]], keys: NickKeys | None, address: str,
           guest: bool, now: float) -> float | None:
    for entry in entries:
        left = _left(entry, now)
        if left is None:
            continue
        if keys is not None and (entry["skeleton"] == keys.skeleton
                                 or entry.get("cased") == keys.cased):
            return left
        if guest and address and address in entry.get("addresses", ()):
            return left
    return None


def _for(left: float) -> str:
    return "for good" if left == math.inf else f"for {math.ceil(left)} more seconds"


def banned(left: float) -> ChatError:
    error = ChatError("banned", f"You are banned from this room {_for(left)}.", 403)
    error.fields["seconds_left"] = None if left == math.inf else math.ceil(left)
    return error


def muted(left: float) -> ChatError:
    error = ChatError("muted", f"You are muted in this room {_for(left)}.", 403)
    error.fields["seconds_left"] = None if left == math.inf else math.ceil(left)
    return error


def kicked() -> ChatError:
    return ChatError("kicked", "A moderator removed you from this room; you may come back.", 403)


def not_moderator() -> ChatError:
    return ChatError("not_moderator",
                     "Only the room's owner, a moderator or an admin can do that.", 403)


def _bad(message: str) -> ChatError:
    return ChatError("bad_moderation", message, 400)


class Moderation:
    """This process's moderation states, the checks every path makes, and the actions."""

    def __init__(self, store: ModerationStore, presence: Presence, slow_turn: SlowTurn) -> None:
        self.store = store
        self.presence = presence
        self.slow_turn = slow_turn
        self._rooms: dict[str, RoomRules] = {}
        self._events: dict[str, int] = {}  # moderation events seen per room (the trap)
        self._addresses: dict[tuple[str, str], list[str]] = {}  # (room, skeleton) -> latest

    async def rules_of(self, room: str) -> RoomRules:
        """The room's state, loaded from MongoDB on first use."""
        state = self._rooms.get(room)
        while state is None:
            seen = self._events.get(room, 0)
            try:
                doc = await self.store.state(room)
            except StoreError:
                raise store_unavailable() from None
            if self._events.get(room, 0) == seen:  # no event came meanwhile
                state = self._rooms.setdefault(room, RoomRules.of(doc))
        if len(self._rooms) > CACHED_ROOMS:
            oldest = next(iter(self._rooms))  # the first loaded (the cap is a bound, not LRU)
            if oldest != room:
                del self._rooms[oldest]
                self._events.pop(oldest, None)
        return state

    # -- the checks -------------------------------------------------------------------------

    async def check_read(self, room: str, session: Session | None, address: str) -> None:
        """``403 banned`` if the session (or, for a guest or nobody, the address) is banned
        from ``room``. A session let in has its address remembered for a later ban."""
        state = await self.rules_of(room)
        keys = rules.nick_keys(session.nick) if session is not None else None
        guest = session is None or not session.account
        left = _match(state.bans, keys, address, guest, time.time())
        if left is not None:
            raise banned(left)
        if keys is not None and guest and address:
            self._remember(room, keys.skeleton, address)

    async def check_write(self, room: str, session: Session, kind: str,
                          address: str = "") -> None:
        """Refuse a write (``kind``: message, edit, reaction, delete) by a banned or muted
        session, or a message sooner than slow mode allows."""
        state = await self.rules_of(room)
        keys = rules.nick_keys(session.nick)
        now = time.time()
        left = _match(state.bans, keys, address, not session.account, now)
        if left is not None:
            raise banned(left)
        if kind == "delete":
            return  # a muted person may still take back what they said
        left = _match(state.mutes, keys, "", False, now)
        if left is not None:
            raise muted(left)
        if kind == "message" and state.slow > 0:
            left = await self.slow_turn(room, keys.skeleton, state.slow)
            if left is not None:
                wait = max(1, math.ceil(left))
                error = ChatError("slow_mode", f"Slow mode: one message every {state.slow:g} "
                                  f"seconds; wait {wait} more.", 429)
                error.fields["seconds_left"] = wait
                raise error

    def _remember(self, room: str, skeleton: str, address: str) -> None:
        kept = self._addresses.pop((room, skeleton), [])
        if address in kept:
            kept.remove(address)
        kept.append(address)
        self._addresses[(room, skeleton)] = kept[-ADDRESSES_KEPT:]
        while len(self._addresses) > ADDRESS_BOOK_PEOPLE:
            del self._addresses[next(iter(self._addresses))]  # the least recently seen

    # -- the actions ------------------------------------------------------------------------

    async def prepare(self, actor: Session, room: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Check an action's fields, write the state it changes to MongoDB, and return the
        ``moderation`` event to store (with its internal ``sid``, ``cid``). The caller (who
        checked the role) stores it; ``delete`` also goes through the delete path."""
        rules.check_room(room)
        action = fields.get("action")
        if action not in ACTIONS:
            raise _bad(f"action must be one of {', '.join(ACTIONS)}.")
        reason = fields.get("reason") or ""
        if not isinstance(reason, str) or len(reason) > MAX_REASON_CHARS:
            raise _bad(f"reason must be text of at most {MAX_REASON_CHARS} characters.")
        doc: dict[str, Any] = {"type": "moderation", "nick": actor.nick, "ts": time.time(),
                               "action": action, "sid": actor.sid,
                               "cid": f"moderation-{secrets.token_hex(8)}"}
        if reason:
            doc["reason"] = reason
        seconds = fields.get("seconds")
        if action in ON_PEOPLE:
            subject = rules.check_nick(fields.get("subject"))
            doc["subject"] = subject
            keys = rules.nick_keys(subject)
            if action in ("mute", "ban"):
                if seconds is not None:
                    seconds = _seconds(seconds, MAX_SECONDS, allow_zero=False)
                    doc["seconds"] = seconds
                    doc["until"] = doc["ts"] + seconds
                entry = {"skeleton": keys.skeleton, "cased": keys.cased, "nick": subject,
                         "until": doc.get("until"), "addresses": self._known(room, keys)}
                await self._put(room, action + "s", keys.skeleton, entry)
            elif action in ("unmute", "unban"):
                await self._put(room, action[2:] + "s", keys.skeleton, None)
        elif action == "slow_mode":
            seconds = _seconds(seconds, MAX_SLOW_SECONDS, allow_zero=True)
            doc["seconds"] = seconds
            try:
                await self.store.set_slow(room, seconds)
            except StoreError:
                raise store_unavailable() from None
        else:  # delete
            doc["target"] = rules.check_target(fields.get("target"))
        return doc

    def _known(self, room: str, keys: NickKeys) -> list[str]:
        return list(self._addresses.get((room, keys.skeleton), []))

    async def _put(self, room: str, field_: str, skeleton: str,
                   entry: dict[str, Any] | None) -> None:
        try:
            await self.store.put(room, field_, skeleton, entry)
        except StoreError:
            raise store_unavailable() from None

    # -- what every process does with a published moderation event ----------------------------

    def published(self, room: str, entries: list[Entry]) -> None:
        """The room's buffer published ``entries`` (stored, in id order): apply the moderation
        ones to this process's state, and put the subject's connections out."""
        for entry in entries:
            event = entry.event
            if event.get("type") == "moderation":
                self._events[room] = self._events.get(room, 0) + 1
                try:
                    self._apply(room, event)
                except ChatError as exc:  # a subject a newer version allows: not ours
                    log.warning("moderation event %s not applied: %s", event.get("id"), exc)

    def _apply(self, room: str, event: dict[str, Any]) -> None:
        action = event.get("action")
        state = self._rooms.get(room)  # not loaded: the next load reads it from MongoDB
        if action == "slow_mode":
            if state is not None:
                state.slow = float(event.get("seconds", 0))
            return
        if action not in ON_PEOPLE:
            if action != "delete":
                log.warning("no rule for a moderation event with action %r", action)
            return
        keys = rules.nick_keys(rules.check_nick(event.get("subject")))
        if action in ("mute", "ban") and state is not None:
            state.put(action + "s", keys.skeleton, {
                "skeleton": keys.skeleton, "cased": keys.cased, "nick": event["subject"],
                "until": event.get("until"), "addresses": self._known(room, keys)})
        elif action in ("unmute", "unban") and state is not None:
            state.put(action[2:] + "s", keys.skeleton, None)
        if action in ("kick", "ban"):
            self._put_out(room, keys, action == "ban", event.get("until"))

    def _put_out(self, room: str, keys: NickKeys, ban: bool, until: float | None) -> None:
        addresses: list[str] = []
        for member in self.presence.members(room):
            member_keys = rules.nick_keys(member.nick)
            if member_keys.skeleton != keys.skeleton and member_keys.cased != keys.cased:
                continue
            for conn in list(member.connections):
                address = getattr(conn, "address", "")
                if ban and address and address not in addresses:
                    addresses.append(address)
                if ban:
                    conn.moderated(banned(math.inf if until is None else until - time.time()),
                                   CLOSE_BANNED)
                else:
                    conn.moderated(kicked(), CLOSE_KICKED)
        if ban and addresses:
            # Addresses this process saw the subject at, for its ban as a guest by address.
            state = self._rooms.get(room)
            if state is not None:
                for entry in state.bans:
                    if entry["skeleton"] == keys.skeleton:
                        entry["addresses"] = sorted(set(entry.get("addresses", [])) |
                                                    set(addresses))
            asyncio.ensure_future(self._store_addresses(room, keys.skeleton, addresses))

    async def _store_addresses(self, room: str, skeleton: str, addresses: list[str]) -> None:
        try:
            await self.store.add_addresses(room, skeleton, addresses)
        except StoreError as exc:
            log.warning("ban addresses in %s not stored: %s", room, exc)


def _seconds(value: Any, most: int, allow_zero: bool) -> int:
    if (not isinstance(value, (int, float)) or isinstance(value, bool)
            or not math.isfinite(value) or value < (0 if allow_zero else 1) or value > most):
        low = 0 if allow_zero else 1
        raise _bad(f"seconds must be a number from {low} to {most}.")
    return math.ceil(value)
