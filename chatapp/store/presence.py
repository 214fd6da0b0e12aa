"""Cluster mode: presence, as leases that each process holds on the members it has connected.

Collection ``members``: one document per (room, session), see "Presence leases" below.
"""

from __future__ import annotations

from typing import Any

import pymongo
from pymongo.errors import DuplicateKeyError


class PresenceMixin:
    """``EventStore``'s presence leases (``members``)."""

    members: Any

    # Presence leases. One document per (room, session):
    #
    #     {_id, room, sid, nick, announced: bool, leases: [{p: process, until: time}],
    #      until_max: the latest "until"}
    #
    # Each process that has the member connected holds a lease, renewed by its sweep.
    # ``announced`` says whether the room was last told "join" (true) or "leave" (false).
    # Every change of ``announced`` is one single-document update that also reads the
    # leases, so it is atomic: of two processes joining (or leaving) the same member at the
    # same moment, exactly one sees the change and announces it.

    async def join_member(
        self, room: str, sid: str, nick: str, me: str, until: float
    ) -> bool:
        """Hold a lease on (room, sid) for process ``me``; True if this call announced the
        member (nobody had: a real join), False if it was present already."""
        others = _leases_except(me)
        before = await self._update_member(room, sid, [
            {"$set": {
                "room": {"$literal": room}, "sid": {"$literal": sid},
                "nick": {"$literal": nick}, "announced": True,
                "leases": {"$concatArrays": [others, [{"p": {"$literal": me}, "until": until}]]},
            }},
            _SET_UNTIL_MAX,
        ], upsert=True)
        return before is None or not before.get("announced")

    async def leave_member(self, room: str, sid: str, me: str, now: float) -> bool:
        """Drop process ``me``'s lease on (room, sid); True if this call ended the member's
        presence (no other process holds a live lease: a real leave)."""
        others = _leases_except(me)
        others_live = {"$filter": {"input": others, "cond": {"$gt": ["$$this.until", now]}}}
        before = await self._update_member(room, sid, [
            {"$set": {
                # Both from the document as it was: the stage sees its input, not its output.
                "announced": {"$and": [
                    {"$eq": ["$announced", True]}, {"$gt": [{"$size": others_live}, 0]},
                ]},
                "leases": others,
            }},
            _SET_UNTIL_MAX,
        ], upsert=False)
        # The update's decision, made again from what it saw (the same ``now``).
        return bool(before and before.get("announced") and not any(
            lease["p"] != me and lease["until"] > now for lease in before.get("leases", [])
        ))

    async def _update_member(
        self, room: str, sid: str, pipeline: list[dict[str, Any]], upsert: bool
    ) -> dict[str, Any] | None:
        """Apply ``pipeline`` to the member's document; the document as it was before."""
        for attempt in range(2):
            try:
                return await self.members.find_one_and_update(
                    {"_id": _member_id(room, sid)}, pipeline, upsert=upsert,
                    projection={"announced": 1, "leases": 1},
                    return_document=pymongo.ReturnDocument.BEFORE,
                )
            except DuplicateKeyError:
                # Two upserts creating the same document at once: the loser's second attempt
                # finds the winner's document (MongoDB usually retries this itself).
                if attempt:
                    raise
        return None  # not reached

    async def renew_members(self, me: str, leases: dict[tuple[str, str], float]) -> None:
        """Extend process ``me``'s leases: ``leases`` maps (room, sid) to the new end."""
        # Members connected now share one lease time: usually one update for all of them.
        by_until: dict[float, list[str]] = {}
        for (room, sid), until in leases.items():
            by_until.setdefault(until, []).append(_member_id(room, sid))
        for until, ids in by_until.items():
            await self.members.update_many(
                {"_id": {"$in": ids}, "leases.p": me},
                {"$max": {"leases.$.until": until, "until_max": until}},
            )

    async def remove_expired_members(self, now: float) -> list[tuple[str, str, str]]:
        """Announced members whose every lease ran out (their processes died): (room, sid,
        nick) of each that this call marked as gone, so one process announces each leave.
        Also forgets documents nobody holds any more."""
        gone = []
        expired = {"announced": True, "until_max": {"$lt": now}}
        async for doc in self.members.find(expired, {"room": 1, "sid": 1, "nick": 1}):
            result = await self.members.update_one(
                {"_id": doc["_id"], **expired}, {"$set": {"announced": False}}
            )
            if result.modified_count:
                gone.append((doc["room"], doc["sid"], doc["nick"]))
        await self.members.delete_many({"announced": False, "until_max": {"$lt": now}})
        return gone

    async def all_members(self) -> list[tuple[str, str, str]]:
        """(room, sid, nick) of every announced member, leases live or run out (one
        process's restart)."""
        rows = await self.members.find(
            {"announced": True}, {"room": 1, "sid": 1, "nick": 1}
        ).to_list(None)
        return [(r["room"], r["sid"], r["nick"]) for r in rows]

    async def take_over_members(self, me: str, until: float) -> None:
        """Make every lease this process's (one process restarted: they are all its own)."""
        await self.members.delete_many({"announced": {"$ne": True}})
        await self.members.update_many(
            {}, {"$set": {"leases": [{"p": me, "until": until}], "until_max": until}}
        )

    async def present_nicks(self, room: str, now: float) -> list[str]:
        return await self.members.distinct("nick", {"room": room, "until_max": {"$gt": now}})


def _member_id(room: str, sid: str) -> str:
    # NUL cannot occur in a room name or a session id: the two parts stay apart.
    return f"{room}\x00{sid}"


def _leases_except(me: str) -> dict[str, Any]:
    """(Aggregation expression) the document's leases of processes other than ``me``."""
    return {"$filter": {
        "input": {"$ifNull": ["$leases", []]}, "cond": {"$ne": ["$$this.p", {"$literal": me}]},
    }}


# (Aggregation stage) ``until_max`` from ``leases``; 0 when there are none, so a document
# nobody holds counts as run out.
_SET_UNTIL_MAX = {"$set": {"until_max": {"$ifNull": [{"$max": "$leases.until"}, 0]}}}
