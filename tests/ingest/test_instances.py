"""Several ingest instances on one Redis, as pods would be."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api.conftest import COMMANDS, COMMANDS_TOKEN, client_for
from tests.support.servers import IngestProcess
from tests.support.vectors import frame
from trackgate.api.settings import ApiSettings
from trackgate.core.keys import Keys
from trackgate.core.redisconn import sync_client
from trackgate.protocol import encode_imei
from trackgate.sim import SimDevice

IMEI = "356307042441013"


@pytest.fixture(params=["single", "cluster"])
def pods(
    request: pytest.FixtureRequest,
) -> Iterator[tuple[str, IngestProcess, IngestProcess]]:
    name = "redis_url" if request.param == "single" else "cluster_url"
    url = str(request.getfixturevalue(name))
    a = IngestProcess(url, pod_name="pod-a")
    b = IngestProcess(url, pod_name="pod-b")
    a.start()
    try:
        b.start()
        yield url, a, b
    finally:
        b.stop()
        a.stop()


def login(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(encode_imei(IMEI))
    assert sock.recv(1) == b"\x01"
    sock.sendall(frame("wiki-codec8-tcp-ex1"))
    assert sock.recv(4) == bytes.fromhex("00000001")
    return sock


def closed_by_server(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    )


def test_reconnect_to_another_instance_takes_the_session_over(
    pods: tuple[str, IngestProcess, IngestProcess],
) -> None:
    url, a, b = pods
    db = sync_client(url, decode_responses=True)
    old = login(a.port)
    # The session's status is written beside the records, not before the ACK.
    deadline = time.monotonic() + 5
    while db.hget(Keys().device(IMEI), "pod") != "pod-a":
        assert time.monotonic() < deadline, "session status never written"
        time.sleep(0.02)
    assert db.hget(Keys().device(IMEI), "connected") == "1"

    # The device's old link looks open (a lost FIN); it comes back via pod B.
    new = login(b.port)
    assert closed_by_server(old, within=5.0)
    deadline = time.monotonic() + 5
    while db.hget(Keys().device(IMEI), "pod") != "pod-b":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert metric(a.admin_port, "trackgate_sessions_replaced_total") == 1
    # Closing the stale session did not mark the device offline.
    time.sleep(0.3)
    assert db.hget(Keys().device(IMEI), "connected") == "1"
    assert closed_by_server(new, within=0.5) is False
    new.close()
    old.close()
    db.close()


def _log_in(sock: socket.socket, start: threading.Barrier) -> None:
    start.wait()
    sock.sendall(encode_imei(IMEI))
    assert sock.recv(1) == b"\x01"


def test_logins_at_once_on_two_instances_leave_one_session_named_in_the_hash(
    pods: tuple[str, IngestProcess, IngestProcess],
) -> None:
    url, a, b = pods
    db = sync_client(url, decode_responses=True)
    key = Keys().device(IMEI)
    for _round in range(3):
        socks = [
            socket.create_connection(("127.0.0.1", port), timeout=5)
            for port in (a.port, b.port) * 4
        ]
        start = threading.Barrier(len(socks))
        threads = [threading.Thread(target=_log_in, args=(s, start)) for s in socks]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        time.sleep(1.0)  # every claim has crossed the bus
        alive = []
        for sock in socks:
            sock.settimeout(2)
            try:
                sock.sendall(frame("wiki-codec8-tcp-ex1"))
                answer = sock.recv(4)
            except OSError:
                answer = b""
            if answer == bytes.fromhex("00000001"):
                alive.append(sock)
        assert len(alive) == 1
        (survivor,) = alive
        port = survivor.getsockname()[1]
        assert db.hget(key, "connected") == "1"
        assert db.hget(key, "peer") == f"127.0.0.1:{port}"
        survivor.close()
        deadline = time.monotonic() + 5
        while db.hget(key, "connected") != "0":
            assert time.monotonic() < deadline, "the survivor's end never written"
            time.sleep(0.05)
        for sock in socks:
            sock.close()
    db.close()


async def test_a_command_through_any_api_reaches_the_device_on_any_instance(
    pods: tuple[str, IngestProcess, IngestProcess], tmp_path: Path
) -> None:
    url, a, b = pods
    tokens = tmp_path / "tokens"
    tokens.write_text(f"commands {COMMANDS_TOKEN}\n")
    device = SimDevice.with_records(IMEI, 2, 1, codec=8, linger=20.0)

    # The device starts on pod A, then comes back through pod B.
    first = SimDevice(IMEI, device.packets[:1])
    await first.run("127.0.0.1", a.port)
    running = asyncio.create_task(device.run("127.0.0.1", b.port))
    db = sync_client(url, decode_responses=True)
    while db.hget(Keys().device(IMEI), "pod") != "pod-b":
        await asyncio.sleep(0.05)

    answers = []
    for _api_instance in range(2):  # two API replicas, one Redis
        settings = ApiSettings(redis_url=url, api_tokens_file=tokens)
        async for api in client_for(settings):
            queued = await api.post(
                f"/v1/devices/{IMEI}/commands",
                json={"text": "getver"},
                headers=COMMANDS,
            )
            assert queued.status_code == 201, queued.text
            command_url = f"/v1/devices/{IMEI}/commands/{queued.json()['id']}"
            for _ in range(200):
                command = (await api.get(command_url, headers=COMMANDS)).json()
                if command["state"] == "answered":
                    break
                await asyncio.sleep(0.05)
            answers.append(command)
    running.cancel()
    db.close()
    assert [c["state"] for c in answers] == ["answered", "answered"]
    assert all(c["response"].startswith("Ver:") for c in answers)
    # Sent on pod B's session, the one the device hash names.
    assert all("pod pod-b" in c["history"][1]["detail"] for c in answers)
