"""What permessage-deflate costs the server per delivery, without a load client in the way:
``python bench/deflatecost.py [--sockets 500] [--batches 2000]``.

The end-to-end fan-out (``chatbench.py --ws-compression``) also pays for the load client's
inflating, which on a small machine shares the cores with the server. This measures the
server's side alone, in one process, on chat-like events (bench/resumebench.py's texts):

- per delivery: choosing the frames for a socket (``chatapp.web.deflate.frames_for``: a
  Batch's shared plain bytes, or its shared compressed ones) and writing them with
  ``socket.send`` to one of ``--sockets`` socket pairs (drained as it goes), plain against
  compressed, the same batches in the same order;
- per batch: the one deflate every socket then shares, for batches of 1, 10 and 100 events.

Standard library and chatapp only; figures show direction (a shared machine is noisy).
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from resumebench import chat_text

from chatapp.buffer import Batch, Entry
from chatapp.web.deflate import frames_for, negotiate

BROWSER_OFFER = "permessage-deflate; client_max_window_bits"


def event(rng: random.Random, i: int) -> Entry:
    return Entry({"id": f"{0x69A0000000 + i:016x}", "room": "lobby", "type": "message",
                  "nick": f"user-{rng.randint(1, 30)}", "text": chat_text(rng, i, 100),
                  "ts": 1763700000.0 + i})


def fan_out(batches: list[Batch], pairs: list[tuple[socket.socket, socket.socket]],
            agreed: object) -> tuple[float, int]:
    """Seconds and bytes to write every batch to every socket, as the live path does."""
    sent = 0
    t0 = time.perf_counter()
    for batch in batches:
        for out, back in pairs:
            data = frames_for(batch, agreed)  # type: ignore[arg-type]
            sent += out.send(data)
        for _, back in pairs:  # drained outside the delivery loop, as the client would
            back.recv(1 << 16)
    return time.perf_counter() - t0, sent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sockets", type=int, default=500)
    p.add_argument("--batches", type=int, default=2000)
    args = p.parse_args()
    rng = random.Random(1)
    agreed = negotiate(BROWSER_OFFER)
    pairs = [socket.socketpair() for _ in range(args.sockets)]
    try:
        for plain_first in (True, False):  # both orders: the second run finds warm caches
            entries = [event(rng, i) for i in range(args.batches)]
            plain = [Batch([e]) for e in entries]
            packed = [Batch([e]) for e in entries]
            runs = [("plain", plain, None), ("deflate", packed, agreed)]
            for label, batches, how in runs if plain_first else runs[::-1]:
                seconds, sent = fan_out(batches, pairs, how)
                n = len(batches) * len(pairs)
                print(f"{label:8} {n / seconds:12,.0f} deliveries/s  "
                      f"{seconds * 1e6 / n:.2f} us each  {sent / n:.0f} bytes each")
    finally:
        for a, b in pairs:
            a.close()
            b.close()
    for size in (1, 10, 100):
        entries = [event(rng, i) for i in range(size)]
        t0 = time.perf_counter()
        reps = 200
        for _ in range(reps):
            Batch(entries).deflated(agreed)  # type: ignore[arg-type]
        us = (time.perf_counter() - t0) * 1e6 / reps
        plain = len(Batch(entries).wire)
        packed = len(Batch(entries).deflated(agreed))  # type: ignore[arg-type]
        print(f"one deflate of a {size:3}-event batch: {us:8.1f} us ({plain:,} -> {packed:,} "
              f"bytes, shared by every socket)")


if __name__ == "__main__":
    main()
