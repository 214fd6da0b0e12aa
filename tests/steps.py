"""What a user does and sees, in test form: shared by the delivery, fault and cluster tests.

Built on ``tests.harness`` (``ChatServer``, ``Client``, ``Socket``): a user joins, posts,
opens a WebSocket and reads what it is sent, long-polls; and the few looks inside a server
that no client can be told about (parked long-polls) are waited for with a deadline.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import time
import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from chatapp.chat import PollWaiter
from tests.harness import WAIT_SECONDS, ChatServer, Client, Socket

if TYPE_CHECKING:
    from tests.procs import AppProcess

# The room every helper talks to unless told otherwise (the same in every test module).
ROOM = "lobby"


# -- names ------------------------------------------------------------------------------------


def new_cid() -> str:
    return uuid.uuid4().hex


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


# -- a user, over HTTP --------------------------------------------------------------------------


async def user(base: ChatServer | AppProcess | str, nick: str) -> Client:
    """A client holding a session with ``nick`` (remembered as ``client.nick``), on a server
    (in-process or a process) or a base URL."""
    client = await Client(base if isinstance(base, str) else base.url).join(nick)
    client.nick = nick  # type: ignore[attr-defined]
    return client


async def post(
    client: Client, text: str, room: str = ROOM, cid: str | None = None
) -> dict[str, Any]:
    """Send over HTTP (with ``cid`` as the client_id, or a new one); the stored event."""
    code, body = await client.send(room, text, cid or new_cid())
    assert code == 200, (code, body)
    return body["event"]


async def history(client: Client, room: str = ROOM) -> list[dict[str, Any]]:
    """Every event of the room, oldest first, page by page."""
    events: list[dict[str, Any]] = []
    before = ""
    for _ in range(1000):
        query = urlencode({"limit": 200, **({"before": before} if before else {})})
        code, page = await client.get_json(f"/api/rooms/{room}/history?{query}")
        assert code == 200, (code, page)
        events[:0] = page["events"]
        if not page["has_more"] or not page["events"]:
            return events
        before = page["events"][0]["id"]
    raise AssertionError("history never ended")


# -- a user, over a WebSocket -----------------------------------------------------------------


async def frames_until(sock: Socket, *wanted) -> list[dict[str, Any]]:
    """Every frame the socket receives until each of the ``wanted`` predicates has matched
    one (in any order); with one predicate, up to and including the first frame matching it."""
    frames: list[dict[str, Any]] = []
    missing = list(wanted)
    while missing:
        frames.append(await sock.next())
        missing = [pred for pred in missing if not pred(frames[-1])]
    return frames


def is_message(frame: dict[str, Any], text: str) -> bool:
    return frame["type"] == "event" and frame["event"].get("text") == text


async def events_until(sock: Socket, text: str) -> list[dict[str, Any]]:
    """Every event the socket receives, up to and including the message ``text``."""
    frames = await frames_until(sock, lambda f: is_message(f, text))
    return [f["event"] for f in frames if f["type"] == "event"]


async def open_ws(
    client: Client, room: str = ROOM, cursor: str | None = None, origin: str | None = None
) -> tuple[Socket, list[dict[str, Any]], list[str]]:
    """Open a WebSocket and read what it is sent on opening: the events up to the first
    ``presence`` frame (the backlog), and that frame's nicks."""
    sock = await client.ws(room, cursor, origin=origin)
    frames = await frames_until(sock, lambda f: f["type"] == "presence")
    return sock, [f["event"] for f in frames if f["type"] == "event"], frames[-1]["nicks"]


async def open_ws_backlog(
    client: Client, room: str = ROOM, cursor: str | None = None
) -> tuple[Socket, list[dict[str, Any]]]:
    """``open_ws`` without the nicks: the socket and the events it was sent before its first
    ``presence`` frame."""
    sock, backlog, _ = await open_ws(client, room, cursor)
    return sock, backlog


# -- what a user sees ---------------------------------------------------------------------------


def messages(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == "message"]


def texts(events: list[dict[str, Any]]) -> list[str]:
    return [e["text"] for e in messages(events)]


def is_join(event: dict[str, Any], nick: str) -> bool:
    return event["type"] == "join" and event["nick"] == nick


def assert_increasing(events: list[dict[str, Any]]) -> None:
    ids = [e["id"] for e in events]
    assert all(a < b for a, b in itertools.pairwise(ids)), ids


# -- a user, long-polling -----------------------------------------------------------------------


async def poll(
    client: Client, cursor: str | None = None, room: str = ROOM
) -> tuple[list[dict[str, Any]], str]:
    code, body = await client.poll(room, cursor)
    assert code == 200, (code, body)
    return body["events"], body["cursor"]


async def poll_until(
    client: Client, cursor: str | None, text: str, room: str = ROOM
) -> tuple[list[dict[str, Any]], str]:
    """Long-poll from ``cursor`` until the message ``text`` has arrived; every event
    received, and the last cursor."""
    events: list[dict[str, Any]] = []
    while not any(e.get("text") == text for e in events):
        batch, cursor = await poll(client, cursor, room)
        events += batch
    return events, cursor  # type: ignore[return-value]


async def start_polling(client: Client, room: str = ROOM) -> str:
    """Become a long-polling client of ``room``; the cursor once its own join has arrived."""
    events, cursor = await poll(client, None, room)
    while not any(is_join(e, client.nick) for e in events):  # type: ignore[attr-defined]
        events, cursor = await poll(client, cursor, room)
    return cursor


# -- the looks inside a server no client is told about ------------------------------------------


async def eventually(cond, what: str, timeout: float = WAIT_SECONDS) -> float:
    """Wait, bounded in time, for a condition no client can be told about; how long it took.

    ``cond`` is a plain function, or an ``async`` one (asked less often: it usually asks a
    server or the system something)."""
    start = time.monotonic()
    while True:
        result = cond()
        asked_async = inspect.isawaitable(result)
        if asked_async:
            result = await result
        if result:
            return time.monotonic() - start
        assert time.monotonic() - start < timeout, f"timed out waiting for {what}"
        await asyncio.sleep(0.05 if asked_async else 0.01)


def parked_polls(srv: ChatServer, room: str = ROOM) -> int:
    buffer = srv.chat.loaded_room(room)
    return 0 if buffer is None else sum(isinstance(w, PollWaiter) for w in buffer.waiting())


async def _parked(srv: ChatServer, room: str, request) -> asyncio.Future:
    before = parked_polls(srv, room)
    task = asyncio.ensure_future(request)
    await eventually(lambda: parked_polls(srv, room) > before or task.done(), "a parked poll")
    assert not task.done(), f"the poll answered at once: {task.result()}"
    return task


async def parked_poll(srv: ChatServer, client: Client, cursor: str, room: str = ROOM):
    """Start a long-poll from ``cursor`` and return (as a task) once the server has parked it;
    the task's answer is ``poll``'s: (events, cursor), the poll having been answered 200."""
    return await _parked(srv, room, poll(client, cursor, room))


async def parked_poll_response(srv: ChatServer, client: Client, cursor: str, room: str = ROOM):
    """As ``parked_poll``, but the task's answer is the raw (code, body), whatever the code."""
    return await _parked(srv, room, client.poll(room, cursor))


# -- processes ----------------------------------------------------------------------------------


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False
