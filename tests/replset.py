"""A real 3-member MongoDB replica set on 127.0.0.1, for the failover tests and bench.

Each member is an ``EmbeddedMongo(set_member=True)`` on a free port with its own dbpath; this
module initiates the set, injects the faults (``kill`` = kill -9, ``pause``/``resume`` =
SIGSTOP/SIGCONT, ``step_down``) and heals it again (``heal``: every member up, one primary,
every secondary caught up). ``PrimaryWatch`` records, from the members' own answers, when
the set had a primary able to commit.

Everything here is synchronous (subprocess + pymongo's ``MongoClient``); async tests call it
through ``asyncio.to_thread`` so their own sockets keep being served meanwhile.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import Any, Self

from pymongo import MongoClient
from pymongo.errors import PyMongoError

from chatapp.mongod import HOST, REPLSET, EmbeddedMongo

# MongoDB's defaults (10 s, 2 s) make every election a ten-second wait; 2 s with a heartbeat
# every 0.5 s still needs four heartbeats missed in a row before an election, so a loaded
# 2-core machine does not start one spuriously, and a test's failover takes seconds.
ELECTION_TIMEOUT_MS = 2000
HEARTBEAT_INTERVAL_MS = 500
# How long a member goes without answering heartbeats before the others count it as down
# (MongoDB's default: 10 s). A secondary whose sync source froze keeps fetching from it until
# then, and until it has switched to the new primary nothing reaches a majority: with the
# default, a frozen primary cost 9 s of refused sends after its successor was elected. 4 s:
# twice the election timeout, still far above a loaded machine's heartbeat delays.
HEARTBEAT_TIMEOUT_SECONDS = 4
# A new primary first catches up with the most up-to-date member it can reach (default: as
# long as it takes); bounded, so a primary is writable soon after it is elected.
CATCH_UP_TIMEOUT_MS = 2000
# MongoDB's own default (60 s, checked every 30 s): the tests must show that chatapp ends its
# own transactions, not that the server expires them for it.
TRANSACTION_LIFETIME_SECONDS = 60
# How long one look at a member may take: a frozen (SIGSTOPped) member never answers.
HELLO_TIMEOUT_MS = 300
# How often each member is asked whether it is primary.
WATCH_INTERVAL = 0.05
# A step-down keeps the old primary out of the next election this long.
STEP_DOWN_SECONDS = 10
# Starting members, electing, catching up: generous, for a loaded machine.
HEAL_SECONDS = 60.0


def _client(port: int) -> MongoClient[Any]:
    return MongoClient(
        HOST, port, directConnection=True, serverSelectionTimeoutMS=HELLO_TIMEOUT_MS,
        connectTimeoutMS=HELLO_TIMEOUT_MS, socketTimeoutMS=HELLO_TIMEOUT_MS,
    )


class ReplicaSet:
    """``size`` mongods forming replica set ``rs0``; ``uri`` lists every member."""

    def __init__(self, base_dir: str, size: int = 3) -> None:
        self.members = [
            EmbeddedMongo(
                os.path.join(base_dir, f"member{i}"), set_member=True,
                transaction_lifetime=TRANSACTION_LIFETIME_SECONDS,
            )
            for i in range(size)
        ]
        self.paused: set[int] = set()

    @property
    def uri(self) -> str:
        hosts = ",".join(f"{HOST}:{m.port}" for m in self.members)
        return f"mongodb://{hosts}/?replicaSet={REPLSET}"

    @property
    def majority(self) -> int:
        return len(self.members) // 2 + 1

    def start(self) -> Self:
        for member in self.members:
            member.start()
        config = {
            "_id": REPLSET,
            "members": [{"_id": i, "host": f"{HOST}:{m.port}"} for i, m in enumerate(self.members)],
            "settings": {
                "electionTimeoutMillis": ELECTION_TIMEOUT_MS,
                "heartbeatIntervalMillis": HEARTBEAT_INTERVAL_MS,
                "heartbeatTimeoutSecs": HEARTBEAT_TIMEOUT_SECONDS,
                "catchUpTimeoutMillis": CATCH_UP_TIMEOUT_MS,
            },
        }
        # Initiating takes seconds (it writes the first oplog entries): not a quick look.
        with MongoClient(HOST, self.members[0].port, directConnection=True) as client:
            client.admin.command("replSetInitiate", config)
        self.heal()
        return self

    def stop(self) -> None:
        """Stop every member (kill -9: for sets whose data is thrown away afterwards)."""
        for i in sorted(self.paused):
            self.resume(i)  # a stopped process cannot shut down cleanly
        # Killed, not shut down: a shutting-down primary waits (up to 15 s) for a secondary
        # to catch up, the others for each other; the data is thrown away anyway.
        for member in self.members:
            member.kill()

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- looking -------------------------------------------------------------------------------

    def hello(self, i: int) -> dict[str, Any] | None:
        """Member ``i``'s answer to ``hello``; None if it is down or does not answer."""
        if not self.members[i].is_running():
            return None
        try:
            with _client(self.members[i].port) as client:
                return client.admin.command("hello")
        except PyMongoError:
            return None

    def primary(self) -> int | None:
        """The member that is primary now (the newest election, if two believe they are)."""
        answers = [(i, self.hello(i)) for i in range(len(self.members))]
        primaries = [(a["electionId"], i) for i, a in answers if a and a.get("isWritablePrimary")]
        return max(primaries)[1] if primaries else None

    def secondaries(self) -> list[int]:
        primary = self.primary()
        return [i for i in range(len(self.members)) if i != primary]

    def wait_primary(self, timeout: float = HEAL_SECONDS) -> int:
        deadline = time.monotonic() + timeout
        while True:
            primary = self.primary()
            if primary is not None:
                return primary
            assert time.monotonic() < deadline, "no primary elected in time"
            time.sleep(WATCH_INTERVAL)

    # -- faults --------------------------------------------------------------------------------

    def kill(self, i: int) -> None:
        """kill -9 member ``i``."""
        self.members[i].kill()

    def pause(self, i: int) -> None:
        """SIGSTOP member ``i``: it keeps its connections and answers nothing."""
        self.members[i].pause()
        self.paused.add(i)

    def resume(self, i: int) -> None:
        self.members[i].resume()
        self.paused.discard(i)

    def step_down(self, i: int, timeout: float = HEAL_SECONDS) -> None:
        """Ask primary ``i`` to step down, until it has (it refuses while no secondary has
        caught up with it within 5 s)."""
        deadline = time.monotonic() + timeout
        while (self.hello(i) or {}).get("isWritablePrimary"):
            assert time.monotonic() < deadline, f"member {i} would not step down"
            # It closes our connection as it steps down: no answer to expect.
            with contextlib.suppress(PyMongoError), _client(self.members[i].port) as client:
                client.admin.command(
                    "replSetStepDown", STEP_DOWN_SECONDS, secondaryCatchUpPeriodSecs=5
                )

    def restart(self, i: int) -> None:
        self.members[i].start()

    def heal(self, timeout: float = HEAL_SECONDS) -> int:
        """Every member running and unfrozen, one primary, every other member a secondary
        that has applied everything the primary has; the primary's index."""
        for i in sorted(self.paused):
            self.resume(i)
        for member in self.members:
            member.start()  # does nothing for a running one
        deadline = time.monotonic() + timeout
        while True:
            primary = self.primary()
            if primary is not None and self._caught_up(primary):
                return primary
            assert time.monotonic() < deadline, "the replica set did not heal in time"
            time.sleep(WATCH_INTERVAL * 2)

    def _caught_up(self, primary: int) -> bool:
        try:
            with _client(self.members[primary].port) as client:
                status = client.admin.command("replSetGetStatus")
        except PyMongoError:
            return False
        states = [m["stateStr"] for m in status["members"]]
        optimes = {m["optime"]["ts"] for m in status["members"] if "optime" in m}
        return states.count("PRIMARY") == 1 and states.count("SECONDARY") == len(states) - 1 \
            and len(optimes) == 1


class PrimaryWatch:
    """Asks every member, ``WATCH_INTERVAL`` apart (one thread per member, so a frozen one
    delays no other), whether it is primary; keeps the moments the set's state changed.

    "Usable" means a primary that can commit: it answers, and so do a majority of the members
    (a lone primary whose secondaries died still says it is primary until it steps down, but
    no majority write succeeds on it). Times are ``time.monotonic()``.
    """

    def __init__(self, rs: ReplicaSet) -> None:
        self.rs = rs
        self._answers: dict[int, dict[str, Any] | None] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.changes: list[tuple[float, int | None]] = []  # (when, usable primary or None)
        self._threads = [
            threading.Thread(target=self._ask, args=(i,), daemon=True)
            for i in range(len(rs.members))
        ]

    def __enter__(self) -> Self:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _ask(self, i: int) -> None:
        while not self._stop.is_set():
            answer = self.rs.hello(i)
            now = time.monotonic()
            with self._lock:
                self._answers[i] = answer
                usable = self._usable()
                if not self.changes or self.changes[-1][1] != usable:
                    self.changes.append((now, usable))
            self._stop.wait(WATCH_INTERVAL)

    def _usable(self) -> int | None:
        answering = [(i, a) for i, a in self._answers.items() if a is not None]
        if len(answering) < self.rs.majority:
            return None
        primaries = [(a["electionId"], i) for i, a in answering if a.get("isWritablePrimary")]
        return max(primaries)[1] if primaries else None

    def primary_now(self) -> int | None:
        with self._lock:
            return self.changes[-1][1] if self.changes else None

    def without_primary(self, start: float, end: float) -> float:
        """Seconds between ``start`` and ``end`` during which no usable primary was seen."""
        with self._lock:
            changes = list(self.changes)
        total = 0.0
        for (when, primary), following in zip(changes, changes[1:] + [(end, None)]):
            lo, hi = max(when, start), min(following[0], end)
            if primary is None and hi > lo:
                total += hi - lo
        return total

    def new_primary_after(self, start: float) -> float | None:
        """When a usable primary other than the one in effect at ``start`` (if any) was
        first seen after ``start``."""
        with self._lock:
            changes = list(self.changes)
        before: int | None = None
        for when, primary in changes:
            if when < start:
                before = primary
            elif primary is not None and primary != before:
                return when
        return None
