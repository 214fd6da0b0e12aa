"""Moderation: each room's mutes, bans and slow mode (collection ``moderation``), for
``chatapp.moderation``, which decides; this module only reads and writes the state."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from chatapp.store.eventstore import EventStore


class ModerationStore:
    """Each room's moderation state (``chatapp.moderation``): one document per room in
    ``moderation``, ``{"_id": room, "mutes": [...], "bans": [...], "slow": seconds}``; each
    entry ``{"skeleton", "cased", "nick", "until", "addresses"}`` (``until`` None: for good)."""

    def __init__(self, store: EventStore) -> None:
        self.rooms = store.sessions.database["moderation"]

    async def state(self, room: str) -> dict[str, Any]:
        return await self.rooms.find_one({"_id": room}) or {}

    async def put(self, room: str, field: str, skeleton: str, entry: dict[str, Any] | None) -> None:
        """Replace the ``field`` ("mutes" or "bans") entry of ``skeleton`` by ``entry`` (None:
        drop it), dropping entries that ran out too. Two writes: of two moderators acting on
        one person at once, the later one's entry stands (or both, until one runs out)."""
        now = time.time()
        await self.rooms.update_one(
            {"_id": room},
            {"$pull": {field: {"$or": [{"skeleton": skeleton},
                                       {"until": {"$lt": now}}]}}},
            upsert=True,
        )
        if entry is not None:
            await self.rooms.update_one({"_id": room}, {"$push": {field: entry}})

    async def add_addresses(self, room: str, skeleton: str, addresses: list[str]) -> None:
        await self.rooms.update_one(
            {"_id": room, "bans.skeleton": skeleton},
            {"$addToSet": {"bans.$.addresses": {"$each": addresses}}},
        )

    async def set_slow(self, room: str, seconds: float) -> None:
        await self.rooms.update_one({"_id": room}, {"$set": {"slow": seconds}}, upsert=True)
