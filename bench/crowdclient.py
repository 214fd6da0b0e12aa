#!/usr/bin/env python
"""The load client of chatbench's crowd scenarios (``bench/crowd.py``): a crowd, not a script.

A ``bench/loadclient.py`` worker (same stdin/stdout JSON-lines protocol, same ``start``,
``finish`` and ``close`` commands, same receivers) with one more command, ``crowd``: it
creates sessions and opens their connections the way many people would, each person from
their own address. Linux loopback accepts any 127.0.0.0/8 source address, so every
connection here is bound to the 127.0.0.x address of its "person" before connecting: the
server (no ``--trusted_proxies``) sees that as the client's address, and its per-address
caps (connections, new sessions a minute) apply to each address as they would to a real
crowd, with the caps left on.

Each session is created by ``POST /api/session`` from its own address, then its sockets
open (WebSockets), or its long-poll parks; everything is in flight at once, up to
``concurrency`` connections opening per process. A refusal (an HTTP answer other than 101
to the upgrade, or 200 to the session) is counted as refused, with its first reasons;
anything else that fails (a timeout, a reset) as failed. Standard library only.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys
import time
from typing import Any

import loadclient as lc

# The first reasons kept per kind of failure: enough to say what went wrong.
KEEP_REASONS = 5


class BoundHTTPConnection(lc.HTTPConnection):
    """An ``HTTPConnection`` from a given source address."""

    def __init__(self, host: str, port: int, source: str) -> None:
        super().__init__(host, port)
        self.source = source

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(
            self.host, self.port, local_addr=(self.source, 0))


async def connect_bound(factory: Any, host: str, port: int, source: str,
                        kernel_timestamps: bool, timeout: float) -> lc.WebSocketProtocol:
    """``loadclient.open_websocket`` from ``source``: asyncio's transport, or with
    ``kernel_timestamps`` a ``RecvmsgTransport`` whose reads carry the arrival time."""
    loop = asyncio.get_running_loop()

    async def go() -> lc.WebSocketProtocol:
        if kernel_timestamps:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setsockopt(socket.SOL_SOCKET, lc.SO_TIMESTAMPNS, 1)
                sock.bind((source, 0))
                await loop.sock_connect(sock, (host, port))
                proto = factory()
                lc.RecvmsgTransport(loop, sock, proto)
            except BaseException:
                sock.close()
                raise
        else:
            _, proto = await loop.create_connection(factory, host, port,
                                                    local_addr=(source, 0))
        try:
            await proto.opened
        except BaseException:
            proto.close()
            raise
        return proto

    return await asyncio.wait_for(go(), timeout)


class Outcomes:
    """What the opening of a crowd came to: counts, and the first reasons of each failure."""

    def __init__(self) -> None:
        self.counts = {"sessions": 0, "ws": 0, "polls": 0, "refused": 0, "failed": 0}
        self.reasons: dict[str, list[str]] = {"refused": [], "failed": []}
        self.last_open = 0.0

    def fail(self, kind: str, reason: str) -> None:
        self.counts[kind] += 1
        if len(self.reasons[kind]) < KEEP_REASONS:
            self.reasons[kind].append(reason[:300])


class CrowdWorker(lc.Worker):
    async def cmd_crowd(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Create ``people`` sessions (``[address, nick, websockets, polls]`` each) and open
        their connections; every WebSocket is sampled (kernel timestamps, JSON parsed) when
        ``sampled`` is true, none otherwise."""
        host, port, room = msg["host"], int(msg["port"]), msg["room"]
        sampled = bool(msg.get("sampled"))
        messages = int(msg.get("messages", 0))
        poll_cursor = msg.get("poll_cursor", "")
        gate = asyncio.Semaphore(int(msg.get("concurrency", lc.DEFAULT_CONCURRENCY)))
        out = Outcomes()
        cpu0, t0 = lc.cpu_seconds(), time.monotonic()
        path = f"/api/rooms/{room}/ws"
        xsrf_conn = lc.HTTPConnection(host, port)
        got = await xsrf_conn.request("GET", "/api/session")
        xsrf_conn.close()
        xsrf = got.cookies().get("_xsrf", "")
        headers = {"Cookie": xsrf, "X-XSRFToken": xsrf.split("=", 1)[-1],
                   "Content-Type": "application/json"}

        async def session(source: str, nick: str) -> str | None:
            conn = BoundHTTPConnection(host, port, source)
            try:
                async with gate:
                    r = await asyncio.wait_for(conn.request(
                        "POST", "/api/session", headers, json.dumps({"nick": nick}).encode()),
                        lc.OPEN_TIMEOUT)
            except (TimeoutError, OSError, ConnectionError, asyncio.IncompleteReadError) as exc:
                out.fail("failed", f"session from {source}: {exc!r}")
                return None
            finally:
                conn.close()
            cookie = r.cookies().get("chatapp_session")
            if r.status != 200 or not cookie:
                out.fail("refused", f"session from {source}: {r.status} {r.body[:200]!r}")
                return None
            out.counts["sessions"] += 1
            return cookie

        async def websocket(source: str, cookie: str) -> None:
            def factory() -> lc.WSReceiver:
                if sampled:
                    return lc.SampledWSReceiver(self.ws, host, port, path, cookie, messages)
                return lc.WSReceiver(self.ws, host, port, path, cookie)

            async with gate:
                try:
                    proto = await connect_bound(factory, host, port, source, sampled,
                                                lc.OPEN_TIMEOUT)
                except ConnectionError as exc:
                    kind = "refused" if "refused" in str(exc) else "failed"
                    out.fail(kind, f"ws from {source}: {exc}")
                    return
                except (TimeoutError, OSError) as exc:
                    out.fail("failed", f"ws from {source}: {exc!r}")
                    return
            self.ws.receivers.append(proto)
            out.counts["ws"] += 1
            out.last_open = time.monotonic()

        async def poll(source: str, cookie: str) -> None:
            r = lc.PollReceiver(self.poll, host, port, room, cookie, poll_cursor, False,
                                messages, False)
            r.conn = BoundHTTPConnection(host, port, source)
            async with gate:
                r.task = asyncio.ensure_future(r.run())
                try:
                    await asyncio.wait_for(asyncio.shield(r.parked), lc.OPEN_TIMEOUT)
                except (TimeoutError, OSError, ConnectionError) as exc:
                    out.fail("failed", f"poll from {source}: {exc!r}")
                    r.close()
                    return
            self.poll.receivers.append(r)
            out.counts["polls"] += 1

        async def person(source: str, nick: str, n_ws: int, n_polls: int) -> None:
            cookie = await session(source, nick)
            if cookie is None:
                return
            await asyncio.gather(*(websocket(source, cookie) for _ in range(n_ws)),
                                 *(poll(source, cookie) for _ in range(n_polls)))

        await asyncio.gather(*(person(*p) for p in msg["people"]))
        return {**out.counts, "reasons": out.reasons,
                "seconds": time.monotonic() - t0,
                "last_open_s": (out.last_open - t0) if out.last_open else 0.0,
                "cpu": lc.cpu_seconds() - cpu0}


def main() -> None:
    lc.raise_nofile_limit()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # chatbench's to handle, through stdin
    asyncio.run(CrowdWorker().serve())


if __name__ == "__main__":
    sys.exit(main())
