"""``trackgate records``: the newest records in the streams, as JSON lines."""

from __future__ import annotations

import json
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    app.command(name="records")(records)


def records(
    redis_url: Annotated[
        str | None, typer.Option(help="Redis URL [TRACKGATE_REDIS_URL]")
    ] = None,
    imei: Annotated[str | None, typer.Option(help="Only this device")] = None,
    count: Annotated[int, typer.Option(help="How many, newest first")] = 10,
) -> None:
    """Print the newest stored records (one JSON object per line)."""
    from trackgate.core.redisconn import sync_client
    from trackgate.core.settings import CommonSettings

    settings = (
        CommonSettings() if redis_url is None else CommonSettings(redis_url=redis_url)
    )
    keys = settings.keys()
    client = sync_client(settings.redis_url, decode_responses=True)
    streams = [keys.records_for(imei)] if imei else keys.all_records()
    found: list[tuple[str, dict[str, str]]] = []
    page: list[tuple[str, dict[str, str]]]
    for stream in streams:
        # Scan back in pages until enough entries of the device are found.
        last = "+"
        while len(found) < count:
            reply = client.xrevrange(stream, max=last, count=500)
            page = reply  # type: ignore[assignment]
            if not page:
                break
            for entry_id, fields in page:
                if entry_id == last:
                    continue
                if imei is None or fields.get("imei") == imei:
                    found.append((entry_id, fields))
            last = page[-1][0]
            if len(page) < 500:
                break
    found.sort(key=lambda item: item[0], reverse=True)
    for entry_id, fields in found[:count]:
        row: dict[str, object] = {"id": entry_id, **fields}
        row["io"] = json.loads(fields.get("io", "{}"))
        typer.echo(json.dumps(row))
