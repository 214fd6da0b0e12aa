#!/usr/bin/env python
"""chatbench: load-test chatapp over its real HTTP and WebSocket interface.

Starts MongoDB (embedded, in a temporary directory, unless --mongo_uri is given) and the app
(``python -m chatapp`` as a separate process, on a free port of 127.0.0.1), opens WebSocket and
long-poll clients in one room from --procs load-client processes (bench/loadclient.py), sends
messages from one more WebSocket client, checks that every client got every message exactly
once, and prints throughput, latency, CPU and memory. Everything it starts is stopped at the
end, also on Ctrl-C or an error.

Scenarios (--scenario):
  fanout   (default) --ws WebSocket and --polls long-poll clients receive --messages messages
           of --size bytes sent at --rate per second (0: flat out, at most --inflight waiting
           for their ack). Deliveries per second, send-to-receive latency per transport
           (WebSocket: to the arrival in the client's socket, and to its read), lost and
           duplicated deliveries, CPU of the server, mongod and the load clients, server RSS
           per idle connection.
  parked   --polls long-polls wait in the room; one message is sent. How many were woken, and
           how long from the send to the last wake-up.
  history  --history-events messages are stored, then --requests sequential requests of
           GET .../history?limit=100, and as many with before=<a random id>: latency.
  idle     --ws WebSockets are opened and closed: server RSS per connection, open rate.
  resume   a client resumes --messages missed events, plain and with permessage-deflate:
           bytes on the wire (bench/resumebench.py).

Standard library only (plus chatapp.mongod for the embedded MongoDB). Linux (/proc).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import itertools
import json
import math
import os
import platform
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any
from urllib.parse import urlsplit

import crowd
import loadclient as lc
import pollclient
import procstat
import resumebench

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
LOADCLIENT = os.path.join(HERE, "loadclient.py")
HOST = "127.0.0.1"

# How the app is started: the same `python -m chatapp`, with the open-file soft limit raised to
# the hard limit first (every client connection is one fd in the server too), and SIGTERM
# asked for should chatbench die without cleaning up.
SERVER_WRAPPER = """\
import ctypes, resource, runpy, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if hard != resource.RLIM_INFINITY and soft < hard:
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, 15)  # PR_SET_PDEATHSIG, SIGTERM
except (OSError, AttributeError):
    pass
sys.argv = ["chatapp"] + sys.argv[1:]
runpy.run_module("chatapp", run_name="__main__", alter_sys=True)
"""
# File descriptors a process needs besides its client connections (MongoDB pool, pipes, logs).
FD_MARGIN = 200
# Seconds a run may take past --timeout to check and report what happened until then.
REPORT_SECONDS = 10.0
# Seconds allowed for MongoDB and the app to start, and for each to stop.
START_SECONDS, STOP_SECONDS = 60.0, 15.0

EPILOG = """\
examples:
  python bench/chatbench.py --ws 100 --messages 500
  python bench/chatbench.py --ws 1000 --polls 0 --messages 2000 --rate 0
  python bench/chatbench.py --ws 2000 --messages 2000 --rate 0 --procs 2
  python bench/chatbench.py --polls 1000 --messages 500
  python bench/chatbench.py --scenario parked --polls 10000 --procs 2
  python bench/chatbench.py --scenario idle --ws 5000
  python bench/chatbench.py --scenario history --history-events 1000 --requests 1000
  python bench/chatbench.py --scenario resume --messages 500
  python bench/chatbench.py --ws 500 --messages 1000 --rate 0 --ws-compression
  python bench/chatbench.py --url http://127.0.0.1:8888 --server-pid 1234 --ws 500

Each client connection costs one file descriptor in its load-client process and one in the
server; chatbench raises both soft limits to the hard limit (ulimit -Hn) and refuses a run
that does not fit. See bench/README.md.
"""


# -- helpers --------------------------------------------------------------------------------


def percentile(ordered: list[float], p: float) -> float | None:
    """Nearest-rank percentile of an already sorted list."""
    if not ordered:
        return None
    k = min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))
    return ordered[k]


def summary(values: list[float]) -> dict[str, Any]:
    """count, p50, p90, p99, max and mean of a list of seconds (reported in ms)."""
    ordered = sorted(values)
    if not ordered:
        return {"n": 0}
    ms = 1000.0
    return {
        "n": len(ordered),
        "p50_ms": round(percentile(ordered, 50) * ms, 3),
        "p90_ms": round(percentile(ordered, 90) * ms, 3),
        "p99_ms": round(percentile(ordered, 99) * ms, 3),
        "max_ms": round(ordered[-1] * ms, 3),
        "mean_ms": round(sum(ordered) / len(ordered) * ms, 3),
    }


def split(items: list[Any], parts: int) -> list[list[Any]]:
    """``items`` in ``parts`` contiguous slices of near-equal size."""
    n = len(items)
    return [items[n * k // parts:n * (k + 1) // parts] for k in range(parts)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class BenchError(Exception):
    """A run that cannot go on (the server refused, a process died); printed, exit status 1."""


# -- the server and MongoDB -----------------------------------------------------------------


class Environment:
    """MongoDB and the app: started here, or given (--mongo_uri, --url)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = tempfile.mkdtemp(prefix="chatbench-")
        self.mongo: Any = None
        self.server: subprocess.Popen[bytes] | None = None
        self.server_log = os.path.join(self.tmp, "server.log")
        self.server_pid: int | None = args.server_pid
        self.mongod_pid: int | None = None
        self.host, self.port = HOST, 0

    def start(self) -> None:
        if self.args.url:
            parts = urlsplit(self.args.url)
            self.host, self.port = parts.hostname or HOST, parts.port or 80
            self.wait_healthy(10.0)
            return
        uri = self.args.mongo_uri
        if not uri:
            sys.path.insert(0, REPO)
            from chatapp.mongod import EmbeddedMongo

            self.mongo = EmbeddedMongo(os.path.join(self.tmp, "mongo"))
            uri = self.mongo.start(timeout=START_SECONDS)
            proc = getattr(self.mongo, "_proc", None)
            self.mongod_pid = proc.pid if proc is not None else None
        self.port = free_port()
        app_dir = self.app_dir()
        env = dict(os.environ)
        env["PYTHONPATH"] = app_dir + os.pathsep + env.get("PYTHONPATH", "")
        argv = [
            sys.executable, "-c", SERVER_WRAPPER,
            f"--port={self.port}", f"--address={HOST}", f"--mongo_uri={uri}",
            f"--data_dir={os.path.join(self.tmp, 'app')}", "--rate_limit=0",
            "--history_size=100", "--poll_timeout=25",
            *self.uncap(app_dir, env), *self.args.server_arg,
        ]  # fmt: skip
        with open(self.server_log, "ab") as log:
            self.server = subprocess.Popen(
                argv, cwd=app_dir, env=env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self.server_pid = self.server.pid
        self.wait_healthy(START_SECONDS)

    def app_dir(self) -> str:
        """Where the chatapp package to run lives: this checkout, or --app-dir (for instance
        an older commit exported with `git archive`, to compare)."""
        app_dir = os.path.abspath(self.args.app_dir or REPO)
        if not os.path.isfile(os.path.join(app_dir, "chatapp", "__main__.py")):
            raise BenchError(f"no chatapp package in {app_dir}")
        return app_dir

    def uncap(self, app_dir: str, env: dict[str, str]) -> list[str]:
        """Options that lift the server's per-session and per-address connection caps and its
        per-address new-session limit, if it has them: every client here comes from 127.0.0.1,
        with up to --per-session connections per session (like --rate_limit=0, a benchmark
        measures capacity). The crowd scenarios keep them (bench/crowd.py)."""
        if getattr(self.args, "scenario", None) in crowd.SCENARIOS:
            return []
        try:
            out = subprocess.run(
                [sys.executable, "-m", "chatapp", "--help"], cwd=app_dir, env=env,
                capture_output=True, timeout=30, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            return []
        # Tornado lists options with dashes and accepts either spelling.
        text = (out.stdout + out.stderr).decode(errors="replace").replace("-", "_")
        return [f"--{name}=0" for name in ("max_connections_per_session",
                                            "max_connections_per_ip",
                                            "new_sessions_per_ip") if name in text]

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.server is not None and self.server.poll() is not None:
                raise BenchError(f"the server exited with {self.server.returncode}:\n"
                                 + self.log_tail())
            try:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=2)
                conn.request("GET", "/healthz")
                response = conn.getresponse()
                body = response.read()
                conn.close()
                if response.status == 200:
                    return
                last = f"{response.status} {body[:200]!r}"
            except OSError as exc:
                last = repr(exc)
            time.sleep(0.1)
        raise BenchError(f"the server is not healthy after {timeout:.0f} s ({last})\n"
                         + self.log_tail())

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.server_log, "rb") as f:
                return b"\n".join(f.read().splitlines()[-lines:]).decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.server is not None:
            if self.server.poll() is None:
                self.server.send_signal(signal.SIGTERM)
                try:
                    self.server.wait(STOP_SECONDS)
                except subprocess.TimeoutExpired:
                    self.server.kill()
                    self.server.wait()
            self.server = None
        if self.mongo is not None:
            self.mongo.stop(STOP_SECONDS)
            self.mongo = None
        if not self.args.keep_temp:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # -- figures

    def server_cpu(self) -> float | None:
        if self.server_pid is None or not procstat.alive(self.server_pid):
            return None
        return procstat.cpu_seconds(self.server_pid)

    def mongod_cpu(self) -> float | None:
        if self.mongod_pid is None or not procstat.alive(self.mongod_pid):
            return None
        return procstat.cpu_seconds(self.mongod_pid)

    def server_memory(self) -> dict[str, int]:
        if self.server_pid is None or not procstat.alive(self.server_pid):
            return {}
        return procstat.memory_kb(self.server_pid)

    def check_alive(self) -> None:
        if self.server is not None and self.server.poll() is not None:
            raise BenchError(f"the server died (exit {self.server.returncode}):\n"
                             + self.log_tail())


# -- load-client processes ------------------------------------------------------------------


class WorkerProcess:
    """One bench/loadclient.py process, driven by JSON lines over its stdin and stdout."""

    def __init__(self, index: int, proc: asyncio.subprocess.Process) -> None:
        self.index, self.proc = index, proc

    @classmethod
    async def spawn(cls, index: int) -> WorkerProcess:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, LOADCLIENT, cwd=HERE,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            limit=1 << 28,  # the "finish" answer carries the sampled latencies
            start_new_session=True,  # Ctrl-C is ours; workers stop when their stdin closes
        )  # fmt: skip
        return cls(index, proc)

    async def call(self, msg: dict[str, Any], timeout: float) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write((json.dumps(msg) + "\n").encode())
        await self.proc.stdin.drain()
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), max(timeout, 1.0))
        except TimeoutError:
            raise BenchError(f"load client {self.index} did not answer {msg['cmd']!r} "
                             f"within {timeout:.0f} s") from None
        if not line:
            raise BenchError(f"load client {self.index} exited ({self.proc.returncode})")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise BenchError(f"load client {self.index}: {reply.get('error')}")
        return reply

    async def stop(self) -> None:
        if self.proc.returncode is None:
            try:
                await self.call({"cmd": "close"}, 10.0)
            except (BenchError, OSError, ConnectionError):
                pass
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), 5.0)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


# -- the sender -----------------------------------------------------------------------------


class Sender(lc.WebSocketProtocol):
    """The one client that sends: ``{"type": "send"}`` frames, at most ``inflight`` waiting
    for their ``ack``. Each text is ``"<n> <time.time()> xxx..."``, ``size`` bytes long."""

    def __init__(self, host: str, port: int, path: str, cookie: str) -> None:
        super().__init__(host, port, path, cookie)
        self.pending: dict[str, float] = {}
        self.ack_ids: list[str] = []
        self.acked_seqs: set[int] = set()
        self.error_seqs: set[int] = set()
        self.ack_latency: list[float] = []
        self.errors: list[str] = []
        self.first_send = 0.0
        self.last_ack = 0.0
        self.sent = 0
        self.window: asyncio.Semaphore | None = None
        self.all_answered: asyncio.Event = asyncio.Event()
        self.expected = 0

    def on_text(self, payload: bytes, now: float) -> None:
        frame = json.loads(payload)
        kind = frame.get("type")
        if kind == "ack":
            sent = self.pending.pop(frame.get("client_id"), None)
            if sent is None:
                return  # a repeat of an ack: not one of ours in flight
            self.ack_latency.append(now - sent)
            self.ack_ids.append(frame["event"]["id"])
            self.acked_seqs.add(int(frame["client_id"][1:]))
            self.last_ack = now
        elif kind == "error":
            cid = frame.get("client_id")
            sent = self.pending.pop(cid, None)
            self.errors.append(f"{frame.get('error')}: {frame.get('message')}")
            if sent is None:
                return
            self.error_seqs.add(int(cid[1:]))
        else:
            return
        if self.window is not None:
            self.window.release()
        if len(self.ack_ids) + len(self.errors) >= self.expected:
            self.all_answered.set()

    def on_closed(self) -> None:
        self.all_answered.set()

    async def send_messages(self, count: int, size: int, rate: float, inflight: int,
                            deadline: float) -> None:
        """Send up to ``count`` messages; at ``deadline`` stop sending (``self.sent`` says how
        many went) and wait at most a little longer for the answers."""
        self.window = asyncio.Semaphore(inflight)
        self.expected = count
        self.sent = 0
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
                raise BenchError(f"the sender's WebSocket was closed ({self.close_code})")
            sent = time.time()
            head = f"{i} {sent:.6f} "
            text = head + "x" * max(1, size - len(head))
            cid = f"m{i}"
            self.pending[cid] = sent
            if i == 0:
                self.first_send = sent
            self.send_text(json.dumps({"type": "send", "text": text, "client_id": cid}))
            self.sent += 1
        self.expected = self.sent
        if len(self.ack_ids) + len(self.errors) >= self.expected:
            self.all_answered.set()
        try:
            # The server answers every send within its store timeout (4 s) once it reads it.
            await asyncio.wait_for(self.all_answered.wait(),
                                   min(60.0, max(5.0, deadline + 10 - time.monotonic())))
        except TimeoutError:
            pass  # reported: the unanswered sends are missing from the acks

    @property
    def last_id(self) -> str:
        return max(self.ack_ids) if self.ack_ids else ""


# -- the benchmark --------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, env: Environment) -> None:
        self.args = args
        self.env = env
        self.deadline = time.monotonic() + args.timeout
        # Sending stops this long before --timeout, so that deliveries can drain and be counted.
        self.send_deadline = self.deadline - min(15.0, args.timeout / 4)
        # Past --timeout, sending stops; checking and reporting what happened may take this
        # much longer (a run that timed out still reports its figures, marked as such).
        self.report_deadline = self.deadline + REPORT_SECONDS
        self.run_id = secrets.token_hex(3)
        self.room = args.room or f"bench-{self.run_id}"
        self.workers: list[WorkerProcess] = []
        self.sender: Sender | None = None
        self.result: dict[str, Any] = {}
        self.phase = "starting"

    def remaining(self) -> float:
        return max(0.1, self.deadline - time.monotonic())

    def report_remaining(self) -> float:
        return max(0.1, self.report_deadline - time.monotonic())

    def log(self, text: str) -> None:
        if not self.args.quiet:
            print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    async def quiet(self) -> float:
        """Wait until the server has done what the last step started (its CPU goes idle)."""
        return await procstat.wait_quiet(
            self.env.server_pid, timeout=min(30.0, self.remaining())
        )

    # -- sessions

    async def sessions(self, count: int, kind: str) -> list[str]:
        """``count`` new sessions (their ``chatapp_session=...`` cookies), unique nicknames."""
        if count <= 0:
            return []
        conns = [lc.HTTPConnection(self.env.host, self.env.port) for _ in range(min(8, count))]
        try:
            got = await conns[0].request("GET", "/api/session")
            xsrf = got.cookies().get("_xsrf")
            if got.status != 200 or not xsrf:
                raise BenchError(f"GET /api/session: {got.status} {got.body[:200]!r}")
            token = xsrf.split("=", 1)[1]
            headers = {"Cookie": xsrf, "X-XSRFToken": token, "Content-Type": "application/json"}
            cookies: list[str] = [""] * count

            async def make(conn: lc.HTTPConnection, indexes: range) -> None:
                for i in indexes:
                    nick = f"b{self.run_id}{kind}{i}"
                    body = json.dumps({"nick": nick}).encode()
                    r = await conn.request("POST", "/api/session", headers, body)
                    cookie = r.cookies().get("chatapp_session")
                    if r.status != 200 or not cookie:
                        raise BenchError(f"POST /api/session {nick}: {r.status} {r.body[:200]!r}")
                    cookies[i] = cookie

            await asyncio.gather(*(make(c, range(k, count, len(conns)))
                                   for k, c in enumerate(conns)))
            return cookies
        finally:
            for conn in conns:
                conn.close()

    async def get(self, path: str, cookie: str | None = None) -> Any:
        conn = lc.HTTPConnection(self.env.host, self.env.port)
        try:
            r = await conn.request("GET", path, {"Cookie": cookie} if cookie else None)
        finally:
            conn.close()
        if r.status != 200:
            raise BenchError(f"GET {path}: {r.status} {r.body[:200]!r}")
        return r.json()

    # -- processes and connections

    async def spawn_workers(self, count: int) -> None:
        self.workers = list(await asyncio.gather(
            *(WorkerProcess.spawn(k) for k in range(count))
        ))

    async def call_all(self, msgs: list[dict[str, Any]], timeout: float) -> list[dict[str, Any]]:
        return list(await asyncio.gather(
            *(w.call(m, timeout) for w, m in zip(self.workers, msgs))
        ))

    async def open_sender(self, cookie: str) -> Sender:
        host, port = self.env.host, self.env.port
        if self.args.sender == "http":  # POST, wait for the answer, then the next (pollclient)
            http = await pollclient.HTTPSender("chatapp", host, port, self.room, cookie).open()
            self.sender = http  # type: ignore[assignment]
            return http  # type: ignore[return-value]
        path = f"/api/rooms/{self.room}/ws"
        sender = await lc.open_websocket(lambda: Sender(host, port, path, cookie), host, port)
        self.sender = sender  # type: ignore[assignment]
        return sender  # type: ignore[return-value]

    async def open_clients(self, ws_cookies: list[str], poll_cookies: list[str],
                           poll_cursor: str = "", messages: int = 0,
                           sample_every: int = 10, stop_at_target: bool = False,
                           ) -> dict[str, Any]:
        """Open the connections, split over the load-client processes; counts and timing."""
        k = len(self.workers)
        ws_parts, poll_parts = split(ws_cookies, k), split(poll_cookies, k)
        concurrency = self.args.concurrency or max(8, 96 // k)
        msgs, ws_index, poll_index = [], 0, 0
        for w in range(k):
            msgs.append({
                "cmd": "open", "host": self.env.host, "port": self.env.port, "room": self.room,
                "ws_cookies": ws_parts[w], "poll_cookies": poll_parts[w],
                "ws_first_index": ws_index, "poll_first_index": poll_index,
                "poll_cursor": poll_cursor, "messages": messages,
                "sample_every": sample_every, "stop_at_target": stop_at_target,
                "concurrency": concurrency, "ws_compression": self.args.ws_compression,
            })  # fmt: skip
            ws_index += len(ws_parts[w])
            poll_index += len(poll_parts[w])
        t0 = time.monotonic()
        cpu0 = self.env.server_cpu()
        replies = await self.call_all(msgs, self.remaining())
        seconds = time.monotonic() - t0
        cpu1 = self.env.server_cpu()
        opened = {
            "ws": sum(r["ws"] for r in replies),
            "polls": sum(r["polls"] for r in replies),
            "failed": sum(r["failed"] for r in replies),
            "failures": [f for r in replies for f in r["failures"]][:5],
            "seconds": round(seconds, 3),
            "client_cpu": [round(r["cpu"], 3) for r in replies],
        }
        if cpu0 is not None and cpu1 is not None:
            opened["server_cpu"] = round(cpu1 - cpu0, 3)
        if opened["failed"]:
            raise BenchError(f"{opened['failed']} connection(s) failed to open: "
                             f"{opened['failures']}\n" + self.env.log_tail(10))
        return opened

    async def room_cursor(self, cookie: str) -> str:
        """The id of the room's latest event (a long-poll without cursor answers at once)."""
        return (await self.get(f"/api/rooms/{self.room}/updates", cookie))["cursor"]

    async def warm_up_polls(self, cookies: list[str]) -> None:
        """One long-poll per session, so each has joined the room (a join event wakes every
        waiter) before the measured clients park."""
        conn = lc.HTTPConnection(self.env.host, self.env.port)
        try:
            for cookie in dict.fromkeys(cookies):
                r = await conn.request("GET", f"/api/rooms/{self.room}/updates",
                                       await lc.page_headers(conn, cookie))
                if r.status != 200:
                    raise BenchError(f"long-poll warm-up: {r.status} {r.body[:200]!r}")
        finally:
            conn.close()

    async def stored_messages(self, after: str) -> list[dict[str, Any]]:
        """The room's message events with an id above ``after``, oldest first, read back
        through the history API (from MongoDB; it never waits, unlike a long-poll)."""
        events: list[dict[str, Any]] = []
        conn = lc.HTTPConnection(self.env.host, self.env.port)
        before = ""
        try:
            while time.monotonic() < self.report_deadline:
                target = f"/api/rooms/{self.room}/history?limit=200"
                r = await conn.request("GET", target + (f"&before={before}" if before else ""))
                if r.status != 200:
                    raise BenchError(f"GET {target}: {r.status} {r.body[:200]!r}")
                page = r.json()
                newer = [e for e in page["events"] if e["id"] > after]
                events[:0] = newer
                if not page["has_more"] or len(newer) < len(page["events"]) or not newer:
                    break
                before = page["events"][0]["id"]
        finally:
            conn.close()
        return [e for e in events if e["type"] == "message"]

    async def check_stored(self, sender: Sender, start_cursor: str) -> dict[str, Any]:
        """Compare what the sender was told with what the room holds: the receivers are then
        judged against what was stored (each stored message exactly once, in id order)."""
        stored = await self.stored_messages(start_cursor)
        seqs = [lc.parse_sent_text(e["text"])[0] for e in stored]
        ids = {e["id"] for e in stored}
        return {
            "count": len(stored),
            "last_id": stored[-1]["id"] if stored else "",
            # Contract: an acknowledged event is in MongoDB.
            "acked_not_stored": sum(1 for i in sender.ack_ids if i not in ids),
            # Contract: 503 store_unavailable means nothing was stored.
            "stored_despite_error": len(sender.error_seqs & set(seqs)),
            # Contract: a client_id is stored once.
            "stored_twice": len(seqs) - len(set(seqs)),
        }

    def memory_mb(self) -> float | None:
        rss = self.env.server_memory().get("VmRSS")
        return rss / 1024 if rss is not None else None

    async def close(self) -> None:
        await asyncio.gather(*(w.stop() for w in self.workers), return_exceptions=True)
        self.workers = []
        if self.sender is not None:
            self.sender.close()
            self.sender = None

    # -- scenarios

    async def fanout(self, parked: bool = False) -> dict[str, Any]:
        a = self.args
        n_ws, n_polls = a.ws, a.polls
        messages = 1 if parked else a.messages
        sample_every = 1 if parked else a.sample_every
        per = a.per_session
        self.phase = "creating sessions"
        sender_cookie = (await self.sessions(1, "s"))[0]
        ws_sessions = await self.sessions(math.ceil(n_ws / per), "w")
        poll_sessions = await self.sessions(math.ceil(n_polls / per), "p")
        ws_cookies = [ws_sessions[i // per] for i in range(n_ws)]
        poll_cookies = [poll_sessions[i // per] for i in range(n_polls)]
        await self.spawn_workers(a.procs)
        sender = await self.open_sender(sender_cookie)
        await self.quiet()
        rss0 = self.memory_mb()
        result: dict[str, Any] = {}
        if n_ws:
            self.phase = f"opening {n_ws} WebSockets"
            self.log(self.phase)
            result["open_ws"] = await self.open_clients(
                ws_cookies, [], messages=messages, sample_every=sample_every)
            await self.quiet()
        rss1 = self.memory_mb()
        if n_polls:
            self.phase = f"parking {n_polls} long-polls"
            self.log(self.phase)
            await self.warm_up_polls(poll_cookies)
            await self.quiet()
            cursor = await self.room_cursor(sender_cookie)
            result["open_polls"] = await self.open_clients(
                [], poll_cookies, poll_cursor=cursor, messages=messages,
                sample_every=sample_every, stop_at_target=parked)
            await self.quiet()
        rss2 = self.memory_mb()
        start_cursor = await self.room_cursor(sender_cookie)
        if rss0 is not None:
            result["server_rss_mb_before"] = round(rss0, 1)
            if n_ws:
                result["rss_kb_per_ws"] = round((rss1 - rss0) * 1024 / n_ws, 2)
            if n_polls:
                result["rss_kb_per_poll"] = round((rss2 - rss1) * 1024 / n_polls, 2)
            result["server_rss_mb_idle_conns"] = round(rss2, 1)

        self.phase = "sending"
        self.log(f"sending {messages} message(s)")
        started = await self.call_all(
            [{"cmd": "start", "target": messages}] * len(self.workers), self.remaining())
        closed = sum(r["closed"] for r in started)
        if closed:
            first = next((r["first_error"] for r in started if r["first_error"]), "")
            raise BenchError(f"{closed} connection(s) were closed by the server before sending "
                             f"({first})\n" + self.env.log_tail(10))
        cpu0 = self.env.server_cpu()
        mongo0 = self.env.mongod_cpu()
        self_cpu0 = lc.cpu_seconds()
        wall0 = time.monotonic()
        machine0 = procstat.machine_cpu()
        await sender.send_messages(messages, a.size, 0 if parked else a.rate, a.inflight,
                                   self.send_deadline)
        self_cpu1 = lc.cpu_seconds()
        acked = len(sender.ack_ids)
        self.phase = "checking what was stored"
        # A send answered with an error may still be stored meanwhile.
        await procstat.wait_quiet(self.env.server_pid, timeout=min(30.0, self.report_remaining()))
        stored = await self.check_stored(sender, start_cursor)
        result["stored"] = stored
        result["sent"] = {
            "messages": sender.sent,
            "requested": messages,
            "acked": acked,
            "errors": len(sender.errors),
            "first_errors": sorted(set(sender.errors))[:3],
            "unanswered": sender.sent - acked - len(sender.errors),
            "seconds": round(sender.last_ack - sender.first_send, 3) if acked else None,
            "ack_latency": summary(sender.ack_latency),
            "last_id": sender.last_id,
        }
        if acked and sender.last_ack > sender.first_send:
            result["sent"]["per_second"] = round(acked / (sender.last_ack - sender.first_send), 1)

        self.phase = "waiting for deliveries"
        replies = await self.call_all(
            [{"cmd": "finish", "target": stored["count"], "last_id": stored["last_id"],
              "timeout": max(2.0, self.report_remaining() - 5), "linger": 0.5}]
            * len(self.workers),
            self.report_remaining(),
        )  # fmt: skip
        cpu1 = self.env.server_cpu()
        mongo1 = self.env.mongod_cpu()
        wall = time.monotonic() - wall0
        machine1 = procstat.machine_cpu()
        self.env.check_alive()

        last_t = max((r[t]["last_t"] for r in replies for t in ("ws", "poll")), default=0.0)
        span = last_t - sender.first_send if last_t and sender.first_send else 0.0
        total = {"lost": 0, "duplicated": 0, "out_of_order": 0, "dup_seq": 0,
                 "wrong_last_id": 0, "closed_by_server": 0, "deliveries": 0}
        for transport in ("ws", "poll"):
            parts = [r[transport] for r in replies]
            conns = sum(p["conns"] for p in parts)
            if not conns:
                continue
            t: dict[str, Any] = {"conns": conns}
            for key in ("complete", "deliveries", "lost", "duplicated", "dup_seq",
                        "out_of_order", "wrong_last_id", "closed_by_server", "errors",
                        "requests"):
                t[key] = sum(p[key] for p in parts)
                if key in total:
                    total[key] += t[key]
            t["first_error"] = next((p["first_error"] for p in parts if p["first_error"]), "")
            # "latency": send -> read by the load client; "arrival_latency" (WebSocket):
            # send -> the bytes reached the client's socket, by the kernel's clock.
            t["latency"] = summary([x for p in parts for x in p["latencies"]])
            arrivals = [x for p in parts for x in p["arrival_latencies"]]
            if arrivals:
                t["arrival_latency"] = summary(arrivals)
                t["arrival_without_timestamp"] = sum(p["no_timestamp"] for p in parts)
            t["last_delivery_s"] = round(
                max(p["last_t"] for p in parts) - sender.first_send, 3) if acked else None
            if transport == "poll" and t["requests"]:
                t["events_per_response"] = round(t["deliveries"] / t["requests"], 2)
                t["requests_per_second"] = round(t["requests"] / span, 1) if span else None
            else:
                del t["requests"]
            result[transport] = t
        result["deliveries"] = total["deliveries"]
        result["expected_deliveries"] = stored["count"] * (n_ws + n_polls)
        result["seconds"] = round(span, 3)
        result["deliveries_per_second"] = round(total["deliveries"] / span, 1) if span else None
        result["problems"] = {k: v for k, v in total.items() if k != "deliveries"}
        result["problems"]["unanswered_sends"] = result["sent"]["unanswered"]
        result["problems"]["send_errors"] = result["sent"]["errors"]
        for key in ("acked_not_stored", "stored_despite_error", "stored_twice"):
            result["problems"][key] = stored[key]
        result["timed_out"] = (any(r["timed_out"] for r in replies)
                               or sender.sent < messages)
        if cpu0 is not None and cpu1 is not None:
            result["server_cpu_s"] = round(cpu1 - cpu0, 2)
            # Measured from the first send until every receiver was done (plus the checks).
            result["server_cpu_pct"] = round(100 * (cpu1 - cpu0) / wall, 1)
            result["server_cpu_us_per_delivery"] = (
                round((cpu1 - cpu0) * 1e6 / total["deliveries"], 1) if total["deliveries"]
                else None)
        if mongo0 is not None and mongo1 is not None:
            result["mongod_cpu_s"] = round(mongo1 - mongo0, 2)
        mem = self.env.server_memory()
        if mem:
            result["server_rss_mb_end"] = round(mem["VmRSS"] / 1024, 1)
            result["server_peak_rss_mb"] = round(mem["VmHWM"] / 1024, 1)
        result["client_cpu_s"] = [round(r["cpu"], 2) for r in replies]
        result["client_cpu_pct"] = [round(100 * r["cpu"] / r["wall"], 1) for r in replies]
        result["sender_cpu_s"] = round(self_cpu1 - self_cpu0, 2)
        # Everything else on the machine meanwhile: a busy neighbour skews every figure.
        ours = sum(r["cpu"] for r in replies) + (self_cpu1 - self_cpu0)
        ours += (cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else 0)
        ours += (mongo1 - mongo0 if mongo0 is not None and mongo1 is not None else 0)
        busy = machine1[0] - machine0[0]
        result["machine"] = {
            "cores": os.cpu_count(),
            "busy_pct": round(100 * busy / (machine1[1] - machine0[1]), 1),
            "other_processes_cpu_s": round(max(0.0, busy - ours), 2),
            "wall_s": round(wall, 2),
            "load_average": procstat.load_average(),
        }
        if parked:
            woken = sum(result[t]["complete"] for t in ("ws", "poll") if t in result)
            result["parked"] = {"waiters": n_ws + n_polls, "woken": woken,
                                "send_to_last_wake_ms": round(span * 1000, 1)}
        return result

    async def history(self) -> dict[str, Any]:
        a = self.args
        self.phase = "storing history"
        cookie = (await self.sessions(1, "h"))[0]
        sender = await self.open_sender(cookie)
        await self.quiet()
        self.log(f"storing {a.history_events} events")
        await sender.send_messages(a.history_events, a.size, 0, a.inflight, self.send_deadline)
        ids = sorted(sender.ack_ids)
        if len(ids) < a.history_events:
            raise BenchError(f"only {len(ids)} of {a.history_events} sends were acknowledged: "
                             f"{sender.errors[:3]}")
        await self.quiet()
        result: dict[str, Any] = {"stored": len(ids),
                                  "store_rate_per_s": round(
                                      len(ids) / (sender.last_ack - sender.first_send), 1)}
        conn = lc.HTTPConnection(self.env.host, self.env.port)
        await conn.connect()
        rng = random.Random(a.seed)
        base = f"/api/rooms/{self.room}/history?limit=100"
        try:
            for kind in ("latest", "before"):
                self.phase = f"history requests ({kind})"
                self.log(f"{a.requests} sequential history requests ({kind})")
                times, bad = [], 0
                cpu0 = self.env.server_cpu()
                t0 = time.perf_counter()
                for _ in range(a.requests):
                    if time.monotonic() > self.deadline:
                        break
                    before = rng.choice(ids) if kind == "before" else None
                    target = base + (f"&before={before}" if before else "")
                    start = time.perf_counter()
                    r = await conn.request("GET", target)
                    times.append(time.perf_counter() - start)
                    bad += not self._history_ok(r, before, ids)
                wall = time.perf_counter() - t0
                cpu1 = self.env.server_cpu()
                entry: dict[str, Any] = {"requests": len(times), "bad_answers": bad,
                                         "latency": summary(times),
                                         "per_second": round(len(times) / wall, 1)}
                if cpu0 is not None and cpu1 is not None and times:
                    entry["server_cpu_ms_per_request"] = round(
                        (cpu1 - cpu0) * 1000 / len(times), 3)
                result[kind] = entry
        finally:
            conn.close()
        return result

    @staticmethod
    def _history_ok(r: lc.HTTPResponse, before: str | None, ids: list[str]) -> bool:
        """200; at most 100 events, in increasing id order; and the page ends just before
        ``before`` (or at the latest message) and is full unless it reaches the first one."""
        if r.status != 200:
            return False
        data = r.json()
        got = [e["id"] for e in data["events"]]
        if not got or len(got) > 100 or any(a >= b for a, b in itertools.pairwise(got)):
            return False
        if before is None:
            return got[-1] == ids[-1] and len(got) == min(100, len(ids))
        k = ids.index(before)  # how many of the stored messages precede it
        if got[-1] >= before or (k and got[-1] != ids[k - 1]):
            return False
        return len(got) >= min(100, k) and data["has_more"] == (len(got) == 100 and k >= 100)

    async def idle(self) -> dict[str, Any]:
        a = self.args
        n = a.ws
        self.phase = "creating sessions"
        sessions = await self.sessions(math.ceil(n / a.per_session), "i")
        cookies = [sessions[i // a.per_session] for i in range(n)]
        await self.spawn_workers(a.procs)
        await self.quiet()
        rss0 = self.memory_mb()
        cpu0 = self.env.server_cpu()
        self.phase = f"opening {n} WebSockets"
        self.log(self.phase)
        opened = await self.open_clients(cookies, [])
        cpu1 = self.env.server_cpu()
        await self.quiet()
        rss1 = self.memory_mb()
        result: dict[str, Any] = {"open": opened,
                                  "opens_per_second": round(n / opened["seconds"], 1)}
        if cpu0 is not None and cpu1 is not None:
            result["server_cpu_ms_per_open"] = round((cpu1 - cpu0) * 1000 / n, 3)
        self.phase = "closing"
        await asyncio.gather(*(w.stop() for w in self.workers))
        self.workers = []
        await self.quiet()
        rss2 = self.memory_mb()
        if rss0 is not None:
            result.update({
                "server_rss_mb_before": round(rss0, 1),
                "server_rss_mb_open": round(rss1, 1),
                "server_rss_mb_after_close": round(rss2, 1),
                "rss_kb_per_ws": round((rss1 - rss0) * 1024 / n, 2),
            })  # fmt: skip
            result["server_peak_rss_mb"] = round(self.env.server_memory()["VmHWM"] / 1024, 1)
        return result

    async def run(self) -> dict[str, Any]:
        scenario = self.args.scenario
        self.log(f"server http://{self.env.host}:{self.env.port}/ pid {self.env.server_pid}, "
                 f"mongod pid {self.env.mongod_pid}, temp {self.env.tmp}")
        if scenario == "fanout":
            return await self.fanout()
        if scenario == "parked":
            return await self.fanout(parked=True)
        if scenario == "history":
            return await self.history()
        if scenario == "resume":
            return await resumebench.resume(self)
        if scenario in crowd.SCENARIOS:
            return await crowd.run(self, sys.modules[__name__])
        return await self.idle()


# -- output ---------------------------------------------------------------------------------


def fmt_latency(s: dict[str, Any]) -> str:
    if not s or not s.get("n"):
        return "no samples"
    return (f"p50 {s['p50_ms']:.1f} ms   p99 {s['p99_ms']:.1f} ms   max {s['max_ms']:.1f} ms"
            f"   ({s['n']:,} samples)")


def render(args: argparse.Namespace, r: dict[str, Any]) -> str:
    rows: list[tuple[str, str]] = []

    def add(name: str, value: Any) -> None:
        rows.append((name, str(value)))

    sc = args.scenario
    if sc in crowd.SCENARIOS:
        return crowd.render(args, r, fmt_latency)
    if sc == "resume":
        rows.extend(resumebench.render(r))
    elif sc in ("fanout", "parked"):
        s = r["sent"]
        rate = "flat out" if sc == "parked" or not args.rate else f"{args.rate:g}/s"
        if args.sender == "http":
            rate += ", HTTP POST each after the last answer"
        add("clients", f"{args.ws} WebSocket + {args.polls} long-poll in {args.procs} "
                       f"process(es), room {r['room']}")
        add("sent", f"{s['acked']}/{s['messages']} acked{' (of ' + str(s['requested']) + ' asked)' if s['requested'] != s['messages'] else ''} ({rate}, inflight {args.inflight}, "
                    f"{args.size} B), {s.get('per_second', '-')} msg/s, "
                    f"{s['errors']} errors")
        add("ack latency", fmt_latency(s["ack_latency"]))
        if sc == "fanout":
            add("deliveries", f"{r['deliveries']:,} of {r['expected_deliveries']:,} "
                              f"in {r['seconds']:.3f} s")
            dps = r["deliveries_per_second"]
            add("deliveries/s", f"{dps:,.0f}" if dps else "-")
        else:
            p = r["parked"]
            add("woken", f"{p['woken']:,} of {p['waiters']:,}")
            add("send -> last wake", f"{p['send_to_last_wake_ms']:,.1f} ms")
        arrival = False
        for t, label in (("ws", "WebSocket"), ("poll", "long-poll")):
            if t not in r:
                continue
            if "arrival_latency" in r[t]:
                arrival = True
                add(f"latency {label}", f"arrival  {fmt_latency(r[t]['arrival_latency'])}")
                add("", f"read     {fmt_latency(r[t]['latency'])}")
                if r[t]["arrival_without_timestamp"]:
                    add("", f"({r[t]['arrival_without_timestamp']:,} samples without a kernel "
                            f"timestamp: arrival = read for those)")
            else:
                add(f"latency {label}", f"read     {fmt_latency(r[t]['latency'])}")
        if arrival:
            add("", "(arrival: in the load client's socket, by the kernel's clock; read: "
                    "once the load client read it)")
        if sc == "fanout" and "poll" in r and r["poll"].get("requests"):
            add("long-poll requests", f"{r['poll']['requests']:,} "
                                      f"({r['poll']['requests_per_second']}/s, "
                                      f"{r['poll']['events_per_response']} messages each)")
        pr = r["problems"]
        add("lost / duplicated", f"{pr['lost']} / {pr['duplicated'] + pr['dup_seq']}   "
                                 f"(out of order {pr['out_of_order']}, wrong last id "
                                 f"{pr['wrong_last_id']}, closed by server "
                                 f"{pr['closed_by_server']})")
        st = r["stored"]
        add("stored", f"{st['count']} messages; acked but not stored {st['acked_not_stored']}, "
                      f"stored despite an error {st['stored_despite_error']}, stored twice "
                      f"{st['stored_twice']}, sends never answered {pr['unanswered_sends']}")
        if s["errors"]:
            add("send errors", f"{s['errors']}: {'; '.join(s['first_errors'])}")
        for t in ("ws", "poll"):
            if t in r and r[t]["errors"]:
                add(f"{t} errors", f"{r[t]['errors']}: {r[t]['first_error']}")
        if "server_cpu_s" in r:
            per = r["server_cpu_us_per_delivery"]
            add("server CPU", f"{r['server_cpu_s']} s ({r['server_cpu_pct']}% of one core"
                              f"{f', {per} us per delivery' if per else ''})")
        if "mongod_cpu_s" in r:
            add("mongod CPU", f"{r['mongod_cpu_s']} s")
        add("load-client CPU", ", ".join(f"{c} s ({p}%)" for c, p in
                                         zip(r["client_cpu_s"], r["client_cpu_pct"])))
        add("sender CPU", f"{r['sender_cpu_s']} s")
        m = r["machine"]
        add("machine", f"{m['cores']} cores {m['busy_pct']}% busy over {m['wall_s']} s; "
                       f"other processes used {m['other_processes_cpu_s']} CPU s "
                       f"(load average {m['load_average']})")
        if "server_peak_rss_mb" in r:
            add("server RSS", f"{r['server_rss_mb_before']} MB before clients, "
                              f"{r['server_rss_mb_idle_conns']} MB with them idle, "
                              f"{r['server_rss_mb_end']} MB at the end, peak "
                              f"{r['server_peak_rss_mb']} MB")
        if "rss_kb_per_ws" in r:
            add("RSS per idle WS", f"{r['rss_kb_per_ws']} KiB")
        if "rss_kb_per_poll" in r:
            add("RSS per parked poll", f"{r['rss_kb_per_poll']} KiB")
        for key, label in (("open_ws", "WebSockets"), ("open_polls", "long-polls")):
            if key in r:
                o = r[key]
                count = o["ws"] if key == "open_ws" else o["polls"]
                cpu = (f" (CPU: server {o['server_cpu']} s, clients "
                       f"{', '.join(f'{c} s' for c in o['client_cpu'])})"
                       if "server_cpu" in o else "")
                add(f"opened {label}", f"{count:,} in {o['seconds']} s{cpu}")
        if r.get("timed_out"):
            add("TIMED OUT", "--timeout ended the run: not every message was sent, or not "
                             "every receiver got every one (raise --timeout?)")
    elif sc == "history":
        add("stored", f"{r['stored']} events ({r['store_rate_per_s']}/s)")
        for kind in ("latest", "before"):
            if kind in r:
                e = r[kind]
                label = "history" if kind == "latest" else "history before="
                extra = (f", server CPU {e['server_cpu_ms_per_request']} ms/request"
                         if "server_cpu_ms_per_request" in e else "")
                add(label, f"{fmt_latency(e['latency'])}, {e['per_second']}/s, "
                           f"{e['bad_answers']} bad answers{extra}")
    else:
        o = r["open"]
        add("opened", f"{o['ws']:,} WebSockets in {o['seconds']} s "
                      f"({r['opens_per_second']}/s)")
        if "server_cpu_ms_per_open" in r:
            add("server CPU per open", f"{r['server_cpu_ms_per_open']} ms")
        if "rss_kb_per_ws" in r:
            add("RSS per idle WS", f"{r['rss_kb_per_ws']} KiB")
            add("server RSS", f"{r['server_rss_mb_before']} MB before, "
                              f"{r['server_rss_mb_open']} MB open, "
                              f"{r['server_rss_mb_after_close']} MB after close, "
                              f"peak {r['server_peak_rss_mb']} MB")
    width = max(len(name) for name, _ in rows)
    head = f"chatbench {sc}"
    return "\n".join([head] + [f"  {name:<{width}}  {value}" for name, value in rows])


def ok(args: argparse.Namespace, r: dict[str, Any]) -> bool:
    """Every message delivered once, to everyone (fanout, parked); good answers (history)."""
    if args.scenario in ("fanout", "parked"):
        pr = r["problems"]
        return not any(pr.values()) and not r.get("timed_out")
    if args.scenario in crowd.SCENARIOS:
        return crowd.ok(r)
    if args.scenario == "history":
        return all(r[k]["bad_answers"] == 0 for k in ("latest", "before") if k in r)
    if args.scenario == "resume":
        return not any(r["problems"].values())
    return True


# -- command line ---------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="chatbench",
        description=__doc__.split("\n\n", 1)[1].split("\n\nStandard library")[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--scenario",
                   choices=("fanout", "parked", "history", "idle", "resume", *crowd.SCENARIOS),
                   default="fanout", help="what to measure (default: fanout)")
    p.add_argument("--ws", type=int, default=None,
                   help="WebSocket receivers (default: 100, or 0 with --polls; idle: 1000; "
                        "parked: 0)")
    p.add_argument("--polls", type=int, default=None,
                   help="long-poll receivers (default: 0; parked: 1000)")
    p.add_argument("--messages", type=int, default=500,
                   help="messages to send (fanout; parked always sends 1) (default: 500)")
    p.add_argument("--size", type=int, default=100, help="message text bytes (default: 100)")
    p.add_argument("--rate", type=float, default=100.0,
                   help="messages per second; 0 = flat out (default: 100)")
    p.add_argument("--sender", choices=("ws", "http"), default="ws",
                   help="fanout: send over the WebSocket (default), or by HTTP POST waiting for "
                        "each answer, as the page's long-poll client does (--rate, not --inflight)")
    p.add_argument("--inflight", type=int, default=64,
                   help="most sends waiting for their ack (default: 64)")
    p.add_argument("--procs", type=int, default=1,
                   help="load-client processes sharing the receivers (default: 1)")
    p.add_argument("--per-session", type=int, default=100,
                   help="connections per session (nickname) (default: 100)")
    p.add_argument("--sample-every", type=int, default=10,
                   help="parse JSON and measure latency on every Nth connection (default: 10;"
                        " 1 for latency runs)")
    p.add_argument("--ws-compression", action="store_true",
                   help="receivers offer permessage-deflate, as browsers do (default: off)")
    p.add_argument("--concurrency", type=int, default=0,
                   help="connections opening at once per process (default: 96 / --procs)")
    p.add_argument("--history-events", type=int, default=1000,
                   help="history: events to store first (default: 1000)")
    p.add_argument("--requests", type=int, default=1000,
                   help="history: sequential requests of each kind (default: 1000)")
    p.add_argument("--seed", type=int, default=1, help="history: random seed for before= ids")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="seconds for the run once the server is up (default: 120); sending "
                        "stops up to 15 s before it so the figures can still be collected, "
                        "and the run ends at most 20 s after it")
    p.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON")
    p.add_argument("--mongo_uri", default="",
                   help="use this MongoDB (a replica set) instead of starting one")
    p.add_argument("--url", default="",
                   help="benchmark an already running server (e.g. http://127.0.0.1:8888) "
                        "instead of starting one; start it with --rate_limit=0 "
                        "--max_connections_per_session=0 --max_connections_per_ip=0 "
                        "--new_sessions_per_ip=0")
    p.add_argument("--server-pid", type=int, default=None,
                   help="with --url: the server's pid, for its CPU and memory figures")
    p.add_argument("--room", default="", help="room to use (default: a new bench-<random>)")
    p.add_argument("--app-dir", default="", metavar="DIR",
                   help="run the chatapp package found in DIR (default: this checkout), e.g. "
                        "an older commit from `git archive` to compare")
    p.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for python -m chatapp, e.g. --server-arg=--logging=warning"
                        " (repeatable)")
    p.add_argument("--keep-temp", action="store_true",
                   help="keep the temporary directory (server log, MongoDB data)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    crowd.add_arguments(p)
    args = p.parse_args(argv)
    defaults = {"fanout": (100, 0), "parked": (0, 1000), "history": (0, 0), "idle": (1000, 0),
                "resume": (0, 0), "connect": (1000, 0), "crowd": (1000, 0)}
    ws, polls = defaults[args.scenario]
    if args.scenario == "fanout" and args.polls:
        ws = 0  # --polls alone: long-polls only
    args.ws = ws if args.ws is None else args.ws
    args.polls = polls if args.polls is None else args.polls
    if args.scenario == "idle":
        args.polls = 0
    if args.scenario == "history":
        args.ws = args.polls = 0
    for name in ("ws", "polls", "messages", "procs", "per_session", "sample_every",
                 "inflight", "size", "history_events", "requests"):
        minimum = 1 if name in ("procs", "per_session", "sample_every", "inflight",
                                "size") else 0
        if getattr(args, name) < minimum:
            p.error(f"--{name.replace('_', '-')} must be at least {minimum}")
    if args.scenario in ("fanout", "parked") and args.ws + args.polls == 0:
        p.error("nothing to receive: give --ws and/or --polls")
    if args.scenario == "idle" and args.ws == 0:
        p.error("idle needs --ws")
    if args.size > 2000:
        p.error("--size is at most 2000 (the contract's longest text)")
    return args


def check_capacity(args: argparse.Namespace, soft: int) -> None:
    """Refuse a run that cannot fit in the file-descriptor limits (ours and the server's)."""
    conns = args.ws + args.polls
    per_proc = math.ceil(conns / args.procs)
    if per_proc + FD_MARGIN > soft:
        raise BenchError(
            f"{per_proc} connections per load-client process do not fit in the open-file "
            f"limit of {soft}; use more --procs or raise `ulimit -Hn`")
    if conns + FD_MARGIN > soft:
        raise BenchError(
            f"{conns} connections do not fit in the server's open-file limit ({soft}, the "
            f"hard limit); it needs one descriptor per connection plus about {FD_MARGIN}")
    lo, hi = 32768, 60999
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = map(int, f.read().split())
    except (OSError, ValueError):
        pass
    if conns > hi - lo - 1000:
        raise BenchError(f"{conns} connections need more local ports than "
                         f"ip_local_port_range has ({lo}-{hi})")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    soft, hard = lc.raise_nofile_limit()

    def terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    env = Environment(args)
    bench: Bench | None = None
    started = time.time()
    try:
        check_capacity(args, soft)
        env.start()
        bench = Bench(args, env)

        async def go() -> dict[str, Any]:
            assert bench is not None
            try:
                # The phases bound themselves by --timeout; this is the backstop.
                return await asyncio.wait_for(bench.run(), args.timeout + REPORT_SECONDS + 10)
            finally:
                await bench.close()

        result = asyncio.run(go())
    except BenchError as exc:
        phase = f" (while {bench.phase})" if bench is not None else ""
        print(f"chatbench: {exc}{phase}", file=sys.stderr)
        return 1
    except TimeoutError:
        phase = bench.phase if bench is not None else "starting"
        print(f"chatbench: timed out after {args.timeout:.0f} s while {phase}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("chatbench: interrupted; stopping everything", file=sys.stderr)
        return 130
    finally:
        env.stop()
    assert bench is not None
    result["room"] = bench.room
    result["ok"] = ok(args, result)
    print(render(args, result))
    if args.json:
        out = {
            "scenario": args.scenario,
            "args": {k: v for k, v in vars(args).items() if k != "json"},
            "started": started,
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "platform": platform.platform(), "nofile": [soft, hard]},
            "result": result,
        }
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
            f.write("\n")
    if not result["ok"]:
        print("chatbench: FAILED: lost, duplicated or bad answers (see above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
