"""Every manifest the operator ships or renders is valid Kubernetes.

Validated offline against the Kubernetes OpenAPI schemas that
``kubernetes_validate`` bundles (strict: unknown fields are errors). The
example profiles are validated against the CRD's own schema and by the
operator's checks. CEL rules are not evaluated here (no API server).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from trackgate.operator import catalog
from trackgate.operator.crd import render_crd
from trackgate.operator.manifests import AgentTemplate, render_daemonset
from trackgate.operator.profile import Profile, parse_profile

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "charts/trackgate/crds/nodenetworkprofiles.trackgate.io.yaml"
EXAMPLES = sorted((ROOT / "docs/examples/nodenetworkprofiles").glob("*.yaml"))
K8S = kubernetes_validate.latest_version()


def _validate(manifest: dict[str, Any]) -> None:
    kubernetes_validate.validate(manifest, K8S, strict=True)


def _examples() -> list[Profile]:
    return [parse_profile(yaml.safe_load(p.read_text())) for p in EXAMPLES]


def test_crd_file_is_the_generated_crd() -> None:
    assert yaml.safe_load(CRD_FILE.read_text()) == render_crd()


def test_crd_is_a_valid_apiextensions_v1_object() -> None:
    _validate(render_crd())


def test_crd_declares_every_status_field_the_operator_writes() -> None:
    from datetime import UTC, datetime, timedelta

    from trackgate.operator.placement import Placement
    from trackgate.operator.status import build_status

    schema = render_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    status_props = schema["properties"]["status"]["properties"]
    status = build_status(
        _examples()[0],
        Placement(),
        [],
        [],
        daemonset=None,
        previous_conditions=[],
        now=datetime.now(UTC),
        stale_after=timedelta(seconds=90),
    )

    assert set(status) <= set(status_props)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_profiles_pass_the_crd_schema_and_the_operator(path: Path) -> None:
    body = yaml.safe_load(path.read_text())
    schema = render_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]

    jsonschema.validate(body, schema)
    assert parse_profile(body).problems == ()


@pytest.mark.parametrize("privileged", [True, False], ids=["privileged", "caps"])
def test_rendered_daemonsets_are_valid_for_every_example(privileged: bool) -> None:
    profiles = _examples()
    template = AgentTemplate(
        namespace="trackgate",
        image="registry.example/trackgate:1.0",
        privileged=privileged,
        priority_class_name="system-node-critical",
    )
    rendered = [
        render_daemonset(p, profiles, template, owner_uid="0b6f3c9e-1")
        for p in profiles
    ]

    assert all(d is not None for d in rendered)
    for manifest in rendered:
        assert manifest is not None
        _validate(manifest)


def test_outranked_profile_gets_anti_affinity_for_the_higher_pools() -> None:
    profiles = _examples()
    general = next(p for p in profiles if p.name == "general")

    manifest = render_daemonset(
        general, profiles, AgentTemplate("trackgate", "img"), "uid"
    )

    assert manifest is not None
    terms = manifest["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"]
    assert terms == [
        {
            "matchExpressions": [
                {
                    "key": "trackgate.io/pool",
                    "operator": "NotIn",
                    "values": ["gateways"],
                },
                {
                    "key": "trackgate.io/pool",
                    "operator": "NotIn",
                    "values": ["hostnet-gateways"],
                },
            ]
        }
    ]


def test_agent_pod_has_host_namespaces_state_volume_and_downward_env() -> None:
    profile = Profile(
        name="gateways",
        node_selector={"trackgate.io/pool": "gateways"},
        node_sysctls={catalog.SOMAXCONN: "8192"},
    )
    template = AgentTemplate("trackgate", "img", privileged=False)

    manifest = render_daemonset(profile, [profile], template, "uid")

    assert manifest is not None
    pod = manifest["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    assert (pod["hostNetwork"], pod["hostPID"]) == (True, True)
    assert pod["nodeSelector"] == {
        "kubernetes.io/os": "linux",
        "trackgate.io/pool": "gateways",
    }
    assert container["securityContext"]["capabilities"]["add"] == [
        "SYS_ADMIN",
        "NET_ADMIN",
        "SYS_PTRACE",
    ]
    assert env["TRACKGATE_AGENT_PROC_ROOT"] == "/host/proc"
    assert env["TRACKGATE_AGENT_NODE_NAME"] == {
        "fieldRef": {"fieldPath": "spec.nodeName"}
    }
    assert {v["name"]: v["hostPath"]["path"] for v in pod["volumes"]} == {
        "state": "/var/lib/trackgate",
        "host-proc": "/proc",
    }
    assert manifest["metadata"]["ownerReferences"][0]["kind"] == "NodeNetworkProfile"


def test_profile_owning_no_node_renders_no_daemonset() -> None:
    low = Profile(name="low", priority=0, node_selector={"pool": "gw"})
    high = Profile(name="high", priority=5)

    assert render_daemonset(low, [low, high], AgentTemplate("ns", "img"), "u") is None
