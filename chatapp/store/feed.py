"""Cluster mode: the change stream every process watches (new events, ended sessions, typing
signals), read in runs (``next_changes``).

Collections: none of its own; it watches ``events``, ``sessions`` and ``signals``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from motor.motor_asyncio import AsyncIOMotorClient

from chatapp.store.rooms import RoomStore

# How long one wait of the change stream on the server lasts when nothing happens. It must be
# below the client's timeoutMS (which bounds every operation, getMores included).
MAX_AWAIT_MS = 1000
# At most this many changes are taken in one run, so that one publish, like one of the
# writer's batches, wakes a long-poll with no more than the contract's 500 events. Changes
# left in the driver make the next run, without another wait on the server.
MAX_CHANGE_RUN = 500


class FeedMixin:
    """``EventStore``'s change stream."""

    client: AsyncIOMotorClient
    events: Any
    sessions: Any
    rooms: RoomStore

    # -- cluster mode: the change stream ------------------------------------------------------

    async def cluster_time(self) -> Any:
        """MongoDB's current cluster time: where a change stream opened now would start."""
        reply = await self.client.admin.command("ping")
        return reply["operationTime"]

    def watch(self, resume_after: Any = None, start_at: Any = None) -> Any:
        """A change stream of new events, of sessions that ended and of typing signals
        (anywhere in the cluster).

        Use as ``async with store.watch(...) as stream: async for change in stream``.
        """
        pipeline = [
            {"$match": {"$or": [
                {"ns.coll": self.events.name, "operationType": "insert"},
                {"ns.coll": self.sessions.name, "operationType": "delete"},
                {"ns.coll": self.rooms.signals.name, "operationType": "insert"},
            ]}}
        ]
        return self.events.database.watch(
            pipeline,
            resume_after=resume_after,
            start_at_operation_time=start_at if resume_after is None else None,
            # Below the client's timeoutMS, so an idle stream waits instead of timing out.
            max_await_time_ms=MAX_AWAIT_MS,
        )

    async def next_changes(self, stream: Any) -> tuple[list[dict[str, Any]], Any]:
        """The next run of changes of ``stream`` (``watch``'s, opened), and the resume token
        to store once they are dispatched (None if none yet).

        One wait for the next change, then every change the driver already holds from the
        same reply, up to ``MAX_CHANGE_RUN``, without waiting again: a burst of events is
        published as one batch instead of one at a time.
        """
        # The blocking pymongo calls run on a thread, as Motor runs them; one run at a time,
        # as Motor's own try_next() would be.
        return await asyncio.to_thread(_take_available, stream.delegate)


def _take_available(stream: Any) -> tuple[list[dict[str, Any]], Any]:
    """Blocking: the next changes of a pymongo ``ChangeStream``, and the resume token to store
    once they are dispatched (None if none yet).

    Waits for the first change as ``try_next()`` does (at most one getMore, returning [] if it
    brings nothing), then takes the changes the driver already holds from the same reply, up
    to ``MAX_CHANGE_RUN``, with ``try_next()`` too: every change still goes through pymongo's
    own resume-token bookkeeping. Changes already received are never waited for.
    """
    changes: list[dict[str, Any]] = []
    change = stream.try_next()
    while change is not None:
        changes.append(change)
        if len(changes) >= MAX_CHANGE_RUN or not _holds_more(stream):
            break
        change = stream.try_next()
    return changes, stream.resume_token


def _holds_more(stream: Any) -> bool:
    """Whether the stream's cursor holds more changes already received, so that the next
    ``try_next()`` returns one without asking the server.

    pymongo has no public API for this: it is the private ``_has_next()`` of the stream's
    cursor, which ``ChangeStream.try_next`` itself relies on (pymongo 4.x). If a pymongo
    release renames it, this says False and the feed goes back to one change per run: slower
    under load, never wrong.
    """
    try:
        return bool(stream._cursor._has_next())
    except AttributeError:
        return False
