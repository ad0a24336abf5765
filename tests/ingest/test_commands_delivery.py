"""Command delivery over real TCP: the courier, a gateway and tracker clients.

``Gateway`` is the smallest ingest server that drives the courier the way
the ingest service does (IMEI accepted -> ``session_started``, AVL packet
ACKed -> ``packet_acked``, Codec 12/14 message -> ``response_received``,
``{"type": "command"}`` event -> ``wake``, disconnect -> ``session_ended``).
``Tracker`` is a device on a real socket that answers commands as an FMB
does, or stays silent, or refuses Codec 14 commands. Commands are queued
through the real API app or the command store, against a real Redis.

To run the same scenarios through the ingest service itself, replace
``Gateway`` by a fixture that starts it and yields its port.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.api.conftest import COMMANDS, COMMANDS_TOKEN, client_for
from trackgate.api.settings import ApiSettings
from trackgate.core.commands import (
    BUSY,
    Claim,
    CommandState,
    CommandStore,
    NewCommand,
    now_ms,
)
from trackgate.core.keys import Keys
from trackgate.core.redisconn import AsyncClient, async_client
from trackgate.core.store import SessionStore
from trackgate.ingest.commands import CommandCourier
from trackgate.protocol import (
    CODEC_8,
    CODEC_12,
    CODEC_14,
    NACK_TYPE,
    RESPONSE_TYPE,
    AvlPacket,
    AvlRecord,
    GprsMessage,
    Imei,
    TcpServerConnection,
    decode_tcp_frame,
    encode_avl_packet,
    encode_gprs_message,
    encode_imei,
    tcp_ack,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

KEYS = Keys()
IMEI = "356307042441013"

#: What an FMB answers to a few common commands (text as such devices send).
FMB_ANSWERS = {
    b"getinfo": b"RTC:2026/12/3 17:00 Init:2026/12/3 9:12 UpTime:28000s PWR:PwrVoltage",
    b"getver": b"Ver:03.28.03.Rev.00 GPS:AXN_5.1_9508 Hw:FMB920 Mod:15 IMEI:"
    + IMEI.encode(),
    b"setdigout 1": b"DOUT1:1 Timeout:INFINITY",
}

Answer = Callable[["Tracker", GprsMessage], bytes | None]


def answers_like_fmb(tracker: Tracker, message: GprsMessage) -> bytes | None:
    text = FMB_ANSWERS.get(message.payload, b"Unknown command")
    if message.codec == CODEC_14:
        if message.imei != tracker.imei:
            return encode_gprs_message(CODEC_14, NACK_TYPE, b"", imei=tracker.imei)
        return encode_gprs_message(CODEC_14, RESPONSE_TYPE, text, imei=tracker.imei)
    return encode_gprs_message(CODEC_12, RESPONSE_TYPE, text)


def never_answers(tracker: Tracker, message: GprsMessage) -> bytes | None:
    return None


def refuses_codec14(tracker: Tracker, message: GprsMessage) -> bytes | None:
    return encode_gprs_message(CODEC_14, NACK_TYPE, b"", imei=tracker.imei)


class Tracker:
    """A device on a real TCP connection."""

    def __init__(self, imei: str, port: int, answer: Answer = answers_like_fmb) -> None:
        self.imei = imei
        self.port = port
        self.answer = answer
        self.commands: asyncio.Queue[GprsMessage] = asyncio.Queue()
        self.received: list[GprsMessage] = []
        self._acks: asyncio.Queue[int] = asyncio.Queue()
        self._reader_task: asyncio.Task[None] | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(encode_imei(self.imei))
        assert await asyncio.wait_for(reader.readexactly(1), 5) == b"\x01"
        self._writer = writer
        self._reader_task = asyncio.create_task(self._read(reader, writer))

    async def _read(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        buffer = bytearray()
        while chunk := await reader.read(4096):
            buffer += chunk
            while len(buffer) >= 4:
                if buffer[:4] != b"\0\0\0\0":  # an ACK: a non-zero u32 count
                    self._acks.put_nowait(int.from_bytes(buffer[:4], "big"))
                    del buffer[:4]
                    continue
                if len(buffer) < 8:
                    break
                size = 8 + int.from_bytes(buffer[4:8], "big") + 4
                if len(buffer) < size:
                    break
                message = decode_tcp_frame(bytes(buffer[:size]))
                del buffer[:size]
                assert isinstance(message, GprsMessage)
                self.received.append(message)
                self.commands.put_nowait(message)
                reply = self.answer(self, message)
                if reply is not None:
                    writer.write(reply)

    async def send_record(self) -> int:
        record = AvlRecord(
            timestamp=now_ms(), priority=0, longitude=25.3, latitude=54.7,
            altitude=120, angle=90, satellites=7, speed=30, event_id=0, io={"21": 4},
        )  # fmt: skip
        assert self._writer is not None
        self._writer.write(encode_avl_packet(CODEC_8, [record]))
        return await asyncio.wait_for(self._acks.get(), 5)

    def write(self, data: bytes) -> None:
        assert self._writer is not None
        self._writer.write(data)

    async def next_command(self, timeout: float = 5.0) -> GprsMessage:
        return await asyncio.wait_for(self.commands.get(), timeout)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            await self._writer.wait_closed()
            self._writer = None
        if self._reader_task is not None:
            self._reader_task.cancel()
            await asyncio.gather(self._reader_task, return_exceptions=True)


class _Session:
    def __init__(self, imei: str, writer: asyncio.StreamWriter) -> None:
        self.imei = imei
        self.session_id = f"t{time.monotonic_ns():x}"
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}"
        self._writer = writer

    def send(self, data: bytes) -> None:
        self._writer.write(data)

    @property
    def closed(self) -> bool:
        return self._writer.is_closing()


class Gateway:
    """The smallest ingest server that drives a CommandCourier."""

    def __init__(self, redis_url: str, **courier_options: Any) -> None:
        self.redis_url = redis_url
        self.courier_options = courier_options
        self.port = 0

    async def start(self) -> None:
        self.redis: AsyncClient = async_client(self.redis_url)
        self.sessions = SessionStore(self.redis, KEYS)
        self.courier = CommandCourier(
            self.redis, KEYS, pod="test", **self.courier_options
        )
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        self.pubsub = self.redis.pubsub()
        await self.pubsub.subscribe(KEYS.events())
        await self.pubsub.get_message(timeout=1.0)  # the subscribe confirmation
        self.listener = asyncio.create_task(self._listen())

    async def _listen(self) -> None:
        import json

        while True:
            message = await self.pubsub.get_message(
                ignore_subscribe_messages=True, timeout=1.0
            )
            if message is None:
                continue
            event = json.loads(message["data"])
            if event.get("type") == "command":
                await self.courier.wake(event["imei"])

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        connection = TcpServerConnection()
        session: _Session | None = None
        try:
            while data := await reader.read(4096):
                connection.receive_data(data)
                while (event := connection.next_event()) is not None:
                    if isinstance(event, Imei):
                        writer.write(connection.accept_imei(True))
                        session = _Session(event.imei, writer)
                        await self.sessions.opened(
                            session.imei, session.session_id, pod="test",
                            worker="0", peer=session.peer, started_at=now_ms(),
                        )  # fmt: skip
                        await self.courier.session_started(session)
                    elif isinstance(event, AvlPacket) and session is not None:
                        writer.write(tcp_ack(len(event.records)))
                        await self.courier.packet_acked(session)
                    elif isinstance(event, GprsMessage) and session is not None:
                        await self.courier.response_received(session, event)
        except ConnectionError:
            pass
        finally:
            writer.close()
            if session is not None:
                self.courier.session_ended(session)
                await self.sessions.closed(session.imei, session.session_id, now_ms())

    async def stop(self) -> None:
        self.listener.cancel()
        await asyncio.gather(self.listener, return_exceptions=True)
        self.server.close()
        await self.courier.close()
        await self.pubsub.aclose()
        await self.redis.aclose()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[AsyncClient]:
    client = async_client(redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
def store(redis: AsyncClient) -> CommandStore:
    return CommandStore(redis, KEYS)


@pytest.fixture
async def gateway_factory(redis_url: str) -> AsyncIterator[Callable[..., Any]]:
    started: list[Gateway] = []

    async def start(**options: Any) -> Gateway:
        gateway = Gateway(redis_url, **options)
        await gateway.start()
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        await gateway.stop()


async def settled(store: CommandStore, command_id: str, *states: CommandState,
                  timeout: float = 5.0) -> Any:  # fmt: skip
    """Poll the command until it is in one of ``states``."""
    deadline = time.monotonic() + timeout
    while True:
        command = await store.get(IMEI, command_id)
        if command.state in states:
            return command
        assert time.monotonic() < deadline, f"still {command.state}: {command}"
        await asyncio.sleep(0.02)


async def test_command_queued_through_the_api_is_answered_by_the_device(
    gateway_factory: Callable[..., Any],
    store: CommandStore,
    redis_url: str,
    tmp_path: Path,
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"commands {COMMANDS_TOKEN}\n")
    settings = ApiSettings(redis_url=redis_url, api_tokens_file=tokens)
    gateway = await gateway_factory()
    tracker = Tracker(IMEI, gateway.port)
    await tracker.connect()
    assert await tracker.send_record() == 1

    async for api in client_for(settings):
        created = await api.post(
            f"/v1/devices/{IMEI}/commands", json={"text": "getinfo"}, headers=COMMANDS
        )
        assert created.status_code == 201
        command_id = created.json()["id"]

        message = await tracker.next_command()
        assert (message.codec, message.type, message.payload) == (
            CODEC_12,
            5,
            b"getinfo",
        )
        await settled(store, command_id, CommandState.ANSWERED)

        answered = (await api.get(f"/v1/devices/{IMEI}/commands/{command_id}",
                                  headers=COMMANDS)).json()  # fmt: skip
    assert answered["state"] == "answered"
    assert answered["response"] == FMB_ANSWERS[b"getinfo"].decode()
    assert answered["attempts"] == 1
    assert [h["state"] for h in answered["history"]] == ["queued", "sent", "answered"]
    assert answered["history"][1]["session_id"] == answered["session_id"]
    assert answered["sent_at"] <= answered["answered_at"]
    await tracker.close()


async def test_silent_device_costs_every_attempt_then_the_command_fails(
    gateway_factory: Callable[..., Any], store: CommandStore
) -> None:
    gateway = await gateway_factory(response_timeout=0.2, retry_delay=0.05)
    tracker = Tracker(IMEI, gateway.port, answer=never_answers)
    await tracker.connect()
    command, _ = await store.enqueue(NewCommand(IMEI, text="getver", max_attempts=3))

    failed = await settled(store, command.id, CommandState.FAILED)

    assert failed.attempts == 3
    assert failed.reason == "no answer within 0.2 s"
    assert [m.payload for m in tracker.received] == [b"getver"] * 3
    sent = [h for h in failed.history if h.state == "sent"]
    assert [h.attempt for h in sent] == [1, 2, 3]
    assert await store.client.llen(KEYS.command_queue(IMEI)) == 0
    await tracker.close()


async def test_command_cut_off_by_a_disconnect_is_redelivered_on_reconnect(
    gateway_factory: Callable[..., Any], store: CommandStore
) -> None:
    gateway = await gateway_factory(response_timeout=10.0)
    mute = Tracker(IMEI, gateway.port, answer=never_answers)
    await mute.connect()
    command, _ = await store.enqueue(NewCommand(IMEI, text="setdigout 1"))
    assert (await mute.next_command()).payload == b"setdigout 1"

    await mute.close()  # the link dies with the command in flight
    requeued = await settled(store, command.id, CommandState.QUEUED)
    assert requeued.attempts == 1
    assert "session ended before an answer" in requeued.history[-1].detail

    back = Tracker(IMEI, gateway.port)
    await back.connect()
    assert (await back.next_command()).payload == b"setdigout 1"
    answered = await settled(store, command.id, CommandState.ANSWERED)
    assert answered.attempts == 2
    assert answered.response == "DOUT1:1 Timeout:INFINITY"
    await back.close()


async def test_commands_queued_offline_arrive_in_order_and_expired_ones_do_not(
    gateway_factory: Callable[..., Any], store: CommandStore
) -> None:
    gateway = await gateway_factory()
    first, _ = await store.enqueue(NewCommand(IMEI, text="getver"))
    stale, _ = await store.enqueue(
        NewCommand(IMEI, text="setdigout 1", expires_at=now_ms() + 100)
    )
    last, _ = await store.enqueue(NewCommand(IMEI, text="getinfo"))
    await asyncio.sleep(0.2)

    tracker = Tracker(IMEI, gateway.port)
    await tracker.connect()
    await settled(store, last.id, CommandState.ANSWERED)

    assert [m.payload for m in tracker.received] == [b"getver", b"getinfo"]
    assert (await store.get(IMEI, first.id)).state is CommandState.ANSWERED
    expired = await store.get(IMEI, stale.id)
    assert expired.state is CommandState.EXPIRED
    assert expired.attempts == 0
    await tracker.close()


async def test_answered_command_is_never_sent_again(
    gateway_factory: Callable[..., Any], store: CommandStore
) -> None:
    gateway = await gateway_factory()
    tracker = Tracker(IMEI, gateway.port)
    await tracker.connect()
    command, _ = await store.enqueue(NewCommand(IMEI, text="getver"))
    await settled(store, command.id, CommandState.ANSWERED)
    await tracker.close()

    # Another instance, and a new session of the device: nothing to send.
    assert await store.claim_next(IMEI, "other-instance", "test") is None
    again = Tracker(IMEI, gateway.port)
    await again.connect()
    await again.send_record()
    await asyncio.sleep(0.3)
    assert again.received == []
    assert (await store.get(IMEI, command.id)).attempts == 1
    await again.close()


async def test_instances_racing_for_one_command_send_it_once(
    store: CommandStore,
) -> None:
    command, _ = await store.enqueue(NewCommand(IMEI, text="getver"))

    claims = await asyncio.gather(
        *(store.claim_next(IMEI, f"session-{n}", "race") for n in range(8))
    )

    winners = [claim for claim in claims if isinstance(claim, Claim)]
    assert len(winners) == 1
    assert claims.count(BUSY) == 7
    stored = await store.get(IMEI, command.id)
    assert (stored.state, stored.attempts) == (CommandState.SENT, 1)


async def test_device_current_session_takes_over_a_command_lost_with_the_old_one(
    store: CommandStore, redis: AsyncClient
) -> None:
    sessions = SessionStore(redis, KEYS)
    await sessions.opened(IMEI, "old", pod="a", worker="0", peer="p:1", started_at=1)
    command, _ = await store.enqueue(NewCommand(IMEI, text="getver"))
    assert isinstance(await store.claim_next(IMEI, "old", "first"), Claim)

    # The old pod died without a word; the device is back through another.
    assert await store.claim_next(IMEI, "new", "too early") == BUSY
    await sessions.opened(IMEI, "new", pod="b", worker="0", peer="p:2", started_at=2)
    claim = await store.claim_next(IMEI, "new", "second")

    assert isinstance(claim, Claim) and claim.attempt == 2
    taken = await store.get(IMEI, command.id)
    assert taken.session_id == "new"
    assert [h.state for h in taken.history] == ["queued", "sent", "queued", "sent"]
    assert taken.history[2].detail == "session old ended before an answer; will retry"


async def test_codec14_refusal_fails_the_command_with_imei_mismatch(
    gateway_factory: Callable[..., Any], store: CommandStore
) -> None:
    gateway = await gateway_factory(codec14=True)
    tracker = Tracker(IMEI, gateway.port, answer=refuses_codec14)
    await tracker.connect()
    command, _ = await store.enqueue(NewCommand(IMEI, text="getver", max_attempts=3))

    failed = await settled(store, command.id, CommandState.FAILED)

    assert failed.reason == "imei mismatch"
    assert failed.attempts == 1
    [message] = tracker.received
    assert (message.codec, message.imei, message.payload) == (CODEC_14, IMEI, b"getver")
    await tracker.close()


async def test_codec14_command_is_answered_by_the_device_with_that_imei(
    gateway_factory: Callable[..., Any], store: CommandStore
) -> None:
    gateway = await gateway_factory()
    tracker = Tracker(IMEI, gateway.port)
    await tracker.connect()
    command, _ = await store.enqueue(NewCommand(IMEI, text="getver", codec=14))

    answered = await settled(store, command.id, CommandState.ANSWERED)

    assert answered.response == FMB_ANSWERS[b"getver"].decode()
    assert tracker.received[0].codec == CODEC_14
    await tracker.close()


async def test_cancelled_command_is_not_sent(
    gateway_factory: Callable[..., Any], store: CommandStore
) -> None:
    gateway = await gateway_factory()
    kept, _ = await store.enqueue(NewCommand(IMEI, text="getinfo"))
    dropped, _ = await store.enqueue(NewCommand(IMEI, text="setdigout 1"))
    cancelled = await store.cancel(IMEI, dropped.id)
    assert cancelled.state is CommandState.CANCELLED

    tracker = Tracker(IMEI, gateway.port)
    await tracker.connect()
    await settled(store, kept.id, CommandState.ANSWERED)
    await tracker.send_record()
    await asyncio.sleep(0.2)

    assert [m.payload for m in tracker.received] == [b"getinfo"]
    await tracker.close()


async def test_answer_after_the_timeout_still_settles_the_command(
    gateway_factory: Callable[..., Any], store: CommandStore
) -> None:
    gateway = await gateway_factory(response_timeout=0.2, retry_delay=30.0)
    slow = Tracker(IMEI, gateway.port, answer=never_answers)
    await slow.connect()
    command, _ = await store.enqueue(NewCommand(IMEI, text="getver"))
    await slow.next_command()
    await settled(store, command.id, CommandState.QUEUED)  # the timeout passed

    slow.write(encode_gprs_message(CODEC_12, RESPONSE_TYPE, b"Ver:03.28.03"))
    answered = await settled(store, command.id, CommandState.ANSWERED)

    assert answered.response == "Ver:03.28.03"
    assert answered.history[-1].detail == "answered after the response timeout"
    assert len(slow.received) == 1
    await slow.close()


async def test_answer_nobody_asked_for_is_counted_and_changes_nothing(
    gateway_factory: Callable[..., Any], store: CommandStore
) -> None:
    gateway = await gateway_factory()
    tracker = Tracker(IMEI, gateway.port)
    await tracker.connect()
    command, _ = await store.enqueue(NewCommand(IMEI, text="getinfo"))
    await settled(store, command.id, CommandState.ANSWERED)

    tracker.write(encode_gprs_message(CODEC_12, RESPONSE_TYPE, b"DOUT1:1"))
    assert await tracker.send_record() == 1  # the session carries on

    assert gateway.courier.stats.unsolicited == 1
    again = await store.get(IMEI, command.id)
    assert again.response == FMB_ANSWERS[b"getinfo"].decode()
    await tracker.close()
