"""The ingest supervisor: N worker processes and the pod's admin port.

``trackgate ingest`` runs this. It starts one worker process per CPU (or
``--workers``); each binds the tracker port with SO_REUSEPORT, so the kernel
spreads connections over them. A worker that dies is started again with
backoff. SIGTERM (or SIGINT) is passed on to the workers, which drain; any
still running after the grace period is killed.

Each worker's event loop sends pulses over a pipe
(:mod:`trackgate.ingest.liveness`). A worker whose loop has not turned for
``TRACKGATE_WORKER_HANG_TIMEOUT_S`` is hung: it is logged and counted, and
(unless ``TRACKGATE_WORKER_HANG_RESTART=false``) asked for a stack dump,
killed and started again like a worker that died.

The admin HTTP port serves ``/healthz`` (the supervisor and every worker
alive, no worker hung), ``/readyz`` (every worker listening with Redis
reachable) and ``/metrics`` (all workers' metrics, merged, each sample
labelled with its worker, and the supervisor's own). Workers serve their own
admin endpoints on loopback ports chosen here.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry

from trackgate.core.store import ENTRY_PACKER
from trackgate.diagnostics.errors import DiagnosticsError
from trackgate.diagnostics.sockets import listeners
from trackgate.ingest.liveness import PULSE_INTERVAL_S, PulseReader
from trackgate.ingest.settings import IngestSettings
from trackgate.ingest.sockets import read_somaxconn
from trackgate.protocol import RECORD_DECODER

log = logging.getLogger("trackgate.ingest.supervisor")

#: Restart backoff for a crashing worker, capped so a bad deploy does not
#: spin a CPU; reset after a worker lived this long.
RESTART_DELAYS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
HEALTHY_AFTER_S = 60.0
#: A worker that dies this soon after start this many times in a row cannot
#: start (port taken, bad settings): the supervisor exits instead of looping.
QUICK_EXIT_S = 5.0
GIVE_UP_AFTER = 4
#: Below this the kernel cap on the backlog is too low for a reconnect storm.
LOW_SOMAXCONN = 1024
#: How often the workers' pulses are looked at.
WATCH_INTERVAL_S = 2 * PULSE_INTERVAL_S
#: Time a hung worker gets to write its stack dump before it is killed.
STACK_DUMP_WAIT_S = 0.5


@dataclass
class WorkerProcess:
    index: int
    #: the worker's admin listener on loopback, opened by the supervisor and
    #: kept for every process of this worker, so its port never changes hands
    admin_socket: socket.socket
    process: asyncio.subprocess.Process | None = None
    started: float = 0.0
    restarts: int = 0
    failures_in_row: int = 0
    exit_codes: list[int] = field(default_factory=list)
    #: the supervisor's end of this process's pulse pipe
    pulses: PulseReader | None = None
    #: found hung and not seen turning since (reset by a new process)
    hung: bool = False
    hangs: int = 0

    def admin_port(self) -> int:
        return int(self.admin_socket.getsockname()[1])

    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def silent_for(self, now: float) -> float | None:
        """Seconds since its loop last turned; None if no process runs."""
        if not self.alive() or self.pulses is None:
            return None
        self.pulses.read()
        return self.pulses.silent_for(now)

    def loop_hung(self, now: float, threshold_s: float) -> bool:
        """A running process whose event loop has not turned for too long."""
        if not self.alive() or self.pulses is None:
            return False
        self.pulses.read()
        return self.pulses.hung(now, threshold_s)


def _loopback_listener() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


def port_taken(host: str, port: int) -> str | None:
    """The address of a listener that already serves ``host:port``, if any."""
    try:
        rows = listeners(port)
    except DiagnosticsError:
        return None
    wildcard = ("", "0.0.0.0", "::")
    for row in rows:
        if host in wildcard or row.address in wildcard or row.address == host:
            return f"{row.address}:{row.port}"
    return None


def worker_count(settings: IngestSettings) -> int:
    if settings.workers:
        return settings.workers
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:
        return os.cpu_count() or 1


def worker_env(settings: IngestSettings) -> dict[str, str]:
    """The environment that gives a worker exactly these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKGATE_")}
    for name, value in settings.model_dump().items():
        env[f"TRACKGATE_{name.upper()}"] = (
            str(value).lower() if isinstance(value, bool) else str(value)
        )
    return env


class Supervisor:
    def __init__(self, settings: IngestSettings) -> None:
        self.settings = settings
        self.workers = [
            WorkerProcess(i, _loopback_listener())
            for i in range(worker_count(settings))
        ]
        self.stopping = False
        self._session: aiohttp.ClientSession | None = None

    async def run(self) -> int:
        taken = port_taken(self.settings.host, self.settings.port)
        if taken is not None:
            # SO_REUSEPORT would let a second gateway share the port with the
            # first one and quietly split the devices between them.
            log.error(
                "port %d is already served by %s (another gateway?): not starting",
                self.settings.port,
                taken,
            )
            return 2
        admin = self.settings.admin_port
        taken = port_taken(self.settings.admin_host, admin) if admin else None
        if taken is not None:
            log.error(
                "admin port %d is already served by %s (another gateway?): "
                "not starting",
                admin,
                taken,
            )
            return 2
        other = await self._pod_name_in_use()
        if other is not None:
            log.error(
                "pod name %s is in use: ingest worker %s renews its heartbeat in "
                "Redis; two gateways under one name mark each other's devices "
                "disconnected. Give each its own TRACKGATE_POD_NAME: not starting",
                self.settings.pod_name,
                other,
            )
            return 2
        self._check_backlog()
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3))
        runner = await self._start_admin()
        watchers = [asyncio.create_task(self._keep(w)) for w in self.workers]
        loops = asyncio.create_task(self._watch_loops())
        log.info(
            "ingest started workers=%d port=%d admin_port=%d "
            "record_decoder=%s entry_packer=%s",
            len(self.workers),
            self.settings.port,
            self.settings.admin_port,
            RECORD_DECODER,
            ENTRY_PACKER,
        )
        if "python" in (RECORD_DECODER, ENTRY_PACKER):
            log.warning(
                "the C extensions were not built (no compiler at install time): "
                "records are decoded and packed in Python, several times slower"
            )
        done, _ = await asyncio.wait(
            [asyncio.create_task(stop.wait()), *watchers],
            return_when=asyncio.FIRST_COMPLETED,
        )
        failed = any(t in done and t.result() is False for t in watchers)
        await self._stop_workers()
        for task in (*watchers, loops):
            task.cancel()
        await asyncio.gather(*watchers, loops, return_exceptions=True)
        await self._session.close()
        if runner is not None:
            await runner.cleanup()
        log.info("ingest stopped")
        return 1 if failed else 0

    def _check_backlog(self) -> None:
        somaxconn = read_somaxconn()
        wanted = self.settings.backlog or somaxconn
        effective = min(wanted, somaxconn)
        log.info("listen backlog=%d (net.core.somaxconn=%d)", effective, somaxconn)
        if self.settings.backlog and self.settings.backlog > somaxconn:
            log.warning(
                "the kernel caps the listen backlog at net.core.somaxconn=%d, "
                "below the %d asked for: raise it (see docs/deploy.md)",
                somaxconn,
                self.settings.backlog,
            )
        elif somaxconn < LOW_SOMAXCONN:
            log.warning(
                "net.core.somaxconn=%d is low for reconnect storms; SYNs will be "
                "dropped once the accept queue is full",
                somaxconn,
            )

    async def _spawn(self, worker: WorkerProcess) -> None:
        pulse_read, pulse_write = os.pipe()
        try:
            worker.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "trackgate.ingest.worker_main",
                str(worker.index),
                str(worker.admin_socket.fileno()),
                str(pulse_write),
                str(os.getpid()),
                env=worker_env(self.settings),
                pass_fds=(pulse_write, worker.admin_socket.fileno()),
            )
        except BaseException:
            os.close(pulse_read)
            raise
        finally:
            os.close(pulse_write)
        worker.started = time.monotonic()
        worker.pulses = PulseReader(pulse_read, worker.started)
        worker.hung = False

    async def _keep(self, worker: WorkerProcess) -> bool:
        """Run a worker, restarting it; False when it cannot start at all."""
        while not self.stopping:
            await self._spawn(worker)
            assert worker.process is not None and worker.pulses is not None
            code = await worker.process.wait()
            worker.pulses.close()
            if self.stopping:
                return True
            worker.exit_codes = (worker.exit_codes + [code])[-10:]
            lived = time.monotonic() - worker.started
            if lived > HEALTHY_AFTER_S:
                worker.failures_in_row = 0
            worker.failures_in_row += 1
            if lived < QUICK_EXIT_S and worker.failures_in_row >= GIVE_UP_AFTER:
                log.error(
                    "worker %d exits at start (code %d, %d times): giving up",
                    worker.index,
                    code,
                    worker.failures_in_row,
                )
                return False
            delay = RESTART_DELAYS[min(worker.failures_in_row, len(RESTART_DELAYS) - 1)]
            log.warning(
                "worker %d exited with %d after %.1f s; restarting in %.1f s",
                worker.index,
                code,
                lived,
                delay,
            )
            worker.restarts += 1
            await asyncio.sleep(delay)
        return True

    async def _watch_loops(self) -> None:
        """Find workers whose event loop stopped turning; replace them."""
        threshold = self.settings.worker_hang_timeout_s
        while not self.stopping:
            await asyncio.sleep(WATCH_INTERVAL_S)
            now = time.monotonic()
            newly_hung = []
            for worker in self.workers:
                hung = worker.loop_hung(now, threshold)
                if hung and not worker.hung:
                    worker.hung = True
                    worker.hangs += 1
                    newly_hung.append(worker)
                    self._report_hang(worker, now)
                elif worker.hung and not hung and worker.alive():
                    worker.hung = False
                    log.warning(
                        "worker %d event loop turns again (pid %s)",
                        worker.index,
                        _pid(worker),
                    )
            if newly_hung and self.settings.worker_hang_restart:
                await self._kill_hung(newly_hung)

    def _report_hang(self, worker: WorkerProcess, now: float) -> None:
        silent = worker.silent_for(now) or 0.0
        threshold = self.settings.worker_hang_timeout_s
        if self.settings.worker_hang_restart:
            log.error(
                "worker %d (pid %s) is hung: its event loop has not turned for "
                "%.1f s (limit %.1f s); dumping its stack, killing it and "
                "starting it again",
                worker.index,
                _pid(worker),
                silent,
                threshold,
            )
        else:
            log.error(
                "worker %d (pid %s) is hung: its event loop has not turned for "
                "%.1f s (limit %.1f s); left running "
                "(TRACKGATE_WORKER_HANG_RESTART=false), /healthz fails",
                worker.index,
                _pid(worker),
                silent,
                threshold,
            )

    async def _kill_hung(self, workers: list[WorkerProcess]) -> None:
        """SIGUSR1 (a stack dump to the log), then SIGKILL; _keep restarts."""
        processes = [w.process for w in workers if w.process is not None]
        for process in processes:
            with suppress(ProcessLookupError):
                process.send_signal(signal.SIGUSR1)
        await asyncio.sleep(STACK_DUMP_WAIT_S)
        for process in processes:
            if process.returncode is None and not self.stopping:
                with suppress(ProcessLookupError):
                    process.kill()

    async def _stop_workers(self) -> None:
        self.stopping = True
        running = [
            w.process
            for w in self.workers
            if w.process is not None and w.process.returncode is None
        ]
        for process in running:
            process.send_signal(signal.SIGTERM)
        grace = self.settings.drain_seconds + 5.0
        try:
            await asyncio.wait_for(
                asyncio.gather(*(p.wait() for p in running)), timeout=grace
            )
        except TimeoutError:
            for process in running:
                if process.returncode is None:
                    log.warning(
                        "worker pid %d did not stop in %.0f s: killed",
                        process.pid,
                        grace,
                    )
                    process.kill()
            await asyncio.gather(*(p.wait() for p in running))

    async def _pod_name_in_use(self) -> str | None:
        """The ``pod/worker`` of a live gateway already using this pod name.

        A worker's alive key outlives a crash by its TTL, so a key alone
        proves nothing: the key must move again within one heartbeat. Only a
        start that finds such keys waits (a restart after a crash, or a
        second gateway), about one heartbeat. Without Redis nothing is known.
        """
        from redis.exceptions import RedisError

        from trackgate.core.redisconn import async_client

        keys = self.settings.keys()
        names = [f"{self.settings.pod_name}/{w.index}" for w in self.workers]
        client = async_client(self.settings.redis_url)
        try:
            seen = {n: await client.get(keys.alive(n)) for n in names}
            seen = {n: v for n, v in seen.items() if v is not None}
            if not seen:
                return None
            await asyncio.sleep(self.settings.heartbeat_s * 1.5)
            for name, before in seen.items():
                if await client.get(keys.alive(name)) not in (None, before):
                    return name
            return None
        except (RedisError, OSError) as exc:
            log.warning("pod name not checked against live gateways: %s", exc)
            return None
        finally:
            await client.aclose()

    # admin HTTP

    async def _start_admin(self) -> web.AppRunner | None:
        if not self.settings.admin_port:
            return None
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.settings.admin_host, self.settings.admin_port)
        await site.start()
        return runner

    async def _fetch(self, worker: WorkerProcess, path: str) -> tuple[int, str]:
        assert self._session is not None
        url = f"http://127.0.0.1:{worker.admin_port()}{path}"
        try:
            async with self._session.get(url) as response:
                return response.status, await response.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            return 0, str(exc)

    async def _fetch_unless_hung(
        self, worker: WorkerProcess, path: str
    ) -> tuple[int, str]:
        """A hung or dead worker would only let the request time out (its
        admin listener stays open in the supervisor for its successor)."""
        now = time.monotonic()
        if not worker.alive():
            return 0, "worker not running"
        if worker.loop_hung(now, self.settings.worker_hang_timeout_s):
            return 0, "event loop hung"
        return await self._fetch(worker, path)

    async def _healthz(self, _request: web.Request) -> web.Response:
        now = time.monotonic()
        threshold = self.settings.worker_hang_timeout_s
        alive = [w.alive() for w in self.workers]
        hung = [w.loop_hung(now, threshold) for w in self.workers]
        status = 200 if all(alive) and not any(hung) else 503
        return web.json_response(
            {"workers": len(alive), "alive": sum(alive), "hung": sum(hung)},
            status=status,
        )

    async def _readyz(self, _request: web.Request) -> web.Response:
        answers = await asyncio.gather(
            *(self._fetch_unless_hung(w, "/readyz") for w in self.workers)
        )
        ready = [code == 200 for code, _ in answers]
        ok = all(ready) and not self.stopping
        return web.json_response(
            {"ready": ok, "workers": len(ready), "workers_ready": sum(ready)},
            status=200 if ok else 503,
        )

    async def _metrics(self, _request: web.Request) -> web.Response:
        answers = await asyncio.gather(
            *(self._fetch_unless_hung(w, "/metrics") for w in self.workers)
        )
        texts = {
            w.index: text
            for w, (code, text) in zip(self.workers, answers, strict=True)
            if code == 200
        }
        body = merge_metrics(texts, self._own_metrics())
        return web.Response(body=body, content_type="text/plain", charset="utf-8")

    def _own_metrics(self) -> list[Metric]:
        """The supervisor's view of its workers, labelled like theirs."""
        hangs = CounterMetricFamily(
            "trackgate_worker_hangs",
            "Times a worker's event loop was found not turning for longer than "
            "TRACKGATE_WORKER_HANG_TIMEOUT_S",
            labels=["worker"],
        )
        restarts = CounterMetricFamily(
            "trackgate_worker_restarts",
            "Worker processes started again after they exited or were killed",
            labels=["worker"],
        )
        silence = GaugeMetricFamily(
            "trackgate_worker_loop_silence_seconds",
            "Seconds since a worker's event loop last showed that it turns",
            labels=["worker"],
        )
        now = time.monotonic()
        for worker in self.workers:
            label = [str(worker.index)]
            hangs.add_metric(label, worker.hangs)
            restarts.add_metric(label, worker.restarts)
            silent = worker.silent_for(now)
            if silent is not None:
                silence.add_metric(label, silent)
        return [hangs, restarts, silence]


def _pid(worker: WorkerProcess) -> str:
    return "-" if worker.process is None else str(worker.process.pid)


class _Merged(Collector):
    def __init__(self, texts: dict[int, str], own: Iterable[Metric] = ()) -> None:
        self.texts = texts
        self.own = list(own)

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for index, text in sorted(self.texts.items()):
            for family in text_string_to_metric_families(text):
                target = merged.get(family.name)
                if target is None:
                    target = Metric(
                        family.name, family.documentation, family.type, family.unit
                    )
                    merged[family.name] = target
                for sample in family.samples:
                    labels = dict(sample.labels)
                    labels["worker"] = str(index)
                    for scope in (
                        "otel_scope_name",
                        "otel_scope_version",
                        "otel_scope_schema_url",
                    ):
                        labels.pop(scope, None)
                    target.add_sample(
                        sample.name,
                        labels,
                        sample.value,
                        sample.timestamp,
                        sample.exemplar,
                    )
        yield from merged.values()
        yield from self.own


def merge_metrics(texts: dict[int, str], own: Iterable[Metric] = ()) -> bytes:
    """Several workers' Prometheus texts as one, with a ``worker`` label,
    followed by the supervisor's own metric families ``own``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged(texts, own))
    return generate_latest(registry)
