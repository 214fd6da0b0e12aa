#!/usr/bin/env python
"""actionbench: fan-out with message actions flowing (edits, reactions, replies), over the
real WebSocket interface.

Like chatbench's fanout scenario (it uses chatbench's environment: embedded MongoDB, the app
as its own process, sessions), but the sender mixes actions into its stream: every
--actions-every-th send is, in turn, an edit of its latest acknowledged message, a reaction
to it (on, then off the next time), and a reply to it. --ws receivers, split over --procs
processes, parse every event frame (not only messages, as chatbench's receivers do) and are
checked against the room's history as stored (read back after sending): each stored event
exactly once, in id order, messages and actions alike. Prints deliveries/s (events received
by all receivers / time from the first send to the last delivery), read latency of the
events that carry the sender's clock in their text (messages, replies and edits), and the
counts; exits 1 on anything lost, duplicated, out of order or refused.

    python bench/actionbench.py --ws 500 --messages 400 --rate 20 --actions-every 5 --procs 2

Standard library only (plus chatapp.mongod for the embedded MongoDB, through chatbench).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import multiprocessing
import os
import sys
import time
from multiprocessing.connection import Connection
from typing import Any

import chatbench as cb
import loadclient as lc

# The kinds of action the sender takes in turn, every --actions-every-th send.
ACTIONS = ("edit", "react", "reply")
# Seconds the receivers wait, after the stored history is read, for the last events to arrive.
SETTLE_SECONDS = 30.0


class ActionSender(cb.Sender):
    """chatbench's sender, with actions on its latest acknowledged message mixed in."""

    def __init__(self, host: str, port: int, path: str, cookie: str) -> None:
        super().__init__(host, port, path, cookie)
        self.message_ids: list[str] = []  # acknowledged messages (and replies), in ack order
        self.reacted: set[str] = set()  # messages the sender's reaction is on
        self.kinds: dict[str, str] = {}  # client_id -> send, edit, react, reply
        self.refused = 0  # errors on actions (counted in ``errors`` too)

    def on_text(self, payload: bytes, now: float) -> None:
        frame = json.loads(payload)
        cid = frame.get("client_id", "")
        if frame.get("type") == "ack" and cid in self.pending:
            if self.kinds.get(cid) in ("send", "reply"):
                self.message_ids.append(frame["event"]["id"])
            if frame.get("event") is None:  # a reaction that changed nothing: not expected
                frame["event"] = {"id": ""}
                payload = json.dumps(frame).encode()
        super().on_text(payload, now)

    def frame_for(self, i: int, text: str, every: int) -> dict[str, Any]:
        """The ``i``-th send: a message, or (every ``every``-th, once a message is acked)
        an action on the latest acknowledged message."""
        cid = f"m{i}"
        kind = ACTIONS[(i // every) % len(ACTIONS)] if every and i % every == every - 1 \
            else "send"
        if kind != "send" and not self.message_ids:
            kind = "send"
        self.kinds[cid] = kind
        if kind == "send":
            return {"type": "send", "text": text, "client_id": cid}
        target = self.message_ids[-1]
        if kind == "edit":
            return {"type": "edit", "target": target, "text": text, "client_id": cid}
        if kind == "reply":
            return {"type": "send", "text": text, "reply_to": target, "client_id": cid}
        on = target not in self.reacted
        (self.reacted.add if on else self.reacted.discard)(target)
        return {"type": "react", "target": target, "emoji": "👍", "on": on, "client_id": cid}

    async def send_mixed(self, count: int, size: int, rate: float, every: int,
                         deadline: float) -> None:
        """Send ``count`` frames at ``rate`` per second (one at a time in flight when 0),
        waiting at most a little past ``deadline`` for the answers."""
        self.window = asyncio.Semaphore(1 if rate <= 0 else 64)
        self.expected = count
        self.all_answered.clear()
        start = time.monotonic()
        for i in range(count):
            try:
                await asyncio.wait_for(self.window.acquire(), deadline - time.monotonic())
            except TimeoutError:
                break
            if rate > 0:
                delay = start + i / rate - time.monotonic()
                if delay > deadline - time.monotonic():
                    break
                if delay > 0:
                    await asyncio.sleep(delay)
            if self.closed:
                raise cb.BenchError(f"the sender's WebSocket was closed ({self.close_code})")
            sent = time.time()
            head = f"{i} {sent:.6f} "
            frame = self.frame_for(i, head + "x" * max(1, size - len(head)), every)
            self.pending[frame["client_id"]] = sent
            if i == 0:
                self.first_send = sent
            self.send_text(json.dumps(frame))
            self.sent += 1
        self.expected = self.sent
        if len(self.ack_ids) + len(self.errors) >= self.expected:
            self.all_answered.set()
        try:
            await asyncio.wait_for(self.all_answered.wait(),
                                   min(60.0, max(5.0, deadline + 10 - time.monotonic())))
        except TimeoutError:
            pass


# -- receivers, in their own processes ---------------------------------------------------------


class EventReceiver(lc.WebSocketProtocol):
    """Parses every event frame: the ids it got, in order, and the read latency of the events
    whose text starts with the sender's clock."""

    def __init__(self, host: str, port: int, path: str, cookie: str) -> None:
        super().__init__(host, port, path, cookie)
        self.ids: list[str] = []
        self.kinds: dict[str, int] = {}
        self.latencies: dict[str, list[float]] = {"message": [], "action": []}
        self.last_t = 0.0

    def on_text(self, payload: bytes, now: float) -> None:
        frame = json.loads(payload)
        if frame.get("type") != "event":
            return
        event = frame["event"]
        self.ids.append(event["id"])
        kind = event["type"] + ("/reply" if event.get("reply_to") else "")
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        self.last_t = now
        text = event.get("text")
        if text and text[:1].isdigit():
            try:
                _, sent = lc.parse_sent_text(text)
            except ValueError:
                return
            group = "message" if event["type"] == "message" and not event.get("reply_to") \
                else "action"
            self.latencies[group].append(now - sent)


def receiver_process(host: str, port: int, path: str, cookies: list[str],
                     conn: Connection) -> None:
    lc.raise_nofile_limit()
    asyncio.run(_receive(host, port, path, cookies, conn))


async def _receive(host: str, port: int, path: str, cookies: list[str],
                   conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(lc.DEFAULT_CONCURRENCY)

    async def open_one(cookie: str) -> EventReceiver:
        async with sem:
            proto = await lc.open_websocket(lambda: EventReceiver(host, port, path, cookie),
                                            host, port)
            return proto  # type: ignore[return-value]

    receivers = list(await asyncio.gather(*(open_one(c) for c in cookies)))
    conn.send({"ready": len(receivers)})
    expected: list[str] = (await loop.run_in_executor(None, conn.recv))["expected"]
    want = set(expected)
    start = expected[0] if expected else ""
    until = time.monotonic() + SETTLE_SECONDS
    while time.monotonic() < until:
        if all(want <= set(r.ids) for r in receivers):
            break
        await asyncio.sleep(0.05)
    report: dict[str, Any] = {"lost": 0, "duplicated": 0, "out_of_order": 0, "unexpected": 0,
                              "deliveries": 0, "kinds": {}, "last_t": 0.0, "closed": 0,
                              "latencies": {"message": [], "action": []}}
    for r in receivers:
        got = [i for i in r.ids if i >= start]  # the backlog before the first send is not ours
        report["deliveries"] += len(got)
        report["lost"] += len(want - set(got))
        report["duplicated"] += len(got) - len(set(got))
        report["unexpected"] += len(set(got) - want)
        report["out_of_order"] += sum(1 for a, b in itertools.pairwise(got) if b <= a)
        report["last_t"] = max(report["last_t"], r.last_t)
        report["closed"] += r.closed
        for kind, n in r.kinds.items():
            report["kinds"][kind] = report["kinds"].get(kind, 0) + n
        for group, values in r.latencies.items():
            report["latencies"][group].extend(values)
        r.close()
    conn.send(report)


# -- the run -----------------------------------------------------------------------------------


async def stored_events(bench: cb.Bench, cookie: str, after: str,
                        last: str) -> list[dict[str, Any]]:
    """Every event of the room above ``after`` up to ``last`` (the sender's last acked id),
    oldest first, actions included: long-polls from ``after`` (each answers at once while
    newer events exist; the history API lists messages only)."""
    events: list[dict[str, Any]] = []
    cursor = after
    while cursor < last:
        page = await bench.get(f"/api/rooms/{bench.room}/updates?cursor={cursor}", cookie)
        events.extend(e for e in page["events"] if e["id"] > cursor)
        cursor = page["cursor"]
    return events


async def run(args: argparse.Namespace, env: cb.Environment) -> dict[str, Any]:
    bench = cb.Bench(args, env)
    per = args.per_session
    sender_cookie = (await bench.sessions(1, "s"))[0]
    ws_sessions = await bench.sessions(math.ceil(args.ws / per), "w")
    cookies = [ws_sessions[i // per] for i in range(args.ws)]
    host, port, path = env.host, env.port, f"/api/rooms/{bench.room}/ws"
    sender: ActionSender = await lc.open_websocket(
        lambda: ActionSender(host, port, path, sender_cookie), host, port)  # type: ignore
    ctx = multiprocessing.get_context("spawn")
    pipes, procs = [], []
    try:
        for part in cb.split(cookies, args.procs):
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(target=receiver_process, args=(host, port, path, part, theirs),
                               daemon=True)
            proc.start()
            pipes.append(mine)
            procs.append(proc)
        loop = asyncio.get_running_loop()
        for pipe in pipes:
            await asyncio.wait_for(loop.run_in_executor(None, pipe.recv), args.timeout)
        await bench.quiet()
        start_cursor = await bench.room_cursor(sender_cookie)
        await sender.send_mixed(args.messages, args.size, args.rate, args.actions_every,
                                time.monotonic() + args.timeout)
        await bench.quiet()
        stored = await stored_events(bench, sender_cookie, start_cursor, sender.last_id)
        expected = [e["id"] for e in stored]
        for pipe in pipes:
            pipe.send({"expected": expected})
        reports = [await asyncio.wait_for(loop.run_in_executor(None, pipe.recv),
                                          SETTLE_SECONDS + 30) for pipe in pipes]
    finally:
        sender.close()
        for proc in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
    total: dict[str, Any] = {"lost": 0, "duplicated": 0, "out_of_order": 0, "unexpected": 0,
                             "deliveries": 0, "closed": 0, "kinds": {}}
    latencies: dict[str, list[float]] = {"message": [], "action": []}
    last_t = 0.0
    for rep in reports:
        for k in ("lost", "duplicated", "out_of_order", "unexpected", "deliveries", "closed"):
            total[k] += rep[k]
        for kind, n in rep["kinds"].items():
            total["kinds"][kind] = total["kinds"].get(kind, 0) + n
        for group, values in latencies.items():
            values.extend(rep["latencies"][group])
        last_t = max(last_t, rep["last_t"])
    stored_kinds: dict[str, int] = {}
    for e in stored:
        kind = e["type"] + ("/reply" if e.get("reply_to") else "")
        stored_kinds[kind] = stored_kinds.get(kind, 0) + 1
    elapsed = last_t - sender.first_send if last_t and sender.first_send else 0.0
    return {
        "room": bench.room, "ws": args.ws, "sent": sender.sent, "acked": len(sender.ack_ids),
        "send_errors": len(sender.errors), "first_error": sender.errors[:1],
        "stored": len(stored), "stored_kinds": stored_kinds, **total,
        "deliveries_per_s": round(total["deliveries"] / elapsed) if elapsed > 0 else None,
        "elapsed_s": round(elapsed, 3),
        "ack": cb.summary(sender.ack_latency),
        "latency_message": cb.summary(latencies["message"]),
        "latency_action": cb.summary(latencies["action"]),
    }


def render(r: dict[str, Any]) -> str:
    def lat(s: dict[str, Any]) -> str:
        return cb.fmt_latency(s) if s.get("n") else "-"

    kinds = ", ".join(f"{k} {n}" for k, n in sorted(r["stored_kinds"].items()))
    return "\n".join([
        "actionbench",
        f"  clients            {r['ws']} WebSocket receivers, room {r['room']}",
        (f"  sent               {r['sent']} ({r['acked']} acked, {r['send_errors']} errors "
         f"{r['first_error'] or ''})"),
        f"  stored             {r['stored']} events: {kinds}",
        f"  deliveries         {r['deliveries']:,} in {r['elapsed_s']} s",
        f"  deliveries/s       {r['deliveries_per_s']:,}" if r["deliveries_per_s"] else
        "  deliveries/s       -",
        f"  ack latency        {lat(r['ack'])}",
        f"  read latency       messages {lat(r['latency_message'])}",
        f"                     actions  {lat(r['latency_action'])} (replies and edits)",
        (f"  lost / duplicated  {r['lost']} / {r['duplicated']}   (out of order "
         f"{r['out_of_order']}, not stored {r['unexpected']}, closed {r['closed']})"),
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ws", type=int, default=200, help="WebSocket receivers (200)")
    p.add_argument("--messages", type=int, default=400,
                   help="sends in all, actions included (400)")
    p.add_argument("--rate", type=float, default=20.0, help="sends per second (20)")
    p.add_argument("--actions-every", type=int, default=5,
                   help="every N-th send is an action (5); 0: messages only")
    p.add_argument("--size", type=int, default=100, help="text bytes (100)")
    p.add_argument("--procs", type=int, default=1, help="receiver processes (1)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds for the run (120)")
    p.add_argument("--app-dir", default="", metavar="DIR",
                   help="run the chatapp package in DIR (another commit, to compare)")
    p.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON")
    ours = p.parse_args(argv)
    # chatbench's own options, for its environment (embedded MongoDB, the app, the caps
    # lifted), with ours where they mean the same.
    args = cb.parse_args(["--ws", str(ours.ws), "--polls", "0", "--quiet",
                          "--timeout", str(ours.timeout), "--app-dir", ours.app_dir])
    for name in ("messages", "rate", "actions_every", "size", "procs"):
        setattr(args, name, getattr(ours, name))
    lc.raise_nofile_limit()
    env = cb.Environment(args)
    try:
        env.start()
        result = asyncio.run(run(args, env))
    except cb.BenchError as exc:
        print(f"actionbench: {exc}", file=sys.stderr)
        return 1
    finally:
        env.stop()
    print(render(result))
    if ours.json:
        with open(ours.json, "w") as f:
            json.dump(result, f, indent=2)
    bad = (result["lost"] or result["duplicated"] or result["out_of_order"]
           or result["unexpected"] or result["send_errors"] or result["closed"]
           or result["acked"] != result["sent"])
    if bad:
        print("actionbench: FAILED: lost, duplicated, out of order or refused", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.exit(main())
