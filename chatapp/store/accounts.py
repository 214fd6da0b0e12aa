"""Accounts: registered nicknames, their sessions, failed attempts (collections ``accounts``,
``attempts``, and the account side of ``sessions`` with its unique indexes)."""

from __future__ import annotations

import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

import pymongo
from pymongo.errors import DuplicateKeyError

from chatapp.nicknames import NickKeys
from chatapp.store.client import ASC
from chatapp.store.roles import RoleStore

if TYPE_CHECKING:
    from chatapp.store.eventstore import EventStore

# The logger of ``chatapp.store`` (one module before it became a package): the name that
# log set-ups and ``chatapp.logs`` know.
log = logging.getLogger("chatapp.store")

# -- accounts: registered nicknames, their sessions, failed attempts ----------------------------
#
# An account is ``{_id: skeleton, cased, nick, hash, created}``: its two keys are unique like a
# guest's. A guest session holding a key and an account with that key never both exist for
# long: registering first inserts the account, then turns the guest session into an account
# session; creating a guest session inserts it, then looks for an account with either key and
# deletes itself if it finds one (``Sessions.create``). Whichever of two racing writers comes
# second sees the other's document.


class AccountStore:
    """Accounts, account sessions and attempt counters, over an ``EventStore``'s database."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.sessions = store.sessions
        db = store.sessions.database
        self.accounts = db["accounts"]
        self.attempts = db["attempts"]

    async def create_indexes(self) -> None:
        guest = {"skeleton": {"$exists": True}}
        await self.sessions.create_index(
            "skeleton", unique=True, partialFilterExpression=guest
        )
        await self.sessions.create_index(
            "skeleton_cased", unique=True,
            partialFilterExpression={"skeleton_cased": {"$exists": True}},
        )
        await self.sessions.create_index("account")
        await self.migrate_session_keys()
        # The old rule's index (NFKC-casefold): weaker than the skeleton's, and it would
        # count every account session (no nick_key) as one more holder of the key null.
        with contextlib.suppress(pymongo.errors.OperationFailure):
            await self.sessions.drop_index("nick_key_1")
        await self.accounts.create_index("cased", unique=True)
        await self.attempts.create_index("expire_at", expireAfterSeconds=0)
        await RoleStore(self.store).create_indexes()

    async def migrate_session_keys(self) -> None:
        """Sessions stored before skeletons (only ``nick_key``) get both keys now. A session
        whose keys another already holds ("ann" and "аnn", both live under the old rule) is
        ended: the unique index cannot hold both, and its holder chooses again. A guest's
        session would expire within the grace period after its last connection anyway; this
        keeps a connected one."""
        from chatapp import nicknames  # (the store otherwise needs no Unicode data)

        old = {"skeleton": {"$exists": False}, "account": {"$exists": False}}
        async for doc in self.sessions.find(old, {"nick": 1}):
            key = nicknames.keys(doc["nick"])
            try:
                await self.sessions.update_one(
                    {"_id": doc["_id"]},
                    {"$set": {"skeleton": key.skeleton, "skeleton_cased": key.cased},
                     "$unset": {"nick_key": ""}},
                )
            except DuplicateKeyError:
                log.warning("session of %r ended: its nickname now looks like another's",
                            doc["nick"])
                await self.sessions.delete_one({"_id": doc["_id"]})

    async def find_account(self, key: NickKeys) -> dict[str, Any] | None:
        """The account holding either key, or None."""
        return await self.accounts.find_one(
            {"$or": [{"_id": key.skeleton}, {"cased": key.cased}]}
        )

    async def find_account_by_id(self, account: str) -> dict[str, Any] | None:
        return await self.accounts.find_one({"_id": account})

    async def insert_account(self, key: NickKeys, nick: str, hash_: str) -> bool:
        """False if an account holds either key already."""
        try:
            await self.accounts.insert_one(
                {"_id": key.skeleton, "cased": key.cased, "nick": nick, "hash": hash_,
                 "created": time.time()}
            )
        except DuplicateKeyError:
            return False
        return True

    async def set_hash(self, account: str, hash_: str) -> None:
        await self.accounts.update_one({"_id": account}, {"$set": {"hash": hash_}})

    async def delete_account(self, account: str) -> None:
        await self.accounts.delete_one({"_id": account})

    async def guest_to_account(self, sid: str, key: NickKeys, expires_at: float) -> bool:
        """The guest session ``sid`` holding ``key`` becomes a session of account ``key``."""
        result = await self.sessions.update_one(
            {"_id": sid, "skeleton": key.skeleton},
            {"$set": {"account": key.skeleton, "expires_at": expires_at},
             "$unset": {"skeleton": "", "skeleton_cased": ""}},
        )
        return result.modified_count == 1

    async def account_to_guest(self, sid: str, key: NickKeys, expires_at: float) -> bool:
        """The account session ``sid`` becomes a guest's holding ``key``; False if it is
        gone or a guest holds the key (then nothing changed)."""
        try:
            result = await self.sessions.update_one(
                {"_id": sid, "account": key.skeleton},
                {"$set": {"skeleton": key.skeleton, "skeleton_cased": key.cased,
                          "expires_at": expires_at},
                 "$unset": {"account": ""}},
            )
        except DuplicateKeyError:
            return False
        return result.modified_count == 1

    async def add_account_session(
        self, sid: str, nick: str, account: str, expires_at: float
    ) -> None:
        await self.sessions.insert_one(
            {"_id": sid, "nick": nick, "account": account, "expires_at": expires_at}
        )

    async def session_account(self, sid: str) -> str | None:
        """The account ``sid`` is a live session of, or None (a guest, or gone)."""
        doc = await self.sessions.find_one(
            {"_id": sid, "expires_at": {"$gte": time.time()}}, {"account": 1}
        )
        return doc.get("account") if doc else None

    async def account_sessions(self, account: str) -> list[str]:
        """The account's sessions, oldest expiry first."""
        rows = await self.sessions.find({"account": account}, {"_id": 1}).sort(
            "expires_at", ASC
        ).to_list(None)
        return [r["_id"] for r in rows]

    async def delete_sessions(self, sids: list[str]) -> None:
        if sids:
            await self.sessions.delete_many({"_id": {"$in": sids}})

    async def count_attempt(self, key: str, window: float) -> int:
        """Count one attempt under ``key`` (failed logins of a nickname, of an address...);
        how many there were in the window that began with the first of them. Shared by every
        process (one single-document update), forgotten by MongoDB when the window ends."""
        now = time.time()
        live = {"$gt": [{"$ifNull": ["$until", 0]}, now]}
        until = {"$cond": [live, "$until", now + window]}
        doc = await self.attempts.find_one_and_update(
            {"_id": key},
            [{"$set": {
                "n": {"$cond": [live, {"$add": ["$n", 1]}, 1]},
                "until": until,
                "expire_at": {"$toDate": {"$multiply": [until, 1000]}},
            }}],
            upsert=True, return_document=pymongo.ReturnDocument.AFTER, projection={"n": 1},
        )
        return int(doc["n"])

    async def attempts_counted(self, keys: list[str]) -> dict[str, int]:
        """The attempts counted under each of ``keys`` in their current windows."""
        rows = await self.attempts.find(
            {"_id": {"$in": keys}, "until": {"$gt": time.time()}}, {"n": 1}
        ).to_list(None)
        return {r["_id"]: int(r["n"]) for r in rows}

    async def clear_attempts(self, key: str) -> None:
        await self.attempts.delete_one({"_id": key})
