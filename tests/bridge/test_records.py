"""Stream entry to job record conversion: types, exactness, refusals."""

from __future__ import annotations

import json

import pytest

from tests.bridge.streams import IMEI, U64_MAX, entry_fields, record
from trackgate.bridge import EntryError, group_by_packet, record_from_entry
from trackgate.bridge.records import EXACT_INT_LIMIT, exact_int


def as_redis(fields: dict[str, str]) -> dict[bytes, bytes]:
    return {k.encode(): v.encode() for k, v in fields.items()}


def test_entry_becomes_the_typed_record_of_the_contract() -> None:
    rec = record(IMEI, 0, generation_type=7, codec=16)

    got = record_from_entry(as_redis(entry_fields(rec)))

    assert got["imei"] == IMEI
    assert got["timestamp"] == rec["timestamp"] and got["altitude"] == -6
    assert got["latitude"] == -54.6872 and got["longitude"] == 25.3011
    assert got["generation_type"] == 7 and got["transport"] == "tcp"
    assert got["io"] == {
        "21": 3, "66": 24079, "78": str(U64_MAX), "11": "893702100000000000",
        "256": "574f4c",
    }  # fmt: skip


def test_integers_beyond_fourteen_digits_become_strings() -> None:
    assert exact_int(EXACT_INT_LIMIT - 1) == 99999999999999
    assert exact_int(EXACT_INT_LIMIT) == "100000000000000"
    assert exact_int(-EXACT_INT_LIMIT) == "-100000000000000"


def test_far_future_timestamp_is_sent_as_a_string() -> None:
    fields = entry_fields(record(IMEI, 0, timestamp=2**63 - 1))

    assert record_from_entry(fields)["timestamp"] == str(2**63 - 1)


def test_unknown_fields_are_passed_on_as_strings() -> None:
    fields = entry_fields(record(IMEI, 0))
    fields["session_id"] = "abc"

    assert record_from_entry(fields)["session_id"] == "abc"


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("imei", "35630704244101X", "imei is not a string of digits"),
        ("timestamp", "12.5", "field timestamp is not an integer"),
        ("latitude", "nan", "field latitude is not finite"),
        ("io", "[1, 2]", "field io is not a JSON object"),
        ("io", "{not json", "field io is not JSON"),
        ("io", '{"21": 1.5}', "io 21 is neither an integer nor a hex string"),
        ("io", '{"256": "ZZ"}', "io 256 is not lower-case hex"),
        ("io", '{"x1": 1}', "io id is not a decimal number"),
    ],
)
def test_malformed_field_is_refused_with_its_name(
    field: str, value: str, reason: str
) -> None:
    fields = entry_fields(record(IMEI, 0))
    fields[field] = value

    with pytest.raises(EntryError, match=reason):
        record_from_entry(fields)


def test_missing_field_is_refused() -> None:
    fields = entry_fields(record(IMEI, 0))
    del fields["speed"]

    with pytest.raises(EntryError, match="field speed is missing"):
        record_from_entry(fields)


def test_non_utf8_value_is_refused() -> None:
    fields = as_redis(entry_fields(record(IMEI, 0)))
    fields[b"transport"] = b"\xff\xfe"

    with pytest.raises(EntryError, match="not UTF-8"):
        record_from_entry(fields)


def test_packets_are_grouped_by_device_and_read_time() -> None:
    a1, b1, a2, a3 = (
        record("1", 0, received_at=10), record("2", 0, received_at=10),
        record("1", 1, received_at=10), record("1", 2, received_at=11),
    )  # fmt: skip
    items = [(str(i), record_from_entry(entry_fields(r)))
             for i, r in enumerate([a1, b1, a2, a3])]  # fmt: skip

    groups = group_by_packet(items)

    assert [ids for ids, _ in groups] == [["0", "2"], ["1"], ["3"]]
    assert json.dumps(groups[0][1][1]["io"]["78"]) == json.dumps(str(U64_MAX - 1))
