"""Devices: the index, one device's status, its recent records."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from trackgate.api.deps import Imei, KeysDep, ReadScope, RedisDep, SettingsDep
from trackgate.api.errors import NotFound
from trackgate.api.routes import COMMON_ERRORS, V1
from trackgate.api.schemas import (
    PAGE_MAX,
    DevicePublic,
    DevicesPublic,
    ErrorBody,
    RecordPublic,
    RecordsPublic,
)
from trackgate.core.devices import device_page, device_records, device_status
from trackgate.core.paging import CURSOR_PATTERN, ScoreCursor

router = APIRouter(prefix=f"{V1}/devices", tags=["devices"], responses=COMMON_ERRORS)

#: Largest time accepted in a query, ms (year 33658): Redis stream ids and
#: scores are 64-bit; anything larger is a client bug, not a far future.
MAX_TIME_MS = 10**15

STREAM_ID_PATTERN = r"^[0-9]{1,16}-[0-9]{1,19}$"

NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "Unknown device."}
}


@router.get("", response_model=DevicesPublic, summary="List devices")
async def list_devices(
    _: ReadScope,
    redis: RedisDep,
    keys: KeysDep,
    settings: SettingsDep,
    cursor: Annotated[
        str | None, Query(pattern=CURSOR_PATTERN, description="next_cursor of a page.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=PAGE_MAX)] = 100,
    connected: Annotated[
        bool | None, Query(description="Only devices with (or without) a session.")
    ] = None,
    seen_since: Annotated[
        int | None,
        Query(ge=0, le=MAX_TIME_MS, description="Only devices seen since (ms)."),
    ] = None,
) -> DevicesPublic:
    """Devices by last contact, newest first."""
    after = ScoreCursor.decode(cursor) if cursor else None
    devices, following = await device_page(
        redis, keys, after=after, limit=limit, seen_since=seen_since,
        connected=connected, scan_budget=settings.api_records_scan_budget,
    )  # fmt: skip
    return DevicesPublic(
        items=[DevicePublic.of(status) for status in devices],
        next_cursor=following.encode() if following else None,
    )


@router.get(
    "/{imei}", response_model=DevicePublic, responses=NOT_FOUND, summary="Device status"
)
async def get_device(
    _: ReadScope, redis: RedisDep, keys: KeysDep, imei: Imei
) -> DevicePublic:
    """Session, last contact, last position and lag of one device."""
    status = await device_status(redis, keys, imei)
    if status is None:
        raise NotFound(f"device {imei} has never been seen", code="device_not_found")
    return DevicePublic.of(status)


@router.get("/{imei}/records", response_model=RecordsPublic, summary="Device records")
async def get_records(
    _: ReadScope,
    redis: RedisDep,
    keys: KeysDep,
    settings: SettingsDep,
    imei: Imei,
    since: Annotated[
        int | None, Query(ge=0, le=MAX_TIME_MS, description="Stored at or after (ms).")
    ] = None,
    until: Annotated[
        int | None, Query(ge=0, le=MAX_TIME_MS, description="Stored at or before (ms).")
    ] = None,
    before: Annotated[
        str | None,
        Query(pattern=STREAM_ID_PATTERN, description="next_before of a page."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=PAGE_MAX)] = 100,
) -> RecordsPublic:
    """The device's records, newest stored first.

    Records of all devices of a shard share one stream: a call reads at most
    ``TRACKGATE_API_RECORDS_SCAN_BUDGET`` entries and returns ``next_before``
    to go on, so a quiet device among busy ones may need several calls.
    """
    page = await device_records(
        redis, keys, imei, since_ms=since, until_ms=until, before=before,
        limit=limit, scan_budget=settings.api_records_scan_budget,
    )  # fmt: skip
    return RecordsPublic(
        items=[RecordPublic.of(record) for record in page.records],
        next_before=page.next_before,
        scanned=page.scanned,
    )
