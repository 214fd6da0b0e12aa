"""The HTTP server in front of the application: how many connections, and how long each may
sit idle or take to send its body.

``make_server`` builds it the same way for ``python -m chatapp`` and for the tests. It runs
with ``xheaders=False``: the proxy headers are the application's decision (``address.Edge``).

The trap it avoids: Tornado accepts connections until ``accept()`` fails with "Too many open
files", and then fails again on every turn of the loop, with a traceback each time (5 MB/s of
log). ``ChatHTTPServer`` stops short of the open-file limit: past ``max_connections`` open
connections (HTTP and WebSocket alike) a new one is answered ``503`` and closed at once; and
if the limit is met anyway (files taken by something else), ``GuardedListener`` refuses the
queued connections the same way instead of failing in a loop.
"""

from __future__ import annotations

import errno
import gc
import json
import logging
import os
import resource
import socket
import time
import weakref
from typing import Any

import tornado.web
from tornado.httpserver import HTTPServer
from tornado.iostream import IOStream

log = logging.getLogger(__name__)

# No valid request comes near this (messages are refused past 64 KiB with a clear 413 by the
# handlers); the server-wide cap just stops anyone streaming megabytes at us.
MAX_REQUEST_BYTES = 1024 * 1024
# How long a connection may wait before (and while) sending a request's headers. Tornado's
# default is an hour: a connection that sent nothing, or dribbled a header a minute, held a
# file that long. A browser sends its request at once and reuses an idle keep-alive
# connection within seconds; 30 s is far more than that needs.
IDLE_CONNECTION_SECONDS = 30.0
# How long a request's body may take to arrive (Tornado's default: an hour). A valid body is
# at most 64 KiB: 30 s allows 2 KiB/s, slower than any real link.
BODY_SECONDS = 30.0
# Open files kept for what is not a client: MongoDB's connection pools (up to 100 per
# replica-set member), change streams, the embedded mongod's pipes, log files, the listening
# sockets, epoll. 512 covers a three-member replica set with room to spare.
FD_RESERVE = 512
# The least --max_connections derives, whatever the open-file limit: a server under 64
# connections is not serving anyone.
MIN_CONNECTIONS = 64
# At the cap, connections closed since are counted at most this often (a pass over all of
# them); between passes a new connection is refused.
RECOUNT_SECONDS = 0.1

# The cyclic collector's full collections traverse every live object. At 3,000 idle WebSockets
# they took 200-400 ms each (the loop stood still: handshakes of a connect storm, a broadcast
# to everyone waited), came at every 25 % of heap growth while sockets opened, and found next to
# nothing: an open socket's objects are alive, and a closed one's are freed by reference counts
# (Tornado breaks its cycles). So what survives a full collection is frozen (``gc.freeze``: not
# traversed again), which took the pauses to 12-45 ms and the storm's server CPU down by a
# quarter. Every this many seconds it is let go instead, so that the next full collection sees
# everything once and a cycle among frozen objects that died since is still collected.
UNFREEZE_SECONDS = 600.0

_REFUSAL_BODY = json.dumps({
    "error": "too_many_connections",
    "message": "The server has as many connections open as it may; try again in a moment.",
}).encode()
_REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=UTF-8\r\n"
    b"Retry-After: 5\r\nConnection: close\r\nContent-Length: "
    + str(len(_REFUSAL_BODY)).encode() + b"\r\n\r\n" + _REFUSAL_BODY
)


class GuardedListener:
    """A listening socket whose ``accept()`` survives the open-file limit.

    At the limit, ``accept()`` fails with EMFILE and the connection stays queued: the socket
    stays readable, and the loop (Tornado's accept handler raises) fails again at once, with
    a traceback, forever. Here one file is kept spare: at EMFILE it is closed, the connection
    accepted with it, answered ``503`` and closed, and the spare taken again; then
    ``BlockingIOError``, which tells Tornado's handler to wait for the next connection. Every
    queued connection is refused that way, once each, and the log says so a few times
    (``chatapp.logfilter``). ``--max_connections`` keeps the server below the limit; this is for
    files taken by something else.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._spare: int | None = _spare_file()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)  # fileno, getsockname, ... as the socket's

    def accept(self) -> tuple[socket.socket, Any]:
        try:
            return self.sock.accept()
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE):
                raise
            log.warning("at the open-file limit (%s): refusing a connection", exc.strerror)
        if self._spare is not None:
            os.close(self._spare)
            self._spare = None
        try:
            conn, _ = self.sock.accept()
        except OSError:
            pass
        else:
            try:
                conn.send(_REFUSAL, socket.MSG_DONTWAIT)
            except OSError:
                pass
            conn.close()
        self._spare = _spare_file()
        raise BlockingIOError(errno.EAGAIN, "refused at the open-file limit")

    def close(self) -> None:
        if self._spare is not None:
            os.close(self._spare)
            self._spare = None
        self.sock.close()


def _spare_file() -> int | None:
    try:
        return os.open(os.devnull, os.O_RDONLY)
    except OSError:
        return None  # at the limit already: the next EMFILE tries again


def default_max_connections(soft_limit: int | None = None) -> int:
    """The open-file limit (``RLIMIT_NOFILE``, soft) less ``FD_RESERVE`` (less half of it,
    for a small limit), at least ``MIN_CONNECTIONS``."""
    if soft_limit is None:
        soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft_limit == resource.RLIM_INFINITY:
        soft_limit = 1 << 20
    return max(MIN_CONNECTIONS, soft_limit - min(FD_RESERVE, soft_limit // 2))


class ChatHTTPServer(HTTPServer):
    """``HTTPServer`` with a cap on open connections (``max_connections``; 0: derived)."""

    def initialize(self, *args: Any, max_connections: int = 0, **kwargs: Any) -> None:
        super().initialize(*args, **kwargs)
        self.max_connections = max_connections or default_max_connections()
        # Streams of the connections accepted: an upgraded WebSocket keeps its stream, so
        # this counts WebSockets too. Weak: a closed connection's stream goes when unused.
        self._open: weakref.WeakSet[IOStream] = weakref.WeakSet()
        self._recounted = 0.0
        self.refused = 0

    def add_sockets(self, sockets: Any) -> None:
        # GuardedListener stands in for a socket (it passes every call on but accept).
        guarded: list[Any] = [GuardedListener(sock) for sock in sockets]
        super().add_sockets(guarded)

    def open_connections(self) -> int:
        return sum(1 for stream in list(self._open) if not stream.closed())

    def handle_stream(self, stream: IOStream, address: tuple) -> None:
        if len(self._open) >= self.max_connections and not self._room_left():
            self.refused += 1
            # The log filter (chatapp.logfilter) keeps a flood of these to a few lines.
            log.warning("refused a connection: %d open, the cap (--max_connections)",
                        self.max_connections)
            try:
                stream.socket.send(_REFUSAL)  # a fresh socket takes this at once
            except OSError:
                pass
            stream.close()
            return
        self._open.add(stream)
        super().handle_stream(stream, address)

    def _room_left(self) -> bool:
        now = time.monotonic()
        if now - self._recounted < RECOUNT_SECONDS:
            return False
        self._recounted = now
        for stream in list(self._open):
            if stream.closed():
                self._open.discard(stream)
        return len(self._open) < self.max_connections


class FreezeSurvivors:
    """The garbage-collector policy above: ``install()`` once per process (again: no-op)."""

    installed = False
    unfreeze_at = 0.0

    @classmethod
    def install(cls) -> None:
        if not cls.installed:
            cls.installed = True
            cls.unfreeze_at = time.monotonic() + UNFREEZE_SECONDS
            gc.callbacks.append(cls.after_collection)

    @classmethod
    def after_collection(cls, phase: str, info: dict[str, int]) -> None:
        if phase != "stop" or info.get("generation") != 2:
            return
        now = time.monotonic()
        if now >= cls.unfreeze_at:
            cls.unfreeze_at = now + UNFREEZE_SECONDS
            gc.unfreeze()  # the next full collection traverses everything, once
        else:
            gc.freeze()


def make_server(
    app: tornado.web.Application,
    max_connections: int = 0,
    idle_connection_timeout: float = IDLE_CONNECTION_SECONDS,
    body_timeout: float = BODY_SECONDS,
) -> ChatHTTPServer:
    FreezeSurvivors.install()
    return ChatHTTPServer(
        app,
        xheaders=False,
        max_body_size=MAX_REQUEST_BYTES,
        idle_connection_timeout=idle_connection_timeout,
        body_timeout=body_timeout,
        max_connections=max_connections,
    )
