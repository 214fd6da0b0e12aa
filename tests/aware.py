"""Helpers for signals and read markers, in the users' terms: someone types, a long-poll asks
for signals, a marker is moved, my rooms are listed.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from tests.harness import Client, Socket
from tests.steps import ROOM


def type_ws(sock: Socket) -> None:
    """The person at ``sock`` types a key (the page's typing frame)."""
    sock.conn.write_message(json.dumps({"type": "typing"}))


async def type_http(client: Client, room: str = ROOM) -> tuple[int, Any]:
    response = await client.request("POST", f"/api/rooms/{room}/typing")
    return response.code, response.body


async def typing_frame(sock: Socket, pred=lambda nicks: True) -> list[str]:
    """The nicks of the next ``typing`` frame whose list satisfies ``pred``."""
    while True:
        nicks = (await sock.next("typing"))["nicks"]
        if pred(nicks):
            return nicks


async def poll_signals(
    client: Client, cursor: str | None, version: str, room: str = ROOM
) -> dict[str, Any]:
    """One long-poll asking for signals too; its answer (200 asserted)."""
    code, body = await client.poll(room, cursor, signals=version)
    assert code == 200, (code, body)
    return body


async def poll_until_typing(
    client: Client, cursor: str, version: str, pred, room: str = ROOM
) -> dict[str, Any]:
    """Long-poll with signals until the typing list satisfies ``pred``; that answer."""
    for _ in range(100):
        body = await poll_signals(client, cursor, version, room)
        if pred(body["typing"]):
            return body
        cursor, version = body["cursor"], body["signals"]
    raise AssertionError("the typing list never matched")


async def mark_read(client: Client, event_id: Any, room: str = ROOM) -> tuple[int, Any]:
    response = await client.request("PUT", f"/api/rooms/{room}/read", {"id": event_id})
    return response.code, response.body


async def my_rooms(client: Client) -> dict[str, dict[str, Any]]:
    """``GET /api/me/rooms`` by room name."""
    code, body = await client.get_json("/api/me/rooms")
    assert code == 200, (code, body)
    return {r["room"]: r for r in body["rooms"]}


async def directory(client: Client, names: str | None = None) -> tuple[int, Any]:
    query = "" if names is None else "?" + urlencode({"names": names})
    return await client.get_json(f"/api/rooms{query}")
