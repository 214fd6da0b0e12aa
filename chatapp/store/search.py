"""Search: the index of message texts on ``events`` (fields ``terms``, ``tv``) and the
upgrade's progress (collection ``meta``). ``chatapp/search.py`` decides the terms."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import pymongo
from pymongo.errors import ExecutionTimeout, NetworkTimeout, PyMongoError

from chatapp import search
from chatapp.store.client import ASC, DESC
from chatapp.store.documents import to_event

# -- search (chatapp/search.py decides the terms; docs/SEARCH.md says why this index) ---------
#
# A message document carries ``terms`` (its normalised words, word prefixes, n-grams of
# unspaced scripts and its sender's term) and ``tv`` (the index version they were made with).
# One multikey index, {room, terms, seq: -1}, partial so that joins, leaves and deleted
# messages take no room in it, answers "messages of this room holding term t, newest first".

# A search page reads at most this many candidates (index hits that the exact check may
# refuse; checking one costs ~0.1 ms of CPU): bounds one page's work whatever the query; the
# page then says where to go on.
SEARCH_MAX_SCAN = 500
# ... and MongoDB may spend at most this long on it: a query whose every term is common while
# they rarely meet would otherwise walk a large part of the room. The page found so far is
# returned, marked partial.
SEARCH_MAX_MS = 1000
# Counting a query's terms to find its rarest stops here: a term in more messages than this
# is "common", and among common terms any may lead (docs/SEARCH.md). Counting is a covered
# index scan; 1000 keys cost well under a millisecond.
SEARCH_COUNT_CAP = 1000
# A query of several terms is answered by intersecting the terms' seqs on the index
# (``_intersect``), reading this many seqs of the leading term at a time: ~2,000 index keys
# cost about a millisecond, and a chunk finds a page when the terms meet in 1 % of messages.
SEARCH_INTERSECT_CHUNK = 2000
# When every term reached SEARCH_COUNT_CAP and a first chunk did not fill the page, the terms
# are counted again up to this (index keys only, ~10 ms at most), to lead with the rarest.
SEARCH_RECOUNT_CAP = 10_000
# Search fields never leave the store with an event.
_NO_SEARCH_FIELDS = {"terms": 0, "tv": 0}
# The upgrade's progress marker: a document of the ``meta`` collection.
BACKFILL_MARKER = "search_backfill"


@dataclass
class SearchPage:
    """One page of search results, newest first, and where the next page starts (``before``:
    the lowest seq looked at, which is below the last result's when the scan bound cut the
    page short)."""

    events: list[dict[str, Any]]
    has_more: bool
    before: int | None
    partial: bool = False  # SEARCH_MAX_MS ran out: there may be matches not looked at


class SearchStore:
    """The search half of the store, on ``EventStore``'s collections (``EventStore.search``).

    ``reindex`` is THE call for "a message's current text changed": an edit passes the new
    text, a delete passes None (un-index); pass the edit's or delete's transaction session so
    that the event and the index change commit together.
    """

    def __init__(self, events: Any, meta: Any) -> None:
        self.events, self.meta = events, meta

    async def create_indexes(self) -> None:
        await self.events.create_index(
            [("room", ASC), ("terms", ASC), ("seq", DESC)],
            name="room_terms_seq",
            partialFilterExpression={"terms": {"$exists": True}},
        )

    async def reindex(
        self, room: str, seq: int, nick: str, text: str | None, session: Any = None
    ) -> None:
        """Index message ``seq`` of ``room`` under ``text`` (by ``nick``), or un-index it
        (``text`` None: deleted). In the caller's transaction when given its ``session``.

        The trap: ``find`` checks each candidate's ``text`` field exactly, so the caller also
        sets the document's ``text`` to the current text (as an edit does anyway)."""
        fields = search.index_fields({"type": "message", "nick": nick, "text": text})
        update = {"$set": fields} if fields else {"$unset": {"terms": "", "tv": ""}}
        await self.events.update_one({"room": room, "seq": seq}, update, session=session)

    async def find(
        self, room: str, query: search.Query, before: int | None, limit: int
    ) -> SearchPage:
        """Up to ``limit`` messages matching ``query`` below seq ``before``, newest first.

        The index narrows by every term (counting them, then intersecting their seqs on the
        index, see ``_rarest_first`` and ``_intersect``: a few index-only queries), one query
        reads the candidates newest first, ``query.matches`` checks each one's text exactly,
        and the cursor is read until ``limit`` + 1 match or SEARCH_MAX_SCAN candidates were
        read."""
        base: dict[str, Any] = {"room": room}
        if before is not None:
            base["seq"] = {"$lt": before}
        found: list[dict[str, Any]] = []
        low = before
        try:
            with pymongo.timeout(SEARCH_MAX_MS / 1000):
                terms, tied = await self._rarest_first(base, query.terms, SEARCH_COUNT_CAP)
                if not terms:
                    return SearchPage([], False, None)
                filt = dict(base, terms={"$all": terms})
                exhausted = True
                if len(terms) > 1:
                    seqs, exhausted = await self._intersect(base, terms, limit + 1, tied)
                    if tied and not exhausted and len(seqs) <= limit:
                        # Every term is common and one chunk did not fill the page: which
                        # is rarer matters now; count further, and start again behind it.
                        terms, _ = await self._rarest_first(base, terms, SEARCH_RECOUNT_CAP)
                        seqs, exhausted = await self._intersect(base, terms, limit + 1)
                    filt = {"room": room, "seq": {"$in": seqs}}
                cursor = self.events.find(filt, _NO_SEARCH_FIELDS)
                cursor = cursor.sort("seq", DESC).batch_size(max(limit + 1, 50))
                if "terms" in filt:
                    cursor = cursor.hint("room_terms_seq")
                scanned = 0
                try:
                    async for doc in cursor:
                        scanned += 1
                        low = doc["seq"]
                        if query.matches(doc.get("text", ""), doc["nick"]):
                            found.append(doc)
                            if len(found) > limit:
                                break
                        if scanned >= SEARCH_MAX_SCAN:
                            return SearchPage([to_event(d) for d in found], True, low)
                finally:
                    with contextlib.suppress(PyMongoError):
                        await cursor.close()
        except (ExecutionTimeout, NetworkTimeout):
            # The time ran out (on the server, or waiting for its answer, which a loaded
            # machine makes the first to strike): what was found is shown; going on makes
            # sense only below what was looked at.
            return SearchPage([to_event(d) for d in found], low != before, low, partial=True)
        if len(found) <= limit and not exhausted:
            # The intersection stopped at its bound before the page was full: go on below.
            return SearchPage([to_event(d) for d in found], True, low)
        has_more = len(found) > limit
        found = found[:limit]
        return SearchPage(
            [to_event(d) for d in found], has_more, found[-1]["seq"] if has_more else None
        )

    async def _intersect(
        self, base: dict[str, Any], terms: list[str], want: int, one_chunk: bool = False
    ) -> tuple[list[int], bool]:
        """Seqs of messages matching ``base`` that hold every term, newest first, found on the
        index alone (covered scans: no message is read), and whether there are no more.

        The leading term's seqs are read newest first, SEARCH_INTERSECT_CHUNK at a time; of
        each chunk, the seqs that the next term has too are asked for with ``$in``, then the
        next term's, and so on; chunks are read until ``want`` seqs are found, or
        SEARCH_MAX_SCAN, or the leading term has no more (or after one chunk if
        ``one_chunk``). Cost: a few index keys per message of the leading term looked at,
        whether or not the terms meet."""
        room, upper = base["room"], base.get("seq", {}).get("$lt")
        found: list[int] = []
        while len(found) < want:
            lead: dict[str, Any] = {"room": room, "terms": terms[0]}
            if upper is not None:
                lead["seq"] = {"$lt": upper}
            chunk = await self._seqs(lead, SEARCH_INTERSECT_CHUNK)
            if not chunk:
                return found, True
            upper, seqs = chunk[-1], chunk
            for term in terms[1:]:
                seqs = await self._seqs({"room": room, "terms": term, "seq": {"$in": seqs}}, 0)
                if not seqs:
                    break
            found += seqs
            if len(chunk) < SEARCH_INTERSECT_CHUNK:
                return found, True
            if len(found) >= SEARCH_MAX_SCAN or one_chunk:
                break
        return found, False

    async def _seqs(self, filt: dict[str, Any], limit: int) -> list[int]:
        """The seqs of ``filt`` (room and one term) newest first, from the index alone."""
        cursor = self.events.find(filt, {"_id": 0, "seq": 1}).sort("seq", DESC)
        cursor = cursor.hint("room_terms_seq").batch_size(SEARCH_INTERSECT_CHUNK)
        if limit:
            cursor = cursor.limit(limit)
        return [row["seq"] async for row in cursor]

    async def _rarest_first(
        self, base: dict[str, Any], terms: list[str], cap: int
    ) -> tuple[list[str], bool]:
        """``terms``, the rarest first ([] when one occurs nowhere), each counted up to
        ``cap``; and whether they all reached it (a tie: any may be the rarest).

        MongoDB's planner scans a multikey index for the FIRST element of ``$all`` only and
        checks the others on each document it fetches: the term that leads decides the
        cost. So the terms are counted first (covered index scans, in one round trip)."""
        if len(terms) < 2:
            return terms, False
        counts = await self._count_terms(base, terms, cap)
        if min(counts) == 0:
            return [], False
        ranked = [t for _, t in sorted(zip(counts, terms), key=lambda ct: ct[0])]
        return ranked, min(counts) == cap

    async def _count_terms(self, base: dict[str, Any], terms: list[str], cap: int) -> list[int]:
        """How many messages (at most ``cap``) match ``base`` and hold each term; one round
        trip: the counts one after another on the server."""

        def count(i: int) -> list[dict[str, Any]]:
            return [{"$match": dict(base, terms=terms[i])}, {"$limit": cap},
                    {"$group": {"_id": i, "n": {"$sum": 1}}}]

        pipeline = count(0) + [
            {"$unionWith": {"coll": self.events.name, "pipeline": count(i)}}
            for i in range(1, len(terms))
        ]
        counts = [0] * len(terms)
        async for row in self.events.aggregate(pipeline):
            counts[row["_id"]] = row["n"]
        return counts

    # The upgrade (chatapp/reindex.py): walk every event by _id, index what is not indexed
    # at INDEX_VERSION, remember how far it got.

    async def unindexed(self, after: Any, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` messages past ``_id`` ``after`` (None: from the first) not indexed
        at the current version, in ``_id`` order."""
        filt: dict[str, Any] = {"type": "message", "tv": {"$ne": search.INDEX_VERSION}}
        if after is not None:
            filt["_id"] = {"$gt": after}
        cursor = self.events.find(filt, {"terms": 0}).sort("_id", ASC).limit(limit)
        return await cursor.to_list(limit)

    async def index_batch(self, docs: list[dict[str, Any]]) -> int:
        """Index ``docs`` (as ``unindexed`` read them); how many were written. A message
        edited or deleted since it was read is left alone: its edit indexed it already."""
        ops = []
        for doc in docs:
            fields = search.index_fields(doc)
            if fields:
                ops.append(pymongo.UpdateOne(
                    {"_id": doc["_id"], "text": doc["text"],
                     "tv": {"$ne": search.INDEX_VERSION}},
                    {"$set": fields},
                ))
        if not ops:
            return 0
        result = await self.events.bulk_write(ops, ordered=False)
        return result.modified_count

    async def backfill_marker(self) -> dict[str, Any] | None:
        """The upgrade's progress: ``{version, after, done}``, or None before it started."""
        return await self.meta.find_one({"_id": BACKFILL_MARKER})

    async def save_backfill_marker(self, after: Any, done: bool) -> None:
        await self.meta.update_one(
            {"_id": BACKFILL_MARKER},
            {"$set": {"version": search.INDEX_VERSION, "after": after, "done": done}},
            upsert=True,
        )

    async def reset_backfill(self) -> None:
        """Make the next upgrade walk the whole history again (it indexes only what is not
        indexed at the current version): after a rolling upgrade, or a restore of old data."""
        await self.meta.delete_one({"_id": BACKFILL_MARKER})
