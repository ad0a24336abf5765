"""Fixtures for diagnostics tests: a private network namespace."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.diagnostics.netns import netns_unavailable, network_namespace


@pytest.fixture
def netns() -> Iterator[str]:
    """Name of a fresh network namespace with lo up (skips without root)."""
    reason = netns_unavailable()
    if reason is not None:
        pytest.skip(reason)
    with network_namespace() as name:
        yield name
