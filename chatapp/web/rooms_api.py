"""The JSON API for awareness: typing signals, read markers, the rooms directory and mine.

Thin adapters: every rule lives in ``chatapp.signals`` and ``chatapp.markers``.
"""

from __future__ import annotations

from chatapp.web.base import JSONHandler


class TypingAPI(JSONHandler):
    """``POST /api/rooms/<room>/typing`` -> 204: the session is typing (a signal, not stored;
    throttled per session and room, charged to its send rate)."""

    async def post(self, room: str) -> None:
        session = await self.require_session()
        await self.chat.typing(session, room)
        self.set_status(204)
        self.finish()


class ReadAPI(JSONHandler):
    """``PUT /api/rooms/<room>/read`` ``{"id"}`` -> 204: move my read marker forward."""

    async def put(self, room: str) -> None:
        session = await self.require_session()
        await self.chat.mark_read(session, room, self.body_fields().get("id"))
        self.set_status(204)
        self.finish()


class RoomsAPI(JSONHandler):
    """``GET /api/rooms`` (rooms with people, fullest first) or ``?names=a,b``."""

    async def get(self) -> None:
        raw = self.get_query_argument("names", None)
        names = None if raw is None else [n for n in raw.split(",") if n]
        self.write_json({"rooms": await self.chat.directory(names)})


class MyRoomsAPI(JSONHandler):
    """``GET /api/me/rooms``: the rooms I joined, with my marker and counts."""

    async def get(self) -> None:
        session = await self.require_session()
        self.set_header("Cache-Control", "no-store")
        self.write_json({"rooms": await self.chat.my_rooms(session)})
