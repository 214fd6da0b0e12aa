"""Read markers and the two lists of rooms: the directory (``GET /api/rooms``) and mine
(``GET /api/me/rooms``, with unread and mention counts).

Whose marker: ``identity_of(session)``, the one place that decides. The account when logged
in (every device of it shares one marker per room, kept for good), else the session (kept
while it lives). "Mine", for the unread count, follows the same identity (``is_mine``).

Rules:

- A marker only moves forward: ``mark_read`` is one ``$max`` update in MongoDB, so concurrent
  PUTs (two tabs) leave the furthest, whatever order they land in. An id this server did not
  issue in the room is refused (``bad_cursor``) and changes nothing.
- An identity "has joined" a room once its first connection there opened (``joined``); its
  marker starts at the room's end then, so a newcomer's first visit has nothing unread.
- Counts come from MongoDB alone (nothing in memory), so they are right after a restart, and
  from any process of a cluster. Each room costs one query on the ``(room, type, seq)``
  index reading at most ``UNREAD_CAP`` messages: unread are the messages after the marker
  not sent by this identity and not deleted; mentions, those of them naming its nickname.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from chatapp import rules
from chatapp.errors import ChatError, store_unavailable
from chatapp.mode import LocalMode
from chatapp.rules import format_id, nick_key, nick_keys, parse_id
from chatapp.sessions import Session
from chatapp.store import EventStore, StoreError

log = logging.getLogger(__name__)

# The contract: unread counts stop at 1000 ("1000+" on a page); also what bounds one room's
# counting query.
UNREAD_CAP = 1000
# "My rooms" lists the most recently used this many: the page's sidebar shows no more, and
# each costs one query.
MY_ROOMS_MAX = 50
# The contract: the directory lists at most 100 rooms; ``?names=`` takes at most as many.
DIRECTORY_MAX = 100


def identity_of(session: Session) -> str:
    """Whose read markers these are: a logged-in session's account (its id, the nickname's
    skeleton, as ``accounts`` keys it), shared by all its devices; a guest's own session."""
    if session.account:
        return "account:" + nick_keys(session.nick).skeleton
    return session.sid


def is_mine(message: dict[str, Any], session: Session) -> bool:
    """Whether ``message`` was sent by this identity: by any device of the account (it owns
    its nickname), or by this guest session."""
    if session.account:
        return nick_keys(message.get("nick", "")).skeleton == nick_keys(session.nick).skeleton
    return message.get("sid") == session.sid


class Markers:
    def __init__(
        self,
        store: EventStore,
        mode: LocalMode,
        open_room: Callable[[str, str | None], Awaitable[Any]],
    ) -> None:
        self.store = store
        self.mode = mode
        # ``Chat.open_room``: the room's buffer once a cursor is known to be issued there.
        self.open_room = open_room

    def joined(self, room: str, session: Session, last_id: str) -> None:
        """The session's first connection in ``room`` opened (``last_id``: where the room's
        log ends now). Recorded in the background: a join is not worth delaying."""

        async def record() -> None:
            try:
                await self.store.rooms.ensure_marker(
                    identity_of(session), room, parse_id(last_id), time.time())
            except StoreError as exc:
                log.warning("could not record %s joining %s: %s", session.nick, room, exc)

        asyncio.ensure_future(record())

    async def mark_read(self, session: Session, room: str, event_id: Any) -> None:
        """Move the identity's marker in ``room`` to ``event_id``, if that is further."""
        rules.check_room(room)
        event_id = rules.check_cursor(event_id)
        await self.open_room(room, event_id)  # bad_cursor unless issued in this room
        try:
            await self.store.rooms.advance_marker(
                identity_of(session), room, parse_id(event_id), time.time())
        except StoreError:
            raise store_unavailable() from None

    async def my_rooms(self, session: Session) -> list[dict[str, Any]]:
        """The rooms the identity joined, most recently used first: its marker, the room's
        last id, and the counts of unread messages and of those mentioning it."""
        me, key = identity_of(session), nick_key(session.nick)
        try:
            markers = await self.store.rooms.markers_of(me, MY_ROOMS_MAX)
            last = await self.store.rooms.last_events([room for room, _ in markers])
            counted = await asyncio.gather(*(
                self.store.rooms.messages_after(room, seq, UNREAD_CAP) for room, seq in markers))
        except StoreError:
            raise store_unavailable() from None
        out = []
        for (room, seq), after in zip(markers, counted):
            unread = [m for m in after if not is_mine(m, session) and not m.get("deleted")]
            mentions = sum(1 for m in unread
                           if any(nick_key(n) == key for n in m.get("mentions", ())))
            out.append({
                "room": room, "read": format_id(seq) if seq else "",
                "last_id": format_id(last[room][0]) if room in last else "",
                "unread": len(unread), "mentions": mentions,
            })
        return out

    async def directory(self, names: list[str] | None) -> list[dict[str, Any]]:
        """Rooms with people present, most people first (at most ``DIRECTORY_MAX``); or the
        rooms ``names``, present or not, in the order asked."""
        if names is not None:
            if len(names) > DIRECTORY_MAX:
                raise ChatError("bad_room", f"Ask for at most {DIRECTORY_MAX} rooms.", 400)
            for name in names:
                rules.check_room(name)
            names = list(dict.fromkeys(names))
        people = await self.mode.people(names, DIRECTORY_MAX)
        rooms = names if names is not None else sorted(people, key=lambda r: (-people[r], r))
        try:
            last = await self.store.rooms.last_events(rooms)
        except StoreError:
            raise store_unavailable() from None
        return [{
            "room": room, "people": people.get(room, 0),
            "last_id": format_id(last[room][0]) if room in last else "",
            "last_ts": last[room][1] if room in last else None,
        } for room in rooms]
