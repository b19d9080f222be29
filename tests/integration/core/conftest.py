"""Fixtures for the pool tests: a Redis URL, a key namespace per test, private servers.

`redis_url` comes from `tests/conftest.py`: the session's embedded Valkey, or
KAMI_TEST_REDIS_URL.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from engine import Pool
from tests.integration.core.servers import Server, make_cluster, server_binary


def _delete_namespace(url: str, namespace: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{{{namespace}:*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])
    finally:
        client.close()


@pytest.fixture
def namespace(redis_url: str, run_id: str) -> Iterator[str]:
    """A key namespace of this test alone; its keys are deleted afterwards."""
    ns = f"kt-{run_id}-{uuid.uuid4().hex[:8]}"
    yield ns
    _delete_namespace(redis_url, ns)


@pytest.fixture
def pool(redis_url: str, namespace: str) -> Pool:
    return Pool(redis_url, namespace=namespace)


@pytest.fixture
def binary() -> str:
    found = server_binary()
    if found is None:
        pytest.skip("no redis-server/valkey-server binary on this machine")
    return found


@pytest.fixture
def private_server(binary: str, tmp_path: Path) -> Iterator[Server]:
    """A server process of this test alone, which it may kill -9 and restart."""
    server = Server(binary, tmp_path)
    server.start()
    yield server
    server.kill()


@pytest.fixture(scope="module")
def cluster_urls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """Seed URLs of a three-node Redis Cluster started for this module."""
    found = server_binary()
    if found is None:
        pytest.skip("no redis-server/valkey-server binary on this machine")
    workdir = tmp_path_factory.mktemp("cluster")
    nodes = [Server(found, workdir, cluster=True) for _ in range(3)]
    try:
        for node in nodes:
            node.start()
        make_cluster(nodes)
        yield [n.url for n in nodes]
    finally:
        for node in nodes:
            node.kill()
