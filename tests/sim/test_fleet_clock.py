"""Fleet devices stamp their records when they send them.

A paced device (``trackgate simulate fleet``) records as it goes: the last
record of a packet is stamped when the packet is first sent and the others
are spread over the interval before it, so the lag the gateway sees is the
network's, not a backlog. Without an interval (throughput) the packets stay
a backlog. Checked in the frames, against a scripted peer, and in what a
real gateway stored.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import redis

from tests.sim.test_load import ScriptedGateway
from tests.support.servers import IngestProcess
from trackgate.core.keys import Keys
from trackgate.protocol import AvlPacket, decode_tcp_frame
from trackgate.sim import LivePacket, SimDevice, imei_for, load

KEYS = Keys()
HOST = "127.0.0.1"


def timestamps(frame: bytes) -> list[int]:
    packet = decode_tcp_frame(frame)  # checks the CRC too
    assert isinstance(packet, AvlPacket)
    return [record.timestamp for record in packet.records]


@pytest.mark.parametrize("codec", [0x08, 0x8E, 0x10])
def test_stamped_frame_has_the_given_times_and_a_good_crc(codec: int) -> None:
    [(frame, records)] = SimDevice.with_records(imei_for(1), 1, 5, codec=codec).packets

    stamped = LivePacket.of(frame).stamped(1_800_000_000_000, 400)

    assert timestamps(stamped) == [1_800_000_000_000 - 400 * k for k in (4, 3, 2, 1, 0)]
    # Everything but the times (and so the CRC) is the packet as encoded.
    again = decode_tcp_frame(stamped)
    assert isinstance(again, AvlPacket)
    assert [(r.latitude, r.io) for r in again.records] == [
        (r.latitude, r.io) for r in records
    ]
    assert len(stamped) == len(frame)


async def test_paced_packets_are_stamped_at_send_time_and_resent_unchanged() -> None:
    # The first packet gets no ACK: the device sends it again, unchanged,
    # on a new connection, then the next ones on its clock.
    peer = ScriptedGateway({(0, 0): "silence"})
    server = await asyncio.start_server(peer.serve, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        summary = await load.throughput(
            HOST, port, devices=1, packets=3, records=4, interval=0.4,
            response_timeout=0.3, timeout=30,
        )  # fmt: skip

    assert summary["records_acked"] == 12 and summary["resends"] == 1
    frames = [frame for _, frame in peer.packets]
    assert frames[0] == frames[1]
    stamps = [timestamps(frame) for frame in frames]
    # Four records over a 0.4 s interval: 100 ms apart, the last one when
    # the packet left (the wall clock at arrival, within what a loaded
    # machine may add), and later packets later.
    for packet in stamps:
        assert [b - a for a, b in zip(packet, packet[1:], strict=False)] == [100] * 3
    first_arrival_wall = time.time() - (time.monotonic() - peer.arrivals[0])
    assert abs(stamps[0][-1] - first_arrival_wall * 1000) < 500
    every = [t for packet in stamps[1:] for t in packet]
    assert every == sorted(set(every))
    assert stamps[2][-1] - stamps[0][-1] >= 400


async def test_fleet_lag_at_the_gateway_is_near_zero(
    gateway: IngestProcess, redis_url: str
) -> None:
    imei = imei_for(7000)
    started_ms = time.time() * 1000
    summary = await load.throughput(
        HOST, gateway.port, devices=1, packets=4, records=3, interval=0.3,
        first_imei=7000, timeout=30,
    )  # fmt: skip

    assert summary["records_acked"] == 12
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    entries = [
        fields
        for stream in KEYS.all_records()
        for _, fields in client.xrange(stream)
        if fields["imei"] == imei
    ]
    device = client.hgetall(KEYS.device(imei))
    client.close()
    assert len(entries) == 12
    # Every record was made during the run, none in the past.
    assert min(int(e["timestamp"]) for e in entries) >= started_ms - 300
    # The newest record of each packet arrived within a moment of its stamp.
    newest = [entries[k] for k in range(2, 12, 3)]
    lags = [int(e["received_at"]) - int(e["timestamp"]) for e in newest]
    assert all(0 <= lag < 500 for lag in lags), lags
    assert 0 <= int(device["last_lag_ms"]) < 500


async def test_throughput_packets_stay_a_backlog(
    gateway: IngestProcess, redis_url: str
) -> None:
    imei = imei_for(7100)
    started_ms = time.time() * 1000
    await load.throughput(
        HOST, gateway.port, devices=1, packets=5, records=4, first_imei=7100,
        timeout=30,
    )  # fmt: skip

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    stamps = [
        int(fields["timestamp"])
        for stream in KEYS.all_records()
        for _, fields in client.xrange(stream)
        if fields["imei"] == imei
    ]
    client.close()
    # 20 records, one a second, the first 20 s before the run began.
    assert len(stamps) == 20
    assert abs(stamps[0] - (started_ms - 20_000)) < 2000
    assert [b - a for a, b in zip(stamps, stamps[1:], strict=False)] == [1000] * 19
