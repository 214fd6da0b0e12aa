"""Who the client is, how it came in, and which site it asked for: the edge of the server.

``X-Real-IP``, ``X-Forwarded-For`` and ``X-Forwarded-Proto`` are only headers: anyone can send
them. They are believed only from a peer listed in ``--trusted_proxies`` (a reverse proxy that
sets them itself, such as ``config/nginx.conf``); from anyone else the client is the socket's
peer and the scheme is the socket's. ``Edge.resolve`` applies this once per request, before
routing (``app.ChatApplication.find_handler``), so ``request.remote_ip`` and
``request.protocol`` mean the same for every handler: the per-address limits, the Secure
cookie flag and the WebSocket's Origin check all read them.

The trap: ``HTTPServer(xheaders=True)`` believes those headers from everyone, so the server
must run with ``xheaders=False`` and let this module decide.

``--hosts`` (empty: any) is the allow-list of host names the ``Host`` header may carry: a DNS
name an attacker points at this server's address (DNS rebinding) makes the victim's browser
send the attacker's name, which is refused, on every path, before anything else.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

from tornado.httputil import HTTPServerRequest, split_host_and_port

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# The ports a browser leaves out of an Origin: "https://chat.example.com" is port 443.
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def split_list(value: str) -> tuple[str, ...]:
    """``"a, b,,c"`` -> ``("a", "b", "c")``: the comma-separated options."""
    return tuple(part.strip() for part in value.split(",") if part.strip())


def parse_networks(values: Iterable[str]) -> tuple[Network, ...]:
    """Addresses or networks (``127.0.0.1``, ``10.0.0.0/8``, ``::1``); ValueError, naming the
    bad one, otherwise."""
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value, strict=False))
        except ValueError:
            raise ValueError(f"--trusted_proxies: {value!r} is not an address or network") \
                from None
    return tuple(networks)


def _ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(value.strip())
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # "::ffff:127.0.0.1" is 127.0.0.1, as a dual-stack socket says
    return ip


class Edge:
    """The trusted proxies and the allowed host names, applied to each request."""

    def __init__(self, trusted_proxies: Iterable[str] = (), hosts: Iterable[str] = ()) -> None:
        self.trusted = parse_networks(trusted_proxies)
        self.hosts = frozenset(h.lower() for h in hosts)

    def trusts(self, address: str) -> bool:
        ip = _ip(address)
        return ip is not None and any(ip in net for net in self.trusted)

    def resolve(self, request: HTTPServerRequest) -> None:
        """Set ``request.remote_ip`` and ``request.protocol`` to the client's own, believing
        the proxy headers only when the socket's peer is a trusted proxy."""
        peer = request.remote_ip or ""
        if not self.trusted or not self.trusts(peer):
            return
        request.remote_ip = self._client_ip(request, peer)
        proto = (request.headers.get("X-Forwarded-Proto")
                 or request.headers.get("X-Scheme", "")).split(",")[-1].strip().lower()
        if proto in ("http", "https"):
            request.protocol = proto

    def _client_ip(self, request: HTTPServerRequest, peer: str) -> str:
        real = _ip(request.headers.get("X-Real-IP", ""))
        if real is not None:
            return str(real)
        # Each proxy appends the address it got the request from: the rightmost one that is
        # not a trusted proxy is the client; anything left of it the client wrote itself.
        hops = [ip for ip in map(_ip, request.headers.get("X-Forwarded-For", "").split(","))
                if ip is not None]
        for ip in reversed(hops):
            if not any(ip in net for net in self.trusted):
                return str(ip)
        return str(hops[0]) if hops else peer

    def host_allowed(self, request: HTTPServerRequest) -> bool:
        if not self.hosts:
            return True
        name = split_host_and_port(request.host.lower())[0]
        return name in self.hosts


def normal_origin(origin: str) -> str | None:
    """``scheme://host[:port]`` as compared: lower case, the scheme's default port left out;
    None for what is not an http(s) origin (``null``, ``file://``, garbage)."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), (parts.hostname or "")
    if scheme not in ("http", "https") or not host or parts.path not in ("", "/"):
        return None
    if parts.username is not None or parts.query or parts.fragment:
        return None
    if ":" in host:
        host = f"[{host}]"  # IPv6, as it is written in a URL
    if port is None or port == DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def own_origin(request: HTTPServerRequest) -> str | None:
    """The origin of this server's pages as this request reached it: its scheme (from a
    trusted proxy's X-Forwarded-Proto, see ``Edge.resolve``) and its Host header."""
    return normal_origin(f"{request.protocol}://{request.host}")
