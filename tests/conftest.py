"""Shared fixtures: one real mongod for the whole run, and chat servers started per test.

Each test gets its own database on that mongod, so tests never see each other's rooms or
nicknames. Servers listen on 127.0.0.1, on free ports, and are stopped by the test's teardown.
"""

from __future__ import annotations

import os
import tempfile
import uuid

import pytest

from chatapp.mongod import EmbeddedMongo
from tests.harness import ServerFactory


@pytest.fixture(scope="session")
def mongod():
    """A real mongod (one-member replica set) for the whole test run.

    ``CHATAPP_TEST_MONGO_URI`` points the suite at an existing replica set instead.
    """
    uri = os.environ.get("CHATAPP_TEST_MONGO_URI")
    if uri:
        yield uri
        return
    with (
        tempfile.TemporaryDirectory(prefix="chatapp-test-mongo-") as data_dir,
        EmbeddedMongo(data_dir) as mongo,
    ):
        yield mongo


@pytest.fixture
def mongo_uri(mongod) -> str:
    return mongod if isinstance(mongod, str) else mongod.uri


@pytest.fixture
def db_name() -> str:
    return f"chatapp_test_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def servers(io_loop, mongo_uri, db_name):
    """Start chat servers inside the test: ``srv = await servers.start(history_size=5)``.

    Servers started by one test share its database, so a second ``start()`` after
    ``srv.stop()`` is a restart of the app with its history intact.
    """
    factory = ServerFactory(mongo_uri, db_name)
    yield factory
    factory.close_all(io_loop)
