"""Prometheus metrics: every metric chatapp exports is defined here, with why it exists.

The sites call the one-line functions below (``connection_opened``, ``stored``, ...), never
``prometheus_client`` directly, so that what is measured, under which name and labels, is read
in one place. ``serve_metrics`` answers ``GET /metrics`` on its own port (``--metrics_port``,
on loopback by default): a scrape is not the public's business, and it must not share the
public port's limits.

Cost on hot paths: an ``inc``/``observe`` is a lock and an add (a few hundred ns; with
``--processes`` a write to a memory-mapped file). Nothing is paid per delivery: a publish
counts its deliveries once (events x waiters) per batch, and store latency comes from
pymongo's command events, one per round trip, not from wrapping each call.

``--processes``: ``prometheus_client``'s multiprocess mode. Each worker writes its values to
files in ``PROMETHEUS_MULTIPROC_DIR`` (a temporary directory the app creates, see
``chatapp.__main__``; it must be set before ``prometheus_client`` is imported, so the app
imports this module only after that), and a scrape of any worker sums every worker's files.
Gauges are ``livesum`` (``livemax`` for the lag): the supervisor calls ``process_exited`` for
a worker that died, which drops its gauges (its counters stay: they are totals).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, ParamSpec, TypeVar

import tornado.web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from pymongo import monitoring
from tornado.httpserver import HTTPServer
from tornado.log import access_log

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# From a loopback round trip (~1 ms) to past --mongo_timeout's 4 s default: a send or a store
# operation slower than that is a failure, counted in the last bucket.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Change streams' getMore waits on the server (up to store.MAX_AWAIT_MS) by design: as a
# latency it would drown every real one.
_NOT_LATENCY = frozenset({"getMore"})

CONNECTIONS = Gauge(
    "chatapp_connections", "Open client connections: WebSockets, and long-polls being answered "
    "(each counts for presence and against the connection limits).", ["transport"],
    multiprocess_mode="livesum")
PARKED_POLLS = Gauge(
    "chatapp_parked_polls", "Long-polls waiting for the next event: the ones a publish wakes, "
    "and that close at once when the process restarts.", multiprocess_mode="livesum")
ROOMS = Gauge(
    "chatapp_rooms_in_memory", "Rooms whose recent events are held in memory (a buffer each; "
    "idle ones are dropped after 10 minutes): the main use of memory besides connections.",
    multiprocess_mode="livesum")
EVENTS_STORED = Counter(
    "chatapp_events_stored", "Events this process stored in MongoDB, by kind (message, join, "
    "leave): the rate of real traffic, repeats of a client_id not included.", ["kind"])
DELIVERIES = Counter(
    "chatapp_deliveries", "Events handed to waiting connections (events x waiters per "
    "publish): the fan-out work, which grows with room size, unlike the stored rate.")
SEND_SECONDS = Histogram(
    "chatapp_send_seconds", "From a send entering the server to its answer, refusals "
    "included: what a sender waits for (validation, rate limit, the batch's transaction).",
    buckets=LATENCY_BUCKETS)
STORE_SECONDS = Histogram(
    "chatapp_store_seconds", "One MongoDB command's round trip, by command: where a slow send "
    "spends its time (a change stream's waiting getMore is left out).", ["command"],
    buckets=LATENCY_BUCKETS)
STORE_FAILURES = Counter(
    "chatapp_store_failures", "MongoDB commands that failed, by command: an outage, a timeout, "
    "a write conflict between writers of one room.", ["command"])
ERRORS = Counter(
    "chatapp_errors", "Refusals clients were given, by the contract's error code (rate_limited, "
    "store_unavailable, bad_text, ...): what users run into.", ["code"])
FEED_LAG = Gauge(
    "chatapp_feed_lag_seconds", "Cluster mode: how old the last event the change feed brought "
    "was on arrival (its send timestamp to now, store latency included): how late other "
    "processes' messages reach this one's clients.", multiprocess_mode="livemax")

# Label children looked up once: a labels() call per event costs a dict lookup and a lock.
_WEBSOCKETS = CONNECTIONS.labels("websocket")
_LONG_POLLS = CONNECTIONS.labels("longpoll")
_STORED: dict[str, Any] = {}  # kind -> EVENTS_STORED's child (the kinds are few and fixed)

P = ParamSpec("P")
R = TypeVar("R")


# -- the sites' one-line calls ---------------------------------------------------------------


def _transport(conn: object) -> Any:
    # By class name: the long-poll's waiter is the one connection that is not a WebSocket,
    # and the name survives chat.py's modules moving (importing it would be circular).
    return _LONG_POLLS if type(conn).__name__ == "PollWaiter" else _WEBSOCKETS


def connection_opened(conn: object) -> None:
    _transport(conn).inc()


def connection_closed(conn: object) -> None:
    _transport(conn).dec()


def rooms_in_memory(count: int) -> None:
    ROOMS.set(count)


def stored(events: Iterable[dict[str, Any]]) -> None:
    """A batch of events this process stored (the ones new to MongoDB)."""
    for kind, count in collections.Counter(e["type"] for e in events).items():
        child = _STORED.get(kind)
        if child is None:
            child = _STORED[kind] = EVENTS_STORED.labels(kind)
        child.inc(count)


def delivered(events: int, waiters: int) -> None:
    """One publish: ``events`` handed to each of ``waiters``."""
    if events and waiters:
        DELIVERIES.inc(events * waiters)


def refused(code: str) -> None:
    ERRORS.labels(code).inc()


def feed_brought(events: list[dict[str, Any]]) -> None:
    """The change feed delivered ``events`` (in commit order): the last one's age."""
    if events:
        FEED_LAG.set(max(0.0, time.time() - float(events[-1].get("ts", time.time()))))


def timed(histogram: Histogram) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Decorate a coroutine function: observe how long each call takes, raising included.
    (``Histogram.time()`` would time only the creation of the coroutine.)"""
    def decorate(func: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @functools.wraps(func)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            started = time.perf_counter()
            try:
                return await func(*args, **kwargs)
            finally:
                histogram.observe(time.perf_counter() - started)
        return wrapper
    return decorate


class _StoreLatency(monitoring.CommandListener):
    """pymongo's command events (in the driver's threads): latency and failures by command."""

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        pass

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        if event.command_name not in _NOT_LATENCY:
            STORE_SECONDS.labels(event.command_name).observe(event.duration_micros / 1e6)

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        STORE_FAILURES.labels(event.command_name).inc()
        if event.command_name not in _NOT_LATENCY:
            STORE_SECONDS.labels(event.command_name).observe(event.duration_micros / 1e6)


def watch_store() -> None:
    """Measure every MongoDB client created from now on (call before ``store.connect``)."""
    monitoring.register(_StoreLatency())


# -- the endpoint ---------------------------------------------------------------------------


def process_exited(pid: int) -> None:
    """A worker died: its live gauges no longer count (multiprocess mode only)."""
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(pid)


def scrape() -> bytes:
    """The text format of every metric: this process's, or with ``--processes`` all of them."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(REGISTRY)


class MetricsHandler(tornado.web.RequestHandler):
    async def get(self) -> None:
        # Reading every worker's files is file I/O: off the event loop.
        body = await asyncio.to_thread(scrape)
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.write(body)

    async def head(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)


def _log_scrape(handler: tornado.web.RequestHandler) -> None:
    """A scrape every 15 s is no news: DEBUG, unless it failed."""
    level = logging.DEBUG if handler.get_status() < 400 else logging.WARNING
    if access_log.isEnabledFor(level):
        access_log.log(level, "%d %s %s", handler.get_status(), handler.request.method,
                       handler.request.uri)


def serve_metrics(sockets: list[socket.socket]) -> HTTPServer:
    """``/metrics`` on ``sockets`` (``--metrics_port``); the server, to stop at shutdown."""
    app = tornado.web.Application([(r"/metrics", MetricsHandler)], log_function=_log_scrape)
    server = HTTPServer(app)
    server.add_sockets(sockets)
    return server
