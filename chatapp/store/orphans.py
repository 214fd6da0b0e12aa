"""Transactions a failed ``append`` may have left open on the server, ended later
(``killSessions``) so that they do not hold a room's counter.

The trap: an append whose first statement is a write (the counter) sent to a MongoDB that does
not answer (frozen, overloaded, a network stall) gives up, and its abort fails too; the
statement still waits in the server's socket, and when the server resumes it runs: the
transaction now holds the room's counter, for a client that has gone. The driver discards that
server session (it never reuses a session after a network error, which would have aborted the
transaction), so every send to the room fails on a write conflict until MongoDB expires it
(``transactionLifetimeLimitSeconds``, 60 s by default). The session ids of such attempts are
kept here, and the next append of this process kills them first (one command, only after a
failure). Killing a session whose transaction did end is harmless.

Per process: a transaction left by another process of a cluster holds the counter until that
process appends again (any room) or MongoDB expires it.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pymongo
from pymongo.errors import ExecutionTimeout, OperationFailure, PyMongoError

# Session ids kept at most: past this many failed appends (a long outage), the oldest are
# dropped; they are ended by MongoDB's own expiry, as before. One id is about 100 bytes.
MAX_ORPHANS = 1000


def may_be_left_open(exc: BaseException) -> bool:
    """Whether an attempt that failed with ``exc`` may have left its transaction open on the
    server: anything but an answer from the server (which ends the transaction itself),
    counting a timeout as no answer."""
    return not isinstance(exc, OperationFailure) or isinstance(exc, ExecutionTimeout)


class OrphanSessions:
    """Session ids whose last transaction may still be open on the server."""

    def __init__(self) -> None:
        self._ids: list[dict[str, Any]] = []

    def __len__(self) -> int:
        return len(self._ids)

    def remember(self, session_id: dict[str, Any]) -> None:
        self._ids.append(session_id)
        del self._ids[:-MAX_ORPHANS]

    async def end(self, client: Any, budget: float) -> None:
        """Kill the remembered sessions, within ``budget`` seconds; those not killed (MongoDB
        unreachable) are kept for the next time."""
        if not self._ids or budget <= 0:
            return
        ids, self._ids = self._ids, []
        try:
            with pymongo.timeout(budget):
                await client.admin.command("killSessions", ids)
        except PyMongoError:
            with contextlib.suppress(Exception):
                self._ids[:0] = ids
                del self._ids[:-MAX_ORPHANS]
