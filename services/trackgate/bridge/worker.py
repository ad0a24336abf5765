"""The bridge loop: records streams in, Laravel queue jobs out, at least once.

``Bridge.run`` starts one task per records shard. Each task first takes
back what its consumer left pending (a crash between push and ack), claims
entries other consumers left idle too long, then reads new entries with
XREADGROUP. A batch becomes Laravel jobs (one per record or per packet),
the jobs are pushed with one script call, and only then are the entries
acknowledged. Entries that cannot become jobs, or that were delivered too
often, are copied to the shard's dead-letter stream with the reason and
acknowledged in the same script. The CLI builds the settings and stops the
loop; payload details live in ``laravel`` and ``records``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from redis.exceptions import RedisError, ResponseError

from trackgate.bridge.errors import BridgeConfigError, EntryError, LaravelQueueError
from trackgate.bridge.laravel import JobFactory, LaravelQueue, queue_key
from trackgate.bridge.records import Record, group_by_packet, record_from_entry
from trackgate.bridge.settings import BridgeSettings
from trackgate.core.redisconn import AsyncClient, async_client, is_cluster_url

log = logging.getLogger("trackgate.bridge")

T = TypeVar("T")

#: Seconds between retries after a Redis error: first and longest wait.
#: Short enough to resume quickly after a failover, long enough not to spin.
RETRY_FIRST = 0.1
RETRY_MAX = 5.0

#: Seconds a socket may stay silent beyond the read's own BLOCK time before
#: redis-py gives up on it.
SOCKET_MARGIN = 10.0

# Dead-letter some entries and acknowledge a batch, atomically, in the slot
# of one shard. ARGV: group, number of ids to ack, the ids, then for each
# dead entry its field count followed by its fields and values.
_SETTLE_LUA = """
local nack = tonumber(ARGV[2])
local i = 3 + nack
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  redis.call('xadd', KEYS[2], '*', unpack(ARGV, i + 1, i + n))
  i = i + n + 1
end
if nack > 0 then
  redis.call('xack', KEYS[1], ARGV[1], unpack(ARGV, 3, 2 + nack))
end
return nack
"""

Entry = tuple[str, Mapping[Any, Any] | None]


@dataclass
class BridgeStats:
    """Counters of one bridge process, and the last lag seen per stream."""

    read: int = 0
    pushed: int = 0
    acked: int = 0
    dead_lettered: int = 0
    claimed: int = 0
    vanished: int = 0
    push_failures: int = 0
    redis_errors: int = 0
    lag: dict[str, int | None] = field(default_factory=dict)
    pending: dict[str, int] = field(default_factory=dict)


@dataclass
class _Dead:
    entry_id: str
    fields: Mapping[Any, Any]
    reason: str
    deliveries: int


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


class Bridge:
    """Feeds one Laravel queue from every records shard."""

    def __init__(
        self,
        settings: BridgeSettings,
        streams: AsyncClient,
        queue: LaravelQueue,
        *,
        stop_when_empty: bool = False,
    ) -> None:
        self.settings = settings
        self.keys = settings.keys()
        self.group = settings.bridge_group
        self.consumer = settings.consumer()
        self.stats = BridgeStats()
        self._streams = streams
        self._queue = queue
        self._jobs = JobFactory(
            settings.laravel_job,
            max_tries=settings.laravel_max_tries,
            timeout=settings.laravel_timeout,
        )
        self._settle = streams.register_script(_SETTLE_LUA)
        self._stop_when_empty = stop_when_empty
        self._stop = asyncio.Event()
        self._last_counters: tuple[int, ...] = ()

    async def aclose(self) -> None:
        """Close the Redis clients given to this bridge."""
        await self._queue.aclose()
        await self._streams.aclose()

    def stop(self) -> None:
        """Finish the batch in hand, then return from ``run``."""
        self._stop.set()

    async def run(self) -> BridgeStats:
        """Bridge until ``stop()`` (or until every shard is empty, if asked)."""
        shards = range(self.keys.shards)
        for shard in shards:
            await self._retrying(self._ensure_group, shard)
        log.info(
            "bridge %s/%s: %d shard(s) -> %s (%s, per %s)",
            self.group, self.consumer, self.keys.shards, self._queue.key,
            self._jobs.job, self.settings.bridge_mode,
        )  # fmt: skip

        reporter = asyncio.create_task(self._report_forever())
        try:
            await asyncio.gather(*(self._run_shard(shard) for shard in shards))
        finally:
            reporter.cancel()
            await self.report()
        return self.stats

    async def report(self) -> None:
        """Read lag and pending counts of the group and log the counters."""
        for stream in self.keys.all_records():
            try:
                groups = await self._streams.xinfo_groups(stream)
            except RedisError as exc:
                log.warning("cannot read group info of %s: %s", stream, exc)
                continue
            for info in groups:
                if _text(info["name"]) == self.group:
                    lag = info.get("lag")
                    self.stats.lag[stream] = None if lag is None else int(lag)
                    self.stats.pending[stream] = int(info["pending"])
        s = self.stats
        counters = (s.read, s.pushed, s.acked, s.dead_lettered, s.claimed, s.vanished,
                    s.push_failures, s.redis_errors)  # fmt: skip
        # A quiet bridge logs its summary at DEBUG, so idle hours stay silent.
        level = logging.INFO if counters != self._last_counters else logging.DEBUG
        self._last_counters = counters
        log.log(
            level,
            "bridge: read=%d pushed=%d acked=%d dead_lettered=%d claimed=%d "
            "vanished=%d push_failures=%d redis_errors=%d lag=%s pending=%s",
            *counters, s.lag, s.pending,
        )  # fmt: skip

    async def _report_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.bridge_stats_interval_s)
            await self.report()

    async def _ensure_group(self, shard: int) -> None:
        try:
            await self._streams.xgroup_create(
                self.keys.records(shard),
                self.group,
                id=self.settings.bridge_group_start,
                mkstream=True,
            )
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _retrying(
        self, step: Callable[[int], Awaitable[T]], shard: int
    ) -> T | None:
        """Run ``step(shard)`` until it gets through Redis errors, or stop.

        A vanished group is created again; a records key that is not a stream
        is a setup error and ends the bridge.
        """
        delay = RETRY_FIRST
        regroup = False
        while True:
            try:
                if regroup:
                    await self._ensure_group(shard)
                    regroup = False
                return await step(shard)
            except ResponseError as exc:
                if "WRONGTYPE" in str(exc):
                    raise BridgeConfigError(
                        f"{self.keys.records(shard)} is not a stream: {exc}"
                    ) from exc
                regroup = "NOGROUP" in str(exc)
                failure: RedisError = exc
            except RedisError as exc:
                failure = exc
            self.stats.redis_errors += 1
            log.warning("shard %d: redis error, retry in %.1fs: %s", shard, delay,
                        failure)  # fmt: skip
            if self._stop.is_set():
                return None
            await self._pause(delay)
            delay = min(delay * 2, RETRY_MAX)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def _run_shard(self, shard: int) -> None:
        await self._retrying(self._recover_own, shard)
        await self._retrying(self._claim_stale, shard)
        next_claim = time.monotonic() + self.settings.bridge_claim_interval_s

        while not self._stop.is_set():
            if time.monotonic() >= next_claim:
                await self._retrying(self._claim_stale, shard)
                next_claim = time.monotonic() + self.settings.bridge_claim_interval_s
            got = await self._retrying(self._read_new, shard)
            if not got and self._stop_when_empty:
                return

    async def _read(self, shard: int, start: str, block: int | None) -> list[Entry]:
        stream = self.keys.records(shard)
        reply: Any = await self._streams.xreadgroup(
            self.group, self.consumer, {stream: start},
            count=self.settings.bridge_batch, block=block,
        )  # fmt: skip
        if not reply:
            return []
        # RESP2 gives [[stream, entries]], RESP3 {stream: entries}.
        batches = reply.values() if isinstance(reply, dict) else [b for _, b in reply]
        entries: list[Entry] = []
        for batch in batches:
            entries.extend((_text(entry_id), fields) for entry_id, fields in batch)
        return entries

    async def _recover_own(self, shard: int) -> None:
        """Redeliver what this consumer left pending (read, not acked)."""
        while not self._stop.is_set():
            entries = await self._read(shard, "0", None)
            if not entries:
                return
            log.info("shard %d: %d entries pending from an earlier run", shard,
                     len(entries))  # fmt: skip
            await self._deliver(shard, entries, redelivered=True)

    async def _claim_stale(self, shard: int) -> None:
        """Take the entries other consumers left idle too long, batch by batch.

        XAUTOCLAIM scans a bounded part of the pending list per call, so the
        cursor is followed to the end even through calls that claim nothing.
        """
        stream = self.keys.records(shard)
        cursor = "0-0"
        while not self._stop.is_set():
            reply: Any = await self._streams.xautoclaim(
                stream, self.group, self.consumer, self.settings.bridge_claim_idle_ms,
                start_id=cursor, count=self.settings.bridge_batch,
            )  # fmt: skip
            cursor = _text(reply[0])
            claimed = [(_text(i), f) for i, f in reply[1]]
            gone = reply[2] if len(reply) > 2 else []
            if gone:
                self.stats.vanished += len(gone)
                log.warning("shard %d: %d pending entries were trimmed unread",
                            shard, len(gone))  # fmt: skip
            if claimed:
                self.stats.claimed += len(claimed)
                log.info("shard %d: claimed %d stale entries", shard, len(claimed))
                await self._deliver(shard, claimed, redelivered=True)
            if cursor == "0-0":
                return

    async def _read_new(self, shard: int) -> bool:
        block = None if self._stop_when_empty else self.settings.bridge_block_ms
        entries = await self._read(shard, ">", block)
        if entries:
            await self._deliver(shard, entries, redelivered=False)
        return bool(entries)

    async def _deliveries(self, shard: int, ids: Sequence[str]) -> dict[str, int]:
        rows: Any = await self._streams.xpending_range(
            self.keys.records(shard), self.group, min=ids[0], max=ids[-1],
            count=len(ids), consumername=self.consumer,
        )  # fmt: skip
        return {_text(r["message_id"]): int(r["times_delivered"]) for r in rows}

    async def _deliver(
        self, shard: int, entries: list[Entry], *, redelivered: bool
    ) -> None:
        """Push one batch as jobs, then dead-letter and ack it."""
        self.stats.read += len(entries)
        deliveries = {}
        if redelivered:
            deliveries = await self._deliveries(shard, [i for i, _ in entries])
        limit = self.settings.bridge_max_deliveries

        good: list[tuple[str, Record]] = []
        dead: list[_Dead] = []
        done: list[str] = []
        for entry_id, fields in entries:
            count = deliveries.get(entry_id, 1)
            if not fields:
                self.stats.vanished += 1
                log.warning("shard %d: entry %s was trimmed before delivery", shard,
                            entry_id)  # fmt: skip
                done.append(entry_id)
            elif count > limit:
                dead.append(_Dead(entry_id, fields, f"delivered {count} times", count))
            else:
                try:
                    good.append((entry_id, record_from_entry(fields)))
                except EntryError as exc:
                    dead.append(_Dead(entry_id, fields, str(exc), count))

        if good and not await self._push(shard, good):
            return
        done.extend(entry_id for entry_id, _ in good)
        await self._settle_batch(shard, done, dead)

    def _payloads(self, shard: int, good: list[tuple[str, Record]]) -> list[str]:
        stream = self.keys.records(shard)
        if self.settings.bridge_mode == "record":
            return [
                self._jobs.payload({"stream": stream, "entry_id": i, "record": r})
                for i, r in good
            ]
        return [
            self._jobs.payload({
                "stream": stream, "entry_ids": ids, "imei": records[0]["imei"],
                "received_at": records[0]["received_at"], "records": records,
            })
            for ids, records in group_by_packet(good)
        ]  # fmt: skip

    async def _push(self, shard: int, good: list[tuple[str, Record]]) -> bool:
        """Push the jobs of ``good``; False if stopped before it went through."""
        payloads = self._payloads(shard, good)
        delay = RETRY_FIRST
        while True:
            try:
                await self._queue.push(payloads)
            except LaravelQueueError as exc:
                self.stats.push_failures += 1
                log.warning("shard %d: %d jobs not pushed, retry in %.1fs: %s",
                            shard, len(payloads), delay, exc)  # fmt: skip
                if self._stop.is_set():
                    return False
                await self._pause(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            self.stats.pushed += len(payloads)
            log.debug("shard %d: pushed %d jobs for %d entries", shard,
                      len(payloads), len(good))  # fmt: skip
            return True

    async def _settle_batch(
        self, shard: int, done: list[str], dead: list[_Dead]
    ) -> None:
        stream = self.keys.records(shard)
        args: list[Any] = [self.group, len(done) + len(dead), *done]
        args.extend(d.entry_id for d in dead)
        for d in dead:
            log.warning("shard %d: entry %s dead-lettered: %s", shard, d.entry_id,
                        d.reason)  # fmt: skip
            fields: list[Any] = []
            for name, value in d.fields.items():
                fields += [name, value]
            fields += [
                "source_stream", stream, "source_id", d.entry_id, "group", self.group,
                "consumer", self.consumer, "reason", d.reason,
                "deliveries", d.deliveries,
            ]  # fmt: skip
            args += [len(fields), *fields]

        keys = [stream, self.keys.deadletter(shard)]
        delay = RETRY_FIRST
        while True:
            try:
                await self._settle(keys=keys, args=args)
                break
            except RedisError as exc:
                self.stats.redis_errors += 1
                log.warning("shard %d: ack failed, retry in %.1fs: %s", shard, delay,
                            exc)  # fmt: skip
                if self._stop.is_set():
                    return
                await self._pause(delay)
                delay = min(delay * 2, RETRY_MAX)
        self.stats.acked += len(done) + len(dead)
        self.stats.dead_lettered += len(dead)


def build_bridge(settings: BridgeSettings, *, stop_when_empty: bool = False) -> Bridge:
    """A bridge with its own Redis clients for ``settings``."""
    timeout = settings.bridge_block_ms / 1000 + SOCKET_MARGIN
    streams = async_client(settings.redis_url, socket_timeout=timeout)
    laravel_url = settings.laravel_url()
    cluster = is_cluster_url(laravel_url)
    if laravel_url == settings.redis_url:
        laravel_client = streams
    else:
        laravel_client = async_client(laravel_url, socket_timeout=timeout)
    tag = settings.laravel_hash_tag == "always" or (
        settings.laravel_hash_tag == "auto" and cluster
    )
    key = queue_key(settings.laravel_prefix, settings.laravel_queue, hash_tag=tag)
    queue = LaravelQueue(
        laravel_client, key, notify=settings.laravel_notify, cluster=cluster
    )
    return Bridge(settings, streams, queue, stop_when_empty=stop_when_empty)
