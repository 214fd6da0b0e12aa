"""Keep-alive pings for every WebSocket of the server from one task, not one task per socket.

Pings find connections that vanished without a close (a laptop lid, a dead Wi-Fi), so their
session can leave the room after the grace period. Tornado does it with one asyncio task per
socket (``websocket_ping_interval``), each sleeping on its own timer: at 10,000 sockets that
was 10,000 tasks, coroutine frames and timers (about 1 KB of memory a socket) for what one loop
does as well. Here every ``interval`` seconds each open socket is sent a ping; ``timeout``
seconds later, those that have not answered since are closed ("ping timed out"), as Tornado
would. A socket opened meanwhile is pinged in the next round.

The sockets are ``Pingable``: Tornado's ``ping`` and ``close``, and a ``ponged`` flag that the
socket sets when a pong comes (``on_pong``) and the pinger clears when it pings.
"""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any, Protocol

from tornado.websocket import WebSocketClosedError

# Pings written per turn of the loop: 10,000 at once held everything else up for tens of ms
# (a message's fan-out waited behind them); 500 is a few ms of writes.
PINGS_PER_TURN = 500


class Pingable(Protocol):
    ponged: bool

    def ping(self, data: bytes | str = b"") -> None: ...

    def close(self, code: int | None = None, reason: str | None = None) -> None: ...


def pinger_of(settings: MutableMapping[str, Any]) -> Pinger:
    """The application's one pinger, made on first use from its ``websocket_ping_interval``
    and ``websocket_ping_timeout`` settings (the sockets themselves tell Tornado 0)."""
    pinger = settings.get("chatapp_pinger")
    if pinger is None:
        pinger = settings["chatapp_pinger"] = Pinger(
            float(settings.get("websocket_ping_interval") or 0),
            float(settings.get("websocket_ping_timeout") or 0))
    return pinger


class Pinger:
    """The pings of a set of sockets; ``add`` when open, ``discard`` when closed."""

    def __init__(self, interval: float, timeout: float) -> None:
        self.interval = interval
        # As Tornado: a timeout longer than the interval is the interval; 0 is the interval.
        self.timeout = min(timeout, interval) if timeout > 0 else interval
        self._sockets: set[Pingable] = set()
        self._task: asyncio.Task[None] | None = None

    def add(self, sock: Pingable) -> None:
        if self.interval <= 0:
            return
        self._sockets.add(sock)
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())

    def discard(self, sock: Pingable) -> None:
        self._sockets.discard(sock)

    def __len__(self) -> int:
        return len(self._sockets)

    async def _run(self) -> None:
        while self._sockets:
            await asyncio.sleep(self.interval)
            pinged = list(self._sockets)
            for i, sock in enumerate(pinged):
                sock.ponged = False
                try:
                    sock.ping(b"")
                except WebSocketClosedError:
                    self._sockets.discard(sock)  # closing; its on_close discards it anyway
                if i % PINGS_PER_TURN == PINGS_PER_TURN - 1:
                    await asyncio.sleep(0)
            await asyncio.sleep(self.timeout)
            for sock in pinged:
                if sock in self._sockets and not sock.ponged:
                    self._sockets.discard(sock)
                    sock.close(reason="ping timed out")
