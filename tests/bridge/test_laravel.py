"""Laravel queue naming and job payloads, without a PHP worker."""

from __future__ import annotations

import json

import pytest

from trackgate.bridge import BridgeConfigError, JobFactory, LaravelQueue, queue_key
from trackgate.core.redisconn import async_client


def test_queue_key_carries_the_connection_prefix() -> None:
    assert queue_key("laravel_database_", "default", hash_tag=False) == (
        "laravel_database_queues:default"
    )


def test_cluster_queue_name_gets_a_hash_tag_once() -> None:
    assert queue_key("p_", "default", hash_tag=True) == "p_queues:{default}"
    assert queue_key("p_", "{default}", hash_tag=True) == "p_queues:{default}"


def test_string_job_payload_has_every_field_laravel_reads() -> None:
    factory = JobFactory(
        "App\\Jobs\\Ingest@handle", max_tries=3, timeout=30, clock=lambda: 1700000000.9
    )

    first = json.loads(factory.payload({"a": 1}))
    second = json.loads(factory.payload({"a": 1}))

    assert first["displayName"] == "App\\Jobs\\Ingest"
    assert first["maxTries"] == 3 and first["timeout"] == 30
    assert first["attempts"] == 0 and first["createdAt"] == 1700000000
    assert first["failOnTimeout"] is False and first["data"] == {"a": 1}
    assert first["id"] != second["id"] and first["uuid"] != second["uuid"]
    assert first["id"].isalnum() and len(first["id"]) == 32


async def test_queue_split_over_two_cluster_slots_is_refused(cluster_url: str) -> None:
    client = async_client(cluster_url)
    try:
        with pytest.raises(BridgeConfigError, match="different cluster slots"):
            LaravelQueue(client, "p_queues:default", notify=True, cluster=True)
        tagged = LaravelQueue(client, "p_queues:{default}", notify=True, cluster=True)
        assert await tagged.push(["{}", "{}"]) == 2
        assert await client.llen("p_queues:{default}:notify") == 2
    finally:
        await client.aclose()
