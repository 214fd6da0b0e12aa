"""Sessions: a guest's nickname claim, expiry, logout (collection ``sessions``; an account's
sessions and the unique indexes are ``AccountStore``'s, in accounts.py).

``sessions``: a guest's ``{_id: sid, nick, skeleton, skeleton_cased, expires_at}``, unique
indexes on both keys (``chatapp.nicknames``) making nickname uniqueness hold however many app
processes share the database; an account's ``{_id: sid, nick, account, expires_at}`` (one per
device, so not under those indexes).
"""

from __future__ import annotations

import time
from typing import Any

from pymongo.errors import DuplicateKeyError

from chatapp.nicknames import NickKeys


class SessionsMixin:
    """``EventStore``'s sessions (``sessions``)."""

    sessions: Any

    # -- sessions -----------------------------------------------------------------------------

    async def free_expired_nick(self, key: NickKeys) -> list[str]:
        """Delete the guest sessions holding either key of a nickname if they are past their
        expiry (a sweep may not have run yet); the sids they had, so callers can forget them
        too."""
        freed = []
        for _ in range(2):  # at most one holder per key
            doc = await self.sessions.find_one_and_delete(
                {**_holds(key), "expires_at": {"$lt": time.time()}}, projection={"_id": 1}
            )
            if doc is None:
                break
            freed.append(doc["_id"])
        return freed

    async def claim_nick(self, sid: str, nick: str, key: NickKeys, expires_at: float) -> bool:
        """Record a new guest session; False when a session already has that nickname (an
        expired one is freed by ``free_expired_nick`` first)."""
        try:
            await self.sessions.insert_one(
                {"_id": sid, "nick": nick, "skeleton": key.skeleton,
                 "skeleton_cased": key.cased, "expires_at": expires_at}
            )
        except DuplicateKeyError:
            return False
        return True

    async def live_session_ids(self, sids: list[str]) -> set[str]:
        """Which of ``sids`` are still stored (not logged out or expired)."""
        rows = await self.sessions.find({"_id": {"$in": sids}}, {"_id": 1}).to_list(None)
        return {r["_id"] for r in rows}

    async def get_session(self, sid: str) -> dict[str, Any] | None:
        doc = await self.sessions.find_one({"_id": sid, "expires_at": {"$gte": time.time()}})
        return doc

    async def delete_session(self, sid: str) -> None:
        await self.sessions.delete_one({"_id": sid})

    async def extend_sessions(self, sids: list[str], expires_at: float) -> None:
        if sids:
            await self.sessions.update_many(
                {"_id": {"$in": sids}}, {"$max": {"expires_at": expires_at}}
            )

    async def expired_sessions(self, now: float) -> list[str]:
        rows = await self.sessions.find({"expires_at": {"$lt": now}}, {"_id": 1}).to_list(None)
        return [r["_id"] for r in rows]

    async def delete_sessions(self, sids: list[str], now: float) -> None:
        # Re-check expiry so a session extended meanwhile (by another process) survives.
        await self.sessions.delete_many({"_id": {"$in": sids}, "expires_at": {"$lt": now}})



def _holds(key: NickKeys) -> dict[str, Any]:
    """(Query) guest sessions holding either key."""
    return {"$or": [{"skeleton": key.skeleton}, {"skeleton_cased": key.cased}]}
