"""The bridge reads what ingest's store writes: one contract, both ends."""

from __future__ import annotations

from trackgate.bridge import record_from_entry
from trackgate.core.store import record_fields
from trackgate.protocol import AvlRecord

IMEI = "356307042441013"


def test_entry_written_by_the_store_becomes_an_exact_record() -> None:
    avl = AvlRecord(
        timestamp=1560161086000, priority=2, longitude=-179.9999999,
        latitude=54.6872001, altitude=-6, angle=359, satellites=0, speed=0,
        event_id=385, io={"78": 2**64 - 1, "21": 5, "10358": "00ff10"},
        generation_type=7,
    )  # fmt: skip
    flat = record_fields(IMEI, 16, avl, "1764780000123", "udp")
    fields = dict(zip(flat[::2], flat[1::2], strict=True))

    record = record_from_entry(fields)

    assert record == {
        "imei": IMEI, "timestamp": 1560161086000, "received_at": 1764780000123,
        "priority": 2, "longitude": -179.9999999, "latitude": 54.6872001,
        "altitude": -6, "angle": 359, "satellites": 0, "speed": 0,
        "event_id": 385, "codec": 16, "generation_type": 7, "transport": "udp",
        "io": {"78": "18446744073709551615", "21": 5, "10358": "00ff10"},
    }  # fmt: skip
