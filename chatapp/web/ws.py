"""The WebSocket transport: ``GET /api/rooms/<room>/ws?cursor=<id>``.

One connection is one waiter on its room's ``MessageBuffer``: it is woken with every published
entry and writes the entry's pre-built frame. Sends and actions come in as ``send``, ``edit``,
``delete`` and ``react`` frames and go through the same ``Chat`` methods as the HTTP API.
Compression (permessage-deflate) is agreed and done in ``chatapp.web.deflate``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import tornado.websocket
from tornado.iostream import SSLIOStream, StreamBufferFullError, StreamClosedError

from chatapp import rules
from chatapp.buffer import Entry, MessageBuffer, encode, websocket_text_frame
from chatapp.errors import ChatError, store_unavailable
from chatapp.ratelimit import BURST_FACTOR, TokenBucket
from chatapp.reading import View
from chatapp.rooms import MAX_UPDATES
from chatapp.sessions import Session
from chatapp.store import StoreError
from chatapp.web import deflate
from chatapp.web.address import normal_origin, own_origin
from chatapp.web.base import SESSION_COOKIE, ChatHandlerMixin, JSONHandler
from chatapp.web.pinger import pinger_of

log = logging.getLogger(__name__)

# A client that stops reading lets its frames pile up in the server's memory. Past this many
# bytes unsent it is closed (it reconnects and resumes from its cursor): one stuck client must
# not grow the server without bound. 1 MiB is several thousand typical messages.
MAX_PENDING_OUTPUT = 1024 * 1024
# Close codes: 1001 "going away" on shutdown, 1008 "policy violation" for a logged-out
# session, 1013 "try again later" for a client too slow to keep up, or refused for now.
CLOSE_TRY_LATER, CLOSE_SESSION_ENDED = 1013, 1008
# 1008 again, "policy violation", for a socket that sent frames faster than FRAME_FACTOR times
# the send rate: an error frame (``flooding``) says so first. No page does this (a browser
# sends no pings, and the page paces its sends), so the page need not tell it apart.
CLOSE_FLOODING = 1008
# Frames of every kind one session's sockets may send together (sends, refused frames, pings,
# pongs), as a multiple of --rate_limit, in bursts of as many times the send burst. Parsing
# and refusing a frame costs about what storing a message does: without a count, a ping flood
# or over-rate long frames from one session took others' send latency from 12 to 656 ms.
# Four times the rate leaves a client that sends past its rate (and is refused, with
# rate_limited) room to notice before it is closed.
FRAME_FACTOR = 4


# A flooding socket is closed politely (an error frame, then 1008), but the frames it keeps
# sending meanwhile are still read and parsed: after this long it is cut off outright.
FLOOD_ABORT_SECONDS = 0.2
# Buckets of sessions with no socket open are kept (a flooder that reconnects finds its own
# bucket still empty) until they are full again; past this many, full ones are forgotten.
KEEP_BUCKETS = 1000


class FrameBudgets:
    """One token bucket per session, shared by its sockets, kept until it has refilled."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[TokenBucket, int]] = {}

    def open(self, sid: str, rate: float) -> TokenBucket | None:
        if rate <= 0:
            return None
        bucket, sockets = self._buckets.get(sid) or (
            TokenBucket(rate * FRAME_FACTOR, rate * FRAME_FACTOR * BURST_FACTOR), 0)
        self._buckets[sid] = (bucket, sockets + 1)
        return bucket

    def close(self, sid: str) -> None:
        entry = self._buckets.get(sid)
        if entry is None:
            return
        self._buckets[sid] = (entry[0], max(0, entry[1] - 1))
        if len(self._buckets) > KEEP_BUCKETS:
            for key, (bucket, sockets) in list(self._buckets.items()):
                if not sockets and bucket.is_full():
                    del self._buckets[key]


# A client frame's handler: the frame in, the ack's fields out (ChatError for a refusal).
Action = Callable[["RoomSocket", dict[str, Any]], Awaitable[dict[str, Any]]]


class RoomSocket(ChatHandlerMixin, tornado.websocket.WebSocketHandler):
    session: Session
    room: str
    buffer: MessageBuffer | None = None
    closed = False
    frames: TokenBucket | None = None
    inflater: deflate.Inflater | None = None  # permessage-deflate, if the handshake agreed
    ponged = True  # a pong came since the last ping (chatapp.web.pinger)

    @property
    def ping_interval(self) -> float | None:
        """0 for Tornado: one task pings every socket instead of one task each (pinger.py)."""
        return 0

    async def get(self, room: str) -> None:
        """Check everything that can be refused before upgrading, so refusals are plain HTTP."""
        sid = self.get_signed_cookie(SESSION_COOKIE)
        cursor = self.get_query_argument("cursor", None)
        try:
            origin = self.request.headers.get("Origin")
            if origin is not None and not self.check_origin(origin):
                # Checked here, not left to Tornado: its own fallback compares host and port
                # but not the scheme.
                raise ChatError(
                    "bad_origin",
                    f"Pages of {origin!r} may not open this server's WebSocket.", 403)
            try:
                session = await self.chat.sessions.get(sid.decode()) if sid else None
            except StoreError:
                raise store_unavailable() from None
            rules.check_room(room)
            if session is None:
                raise ChatError("no_session", "Choose a nickname first.", 403)
            # Loaded (and the cursor checked) before the upgrade: a bad cursor is a plain 400,
            # and open() counts the connection and queues its join in the same step as the
            # handshake, so nothing sent once the socket is open is stored before that join.
            await self.chat.open_room(room, cursor)
            await self.chat.moderation.check_read(room, session, self.request.remote_ip or "")
        except ChatError as exc:
            self.set_status(exc.status)
            self.set_header("Content-Type", "application/json; charset=UTF-8")
            self.finish(json.dumps({"error": exc.code, "message": exc.message}))
            return
        self.session, self.room, self.cursor = session, room, cursor
        self.address = self.request.remote_ip or ""
        # Cluster: a cursor from another process can be ahead of this one's buffer (its feed
        # lags); what the feed brings up to the cursor, the client already has.
        self.last_id = cursor or ""
        self.caught_up = False
        self.held: list[Entry] = []
        await super().get(room)

    def get_websocket_protocol(self) -> tornado.websocket.WebSocketProtocol | None:
        """Tornado's protocol, with permessage-deflate agreed when the client offers it and
        --ws_compression is on (chatapp.web.deflate says why not Tornado's own)."""
        protocol = super().get_websocket_protocol()
        offers = ",".join(self.request.headers.get_list("Sec-WebSocket-Extensions"))
        agreed = deflate.negotiate(offers) if self.settings.get("ws_compression", True) else None
        if protocol is not None and agreed is not None:
            inflater = deflate.Inflater(agreed, self.max_message_size, self._frame_allowed,
                                        self.close)
            if deflate.install(protocol, inflater):
                self.inflater = inflater
                self.set_header("Sec-WebSocket-Extensions", agreed.header)
        return protocol

    @property
    def agreed(self) -> deflate.Agreed | None:
        return self.inflater.agreed if self.inflater is not None else None

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Tornado's own refusals before get() runs (a room name that is not UTF-8) in the
        contract's JSON shape too, like the refusals get() makes."""
        # Borrowed: it uses only what a WebSocketHandler has too (set_status, finish).
        JSONHandler.write_error(self, status_code, **kwargs)  # type: ignore[arg-type]

    def check_origin(self, origin: str) -> bool:
        """Only pages of this server (or of ``--allowed_origins``) may open a socket with the
        visitor's cookie; this is what stops another site from chatting in their name.

        The whole origin is compared, scheme and port included: ``http://`` does not pass for
        a site served over ``https://`` (the scheme comes from the socket, or from a trusted
        proxy's X-Forwarded-Proto: ``address.Edge.resolve``)."""
        mine = normal_origin(origin)
        if mine is None:
            return False  # "null" (a sandboxed frame, a file), or not an http(s) origin
        return mine in self.settings.get("allowed_origins", ()) or mine == own_origin(
            self.request)

    def _frame_allowed(self) -> bool:
        """Count one frame from the client against its socket's budget; past it, the socket
        is told why and closed, and False. No budget when --rate_limit is 0."""
        if self.frames is None:
            return True
        if self.frames.take():
            return True
        conn = self.ws_connection
        if conn is not None and not conn.is_closing():
            log.info("closing a WebSocket that sent frames too fast (%s)", self.session.nick)
            self._send_error(ChatError(
                "flooding", "This socket sent frames faster than the rate limit allows.", 429))
            self.close(CLOSE_FLOODING, "too many frames")
            stream = conn.stream  # None only in the types: the socket is open here
            if stream is not None:
                asyncio.get_running_loop().call_later(FLOOD_ABORT_SECONDS, stream.close)
        return False

    def on_ping(self, data: bytes) -> None:
        self._frame_allowed()  # Tornado has answered it already; a flood closes the socket

    def on_pong(self, data: bytes) -> None:
        self.ponged = True
        self._frame_allowed()

    async def open(self, room: str) -> None:
        # Every write is whole frames, meant to leave now. With Nagle's algorithm on (Tornado
        # turns TCP_NODELAY off again after the handshake), a sender's ack, written right
        # after its own message's event frame, waited for the client's delayed ACK: 40 ms.
        self.set_nodelay(True)
        # Sent with the 101 already; kept, it is ~300 bytes more per idle socket (deflate.py).
        self.clear_header("Sec-WebSocket-Extensions")
        self.frames = self.settings["frame_budgets"].open(self.session.sid, self.chat.rate_limit)
        # open() runs on an established connection: it has a stream (None only in the types).
        stream = self.ws_connection.stream if self.ws_connection is not None else None
        if stream is not None:
            stream.max_write_buffer_size = MAX_PENDING_OUTPUT
        # One pinger for all sockets, not a task of Tornado's for each (pinger.py).
        pinger_of(self.application.settings).add(self)
        try:
            buffer = await self.chat.connect(self.session, room, self, self.address)
            if self.closed:
                # Gone while the room was loading: on_close could not undo the connect.
                self.chat.disconnect(self.session, room, self, self.address)
                return
            self.buffer = buffer
            # Registered before reading the backlog: what is published meanwhile is held
            # and written after it, so nothing falls between the two.
            self.buffer.add_waiter(self)
            await self._catch_up()
        except ChatError as exc:
            # Refused or unavailable for now (a cap, MongoDB down): say why, then close with
            # "try again later"; the client reconnects with back-off and its cursor.
            self._send_error(exc)
            self.close(CLOSE_TRY_LATER, exc.code)
            return
        self._write_wire(deflate.shared(self.buffer.signals.opening_wire(), self.agreed))

    async def _catch_up(self) -> None:
        cursor = self.cursor
        while True:
            entries = await self.chat.updates(self.room, cursor)
            await self._write_backlog(entries)
            if isinstance(entries, View) and entries.cursor > self.last_id:
                self.last_id = entries.cursor  # the view shows the state up to there
            if self.closed or cursor is None or len(entries) < MAX_UPDATES:
                break
            cursor = self.last_id
        while self.held and not self.closed:  # what was published meanwhile, paced the same
            held, self.held = self.held, []
            await self._write_backlog(held)
        self.caught_up = True

    async def _write_backlog(self, entries: list[Entry]) -> None:
        """Write missed events as fast as the client reads them. A backlog can be far larger
        than MAX_PENDING_OUTPUT (a client back after a while): written at once, it got a
        client that reads perfectly well closed as too slow, on every reconnect."""
        fresh = [e for e in entries if e.id > self.last_id]
        start = 0
        while start < len(fresh):
            end, size = start + 1, len(fresh[start].wire)
            while end < len(fresh) and size + len(fresh[end].wire) <= MAX_PENDING_OUTPUT // 2:
                size += len(fresh[end].wire)
                end += 1
            self.last_id = fresh[end - 1].id
            if not self._write_wire(deflate.frames_for(fresh[start:end], self.agreed)):
                return  # closed
            start = end
            if start < len(fresh):
                try:
                    # Resolves once the client has taken everything written before it. (None
                    # or streamless only once closed: the AttributeError below.)
                    await self.ws_connection.stream.write(b"")  # type: ignore[union-attr]
                except (StreamClosedError, AttributeError):
                    return  # it went away: on_close cleans up

    # -- the waiter side: called by MessageBuffer -------------------------------------------

    def wake(self, entries: list[Entry]) -> None:
        if self.caught_up:
            self._write_entries(entries)
        else:
            self.held.extend(entries)

    def signals_changed(self, wire: bytes) -> None:
        if self.caught_up:
            self._write_wire(deflate.shared(wire, self.agreed))

    def shutdown(self) -> None:
        self.close(1001, "server restarting")

    def session_ended(self) -> None:
        self.close(CLOSE_SESSION_ENDED, "session ended")

    def moderated(self, error: ChatError, code: int) -> None:
        """Kicked or banned (``chatapp.moderation``): say why, then close with ``code``."""
        self._send_error(error)
        self.close(code, error.code)

    def _write_entries(self, entries: list[Entry]) -> None:
        if not entries:
            return
        if entries[0].id > self.last_id:
            # The live path: every entry is new. A published Batch carries its frames joined
            # once for every socket; this is the line every delivery goes through.
            self.last_id = entries[-1].id
            self._write_wire(deflate.frames_for(entries, self.agreed))
            return
        # Catching up: the backlog and live events may overlap; skip by id, not by position.
        fresh = [e for e in entries if e.id > self.last_id]
        if fresh:
            self.last_id = fresh[-1].id
            self._write_wire(deflate.frames_for(fresh, self.agreed))

    def write_frame(self, frame: str) -> None:
        """Send one JSON text message (acks, errors, presence: the per-socket frames)."""
        self._write_wire(websocket_text_frame(frame.encode()))

    def _write_wire(self, data: bytes) -> bool:
        """Send ``data`` (complete frames) to the client; False if the connection is closing
        or was just closed for being too slow.

        Complete frames go straight to the connection: Tornado's write_message would encode
        and frame the same bytes again, and start a task, for every socket. This is sound
        because compression is the server's own (chatapp.web.deflate, not Tornado's
        get_compression_options): a frame's bytes are the same for every client that agreed
        to the same parameters, and messages compressed together are written together.
        """
        conn = self.ws_connection
        if conn is None or conn.is_closing():
            return False
        stream = conn.stream
        if stream is None:  # never on an open connection; None only in Tornado's types
            return False
        if not stream.writing() and not isinstance(stream, SSLIOStream):
            # Nothing queued before it: hand it to the socket now. A frame almost always goes
            # out whole in one send(), without the Future and callback IOStream.write makes
            # per call: at one message per batch, that was most of the cost of a delivery.
            try:
                sent = stream.socket.send(data)
            except OSError:
                sent = 0  # full, or broken: IOStream.write below finds out and reports
            if sent == len(data):
                return True
            data = data[sent:]
        try:
            # The cap is on what the client has not taken yet, checked before each write; not
            # on what comes, since one published batch (up to 500 long messages) may alone be
            # larger than the cap and a client that keeps up must still get it.
            stream.max_write_buffer_size = MAX_PENDING_OUTPUT + len(data)
            stream.write(data)
            return True
        except StreamBufferFullError:
            log.info("closing a WebSocket that stopped reading (%s)", self.session.nick)
            try:
                self.close(CLOSE_TRY_LATER, "too slow; reconnect with your cursor")
            except StreamBufferFullError:
                # Not even the close frame fits: drop the connection outright. (Open, so
                # ws_connection is set: None only in Tornado's types.)
                self.ws_connection.stream.close()  # type: ignore[union-attr]
        except (tornado.websocket.WebSocketClosedError, StreamClosedError):
            pass
        return False

    # -- the client side ----------------------------------------------------------------------

    def on_message(self, message: str | bytes) -> None:
        # Counted before parsing (parsing is the cost a flood is after); a compressed frame
        # was counted before it was inflated, and a refused one is dropped here.
        verdict = self.inflater.verdict() if self.inflater is not None else None
        if not (self._frame_allowed() if verdict is None else verdict):
            return
        try:
            frame = json.loads(message)
        # RecursionError: nesting deeper than the parser allows; it used to drop the socket.
        except (ValueError, UnicodeDecodeError, RecursionError):
            self._send_error(ChatError("bad_frame", "That frame is not valid JSON."))
            return
        kind = frame.get("type") if isinstance(frame, dict) else None
        if kind == "typing":  # a signal: no client_id, no ack
            asyncio.ensure_future(self._typing())
            return
        act = self._ACTIONS.get(kind) if isinstance(kind, str) else None
        if act is None:  # an unknown frame type, or not an object
            self._send_error(ChatError(
                "bad_frame", 'Frames are {"type": "send" | "edit" | "delete" | "react" | '
                '"moderate" | "typing", ...}.'))
            return
        asyncio.ensure_future(self._act(act, frame))

    # One entry per client frame type: what it asks of the core, and its ack's fields.
    async def _send(self, f: dict[str, Any]) -> dict[str, Any]:
        return {"event": await self.chat.send(
            self.session, self.room, f.get("text"), f.get("client_id"), f.get("reply_to"))}

    async def _edit(self, f: dict[str, Any]) -> dict[str, Any]:
        return {"event": await self.chat.edit(
            self.session, self.room, f.get("target"), f.get("text"), f.get("client_id"))}

    async def _delete(self, f: dict[str, Any]) -> dict[str, Any]:
        return {"event": await self.chat.delete(
            self.session, self.room, f.get("target"), f.get("client_id"),
            self.settings["roles"])}

    async def _react(self, f: dict[str, Any]) -> dict[str, Any]:
        event, reactions = await self.chat.react(
            self.session, self.room, f.get("target"), f.get("emoji"), f.get("on"),
            f.get("client_id"))
        return {"event": event, "reactions": reactions}

    async def _moderate(self, f: dict[str, Any]) -> dict[str, Any]:
        return {"event": await self.chat.moderate(
            self.session, self.room, f, self.settings["roles"])}

    _ACTIONS: ClassVar[dict[str, Action]] = {
        "send": _send, "edit": _edit, "delete": _delete, "react": _react,
        "moderate": _moderate,
    }

    async def _act(
        self,
        act: Action,
        frame: dict[str, Any],
    ) -> None:
        client_id = frame.get("client_id")
        try:
            answer = await act(self, frame)
        except ChatError as exc:
            self._send_error(exc, client_id)
            return
        self.write_frame(encode({"type": "ack", "client_id": client_id, **answer}))

    async def _typing(self) -> None:
        try:
            await self.chat.typing(self.session, self.room)
        except ChatError as exc:
            self._send_error(exc)

    def _send_error(self, exc: ChatError, client_id: Any = None) -> None:
        frame: dict[str, Any] = {**exc.fields, "type": "error", "error": exc.code,
                                 "message": exc.message}
        if isinstance(client_id, str):
            frame["client_id"] = client_id
        self.write_frame(encode(frame))

    def on_close(self) -> None:
        self.closed = True
        pinger_of(self.application.settings).discard(self)
        if self.frames is not None:
            self.settings["frame_budgets"].close(self.session.sid)
            self.frames = None
        if self.buffer is not None:
            self.buffer.remove_waiter(self)
            self.chat.disconnect(self.session, self.room, self, self.address)
