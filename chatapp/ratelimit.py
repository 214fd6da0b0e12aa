"""Token buckets: the per-session send rate limit and the per-address new-session limit."""

from __future__ import annotations

import time

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
