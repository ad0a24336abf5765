"""Redis key names: the one place that knows them.

The layout is documented in ``docs/redis-contract.md``; consumers outside
this project rely on it, so a change here is a contract change. Every key
carries a hash tag, so that the keys one command or script touches live in
one Redis Cluster slot.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Keys:
    """Builds key names for one prefix and shard count."""

    prefix: str = "trackgate"
    shards: int = 1

    def __post_init__(self) -> None:
        if self.shards < 1:
            raise ValueError(f"stream shard count must be >= 1, got {self.shards}")
        if not self.prefix or any(c in self.prefix for c in "{} "):
            raise ValueError(
                f"key prefix must be non-empty, no braces or spaces: {self.prefix!r}"
            )

    def shard_of(self, imei: str) -> int:
        """The stream shard that holds this device's records."""
        return zlib.crc32(imei.encode("ascii")) % self.shards

    def records(self, shard: int) -> str:
        return f"{self.prefix}:records:{{s{shard}}}"

    def all_records(self) -> list[str]:
        return [self.records(shard) for shard in range(self.shards)]

    def records_for(self, imei: str) -> str:
        return self.records(self.shard_of(imei))

    def deadletter(self, shard: int) -> str:
        """Entries of ``records(shard)`` a consumer gave up on; same slot."""
        return f"{self.prefix}:deadletter:{{s{shard}}}"

    def dedup(self, imei: str) -> str:
        return f"{self.prefix}:dedup:{{s{self.shard_of(imei)}}}:{imei}"

    def device(self, imei: str) -> str:
        return f"{self.prefix}:device:{{{imei}}}"

    def devices(self) -> str:
        return f"{self.prefix}:devices"

    def command_queue(self, imei: str) -> str:
        return f"{self.prefix}:cmdq:{{{imei}}}"

    def command(self, imei: str, command_id: str) -> str:
        return f"{self.prefix}:cmd:{{{imei}}}:{command_id}"

    def command_log(self, imei: str) -> str:
        return f"{self.prefix}:cmdlog:{{{imei}}}"

    def command_idempotency(self, imei: str, key: str) -> str:
        return f"{self.prefix}:cmdidem:{{{imei}}}:{key}"

    def command_rate(self, imei: str) -> str:
        return f"{self.prefix}:cmdrate:{{{imei}}}"

    def fence(self, token: str) -> str:
        """Written (for 10 s) when a script-free batch finds a device not as
        its session expected; the batch WATCHes it (see the store)."""
        return f"{self.prefix}:fence:{token}"

    def holder(self, owner: str) -> str:
        """IMEIs whose sessions one ingest worker holds (``pod/worker``)."""
        return f"{self.prefix}:holder:{{{owner}}}"

    def alive(self, owner: str) -> str:
        """Present while the ingest worker ``pod/worker`` sends heartbeats."""
        return f"{self.prefix}:alive:{{{owner}}}"

    def claimed(self, owner: str) -> str:
        """A gone worker's holder set, taken over by the sweeper releasing it."""
        return f"{self.prefix}:claimed:{{{owner}}}"

    def holders(self) -> str:
        """The ``pod/worker`` names of the ingest workers that hold sessions."""
        return f"{self.prefix}:holders"

    def events(self) -> str:
        return f"{self.prefix}:events"
