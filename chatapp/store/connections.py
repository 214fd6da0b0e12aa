"""Cluster mode: how many connections each process holds per client address, as leases.

Collection ``address_counts``: one document per live process,
``{_id: process, counts: [{a: address, n: connections}], until}``, replaced by that process
every few seconds (``share_connections``) with the addresses it holds many connections of
(``limits.SharedConnectionLimits`` decides which, and what the counts mean).

The trap: a process killed by ``kill -9`` or lost with its machine cannot remove its document.
So every document is a lease: it counts only while ``until`` (set on MongoDB's clock, so app
machines whose clocks differ agree) is in the future, and a TTL index deletes it some time
later. Leases rather than a sweep by process id: nobody has to notice the death (a pid means
nothing on another machine), and a live process that cannot reach MongoDB for a while is
forgotten by the others only after the same lease time.
"""

from __future__ import annotations

from typing import Any


class ConnectionCountsMixin:
    """``EventStore``'s per-address connection counts of each process (``address_counts``)."""

    address_counts: Any

    async def share_connections(
        self, me: str, counts: dict[str, int], lease_seconds: float
    ) -> tuple[int, dict[str, int]]:
        """Publish process ``me``'s ``counts`` (address -> open connections), good for
        ``lease_seconds``; then read the live leases: (how many processes hold one, this one
        included; the other processes' counts summed per address)."""
        await self.address_counts.update_one(
            {"_id": me},
            [{"$set": {
                "counts": {"$literal": [{"a": a, "n": n} for a, n in counts.items()]},
                "until": {"$add": ["$$NOW", int(lease_seconds * 1000)]},
            }}],
            upsert=True,
        )
        processes, elsewhere = 0, dict[str, int]()
        async for doc in self.address_counts.find({"$expr": {"$gt": ["$until", "$$NOW"]}}):
            processes += 1
            if doc["_id"] == me:
                continue
            for row in doc.get("counts", []):
                elsewhere[row["a"]] = elsewhere.get(row["a"], 0) + int(row["n"])
        return processes, elsewhere

    async def drop_connections(self, me: str) -> None:
        """Process ``me`` stops: its connections stop counting now, not when its lease ends."""
        await self.address_counts.delete_one({"_id": me})
