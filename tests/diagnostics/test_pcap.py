"""``trackgate pcap`` on a real tcpdump capture of real loopback traffic.

The capture is made once per module by ``traffic.record_session`` (tcpdump
on lo, a tiny gateway, devices sending public vectors). Variants of it
(segments reordered and duplicated, pcapng, cut at the start or the end)
are written from the captured packets with dpkt's writers. Two more real
captures: the same session with a snap length of 80 bytes, and a
redis-server's port, which carries no Teltonika traffic at all.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import dpkt
import pytest
import redis

from tests.diagnostics.traffic import (
    DEVICE_A,
    DEVICE_B,
    DEVICE_C,
    FRESH_RECORD_AGE_S,
    Session,
    record_session,
    tcpdump,
    tcpdump_unavailable,
    vectors,
)
from tests.support.servers import free_port, redis_server
from trackgate.diagnostics import CaptureError
from trackgate.diagnostics.pcap import SLOW_HANDSHAKE_SECONDS, analyse_capture


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Session:
    reason = tcpdump_unavailable()
    if reason is not None:
        pytest.skip(reason)
    path = tmp_path_factory.mktemp("capture") / "gateway.pcap"
    return record_session(path, free_port())


@pytest.fixture(scope="module")
def result(session: Session) -> dict[str, Any]:
    return analyse_capture(session.path, session.port)


def _address(result: dict[str, Any], address: str) -> dict[str, Any]:
    (row,) = [row for row in result["addresses"] if row["address"] == address]
    return dict(row)


def _device(result: dict[str, Any], imei: str) -> dict[str, Any]:
    (row,) = [row for row in result["devices"] if row["imei"] == imei]
    return dict(row)


def _packets(path: Path) -> list[tuple[float, bytes]]:
    with path.open("rb") as handle:
        return [(ts, bytes(buf)) for ts, buf in dpkt.pcap.Reader(handle)]


def _write_pcap(path: Path, packets: list[tuple[float, bytes]]) -> Path:
    with path.open("wb") as handle:
        writer = dpkt.pcap.Writer(handle, linktype=dpkt.pcap.DLT_EN10MB)
        for ts, buf in packets:
            writer.writepkt(buf, ts)
    return path


def _tcp(buf: bytes) -> Any:
    ip = dpkt.ethernet.Ethernet(buf).data
    return ip.data if isinstance(ip.data, dpkt.tcp.TCP) else None


def _first_imei_reply(packets: list[tuple[float, bytes]]) -> int:
    """Index of the gateway's first IMEI reply (a one-byte segment)."""
    return next(
        i
        for i, (_, buf) in enumerate(packets)
        if (tcp := _tcp(buf)) is not None and tcp.data == b"\x01"
    )


def test_syn_dropped_by_a_full_accept_queue_is_never_answered(
    result: dict[str, Any],
) -> None:
    row = _address(result, DEVICE_B)

    assert row["syns_unanswered"] == 1
    assert row["syn_retransmits"] >= 1
    assert row["syns"] == 1 + row["syn_retransmits"]
    assert row["connections"] == 0
    assert row["syn_ack_ms"] is None


def test_answered_handshakes_are_timed(result: dict[str, Any]) -> None:
    row = _address(result, DEVICE_A)

    assert (row["syns"], row["syn_retransmits"], row["syns_unanswered"]) == (2, 0, 0)
    assert row["connections"] == 2
    assert row["syn_ack_ms"]["count"] == 2
    assert 0 <= row["syn_ack_ms"]["max"] < SLOW_HANDSHAKE_SECONDS * 1000
    assert row["slow_handshakes"] == 0


def test_records_and_acks_are_counted_per_address(
    result: dict[str, Any], session: Session
) -> None:
    row = _address(result, DEVICE_A)

    assert row["imeis"] == [session.imei]
    assert row["packets"] == len(session.records_a) == 4
    assert row["records"] == sum(session.records_a)
    assert row["server_acks"] == 3
    assert row["acks_missing"] == 1
    assert row["acks_short"] == 0
    assert row["protocol_errors"] == 0


def test_lost_ack_and_resent_packet_show_on_the_device(
    result: dict[str, Any], session: Session
) -> None:
    device = _device(result, session.imei)

    assert device["connections"] == 2
    assert device["addresses"] == [DEVICE_A]
    assert device["resent_packets"] == 1
    assert device["acks_missing"] == 1
    first, second = [c for c in result["connections"] if c["imei"] == session.imei]
    assert (first["packets"], first["acks_missing"], first["imei_reply"]) == (3, 1, 1)
    assert (second["packets"], second["acks_missing"]) == (1, 0)


def test_record_lag_is_capture_time_minus_device_time(
    result: dict[str, Any], session: Session
) -> None:
    lag = _device(result, session.imei)["lag_seconds"]

    # The freshest records were stamped 5 s (less 1 ms for the second
    # record) before they were sent.
    assert FRESH_RECORD_AGE_S - 0.002 <= lag["min"] < FRESH_RECORD_AGE_S + 1
    assert lag["count"] == sum(session.records_a)
    # The vectors' records are years old.
    assert lag["max"] > 365 * 24 * 3600


def test_udp_datagrams_are_decoded_and_matched_to_replies(
    result: dict[str, Any], session: Session
) -> None:
    row = _address(result, DEVICE_C)

    assert row["imeis"] == [session.udp_imei]
    assert (row["udp_datagrams"], row["udp_unanswered"], row["udp_errors"]) == (
        2,
        1,
        1,
    )
    assert _device(result, session.udp_imei)["udp_datagrams"] == 1
    assert result["udp_errors"] == {"bad_udp_datagram": 1}


def test_totals_add_up(result: dict[str, Any], session: Session) -> None:
    totals = result["totals"]

    assert totals["devices"] == 2
    # Device A's TCP records and the one record of the good UDP datagram.
    assert totals["records"] == sum(session.records_a) + 1
    assert totals["packets"] == len(session.records_a) + 1
    assert totals["syns_unanswered"] == 1
    assert result["capture"]["format"] == "pcap"
    assert result["capture"]["packets"] == result["capture"]["packets_on_port"]
    assert result["capture"]["truncated"] is False


def test_reordered_and_duplicated_segments_decode_the_same(
    session: Session, result: dict[str, Any], tmp_path: Path
) -> None:
    packets = _packets(session.path)
    data = [
        i
        for i, (_, buf) in enumerate(packets)
        if (tcp := _tcp(buf)) is not None and len(tcp.data) == 400
    ]
    assert len(data) == 2, "the 1073-byte packet was sent as 400+400+273 bytes"
    first, second = data
    packets[first], packets[second] = packets[second], packets[first]
    packets.insert(second + 1, packets[second])

    shuffled = analyse_capture(_write_pcap(tmp_path / "x.pcap", packets), session.port)

    assert shuffled["addresses"] == result["addresses"]
    assert shuffled["devices"] == result["devices"]
    (conn,) = [c for c in shuffled["connections"] if c["packets"] == 3]
    assert conn["retransmitted_segments"] == 1
    assert conn["undecoded_bytes"] == 0


def test_decoding_resumes_after_a_segment_missing_from_the_capture(
    session: Session, tmp_path: Path
) -> None:
    packets = _packets(session.path)
    lost = next(
        i
        for i, (_, buf) in enumerate(packets)
        if (tcp := _tcp(buf)) is not None and len(tcp.data) == 400
    )
    del packets[lost]

    gap = analyse_capture(_write_pcap(tmp_path / "gap.pcap", packets), session.port)

    first, second = [c for c in gap["connections"] if c["client"].startswith(DEVICE_A)]
    # The 1073-byte packet lost its first 400 bytes; its other 673 are
    # skipped, and the fresh 2-record packet after it decodes.
    assert (first["imei"], first["packets"]) == (session.imei, 2)
    assert first["records"] == session.records_a[0] + 2
    assert (first["capture_gaps"], first["gap_bytes"]) == (1, 400)
    assert (first["skipped_bytes"], first["resyncs"]) == (673, 1)
    assert first["records_after_resync"] == 2
    assert first["undecoded_bytes"] == 0
    assert (second["packets"], second["capture_gaps"]) == (1, 0)
    # The lost packet's ACK matches nothing; the fresh one was never ACKed.
    assert (first["server_acks"], first["acks_missing"]) == (2, 1)
    device = _device(gap, session.imei)
    assert (device["packets"], device["resent_packets"]) == (3, 1)


def test_sequence_numbers_wrapping_past_2_32_decode_the_same(
    session: Session, result: dict[str, Any], tmp_path: Path
) -> None:
    packets = _packets(session.path)
    first_syn = next(
        tcp
        for _, buf in packets
        if (tcp := _tcp(buf)) is not None and tcp.flags == dpkt.tcp.TH_SYN
    )
    # Make device A's first stream wrap 600 bytes in, inside its second packet.
    shift = (2**32 - 600 - first_syn.seq) % 2**32
    shifted = []
    for ts, buf in packets:
        frame = dpkt.ethernet.Ethernet(buf)
        tcp = frame.data.data
        if isinstance(tcp, dpkt.tcp.TCP):
            if tcp.dport == session.port:
                tcp.seq = (tcp.seq + shift) % 2**32
            elif tcp.flags & dpkt.tcp.TH_ACK:
                tcp.ack = (tcp.ack + shift) % 2**32
        shifted.append((ts, bytes(frame)))

    wrapped = analyse_capture(_write_pcap(tmp_path / "w.pcap", shifted), session.port)

    assert wrapped["addresses"] == result["addresses"]
    assert wrapped["devices"] == result["devices"]


def test_capture_started_after_the_login_still_decodes_packets(
    session: Session, tmp_path: Path
) -> None:
    packets = _packets(session.path)
    # Drop everything up to the gateway's IMEI reply of the first connection.
    reply = _first_imei_reply(packets)
    cut = _write_pcap(tmp_path / "late.pcap", packets[reply + 1 :])

    late = analyse_capture(cut, session.port)

    (conn, *_) = late["connections"]
    assert conn["handshake_captured"] is False
    assert (conn["imei"], conn["packets"], conn["server_acks"]) == (None, 3, 2)
    assert _address(late, DEVICE_A)["packets"] == 4


def test_capture_starting_with_the_imei_reply_pairs_acks_with_packets(
    session: Session, tmp_path: Path
) -> None:
    packets = _packets(session.path)
    reply = _first_imei_reply(packets)
    cut = _write_pcap(tmp_path / "reply.pcap", packets[reply:])

    late = analyse_capture(cut, session.port)

    (conn, *_) = late["connections"]
    assert (conn["handshake_captured"], conn["imei_reply"]) == (False, 1)
    assert (conn["packets"], conn["server_acks"]) == (3, 2)
    assert late["totals"]["acks_short"] == 0


def test_capture_started_inside_a_packet_decodes_from_the_next_one(
    session: Session, tmp_path: Path
) -> None:
    packets = _packets(session.path)
    # Drop everything before the second 400-byte segment of the big packet.
    second = [
        i
        for i, (_, buf) in enumerate(packets)
        if (tcp := _tcp(buf)) is not None and len(tcp.data) == 400
    ][1]
    cut = _write_pcap(tmp_path / "mid.pcap", packets[second:])

    late = analyse_capture(cut, session.port)

    first, again = [c for c in late["connections"] if c["client"].startswith(DEVICE_A)]
    assert (first["handshake_captured"], first["imei"]) == (False, None)
    assert (first["packets"], first["records"]) == (1, 2)
    assert (first["skipped_bytes"], first["capture_gaps"]) == (400 + 273, 0)
    assert (again["imei"], again["packets"]) == (session.imei, 1)
    row = _address(late, DEVICE_A)
    assert (row["imeis"], row["connections_without_imei"]) == ([session.imei], 1)
    assert row["packets"] == 2


def test_capture_started_before_the_login_learns_the_imei(
    session: Session, tmp_path: Path
) -> None:
    packets = _packets(session.path)
    login = next(
        i
        for i, (_, buf) in enumerate(packets)
        if (tcp := _tcp(buf)) is not None and len(tcp.data) == 17
    )
    cut = _write_pcap(tmp_path / "login.pcap", packets[login:])

    late = analyse_capture(cut, session.port)

    first = late["connections"][0]
    assert (first["handshake_captured"], first["imei"]) == (False, session.imei)
    assert (first["imei_reply"], first["packets"], first["skipped_bytes"]) == (1, 3, 0)
    assert _device(late, session.imei)["connections"] == 2


def test_pcapng_reads_like_pcap(
    session: Session, result: dict[str, Any], tmp_path: Path
) -> None:
    path = tmp_path / "gateway.pcapng"
    with path.open("wb") as handle:
        writer = dpkt.pcapng.Writer(handle, linktype=dpkt.pcap.DLT_EN10MB)
        for ts, buf in _packets(session.path):
            writer.writepkt(buf, ts)

    converted = analyse_capture(path, session.port)

    assert converted["capture"]["format"] == "pcapng"
    assert converted["addresses"] == result["addresses"]
    assert converted["devices"] == result["devices"]


def test_capture_torn_at_the_end_is_read_up_to_the_tear(
    session: Session, tmp_path: Path
) -> None:
    raw = session.path.read_bytes()
    torn = tmp_path / "torn.pcap"
    torn.write_bytes(raw[:-10])

    partial = analyse_capture(torn, session.port)

    assert partial["capture"]["truncated"] is True
    # The torn last record is left out, and not taken for a snap-length cut.
    assert partial["capture"]["packets"] == len(_packets(session.path)) - 1
    assert partial["capture"]["cut_by_snaplen"] == 0
    assert partial["warnings"] == []
    # The torn last packet is a reply or a FIN: every record is still there.
    assert partial["totals"]["records"] == sum(session.records_a) + 1


def test_a_capture_cut_inside_a_packet_is_not_blamed_on_the_snap_length(
    session: Session, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    raw = session.path.read_bytes()
    torn = tmp_path / "torn.pcap"
    # 24-byte file header, then records of a 16-byte header and the frame:
    # cut 20 bytes into the frame of the third record.
    packets = _packets(session.path)
    offset = 24 + sum(16 + len(buf) for _, buf in packets[:2]) + 16 + 20
    torn.write_bytes(raw[:offset])

    with caplog.at_level("WARNING"):
        partial = analyse_capture(torn, session.port)

    assert partial["capture"]["truncated"] is True
    assert partial["capture"]["packets"] == 2
    assert partial["capture"]["cut_by_snaplen"] == 0
    assert partial["warnings"] == []
    assert "the file ends" in caplog.text


def test_complete_capture_is_not_called_truncated(result: dict[str, Any]) -> None:
    assert result["capture"]["truncated"] is False


def test_a_file_that_is_not_a_capture_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not a capture at all\n" * 10)

    with pytest.raises(CaptureError, match="not a pcap or pcapng"):
        analyse_capture(path, 5027)


def test_other_ports_are_ignored(session: Session) -> None:
    other = analyse_capture(session.path, session.port + 1)

    assert other["capture"]["packets_on_port"] == 0
    assert other["addresses"] == []


def _trackgate(*args: str, columns: str = "160") -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("trackgate")
    env = {"PATH": "/usr/bin:/bin"}
    if columns:
        env["COLUMNS"] = columns
    return subprocess.run(
        [str(script), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_cli_prints_json_and_tables(session: Session, result: dict[str, Any]) -> None:
    as_json = _trackgate(
        "pcap", str(session.path), "--port", str(session.port), "--json"
    )
    as_table = _trackgate("pcap", str(session.path), "--port", str(session.port))

    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["totals"] == result["totals"]
    assert as_table.returncode == 0, as_table.stderr
    assert "1 never answered" in as_table.stdout
    assert "Per client address" in as_table.stdout
    assert session.imei in as_table.stdout


def test_cli_refuses_a_non_capture(tmp_path: Path) -> None:
    path = tmp_path / "x.pcap"
    path.write_bytes(b"\x00" * 64)

    outcome = _trackgate("pcap", str(path))

    assert outcome.returncode == 3
    assert "cannot analyse capture" in outcome.stderr


def test_cli_tables_written_to_a_pipe_keep_every_column(session: Session) -> None:
    # No terminal and no COLUMNS: a report redirected to a file.
    outcome = _trackgate(
        "pcap", str(session.path), "--port", str(session.port), columns=""
    )
    assert outcome.returncode == 0, outcome.stderr
    header = next(line for line in outcome.stdout.splitlines() if "┃ address" in line)
    for column in ("SYNs", "no answer", "SYN-ACK ms", "conns", "no ACK", "IMEIs"):
        assert column in header


def test_an_address_row_names_a_few_imeis_and_counts_the_rest() -> None:
    from trackgate.cli.pcap import _imeis

    names = [f"35630704000000{n}" for n in range(5)]
    assert _imeis(names[:3]) == " ".join(names[:3])
    assert _imeis(names) == " ".join(names[:3]) + " (+2 more, see --json)"
    assert _imeis([]) == "-"


# Captures that are not what they seem ---------------------------------------------


@pytest.fixture(scope="module")
def redis_capture(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """A real capture of a redis-server's port: three clients, 20 SETs and
    20 GETs each; every reply of 4 bytes or more looks like an ACK."""
    reason = tcpdump_unavailable()
    if reason is not None:
        pytest.skip(reason)
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    path = tmp_path_factory.mktemp("redis") / "redis.pcap"
    with redis_server() as server, tcpdump(path, server.port):
        for client_number in range(3):
            client = redis.Redis.from_url(server.url)
            for n in range(20):
                client.set(f"key:{client_number}:{n}", "value")
                client.get(f"key:{client_number}:{n}")
            client.close()
    return path, server.port


def test_a_capture_of_another_service_says_so_and_counts_no_acks(
    redis_capture: tuple[Path, int],
) -> None:
    path, port = redis_capture

    other = analyse_capture(path, port)

    totals = other["totals"]
    assert (totals["server_acks"], totals["packets"], totals["devices"]) == (0, 0, 0)
    assert totals["connections"] == totals["connections_not_teltonika"] == 3
    assert other["warnings"] == [
        f"3 connections on port {port} carried no Teltonika traffic: "
        "is this the gateway port?"
    ]
    for conn in other["connections"]:
        assert conn["not_teltonika"] is True
        assert conn["client_bytes"] > 0
        assert (conn["server_acks"], conn["imei_reply"]) == (0, None)


def test_cli_warns_about_a_capture_of_another_service(
    redis_capture: tuple[Path, int],
) -> None:
    path, port = redis_capture

    outcome = _trackgate("pcap", str(path), "--port", str(port))

    assert outcome.returncode == 0, outcome.stderr
    lines = outcome.stdout.splitlines()
    assert lines[1] == (
        f"  warning: 3 connections on port {port} carried no Teltonika traffic: "
        "is this the gateway port?"
    )
    assert "  0 server ACKs; 0 packets never acknowledged, 0 acknowledged short" in (
        lines
    )


def test_the_gateway_capture_has_no_warnings(result: dict[str, Any]) -> None:
    assert result["warnings"] == []
    assert result["totals"]["connections_not_teltonika"] == 0
    assert result["capture"]["cut_by_snaplen"] == 0


@pytest.fixture(scope="module")
def snapped(tmp_path_factory: pytest.TempPathFactory) -> Session:
    """The gateway session captured with ``tcpdump -s 80``: 14 bytes of TCP
    payload and 38 of UDP payload survive on lo."""
    reason = tcpdump_unavailable()
    if reason is not None:
        pytest.skip(reason)
    path = tmp_path_factory.mktemp("snapped") / "gateway.pcap"
    return record_session(path, free_port(), snaplen=80)


def test_packets_cut_by_the_snap_length_are_not_protocol_errors(
    snapped: Session,
) -> None:
    cut = analyse_capture(snapped.path, snapped.port)

    # Device C's two datagrams are cut; the gateway's 7-byte reply to the
    # good one is whole and still finds it by its AVL packet id.
    row = _address(cut, DEVICE_C)
    assert (row["udp_datagrams"], row["udp_unanswered"], row["udp_errors"]) == (
        2,
        1,
        0,
    )
    assert cut["udp_errors"] == {}
    assert cut["totals"]["udp_cut_short"] == 2
    assert row["imeis"] == [snapped.udp_imei]
    # Device A's logins and packets are cut too: nothing decodes, but that
    # is not the sign of another service on the port.
    assert cut["totals"]["protocol_errors"] == 0
    assert cut["totals"]["connections_not_teltonika"] == 0
    count = cut["capture"]["cut_by_snaplen"]
    assert count >= 2 + 4  # two datagrams, device A's login and four packets
    assert cut["warnings"] == [
        f"{count} packets cut short by the capture's snap length: capture with -s 0"
    ]


def test_cli_names_the_snap_length(snapped: Session) -> None:
    outcome = _trackgate("pcap", str(snapped.path), "--port", str(snapped.port))

    assert outcome.returncode == 0, outcome.stderr
    assert "cut short by the capture's snap length: capture with -s 0" in (
        outcome.stdout
    )
    assert "2 UDP datagrams, 1 without a reply, 2 cut short by the snap length" in (
        outcome.stdout
    )


def test_an_ipv6_datagram_cut_short_still_meets_its_reply(tmp_path: Path) -> None:
    good = vectors()["wiki-codec8-udp-ex1"]
    datagram = bytes.fromhex(good["hex"])
    reply = bytes.fromhex(good["expected"]["server_ack_hex"])
    device, server = socket.inet_pton(socket.AF_INET6, "fd00::2"), bytes(15) + b"\1"

    def frame(src: bytes, dst: bytes, sport: int, dport: int, data: bytes) -> bytes:
        udp = dpkt.udp.UDP(sport=sport, dport=dport, data=data)
        udp.ulen = len(udp)
        ip = dpkt.ip6.IP6(src=src, dst=dst, nxt=17, hlim=64, data=udp)
        ip.plen = len(udp)
        return bytes(dpkt.ethernet.Ethernet(type=dpkt.ethernet.ETH_TYPE_IP6, data=ip))

    sent = frame(device, server, 40000, 5027, datagram)
    packets = [
        (1.0, sent[:100]),  # what tcpdump -s 100 keeps: IMEI and a few bytes
        (1.1, frame(server, device, 5027, 40000, reply)),
    ]

    cut = analyse_capture(_write_pcap(tmp_path / "v6.pcap", packets), 5027)

    assert cut["capture"]["cut_by_snaplen"] == 1
    assert (cut["totals"]["udp_unanswered"], cut["udp_errors"]) == (0, {})
    assert cut["addresses"][0]["imeis"] == [good["expected"]["imei"]]


def test_a_torn_pcapng_says_why_it_is_truncated(
    session: Session, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    whole = tmp_path / "gateway.pcapng"
    with whole.open("wb") as handle:
        writer = dpkt.pcapng.Writer(handle, linktype=dpkt.pcap.DLT_EN10MB)
        for ts, buf in _packets(session.path):
            writer.writepkt(buf, ts)
    torn = tmp_path / "torn.pcapng"
    torn.write_bytes(whole.read_bytes()[:-10])  # what head -c leaves

    with caplog.at_level(logging.WARNING, logger="trackgate.diagnostics.pcap"):
        partial = analyse_capture(torn, session.port)

    assert partial["capture"]["truncated"] is True
    (record,) = caplog.records
    packets = len(_packets(session.path)) - 1
    assert record.getMessage() == (
        f"capture ends with a truncated record after {packets} whole packets: "
        "the file ends 10 bytes before the end of that record (tcpdump stopped "
        "while writing, or the file was cut)"
    )


def test_a_capture_with_no_packets_prints_no_duration(tmp_path: Path) -> None:
    empty = _write_pcap(tmp_path / "empty.pcap", [])

    as_json = _trackgate("pcap", str(empty), "--json")
    as_table = _trackgate("pcap", str(empty))

    assert as_table.returncode == 0, as_table.stderr
    assert as_table.stdout.splitlines() == [
        f"{empty} (pcap): 0 packets",
        "  warning: the capture holds no packets",
    ]
    assert as_json.returncode == 0, as_json.stderr
    report = json.loads(as_json.stdout)
    assert report["capture"]["duration_seconds"] is None
    assert report["warnings"] == ["the capture holds no packets"]


def test_a_capture_of_other_ports_says_so(session: Session) -> None:
    other = analyse_capture(session.path, session.port + 1)

    assert other["warnings"] == [
        f"none of the {other['capture']['packets']} packets is on port "
        f"{session.port + 1}: is this the gateway port (--port)?"
    ]


def _into_closed_pipe(*command: str) -> subprocess.CompletedProcess[str]:
    """Run ``command`` with a stdout whose reader has gone (``| head -0``)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            list(command),
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            env={"PATH": "/usr/bin:/bin", "COLUMNS": "160"},
        )
    finally:
        os.close(write_end)


@pytest.mark.parametrize("options", [(), ("--json",)], ids=["tables", "json"])
def test_cli_stops_quietly_when_the_reader_goes_away(
    session: Session, options: tuple[str, ...]
) -> None:
    script = str(Path(sys.executable).with_name("trackgate"))

    outcome = _into_closed_pipe(
        script, "pcap", str(session.path), "--port", str(session.port), *options
    )

    assert (outcome.returncode, outcome.stderr) == (0, "")


def test_datagrams_of_another_service_say_so(tmp_path: Path) -> None:
    def frame(sport: int, dport: int, data: bytes) -> bytes:
        udp = dpkt.udp.UDP(sport=sport, dport=dport, data=data)
        udp.ulen = len(udp)
        ip = dpkt.ip.IP(src=bytes([127, 0, 0, 5]), dst=bytes([127, 0, 0, 1]), p=17)
        ip.data = udp
        ip.len = len(ip)
        return bytes(dpkt.ethernet.Ethernet(type=dpkt.ethernet.ETH_TYPE_IP, data=ip))

    # Three DNS-like queries to the port, and their answers.
    packets = [
        (float(n), frame(40000 + n, 5353, b"\x12\x34\x01\x00" + bytes(30)))
        for n in range(3)
    ] + [(9.0, frame(5353, 40000, b"\x12\x34\x81\x80" + bytes(30)))]

    other = analyse_capture(_write_pcap(tmp_path / "dns.pcap", packets), 5353)

    assert other["warnings"] == [
        "3 UDP datagrams on port 5353 carried no Teltonika traffic: "
        "is this the gateway port?"
    ]
