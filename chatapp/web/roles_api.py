"""Room roles over HTTP: claim a room, add and remove its moderators, read who holds what."""

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
