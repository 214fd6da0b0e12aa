"""Command-line and config-file options (``tornado.options``), as listed in docs/API.md."""

from __future__ import annotations

from tornado.options import OptionParser, options

from chatapp.web.address import parse_networks, split_list

define = options.define

define("port", default=8888, type=int, help="TCP port to listen on")
define("address", default="127.0.0.1", help="interface to listen on")
define("config", default=None, type=str,
       help="a tornado.options config file, e.g. config/chatapp.conf")
define("mongo_uri", default="",
       help="MongoDB to use (a replica set); empty starts the embedded MongoDB under --data_dir")
define("data_dir", default="./data",
       help="where the embedded MongoDB and the generated cookie secret live")
define("history_size", default=100, type=int,
       help="events a newcomer is shown, and events kept in memory per room")
define("poll_timeout", default=25.0, type=float,
       help="seconds a long-poll waits before answering with no events")
define("rate_limit", default=10.0, type=float,
       help="messages per second one session may send (bursts of twice that); 0 turns it off")
define("allowed_origins", default="",
       help="extra origins, comma-separated, allowed to open the WebSocket")
define("grace_period", default=60.0, type=float,
       help="seconds a session keeps its nickname and presence after its last connection")
define("unused_session_ttl", default=120.0, type=float,
       help="seconds a session that never opened a connection lives")
define("max_connections_per_session", default=20, type=int,
       help="open WebSockets and long-polls one session may hold (tabs x rooms); 0: no cap")
define("max_connections_per_ip", default=1000, type=int,
       help="open WebSockets and long-polls one client address may hold (a whole office "
            "behind one NAT counts once); 0: no cap")
define("new_sessions_per_ip", default=30, type=int,
       help="sessions (nicknames) one client address may create per minute, all at once or "
            "spread out; 0: no limit")
define("processes", default=1, type=int,
       help="server processes sharing the port; 0 means one per core. More than one implies "
            "--cluster")
define("cluster", default=False, type=bool,
       help="deliver through MongoDB change streams, so that several processes or machines "
            "on one replica set are one chat")
define("admins", default="",
       help="registered nicknames, comma-separated, that may moderate every room (register "
            "the nickname first: an unregistered one is anyone's to register)")
define("ws_compression", default=True, type=bool,
       help="agree to permessage-deflate when a WebSocket client offers it (RFC 7692)")
define("mongo_timeout", default=4.0, type=float,
       help="seconds a MongoDB operation may take before a send fails with store_unavailable")

# -- operating it: metrics and logs (see README, "Operating it") --
define("metrics_port", default=0, type=int,
       help="port of the Prometheus endpoint /metrics, apart from the public port; 0: off")
define("metrics_address", default="127.0.0.1",
       help="interface the metrics endpoint listens on (loopback: scrape it from this machine "
            "or through a tunnel)")
define("log_format", default="text",
       help="text (for people) or json (one JSON object per line: ts, level, logger, message, "
            "exc_info)")

# -- the edge: who the client is, which host names, how many connections (issue 13) ---------
define("trusted_proxies", default="",
       help="addresses or networks, comma-separated, of reverse proxies whose X-Real-IP, "
            "X-Forwarded-For and X-Forwarded-Proto are believed; from anyone else they are "
            "ignored (default: none)")
define("hosts", default="",
       help="host names, comma-separated, the Host header may carry (against DNS "
            "rebinding); any other is refused with 400 bad_host. Empty: any")
define("max_connections", default=0, type=int,
       help="open connections (of every kind) this process accepts; past it a new one is "
            "answered 503 and closed. 0: the open-file limit less a reserve")


def parse(args: list[str] | None = None, parser: OptionParser = options) -> OptionParser:
    """Parse the command line, then the ``--config`` file, then the command line again.

    The second pass lets command-line flags override what the file sets, which is what people
    expect of ``--config=prod.conf --port=9000``.
    """
    parser.parse_command_line(args)
    if parser.config:
        parser.parse_config_file(parser.config, final=False)
        parser.parse_command_line(args)
    parse_networks(split_list(parser.trusted_proxies))  # a bad address: ValueError, at start
    if parser.max_connections < 0:
        raise ValueError("--max_connections must be 0 (automatic) or more")
    return parser
