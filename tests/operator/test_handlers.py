"""The kopf wiring, checked without an API server.

Only what can be known offline: which resources the handlers watch (our
profiles, never Nodes), their ids (kopf keys its annotations by them), and
the kinds of handlers present. Handler behaviour needs a cluster.
"""

from __future__ import annotations

import re

import pytest

from trackgate.operator.control import Control
from trackgate.operator.handlers import build_registry
from trackgate.operator.settings import OperatorSettings


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> object:
    monkeypatch.setenv("TRACKGATE_OPERATOR_NAMESPACE", "trackgate")
    monkeypatch.setenv("TRACKGATE_AGENT_IMAGE", "trackgate:test")
    control = Control(OperatorSettings(), api=None)  # type: ignore[arg-type]
    return build_registry(control)


def test_handlers_watch_only_profiles_never_nodes(registry: object) -> None:
    handlers = [
        *registry._changing.get_all_handlers(),  # type: ignore[attr-defined]
        *registry._spawning.get_all_handlers(),  # type: ignore[attr-defined]
    ]

    assert {(h.selector.group, h.selector.any_name) for h in handlers} == {
        ("trackgate.io", "nodenetworkprofiles")
    }
    assert sorted({h.id for h in handlers}) == [
        "reconcile",
        "reconcile/spec",
        "release",
        "report",
    ]
    # kopf writes progress annotations named after handler ids.
    assert all(re.fullmatch(r"[a-z/]+", h.id) for h in handlers)
