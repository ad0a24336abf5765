"""Gone ingest workers: their devices are marked disconnected by a live one."""

from __future__ import annotations

import asyncio
import time

import pytest

from trackgate.core import holders
from trackgate.core.holders import Holders
from trackgate.core.keys import Keys
from trackgate.core.redisconn import AsyncClient, async_client
from trackgate.core.store import SessionStore

KEYS = Keys()
GONE = "pod-a/0"
LIVE = "pod-b/1"


def now_ms() -> int:
    return int(time.time() * 1000)


async def open_sessions(client: AsyncClient, owner: str, imeis: list[str]) -> None:
    pod, worker = owner.split("/")
    sessions = SessionStore(client, KEYS)
    for imei in imeis:
        await sessions.opened(
            imei,
            f"s-{imei}",
            pod=pod,
            worker=worker,
            peer="10.0.0.1:5000",
            started_at=now_ms(),
        )


async def connected(client: AsyncClient, imei: str) -> bytes | None:
    value = await client.hget(KEYS.device(imei), "connected")  # type: ignore[misc]
    return value if isinstance(value, bytes | None) else str(value).encode()


async def test_a_gone_workers_devices_are_released_once_its_heartbeat_expires(
    any_redis_url: str,
) -> None:
    client = async_client(any_redis_url)
    gone = Holders(client, KEYS, GONE, ttl_s=0.3)
    live = Holders(client, KEYS, LIVE, ttl_s=0.3)
    imeis = [f"35209308100000{n}" for n in range(5)]
    await gone.beat(now_ms())
    await open_sessions(client, GONE, imeis)
    await live.beat(now_ms())

    assert await live.sweep(now_ms()) == {}
    assert [await connected(client, i) for i in imeis] == [b"1"] * 5

    await asyncio.sleep(0.4)
    await live.beat(now_ms())
    at = now_ms()
    assert await live.sweep(at) == {GONE: 5}
    assert [await connected(client, i) for i in imeis] == [b"0"] * 5
    stamp = await client.hget(KEYS.device(imeis[0]), "disconnected_at")  # type: ignore[misc]
    assert int(stamp) == at
    members = await client.smembers(KEYS.holders())
    assert {m.decode() for m in members} == {LIVE}
    assert await client.exists(KEYS.holder(GONE), KEYS.claimed(GONE)) == 0
    # Nothing left to do on the next sweep.
    assert await live.sweep(now_ms()) == {}
    await client.aclose()


async def test_a_device_that_moved_to_a_live_worker_stays_connected(
    any_redis_url: str,
) -> None:
    client = async_client(any_redis_url)
    gone = Holders(client, KEYS, GONE, ttl_s=0.2)
    live = Holders(client, KEYS, LIVE, ttl_s=5)
    await gone.beat(now_ms())
    await open_sessions(client, GONE, ["352093081000010", "352093081000011"])
    # The first device logged in again on the live worker before the sweep.
    await open_sessions(client, LIVE, ["352093081000010"])
    await live.beat(now_ms())
    await asyncio.sleep(0.3)
    assert await live.sweep(now_ms()) == {GONE: 1}
    assert await connected(client, "352093081000010") == b"1"
    assert await connected(client, "352093081000011") == b"0"
    await client.aclose()


async def test_a_worker_back_under_its_name_keeps_its_new_sessions(
    any_redis_url: str,
) -> None:
    client = async_client(any_redis_url)
    live = Holders(client, KEYS, LIVE, ttl_s=5)
    back = Holders(client, KEYS, GONE, ttl_s=5)
    await back.beat(now_ms())
    await open_sessions(client, GONE, ["352093081000020"])
    await live.beat(now_ms())
    assert await live.sweep(now_ms()) == {}
    assert await connected(client, "352093081000020") == b"1"
    assert await client.sismember(KEYS.holder(GONE), "352093081000020")  # type: ignore[misc]
    await client.aclose()


async def test_sweepers_at_once_release_each_device_once(any_redis_url: str) -> None:
    client = async_client(any_redis_url)
    gone = Holders(client, KEYS, GONE, ttl_s=0.2)
    imeis = [f"3520930810001{n:02d}" for n in range(40)]
    await gone.beat(now_ms())
    await open_sessions(client, GONE, imeis)
    await asyncio.sleep(0.3)
    sweepers = [Holders(client, KEYS, f"pod-{n}/0", ttl_s=5) for n in range(4)]
    results = await asyncio.gather(*(s.sweep(now_ms()) for s in sweepers))
    assert sum(r.get(GONE, 0) for r in results) == 40
    assert sum(1 for r in results if GONE in r) == 1
    assert [await connected(client, i) for i in imeis] == [b"0"] * 40
    await client.aclose()


async def test_a_retired_worker_is_swept_at_once(redis_url: str) -> None:
    client = async_client(redis_url)
    holder = Holders(client, KEYS, GONE)
    await holder.beat(now_ms())
    assert await client.pttl(KEYS.alive(GONE)) > 40_000
    await open_sessions(client, GONE, ["352093081000040"])
    await holder.retire()
    assert await client.exists(KEYS.alive(GONE)) == 0
    assert await Holders(client, KEYS, LIVE).sweep(now_ms()) == {GONE: 1}
    assert await client.smembers(KEYS.holders()) == set()
    await client.aclose()


async def test_a_worker_retired_with_no_device_left_is_not_swept(
    redis_url: str,
) -> None:
    client = async_client(redis_url)
    holder = Holders(client, KEYS, GONE)
    await holder.beat(now_ms())
    await holder.retire()
    assert await client.exists(KEYS.alive(GONE)) == 0
    assert await client.smembers(KEYS.holders()) == set()
    assert await Holders(client, KEYS, LIVE).sweep(now_ms()) == {}
    await client.aclose()


async def test_a_claim_whose_sweeper_died_is_retaken(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = async_client(redis_url)
    imeis = ["352093081000030", "352093081000031"]
    await client.sadd(KEYS.holders(), GONE)  # type: ignore[misc]
    await open_sessions(client, GONE, imeis)
    live = Holders(client, KEYS, LIVE, ttl_s=5)
    # A sweeper claimed the set, then died before releasing anything.
    await client.rename(KEYS.holder(GONE), KEYS.claimed(GONE))
    await client.pexpire(KEYS.claimed(GONE), int(holders.CLAIM_TTL_S * 1000))
    assert await live.sweep(now_ms()) == {}
    assert await client.sismember(KEYS.holders(), GONE)  # type: ignore[misc]
    monkeypatch.setattr(holders, "RETAKE_AFTER_S", 0.0)
    assert await live.sweep(now_ms()) == {GONE: 2}
    assert [await connected(client, i) for i in imeis] == [b"0"] * 2
    assert not await client.sismember(KEYS.holders(), GONE)  # type: ignore[misc]
    await client.aclose()


async def test_a_worker_back_from_a_lapse_reclaims_only_its_own_sessions(
    redis_url: str,
) -> None:
    client = async_client(redis_url)
    stalled = Holders(client, KEYS, GONE, ttl_s=0.2)
    assert await stalled.beat(now_ms()) is False  # first beat: no key before
    assert await stalled.beat(now_ms()) is True
    kept, moved = "352093081000050", "352093081000051"
    await open_sessions(client, GONE, [kept, moved])
    await asyncio.sleep(0.3)
    assert await Holders(client, KEYS, LIVE).sweep(now_ms()) == {GONE: 2}
    await open_sessions(client, LIVE, [moved])  # logged in elsewhere meanwhile

    assert await stalled.beat(now_ms()) is False
    assert await stalled.reclaim(kept, f"s-{kept}") is True
    assert await stalled.reclaim(moved, f"s-{moved}") is False
    assert await connected(client, kept) == b"1"
    device = await client.hgetall(KEYS.device(moved))  # type: ignore[misc]
    assert (device[b"connected"], device[b"pod"]) == (b"1", b"pod-b")
    assert await client.sismember(KEYS.holder(GONE), kept)  # type: ignore[misc]
    await client.aclose()
