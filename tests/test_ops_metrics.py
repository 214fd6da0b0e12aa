"""The Prometheus endpoint (``--metrics_port``, ``chatapp/metrics.py``), scraped from a real
``python -m chatapp``, alone and under ``--processes=2`` (multiprocess mode: any worker's
answer sums both).

What a client did (a WebSocket reader, a parked long-poll, five sends, one refused) shows in
the figures an operator reads; the endpoint is on its own loopback port, not the public one.
"""

from __future__ import annotations

import asyncio
import glob
import os
import tempfile
from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from tests.harness import free_port
from tests.procs import AppProcess, running
from tests.steps import events_until, eventually, new_cid, start_polling, unique, user

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(app: AppProcess, method: str = "GET") -> tuple[int, str, Samples]:
    port = app.options["metrics_port"]
    response = await AsyncHTTPClient().fetch(
        HTTPRequest(f"http://127.0.0.1:{port}/metrics", method=method), raise_error=False)
    text = response.body.decode() if response.body else ""
    samples: Samples = {}
    if method == "GET" and response.code == 200:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return response.code, response.headers.get("Content-Type", ""), samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample's value, 0 if absent (a counter nobody touched yet)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str, where: Callable[[dict[str, str]], bool] = bool) -> float:
    return sum(v for (n, labels), v in samples.items()
               if n == name and (where is bool or where(dict(labels))))


def metrics_dirs() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "chatapp-metrics-*")))


@pytest.mark.parametrize("processes", [1, 2])
@pytest.mark.gen_test(timeout=120)
async def test_a_scrape_shows_connections_sends_deliveries_latency_and_errors(
    mongo_uri, tmp_path, processes
):
    dirs_before = metrics_dirs()
    app = AppProcess(tmp_path / "app", mongo_uri, processes=processes, metrics_port=free_port())
    async with running(app):
        room = unique("metrics")
        reader = await user(app, unique("reader"))
        sock = await reader.ws(room)
        sender = await user(app, unique("sender"))
        for i in range(5):
            code, _ = await sender.send(room, f"m{i}", new_cid())
            assert code == 200
        code, body = await sender.send(room, "", new_cid())
        assert (code, body["error"]) == (400, "bad_text")
        await events_until(sock, "m4")
        # A long-poll from the latest id (its own join's) parks: it waits for the next event.
        poller = await user(app, unique("poller"))
        parked = asyncio.ensure_future(poller.poll(room, await start_polling(poller, room)))

        async def parked_shows() -> bool:
            return value((await scrape(app))[2], "chatapp_parked_polls") == 1

        await eventually(parked_shows, "the parked poll in the metrics")
        code, content_type, samples = await scrape(app)
        assert code == 200 and content_type.startswith("text/plain"), (code, content_type)
        assert value(samples, "chatapp_events_stored_total", kind="message") == 5
        assert value(samples, "chatapp_events_stored_total", kind="join") >= 1
        assert value(samples, "chatapp_errors_total", code="bad_text") == 1
        assert value(samples, "chatapp_connections", transport="websocket") == 1
        assert value(samples, "chatapp_connections", transport="longpoll") == 1
        assert value(samples, "chatapp_rooms_in_memory") >= 1
        # The reader got 5 messages: at least 5 deliveries, counted per batch.
        assert value(samples, "chatapp_deliveries_total") >= 5
        assert value(samples, "chatapp_send_seconds_count") == 6  # the refusal included
        assert 0 < value(samples, "chatapp_send_seconds_sum") < 6 * 10
        assert value(samples, "chatapp_store_seconds_count", command="commitTransaction") >= 5
        assert total(samples, "chatapp_store_seconds_count",
                     lambda labels: labels.get("command") == "getMore") == 0
        if processes > 1:
            lag = value(samples, "chatapp_feed_lag_seconds")
            assert 0 <= lag < 60, lag
            assert len(metrics_dirs() - dirs_before) == 1  # its own, while it runs
        # HEAD answers as GET does; the public port has no metrics.
        assert (await scrape(app, "HEAD"))[0] == 200
        code, _ = await reader.get_json("/metrics")
        assert code == 404
        await sender.send(room, "wake", new_cid())
        code, _ = await parked
        assert code == 200
        sock.close()
        for client in (reader, sender, poller):
            client.close()
    assert metrics_dirs() - dirs_before == set(), "the metrics directory was left behind"


@pytest.mark.gen_test(timeout=60)
async def test_no_metrics_port_no_endpoint(mongo_uri, tmp_path):
    port = free_port()
    async with running(AppProcess(tmp_path / "app", mongo_uri)) as app:
        with pytest.raises(OSError):
            await AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}/metrics")
        code, _ = await (await user(app, unique("x"))).get_json("/metrics")
        assert code == 404
