"""The load modes of ``trackgate simulate`` against real gateways.

Throughput, storm and hold run against ``trackgate ingest`` and a real
Redis, and what they report is checked against what the gateway stored.
Behaviour a real gateway does not show on demand (a wrong ACK, a command
before an ACK, silence, a refused IMEI, sessions closed one by one) comes
from small scripted peers on real sockets, and an address that answers no
connect from a listener whose accept queue is full.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter
from collections.abc import Iterator

import pytest
import redis

from tests.support.servers import IngestProcess, RedisServer, free_port
from tests.support.unanswered import unanswered_port
from trackgate.core.commands import CommandState, CommandStore, NewCommand
from trackgate.core.keys import Keys
from trackgate.core.redisconn import async_client
from trackgate.protocol import (
    CODEC_12,
    RESPONSE_TYPE,
    AvlPacket,
    GprsMessage,
    decode_tcp_frame,
    encode_command,
    imei_reply,
    tcp_ack,
)
from trackgate.sim import imei_for, load

KEYS = Keys()
HOST = "127.0.0.1"
NO_LATENCY = dict.fromkeys(("p50", "p90", "p99", "max"))


@pytest.fixture(scope="module")
def gateway(redis_proc: RedisServer) -> Iterator[IngestProcess]:
    """One gateway for the module; tests keep apart by their IMEIs."""
    ingest = IngestProcess(
        redis_proc.url, max_connections="100000", max_connections_per_ip="100000"
    )
    ingest.start()
    try:
        yield ingest
    finally:
        ingest.stop()


def stored_per_imei(redis_url: str) -> Counter[str]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    stored: Counter[str] = Counter()
    for stream in KEYS.all_records():
        for _id, fields in client.xrange(stream):
            stored[fields["imei"]] += 1
    client.close()
    return stored


# Throughput against the gateway ---------------------------------------------


async def test_throughput_every_record_is_acked_and_stored(
    gateway: IngestProcess, redis_url: str
) -> None:
    summary = await load.throughput(
        HOST, gateway.port, devices=5, packets=4, records=10, codec=0x08,
        first_imei=1000, timeout=60,
    )  # fmt: skip

    assert summary["records_sent"] == 5 * 4 * 10
    assert summary["records_acked"] == summary["records_sent"]
    assert (summary["devices_failed"], summary["resends"]) == (0, 0)
    assert (summary["devices_connected"], summary["connect_failures"]) == (5, {})
    assert summary["reconnects"] == 0
    assert 0 < summary["ack_latency_ms"]["p50"] <= summary["ack_latency_ms"]["max"]
    assert summary["records_per_s"] > 0
    stored = stored_per_imei(redis_url)
    assert stored == {imei_for(1000 + i): 40 for i in range(5)}


async def test_paced_device_sends_at_its_interval_and_answers_commands(
    gateway: IngestProcess, redis_url: str
) -> None:
    imei = imei_for(2000)
    client = async_client(redis_url, decode_responses=True)
    commands = CommandStore(client, KEYS)
    started = time.monotonic()
    run = asyncio.create_task(
        load.throughput(
            HOST,
            gateway.port,
            devices=1,
            packets=8,
            records=2,
            interval=0.25,
            first_imei=2000,
            timeout=60,
        )
    )
    try:
        queued, _ = await commands.enqueue(NewCommand(imei=imei, text="getver"))
        deadline = time.monotonic() + 10
        command = queued
        while command.state != CommandState.ANSWERED:
            assert time.monotonic() < deadline, "the command was never answered"
            await asyncio.sleep(0.05)
            command = await commands.get(imei, queued.id)
        summary = await run
    finally:
        await client.aclose()
    took = time.monotonic() - started

    assert command.response is not None and command.response.startswith("Ver:")
    assert summary["records_acked"] == 16
    assert summary["resends"] == 0
    # Seven pauses of 0.25 s after the first packet, plus up to one before it.
    assert 7 * 0.25 <= took < 8 * 0.25 + 3
    assert stored_per_imei(redis_url)[imei] == 16


@pytest.mark.slow
async def test_gateway_restart_mid_run_loses_nothing(redis_url: str) -> None:
    ingest = IngestProcess(redis_url)
    await asyncio.to_thread(ingest.start)
    run = asyncio.create_task(
        load.throughput(
            HOST,
            ingest.port,
            devices=10,
            packets=30,
            records=2,
            interval=0.05,
            first_imei=3000,
            timeout=60,
        )
    )
    try:
        await asyncio.sleep(0.5)
        await asyncio.to_thread(ingest.stop)
        await asyncio.to_thread(ingest.start)
        summary = await asyncio.wait_for(run, 60)
    finally:
        await asyncio.to_thread(ingest.stop)

    assert summary["devices_failed"] == 0
    assert summary["records_acked"] == summary["records_sent"] == 600
    assert summary["reconnects"] >= 10
    # Resent packets were stored once.
    assert stored_per_imei(redis_url) == {imei_for(3000 + i): 60 for i in range(10)}


# Throughput against a scripted gateway --------------------------------------


class ScriptedGateway:
    """Logs devices in and ACKs packets; what to do per packet is scripted.

    ``script`` maps (connection number, packet number on it) to an action:
    "command-then-wrong-ack", "silence", "late" (the right ACK after
    ``LATE_S``); anything else gets the right ACK at once.
    """

    LATE_S = 0.3

    def __init__(self, script: dict[tuple[int, int], str]) -> None:
        self.script = script
        self.connections = 0
        self.packets: list[tuple[int, bytes]] = []
        self.arrivals: list[float] = []
        self.responses: list[GprsMessage] = []

    async def serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        connection = self.connections
        self.connections += 1
        try:
            size = int.from_bytes(await reader.readexactly(2), "big")
            await reader.readexactly(size)
            writer.write(imei_reply(True))
            number = 0
            while True:
                frame = await self._frame(reader)
                message = decode_tcp_frame(frame)
                if isinstance(message, GprsMessage):
                    self.responses.append(message)
                    continue
                assert isinstance(message, AvlPacket)
                self.packets.append((connection, frame))
                self.arrivals.append(time.monotonic())
                action = self.script.get((connection, number), "ack")
                number += 1
                if action == "late":
                    await asyncio.sleep(self.LATE_S)
                if action == "command-then-wrong-ack":
                    writer.write(encode_command("getver"))
                    writer.write(tcp_ack(len(message.records) + 1))
                elif action != "silence":
                    writer.write(tcp_ack(len(message.records)))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @staticmethod
    async def _frame(reader: asyncio.StreamReader) -> bytes:
        head = await reader.readexactly(8)
        length = int.from_bytes(head[4:], "big")
        return head + await reader.readexactly(length + 4)


async def test_wrong_ack_after_a_command_resends_the_packet_on_a_new_connection() -> (
    None
):
    gateway = ScriptedGateway({(0, 1): "command-then-wrong-ack"})
    server = await asyncio.start_server(gateway.serve, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        summary = await load.throughput(
            HOST, port, devices=1, packets=3, records=4, codec=0x08, timeout=30
        )

    assert summary["records_acked"] == summary["records_sent"] == 12
    assert (summary["resends"], summary["reconnects"]) == (1, 1)
    assert summary["devices_failed"] == 0
    # Packet 1 went out on the first connection, then again on the second.
    assert [c for c, _ in gateway.packets] == [0, 0, 1, 1]
    assert gateway.packets[1][1] == gateway.packets[2][1]
    # The command was answered before the wrong ACK was read.
    [answer] = gateway.responses
    assert (answer.codec, answer.type) == (CODEC_12, RESPONSE_TYPE)
    assert answer.payload.startswith(b"Ver:")


async def test_a_paced_device_keeps_its_own_clock_when_an_ack_is_late() -> None:
    # Packet 1's ACK comes 0.3 s late: packet 2, due 0.2 s after packet 1,
    # goes as soon as that ACK is read, and packet 3 0.2 s after packet 2.
    gateway = ScriptedGateway({(0, 1): "late"})
    server = await asyncio.start_server(gateway.serve, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        summary = await load.throughput(
            HOST, port, devices=1, packets=4, records=2, interval=0.2,
            warmup=0.45, timeout=30,
        )  # fmt: skip

    assert summary["records_acked"] == 8 and summary["resends"] == 0
    first, *rest = gateway.arrivals
    gaps = [round(t - first, 2) for t in rest]
    assert gaps[0] == pytest.approx(0.2, abs=0.06)
    assert gaps[1] == pytest.approx(0.2 + ScriptedGateway.LATE_S, abs=0.06)
    assert gaps[2] == pytest.approx(0.4 + ScriptedGateway.LATE_S, abs=0.06)
    # The warm-up leaves out packets 0 and 1 (sent by 0.4 s: the first one
    # waits up to one interval), so the late ACK is only in the figure of
    # every packet.
    assert summary["ack_latency_ms"]["max"] >= ScriptedGateway.LATE_S * 1000
    assert summary["ack_latency_ms_steady"]["max"] < ScriptedGateway.LATE_S * 1000
    assert summary["warmup_s"] == 0.45


async def test_missing_ack_times_out_and_resends_the_packet() -> None:
    gateway = ScriptedGateway({(0, 0): "silence"})
    server = await asyncio.start_server(gateway.serve, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    started = time.monotonic()
    async with server:
        summary = await load.throughput(
            HOST, port, devices=1, packets=2, records=3, response_timeout=0.3,
            timeout=30,
        )  # fmt: skip
    took = time.monotonic() - started

    assert summary["records_acked"] == 6
    assert (summary["resends"], summary["reconnects"]) == (1, 1)
    assert [c for c, _ in gateway.packets] == [0, 1, 1]
    assert gateway.packets[0][1] == gateway.packets[1][1]
    assert took >= 0.3


async def test_device_that_misses_the_deadline_is_counted_failed() -> None:
    gateway = ScriptedGateway({(c, 0): "silence" for c in range(100)})
    server = await asyncio.start_server(gateway.serve, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        summary = await load.throughput(
            HOST, port, devices=2, packets=1, records=1, response_timeout=0.2,
            timeout=0.5,
        )  # fmt: skip

    assert summary["devices_failed"] == 2
    assert summary["records_acked"] == 0
    assert summary["resends"] >= 2
    # Every packet was written, never ACKed: sent once however often resent.
    assert summary["records_sent"] == 2
    assert summary["ack_latency_ms"] == NO_LATENCY


async def test_a_warmup_longer_than_the_run_leaves_no_steady_latency() -> None:
    gateway = ScriptedGateway({})
    server = await asyncio.start_server(gateway.serve, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        summary = await load.throughput(
            HOST, port, devices=1, packets=2, records=1, warmup=60, timeout=30
        )

    assert summary["records_acked"] == 2
    assert summary["ack_latency_ms"]["max"] > 0
    assert summary["ack_latency_ms_steady"] == NO_LATENCY


# Throughput deadlines --------------------------------------------------------


async def test_devices_that_never_connect_send_nothing_and_stop_at_the_timeout() -> (
    None
):
    with unanswered_port() as port:
        summary = await load.throughput(
            HOST, port, devices=2, packets=1, records=3, timeout=1
        )

    assert (summary["devices_connected"], summary["devices_failed"]) == (0, 2)
    assert summary["connect_failures"] == {"TimeoutError": 2}
    assert summary["records_sent"] == summary["records_acked"] == 0
    assert summary["ack_latency_ms"] == NO_LATENCY
    assert summary["seconds"] < 1.3


async def test_backoff_after_a_refused_imei_ends_at_the_timeout() -> None:
    async def refuse(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await reader.readexactly(17)
        writer.write(imei_reply(False))
        writer.close()

    server = await asyncio.start_server(refuse, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        summary = await load.throughput(
            HOST, port, devices=20, packets=1, records=3, timeout=1
        )

    assert (summary["devices_connected"], summary["devices_failed"]) == (20, 20)
    # Connected every time, refused every time: no packet was ever written.
    assert summary["records_sent"] == 0
    # Backoffs of up to 1.5 s would otherwise run past the timeout.
    assert summary["seconds"] < 1.2


async def test_a_paced_device_gives_up_at_the_timeout_between_packets() -> None:
    gateway = ScriptedGateway({})
    server = await asyncio.start_server(gateway.serve, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        summary = await load.throughput(
            HOST, port, devices=5, packets=3, records=2, interval=5, timeout=1
        )

    # A device sends its first packet in its first 5 s, its second 5 s later.
    assert summary["devices_failed"] == 5
    assert summary["records_sent"] == summary["records_acked"] <= 5 * 2
    assert summary["seconds"] < 1.3


# Storm -----------------------------------------------------------------------


def test_storm_logs_in_every_connection(gateway: IngestProcess) -> None:
    summary = load.storm(
        HOST, gateway.port, connections=200, concurrency=50, hold=0.1,
        first_imei=4000,
    )  # fmt: skip

    assert summary["connected"] == summary["handshakes"] == 200
    assert summary["failures"] == {}
    assert summary["connects_over_0_9s"] == 0
    assert 0 < summary["connect_ms"]["p50"] <= summary["connect_ms"]["max"] < 900
    assert 0 < summary["handshake_ms"]["p50"] <= summary["handshake_ms"]["max"]
    assert summary["seconds"] > 0


def test_storm_reports_progress_up_to_every_connection(
    gateway: IngestProcess,
) -> None:
    seen: list[int] = []
    load.storm(
        HOST, gateway.port, connections=100, hold=0, first_imei=5000,
        progress=seen.append,
    )  # fmt: skip

    assert seen == sorted(seen)
    assert seen[-1] == 100


def test_storm_against_a_closed_port_counts_every_refusal() -> None:
    summary = load.storm(HOST, free_port(), connections=120, concurrency=50, hold=0)

    assert summary["connected"] == summary["handshakes"] == 0
    assert summary["failures"] == {"ConnectionRefusedError": 120}
    assert summary["connect_ms"] == summary["handshake_ms"] == NO_LATENCY


def test_storm_counts_a_silent_listener_as_login_timeouts() -> None:
    # The kernel completes the connects; nothing ever answers the IMEI.
    with socket.create_server((HOST, 0), backlog=128) as listener:
        port = listener.getsockname()[1]
        summary = load.storm(HOST, port, connections=40, hold=0, timeout=0.3)

    assert summary["connected"] == 40
    assert summary["handshakes"] == 0
    assert summary["failures"] == {"TimeoutError": 40}


def test_storm_without_handshake_holds_bare_connections() -> None:
    with socket.create_server((HOST, 0), backlog=128) as listener:
        port = listener.getsockname()[1]
        summary = load.storm(
            HOST, port, connections=40, handshake=False, hold=0, timeout=0.3
        )

    assert summary["connected"] == 40
    assert (summary["handshakes"], summary["failures"]) == (0, {})


async def test_storm_counts_refused_imeis_and_early_closes() -> None:
    async def refuse_even_close_odd(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        login = await reader.readexactly(17)
        if int(login[2:]) % 2 == 0:
            writer.write(imei_reply(False))
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(refuse_even_close_odd, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        summary = await asyncio.to_thread(
            load.storm, HOST, port, connections=30, hold=0
        )

    assert summary["connected"] == 30
    assert summary["handshakes"] == 0
    assert summary["failures"] == {"ImeiRefused": 15, "ClosedBeforeReply": 15}


def test_storm_refuses_more_connections_than_open_files() -> None:
    with pytest.raises(load.LoadError, match="open files"):
        load.storm(HOST, free_port(), connections=10**9)


# Hold --------------------------------------------------------------------------


async def test_hold_keeps_every_session_for_the_time_asked(
    gateway: IngestProcess,
) -> None:
    summary = await load.hold(
        HOST, gateway.port, sessions=30, seconds=0.5, first_imei=6000
    )

    assert (summary["held"], summary["lost"], summary["refused"]) == (30, 0, 0)
    assert 0.5 <= summary["seconds"] < 1.5


async def test_hold_counts_the_sessions_the_gateway_closes_as_lost() -> None:
    # Odd IMEIs are closed 0.1 s after their login, even ones stay open.
    async def close_odd(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        login = await reader.readexactly(17)
        writer.write(imei_reply(True))
        if int(login[2:]) % 2:
            await asyncio.sleep(0.1)
        else:
            await reader.read()
        writer.close()

    server = await asyncio.start_server(close_odd, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        summary = await load.hold(HOST, port, sessions=40, seconds=1.0)

    odd = sum(int(imei_for(i)) % 2 for i in range(40))
    assert 0 < odd < 40
    assert (summary["held"], summary["lost"], summary["refused"]) == (40 - odd, odd, 0)
    assert summary["seconds"] >= 1.0


async def test_hold_ends_when_a_stopped_gateway_has_closed_every_session(
    redis_url: str,
) -> None:
    ingest = IngestProcess(redis_url)
    await asyncio.to_thread(ingest.start)
    logged_in = asyncio.Event()
    run = asyncio.create_task(
        load.hold(
            HOST, ingest.port, sessions=50, seconds=60, first_imei=7000,
            on_held=logged_in.set,
        )
    )  # fmt: skip
    try:
        await asyncio.wait_for(logged_in.wait(), 30)
        await asyncio.to_thread(ingest.stop)
        summary = await asyncio.wait_for(run, 30)
    finally:
        await asyncio.to_thread(ingest.stop)

    assert (summary["held"], summary["lost"], summary["refused"]) == (0, 50, 0)
    assert summary["seconds"] < 30


async def test_hold_counts_sessions_that_cannot_log_in_as_timed_out() -> None:
    with unanswered_port(room=1) as port:
        summary = await load.hold(HOST, port, sessions=3, seconds=5, login_timeout=0.3)

    # One connect completes but nothing answers its IMEI; the others hang.
    counts = ("held", "lost", "refused", "timed_out")
    assert tuple(summary[k] for k in counts) == (0, 0, 0, 3)
    assert summary["seconds"] < 0.1
    assert 0.3 <= summary["login_seconds"] < 1.0
