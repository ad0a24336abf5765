"""Write records stream entries exactly as docs/redis-contract.md describes.

The bridge tests do not depend on the ingest service: they XADD one entry
per record with the documented fields (every value a string, ``io`` as JSON
whose 8-byte values may exceed 2^53) to the shard of the record's device.
"""

from __future__ import annotations

import json
from typing import Any

from trackgate.core.keys import Keys
from trackgate.core.redisconn import SyncClient

#: An FMB device IMEI: 15 digits, more than cjson's 14 significant digits.
IMEI = "356307042441013"
#: The largest unsigned 8-byte IO value, far beyond 2^53.
U64_MAX = 2**64 - 1


def record(imei: str = IMEI, n: int = 0, **overrides: Any) -> dict[str, Any]:
    """A record as the data contract names its fields, varied by ``n``."""
    base: dict[str, Any] = {
        "imei": imei,
        "timestamp": 1560161086000 + n * 1000,
        "received_at": 1764780000123,
        "priority": 1,
        # Teltonika sends 1e-7 degrees: ingest writes at most 7 decimals.
        "longitude": round(25.3011 + n / 10**7, 7),
        "latitude": round(-54.6872 - n / 10**7, 7),
        "altitude": -6,
        "angle": 214,
        "satellites": 9,
        "speed": 42 + n,
        "event_id": 239,
        "io": {
            "21": 3, "66": 24079 + n, "78": U64_MAX - n,
            "11": 893702100000000000 + n, "256": "574f4c",
        },
        "codec": 142,
        "transport": "tcp",
    }  # fmt: skip
    base.update(overrides)
    return base


def entry_fields(rec: dict[str, Any]) -> dict[str, str]:
    """The stream entry of one record: every value a string."""
    return {
        name: json.dumps(value, separators=(",", ":")) if name == "io" else str(value)
        for name, value in rec.items()
    }


def write_records(
    client: SyncClient, keys: Keys, records: list[dict[str, Any]]
) -> list[str]:
    """XADD each record to its device's shard; returns the entry ids."""
    ids = []
    for rec in records:
        entry_id = client.xadd(keys.records_for(rec["imei"]), entry_fields(rec))
        ids.append(entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id))
    return ids
