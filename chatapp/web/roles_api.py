"""Room roles over HTTP: claim a room, add and remove its moderators, read who holds what;
and the moderation actions they allow (``chatapp.moderation``)."""

from __future__ import annotations

from chatapp.roles import Roles
from chatapp.web.base import JSONHandler


class RolesHandler(JSONHandler):
    @property
    def roles(self) -> Roles:
        return self.settings["roles"]


class RoomRolesAPI(RolesHandler):
    """``GET /api/rooms/<room>/roles`` -> ``{"room", "owner", "moderators", "you"}``."""

    async def get(self, room: str) -> None:
        self.write_json(await self.roles.describe(await self.current_session(), room))


class RoomClaimAPI(RolesHandler):
    """``POST /api/rooms/<room>/claim``: the first account to claim an unowned room owns it."""

    async def post(self, room: str) -> None:
        session = await self.require_session()
        self.write_json(await self.roles.claim(session, room))


class ModeratorsAPI(RolesHandler):
    """``PUT``/``DELETE /api/rooms/<room>/moderators/<nick>``: by the owner or an admin."""

    async def put(self, room: str, nick: str) -> None:
        session = await self.require_session()
        self.write_json(await self.roles.set_moderator(session, room, nick, True))

    async def delete(self, room: str, nick: str) -> None:
        session = await self.require_session()
        self.write_json(await self.roles.set_moderator(session, room, nick, False))


class ModerationAPI(RolesHandler):
    """``POST /api/rooms/<room>/moderation`` ``{"action", "subject", "seconds", "reason",
    "target"}`` -> ``{"event"}``: by the owner, a moderator or an admin."""

    async def post(self, room: str) -> None:
        session = await self.require_session()
        event = await self.chat.moderate(session, room, self.body_fields(), self.roles)
        self.write_json({"event": event})
