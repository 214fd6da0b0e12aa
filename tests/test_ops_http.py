"""Operators' HTTP conventions: ``HEAD`` answers wherever ``GET`` does (uptime checkers send
it), with GET's status and headers and no body."""

from __future__ import annotations

import pytest

from tests.steps import ROOM, user

# Paths whose GET answers the same bytes each time: HEAD must announce exactly that length.
SAME_EVERY_TIME = ["/healthz", "/static/chat.js", "/api/rooms/lobby/presence",
                   "/api/rooms/lobby/history"]


@pytest.mark.gen_test(timeout=60)
async def test_head_answers_like_get_without_a_body(servers):
    srv = await servers.start()
    anon = srv.client()
    client = await user(srv, "header")
    for path in ["/", "/healthz", f"/r/{ROOM}", "/static/chat.js", "/static/chat.css",
                 "/api/session", f"/api/rooms/{ROOM}/history", f"/api/rooms/{ROOM}/presence"]:
        for who in (anon, client):
            got = await who.request("GET", path)
            head = await who.request("HEAD", path)
            assert head.code == got.code, (path, head.code, got.code)
            assert head.body == b"", path
            assert head.headers.get("Content-Type") == got.headers.get("Content-Type"), path
            if path in SAME_EVERY_TIME:
                assert head.headers["Content-Length"] == str(len(got.body)), path
    # A visitor without a session is sent to the join form by HEAD as by GET.
    head = await anon.request("HEAD", f"/r/{ROOM}")
    assert head.code == 302 and head.headers["Location"] == f"/?room={ROOM}"
    assert (await client.request("HEAD", f"/r/{ROOM}")).code == 200
    assert (await client.request("HEAD", "/")).code == 302  # straight to the room, as GET
    assert (await anon.request("HEAD", "/")).code == 200
    # Where GET is a 404, HEAD is too.
    assert (await anon.request("HEAD", "/nowhere")).code == 404
    assert (await anon.request("HEAD", "/api/nowhere")).code == 404
    anon.close()
    client.close()
