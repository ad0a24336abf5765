"""``trackgate decode`` on real vectors, pasted formats, bad hex and bad frames."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tests.protocol import vectors as vec
from trackgate.cli import app
from trackgate.cli.decode import parse_hex

runner = CliRunner()


def run(*args: str, stdin: str | None = None) -> tuple[int, list[dict[str, Any]], str]:
    result = runner.invoke(app, ["decode", *args], input=stdin)
    objects = [json.loads(line) for line in result.stdout.splitlines() if line]
    return result.exit_code, objects, result.stderr


def hex_of(vector_id: str) -> str:
    return str(vec.BY_ID[vector_id]["hex"])


def test_codec8_frame_prints_its_records_with_contract_field_names() -> None:
    code, (obj,), _ = run(hex_of("wiki-codec8-tcp-ex1"))

    assert code == 0
    assert obj == {
        "frame": "avl",
        "codec": 8,
        "record_count": 1,
        "records": [
            {
                "timestamp": 1560161086000,
                "priority": 1,
                "longitude": 0.0,
                "latitude": 0.0,
                "altitude": 0,
                "angle": 0,
                "satellites": 0,
                "speed": 0,
                "event_id": 1,
                "io": {"21": 3, "1": 1, "66": 24079, "241": 24602, "78": 0},
            }
        ],
        "server_ack_hex": "00000001",
    }


def test_codec16_records_carry_generation_type() -> None:
    code, (obj,), _ = run(hex_of("wiki-codec16-tcp-ex1"))

    assert code == 0
    assert [r["generation_type"] for r in obj["records"]] == [5, 5]


def test_codec8e_variable_length_values_print_as_lower_case_hex() -> None:
    vector = vec.BY_ID["pdf-fm64-codec8e-tcp"]
    code, (obj,), _ = run(vector["hex"].upper())

    assert code == 0
    (record,) = obj["records"]
    assert record["io"] == vec.flat_io(vector["expected"]["records"][0]["io"])
    assert any(isinstance(v, str) and v == v.lower() for v in record["io"].values())


def test_eight_byte_io_values_stay_exact_in_json() -> None:
    found = [
        (v["id"], key, value)
        for v in vec.TCP_AVL
        for r in v["expected"]["records"]
        for key, value in r["io"].get("n8", {}).items()
        if value > 2**53
    ]
    vector_id, key, value = found[0]

    code, objects, _ = run(hex_of(vector_id))

    assert code == 0
    line = runner.invoke(app, ["decode", hex_of(vector_id)]).stdout
    assert str(value) in line
    assert any(r["io"].get(key) == value for o in objects for r in o["records"])


def test_udp_datagram_prints_imei_and_packet_ids() -> None:
    code, (obj,), _ = run("--udp", hex_of("wiki-codec8-udp-ex1"))

    assert code == 0
    assert obj["frame"] == "udp"
    assert obj["imei"] == "352093086403655"
    assert (obj["packet_id"], obj["avl_packet_id"]) == (0xCAFE, 5)
    assert obj["server_ack_hex"] == "0005cafe010501"
    assert obj["records"][0]["io"] == {"21": 3, "1": 1, "66": 23996}


def test_capture_with_keepalive_login_and_packet_prints_each_frame() -> None:
    stream = "ff" + hex_of("maprox-imei-and-avl-in-one-buffer")
    code, objects, _ = run(stream)

    assert code == 0
    assert objects[0] == {"frame": "keepalive"}
    assert objects[1] == {"frame": "imei", "imei": "012896001609129"}
    assert objects[2]["record_count"] == 25
    assert objects[2]["server_ack_hex"] == "00000019"


def test_gprs_messages_print_text_or_payload_hex() -> None:
    code, objects, _ = run(
        hex_of("wiki-codec15-hello")
        + hex_of("traccar-c12-17")
        + hex_of("wiki-codec14-cmd-getver")
    )

    assert code == 0
    assert objects[0] == {
        "frame": "gprs",
        "codec": 15,
        "type": 11,
        "quantity": 1,
        "timestamp": 1699440036,
        "imei": "123456789123456",
        "text": "Hello!\n",
    }
    assert objects[1]["payload_hex"] == "010300010015d5c5"
    assert "text" not in objects[1]
    assert objects[2]["imei"] == "352093081452251"
    assert objects[2]["text"] == "getver"


@pytest.mark.parametrize(
    "pasted",
    [
        "00 0f 33 35 36 33 30 37 30 34 32 34 34 31 30 31 33",
        "00:0f:33:35:36:33:30:37:30:34:32:34:34:31:30:31:33",
        "0x00, 0x0f, 0x33, 0x35, 0x36, 0x33, 0x30, 0x37, 0x30, 0x34, 0x32, 0x34,\n"
        "0x34, 0x31, 0x30, 0x31, 0x33",
        "\t0x0000:  000f 3335 3633 3037 3034 3234 3431 3031\n\t0x0010:  33\n",
        "000F333536333037303432343431303133\n",
    ],
)
def test_pasted_hex_formats_are_understood(pasted: str) -> None:
    assert parse_hex(pasted) == bytes.fromhex("000f333536333037303432343431303133")
    code, objects, _ = run(stdin=pasted)
    assert code == 0
    assert objects == [{"frame": "imei", "imei": "356307042441013"}]


@pytest.mark.parametrize("bad", ["zz", "000", "", "0x0g"])
def test_input_that_is_not_hex_exits_2_with_a_reason(bad: str) -> None:
    code, objects, stderr = run(stdin=bad)

    assert code == 2
    assert objects == []
    assert stderr.startswith("trackgate decode: ")


def test_crc_error_exits_1_after_printing_the_frames_before_it() -> None:
    good = hex_of("wiki-codec8-tcp-ex1")
    code, objects, stderr = run(good + hex_of("filipkroca-codec12-resp-bad-crc") + good)

    assert code == 1
    # Non-fatal: the bad frame is reported and the one after it still decodes.
    assert [o["frame"] for o in objects] == ["avl", "avl"]
    (line,) = stderr.splitlines()
    assert line.startswith(f"crc_mismatch at byte {len(good) // 2 + 63}:")


def test_fatal_error_stops_decoding() -> None:
    code, objects, stderr = run(hex_of("wiki-codec8-tcp-ex1") + "0001")

    assert code == 1
    assert len(objects) == 1
    assert stderr.startswith("bad_preamble at byte 66:")


def test_truncated_capture_exits_1() -> None:
    code, objects, stderr = run(hex_of("traccar-c8-40"))

    assert code == 1
    assert objects == []
    assert stderr.startswith("truncated_frame at byte 45:")


def test_udp_error_and_udp_without_the_flag_are_explained() -> None:
    code, _, stderr = run("--udp", hex_of("wiki-codec16-udp-original-inconsistent"))
    assert code == 1
    assert stderr.startswith("bad_udp_datagram at byte 0:")

    code, _, stderr = run(hex_of("wiki-codec8-udp-ex1"))
    assert code == 1
    assert "try --udp" in stderr


def test_oversized_frame_needs_a_raised_bound() -> None:
    frame = hex_of("traccar-c12-50")
    code, _, stderr = run(frame)
    assert code == 1
    assert stderr.startswith("frame_too_large at byte 4:")

    code, _, stderr = run("--max-packet-size", "4096", frame)
    assert stderr.startswith("crc_mismatch")


def test_file_option_and_pretty_output(tmp_path: Path) -> None:
    path = tmp_path / "frame.hex"
    path.write_text(hex_of("wiki-codec8e-tcp-ex1"))
    result = runner.invoke(app, ["decode", "--pretty", "--file", str(path)])

    assert result.exit_code == 0
    assert result.stdout.startswith("{\n  ")
    assert json.loads(result.stdout)["codec"] == 0x8E


def test_help_shows_an_example() -> None:
    result = runner.invoke(app, ["decode", "--help"])

    assert result.exit_code == 0
    assert "trackgate decode 000000000000000f0c01" in result.stdout


def test_console_script_reads_standard_input() -> None:
    script = Path(sys.executable).with_name("trackgate")
    result = subprocess.run(
        [str(script), "decode"],
        input=hex_of("wiki-codec12-resp-getio"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["text"].startswith("DI1:1 DI2:0")


def test_tcpdump_hex_and_ascii_dump_is_accepted() -> None:
    from trackgate.cli.decode import parse_hex

    frame = bytes.fromhex(
        "000000000000003608010000016B40D8EA30010000000000000000000000000000000105"
        "021503010101425E0F01F10000601A014E0000000000000000010000C7CF"
    )
    lines = []
    for offset in range(0, len(frame), 16):
        chunk = frame[offset : offset + 16]
        groups = " ".join(chunk[i : i + 2].hex() for i in range(0, len(chunk), 2))
        ascii_ = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        lines.append(f"\t0x{offset:04x}:  {groups:<39}  {ascii_}")
    # tcpdump -X: offset, hex groups, then the ASCII column.
    assert parse_hex("\n".join(lines)) == frame
