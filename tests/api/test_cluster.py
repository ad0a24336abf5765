"""The API and the command store on a real three-node Redis Cluster.

Device keys spread over the nodes; every script and transaction must stay
inside one device's slot and every cross-device read must go through
non-transactional pipelines. These tests fail with CROSSSLOT or MOVED
errors if either slips.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import redis.cluster

from tests.api.conftest import (
    COMMANDS,
    COMMANDS_TOKEN,
    KEYS,
    client_for,
    seed_device,
    seed_record,
)
from tests.support.cluster import RedisClusterProcs, redis_cluster
from trackgate.api.settings import ApiSettings
from trackgate.core.commands import Claim, CommandState, CommandStore, NewCommand
from trackgate.core.redisconn import async_client, sync_client

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.slow]

IMEIS = [f"3563070424410{n:02d}" for n in range(12)]
NOW = 1_764_780_000_000


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterProcs]:
    with redis_cluster() as procs:
        yield procs


@pytest.fixture
def cluster_url(cluster: RedisClusterProcs) -> Iterator[str]:
    client = sync_client(cluster.url, decode_responses=True)
    client.flushall()
    for n, imei in enumerate(IMEIS):
        seed_device(client, imei, seen_at=NOW - n * 10, connected=n % 2 == 0)
        seed_record(client, imei, at=NOW + n)
    client.close()
    yield cluster.url


@pytest.fixture
async def api(cluster_url: str, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"commands {COMMANDS_TOKEN}\n")
    settings = ApiSettings(redis_url=cluster_url, api_tokens_file=tokens)
    async for client in client_for(settings):
        yield client


async def test_device_keys_really_spread_over_several_nodes(
    cluster: RedisClusterProcs, cluster_url: str
) -> None:
    client = sync_client(cluster_url)
    assert isinstance(client, redis.cluster.RedisCluster)
    nodes = {client.get_node_from_key(KEYS.device(imei)).port for imei in IMEIS}
    client.close()

    assert len(nodes) == 3


async def test_devices_status_and_records_read_across_slots(
    api: httpx.AsyncClient,
) -> None:
    listed = (
        await api.get("/v1/devices?limit=5&connected=true", headers=COMMANDS)
    ).json()
    status = await api.get(f"/v1/devices/{IMEIS[3]}", headers=COMMANDS)
    records = (
        await api.get(f"/v1/devices/{IMEIS[3]}/records", headers=COMMANDS)
    ).json()

    assert [d["imei"] for d in listed["items"]] == IMEIS[0:10:2]
    assert status.status_code == 200 and status.json()["connected"] is False
    assert [r["id"] for r in records["items"]] == [f"{NOW + 3}-0"]


async def test_command_life_cycle_on_a_cluster(
    api: httpx.AsyncClient, cluster_url: str
) -> None:
    ids = []
    for imei in IMEIS[:4]:
        response = await api.post(
            f"/v1/devices/{imei}/commands", json={"text": "getver"}, headers=COMMANDS
        )
        assert response.status_code == 201
        ids.append(response.json()["id"])
    cancelled = await api.post(
        f"/v1/devices/{IMEIS[1]}/commands/{ids[1]}/cancel", headers=COMMANDS
    )
    assert cancelled.json()["state"] == "cancelled"

    client = async_client(cluster_url)
    store = CommandStore(client, KEYS)
    claim = await store.claim_next(IMEIS[0], "s1", "cluster")
    assert isinstance(claim, Claim) and claim.payload == b"getver"
    assert await store.answered(IMEIS[0], ids[0], "s1", b"Ver:03.28") == "answered"
    await client.aclose()

    listed = (
        await api.get(f"/v1/devices/{IMEIS[0]}/commands", headers=COMMANDS)
    ).json()
    assert listed["items"][0]["state"] == CommandState.ANSWERED
    assert listed["items"][0]["response"] == "Ver:03.28"


async def test_new_command_reaches_the_store_with_idempotency_on_a_cluster(
    cluster_url: str,
) -> None:
    client = async_client(cluster_url, decode_responses=True)
    store = CommandStore(client, KEYS)
    first, created = await store.enqueue(
        NewCommand(IMEIS[5], text="getinfo", idempotency_key="k1")
    )
    again, created_again = await store.enqueue(
        NewCommand(IMEIS[5], text="getinfo", idempotency_key="k1")
    )
    await client.aclose()

    assert (created, created_again) == (True, False)
    assert again.id == first.id
