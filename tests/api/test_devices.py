"""Devices and records, read back from data written as the ingest does."""

from __future__ import annotations

import httpx
import pytest
import redis

from tests.api.conftest import READ, error_of, seed_device, seed_record

pytestmark = pytest.mark.asyncio(loop_scope="session")

A, B, C = "356307042441013", "356307042441021", "356307042441039"
NOW = 1_764_780_000_000


async def test_device_status_shows_session_position_and_lag(
    api: httpx.AsyncClient, sync_redis: redis.Redis
) -> None:
    seed_device(sync_redis, A, seen_at=NOW)
    sync_redis.hset(
        f"trackgate:dedup:{{s0}}:{A}", mapping={"stored": 10, "duplicates": 2}
    )

    response = await api.get(f"/v1/devices/{A}", headers=READ)

    assert response.status_code == 200
    device = response.json()
    assert device["connected"] is True
    assert device["seen_at"] == NOW
    assert device["session_start"] == NOW - 60_000
    assert (device["pod"], device["peer"]) == ("ingest-0", "10.1.2.3:40000")
    assert device["last_lag_ms"] == 1500
    assert (device["records_stored"], device["duplicates"]) == (10, 2)
    assert device["position"] == {
        "timestamp": NOW - 1500, "latitude": 54.6872, "longitude": -25.3011,
        "altitude": -6, "angle": 214, "speed": 42, "satellites": 9,
    }  # fmt: skip


async def test_device_list_carries_the_same_counters_as_the_status(
    api: httpx.AsyncClient, sync_redis: redis.Redis
) -> None:
    seed_device(sync_redis, A, seen_at=NOW)
    sync_redis.hset(
        f"trackgate:dedup:{{s0}}:{A}", mapping={"stored": 10, "duplicates": 2}
    )
    listed = (await api.get("/v1/devices", headers=READ)).json()["items"]
    assert [(d["imei"], d["records_stored"], d["duplicates"]) for d in listed] == [
        (A, 10, 2)
    ]


async def test_unknown_device_is_404_with_a_stable_code(api: httpx.AsyncClient) -> None:
    response = await api.get(f"/v1/devices/{A}", headers=READ)

    assert response.status_code == 404
    assert error_of(response)["code"] == "device_not_found"


@pytest.mark.parametrize("imei", ["12345", "35630704244101X", "3563070424410131234"])
async def test_malformed_imei_is_422_naming_the_parameter(
    api: httpx.AsyncClient, imei: str
) -> None:
    response = await api.get(f"/v1/devices/{imei}", headers=READ)

    assert response.status_code == 422
    error = error_of(response)
    assert error["code"] == "invalid_request"
    assert error["details"][0]["loc"] == ["path", "imei"]


async def test_device_list_is_newest_first_and_filters(
    api: httpx.AsyncClient, sync_redis: redis.Redis
) -> None:
    seed_device(sync_redis, A, seen_at=NOW - 3000, connected=False)
    seed_device(sync_redis, B, seen_at=NOW - 2000)
    seed_device(sync_redis, C, seen_at=NOW - 1000)

    everything = (await api.get("/v1/devices", headers=READ)).json()
    online = (await api.get("/v1/devices?connected=true", headers=READ)).json()
    offline = (await api.get("/v1/devices?connected=false", headers=READ)).json()
    recent = (
        await api.get(f"/v1/devices?seen_since={NOW - 2000}", headers=READ)
    ).json()

    assert [d["imei"] for d in everything["items"]] == [C, B, A]
    assert everything["next_cursor"] is None
    assert [d["imei"] for d in online["items"]] == [C, B]
    assert [d["imei"] for d in offline["items"]] == [A]
    assert [d["imei"] for d in recent["items"]] == [C, B]


async def test_device_pages_cover_every_device_once_even_with_equal_times(
    api: httpx.AsyncClient, sync_redis: redis.Redis
) -> None:
    imeis = [f"35630704244{n:04d}" for n in range(7)]
    for n, imei in enumerate(imeis):
        seed_device(sync_redis, imei, seen_at=NOW - (n // 3))  # ties of three

    seen: list[str] = []
    cursor = None
    for _ in range(10):
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = (await api.get("/v1/devices", params=params, headers=READ)).json()
        seen += [d["imei"] for d in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break

    assert sorted(seen) == sorted(imeis)
    assert len(seen) == len(imeis)


async def test_malformed_cursor_is_422(api: httpx.AsyncClient) -> None:
    response = await api.get("/v1/devices?cursor=not-ours", headers=READ)

    assert response.status_code == 422
    assert error_of(response)["details"][0]["loc"] == ["query", "cursor"]


async def test_records_are_the_device_s_own_newest_first_with_typed_fields(
    api: httpx.AsyncClient, sync_redis: redis.Redis
) -> None:
    for n in range(6):
        seed_record(sync_redis, A if n % 2 == 0 else B, at=NOW + n)

    response = await api.get(f"/v1/devices/{A}/records", headers=READ)

    body = response.json()
    assert [r["id"] for r in body["items"]] == [
        f"{NOW + 4}-0",
        f"{NOW + 2}-0",
        f"{NOW}-0",
    ]
    assert body["next_before"] is None
    record = body["items"][0]
    assert record["imei"] == A
    assert (record["timestamp"], record["received_at"]) == (NOW + 4 - 1000, NOW + 4)
    assert (record["latitude"], record["longitude"]) == (-54.6872, 25.3011)
    assert record["io"] == {"21": 3, "66": 24079, "78": 18446744073709551615}
    assert record["codec"] == 142 and record["transport"] == "tcp"


async def test_records_time_range_and_paging(
    api: httpx.AsyncClient, sync_redis: redis.Redis
) -> None:
    for n in range(10):
        seed_record(sync_redis, A, at=NOW + n * 1000)

    page1 = (
        await api.get(
            f"/v1/devices/{A}/records",
            params={"since": NOW + 2000, "until": NOW + 7000, "limit": 3},
            headers=READ,
        )
    ).json()
    page2 = (
        await api.get(
            f"/v1/devices/{A}/records",
            params={"since": NOW + 2000, "before": page1["next_before"], "limit": 3},
            headers=READ,
        )
    ).json()

    assert [r["received_at"] for r in page1["items"]] == [
        NOW + 7000,
        NOW + 6000,
        NOW + 5000,
    ]
    assert [r["received_at"] for r in page2["items"]] == [
        NOW + 4000,
        NOW + 3000,
        NOW + 2000,
    ]


async def test_records_scan_stops_at_the_budget_and_says_where_to_go_on(
    make_settings, sync_redis: redis.Redis
) -> None:
    from tests.api.conftest import client_for

    seed_record(sync_redis, A, at=NOW)
    for n in range(1, 251):
        seed_record(sync_redis, B, at=NOW + n)

    async for client in client_for(make_settings(api_records_scan_budget=100)):
        first = (await client.get(f"/v1/devices/{A}/records", headers=READ)).json()
        assert first["items"] == []
        assert first["scanned"] == 100
        assert first["next_before"] == f"{NOW + 151}-0"

        cursor = first["next_before"]
        found: list[str] = []
        while cursor is not None:
            page = (
                await client.get(
                    f"/v1/devices/{A}/records", params={"before": cursor}, headers=READ
                )
            ).json()
            found += [r["id"] for r in page["items"]]
            cursor = page["next_before"]
        assert found == [f"{NOW}-0"]


@pytest.mark.parametrize("cursor", ["0-0", "0000-0", "0-000"])
async def test_records_before_the_first_possible_id_are_an_empty_page(
    api: httpx.AsyncClient, sync_redis: redis.Redis, cursor: str
) -> None:
    seed_device(sync_redis, A, seen_at=NOW)
    seed_record(sync_redis, A, at=NOW)
    response = await api.get(
        f"/v1/devices/{A}/records",
        params={"before": cursor, "since": 0, "until": 0},
        headers=READ,
    )
    assert response.status_code == 200, response.text
    assert response.json()["items"] == []
    assert response.json()["next_before"] is None


async def test_a_cursor_with_leading_zeros_is_the_same_id(
    api: httpx.AsyncClient, sync_redis: redis.Redis
) -> None:
    seed_device(sync_redis, A, seen_at=NOW)
    seed_record(sync_redis, A, at=NOW)
    seed_record(sync_redis, A, at=NOW + 1)
    response = await api.get(
        f"/v1/devices/{A}/records",
        params={"before": f"000{NOW + 1}-00"},
        headers=READ,
    )
    assert response.status_code == 200, response.text
    assert [r["id"] for r in response.json()["items"]] == [f"{NOW}-0"]
