"""Real tracker traffic on loopback, captured by tcpdump, for the pcap tests.

``record_session`` starts tcpdump on ``lo``, runs a tiny gateway (TCP and
UDP, answering IMEIs and ACKing packets with trackgate.protocol) and plays
devices against it with real sockets and public Teltonika vectors:

* device A (127.0.0.2) logs in and sends three packets; the gateway "loses"
  the third ACK, so A reconnects and sends that packet again;
* device B (127.0.0.3) sends a SYN while the gateway's accept queue is full:
  never answered, retransmitted once, then abandoned;
* device C (127.0.0.4) sends one good UDP datagram and one broken one.

It returns what was sent, so tests compare the analysis with the truth.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trackgate.protocol import (
    AvlPacket,
    AvlRecord,
    Imei,
    RemoteProtocolError,
    TcpServerConnection,
    decode_udp_datagram,
    encode_avl_packet,
    tcp_ack,
    udp_ack,
)

VECTORS = Path("/work/shared/vectors/teltonika_public.json")
DEVICE_A, DEVICE_B, DEVICE_C = "127.0.0.2", "127.0.0.3", "127.0.0.4"
LOST_ACK_PACKET = 3  # the gateway does not ACK the third AVL packet it reads
FRESH_RECORD_AGE_S = 5.0


def vectors() -> dict[str, dict[str, Any]]:
    return {entry["id"]: entry for entry in json.loads(VECTORS.read_text())}


def tcpdump_unavailable() -> str | None:
    if shutil.which("tcpdump") is None:
        return "tcpdump is not installed (apt-get install tcpdump)"
    return None


@contextmanager
def tcpdump(
    path: Path, port: int, interface: str = "lo", snaplen: int = 0
) -> Iterator[None]:
    """Capture ``port`` on ``interface`` into ``path`` while the block runs;
    ``snaplen`` bytes of each packet (0: all of it)."""
    process = subprocess.Popen(
        [
            "tcpdump",
            "-i",
            interface,
            "-n",
            "-U",
            "--immediate-mode",
            "-s",
            str(snaplen),
            "-Z",
            "root",
            "-w",
            str(path),
            f"port {port}",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        if "listening on" not in line:
            raise RuntimeError(f"tcpdump did not start: {line}")
        yield
        time.sleep(0.2)  # let the last segments reach the capture
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=10)


@dataclass
class Session:
    """What the devices sent, to compare with the analysis."""

    path: Path
    port: int
    imei: str
    udp_imei: str
    records_a: list[int] = field(default_factory=list)
    fresh_sent_at: float = 0.0


class TinyGateway:
    """A blocking TCP+UDP gateway with a controllable accept loop."""

    def __init__(self, port: int) -> None:
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))
        # Backlog 0: one finished handshake fills the queue.
        self.listener.listen(0)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", port))
        self.accepting = threading.Event()
        self.packets_read = 0
        self._threads = [
            threading.Thread(target=self._accept_loop, daemon=True),
            threading.Thread(target=self._udp_loop, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def close(self) -> None:
        self.listener.close()
        self.udp.close()

    def _accept_loop(self) -> None:
        self.accepting.wait()
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        protocol = TcpServerConnection()
        with conn:
            while data := conn.recv(4096):
                protocol.receive_data(data)
                while (event := protocol.next_event()) is not None:
                    if isinstance(event, Imei):
                        conn.sendall(protocol.accept_imei(True))
                    elif isinstance(event, AvlPacket):
                        self.packets_read += 1
                        if self.packets_read != LOST_ACK_PACKET:
                            conn.sendall(tcp_ack(len(event.records)))

    def _udp_loop(self) -> None:
        while True:
            try:
                data, peer = self.udp.recvfrom(65535)
            except OSError:
                return
            try:
                datagram = decode_udp_datagram(data)
            except RemoteProtocolError:
                continue
            reply = udp_ack(
                datagram.packet_id, datagram.avl_packet_id, len(datagram.packet.records)
            )
            self.udp.sendto(reply, peer)


def _device_socket(address: str, port: int) -> socket.socket:
    sock = socket.socket()
    sock.bind((address, 0))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(3)
    sock.connect(("127.0.0.1", port))
    return sock


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("gateway closed the connection")
        data += chunk
    return data


def _fresh_packet() -> bytes:
    now_ms = int(time.time() * 1000) - int(FRESH_RECORD_AGE_S * 1000)
    records = [
        AvlRecord(
            timestamp=now_ms + i,
            priority=0,
            longitude=25.3,
            latitude=54.7,
            altitude=120,
            angle=90,
            satellites=9,
            speed=42,
            event_id=0,
            io={"239": 1},
        )
        for i in range(2)
    ]
    return encode_avl_packet(8, records)


def record_session(path: Path, port: int, snaplen: int = 0) -> Session:
    """Run the whole scenario under tcpdump (keeping ``snaplen`` bytes of each
    packet, 0 for all) and return what was sent."""
    corpus = vectors()
    imei_frame = bytes.fromhex(corpus["doc-imei-tcp-1"]["hex"])
    first = corpus["wiki-codec8-tcp-ex1"]
    second = corpus["traccar-c8e-07"]
    udp_good = corpus["wiki-codec8-udp-ex1"]
    udp_bad = corpus["wiki-codec16-udp-original-inconsistent"]
    session = Session(
        path,
        port,
        corpus["doc-imei-tcp-1"]["expected"]["imei"],
        udp_good["expected"]["imei"],
    )
    gateway = TinyGateway(port)
    try:
        with tcpdump(path, port, snaplen=snaplen):
            _play(gateway, session, imei_frame, first, second, udp_good, udp_bad)
    finally:
        gateway.close()
    return session


def _play(
    gateway: TinyGateway,
    session: Session,
    imei_frame: bytes,
    first: dict[str, Any],
    second: dict[str, Any],
    udp_good: dict[str, Any],
    udp_bad: dict[str, Any],
) -> None:
    port = session.port
    # A finishes its handshake and fills the accept queue; B's SYN is dropped.
    device_a = _device_socket(DEVICE_A, port)
    device_a.sendall(imei_frame)
    device_b = socket.socket()
    device_b.bind((DEVICE_B, 0))
    device_b.setblocking(False)
    device_b.connect_ex(("127.0.0.1", port))
    time.sleep(1.4)  # the first SYN retransmission leaves after 1 s
    device_b.close()
    gateway.accepting.set()

    with device_a:
        assert _recv_exactly(device_a, 1) == b"\x01"
        device_a.sendall(bytes.fromhex(first["hex"]))
        assert _recv_exactly(device_a, 4) == tcp_ack(1)
        session.records_a.append(first["expected"]["record_count"])

        frame = bytes.fromhex(second["hex"])
        for start in range(0, len(frame), 400):  # three segments
            device_a.sendall(frame[start : start + 400])
            time.sleep(0.05)
        count = second["expected"]["record_count"]
        assert _recv_exactly(device_a, 4) == tcp_ack(count)
        session.records_a.append(count)

        fresh = _fresh_packet()
        session.fresh_sent_at = time.time()
        device_a.sendall(fresh)
        session.records_a.append(2)
        device_a.settimeout(0.3)
        try:
            device_a.recv(4)
            raise AssertionError("the third packet was ACKed")
        except TimeoutError:
            pass  # the device gives up on this connection and comes back

    with _device_socket(DEVICE_A, port) as again:
        again.sendall(imei_frame)
        assert _recv_exactly(again, 1) == b"\x01"
        again.sendall(fresh)
        assert _recv_exactly(again, 4) == tcp_ack(2)
        session.records_a.append(2)

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as device_c:
        device_c.bind((DEVICE_C, 0))
        device_c.settimeout(3)
        device_c.sendto(bytes.fromhex(udp_bad["hex"]), ("127.0.0.1", port))
        device_c.sendto(bytes.fromhex(udp_good["hex"]), ("127.0.0.1", port))
        reply = device_c.recv(64)
        assert reply == bytes.fromhex(udp_good["expected"]["server_ack_hex"])
