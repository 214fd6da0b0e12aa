"""The embedded mongod, watched: restarted with back-off when it dies, and said so in the log.

See ``Watchdog``. Used by ``chatapp.__main__`` for the ``EmbeddedMongo`` it starts.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from chatapp.mongod import STOP_TIMEOUT, EmbeddedMongo

log = logging.getLogger(__name__)


# How often the watchdog looks at mongod. Its clients see "503, retry" meanwhile anyway; half a
# second adds little to the seconds a restart takes, and costs nothing.
WATCH_INTERVAL = 0.5
# The first restart waits this long, each further one twice as long as the last, up to
# BACKOFF_MAX: a mongod that dies at once again (a full disk, a corrupt dbpath) is not
# respawned in a busy loop, and its log stays readable.
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 30.0
# A mongod that ran this long was healthy: its next death starts the back-off afresh.
STABLE_SECONDS = 60.0
# After this many restarts in a row that did not last STABLE_SECONDS, restarting is not
# going to help (about a minute of trying): give up, so that the app exits non-zero and the
# operator (or the service manager, which then restarts the app and mongod together) sees it.
MAX_RESTARTS = 6


class Watchdog:
    """Keeps an ``EmbeddedMongo`` running: when its mongod exits (killed, crashed), starts it
    again on the same port and data, with back-off, and says so in the log.

    Why restart here rather than exit and leave it to a service manager: the app's clients
    stay connected (their sends answer ``503 store_unavailable`` for the few seconds of the
    restart, then succeed; nothing acknowledged is lost, MongoDB's journal has it), the
    Motor clients reconnect to the same URI by themselves, and ``./scripts/run`` in a
    terminal has no service manager. Only when restarts keep failing (``MAX_RESTARTS``) does
    it call ``on_give_up(reason)``, and the app then exits non-zero.

    A thread, not a task: the --processes parent, which owns mongod, runs no event loop.
    ``stop()`` before ``EmbeddedMongo.stop()``, or the watchdog restarts the mongod the app
    is stopping.
    """

    def __init__(self, mongo: EmbeddedMongo, on_give_up: Callable[[str], None]) -> None:
        self.mongo = mongo
        self.on_give_up = on_give_up
        self.restarts = 0  # restarts done, for the log and tests
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # held while a restart is under way
        self._thread = threading.Thread(target=self._watch, name="mongod-watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop watching; waits for a restart under way to finish (then mongod runs, and the
        caller stops it)."""
        self._stopping.set()
        with self._lock:
            pass
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=STOP_TIMEOUT)

    def join(self, timeout: float) -> None:
        """Wait (up to ``timeout`` s) until the watchdog has stopped watching: stopped, or
        given up."""
        self._thread.join(timeout)

    def _watch(self) -> None:
        # The thread must not end while mongod should run: a mongod it restarted is sent
        # SIGTERM when it does (EmbeddedMongo's die_with_parent). So a bug here gives up
        # loudly, and the app exits, rather than leave a dead watchdog and a dying mongod.
        try:
            self._watch_until_done()
        except Exception as exc:  # any failure ends the watch: say so, and exit
            log.exception("the embedded MongoDB's watchdog failed")
            self.on_give_up(f"the embedded MongoDB's watchdog failed: {exc!r}")

    def _watch_until_done(self) -> None:
        failures = 0  # deaths since mongod last ran for STABLE_SECONDS
        up_since = time.monotonic()
        while not self._stopping.wait(WATCH_INTERVAL):
            if self.mongo.is_running():
                if failures and time.monotonic() - up_since >= STABLE_SECONDS:
                    failures = 0
                continue
            failures += 1
            what = (f"the embedded MongoDB (pid {self.mongo.pid}) exited with status "
                    f"{self.mongo.exit_status}")
            if failures > MAX_RESTARTS:
                reason = (f"{what}; {MAX_RESTARTS} restarts in a row did not last "
                          f"{STABLE_SECONDS:.0f} s, giving up (see {self.mongo.logpath})")
                log.error("%s", reason)
                self.on_give_up(reason)
                return
            delay = min(BACKOFF_FIRST * 2 ** (failures - 1), BACKOFF_MAX)
            log.error("%s; restarting it in %.1f s (attempt %d of %d)", what, delay, failures,
                      MAX_RESTARTS)
            if self._stopping.wait(delay):
                return
            with self._lock:
                if self._stopping.is_set():
                    return
                began = time.monotonic()
                try:
                    self.mongo.start()
                except (RuntimeError, OSError) as exc:  # MongodNotFound is a RuntimeError
                    log.error("could not restart the embedded MongoDB: %s", exc)
                    continue
            self.restarts += 1
            up_since = time.monotonic()
            log.warning("restarted the embedded MongoDB (pid %s) at %s in %.1f s",
                        self.mongo.pid, self.mongo.uri, up_since - began)
