"""Text that reorders itself (issue 13): bidirectional overrides and embeddings are refused,
isolates and marks, which mixed-direction text needs, are kept exactly as sent."""

from __future__ import annotations

import pytest

from tests.steps import ROOM, history, new_cid, post, texts, user

# LRE, RLE, PDF, LRO, RLO: each can make text display in another order than it was typed.
OVERRIDES = ["\u202a", "\u202b", "\u202c", "\u202d", "\u202e"]
# LRI, RLI, FSI, PDI and LRM, RLM: what Arabic or Hebrew mixed with digits and Latin needs.
ISOLATES_AND_MARKS = ["\u2066", "\u2067", "\u2068", "\u2069", "\u200e", "\u200f"]


@pytest.mark.gen_test(timeout=60)
async def test_bidi_overrides_are_refused_as_bad_text_and_store_nothing(servers):
    srv = await servers.start()
    an = await user(srv, "an")
    for ch in OVERRIDES:
        # "0001$" with an RLO before it shows as "$1000" in a browser.
        for text in (f"{ch}0001$", f"price {ch}0001$ ok", f"ends with {ch}"):
            code, body = await an.send(ROOM, text, new_cid())
            assert code == 400, (ch, code, body)
            assert body["error"] == "bad_text", body
            assert f"U+{ord(ch):04X}" in body["message"], body
    sock = await an.ws(ROOM)
    sock.send("\u202e0001$", new_cid())
    frame = await sock.next("error")
    assert frame["error"] == "bad_text", frame
    sock.close()
    assert texts(await history(an)) == []


@pytest.mark.gen_test(timeout=60)
async def test_bidi_isolates_and_marks_are_kept_exactly(servers):
    srv = await servers.start()
    an = await user(srv, "an")
    sent = [f"\u05e9\u05dc\u05d5\u05dd {ch}abc 123{ch} \u05e2\u05d5\u05d3" for ch in
            ISOLATES_AND_MARKS]
    sent.append("\u2067\u05e9\u05dc\u05d5\u05dd\u2069 \u200f(1)\u200e")  # nested, as typed
    for text in sent:
        assert (await post(an, text))["text"] == text
    assert texts(await history(an)) == sent
