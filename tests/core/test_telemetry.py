"""The bulk histogram behind the per-record lag metric."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trackgate.core.telemetry import BulkHistogram

BOUNDS = (0.005, 0.05, 0.5, 5.0, 60.0, 3600.0)


@given(
    st.integers(0, 2**41),
    st.lists(st.integers(-(10**7), 10**8), max_size=30),
)
def test_ages_count_as_their_lags_one_by_one(now: int, offsets: list[int]) -> None:
    # Records close together, far apart, and from the future (clamped to 0).
    bulk = BulkHistogram("test_ages_bulk_seconds", "ages", BOUNDS)
    single = BulkHistogram("test_ages_single_seconds", "ages", BOUNDS)
    try:
        stamps = [now - offset for offset in offsets]
        bulk.observe_ages(now, stamps)
        single.observe_many(max(now - t, 0) / 1000 for t in stamps)
        assert bulk.counts == single.counts
        assert sum(bulk.counts) == len(stamps)
        assert bulk.total == pytest.approx(single.total, rel=1e-9, abs=1e-6)
    finally:
        bulk.unregister()
        single.unregister()
