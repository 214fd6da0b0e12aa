"""WebSocket frames as the server writes them: plain (RFC 6455) or compressed (RFC 7692).

Every frame here is built once and written to many sockets as the same bytes (the shared-bytes
fan-out, ``chatapp.web.ws``), so compression is done per *message set*, never per socket:

- ``deflate_frames(payloads, window_bits, takeover)`` compresses a run of messages that will be
  written back to back to a socket. With ``takeover`` (the socket did not ask for
  ``server_no_context_takeover``), the messages of the run share one LZ77 window, so the
  second message may point back into the first: a backlog of 500 events compresses to about a
  quarter of its size, where each event alone only loses about a quarter. The run always
  starts from an empty window, which any client must accept (a compressor is never obliged to
  point back: RFC 7692 7.2.1 says it MAY). Without ``takeover``, each message gets an empty
  window of its own.
- The compressor lives only while one run is compressed, synchronously: no socket holds one
  (a zlib deflate context at the default settings is ~256 KiB; at 10,000 sockets, gigabytes).

The trap: a run compressed with ``takeover`` is only valid if the client receives it whole,
with no other *compressed* message in between (an uncompressed one is fine: it never enters
the client's window). Write its bytes in one piece.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence

# The RFC 6455 first byte of a final text frame; with RSV1 set, "this message is compressed".
TEXT, TEXT_DEFLATED = 0x81, 0xC1
# RFC 7692 7.2.1: a message's compressed data ends with a sync flush, whose last 4 bytes (an
# empty stored block) are dropped on the wire; the receiver appends them before inflating.
SYNC_TAIL = b"\x00\x00\xff\xff"
# zlib level 1: on chat events over a backlog it saves ~68 % where 6 (zlib's default) saves
# ~71 %, in about half the time (bench/deflatecost.py). A run is compressed in one go on the
# event loop (a resumed backlog: up to rooms.MAX_UPDATES events, a few ms), so time counts.
LEVEL = 1
# Raw deflate accepts windows of 2^9..2^15 bytes (zlib refuses 2^8 for raw streams, so an offer
# of server_max_window_bits=8 is declined: chatapp.web.deflate).
MIN_WINDOW_BITS, MAX_WINDOW_BITS = 9, 15


def websocket_text_frame(payload: bytes, first: int = TEXT) -> bytes:
    """A final, unmasked RFC 6455 text frame: what a server sends (uncompressed by default)."""
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", first, n)
    elif n <= 0xFFFF:
        header = struct.pack("!BBH", first, 126, n)
    else:
        header = struct.pack("!BBQ", first, 127, n)
    return header + payload


def payloads(wire: bytes) -> list[bytes]:
    """The payloads of the unmasked frames ``websocket_text_frame`` joined into ``wire``."""
    out: list[bytes] = []
    pos, end = 0, len(wire)
    while pos < end:
        n = wire[pos + 1] & 0x7F
        if n < 126:
            head = 2
        elif n == 126:
            n, head = struct.unpack_from("!H", wire, pos + 2)[0], 4
        else:
            n, head = struct.unpack_from("!Q", wire, pos + 2)[0], 10
        out.append(wire[pos + head:pos + head + n])
        pos += head + n
    return out


def window_for(size: int, limit: int) -> int:
    """The window (log2 bytes) for ``size`` bytes of input, at most ``limit``. A window larger
    than the input finds nothing more, and a small one is cheap to set up: a fresh 2^15
    compressor took 132 us for one event, a 2^12 one 8 us (glibc maps large blocks)."""
    return max(MIN_WINDOW_BITS, min(limit, size.bit_length()))


def _compressor(window_bits: int) -> zlib._Compress:
    # memLevel (hash table size) in step with the window: 8 (zlib's default) at 2^15.
    return zlib.compressobj(LEVEL, zlib.DEFLATED, -window_bits, max(1, window_bits - 7))


def deflate_frames(messages: Sequence[bytes], window_bits: int, takeover: bool) -> bytes:
    """``messages`` (text payloads) as compressed frames, ready to write in one piece."""
    out = []
    compressor = None
    for message in messages:
        if compressor is None or not takeover:
            compressor = _compressor(window_bits)
        data = compressor.compress(message) + compressor.flush(zlib.Z_SYNC_FLUSH)
        out.append(websocket_text_frame(data[:-4], TEXT_DEFLATED))  # without SYNC_TAIL
    return b"".join(out)
