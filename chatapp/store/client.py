"""The connection to MongoDB: the client (``connect``), the durability it states (the write
and read concerns), and how a failed transaction is ended (``_end_failed_transaction``).

Durability: writes are acknowledged by a majority of the replica set, journaled; reads see
only what a majority has (``connect``, and stated again on the reads the writer's promises
rest on: ``find_batch``, ``after``); ``append``'s transaction reads a snapshot and commits
with the majority. Nothing is left to the server's defaults.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pymongo
from motor.motor_asyncio import AsyncIOMotorClient
from pymongo.errors import PyMongoError
from pymongo.read_concern import ReadConcern
from pymongo.write_concern import WriteConcern

ASC, DESC = pymongo.ASCENDING, pymongo.DESCENDING

# Store errors that a caller should report as "store unavailable" rather than as a bug.
StoreError = PyMongoError

# Durability, stated rather than left to the server's defaults (which a replica set with an
# arbiter, or an old one, sets otherwise): a write is acknowledged once a majority of the
# members have it in their journal, so no failover or power cut can take it back.
MAJORITY_WRITE = WriteConcern("majority", j=True)
# What every read sees unless it says otherwise: only what a majority has, which no failover
# can roll back. The reads whose answer is acknowledged or published state it again.
MAJORITY_READ = ReadConcern("majority")
# A transaction reads one snapshot (its find of the batch's client_ids and the counter agree);
# committed with MAJORITY_WRITE, what it read is majority-committed too: the commit of a
# transaction that only found its sends stored already waits for a majority as well.
TRANSACTION_READ = ReadConcern("snapshot")
# A transaction that failed (its budget ran out, the connection dropped) is ended in a budget
# of its own, outside the expired one: an abort, or one more try of a commit whose outcome is
# unknown. Under the expired budget the driver does not even send them, and the transaction
# stays open on the server, holding the room's counter, so that every other send to the room
# fails on a write conflict until MongoDB expires it (transactionLifetimeLimitSeconds: 60 s by
# default, checked every 30 s). Half a second is a hundred times what an abort takes on a
# healthy primary; on a primary that is gone it is as good as lost (and so is the
# transaction: a primary that steps down aborts its transactions, a killed one has none).
END_TRANSACTION_SECONDS = 0.5


def connect(uri: str, timeout: float) -> AsyncIOMotorClient:
    """A Motor client whose every operation gives up after ``timeout`` seconds.

    The bound is what lets a send answer ``503 store_unavailable`` within seconds while
    MongoDB is down, instead of hanging until the driver's 30 s server-selection default.

    Writes are acknowledged by a majority, journaled (``MAJORITY_WRITE``); reads see what a
    majority has (``MAJORITY_READ``); reads go to the primary (the default, kept). A URI
    that sets ``w``, ``journal`` or ``readConcernLevel`` itself is overridden: chatapp's
    promise that an acknowledged message survives a failover rests on these.
    """
    return AsyncIOMotorClient(
        uri,
        timeoutMS=int(timeout * 1000),
        serverSelectionTimeoutMS=int(timeout * 1000),
        tz_aware=False,
        w=MAJORITY_WRITE.document["w"],
        journal=True,
        readConcernLevel=MAJORITY_READ.level,
    )


async def _end_failed_transaction(session: Any, committing: bool, exc: BaseException) -> bool:
    """End ``session``'s transaction, whose attempt failed with ``exc``, within
    ``END_TRANSACTION_SECONDS`` of its own; True if it committed after all.

    Before its commit: aborted. A commit whose outcome is unknown (no answer in time, the
    connection dropped) is tried once more (commitTransaction may be repeated: a commit that
    had landed answers success again): pymongo allows no abort after a commit was tried.
    A commit that failed for certain left nothing open on the server.
    """
    with pymongo.timeout(END_TRANSACTION_SECONDS):
        if session.in_transaction:
            # Not Motor's `async with`: its abort, failing too (the client closed at
            # shutdown), replaced the error, a cancellation included, and the writer then
            # retried forever: the process never exited.
            with contextlib.suppress(PyMongoError):
                await session.abort_transaction()
            return False
        if committing and isinstance(exc, PyMongoError) \
                and exc.has_error_label("UnknownTransactionCommitResult"):
            try:
                await session.commit_transaction()
            except PyMongoError:
                return False
            return True
    return False
