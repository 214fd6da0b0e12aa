"""chatbench's ``resume`` scenario: the bytes a reconnecting client receives for the events it
missed, plain and with permessage-deflate (``python bench/chatbench.py --scenario resume``).

Four senders store ``--messages`` messages (chat-like text of about ``--size`` characters:
words drawn from a small vocabulary with a seeded generator, and a number; chatbench's own
sender pads with "x", which would flatter compression). Then one client resumes from the
cursor before them, twice: once offering nothing, once offering permessage-deflate as a
browser does. Each counts the bytes on the wire from the end of the handshake to its first
``presence`` frame (which follows the backlog), inflates what came compressed, and checks that
it got every missed message once, in order. Reported: bytes, the saving, the time to the end
of the backlog and the server's CPU for each resume.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any

import loadclient as lc

SENDERS = 4
# Most sends in flight per sender (the rest wait for acks), as chatbench's --inflight default.
INFLIGHT = 64
VOCABULARY = (
    "the a to and of in is it you that for on was with he be at one have this from or had by "
    "hot word but what some we can out other were all there when up use your how said an each "
    "she which do their time if will way about many then them write would like so these her "
    "long make thing see him two has look more day could go come did number sound no most "
    "people my over know water than call first who may down side been now find lunch meeting "
    "deploy review today tomorrow thanks please sure ok great idea build test release bug fix"
)


WORDS = VOCABULARY.split(" ")


def chat_text(rng: random.Random, i: int, size: int) -> str:
    words = [f"#{i}"]
    while sum(len(w) + 1 for w in words) < size:
        words.append(rng.choice(WORDS))
    return " ".join(words)


class Poster(lc.WebSocketProtocol):
    """Sends messages over its WebSocket, at most INFLIGHT unanswered; the acked ids."""

    def __init__(self, host: str, port: int, path: str, cookie: str) -> None:
        super().__init__(host, port, path, cookie)
        self.window = asyncio.Semaphore(INFLIGHT)
        self.acked: list[str] = []
        self.errors: list[str] = []

    def on_text(self, payload: bytes, now: float) -> None:
        frame = json.loads(payload)
        if frame.get("type") == "ack":
            self.acked.append(frame["event"]["id"])
        elif frame.get("type") == "error" and frame.get("client_id"):
            self.errors.append(f"{frame.get('error')}: {frame.get('message')}")
        else:
            return
        self.window.release()

    async def post(self, texts: list[str], deadline: float) -> None:
        for k, text in enumerate(texts):
            await asyncio.wait_for(self.window.acquire(), max(0.1, deadline - time.monotonic()))
            self.send_text(json.dumps({"type": "send", "text": text, "client_id": f"r{k}"}))
        for _ in range(INFLIGHT):  # every answer in
            await asyncio.wait_for(self.window.acquire(), max(0.1, deadline - time.monotonic()))


class Resumer(lc.WebSocketProtocol):
    """Counts the bytes after the handshake until the first presence frame; the messages."""

    def __init__(self, host: str, port: int, path: str, cookie: str, compression: bool) -> None:
        super().__init__(host, port, path, cookie, compression)
        self.wire = 0
        self.compressed_frames = 0
        self.ids: list[str] = []
        self.done: asyncio.Future = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        if self._handshaking:
            head = self._buf + data
            end = head.find(b"\r\n\r\n")
            self.wire += len(head) - end - 4 if end >= 0 else 0
        elif not self.done.done():
            self.wire += len(data)
        super().data_received(data)

    def _inflated(self, payload: bytes) -> bytes:
        self.compressed_frames += 1
        return super()._inflated(payload)

    def on_text(self, payload: bytes, now: float) -> None:
        frame = json.loads(payload)
        kind = frame.get("type")
        if kind == "event" and frame["event"]["type"] == "message":
            self.ids.append(frame["event"]["id"])
        elif kind == "presence" and not self.done.done():
            self.done.set_result(now)


async def resume(bench: Any) -> dict[str, Any]:
    a, env = bench.args, bench.env
    host, port, path = env.host, env.port, f"/api/rooms/{bench.room}/ws"
    bench.phase = "creating sessions"
    cookies = await bench.sessions(SENDERS + 1, "r")
    reader, senders = cookies[0], cookies[1:]
    cursor = await bench.room_cursor(reader)
    rng = random.Random(a.seed)
    texts = [chat_text(rng, i, a.size) for i in range(a.messages)]
    bench.phase = f"storing {a.messages} messages"
    bench.log(bench.phase)
    posters = [await lc.open_websocket(lambda c=c: Poster(host, port, path, c), host, port)
               for c in senders]
    try:
        await asyncio.gather(*(p.post(texts[k::SENDERS], bench.send_deadline)
                               for k, p in enumerate(posters)))
    finally:
        for p in posters:
            p.close()
    stored = sorted(i for p in posters for i in p.acked)
    errors = [e for p in posters for e in p.errors]
    await bench.quiet()
    result: dict[str, Any] = {"messages": len(stored), "send_errors": len(errors),
                              "text_chars": round(sum(map(len, texts)) / max(1, len(texts)), 1)}
    for compression in (False, True):
        label = "deflate" if compression else "plain"
        bench.phase = f"resuming ({label})"
        bench.log(bench.phase)
        cpu0 = env.server_cpu()
        t0 = time.time()
        r = await lc.open_websocket(
            lambda c=compression: Resumer(host, port, f"{path}?cursor={cursor}", reader, c),
            host, port)
        try:
            end = await asyncio.wait_for(r.done, bench.remaining())
        finally:
            r.close()
        cpu1 = env.server_cpu()
        result[label] = {
            "bytes": r.wire,
            "agreed": r.inflate is not None,
            "compressed_frames": r.compressed_frames,
            "seconds": round(end - t0, 4),
            "in_order_once": r.ids == stored,
            "server_cpu_ms": round((cpu1 - cpu0) * 1000, 1) if cpu0 is not None else None,
        }
        await bench.quiet()
    plain, packed = result["plain"]["bytes"], result["deflate"]["bytes"]
    result["saving_pct"] = round(100 * (1 - packed / plain), 1) if plain else None
    result["problems"] = {
        "send_errors": len(errors),
        "not_stored": a.messages - len(stored),
        "wrong_backlog": sum(not result[k]["in_order_once"] for k in ("plain", "deflate")),
        "not_compressed": int(not result["deflate"]["agreed"]),
    }
    return result


def render(r: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [("missed messages", f"{r['messages']:,} (texts of {r['text_chars']} chars)")]
    for label in ("plain", "deflate"):
        x = r[label]
        cpu = f", server CPU {x['server_cpu_ms']} ms" if x["server_cpu_ms"] is not None else ""
        rows.append((f"resume {label}", (f"{x['bytes']:,} bytes in {x['seconds'] * 1000:.1f} "
                                         f"ms{cpu}; every message once, in order: "
                                         f"{x['in_order_once']}")))
    rows.append(("saving", (f"{r['saving_pct']} % fewer bytes with permessage-deflate "
                            f"({r['deflate']['compressed_frames']:,} compressed frames)")))
    rows.append(("problems", ", ".join(f"{k} {v}" for k, v in r["problems"].items())))
    return rows
