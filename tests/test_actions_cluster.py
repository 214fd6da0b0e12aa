"""Message actions in a cluster: an edit, delete or reaction made through one process reaches
the clients of every other, in the one order of the log, and a client resuming on another
process (whose feed lagged) gets every action since its cursor.

In-process cluster servers are separate ``Chat`` objects with their own change feeds and
buffers, joined only by MongoDB (see test_cluster.py); the last test runs the real thing,
``python -m chatapp --processes=2``, with readers on both workers.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.acting import Actor, replay
from tests.procs import AppProcess, running
from tests.steps import ROOM, history, open_ws, poll, unique, user
from tests.test_cluster import children, cluster, same_session, wait_join, worker_of


async def events_until_id(sock, event_id: str) -> list[dict[str, Any]]:
    """Every event the socket receives up to and including ``event_id``."""
    events: list[dict[str, Any]] = []
    while not events or events[-1]["id"] < event_id:
        events.append((await sock.next("event"))["event"])
    return events


def shown(page: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["id"]: e for e in page if e["type"] == "message"}


async def act_on_both(a_actor: Actor, b_actor: Actor) -> str:
    """A conversation with every kind of action, its actors on two servers; the last id."""
    m1 = (await a_actor.send("on A")).ok()
    m2 = (await b_actor.send("on B", reply_to=m1["id"])).ok()
    (await b_actor.react(m1["id"], "👍")).ok()
    (await a_actor.react(m1["id"], "👍")).ok()
    (await a_actor.edit(m1["id"], "on A, edited")).ok()
    (await b_actor.edit(m2["id"], "on B, edited")).ok()
    (await b_actor.react(m1["id"], "👍", False)).ok()
    return (await b_actor.delete(m2["id"])).ok()["id"]  # type: ignore[index]


@pytest.mark.parametrize("transport", ["http", "ws"])
@pytest.mark.gen_test(timeout=60)
async def test_actions_on_two_servers_reach_both_in_one_order(servers, transport):
    a, b = await cluster(servers, 2)
    an = await Actor.join(a, "an", transport)
    bo = await Actor.join(b, "bo", transport)
    # The backlog is part of the log: which events a socket got before its first presence
    # frame, and which after, depends on when the other server's events reached this one.
    watch_a, backlog_a, _ = await open_ws(an.client, cursor="")
    watch_b, backlog_b, _ = await open_ws(bo.client, cursor="")
    last = await act_on_both(an, bo)

    log_a = backlog_a + await events_until_id(watch_a, last)
    log_b = backlog_b + await events_until_id(watch_b, last)
    assert log_a == log_b  # one order, every action once, on both servers
    page_a, page_b = await history(an.client), await history(bo.client)
    assert page_a == page_b
    for log in (log_a, log_b):
        state: dict[str, Any] = {}
        replay(state, log)
        assert state == shown(page_a)
    # A newcomer on either server sees the current state (each buffer applied the actions
    # the feed brought).
    for srv in (a, b):
        newcomer = await user(srv, unique("new"))
        events, _ = await poll(newcomer, None)
        assert shown(events) == shown(page_a)
        newcomer.close()
    watch_a.close()
    watch_b.close()
    an.close()
    bo.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_client_resuming_on_a_server_whose_feed_lagged_gets_every_action(servers):
    a, b = await cluster(servers, 2)
    an = await Actor.join(a, "an", "http")
    bo = await Actor.join(a, "bo", "http")
    old = (await an.send("old")).ok()
    reader = same_session(bo.client, b)
    sock, _, _ = await open_ws(reader, cursor=old["id"])  # B has the room loaded
    await wait_join(sock, "bo")
    sock.close()

    await b.chat.feed.stop()  # B hears nothing of what follows until it catches up
    last = await act_on_both(an, bo)
    ws = await reader.ws(ROOM, old["id"])  # to B, before it caught up
    b.chat.feed.start()  # B catches up: the resume token, and a query for the room
    backlog = await events_until_id(ws, last)
    events, _ = await poll(reader, old["id"])  # and by long-poll, from memory now
    assert [e["id"] for e in backlog] == [e["id"] for e in events]
    kinds = [e["type"] for e in backlog]
    assert kinds.count("edit") == 2 and kinds.count("reaction") == 3 and "delete" in kinds
    state = {old["id"]: dict(old)}  # what the client held before it went away
    replay(state, backlog)
    assert state == shown(await history(reader))
    ws.close()
    for client in (an, bo):
        client.close()
    reader.close()


@pytest.mark.gen_test(timeout=120)
async def test_processes_2_actions_reach_readers_on_both_workers(mongo_uri, tmp_path):
    async with running(AppProcess(tmp_path / "app", mongo_uri, processes=2)) as app:
        room = unique("acts")
        workers = children(app.pid)
        assert len(workers) == 2, workers
        readers: dict[int, Any] = {}
        clients = []
        for i in range(16):  # until each worker holds a reader
            client = await user(app.url, unique(f"reader{i}"))
            clients.append(client)
            sock = await client.ws(room, "")
            readers.setdefault(worker_of(sock, workers, app.port), sock)
            if len(readers) == 2:
                break
        assert len(readers) == 2, "every connection went to one worker"
        an = Actor(await user(app.url, "an"), "http", room)
        bo = Actor(await user(app.url, "bo"), "http", room)
        last = await act_on_both(an, bo)
        page = await history(an.client, room)
        logs = [await events_until_id(sock, last) for sock in readers.values()]
        assert logs[0] == logs[1]
        state: dict[str, Any] = {}
        replay(state, logs[0])
        assert state == shown(page)
        for sock in readers.values():
            sock.close()
        for client in (*clients, an.client, bo.client):
            client.close()
