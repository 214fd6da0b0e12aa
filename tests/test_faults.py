"""Every promise of the contract, kept under faults: each test injects one and checks what
users would see (API.md: "503 store_unavailable (nothing was stored; safe to retry with the
same client_id)", "An event acknowledged to its sender is in MongoDB", cursors that resume
exactly, the per-session and per-address caps, ``rate_limited``, a slow reader closed).

Faults: MongoDB stopped, killed (SIGKILL) or frozen (SIGSTOP) under a running server; the app
killed with ``kill -9`` mid-stream; a WebSocket client that stops reading; SIGTERM with the
embedded MongoDB; connection floods and send floods.

What is already proven in test_delivery.py is not repeated here: a closed long-poll leaving
the waiter list at once, frames over 64 KiB closing with 1009, resuming with a cursor after a
transport switch or a clean restart, and re-sending a client_id WS -> WS -> HTTP.

Nothing sleeps to wait for something: clients wait for the frame or answer they expect, and
the few looks inside the server (waiter lists, connection counts, a socket's write buffer)
are polled with a deadline. Servers and processes started here are stopped by the test.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import itertools
import json
import os
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from pymongo.errors import NetworkTimeout
from tornado.httpclient import HTTPClientError
from tornado.websocket import WebSocketClosedError

from chatapp.buffer import Entry
from chatapp.errors import ChatError
from chatapp.mongod import EmbeddedMongo
from chatapp.store import Appended, to_event
from chatapp.web.ws import MAX_PENDING_OUTPUT, RoomSocket
from chatapp.writer import RoomWriter
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
    open_ws_backlog,
    parked_poll_response,
    parked_polls,
    poll,
    poll_until,
    post,
    process_alive,
    start_polling,
    texts,
    unique,
    user,
)

STORE_TIMEOUT = 2.0
# "Within a bounded time": a refusal while MongoDB is down may take the store timeout and
# some slack, never the driver's 30 s default nor forever.
OUTAGE_ANSWER_LIMIT = 3 * STORE_TIMEOUT


# -- helpers --------------------------------------------------------------------------------


async def ws_send(sock: Socket, text: str, cid: str) -> tuple[dict, list[dict[str, Any]]]:
    """Send over the socket; the acknowledged event, and the events received before the ack."""
    sock.send(text, cid)
    frames = await frames_until(sock, lambda f: f["type"] in ("ack", "error"))
    assert frames[-1]["type"] == "ack" and frames[-1]["client_id"] == cid, frames[-1]
    return frames[-1]["event"], [f["event"] for f in frames if f["type"] == "event"]


def without_join_of(events: list[dict[str, Any]], nick: str) -> list[dict[str, Any]]:
    return [e for e in events if not is_join(e, nick)]


async def raw_poll(port: int, client: Client, room: str, cursor: str):
    """A long-poll on a raw connection the test can drop: (reader, writer)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    cookies = "; ".join(f"{k}={v}" for k, v in client.cookies.items())
    writer.write(
        f"GET /api/rooms/{room}/updates?{urlencode({'cursor': cursor})} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\nCookie: {cookies}\r\n\r\n".encode()
    )
    await writer.drain()
    return reader, writer


def command_line(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode(errors="replace")


def mongod_pid(data_dir: str | Path) -> int:
    """The pid of the mongod serving ``<data_dir>/mongodb`` (from its lock file)."""
    text = (Path(data_dir) / "mongodb" / "mongod.lock").read_text().strip()
    assert text, "mongod.lock is empty: no mongod runs on this data_dir"
    return int(text)


# -- 1. MongoDB outage under a running server ---------------------------------------------------


@pytest.fixture(scope="module")
def private_mongo(tmp_path_factory):
    """A mongod of this module's own, which its tests stop, kill and freeze (never the
    session's shared one)."""
    with EmbeddedMongo(str(tmp_path_factory.mktemp("private-mongo"))) as mongo:
        yield mongo


@pytest.fixture
def outage_servers(io_loop, private_mongo, db_name):
    """``servers`` on the private mongod, which is running when the test starts."""
    private_mongo.start()
    factory = ServerFactory(private_mongo.uri, db_name)
    yield factory
    private_mongo.start()  # a test that failed mid-outage: let the servers stop cleanly
    factory.close_all(io_loop)


class Fault:
    """Take MongoDB away (``inject``) and give it back on the same port (``recover``)."""

    def __init__(self, mongo: EmbeddedMongo, kind: str) -> None:
        self.mongo, self.kind = mongo, kind
        self.frozen: int | None = None

    async def inject(self) -> None:
        if self.kind == "stop":
            await asyncio.to_thread(self.mongo.stop)
        elif self.kind == "kill":
            await asyncio.to_thread(self.mongo.kill)
        else:  # freeze: the process is there and holds its connections, but never answers
            pid = mongod_pid(self.mongo.data_dir)
            assert self.mongo.dbpath in command_line(pid), "the lock names another process"
            self.frozen = pid
            os.kill(pid, signal.SIGSTOP)

    async def recover(self) -> None:
        if self.frozen is not None:
            os.kill(self.frozen, signal.SIGCONT)
            self.frozen = None
        else:
            await asyncio.to_thread(self.mongo.start)


async def timed(coro) -> tuple[Any, float]:
    start = time.monotonic()
    result = await coro
    return result, time.monotonic() - start


@pytest.mark.parametrize("kind", ["stop", "kill", "freeze"])
@pytest.mark.gen_test(timeout=60)
async def test_mongodb_outage_refuses_sends_fast_stores_nothing_and_recovers(
    outage_servers, private_mongo, kind
):
    srv = await outage_servers.start(store_timeout=STORE_TIMEOUT, poll_timeout=40)
    alice, bob, carol = [await user(srv, n) for n in ("alice", "bob", "carol")]
    a, _ = await open_ws_backlog(alice)  # a WebSocket client
    cursor = await start_polling(bob)  # a long-polling client
    before = await post(carol, "before")
    assert texts(await events_until(a, "before")) == ["before"]
    _, cursor = await poll_until(bob, cursor, "before")
    waiting = await parked_poll_response(srv, bob, cursor)

    fault = Fault(private_mongo, kind)
    await fault.inject()
    try:
        # The first send reaches the room's writer, which MongoDB then leaves with an unknown
        # outcome; it is answered 503 and never retried, so it must never appear.
        (code, body), http_lost = await timed(carol.send(ROOM, "lost http", "h-lost"))
        assert (code, body["error"]) == (503, "store_unavailable"), body

        async def ws_refused(text: str, cid: str) -> tuple[dict, float]:
            start = time.monotonic()
            a.send(text, cid)
            frame = await a.next("error", timeout=OUTAGE_ANSWER_LIMIT + 5)
            return frame, time.monotonic() - start

        # The others at once, on both transports, with the health check alongside.
        (ws_frame, ws_lost), ((code2, body2), http_retry), ((hcode, health), health_time) = (
            await asyncio.gather(
                ws_refused("lost ws", "w-lost"),
                timed(carol.send(ROOM, "retried http", "h-retry")),
                timed(carol.get_json("/healthz")),
            )
        )
        assert (ws_frame["error"], ws_frame["client_id"]) == ("store_unavailable", "w-lost")
        assert (code2, body2["error"]) == (503, "store_unavailable"), body2
        assert (hcode, health["error"]) == (503, "store_unavailable"), health
        ws_frame2, ws_retry = await ws_refused("retried ws", "w-retry")
        assert (ws_frame2["error"], ws_frame2["client_id"]) == ("store_unavailable", "w-retry")
        for took in (http_lost, ws_lost, http_retry, health_time, ws_retry):
            assert took < OUTAGE_ANSWER_LIMIT, (http_lost, ws_lost, http_retry, health_time)

        # Connected clients stay connected: the socket is open, the long-poll still parked.
        assert not a.closed and a.conn.close_code is None
        assert not waiting.done()
        print(f"{kind}: 503 after {http_lost:.2f} s (HTTP), {ws_lost:.2f} s (WS), "
              f"/healthz 503 after {health_time:.2f} s")
    finally:
        await fault.recover()

    # Back, on the same port, with the same app: no restart.
    (hcode, health), health_time = await timed(carol.get_json("/healthz"))
    assert (hcode, health) == (200, {"status": "ok"}), (health_time, health)
    retried_http = await post(carol, "retried http", cid="h-retry")
    retried_ws, live = await ws_send(a, "retried ws", "w-retry")
    after = await post(carol, "after")

    # The socket gets exactly the retried sends and the new one. A send answered 503 and not
    # retried never shows up, with one exception no server can rule out: a commit whose reply
    # was lost (a frozen MongoDB resuming with the commit queued). Such a message may appear,
    # but then once, in the same place for every client and in history; a retry with its
    # client_id would have returned it.
    live += await events_until(a, "after")
    lost = [m for m in messages(live) if m["text"] in ("lost http", "lost ws")]
    assert len({m["text"] for m in lost}) == len(lost), lost
    assert [m for m in messages(live) if m not in lost] == [retried_http, retried_ws, after]
    if lost:
        print(f"{kind}: a commit landed after its 503 (reply lost): {[m['text'] for m in lost]}")
    code, body = await waiting  # the long-poll parked through the outage
    assert code == 200
    polled, _ = await poll_until(bob, body["events"][-1]["id"], "after")
    assert messages(body["events"] + polled) == messages(live)

    # A retry after the outage returns the one stored event, delivered once.
    assert await post(carol, "retried http", cid="h-retry") == retried_http
    assert await ws_send(a, "retried ws", "w-retry") == (retried_ws, [])
    marker = await post(carol, "marker")
    assert messages(await events_until(a, "marker")) == [marker]
    stored = messages(await history(carol))
    assert stored == [before, *messages(live), marker]


class SlowStore:
    """An EventStore stand-in whose appends take ``delays`` seconds, in turn, and honour their
    timeout as the real one does: past it, nothing is stored and the call raises."""

    def __init__(self, delays: list[float]) -> None:
        self.delays = delays
        self.rows: list[dict[str, Any]] = []

    async def append(self, room: str, docs: list[dict], timeout: float | None = None) -> list:
        delay = self.delays.pop(0) if self.delays else 0.0
        if timeout is not None and delay > timeout:
            await asyncio.sleep(timeout)
            raise NetworkTimeout("timed out")
        await asyncio.sleep(delay)
        results = []
        for doc in docs:
            row = dict(doc, room=room, seq=len(self.rows) + 1)
            self.rows.append(row)
            results.append(Appended(to_event(row), True))
        return results

    async def find_batch(self, room: str, docs: list[dict]) -> dict:
        keys = {(d["sid"], d["cid"]) for d in docs}
        return {(r["sid"], r["cid"]): to_event(r) for r in self.rows
                if (r["sid"], r["cid"]) in keys}


@pytest.mark.gen_test(timeout=30)
async def test_a_slow_mongodb_never_stores_a_send_answered_503_nor_fails_younger_ones():
    # MongoDB slow, not down: a batch outlives its first sender's time. That sender is told
    # 503 and its message must never be stored; a younger one in the same batch still has
    # time, and is stored.
    store = SlowStore([0.6, 5.0])  # the first batch takes 0.6 s, the second one 5 s
    published: list[dict[str, Any]] = []
    writer = RoomWriter("lobby", store, published.extend, timeout=1.0)  # type: ignore[arg-type]

    def doc(cid: str) -> dict[str, Any]:
        return {"type": "message", "nick": "n", "text": cid, "ts": time.time(), "sid": "s",
                "cid": cid}

    async def send_at(delay: float, cid: str) -> Any:
        await asyncio.sleep(delay)  # a timeline, not a wait: when each send arrives
        try:
            return (await writer.write(doc(cid))).event
        except ChatError as exc:
            return exc.code

    first, old, young = await asyncio.gather(
        send_at(0.0, "first"),  # stored at 0.6 s
        send_at(0.1, "old"),  # queued behind it; batched with "young" at 0.6 s
        send_at(0.5, "young"),  # the batch has until 1.1 s ("old"'s deadline), then fails
    )
    assert old == "store_unavailable"
    assert first["text"] == "first" and young["text"] == "young"  # young: retried, alone
    assert [r["cid"] for r in store.rows] == ["first", "young"]  # "old" never stored
    assert published == [first, young]


class LateCommitStore(SlowStore):
    """A MongoDB that leaves the first append hanging past its time, then applies it anyway,
    after the writer has read back "not stored" (a frozen server resuming its queue)."""

    def __init__(self) -> None:
        super().__init__([])
        self.queued: list[dict] = []

    async def append(self, room: str, docs: list[dict], timeout: float | None = None) -> list:
        if not self.queued and not self.rows:
            self.queued = [dict(d, room=room) for d in docs]
            await asyncio.sleep(timeout or 0)
            raise NetworkTimeout("timed out")
        return await super().append(room, docs, timeout)

    def resume(self) -> None:
        for doc in self.queued:
            self.rows.append(dict(doc, seq=len(self.rows) + 1))

    async def after(self, room: str, seq: int, limit: int) -> list[dict]:
        return [to_event(r) for r in self.rows if r["seq"] > seq][:limit]


@pytest.mark.gen_test(timeout=30)
async def test_a_commit_landing_after_its_batch_gave_up_is_delivered_before_the_next_event():
    store = LateCommitStore()
    published: list[dict[str, Any]] = []
    writer = RoomWriter(
        "lobby", store, published.extend, timeout=0.3,  # type: ignore[arg-type]
        last_published=lambda: published[-1]["id"] if published else "",
    )

    def doc(cid: str) -> dict[str, Any]:
        return {"type": "message", "nick": "n", "text": cid, "ts": time.time(), "sid": "s",
                "cid": cid}

    with pytest.raises(ChatError) as refused:
        await writer.write(doc("late"))
    assert refused.value.code == "store_unavailable"
    assert published == []  # read back: not stored (yet)
    store.resume()  # ...and then MongoDB applies the commit it had queued

    following = (await writer.write(doc("next"))).event
    # Clients would jump over "late" (id 1) on receiving "next" (id 2): it goes first.
    assert [e["text"] for e in published] == ["late", "next"]
    assert [e["id"] for e in published] == ["000000000001", following["id"]]


# -- 2. the app killed mid-stream (kill -9) ---------------------------------------------------


@pytest.mark.gen_test(timeout=90)
async def test_kill_9_mid_stream_loses_no_acknowledged_event(mongo_uri, tmp_path):
    async with running(AppProcess(tmp_path / "app", mongo_uri)) as app:
        await _kill_9_mid_stream(app)


async def _kill_9_mid_stream(app: AppProcess) -> None:
    # The real program's database is shared by every run: unique rooms and nicknames.
    room = unique("crash")
    http_clients = [await user(app, unique(f"http{i}")) for i in range(2)]
    ws_clients = [await user(app, unique(f"ws{i}")) for i in range(2)]
    reader = await user(app, unique("reader"))
    r, _ = await open_ws_backlog(reader, room)
    sockets = [(await open_ws_backlog(c, room))[0] for c in ws_clients]

    tried: dict[str, str] = {}  # client_id -> text, every send attempted
    acked: dict[str, dict[str, Any]] = {}  # client_id -> the event acknowledged
    enough = asyncio.Event()
    target = 150

    def record(cid: str, event: dict[str, Any]) -> None:
        assert event["text"] == tried[cid]
        acked[cid] = event
        if len(acked) >= target:
            enough.set()

    async def http_sender(client: Client, name: str) -> None:
        for i in range(10_000):
            cid = f"{name}-{i}"
            tried[cid] = f"{name} {i}"
            try:
                code, body = await client.send(room, tried[cid], cid)
            except (OSError, HTTPClientError):  # the server is gone: refused, reset, closed
                return
            assert code == 200, (code, body)
            record(cid, body["event"])

    async def ws_sender(sock: Socket, name: str, window: int = 8) -> None:
        count = itertools.count()

        def send_next() -> None:
            cid = f"{name}-{next(count)}"
            tried[cid] = cid.replace("-", " ")
            frame = json.dumps({"type": "send", "text": tried[cid], "client_id": cid})
            # Written in the background; if the crash cuts it off, the read below says so.
            sock.conn.write_message(frame).add_done_callback(lambda f: f.exception())

        for _ in range(window):
            send_next()
        for _ in range(10_000):
            message = await sock.conn.read_message()
            if message is None:
                return
            frame = json.loads(message)
            if frame["type"] == "ack":
                record(frame["client_id"], frame["event"])
                try:
                    send_next()
                except WebSocketClosedError:  # the server is gone
                    return
            assert frame["type"] != "error", frame

    seen: list[dict[str, Any]] = []

    async def read_events() -> None:
        for _ in range(100_000):
            message = await r.conn.read_message()
            if message is None:
                return
            frame = json.loads(message)
            if frame["type"] == "event":
                seen.append(frame["event"])

    tasks = [asyncio.ensure_future(http_sender(c, f"h{i}-{j}"))
             for i, c in enumerate(http_clients) for j in range(2)]
    tasks += [asyncio.ensure_future(ws_sender(s, f"w{i}")) for i, s in enumerate(sockets)]
    tasks.append(asyncio.ensure_future(read_events()))
    await asyncio.wait_for(enough.wait(), WAIT_SECONDS * 3)
    app.kill()  # SIGKILL, mid-stream: sends are in flight on every connection
    done, pending = await asyncio.wait(tasks, timeout=WAIT_SECONDS)
    assert not pending, "a client did not notice the server was gone"
    for task in done:
        task.result()
    acked_at_kill = dict(acked)
    unacked = {cid: text for cid, text in tried.items() if cid not in acked}

    await asyncio.to_thread(app.start)  # same port, same data_dir (cookie secret), same db
    stored = await history(reader, room)
    assert_increasing(stored)  # in id order, no id twice
    by_text: dict[str, list[dict[str, Any]]] = {}
    for event in messages(stored):
        by_text.setdefault(event["text"], []).append(event)
    assert all(len(v) == 1 for v in by_text.values()), "a message was stored twice"
    assert set(by_text) <= set(tried.values()), "a message nobody sent"
    missing = [cid for cid, event in acked_at_kill.items() if event not in stored]
    assert not missing, f"acknowledged but lost in the crash: {missing}"
    unacked_stored = [cid for cid, text in unacked.items() if text in by_text]
    print(f"kill -9: {len(acked_at_kill)} acknowledged, all found once in history; "
          f"{len(unacked)} in flight unacknowledged, {len(unacked_stored)} of them stored")

    # The reader resumes from its last id exactly, on both transports.
    cursor = seen[-1]["id"]
    expected = [e for e in stored if e["id"] > cursor]
    events, _ = await poll(reader, cursor, room)
    assert without_join_of(events, reader.nick) == expected  # type: ignore[attr-defined]
    r2, backlog = await open_ws_backlog(reader, room, cursor)
    assert without_join_of(backlog, reader.nick) == expected  # type: ignore[attr-defined]

    # Ids after the restart are greater than every id before it.
    last_before = stored[-1]["id"]
    fresh = await post(http_clients[0], "after the crash", room)
    assert fresh["id"] > last_before

    # Re-sending every client_id after the restart: an acknowledged one returns its event, an
    # unacknowledged one stored before the crash its stored event; nothing is stored twice.
    resend = list(unacked.items()) + [(cid, tried[cid]) for cid in list(acked_at_kill)[:10]]
    for cid, text in resend:
        name = cid.split("-")[0]
        sender = (http_clients + ws_clients)[
            {"h0": 0, "h1": 1, "w0": 2, "w1": 3}[name]
        ]
        event = await post(sender, text, room, cid)
        if cid in acked_at_kill:
            assert event == acked_at_kill[cid]
        elif text in by_text:
            assert event == by_text[text][0]
    after = await history(reader, room)
    assert after[: len(stored)] == stored
    assert len({e["text"] for e in messages(after)}) == len(messages(after))
    r2.close()


# -- 3. a WebSocket client that stops reading -------------------------------------------------


def text(i: int) -> str:
    return f"{i:05d} " + "x" * 1994  # 2000 characters: the longest message allowed


class RawSocket:
    """A WebSocket client on a bare socket with a tiny receive buffer: it completes the
    handshake, then reads only when told to, so the server's writes to it pile up."""

    def __init__(self, sock: socket.socket, data: bytes) -> None:
        self.sock = sock
        self.data = data  # received but not yet parsed

    @classmethod
    async def connect(cls, port: int, path: str, cookies: dict[str, str]) -> RawSocket:
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        # Before connect(), so the window the kernel offers the server stays this small.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        cookie = "; ".join(f"{k}={v}" for k, v in cookies.items())
        await loop.sock_sendall(sock, (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\nCookie: {cookie}\r\n\r\n"
        ).encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 4096), WAIT_SECONDS)
            assert chunk, "closed during the handshake"
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(sock, rest)

    async def read_to_end(self, timeout: float = WAIT_SECONDS) -> bool:
        """Read everything until the server closes the connection; True if it did."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            try:
                chunk = await asyncio.wait_for(
                    loop.sock_recv(self.sock, 65536), deadline - loop.time()
                )
            except ConnectionResetError:
                return True
            except TimeoutError:
                return False
            if not chunk:
                return True
            self.data += chunk
        return False

    def frames(self) -> tuple[list[dict[str, Any]], int | None]:
        """The complete text frames received (decoded), and the close code if a close frame
        came. A frame cut off by the connection's end is left out."""
        frames, close_code, data = [], None, self.data
        while len(data) >= 2:
            opcode, length, start = data[0] & 0x0F, data[1] & 0x7F, 2
            if length == 126:
                (length,), start = struct.unpack("!H", data[2:4]), 4
            elif length == 127:
                (length,), start = struct.unpack("!Q", data[2:10]), 10
            if len(data) < start + length:
                break
            payload, data = data[start:start + length], data[start + length:]
            if opcode == 0x1:
                frames.append(json.loads(payload))
            elif opcode == 0x8:
                close_code = struct.unpack("!H", payload[:2])[0] if payload else 1005
        return frames, close_code

    def close(self) -> None:
        self.sock.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_reader_that_stops_reading_is_closed_and_costs_bounded_memory(servers):
    srv = await servers.start(rate_limit=0)
    sender, fast1, fast2, slow = [
        await user(srv, n) for n in ("sender", "fast1", "fast2", "slow")
    ]
    f1, stream1 = await open_ws_backlog(fast1)  # the first one here: it sees the whole room
    f2, _ = await open_ws_backlog(fast2)
    s, _ = await open_ws_backlog(sender)
    raw = await RawSocket.connect(srv.port, f"/api/rooms/{ROOM}/ws", slow.cookies)
    buffer = srv.chat.loaded_room(ROOM)
    await eventually(
        lambda: any(isinstance(w, RoomSocket) and w.session.nick == "slow"
                    for w in buffer.waiting()),
        "the slow socket to open",
    )
    handler = next(w for w in buffer.waiting()
                   if isinstance(w, RoomSocket) and w.session.nick == "slow")
    conn = handler.ws_connection

    # The sender reads its own acks and events all along: a sender that did not would be a
    # slow reader too, and be closed the same way.
    acks: list[dict[str, Any]] = []

    async def drain_sender() -> None:
        while len(acks) < sent_total:
            frame = await s.next()
            if frame["type"] == "ack":
                acks.append(frame)
            assert frame["type"] != "error", frame

    sent_total = 10_000
    draining = asyncio.ensure_future(drain_sender())
    got1: list[dict[str, Any]] = []
    got2: list[dict[str, Any]] = []

    async def send_round(first: int, count: int) -> float:
        """Send ``count`` messages; how long until both fast readers had every one."""
        start = time.monotonic()
        for i in range(first, first + count):
            s.send(text(i), f"c{i}")
        last = text(first + count - 1)
        events1, events2 = await asyncio.gather(events_until(f1, last), events_until(f2, last))
        got1.extend(events1)
        got2.extend(messages(events2))
        return time.monotonic() - start

    # Send in rounds until the server gives up on the slow reader; the fast ones must have
    # every message of a round before the next one starts.
    sent, peak, slowest_round, batch = 0, 0, 0.0, 50
    while not conn.is_closing():
        assert sent < 3000, f"the slow reader was never closed ({peak} bytes pending)"
        slowest_round = max(slowest_round, await send_round(sent, batch))
        sent += batch
        if not conn.stream.closed():
            peak = max(peak, len(conn.stream._write_buffer))
    closed_after = sent
    # Gone from the room: no longer woken, no longer counted as a connection.
    dropped_in = await eventually(lambda: handler not in buffer.waiting(), "the slow socket dropped")
    slowest_round = max(slowest_round, await send_round(sent, batch))  # the room goes on
    sent += batch
    sent_total = sent
    await asyncio.wait_for(draining, WAIT_SECONDS)
    assert [a["client_id"] for a in acks] == [f"c{i}" for i in range(sent)]

    expected = [text(i) for i in range(sent)]
    assert texts(got1) == expected and texts(got2) == expected  # every one, in order, once
    assert messages(got1) == got2
    # What it had not taken reached the cap, and no further than one more write (a published
    # batch: at most one round here) past it.
    largest_write = batch * len(Entry({"id": "0" * 12, "room": ROOM, "type": "message",
                                       "nick": "sender", "ts": time.time(),
                                       "text": text(0)}).wire)
    assert MAX_PENDING_OUTPUT // 2 < peak <= MAX_PENDING_OUTPUT + largest_write

    # The slow client, reading again, gets what fitted, then the close (or the end).
    assert await raw.read_to_end(), "the server never closed the slow socket"
    raw.close()
    frames, close_code = raw.frames()
    assert close_code in (1013, None), close_code
    received = [f["event"] for f in frames if f["type"] == "event"]
    everything = stream1 + got1
    cursor = received[-1]["id"]
    assert received == [e for e in everything if e["id"] <= cursor]  # no gap, no repeat
    print(f"slow reader: closed ({close_code}) after {closed_after} messages of 2000 chars, "
          f"left the waiters in {dropped_in:.2f} s; write buffer peaked at {peak} bytes "
          f"(cap {MAX_PENDING_OUTPUT}); it had read {len(messages(received))}; slowest round "
          f"for the fast readers {slowest_round:.2f} s")

    # Reconnecting with its cursor, it gets exactly what it missed, then live ones.
    again, backlog = await open_ws_backlog(slow, cursor=cursor)
    assert backlog == [e for e in everything if e["id"] > cursor]
    marker = await post(sender, "marker")
    assert await again.events(1) == [marker]


@pytest.mark.gen_test(timeout=60)
async def test_a_burst_larger_than_the_output_cap_reaches_readers_that_keep_up(servers):
    # 600 of the longest messages at once: the room's writer stores and publishes them in
    # batches of up to 500, each over 1 MiB, more than a socket may have unsent. A reader that
    # reads is not a slow reader, whatever the size of one delivery.
    srv = await servers.start(rate_limit=0)
    sender, reader, poller = [await user(srv, n) for n in ("sender", "reader", "poller")]
    r, _ = await open_ws_backlog(reader)
    cursor = await start_polling(poller)
    s, _ = await open_ws_backlog(sender)
    count = 600
    acks: list[dict[str, Any]] = []

    async def drain_sender() -> None:  # the sender reads its acks and echoes meanwhile
        while len(acks) < count:
            frame = await s.next()
            assert frame["type"] != "error", frame
            if frame["type"] == "ack":
                acks.append(frame)

    async def poll_all(cursor: str) -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []
        while len(messages(got)) < count:
            events, cursor = await poll(poller, cursor)
            got += events
        return got

    polling = asyncio.ensure_future(poll_all(cursor))
    draining = asyncio.ensure_future(drain_sender())
    for i in range(count):
        s.send(text(i), f"c{i}")
    received = await events_until(r, text(count - 1))
    await asyncio.wait_for(draining, WAIT_SECONDS)
    polled = await asyncio.wait_for(polling, WAIT_SECONDS)

    expected = [text(i) for i in range(count)]
    assert texts(received) == expected and texts(polled) == expected
    assert messages(received) == messages(polled) == [a["event"] for a in acks]
    assert not r.closed and not s.closed


# -- 5. limits: connections per session and per address, the send rate -------------------------


def open_connections(srv: ChatServer) -> int:
    return srv.chat.limits.open_connections()


async def refused_socket(client: Client, room: str = ROOM) -> tuple[dict[str, Any], int | None]:
    """Open a socket the server refuses after the upgrade: its only frame and close code."""
    sock = await client.ws(room)
    frame = await sock.next()
    return frame, await sock.closed_with()


@pytest.mark.gen_test(timeout=30)
async def test_connections_past_the_per_session_cap_are_refused_until_one_closes(servers):
    srv = await servers.start(max_connections_per_session=2)
    alice, bob = await user(srv, "alice"), await user(srv, "bob")
    cursor = await start_polling(bob)
    b, _ = await open_ws_backlog(bob)
    a1, _ = await open_ws_backlog(alice)
    a2, _ = await open_ws_backlog(alice)

    # A third WebSocket: the upgrade happens, then an error frame and "try again later".
    frame, code = await refused_socket(alice)
    assert (frame["type"], frame["error"], code) == ("error", "too_many_connections", 1013)
    # A long-poll is a connection too.
    code, body = await alice.poll(ROOM, cursor)
    assert (code, body["error"]) == (429, "too_many_connections")
    code, _ = await alice.get_json(f"/api/rooms/{ROOM}/history")  # not a connection: served
    assert code == 200

    # One closes: the next one is accepted, and works.
    a1.close()
    await eventually(lambda: open_connections(srv) == 2, "the closed socket released")
    a3, _ = await open_ws_backlog(alice)
    a3.send("from the third", "c3")
    assert texts(await events_until(b, "from the third")) == ["from the third"]

    # Parked long-polls count while parked, and stop counting the moment their client leaves.
    a2.close()
    a3.close()
    await eventually(lambda: open_connections(srv) == 1, "the sockets released")
    _, cursor = await poll(alice, None)
    first = await parked_poll_response(srv, alice, cursor)
    _, writer = await raw_poll(srv.port, alice, ROOM, cursor)
    await eventually(lambda: parked_polls(srv) == 2, "the second poll parked")
    code, body = await alice.poll(ROOM, cursor)
    assert (code, body["error"]) == (429, "too_many_connections")
    writer.close()  # the second poll's client goes away
    await eventually(lambda: parked_polls(srv) == 1, "the dropped poll released")
    third = await parked_poll_response(srv, alice, cursor)
    event = await post(bob, "wake up")
    for task in (first, third):
        code, body = await task
        assert (code, body["events"]) == (200, [event])


@pytest.mark.gen_test(timeout=30)
async def test_connections_past_the_per_address_cap_are_refused_until_one_closes(servers):
    srv = await servers.start(max_connections_per_ip=2)
    alice, bob, carol = [await user(srv, n) for n in ("alice", "bob", "carol")]
    a, _ = await open_ws_backlog(alice)
    b, _ = await open_ws_backlog(bob)

    # Another session, the same address (127.0.0.1): refused on both transports.
    frame, code = await refused_socket(carol)
    assert (frame["type"], frame["error"], code) == ("error", "too_many_connections", 1013)
    code, body = await carol.poll(ROOM, None)
    assert (code, body["error"]) == (429, "too_many_connections")

    a.close()
    await eventually(lambda: open_connections(srv) == 1, "alice's socket released")
    c, _ = await open_ws_backlog(carol)
    c.send("in at last", "c1")
    assert texts(await events_until(b, "in at last")) == ["in at last"]


@pytest.mark.gen_test(timeout=30)
async def test_a_websocket_flood_gets_rate_limited_frames_and_stores_only_the_burst(servers):
    srv = await servers.start(rate_limit=2)  # 2 a second, bursts of 4
    alice, bob = await user(srv, "alice"), await user(srv, "bob")
    a, _ = await open_ws_backlog(alice)
    b, _ = await open_ws_backlog(bob)
    flood = 12
    for i in range(flood):
        a.send(f"flood {i}", f"f{i}")
    answers = {}
    while len(answers) < flood:
        frame = await a.next()
        if frame["type"] in ("ack", "error"):
            answers[frame["client_id"]] = frame
    accepted = [i for i in range(flood) if answers[f"f{i}"]["type"] == "ack"]
    # The burst, in the order sent (a refill of one token if the machine is slow), no more.
    assert accepted == list(range(len(accepted))) and 4 <= len(accepted) <= 5, answers
    for i in range(len(accepted), flood):
        assert answers[f"f{i}"]["error"] == "rate_limited", answers[f"f{i}"]
    assert not a.closed  # refused, not dropped

    marker = await post(bob, "marker")  # bob's own rate is his own
    received = messages(await events_until(b, "marker"))
    assert received == [answers[f"f{i}"]["event"] for i in accepted] + [marker]
    assert texts(await history(bob)) == [f"flood {i}" for i in accepted] + ["marker"]


# -- 6. long-poll timeouts spread out ---------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_parked_long_polls_time_out_spread_over_the_last_tenth_of_poll_timeout(servers):
    # 2 s, so the spread (1.8-2.0 s) is wider than a pause of this process's event loop (the
    # server and the clients share it, and a full garbage collection late in a long test run
    # has taken ~0.1 s): a pause delays every timer due during it to the same instant.
    srv = await servers.start(poll_timeout=2)
    clients = [await user(srv, f"p{i}") for i in range(4)]
    for client in clients:
        await poll(client, None)  # present in the room: its join is queued now
    cursor = (await post(clients[0], "settled"))["id"]  # stored after every join

    async def timed_poll(client: Client) -> tuple[float, float]:
        start = time.monotonic()
        events, new_cursor = await poll(client, cursor)
        assert (events, new_cursor) == ([], cursor)  # a timeout, nothing new
        end = time.monotonic()
        return end - start, end

    gc.collect()  # now rather than while the polls are parked
    results = await asyncio.gather(*[timed_poll(c) for c in clients for _ in range(5)])
    waited = sorted(w for w, _ in results)
    ends = [e for _, e in results]
    spread = max(ends) - min(ends)
    print(f"20 polls with poll_timeout=2 waited {waited[0]:.3f}..{waited[-1]:.3f} s; "
          f"answers spread over {spread:.3f} s")
    assert all(1.8 <= w <= 2.0 + 0.5 for w in waited), waited
    assert waited[0] < 1.95 and spread > 0.02, waited  # not all at the full timeout, at once


# -- 7. SIGTERM, with the embedded MongoDB -----------------------------------------------------


@pytest.mark.gen_test(timeout=90)
async def test_sigterm_closes_going_away_answers_polls_keeps_acked_and_stops_mongod(tmp_path):
    # One connection per session: a parked poll then shows from outside, as a refused probe.
    async with running(AppProcess(tmp_path / "app", max_connections_per_session=1)) as app:
        await _sigterm(app)


async def _sigterm(app: AppProcess) -> None:
    alice, bob = await user(app, "alice"), await user(app, "bob")
    a, _ = await open_ws_backlog(alice)
    first, _ = await ws_send(a, "acknowledged before", "m1")
    # Bob long-polls a room where nothing happens: only the shutdown can answer him.
    cursor = await start_polling(bob, "quiet")
    await poll(bob, None, "probe")  # the probe's room is loaded: a probe answers at once
    waiting = asyncio.ensure_future(bob.poll("quiet", cursor))
    for _ in range(200):  # until bob's one connection is taken: his poll is parked
        if waiting.done():  # refused: a probe held the connection at that moment
            assert waiting.result()[0] == 429, waiting.result()
            waiting = asyncio.ensure_future(bob.poll("quiet", cursor))
        code, _ = await bob.poll("probe", None)
        if code == 429:
            break
        assert code == 200
    else:
        raise AssertionError("bob's poll never parked")
    mongod = mongod_pid(app.data_dir)
    assert process_alive(mongod)

    a.send("sent just before", "m2")  # not waiting for its ack
    start = time.monotonic()
    app.terminate()
    frames = []
    while not a.closed:
        message = await asyncio.wait_for(a.conn.read_message(), WAIT_SECONDS)
        if message is None:
            a.closed = True
        else:
            frames.append(json.loads(message))
    assert a.conn.close_code == 1001, (a.conn.close_code, frames)
    # Answered "nothing new, ask again", not dropped.
    code, body = await asyncio.wait_for(waiting, WAIT_SECONDS)
    assert (code, body) == (200, {"events": [], "cursor": cursor})
    try:
        status = await asyncio.to_thread(app.wait, 15)
    except subprocess.TimeoutExpired:
        raise AssertionError("chatapp still running 15 s after SIGTERM") from None
    took = time.monotonic() - start
    assert status == 0 and took < 10, (status, took, app.log_tail())
    assert not process_alive(mongod), "the embedded mongod outlived chatapp"
    acks = [f for f in frames if f["type"] == "ack"]
    print(f"SIGTERM: exit status {status} after {took:.2f} s; socket closed 1001; parked poll "
          f"answered {body}; 'sent just before' acknowledged: {bool(acks)}; mongod {mongod} gone")

    await asyncio.to_thread(app.start)  # same data_dir: the same embedded database
    stored = messages(await history(alice))
    assert stored[0] == first
    if acks:
        assert stored == [first, acks[0]["event"]]
    # Either way, a retry with the same client_id gives the one event.
    a2, _ = await open_ws_backlog(alice)
    second, _ = await ws_send(a2, "sent just before", "m2")
    assert messages(await history(alice)) == [first, second]
    if acks:
        assert second == acks[0]["event"]
    a2.close()
    mongod = mongod_pid(app.data_dir)
    app.terminate()
    assert await asyncio.to_thread(app.wait, 15) == 0
    assert not process_alive(mongod)


# -- 8. the same client_id across transports and restarts --------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_a_client_id_is_one_event_across_transports_and_an_app_restart(servers):
    srv = await servers.start()
    alice, watcher = await user(srv, "alice"), await user(srv, "watcher")
    w, _ = await open_ws_backlog(watcher)
    a, _ = await open_ws_backlog(alice)

    # HTTP first, then the same client_id over the WebSocket; and the other way round.
    http_first = await post(alice, "http first", cid="cid-h")
    again, seen = await ws_send(a, "http first", "cid-h")
    assert again == http_first
    ws_first, more = await ws_send(a, "ws first", "cid-w")
    assert await post(alice, "ws first", cid="cid-w") == ws_first
    marker1 = await post(alice, "marker 1")
    # Delivered once each, to the watcher and to the sender's own socket.
    assert messages(await events_until(w, "marker 1")) == [http_first, ws_first, marker1]
    seen += more + await events_until(a, "marker 1")
    assert messages(seen) == [http_first, ws_first, marker1]

    await srv.stop()
    await servers.start(port=srv.port)

    # After the restart, both transports still return the first event and store nothing.
    assert await post(alice, "http first", cid="cid-h") == http_first
    a2, _ = await open_ws_backlog(alice)
    assert (await ws_send(a2, "ws first", "cid-w"))[0] == ws_first
    assert (await ws_send(a2, "http first", "cid-h"))[0] == http_first
    w2, _ = await open_ws_backlog(watcher, cursor=marker1["id"])
    marker2 = await post(alice, "marker 2")
    assert messages(await events_until(w2, "marker 2")) == [marker2]
    assert messages(await history(alice)) == [http_first, ws_first, marker1, marker2]
