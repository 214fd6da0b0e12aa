#!/usr/bin/env python
"""chatbench's load client: lean WebSocket and long-poll receivers on one asyncio loop.

``chatbench.py`` starts one of these per ``--procs`` (``python bench/loadclient.py``). It reads
one JSON command per line on stdin and answers each with one JSON line on stdout; it exits when
stdin closes, so it never outlives the benchmark.

The receive path is kept lean so that the client is not what limits the figures:

- WebSocket: an ``asyncio.Protocol`` with a minimal RFC 6455 client (handshake, then unmasked
  server frames parsed straight out of ``data_received``; with ``compression`` it offers
  permessage-deflate as a browser does, and inflates every compressed frame, in order, with one
  window per connection, before anything looks at it: RFC 7692). Most
  connections run on asyncio's own transport and only recognise message events with two byte
  searches, count them and check that their ids increase. Every ``sample_every``-th
  connection parses the JSON and measures two latencies from the send time the sender put in
  the text: to the message's arrival in the socket, from the kernel's receive timestamp
  (``SO_TIMESTAMPNS``, which asyncio's transports drop, so these read their socket with
  ``recvmsg`` through ``RecvmsgTransport``, the same parser behind it), and to its read by
  this process (``time.time()`` after the read).
- Long-poll: one keep-alive HTTP/1.1 connection per client over asyncio streams, looping
  ``GET .../updates?cursor=<last>`` with the XSRF token, as the page polls (so each counts as
  presence); the cursor is cut out of the end of the body, not parsed.

This module is also the small client library ``chatbench.py`` uses for its sender and its
setup requests (``WebSocketProtocol``, ``HTTPConnection``). Standard library only.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import resource
import signal
import socket
import struct
import sys
import time
import zlib
from typing import Any

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# Every event frame starts like this (``chatapp.buffer.Entry.frame``); a message event holds
# the second marker. Inside a text, quotes are escaped, so a text cannot fake either.
EVENT_PREFIX = b'{"type":"event"'
MESSAGE_MARK = b'"type":"message"'
ERROR_PREFIX = b'{"type":"error"'
ERROR_RE = re.compile(rb'\{"type":"error"[^}]*\}')
ID_MARK = b'"id":"'
CURSOR_MARK = b'"cursor":"'
# The id of each message event, as chatapp encodes events (id, room, type first). Used to read
# a whole run of frames at once; when it does not match as often as MESSAGE_MARK, the frames
# are read one by one instead, so a different layout costs speed, never correctness.
MESSAGE_ID_RE = re.compile(rb'"id":"([^"]*)","room":"[^"]*","type":"message"')
# permessage-deflate (RFC 7692): what a browser offers, and the 4 bytes a compressed message
# lost on the wire, appended again before inflating.
DEFLATE_OFFER = "permessage-deflate; client_max_window_bits"
SYNC_TAIL = b"\x00\x00\xff\xff"
# How long one connection may take to open (TCP connect + handshake or first request).
OPEN_TIMEOUT = 30.0
# Opens in flight at once in one process, unless the command says otherwise: the server
# listens with a backlog of 128, and a full accept queue turns into 1 s SYN retransmits.
DEFAULT_CONCURRENCY = 64
# Kernel receive timestamps (socket(7)): with SO_TIMESTAMPNS set, each recvmsg carries a
# (SOL_SOCKET, SCM_TIMESTAMPNS == SO_TIMESTAMPNS) control message holding a struct timespec,
# CLOCK_REALTIME, the same clock as the sender's time.time(). For TCP it is the time of the
# last segment the read returned. Python has no constant for it before 3.14; 35 is Linux's.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
TIMESPEC = struct.Struct("qq")
# recvmsg's ancillary buffer: room for the timestamp message (a smaller one gets nothing).
ANC_BUFSIZE = 256
# Bytes per read. Not asyncio's 256 KiB: glibc serves a buffer of 128 KiB or more with mmap,
# and the shrink and free after a short read cost an mremap and a munmap (~12 us per read).
READ_SIZE = 65536


def raise_nofile_limit() -> tuple[int, int]:
    """Raise this process's open-file soft limit to the hard limit; (soft, hard) after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft, hard


def cpu_seconds() -> float:
    """User + system CPU time of this process."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


# -- WebSocket ------------------------------------------------------------------------------


def encode_frame(payload: bytes, opcode: int = 1) -> bytes:
    """A masked client frame (clients must mask, RFC 6455 5.3)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    key = os.urandom(4)
    if n:
        mask = (key * (n // 4 + 1))[:n]
        payload = (int.from_bytes(payload, "big") ^ int.from_bytes(mask, "big")).to_bytes(n, "big")
    return head + key + payload


class WebSocketProtocol(asyncio.Protocol):
    """A minimal WebSocket client. Subclasses override ``on_text``.

    ``opened`` resolves after the 101 answer (or fails with the refusal). Server frames are
    unmasked; text frames (and fragmented ones, reassembled) go to ``on_text`` with the time
    the bytes were read (``time.time()``); pings are answered; a close frame is echoed and the
    socket closed. Over a ``RecvmsgTransport``, ``arrived`` is meanwhile the kernel's time for
    the bytes being parsed (None if the kernel gave none).
    """

    def __init__(self, host: str, port: int, path: str, cookie: str | None = None,
                 compression: bool = False) -> None:
        key = base64.b64encode(os.urandom(16))
        self.accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: {host}:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key.decode()}",
            "Sec-WebSocket-Version: 13",
        ]
        if cookie:
            lines.append(f"Cookie: {cookie}")
        if compression:
            lines.append(f"Sec-WebSocket-Extensions: {DEFLATE_OFFER}")
        # Set once the server agreed to permessage-deflate: the connection's one window.
        self.inflate: Any = None
        self._fragments_compressed = False
        self.request = ("\r\n".join(lines) + "\r\n\r\n").encode()
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future = asyncio.get_running_loop().create_future()
        self.closed = False
        self.close_code: int | None = None
        self._handshaking = True
        self._buf = b""
        self._fragments: list[bytes] | None = None
        self.arrived: float | None = None

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self._handshaking:
            data = self._handshake(data)
            if not data:
                return
        buf = self._buf + data if self._buf else data
        self._buf = b""
        self.feed(buf, time.time())

    def feed(self, buf: bytes, now: float) -> None:
        """Parse the frames in ``buf``; an incomplete last one is kept for the next read."""
        pos, end = 0, len(buf)
        while end - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if end - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2:pos + 4], "big")
                head = 4
            elif length == 127:
                if end - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2:pos + 10], "big")
                head = 10
            if b1 & 0x80:  # a masked server frame is a protocol error; unmask anyway
                head += 4
            stop = pos + head + length
            if stop > end:
                break
            payload = buf[pos + head:stop]
            if b1 & 0x80:
                key = buf[pos + head - 4:pos + head]
                mask = (key * (length // 4 + 1))[:length]
                payload = (int.from_bytes(payload, "big") ^ int.from_bytes(mask, "big")).to_bytes(
                    length, "big"
                )
            pos = stop
            opcode = b0 & 0x0F
            if opcode == 1 or opcode == 2:
                if b0 & 0x80:
                    self.on_text(self._inflated(payload) if b0 & 0x40 else payload, now)
                else:
                    self._fragments = [payload]
                    self._fragments_compressed = bool(b0 & 0x40)
            elif opcode == 0:
                if self._fragments is not None:
                    self._fragments.append(payload)
                    if b0 & 0x80:
                        whole, self._fragments = b"".join(self._fragments), None
                        if self._fragments_compressed:
                            whole = self._inflated(whole)
                        self.on_text(whole, now)
            elif opcode == 9:
                self._write(encode_frame(payload, 0xA))
            elif opcode == 8:
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self._write(encode_frame(payload[:2], 0x8))
                if self.transport is not None:
                    self.transport.close()
                self._buf = b""
                return
        self._buf = buf[pos:] if pos < end else b""

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"closed during the handshake: {exc}"))
        self.on_closed()

    # -- for subclasses and users

    def on_text(self, payload: bytes, now: float) -> None:
        pass

    def on_closed(self) -> None:
        pass

    def closed_report(self) -> str:
        return f"WebSocket closed by the server with code {self.close_code}"

    def send_text(self, text: str) -> None:
        self._write(encode_frame(text.encode(), 1))

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()

    # -- internals

    def _inflated(self, payload: bytes) -> bytes:
        if self.inflate is None:
            raise ConnectionError("a compressed frame, but no compression was agreed")
        return self.inflate.decompress(payload + SYNC_TAIL)

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _handshake(self, data: bytes) -> bytes:
        buf = self._buf + data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            self._buf = buf
            return b""
        head, rest = buf[:end], buf[end + 4:]
        self._buf = b""
        self._handshaking = False
        status = head[9:12]
        if status != b"101" or self.accept not in head:
            if not self.opened.done():
                line = head.split(b"\r\n", 1)[0]
                self.opened.set_exception(
                    ConnectionError(f"WebSocket refused: {line!r} {rest[:200]!r}")
                )
            if self.transport is not None:
                self.transport.close()
            return b""
        if b"permessage-deflate" in head.lower():
            self.inflate = zlib.decompressobj(-15)  # no server_max_window_bits was offered
        if not self.opened.done():
            self.opened.set_result(None)
        return rest


class RecvmsgTransport(asyncio.Transport):
    """A connected socket read with ``recvmsg``, for a WebSocketProtocol that wants to know
    when its bytes reached the socket, not only when it got round to reading them.

    asyncio's transports read with ``recv``, which drops the kernel's receive timestamp; this
    one reads with ``recvmsg`` from a reader callback on the loop's selector, puts the
    timestamp (None if there was none) in ``protocol.arrived`` and hands the bytes to
    ``protocol.data_received``, so the protocol's parsing is the same as over asyncio. Only
    what WebSocketProtocol uses is here: ``write`` (the handshake, pongs, a close echo; what
    does not go out at once waits for the socket to be writable), ``close``, ``is_closing``,
    ``get_extra_info``. As with asyncio, EOF or an error ends the connection: the socket is
    closed and ``connection_lost`` called (with the error, if any) on the next loop turn.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket,
                 protocol: WebSocketProtocol) -> None:
        super().__init__({"socket": sock, "sockname": sock.getsockname(),
                          "peername": sock.getpeername()})
        self._loop, self._sock, self._protocol = loop, sock, protocol
        self._fd = sock.fileno()
        self._out = bytearray()  # written but not sent yet
        self._closing = False
        self._lost = False  # connection_lost is scheduled or done
        protocol.connection_made(self)
        if not self._closing:
            loop.add_reader(self._fd, self._read_ready)

    def _read_ready(self) -> None:
        try:
            data, anc, _, _ = self._sock.recvmsg(READ_SIZE, ANC_BUFSIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._force_close(exc)
            return
        if not data:
            self.close()  # EOF: what asyncio does when eof_received returns None
            return
        arrived = None
        for level, kind, value in anc:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= 16:
                sec, ns = TIMESPEC.unpack_from(value)
                arrived = sec + ns * 1e-9
        protocol = self._protocol
        protocol.arrived = arrived
        try:
            protocol.data_received(data)
        except Exception as exc:  # noqa: BLE001 -- a parser bug: reported, as asyncio does
            self._loop.call_exception_handler({
                "message": "RecvmsgTransport: data_received failed",
                "exception": exc, "transport": self, "protocol": protocol,
            })  # fmt: skip
            self._force_close(exc)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing:
            return  # like asyncio after close(): dropped
        if not self._out:
            try:
                n = self._sock.send(data)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as exc:
                self._force_close(exc)
                return
            if n == len(data):
                return
            data = data[n:]
            self._loop.add_writer(self._fd, self._write_ready)
        self._out += data

    def _write_ready(self) -> None:
        try:
            n = self._sock.send(self._out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._force_close(exc)
            return
        del self._out[:n]
        if not self._out:
            self._loop.remove_writer(self._fd)
            if self._closing:
                self._force_close(None)

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Stop reading; the socket closes once what was written has gone out."""
        if self._closing:
            return
        self._closing = True
        self._loop.remove_reader(self._fd)
        if not self._out:
            self._force_close(None)

    def abort(self) -> None:
        self._force_close(None)

    def _force_close(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = self._closing = True
        self._out.clear()
        self._loop.remove_reader(self._fd)
        self._loop.remove_writer(self._fd)
        self._loop.call_soon(self._connection_lost, exc)

    def _connection_lost(self, exc: Exception | None) -> None:
        try:
            self._protocol.connection_lost(exc)
        finally:
            self._sock.close()


async def connect_recvmsg(factory: Any, host: str, port: int) -> WebSocketProtocol:
    """Connect ``factory()`` (a WebSocketProtocol) over a RecvmsgTransport whose socket asks
    the kernel for receive timestamps. Where it cannot, the reads carry none and
    ``protocol.arrived`` stays None."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setblocking(False)
        # As asyncio does for its TCP transports: small writes (the handshake) go out at once.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        except OSError:
            pass  # not Linux, or no such option: no timestamps
        await loop.sock_connect(sock, address)
        protocol = factory()
        RecvmsgTransport(loop, sock, protocol)
    except BaseException:
        sock.close()
        raise
    return protocol


async def open_websocket(
    factory: Any, host: str, port: int, timeout: float = OPEN_TIMEOUT,
    kernel_timestamps: bool = False,
) -> WebSocketProtocol:
    """Connect ``factory()`` (a WebSocketProtocol) and wait for the handshake; with
    ``kernel_timestamps``, over a RecvmsgTransport instead of asyncio's own transport."""
    loop = asyncio.get_running_loop()

    async def go() -> WebSocketProtocol:
        if kernel_timestamps:
            proto = await connect_recvmsg(factory, host, port)
        else:
            _, proto = await loop.create_connection(factory, host, port)
        try:
            await proto.opened
        except BaseException:
            proto.close()
            raise
        return proto

    return await asyncio.wait_for(go(), timeout)


# -- HTTP/1.1 keep-alive --------------------------------------------------------------------


class HTTPResponse:
    __slots__ = ("body", "head", "status")

    def __init__(self, status: int, head: bytes, body: bytes) -> None:
        self.status, self.head, self.body = status, head, body

    def header_values(self, name: str) -> list[str]:
        want = name.lower().encode() + b":"
        out = []
        for line in self.head.split(b"\r\n")[1:]:
            if line.lower().startswith(want):
                out.append(line[len(want):].strip().decode("latin-1"))
        return out

    def cookies(self) -> dict[str, str]:
        """``name=value`` of every Set-Cookie, exactly as sent (to be echoed back as is)."""
        out = {}
        for value in self.header_values("Set-Cookie"):
            pair = value.split(";", 1)[0]
            name, _, _ = pair.partition("=")
            out[name.strip()] = pair.strip()
        return out

    def json(self) -> Any:
        return json.loads(self.body)


class HTTPConnection:
    """One keep-alive HTTP/1.1 connection; requests go one at a time."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    def send(self, method: str, target: str, headers: dict[str, str] | None = None,
             body: bytes | None = None) -> None:
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        for name, value in (headers or {}).items():
            lines.append(f"{name}: {value}")
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        data = ("\r\n".join(lines) + "\r\n\r\n").encode()
        assert self.writer is not None
        self.writer.write(data + body if body else data)

    async def read_response(self) -> HTTPResponse:
        assert self.reader is not None
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        i = head.find(b"\r\nContent-Length:")
        if i < 0:
            i = head.lower().find(b"\r\ncontent-length:")
        if i >= 0:
            j = head.find(b"\r\n", i + 2)
            body = await self.reader.readexactly(int(head[i + 17:j]))
        elif b"chunked" in head.lower():
            body = await self._read_chunked()
        elif status in (204, 304) or 100 <= status < 200:
            body = b""
        else:
            body = await self.reader.read()  # until the server closes
        return HTTPResponse(status, head, body)

    async def request(self, method: str, target: str, headers: dict[str, str] | None = None,
                      body: bytes | None = None) -> HTTPResponse:
        if self.writer is None or self.writer.is_closing():
            await self.connect()
        self.send(method, target, headers, body)
        try:
            return await self.read_response()
        except (asyncio.IncompleteReadError, ConnectionError):
            if method != "GET":
                raise
        # The server closed an idle keep-alive connection: one retry on a fresh one.
        self.close()
        await self.connect()
        self.send(method, target, headers, body)
        return await self.read_response()

    async def _read_chunked(self) -> bytes:
        assert self.reader is not None
        parts = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await self.reader.readuntil(b"\r\n")
                return b"".join(parts)
            parts.append(await self.reader.readexactly(size))
            await self.reader.readexactly(2)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


async def page_headers(conn: HTTPConnection, cookie: str) -> dict[str, str]:
    """What the page sends with each request: its cookies and the XSRF token in
    ``X-XSRFToken`` (without the token a long-poll is a read, not presence: issue 13).
    ``GET /api/session`` sets the ``_xsrf`` cookie, as the page's HTML does."""
    r = await conn.request("GET", "/api/session", {"Cookie": cookie})
    xsrf = r.cookies().get("_xsrf")
    if r.status != 200 or not xsrf:
        raise ConnectionError(f"GET /api/session: HTTP {r.status} {r.body[:200]!r}")
    return {"Cookie": f"{cookie}; {xsrf}", "X-XSRFToken": xsrf.split("=", 1)[1]}


# -- receivers ------------------------------------------------------------------------------


class Tally:
    """The counts of one transport in this process, shared by its receivers."""

    def __init__(self) -> None:
        self.receivers: list[Any] = []
        self.target = 1 << 62  # messages each receiver should get; set by "finish"
        self.done = 0  # receivers that reached the target
        self.deliveries = 0  # message events received, all receivers
        self.out_of_order = 0  # a message whose id is not above the previous one
        self.dup_seq = 0  # a sampled receiver saw the same message twice (by its number)
        self.first_t = 0.0
        self.last_t = 0.0
        # Sampled receivers, per message: send -> read by this process (``time.time()`` once
        # the read returned), and send -> arrival in the socket (the kernel's timestamp; the
        # read time where the kernel gave none, counted in ``no_timestamp``). Long-polls
        # record the read latency only.
        self.latencies: list[float] = []
        self.arrival_latencies: list[float] = []
        self.no_timestamp = 0
        self.errors = 0
        self.first_error = ""
        self.requests = 0  # long-polls: requests sent since "start"

    def error(self, what: str) -> None:
        self.errors += 1
        if not self.first_error:
            self.first_error = what

    def recount(self) -> None:
        self.done = sum(1 for r in self.receivers if r.count >= self.target)

    def book(self, receiver: Any, n: int, now: float) -> None:
        """``receiver`` got ``n`` more messages at ``now``: the counts, the first and last
        delivery times, and whether it has just reached the target."""
        before = receiver.count
        receiver.count += n
        self.deliveries += n
        if not self.first_t:
            self.first_t = now
        self.last_t = now
        if before < self.target <= receiver.count:
            self.done += 1

    def report(self, last_id: str) -> dict[str, Any]:
        want = last_id.encode()
        lost = dup = wrong_last = closed = complete = 0
        for r in self.receivers:
            if r.count < self.target:
                lost += self.target - r.count
            else:
                complete += 1
                dup += r.count - self.target
            if r.last_id != want:
                wrong_last += 1
            if r.closed and not r.closing:
                closed += 1
        return {
            "conns": len(self.receivers),
            "complete": complete,
            "deliveries": self.deliveries,
            "lost": lost,
            "duplicated": dup,
            "dup_seq": self.dup_seq,
            "out_of_order": self.out_of_order,
            "wrong_last_id": wrong_last,
            "closed_by_server": closed,
            "errors": self.errors,
            "first_error": self.first_error,
            "requests": self.requests,
            "first_t": self.first_t,
            "last_t": self.last_t,
            "latencies": [round(x, 6) for x in self.latencies],
            "arrival_latencies": [round(x, 6) for x in self.arrival_latencies],
            "no_timestamp": self.no_timestamp,
        }


def parse_sent_text(text: str) -> tuple[int, float]:
    """The sender's message number and send time, from ``"<n> <time.time()> <padding>"``."""
    n, ts, _ = text.split(" ", 2)
    return int(n), float(ts)


class WSReceiver(WebSocketProtocol):
    """Counts message events and checks their ids increase. No JSON parsing.

    ``feed`` walks the frame headers of a read and hands the run of complete, final text
    frames to ``count_run``, which counts and checks them with a few C-level calls over the
    bytes (not per frame). Anything else (a ping, a close, a fragment, a 64-bit length) ends
    the run and goes through the generic parser.
    """

    def __init__(self, tally: Tally, host: str, port: int, path: str, cookie: str,
                 compression: bool = False) -> None:
        super().__init__(host, port, path, cookie, compression)
        self.tally = tally
        self.count = 0
        self.last_id = b""
        self.closing = False

    def feed(self, buf: bytes, now: float) -> None:
        if self.inflate is not None:
            self.feed_deflated(buf, now)
            return
        pos, end = 0, len(buf)
        while end - pos >= 2:
            if buf[pos] != 0x81:
                break  # not a final text frame
            n = buf[pos + 1]
            if n < 126:
                stop = pos + 2 + n
            elif n == 126 and end - pos >= 4:
                stop = pos + 4 + (buf[pos + 2] << 8 | buf[pos + 3])
            else:
                break  # masked, 64-bit length, or a header cut short
            if stop > end:
                break
            pos = stop
        if pos:
            self.count_run(buf, pos, now)
        if pos < end:
            super().feed(buf[pos:] if pos else buf, now)

    def feed_deflated(self, buf: bytes, now: float) -> None:
        """``feed`` once compression is agreed: the run of complete final text frames at the
        start of ``buf``, inflated in one call per stretch of compressed frames (each payload
        with its 4 bytes put back is the deflate stream continued: the connection's one
        window, in order), then counted as one run of texts."""
        texts: list[bytes] = []
        deflated: list[bytes] = []
        pos, end = 0, len(buf)
        while end - pos >= 2:
            b0, n = buf[pos], buf[pos + 1]
            if b0 != 0x81 and b0 != 0xC1:
                break  # not a final text frame
            if n < 126:
                head = 2
            elif n == 126 and end - pos >= 4:
                head, n = 4, buf[pos + 2] << 8 | buf[pos + 3]
            else:
                break  # masked, 64-bit length, or a header cut short
            stop = pos + head + n
            if stop > end:
                break
            if b0 == 0xC1:
                deflated += (buf[pos + head:stop], SYNC_TAIL)
            else:
                if deflated:
                    texts.append(self.inflate.decompress(b"".join(deflated)))
                    deflated = []
                texts.append(buf[pos + head:stop])
            pos = stop
        if deflated:
            texts.append(self.inflate.decompress(b"".join(deflated)))
        if texts:
            joined = b"".join(texts)
            self.count_run(joined, len(joined), now, joined=True)
        if pos < end:
            super().feed(buf[pos:] if pos else buf, now)

    def count_run(self, buf: bytes, stop: int, now: float, joined: bool = False) -> None:
        """Count the message events in ``buf[:stop]``, a run of complete text frames (or, if
        ``joined``, of their texts put end to end)."""
        n = buf.count(MESSAGE_MARK, 0, stop)
        if not n:
            for match in ERROR_RE.finditer(buf, 0, stop):
                self.tally.error(match.group(0)[:300].decode(errors="replace"))
            return
        ids = MESSAGE_ID_RE.findall(buf, 0, stop)
        if len(ids) != n:  # an unexpected layout: frame by frame
            if joined:  # JSON texts end to end: read one after another
                decoder, text, pos = json.JSONDecoder(), buf[:stop].decode(), 0
                while pos < len(text):
                    _, end = decoder.raw_decode(text, pos)
                    self.on_text(text[pos:end].encode(), now)
                    pos = end
            else:
                super().feed(buf[:stop], now)
            return
        t = self.tally
        if ids[0] <= self.last_id:
            t.out_of_order += 1
        if n > 1 and (ids != sorted(ids) or len(set(ids)) != n):
            t.out_of_order += 1
        self.last_id = ids[-1]
        t.book(self, n, now)

    def on_text(self, payload: bytes, now: float) -> None:
        if not payload.startswith(EVENT_PREFIX) or MESSAGE_MARK not in payload:
            if payload.startswith(ERROR_PREFIX):
                self.tally.error(payload[:300].decode(errors="replace"))
            return
        i = payload.find(ID_MARK) + 6
        self.counted(payload[i:payload.find(b'"', i)], now)

    def counted(self, mid: bytes, now: float) -> None:
        """Book one delivered message with id ``mid``: order, counts, first and last time."""
        t = self.tally
        if mid > self.last_id:
            self.last_id = mid
        else:
            t.out_of_order += 1
        t.book(self, 1, now)


class SampledWSReceiver(WSReceiver):
    """Parses every frame: latency from the send time in the text, duplicates by number.

    Opened over a RecvmsgTransport, so each message has two latencies: to its arrival in the
    socket (kernel timestamp, ``arrived``) and to its read (``now``). With many sockets per
    process, a read can come long after the arrival: the sockets that became readable
    together are read one after another, and this process shares the cores with the server.
    """

    feed = WebSocketProtocol.feed  # frame by frame

    def __init__(self, tally: Tally, host: str, port: int, path: str, cookie: str,
                 messages: int, compression: bool = False) -> None:
        super().__init__(tally, host, port, path, cookie, compression)
        self.seen = bytearray(messages)

    def on_text(self, payload: bytes, now: float) -> None:
        frame = json.loads(payload)
        if frame.get("type") != "event":
            if frame.get("type") == "error":
                self.tally.error(payload[:300].decode(errors="replace"))
            return
        event = frame["event"]
        if event.get("type") != "message":
            return
        t = self.tally
        n, sent = parse_sent_text(event["text"])
        t.latencies.append(now - sent)
        arrived = self.arrived
        if arrived is None:
            t.no_timestamp += 1
            arrived = now
        t.arrival_latencies.append(arrived - sent)
        if 0 <= n < len(self.seen):
            if self.seen[n]:
                t.dup_seq += 1
            self.seen[n] = 1
        self.counted(event["id"].encode(), now)


class PollReceiver:
    """One long-poll client: a keep-alive connection looping ``GET .../updates?cursor=``."""

    def __init__(self, tally: Tally, host: str, port: int, room: str, cookie: str,
                 cursor: str, sampled: bool, messages: int, stop_at_target: bool) -> None:
        self.tally = tally
        self.conn = HTTPConnection(host, port)
        self.base = f"/api/rooms/{room}/updates?cursor="
        self.headers = {"Cookie": cookie}
        self.cursor = cursor
        self.sampled = sampled
        self.seen = bytearray(messages) if sampled else None
        self.stop_at_target = stop_at_target
        self.count = 0
        self.last_id = b""
        self.closed = False
        self.closing = False
        self.parked: asyncio.Future = asyncio.get_running_loop().create_future()
        self.task: asyncio.Task | None = None

    async def run(self) -> None:
        t = self.tally
        conn = self.conn
        try:
            # A cheap request first: its answer shows the server has accepted the connection.
            # Without it, connects complete in the kernel faster than the server accepts, its
            # accept queue (128) overflows and dropped SYNs are retried a second later. It
            # also gives the XSRF token the page's polls carry.
            self.headers = await page_headers(conn, self.headers["Cookie"])
            while not self.closing:
                conn.send("GET", self.base + self.cursor, self.headers)
                t.requests += 1
                if not self.parked.done():
                    self.parked.set_result(None)
                response = await conn.read_response()
                now = time.time()
                if response.status != 200:
                    t.error(f"HTTP {response.status}: {response.body[:200]!r}")
                    await asyncio.sleep(1.0)
                    continue
                if self.sampled:
                    self._parse(response.body, now)
                else:
                    self._scan(response.body, now)
                if self.stop_at_target and self.count >= t.target:
                    return
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
            if not self.closing:
                self.closed = True
                t.error(f"long-poll connection: {exc!r}")
                if not self.parked.done():
                    self.parked.set_exception(ConnectionError(repr(exc)))

    def _scan(self, body: bytes, now: float) -> None:
        i = body.rfind(CURSOR_MARK) + 10
        self.cursor = body[i:body.find(b'"', i)].decode()
        n = body.count(MESSAGE_MARK)
        if not n:
            return
        t = self.tally
        # The ids of the first and last message of the batch; the batch is in id order.
        j = body.find(MESSAGE_MARK)
        k = body.rfind(ID_MARK, 0, j) + 6
        first = body[k:body.find(b'"', k)]
        j = body.rfind(MESSAGE_MARK)
        k = body.rfind(ID_MARK, 0, j) + 6
        if first <= self.last_id:
            t.out_of_order += 1
        self.last_id = body[k:body.find(b'"', k)]
        self.tally.book(self, n, now)

    def _parse(self, body: bytes, now: float) -> None:
        data = json.loads(body)
        self.cursor = data["cursor"]
        t = self.tally
        n = 0
        for event in data["events"]:
            if event.get("type") != "message":
                continue
            seq, sent = parse_sent_text(event["text"])
            t.latencies.append(now - sent)
            assert self.seen is not None
            if 0 <= seq < len(self.seen):
                if self.seen[seq]:
                    t.dup_seq += 1
                self.seen[seq] = 1
            mid = event["id"].encode()
            if mid > self.last_id:
                self.last_id = mid
            else:
                t.out_of_order += 1
            n += 1
        if n:
            self.tally.book(self, n, now)

    def close(self) -> None:
        self.closing = True
        if self.task is not None and not self.task.done():
            self.task.cancel()
        self.conn.close()


# -- the worker -----------------------------------------------------------------------------


class Worker:
    def __init__(self) -> None:
        self.ws = Tally()
        self.poll = Tally()
        self.cpu0 = cpu_seconds()
        self.t0 = time.time()

    async def cmd_open(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Open WebSockets (``ws_cookies``: one per connection) and/or long-polls."""
        host, port, room = msg["host"], msg["port"], msg["room"]
        every = max(1, int(msg.get("sample_every", 10)))
        # Global indexes of this process's first WebSocket and first long-poll: the sample
        # (every ``every``-th connection of each transport) is taken across all processes.
        ws_index = int(msg.get("ws_first_index", 0))
        poll_index = int(msg.get("poll_first_index", 0))
        messages = int(msg.get("messages", 0))
        gate = asyncio.Semaphore(int(msg.get("concurrency", DEFAULT_CONCURRENCY)))
        cpu0, t0 = cpu_seconds(), time.monotonic()
        failures: list[str] = []
        path = f"/api/rooms/{room}/ws"
        deflate = bool(msg.get("ws_compression"))  # offer permessage-deflate
        if msg.get("ws_cursor") is not None:
            path += "?cursor=" + msg["ws_cursor"]

        async def open_ws(i: int, cookie: str) -> None:
            sampled = (ws_index + i) % every == 0
            if sampled:
                def factory() -> WSReceiver:
                    return SampledWSReceiver(self.ws, host, port, path, cookie, messages,
                                             deflate)
            else:
                def factory() -> WSReceiver:
                    return WSReceiver(self.ws, host, port, path, cookie, deflate)
            async with gate:
                try:
                    # Only the sampled ones need the kernel's timestamps; the others stay
                    # on asyncio's transport.
                    proto = await open_websocket(factory, host, port,
                                                 kernel_timestamps=sampled)
                except (TimeoutError, OSError, ConnectionError) as exc:
                    failures.append(f"ws: {exc!r}")
                    return
            self.ws.receivers.append(proto)

        async def open_poll(i: int, cookie: str) -> None:
            sampled = (poll_index + i) % every == 0
            r = PollReceiver(self.poll, host, port, room, cookie, msg["poll_cursor"], sampled,
                             messages, bool(msg.get("stop_at_target")))
            async with gate:
                r.task = asyncio.ensure_future(r.run())
                try:
                    await asyncio.wait_for(asyncio.shield(r.parked), OPEN_TIMEOUT)
                except (TimeoutError, OSError, ConnectionError) as exc:
                    failures.append(f"poll: {exc!r}")
                    r.close()
                    return
            self.poll.receivers.append(r)

        ws_cookies = msg.get("ws_cookies") or []
        poll_cookies = msg.get("poll_cookies") or []
        await asyncio.gather(*(open_ws(i, c) for i, c in enumerate(ws_cookies)))
        await asyncio.gather(*(open_poll(i, c) for i, c in enumerate(poll_cookies)))
        return {
            "ws": len(self.ws.receivers),
            "polls": len(self.poll.receivers),
            "failed": len(failures),
            "failures": failures[:5],
            "seconds": time.monotonic() - t0,
            "cpu": cpu_seconds() - cpu0,
        }

    async def cmd_start(self, msg: dict[str, Any]) -> dict[str, Any]:
        self.cpu0, self.t0 = cpu_seconds(), time.time()
        self.poll.requests = 0
        target = msg.get("target")
        if target is not None:
            for tally in (self.ws, self.poll):
                tally.target = int(target)
                tally.recount()
        closed = [r for t in (self.ws, self.poll) for r in t.receivers
                  if r.closed and not r.closing]
        first = self.ws.first_error or self.poll.first_error
        if not first and closed and isinstance(closed[0], WebSocketProtocol):
            first = closed[0].closed_report()
        return {"t": self.t0, "closed": len(closed), "first_error": first}

    async def cmd_finish(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Wait until every receiver has ``target`` messages (or the timeout), linger to catch
        late duplicates, and report."""
        target = int(msg["target"])
        deadline = time.monotonic() + float(msg.get("timeout", 60))
        for tally in (self.ws, self.poll):
            tally.target = target
            tally.recount()

        def finished() -> bool:
            for tally in (self.ws, self.poll):
                gone = sum(1 for r in tally.receivers if r.closed and r.count < target)
                if tally.done + gone < len(tally.receivers):
                    return False
            return True

        while not finished() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(float(msg.get("linger", 0.5)))
        last_id = msg.get("last_id") or ""
        return {
            "ws": self.ws.report(last_id),
            "poll": self.poll.report(last_id),
            "cpu": cpu_seconds() - self.cpu0,
            "wall": time.time() - self.t0,
            "timed_out": not finished(),
        }

    async def cmd_close(self, msg: dict[str, Any]) -> dict[str, Any]:
        for r in self.ws.receivers:
            r.closing = True
            r.close()
        for r in self.poll.receivers:
            r.close()
        await asyncio.sleep(0.2)  # let the transports close
        return {"closed": len(self.ws.receivers) + len(self.poll.receivers)}

    async def serve(self) -> None:
        await serve_commands(self)



async def serve_commands(worker: Any) -> None:
    """Answer the driver's commands on stdin, a JSON line each (``{"cmd": "x"}`` calls
    ``worker.cmd_x``), one JSON line back each, until stdin closes (the driver went away) or
    ``close`` is answered. A command that raises answers ``ok: false`` with the error: the
    driver (chatbench, pollrace) decides what that means."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            return
        msg = json.loads(line)
        cmd = msg.get("cmd")
        try:
            reply = await getattr(worker, f"cmd_{cmd}")(msg)
            reply["ok"] = True
        except Exception as exc:  # noqa: BLE001 -- reported to the driver, which decides
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
        if cmd == "close":
            return

def main() -> None:
    # Ctrl-C is chatbench's to handle: it closes this worker through stdin.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise_nofile_limit()
    asyncio.run(Worker().serve())


if __name__ == "__main__":
    main()
