"""The per-address caps hold across the processes of a cluster (issue 13): connections per
address (``limits.SharedConnectionLimits``, counts shared every ``SHARE_SECONDS``) and new
sessions per address (a token bucket per address in MongoDB).

Clients come from made-up addresses through ``X-Real-IP`` (the servers trust 127.0.0.1 as a
proxy). In-process, the servers share their counts only when the test says so
(``SHARE_SECONDS`` patched to an hour, then ``limits.refresh()``), so that what each knows is
the test's choice, not the clock's. The real processes share every second as deployed; the
one timed wait is the killed process's lease, bounded by the time ``limits`` states.
"""

from __future__ import annotations

import time

import pytest

import chatapp.limits
from chatapp.limits import LEASE_SECONDS, SHARE_SECONDS
from tests.harness import WAIT_SECONDS, ChatServer, Client, Socket
from tests.procs import AppProcess, running
from tests.steps import ROOM, eventually, user
from tests.test_cluster import cluster

X, Y = "203.0.113.7", "198.51.100.9"
# Margin over the stated time for a loaded machine (process start, event-loop delays).
SLACK_SECONDS = 5.0


async def connect_from(client: Client, address: str) -> Socket | None:
    """A WebSocket from ``address``: the open socket, or None if it was refused because the
    address holds too many connections."""
    sock = await client.ws(ROOM, headers={"X-Real-IP": address})
    frame = await sock.next()
    if frame["type"] == "error":
        assert frame["error"] == "too_many_connections", frame
        await sock.closed_with()
        return None
    return sock


@pytest.fixture
def by_hand(monkeypatch):
    """In-process servers share their connection counts only in ``shared``."""
    monkeypatch.setattr(chatapp.limits, "SHARE_SECONDS", 3600.0)


async def shared(*servers: ChatServer) -> None:
    """Every server has published what it holds now and read what all the others hold."""
    for srv in (*servers, servers[0]):
        assert await srv.chat.limits.refresh()


async def new_session(srv: ChatServer, nick: str, address: str) -> tuple[int, dict]:
    return await srv.client().post_json(
        "/api/session", {"nick": nick}, headers={"X-Real-IP": address})


@pytest.mark.gen_test(timeout=90)
async def test_an_address_is_capped_across_two_servers_at_the_cap_not_twice_it(
    servers, by_hand
):
    a, b = await cluster(servers, 2, max_connections_per_ip=4)
    await shared(a, b)  # each knows the other is there
    on_a, on_b = await user(a, "alice"), await user(b, "bob")
    held = []
    for client in (on_a, on_b, on_a, on_b):
        sock = await connect_from(client, X)
        assert sock is not None
        held.append(sock)
    # Before either knows of the other's two: each has had its share of the headroom, half.
    assert await connect_from(on_a, X) is None
    await shared(a, b)
    # Two of X's on each server, under the cap alone; together at it: refused on both.
    for client in (on_a, on_b):
        assert await connect_from(client, X) is None
    # Another address is unaffected: it has all four of its own.
    others = [await connect_from(client, Y) for client in (on_a, on_b, on_a, on_b)]
    assert None not in others
    # One of X's closes on A: room for one more, on the other server; then none again.
    held[0].close()
    await eventually(lambda: a.chat.limits.address_connections(X) == 1, "the socket released")
    await shared(a, b)
    assert await connect_from(on_b, X) is not None
    await shared(a, b)
    assert await connect_from(on_a, X) is None
    assert await connect_from(on_b, X) is None
    assert [srv.chat.limits.address_connections(X) for srv in (a, b)] == [1, 3]
    # B stops cleanly: its connections stop counting at once, not when its lease would end.
    await b.stop()
    await shared(a)
    assert await connect_from(on_a, X) is not None


@pytest.mark.gen_test(timeout=60)
async def test_new_sessions_per_address_are_limited_across_two_servers(servers):
    a, b = await cluster(servers, 2, new_sessions_per_ip=3)
    for i, srv in enumerate((a, b, a)):
        code, body = await new_session(srv, f"x{i}", X)
        assert code == 200, body
    # Three in all, from X: the fourth is refused on either server, and creates nothing.
    for srv, nick in ((a, "x3"), (b, "x4")):
        code, body = await new_session(srv, nick, X)
        assert (code, body["error"]) == (429, "rate_limited"), body
    code, body = await new_session(b, "x3", Y)  # another address; the nickname still free
    assert code == 200, body


@pytest.mark.gen_test(timeout=240)
async def test_a_killed_servers_connections_stop_counting_within_its_lease(mongo_uri, tmp_path):
    opts = {"cluster": True, "trusted_proxies": "127.0.0.1", "max_connections_per_ip": 2}
    async with (
        running(AppProcess(tmp_path / "a", mongo_uri, **opts)) as a,
        running(AppProcess(tmp_path / "b", mongo_uri, **opts)) as b,
    ):
        on_a, on_b = await user(a, "alice"), await user(b, "bob")
        # X fills the cap on A (by shares, a refresh apart: the other server is there).
        held: list[Socket] = []

        async def one_more_on_a() -> bool:
            sock = await connect_from(on_a, X)
            if sock is not None:
                held.append(sock)
            return len(held) == 2

        await eventually(one_more_on_a, "A holding X's two connections", 4 * WAIT_SECONDS)

        async def b_refuses() -> bool:
            sock = await connect_from(on_b, X)
            if sock is None:
                return True
            sock.close()  # B had not seen A's count yet: give it back, ask again
            return False

        await eventually(b_refuses, "B counting A's connections of X")
        assert await b_refuses()  # and it stays so

        a.kill()  # kill -9: A cannot say its connections are gone
        killed = time.monotonic()

        async def b_accepts() -> bool:
            sock = await connect_from(on_b, X)
            if sock is not None:
                sock.close()
            return sock is not None

        await eventually(b_accepts, "A's connections no longer counted",
                         LEASE_SECONDS + SHARE_SECONDS + SLACK_SECONDS)
        # Not before its lease could have run out (the wait above is no accident).
        assert time.monotonic() - killed > LEASE_SECONDS - SHARE_SECONDS - 1
