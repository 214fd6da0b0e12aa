"""``python -m chatapp``: options, the embedded MongoDB if needed, the server, clean shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from typing import Any

import tornado.options
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from chatapp import options as chat_options
from chatapp.app import load_cookie_secret, make_app
from chatapp.chat import Chat
from chatapp.reindex import SearchUpgrade
from chatapp.store import EventStore, StoreError, connect
from chatapp.supervisor import run_workers

log = logging.getLogger("chatapp")

# No valid request comes near this (messages are refused past 64 KiB with a clear 413 by the
# handlers); the server-wide cap just stops anyone streaming megabytes at us.
MAX_REQUEST_BYTES = 1024 * 1024
# On SIGTERM, how long in-flight sends may take to be stored before the process exits anyway.
SHUTDOWN_SECONDS = 5.0
# Connections the kernel queues before we accept them. Tornado's default, 128, overflows when
# thousands of clients reconnect at once (after a restart); the kernel caps it at somaxconn.
LISTEN_BACKLOG = 4096


def main(argv: list[str] | None = None) -> int:
    try:
        opts = chat_options.parse(argv)
    except (tornado.options.Error, ValueError, OSError) as exc:
        print(f"chatapp: {exc} (see --help)", file=sys.stderr)
        return 2
    data_dir = os.path.abspath(opts.data_dir)
    processes = opts.processes if opts.processes > 0 else (os.cpu_count() or 1)
    embedded = None
    uri = opts.mongo_uri
    if not uri:
        from chatapp.mongod import EmbeddedMongo, MongodNotFound

        try:
            embedded = EmbeddedMongo(data_dir)
            uri = embedded.start()
        except (MongodNotFound, RuntimeError) as exc:
            print(f"chatapp: cannot start the embedded MongoDB: {exc}", file=sys.stderr)
            return 2
        log.info("started the embedded MongoDB at %s (data in %s)", uri, data_dir)
    try:
        cookie_secret = load_cookie_secret(data_dir)  # read once, before any fork
        if processes == 1:
            sockets = listen(opts.port, opts.address)
        else:
            # Each worker binds its own SO_REUSEPORT socket, so the kernel spreads new
            # connections evenly between them. With one shared socket, the first worker awake
            # accepts a whole burst (Tornado accepts all that are pending). The port is
            # checked here first, so a taken port is a clear error at start, not a worker
            # failing again every second.
            for probe in listen(opts.port, opts.address, reuse_port=True):
                probe.close()
        log.info("chatapp listening on http://%s:%d/ (%d process%s%s)", opts.address, opts.port,
                 processes, "" if processes == 1 else "es",
                 ", cluster mode" if processes > 1 or opts.cluster else "")
        if processes == 1:
            return asyncio.run(serve(opts, uri, sockets, cookie_secret, cluster=opts.cluster))
        return run_workers(processes, lambda index: asyncio.run(serve(
            opts, uri, listen(opts.port, opts.address, reuse_port=True), cookie_secret,
            cluster=True)))
    except OSError as exc:
        print(f"chatapp: cannot listen on {opts.address}:{opts.port}: {exc}", file=sys.stderr)
        return 2
    finally:
        if embedded is not None:
            log.info("stopping the embedded MongoDB")
            embedded.stop()


async def serve(
    opts: Any, uri: str, sockets: list[socket.socket], cookie_secret: str, cluster: bool
) -> int:
    """One server process: until SIGTERM or SIGINT, then a clean shutdown."""
    store = EventStore(connect(uri, opts.mongo_timeout))
    try:
        await store.create_indexes()
    except StoreError as exc:
        log.error("MongoDB at %s is not usable: %s", _redact(uri), exc)
        return 2
    log.info("using MongoDB at %s", _redact(uri))
    chat = Chat(
        store,
        history_size=opts.history_size,
        rate_limit=opts.rate_limit,
        grace_period=opts.grace_period,
        unused_session_ttl=opts.unused_session_ttl,
        store_timeout=opts.mongo_timeout,
        max_connections_per_session=opts.max_connections_per_session,
        max_connections_per_ip=opts.max_connections_per_ip,
        new_sessions_per_ip=opts.new_sessions_per_ip,
        cluster=cluster,
    )
    await chat.start()
    upgrade = SearchUpgrade(store)  # indexes history stored before search, in the background
    upgrade.start()
    app = make_app(
        chat,
        cookie_secret=cookie_secret,
        poll_timeout=opts.poll_timeout,
        allowed_origins=tuple(o.strip() for o in opts.allowed_origins.split(",") if o.strip()),
    )
    server = HTTPServer(app, max_body_size=MAX_REQUEST_BYTES, xheaders=True)
    server.add_sockets(sockets)

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()

    log.info("shutting down (pid %d)", os.getpid())
    server.stop()  # no new connections
    await chat.stop(SHUTDOWN_SECONDS)  # store in-flight sends, close sockets with 1001
    await server.close_all_connections()
    await chat.flush(SHUTDOWN_SECONDS)  # sends that came in while connections were closing
    await upgrade.stop()  # resumes from its marker on the next start
    store.client.close()
    return 0


def listen(port: int, address: str, reuse_port: bool = False) -> list[socket.socket]:
    return bind_sockets(port, address, backlog=LISTEN_BACKLOG, reuse_port=reuse_port)


def _redact(uri: str) -> str:
    """The URI without a password, for logs."""
    if "@" not in uri:
        return uri
    scheme, _, rest = uri.partition("://")
    return f"{scheme}://***@{rest.split('@', 1)[1]}"


if __name__ == "__main__":
    sys.exit(main())
