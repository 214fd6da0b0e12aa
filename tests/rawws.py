"""A raw WebSocket client for the compression tests: it sends the handshake headers it is
given (a ``Sec-WebSocket-Extensions`` offer), and hands out frames as the wire has them (RSV1
bit, payload still compressed), so a test sees exactly what the server agreed to and sent."""

from __future__ import annotations

import asyncio
import base64
import os
import struct
import zlib
from typing import NamedTuple

from tests.harness import WAIT_SECONDS, Client

SYNC_TAIL = b"\x00\x00\xff\xff"


class Frame(NamedTuple):
    opcode: int
    compressed: bool  # RSV1
    payload: bytes
    wire_size: int  # header + payload, as it came


class RawSocket:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 headers: dict[str, str]) -> None:
        self.reader, self.writer, self.headers = reader, writer, headers

    @classmethod
    async def open(cls, client: Client, room: str, offer: str | None = None,
                   cursor: str | None = None) -> RawSocket:
        host, port = client.base_url.split("//", 1)[1].split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        key = base64.b64encode(os.urandom(16)).decode()
        path = f"/api/rooms/{room}/ws" + (f"?cursor={cursor}" if cursor else "")
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Upgrade: websocket",
                 "Connection: Upgrade", f"Sec-WebSocket-Key: {key}",
                 "Sec-WebSocket-Version: 13", f"Cookie: {client._cookie_header()}"]
        if offer is not None:
            lines.append(f"Sec-WebSocket-Extensions: {offer}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT_SECONDS)
        status, *rest = head.decode().split("\r\n")
        assert " 101 " in status, head
        headers = {}
        for line in rest:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        return cls(reader, writer, headers)

    @property
    def extensions(self) -> str | None:
        return self.headers.get("sec-websocket-extensions")

    async def frame(self, timeout: float = WAIT_SECONDS) -> Frame:
        async def read() -> Frame:
            b0, b1 = await self.reader.readexactly(2)
            n, size = b1 & 0x7F, 2
            if n == 126:
                n, size = struct.unpack("!H", await self.reader.readexactly(2))[0], 4
            elif n == 127:
                n, size = struct.unpack("!Q", await self.reader.readexactly(8))[0], 10
            assert not b1 & 0x80, "a server frame must not be masked"
            payload = await self.reader.readexactly(n)
            return Frame(b0 & 0x0F, bool(b0 & 0x40), payload, size + n)
        return await asyncio.wait_for(read(), timeout)

    def send(self, payload: bytes, compressed: bool = False, opcode: int = 1) -> None:
        """One masked frame (RSV1 set if ``compressed``: ``payload`` is then deflate data)."""
        n = len(payload)
        first = 0x80 | opcode | (0x40 if compressed else 0)
        if n < 126:
            head = struct.pack("!BB", first, 0x80 | n)
        elif n < 65536:
            head = struct.pack("!BBH", first, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", first, 0x80 | 127, n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.writer.write(head + mask + masked)

    def close(self) -> None:
        self.writer.close()


def deflate(text: bytes) -> bytes:
    """``text`` as one RFC 7692 compressed message payload (an empty window)."""
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    return (c.compress(text) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]
