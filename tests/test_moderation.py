"""Moderation: the room's owner, a moderator or an admin mutes, kicks, bans, slows the room
and deletes any message; each action is a ``moderation`` event everyone in the room sees; a
ban holds on every process and across a restart; a kicked person's connections close.

Guests act from addresses of their own (X-Real-IP, which the test server believes), since a
guest is banned by address too and every test client comes from 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tests.harness import ChatServer, Client, Socket
from tests.steps import (
    eventually,
    new_cid,
    open_ws,
    parked_poll_response,
    start_polling,
    unique,
)
from tests.test_accounts import address, login
from tests.test_cluster import cluster
from tests.test_roles import accounts, claim, moderator


class AtAddress(Client):
    """A client whose every request and socket comes from its own address."""

    def __init__(self, base_url: str, ip: str | None = None) -> None:
        super().__init__(base_url)
        self.ip = ip or address()

    async def request(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        kw["headers"] = {"X-Real-IP": self.ip, **(kw.get("headers") or {})}
        return await super().request(method, path, body, **kw)

    async def ws(self, room: str, cursor: str | None = None, origin: str | None = None,
                 headers: dict[str, str] | None = None) -> Socket:
        return await super().ws(room, cursor, origin, {"X-Real-IP": self.ip, **(headers or {})})


async def guest(srv: ChatServer, nick: str, ip: str | None = None) -> AtAddress:
    client = AtAddress(srv.url, ip)
    await client.join(nick)
    client.nick = nick  # type: ignore[attr-defined]
    return client


async def moderate(client: Client, room: str, **fields: Any) -> tuple[int, dict]:
    return await client.post_json(f"/api/rooms/{room}/moderation", fields)


async def owned_room(srv: ChatServer, *mods: str) -> tuple[str, list[Client]]:
    """A room owned by the account "owner", with accounts ``mods`` as its moderators."""
    room = unique("room")
    people = await accounts(srv, "owner", *mods)
    assert (await claim(people[0], room))[0] == 200
    for nick in mods:
        assert (await moderator(people[0], room, nick))[0] == 200
    return room, people


async def say(client: Client, room: str, text: str = "hi") -> tuple[int, dict]:
    return await client.send(room, text, new_cid())


async def moderation_event(sock: Socket, action: str) -> dict[str, Any]:
    while True:
        event = (await sock.next("event"))["event"]
        if event["type"] == "moderation" and event["action"] == action:
            return event


@pytest.mark.gen_test(timeout=60)
async def test_only_the_owner_moderators_and_admins_may_moderate(servers):
    srv = await servers.start()
    room, (owner, mod, other) = await owned_room(srv, "mod", "other")
    assert (await moderator(owner, room, "other", False))[0] == 200
    victim = await guest(srv, "vic")
    for client in (other, victim):
        code, body = await moderate(client, room, action="mute", subject="owner")
        assert (code, body["error"]) == (403, "not_moderator")
    assert (await say(owner, room))[0] == 200  # nothing changed
    for client in (owner, mod):
        code, body = await moderate(client, room, action="kick", subject="vic")
        assert code == 200, body
    code, body = await moderate(owner, room, action="shout", subject="vic")
    assert (code, body["error"]) == (400, "bad_moderation")
    code, body = await moderate(owner, room, action="mute", subject="vic", seconds=-5)
    assert (code, body["error"]) == (400, "bad_moderation")
    code, body = await moderate(owner, room, action="mute", subject="vic", reason="x" * 201)
    assert (code, body["error"]) == (400, "bad_moderation")
    assert (await say(victim, room))[0] == 200  # the refused mutes did not mute


@pytest.mark.gen_test(timeout=60)
async def test_a_mute_is_an_event_everyone_sees_and_stops_sending_editing_reacting(servers):
    srv = await servers.start()
    room, (owner,) = await owned_room(srv)
    victim = await guest(srv, "vic")
    code, body = await say(victim, room, "before")
    mine = body["event"]["id"]
    watcher, _, _ = await open_ws(await guest(srv, "watcher"), room)
    code, body = await moderate(owner, room, action="mute", subject="vic", seconds=600,
                                reason="flood")
    assert code == 200, body
    event = await moderation_event(watcher, "mute")
    assert event == body["event"]
    assert (event["nick"], event["subject"], event["seconds"], event["reason"]) == (
        "owner", "vic", 600, "flood")
    assert 599 < event["until"] - event["ts"] <= 600
    code, body = await say(victim, room, "after")
    assert (code, body["error"]) == (403, "muted")
    assert 590 <= body["seconds_left"] <= 600
    response = await victim.request("PATCH", f"/api/rooms/{room}/messages/{mine}",
                                    {"text": "edited", "client_id": new_cid()})
    assert (response.code, json.loads(response.body)["error"]) == (403, "muted")
    code, body = await victim.post_json(f"/api/rooms/{room}/messages/{mine}/reactions",
                                        {"emoji": "👍", "on": True, "client_id": new_cid()})
    assert (code, body["error"]) == (403, "muted")
    # The look-alike spelling is the same person.
    assert (await say(owner, room))[0] == 200
    code, body = await moderate(owner, room, action="unmute", subject="VIC")
    assert code == 200, body
    assert (await say(victim, room, "free again"))[0] == 200


@pytest.mark.gen_test(timeout=60)
async def test_a_mute_over_the_websocket_frame_and_its_refusal_there(servers):
    srv = await servers.start()
    room, (owner,) = await owned_room(srv)
    victim = await guest(srv, "vic")
    mod_sock, _, _ = await open_ws(owner, room)
    vic_sock, _, _ = await open_ws(victim, room)
    mod_sock.conn.write_message(json.dumps({"type": "moderate", "action": "mute",
                                            "subject": "vic", "client_id": "m1"}))
    ack = await mod_sock.next("ack")
    assert ack["event"]["action"] == "mute" and "until" not in ack["event"]  # for good
    await moderation_event(vic_sock, "mute")
    vic_sock.send("still here?", "c1")
    error = await vic_sock.next("error")
    assert (error["error"], error["client_id"], error["seconds_left"]) == ("muted", "c1", None)
    vic_sock.conn.write_message(json.dumps({"type": "moderate", "action": "unmute",
                                            "subject": "vic", "client_id": "m2"}))
    assert (await vic_sock.next("error"))["error"] == "not_moderator"


@pytest.mark.gen_test(timeout=60)
async def test_a_kick_closes_the_sockets_and_ends_the_parked_polls_and_they_may_return(servers):
    srv = await servers.start()
    room, (owner,) = await owned_room(srv)
    victim = await guest(srv, "vic")
    sock, _, _ = await open_ws(victim, room)
    cursor = await start_polling(victim, room)
    parked = await parked_poll_response(srv, victim, cursor, room)
    code, body = await moderate(owner, room, action="kick", subject="vic", reason="calm down")
    assert code == 200, body
    error = await sock.next("error")
    assert error["error"] == "kicked"
    assert await sock.closed_with() == 4001
    code, body = await parked
    assert (code, body["error"]) == (403, "kicked")
    back, _, _ = await open_ws(victim, room)  # a kick is not a ban
    assert (await say(victim, room, "back"))[0] == 200
    back.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_ban_closes_and_refuses_every_path_by_skeleton_and_by_address(servers):
    srv = await servers.start()
    room, (owner,) = await owned_room(srv)
    victim = await guest(srv, "bob")
    sock, _, _ = await open_ws(victim, room)  # the server sees its address here
    bystander = await guest(srv, "amy")
    code, body = await moderate(owner, room, action="ban", subject="bob", seconds=3600)
    assert code == 200, body
    assert (await sock.next("error"))["error"] == "banned"
    assert await sock.closed_with() == 4003
    code, body = await say(victim, room)
    assert (code, body["error"]) == (403, "banned")
    assert 3590 <= body["seconds_left"] <= 3600
    code, body = await victim.get_json(f"/api/rooms/{room}/history")
    assert (code, body["error"]) == (403, "banned")
    code, body = await victim.poll(room)
    assert (code, body["error"]) == (403, "banned")
    response = await victim.request("GET", f"/r/{room}")
    assert response.code == 403 and b"banned" in response.body
    with pytest.raises(Exception) as refused:
        await victim.ws(room)
    assert getattr(refused.value, "code", None) == 403
    # Another nickname from the same address is banned too.
    same_place = await guest(srv, "robert", victim.ip)
    assert (await say(same_place, room))[0] == 403
    # Once "bob" has logged out, its look-alike (full-width, upper case) is free to take,
    # from another address, and banned all the same.
    assert (await victim.request("DELETE", "/api/session")).code == 204
    look_alike = await guest(srv, "\uff22\uff2f\uff22")  # "ＢＯＢ"
    assert (await say(look_alike, room))[0] == 403
    victim = look_alike
    assert (await say(bystander, room))[0] == 200  # others are not touched
    assert (await say(victim, unique("room")))[0] == 200  # other rooms neither
    code, body = await moderate(owner, room, action="unban", subject="bob")
    assert code == 200, body
    assert (await say(victim, room, "forgiven"))[0] == 200


@pytest.mark.gen_test(timeout=60)
async def test_slow_mode_allows_one_message_per_interval_per_person(servers):
    srv = await servers.start()
    room, (owner,) = await owned_room(srv)
    an, bo = await guest(srv, "an"), await guest(srv, "bo")
    code, body = await moderate(owner, room, action="slow_mode", seconds=120)
    assert (code, body["event"]["seconds"]) == (200, 120)
    assert (await say(an, room))[0] == 200
    code, body = await say(an, room)
    assert (code, body["error"]) == (429, "slow_mode")
    assert 110 <= body["seconds_left"] <= 120
    assert (await say(bo, room))[0] == 200  # per person
    code, body = await moderate(owner, room, action="slow_mode", seconds=0)
    assert code == 200, body
    assert (await say(an, room))[0] == 200
    code, body = await moderate(owner, room, action="slow_mode", seconds=10**6)
    assert (code, body["error"]) == (400, "bad_moderation")


@pytest.mark.gen_test(timeout=60)
async def test_a_moderator_deletes_any_message_through_the_delete_path(servers):
    srv = await servers.start()
    room, (_owner, mod) = await owned_room(srv, "mod")
    victim = await guest(srv, "vic")
    code, body = await say(victim, room, "rude words")
    target = body["event"]["id"]
    bystander = await guest(srv, "by")
    response = await bystander.request("DELETE", f"/api/rooms/{room}/messages/{target}")
    assert (response.code, json.loads(response.body)["error"]) == (403, "not_yours")
    code, body = await moderate(mod, room, action="delete", target=target, reason="rude")
    assert (code, body["event"]["target"]) == (200, target)
    code, body = await victim.get_json(f"/api/rooms/{room}/history")
    shown = {e["id"]: e for e in body["events"]}
    assert shown[target] == {"id": target, "room": room, "type": "message", "nick": "vic",
                             "ts": shown[target]["ts"], "deleted": True}
    assert any(e["type"] == "moderation" and e["action"] == "delete" for e in body["events"])
    code, body = await moderate(mod, room, action="delete", target="9" * 20)
    assert code in (400, 404), body


@pytest.mark.gen_test(timeout=60)
async def test_a_moderators_plain_delete_is_a_moderation_delete(servers):
    """The contract lets a moderator DELETE anyone's message; the log still says that a
    moderator did it, as through the moderation endpoint."""
    srv = await servers.start()
    room, (_owner, mod) = await owned_room(srv, "mod")
    victim = await guest(srv, "vic")
    _, body = await say(victim, room, "rude words")
    target = body["event"]["id"]
    response = await mod.request("DELETE", f"/api/rooms/{room}/messages/{target}")
    assert response.code == 200, response.body
    deleted = json.loads(response.body)["event"]
    assert (deleted["type"], deleted["target"]) == ("delete", target)
    again = await mod.request("DELETE", f"/api/rooms/{room}/messages/{target}")
    assert json.loads(again.body)["event"]["id"] == deleted["id"]  # idempotent
    _, body = await victim.get_json(f"/api/rooms/{room}/history")
    shown = {e["id"]: e for e in body["events"]}
    assert shown[target]["deleted"] is True and "text" not in shown[target]
    actions = [e for e in body["events"] if e["type"] == "moderation"]
    assert [(e["action"], e["target"]) for e in actions] == [("delete", target)]


@pytest.mark.gen_test(timeout=90)
async def test_slow_mode_holds_across_cluster_processes(servers):
    """A person whose sends reach two processes (round robin, two tabs) still gets one
    message per interval, not one on each."""
    a, b = await cluster(servers, 2)
    room, (owner,) = await owned_room(a)
    an_a = await guest(a, "an")
    an_b = AtAddress(b.url, an_a.ip)
    an_b.cookies = dict(an_a.cookies)
    bo_b = await guest(b, "bo")
    code, body = await moderate(owner, room, action="slow_mode", seconds=120)
    assert code == 200, body
    assert (await say(an_a, room, "first"))[0] == 200
    code, body = await say(an_b, room, "second, through the other process")
    assert (code, body["error"]) == (429, "slow_mode"), body
    assert 110 <= body["seconds_left"] <= 120
    assert (await say(bo_b, room, "someone else"))[0] == 200  # per person
    _, body = await bo_b.get_json(f"/api/rooms/{room}/history")
    texts = [e.get("text") for e in body["events"] if e["type"] == "message"]
    assert "second, through the other process" not in texts


@pytest.mark.gen_test(timeout=90)
async def test_a_ban_holds_on_both_cluster_processes_and_across_a_restart(servers):
    a, b = await cluster(servers, 2)
    room, (owner,) = await owned_room(a)
    victim_a = await guest(a, "vic")
    victim_b = AtAddress(b.url, victim_a.ip)
    victim_b.cookies = dict(victim_a.cookies)
    sock_b, _, _ = await open_ws(victim_b, room)
    code, body = await moderate(owner, room, action="ban", subject="vic", reason="spam")
    assert code == 200, body
    # The ban was made on A; B closes its own socket of the subject, at once.
    assert (await sock_b.next("error"))["error"] == "banned"
    assert await sock_b.closed_with() == 4003
    code, body = await say(victim_b, room)
    assert (code, body["error"], body["seconds_left"]) == (403, "banned", None)
    await b.stop()
    b = await servers.start(port=b.port, cluster=True)
    await asyncio.wait_for(b.chat.feed.ready.wait(), 10)
    code, body = await say(victim_b, room)
    assert (code, body["error"]) == (403, "banned")
    owner_b, code, _ = await login(b, "owner")
    assert code == 200
    code, body = await moderate(owner_b, room, action="unban", subject="vic")
    assert code == 200, body
    assert (await say(victim_a, room, "back on A"))[0] == 200


@pytest.mark.gen_test(timeout=60)
async def test_a_timed_mute_runs_out_by_itself(servers):
    srv = await servers.start()
    room, (owner,) = await owned_room(srv)
    victim = await guest(srv, "vic")
    code, body = await moderate(owner, room, action="mute", subject="vic", seconds=1)
    assert code == 200, body
    code, body = await say(victim, room)
    assert (code, body["error"], body["seconds_left"]) == (403, "muted", 1)

    async def speaks() -> bool:
        return (await say(victim, room, "free"))[0] == 200

    await eventually(speaks, "the mute to run out")


@pytest.mark.gen_test(timeout=60)
async def test_an_admin_moderates_a_room_it_holds_no_other_role_in(servers):
    srv = await servers.start()
    room, (_owner, boss) = await owned_room(srv, "boss")
    assert (await moderator(_owner, room, "boss", False))[0] == 200
    await srv.stop()
    srv = await servers.start(port=srv.port, admins=("Boss",))
    victim = await guest(srv, "vic")
    code, body = await moderate(boss, room, action="mute", subject="vic")
    assert (code, body["event"]["nick"]) == (200, "boss")
    assert (await say(victim, room))[0] == 403
