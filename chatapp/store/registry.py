"""The server registry: which servers use this database, and in which mode (collection
``servers``, see below; ``chatapp/registry.py`` is the only caller)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from chatapp.store.eventstore import EventStore

# -- the server registry: which servers use this database, and in which mode -----------------
#
# ``servers``: ``{_id: server id, mode: "local" | "cluster", machine, host, pid, started,
# expires_at}``, one document per running server process (see ``chatapp/registry.py``, the
# only caller). ``expires_at`` is on MongoDB's clock (``$$NOW``), so app machines whose clocks
# differ still agree on which registrations are live; the TTL index only tidies up (MongoDB's
# TTL monitor runs once a minute), liveness is always decided by comparing with ``$$NOW``.


def _servers(store: EventStore) -> Any:
    return store.events.database["servers"]


async def create_server_index(store: EventStore) -> None:
    await _servers(store).create_index("expires_at", expireAfterSeconds=0)


async def register_server(
    store: EventStore, server_id: str, info: dict[str, Any], ttl: float
) -> None:
    """Record (or refresh) server ``server_id`` with ``info``, live for ``ttl`` s from now."""
    await _servers(store).update_one({"_id": server_id}, [
        {"$set": {**{k: {"$literal": v} for k, v in info.items()},
                  "started": {"$ifNull": ["$started", "$$NOW"]},
                  "expires_at": {"$add": ["$$NOW", int(ttl * 1000)]}}},
    ], upsert=True)


async def renew_server(store: EventStore, server_id: str, ttl: float) -> bool:
    """Extend the registration by ``ttl`` s from now; False if it is gone (it expired, or
    another server removed it as stale): the caller registers again."""
    result = await _servers(store).update_one(
        {"_id": server_id, "$expr": {"$gt": ["$expires_at", "$$NOW"]}},
        [{"$set": {"expires_at": {"$add": ["$$NOW", int(ttl * 1000)]}}}],
    )
    return bool(result.matched_count)


async def live_servers(store: EventStore) -> list[dict[str, Any]]:
    """Every registration not yet expired, with ``seconds_left`` until it does."""
    pipeline = [
        {"$match": {"$expr": {"$gt": ["$expires_at", "$$NOW"]}}},
        {"$addFields": {"seconds_left": {
            "$divide": [{"$subtract": ["$expires_at", "$$NOW"]}, 1000]}}},
    ]
    return await _servers(store).aggregate(pipeline).to_list(None)


async def remove_server(store: EventStore, server_id: str) -> None:
    await _servers(store).delete_one({"_id": server_id})
