"""Cluster mode: rate limits shared by every process, one token bucket per key.

Collection ``buckets``: ``{_id: "<kind>\\0<key>", tokens, stamp, ok, expire_at}``, one rule for
every kind: ``send`` (the send rate, keyed by session), ``session`` (new sessions, keyed by
client address) and ``slow`` (a room's slow mode: a bucket of one token per person, keyed by
room and nickname skeleton). A bucket nobody has drawn from since it refilled is dropped by MongoDB (TTL
index on ``expire_at``): a fresh bucket would be the same.
"""

from __future__ import annotations

from typing import Any

import pymongo

# The kinds of bucket (the first part of ``_id``).
SEND = "send"
NEW_SESSION = "session"
SLOW_MODE = "slow"


class RateLimitMixin:
    """``EventStore``'s shared token buckets (``buckets``)."""

    buckets: Any

    async def take_token(self, kind: str, key: str, rate: float, capacity: float) -> bool:
        """Take one token from bucket ``key`` of ``kind`` (``SEND``, ``NEW_SESSION``,
        ``SLOW_MODE``), shared by every process of the cluster: True if there was one (the
        action may go ahead). ``take_token_or_wait`` says how long until there is one."""
        return await self.take_token_or_wait(kind, key, rate, capacity) is None

    async def take_token_or_wait(
        self, kind: str, key: str, rate: float, capacity: float
    ) -> float | None:
        """Take one token from bucket ``key`` of ``kind``: None if there was one, else the
        seconds until there will be.

        The bucket refills at ``rate`` tokens a second up to ``capacity``, on MongoDB's clock
        (``$$NOW``), so app machines whose clocks differ still agree. Refill, check and take
        are one single-document update: two processes drawing at once cannot both take the
        last token.
        """
        now_ms = {"$toLong": "$$NOW"}
        refill_ms = capacity / rate * 1000
        doc = await self.buckets.find_one_and_update(
            # NUL occurs in neither a kind, a session id nor an address: the parts stay apart.
            {"_id": f"{kind}\x00{key}"},
            [
                {"$set": {
                    "tokens": {"$min": [capacity, {"$add": [
                        {"$ifNull": ["$tokens", capacity]},
                        {"$multiply": [rate / 1000, {"$subtract": [
                            now_ms, {"$ifNull": ["$stamp", now_ms]},
                        ]}]},
                    ]}]},
                    "stamp": now_ms,
                }},
                {"$set": {"ok": {"$gte": ["$tokens", 1]}, "wait_ms": {"$divide": [
                    {"$subtract": [1, "$tokens"]}, rate / 1000]}}},
                {"$set": {
                    "tokens": {"$cond": ["$ok", {"$subtract": ["$tokens", 1]}, "$tokens"]},
                    # Full again by then: a fresh bucket would be the same.
                    "expire_at": {"$add": ["$$NOW", refill_ms]},
                }},
            ],
            upsert=True,
            projection={"ok": 1, "wait_ms": 1},
            return_document=pymongo.ReturnDocument.AFTER,
        )
        return None if doc["ok"] else max(0.0, float(doc["wait_ms"]) / 1000)
