"""``trackgate records``: the newest records in the streams, as JSON lines."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from trackgate.core.settings import CommonSettings


def register(app: typer.Typer) -> None:
    app.command(name="records")(records)


#: A device is named by its 15-digit IMEI.
_IMEI = re.compile(r"[0-9]{15}")

#: How long to wait for Redis to accept the connection, and for a reply.
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 30.0

#: Redis unreachable at the URL: like an invalid setting, the URL is what to fix.
EXIT_NO_REDIS = 2


def _imei(value: str | None) -> str | None:
    if value is not None and not _IMEI.fullmatch(value):
        raise typer.BadParameter(f"{value!r} is not an IMEI (15 digits)")
    return value


def records(
    redis_url: Annotated[
        str | None, typer.Option(help="Redis URL [TRACKGATE_REDIS_URL]")
    ] = None,
    imei: Annotated[
        str | None, typer.Option(help="Only this device (15 digits)", callback=_imei)
    ] = None,
    count: Annotated[int, typer.Option(min=1, help="How many, newest first")] = 10,
) -> None:
    """Print the newest stored records (one JSON object per line).

    Exit status: 0 printed (nothing when none are stored), 2 an invalid
    option or setting, or no Redis at the URL.
    """
    from redis.exceptions import RedisClusterException, RedisError

    from trackgate.cli import _settings
    from trackgate.core.settings import CommonSettings

    flag = {"redis_url": "--redis-url"}
    settings = _settings.load(CommonSettings, "records", {"redis_url": redis_url}, flag)
    try:
        found = _newest(settings, imei, count)
    except (RedisError, RedisClusterException) as exc:
        typer.echo(
            f"trackgate records: cannot read Redis at {_redacted(settings.redis_url)} "
            f"(set TRACKGATE_REDIS_URL or --redis-url): {_one_line(exc)}",
            err=True,
        )
        raise typer.Exit(EXIT_NO_REDIS) from None
    for entry_id, fields in found:
        row: dict[str, object] = {"id": entry_id, **fields}
        row["io"] = json.loads(fields.get("io", "{}"))
        typer.echo(json.dumps(row))


def _newest(
    settings: CommonSettings, imei: str | None, count: int
) -> list[tuple[str, dict[str, str]]]:
    from trackgate.core.redisconn import sync_client

    keys = settings.keys()
    client = sync_client(
        settings.redis_url,
        decode_responses=True,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        socket_timeout=READ_TIMEOUT_S,
    )
    streams = [keys.records_for(imei)] if imei else keys.all_records()
    found: list[tuple[str, dict[str, str]]] = []
    page: list[tuple[str, dict[str, str]]]
    try:
        for stream in streams:
            # Scan back in pages until enough entries of the device are found
            # in this stream (each shard holds the newest of its own devices).
            last = "+"
            wanted = len(found) + count
            while len(found) < wanted:
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
    finally:
        client.close()
    found.sort(key=lambda item: item[0], reverse=True)
    return found[:count]


def _redacted(url: str) -> str:
    """The URL without its password."""
    scheme, sep, rest = url.partition("://")
    if "@" not in rest:
        return url
    return f"{scheme}{sep}***@{rest.rsplit('@', 1)[1]}"


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
