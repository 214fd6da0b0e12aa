"""Where a message or an action on one enters: checked (``rules``), rate-limited, queued on
its room's writer.

Edits, deletes and reactions are checked here for their form (text, emoji, ids); whether
they may act on their target (``kinds.decide``: yours? deleted?) is decided by the store on
the target's state in the transaction that stores them, since only there is that state sure.

Order: the checks and this process's rate limit first (they cost nothing and refuse a flood
early), then the mode's shared limit (a round trip in a cluster), then the writer's queue.
A session's sends reach the writer in the order they arrived: the mode's ``send_turn`` is
held from the shared check to the queue.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from chatapp import kinds, metrics, rules
from chatapp.errors import ChatError
from chatapp.mode import LocalMode
from chatapp.ratelimit import TokenBucket
from chatapp.rooms import Rooms
from chatapp.sessions import Session
from chatapp.store import Appended

if TYPE_CHECKING:
    from chatapp.moderation import Moderation


def too_fast() -> ChatError:
    return ChatError("rate_limited", "You are sending messages too fast; wait a moment.", 429)


def _event(appended: Appended) -> dict[str, Any]:
    assert appended.event is not None  # only a reaction may store nothing
    return appended.event


class Sender:
    def __init__(self, rooms: Rooms, mode: LocalMode, rate_limit: float) -> None:
        self.rooms = rooms
        self.mode = mode
        self.rate_limit = rate_limit
        self._buckets: dict[str, TokenBucket] = {}
        self.guard: Moderation | None = None  # mutes, bans, slow mode (set by Chat)

    @metrics.timed(metrics.SEND_SECONDS)
    async def send(
        self, session: Session, room: str, text: Any, client_id: Any, reply_to: Any = None
    ) -> dict[str, Any]:
        """Store a message (a reply, with ``reply_to``) and deliver it to the room; the
        stored event.

        A repeat of ``client_id`` by the same session in the same room stores and delivers
        nothing and returns the first event again.
        """
        rules.check_room(room)
        text = rules.check_text(text)
        client_id = rules.check_client_id(client_id)
        reply_to = rules.check_reply_to(reply_to)
        doc = self._doc(session, "message", client_id)
        kinds.text_changed(doc, text)
        if reply_to is not None:
            doc["reply_to"] = reply_to  # its preview is taken by the store (kinds.preview_of)
        return _event(await self.write(session, room, doc))

    async def edit(
        self, session: Session, room: str, target: Any, text: Any, client_id: Any
    ) -> dict[str, Any]:
        """Replace the text of your message ``target``; the edit event."""
        rules.check_room(room)
        target = rules.check_target(target)
        text = rules.check_text(text)
        doc = self._doc(session, "edit", rules.check_client_id(client_id), target=target)
        kinds.text_changed(doc, text)
        return _event(await self.write(session, room, doc))

    async def delete(
        self, session: Session, room: str, target: Any, client_id: Any = None,
        moderator: bool = False,
    ) -> dict[str, Any]:
        """Delete message ``target`` (``kinds.may_delete``); the delete event, the first one
        again if it was deleted already. Without a ``client_id``, one made of the target:
        deleting is idempotent anyway."""
        rules.check_room(room)
        target = rules.check_target(target)
        if client_id is None:
            client_id = f"delete-{target}"
        doc = self._doc(session, "delete", rules.check_client_id(client_id), target=target)
        if moderator:  # the caller checked the role (kinds.may_delete)
            doc["moderator"] = True
        return _event(await self.write(session, room, doc))

    async def react(
        self, session: Session, room: str, target: Any, emoji: Any, on: Any, client_id: Any
    ) -> tuple[dict[str, Any] | None, dict[str, list[str]]]:
        """Add (``on``) or take back your reaction ``emoji`` to message ``target``: the
        reaction event (None if it changed nothing, and nothing was stored) and the
        message's reactions now."""
        rules.check_room(room)
        target = rules.check_target(target)
        emoji = rules.check_emoji(emoji)
        on = rules.check_on(on)
        doc = self._doc(session, "reaction", rules.check_client_id(client_id),
                        target=target, emoji=emoji, on=on)
        appended = await self.write(session, room, doc)
        reactions = appended.reactions
        if reactions is None:  # a repeat of a client_id: the reactions as they are now
            reactions = await self.rooms.reactions_of(room, target)
        return appended.event, reactions

    @staticmethod
    def _doc(session: Session, kind: str, client_id: str, **fields: Any) -> dict[str, Any]:
        return {"type": kind, "nick": session.nick, "ts": time.time(), **fields,
                "sid": session.sid, "cid": client_id}

    async def write(self, session: Session, room: str, doc: dict[str, Any]) -> Appended:
        """Rate-limit, then store ``doc`` in ``room`` through its writer: what the store did
        with it. Raises its refusal (``kinds.decide``), if any."""
        if self.guard is not None:
            await self.guard.check_write(room, session, doc["type"])
        if not self._take_token(session.sid):
            raise too_fast()
        async with self.mode.send_turn(session.sid):
            if not await self.mode.take_shared_token(session.sid):
                raise too_fast()
            await self.rooms.get(room)
            stored = self.rooms.writer(room).write(doc)  # in line now, in arrival order
        appended = await stored
        if appended.refusal is not None:
            raise appended.refusal
        return appended

    def take_token(self, sid: str) -> bool:
        """Charge something else the session does (a typing signal) to its send rate."""
        return self._take_token(sid)

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
