"""Who you are: sessions, each one nickname, unique among live sessions.

A session is created by choosing a nickname and carried by a signed cookie holding its id
(``sid``). Sessions are stored in MongoDB with an expiry time, which is what frees a nickname:
``unused_ttl`` after creation for a session that never connects, and the grace period after
its last connection for one that did (``Chat`` extends it while connections are open).

A session of an account (``chatapp.accounts``; one per device logged in) does not hold its
nickname that way, the account does: it expires ``ACCOUNT_SESSION_SECONDS`` after it was last
seen, so it survives restarts and the grace period, and ends on logout or with the account.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from chatapp import rules
from chatapp.errors import ChatError
from chatapp.ratelimit import TokenBucket
from chatapp.store import AccountStore, EventStore

# A nickname lookup per request would put MongoDB on every message's path; sessions are cached
# in memory and the cache is dropped when the session ends or expires.

# The new-session limit per address is "N per minute": N at once (a class or an office
# joining together behind one NAT), then one every 60/N seconds. A script claiming nicknames
# to squat on them gets N, not thousands.
SESSION_LIMIT_WINDOW_SECONDS = 60.0
# Buckets of addresses that have not created a session for a while are full again and carry
# no information: they are dropped whenever the table has doubled since the last clean-up.
MIN_BUCKET_TABLE = 1024
# An account's device stays logged in this long after it was last seen: the session cookie's
# own lifetime (web/base.py), past which the browser has forgotten the session anyway.
ACCOUNT_SESSION_SECONDS = 30 * 24 * 3600.0


def nick_registered() -> ChatError:
    return ChatError(
        "nick_registered",
        "That nickname is registered: log in with its password, or choose another.",
        409,
    )


@dataclass(frozen=True)
class Session:
    sid: str
    nick: str
    # A session of a registered nickname (an account's device), not a guest's.
    account: bool = False


# In a cluster, the new-session limit held across processes (``mode.take_session_token``):
# (address, rate, capacity) -> whether a token was taken.
SharedToken = Callable[[str, float, float], Awaitable[bool]]


async def _no_shared_limit(address: str, rate: float, capacity: float) -> bool:
    return True


class Sessions:
    def __init__(
        self, store: EventStore, unused_ttl: float, new_per_address: int = 0,
        shared_token: SharedToken = _no_shared_limit,
    ) -> None:
        self.store = store
        self.unused_ttl = unused_ttl
        self.new_per_address = new_per_address
        self.shared_token = shared_token
        self._cache: dict[str, Session] = {}
        self._buckets: dict[str, TokenBucket] = {}
        self._prune_at = MIN_BUCKET_TABLE

    async def create(self, nick: object, address: str = "") -> Session:
        """A new session holding ``nick``, created from ``address``: ``nick_taken`` if a live
        session holds it, ``rate_limited`` past ``new_per_address`` sessions a minute from
        one address. Either error creates nothing."""
        nick = rules.check_nick(nick)
        await self._take_token(address)
        sid = secrets.token_urlsafe(18)
        key = rules.nick_keys(nick)
        # A session past its expiry no longer holds its nickname, even before a sweep ran. Forget
        # it here too, or its cookie would go on working beside the nickname's new holder.
        for stale in await self.store.free_expired_nick(key):
            self._cache.pop(stale, None)
        claimed = await self.store.claim_nick(sid, nick, key, time.time() + self.unused_ttl)
        if not claimed:
            raise ChatError("nick_taken", "That nickname is taken.", 409)
        # After the claim, not before: an account registered meanwhile is seen here (it is
        # inserted before its guest session lets go of the key; store/accounts.py).
        if await AccountStore(self.store).find_account(key) is not None:
            await self.store.delete_session(sid)
            raise nick_registered()
        session = Session(sid, nick)
        self._cache[sid] = session
        return session

    async def open_account_session(self, nick: str, account: str, address: str = "") -> Session:
        """A new device's session of ``account`` (its password checked by the caller);
        ``rate_limited`` like ``create``."""
        await self._take_token(address)
        session = Session(secrets.token_urlsafe(18), nick, account=True)
        await AccountStore(self.store).add_account_session(
            session.sid, nick, account, time.time() + ACCOUNT_SESSION_SECONDS
        )
        self._cache[session.sid] = session
        return session

    def remember(self, session: Session) -> None:
        """``session`` changed kind (registered, or its account deleted): cache it so."""
        self._cache[session.sid] = session

    async def _take_token(self, address: str) -> None:
        """This process's bucket for ``address`` (refusing a flood without a round trip),
        then, in a cluster, the one every process shares."""
        if not self.new_per_address:
            return
        rate = self.new_per_address / SESSION_LIMIT_WINDOW_SECONDS
        bucket = self._buckets.get(address)
        if bucket is None:
            if len(self._buckets) >= self._prune_at:
                self._buckets = {a: b for a, b in self._buckets.items() if not b.is_full()}
                self._prune_at = max(MIN_BUCKET_TABLE, 2 * len(self._buckets))
            bucket = self._buckets[address] = TokenBucket(rate, self.new_per_address)
        if not bucket.take() or not await self.shared_token(
                address, rate, self.new_per_address):
            raise ChatError(
                "rate_limited",
                "Too many new nicknames from your address; try again in a minute.",
                429,
            )

    async def get(self, sid: str) -> Session | None:
        session = self._cache.get(sid)
        if session is None:
            doc = await self.store.get_session(sid)
            if doc is None:
                return None
            session = self._cache[sid] = Session(sid, doc["nick"], "account" in doc)
        return session

    async def end(self, sid: str) -> None:
        """Free the nickname at once."""
        self._cache.pop(sid, None)
        await self.store.delete_session(sid)

    async def ended_meanwhile(self) -> list[str]:
        """Cached sessions that no longer exist in MongoDB (ended while this process was not
        told: its change feed was down); forgotten, and returned."""
        cached = list(self._cache)
        if not cached:
            return []
        gone = set(cached) - await self.store.live_session_ids(cached)
        for sid in gone:
            self.forget(sid)
        return sorted(gone)

    def forget(self, sid: str) -> None:
        """The session ended elsewhere (another process of the cluster): stop honouring it."""
        self._cache.pop(sid, None)

    async def keep_alive(self, last_seen: dict[str, float]) -> None:
        """Push each session's expiry to ``grace`` after it was last seen (wall-clock times)."""
        # Connected sessions share one expiry time, so this is one update for all of them
        # plus one per session that went away since the last sweep.
        by_expiry: dict[float, list[str]] = {}
        account_expiry = time.time() + ACCOUNT_SESSION_SECONDS
        for sid, expires_at in last_seen.items():
            cached = self._cache.get(sid)
            if cached is not None and cached.account:
                expires_at = account_expiry
            by_expiry.setdefault(expires_at, []).append(sid)
        for expires_at, sids in by_expiry.items():
            await self.store.extend_sessions(sids, expires_at)

    async def sweep(self) -> list[str]:
        """Delete expired sessions; the sids that are gone."""
        now = time.time()
        sids = await self.store.expired_sessions(now)
        if sids:
            await self.store.delete_sessions(sids, now)
        for sid in sids:
            self._cache.pop(sid, None)
        return sids
