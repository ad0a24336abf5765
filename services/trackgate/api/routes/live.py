"""Live feed of one device: its new records and its command state changes.

Server-sent events: ``record`` events (id = stream entry id, so a client
that reconnects with ``Last-Event-ID`` resumes where it stopped) and
``command`` events (the command as ``GET .../commands/{id}`` returns it).

Each stream holds one blocking XREAD on the device's shard stream and one
subscription to the events channel, and keeps only what concerns the
device: on a shared shard it reads every device's records, so the number
of open streams per process is capped (``TRACKGATE_API_LIVE_MAX_STREAMS``).
A client that does not keep up gets an ``overflow`` event and the stream
ends; it reconnects with ``Last-Event-ID``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from redis.exceptions import RedisError
from sse_starlette import EventSourceResponse, ServerSentEvent

from trackgate.api import metrics
from trackgate.api.deps import (
    CommandsDep,
    Imei,
    KeysDep,
    ReadScope,
    RedisDep,
    SettingsDep,
)
from trackgate.api.errors import Unavailable
from trackgate.api.routes import COMMON_ERRORS, V1
from trackgate.api.routes.devices import STREAM_ID_PATTERN
from trackgate.api.schemas import CommandPublic, RecordPublic
from trackgate.core.commands import CommandError, CommandStore
from trackgate.core.devices import record_from_entry
from trackgate.core.keys import Keys
from trackgate.core.paging import as_text
from trackgate.core.redisconn import AsyncClient

log = logging.getLogger("trackgate.api.live")

router = APIRouter(prefix=V1, tags=["live"], responses=COMMON_ERRORS)

#: Events buffered for one client; beyond this the client is too slow and
#: its stream ends with ``overflow`` rather than holding memory.
LIVE_QUEUE_MAX = 256

#: How long one XREAD waits for new records, ms; also how soon a stream
#: notices that its client went away.
BLOCK_MS = 1000

#: Stream entries taken per XREAD.
READ_COUNT = 200


class _Overflow(Exception):
    pass


@router.get(
    "/devices/{imei}/events",
    summary="Live records and command results (server-sent events)",
    response_class=EventSourceResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def live_events(
    request: Request,
    _: ReadScope,
    redis: RedisDep,
    keys: KeysDep,
    store: CommandsDep,
    settings: SettingsDep,
    imei: Imei,
    last_event_id: Annotated[
        str | None, Header(alias="Last-Event-ID", pattern=STREAM_ID_PATTERN)
    ] = None,
) -> EventSourceResponse:
    """New records of the device and changes of its commands, as they happen."""
    if request.app.state.live_streams >= settings.api_live_max_streams:
        raise Unavailable("too many live streams open", code="too_many_streams")
    feed = _feed(request, redis, keys, store, imei, last_event_id)
    return EventSourceResponse(feed, ping=settings.api_live_ping_s)


async def _feed(
    request: Request,
    redis: AsyncClient,
    keys: Keys,
    store: CommandStore,
    imei: str,
    resume_after: str | None,
) -> AsyncIterator[ServerSentEvent]:
    queue: asyncio.Queue[ServerSentEvent] = asyncio.Queue(LIVE_QUEUE_MAX)

    def put(event: ServerSentEvent) -> None:
        try:
            queue.put_nowait(event)
        except asyncio.QueueFull:
            raise _Overflow from None

    stream = keys.records_for(imei)
    start = resume_after or await _stream_tail(redis, stream)
    producers = [
        asyncio.create_task(_records(redis, stream, imei, start, put)),
        asyncio.create_task(_commands(redis, keys, store, imei, put)),
    ]
    request.app.state.live_streams += 1
    metrics.LIVE_STREAMS.inc()
    try:
        while True:
            getter = asyncio.create_task(queue.get())
            done, _pending = await asyncio.wait(
                [getter, *producers], return_when=asyncio.FIRST_COMPLETED
            )
            if getter in done:
                yield getter.result()
                continue
            getter.cancel()
            yield _ending(producers)
            return
    finally:
        for task in producers:
            task.cancel()
        for task in producers:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        request.app.state.live_streams -= 1
        metrics.LIVE_STREAMS.dec()


def _ending(producers: list[asyncio.Task[None]]) -> ServerSentEvent:
    for task in producers:
        if task.done() and not task.cancelled():
            error = task.exception()
            if isinstance(error, _Overflow):
                return ServerSentEvent(
                    data=json.dumps({"reason": "client too slow; reconnect"}),
                    event="overflow",
                )
            if error is not None:
                log.warning("live stream ended: %s: %s", type(error).__name__, error)
    return ServerSentEvent(
        data=json.dumps({"reason": "Redis unavailable; reconnect"}), event="error"
    )


async def _stream_tail(redis: AsyncClient, stream: str) -> str:
    newest: Any = await redis.xrevrange(stream, count=1)
    if not newest:
        return "0-0"
    return as_text(newest[0][0]) or "0-0"


async def _records(
    redis: AsyncClient, stream: str, imei: str, last: str, put: Any
) -> None:
    while True:
        reply: Any = await redis.xread({stream: last}, count=READ_COUNT, block=BLOCK_MS)
        for _name, entries in reply or []:
            for raw_id, raw in entries:
                last = as_text(raw_id) or last
                if as_text(raw.get("imei", raw.get(b"imei"))) != imei:
                    continue
                record = RecordPublic.of(record_from_entry(last, raw))
                put(
                    ServerSentEvent(
                        data=record.model_dump_json(), event="record", id=last
                    )
                )


async def _commands(
    redis: AsyncClient, keys: Keys, store: CommandStore, imei: str, put: Any
) -> None:
    pubsub = redis.pubsub()
    await pubsub.subscribe(keys.events())
    try:
        while True:
            message = await pubsub.get_message(
                ignore_subscribe_messages=True, timeout=BLOCK_MS / 1000
            )
            if message is None or message.get("type") != "message":
                continue
            try:
                event = json.loads(as_text(message["data"]) or "")
            except ValueError:
                continue
            if (
                not isinstance(event, dict)
                or event.get("type") != "command_state"
                or event.get("imei") != imei
            ):
                continue
            try:
                command = await store.get(imei, str(event.get("id")))
            except CommandError:
                continue
            put(
                ServerSentEvent(
                    data=CommandPublic.of(command).model_dump_json(), event="command"
                )
            )
    finally:
        with contextlib.suppress(RedisError, OSError):
            await pubsub.unsubscribe()
            await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]
