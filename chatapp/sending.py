"""Where a message enters: checked (``rules``), rate-limited, queued on its room's writer.

Order: the checks and this process's rate limit first (they cost nothing and refuse a flood
early), then the mode's shared limit (a round trip in a cluster), then the writer's queue.
A session's sends reach the writer in the order they arrived: the mode's ``send_turn`` is
held from the shared check to the queue.
"""

from __future__ import annotations

import time
from typing import Any

from chatapp import rules
from chatapp.errors import ChatError
from chatapp.mode import LocalMode
from chatapp.ratelimit import TokenBucket
from chatapp.rooms import Rooms
from chatapp.sessions import Session


def too_fast() -> ChatError:
    return ChatError("rate_limited", "You are sending messages too fast; wait a moment.", 429)


class Sender:
    def __init__(self, rooms: Rooms, mode: LocalMode, rate_limit: float) -> None:
        self.rooms = rooms
        self.mode = mode
        self.rate_limit = rate_limit
        self._buckets: dict[str, TokenBucket] = {}

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
        doc = {"type": "message", "nick": session.nick, "text": text, "ts": time.time(),
               "sid": session.sid, "cid": client_id}
        return await self.write(session, room, doc)

    async def write(self, session: Session, room: str, doc: dict[str, Any]) -> dict[str, Any]:
        """Rate-limit, then store ``doc`` in ``room`` through its writer; the stored event."""
        if not self._take_token(session.sid):
            raise too_fast()
        async with self.mode.send_turn(session.sid):
            if not await self.mode.take_shared_token(session.sid):
                raise too_fast()
            await self.rooms.get(room)
            stored = self.rooms.writer(room).write(doc)  # in line now, in arrival order
        return (await stored).event

    def _take_token(self, sid: str) -> bool:
        if self.rate_limit <= 0:
            return True
        bucket = self._buckets.get(sid)
        if bucket is None:
            bucket = self._buckets[sid] = TokenBucket(self.rate_limit)
        return bucket.take()

    def forget(self, sid: str) -> None:
        """The session ended: its bucket says nothing any more."""
        self._buckets.pop(sid, None)

    def prune(self) -> None:
        """Drop the buckets that have refilled: a fresh one would be the same."""
        for sid, bucket in list(self._buckets.items()):
            if bucket.is_full():
                del self._buckets[sid]
