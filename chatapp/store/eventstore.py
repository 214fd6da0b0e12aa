"""``EventStore``: one object for the store's parts, composed from their mixins (one per
module, each naming the collections it uses); its constructor opens the collections and
``create_indexes`` makes every part's indexes."""

from __future__ import annotations

from motor.motor_asyncio import AsyncIOMotorClient

from chatapp.store.accounts import AccountStore
from chatapp.store.client import ASC, MAJORITY_READ
from chatapp.store.connections import ConnectionCountsMixin
from chatapp.store.events import EventsMixin
from chatapp.store.feed import FeedMixin
from chatapp.store.presence import PresenceMixin
from chatapp.store.ratelimit import RateLimitMixin
from chatapp.store.rooms import RoomStore
from chatapp.store.search import SearchStore
from chatapp.store.sessions import SessionsMixin


class EventStore(
    EventsMixin, SessionsMixin, FeedMixin, RateLimitMixin, PresenceMixin, ConnectionCountsMixin
):
    def __init__(self, client: AsyncIOMotorClient, db_name: str = "chatapp") -> None:
        self.client = client
        db = client[db_name]
        self.events = db["events"]
        # The same collection with read concern majority stated on it: for the reads that
        # decide what is acknowledged or published (``find_batch``, ``after``).
        self.events_majority = self.events.with_options(read_concern=MAJORITY_READ)
        self.counters = db["counters"]
        self.sessions = db["sessions"]
        # Cluster presence: one document per (room, session), see presence.py.
        self.members = db["members"]
        # Cluster rate limits: token buckets per session (sends) and per address (new
        # sessions), see ``take_token``.
        self.buckets = db["buckets"]
        # Cluster connection caps: each process's connections per address, see
        # connections.py.
        self.address_counts = db["address_counts"]
        # Read markers, the rooms directory, cluster signals (rooms.py).
        self.rooms = RoomStore(db)
        # Search: the index of message texts, and the upgrade's progress (search.py).
        self.search = SearchStore(self.events, db["meta"])

    async def create_indexes(self) -> None:
        # Every read is "events of a room by seq", forwards or backwards.
        await self.events.create_index([("room", ASC), ("seq", ASC)], unique=True)
        # Idempotent sends: one event per (room, session, client_id). Partial, because join
        # and leave events have no client_id.
        await self.events.create_index(
            [("room", ASC), ("sid", ASC), ("cid", ASC)],
            unique=True,
            partialFilterExpression={"cid": {"$exists": True}},
        )
        # Actions on a message: what a delete scrubs (its edits, replies quoting it).
        await self.events.create_index(
            [("room", ASC), ("target", ASC)], partialFilterExpression={"target": {"$exists": True}}
        )
        await self.events.create_index(
            [("room", ASC), ("reply_to", ASC)],
            partialFilterExpression={"reply_to": {"$exists": True}},
        )
        await AccountStore(self).create_indexes()
        await self.sessions.create_index("expires_at")
        # Cluster presence: "who is in this room", and the sweep's "whose leases all ran out".
        await self.members.create_index([("room", ASC), ("until_max", ASC)])
        await self.members.create_index("until_max")
        # A bucket nobody has drawn from since it refilled says nothing: MongoDB drops it.
        await self.buckets.create_index("expire_at", expireAfterSeconds=0)
        # A dead process's counts stop counting at ``until`` (every read filters on it); this
        # deletes them some time later.
        await self.address_counts.create_index("until", expireAfterSeconds=0)
        await self.rooms.create_indexes()
        await self.search.create_indexes()

    async def ping(self) -> None:
        await self.client.admin.command("ping")
