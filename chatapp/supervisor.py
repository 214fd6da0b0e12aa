"""``--processes=N``: N worker processes serving one listening socket, kept running.

The parent binds the socket, forks the workers and then only watches them: a worker that
dies is replaced (its clients reconnect to the others meanwhile and resume from their
cursors); SIGTERM or SIGINT to the parent is passed on to every worker, and the parent
returns once they have all shut down cleanly. A worker that exits with ``fatal_code`` (it
refused to start, see ``chatapp/registry.py``) is not replaced: every worker is stopped and
that code returned, since the others would refuse alike.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import time
import traceback
from collections.abc import Callable

log = logging.getLogger(__name__)

# A worker that dies is replaced after this pause, so a worker that cannot start (a bad
# config, MongoDB unreachable) costs a log line a second rather than a busy loop.
RESTART_DELAY_SECONDS = 1.0
# How often to look again when a child that is not a worker has exited: the embedded mongod,
# which its watchdog (chatapp.mongod.Watchdog) reaps within its own WATCH_INTERVAL.
OTHER_CHILD_SECONDS = 0.1


def run_workers(
    count: int,
    serve: Callable[[int], int],
    fatal_code: int | None = None,
    on_exit: Callable[[int], None] | None = None,
) -> int:
    """Fork ``count`` workers, each running ``serve(index)``; return when all have stopped:
    0, or ``fatal_code`` if a worker exited with it. ``on_exit(pid)`` is told of every
    worker that ended (the metrics drop its gauges)."""
    workers: dict[int, int] = {}  # pid -> index
    stopping = False
    result = 0

    def spawn(index: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            random.seed()  # forked workers would otherwise share one random sequence
            code = 1
            try:
                code = serve(index)
            except BaseException:  # noqa: BLE001 -- a worker reports every death, then exits
                traceback.print_exc()
            finally:
                # _exit: no atexit or finalizers of the parent's objects (the embedded
                # mongod's among them) may run in a worker.
                os._exit(code)
        workers[pid] = index
        log.info("worker %d started (pid %d)", index, pid)

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(workers):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    for index in range(count):
        spawn(index)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while workers:
        try:
            pid, status = _wait_worker(workers)
        except ChildProcessError:
            break
        index = workers.pop(pid)  # _wait_worker reaps workers only
        if on_exit is not None:
            on_exit(pid)
        if stopping:
            continue
        if fatal_code is not None and os.waitstatus_to_exitcode(status) == fatal_code:
            log.error("worker %d (pid %d) refused to start; stopping the others", index, pid)
            result = fatal_code
            stop(signal.SIGTERM, None)
            continue
        log.warning("worker %d (pid %d) died (status %d); starting another", index, pid, status)
        time.sleep(RESTART_DELAY_SECONDS)
        if not stopping:
            spawn(index)
    return result


def _wait_worker(workers: dict[int, int]) -> tuple[int, int]:
    """The next worker to exit, reaped: (pid, wait status).

    Not ``os.wait()``: that reaps any child, the embedded mongod's included, whose
    ``Popen`` would then never learn that it exited, and its watchdog would never restart it.
    So: peek at the next exited child without reaping it (``WNOWAIT``), reap it only if it is
    a worker, and leave the others to their owner.
    """
    while True:
        info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)
        if info is not None and info.si_pid in workers:
            return os.waitpid(info.si_pid, 0)
        time.sleep(OTHER_CHILD_SECONDS)
