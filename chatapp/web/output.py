"""A budget for answers written but not yet taken by their client, per address and in all.

The trap: a client that asks and never reads leaves its answer in the server's memory (what
the socket's kernel buffer did not take stays in Tornado's IOStream until the connection
closes). 1,000 connections asking for a 200-event history page and never reading grew the
server by 470 MiB, with no session needed. The WebSocket has its own cap
(``ws.MAX_PENDING_OUTPUT``); this is the HTTP side.

Every HTTP answer larger than ``SMALL_ANSWER_BYTES`` reserves its size here when it is written
(``base.BaseHandler.finish``) and gives it back once the socket has taken all of it, or the
connection closed. An answer that does not fit is refused before it is written, with a small
error instead: ``429 too_many_unread`` when its address already has ``PER_ADDRESS_BYTES``
unread, ``503 busy`` when all addresses together have ``TOTAL_BYTES``. And any answer (of any
size) still not taken after ``WRITE_SECONDS`` closes its connection, which frees it.
"""

from __future__ import annotations

import asyncio
import functools
import socket
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from chatapp.errors import ChatError

# An answer this small leaves nothing behind: the kernel takes it whole (a TCP socket's send
# buffer starts at 16 KiB, and the client's receive window adds more). Sends' acks and most
# long-poll answers are this small, so they never meet the budget.
SMALL_ANSWER_BYTES = 16 * 1024
# One address's share: some 20 history pages of 200 long messages, or a few long-poll answers
# of 500, in flight at once; an office behind one NAT loading pages together fits.
PER_ADDRESS_BYTES = 8 * 1024 * 1024
# What all unread answers may hold in this process: the bound on this kind of flood, whoever
# sends it. When it is full, large answers are refused (503) until some are taken or closed;
# small ones still go out.
TOTAL_BYTES = 32 * 1024 * 1024
# An answer not taken by its client in this long closes the connection: a phone on a poor
# link still takes a 1 MiB answer in 30 s (35 KB/s); a client that never reads frees its
# memory and its file after 30 s.
WRITE_SECONDS = 30.0


class OutputBudget:
    """Bytes of unread answers, per address and in total; ``reserve`` refuses past a cap."""

    def __init__(self, per_address: int = PER_ADDRESS_BYTES, total: int = TOTAL_BYTES) -> None:
        self.per_address, self.total = per_address, total
        self._by_address: Counter[str] = Counter()
        self.used = 0

    def reserve(self, address: str, size: int) -> Callable[[], None]:
        """Count ``size`` bytes as unread; the function that gives them back (once)."""
        if self._by_address[address] + size > self.per_address:
            raise ChatError(
                "too_many_unread",
                "Your address has too many answers it has not read yet; read them, or wait.",
                429,
            )
        if self.used + size > self.total:
            raise ChatError("busy", "The server is busy; try again in a few seconds.", 503)
        self._by_address[address] += size
        self.used += size
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            self.used -= size
            self._by_address[address] -= size
            if self._by_address[address] <= 0:
                del self._by_address[address]

        return release

    def unread(self, address: str) -> int:
        return self._by_address.get(address, 0)


# The kernel's send buffer of a connection given a large answer, fixed. Left to autotuning it
# grows to 4 MiB (tcp_wmem) for a client that never reads: 1,000 such held gigabytes of kernel
# memory, out of sight of this budget, which sees only what the kernel did not take. 64 KiB
# (the kernel doubles it for its bookkeeping) still sends 640 KB/s at 100 ms RTT. Not for
# WebSockets: their bursts need the autotuned buffer (they have their own cap).
SEND_BUFFER_BYTES = 64 * 1024


def bound_send_buffer(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
    except OSError:
        pass  # not a TCP socket, or already closed: nothing to bound


# Large answers built at once (a history page: the events decoded from MongoDB, then their
# JSON, then the bytes). Built all at once for 300 requests, they grew the process by 80 MiB
# even though every client read its answer; at 8 at a time (4 per core) the CPU and MongoDB
# are kept busy and the peak is some 15 MiB.
BUILDING_AT_ONCE = 8
# Requests one address may have waiting for their turn; past it, 429 at once.
WAITING_PER_ADDRESS = 64


class FairGate:
    """At most ``at_once`` holders; the waiting are let in one address at a time in turn, so
    one address asking a thousand times makes another's single request wait one turn, not a
    thousand."""

    def __init__(self, at_once: int = BUILDING_AT_ONCE,
                 waiting_per_address: int = WAITING_PER_ADDRESS) -> None:
        self.at_once, self.waiting_per_address = at_once, waiting_per_address
        self.holding = 0
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {}  # in turn order

    @asynccontextmanager
    async def turn(self, address: str) -> AsyncIterator[None]:
        if self.holding >= self.at_once or self._waiting:
            queue = self._waiting.setdefault(address, deque())
            if len(queue) >= self.waiting_per_address:
                raise ChatError(
                    "too_many_requests",
                    "Your address has too many requests waiting; wait for their answers.",
                    429,
                )
            mine = asyncio.get_running_loop().create_future()
            queue.append(mine)
            try:
                await mine  # resolved by _next, which counted us as holding
            except BaseException:
                if mine.done() and not mine.cancelled():
                    self._leave()  # let in, then cancelled: give the turn on
                else:
                    queue.remove(mine)
                    if not queue and self._waiting.get(address) is queue:
                        del self._waiting[address]
                raise
        else:
            self.holding += 1
        try:
            yield
        finally:
            self._leave()

    def _leave(self) -> None:
        self.holding -= 1
        while self._waiting and self.holding < self.at_once:
            address, queue = next(iter(self._waiting.items()))
            waiter = queue.popleft()
            del self._waiting[address]
            if queue:
                self._waiting[address] = queue  # to the back of the line
            self.holding += 1
            waiter.set_result(None)


def gated(method: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    """Run a handler method that builds a large answer in its address's turn (``FairGate``,
    ``settings["answer_gate"]``)."""

    @functools.wraps(method)
    async def wrapper(self: Any, *args: Any, **kwargs: Any) -> None:
        async with self.settings["answer_gate"].turn(self.request.remote_ip or ""):
            await method(self, *args, **kwargs)

    return wrapper


def watch_answer(future: asyncio.Future[Any], release: Callable[[], None] | None,
                 close: Callable[[], None], timeout: float = WRITE_SECONDS) -> None:
    """Once ``future`` (the socket has taken the answer, or the connection closed) is done,
    ``release`` the reservation; ``close`` the connection if that takes ``timeout`` s."""
    if future.done():
        if release is not None:
            release()
        return
    timer = asyncio.get_running_loop().call_later(timeout, close)

    def taken(done: asyncio.Future[Any]) -> None:
        timer.cancel()
        if not done.cancelled():
            done.exception()  # a connection closed first is expected: not an error to log
        if release is not None:
            release()

    future.add_done_callback(taken)
