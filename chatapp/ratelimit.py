"""Token buckets: the per-session send rate limit and the per-address new-session limit; and
one process's slow-mode clock (``SlowClock``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

# The contract: bursts of twice the per-second rate, so someone pasting a few lines in quick
# succession is not refused, while a script flooding the room is.
BURST_FACTOR = 2


class TokenBucket:
    """Allows ``rate`` events per second on average and ``capacity`` at once (by default
    ``rate * BURST_FACTOR``)."""

    __slots__ = ("capacity", "rate", "stamp", "tokens")

    def __init__(self, rate: float, capacity: float | None = None) -> None:
        self.rate = rate
        self.capacity = rate * BURST_FACTOR if capacity is None else capacity
        self.tokens = self.capacity
        self.stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

    def is_full(self) -> bool:
        """True once the bucket has refilled: the session's bucket can be forgotten."""
        return self.tokens + (time.monotonic() - self.stamp) * self.rate >= self.capacity


class Turns:
    """One turn at a time per key, in the order they were asked for.

    A session's sends must reach its room's writer in the order they arrived (a WebSocket's
    frames are handled concurrently). Anything awaited on the way there (in a cluster, the
    shared rate-limit bucket in MongoDB) could let a later send overtake an earlier one; each
    send takes its session's turn around that part, and the next waits for it.
    """

    def __init__(self) -> None:
        self._last: dict[str, asyncio.Future] = {}

    @asynccontextmanager
    async def turn(self, key: str) -> AsyncIterator[None]:
        before = self._last.get(key)
        mine = asyncio.get_running_loop().create_future()
        self._last[key] = mine
        try:
            if before is not None:
                # asyncio.wait, not await: a cancelled waiter must not cancel the turn ahead.
                await asyncio.wait({before})
            yield
        finally:
            mine.set_result(None)
            if self._last.get(key) is mine:
                del self._last[key]


# People whose latest message a process remembers for slow mode: beyond this, those whose
# interval is over are forgotten (they may send anyway), so a crowd cannot grow it for good.
SLOW_PEOPLE_KEPT = 10_000


class SlowClock:
    """Slow mode on one process: when each person last sent in each room.

    ``take(room, person, seconds)``: None if the person may send now (and the clock starts
    again), else the seconds left. A cluster shares this clock through MongoDB instead
    (``mode.ClusterMode.slow_turn``).
    """

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], float] = {}

    def take(self, room: str, person: str, seconds: float) -> float | None:
        now = time.monotonic()
        last = self._last.get((room, person))
        if last is not None and now - last < seconds:
            return seconds - (now - last)
        self._last[(room, person)] = now
        if len(self._last) > SLOW_PEOPLE_KEPT:
            # The longest slow mode allowed (moderation.MAX_SLOW_SECONDS) is an hour.
            self._last = {k: t for k, t in self._last.items() if now - t < 3600}
        return None
