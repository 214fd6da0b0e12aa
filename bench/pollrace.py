#!/usr/bin/env python
"""pollrace: chatapp's long-poll against Tornado's own ``demos/chat``, in the same run.

The same load on each server in turn: ``--polls`` keep-alive long-poll clients in one room
(``bench/pollclient.py`` processes, ``--procs`` of them), and one sender that ``POST``s a
message, waits for the HTTP answer, then sends the next (as a browser does), ``--messages``
times or for ``--seconds``. Printed side by side: deliveries/s (messages received by all
pollers / time from the first send to the last delivery), send -> poll answer latency
p50/p99/max over every delivery, lost/duplicated/out-of-order (must be 0), sends/s, and the
ratio chatapp / demo.

chatapp runs as ``chatbench`` starts it (embedded MongoDB, every message stored first, rate
limit off, caps lifted); each poller has its own session (as 1,000 browsers would) and
polls as the page does (XSRF token, ``signals=``), so each poll counts as presence.
The demo is third-party code (Apache-2.0) and is never part of this repository: get
``demos/chat`` from https://github.com/tornadoweb/tornado and pass its directory as
``--peer-dir``; it runs with this Python (which has Tornado) as
``chatdemo.py --port=N --debug=false``.

    python bench/pollrace.py --polls 500 --seconds 20 --peer-dir /path/to/tornado/demos/chat
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

import chatbench as cb
import loadclient as lc
import pollclient as pc
import procstat

POLLCLIENT = os.path.join(cb.HERE, "pollclient.py")
# Seconds the pollers get, after the last send, to receive what was sent.
DRAIN_SECONDS = 20.0
# How long 1,000s of pollers may take to join (each join is stored; they come in at tens a
# second while the room is busy answering them).
SETTLE_SECONDS = 120.0


class Target:
    """One server under test: where it listens, its pid, how to make the pollers' cookies."""

    flavor = ""
    name = ""
    host, port, pid = cb.HOST, 0, 0
    room = ""

    def __init__(self, args: argparse.Namespace) -> None:
        raise NotImplementedError

    async def cookies(self, count: int) -> list[str]:
        return [""] * count

    async def sender(self) -> pc.HTTPSender:
        return await pc.HTTPSender(self.flavor, self.host, self.port, self.room, "").open()

    async def start_cursor(self) -> str:
        raise NotImplementedError

    async def settled(self, polls: int) -> None:
        """Wait until every poller is in the room (nothing to wait for by default)."""

    def stop(self) -> None:
        raise NotImplementedError


class Chatapp(Target):
    flavor, name = "chatapp", "chatapp"

    def __init__(self, args: argparse.Namespace) -> None:
        ns = argparse.Namespace(
            url="", mongo_uri=args.mongo_uri, app_dir=args.app_dir, server_arg=args.server_arg,
            server_pid=None, keep_temp=False, timeout=120.0, room="", quiet=True)
        self.env = cb.Environment(ns)
        self.env.start()
        self.bench = cb.Bench(ns, self.env)
        self.host, self.port, self.room = self.env.host, self.env.port, self.bench.room
        assert self.env.server_pid is not None
        self.pid = self.env.server_pid

    async def cookies(self, count: int) -> list[str]:
        return await self.bench.sessions(count, "p")

    async def sender(self) -> pc.HTTPSender:
        cookie = (await self.bench.sessions(1, "s"))[0]
        return await pc.HTTPSender(self.flavor, self.host, self.port, self.room, cookie).open()

    async def start_cursor(self) -> str:
        # As for the demo: a message stored first, whose id every poller starts from. (A
        # fresh room's cursor is "", and a poll from "" asks for the room from its start.)
        cookie = (await self.bench.sessions(1, "c"))[0]
        sender = await pc.HTTPSender(self.flavor, self.host, self.port, self.room, cookie).open()
        try:
            r = await sender.post("setup", "setup")
        finally:
            sender.close()
        return str(r.json()["event"]["id"])

    async def settled(self, polls: int) -> None:
        # Every poll's join is a stored event that wakes the whole room: measured once all of
        # them are in. The joins wait for MongoDB, not the CPU, so wait_quiet alone returned
        # while they were still coming in (and the run measured the join storm); presence
        # counts a poller before its join is stored, so the room's log must stop growing too.
        deadline = time.monotonic() + SETTLE_SECONDS
        last, still = "", 0
        while still < 4:
            if time.monotonic() > deadline:
                raise cb.BenchError(f"the pollers' joins did not settle in {SETTLE_SECONDS:g} s")
            await asyncio.sleep(0.5)
            nicks = (await self.bench.get(f"/api/rooms/{self.room}/presence"))["nicks"]
            events = (await self.bench.get(f"/api/rooms/{self.room}/history?limit=1"))["events"]
            now = events[-1]["id"] if events else ""
            still = still + 1 if len(nicks) >= polls and now == last else 0
            last = now

    def stop(self) -> None:
        self.env.stop()


class Demo(Target):
    flavor, name = "demo", "tornado demo"

    def __init__(self, args: argparse.Namespace) -> None:
        script = os.path.join(args.peer_dir, "chatdemo.py")
        if not os.path.isfile(script):
            raise cb.BenchError(f"no chatdemo.py in {args.peer_dir} (see bench/README.md)")
        self.port = quiet_port()
        # Its access log (a line per request, as the demo runs) goes to a file: a pipe nobody
        # reads would fill up and stop it.
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 -- closed by stop()
        self.proc = subprocess.Popen(
            [sys.executable, script, f"--port={self.port}", "--debug=false"],
            cwd=args.peer_dir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=self.log, start_new_session=True)
        self.pid = self.proc.pid
        deadline = time.monotonic() + cb.START_SECONDS
        # Not probed by connecting: on this machine a refused connect to the port before the
        # demo binds it makes its bind fail (EADDRINUSE). The kernel's socket table instead.
        while not listening(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.log.seek(0)
                err = self.log.read()[-500:]
                raise cb.BenchError(f"Tornado's chat demo did not start: {err!r}")
            time.sleep(0.1)

    async def start_cursor(self) -> str:
        # The demo's cursor is the id of a message it holds: post one to have it.
        sender = await self.sender()
        try:
            r = await sender.post("setup", "setup")
        finally:
            sender.close()
        return str(r.json()["id"])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(cb.STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def quiet_port() -> int:
    """A free port below the ephemeral range: one the kernel just gave a client connection
    (thousands of them, in TIME_WAIT after the chatapp run) may refuse the demo's bind,
    which it makes on every address with no retry."""
    for _ in range(100):
        port = random.randrange(20000, 32000)
        if not listening(port):
            with socket.socket() as s:
                try:
                    s.bind((cb.HOST, port))
                except OSError:
                    continue
            return port
    raise cb.BenchError("no free port for the demo")


def listening(port: int) -> bool:
    """Whether a socket listens on ``port`` (``/proc/net/tcp*``: state 0A is LISTEN)."""
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                return True
    return False


async def spawn(count: int) -> list[cb.WorkerProcess]:
    async def one(k: int) -> cb.WorkerProcess:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, POLLCLIENT, cwd=cb.HERE, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, limit=1 << 28, start_new_session=True)
        return cb.WorkerProcess(k, proc)
    return list(await asyncio.gather(*(one(k) for k in range(count))))


async def race(target: Target, args: argparse.Namespace) -> dict[str, Any]:
    """The load on one server: open the pollers, let it settle, send, drain, count."""
    workers = await spawn(args.procs)
    sender: pc.HTTPSender | None = None
    try:
        cursor = await target.start_cursor()
        cookies = await target.cookies(args.polls)
        parts = cb.split(cookies, len(workers))
        opened = await asyncio.gather(*(w.call({
            "cmd": "open", "flavor": target.flavor, "host": target.host, "port": target.port,
            "room": target.room, "cookies": part, "cursor": cursor,
            "messages": args.messages}, 120.0) for w, part in zip(workers, parts)))
        if sum(o["failed"] for o in opened):
            raise cb.BenchError(f"{target.name}: pollers failed to open: {opened}")
        # The pollers' joins (chatapp) wake the others; measured once that has settled.
        await target.settled(args.polls)
        await procstat.wait_quiet(target.pid, timeout=30.0)
        sender = await target.sender()
        cpu0 = procstat.cpu_seconds(target.pid)
        t0 = time.monotonic()
        await sender.send_messages(args.messages, args.size, deadline=t0 + args.seconds)
        replies = await asyncio.gather(*(w.call(
            {"cmd": "finish", "target": sender.sent, "timeout": DRAIN_SECONDS}, 60.0)
            for w in workers))
        cpu = procstat.cpu_seconds(target.pid) - cpu0
        wall = time.monotonic() - t0
    finally:
        if sender is not None:
            sender.close()
        await asyncio.gather(*(w.stop() for w in workers), return_exceptions=True)
    latencies = [x for r in replies for x in r["latencies"]]
    deliveries = sum(r["deliveries"] for r in replies)
    last = max(r["last_t"] for r in replies)
    span = max(last, sender.last_ack) - sender.first_send
    out = {
        "pollers": sum(r["pollers"] for r in replies),
        "sent": sender.sent,
        "send_errors": len(sender.errors),
        "sends_per_second": round(len(sender.ack_ids) / span, 1) if span else None,
        "deliveries": deliveries,
        "deliveries_per_second": round(deliveries / span, 1) if span else None,
        "latency": cb.summary(latencies),
        "send_answer": cb.summary(sender.ack_latency),
        "server_cpu_pct": round(100 * cpu / wall, 1),
        "server_cpu_us_per_delivery": round(cpu * 1e6 / deliveries, 1) if deliveries else None,
        "client_cpu_pct": [round(100 * r["cpu"] / wall, 1) for r in replies],
    }
    for key in ("lost", "duplicated", "out_of_order", "errors"):
        out[key] = sum(r[key] for r in replies)
    out["first_error"] = next((r["first_error"] for r in replies if r["first_error"]), "")
    return out


def render(results: dict[str, dict[str, Any]]) -> str:
    names = list(results)
    rows = [("", names)]

    def row(label: str, get: Any) -> None:
        rows.append((label, [get(results[n]) for n in names]))

    def lat(key: str, which: str) -> Any:
        return lambda r: f"{r[key][which]:.1f} ms" if r[key].get("n") else "-"

    row("pollers", lambda r: r["pollers"])
    row("messages sent", lambda r: r["sent"])
    row("deliveries/s", lambda r: f"{r['deliveries_per_second'] or 0:,.0f}")
    row("sends/s (one at a time)", lambda r: r["sends_per_second"])
    row("latency p50", lat("latency", "p50_ms"))
    row("latency p99", lat("latency", "p99_ms"))
    row("latency max", lat("latency", "max_ms"))
    row("send answered p50", lat("send_answer", "p50_ms"))
    row("server CPU %", lambda r: r["server_cpu_pct"])
    row("server CPU us/delivery", lambda r: r["server_cpu_us_per_delivery"])
    row("load client CPU %", lambda r: "+".join(str(x) for x in r["client_cpu_pct"]))
    row("lost/dup/out-of-order", lambda r: f"{r['lost']}/{r['duplicated']}/{r['out_of_order']}")
    row("errors", lambda r: f"{r['errors'] + r['send_errors']} {r['first_error'][:40]}")
    width = max(len(label) for label, _ in rows) + 2
    lines = [label.ljust(width) + "".join(str(v).rjust(18) for v in vals) for label, vals in rows]
    if len(names) == 2:
        a, b = (results[n]["deliveries_per_second"] or 0 for n in names)
        lines.append(f"{'ratio ' + names[0] + ' / ' + names[1]:<{width}}"
                     f"{(a / b if b else float('nan')):18.2f}x")
    return "\n".join(lines)


def failed(r: dict[str, Any]) -> bool:
    return bool(r["lost"] or r["duplicated"] or r["out_of_order"] or r["errors"]
                or r["send_errors"])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--polls", type=int, default=1000, help="long-poll clients (default 1000)")
    p.add_argument("--messages", type=int, default=100000,
                   help="most messages to send (default: as many as --seconds allows)")
    p.add_argument("--seconds", type=float, default=20.0,
                   help="stop sending after this long (default 20)")
    p.add_argument("--size", type=int, default=100, help="message text bytes (default 100)")
    p.add_argument("--procs", type=int, default=1, help="poller processes (default 1)")
    p.add_argument("--peer-dir", default="",
                   help="Tornado's demos/chat directory (without it: chatapp alone)")
    p.add_argument("--only", choices=("chatapp", "demo"), default=None)
    p.add_argument("--mongo_uri", default="")
    p.add_argument("--app-dir", default="", help="the chatapp to run (default: this checkout)")
    p.add_argument("--server-arg", action="append", default=[], metavar="ARG")
    p.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    lc.raise_nofile_limit()
    kinds: list[type[Target]] = []
    if args.only != "demo":
        kinds.append(Chatapp)
    if args.peer_dir and args.only != "chatapp":
        kinds.append(Demo)
    results: dict[str, dict[str, Any]] = {}
    try:
        for kind in kinds:
            target = kind(args)
            try:
                print(f"[{time.strftime('%H:%M:%S')}] {target.name} (pid {target.pid}): "
                      f"{args.polls} pollers",
                      file=sys.stderr, flush=True)
                results[target.name] = asyncio.run(race(target, args))
            finally:
                target.stop()
    except cb.BenchError as exc:
        print(f"pollrace: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print(render(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=2)
    return 1 if any(failed(r) for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
