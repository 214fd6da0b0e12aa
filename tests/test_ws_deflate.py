"""permessage-deflate on the room WebSocket (chatapp.web.deflate, chatapp.frames), over the wire.

A compressing client (Tornado's own, as browsers offer it; and a raw one offering exact
parameters) gets every message once, in order and exactly as typed, live and after a resume;
a client that offers nothing, or a server with --ws_compression=false, speaks plain frames; the
answer header is the one intended for each offer; a client's compressed frames are inflated,
and an inflate bomb or a non-deflate payload is refused with the socket closed and the server
unharmed.
"""

from __future__ import annotations

import json
import zlib

import pytest

from tests.harness import Client, Socket
from tests.rawws import SYNC_TAIL, RawSocket, deflate
from tests.steps import (
    ROOM,
    assert_increasing,
    events_until,
    frames_until,
    messages,
    new_cid,
    post,
    texts,
    user,
)

TEXTS = ["<b>hi</b> & <script>x</script>", 'quotes " \\ and\nnewline', "emoji 😀 👨‍👩‍👧",
         "مرحبا بالعالم"]
# What the server answers a browser's offer ("permessage-deflate; client_max_window_bits").
BROWSER_ANSWER = "permessage-deflate; client_no_context_takeover"


async def open_compressed(client: Client, cursor: str | None = None) -> tuple[Socket, list]:
    """A Tornado WebSocket offering permessage-deflate; the events before its presence frame."""
    sock = await client.ws(ROOM, cursor, compression={})
    frames = await frames_until(sock, lambda f: f["type"] == "presence")
    return sock, [f["event"] for f in frames if f["type"] == "event"]


async def raw_events_until(sock: RawSocket, text: str, window_bits: int = 15,
                           each_alone: bool = False) -> tuple[list[dict], list[bool]]:
    """Events up to the message ``text``, inflating as a client must (one window kept across
    messages; or, with ``each_alone``, a fresh one per message, as server_no_context_takeover
    allows); and whether each data frame came compressed."""
    inflate = zlib.decompressobj(-window_bits)
    events, compressed = [], []
    while True:
        frame = await sock.frame()
        if frame.opcode != 1:
            continue
        compressed.append(frame.compressed)
        payload = frame.payload
        if frame.compressed:
            if each_alone:
                inflate = zlib.decompressobj(-window_bits)
            payload = inflate.decompress(payload + SYNC_TAIL)
        message = json.loads(payload)
        if message["type"] == "event":
            events.append(message["event"])
            if message["event"].get("text") == text:
                return events, compressed


@pytest.mark.gen_test(timeout=60)
async def test_compressing_client_gets_every_message_once_in_order_live_and_after_resume(
        servers):
    srv = await servers.start(history_size=5)  # a resume past 5 events reads the store
    alice, bob = await user(srv, "alice"), await user(srv, "bob")
    b, _ = await open_compressed(bob)
    assert b.conn.headers.get("Sec-WebSocket-Extensions") == BROWSER_ANSWER

    sent = [await post(alice, t) for t in TEXTS]
    live = messages(await events_until(b, TEXTS[-1]))
    assert live == sent

    cursor = live[-1]["id"]
    b.close()
    missed = [await post(alice, f"missed {i} <i>") for i in range(30)]
    b2, backlog = await open_compressed(bob, cursor)
    assert messages(backlog) == missed
    assert_increasing(backlog)
    # ...and it stays live afterwards, its own compressed sends included (the server inflates).
    b2.send("from bob <u>", "b1")
    after = messages(await events_until(b2, "from bob <u>"))
    assert texts(after) == ["from bob <u>"]
    ack = await b2.next("ack")
    assert ack["event"]["text"] == "from bob <u>"


@pytest.mark.gen_test(timeout=60)
async def test_raw_client_with_exact_parameters_can_inflate_each_message_alone(servers):
    srv = await servers.start()
    alice, bob = await user(srv, "alice"), await user(srv, "bob")
    offer = ("permessage-deflate; server_no_context_takeover; server_max_window_bits=10; "
             "client_max_window_bits")
    sock = await RawSocket.open(bob, ROOM, offer)
    assert sock.extensions == ("permessage-deflate; server_max_window_bits=10; "
                               "server_no_context_takeover; client_no_context_takeover")
    sent = [await post(alice, t) for t in TEXTS]
    events, compressed = await raw_events_until(sock, TEXTS[-1], 10, each_alone=True)
    assert messages(events) == sent
    assert all(compressed)
    sock.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_resumed_backlog_comes_compressed_and_smaller(servers):
    srv = await servers.start()
    alice, bob = await user(srv, "alice"), await user(srv, "bob")
    cursor = (await post(alice, "before"))["id"]
    missed = [await post(alice, f"message number {i} from alice, about lunch") for i in range(40)]

    sizes = {}
    for offer in (None, "permessage-deflate"):
        sock = await RawSocket.open(bob, ROOM, offer, cursor=cursor)
        size = 0
        inflate = zlib.decompressobj(-15)
        got = []
        while len(got) < len(missed):
            frame = await sock.frame()
            size += frame.wire_size
            assert frame.compressed == (offer is not None)
            payload = inflate.decompress(frame.payload + SYNC_TAIL) if frame.compressed else \
                frame.payload
            message = json.loads(payload)
            if message["type"] == "event" and message["event"]["type"] == "message":
                got.append(message["event"])
        assert got == missed
        sizes[offer] = size
        sock.close()
    # The events share a window: much smaller than the plain frames (the figure: bench/).
    assert sizes["permessage-deflate"] < sizes[None] / 2, sizes


@pytest.mark.parametrize("offer, answer", [
    (None, None),
    ("x-webkit-deflate-frame", None),
    ("permessage-deflate", BROWSER_ANSWER),
    ("permessage-deflate; client_max_window_bits", BROWSER_ANSWER),
    ("permessage-deflate; client_no_context_takeover", BROWSER_ANSWER),
    # Declined: a window zlib cannot make (then the next offer is taken), unknown parameters,
    # a parameter twice, a value where none belongs, a bad value.
    ("permessage-deflate; server_max_window_bits=8, permessage-deflate; server_max_window_bits=9",
     "permessage-deflate; server_max_window_bits=9; client_no_context_takeover"),
    ("permessage-deflate; server_max_window_bits=8", None),
    ("permessage-deflate; foo=1, permessage-deflate", BROWSER_ANSWER),
    ("permessage-deflate; server_no_context_takeover; server_no_context_takeover", None),
    ("permessage-deflate; client_no_context_takeover=1", None),
    ("permessage-deflate; server_max_window_bits=015", None),
    ("permessage-deflate; server_max_window_bits", None),
    ('permessage-deflate; server_max_window_bits="12"',
     "permessage-deflate; server_max_window_bits=12; client_no_context_takeover"),
])
@pytest.mark.gen_test(timeout=30)
async def test_the_answer_to_each_offer(servers, offer, answer):
    srv = await servers.start()
    alice, bob = await user(srv, "alice"), await user(srv, "bob")
    sock = await RawSocket.open(bob, ROOM, offer)
    assert sock.extensions == answer
    await post(alice, "<b>plain?</b>")
    _, compressed = await raw_events_until(sock, "<b>plain?</b>")
    assert all(compressed) if answer else not any(compressed)
    sock.close()


@pytest.mark.gen_test(timeout=30)
async def test_with_compression_off_an_offer_gets_plain_frames(servers):
    srv = await servers.start(ws_compression=False)
    alice, bob = await user(srv, "alice"), await user(srv, "bob")
    b = await bob.ws(ROOM, compression={})
    assert "Sec-WebSocket-Extensions" not in b.conn.headers
    sent = await post(alice, "<b>hi</b>")
    assert messages(await events_until(b, "<b>hi</b>")) == [sent]


@pytest.mark.parametrize("payload, code", [
    # 1 MiB of one byte inflates from ~1 KiB: far past the 64 KiB a frame may hold.
    (deflate(json.dumps({"type": "send", "text": " " * (1 << 20), "client_id": "x"}).encode()),
     1009),
    (b"\xff\xfe this is not deflate data", 1007),
])
@pytest.mark.gen_test(timeout=30)
async def test_an_inflate_bomb_or_garbage_is_refused_and_the_server_carries_on(
        servers, payload, code):
    srv = await servers.start()
    alice, mallory = await user(srv, "alice"), await user(srv, "mallory")
    a, _ = await open_compressed(alice)
    sock = await RawSocket.open(mallory, ROOM, "permessage-deflate")
    sock.send(payload, compressed=True)
    while (frame := await sock.frame()).opcode != 8:
        pass  # the backlog, presence: then the close
    assert int.from_bytes(frame.payload[:2], "big") == code
    sock.close()
    # Nothing was stored from it, and everyone else goes on as before.
    a.send("still here", new_cid())
    assert texts(await events_until(a, "still here")) == ["still here"]


@pytest.mark.gen_test(timeout=30)
async def test_a_compressed_send_from_a_raw_client_is_stored_and_acked(servers):
    srv = await servers.start()
    bob = await user(srv, "bob")
    sock = await RawSocket.open(bob, ROOM, "permessage-deflate")
    frame = {"type": "send", "text": "<b>squeezed</b>", "client_id": "c1"}
    sock.send(deflate(json.dumps(frame).encode()), compressed=True)
    inflate = zlib.decompressobj(-15)
    while True:
        got = await sock.frame()
        payload = inflate.decompress(got.payload + SYNC_TAIL) if got.compressed else got.payload
        message = json.loads(payload)
        if message["type"] == "ack":
            break
    assert message["client_id"] == "c1" and message["event"]["text"] == "<b>squeezed</b>"
    sock.close()


@pytest.mark.gen_test(timeout=30)
async def test_compressed_frames_count_once_each_against_the_frame_budget(servers):
    srv = await servers.start(rate_limit=1)  # frames: 4 a second, 8 at once
    bob = await user(srv, "bob")
    sock = await RawSocket.open(bob, ROOM, "permessage-deflate")
    inflate = zlib.decompressobj(-15)

    async def until(kind: str) -> dict:
        while True:
            frame = await sock.frame()
            if frame.opcode == 8:
                return {"type": "close", "code": int.from_bytes(frame.payload[:2], "big")}
            payload = inflate.decompress(frame.payload + SYNC_TAIL) if frame.compressed else \
                frame.payload
            message = json.loads(payload)
            if message["type"] in (kind, "error") and message.get("error") != "bad_frame":
                return message

    # Six refused frames and a send: seven of the eight allowed at once, if each counts once.
    for _ in range(6):
        sock.send(deflate(b"not json"), compressed=True)
    sock.send(deflate(json.dumps({"type": "send", "text": "hi", "client_id": "c1"}).encode()),
              compressed=True)
    assert (await until("ack"))["client_id"] == "c1"
    # Far past it: told, then closed, as plain frames are.
    for _ in range(20):
        sock.send(deflate(b"not json"), compressed=True)
    assert (await until("none"))["error"] == "flooding"
    assert (await until("none")) == {"type": "close", "code": 1008}
    sock.close()
