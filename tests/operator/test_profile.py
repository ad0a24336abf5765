"""Profile validation: the allow-list, ranges, scopes and relations."""

from __future__ import annotations

from typing import Any

import pytest

from trackgate.operator import catalog
from trackgate.operator.profile import parse_profile


def _body(spec: dict[str, Any], name: str = "gateways") -> dict[str, Any]:
    spec = {"nodeSelector": {"matchLabels": {}}} | spec
    return {"metadata": {"name": name, "generation": 3}, "spec": spec}


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ({"nodeSysctls": {"kernel.panic": 1}}, "kernel.panic is not an allowed"),
        ({"nodeSysctls": {catalog.SOMAXCONN: 64}}, "outside 128..3240000"),
        ({"nodeSysctls": {catalog.SOMAXCONN: "lots"}}, "takes integers"),
        ({"nodeSysctls": {catalog.SOMAXCONN: True}}, "got a boolean"),
        ({"nodeSysctls": {catalog.SYNCOOKIES: 3}}, "outside 0..2"),
        ({"nodeSysctls": {catalog.PORT_RANGE: "40000 20000"}}, "must be below"),
        ({"nodeSysctls": {catalog.PORT_RANGE: "1024"}}, "two integers"),
        ({"nodeSysctls": {catalog.PORT_RANGE: "80 9000"}}, "outside 1024..65535"),
        (
            {"nodeSysctls": {catalog.SOMAXCONN: 8192, catalog.SYN_BACKLOG: 4096}},
            "tcp_max_syn_backlog=4096 is below net.core.somaxconn=8192",
        ),
        (
            {
                "nodeSysctls": {
                    catalog.KEEPALIVE_INTVL: 600,
                    catalog.KEEPALIVE_PROBES: 9,
                }
            },
            "5400 s, more than 3600 s",
        ),
        (
            {
                "nodeSysctls": {
                    catalog.KEEPALIVE_TIME: 7200,
                    catalog.CONNTRACK_ESTABLISHED: 3600,
                }
            },
            "comes after conntrack forgets",
        ),
        (
            {
                "podSysctls": {
                    "podSelector": {"matchLabels": {"app": "ingest"}},
                    "sysctls": {catalog.CONNTRACK_MAX: 262144},
                }
            },
            "nf_conntrack_max is global to the node",
        ),
        (
            {
                "podSysctls": {
                    "podSelector": {"matchLabels": {"app": "ingest"}},
                    "sysctls": {catalog.NETDEV_BACKLOG: 5000},
                }
            },
            "netdev_max_backlog is global to the node",
        ),
        (
            {"podSysctls": {"sysctls": {catalog.SOMAXCONN: 8192}}},
            "podSysctls.podSelector must be {matchLabels",
        ),
        (
            {"nodeSelector": {"pool": "gw"}, "nodeSysctls": {catalog.SOMAXCONN: 8192}},
            "nodeSelector must be {matchLabels",
        ),
        (
            {"nodeSelector": {"matchLabels": {"pool": "a b"}}, "nodeSysctls": {}},
            "is not a value",
        ),
        ({"priority": "high", "nodeSysctls": {catalog.SOMAXCONN: 8192}}, "priority"),
        ({}, "neither nodeSysctls nor podSysctls"),
    ],
)
def test_refused_values_become_problems(spec: dict[str, Any], problem: str) -> None:
    profile = parse_profile(_body(spec))

    assert not profile.valid
    assert any(problem in p for p in profile.problems), profile.problems


def test_valid_profile_is_normalized_to_kernel_text() -> None:
    profile = parse_profile(
        _body(
            {
                "nodeSelector": {"matchLabels": {"pool": "gateways"}},
                "priority": 10,
                "nodeSysctls": {
                    catalog.CONNTRACK_MAX: 524288,
                    catalog.PORT_RANGE: "1024\t65000",
                },
                "podSysctls": {
                    "podSelector": {"matchLabels": {"app": "ingest"}},
                    "namespaces": ["trackgate"],
                    "sysctls": {catalog.SOMAXCONN: "16384"},
                },
                "restoreOnDelete": False,
            }
        )
    )

    assert profile.problems == ()
    assert profile.generation == 3
    assert profile.node_sysctls == {
        catalog.CONNTRACK_MAX: "524288",
        catalog.PORT_RANGE: "1024 65000",
    }
    assert profile.pod_sysctls is not None
    assert profile.pod_sysctls.sysctls == {catalog.SOMAXCONN: "16384"}
    assert profile.restore_on_delete is False


@pytest.mark.parametrize(
    ("namespace", "labels", "selected"),
    [
        ("trackgate", {"app": "ingest", "tier": "edge"}, True),
        ("trackgate", {"app": "api"}, False),
        ("other", {"app": "ingest"}, False),
    ],
)
def test_pod_selector_and_namespaces_both_apply(
    namespace: str, labels: dict[str, str], selected: bool
) -> None:
    profile = parse_profile(
        _body(
            {
                "podSysctls": {
                    "podSelector": {"matchLabels": {"app": "ingest"}},
                    "namespaces": ["trackgate"],
                    "sysctls": {catalog.SOMAXCONN: 8192},
                }
            }
        )
    )
    assert profile.pod_sysctls is not None

    assert profile.pod_sysctls.selects(namespace, labels) is selected


def test_restore_on_delete_defaults_to_true_and_deletion_is_seen() -> None:
    body = _body({"nodeSysctls": {catalog.SOMAXCONN: 8192}})
    body["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"

    profile = parse_profile(body)

    assert profile.restore_on_delete is True
    assert profile.deleting is True


@pytest.mark.parametrize("name", sorted(catalog.KEYS))
def test_every_allowed_key_accepts_its_own_bounds(name: str) -> None:
    key = catalog.KEYS[name]
    if key.shape is catalog.Shape.PAIR:
        low, high = (
            f"{key.minimum} {key.minimum + 1}",
            f"{key.maximum - 1} {key.maximum}",
        )
    else:
        low, high = str(key.minimum), str(key.maximum)

    assert catalog.normalize(name, low) == low
    assert catalog.normalize(name, high) == high
