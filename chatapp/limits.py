"""Caps on open connections (WebSockets and parked long-polls), per session and per address.

Each connection holds a socket, a file descriptor and a place in a waiter list; without a cap,
one script with a stolen or fresh session could hold thousands and starve everyone else.
"""

from __future__ import annotations

from collections import Counter

from chatapp.errors import ChatError


class ConnectionLimits:
    """Counts open connections; ``acquire`` refuses the one past a cap (0 means no cap)."""

    def __init__(self, per_session: int, per_address: int) -> None:
        self.per_session = per_session
        self.per_address = per_address
        self._sessions: Counter[str] = Counter()
        self._addresses: Counter[str] = Counter()

    def acquire(self, sid: str, address: str) -> None:
        if self.per_session and self._sessions[sid] >= self.per_session:
            raise ChatError(
                "too_many_connections",
                f"This session already has {self.per_session} open connections; "
                "close some tabs.",
                429,
            )
        if self.per_address and self._addresses[address] >= self.per_address:
            raise ChatError(
                "too_many_connections",
                f"Your address already has {self.per_address} open connections.",
                429,
            )
        self._sessions[sid] += 1
        self._addresses[address] += 1

    def open_connections(self) -> int:
        """How many connections are counted as open now, in all."""
        return sum(self._sessions.values())

    def release(self, sid: str, address: str) -> None:
        for counter, key in ((self._sessions, sid), (self._addresses, address)):
            counter[key] -= 1
            if counter[key] <= 0:
                del counter[key]
