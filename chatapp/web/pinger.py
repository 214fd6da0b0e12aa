"""Keep-alive pings for every WebSocket of the server from one task, not one task per socket.

Pings find connections that vanished without a close (a laptop lid, a dead Wi-Fi), so their
session can leave the room after the grace period. Tornado does it with one asyncio task per
socket (``websocket_ping_interval``), each sleeping on its own timer: at 10,000 sockets that
was 10,000 tasks, coroutine frames and timers (about 1 KB of memory a socket) for what one loop
does as well. Here the sockets are dealt round robin into ``interval / TICK_SECONDS`` slots,
and every tick one slot is visited: a socket that has not answered the ping of its last visit
(``interval`` seconds ago; the timeout is the interval) is closed, "ping timed out", as Tornado
would; the others are pinged again.

The trap: pinging every socket in one round (10,000 pings, then 10,000 pongs to read, half a
second of the loop at 10,000 sockets) stalled whatever came then: a broadcast's p99 went from
about 100 ms to 515 ms. Spread over the interval it is a few ms per tick.

The sockets are ``Pingable``: Tornado's ``ping`` and ``close``, and a ``ponged`` flag that the
socket sets when a pong comes (``on_pong``) and the pinger clears when it pings.
"""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any, Protocol

from tornado.websocket import WebSocketClosedError

# How often a slot is visited: 1/125 of the sockets pinged every 0.2 s at the 25 s interval.
TICK_SECONDS = 0.2


class Pingable(Protocol):
    ponged: bool

    def ping(self, data: bytes | str = b"") -> None: ...

    def close(self, code: int | None = None, reason: str | None = None) -> None: ...


def pinger_of(settings: MutableMapping[str, Any]) -> Pinger:
    """The application's one pinger, made on first use from its ``websocket_ping_interval``
    setting (the sockets themselves tell Tornado 0). Its ``websocket_ping_timeout`` is not
    used: the timeout is the interval (a dead socket is closed 25-50 s after it went quiet,
    not 20-45 s)."""
    pinger = settings.get("chatapp_pinger")
    if pinger is None:
        pinger = settings["chatapp_pinger"] = Pinger(
            float(settings.get("websocket_ping_interval") or 0))
    return pinger


class Pinger:
    """The pings of a set of sockets; ``add`` when open, ``discard`` when closed."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.tick = min(TICK_SECONDS, interval) if interval > 0 else TICK_SECONDS
        self._slots: list[set[Pingable]] = [set() for _ in range(
            max(1, round(interval / self.tick)))]
        self._slot_of: dict[Pingable, int] = {}
        self._next = 0  # the slot the next socket goes to
        self._task: asyncio.Task[None] | None = None

    def add(self, sock: Pingable) -> None:
        if self.interval <= 0:
            return
        slot = self._next
        self._next = (slot + 1) % len(self._slots)
        self._slots[slot].add(sock)
        self._slot_of[sock] = slot
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())

    def discard(self, sock: Pingable) -> None:
        slot = self._slot_of.pop(sock, None)
        if slot is not None:
            self._slots[slot].discard(sock)
        if not self._slot_of and self._task is not None and not self._task.done():
            # The last socket gone (a server stopping closes them all): stop now, rather than
            # leave a task asleep that a closing event loop would destroy pending.
            self._task.cancel()
            self._task = None

    def __len__(self) -> int:
        return len(self._slot_of)

    async def _run(self) -> None:
        visit = 0
        while self._slot_of:
            await asyncio.sleep(self.tick)
            visit = (visit + 1) % len(self._slots)
            for sock in list(self._slots[visit]):
                if not sock.ponged:
                    self.discard(sock)
                    sock.close(reason="ping timed out")
                    continue
                sock.ponged = False
                try:
                    sock.ping(b"")
                except WebSocketClosedError:
                    self.discard(sock)  # closing; its on_close discards it anyway
