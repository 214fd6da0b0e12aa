"""All MongoDB access, through Motor: events, per-room id counters, sessions, presence leases
and the change stream. Only this package touches MongoDB.

Nothing else in chatapp imports motor or pymongo's collection API; swapping Motor for PyMongo's
own async client touches this package alone.

``EventStore`` is one object composed from one mixin per part (``eventstore.py``); callers
import every public name from here (``chatapp.store``). (A test that tunes a module's constant
patches that module: ``chatapp.store.search.SEARCH_MAX_MS``.)

Collections, and the module that owns each:

- ``events`` (``events.py``): one document per event, ``{room, seq, type, nick, ts, sid?,
  cid?}`` and its kind's fields (``kinds``). The public id is ``seq`` zero-padded (see
  ``rules.format_id``). A message's document holds its current state: an edit, delete or
  reaction updates it in the transaction that inserts the action (``actions.py``). Its search
  fields ``terms`` and ``tv``: ``search.py``.
- ``counters`` (``events.py``): ``{_id: room, seq}``, the last sequence number handed out in a
  room.
- ``sessions`` (``sessions.py``): a guest's ``{_id: sid, nick, skeleton, skeleton_cased,
  expires_at}``, unique indexes on both keys (``chatapp.nicknames``) making nickname
  uniqueness hold however many app processes share the database; an account's ``{_id: sid,
  nick, account, expires_at}`` (one per device, so not under those indexes), and the indexes:
  ``accounts.py``.
- ``accounts``: ``{_id: skeleton, cased, nick, hash, created}``; ``attempts``: counters of
  failed logins and of registrations. Both through ``AccountStore`` (``accounts.py``).
- ``rooms``: a room's owner and moderators, through ``RoleStore`` (``roles.py``).
- ``moderation``: a room's mutes, bans and slow mode, through ``ModerationStore``
  (``moderation.py``).
- ``members`` (cluster mode, ``presence.py``): presence, one document per (room, session);
  see ``join_member``.
- ``buckets`` (cluster mode, ``ratelimit.py``): the rate limits every process shares, one token
  bucket per session (sends) and per address (new sessions); see ``take_token``.
- ``address_counts`` (cluster mode, ``connections.py``): each live process's open connections
  per address, as leases; see ``share_connections``.
- ``reads`` (read markers) and ``signals`` (cluster typing): ``rooms.py``
  (``EventStore.rooms``), the part for rooms, markers and signals.
- ``servers`` (``registry.py``): which servers use this database, and in which mode.
- ``meta`` (``search.py``): the search upgrade's progress.

The change stream over ``events``, ``sessions`` and ``signals``: ``feed.py``. The client, the
write and read concerns, ending a failed transaction: ``client.py``.

Durability: writes are acknowledged by a majority of the replica set, journaled; reads see
only what a majority has (``connect``, and stated again on the reads the writer's promises
rest on: ``find_batch``, ``after``); ``append``'s transaction reads a snapshot and commits
with the majority. Nothing is left to the server's defaults.

Ordering: ``append`` takes the next sequence numbers from the room's counter and inserts the
events in one transaction. Two writers (tasks or processes) that append to the same room at
once both update the counter document, so MongoDB lets only one commit and retries the other
against the new counter: a committed event never has a smaller id than one committed before it.
"""

from chatapp.store.accounts import AccountStore
from chatapp.store.client import (
    END_TRANSACTION_SECONDS,
    MAJORITY_READ,
    MAJORITY_WRITE,
    TRANSACTION_READ,
    StoreError,
    connect,
)
from chatapp.store.documents import Appended, to_event
from chatapp.store.eventstore import EventStore
from chatapp.store.moderation import ModerationStore
from chatapp.store.ratelimit import NEW_SESSION, SEND, SLOW_MODE
from chatapp.store.registry import (
    create_server_index,
    live_servers,
    register_server,
    remove_server,
    renew_server,
)
from chatapp.store.roles import RoleStore
from chatapp.store.rooms import RoomStore
from chatapp.store.search import SearchPage, SearchStore

__all__ = [
    "END_TRANSACTION_SECONDS", "MAJORITY_READ", "MAJORITY_WRITE", "NEW_SESSION", "SEND", "SLOW_MODE",
    "TRANSACTION_READ",
    "AccountStore", "Appended", "EventStore", "ModerationStore", "RoleStore", "RoomStore",
    "SearchPage", "SearchStore", "StoreError", "connect", "create_server_index", "live_servers",
    "register_server", "remove_server", "renew_server", "to_event",
]
