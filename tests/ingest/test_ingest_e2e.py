"""End to end: real packets over real TCP and UDP into a real Redis."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator

import pytest

from tests.support.servers import IngestProcess
from tests.support.vectors import frame, vector
from trackgate.core.keys import Keys
from trackgate.core.redisconn import SyncClient, sync_client
from trackgate.protocol import encode_avl_packet, encode_imei, encode_udp_datagram
from trackgate.sim import make_records

IMEI = "356307042441013"
KEYS = Keys(shards=4)


@pytest.fixture(scope="module", params=["single", "cluster"])
def backend(request: pytest.FixtureRequest) -> str:
    """Each test runs against a single Redis and a 3-master Redis Cluster."""
    if request.param == "single":
        return str(request.getfixturevalue("redis_proc").url)
    return str(request.getfixturevalue("redis_cluster_procs").url)


@pytest.fixture(scope="module")
def ingest(backend: str) -> Iterator[IngestProcess]:
    server = IngestProcess(backend, stream_shards="4")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def db(
    request: pytest.FixtureRequest, backend: str, ingest: IngestProcess
) -> Iterator[SyncClient]:
    # The function-scoped fixtures empty the server or every cluster node.
    request.getfixturevalue("cluster_url" if "cluster" in backend else "redis_url")
    client = sync_client(backend, decode_responses=True)
    yield client
    client.close()


class Device:
    """A blocking tracker connection, byte-exact."""

    def __init__(self, port: int, imei: str = IMEI) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.imei = imei

    def login(self) -> bytes:
        self.sock.sendall(encode_imei(self.imei))
        return self.recv(1)

    def recv(self, n: int, timeout: float = 5.0) -> bytes:
        self.sock.settimeout(timeout)
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                break
            data += chunk
        return data

    def silent_for(self, seconds: float) -> bool:
        """True when the server sends nothing for ``seconds``."""
        self.sock.settimeout(seconds)
        try:
            return self.sock.recv(1) == b"" and False
        except TimeoutError:
            return True

    def close(self) -> None:
        self.sock.close()


def entries(db: SyncClient, imei: str = IMEI) -> list[dict[str, str]]:
    rows = db.xrange(KEYS.records_for(imei))
    return [fields for _id, fields in rows if fields["imei"] == imei]


def test_handshake_packets_and_acks_land_in_the_stream(
    db: SyncClient, ingest: IngestProcess
) -> None:
    device = Device(ingest.port)
    assert device.login() == b"\x01"
    device.sock.sendall(frame("wiki-codec8-tcp-ex1"))
    assert device.recv(4) == bytes.fromhex("00000001")
    device.sock.sendall(frame("traccar-c8-26"))
    assert device.recv(4) == (14).to_bytes(4, "big")
    device.close()

    rows = entries(db)
    assert len(rows) == 15
    first = rows[0]
    expected = vector("wiki-codec8-tcp-ex1")["expected"]["records"][0]
    assert first["imei"] == IMEI
    assert first["timestamp"] == str(expected["timestamp_ms"]) == "1560161086000"
    assert first["priority"] == "1"
    assert float(first["longitude"]) == 0.0 and float(first["latitude"]) == 0.0
    assert first["altitude"] == "0" and first["angle"] == "0"
    assert first["satellites"] == "0" and first["speed"] == "0"
    assert first["event_id"] == "1"
    assert json.loads(first["io"]) == {
        "21": 3,
        "1": 1,
        "66": 24079,
        "241": 24602,
        "78": 0,
    }
    assert first["codec"] == "8" and first["transport"] == "tcp"
    assert "generation_type" not in first
    assert abs(int(first["received_at"]) - time.time() * 1000) < 60_000

    traccar = vector("traccar-c8-26")["expected"]["records"]
    for row, want in zip(rows[1:], traccar, strict=True):
        assert row["timestamp"] == str(want["timestamp_ms"])
        assert float(row["latitude"]) == pytest.approx(want["latitude"], abs=1e-7)
        assert float(row["longitude"]) == pytest.approx(want["longitude"], abs=1e-7)
        assert int(row["altitude"]) == want["altitude_m"]


def test_device_hash_tracks_session_and_newest_position(
    db: SyncClient, ingest: IngestProcess
) -> None:
    records = make_records(3, start_ms=1_700_000_000_000, codec=8)
    newest_first = list(reversed(records))
    device = Device(ingest.port)
    assert device.login() == b"\x01"
    device.sock.sendall(encode_avl_packet(8, newest_first))
    assert device.recv(4) == (3).to_bytes(4, "big")
    # An older record arriving later must not move the position back.
    device.sock.sendall(
        encode_avl_packet(
            8, make_records(1, start_ms=1_600_000_000_000, codec=8, seed=5)
        )
    )
    assert device.recv(4) == (1).to_bytes(4, "big")

    status = db.hgetall(KEYS.device(IMEI))
    assert status["connected"] == "1"
    assert status["peer"].startswith("127.0.0.1:")
    assert status["last_timestamp"] == str(records[-1].timestamp)
    assert float(status["last_latitude"]) == records[-1].latitude
    assert status["records_received"] == "4"
    assert db.zscore(KEYS.devices(), IMEI) is not None
    device.close()

    deadline = time.monotonic() + 5
    while db.hget(KEYS.device(IMEI), "connected") != "0":
        assert time.monotonic() < deadline, "device still marked connected"
        time.sleep(0.05)
    # Stored as sent: newest first in the stream too.
    stamps = [int(r["timestamp"]) for r in entries(db)]
    assert stamps == [r.timestamp for r in newest_first] + [1_600_000_000_000]


def test_crc_error_gets_no_ack_and_stores_nothing(
    db: SyncClient, ingest: IngestProcess
) -> None:
    device = Device(ingest.port)
    assert device.login() == b"\x01"
    bad = bytearray(frame("wiki-codec8-tcp-ex1"))
    bad[-1] ^= 0xFF
    device.sock.sendall(bytes(bad))
    assert device.silent_for(0.7)
    assert entries(db) == []
    # The stream stays in sync: the next good packet is stored and ACKed.
    device.sock.sendall(frame("wiki-codec8-tcp-ex1"))
    assert device.recv(4) == bytes.fromhex("00000001")
    assert len(entries(db)) == 1
    device.close()


def test_non_digit_imei_is_refused_with_zero(ingest: IngestProcess) -> None:
    device = Device(ingest.port, imei="35630704244101A")
    device.sock.sendall(b"\x00\x0f" + b"35630704244101A")
    assert device.recv(1) == b"\x00"
    assert device.recv(1, timeout=2) == b""  # then the link is closed
    device.close()


def test_keepalive_byte_is_never_answered(
    db: SyncClient, ingest: IngestProcess
) -> None:
    device = Device(ingest.port)
    device.sock.sendall(b"\xff")
    assert device.login() == b"\x01"
    device.sock.sendall(b"\xff")
    assert device.silent_for(0.5)
    device.sock.sendall(b"\xff" + frame("wiki-codec8e-tcp-ex1"))
    assert device.recv(4) == bytes.fromhex("00000001")
    assert device.silent_for(0.3)
    assert len(entries(db)) == 1
    device.close()


def test_packet_split_1024_plus_237_is_stored_once(
    db: SyncClient, ingest: IngestProcess
) -> None:
    entry = vector("karticr-codec8-tcp-split-1024")
    first, second = (bytes.fromhex(s) for s in entry["segments"])
    assert (len(first), len(second)) == (1024, 237)
    device = Device(ingest.port)
    assert device.login() == b"\x01"
    device.sock.sendall(first)
    assert device.silent_for(0.3)
    device.sock.sendall(second)
    assert device.recv(4) == (14).to_bytes(4, "big")
    rows = entries(db)
    assert len(rows) == 14
    want = entry["expected"]["records"]
    assert [r["timestamp"] for r in rows] == [str(w["timestamp_ms"]) for w in want]
    device.close()


def test_several_packets_in_one_write_are_all_acked(
    db: SyncClient, ingest: IngestProcess
) -> None:
    device = Device(ingest.port)
    burst = encode_imei(IMEI) + frame("wiki-codec8-tcp-ex1") + frame("traccar-c8-10")
    device.sock.sendall(burst)
    assert device.recv(1 + 4 + 4) == b"\x01" + (1).to_bytes(4, "big") + (3).to_bytes(
        4, "big"
    )
    assert len(entries(db)) == 4
    device.close()


def test_zero_record_packet_is_acked_with_zero(
    db: SyncClient, ingest: IngestProcess
) -> None:
    device = Device(ingest.port)
    assert device.login() == b"\x01"
    device.sock.sendall(frame("uro-codec8-zero-records"))
    assert device.recv(4) == bytes(4)
    assert entries(db) == []
    assert db.hget(KEYS.device(IMEI), "seen_at") is not None
    device.close()


def test_resent_packet_is_stored_once(db: SyncClient, ingest: IngestProcess) -> None:
    packet = frame("traccar-c8-27")
    for _attempt in range(3):
        device = Device(ingest.port)
        assert device.login() == b"\x01"
        device.sock.sendall(packet)
        # Every copy is ACKed in full: the device may forget the records.
        assert device.recv(4) == (8).to_bytes(4, "big")
        device.close()
    assert len(entries(db)) == 8
    counts = db.hmget(KEYS.dedup(IMEI), "stored", "duplicates")
    assert counts == ["8", "16"]


def metric_sum(ingest: IngestProcess, name: str) -> float:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    url = f"http://127.0.0.1:{ingest.admin_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and sample.labels.get("transport", "tcp") == "tcp"
    )


def test_every_packet_and_record_is_counted_in_the_metrics(
    db: SyncClient, ingest: IngestProcess
) -> None:
    names = ("trackgate_records_total", "trackgate_records_duplicate_total",
             "trackgate_ack_latency_seconds_count",
             "trackgate_record_lag_seconds_count")  # fmt: skip
    before = {n: metric_sum(ingest, n) for n in names}
    device = Device(ingest.port)
    assert device.login() == b"\x01"
    records = make_records(5, start_ms=int(time.time() * 1000) - 60_000, codec=8)
    packet = encode_avl_packet(8, records)
    for _ in range(2):  # the second one is a resend
        device.sock.sendall(packet)
        assert device.recv(4) == (5).to_bytes(4, "big")
    device.close()

    after = {n: metric_sum(ingest, n) for n in names}
    delta = {n: after[n] - before[n] for n in names}
    assert delta == {
        "trackgate_records_total": 5,
        "trackgate_records_duplicate_total": 5,
        "trackgate_ack_latency_seconds_count": 2,
        "trackgate_record_lag_seconds_count": 10,
    }


def test_udp_datagram_is_stored_and_acked_with_its_ids(
    db: SyncClient, ingest: IngestProcess
) -> None:
    entry = vector("wiki-codec8-udp-ex1")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(5)
    sock.sendto(bytes.fromhex(entry["hex"]), ("127.0.0.1", ingest.port))
    ack, _ = sock.recvfrom(64)
    assert ack.hex() == entry["expected"]["server_ack_hex"]
    imei = entry["expected"]["imei"]
    rows = entries(db, imei)
    assert len(rows) == 1 and rows[0]["transport"] == "udp"
    # The same datagram again (the ACK was lost): ACKed, not stored twice.
    sock.sendto(bytes.fromhex(entry["hex"]), ("127.0.0.1", ingest.port))
    ack_again, _ = sock.recvfrom(64)
    assert ack_again == ack
    assert len(entries(db, imei)) == 1
    sock.close()


def test_udp_codec8e_datagram_from_the_encoder(
    db: SyncClient, ingest: IngestProcess
) -> None:
    records = make_records(4, codec=0x8E)
    datagram = encode_udp_datagram(
        packet_id=0xBEEF,
        avl_packet_id=7,
        imei="352093081452251",
        codec=0x8E,
        records=records,
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(5)
    sock.sendto(datagram, ("127.0.0.1", ingest.port))
    ack, _ = sock.recvfrom(64)
    assert ack == bytes.fromhex("0005beef010704")
    rows = entries(db, "352093081452251")
    assert [json.loads(r["io"])["11"] for r in rows] == [8_937_000_000_000_000_000] * 4
    sock.close()


def wait_until(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def test_records_stored_after_their_device_left_are_counted_as_stored(
    redis_url: str,
) -> None:
    """A device that closes while its packet is being written is not ACKed,
    yet Redis stores the records: they count as stored, and the device's
    resend as duplicates."""
    imei = "356307042441099"
    ingest = IngestProcess(redis_url, pod_name="pod-counts", stream_shards="4")
    ingest.start()
    db = sync_client(redis_url, decode_responses=True)
    try:
        packet = encode_avl_packet(8, make_records(5, codec=8))
        # Redis holds every write for a moment: the device leaves meanwhile.
        db.execute_command("CLIENT", "PAUSE", "1500", "WRITE")
        device = Device(ingest.port, imei)
        assert device.login() == b"\x01"
        device.sock.sendall(packet)
        device.close()
        assert wait_until(lambda: f"session ended imei={imei}" in ingest.log())
        assert entries(db, imei) == []
        assert wait_until(lambda: len(entries(db, imei)) == 5)
        assert wait_until(lambda: metric_sum(ingest, "trackgate_records_total") == 5)
        again = Device(ingest.port, imei)
        assert again.login() == b"\x01"
        again.sock.sendall(packet)
        assert again.recv(4) == (5).to_bytes(4, "big")
        again.close()
        assert len(entries(db, imei)) == 5
        assert metric_sum(ingest, "trackgate_records_total") == 5
        assert metric_sum(ingest, "trackgate_records_duplicate_total") == 5
    finally:
        db.close()
        ingest.stop()


def test_a_malformed_datagram_is_logged_with_the_imei_of_its_header(
    ingest: IngestProcess,
) -> None:
    imei = "356307040009200"
    datagram = bytearray(
        encode_udp_datagram(
            packet_id=1,
            avl_packet_id=2,
            imei=imei,
            codec=8,
            records=make_records(2, codec=8),
        )
    )
    datagram[-1] = 3  # the closing record count disagrees with the opening one
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(1)
    sock.sendto(bytes(datagram), ("127.0.0.1", ingest.port))
    sock.sendto(b"\x00\x01\x02", ("127.0.0.1", ingest.port))

    def lines(kind: str) -> list[str]:
        return [
            line
            for line in ingest.log().splitlines()
            if "malformed datagram" in line and f"kind={kind}" in line
        ]

    try:
        assert wait_until(lambda: bool(lines("count_mismatch")))
        assert wait_until(lambda: bool(lines("bad_udp_datagram")))
        # Nothing is ACKed for either.
        with pytest.raises(TimeoutError):
            sock.recvfrom(64)
    finally:
        sock.close()
    assert f"imei={imei} " in lines("count_mismatch")[0]
    # A header too short to hold an IMEI names none.
    assert "imei=- " in lines("bad_udp_datagram")[0]
