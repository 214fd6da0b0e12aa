"""permessage-deflate in the three engines: each offers it, accepts the server's answer (with
``client_no_context_takeover``, which none of them asked for), and reads compressed frames.

The chat tests of ``test_engines.py`` already run over compressed sockets (compression is on
by default); this one checks, from inside each page, that compression was in fact agreed and
that a message sent over the page's own socket comes back intact on a second socket.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.e2e.conftest import AppServer, unique
from tests.e2e.test_engines import engine, pool, web_people  # noqa: F401 -- fixtures

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.filterwarnings("ignore:setting remote_server_addr:DeprecationWarning"),
]

TEXT = "<b>squeezed</b> & مرحبا 😀"

# Opens a second socket to the room from the page; resolves with its negotiated extensions and
# the first message event whose text is arguments[1] (sent over the page's own socket).
OPEN_AND_WAIT = """
var done = arguments[arguments.length - 1], text = arguments[1];
var ws = new WebSocket(location.origin.replace(/^http/, 'ws') + '/api/rooms/' +
                       encodeURIComponent(arguments[0]) + '/ws');
ws.onopen = function () {
  var page = new WebSocket(ws.url);
  page.onopen = function () {
    page.send(JSON.stringify({type: 'send', text: text, client_id: 'e2e-deflate'}));
  };
};
ws.onmessage = function (m) {
  var frame = JSON.parse(m.data);
  if (frame.type === 'event' && frame.event.text === text) {
    done(JSON.stringify({extensions: ws.extensions, event: frame.event}));
  }
};
ws.onerror = function () { done(JSON.stringify({error: 'socket error'})); };
"""


def test_each_engine_agrees_to_compression_and_reads_it(
        app_server: AppServer, web_people: Any) -> None:  # noqa: F811 -- the fixture
    room = unique("room")
    maya = web_people(app_server, "maya", room).join()
    maya.driver.set_script_timeout(30)
    got = json.loads(maya.driver.execute_async_script(OPEN_AND_WAIT, room, TEXT))
    # Chromium and WebKit show the whole answer; Firefox only the extension's name.
    assert got.get("extensions") in ("permessage-deflate; client_no_context_takeover",
                                     "permessage-deflate"), got
    assert got["event"]["text"] == TEXT
    assert got["event"]["nick"] == maya.nick
