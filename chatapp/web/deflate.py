"""permessage-deflate (RFC 7692) on the room WebSocket: the handshake, the server's frames as a
socket takes them, and the client's compressed frames. On unless ``--ws_compression=false``.

Negotiated here, not by Tornado (``get_compression_options`` stays None), because Tornado's own
would undo what the fan-out relies on:

- it echoes the client's offer, and a browser's offer has no ``server_no_context_takeover``:
  every socket would get a persistent zlib compressor at the handshake (~256 KiB each; 10,000
  sockets, 2.5 GB), used only by ``write_message``, which the fan-out bypasses;
- it keeps a persistent decompressor per socket (inflate state and a 32 KiB window for the
  socket's life);
- an offer it cannot meet (an unknown parameter, ``server_max_window_bits=8``) aborts the
  connection instead of being declined, as RFC 7692 5 wants.

So ``negotiate`` answers the offer, the socket writes frames compressed once per batch for
every socket alike (``chatapp.frames``, ``Batch.deflated``), and Tornado's frame reader gets
an ``Inflater`` where its decompressor would be (``install``): Tornado still reads RSV1 and
reassembles fragments, then hands the whole message to ``decompress`` before ``on_message``.
That attribute (``_decompressor``) is the one private name used; ``install`` checks that it is
there, and tests/test_ws_deflate.py fails if a Tornado release moves it.

The answer: ``permessage-deflate; client_no_context_takeover``, plus ``server_no_context_takeover``
and ``server_max_window_bits=N`` when the accepted offer has them.

- ``client_no_context_takeover`` always (RFC 7692 7.1.1.2 lets a server put it in any answer):
  each client message is inflated from an empty window, by a decompressor made for it and
  dropped after it, so an idle socket holds no inflate state at all. Inflating stops at the
  largest frame allowed (``websocket_max_message_size``): a bigger result is refused as an
  over-long frame is (closed with 1009), and every compressed frame is counted against the
  socket's frame budget *before* it is inflated (inflating is the cost a flood is after).
- ``server_no_context_takeover`` only when the client asks (7.1.1.1 would allow it always).
  Without it, the messages of one run written together (a batch, a backlog chunk) share a
  window: 500 missed events shrink by ~70 %, where each event alone only loses ~27 %. The
  client keeps its window as for any deflate stream; the server keeps nothing between runs.
- Per-socket frames (acks, errors) go uncompressed: compressing them would be one deflate per
  socket, and an uncompressed message never disturbs a client's window (RSV1 unset).
"""

from __future__ import annotations

import re
import zlib
from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple

from chatapp.buffer import Batch, Entry
from chatapp.frames import (
    MAX_WINDOW_BITS,
    MIN_WINDOW_BITS,
    SYNC_TAIL,
    deflate_frames,
    payloads,
    window_for,
)

EXTENSION = "permessage-deflate"
# RFC 7692 7.1.2: a window-bits value is 8..15 written without leading zeros.
WINDOW_BITS_VALUE = re.compile(r"(?:8|9|1[0-5])\Z")
# Close codes: RFC 6455 7.4.1, 1007 "invalid frame payload data" (not a deflate stream),
# 1009 "message too big" (as Tornado closes a frame over websocket_max_message_size).
CLOSE_NOT_DEFLATE, CLOSE_TOO_BIG = 1007, 1009
# Runs compressed for one socket are often wanted by the next: every newcomer to a room gets the
# same latest events until the next one is published, clients reconnecting after a restart
# resume from nearly the same cursor, and a signal's frames are one bytes object handed to every
# socket of the room. The last few runs are kept, keyed by the identity of what they were made
# from (held meanwhile, so no other object can take that id): at 16 runs of at most a backlog
# chunk (ws.MAX_PENDING_OUTPUT / 2 plain) each, ~11 MB at worst, ~0.5 MB for typical rooms.
# Without it, each connect compressed its 100 latest events again: ~2 ms of CPU per connect.
RECENT_RUNS = 16


class Agreed(NamedTuple):
    """What one socket agreed to: the server's window (log2 bytes), and whether messages
    written together may share one (no ``server_no_context_takeover``); the answer header."""

    window_bits: int
    takeover: bool
    header: str


def negotiate(offers: str) -> Agreed | None:
    """The first ``permessage-deflate`` offer in ``Sec-WebSocket-Extensions`` that the server
    can meet, agreed; None when there is none (the socket then speaks plain frames)."""
    for offer in offers.split(","):
        name, *params = (part.strip() for part in offer.split(";"))
        if name.lower() != EXTENSION:
            continue
        agreed = _accept(params)
        if agreed is not None:
            return agreed
    return None


def _accept(params: list[str]) -> Agreed | None:
    seen: dict[str, str | None] = {}
    for param in params:
        key, sep, raw = param.partition("=")
        key = key.strip().lower()
        if key in seen:
            return None  # RFC 7692 5: a parameter twice makes the offer invalid
        seen[key] = raw.strip().strip('"') if sep else None
    for key, value in seen.items():
        if key in ("server_no_context_takeover", "client_no_context_takeover"):
            if value is not None:
                return None
        elif key == "server_max_window_bits":
            if value is None or not WINDOW_BITS_VALUE.match(value):
                return None
            if int(value) < MIN_WINDOW_BITS:
                return None  # 2^8: zlib cannot make a raw stream that small; declined
        elif key == "client_max_window_bits":
            if value is not None and not WINDOW_BITS_VALUE.match(value):
                return None
        else:
            return None  # unknown: decline this offer, perhaps accept the next
    header = [EXTENSION]
    bits = MAX_WINDOW_BITS
    if "server_max_window_bits" in seen:
        bits = int(seen["server_max_window_bits"] or MAX_WINDOW_BITS)
        header.append(f"server_max_window_bits={bits}")
    takeover = "server_no_context_takeover" not in seen
    if not takeover:
        header.append("server_no_context_takeover")
    header.append("client_no_context_takeover")
    agreed = Agreed(bits, takeover, "; ".join(header))
    return _agreements.setdefault(agreed, agreed)


# One Agreed object per distinct agreement (at most 7 windows x 2): a Batch recognises the
# parameters of the socket before by identity (Batch.deflated).
_agreements: dict[Agreed, Agreed] = {}


# -- server -> client ---------------------------------------------------------------------------


def frames_for(entries: list[Entry], agreed: Agreed | None) -> bytes:
    """``entries`` as this socket takes them, to write in one piece: a published Batch's
    shared bytes (compressed once per parameter set), or a run compressed for this socket
    (or for the last one that was sent the same entries)."""
    if isinstance(entries, Batch):  # the live path: one delivery, this is its cost
        return entries.wire if agreed is None else entries.deflated(agreed)
    if agreed is None:
        return b"".join(e.wire for e in entries)
    key = (agreed, *map(id, entries))
    return _recent_run(key, entries, lambda: deflate_run(b"".join(e.wire for e in entries),
                                                         agreed))


def deflate_run(wire: bytes, agreed: Agreed) -> bytes:
    """The plain frames in ``wire`` compressed as one run for a socket that agreed to
    ``agreed``."""
    return deflate_frames(payloads(wire), window_for(len(wire), agreed.window_bits),
                          agreed.takeover)


def shared(wire: bytes, agreed: Agreed | None) -> bytes:
    """Frames handed to every socket as one bytes object (signals), compressed once per
    parameter set while that object is among the recent runs."""
    if agreed is None or not wire:
        return wire
    return _recent_run((agreed, id(wire)), wire, lambda: deflate_run(wire, agreed))


_recent: OrderedDict[tuple[object, ...], tuple[object, bytes]] = OrderedDict()


def _recent_run(key: tuple[object, ...], source: object, make: Callable[[], bytes]) -> bytes:
    hit = _recent.get(key)
    if hit is not None:
        _recent.move_to_end(key)
        return hit[1]
    out = make()
    _recent[key] = (source, out)  # ``source`` held: the ids in ``key`` stay its own
    if len(_recent) > RECENT_RUNS:
        _recent.popitem(last=False)
    return out


# -- client -> server ---------------------------------------------------------------------------


class Inflater:
    """Inflates the client's compressed messages for Tornado's frame reader (``install``).

    ``count()`` is the socket's frame budget (False: over it, and the socket is being closed);
    ``close(code, reason)`` closes the socket. A refused message comes out as ``b""``, and
    ``verdict()`` tells ``on_message`` that it was counted already and must be dropped.
    It also carries what the socket agreed to (``agreed``): one object per socket, and small
    (slots), since every idle socket holds it.
    """

    __slots__ = ("_close", "_count", "_verdict", "agreed", "max_size", "refused")

    def __init__(self, agreed: Agreed, max_size: int, count: Callable[[], bool],
                 close: Callable[[int, str], None]) -> None:
        self.agreed = agreed
        self.max_size = max_size
        self._count, self._close = count, close
        self._verdict: bool | None = None
        self.refused = False

    def decompress(self, data: bytes) -> bytes:
        self._verdict = False
        if not self._count() or self.refused:
            return b""  # over budget (closing), or after a refused one: not inflated
        inflate = zlib.decompressobj(-MAX_WINDOW_BITS)  # made for this message, then dropped
        try:
            text = inflate.decompress(data + SYNC_TAIL, self.max_size)
        except zlib.error:
            return self._refuse(CLOSE_NOT_DEFLATE, "not a deflate stream")
        if inflate.unconsumed_tail:
            return self._refuse(CLOSE_TOO_BIG, "message too big after inflating")
        self._verdict = True
        return text

    def _refuse(self, code: int, reason: str) -> bytes:
        self.refused = True
        self._close(code, reason)
        return b""

    def verdict(self) -> bool | None:
        """For the message ``on_message`` is handed: True (inflated, counted), False (refused:
        drop it), None (it came uncompressed: count it as any frame)."""
        verdict, self._verdict = self._verdict, None
        return verdict


def install(protocol: object, inflater: Inflater) -> bool:
    """Put ``inflater`` where Tornado's WebSocketProtocol13 keeps its decompressor; False
    (compression is then not agreed) if this Tornado has no such place."""
    if not hasattr(protocol, "_decompressor"):
        return False
    setattr(protocol, "_decompressor", inflater)  # noqa: B010 -- Tornado's private slot
    return True
