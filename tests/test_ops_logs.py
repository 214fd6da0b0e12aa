"""The log (``chatapp/logs.py``): ``--log_format=json`` gives one JSON object per line, and a
MongoDB outage is said once, in a line, with a short reason, not a topology dump per sweep."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import time

import pytest
from tornado.httpclient import AsyncHTTPClient

from chatapp.logs import JSONFormatter, short_reason
from chatapp.mongod import EmbeddedMongo
from tests.procs import AppProcess, running
from tests.steps import eventually, unique, user


def run_lines(app: AppProcess) -> list[str]:
    """The log lines of the app's runs, without the command lines procs.py writes."""
    return [line for line in app.log_path.read_text().splitlines()
            if line and not line.startswith("$ ")]


@pytest.mark.gen_test(timeout=60)
async def test_log_format_json_writes_one_object_per_line(mongo_uri, tmp_path):
    app = AppProcess(tmp_path / "app", mongo_uri, log_format="json")
    async with running(app):
        client = await user(app, unique("json"))
        code, _ = await client.send("room", "", "c1")  # refused: an access log line
        assert code == 400
        client.close()
    lines = run_lines(app)
    assert len(lines) >= 4, lines
    entries = [json.loads(line) for line in lines]  # each line, whole, is one object
    for entry in entries:
        assert {"ts", "level", "logger", "message"} <= entry.keys(), entry
        assert entry["ts"].endswith("Z") and entry["level"] in ("debug", "info", "warning",
                                                                 "error", "critical")
    messages = [e["message"] for e in entries]
    assert any(m.startswith("chatapp listening on") for m in messages), messages
    assert any("400 POST /api/rooms/room/messages" in m for m in messages), messages
    assert any(e["logger"] == "chatapp" and "shutting down" in e["message"] for e in entries)


def test_an_unknown_log_format_is_refused_at_start(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "chatapp", "--log_format=xml", f"--data_dir={tmp_path}"],
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "--log_format must be one of text, json" in result.stderr, result.stderr


def test_a_json_line_carries_the_traceback_and_stays_one_line():
    try:
        raise ValueError("two\nlines")
    except ValueError:
        record = logging.LogRecord("chatapp.x", logging.ERROR, __file__, 1, "failed: %s",
                                   ("a\nb",), sys.exc_info())
    line = JSONFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "failed: a\nb"
    assert entry["level"] == "error" and entry["logger"] == "chatapp.x"
    assert entry["exc_info"].startswith("Traceback") and "ValueError: two" in entry["exc_info"]


def test_a_driver_error_is_cut_to_its_first_sentence():
    dump = ("127.0.0.1:5: [Errno 111] Connection refused (configured timeouts: socketTimeoutMS:"
            " 20000.0ms), Timeout: 3.99s, Topology Description: <TopologyDescription id: 1, "
            "servers: [<ServerDescription ('127.0.0.1', 5) error=...>]>")
    assert short_reason(dump) == "127.0.0.1:5: [Errno 111] Connection refused"


@pytest.mark.gen_test(timeout=120)
async def test_a_mongodb_outage_is_logged_once_with_a_reason_and_its_end(tmp_path):
    with EmbeddedMongo(tmp_path / "mongo") as mongo:
        # A sweep every 0.5 s, each giving up after 1 s: many failures during the outage.
        app = AppProcess(tmp_path / "app", mongo.uri, grace_period=1, mongo_timeout=1)
        async with running(app):
            client = AsyncHTTPClient()
            mongo.kill()
            await eventually(lambda: "MongoDB unreachable" in app.log_tail(50),
                             "the outage in the log", timeout=30)
            # The outage, as clients see it, for several sweeps.
            down_since = time.monotonic()
            while time.monotonic() - down_since < 5:
                response = await client.fetch(app.url + "/healthz", raise_error=False)
                assert response.code == 503
            await asyncio.to_thread(mongo.start)
            await eventually(lambda: "MongoDB reachable again" in app.log_tail(50),
                             "the end of the outage in the log", timeout=30)
    lines = run_lines(app)
    text = "\n".join(lines)
    assert "Topology Description" not in text and "TopologyDescription" not in text, text
    outage = [line for line in lines if "MongoDB unreachable" in line]
    assert len(outage) == 1, outage
    # The driver's own short reason, whichever way the socket went (mongod stopping resets
    # or closes open connections; new ones are refused).
    reasons = ("Connection refused", "connection closed", "Connection reset by peer")
    assert any(reason in outage[0] for reason in reasons), outage
    assert not [line for line in lines if "sweep failed" in line], text
    back = next(line for line in lines if "MongoDB reachable again" in line)
    held = int(back.split("(")[1].split()[0])
    assert held >= 2, back  # the sweep's failures were there, and held back
