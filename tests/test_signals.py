"""Typing and presence signals, over both transports and across a cluster: who is typing
reaches the others at once, goes when the typist stops or sends (and never shows them typing
after their message), a keystroke storm costs a bounded number of frames, and a long-poll
that asks for signals (``signals=<version>``) is woken by them.

Expiry is shortened per server (``typing_seconds``) so that "6 s after the last signal" is
seen without waiting 6 s; nothing sleeps to wait for a frame.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.aware import poll_signals, poll_until_typing, type_http, type_ws, typing_frame
from tests.harness import WAIT_SECONDS
from tests.steps import (
    ROOM,
    eventually,
    is_message,
    new_cid,
    open_ws,
    parked_polls,
    post,
    unique,
    user,
)
from tests.test_cluster import cluster, same_session, wait_join


async def two_sockets(srv, typist: str = "bo"):
    an, bo = await user(srv, "an"), await user(srv, typist)
    an_sock, _, _ = await open_ws(an)
    bo_sock, _, _ = await open_ws(bo)
    await wait_join(an_sock, typist)
    return an, bo, an_sock, bo_sock


@pytest.mark.gen_test(timeout=60)
async def test_typing_on_a_websocket_reaches_the_others_and_ends_after_the_expiry(servers):
    srv = await servers.start(typing_seconds=1.0)
    an, bo, an_sock, bo_sock = await two_sockets(srv)
    type_ws(bo_sock)
    assert await typing_frame(an_sock) == ["bo"]
    assert await typing_frame(bo_sock) == ["bo"]  # the typist's own page hears it too
    # Nobody types any more: bo leaves the set once the (shortened) expiry has run.
    assert await typing_frame(an_sock) == []
    for c in (an, bo):
        c.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_new_socket_is_told_who_is_typing_after_its_presence(servers):
    srv = await servers.start()
    an, bo, an_sock, bo_sock = await two_sockets(srv)
    type_ws(bo_sock)
    await typing_frame(an_sock, lambda n: n == ["bo"])
    cy = await user(srv, "cy")
    sock = await cy.ws(ROOM)
    await sock.next("presence")
    assert (await sock.next("typing"))["nicks"] == ["bo"]
    for c in (an, bo, cy):
        c.close()


@pytest.mark.gen_test(timeout=60)
async def test_no_typing_frame_shows_the_sender_typing_after_their_message(servers):
    srv = await servers.start(typing_seconds=1.5)
    an, bo, an_sock, bo_sock = await two_sockets(srv)
    type_ws(bo_sock)
    await typing_frame(an_sock, lambda n: "bo" in n)
    bo_sock.send("done typing", new_cid())
    after_message = False
    # Everything an receives until bo's signal would have run out anyway, and a little more.
    loop = asyncio.get_running_loop()
    until = loop.time() + 2.5
    last_typing_before: list[str] | None = None
    while loop.time() < until:
        try:
            frame = await an_sock.next(timeout=until - loop.time())
        except TimeoutError:
            break
        if is_message(frame, "done typing"):
            after_message = True
        elif frame["type"] == "typing":
            if after_message:
                assert "bo" not in frame["nicks"], frame
            else:
                last_typing_before = frame["nicks"]
    assert after_message
    # The set change reached an no later than the message: the last list before it is empty.
    assert last_typing_before == [], last_typing_before
    for c in (an, bo):
        c.close()


@pytest.mark.gen_test(timeout=60)
async def test_typing_again_right_after_sending_counts_at_once(servers):
    srv = await servers.start()
    an, bo, an_sock, bo_sock = await two_sockets(srv)
    type_ws(bo_sock)
    await typing_frame(an_sock, lambda n: n == ["bo"])
    await post(bo, "sent")
    await typing_frame(an_sock, lambda n: n == [])
    type_ws(bo_sock)  # within the throttle window of the first, but after a message
    assert await typing_frame(an_sock) == ["bo"]
    for c in (an, bo):
        c.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_keystroke_storm_costs_one_typing_frame(servers):
    srv = await servers.start(typing_seconds=1.0)
    an, bo, an_sock, bo_sock = await two_sockets(srv)
    for _ in range(50):  # a client signalling per keystroke, far faster than the page does
        type_ws(bo_sock)
    assert await typing_frame(an_sock) == ["bo"]
    assert await typing_frame(an_sock) == []  # it ran out: the storm's rest said nothing
    await an_sock.nothing_more("typing", within=0.5)
    for c in (an, bo):
        c.close()


@pytest.mark.gen_test(timeout=60)
async def test_many_people_starting_to_type_at_once_share_frames(servers):
    srv = await servers.start(max_connections_per_ip=0)
    watcher = await user(srv, "watcher")
    sock, _, _ = await open_ws(watcher)
    typists = [await user(srv, f"t{i}") for i in range(12)]
    await asyncio.gather(*(type_http(t) for t in typists))
    frames = []
    while not frames or len(frames[-1]) < len(typists):
        frames.append(await typing_frame(sock))
    # Coalesced: far fewer frames than typists (one per 250 ms window at most).
    assert len(frames) <= len(typists) // 2, frames
    assert frames[-1] == sorted(t.nick for t in typists)  # type: ignore[attr-defined]
    for c in (watcher, *typists):
        c.close()


@pytest.mark.gen_test(timeout=60)
async def test_typing_counts_against_the_senders_rate(servers):
    srv = await servers.start(rate_limit=1)
    bo = await user(srv, "bo")
    sock, _, _ = await open_ws(bo, unique("w"))
    # One signal per room passes the throttle; the rate (1/s, bursts of 2) stops the rest.
    codes = [(await type_http(bo, unique("r")))[0] for _ in range(6)]
    assert codes[0] == 204 and 429 in codes, codes
    # Over the WebSocket the refusal is an error frame, the socket stays open.
    type_ws(sock)
    assert (await sock.next("error"))["error"] == "rate_limited"
    bo.close()


@pytest.mark.gen_test(timeout=60)
async def test_http_typing_needs_a_session_and_the_xsrf_token(servers):
    srv = await servers.start()
    anon = srv.client()
    code, _ = await type_http(anon)
    assert code == 401
    bo = await user(srv, "bo")
    response = await bo.request("POST", f"/api/rooms/{ROOM}/typing", xsrf=False)
    assert response.code == 403
    code, _ = await type_http(bo, "bad room!")
    assert code == 400
    for c in (anon, bo):
        c.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_long_poll_asking_for_signals_is_woken_by_typing(servers):
    srv = await servers.start(typing_seconds=1.0)
    an, bo = await user(srv, "an"), await user(srv, "bo")
    first = await poll_signals(an, None, "")
    assert {"signals", "presence", "typing"} <= set(first)
    # Asked again with the version it got: parks until something changes.
    body = await poll_signals(an, first["cursor"], first["signals"])
    while "an" not in body["presence"]:  # its own join, once coalesced
        body = await poll_signals(an, body["cursor"], body["signals"])
    parked = asyncio.ensure_future(poll_signals(an, body["cursor"], body["signals"]))
    await asyncio.sleep(0)
    assert (await type_http(bo))[0] == 204
    answer = await asyncio.wait_for(parked, WAIT_SECONDS)
    if answer["typing"] != ["bo"]:  # woken by bo's presence first, say
        answer = await asyncio.wait_for(poll_until_typing(
            an, answer["cursor"], answer["signals"], lambda t: t == ["bo"]), WAIT_SECONDS)
    assert answer["typing"] == ["bo"] and answer["events"] == []
    # And it ends: the next answers bring the empty list.
    await asyncio.wait_for(poll_until_typing(
        an, answer["cursor"], answer["signals"], lambda t: t == []), WAIT_SECONDS)
    for c in (an, bo):
        c.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_long_poll_without_signals_is_answered_as_before(servers):
    srv = await servers.start(poll_timeout=1)
    an, bo = await user(srv, "an"), await user(srv, "bo")
    code, body = await an.poll(ROOM, None)
    assert code == 200 and set(body) == {"events", "cursor"}
    parked = asyncio.ensure_future(an.poll(ROOM, body["cursor"]))
    while parked_polls(srv) == 0:
        await asyncio.sleep(0.01)
    await type_http(bo)
    code, answer = await asyncio.wait_for(parked, WAIT_SECONDS)
    # Not woken by the signal: it waited its timeout and says nothing of typing.
    assert code == 200 and set(answer) == {"events", "cursor"}
    for c in (an, bo):
        c.close()


@pytest.mark.gen_test(timeout=90)
async def test_typing_crosses_cluster_processes_to_both_transports(servers):
    a, b = await cluster(servers, 2, typing_seconds=1.5)
    an = await user(a, "an")
    bo = await user(b, "bo")
    bo_sock, _, _ = await open_ws(bo)
    cy = await user(b, "cy")
    first = await poll_signals(cy, None, "")
    an_sock, _, _ = await open_ws(an)  # an is in the room on A
    await wait_join(bo_sock, "an")
    type_ws(an_sock)
    assert await typing_frame(bo_sock, lambda n: n != []) == ["an"]
    body = await asyncio.wait_for(poll_until_typing(
        cy, first["cursor"], first["signals"], lambda t: t == ["an"]), WAIT_SECONDS)
    assert "an" in body["presence"]
    # an sends: no process shows them typing after the message.
    an_sock.send("from A", new_cid())
    frames = []
    while not any(is_message(f, "from A") for f in frames):
        frames.append(await bo_sock.next())
    typing_before = [f["nicks"] for f in frames if f["type"] == "typing"]
    assert typing_before and typing_before[-1] == [], typing_before
    for c in (an, bo, cy):
        c.close()


@pytest.mark.gen_test(timeout=90)
async def test_a_signals_version_is_the_same_on_every_cluster_process(servers):
    """The version is a digest of the lists, not a per-process counter: a long-poll client
    sent to another process with the version it has does not get an answer for nothing new
    on every poll (which, with round robin, would be a busy loop)."""
    a, b = await cluster(servers, 2, poll_timeout=1)
    an = await user(a, "an")
    an_sock, _, _ = await open_ws(an)
    bo = await user(a, "bo")
    bo_on_b = same_session(bo, b)
    answers = {}
    for name, client in (("a", bo), ("b", bo_on_b)):
        body = await poll_signals(client, None, "")
        while body["presence"] != ["an", "bo"]:
            body = await poll_signals(client, body["cursor"], body["signals"])
        answers[name] = body["signals"]
    assert answers["a"] == answers["b"]
    # A poll to B with A's version is parked, not answered at once for nothing new (it may
    # be answered with events B's feed brings only now: then again from there).
    cursor = body["cursor"]
    for _ in range(20):
        parked = asyncio.ensure_future(poll_signals(bo_on_b, cursor, answers["a"]))
        await eventually(lambda p=parked: parked_polls(b) > 0 or p.done(), "a parked poll")
        if not parked.done():
            break
        early = parked.result()
        assert early["events"], early  # answered at once with nothing new: the bug
        cursor = early["cursor"]
    assert not parked.done()
    type_ws(an_sock)  # and woken by the next change
    answer = await asyncio.wait_for(parked, WAIT_SECONDS)
    if answer["typing"] != ["an"]:  # woken by an earlier change (B's feed lags A's)
        answer = await asyncio.wait_for(poll_until_typing(
            bo_on_b, answer["cursor"], answer["signals"], lambda t: t == ["an"]), WAIT_SECONDS)
    assert answer["typing"] == ["an"]
    for c in (an, bo, bo_on_b):
        c.close()
