"""Roles: room owners and moderators (collection ``rooms``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pymongo.errors import DuplicateKeyError

if TYPE_CHECKING:
    from chatapp.store.eventstore import EventStore

# -- roles: room owners and moderators ----------------------------------------------------------
#
# ``rooms``: ``{_id: room, owner: account, owner_nick, moderators: [{key: account, nick}]}``,
# an account being its skeleton (an ``accounts`` _id). Admins are not stored: they are the
# ``--admins`` option, the same on every process.


class RoleStore:
    def __init__(self, store: EventStore) -> None:
        self.rooms = store.sessions.database["rooms"]

    async def create_indexes(self) -> None:
        # "Which rooms does this account hold a role in": when the account is deleted.
        await self.rooms.create_index("owner")
        await self.rooms.create_index("moderators.key")

    async def room(self, room: str) -> dict[str, Any] | None:
        return await self.rooms.find_one({"_id": room})

    async def claim(self, room: str, account: str, nick: str) -> bool:
        """Make ``account`` the owner of ``room`` if it has none; False if it has one. One
        single-document write: of two accounts claiming at once, one wins."""
        try:
            await self.rooms.update_one(
                {"_id": room, "owner": {"$exists": False}},
                {"$set": {"owner": account, "owner_nick": nick}}, upsert=True,
            )
        except DuplicateKeyError:
            return False  # the room's document exists, with an owner
        return True

    async def add_moderator(self, room: str, account: str, nick: str) -> None:
        await self.rooms.update_one(
            {"_id": room, "moderators.key": {"$ne": account}},
            {"$push": {"moderators": {"key": account, "nick": nick}}},
        )

    async def remove_moderator(self, room: str, account: str) -> None:
        await self.rooms.update_one({"_id": room}, {"$pull": {"moderators": {"key": account}}})

    async def forget_account(self, account: str) -> None:
        """The account was deleted: it owns and moderates nothing any more (whoever registers
        the nickname next must not inherit its rooms)."""
        await self.rooms.update_many(
            {"owner": account}, {"$unset": {"owner": "", "owner_nick": ""}}
        )
        await self.rooms.update_many(
            {"moderators.key": account}, {"$pull": {"moderators": {"key": account}}}
        )
