#!/usr/bin/env python
"""capsbench: what the per-address caps cost in cluster mode, per new session and per connect.

Starts MongoDB and one ``--cluster`` server as chatbench does (its Environment), with the
per-address caps on but too high to refuse anything here (every client is 127.0.0.1), so each
new session takes its address's token and each connect is counted against its address:

- ``--sessions`` new sessions, ``POST /api/session`` on 8 keep-alive connections, one request
  at a time on each: wall milliseconds per session, server and mongod CPU per session;
- ``--ws`` WebSockets opened, 50 at a time: opens per second, server CPU per open;
- then ``--seconds`` with those sockets open and nothing happening: server and mongod CPU per
  second (the shared counts' refresh runs in the background).

``--app-dir`` runs another checkout (``git archive <commit> | tar -x -C DIR``) to compare.
Standard library only (plus chatbench and loadclient, next to this file). Linux (/proc).

    .venv/bin/python bench/capsbench.py                 # 300 sessions, 1000 sockets, 5 s
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import sys
import time
from typing import Any

import chatbench as cb
import loadclient as lc

# Far above what this bench opens, so nothing is refused and the caps' checks all run.
HIGH_CAP = 1_000_000


class Idle(lc.WebSocketProtocol):
    def on_text(self, payload: bytes, now: float) -> None:
        pass


def cpu(env: cb.Environment) -> tuple[float, float]:
    return env.server_cpu() or 0.0, env.mongod_cpu() or 0.0


async def run(args: argparse.Namespace, env: cb.Environment) -> dict[str, Any]:
    bench = cb.Bench(cb.parse_args(["--quiet"]), env)
    t0, (s0, m0) = time.monotonic(), cpu(env)
    cookies = await bench.sessions(args.sessions, "s")  # 8 connections, one request each
    took = time.monotonic() - t0
    s1, m1 = cpu(env)
    per_session = {
        "ms": round(took / len(cookies) * 1000, 2),
        "server_cpu_ms": round((s1 - s0) / len(cookies) * 1000, 2),
        "mongod_cpu_ms": round((m1 - m0) / len(cookies) * 1000, 2),
    }
    host, port, path = env.host, env.port, f"/api/rooms/{bench.room}/ws"
    socks: list[Idle] = []
    holders = cookies[: max(1, args.ws // 20)]  # 20 connections per session at most
    t1, (s1, m1) = time.monotonic(), cpu(env)
    for i in range(0, args.ws, 50):  # 50 at a time: the server's accept queue
        socks += await asyncio.gather(*(
            lc.open_websocket(
                functools.partial(Idle, host, port, path, holders[k % len(holders)]), host, port)
            for k in range(i, min(args.ws, i + 50))))  # type: ignore[misc]
    opened = time.monotonic() - t1
    s2, m2 = cpu(env)
    await bench.quiet()
    t3, (s3, m3) = time.monotonic(), cpu(env)
    await asyncio.sleep(args.seconds)  # nothing happens: the background's cost
    idle = time.monotonic() - t3
    s4, m4 = cpu(env)
    for s in socks:
        s.close()
    return {
        "per_session": per_session,
        "per_connect": {
            "opens_per_s": round(len(socks) / opened),
            "server_cpu_ms": round((s2 - s1) / len(socks) * 1000, 3),
            "mongod_cpu_ms": round((m2 - m1) / len(socks) * 1000, 3),
        },
        "idle_with_sockets_open": {
            "sockets": len(socks),
            "server_cpu_per_s": round((s4 - s3) / idle, 4),
            "mongod_cpu_per_s": round((m4 - m3) / idle, 4),
        },
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="capsbench", description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=300, help="new sessions to create")
    p.add_argument("--ws", type=int, default=1000, help="WebSockets to open")
    p.add_argument("--seconds", type=float, default=5.0, help="idle time measured after")
    p.add_argument("--app-dir", default="", help="run the chatapp package in this directory")
    args = p.parse_args(argv)
    lc.raise_nofile_limit()
    env_argv = ["--quiet", "--server-arg=--cluster",
                f"--server-arg=--max_connections_per_ip={HIGH_CAP}",
                f"--server-arg=--new_sessions_per_ip={HIGH_CAP}"]
    if args.app_dir:
        env_argv.append(f"--app-dir={args.app_dir}")
    env = cb.Environment(cb.parse_args(env_argv))
    try:
        env.start()
        result = asyncio.run(run(args, env))
    except cb.BenchError as exc:
        print(f"capsbench: {exc}", file=sys.stderr)
        return 1
    finally:
        env.stop()
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
