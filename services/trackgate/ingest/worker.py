"""One ingest worker process: an event loop serving the tracker port.

The worker opens its own listening TCP socket and UDP socket on the shared
port (SO_REUSEPORT: the kernel spreads connections and datagrams over the
workers), holds the live sessions by IMEI, owns the group-commit writer and
Redis clients, and runs the background duties: timeouts, the control bus
(session take-overs, command wake-ups), following ``net.core.somaxconn``,
and measuring itself. The supervisor (:mod:`trackgate.ingest.supervisor`)
starts, restarts and stops workers; sessions do the per-connection work.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, cast

from aiohttp import web
from redis.exceptions import RedisError

from trackgate.core import telemetry as tm
from trackgate.core.holders import Holders
from trackgate.core.logs import LogLimiter
from trackgate.core.redisconn import (
    AsyncClient,
    async_client,
    is_cluster_url,
    pubsub_url,
)
from trackgate.core.store import (
    CLUSTER_CONCURRENCY,
    PacketWrite,
    RecordStore,
    Retention,
    SessionStore,
    StoreError,
    StreamHealth,
    WriteResult,
    stream_health,
)
from trackgate.core.telemetry import Gauge
from trackgate.diagnostics.errors import KernelInterfaceError
from trackgate.diagnostics.kernel import read_conntrack_stats, read_netstat
from trackgate.diagnostics.sockets import listen_queue
from trackgate.ingest.commands import CommandCourier
from trackgate.ingest.session import TcpSession
from trackgate.ingest.settings import IngestSettings
from trackgate.ingest.sockets import configure_listener, open_listeners, read_somaxconn
from trackgate.protocol import (
    REMOTE_ERROR_KINDS,
    GprsMessage,
    RemoteProtocolError,
    decode_udp_datagram,
    read_udp_head,
    udp_ack,
)

log = logging.getLogger("trackgate.ingest")

#: How often timeouts, somaxconn and the parent process are checked.
SWEEP_INTERVAL_S = 1.0
LOOP_LAG_INTERVAL_S = 0.25
#: How often and how patiently readiness asks Redis.
PROBE_INTERVAL_S = 1.0
PROBE_TIMEOUT_S = 2.0
#: How long shutdown waits for devices to be marked disconnected.
RELEASE_TIMEOUT_S = 3.0
#: A worker whose supervisor is gone waits this long for packets in flight
#: (not TRACKGATE_DRAIN_SECONDS), and stops within ORPHAN_STOP_S whatever
#: Redis does: nobody restarts or waits for it, and a new supervisor refuses
#: to start while the port is still served.
ORPHAN_DRAIN_S = 1.0
ORPHAN_STOP_S = 3.0
#: Session status writes in flight at once (see ``_bookkeeping``).
BOOKKEEPING_CONCURRENCY = 16
#: How often worker 0 reads stream lengths and consumer-group lag.
STREAM_WATCH_INTERVAL_S = 30.0


class Worker:
    """State of one worker: sockets, sessions, writer, background tasks."""

    def __init__(
        self,
        settings: IngestSettings,
        index: int = 0,
        supervisor_pid: int | None = None,
    ) -> None:
        self.settings = settings
        self.index = index
        self.name = f"{settings.pod_name}/{index}"
        self.keys = settings.keys()
        self.telemetry = tm.Telemetry(
            "trackgate-ingest",
            otlp_endpoint=settings.otlp_endpoint or None,
            trace_ratio=settings.trace_ratio,
        )
        # Exported at zero from the start, so a first event is an increase.
        for kind in REMOTE_ERROR_KINDS:
            self.telemetry.decode_errors.add(0, {tm.ATTR_KIND: kind})
        self.telemetry.sessions_replaced.add(0)
        self.telemetry.sessions_released.add(0)
        self.telemetry.bursts.add(0)
        redis_options: dict[str, Any] = {
            "socket_timeout": 10,
            "socket_connect_timeout": 5,
            "health_check_interval": 15,
        }
        self.redis: AsyncClient = async_client(settings.redis_url, **redis_options)
        # The write path has a client of its own: session bookkeeping and
        # command traffic in a reconnect storm never delay a record. A single
        # server needs a connection per batch in flight; a cluster one per
        # store command in flight (CLUSTER_CONCURRENCY) on each node.
        self.store_redis: AsyncClient = async_client(
            settings.redis_url, max_connections=CLUSTER_CONCURRENCY, **redis_options
        )
        self.store = RecordStore(
            self.store_redis,
            self.keys,
            retention=Retention(
                strategy=settings.retention,  # type: ignore[arg-type]
                max_age_s=settings.retention_age_s,
                max_length=settings.retention_length,
            ),
            dedup_window=settings.dedup_window,
            dedup_ttl_s=settings.dedup_ttl_s,
            wait_aof=settings.wait_aof_args(),
        )
        self.sessions_store = SessionStore(self.redis, self.keys)
        self.holders = Holders(
            self.redis, self.keys, self.name, ttl_s=settings.heartbeat_ttl_s
        )
        from trackgate.ingest.writer import BatchWriter

        self.writer = BatchWriter(
            self.store,
            self.telemetry,
            max_batch=settings.write_batch,
            timeout=settings.store_timeout_s,
        )
        self.courier = CommandCourier(
            self.redis,
            self.keys,
            codec14=settings.command_codec14,
            response_timeout=settings.command_response_timeout_s,
            retry_delay=settings.command_retry_delay_s,
            pod=settings.pod_name,
        )
        self.connections: set[TcpSession] = set()
        self.sessions: dict[str, TcpSession] = {}
        self.per_ip: Counter[str] = Counter()
        self.listeners: list[socket.socket] = []
        self.backlog = 0
        self.servers: list[asyncio.AbstractServer] = []
        self.udp_transports: list[asyncio.DatagramTransport] = []
        self.limiter = LogLimiter()
        self.stopping = False
        self.listening = False
        self.stream_report: list[StreamHealth] = []
        #: the last Redis probe answered (readiness follows it both ways)
        self.redis_ok = False
        self._tasks: set[asyncio.Task[Any]] = set()
        #: devices being marked disconnected; shutdown waits for them
        self._closing: set[asyncio.Task[None]] = set()
        #: session status writes in flight; a storm queues here, not in Redis
        self._bookkeeping = asyncio.Semaphore(BOOKKEEPING_CONCURRENCY)
        #: The supervisor's pid as it said at start: a worker that read its
        #: parent itself would take the reaper for it, were the supervisor
        #: killed while the worker was still importing.
        self._parent = os.getppid() if supervisor_pid is None else supervisor_pid
        #: set by SIGTERM/SIGINT, or by the sweep once the supervisor is gone
        self.stop_requested = asyncio.Event()
        self.orphaned = False
        self._register_gauges()

    # lifecycle

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        # A durability setting Redis cannot honour must stop the start, not
        # refuse every packet later. An unreachable Redis is not an error here.
        with contextlib.suppress(RedisError):
            await self.store.check_server()
        # Before listening: sessions a crashed predecessor held are over.
        await self._release_previous()
        with contextlib.suppress(RedisError, OSError):
            await self.holders.beat(int(time.time() * 1000))
        self.backlog = self.settings.backlog or read_somaxconn()
        self.listeners = open_listeners(
            self.settings.host, self.settings.port, socket.SOCK_STREAM
        )
        for sock in self.listeners:
            configure_listener(sock, self.settings)
            server = await loop.create_server(
                lambda: TcpSession(self), sock=sock, backlog=self.backlog
            )
            self.servers.append(server)
        if self.settings.udp:
            for sock in open_listeners(
                self.settings.host, self.settings.port, socket.SOCK_DGRAM
            ):
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: UdpEndpoint(self), sock=sock
                )
                self.udp_transports.append(transport)
        self.writer.start()
        self.listening = True
        self._spawn(self._sweep(), "sweep")
        self._spawn(self._bus(), "bus")
        self._spawn(self._loop_lag(), "loop-lag")
        self._spawn(self._warm_up(), "warm-up")
        self._spawn(self._probe_redis(), "probe")
        self._spawn(self._heartbeat(), "heartbeat")
        if self.index == 0:
            self._spawn(self._watch_streams(), "streams")
        log.info(
            "worker listening worker=%s port=%d backlog=%d udp=%s",
            self.name,
            self.settings.port,
            self.backlog,
            self.settings.udp,
        )

    async def stop(self) -> None:
        """Stop accepting, let in-flight packets finish, close the rest."""
        self.stopping = True
        self.listening = False
        for server in self.servers:
            server.close()
        for transport in self.udp_transports:
            transport.close()
        drain = self.settings.drain_seconds
        if self.orphaned:
            drain = min(drain, ORPHAN_DRAIN_S)
        deadline = time.monotonic() + drain
        while time.monotonic() < deadline and any(
            s.pending is not None for s in self.connections
        ):
            await asyncio.sleep(0.05)
        in_flight = sum(1 for s in self.connections if s.pending is not None)
        open_sessions = len(self.connections)
        for session in list(self.connections):
            session.close("shutdown")
        await self.writer.close()
        await self.store.close()
        await self.courier.close()
        # Closed transports report connection_lost on the next loop turn.
        await asyncio.sleep(0)
        if self._closing:
            await asyncio.wait(set(self._closing), timeout=RELEASE_TIMEOUT_S)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            await asyncio.wait_for(self._retire(), RELEASE_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - the heartbeat expires anyway
            log.warning("heartbeat not withdrawn worker=%s: %s", self.name, exc)
        await self.redis.aclose()
        await self.store_redis.aclose()
        self.telemetry.shutdown()
        log.info(
            "worker stopped worker=%s sessions_closed=%d unacked_in_flight=%d",
            self.name,
            open_sessions,
            in_flight,
        )

    @property
    def ready(self) -> bool:
        """Listening, Redis answering now, and not shutting down."""
        return (
            self.listening
            and self.redis_ok
            and self.writer.healthy
            and not self.stopping
        )

    # called by sessions

    def admit(self, session: TcpSession) -> str | None:
        """Register a new connection, or say why it must be closed."""
        self.telemetry.accepts.add(1)
        if self.stopping:
            return "shutting down"
        if len(self.connections) >= self.settings.max_connections:
            self._refuse_connection(session, "max_connections")
            return "too many connections"
        if self.per_ip[session.peer_ip] >= self.settings.max_connections_per_ip:
            self._refuse_connection(session, "max_connections_per_ip")
            return "too many connections from this address"
        self.connections.add(session)
        self.per_ip[session.peer_ip] += 1
        self.telemetry.connections_active.add(1)
        return None

    def forget(self, session: TcpSession) -> None:
        if session not in self.connections:
            return
        self.connections.discard(session)
        self.per_ip[session.peer_ip] -= 1
        if self.per_ip[session.peer_ip] <= 0:
            del self.per_ip[session.peer_ip]
        self.telemetry.connections_active.add(-1)
        reason = session.closed_reason or "closed"
        self.telemetry.sessions_closed.add(1, {tm.ATTR_REASON: _reason_kind(reason)})
        if not session.imei:
            return
        log.info(
            "session ended imei=%s peer=%s reason=%s",
            session.imei,
            session.peer,
            reason,
        )
        if self.sessions.get(session.imei) is session:
            del self.sessions[session.imei]
        self.courier.session_ended(session)
        if not session.replaced:
            task = asyncio.create_task(
                self._mark_closed(session.imei, session.session_id), name="closed"
            )
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def accept_imei(self, imei: str) -> bool:
        self.telemetry.handshakes.add(1, {tm.ATTR_RESULT: "accepted"})
        return not self.stopping

    def session_started(self, session: TcpSession) -> None:
        assert session.imei
        old = self.sessions.get(session.imei)
        if old is not None and old is not session:
            if _order(old) > _order(session):
                # A login that came late on a connection the device opened
                # before the one it uses now.
                self._replace(session, "a newer connection of the device owns it")
                return
            self._replace(old, "device connected again on this worker")
        self.sessions[session.imei] = session
        log.info("session started imei=%s peer=%s", session.imei, session.peer)
        self._spawn(self._announce(session), "announce")
        self._spawn(self.courier.session_started(session), "commands")

    def packet_acked(self, session: TcpSession, ack_seconds: float) -> None:
        self.count_acked(ack_seconds)
        # Most packets come between two looks at the queue: no task for them.
        if self.courier.due(session):
            self._spawn(self.courier.packet_acked(session), "commands")

    def count_acked(self, ack_seconds: float) -> None:
        """Metrics of one ACKed packet, TCP or UDP (the writer counts its
        records, ACKed or not)."""
        self.telemetry.ack_latency.observe(ack_seconds)

    def record_lags(self, packet: PacketWrite) -> None:
        stamps = [record.timestamp for record in packet.records]
        self.telemetry.record_lag.observe_ages(packet.received_at, stamps)
        if packet.burst:
            self.telemetry.bursts.add(1)

    def gprs_message(self, session: TcpSession, message: GprsMessage) -> None:
        log.debug(
            "device message imei=%s peer=%s codec=%d type=%d bytes=%d",
            session.imei,
            session.peer,
            message.codec,
            message.type,
            len(message.payload),
        )
        self._spawn(self.courier.response_received(session, message), "commands")

    def refused(self, session: TcpSession, kind: str, detail: str) -> None:
        self.telemetry.packets_refused.add(1, {tm.ATTR_REASON: kind})
        log.warning(
            "packet not stored, not ACKed imei=%s peer=%s reason=%s detail=%s",
            session.imei,
            session.peer,
            kind,
            detail,
        )

    def decode_error(self, session: TcpSession, exc: RemoteProtocolError) -> None:
        self.telemetry.decode_errors.add(1, {tm.ATTR_KIND: exc.kind})
        allowed, suppressed = self.limiter.allow(f"{exc.kind}:{session.peer_ip}")
        if allowed:
            log.warning(
                "malformed input imei=%s peer=%s kind=%s fatal=%s detail=%s "
                "suppressed_since=%d",
                session.imei or "-",
                session.peer,
                exc.kind,
                exc.fatal,
                exc,
                suppressed,
            )

    # internals

    def _replace(self, old: TcpSession, why: str) -> None:
        if self.sessions.get(old.imei) is old:
            del self.sessions[old.imei]
        old.replaced = True
        self.telemetry.sessions_replaced.add(1)
        log.info("session replaced imei=%s peer=%s why=%s", old.imei, old.peer, why)
        old.abort("replaced")

    def _refuse_connection(self, session: TcpSession, reason: str) -> None:
        self.telemetry.connections_refused.add(1, {tm.ATTR_REASON: reason})
        allowed, suppressed = self.limiter.allow(f"{reason}:{session.peer_ip}")
        if allowed:
            log.warning(
                "connection refused peer=%s reason=%s suppressed_since=%d",
                session.peer,
                reason,
                suppressed,
            )

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        log.error(
            "background task %s of worker=%s failed: %s: %s",
            task.get_name(),
            self.name,
            type(exc).__name__,
            exc,
            exc_info=exc,
        )

    async def _announce(self, session: TcpSession) -> None:
        assert session.imei
        try:
            async with self._bookkeeping:
                owned = await self.sessions_store.opened(
                    session.imei,
                    session.session_id,
                    pod=self.settings.pod_name,
                    worker=str(self.index),
                    peer=session.peer,
                    started_at=_started_ms(session),
                )
        except Exception as exc:  # noqa: BLE001 - status only; records are safe
            log.warning("session status not written imei=%s: %s", session.imei, exc)
            return
        if not owned and not session.closed:
            self._replace(session, "a newer connection of the device owns it")

    async def _mark_closed(self, imei: str, session_id: str) -> None:
        try:
            async with self._bookkeeping:
                await self.sessions_store.closed(
                    imei, session_id, int(time.time() * 1000), self.name
                )
        except Exception as exc:  # noqa: BLE001 - status only
            log.warning("session end not written imei=%s: %s", imei, exc)

    async def _warm_up(self) -> None:
        with contextlib.suppress(Exception):
            await self.store.load_scripts()

    async def _retire(self) -> None:
        """Release what is still marked as this worker's (a session end that
        was not written), then withdraw its heartbeat; should this fail, the
        sweep of another worker does both when the heartbeat expires."""
        await self.sessions_store.release_all(
            self.settings.pod_name, str(self.index), int(time.time() * 1000)
        )
        await self.holders.retire()

    async def _release_previous(self) -> None:
        try:
            released = await asyncio.wait_for(
                self.sessions_store.release_all(
                    self.settings.pod_name, str(self.index), int(time.time() * 1000)
                ),
                RELEASE_TIMEOUT_S,
            )
        except Exception as exc:  # noqa: BLE001 - status only, retried next start
            log.warning("sessions of a previous worker not released: %s", exc)
            return
        if released:
            log.info(
                "marked %d devices disconnected that a previous worker %s held",
                released,
                self.name,
            )

    async def _heartbeat(self) -> None:
        """Keep this worker's alive key; mark the devices of gone ones
        disconnected (every worker sweeps; a gone worker is claimed once)."""
        while True:
            await asyncio.sleep(self.settings.heartbeat_s)
            now = int(time.time() * 1000)
            try:
                if not await self.holders.beat(now):
                    self._announce_all()
                gone = await self.holders.sweep(now)
            except Exception as exc:  # noqa: BLE001 - retried next beat
                log.warning("heartbeat failed worker=%s: %s", self.name, exc)
                continue
            for released in gone.values():
                self.telemetry.sessions_released.add(released)

    def _announce_all(self) -> None:
        """After a heartbeat gap longer than its TTL (a stalled loop, Redis
        away): the sessions may have been released by a sweeper."""
        log.warning(
            "heartbeat had lapsed worker=%s: reclaiming %d sessions",
            self.name,
            len(self.sessions),
        )
        self._spawn(self._reclaim_all(), "reclaim")

    async def _reclaim_all(self) -> None:
        reclaimed = 0
        for imei, session in list(self.sessions.items()):
            try:
                async with self._bookkeeping:
                    reclaimed += await self.holders.reclaim(imei, session.session_id)
            except Exception as exc:  # noqa: BLE001 - status only
                log.warning("session not reclaimed imei=%s: %s", imei, exc)
        log.info("sessions marked connected again worker=%s: %d", self.name, reclaimed)

    async def _probe_redis(self) -> None:
        """Readiness follows Redis both ways, with or without traffic."""
        while True:
            try:
                await asyncio.wait_for(self.store_redis.ping(), PROBE_TIMEOUT_S)
            except Exception:  # noqa: BLE001 - any failure means not ready
                if self.redis_ok:
                    log.warning("redis does not answer: not ready")
                self.redis_ok = False
            else:
                if not self.redis_ok:
                    log.info("redis answers: ready worker=%s", self.name)
                self.redis_ok = True
                # A write that failed earlier does not keep us unready.
                if not self.writer.queued:
                    self.writer.healthy = True
            await asyncio.sleep(PROBE_INTERVAL_S)

    async def _sweep(self) -> None:
        """Handshake and idle timeouts, somaxconn growth, orphaned worker."""
        s = self.settings
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            now = time.monotonic()
            wall = time.time()
            for session in list(self.connections):
                silent = now - session.last_seen
                # The handshake deadline runs from the connect, not from the
                # last byte: a login trickled a byte at a time is cut as well.
                age = wall - session.started_at
                if not session.imei and age > s.handshake_timeout_s:
                    self._timeout(session, "handshake timeout")
                elif session.pending is None and silent > s.idle_timeout_s:
                    self._timeout(session, "idle timeout")
            self._follow_somaxconn()
            if os.getppid() != self._parent:
                log.error("supervisor is gone, worker=%s exits", self.name)
                self.orphaned = True
                self.stop_requested.set()
                return

    def _timeout(self, session: TcpSession, reason: str) -> None:
        # A storm of silent connections times out together: one line per
        # address and minute, the rest are counted in sessions_closed.
        allowed, suppressed = self.limiter.allow(f"{reason}:{session.peer_ip}")
        if allowed:
            log.info(
                "closing imei=%s peer=%s reason=%s suppressed_since=%d",
                session.imei or "-",
                session.peer,
                reason,
                suppressed,
            )
        session.abort(reason)

    def _follow_somaxconn(self) -> None:
        if self.settings.backlog:
            return
        limit = read_somaxconn()
        if limit > self.backlog:
            for sock in self.listeners:
                sock.listen(limit)
            log.info(
                "listen backlog raised worker=%s from=%d to=%d",
                self.name,
                self.backlog,
                limit,
            )
            self.backlog = limit

    async def _bus(self) -> None:
        """Follow the control channel: take-overs by other instances."""
        while True:
            try:
                await self._listen_bus()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - reconnect on any failure
                log.warning("control channel lost, reconnecting: %s", exc)
                await asyncio.sleep(1.0)

    async def _listen_bus(self) -> None:
        client = self.redis
        if is_cluster_url(self.settings.redis_url):
            # Classic pub/sub is broadcast cluster-wide: any node will do.
            client = async_client(pubsub_url(self.settings.redis_url))
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(self.keys.events())
        try:
            async for message in pubsub.listen():
                self._on_bus(message.get("data"))
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]

    def _on_bus(self, data: Any) -> None:
        try:
            event = json.loads(data)
        except (TypeError, ValueError):
            return
        kind = event.get("type")
        imei = str(event.get("imei"))
        if kind == "command":
            if imei in self.sessions:
                self._spawn(self.courier.wake(imei), "commands")
            return
        if kind != "session":
            return
        session = self.sessions.get(imei)
        if session is None or event.get("origin") == self.name:
            return  # this worker replaces its own sessions as they log in
        claimed_at = event.get("started_at")
        # Only a newer session takes over: a late claim of an older one (the
        # bus does not order messages against logins) must not win, and of
        # two sessions started in one millisecond exactly one does.
        if not isinstance(claimed_at, int):
            newer = True
        else:
            newer = (claimed_at, str(event.get("session_id"))) > _order(session)
        if newer:
            self._replace(session, "device connected to another instance")

    async def _watch_streams(self) -> None:
        """Consumer-group lag against retention: warn before unread entries go."""
        while True:
            try:
                self.stream_report = await stream_health(
                    self.redis, self.keys, self.store.retention
                )
            except Exception as exc:  # noqa: BLE001 - a metric, retried next round
                log.debug("stream health not read: %s", exc)
            for stream in self.stream_report:
                for group in stream.groups:
                    if not group.at_risk:
                        continue
                    allowed, _ = self.limiter.allow(
                        f"trim:{stream.stream}:{group.group}"
                    )
                    if allowed:
                        log.warning(
                            "retention will trim entries consumer group %s has not "
                            "read: stream=%s lag=%s headroom=%s (%s retention); "
                            "speed up the consumer or raise TRACKGATE_RETENTION_*",
                            group.group,
                            stream.stream,
                            group.lag,
                            group.headroom,
                            self.store.retention.strategy,
                        )
            await asyncio.sleep(STREAM_WATCH_INTERVAL_S)

    async def _loop_lag(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(LOOP_LAG_INTERVAL_S)
            late = loop.time() - started - LOOP_LAG_INTERVAL_S
            self.telemetry.loop_lag.record(max(late, 0.0))

    def _register_gauges(self) -> None:
        t = self.telemetry

        def queue() -> list[tuple[float, dict[str, str]]]:
            return [(float(listen_queue(s)[0]), _listener(s)) for s in self.listeners]

        def limit() -> list[tuple[float, dict[str, str]]]:
            return [(float(listen_queue(s)[1]), _listener(s)) for s in self.listeners]

        t.gauge("trackgate.listen_queue.length", "Accept queue length now", queue)
        t.gauge("trackgate.listen_queue.limit", "Accept queue limit (backlog)", limit)
        t.gauge(
            "trackgate.sessions",
            "Devices with a live session on this worker",
            lambda: [(float(len(self.sessions)), {})],
        )
        for stat in ("sent", "answered", "attempts_failed", "failed", "unsolicited"):
            t.counter(
                f"trackgate.commands.{stat}",
                f"Commands {stat.replace('_', ' ')} by this worker",
                _stat_reader(self.courier.stats, stat),
            )
        t.gauge(
            "trackgate.writer.queued",
            "Packets waiting for the Redis writer",
            lambda: [(float(self.writer.queued), {})],
        )
        if self.index == 0:
            # Kernel counters belong to the network namespace, not a worker:
            # one worker exports them, so dashboards do not count them twice.
            self._register_kernel_metrics()
            self._register_stream_metrics()

    def _register_stream_metrics(self) -> None:
        t = self.telemetry

        def rows(value: Callable[[Any, Any], float | None]) -> Gauge:
            def read() -> list[tuple[float, dict[str, str]]]:
                out = []
                for stream in self.stream_report:
                    for group in stream.groups:
                        v = value(stream, group)
                        if v is not None:
                            out.append(
                                (v, {"stream": stream.stream, "group": group.group})
                            )
                return out

            return read

        t.gauge(
            "trackgate.stream.length",
            "Entries in each records stream",
            lambda: [
                (float(s.length), {"stream": s.stream}) for s in self.stream_report
            ],
        )
        t.gauge(
            "trackgate.consumer_group.lag",
            "Entries a group has not read yet",
            rows(lambda _s, g: None if g.lag is None else float(g.lag)),
        )
        t.gauge(
            "trackgate.consumer_group.pending",
            "Entries read but not acknowledged",
            rows(lambda _s, g: float(g.pending)),
        )
        t.gauge(
            "trackgate.consumer_group.trim_headroom",
            "Seconds (age retention) or entries (length retention) before unread "
            "entries are trimmed",
            rows(lambda _s, g: g.headroom),
        )

    def _register_kernel_metrics(self) -> None:
        t = self.telemetry
        for name, counter, what in KERNEL_COUNTERS:
            t.counter(name, what, _netstat_reader(counter))

        def conntrack(
            field_name: str,
        ) -> Callable[[], list[tuple[float, dict[str, str]]]]:
            def read() -> list[tuple[float, dict[str, str]]]:
                stats = read_conntrack_stats()
                if stats is None:
                    return []
                value = {"count": stats.count, "max": stats.max}.get(
                    field_name, stats.counters.get(field_name)
                )
                return [] if value is None else [(float(value), {})]

            return read

        t.gauge("trackgate.conntrack.entries", "Conntrack entries", conntrack("count"))
        t.gauge("trackgate.conntrack.max", "nf_conntrack_max", conntrack("max"))
        for column in ("insert_failed", "drop", "early_drop"):
            t.counter(
                f"trackgate.conntrack.{column}",
                f"Conntrack {column}, summed over CPUs",
                conntrack(column),
            )


#: Counters of /proc/net/netstat exported as metrics (exported name, key, meaning).
KERNEL_COUNTERS = (
    (
        "trackgate.listen_overflows",
        "TcpExtListenOverflows",
        "Connections dropped because an accept queue was full (this netns)",
    ),
    (
        "trackgate.listen_drops",
        "TcpExtListenDrops",
        "SYNs and handshakes dropped at a listener, overflows included",
    ),
    (
        "trackgate.tcp_backlog_drops",
        "TcpExtTCPBacklogDrop",
        "Segments dropped because a socket's backlog was full while it was busy; "
        "not the accept queue",
    ),
    (
        "trackgate.syn_queue_drops",
        "TcpExtTCPReqQFullDrop",
        "SYNs dropped because the SYN queue was full and cookies were off",
    ),
    ("trackgate.syncookies_sent", "TcpExtSyncookiesSent", "SYN cookies sent"),
)


def _stat_reader(stats: object, name: str) -> Gauge:
    return lambda: [(float(getattr(stats, name)), {})]


def _netstat_reader(counter: str) -> Callable[[], list[tuple[float, dict[str, str]]]]:
    def read() -> list[tuple[float, dict[str, str]]]:
        try:
            value = read_netstat().get(counter)
        except KernelInterfaceError:
            return []
        return [] if value is None else [(float(value), {})]

    return read


class UdpEndpoint(asyncio.DatagramProtocol):
    """Datagrams: decode, store, then answer with the UDP ACK."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio's; they behave alike.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        worker = self.worker
        peer = f"{addr[0]}:{addr[1]}"
        try:
            datagram = decode_udp_datagram(data)
        except RemoteProtocolError as exc:
            worker.telemetry.decode_errors.add(1, {tm.ATTR_KIND: exc.kind})
            allowed, suppressed = worker.limiter.allow(f"udp:{exc.kind}:{addr[0]}")
            if allowed:
                log.warning(
                    "malformed datagram imei=%s peer=%s kind=%s detail=%s "
                    "suppressed_since=%d",
                    _header_imei(data),
                    peer,
                    exc.kind,
                    exc,
                    suppressed,
                )
            return
        if worker.stopping:
            return
        packet = datagram.packet
        write = PacketWrite(
            imei=datagram.imei,
            codec=packet.codec,
            records=packet.records,
            received_at=int(time.time() * 1000),
            transport="udp",
            peer=peer,
        )
        started = time.perf_counter()
        future = worker.writer.submit(write)

        def stored(future: asyncio.Future[WriteResult]) -> None:
            try:
                result = future.result()
            except StoreError as exc:
                worker.telemetry.packets_refused.add(
                    1, {tm.ATTR_REASON: "store_timeout"}
                )
                log.warning(
                    "datagram not stored, not ACKed imei=%s peer=%s: %s",
                    datagram.imei,
                    peer,
                    exc,
                )
                return
            if not result.ok:
                worker.telemetry.packets_refused.add(
                    1, {tm.ATTR_REASON: "store_refused"}
                )
                return
            if self.transport is not None and not self.transport.is_closing():
                ack = udp_ack(
                    datagram.packet_id, datagram.avl_packet_id, result.accepted
                )
                self.transport.sendto(ack, addr)
            worker.count_acked(time.perf_counter() - started)

        future.add_done_callback(stored)
        worker.record_lags(write)


def _header_imei(data: bytes) -> str:
    """The IMEI of a datagram's header when it can be read, else ``-``.

    For the log of a datagram that failed to decode: a bad record count or
    codec further on still names its device.
    """
    head = read_udp_head(data)
    return head.imei if head is not None and head.imei else "-"


def _listener(sock: socket.socket) -> dict[str, str]:
    host, port = sock.getsockname()[:2]
    return {"listener": f"{host}:{port}"}


def _started_ms(session: TcpSession) -> int:
    return int(session.started_at * 1000)


def _order(session: TcpSession) -> tuple[int, str]:
    """Of two sessions of a device, the larger is the newer: the later
    accepted, then the larger id (the order every worker and pod agrees on)."""
    return _started_ms(session), session.session_id


def _reason_kind(reason: str) -> str:
    """A bounded label for a free-text close reason."""
    return reason.split(":", 1)[0].replace(" ", "_")[:32]


async def admin_app(worker: Worker) -> web.Application:
    """The worker's own /metrics, /healthz and /readyz (loopback only)."""

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(
            body=tm.prometheus_text(), content_type="text/plain", charset="utf-8"
        )

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "worker": worker.name})

    async def readyz(_request: web.Request) -> web.Response:
        body = {
            "ready": worker.ready,
            "listening": worker.listening,
            "redis": worker.redis_ok and worker.writer.healthy,
            "sessions": len(worker.sessions),
            "connections": len(worker.connections),
        }
        return web.json_response(body, status=200 if worker.ready else 503)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


async def serve(
    settings: IngestSettings,
    index: int,
    admin_fd: int,
    supervisor_pid: int | None = None,
) -> None:
    """Run one worker until SIGTERM or SIGINT, or until its supervisor is gone."""
    worker = Worker(settings, index, supervisor_pid)
    await worker.start()
    runner = web.AppRunner(await admin_app(worker), access_log=None)
    await runner.setup()
    if admin_fd >= 0:
        # The supervisor's listener for this worker, inherited.
        admin = socket.socket(fileno=admin_fd)
        await web.SockSite(runner, admin).start()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop_requested.set)
    await worker.stop_requested.wait()
    if worker.orphaned:
        try:
            await asyncio.wait_for(worker.stop(), ORPHAN_STOP_S)
        except TimeoutError:
            log.warning(
                "worker=%s exits before its shutdown finished (%.0f s, Redis "
                "does not answer?)",
                worker.name,
                ORPHAN_STOP_S,
            )
    else:
        await worker.stop()
    await runner.cleanup()
