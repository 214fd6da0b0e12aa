#!/usr/bin/env python
"""The long-poll race's clients: pollers that parse every answer, and a sender that waits.

Two flavours of server, one measurement:

- ``chatapp``: the page's cycle (``static/longpoll.js``): ``GET /api/rooms/<room>/updates
  ?cursor=<last>&signals=<version>`` with the session cookie, the ``_xsrf`` cookie and the
  same token in ``X-XSRFToken`` (without it a poll is a read, not presence: issue 13). The
  sender ``POST``s ``/api/rooms/<room>/messages``, as the page does over long-poll.
- ``demo``: Tornado's ``demos/chat``: ``POST /a/message/updates`` with ``cursor=<id of the
  last message>``, answered ``{"messages": [...]}``; the sender ``POST``s ``/a/message/new``
  with ``body=...``.

Every text is ``"<n> <time.time()> xxx..."``. Each poller parses every answer (no sampling:
the p99 is over every delivery), checks that the numbers increase and none repeats, and
records send -> poll answer latency. ``HTTPSender`` sends one message, waits for the HTTP
answer, then sends the next, as a browser does (one request at a time per connection).

Run as ``python bench/pollclient.py`` it is a load-client process for ``pollrace.py``: one
JSON command per line on stdin (``open``, ``finish``, ``close``), one JSON answer per line
on stdout; it exits when stdin closes. Standard library only.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from typing import Any
from urllib.parse import quote

import loadclient as lc

# Opens in flight at once per process: the server's accept queue holds 128.
OPEN_CONCURRENCY = 32
# A poller that gets an error answer waits this long before polling again (a browser's
# page backs off too); errors are counted and fail the run anyway.
ERROR_PAUSE = 1.0


def message_text(seq: int, size: int) -> str:
    head = f"{seq} {time.time():.6f} "
    return head + "x" * max(1, size - len(head))


class Poller:
    """One keep-alive long-poll client; ``count``/``last`` what it received."""

    def __init__(self, flavor: str, host: str, port: int, room: str, cookie: str,
                 cursor: str, messages: int, latencies: list[float]) -> None:
        self.flavor, self.room, self.cookie = flavor, room, cookie
        self.conn = lc.HTTPConnection(host, port)
        self.cursor = cursor
        self.signals = ""
        self.seen = bytearray(messages)
        self.latencies = latencies
        self.count = self.dup = self.out_of_order = self.errors = 0
        self.last_t = 0.0  # when the latest measured message arrived
        self.last = -1
        self.first_error = ""
        self.headers: dict[str, str] = {}
        self.closing = False
        self.ready: asyncio.Future = asyncio.get_running_loop().create_future()

    async def run(self) -> None:
        try:
            if self.flavor == "chatapp":
                self.headers = await lc.page_headers(self.conn, self.cookie)
            else:
                await self.conn.connect()
                self.headers = {"Content-Type": "application/x-www-form-urlencoded"}
            self.ready.set_result(None)
            while not self.closing:
                await self.cycle()
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
            if not self.closing:
                self.error(f"connection: {exc!r}")
            if not self.ready.done():
                self.ready.set_exception(ConnectionError(repr(exc)))

    async def cycle(self) -> None:
        conn = self.conn
        if self.flavor == "chatapp":
            conn.send("GET", f"/api/rooms/{self.room}/updates?cursor={self.cursor}"
                      f"&signals={self.signals}", self.headers)
        else:
            conn.send("POST", "/a/message/updates", self.headers,
                      f"cursor={quote(self.cursor)}".encode())
        r = await conn.read_response()
        now = time.time()
        if r.status != 200:
            self.error(f"HTTP {r.status}: {r.body[:200]!r}")
            await asyncio.sleep(ERROR_PAUSE)
            return
        data = json.loads(r.body)
        if self.flavor == "chatapp":
            self.cursor = data["cursor"]
            self.signals = data.get("signals", self.signals)
            texts = [e["text"] for e in data["events"] if e.get("type") == "message"]
        else:
            messages = data["messages"]
            if messages:
                self.cursor = messages[-1]["id"]
            texts = [m["body"] for m in messages]
        for text in texts:
            self.book(text, now)

    def book(self, text: str, now: float) -> None:
        try:
            seq, sent = lc.parse_sent_text(text)
        except ValueError:
            return  # not one of the measured messages (the demo's setup message)
        if not 0 <= seq < len(self.seen):
            return
        if self.seen[seq]:
            self.dup += 1
            return
        self.seen[seq] = 1
        if seq < self.last:
            self.out_of_order += 1
        self.last = max(self.last, seq)
        self.count += 1
        self.last_t = now
        self.latencies.append(now - sent)

    def error(self, what: str) -> None:
        self.errors += 1
        self.first_error = self.first_error or what

    def close(self) -> None:
        self.closing = True
        self.conn.close()


class HTTPSender:
    """Sends each message over HTTP ``POST`` and waits for its answer before the next.

    The attributes are those of ``chatbench.Sender`` (``sent``, ``ack_ids``, ``errors``,
    ``error_seqs``, ``ack_latency``, ``first_send``, ``last_ack``, ``last_id``), so that
    ``chatbench --sender http`` can use it in place of the WebSocket sender."""

    def __init__(self, flavor: str, host: str, port: int, room: str, cookie: str) -> None:
        self.flavor, self.room, self.cookie = flavor, room, cookie
        self.conn = lc.HTTPConnection(host, port)
        self.headers: dict[str, str] = {}
        self.ack_ids: list[str] = []
        self.error_seqs: set[int] = set()
        self.ack_latency: list[float] = []
        self.errors: list[str] = []
        self.first_send = self.last_ack = 0.0
        self.sent = 0
        self.closed = False

    async def open(self) -> HTTPSender:
        if self.flavor == "chatapp":
            self.headers = await lc.page_headers(self.conn, self.cookie)
            self.headers["Content-Type"] = "application/json"
        else:
            await self.conn.connect()
            self.headers = {"Content-Type": "application/x-www-form-urlencoded"}
        return self

    async def post(self, text: str, cid: str) -> lc.HTTPResponse:
        if self.flavor == "chatapp":
            body = json.dumps({"text": text, "client_id": cid}).encode()
            return await self.conn.request(
                "POST", f"/api/rooms/{self.room}/messages", self.headers, body)
        return await self.conn.request(
            "POST", "/a/message/new", self.headers, b"body=" + quote(text).encode())

    async def send_messages(self, count: int, size: int, rate: float = 0.0,
                            inflight: int = 1, deadline: float = float("inf")) -> None:
        """Send up to ``count`` messages, each once the previous one was answered (``rate``
        > 0: also no faster than that); stop at ``deadline`` (``time.monotonic()``).
        ``inflight`` is ignored: one at a time is the point."""
        start = time.monotonic()
        for i in range(count):
            if rate > 0:
                delay = start + i / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            if time.monotonic() >= deadline:
                break
            text = message_text(i, size)
            sent = float(text.split(" ", 2)[1])
            if i == 0:
                self.first_send = sent
            self.sent += 1
            r = await self.post(text, f"m{i}")
            now = time.time()
            if r.status != 200:
                self.errors.append(f"HTTP {r.status}: {r.body[:200]!r}")
                self.error_seqs.add(i)
                continue
            self.ack_latency.append(now - sent)
            self.last_ack = now
            answer = r.json()
            self.ack_ids.append(answer["event"]["id"] if "event" in answer else answer["id"])

    @property
    def last_id(self) -> str:
        return max(self.ack_ids) if self.ack_ids and self.flavor == "chatapp" else ""

    def close(self) -> None:
        self.closed = True
        self.conn.close()


# -- the load-client process ------------------------------------------------------------------


class Worker:
    def __init__(self) -> None:
        self.pollers: list[Poller] = []
        self.tasks: list[asyncio.Task] = []
        self.latencies: list[float] = []
        self.cpu0 = lc.cpu_seconds()

    async def cmd_open(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Open ``len(cookies)`` pollers and send each one's first poll."""
        gate = asyncio.Semaphore(OPEN_CONCURRENCY)
        failures: list[str] = []

        async def open_one(cookie: str) -> None:
            p = Poller(msg["flavor"], msg["host"], msg["port"], msg["room"], cookie,
                       msg["cursor"], int(msg["messages"]), self.latencies)
            async with gate:
                self.tasks.append(asyncio.ensure_future(p.run()))
                try:
                    await asyncio.wait_for(asyncio.shield(p.ready), lc.OPEN_TIMEOUT)
                except (TimeoutError, ConnectionError) as exc:
                    failures.append(repr(exc))
                    p.close()
                    return
            self.pollers.append(p)

        await asyncio.gather(*(open_one(c) for c in msg["cookies"]))
        self.cpu0 = lc.cpu_seconds()
        return {"opened": len(self.pollers), "failures": failures[:3], "failed": len(failures)}

    async def cmd_finish(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Wait until every poller has ``target`` messages (or ``timeout``), linger for late
        duplicates, and report."""
        target = int(msg["target"])
        deadline = time.monotonic() + float(msg.get("timeout", 30))
        while time.monotonic() < deadline and any(p.count < target for p in self.pollers):
            await asyncio.sleep(0.01)
        await asyncio.sleep(float(msg.get("linger", 0.3)))
        ps = self.pollers
        return {
            "pollers": len(ps),
            "deliveries": sum(p.count for p in ps),
            "lost": sum(max(0, target - p.count) for p in ps),
            "duplicated": sum(p.dup for p in ps),
            "out_of_order": sum(p.out_of_order for p in ps),
            "errors": sum(p.errors for p in ps),
            "first_error": next((p.first_error for p in ps if p.first_error), ""),
            "last_t": max((p.last_t for p in ps), default=0.0),
            "latencies": [round(x, 5) for x in self.latencies],
            "cpu": lc.cpu_seconds() - self.cpu0,
        }

    async def cmd_close(self, msg: dict[str, Any]) -> dict[str, Any]:
        for p in self.pollers:
            p.close()
        for t in self.tasks:
            t.cancel()
        await asyncio.sleep(0.1)
        return {"closed": len(self.pollers)}

    async def serve(self) -> None:
        await lc.serve_commands(self)


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is pollrace's; stdin closing ends us
    lc.raise_nofile_limit()
    asyncio.run(Worker().serve())


if __name__ == "__main__":
    main()
