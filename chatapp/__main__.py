"""``python -m chatapp``: options, the embedded MongoDB if needed, the server, clean shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from typing import Any

import tornado.options
from tornado.netutil import bind_sockets

from chatapp import options as chat_options
from chatapp.logfilter import install as rate_limit_log_lines
from chatapp.supervisor import run_workers
from chatapp.web.address import split_list
from chatapp.web.server import make_server

# Not imported here: chatapp.app, .chat, .registry, .store, .logs and .metrics, which import
# prometheus_client, whose multiprocess mode (--processes) must be chosen before that import
# (see use_multiprocess_metrics). They are imported once it is.

log = logging.getLogger("chatapp")

# prometheus_client's switch to its multiprocess mode (metrics.MULTIPROC_ENV, not imported).
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# On SIGTERM, how long in-flight sends may take to be stored before the process exits anyway.
SHUTDOWN_SECONDS = 5.0
# Connections the kernel queues before we accept them. Tornado's default, 128, overflows when
# thousands of clients reconnect at once (after a restart); the kernel caps it at somaxconn.
LISTEN_BACKLOG = 4096
# The exit status when the embedded MongoDB kept dying and the watchdog gave up on it: a
# service manager restarts the app (and so mongod) on it; 2 and 3 mean "do not retry as is".
EXIT_MONGOD_LOST = 1
# After a crash, the old mongod's clean shutdown (mongod.STOP_TIMEOUT at most) ends within
# this; a data dir locked longer is another chatapp's on the same --data_dir.
DBPATH_WAIT_SECONDS = 20.0
DBPATH_RETRY_SECONDS = 0.5
# Set by a worker that refused to start (chatapp.registry.EXIT_REFUSED, checked there).
EXIT_REFUSED = 3


def main(argv: list[str] | None = None) -> int:
    try:
        opts = chat_options.parse(argv)
    except (tornado.options.Error, ValueError, OSError) as exc:
        print(f"chatapp: {exc} (see --help)", file=sys.stderr)
        return 2
    processes = opts.processes if opts.processes > 0 else (os.cpu_count() or 1)
    metrics_dir = use_multiprocess_metrics() if processes > 1 and opts.metrics_port else None
    from chatapp import logs

    try:
        logs.configure(opts.log_format)
    except ValueError as exc:
        print(f"chatapp: {exc} (see --help)", file=sys.stderr)
        return 2
    rate_limit_log_lines()  # on the handlers logs.configure set up: a flood is not a log flood
    if opts.metrics_port:
        from chatapp import metrics

        metrics.watch_store()
    try:
        return run(opts, processes)
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def use_multiprocess_metrics() -> str:
    """--processes with metrics: every process writes its metrics to files in a temporary
    directory of its own run (prometheus_client's multiprocess mode, chosen by this variable
    before its first import), removed at exit. Its path, for that."""
    assert "prometheus_client" not in sys.modules, "imported before its mode was chosen"
    path = tempfile.mkdtemp(prefix="chatapp-metrics-")
    os.environ[MULTIPROC_ENV] = path
    return path


def run(opts: Any, processes: int) -> int:
    """The embedded MongoDB (if no --mongo_uri) with its watchdog, and the server process(es);
    the exit status."""
    from chatapp.app import load_cookie_secret

    data_dir = os.path.abspath(opts.data_dir)
    embedded = None
    uri = opts.mongo_uri
    watchdog = None
    lost: list[str] = []  # why the watchdog gave up on the embedded MongoDB, if it did
    if not uri:
        from chatapp.mongod import EmbeddedMongo, MongodNotFound
        from chatapp.watchdog import Watchdog

        try:
            embedded = EmbeddedMongo(data_dir, die_with_parent=True)
            uri = start_embedded(embedded)
        except (MongodNotFound, RuntimeError) as exc:
            log.error("cannot start the embedded MongoDB: %s", exc)
            return 2
        log.info("started the embedded MongoDB at %s (data in %s)", uri, data_dir)

        def give_up(reason: str) -> None:
            lost.append(reason)
            os.kill(os.getpid(), signal.SIGTERM)  # a clean shutdown, then exit non-zero

        watchdog = Watchdog(embedded, give_up)
        watchdog.start()
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
        if opts.metrics_port:
            # Checked here too; with --processes every worker binds it (SO_REUSEPORT) and
            # answers for all of them.
            for probe in listen(opts.metrics_port, opts.metrics_address, reuse_port=True):
                probe.close()
            log.info("metrics on http://%s:%d/metrics", opts.metrics_address, opts.metrics_port)
        log.info("chatapp listening on http://%s:%d/ (%d process%s%s)", opts.address, opts.port,
                 processes, "" if processes == 1 else "es",
                 ", cluster mode" if processes > 1 or opts.cluster else "")
        if processes == 1:
            code = asyncio.run(serve(opts, uri, sockets, cookie_secret, cluster=opts.cluster))
        else:
            code = run_workers(processes, lambda index: asyncio.run(serve(
                opts, uri, listen(opts.port, opts.address, reuse_port=True), cookie_secret,
                cluster=True)), fatal_code=EXIT_REFUSED, on_exit=_worker_exited)
        if lost:
            log.error("exiting: %s", lost[0])
            return EXIT_MONGOD_LOST
        return code
    except OSError as exc:
        log.error("cannot listen on %s:%d (or the metrics port %d): %s", opts.address,
                  opts.port, opts.metrics_port, exc)
        return 2
    finally:
        if watchdog is not None:
            watchdog.stop()
        if embedded is not None:
            log.info("stopping the embedded MongoDB")
            embedded.stop()


async def serve(
    opts: Any, uri: str, sockets: list[socket.socket], cookie_secret: str, cluster: bool
) -> int:
    """One server process: until SIGTERM or SIGINT, then a clean shutdown."""
    from chatapp.app import make_app
    from chatapp.chat import Chat
    from chatapp.registry import CLUSTER, LOCAL, ServerRegistry, SplitRefused
    from chatapp.reindex import SearchUpgrade
    from chatapp.store import EventStore, StoreError, connect

    store = EventStore(connect(uri, opts.mongo_timeout))
    try:
        await store.create_indexes()
    except StoreError as exc:
        log.error("MongoDB at %s is not usable: %s", _redact(uri), exc)
        return 2
    log.info("using MongoDB at %s", _redact(uri))
    # Before anything else touches the database: a server that would split a chat stops here.
    registry = ServerRegistry(store, CLUSTER if cluster else LOCAL)
    try:
        await registry.register()
    except SplitRefused as exc:
        log.error("%s", exc)
        store.client.close()
        return EXIT_REFUSED
    except StoreError as exc:
        log.error("MongoDB at %s is not usable: %s", _redact(uri), exc)
        store.client.close()
        return 2
    registry.start()
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
        allowed_origins=split_list(opts.allowed_origins),
        trusted_proxies=split_list(opts.trusted_proxies),
        hosts=split_list(opts.hosts),
        admins=split_list(opts.admins),
        ws_compression=opts.ws_compression,
    )
    # Proxy headers believed from --trusted_proxies only (web/address.py), a cap on open
    # connections, idle and body timeouts (web/server.py).
    server = make_server(app, max_connections=opts.max_connections)
    server.add_sockets(sockets)
    metrics_server = None
    if opts.metrics_port:
        from chatapp import metrics

        metrics_server = metrics.serve_metrics(
            listen(opts.metrics_port, opts.metrics_address, reuse_port=True))

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()

    log.info("shutting down (pid %d)", os.getpid())
    server.stop()  # no new connections
    if metrics_server is not None:
        metrics_server.stop()
    await chat.stop(SHUTDOWN_SECONDS)  # store in-flight sends, close sockets with 1001
    await server.close_all_connections()
    await chat.flush(SHUTDOWN_SECONDS)  # sends that came in while connections were closing
    await registry.stop()  # a server started next on this database is not refused
    await upgrade.stop()  # resumes from its marker on the next start
    store.client.close()
    return 0


def start_embedded(embedded: Any) -> str:
    """Start the embedded MongoDB (an ``EmbeddedMongo``); its URI.

    Right after this app was killed, its mongod may still be shutting down (it is sent
    SIGTERM when the app dies) and hold the data dir's lock: wait for it, rather than fail a
    restart that would work a second later.
    """
    deadline = time.monotonic() + DBPATH_WAIT_SECONDS
    while True:
        try:
            return str(embedded.start())
        except RuntimeError as exc:
            if "DBPathInUse" not in str(exc) or time.monotonic() > deadline:
                raise
        log.info("the data dir's MongoDB lock is still held; waiting for it")
        time.sleep(DBPATH_RETRY_SECONDS)


def _worker_exited(pid: int) -> None:
    if MULTIPROC_ENV in os.environ:
        from chatapp import metrics

        metrics.process_exited(pid)


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
