"""chatbench's crowd scenarios: thousands of people in one room, with the server's caps on.

``chatbench.py --scenario connect`` and ``--scenario crowd`` (the hook is a few lines in
chatbench.py; everything else is here and in ``crowdclient.py``). Unlike the other scenarios,
the server keeps its per-session, per-address and new-session caps: the load is spread the way
a real crowd is, many sessions of ``--crowd-per-session`` sockets each, from many addresses
(127.1.x.y: Linux loopback accepts any 127.0.0.0/8 source, and the server, without
``--trusted_proxies``, takes the socket's peer as the client), at most
``SESSIONS_PER_ADDRESS`` new sessions and ``CONNECTIONS_PER_ADDRESS`` connections each.

- ``connect``: the connect storm. Every person creates a session (``POST /api/session``) and
  opens their sockets at once (``--concurrency`` at a time per process). Reports refused and
  failed connects, the time until all were open, the time until the server was quiet again
  (joins stored and announced), and server RSS per idle WebSocket. With ``--polls``, that
  many more people then park one long-poll each: RSS per parked poll, and open files.
- ``crowd``: the storm, then ``--crowd-messages`` messages sent ``--crowd-gap`` s apart, each
  to everyone: broadcast latency (send -> arrival in the socket, kernel timestamp) p50/p99 over
  the ``--crowd-sample`` sockets of a separate load-client process (so that reading 10,000
  sockets does not delay the measured ones), and lost, duplicated and out-of-order deliveries
  over every socket (must be 0).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
import time
from typing import Any

import procstat

HERE = os.path.dirname(os.path.abspath(__file__))
CROWDCLIENT = os.path.join(HERE, "crowdclient.py")
SCENARIOS = ("connect", "crowd")
# New sessions per address: under the server's --new_sessions_per_ip burst (default 30 a
# minute, all at once), so that the storm is never refused for a cap a real crowd would not
# reach (a class behind one NAT is 30 people).
SESSIONS_PER_ADDRESS = 25
# Connections per address: under --max_connections_per_ip (default 1,000), for the same reason.
CONNECTIONS_PER_ADDRESS = 800
# Connections opening at once, all processes together. A crowd opens as people arrive, not a
# few at a time; the server listens with a backlog of 4,096 (chatapp/__main__.py), so this many
# never overflow its accept queue (which would turn into 1 s SYN retries). 5,000 sockets
# opened in 10.9 s with 250 in flight, 13.9 s with 96.
OPENING_AT_ONCE = 256
# ...of which the sampled process (--crowd-sample sockets, 100 by default) takes this many.
SAMPLER_CONCURRENCY = 8
# The server spaces a big room's presence frames by their cost, up to 5 s apart
# (chatapp/signals.py, MAX_PRESENCE_COALESCE_SECONDS): the storm's last one is written this
# long after it at most, to every socket (240 MB at 10,000), and a broadcast measured before
# it went out would measure it too. Waited for after the storm, then the server's CPU.
PRESENCE_SETTLE_SECONDS = 5.5
# "Quiet" here is under this share of a core: 10,000 idle sockets keep their server busy
# answering 400 pings a second (25 s apart each, chatapp/web/pinger.py), over the 3 % that
# chatbench's other scenarios wait for.
QUIET_BUSY = 0.10


async def quiet(bench: Any) -> None:
    await procstat.wait_quiet(bench.env.server_pid, busy=QUIET_BUSY,
                              timeout=min(30.0, bench.remaining()))


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("crowd scenarios (connect, crowd; bench/crowd.py)")
    g.add_argument("--crowd-per-session", type=int, default=5,
                   help="WebSockets per session (person) (default: 5; the server's cap is 20)")
    g.add_argument("--crowd-addresses", type=int, default=0,
                   help="source addresses (127.1.x.y) to spread people over (default: enough "
                        f"for {SESSIONS_PER_ADDRESS} sessions and {CONNECTIONS_PER_ADDRESS} "
                        "connections each)")
    g.add_argument("--crowd-sample", type=int, default=100,
                   help="sockets measured for latency, in their own process (default: 100)")
    g.add_argument("--crowd-messages", type=int, default=5,
                   help="crowd: messages sent to everyone (default: 5)")
    g.add_argument("--crowd-gap", type=float, default=1.0,
                   help="crowd: seconds between them (default: 1)")


def address(k: int) -> str:
    """The k-th source address: 127.1.0.1, 127.1.0.2, ... (never 127.0.0.1, the sender's)."""
    return f"127.1.{k // 250}.{k % 250 + 1}"


def plan(args: argparse.Namespace, run_id: str) -> tuple[list[list[Any]], list[list[Any]], int]:
    """People with WebSockets and people with a long-poll, ``[address, nick, ws, polls]``
    each, and the number of addresses they come from."""
    per = args.crowd_per_session
    ws_people = [per] * (args.ws // per) + ([args.ws % per] if args.ws % per else [])
    n_people = len(ws_people) + args.polls
    n_addr = args.crowd_addresses or max(
        1, math.ceil(n_people / SESSIONS_PER_ADDRESS),
        math.ceil((args.ws + args.polls) / CONNECTIONS_PER_ADDRESS))
    people = [[address(j % n_addr), f"c{run_id}{j}", n, 0] for j, n in enumerate(ws_people)]
    polls = [[address((len(people) + j) % n_addr), f"c{run_id}p{j}", 0, 1]
             for j in range(args.polls)]
    return people, polls, n_addr


def split(items: list[Any], parts: int) -> list[list[Any]]:
    n = len(items)
    return [items[n * k // parts:n * (k + 1) // parts] for k in range(parts)]


async def spawn(bench: Any, cb: Any, count: int) -> None:
    async def one(k: int) -> Any:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, CROWDCLIENT, cwd=HERE,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            limit=1 << 28, start_new_session=True)
        return cb.WorkerProcess(k, proc)

    bench.workers = list(await asyncio.gather(*(one(k) for k in range(count))))


def merge(replies: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {k: sum(r[k] for r in replies)
                           for k in ("sessions", "ws", "polls", "refused", "failed")}
    out["reasons"] = [x for r in replies for k in ("refused", "failed")
                      for x in r["reasons"][k]][:5]
    out["seconds"] = round(seconds, 3)
    out["client_cpu"] = [round(r["cpu"], 3) for r in replies]
    return out


async def storm(bench: Any, parts: list[list[list[Any]]], sampled: list[bool],
                cursor: str = "") -> dict[str, Any]:
    """Every part's people at once, one part per load-client process."""
    env, a = bench.env, bench.args
    # The sampled process has few people: the others share the connections in flight.
    concurrency = a.concurrency or max(8, OPENING_AT_ONCE // max(1, len(parts) - 1))
    msgs = [{"cmd": "crowd", "host": env.host, "port": env.port, "room": bench.room,
             "people": part, "sampled": s, "messages": a.crowd_messages,
             "poll_cursor": cursor, "concurrency": SAMPLER_CONCURRENCY if s else concurrency}
            for part, s in zip(parts, sampled)]
    cpu0, t0 = env.server_cpu(), time.monotonic()
    replies = await bench.call_all(msgs, bench.remaining())
    out = merge(replies, time.monotonic() - t0)
    cpu1 = env.server_cpu()
    if cpu0 is not None and cpu1 is not None:
        out["server_cpu_s"] = round(cpu1 - cpu0, 3)
    settle0 = time.monotonic()
    await quiet(bench)
    await asyncio.sleep(PRESENCE_SETTLE_SECONDS)
    await quiet(bench)
    out["settled_s"] = round(time.monotonic() - settle0, 3)
    return out


def open_files(pid: int | None) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd")) if pid else None
    except OSError:
        return None


async def run(bench: Any, cb: Any) -> dict[str, Any]:
    """The scenario; ``cb`` is chatbench's module (its WorkerProcess, summary, BenchError:
    imported again by name it would be a second copy, whose errors main() does not catch)."""
    a, env = bench.args, bench.env
    people, poll_people, n_addr = plan(a, bench.run_id)
    per = a.crowd_per_session
    n_sampled = min(len(people), math.ceil(a.crowd_sample / per)) if a.scenario == "crowd" else 0
    result: dict[str, Any] = {"addresses": n_addr, "people": len(people),
                              "per_session": per}
    bench.phase = "creating the sender's session"
    sender_cookie = (await bench.sessions(1, "s"))[0]
    await spawn(bench, cb, a.procs + 1)  # the first one holds the sampled sockets, alone
    sender = await bench.open_sender(sender_cookie)
    await bench.quiet()
    rss0 = bench.memory_mb()
    bench.phase = f"connect storm: {len(people)} people, {a.ws} WebSockets, {n_addr} addresses"
    bench.log(bench.phase)
    parts = [people[:n_sampled]] + split(people[n_sampled:], a.procs)
    result["open_ws"] = await storm(bench, parts, [True] + [False] * a.procs)
    rss1 = bench.memory_mb()
    if a.polls:
        bench.phase = f"parking {a.polls} long-polls"
        bench.log(bench.phase)
        cursor = await bench.room_cursor(sender_cookie)
        result["open_polls"] = await storm(bench, [[]] + split(poll_people, a.procs),
                                           [False] * (a.procs + 1), cursor)
    rss2 = bench.memory_mb()
    result["server_open_files"] = open_files(env.server_pid)
    if rss0 is not None and rss1 is not None and rss2 is not None:
        result["server_rss_mb_before"] = round(rss0, 1)
        result["server_rss_mb_open"] = round(rss2, 1)
        if result["open_ws"]["ws"]:
            result["rss_kb_per_ws"] = round((rss1 - rss0) * 1024 / result["open_ws"]["ws"], 2)
        if a.polls and result["open_polls"]["polls"]:
            result["rss_kb_per_poll"] = round(
                (rss2 - rss1) * 1024 / result["open_polls"]["polls"], 2)
    if a.scenario == "crowd":
        result.update(await broadcast(bench, cb, sender, sender_cookie))
    result["server_peak_rss_mb"] = round(env.server_memory().get("VmHWM", 0) / 1024, 1)
    return result


async def broadcast(bench: Any, cb: Any, sender: Any, sender_cookie: str) -> dict[str, Any]:
    a, env = bench.args, bench.env
    start_cursor = await bench.room_cursor(sender_cookie)
    bench.phase = "sending"
    bench.log(f"sending {a.crowd_messages} message(s), {a.crowd_gap} s apart")
    started = await bench.call_all([{"cmd": "start", "target": a.crowd_messages}]
                                   * len(bench.workers), bench.remaining())
    closed = sum(r["closed"] for r in started)
    cpu0 = env.server_cpu()
    rate = 1.0 / a.crowd_gap if a.crowd_gap > 0 else 0.0
    await sender.send_messages(a.crowd_messages, a.size, rate, 1, bench.send_deadline)
    await procstat.wait_quiet(env.server_pid, timeout=min(30.0, bench.report_remaining()))
    cpu1 = env.server_cpu()
    stored = await bench.check_stored(sender, start_cursor)
    bench.phase = "waiting for deliveries"
    replies = await bench.call_all(
        [{"cmd": "finish", "target": stored["count"], "last_id": stored["last_id"],
          "timeout": max(2.0, bench.report_remaining() - 5), "linger": 0.5}]
        * len(bench.workers), bench.report_remaining())
    env.check_alive()
    ws = [r["ws"] for r in replies]
    everyone = ws + [r["poll"] for r in replies]  # the parked long-polls must get it too
    summary = cb.summary
    problems = {k: sum(p[k] for p in everyone) for k in (
        "lost", "duplicated", "dup_seq", "out_of_order", "wrong_last_id", "closed_by_server")}
    problems["closed_before_sending"] = closed
    problems["unanswered_sends"] = sender.sent - len(sender.ack_ids) - len(sender.errors)
    problems["send_errors"] = len(sender.errors)
    problems.update({k: stored[k] for k in ("acked_not_stored", "stored_despite_error",
                                            "stored_twice")})
    out: dict[str, Any] = {
        "stored": stored["count"],
        "sockets": sum(p["conns"] for p in everyone),
        "complete": sum(p["complete"] for p in everyone),
        "problems": problems,
        "arrival_latency": summary(ws[0]["arrival_latencies"]),
        "read_latency": summary(ws[0]["latencies"]),
        "no_timestamp": ws[0]["no_timestamp"],
        "ack_latency": summary(sender.ack_latency),
        "timed_out": any(r["timed_out"] for r in replies),
        "first_error": next((p["first_error"] for p in everyone if p["first_error"]), ""),
    }
    if cpu0 is not None and cpu1 is not None:
        out["server_cpu_s"] = round(cpu1 - cpu0, 3)
    # The sampled process reads each message from all its sockets before the next is sent
    # (--crowd-gap apart), so its samples come in runs, one per message: a pause that hit one
    # message (a collection, a presence frame) shows apart from a slow fan-out of every one.
    arrivals, n = ws[0]["arrival_latencies"], stored["count"]
    if n and len(arrivals) == n * ws[0]["conns"]:
        runs = [arrivals[k * ws[0]["conns"]:(k + 1) * ws[0]["conns"]] for k in range(n)]
        out["p99_ms_per_message"] = [summary(run).get("p99_ms") for run in runs]
    return out


def ok(r: dict[str, Any]) -> bool:
    opened = [r[k] for k in ("open_ws", "open_polls") if k in r]
    if any(o["refused"] or o["failed"] for o in opened):
        return False
    if "problems" in r:
        return not any(r["problems"].values()) and not r["timed_out"]
    return True


def render(args: argparse.Namespace, r: dict[str, Any], fmt_latency: Any) -> str:
    rows: list[tuple[str, str]] = []

    def add(name: str, value: str) -> None:
        rows.append((name, value))

    add("crowd", f"{args.ws:,} WebSockets from {r['people']:,} sessions of "
                  f"{r['per_session']}, {args.polls:,} long-polls, {r['addresses']} "
                  "addresses; server caps on")
    for key, label in (("open_ws", "WebSockets"), ("open_polls", "long-polls")):
        if key not in r:
            continue
        o = r[key]
        count = o["ws"] if key == "open_ws" else o["polls"]
        cpu = f", server CPU {o['server_cpu_s']} s" if "server_cpu_s" in o else ""
        add(f"opened {label}", f"{count:,} in {o['seconds']} s ({o['sessions']:,} sessions "
                                f"created{cpu}); quiet {o['settled_s']} s later (the last "
                                f"presence frame waited for)")
        add("refused / failed", f"{o['refused']} / {o['failed']}"
                                 + (f": {'; '.join(o['reasons'])}" if o["reasons"] else ""))
    if "rss_kb_per_ws" in r:
        add("RSS per idle WS", f"{r['rss_kb_per_ws']} KiB")
    if "rss_kb_per_poll" in r:
        add("RSS per parked poll", f"{r['rss_kb_per_poll']} KiB")
    if "server_rss_mb_before" in r:
        add("server RSS", f"{r['server_rss_mb_before']} MB before, "
                           f"{r['server_rss_mb_open']} MB open, peak {r['server_peak_rss_mb']} MB")
    add("server open files", str(r.get("server_open_files")))
    if "problems" in r:
        pr = r["problems"]
        add("delivered", f"{r['stored']} message(s) to {r['complete']:,} of "
                          f"{r['sockets']:,} receivers (WebSockets and long-polls)")
        add("broadcast latency", f"arrival {fmt_latency(r['arrival_latency'])}")
        add("", f"read    {fmt_latency(r['read_latency'])}  ({args.crowd_sample} sampled "
                 "sockets in their own process)")
        add("ack latency", fmt_latency(r["ack_latency"]))
        if "p99_ms_per_message" in r:
            add("p99 per message", " ".join(f"{x:.0f}" for x in r["p99_ms_per_message"])
                + " ms")
        add("lost / duplicated", f"{pr['lost']} / {pr['duplicated'] + pr['dup_seq']} "
                                  f"(out of order {pr['out_of_order']}, wrong last id "
                                  f"{pr['wrong_last_id']}, closed by server "
                                  f"{pr['closed_by_server'] + pr['closed_before_sending']})")
        others = {k: v for k, v in pr.items() if v and k not in (
            "lost", "duplicated", "dup_seq", "out_of_order", "wrong_last_id",
            "closed_by_server", "closed_before_sending")}
        if others or r["first_error"]:
            add("other problems", f"{others} {r['first_error']}")
        if "server_cpu_s" in r:
            add("server CPU", f"{r['server_cpu_s']} s for the broadcast")
        if r["timed_out"]:
            add("TIMED OUT", "not every socket got every message")
    width = max(len(name) for name, _ in rows)
    return "\n".join([f"chatbench {args.scenario}"]
                     + [f"  {name:<{width}}  {value}" for name, value in rows])
