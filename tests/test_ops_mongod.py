"""The embedded MongoDB is watched (``chatapp.watchdog.Watchdog``): real ``python -m chatapp``
processes whose mongod is killed with ``kill -9``.

Sends succeed again by themselves (the page's retry of a 503 with the same client_id), every
acknowledged message is in history exactly once and reaches a reader that stayed connected;
under ``--processes=2`` too, where the supervisor must leave mongod's exit to its watchdog.
And a killed app takes its mongod with it, so a restart on the same data dir starts.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
from pathlib import Path

import pytest

from tests.harness import Client
from tests.procs import AppProcess, running
from tests.steps import events_until, eventually, history, messages, new_cid, unique, user

# A kill -9'd mongod recovers its journal and is primary again in a few seconds; the first
# restart waits 0.5 s. Generous for a loaded machine.
BACK_WITHIN_SECONDS = 60.0


def children(pid: int) -> set[int]:
    kids: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            kids |= {int(p) for p in (task / "children").read_text().split()}
        except FileNotFoundError:
            pass
    return kids


def mongod_of(app: AppProcess) -> int:
    """The pid of the embedded mongod the app (its parent process) runs."""
    found = [p for p in children(app.pid) if Path(f"/proc/{p}/comm").read_text().strip()
             == "mongod"]
    assert len(found) == 1, found
    return found[0]


async def send_surely(client: Client, room: str, text: str, deadline: float) -> dict:
    """Send ``text``, retrying a 503 with the same client_id as the page does; the event."""
    cid = new_cid()
    while True:
        code, body = await client.send(room, text, cid)
        if code == 200:
            return body["event"]
        assert code == 503, (code, body)
        assert time.monotonic() < deadline, f"{text!r} still refused: {body}"
        await asyncio.sleep(0.2)  # the page's back-off


@pytest.mark.parametrize("processes", [1, 2])
@pytest.mark.gen_test(timeout=180)
async def test_a_killed_embedded_mongod_is_restarted_and_nothing_acknowledged_is_lost(
    tmp_path, processes
):
    async with running(AppProcess(tmp_path / "app", processes=processes)) as app:
        room = unique("watched")
        reader = await user(app, unique("reader"))
        sock = await reader.ws(room)
        sender = await user(app, unique("sender"))
        deadline = time.monotonic() + 30
        acked = [await send_surely(sender, room, "before", deadline)]
        old = mongod_of(app)
        os.kill(old, signal.SIGKILL)
        killed = time.monotonic()
        deadline = killed + BACK_WITHIN_SECONDS
        for i in range(10):
            acked.append(await send_surely(sender, room, f"after {i}", deadline))
        back = time.monotonic() - killed
        assert mongod_of(app) != old
        assert "exited with status -9; restarting it" in app.log_tail(200)
        # Logged once start() has seen it primary, which may be just after the send got in.
        await eventually(lambda: "restarted the embedded MongoDB" in app.log_tail(200),
                         "the restart in the log")
        # Every acknowledged message once, in order, in history and at the reader.
        stored = messages(await history(sender, room))
        assert [e["id"] for e in stored] == [e["id"] for e in acked]
        got = messages(await events_until(sock, "after 9"))
        assert [e["id"] for e in got] == [e["id"] for e in acked]
        print(f"sends succeeded again {back:.1f} s after the kill")
        sock.close()
        for client in (reader, sender):
            client.close()


@pytest.mark.gen_test(timeout=180)
async def test_a_killed_app_takes_its_mongod_along_and_restarts_on_the_same_data(tmp_path):
    async with running(AppProcess(tmp_path / "app")) as app:
        sender = await user(app, unique("sender"))
        room = unique("kept")
        first = await send_surely(sender, room, "kept", time.monotonic() + 30)
        sender.close()
        mongod = mongod_of(app)
        app.kill()
        # Sent SIGTERM as its parent died: it shuts down cleanly, releasing the data dir.
        await eventually(lambda: not Path(f"/proc/{mongod}").exists()
                         or "Z" in Path(f"/proc/{mongod}/stat").read_text().split()[2],
                         "the orphaned mongod to exit", timeout=30)
        await asyncio.to_thread(app.start)
        again = await user(app, unique("again"))
        assert [e["id"] for e in messages(await history(again, room))] == [first["id"]]
        again.close()


class DyingMongo:
    """An EmbeddedMongo whose mongod dies again at once, every time it is started."""

    pid, exit_status, logpath, uri = 1234, 100, "mongod.log", "mongodb://nowhere"

    def __init__(self) -> None:
        self.starts: list[float] = []

    def is_running(self) -> bool:
        return False

    def start(self) -> str:
        self.starts.append(time.monotonic())
        raise RuntimeError("mongod exited with status 100")


def test_the_watchdog_backs_off_then_gives_up_on_a_mongod_that_keeps_dying(monkeypatch):
    from chatapp import watchdog as module

    monkeypatch.setattr(module, "WATCH_INTERVAL", 0.01)
    monkeypatch.setattr(module, "BACKOFF_FIRST", 0.05)
    dying = DyingMongo()
    reasons: list[str] = []
    watchdog = module.Watchdog(dying, reasons.append)  # type: ignore[arg-type]  # a stand-in
    watchdog.start()
    watchdog.join(timeout=30)
    assert reasons and "giving up" in reasons[0], reasons
    assert len(dying.starts) == module.MAX_RESTARTS
    pauses = [b - a for a, b in itertools.pairwise(dying.starts)]
    assert all(later > earlier for earlier, later in itertools.pairwise(pauses)), pauses
