"""One keep-alive connection, many requests (issue 14): what the server verified about one
request's cookies (the signed session cookie, the XSRF token) is kept for the connection's
next requests, so each answer must still be the one its own headers deserve: another
visitor's cookie over the same connection (a proxy's pooled connection) is that visitor,
a wrong token is not presence, and an ended session stays ended."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tests.harness import Client
from tests.steps import ROOM, post, user


class KeepAlive:
    """A raw HTTP/1.1 connection kept open across requests (Tornado's client opens one per
    request), each request with the headers given and nothing else."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, path: str, headers: dict[str, str]) -> tuple[int, Any]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{self.port}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        body = await self.reader.readexactly(length)
        return int(head[9:12]), json.loads(body) if body else None

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def cookies_of(client: Client) -> dict[str, str]:
    """The page's headers: its cookies, and its XSRF token for ``X-XSRFToken``."""
    return {"Cookie": "; ".join(f"{k}={v}" for k, v in client.cookies.items()),
            "X-XSRFToken": client.cookies["_xsrf"]}


@pytest.mark.gen_test(timeout=60)
async def test_each_request_on_a_kept_connection_is_judged_by_its_own_cookies(servers):
    srv = await servers.start()
    an, bo = await user(srv, "an"), await user(srv, "bo")
    for c in (an, bo):
        await c.request("GET", "/api/session")  # the _xsrf cookie, as the page has it
    conn = KeepAlive(srv.port)
    try:
        assert (await conn.get("/api/session", cookies_of(an)))[1] == {"nick": "an"}
        # Another visitor's cookie over the same connection is that visitor.
        assert (await conn.get("/api/session", cookies_of(bo)))[1] == {"nick": "bo"}
        assert (await conn.get("/api/session", cookies_of(an)))[1] == {"nick": "an"}
        # A forged token after a good one: a read, not presence.
        forged = dict(cookies_of(an), **{"X-XSRFToken": "2|00|00|00"})
        code, body = await conn.get(f"/api/rooms/{ROOM}/updates", forged)
        assert code == 200, body
        assert (await bo.get_json(f"/api/rooms/{ROOM}/presence"))[1]["nicks"] == []
        # The page's own poll, same connection, does count.
        code, body = await conn.get(f"/api/rooms/{ROOM}/updates", cookies_of(an))
        assert code == 200, body
        assert (await bo.get_json(f"/api/rooms/{ROOM}/presence"))[1]["nicks"] == ["an"]
        # Polls on the kept connection get the next message, once (an's join comes first).
        waiting = asyncio.ensure_future(conn.get(
            f"/api/rooms/{ROOM}/updates?cursor={body['cursor']}", cookies_of(an)))
        await post(bo, "hello")
        got: list[str] = []
        for _ in range(5):  # bounded: the join, then the message
            code, body = await waiting
            assert code == 200, body
            got += [e["text"] for e in body["events"] if e["type"] == "message"]
            if got:
                break
            waiting = asyncio.ensure_future(conn.get(
                f"/api/rooms/{ROOM}/updates?cursor={body['cursor']}", cookies_of(an)))
        assert got == ["hello"]
        # bo logs out: the very same cookie, over the same connection, no longer works.
        old = cookies_of(bo)
        assert (await bo.request("DELETE", "/api/session")).code == 204
        assert (await conn.get("/api/session", old))[1] == {"nick": None}
        code, body = await conn.get(f"/api/rooms/{ROOM}/updates", old)
        assert code == 401 and body["error"] == "no_session", body
    finally:
        conn.close()
