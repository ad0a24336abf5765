"""Cursor paging over Redis sorted sets and streams, newest first.

The read side (``trackgate.core.devices`` and ``trackgate.core.commands``)
pages the device index and a device's command log by score, and a record
stream by entry id. A cursor is the position of the last item a page looked
at, so a page never repeats an item and never skips one that stayed in
place; members whose score changes while a client pages (a device that
reports again) move to the head and are seen on the next walk from the top.

This module only reads; it knows no key names and no field schemas.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from trackgate.core.redisconn import AsyncClient

#: Members fetched per ZRANGE round trip. Pages are at most a few hundred
#: items; 200 keeps one reply small while needing few trips for a page.
ZSET_BATCH = 200


class CursorError(ValueError):
    """A cursor that this module did not produce (or that was altered)."""


#: A cursor as text: ``<score>-<member>``. Members here are IMEIs and
#: command ids (digits and lower-case hex), so every string of this shape is
#: a position and none needs decoding beyond a split.
CURSOR_PATTERN = r"^[0-9]{1,16}-[0-9a-f]{1,64}$"
_CURSOR_RE = re.compile(CURSOR_PATTERN)


@dataclass(frozen=True, slots=True)
class ScoreCursor:
    """Position in a sorted set walked from the highest score down."""

    score: int
    member: str

    def encode(self) -> str:
        return f"{self.score}-{self.member}"

    @classmethod
    def decode(cls, text: str) -> ScoreCursor:
        if not _CURSOR_RE.match(text):
            raise CursorError("cursor is not one this API returned")
        score, member = text.split("-", 1)
        return cls(int(score), member)


def as_text(value: bytes | str | None) -> str | None:
    """A Redis reply value as text, whatever the client's decode setting."""
    if value is None or isinstance(value, str):
        return value
    return value.decode("utf-8", "replace")


async def newest_first(
    client: AsyncClient,
    key: str,
    *,
    after: ScoreCursor | None = None,
    min_score: int | None = None,
) -> AsyncGenerator[ScoreCursor, None]:
    """Yield members of ``key`` by descending score, resuming after ``after``.

    Runs to the end of the set; callers stop when they have enough (inside
    ``contextlib.aclosing``). Members with the
    cursor's score come in reverse lexical order (Redis's order for equal
    scores), so the ones at or above the cursor's member were seen already.
    """
    top = "+inf" if after is None else str(after.score)
    bottom = "-inf" if min_score is None else str(min_score)
    offset = 0
    while True:
        batch: list[Any] = await client.zrange(
            key, top, bottom, desc=True, byscore=True,
            offset=offset, num=ZSET_BATCH, withscores=True,
        )  # fmt: skip
        for raw_member, raw_score in batch:
            member = as_text(raw_member) or ""
            score = int(raw_score)
            if after is not None and score == after.score and member >= after.member:
                continue
            yield ScoreCursor(score, member)
        if len(batch) < ZSET_BATCH:
            return
        offset += len(batch)
