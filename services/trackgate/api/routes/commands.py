"""Commands: queue one for a device, read them, cancel a queued one.

The API only writes to Redis and announces the new command on the events
channel; the ingest worker holding the device's session delivers it (see
``trackgate.ingest.commands``).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Response, status

from trackgate.api import metrics
from trackgate.api.deps import (
    CommandId,
    CommandScope,
    CommandsDep,
    Imei,
    ReadScope,
    SettingsDep,
)
from trackgate.api.routes import COMMON_ERRORS, V1
from trackgate.api.schemas import (
    PAGE_MAX,
    CommandCreate,
    CommandPublic,
    CommandsPublic,
    ErrorBody,
    TextCommandCreate,
)
from trackgate.core.commands import NewCommand, RateLimit, now_ms
from trackgate.core.paging import CURSOR_PATTERN, ScoreCursor

router = APIRouter(
    prefix=f"{V1}/devices/{{imei}}/commands", tags=["commands"],
    responses=COMMON_ERRORS,
)  # fmt: skip

IDEMPOTENCY_KEY_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"

NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "Unknown command."}
}


@router.post(
    "",
    response_model=CommandPublic,
    status_code=status.HTTP_201_CREATED,
    summary="Queue a command",
    responses={
        200: {"model": CommandPublic, "description": "Replay of an idempotency key."},
        409: {"model": ErrorBody, "description": "Queue full or key reused."},
        429: {"model": ErrorBody, "description": "Per-device rate limit reached."},
    },
)
async def queue_command(
    _: CommandScope,
    store: CommandsDep,
    settings: SettingsDep,
    imei: Imei,
    body: CommandCreate,
    response: Response,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            pattern=IDEMPOTENCY_KEY_PATTERN,
            description="Same key, same command: a retried request queues once.",
        ),
    ] = None,
) -> CommandPublic:
    """Queue a Codec 12 (or 14) command; the device gets it when connected."""
    expires_at = None
    if body.expires_in_s is not None:
        expires_at = now_ms() + body.expires_in_s * 1000
    text, payload = None, None
    if isinstance(body, TextCommandCreate):
        text = body.text
    else:
        payload = bytes.fromhex(body.payload_hex)
    new = NewCommand(
        imei=imei,
        text=text,
        payload=payload,
        codec=body.codec or settings.api_command_codec,
        expires_at=expires_at,
        max_attempts=body.max_attempts or settings.api_command_max_attempts,
        idempotency_key=idempotency_key,
    )
    command, created = await store.enqueue(
        new,
        rate=RateLimit(
            settings.api_command_rate_limit, settings.api_command_rate_window_s
        ),
        queue_max=settings.api_command_queue_max,
    )
    if created:
        metrics.COMMANDS_QUEUED.labels(str(command.codec)).inc()
    else:
        response.status_code = status.HTTP_200_OK
    return CommandPublic.of(command)


@router.get("", response_model=CommandsPublic, summary="List a device's commands")
async def list_commands(
    _: ReadScope,
    store: CommandsDep,
    imei: Imei,
    cursor: Annotated[
        str | None, Query(pattern=CURSOR_PATTERN, description="next_cursor of a page.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=PAGE_MAX)] = 50,
) -> CommandsPublic:
    """The device's commands, newest first."""
    after = ScoreCursor.decode(cursor) if cursor else None
    commands, following = await store.page(imei, after=after, limit=limit)
    return CommandsPublic(
        items=[CommandPublic.of(command) for command in commands],
        next_cursor=following.encode() if following else None,
    )


@router.get(
    "/{command_id}",
    response_model=CommandPublic,
    responses=NOT_FOUND,
    summary="Get a command",
)
async def get_command(
    _: ReadScope, store: CommandsDep, imei: Imei, command_id: CommandId
) -> CommandPublic:
    """One command with its state history and the device's answer."""
    return CommandPublic.of(await store.get(imei, command_id))


@router.post(
    "/{command_id}/cancel",
    response_model=CommandPublic,
    summary="Cancel a queued command",
    responses={
        **NOT_FOUND,
        409: {"model": ErrorBody, "description": "The command is not queued."},
    },
)
async def cancel_command(
    _: CommandScope, store: CommandsDep, imei: Imei, command_id: CommandId
) -> CommandPublic:
    """Cancel a command that was not sent yet (state queued)."""
    return CommandPublic.of(await store.cancel(imei, command_id))
