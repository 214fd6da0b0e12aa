"""One failover scenario as users live it: senders that retry, a WebSocket reader, and what
came of it (acknowledged, lost, duplicated, seconds without a primary, seconds until sends
succeed again). Used by ``tests/test_failover.py`` and ``bench/failover.py``.

A scenario runs an in-process chat server (``tests.harness.ChatServer``) on a
``tests.replset.ReplicaSet``; ``SENDERS`` clients each send a message every
``SEND_INTERVAL`` and retry a refused one with the same client_id (as the page does), one
client reads the room over a WebSocket and reconnects with its cursor if it is closed. The
fault is injected once some messages are acknowledged; the load stops once enough are
acknowledged after a new primary was elected; the set is healed; then ``Outcome`` holds what
``/history`` and the reader got.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tornado.httpclient import HTTPClientError
from tornado.websocket import WebSocketClosedError

from chatapp.rules import parse_id
from tests.harness import ChatServer, Socket
from tests.replset import PrimaryWatch, ReplicaSet
from tests.steps import eventually, history, open_ws, user

# Four senders, one message every 0.1 s each: about 40 sends a second into one room, enough
# that every failover catches batches in flight, few enough for a 2-core machine.
SENDERS = 4
SEND_INTERVAL = 0.1
# A refused send is retried after this pause, with the same client_id (the page backs off).
RETRY_PAUSE = 0.2
# A message still refused after this long is given up (and counted as not acknowledged).
GIVE_UP_SECONDS = 60.0
# Acknowledged messages before the fault, and after the new primary, before the load stops.
ACKS_BEFORE, ACKS_AFTER = 20, 40
# The longest any phase may take before the scenario fails: elections take seconds.
PHASE_SECONDS = 60.0
# How long a frozen primary stays frozen, and a lone primary keeps taking writes it cannot
# replicate before it is killed too: the faults themselves, not waits.
FREEZE_SECONDS = 20.0
LONE_PRIMARY_SECONDS = 3.0
# How long a send may take: past --mongo_timeout and its grace, the server has answered.
REQUEST_SECONDS = 30.0

SCENARIOS = ("kill", "step_down", "freeze", "majority")


@dataclass
class Attempt:
    start: float
    end: float
    ok: bool


@dataclass
class Outcome:
    scenario: str
    acknowledged: int = 0
    lost: list[str] = field(default_factory=list)  # acknowledged, not in /history
    duplicated: list[str] = field(default_factory=list)  # in /history more than once
    wrong_id: list[str] = field(default_factory=list)  # acknowledged with another id
    id_gaps: list[tuple[int, int]] = field(default_factory=list)  # consecutive ids not n, n+1
    reader_ok: bool = False  # the reader got exactly /history's events after its cursor
    reader_detail: str = ""
    without_primary: float = 0.0  # seconds without a primary able to commit
    refused_for: float = 0.0  # from the first refused send until sends are accepted for good
    back_after_primary: float | None = None  # accepted for good, seconds after the new primary
    refusals: int = 0
    gave_up: list[str] = field(default_factory=list)  # refused until the sender gave up
    longest_answer: float = 0.0  # the slowest answer to one send, accepted or refused

    def row(self) -> str:
        back = "-" if self.back_after_primary is None else f"{self.back_after_primary:.1f}"
        return (f"| {self.scenario} | {self.acknowledged} | {len(self.lost)} | "
                f"{len(self.duplicated)} | {self.without_primary:.1f} | {self.refused_for:.1f} "
                f"| {back} | {'yes' if self.reader_ok else 'NO'} |")


TABLE_HEADER = (
    "| scenario | acknowledged | lost | duplicated | s without a primary | s sends refused "
    "| s until sends succeed after the new primary | reader = history |\n"
    "| --- | --- | --- | --- | --- | --- | --- | --- |"
)


class Sender:
    """One client sending numbered messages; each refused one retried with its client_id."""

    def __init__(self, client: Any, room: str, name: str) -> None:
        self.client, self.room, self.name = client, room, name
        self.acks: list[tuple[str, str]] = []  # (text, id) acknowledged
        self.attempts: list[Attempt] = []
        self.gave_up: list[str] = []  # messages still refused after GIVE_UP_SECONDS

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        for n in range(int(PHASE_SECONDS * 4 / SEND_INTERVAL)):  # bounded in count
            if stop.is_set():
                return
            text, cid = f"{self.name} #{n}", uuid.uuid4().hex
            give_up = loop.time() + GIVE_UP_SECONDS
            while loop.time() < give_up:
                start = time.monotonic()
                try:
                    code, body = await self.client.send(self.room, text, cid)
                except (OSError, HTTPClientError):  # timed out, or the connection dropped
                    code, body = 599, None
                self.attempts.append(Attempt(start, time.monotonic(), code == 200))
                if code == 200:
                    self.acks.append((text, body["event"]["id"]))
                    break
                assert code in (503, 599), (code, body)
                await asyncio.sleep(RETRY_PAUSE)  # a client's back-off, not a wait
            else:
                self.gave_up.append(text)
            await asyncio.sleep(SEND_INTERVAL)  # the pace of the load, not a wait


class Reader:
    """Reads the room over a WebSocket from ``cursor``; reconnects with its last id if the
    server closes it (as the page does)."""

    def __init__(self, client: Any, room: str, cursor: str) -> None:
        self.client, self.room, self.cursor = client, room, cursor
        self.events: list[dict[str, Any]] = []
        self.reconnects = 0

    async def run(self) -> None:
        while True:
            sock: Socket | None = None
            try:
                sock, backlog, _ = await open_ws(self.client, self.room, self.cursor)
                self._got(backlog)
                while True:
                    frame = await sock.next("event", timeout=3600)
                    self._got([frame["event"]])
            except asyncio.CancelledError:
                raise
            # Refused at open (503), closed by the server (1013), or the connection dropped.
            except (AssertionError, OSError, HTTPClientError, WebSocketClosedError):
                self.reconnects += 1
                await asyncio.sleep(RETRY_PAUSE)  # the page's back-off
            finally:
                if sock is not None:
                    sock.close()

    def _got(self, events: list[dict[str, Any]]) -> None:
        self.events += events
        if events:
            self.cursor = events[-1]["id"]


async def run_scenario(rs: ReplicaSet, scenario: str, srv: ChatServer) -> Outcome:
    """Run ``scenario`` (one of ``SCENARIOS``) on ``rs`` (healthy when called, healed again
    when this returns) through ``srv`` (a server on ``rs``, which the caller stops), in a
    fresh room; what came of it."""
    room = f"fo-{scenario}-{uuid.uuid4().hex[:6]}".replace("_", "-")
    clients: list[Any] = []
    tasks: list[asyncio.Task] = []
    try:
        reader_client = await user(srv, f"reader{uuid.uuid4().hex[:4]}")
        clients.append(reader_client)
        senders = []
        for i in range(SENDERS):
            client = await user(srv, f"s{i}x{uuid.uuid4().hex[:4]}")
            clients.append(client)
            senders.append(Sender(client, room, client.nick))  # type: ignore[attr-defined]
        reader = Reader(reader_client, room, "")  # from the room's first event
        with PrimaryWatch(rs) as watch:
            stop = asyncio.Event()
            tasks.append(asyncio.ensure_future(reader.run()))
            tasks += [asyncio.ensure_future(s.run(stop)) for s in senders]

            def acked() -> int:
                return sum(len(s.acks) for s in senders)

            await eventually(lambda: acked() >= ACKS_BEFORE, "acks before", PHASE_SECONDS)
            t_fault = time.monotonic()
            await inject(rs, scenario)
            await eventually(lambda: watch.new_primary_after(t_fault) is not None,
                             "a new primary", PHASE_SECONDS)
            t_primary = watch.new_primary_after(t_fault)
            assert t_primary is not None
            after = acked()
            await eventually(lambda: acked() >= after + ACKS_AFTER, "acks after",
                             PHASE_SECONDS)
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks[1:]), GIVE_UP_SECONDS + 10)
            t_end = time.monotonic()
            await asyncio.to_thread(rs.heal)  # the killed ones back: their rollbacks done
        outcome = await _judge(scenario, reader_client, room, senders, reader)
        outcome.without_primary = watch.without_primary(t_fault, t_end)
        _timings(outcome, [a for s in senders for a in s.attempts], t_fault, t_primary)
        return outcome
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        for client in clients:
            client.close()
        await asyncio.to_thread(rs.heal)


async def inject(rs: ReplicaSet, scenario: str) -> None:
    """The fault, from its start to its end (the set may still be electing after it)."""
    primary = await asyncio.to_thread(rs.wait_primary)
    if scenario == "kill":
        await asyncio.to_thread(rs.kill, primary)
    elif scenario == "step_down":
        await asyncio.to_thread(rs.step_down, primary)
    elif scenario == "freeze":
        await asyncio.to_thread(rs.pause, primary)
        await asyncio.sleep(FREEZE_SECONDS)  # the fault's length
        await asyncio.to_thread(rs.resume, primary)
    elif scenario == "majority":
        secondaries = [i for i in range(len(rs.members)) if i != primary]
        for i in secondaries:
            await asyncio.to_thread(rs.kill, i)
        await asyncio.sleep(LONE_PRIMARY_SECONDS)  # the fault's length
        await asyncio.to_thread(rs.kill, primary)
        for i in secondaries:
            await asyncio.to_thread(rs.restart, i)  # they elect one of them
    else:
        raise ValueError(f"unknown scenario {scenario!r}")


async def _judge(
    scenario: str, client: Any, room: str, senders: list[Sender], reader: Reader
) -> Outcome:
    stored = await history(client, room)
    outcome = Outcome(scenario)
    acks = [ack for s in senders for ack in s.acks]
    outcome.acknowledged = len(acks)
    outcome.gave_up = [text for s in senders for text in s.gave_up]
    by_text = Counter(e.get("text") for e in stored if e["type"] == "message")
    id_of = {e.get("text"): e["id"] for e in stored if e["type"] == "message"}
    outcome.lost = [text for text, _ in acks if by_text[text] == 0]
    outcome.duplicated = [text for text, n in by_text.items() if n > 1]
    outcome.wrong_id = [text for text, id_ in acks if text in id_of and id_of[text] != id_]
    ids = [parse_id(e["id"]) for e in stored]
    outcome.id_gaps = [(a, b) for a, b in itertools.pairwise(ids) if b != a + 1]
    if ids and ids[0] != 1:
        outcome.id_gaps.insert(0, (0, ids[0]))
    # The reader must end up with exactly the history: wait for its last event to arrive.
    last = stored[-1]["id"] if stored else ""
    with contextlib.suppress(AssertionError):
        await eventually(lambda: reader.cursor >= last, "the reader's last event", 15)
    got = [e["id"] for e in reader.events]
    want = [e["id"] for e in stored]
    outcome.reader_ok = got == want
    if not outcome.reader_ok:
        missing = sorted(set(want) - set(got))
        extra = sorted(set(got) - set(want))
        repeats = [i for i, n in Counter(got).items() if n > 1]
        outcome.reader_detail = (f"reader: {len(got)} events, history {len(want)}; missing "
                                 f"{missing[:10]}, not in history {extra[:10]}, twice "
                                 f"{repeats[:10]}, reconnects {reader.reconnects}")
    return outcome


def _timings(
    outcome: Outcome, attempts: list[Attempt], t_fault: float, t_primary: float
) -> None:
    """When sends were refused, and when they were accepted again."""
    attempts = sorted((a for a in attempts if a.end >= t_fault), key=lambda a: a.end)
    outcome.longest_answer = max((a.end - a.start for a in attempts), default=0.0)
    refused = [a for a in attempts if not a.ok]
    outcome.refusals = len(refused)
    if not refused:
        return
    # Back for good: the first acceptance of an attempt begun after the last refused one.
    last_refused = max(a.start for a in refused)
    accepted = [a.end for a in attempts if a.ok and a.start > last_refused]
    if accepted:
        outcome.refused_for = accepted[0] - refused[0].end
        outcome.back_after_primary = accepted[0] - t_primary
