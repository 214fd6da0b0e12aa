"""Many processes, one chat (``--processes``, ``--cluster``): proven over the wire.

In-process: several ``servers.start(cluster=True)`` on the test's database are separate
``Chat`` objects, each with its own change feed and presence books, exactly as separate
processes are; only MongoDB connects them. Then the real thing: ``python -m chatapp
--processes=2`` with a worker killed by ``kill -9``, and a private mongod stopped and restarted
under two cluster servers.

Nothing sleeps to wait for an event: clients wait for the frame or answer they expect, and
"nothing twice" is checked by ids strictly increasing across everything a client received.
The only sleeps let the grace period pass, or are a client's back-off between retries of a
send refused with 503 (as the page does).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import statistics
import time
from pathlib import Path
from typing import Any

import pytest
from tornado.httpclient import HTTPClientError
from tornado.iostream import StreamClosedError
from tornado.websocket import WebSocketClosedError

from chatapp.chat import PollWaiter
from chatapp.mongod import EmbeddedMongo
from tests.harness import WAIT_SECONDS, ChatServer, Client, ServerFactory, Socket
from tests.procs import AppProcess, running
from tests.steps import (
    ROOM,
    assert_increasing,
    events_until,
    eventually,
    frames_until,
    history,
    is_join,
    messages,
    new_cid,
    open_ws,
    poll,
    poll_until,
    post,
    process_alive,
    texts,
    unique,
    user,
)

# -- helpers --------------------------------------------------------------------------------


async def cluster(servers: ServerFactory, count: int, **options: Any) -> list[ChatServer]:
    """``count`` cluster-mode servers on one database, each with its change feed following."""
    started = [await servers.start(cluster=True, **options) for _ in range(count)]
    for srv in started:
        await asyncio.wait_for(srv.chat.feed.ready.wait(), WAIT_SECONDS)
    return started


def same_session(client: Client, base: ChatServer | str) -> Client:
    """The same person (same cookies) talking to another server: a second tab elsewhere."""
    other = Client(base if isinstance(base, str) else base.url)
    other.cookies = dict(client.cookies)
    other.nick = client.nick  # type: ignore[attr-defined]
    return other


def presence_is(nicks: list[str]):
    return lambda frame: frame["type"] == "presence" and frame["nicks"] == nicks


def is_event(kind: str, nick: str):
    return lambda f: f["type"] == "event" and (f["event"]["type"], f["event"]["nick"]) == (
        kind, nick)


async def wait_join(sock: Socket, nick: str) -> None:
    while True:
        event = (await sock.next("event"))["event"]
        if event["type"] == "join" and event["nick"] == nick:
            return


async def events_until_each(sock: Socket, kind: str, nicks: list[str]) -> list[dict[str, Any]]:
    """Every event until there has been a ``kind`` event of each of ``nicks``. (Events of
    several servers arrive in the room's order, but a marker message posted on one server may
    be stored before another server's join or leave: a marker alone cannot say "all of them
    have come".)"""
    events: list[dict[str, Any]] = []
    missing = set(nicks)
    while missing:
        events.append((await sock.next("event"))["event"])
        if events[-1]["type"] == kind:
            missing.discard(events[-1]["nick"])
    return events


async def presence(client: Client, room: str = ROOM) -> list[str]:
    code, body = await client.get_json(f"/api/rooms/{room}/presence")
    assert code == 200, body
    return body["nicks"]


def close_all(*clients: Client) -> None:
    for client in clients:
        client.close()


# -- in-process: several cluster servers on one database ------------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_concurrent_senders_on_three_servers_reach_every_client_once_in_one_order(servers):
    nodes = await cluster(servers, 3)
    n = 20
    ws_senders, http_senders, ws_readers, pollers = [], [], [], []
    for i, srv in enumerate(nodes):
        ws_senders.append(await user(srv, f"ws{i}"))
        http_senders.append(await user(srv, f"http{i}"))
        ws_readers.append(await user(srv, f"reader{i}"))
        pollers.append(await user(srv, f"poller{i}"))
    reader_socks = [await open_ws(c, cursor="") for c in ws_readers]
    sender_socks = [(await open_ws(c))[0] for c in ws_senders]
    expected = {f"{c.nick} {k}" for c in ws_senders + http_senders for k in range(n)}

    async def ws_sender(sock: Socket, nick: str) -> None:
        for k in range(n):  # every frame queued at once: the servers store them concurrently
            sock.send(f"{nick} {k}", f"{nick}-{k}")
        acks = [await sock.next("ack") for _ in range(n)]
        assert sorted(a["client_id"] for a in acks) == sorted(f"{nick}-{k}" for k in range(n))

    async def http_sender(client: Client) -> None:
        for k in range(n):
            await post(client, f"{client.nick} {k}")

    async def ws_reader(sock: Socket, backlog: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return backlog + await events_until(sock, "the end")

    async def poller(client: Client) -> list[dict[str, Any]]:
        return (await poll_until(client, "", "the end"))[0]

    readers = [asyncio.ensure_future(ws_reader(s, backlog)) for s, backlog, _ in reader_socks]
    readers += [asyncio.ensure_future(poller(c)) for c in pollers]
    await asyncio.gather(
        *(ws_sender(s, c.nick) for s, c in zip(sender_socks, ws_senders)),
        *(http_sender(c) for c in http_senders),
    )
    await post(http_senders[0], "the end")
    seen = await asyncio.gather(*readers)

    stored = await history(ws_readers[0])
    assert_increasing(stored)
    assert sorted(texts(stored)) == sorted(expected | {"the end"})
    for i, got in enumerate(seen):  # every client of every server: every event once, in order
        assert got == stored, (f"receiver {i} ({'ws' if i < 3 else 'poll'} on server {i % 3})",
                               [(e['id'], e['type'], e['nick']) for e in got[:8]],
                               [(e['id'], e['type'], e['nick']) for e in stored[:8]])
    for c in ws_senders + http_senders:  # and each sender's messages in the order sent
        assert [t for t in texts(stored) if t.split()[0] == c.nick] == [
            f"{c.nick} {k}" for k in range(n)
        ]
    close_all(*ws_senders, *http_senders, *ws_readers, *pollers)


@pytest.mark.gen_test(timeout=30)
async def test_a_nickname_is_unique_across_servers(servers):
    a, b = await cluster(servers, 2)
    an = await user(a, "an")
    other = b.client()
    code, body = await other.post_json("/api/session", {"nick": "AN"})
    assert (code, body["error"]) == (409, "nick_taken")
    # Free again everywhere once its holder logs out, wherever that is.
    assert (await an.request("DELETE", "/api/session")).code == 204
    code, body = await other.post_json("/api/session", {"nick": "AN"})
    assert (code, body) == (200, {"nick": "AN"})
    close_all(an, other)


@pytest.mark.gen_test(timeout=60)
async def test_presence_is_one_list_across_servers_with_one_join_and_one_leave(servers):
    grace = 1.0
    a, b = await cluster(servers, 2, grace_period=grace)
    watcher = await user(a, "watcher")
    bob, carol = await user(b, "bob"), await user(b, "carol")
    wsock, _, _ = await open_ws(watcher)

    bob_b, _, _ = await open_ws(bob)
    # A's sockets are told of B's member: the join, and the new list.
    await frames_until(wsock, is_event("join", "bob"), presence_is(["bob", "watcher"]))
    for srv in (a, b):  # the list is the cluster's, whichever server is asked
        assert await presence(srv.client()) == ["bob", "watcher"]

    # A second tab of bob, on A: no second join.
    bob_a, _, nicks = await open_ws(same_session(bob, a))
    assert nicks == ["bob", "watcher"]
    carol_b, _, _ = await open_ws(carol)
    # carol's join is stored by B, and may commit after a message A stores meanwhile: wait
    # for it, then check it was the only join since bob's second tab opened.
    frames = await frames_until(wsock, is_event("join", "carol"))
    got = [f["event"] for f in frames if f["type"] == "event"]
    got += await events_until(wsock, (await post(watcher, "after the tabs"))["text"])
    assert [(e["type"], e["nick"]) for e in got if e["nick"] != "watcher"] == [("join", "carol")]

    # bob closes B's tab but keeps A's: past the grace period, still there, no leave.
    bob_b.close()
    await asyncio.sleep(grace * 2.5)  # the grace period and a sweep pass
    got = await events_until(wsock, (await post(watcher, "bob still here"))["text"])
    assert [e["type"] for e in got] == ["message"]
    assert await presence(b.client()) == ["bob", "carol", "watcher"]

    # Now bob closes his last tab (on A) and carol her only one (on B): each leaves once,
    # not before the grace period, and A's sockets hear of carol's leave from B.
    closed = time.monotonic()
    bob_a.close()
    carol_b.close()
    frames = await frames_until(
        wsock, is_event("leave", "bob"), is_event("leave", "carol"), presence_is(["watcher"])
    )
    assert time.monotonic() - closed >= grace
    assert sorted(f["event"]["nick"] for f in frames if f["type"] == "event") == ["bob", "carol"]
    got = await events_until(wsock, (await post(watcher, "after the leaves"))["text"])
    assert [e["type"] for e in got] == ["message"]
    for srv in (a, b):
        assert await presence(srv.client()) == ["watcher"]
    close_all(watcher, bob, carol)


@pytest.mark.gen_test(timeout=60)
async def test_tabs_opening_and_closing_on_two_servers_at_once_join_once_and_leave_once(
    servers
):
    grace = 1.0
    a, b = await cluster(servers, 2, grace_period=grace)
    watcher = await user(a, "watcher")
    wsock, _, _ = await open_ws(watcher)
    people = [await user(a, f"twin{i}") for i in range(8)]
    # Each person opens a tab on A and one on B in the same instant: both servers ask
    # MongoDB "is this a join?" concurrently, and only one may say yes.
    tabs = await asyncio.gather(*(
        open_ws(tab) for p in people for tab in (p, same_session(p, b))
    ))
    everyone = sorted(p.nick for p in people)
    got = await events_until_each(wsock, "join", everyone)
    got += await events_until(wsock, (await post(watcher, "after the joins"))["text"])
    joins = sorted(e["nick"] for e in got if e["type"] == "join" and e["nick"] != "watcher")
    assert joins == everyone
    assert await presence(b.client()) == sorted(everyone + ["watcher"])

    # And both tabs close together: one leave each, once the grace period is over.
    for sock, _, _ in tabs:
        sock.close()
    got = await events_until_each(wsock, "leave", everyone)
    got += await events_until(wsock, (await post(watcher, "after the leaves"))["text"])
    assert sorted(e["nick"] for e in got if e["type"] == "leave") == everyone
    assert [e["type"] for e in got if e["type"] not in ("leave", "message")] == []
    close_all(watcher, *people)


@pytest.mark.gen_test(timeout=60)
async def test_the_rate_limit_holds_for_a_session_whose_sends_reach_two_servers(servers):
    a, b = await cluster(servers, 2, rate_limit=2)  # 2 a second, bursts of 4
    alice = await user(a, "alice")
    sock, _, _ = await open_ws(alice)  # a tab on A
    # A burst of frames on A: handled concurrently, yet refused or stored in the order sent.
    for i in range(6):
        sock.send(f"ws {i}", f"w{i}")
    answers: dict[str, str] = {}
    while len(answers) < 6:
        frame = await sock.next()
        if frame["type"] in ("ack", "error") and "client_id" in frame:
            assert frame["type"] == "ack" or frame["error"] == "rate_limited", frame
            answers[frame["client_id"]] = frame["type"]
    accepted = [i for i in range(6) if answers[f"w{i}"] == "ack"]
    assert accepted[:4] == [0, 1, 2, 3] and len(accepted) <= 5, answers
    # At once, over HTTP on B (another tab, or a round-robin balancer): the same bucket.
    code, body = await same_session(alice, b).send(ROOM, "via B", "b1")
    assert (code, body["error"]) == (429, "rate_limited")
    assert texts(await history(alice)) == [f"ws {i}" for i in accepted]
    close_all(alice)


@pytest.mark.gen_test(timeout=60)
async def test_a_long_poll_client_alternating_servers_misses_nothing_and_gets_nothing_twice(
    servers,
):
    a, b = await cluster(servers, 2)
    sender_a, sender_b = await user(a, "sa"), await user(b, "sb")
    reader = await user(a, "rr")
    readers = [reader, same_session(reader, b)]  # round robin: A, B, A, B...
    _, cursor = await poll(reader, None)
    ws_b, _, _ = await open_ws(sender_b)
    n = 30
    expected = [f"sa {k}" for k in range(n)] + [f"sb {k}" for k in range(n)]

    async def http_sender() -> None:
        for k in range(n):
            await post(sender_a, f"sa {k}")

    async def ws_sender() -> None:
        for k in range(n):
            ws_b.send(f"sb {k}", f"sb-{k}")
            await ws_b.next("ack")

    async def round_robin(cursor: str) -> tuple[list[dict[str, Any]], int]:
        got: list[dict[str, Any]] = []
        for turn in itertools.count():
            if set(texts(got)) >= set(expected):
                return got, turn
            assert turn < 10 * len(expected), texts(got)
            events, cursor = await poll(readers[turn % 2], cursor)
            got += events

    _, _, (got, turns) = await asyncio.gather(http_sender(), ws_sender(), round_robin(cursor))
    assert turns >= 2
    assert_increasing(got)
    assert sorted(texts(got)) == sorted(expected)
    assert messages(got) == messages(await history(reader))[-len(expected):]
    close_all(sender_a, sender_b, *readers)


@pytest.mark.gen_test(timeout=60)
async def test_a_client_moving_to_a_server_whose_feed_lags_gets_nothing_twice(servers):
    """Server B's change feed is paused (a slow or interrupted stream): B does not know yet
    of events a client has already seen through A. The client comes to B with its cursor,
    once by long-poll and once by WebSocket; when B catches up, the client gets only what
    follows its cursor."""
    a, b = await cluster(servers, 2)
    sender = await user(a, "sender")
    reader = await user(a, "reader")
    reader_b = same_session(reader, b)
    _, cursor = await poll(reader, None)
    await poll(reader_b, None)  # B has the room loaded

    await b.chat.feed.stop()  # B's feed is down
    for k in range(3):
        await post(sender, f"while B lags {k}")
    _, cursor = await poll_until(reader, cursor, "while B lags 2")
    parked = asyncio.ensure_future(poll(reader_b, cursor))
    ws, backlog, _ = await open_ws(reader_b, cursor=cursor)
    assert backlog == []

    async def poll_parked_on_b() -> bool:  # the one look inside: a client cannot tell
        return any(isinstance(w, PollWaiter) for w in b.chat.loaded_room(ROOM).waiting())

    await eventually(poll_parked_on_b, "the long-poll to park on B")
    b.chat.feed.start()  # B catches up (resume token, and a query for each room)

    await post(sender, "after B caught up")
    polled, _ = await parked
    assert texts(polled) == ["after B caught up"]
    assert texts(await events_until(ws, "after B caught up")) == ["after B caught up"]
    close_all(sender, reader, reader_b)


@pytest.mark.gen_test(timeout=60)
async def test_changes_waiting_in_the_stream_are_published_at_once_per_room_in_order(servers):
    """B's feed is paused while two rooms get messages on A. When it reads again, what the
    stream holds is published as one batch per room (one write per socket), not one event at
    a time; and every client still gets every event once, in order."""
    a, b = await cluster(servers, 2)
    sender, reader = await user(a, "sender"), await user(b, "reader")
    rooms = [ROOM, unique("other")]
    socks = {}
    for room in rooms:
        socks[room], backlog, _ = await open_ws(reader, room)
        if not any(is_join(e, "reader") for e in backlog):
            await wait_join(socks[room], "reader")  # delivered by B's feed: nothing else due

    await b.chat.feed.stop()
    sent: dict[str, list[dict[str, Any]]] = {room: [] for room in rooms}
    for k in range(10):
        for room in rooms:  # interleaved in the stream
            sent[room].append(await post(sender, f"{room} {k}", room))

    # The one look inside: B's publishes, recorded; and B's catch-up query off, so that
    # everything comes through the stream, resumed from B's token.
    published: dict[str, list[list[str]]] = {room: [] for room in rooms}
    for room in rooms:
        buffer = b.chat.loaded_room(room)

        def record(events, publish=buffer.publish, calls=published[room]):
            calls.append([e["id"] for e in events])
            return publish(events)

        buffer.publish = record  # type: ignore[method-assign]

    async def no_catch_up() -> None:
        pass

    b.chat.catch_up_rooms = no_catch_up  # type: ignore[method-assign]
    b.chat.feed.start()

    for room, sock in socks.items():
        assert await events_until(sock, f"{room} 9") == sent[room]
    assert published == {room: [[e["id"] for e in sent[room]]] for room in rooms}
    close_all(sender, reader)


@pytest.mark.gen_test(timeout=30)
async def test_logging_out_on_one_server_closes_the_sessions_sockets_on_the_other(servers):
    a, b = await cluster(servers, 2)
    an, watcher = await user(b, "an"), await user(b, "watcher")
    wsock, _, _ = await open_ws(watcher)
    sock, _, _ = await open_ws(an)
    await wait_join(wsock, "an")

    assert (await same_session(an, a).request("DELETE", "/api/session")).code == 204
    assert await sock.closed_with() == 1008  # B was told by the change feed
    await frames_until(wsock, is_event("leave", "an"))
    # The cookie no longer works anywhere, and the nickname is free everywhere.
    for srv in (a, b):
        code, body = await same_session(an, srv).get_json("/api/session")
        assert body["nick"] is None
        code, _ = await same_session(an, srv).send(ROOM, "ghost", new_cid())
        assert code == 401
    other = await user(b, "AN")
    assert await presence(other) == ["watcher"]
    close_all(an, watcher, other)


@pytest.mark.gen_test(timeout=30)
async def test_a_logout_missed_by_a_feed_that_lost_its_place_is_still_honoured(servers):
    # B's feed is down long enough to drop its resume token (it restarts from "now"): the
    # logout on A is not in what B's stream will show it, yet B must stop honouring it.
    a, b = await cluster(servers, 2)
    an = await user(b, "an")
    sock, _, _ = await open_ws(an)
    await b.chat.feed.stop()
    assert (await same_session(an, a).request("DELETE", "/api/session")).code == 204
    b.chat.feed.forget_position()  # as after a long outage: the stream reopens from now
    b.chat.feed.start()
    assert await sock.closed_with() == 1008
    code, _ = await same_session(an, b).send(ROOM, "ghost", new_cid())
    assert code == 401
    close_all(an)


# -- the change stream interrupted: MongoDB stops and comes back -----------------------------


@pytest.fixture
def private_cluster(io_loop, tmp_path, db_name):
    """A mongod of this test's own (stopped and restarted by it; never the session's shared
    one), and a ``servers`` factory on it."""
    mongo = EmbeddedMongo(str(tmp_path / "mongo"))
    mongo.start()
    factory = ServerFactory(mongo.uri, db_name)
    try:
        yield mongo, factory
    finally:
        mongo.start()  # a test that failed mid-outage: let the servers stop cleanly
        factory.close_all(io_loop)
        mongo.stop()


async def post_until_stored(client: Client, text: str, deadline: float) -> dict[str, Any]:
    """Send as a client does after an outage: retry with the same client_id until stored
    (503 means nothing was stored; a repeat of the client_id never stores twice)."""
    cid = new_cid()
    while True:
        code, body = await client.send(ROOM, text, cid)
        if code == 200:
            return body["event"]
        assert code == 503 and time.monotonic() < deadline, (code, body)
        await asyncio.sleep(0.2)  # a client's back-off before trying again


@pytest.mark.gen_test(timeout=90)
async def test_after_mongodb_restarts_the_feeds_resume_and_skip_nothing(private_cluster):
    mongo, factory = private_cluster
    a, b = await cluster(factory, 2, store_timeout=2)
    ann, bea, cy = await user(a, "ann"), await user(b, "bea"), await user(b, "cy")
    sock_a, _, _ = await open_ws(ann)
    sock_b, _, _ = await open_ws(bea)
    sock_cy, _, _ = await open_ws(cy)
    poller = same_session(bea, b)
    _, cursor = await poll(poller, None)
    first = await post(ann, "before the outage")
    for sock in (sock_a, sock_b):
        assert texts(await events_until(sock, first["text"]))[-1] == first["text"]
    _, cursor = await poll_until(poller, cursor, first["text"])

    await asyncio.to_thread(mongo.stop)
    code, body = await ann.send(ROOM, "while MongoDB is down", new_cid())
    assert (code, body["error"]) == (503, "store_unavailable")
    # B's feed stays down past MongoDB's return, so that A stores events B's feed has not
    # seen: B must resume after its last change (its resume token), not from "now".
    await b.chat.feed.stop()
    await asyncio.to_thread(mongo.start)
    deadline = time.monotonic() + 30
    during = [await post_until_stored(ann, f"B's feed is down {k}", deadline) for k in range(3)]
    assert texts(await events_until(sock_a, during[-1]["text"])) == [e["text"] for e in during]
    # cy logs out on A meanwhile: no query for a room's events would tell B; only resuming
    # the change stream after B's last change does.
    assert (await same_session(cy, a).request("DELETE", "/api/session")).code == 204
    b.chat.feed.start()
    assert await sock_cy.closed_with() == 1008

    after_b = await post_until_stored(bea, "sent on B after recovery", deadline)
    after_a = await post_until_stored(ann, "sent on A after recovery", deadline)
    wanted = [e["text"] for e in during] + [after_b["text"], after_a["text"]]
    got_b = await events_until(sock_b, after_a["text"])
    assert texts(got_b) == wanted  # nothing skipped, nothing twice
    assert_increasing(got_b)
    assert texts(await events_until(sock_a, after_a["text"])) == wanted[-2:]
    polled, _ = await poll_until(poller, cursor, after_a["text"])
    assert texts(polled) == wanted
    stored = await history(ann)
    assert messages(stored)[-len(wanted):] == messages(got_b)
    close_all(ann, bea, cy, poller)


# -- the real thing: python -m chatapp --processes=2 ------------------------------------------


def children(pid: int) -> set[int]:
    """The live child processes of ``pid``."""
    kids: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            kids |= {int(p) for p in (task / "children").read_text().split()}
        except FileNotFoundError:
            pass
    return {k for k in kids if process_alive(k)}


def worker_of(sock: Socket, workers: set[int], port: int) -> int:
    """Which worker process holds the server end of this WebSocket (from /proc)."""
    client_port = sock.conn.stream.socket.getsockname()[1]
    inode = None
    with open("/proc/net/tcp") as f:
        for line in list(f)[1:]:
            fields = line.split()
            local, remote = fields[1], fields[2]
            if int(local.split(":")[1], 16) == port and int(remote.split(":")[1], 16) == \
                    client_port:
                inode = f"socket:[{fields[9]}]"
    assert inode is not None, "no server end for this socket"
    for pid in workers:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) == inode:
                    return pid
            except OSError:
                pass
    raise AssertionError(f"no worker holds {inode}")


class ResumingReader:
    """A WebSocket client that, when its connection dies, reconnects with its cursor (as the
    page does), and collects every event until the message ``until``."""

    def __init__(self, client: Client, room: str, sock: Socket) -> None:
        self.client, self.room, self.sock = client, room, sock
        self.events: list[dict[str, Any]] = []
        self.reconnects = 0

    async def run(self, until: str) -> list[dict[str, Any]]:
        while not self.events or self.events[-1].get("text") != until:
            try:
                # Long enough for a room whose counter a killed worker left locked (see
                # post_surely): the next event may take that long.
                frame = await self.sock.next("event", timeout=30)
            except AssertionError:  # closed: the process behind it died
                self.sock = await self.reconnect()
                continue
            self.events.append(frame["event"])
        return self.events

    async def reconnect(self) -> Socket:
        """Reconnect with the cursor, retrying as the page does: a connection the kernel
        queued on the dying worker's listening socket (SO_REUSEPORT gives each worker its
        own) is reset when that worker's socket closes, and the next attempt lands on a
        live one."""
        cursor = self.events[-1]["id"] if self.events else ""
        while True:
            assert self.reconnects < 20, "the reader could not reconnect"
            self.reconnects += 1
            try:
                return await self.client.ws(self.room, cursor)
            except (OSError, HTTPClientError, StreamClosedError, WebSocketClosedError):
                await asyncio.sleep(0.2)  # the page's back-off before trying again


async def post_surely(client: Client, room: str, text: str) -> dict[str, Any]:
    """Send over HTTP as the page does: if the process answering dies (no answer) or MongoDB
    is busy (503), send the same client_id again; the message is stored once whatever
    happened. A worker killed in the middle of a transaction leaves the room's counter locked
    until mongod expires that transaction (within 7.5 s on the embedded mongod, 90 s with
    MongoDB's defaults; see chatapp/mongod.py): that is the wait."""
    cid = new_cid()
    failures: list[Any] = []
    deadline = time.monotonic() + 45
    while time.monotonic() < deadline:
        try:
            code, body = await client.send(room, text, cid)
        except (OSError, HTTPClientError, StreamClosedError, WebSocketClosedError) as exc:
            failures.append(repr(exc))  # connection refused or reset by the dying worker
            continue
        if code == 200:
            return body["event"]
        failures.append((code, body["error"]))
        assert code == 503, (code, body)
        await asyncio.sleep(0.2)  # the page's back-off before trying again
    raise AssertionError(f"{text!r} was never stored: {failures}")


@pytest.mark.gen_test(timeout=90)
async def test_processes_2_one_chat_through_one_port_surviving_a_killed_worker(
    mongo_uri, tmp_path
):
    async with running(AppProcess(tmp_path / "app", mongo_uri, processes=2)) as app:
        await _processes_2(app)


async def _processes_2(app: AppProcess) -> None:
    room = unique("procs")
    workers = children(app.pid)
    assert len(workers) == 2, workers
    # Readers, until both workers hold some (the kernel spreads connections between them).
    readers: list[ResumingReader] = []
    where: dict[int, list[ResumingReader]] = {pid: [] for pid in workers}
    for i in range(16):
        client = await user(app.url, unique(f"reader{i}"))
        sock = await client.ws(room, "")
        reader = ResumingReader(client, room, sock)
        readers.append(reader)
        where[worker_of(sock, workers, app.port)].append(reader)
        if len(readers) >= 4 and all(where.values()):
            break
    assert all(where.values()), f"every connection went to one worker: {where}"
    runs = [asyncio.ensure_future(r.run("the end")) for r in readers]

    # Concurrent senders through the one port, on both transports.
    n = 15
    senders = [await user(app.url, unique(f"s{i}")) for i in range(4)]
    ws_senders = [await senders[i].ws(room) for i in (0, 1)]

    async def ws_send(sock: Socket, name: str) -> None:
        for k in range(n):
            sock.send(f"{name} {k}", f"{name}-{k}")
        for _ in range(n):
            await sock.next("ack")

    async def http_send(client: Client, name: str) -> None:
        for k in range(n):
            await post(client, f"{name} {k}", room)

    await asyncio.gather(ws_send(ws_senders[0], "w0"), ws_send(ws_senders[1], "w1"),
                         http_send(senders[2], "h2"), http_send(senders[3], "h3"))
    for sock in ws_senders:
        sock.close()

    # kill -9 a worker while HTTP senders keep sending (retrying, with the same client_id,
    # whatever the dying worker did not answer).
    victim = max(where, key=lambda pid: len(where[pid]))
    halfway = asyncio.Event()

    async def keep_sending(client: Client, name: str) -> None:
        for k in range(n):
            await post_surely(client, room, f"{name} late {k}")
            if k == n // 3:
                halfway.set()

    sending = asyncio.gather(keep_sending(senders[2], "h2"), keep_sending(senders[3], "h3"))
    await halfway.wait()
    os.kill(victim, signal.SIGKILL)
    await sending
    await post_surely(senders[2], room, "the end")
    seen = await asyncio.gather(*runs)

    stored = await history(senders[2], room)
    assert_increasing(stored)
    for got in seen:  # every client: every event once, in the one stored order
        assert got == stored
    expected = {f"{name} {k}" for name in ("w0", "w1", "h2", "h3") for k in range(n)}
    expected |= {f"{name} late {k}" for name in ("h2", "h3") for k in range(n)}
    assert sorted(texts(stored)) == sorted(expected | {"the end"})
    assert all(r.reconnects >= 1 for r in where[victim])  # they were cut off, and resumed
    # Coming back on another worker is no new arrival: one join each, no leave.
    joins = [e["nick"] for e in stored if e["type"] == "join"]
    assert sorted(joins) == sorted({r.client.nick for r in readers} | {
        senders[0].nick, senders[1].nick})
    assert [e for e in stored if e["type"] == "leave"] == []

    # The supervisor replaced the dead worker.
    async def replaced() -> bool:
        kids = children(app.pid)
        return len(kids) == 2 and victim not in kids

    await eventually(replaced, "a replacement worker")
    assert f"(pid {victim}) died" in app.log_tail(200)
    workers = children(app.pid)
    # ...and it serves the chat: a client whose connection lands on it is told what is new.
    (fresh,) = workers - set(where)
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        sock = await senders[0].ws(room, stored[-1]["id"])
        if worker_of(sock, workers, app.port) == fresh:
            break
        sock.close()
        assert time.monotonic() < deadline, "no connection reached the new worker"
        await asyncio.sleep(0.05)
    await post(senders[1], "served by the new worker", room)
    assert texts(await events_until(sock, "served by the new worker")) == [
        "served by the new worker"
    ]
    app.terminate()  # SIGTERM to the parent: every worker stops, the parent exits 0
    assert await asyncio.to_thread(app.wait, 20) == 0
    assert not any(process_alive(pid) for pid in workers), "a worker outlived its parent"
    close_all(*senders, *(r.client for r in readers))


# -- what the change-stream path costs ---------------------------------------------------------


async def ping_pair(send_srv: ChatServer, recv_srv: ChatServer, room: str):
    """A sender's and a receiver's WebSocket in ``room``, the receiver already present."""
    sender, receiver = await user(send_srv, unique("lat")), await user(recv_srv, unique("lat"))
    sock_r, _, _ = await open_ws(receiver, room)
    sock_s, _, _ = await open_ws(sender, room)
    await frames_until(sock_r, is_event("join", sender.nick))
    return sock_s, sock_r, (sender, receiver)


async def one_ping(sock_s: Socket, sock_r: Socket, text: str) -> float:
    """Milliseconds from a WebSocket send to the event arriving at the other socket."""
    start = time.perf_counter()
    sock_s.send(text, new_cid())
    while (await sock_r.next("event"))["event"].get("text") != text:
        pass
    return (time.perf_counter() - start) * 1000


@pytest.mark.gen_test(timeout=60)
async def test_measure_the_latency_the_change_stream_adds(servers, capsys):
    single = await servers.start()
    a, b = await cluster(servers, 2)
    pairs = {
        "single process": await ping_pair(single, single, unique("single")),
        "cluster, same server": await ping_pair(a, a, unique("same")),
        "cluster, A to B": await ping_pair(a, b, unique("across")),
    }
    times: dict[str, list[float]] = {name: [] for name in pairs}
    for k in range(120):  # interleaved, so that a busy moment of the machine hits all alike
        for name, (sock_s, sock_r, _) in pairs.items():
            ms = await one_ping(sock_s, sock_r, f"ping {k}")
            if k >= 20:  # warm-up
                times[name].append(ms)
    with capsys.disabled():
        print("\nsend-to-receive latency over WebSocket, ms (median, p95):")
        for name, samples in times.items():
            print(f"  {name:22s} {statistics.median(samples):6.2f} "
                  f"{statistics.quantiles(samples, n=20)[-1]:7.2f}")
    for _, _, clients in pairs.values():
        close_all(*clients)
