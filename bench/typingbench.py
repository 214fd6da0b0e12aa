#!/usr/bin/env python
"""typingbench: a typing storm. --typists people type at once in a room of --ws people.

Starts MongoDB and the app as chatbench does (its Environment: separate processes, free
port, everything stopped at the end), opens --ws WebSockets in one room (from this process),
then, for --seconds, --typists of them send a ``{"type": "typing"}`` frame per keystroke at
--keys per second each, like a client that ignores the page's "at most every 3 s". With
``--pattern churn`` (the default) each typist types in bursts of --burst seconds every
--period seconds, the typists' phases spread evenly, so that people start and stop typing
all the time (the set changes ~2 * typists / period times a second); ``steady``: all type
all the time (the set never changes after the first frame). Measured:

- the server's CPU while nobody types (the same length of time just before) and during the
  storm;
- the typing frames each socket received per second (the server throttles each typist to
  one signal per 2.5 s and coalesces a room's changes into one frame per 250 ms, so this
  stays at or under 4 however many type);
- the bytes of typing frames per socket per second.

Standard library only (plus chatbench and loadclient, next to this file). Linux (/proc).

    .venv/bin/python bench/typingbench.py                 # 100 typists, 1000 sockets, 20 s
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import chatbench as cb
import loadclient as lc


class Receiver(lc.WebSocketProtocol):
    """A person in the room: counts the frames it is sent, by type."""

    def __init__(self, host: str, port: int, path: str, cookie: str) -> None:
        super().__init__(host, port, path, cookie)
        self.counts: dict[str, int] = {}
        self.typing_bytes = 0
        self.counting = False

    def on_text(self, payload: bytes, now: float) -> None:
        if not self.counting:
            return
        kind = json.loads(payload).get("type", "?")
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if kind == "typing":
            self.typing_bytes += len(payload)


async def run(args: argparse.Namespace, env: cb.Environment) -> dict[str, Any]:
    bench_args = cb.parse_args(["--quiet"])
    bench = cb.Bench(bench_args, env)
    room = bench.room
    host, port, path = env.host, env.port, f"/api/rooms/{room}/ws"
    cookies = await bench.sessions(args.ws, "t")
    socks: list[Receiver] = []
    for i in range(0, len(cookies), 50):  # 50 at a time: the server's accept queue
        socks += await asyncio.gather(*(
            lc.open_websocket(lambda c=c: Receiver(host, port, path, c), host, port)
            for c in cookies[i:i + 50]))  # type: ignore[misc]
    await bench.quiet()  # the joins (and their presence frames) have gone out
    t0, cpu0 = time.monotonic(), env.server_cpu() or 0.0
    await asyncio.sleep(args.seconds)  # nobody types: the baseline
    idle_cpu = ((env.server_cpu() or 0.0) - cpu0) / (time.monotonic() - t0)

    for s in socks:
        s.counting = True
    typists = socks[:args.typists]
    frame = json.dumps({"type": "typing"})
    interval = 1.0 / args.keys
    t1, cpu1 = time.monotonic(), env.server_cpu() or 0.0
    sent = 0
    while time.monotonic() - t1 < args.seconds:
        tick = time.monotonic()
        for i, s in enumerate(typists):
            phase = (tick - t1 + i * args.period / len(typists)) % args.period
            if args.pattern == "steady" or phase < args.burst:
                s.send_text(frame)
                sent += 1
        await asyncio.sleep(max(0.0, interval - (time.monotonic() - tick)))
    storm = time.monotonic() - t1
    storm_cpu = ((env.server_cpu() or 0.0) - cpu1) / storm
    for s in socks:
        s.counting = False
    frames = [s.counts.get("typing", 0) / storm for s in socks]
    errors = sum(s.counts.get("error", 0) for s in socks)
    for s in socks:
        s.close()
    return {
        "pattern": args.pattern,
        "sockets": len(socks), "typists": len(typists), "keys_per_s": args.keys,
        "seconds": round(storm, 1), "signals_sent": sent,
        "server_cpu_idle": round(idle_cpu, 3), "server_cpu_storm": round(storm_cpu, 3),
        "typing_frames_per_socket_s": {
            "mean": round(sum(frames) / len(frames), 2), "max": round(max(frames), 2)},
        "typing_bytes_per_socket_s": round(
            sum(s.typing_bytes for s in socks) / len(socks) / storm),
        "error_frames": errors,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="typingbench", description=__doc__.split("\n\n")[0])
    p.add_argument("--ws", type=int, default=1000, help="people in the room (WebSockets)")
    p.add_argument("--typists", type=int, default=100, help="how many of them type")
    p.add_argument("--keys", type=float, default=5.0, help="keystrokes per second per typist")
    p.add_argument("--seconds", type=float, default=20.0, help="length of the storm (and of "
                   "the quiet baseline before it)")
    p.add_argument("--pattern", choices=("churn", "steady"), default="churn")
    p.add_argument("--burst", type=float, default=3.0, help="churn: seconds of typing...")
    p.add_argument("--period", type=float, default=15.0, help="...in every this many")
    args = p.parse_args(argv)
    lc.raise_nofile_limit()
    env_args = cb.parse_args(["--quiet"])
    env = cb.Environment(env_args)
    try:
        env.start()
        result = asyncio.run(run(args, env))
    except cb.BenchError as exc:
        print(f"typingbench: {exc}", file=sys.stderr)
        return 1
    finally:
        env.stop()
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
