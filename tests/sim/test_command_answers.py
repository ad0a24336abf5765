"""Simulated devices answer binary commands byte for byte.

A payload of printable ASCII is a text command and gets the text answer;
any other payload (a Modbus frame, serial data) is answered with its own
bytes. Checked on the function, and end to end: a command queued in Redis,
delivered by a real gateway to both simulated devices (the paced fleet
device and :class:`SimDevice`), its answer read back.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.support.servers import IngestProcess
from trackgate.core.commands import Command, CommandState, CommandStore, NewCommand
from trackgate.core.keys import Keys
from trackgate.core.redisconn import async_client
from trackgate.sim import SimDevice, command_answer, imei_for, load

KEYS = Keys()
HOST = "127.0.0.1"
MODBUS = bytes.fromhex("010300010015D5C5")


@pytest.mark.parametrize(
    "payload", [MODBUS, b"\x00", bytes(range(256)), b"getver\r\n", "é".encode()]
)
def test_binary_payload_is_answered_with_its_own_bytes(payload: bytes) -> None:
    assert command_answer(payload) == payload


def test_text_payload_gets_the_text_answer() -> None:
    answer = command_answer(b"getver")
    assert answer is not None and answer.startswith(b"Ver:")
    assert command_answer(b"setparam 1000:1") == b"Param ID:0 Value:setparam 1000:1"
    assert command_answer(b"cpureset") is None


async def wait_answered(store: CommandStore, command: Command) -> Command:
    deadline = time.monotonic() + 15
    while command.state != CommandState.ANSWERED:
        assert time.monotonic() < deadline, f"still {command.state}"
        await asyncio.sleep(0.05)
        command = await store.get(command.imei, command.id)
    return command


@pytest.mark.parametrize("codec", [12, 14])
async def test_fleet_device_echoes_a_binary_command_exactly(
    gateway: IngestProcess, redis_url: str, codec: int
) -> None:
    imei = imei_for(8000 + codec)
    client = async_client(redis_url, decode_responses=True)
    store = CommandStore(client, KEYS)
    try:
        queued, _ = await store.enqueue(
            NewCommand(imei=imei, payload=MODBUS, codec=codec)
        )
        run = asyncio.create_task(
            load.throughput(
                HOST,
                gateway.port,
                devices=1,
                packets=6,
                records=1,
                interval=0.25,
                first_imei=8000 + codec,
                timeout=30,
            )  # fmt: skip
        )
        command = await wait_answered(store, queued)
        await run
    finally:
        await client.aclose()

    assert command.response_hex == MODBUS.hex()


async def test_sim_device_echoes_binary_and_answers_text(
    gateway: IngestProcess, redis_url: str
) -> None:
    imei = imei_for(8100)
    client = async_client(redis_url, decode_responses=True)
    store = CommandStore(client, KEYS)
    device = SimDevice.with_records(imei, 1, 1, linger=10.0)
    try:
        binary, _ = await store.enqueue(NewCommand(imei=imei, payload=MODBUS))
        text, _ = await store.enqueue(NewCommand(imei=imei, text="getgps"))
        run = asyncio.create_task(
            device.run(HOST, gateway.port, deadline=time.monotonic() + 30)
        )
        try:
            binary = await wait_answered(store, binary)
            text = await wait_answered(store, text)
        finally:
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
    finally:
        await client.aclose()

    assert binary.response_hex == MODBUS.hex()
    assert text.response is not None and text.response.startswith("GPS:1")
    assert text.response_hex is None
