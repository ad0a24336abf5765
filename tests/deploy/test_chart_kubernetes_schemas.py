"""Every object the chart renders, validated offline.

Core objects go through ``kubernetes_validate`` (strict: unknown fields are
errors) for the oldest Kubernetes the chart supports and the newest the
library knows. NodeNetworkProfile objects are checked against the CRD's
openAPIV3Schema and the operator's own profile parser (CEL rules are not
evaluated without an API server). ServiceMonitor has no bundled schema.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.deploy.render import (
    CHART,
    EXAMPLES,
    Manifest,
    find,
    render,
    run_helm,
    template_args,
)
from trackgate.operator.profile import parse_profile

MIN_K8S = "1.29.0"  # Chart.yaml kubeVersion
K8S_VERSIONS = [MIN_K8S, kubernetes_validate.latest_version()]
PROMETHEUS_OPERATOR = "monitoring.coreos.com/v1"
CRD_FILE = CHART / "crds" / "nodenetworkprofiles.trackgate.io.yaml"
VALUE_FILES = [None, CHART / "values-dev.yaml", *EXAMPLES]

# Kinds that are not core Kubernetes APIs; checked below by other means.
CUSTOM_KINDS = {"NodeNetworkProfile", "ServiceMonitor"}


def _id(path: Path | None) -> str:
    return "defaults" if path is None else path.name


def _rendered(values: Path | None) -> list[Manifest]:
    files = [] if values is None else [values]
    return render(files, api_versions=[PROMETHEUS_OPERATOR])


def _crd_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD_FILE.read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def _short(err: kubernetes_validate.ValidationError) -> str:
    where = "/".join(str(p) for p in err.absolute_path)
    return f"{err.message} at {where}"


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("values", VALUE_FILES, ids=_id)
def test_rendered_objects_match_kubernetes_schemas(
    helm: str, values: Path | None, version: str
) -> None:
    docs = _rendered(values)
    failures = []

    for doc in docs:
        if doc["kind"] in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            failures.append(f"{doc['kind']}/{doc['metadata']['name']}: {_short(err)}")

    assert len(docs) > 10
    assert failures == []


@pytest.mark.parametrize("values", VALUE_FILES, ids=_id)
def test_node_pool_profiles_pass_the_crd_schema_and_the_operator(
    helm: str, values: Path | None
) -> None:
    schema = _crd_schema()

    for doc in find(_rendered(values), "NodeNetworkProfile"):
        jsonschema.validate(doc, schema)
        assert parse_profile(doc).problems == (), doc["metadata"]["name"]


def test_production_example_renders_one_profile_per_node_pool(helm: str) -> None:
    pools = yaml.safe_load((CHART / "examples" / "production.yaml").read_text())
    docs = _rendered(CHART / "examples" / "production.yaml")

    names = sorted(d["metadata"]["name"] for d in find(docs, "NodeNetworkProfile"))

    assert names == sorted(p["name"] for p in pools["nodePools"])
    assert all(
        d["apiVersion"] == "trackgate.io/v1alpha1"
        for d in docs
        if d["kind"] == "NodeNetworkProfile"
    )


def test_a_sysctl_outside_the_operator_catalog_is_refused(helm: str) -> None:
    docs = render(
        sets=[
            "nodePools[0].name=bad",
            "nodePools[0].nodeSelector.pool=bad",
            "nodePools[0].nodeSysctls.kernel\\.panic=1",
        ]
    )

    profile = find(docs, "NodeNetworkProfile")[0]

    assert parse_profile(profile).problems != ()


def test_service_monitor_names_the_metrics_service_ports(helm: str) -> None:
    docs = _rendered(None)
    monitor = find(docs, "ServiceMonitor")[0]
    metrics = next(
        s for s in find(docs, "Service") if s["metadata"]["name"].endswith("-metrics")
    )

    ports = {p["name"] for p in metrics["spec"]["ports"]}
    selector = monitor["spec"]["selector"]["matchLabels"]

    assert monitor["apiVersion"] == PROMETHEUS_OPERATOR
    assert {e["port"] for e in monitor["spec"]["endpoints"]} == ports
    assert all(e["path"] == "/metrics" for e in monitor["spec"]["endpoints"])
    assert selector.items() <= metrics["metadata"]["labels"].items()


def test_crd_is_shipped_in_crds_folder_for_helm_to_install_first(helm: str) -> None:
    result = run_helm(*template_args(), "--include-crds")
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]

    crds = [d for d in docs if d["kind"] == "CustomResourceDefinition"]

    assert [c["metadata"]["name"] for c in crds] == ["nodenetworkprofiles.trackgate.io"]
    assert crds[0]["spec"]["scope"] == "Cluster"
