"""``python -m chatapp`` as a real process, for what an in-process server cannot do: ``kill -9``,
SIGTERM, the embedded MongoDB it starts and stops itself, a restart under a browser, several
machines behind nginx. The one implementation: ``tests/e2e/conftest.py``'s ``AppServer`` is
this class with the browser tests' defaults.

Synchronous (subprocess and urllib); async tests call the blocking parts through
``asyncio.to_thread`` so their own sockets keep being served meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from tests.harness import free_port

ROOT = Path(__file__).resolve().parents[1]
# A first start with the embedded MongoDB initiates its replica set: allow for a slow machine.
START_SECONDS = 60.0
# A first start whose port another process took meanwhile is tried again this many times.
START_ATTEMPTS = 3


@asynccontextmanager
async def running(app: AppProcess) -> AsyncIterator[AppProcess]:
    """Start ``app`` (off the event loop), and stop it however the test ends; its log's tail is
    printed, which pytest shows when the test failed."""
    await asyncio.to_thread(app.start)
    try:
        yield app
    finally:
        app.stop()
        print(f"--- chatapp log ---\n{app.log_tail(60)}")


class PortTaken(RuntimeError):
    """The process could not bind its port (another process got it after ``free_port()``)."""


class AppProcess:
    """One chatapp process; ``start()`` again after it ended (``stop``, ``kill``, ``wait``)
    reuses the port and data_dir, as a real restart does; ``restart()`` does both at once.

    Without ``mongo_uri`` the process starts (and must stop) its own embedded MongoDB under
    ``data_dir``. The output of every run goes to ``<data_dir>.log``; ``exit_codes`` holds the
    exit status of every run that ended, in order.
    """

    start_seconds = START_SECONDS

    def __init__(self, data_dir: Path, mongo_uri: str | None = None, **options: Any) -> None:
        self.data_dir = Path(data_dir)
        self.mongo_uri = mongo_uri
        self.port = free_port()
        self.options = {"rate_limit": 0, "new_sessions_per_ip": 0, **options}
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.exit_codes: list[int] = []
        self._has_run = False  # has been healthy on self.port: keep that port from now on

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float | None = None) -> AppProcess:
        """Start the process and return once ``/healthz`` answers 200 (within ``timeout`` s,
        ``start_seconds`` by default). A first start whose port was taken meanwhile (another
        process got it between free_port() and the bind) tries again on another port; a
        restart keeps its port."""
        for attempt in range(START_ATTEMPTS):
            try:
                return self._start(self.start_seconds if timeout is None else timeout)
            except PortTaken:
                if self._has_run or attempt == START_ATTEMPTS - 1:
                    raise
                self.port = free_port()
        raise AssertionError("unreachable")

    def _start(self, timeout: float) -> AppProcess:
        assert self.proc is None, "already running"
        log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        args = [
            sys.executable, "-m", "chatapp", f"--port={self.port}", "--address=127.0.0.1",
            f"--data_dir={self.data_dir}",
        ] + [f"--{name}={value}" for name, value in self.options.items()]
        if self.mongo_uri:
            args.append(f"--mongo_uri={self.mongo_uri}")
        with open(self.log_path, "ab") as log:
            log.write(f"$ {' '.join(args)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                # A hang shows where: SIGABRT (see stop) dumps every thread's stack to the log.
                env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"},
            )
        deadline = time.monotonic() + timeout
        while True:
            code = self.proc.poll()
            if code is not None:
                self.proc = None
                with open(self.log_path, "rb") as log:
                    log.seek(log_start)
                    if b"Address already in use" in log.read():
                        raise PortTaken(f"port {self.port} is taken:\n{self.log_tail()}")
                raise RuntimeError(f"chatapp exited with {code} at start:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2) as response:
                    # Still running: not another process answering on a port this one lost.
                    if response.status == 200 and self.proc.poll() is None:
                        self._has_run = True
                        return self
            except (OSError, urllib.error.URLError):
                pass  # not listening yet, or 503 while MongoDB is not reachable yet
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"chatapp not healthy after {timeout} s:\n{self.log_tail()}")
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not running"
        return self.proc.pid

    def _ended(self, code: int) -> int:
        self.proc = None
        self.exit_codes.append(code)
        return code

    def kill(self) -> None:
        """``kill -9``: a crash. Nothing runs in the process after this."""
        assert self.proc is not None, "not running"
        self.proc.kill()
        self._ended(self.proc.wait())

    def terminate(self) -> None:
        """Send SIGTERM (a clean shutdown); ``wait()`` for the exit status."""
        assert self.proc is not None, "not running"
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        """The exit status; raises ``subprocess.TimeoutExpired`` if still running after
        ``timeout`` s (the process is left running: ``stop()`` it)."""
        assert self.proc is not None, "not running"
        return self._ended(self.proc.wait(timeout))

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after 15 s; the exit status (None if it was not running)."""
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)  # the stacks, into the log, before it goes
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
            code = proc.wait()
        return self._ended(code)

    def restart(self) -> AppProcess:
        """Stop (which must be a clean exit) and start again: same port, same data_dir."""
        code = self.stop()
        assert code == 0, f"chatapp did not exit cleanly on SIGTERM ({code}):\n{self.log_tail()}"
        return self.start()

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # -- the JSON API, as any client sees it (no session needed for these) --------------------

    def get_json(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return json.load(response)

    def history(self, room: str) -> list[dict[str, Any]]:
        """Every event of the room, oldest first (GET .../history, page by page)."""
        events: list[dict[str, Any]] = []
        before = ""
        while True:
            query = urllib.parse.urlencode({"limit": 200, **({"before": before} if before else {})})
            page = self.get_json(f"/api/rooms/{room}/history?{query}")
            events[:0] = page["events"]
            if not page["has_more"] or not page["events"]:
                return events
            before = page["events"][0]["id"]

    def presence(self, room: str) -> list[str]:
        return self.get_json(f"/api/rooms/{room}/presence")["nicks"]
