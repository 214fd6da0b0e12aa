"""One chat per database (``chatapp/registry.py``), with real ``python -m chatapp`` processes.

A second server that would split a chat refuses to start (exit status 3) and says why; two
``--cluster`` servers are one chat; a server killed with ``kill -9`` and started again at once
on the same machine is not refused; a registration from another machine blocks a local-mode
server only until it expires.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from chatapp import registry
from chatapp import store as store_module
from chatapp.store import EventStore, connect
from tests.procs import AppProcess, running
from tests.steps import events_until, new_cid, unique, user

# AppProcess raises this when the process exits before it is healthy.
EXITED = rf"chatapp exited with {registry.EXIT_REFUSED} at start"


def refused(app: AppProcess) -> None:
    """``app`` must refuse to start: exit status 3, and a message naming the way out."""
    with pytest.raises(RuntimeError, match=EXITED):
        app.start()
    assert app.proc is None


@asynccontextmanager
async def database(uri: str) -> AsyncIterator[EventStore]:
    """The store every ``python -m chatapp --mongo_uri=uri`` uses."""
    store = EventStore(connect(uri, 5.0))
    try:
        yield store
    finally:
        store.client.close()


@pytest.mark.gen_test(timeout=120)
async def test_a_second_local_server_on_one_database_refuses_to_start_and_says_why(
    mongo_uri, tmp_path
):
    async with running(AppProcess(tmp_path / "a", mongo_uri)) as first:
        second = AppProcess(tmp_path / "b", mongo_uri)
        await asyncio.to_thread(refused, second)
        log = second.log_tail(20)
        assert "refusing to start" in log and "--cluster" in log, log
        assert f"pid {first.pid}" in log, log
        # A cluster-mode server refuses too: the local one would miss its messages.
        third = AppProcess(tmp_path / "c", mongo_uri, cluster=True)
        await asyncio.to_thread(refused, third)
        assert "Restart it with --cluster" in third.log_tail(20)
        # Under --processes every worker refuses alike: the supervisor stops, not retries.
        fourth = AppProcess(tmp_path / "d", mongo_uri, processes=2)
        await asyncio.to_thread(refused, fourth)
        assert "refused to start; stopping the others" in fourth.log_tail(30)
        # And the first one still serves, alone.
        assert first.get_json("/healthz")["status"] == "ok"


@pytest.mark.gen_test(timeout=120)
async def test_two_cluster_servers_on_one_database_start_and_are_one_chat(mongo_uri, tmp_path):
    async with (
        running(AppProcess(tmp_path / "a", mongo_uri, cluster=True)) as a,
        running(AppProcess(tmp_path / "b", mongo_uri, cluster=True)) as b,
    ):
        room = unique("one")
        reader = await user(b, unique("reader"))
        sock = await reader.ws(room)
        sender = await user(a, unique("sender"))
        code, _ = await sender.send(room, "across", new_cid())
        assert code == 200
        await events_until(sock, "across")
        # While cluster servers run, a local-mode one refuses.
        await asyncio.to_thread(refused, AppProcess(tmp_path / "c", mongo_uri))
        sock.close()
        reader.close()
        sender.close()


@pytest.mark.gen_test(timeout=120)
async def test_a_server_restarted_at_once_after_kill_9_is_not_refused(mongo_uri, tmp_path):
    async with running(AppProcess(tmp_path / "a", mongo_uri)) as app:
        app.kill()  # its registration stays, live for 10 s more
        started = time.monotonic()
        await asyncio.to_thread(app.start)
        # Removed at once as a dead process of this machine, not waited out.
        assert time.monotonic() - started < registry.REGISTRATION_TTL_SECONDS
        assert "a server that is gone" in app.log_tail(20)


@pytest.mark.gen_test(timeout=120)
async def test_another_machines_registration_blocks_a_local_server_until_it_expires(
    mongo_uri, tmp_path
):
    other = f"elsewhere:{os.getpid()}:test"
    async with database(mongo_uri) as store:
        await store_module.create_server_index(store)
        await store_module.register_server(store, other, {
            "mode": "local", "machine": "another machine", "host": "elsewhere", "pid": 1,
        }, ttl=2.0)

        async def heartbeat() -> None:  # that server, alive: renewed as a server renews it
            while True:
                await asyncio.sleep(0.5)
                await store_module.renew_server(store, other, ttl=2.0)

        beating = asyncio.ensure_future(heartbeat())
        try:
            app = AppProcess(tmp_path / "a", mongo_uri)
            await asyncio.to_thread(refused, app)
            assert "pid 1 on elsewhere" in app.log_tail(20)
            # Its heartbeat stops: once expired (2 s later), it blocks nobody.
            beating.cancel()
            deadline = time.monotonic() + 30
            while any(d["_id"] == other for d in await store_module.live_servers(store)):
                assert time.monotonic() < deadline, "the registration never expired"
                await asyncio.sleep(0.2)
            async with running(app):
                assert app.get_json("/healthz")["status"] == "ok"
        finally:
            beating.cancel()
            await store_module.remove_server(store, other)


def test_a_registration_of_a_dead_process_on_this_machine_is_gone():
    machine = registry.machine_id()
    me = {"machine": machine, "pid": os.getpid(), "proc_start": registry.process_start(os.getpid())}
    assert not registry._is_gone(me, machine)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert registry._is_gone({"machine": machine, "pid": dead.pid, "proc_start": "1"}, machine)
    # A later process given the same pid (its start time differs) is not the server.
    assert registry._is_gone({**me, "proc_start": "0"}, machine)
    # Another machine's pids say nothing about this one.
    assert not registry._is_gone({**me, "machine": "elsewhere"}, machine)
    assert Path("/proc/self").is_dir()  # the test relies on /proc, as the registry does
