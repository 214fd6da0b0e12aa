"""Flood clients for the edge tests (issue 13), bounded in count and time, and the server's
memory as ``/proc`` tells it.

Blocking sockets, run off the event loop (``asyncio.to_thread``): an attacker that asks and
never reads needs nothing more. ``python -m tests.floods <root>`` measures the unread-answer
flood against the chatapp checkout at ``<root>`` (the "before" figures of
docs/SECURITY.md).
"""

from __future__ import annotations

import asyncio
import json
import select
import socket
import sys
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

# What every flood test waits for at most, however slow the machine.
FLOOD_SECONDS = 60.0
# The client's receive buffer: small, so the kernel holds little of what the server writes
# and the rest stays, visibly, in the server's memory.
TINY_RCVBUF = 4096


def rss_mib(pid: int) -> float:
    """The resident memory of process ``pid``, in MiB (VmRSS in /proc/<pid>/status)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def kernel_tcp_mib() -> float:
    """Memory the kernel holds for all TCP sockets (``mem`` in /proc/net/sockstat, pages)."""
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                fields = line.split()
                return int(fields[fields.index("mem") + 1]) * 4096 / (1024 * 1024)
    return 0.0


def open_silent(port: int, request: bytes, count: int, addresses: list[str] | None = None,
                ) -> list[socket.socket]:
    """``count`` connections that each send ``request`` (with ``X-Real-IP`` from
    ``addresses`` in turn, if given) and never read."""
    socks = []
    for n in range(count):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, TINY_RCVBUF)
        s.connect(("127.0.0.1", port))
        data = request
        if addresses:
            data = request.replace(b"\r\n\r\n", f"\r\nX-Real-IP: {addresses[n % len(addresses)]}"
                                   "\r\n\r\n".encode(), 1)
        s.sendall(data)
        socks.append(s)
    return socks


def wait_answered(socks: list[socket.socket], timeout: float = FLOOD_SECONDS) -> int:
    """Wait until every socket has something to read (the server answered it, or closed it);
    how many did within ``timeout``."""
    pending = set(socks)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        readable, _, _ = select.select(list(pending)[:1000], [], [], 0.5)
        pending.difference_update(readable)
    return len(socks) - len(pending)


def status_of(sock: socket.socket) -> int | None:
    """The status code of the answer waiting on ``sock`` (read without taking it), or None."""
    try:
        head = sock.recv(64, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except OSError:
        return None
    parts = head.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None


def close_all(socks: list[socket.socket]) -> None:
    for s in socks:
        s.close()


def history_request(room: str, limit: int = 200) -> bytes:
    return (f"GET /api/rooms/{room}/history?limit={limit} HTTP/1.1\r\n"
            "Host: 127.0.0.1\r\n\r\n").encode()


def fill_room(base_url: str, room: str, count: int, chars: int = 2000) -> None:
    """``count`` messages of ``chars`` characters, from one fresh session (blocking)."""
    import http.cookiejar

    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    opener.open(base_url + "/api/session").read()
    xsrf = next(c.value or "" for c in jar if c.name == "_xsrf")

    def post(path: str, body: dict) -> None:
        req = urllib.request.Request(base_url + path, json.dumps(body).encode(), method="POST",
                                     headers={"X-XSRFToken": xsrf,
                                              "Content-Type": "application/json"})
        opener.open(req).read()

    post("/api/session", {"nick": f"filler-{uuid.uuid4().hex[:8]}"})
    for n in range(count):
        post(f"/api/rooms/{room}/messages", {"text": f"{n} " + "x" * (chars - 10),
                                            "client_id": f"fill-{n}"})


async def measure_unread_answers(root: Path, count: int, many_addresses: bool) -> None:
    """Print the server's growth under ``count`` unread history pages (the before figures)."""
    from tests import procs
    from tests.procs import AppProcess

    procs.ROOT = root
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        edge = (root / "chatapp" / "web" / "address.py").exists()  # --trusted_proxies known
        app = AppProcess(Path(tmp) / "app", **({"trusted_proxies": "127.0.0.1"} if edge else {}))
        async with procs.running(app):
            await asyncio.to_thread(fill_room, app.url, "flood", 200)
            await asyncio.to_thread(app.get_json, "/api/rooms/flood/history?limit=200")
            before, kernel_before = rss_mib(app.pid), kernel_tcp_mib()
            addresses = [f"10.0.{n // 250}.{n % 250 + 1}" for n in range(count)] \
                if many_addresses else None
            socks = await asyncio.to_thread(open_silent, app.port, history_request("flood"),
                                            count, addresses)
            answered = await asyncio.to_thread(wait_answered, socks)
            after, kernel_after = rss_mib(app.pid), kernel_tcp_mib()
            print(f"kernel TCP memory {kernel_before:.0f} -> {kernel_after:.0f} MiB")
            print("statuses", Counter(status_of(s) for s in socks))
            print(f"{root}: {count} unread history pages ({answered} answered): "
                  f"RSS {before:.0f} -> {after:.0f} MiB (+{after - before:.0f})")
            close_all(socks)


if __name__ == "__main__":
    asyncio.run(measure_unread_answers(Path(sys.argv[1]), int(sys.argv[2]),
                                       len(sys.argv) > 3))
