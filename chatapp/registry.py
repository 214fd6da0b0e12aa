"""One chat per database: each server process registers itself, and refuses to split a chat.

A server without ``--cluster`` (local mode) publishes what it stores straight to its own
clients and keeps presence in its memory. Two of them on one database are two chats sharing
one history: each one's clients miss the other's messages and presence, and a long-poll that
moves between them skips events. So every server process records itself in the ``servers``
collection at start (mode, machine, pid) and renews that registration every
``HEARTBEAT_SECONDS``; at start:

- a local-mode server refuses to start if any other live server uses the database;
- a cluster-mode server refuses to start if a live local-mode server does (cluster servers
  join each other: that is what cluster mode is for).

Either refusal exits with ``EXIT_REFUSED`` and a message that says why and what to do.

The trap is a crashed server's registration, which stays until it expires
(``REGISTRATION_TTL_SECONDS`` after its last heartbeat). A server restarted at once on the same
machine (``kill -9``, then a service manager's restart; the embedded MongoDB's data dir)
must not be refused for that long: a registration from this very machine whose process is
gone (its pid is not running, or runs another program started later) is removed at once.
Registrations from other machines can only expire.

Two servers starting at the same moment may both see the other and both refuse: safe (no
split), and the message says to try again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from typing import Any

from chatapp import store as store_module
from chatapp.logs import short_reason
from chatapp.store import EventStore, StoreError

log = logging.getLogger(__name__)

LOCAL, CLUSTER = "local", "cluster"
# The exit status of a server that refused to start (2 is a bad option or an unusable
# MongoDB): the supervisor of --processes stops every worker on it instead of restarting one.
EXIT_REFUSED = 3
# How often a server renews its registration. Well below the expiry, so that a busy event
# loop or one slow MongoDB round trip does not let a live server's registration lapse.
HEARTBEAT_SECONDS = 2.0
# A registration not renewed for this long is a server that is gone: another server may then
# start in a mode that would have split the chat with it. Five missed heartbeats: long
# enough for a loaded machine, short enough that a crashed server on another machine blocks
# a local-mode replacement only for seconds (one on the same machine not at all, see above).
REGISTRATION_TTL_SECONDS = 10.0


class SplitRefused(RuntimeError):
    """Starting this server would split the chat; the message says why and what to do."""


def machine_id() -> str:
    """This machine, as far as pids are comparable: the host name, the kernel's boot id and
    the pid namespace (two containers with one host name do not see each other's pids)."""
    def read(path: str, link: bool = False) -> str:
        try:
            if link:
                return os.readlink(path)
            with open(path) as f:
                return f.read().strip()
        except OSError:
            return ""

    return "/".join([socket.gethostname(), read("/proc/sys/kernel/random/boot_id"),
                     read("/proc/self/ns/pid", link=True)])


def process_start(pid: int) -> str:
    """When process ``pid`` started (clock ticks after boot, from /proc), "" if it is not
    running or /proc is missing: tells a live server from a later process given its pid."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return ""
    # Field 22, counted after the command name, which may itself hold spaces and parentheses.
    fields = stat.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 else ""


def _is_gone(doc: dict[str, Any], machine: str) -> bool:
    """A registration from this machine whose process no longer runs."""
    if doc.get("machine") != machine or not isinstance(doc.get("pid"), int):
        return False
    started = process_start(doc["pid"])
    if not started:
        # Not in /proc: gone, or hidden (another user's, under systemd's ProtectProc=
        # invisible; or no /proc at all). The kernel knows: EPERM means it runs.
        try:
            os.kill(doc["pid"], 0)
        except ProcessLookupError:
            return True
        except OSError:
            return False
        return False
    return bool(doc.get("proc_start")) and started != doc["proc_start"]


def _describe(doc: dict[str, Any]) -> str:
    host = doc.get("host", "?")
    return f"pid {doc.get('pid', '?')} on {host}, {doc.get('mode', '?')} mode"


class ServerRegistry:
    """This process's registration: ``register()`` at start (raises ``SplitRefused``), then
    ``start()`` the heartbeat; ``stop()`` at shutdown removes it, so a restart is not
    refused."""

    def __init__(self, store: EventStore, mode: str) -> None:
        if mode not in (LOCAL, CLUSTER):
            raise ValueError(f"unknown mode {mode!r}")
        self.store = store
        self.mode = mode
        self.machine = machine_id()
        self.server_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._info = {
            "mode": mode, "machine": self.machine, "host": socket.gethostname(),
            "pid": os.getpid(), "proc_start": process_start(os.getpid()),
        }
        self._heartbeat: asyncio.Task[None] | None = None
        self._failing = False  # renewals fail now: logged once, and once when they work again

    async def register(self) -> None:
        """Record this server, then refuse (``SplitRefused``, registration withdrawn) if a live
        server's mode conflicts with ours."""
        await store_module.create_server_index(self.store)
        await self._write()
        conflicts = await self.conflicts()
        if conflicts:
            await store_module.remove_server(self.store, self.server_id)
            raise SplitRefused(self._refusal(conflicts))

    async def conflicts(self) -> list[dict[str, Any]]:
        """Live registrations of other servers that this one cannot share the database with;
        those of dead processes on this machine are removed on the way."""
        found = []
        for doc in await store_module.live_servers(self.store):
            if doc["_id"] == self.server_id:
                continue
            if _is_gone(doc, self.machine):
                log.info("removing the registration of a server that is gone (%s)",
                         _describe(doc))
                await store_module.remove_server(self.store, doc["_id"])
                continue
            if self.mode == LOCAL or doc.get("mode") == LOCAL:
                found.append(doc)
        return found

    def start(self) -> None:
        if self._heartbeat is None:
            self._heartbeat = asyncio.ensure_future(self._beat_forever())

    async def stop(self) -> None:
        """Stop the heartbeat and withdraw the registration (best effort: if MongoDB is
        unreachable, it expires by itself)."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None
        try:
            await store_module.remove_server(self.store, self.server_id)
        except StoreError as exc:
            log.warning("could not withdraw this server's registration (it expires in %.0f s): "
                        "%s", REGISTRATION_TTL_SECONDS, exc)

    async def beat(self) -> None:
        """Renew the registration; register again if it lapsed (MongoDB was unreachable, or
        this process stalled), and say loudly if the chat is split meanwhile."""
        if await store_module.renew_server(self.store, self.server_id,
                                           REGISTRATION_TTL_SECONDS):
            return
        await self._write()
        conflicts = await self.conflicts()
        log.warning("this server's registration had lapsed; registered again")
        if conflicts:
            log.error("the chat is split: %s", self._refusal(conflicts))

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            try:
                await self.beat()
            except StoreError as exc:
                if not self._failing:
                    log.warning("cannot renew this server's registration: %s",
                                short_reason(exc))
                self._failing = True
            else:
                if self._failing:
                    log.info("renewing this server's registration again")
                self._failing = False

    async def _write(self) -> None:
        await store_module.register_server(self.store, self.server_id, self._info,
                                           REGISTRATION_TTL_SECONDS)

    def _refusal(self, conflicts: list[dict[str, Any]]) -> str:
        other = conflicts[0]
        seen = REGISTRATION_TTL_SECONDS - float(other.get("seconds_left", 0.0))
        who = f"another chatapp server ({_describe(other)}, last heard of {max(seen, 0):.0f} s ago)"
        expiry = (f"If that server has stopped, its registration expires "
                  f"{REGISTRATION_TTL_SECONDS:.0f} s after its last heartbeat; then try again.")
        if self.mode == LOCAL:
            return (
                f"refusing to start: {who} uses this MongoDB database. Two servers on one "
                "database are one chat only in cluster mode; without --cluster each would "
                "deliver only its own messages and keep its own presence. Start every server "
                "that shares this database with --cluster, or give this one a database of its "
                f"own. {expiry}"
            )
        return (
            f"refusing to start in cluster mode: {who} uses this MongoDB database and does "
            "not follow the change feed, so its clients would miss this server's messages. "
            f"Restart it with --cluster (or stop it) first. {expiry}"
        )

