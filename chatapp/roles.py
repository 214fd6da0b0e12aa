"""Roles: who may moderate a room.

- **Admins**: the registered nicknames of ``--admins`` (compared on skeletons), in every room.
- **Owner**: the first account to claim an unowned room (``POST /api/rooms/<room>/claim``).
- **Moderators**: accounts the owner (or an admin) adds and removes
  (``PUT``/``DELETE /api/rooms/<room>/moderators/<nick>``).

Every role belongs to an account, never to a guest: a guest's nickname is free again when it
leaves, and a role must not pass with it. Owners and moderators live in MongoDB (``rooms``),
so they hold on every process and across restarts; a deleted account loses them all.

The trap: a session's ``account`` flag is cached per process and may be stale (the account
was deleted through another process). Every decision here asks MongoDB which account the
session is a device of (``AccountStore.session_account``): roles are rare operations, and a
moderation check is one lookup.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from chatapp import rules
from chatapp.errors import ChatError
from chatapp.sessions import Session
from chatapp.store import AccountStore, EventStore, RoleStore

OWNER, MODERATOR, ADMIN = "owner", "moderator", "admin"


class Roles:
    def __init__(self, store: EventStore, admins: Iterable[str] = ()) -> None:
        self.rooms = RoleStore(store)
        self.accounts = AccountStore(store)
        self.admins = {rules.nick_keys(n.strip()).skeleton for n in admins if n.strip()}

    async def account_of(self, session: Session | None) -> str | None:
        """The account ``session`` is a live device of, asked of MongoDB; None for a guest."""
        if session is None:
            return None
        return await self.accounts.session_account(session.sid)

    async def role(self, session: Session | None, room: str) -> str | None:
        """``admin``, ``owner``, ``moderator`` (the strongest that applies), or None."""
        account = await self.account_of(session)
        if account is None:
            return None
        if account in self.admins:
            return ADMIN
        doc = await self.rooms.room(room) or {}
        if doc.get("owner") == account:
            return OWNER
        if any(m["key"] == account for m in doc.get("moderators", [])):
            return MODERATOR
        return None

    async def may_moderate(self, session: Session | None, room: str) -> bool:
        """What the moderation actions ask: owner, moderator or admin."""
        return await self.role(session, room) is not None

    async def describe(self, session: Session | None, room: str) -> dict[str, Any]:
        """``{"room", "owner", "moderators", "you"}``: the room's roles, and the caller's."""
        rules.check_room(room)
        doc = await self.rooms.room(room) or {}
        return {
            "room": room,
            "owner": doc.get("owner_nick"),
            "moderators": sorted((m["nick"] for m in doc.get("moderators", [])), key=str.lower),
            "you": await self.role(session, room),
        }

    async def claim(self, session: Session, room: str) -> dict[str, Any]:
        rules.check_room(room)
        account = await self.account_of(session)
        if account is None:
            raise _not_registered("Only a registered nickname can own a room.")
        if not await self.rooms.claim(room, account, session.nick):
            raise ChatError("room_owned", "This room has an owner already.", 409)
        return await self.describe(session, room)

    async def set_moderator(
        self, session: Session, room: str, nick: str, on: bool
    ) -> dict[str, Any]:
        """Add (``on``) or remove a moderator: by the room's owner or an admin."""
        rules.check_room(room)
        if await self.role(session, room) not in (OWNER, ADMIN):
            raise ChatError(
                "not_owner", "Only the room's owner or an admin can change its moderators.", 403
            )
        key = rules.nick_keys(rules.check_nick(nick))
        account = await self.accounts.find_account(key)
        if on:
            if account is None:
                raise ChatError("not_registered", "There is no account with that nickname.", 404)
            await self.rooms.add_moderator(room, account["_id"], account["nick"])
        elif account is not None:
            await self.rooms.remove_moderator(room, account["_id"])
        return await self.describe(session, room)

    async def forget_account(self, account: str) -> None:
        await self.rooms.forget_account(account)


def _not_registered(message: str) -> ChatError:
    return ChatError("not_registered", message, 403)
