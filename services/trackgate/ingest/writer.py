"""Group commit: packets from many sessions, one Redis round trip per batch.

Sessions call :meth:`BatchWriter.submit` and get a future that resolves to
the packet's :class:`WriteResult` once Redis has answered. While one batch is
in flight the next one gathers, so under load batches grow by themselves and
the per-packet cost of a round trip falls; when idle a packet goes out alone
at once. The writer counts the records Redis stored and recognised as
resends (``trackgate_records_total``, ``trackgate_records_duplicate_total``)
for every packet Redis answered, whether or not its device is still there.

When Redis is unreachable the writer keeps the batch and tries again with
backoff; a packet whose deadline passes fails with :class:`StoreError` (the
session then closes the link unACKed and the device resends later). The
writer marks the worker not ready meanwhile. It never ACKs anything itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass

from trackgate.core.store import PacketWrite, RecordStore, StoreError, WriteResult
from trackgate.core.telemetry import Telemetry

log = logging.getLogger("trackgate.ingest.writer")

#: Backoff between attempts while Redis is down: quick at first (a failover
#: takes a second or two), then every two seconds.
RETRY_DELAYS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0)


@dataclass(slots=True)
class _Pending:
    packet: PacketWrite
    future: asyncio.Future[WriteResult]
    deadline: float


class BatchWriter:
    """Writes submitted packets in batches with ``lanes`` batches in flight."""

    def __init__(
        self,
        store: RecordStore,
        telemetry: Telemetry | None = None,
        *,
        max_batch: int = 256,
        lanes: int = 2,
        timeout: float = 20.0,
    ) -> None:
        self.store = store
        self.telemetry = telemetry
        self.max_batch = max_batch
        self.lanes = lanes
        self.timeout = timeout
        self.healthy = True
        self._queue: deque[_Pending] = deque()
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        # Looked up once: get_running_loop() costs a getpid() system call.
        self._loop = asyncio.get_running_loop()
        self._tasks = [
            asyncio.create_task(self._lane(), name=f"writer-{n}")
            for n in range(self.lanes)
        ]

    @property
    def queued(self) -> int:
        return len(self._queue)

    def submit(self, packet: PacketWrite) -> asyncio.Future[WriteResult]:
        loop = self._loop or asyncio.get_running_loop()
        future: asyncio.Future[WriteResult] = loop.create_future()
        deadline = time.monotonic() + self.timeout
        self._queue.append(_Pending(packet, future, deadline))
        self._wakeup.set()
        return future

    async def close(self) -> None:
        """Stop the lanes; packets still queued fail (they were never ACKed)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        while self._queue:
            pending = self._queue.popleft()
            if not pending.future.done():
                pending.future.set_exception(StoreError("shutting down"))
                # Its session is closed already: nobody will read the failure.
                pending.future.exception()

    async def _lane(self) -> None:
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = [
                self._queue.popleft()
                for _ in range(min(self.max_batch, len(self._queue)))
            ]
            await self._write(batch)

    async def _write(self, batch: list[_Pending]) -> None:
        attempt = 0
        while batch:
            started = time.perf_counter()
            try:
                results = await self.store.write([p.packet for p in batch])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - never lose the lane
                if not isinstance(exc, StoreError):
                    log.error("unexpected store failure", exc_info=exc)
                    exc = StoreError(f"{type(exc).__name__}: {exc}")
                batch = self._expire(batch, exc)
                if self.healthy:
                    log.warning("redis write failed, retrying: %s", exc)
                self.healthy = False
                await asyncio.sleep(RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)])
                attempt += 1
                continue
            if attempt:
                log.info("redis writes succeed again after %d retries", attempt)
            self.healthy = True
            telemetry = self.telemetry
            if telemetry is not None:
                telemetry.redis_latency.record(time.perf_counter() - started)
            for pending, result in zip(batch, results, strict=True):
                if telemetry is not None:
                    # Counted here, as Redis answered: a packet whose session
                    # closed meanwhile is stored all the same (its device's
                    # resend then counts as duplicates), though nobody is ACKed.
                    transport = pending.packet.transport
                    if result.stored:
                        telemetry.records.add(result.stored, transport)
                    if result.duplicates:
                        telemetry.duplicates.add(result.duplicates, transport)
                if not pending.future.done():
                    pending.future.set_result(result)
            return

    @staticmethod
    def _expire(batch: list[_Pending], exc: StoreError) -> list[_Pending]:
        now = time.monotonic()
        alive = []
        for pending in batch:
            if pending.future.done():
                continue
            if now >= pending.deadline:
                pending.future.set_exception(StoreError(f"gave up: {exc}"))
            else:
                alive.append(pending)
        return alive
