"""``python -m chatapp`` as a real process, for the faults an in-process server cannot take:
``kill -9``, SIGTERM, the embedded MongoDB it starts and stops itself.

Synchronous (subprocess and urllib); async tests call the blocking parts through
``asyncio.to_thread`` so their own sockets keep being served meanwhile.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.harness import free_port

ROOT = Path(__file__).resolve().parents[1]
# A first start with the embedded MongoDB initiates its replica set: allow for a slow machine.
START_SECONDS = 60.0


class AppProcess:
    """One chatapp process; ``start()`` again after it ended reuses the port and data_dir.

    Without ``mongo_uri`` the process starts (and must stop) its own embedded MongoDB under
    ``data_dir``. The output of every run goes to ``<data_dir>.log``.
    """

    def __init__(self, data_dir: Path, mongo_uri: str | None = None, **options: Any) -> None:
        self.data_dir = Path(data_dir)
        self.mongo_uri = mongo_uri
        self.port = free_port()
        self.options = {"rate_limit": 0, **options}
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = START_SECONDS) -> AppProcess:
        """Start the process and return once ``/healthz`` answers 200."""
        assert self.proc is None, "already running"
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
                raise RuntimeError(f"chatapp exited with {code} at start:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2) as response:
                    if response.status == 200:
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

    def kill(self) -> None:
        """``kill -9``: a crash. Nothing runs in the process after this."""
        assert self.proc is not None, "not running"
        self.proc.kill()
        self.proc.wait()
        self.proc = None

    def terminate(self) -> None:
        """Send SIGTERM (a clean shutdown); ``wait()`` for the exit status."""
        assert self.proc is not None, "not running"
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        """The exit status; raises ``subprocess.TimeoutExpired`` if still running after
        ``timeout`` s (the process is left running: ``stop()`` it)."""
        assert self.proc is not None, "not running"
        code = self.proc.wait(timeout)
        self.proc = None
        return code

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after 15 s; the exit status (None if it was not running)."""
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)  # the stacks, into the log, before it goes
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
            return proc.wait()

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])
