"""Accounts: a registered nickname, its password (argon2id) and its devices' sessions.

Anyone holding a guest session may register its nickname with a password; from then on the
nickname is the account's (no guest can take it or a look-alike of it, ``409
nick_registered``), any number of devices log in to it (``POST /api/session`` with a
password), and deleting the account frees the nickname.

The traps, and what this module does about each:

- **Guessing**: failed attempts (logins and account deletions) are counted in MongoDB, per
  nickname and per address, so the limit holds across a cluster and a restart; past it the
  answer is ``429 rate_limited`` before any hashing. A success clears the nickname's count.
- **Telling who is registered by timing**: a login for a nickname without an account still
  verifies the password, against a dummy hash made with the same parameters, and counts the
  failure the same way: both answers take one hash and the same MongoDB round trips.
- **Stalling the server**: argon2id takes tens of milliseconds of CPU and 64 MiB per hash.
  Hashes run on a small thread pool (argon2-cffi releases the GIL), at most
  ``MAX_CONCURRENT_HASHES`` at once and ``MAX_WAITING_HASHES`` waiting (more: ``429``), so
  logins never stall the event loop and never take more than a bounded amount of memory.
- **Passwords in logs**: no password is ever formatted into a message or a log line here;
  handlers log no request bodies.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from typing import Any

import argon2
from argon2.exceptions import InvalidHashError, VerificationError

from chatapp import rules
from chatapp.errors import ChatError
from chatapp.sessions import ACCOUNT_SESSION_SECONDS, Session, nick_registered
from chatapp.store import AccountStore, RoleStore

# The contract: 8-256 characters. Eight is the floor NIST SP 800-63B sets; 256 fits any
# passphrase or password manager and bounds what one hash reads.
MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_CHARS = 256
# Failed attempts allowed in one window: five per nickname is enough for typos and far too
# few to guess a password; an address gets more (a household or an office behind one NAT).
MAX_FAILURES_PER_NICK = 5
MAX_FAILURES_PER_ADDRESS = 20
# The window starts with the first failure; a quarter of an hour makes guessing hopeless
# (480 tries a day per nickname) and a locked-out owner waits no longer than a coffee.
FAILURE_WINDOW_SECONDS = 15 * 60.0
# Accounts never expire, so registrations are what could fill MongoDB: a few an hour from one
# address is plenty for people and nothing for a script.
MAX_REGISTRATIONS_PER_ADDRESS = 5
REGISTRATION_WINDOW_SECONDS = 3600.0
# Two cores on the machines this runs on; each hash holds 64 MiB (argon2-cffi's RFC 9106
# low-memory profile), so two at once cost 128 MiB at most.
MAX_CONCURRENT_HASHES = 2
# Beyond this many logins waiting for a hash the answer is "try again": each waits ~0.1 s per
# two ahead of it, so 32 is over a second and a half of queue.
MAX_WAITING_HASHES = 32
# Devices logged in to one account at once; logging in past it ends the oldest device's
# session, so one account's logins cannot pile up sessions without end.
MAX_DEVICES = 50


class Accounts:
    def __init__(self, chat: Any, hasher: argon2.PasswordHasher | None = None) -> None:
        """``chat``: the ``Chat`` (its store, its sessions, ``end_session``)."""
        self.chat = chat
        self.store = AccountStore(chat.store)
        self.hasher = hasher or argon2.PasswordHasher()  # argon2id, RFC 9106 low-memory
        self._pool = concurrent.futures.ThreadPoolExecutor(
            MAX_CONCURRENT_HASHES, thread_name_prefix="argon2"
        )
        self._waiting = 0
        # Verified against when there is no account: the same work as a real one.
        self._dummy_hash = self.hasher.hash("not a password: timing equaliser")

    # -- hashing off the event loop -------------------------------------------------------------

    async def _run(self, fn: Any, *args: Any) -> Any:
        if self._waiting >= MAX_WAITING_HASHES:
            raise ChatError(
                "rate_limited", "Too many logins at this moment; try again shortly.", 429
            )
        self._waiting += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        finally:
            self._waiting -= 1

    def _verify(self, hash_: str, password: str) -> bool:
        try:
            return self.hasher.verify(hash_, password)
        except (VerificationError, InvalidHashError):
            return False

    # -- the operations -------------------------------------------------------------------------

    async def register(self, session: Session, password: object, address: str) -> Session:
        """Register ``session``'s nickname: the session becomes the account's first device."""
        password = check_password(password)
        if await self.registered(session):
            raise ChatError("nick_registered", "This nickname is registered already.", 409)
        if await self.store.count_attempt(
            "reg:" + address, REGISTRATION_WINDOW_SECONDS
        ) > MAX_REGISTRATIONS_PER_ADDRESS:
            raise ChatError(
                "rate_limited", "Too many accounts from your address; try again later.", 429
            )
        hash_ = await self._run(self.hasher.hash, password)
        key = rules.nick_keys(session.nick)
        if not await self.store.insert_account(key, session.nick, hash_):
            raise nick_registered()
        expires = time.time() + ACCOUNT_SESSION_SECONDS
        if not await self.store.guest_to_account(session.sid, key, expires):
            await self.store.delete_account(key.skeleton)  # the session ended meanwhile
            raise ChatError("no_session", "The session has ended.", 401)
        registered = Session(session.sid, session.nick, account=True)
        self.chat.sessions.remember(registered)
        return registered

    async def registered(self, session: Session) -> bool:
        """Whether ``session`` is an account's device, asked of MongoDB (the cached flag may
        be stale: the account may have been deleted through another process)."""
        return await self.store.session_account(session.sid) is not None

    async def login(self, nick: object, password: object, address: str) -> Session:
        """A new session of the account ``nick``, or ``401 bad_password`` (the same answer,
        in the same time, whether or not the nickname is registered)."""
        key = rules.nick_keys(rules.check_nick(nick))
        if not isinstance(password, str):
            raise ChatError("bad_password", "The password must be a string.", 400)
        account = await self._checked(key.skeleton, password, address)
        session = await self.chat.sessions.open_account_session(
            account["nick"], account["_id"], address
        )
        # Deleted while we checked? Then this device must not outlive it (see ``delete``).
        if await self.store.find_account(key) is None:
            await self.chat.end_session(session)
            raise _bad_password()
        devices = await self.store.account_sessions(account["_id"])
        for sid in devices[: max(0, len(devices) - MAX_DEVICES)]:
            await self.chat.end_session(Session(sid, account["nick"], account=True))
        return session

    async def delete(self, session: Session, password: object, address: str) -> Session:
        """Delete the account ``session`` is logged in to; this device goes on as a guest
        holding the nickname, every other device's session ends."""
        if not isinstance(password, str):
            raise ChatError("bad_password", "The password must be a string.", 400)
        account_id = await self.store.session_account(session.sid)
        if account_id is None:
            raise ChatError("not_registered", "You are not logged in to an account.", 404)
        account = await self._checked(account_id, password, address)
        key = rules.nick_keys(account["nick"])
        # Guest first (no guest can hold the key while the account exists), then the account,
        # then its other devices: a login racing this sees the account gone and undoes itself.
        guest = Session(session.sid, session.nick)
        guest_expiry = time.time() + self.chat.sessions.unused_ttl
        if await self.store.account_to_guest(session.sid, key, guest_expiry):
            self.chat.sessions.remember(guest)
        await self.store.delete_account(account_id)
        # Whoever registers the nickname next must not inherit its rooms.
        await RoleStore(self.chat.store).forget_account(account_id)
        for sid in await self.store.account_sessions(account_id):
            await self.chat.end_session(Session(sid, account["nick"], account=True))
        return guest

    async def _checked(self, account_id: str, password: str, address: str) -> dict[str, Any]:
        """The account ``account_id`` if ``password`` is its own; ``401`` otherwise (a
        counted failure), ``429`` past the limits. One hash either way."""
        nick_counter, address_counter = "nick:" + account_id, "addr:" + address
        counts = await self.store.attempts_counted([nick_counter, address_counter])
        if (counts.get(nick_counter, 0) >= MAX_FAILURES_PER_NICK
                or counts.get(address_counter, 0) >= MAX_FAILURES_PER_ADDRESS):
            raise ChatError(
                "rate_limited",
                "Too many failed attempts; try again in "
                f"{int(FAILURE_WINDOW_SECONDS // 60)} minutes.",
                429,
            )
        account = await self.store.find_account_by_id(account_id)
        usable = account is not None and len(password) <= MAX_PASSWORD_CHARS
        hash_ = account["hash"] if usable and account else self._dummy_hash
        ok = await self._run(self._verify, hash_, password)
        if not (ok and usable and account):
            await self.store.count_attempt(nick_counter, FAILURE_WINDOW_SECONDS)
            await self.store.count_attempt(address_counter, FAILURE_WINDOW_SECONDS)
            raise _bad_password()
        await self.store.clear_attempts(nick_counter)
        if self.hasher.check_needs_rehash(hash_):
            await self.store.set_hash(account_id, await self._run(self.hasher.hash, password))
        return account

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def check_password(password: object) -> str:
    """A password to register: a string of 8-256 characters, kept exactly as typed."""
    if not isinstance(password, str):
        raise ChatError("bad_password", "The password must be a string.", 400)
    if not MIN_PASSWORD_CHARS <= len(password) <= MAX_PASSWORD_CHARS:
        raise ChatError(
            "bad_password",
            f"Passwords are {MIN_PASSWORD_CHARS}-{MAX_PASSWORD_CHARS} characters.",
            400,
        )
    return password


def _bad_password() -> ChatError:
    return ChatError("bad_password", "That nickname and password do not match.", 401)
