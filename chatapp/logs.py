"""The app's log: ``--log_format=json`` (one JSON object per line), and MongoDB outages said
once, in a line, instead of a topology dump every few seconds.

Where the dumps came from: a pymongo error's text ends with the driver's whole topology
description ("..., Timeout: 4s, Topology Description: <TopologyDescription id: ...,
servers: [<ServerDescription ... error=...>]>", a kilobyte or more), and the sweep (every 5 s),
the registry's heartbeat and every failed room load log the error they got. pymongo's own
loggers (``pymongo.*``) log at DEBUG only, so they stay quiet at the default level.

So, installed by ``configure``:

- ``Outages``, a pymongo topology listener, logs "MongoDB unreachable: <one reason>" when the
  last writable server goes (and "reachable again after N s" when one is back);
- ``DriverErrors``, a filter on the log's handlers, drops every record that carries a pymongo
  error (as an argument, or as its exception) while that outage lasts, counting them for the
  "reachable again" line, and outside an outage shortens the error to its first sentence.

The trap: both run in the driver's monitor threads as well as on the event loop, so the
outage state is set and read under a lock, and the listener never blocks.
"""

from __future__ import annotations

import datetime
import json
import logging
import threading
import time
from typing import Any

from pymongo import monitoring
from pymongo.errors import PyMongoError

FORMATS = ("text", "json")
# A reason longer than this is cut: one line in a log viewer, whatever the driver says.
MAX_REASON_CHARS = 300

log = logging.getLogger("chatapp.store")


def short_reason(exc: BaseException | str) -> str:
    """The first sentence of a driver error, without pymongo's topology description and
    timeout bookkeeping."""
    text = str(exc)
    for cut in (", Timeout:", " Topology Description:", " (configured timeouts:"):
        text = text.split(cut, 1)[0]
    text = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return text if len(text) <= MAX_REASON_CHARS else text[:MAX_REASON_CHARS] + "..."


class JSONFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC, ISO 8601), level, logger, message, pid, and
    exc_info (the formatted traceback) when there is one. Newlines in a message stay inside
    its string, so a line is always one record."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        entry: dict[str, Any] = {
            "ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class Outages(monitoring.TopologyListener):
    """Says once when a MongoDB client loses its last writable server, and once when it is
    back. Followed per client (topology): the embedded mongod's own short-lived clients
    must not end or begin the app's outage. A client being closed (its servers all turn
    Unknown, with no error) is not an outage."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Per topology: True (writable), False (an outage since the time given); absent:
        # not known yet (connecting at start, or closed).
        self._state: dict[Any, tuple[bool, float]] = {}
        self.held = 0  # driver error records dropped during the current outage(s)

    def hold(self) -> bool:
        """Count one driver error record as held back, if an outage is on; whether it was."""
        with self._lock:
            if any(not writable for writable, _ in self._state.values()):
                self.held += 1
                return True
            return False

    def opened(self, event: monitoring.TopologyOpenedEvent) -> None:
        pass

    def closed(self, event: monitoring.TopologyClosedEvent) -> None:
        with self._lock:
            self._state.pop(event.topology_id, None)

    def description_changed(self, event: monitoring.TopologyDescriptionChangedEvent) -> None:
        description = event.new_description
        writable = description.has_writable_server()
        if not writable and not _is_lost(description):
            return  # connecting, or closing: nothing is known to be wrong
        now = time.monotonic()
        with self._lock:
            was = self._state.get(event.topology_id)
            if was is None and not writable:
                return  # never reached yet: a start that fails says why itself
            if was is not None and was[0] == writable:
                return
            self._state[event.topology_id] = (writable, now)
            held = self.held
            if not writable:
                self.held = 0
        if not writable:
            log.warning("MongoDB unreachable: %s; sends answer 503 until it is back",
                        _reason(description))
        elif was is not None:
            log.warning("MongoDB reachable again after %.1f s (%d error log line(s) held back)",
                        now - was[1], held)


def _is_lost(description: Any) -> bool:
    """No writable server, and a reason: a server's error, or servers known but none primary
    (an election, a lost majority)."""
    servers = description.server_descriptions().values()
    return any(s.error is not None or s.server_type_name != "Unknown" for s in servers)


def _reason(description: Any) -> str:
    for server in description.server_descriptions().values():
        if server.error is not None:
            host, port = server.address
            reason = short_reason(server.error)
            return reason if reason.startswith(f"{host}:{port}") else f"{host}:{port}: {reason}"
    return "no primary (an election, or a majority of the replica set is down)"


OUTAGES = Outages()


class DriverErrors(logging.Filter):
    """Drops records carrying a pymongo error during an outage; shortens them otherwise."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, PyMongoError) and not any(
                isinstance(a, PyMongoError) for a in args):
            return True
        if OUTAGES.hold():
            return False
        record.args = tuple(short_reason(a) if isinstance(a, PyMongoError) else a for a in args)
        if isinstance(exc, PyMongoError):
            record.msg = f"{record.msg} ({short_reason(exc)})"
            record.exc_info, record.exc_text = None, None
        return True


def configure(fmt: str) -> None:
    """Apply ``--log_format`` to the handlers ``tornado.options`` set up, filter driver
    errors on them, and follow the driver's topology (before any MongoDB client exists)."""
    if fmt not in FORMATS:
        raise ValueError(f"--log_format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    root = logging.getLogger()
    for handler in root.handlers:
        if fmt == "json":
            handler.setFormatter(JSONFormatter())
        handler.addFilter(DRIVER_ERRORS)
    monitoring.register(OUTAGES)


DRIVER_ERRORS = DriverErrors()
