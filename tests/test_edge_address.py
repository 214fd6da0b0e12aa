"""Addresses, schemes and host names at the edge (issue 13): ``--trusted_proxies``, the full
WebSocket Origin, ``--hosts``. Every test asks the server over the wire, as a client behind
(or pretending to be behind) a proxy would."""

from __future__ import annotations

import subprocess
import sys

import pytest
from tornado.httpclient import HTTPClientError

from tests.harness import Client
from tests.procs import ROOT
from tests.steps import ROOM, open_ws, user

ELSEWHERE, AND_ELSEWHERE = "203.0.113.7", "198.51.100.9"


async def new_session(client: Client, nick: str, **headers: str) -> tuple[int, dict]:
    return await client.post_json("/api/session", {"nick": nick}, headers=headers)


@pytest.mark.gen_test(timeout=60)
async def test_an_untrusted_peers_x_real_ip_is_ignored_for_per_address_limits(servers):
    srv = await servers.start(trusted_proxies=(), new_sessions_per_ip=1)
    code, body = await new_session(srv.client(), "an", **{"X-Real-IP": ELSEWHERE})
    assert code == 200, body
    # Another address claimed in the header: still 127.0.0.1, which has used its one session.
    code, body = await new_session(srv.client(), "bo", **{"X-Real-IP": AND_ELSEWHERE})
    assert (code, body["error"]) == (429, "rate_limited"), body
    code, body = await new_session(srv.client(), "cy", **{"X-Forwarded-For": AND_ELSEWHERE})
    assert (code, body["error"]) == (429, "rate_limited"), body


@pytest.mark.gen_test(timeout=60)
async def test_a_trusted_proxys_headers_name_the_client(servers):
    srv = await servers.start(trusted_proxies=("127.0.0.0/8",), new_sessions_per_ip=1)
    assert (await new_session(srv.client(), "an", **{"X-Real-IP": ELSEWHERE}))[0] == 200
    assert (await new_session(srv.client(), "bo", **{"X-Real-IP": AND_ELSEWHERE}))[0] == 200
    code, body = await new_session(srv.client(), "cy", **{"X-Real-IP": ELSEWHERE})
    assert (code, body["error"]) == (429, "rate_limited"), body
    # X-Forwarded-For: the rightmost hop that is not a trusted proxy; what the client wrote
    # to the left of it (a forged first hop) does not count.
    code, body = await new_session(
        srv.client(), "dy", **{"X-Forwarded-For": f"192.0.2.1, {AND_ELSEWHERE}, 127.0.0.5"})
    assert (code, body["error"]) == (429, "rate_limited"), body
    code, body = await new_session(srv.client(), "ed", **{"X-Forwarded-For": "192.0.2.1"})
    assert code == 200, body


def secure_cookie(response) -> bool:
    return any("chatapp_session" in h and "Secure" in h
               for h in response.headers.get_list("Set-Cookie"))


@pytest.mark.gen_test(timeout=60)
async def test_x_forwarded_proto_is_believed_only_from_a_trusted_proxy(servers):
    https = {"X-Forwarded-Proto": "https"}
    plain = await servers.start(trusted_proxies=())
    response = await plain.client().request("POST", "/api/session", {"nick": "an"},
                                            headers=https)
    assert response.code == 200 and not secure_cookie(response)
    proxied = await servers.start(trusted_proxies=("127.0.0.1",))
    response = await proxied.client().request("POST", "/api/session", {"nick": "bo"},
                                              headers=https)
    assert response.code == 200 and secure_cookie(response)


@pytest.mark.gen_test(timeout=60)
async def test_the_websocket_origin_must_match_scheme_host_and_port(servers):
    srv = await servers.start(trusted_proxies=(), allowed_origins=("https://Friend.example:443/",))
    an = await user(srv, "an")
    here = f"127.0.0.1:{srv.port}"
    for origin in (f"https://{here}", f"ws://{here}", "null", f"file://{here}", "garbage"):
        with pytest.raises(HTTPClientError) as refused:
            await an.ws(ROOM, origin=origin)
        assert refused.value.code == 403, origin
    # The allowed origin as a browser writes it, and this server's own, in another case.
    for origin in ("https://friend.example", f"http://127.0.0.1:{srv.port}".upper()):
        sock, _, nicks = await open_ws(an, origin=origin)
        assert nicks == ["an"], origin
        sock.close()
    # X-Forwarded-Proto from an untrusted peer does not make https:// this server's origin.
    with pytest.raises(HTTPClientError) as refused:
        await an.ws(ROOM, origin=f"https://{here}", headers={"X-Forwarded-Proto": "https"})
    assert refused.value.code == 403


@pytest.mark.gen_test(timeout=60)
async def test_behind_a_trusted_https_proxy_only_the_https_origin_opens(servers):
    srv = await servers.start(trusted_proxies=("127.0.0.1",))
    an = await user(srv, "an")
    proto = {"X-Forwarded-Proto": "https"}
    here = f"127.0.0.1:{srv.port}"
    with pytest.raises(HTTPClientError) as refused:
        await an.ws(ROOM, origin=f"http://{here}", headers=proto)
    assert refused.value.code == 403
    sock = await an.ws(ROOM, origin=f"https://{here}", headers=proto)
    assert (await sock.next("presence"))["nicks"] == ["an"]
    sock.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_host_outside_hosts_is_refused_on_every_path(servers):
    srv = await servers.start(hosts=("chat.example", "Other.Example"))
    good, evil = f"chat.example:{srv.port}", f"rebound.example:{srv.port}"
    client = srv.client()
    for path in ("/", "/r/lobby", "/api/session", "/api/rooms/lobby/history",
                 "/api/rooms/lobby/ws", "/static/chat.js", "/healthz", "/nowhere"):
        code, body = await client.get_json(path, headers={"Host": evil})
        assert code == 400 and body["error"] == "bad_host", (path, code, body)
        assert "rebound.example" in body["message"]
    code, body = await client.post_json("/api/session", {"nick": "an"}, headers={"Host": evil},
                                        xsrf=False)
    assert (code, body["error"]) == (400, "bad_host")
    assert "_xsrf" not in client.cookies  # no answer to the wrong host set anything
    assert (await client.get_json("/api/session", headers={"Host": good}))[0] == 200
    assert (await client.get_json("/healthz", headers={"Host": "other.example"}))[0] == 200
    # The refused POST created nothing: the nickname is still free.
    code, body = await client.post_json("/api/session", {"nick": "an"}, headers={"Host": good})
    assert code == 200, body


def test_a_bad_trusted_proxies_value_stops_the_server_at_start_with_a_clear_message():
    done = subprocess.run(
        [sys.executable, "-m", "chatapp", "--trusted_proxies=127.0.0.1,proxy.example"],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2, done
    assert "proxy.example" in done.stderr and "trusted_proxies" in done.stderr, done.stderr
