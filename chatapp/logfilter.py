"""Log lines rate-limited: a flood must not become a flood of the log too.

At the open-file limit, every accept failed with a traceback, and the log grew by 5 MB/s. The
``RepeatFilter`` lets through ``burst`` records of one kind (logger, level, message
template, and a leading number argument such as the access log's status) per ``period``
seconds; the first one let through after that says how many were
dropped meanwhile. Installed on the root logger's handlers (``install``), it covers every
logger that propagates, Tornado's and asyncio's included.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

# Five lines of one kind per 10 s show that something repeats, and what; more says nothing
# new and costs disk and I/O at the rate the attacker chooses.
BURST, PERIOD_SECONDS = 5, 10.0
# Kinds of message remembered at once; a log with more distinct messages than this in one
# period forgets the oldest windows (it is not one message repeating).
MAX_KINDS = 1000


@dataclass
class _Window:
    start: float
    passed: int = 0
    dropped: int = 0


class RepeatFilter(logging.Filter):
    def __init__(self, burst: int = BURST, period: float = PERIOD_SECONDS) -> None:
        super().__init__()
        self.burst, self.period = burst, period
        self._windows: dict[tuple[str, int, str], _Window] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        template = str(record.msg)[:200]
        args = record.args
        if isinstance(args, tuple) and args and isinstance(args[0], int):
            # The access log's "%d %s %.2fms": a 404 and a 503 are not one kind of line.
            template = f"{template} {args[0]}"
        key = (record.name, record.levelno, template)
        now = time.monotonic()
        window = self._windows.get(key)
        if window is None or now - window.start >= self.period:
            if len(self._windows) >= MAX_KINDS:
                self._forget_before(now - self.period)
            self._windows[key] = _Window(now, 1)
            if window is not None and window.dropped:
                record.msg = (f"{record.getMessage()} [{window.dropped} more like this were "
                              f"dropped in {self.period:g} s]")
                record.args = ()
            return True
        if window.passed < self.burst:
            window.passed += 1
            return True
        window.dropped += 1
        return False

    def _forget_before(self, cutoff: float) -> None:
        for key, window in list(self._windows.items()):
            if window.start < cutoff:
                del self._windows[key]
        while len(self._windows) >= MAX_KINDS:
            del self._windows[next(iter(self._windows))]


def install(logger: logging.Logger | None = None) -> RepeatFilter:
    """Add one ``RepeatFilter`` to every handler of ``logger`` (the root logger)."""
    repeat = RepeatFilter()
    for handler in (logger or logging.getLogger()).handlers:
        handler.addFilter(repeat)
    return repeat
