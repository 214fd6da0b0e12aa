"""Cluster mode: the send rate limit, one token bucket per session, shared by every process.

Collection ``send_buckets``: ``{_id: sid, tokens, stamp, ok, expire_at}``; a bucket nobody has
drawn from since it refilled is dropped by MongoDB (TTL index on ``expire_at``).
"""

from __future__ import annotations

from typing import Any

import pymongo


class RateLimitMixin:
    """``EventStore``'s send buckets (``send_buckets``)."""

    send_buckets: Any

    async def take_send_token(self, sid: str, rate: float, capacity: float) -> bool:
        """Take one token from the session's send bucket, shared by every process of the
        cluster: True if there was one (the send may go ahead).

        The bucket refills at ``rate`` tokens a second up to ``capacity``, on MongoDB's clock
        (``$$NOW``), so app machines whose clocks differ still agree. Refill, check and take
        are one single-document update: two processes drawing at once cannot both take the
        last token.
        """
        now_ms = {"$toLong": "$$NOW"}
        refill_ms = capacity / rate * 1000
        doc = await self.send_buckets.find_one_and_update(
            {"_id": sid},
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
                {"$set": {"ok": {"$gte": ["$tokens", 1]}}},
                {"$set": {
                    "tokens": {"$cond": ["$ok", {"$subtract": ["$tokens", 1]}, "$tokens"]},
                    # Full again by then: a fresh bucket would be the same.
                    "expire_at": {"$add": ["$$NOW", refill_ms]},
                }},
            ],
            upsert=True,
            projection={"ok": 1},
            return_document=pymongo.ReturnDocument.AFTER,
        )
        return bool(doc["ok"])
