"""Roles: an account claims a room and names its moderators; admins come from --admins; roles
live in MongoDB (every process, every restart) and end with the account."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest

from tests.harness import ChatServer, Client
from tests.steps import unique
from tests.test_accounts import delete_account, login, registered_user


async def roles(client: Client, room: str) -> dict:
    code, body = await client.get_json(f"/api/rooms/{room}/roles")
    assert code == 200, body
    return body


async def claim(client: Client, room: str) -> tuple[int, dict]:
    return await client.post_json(f"/api/rooms/{room}/claim", {})


async def moderator(client: Client, room: str, nick: str, on: bool = True) -> tuple[int, dict]:
    response = await client.request(
        "PUT" if on else "DELETE", f"/api/rooms/{room}/moderators/{quote(nick)}", ""
    )
    return response.code, json.loads(response.body)


async def accounts(srv: ChatServer, *nicks: str) -> list[Client]:
    return [await registered_user(srv, nick) for nick in nicks]


@pytest.mark.gen_test(timeout=60)
async def test_the_first_account_to_claim_a_room_owns_it(servers):
    srv = await servers.start()
    room = unique("room")
    ann, bo = await accounts(srv, "ann", "bo")
    guest = await Client(srv.url).join("cy")
    code, body = await claim(guest, room)
    assert (code, body["error"]) == (403, "not_registered")
    code, body = await claim(ann, room)
    assert (code, body) == (200, {"room": room, "owner": "ann", "moderators": [], "you": "owner"})
    code, body = await claim(bo, room)
    assert (code, body["error"]) == (409, "room_owned")
    assert (await roles(bo, room))["you"] is None
    assert (await roles(Client(srv.url), room))["owner"] == "ann"


@pytest.mark.gen_test(timeout=60)
async def test_the_owner_adds_and_removes_moderators_and_nobody_else_can(servers):
    srv = await servers.start()
    room = unique("room")
    ann, bo, cy = await accounts(srv, "ann", "bo", "cy")
    guest = await Client(srv.url).join("dee")
    assert (await claim(ann, room))[0] == 200
    code, body = await moderator(ann, room, "BO")  # any spelling names the account
    assert (code, body["moderators"]) == (200, ["bo"])
    assert (await roles(bo, room))["you"] == "moderator"
    for outsider in (bo, cy, guest):  # a moderator cannot name moderators either
        code, body = await moderator(outsider, room, "cy")
        assert (code, body["error"]) == (403, "not_owner"), body
    code, body = await moderator(ann, room, "dee")  # a guest cannot be one
    assert (code, body["error"]) == (404, "not_registered")
    code, body = await moderator(ann, room, "bo", on=False)
    assert (code, body["moderators"]) == (200, [])
    assert (await roles(bo, room))["you"] is None


@pytest.mark.gen_test(timeout=60)
async def test_an_admin_may_name_moderators_in_any_room(servers):
    srv = await servers.start()
    boss, owner, _helper = await accounts(srv, "boss", "owner", "helper")
    await srv.stop()
    srv = await servers.start(port=srv.port, admins=("Boss",))
    room = unique("room")
    assert (await claim(owner, room))[0] == 200
    assert (await roles(boss, room))["you"] == "admin"
    code, body = await moderator(boss, room, "helper")
    assert (code, body["moderators"]) == (200, ["helper"])


@pytest.mark.gen_test(timeout=90)
async def test_roles_hold_on_every_process_and_across_a_restart(servers):
    one = await servers.start()
    two = await servers.start()
    room = unique("room")
    ann = await registered_user(one, "ann")
    await registered_user(one, "bo")
    bo_on_two, code, _ = await login(two, "bo")
    assert code == 200
    assert (await claim(ann, room))[0] == 200
    assert (await moderator(ann, room, "bo"))[0] == 200
    assert (await roles(bo_on_two, room))["you"] == "moderator"
    await two.stop()
    two = await servers.start(port=two.port)
    assert await roles(bo_on_two, room) == {
        "room": room, "owner": "ann", "moderators": ["bo"], "you": "moderator"}


@pytest.mark.gen_test(timeout=60)
async def test_a_deleted_account_loses_its_rooms_and_a_new_holder_inherits_nothing(servers):
    srv = await servers.start()
    room, other = unique("room"), unique("room")
    ann, bo = await accounts(srv, "ann", "bo")
    assert (await claim(ann, room))[0] == 200
    assert (await claim(bo, other))[0] == 200
    assert (await moderator(bo, other, "ann"))[0] == 200
    assert (await delete_account(ann))[0] == 200
    assert (await roles(bo, room))["owner"] is None
    assert (await roles(bo, other))["moderators"] == []
    # The same nickname registered again is a new account: no room of the old one.
    assert (await ann.post_json("/api/account", {"password": "a new password"}))[0] == 201
    assert (await roles(ann, room))["you"] is None
    assert (await claim(ann, room))[0] == 200  # unowned again: anyone may claim it
