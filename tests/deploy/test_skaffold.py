"""skaffold.yaml: valid against the v4beta13 schema structure, and every
name in it points at something real (Dockerfiles, chart, values, image
variables, Services and ports the chart renders for the dev release)."""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import Any

import jsonpatch
import jsonschema
import pytest
import yaml

from tests.deploy.render import REPO, find, render

SKAFFOLD = REPO / "skaffold.yaml"
SUBSET = Path(__file__).parent / "schemas" / "skaffold-v4beta13.subset.json"


def _config() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(SKAFFOLD.read_text())
    return data


def _schema() -> dict[str, Any]:
    path = Path(os.environ.get("SKAFFOLD_SCHEMA") or SUBSET)
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _errors(config: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(_schema())
    best = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if best is None:
        return []
    where = "/".join(str(p) for p in best.absolute_path)
    return [f"{best.message} at /{where}"]


def _with_profile(name: str) -> dict[str, Any]:
    """The config as skaffold sees it with one profile activated."""
    config = _config()
    profile = next(p for p in config["profiles"] if p["name"] == name)
    active = copy.deepcopy({k: v for k, v in config.items() if k != "profiles"})
    for section in ("build", "deploy", "portForward", "manifests"):
        if section in profile:
            active[section] = copy.deepcopy(profile[section])
    patches = profile.get("patches", [])
    result: dict[str, Any] = jsonpatch.apply_patch(active, patches)
    return result


def _release(config: dict[str, Any]) -> dict[str, Any]:
    releases = config["deploy"]["helm"]["releases"]
    assert len(releases) == 1
    release: dict[str, Any] = releases[0]
    return release


def test_skaffold_yaml_matches_the_declared_schema_version() -> None:
    config = _config()

    assert config["apiVersion"] == "skaffold/v4beta13"
    assert config["kind"] == "Config"
    assert _errors(config) == []


def test_schema_subset_refuses_a_misspelt_key() -> None:
    config = _config()
    config["build"]["artifacts"][0]["docker"]["dockerfle"] = "Dockerfile"

    assert _errors(config) != []


@pytest.mark.parametrize("profile", ["local", "operator"])
def test_each_profile_applies_and_stays_valid(profile: str) -> None:
    config = _with_profile(profile)

    assert _errors(config) == []


def test_local_profile_builds_locally_without_pushing() -> None:
    build = _with_profile("local")["build"]

    assert build["local"]["push"] is False
    assert [a["image"] for a in build["artifacts"]] == [
        a["image"] for a in _config()["build"]["artifacts"]
    ]


def test_both_images_are_built_from_their_dockerfiles() -> None:
    artifacts = {a["image"]: a for a in _config()["build"]["artifacts"]}

    assert set(artifacts) == {"trackgate-ingest", "trackgate-api"}
    for image, artifact in artifacts.items():
        dockerfile = artifact["docker"]["dockerfile"]
        assert (REPO / artifact.get("context", ".") / dockerfile).is_file()
        assert dockerfile == "Dockerfile." + image.removeprefix("trackgate-")


def test_helm_release_uses_the_chart_and_dev_values() -> None:
    release = _release(_config())

    assert (REPO / release["chartPath"] / "Chart.yaml").is_file()
    assert release["valuesFiles"] == ["charts/trackgate/values-dev.yaml"]
    assert all((REPO / v).is_file() for v in release["valuesFiles"])


def test_image_templates_name_the_built_artifacts() -> None:
    config = _config()
    images = {a["image"].replace("-", "_") for a in config["build"]["artifacts"]}
    templates = _release(config)["setValueTemplates"]

    used = {
        m.group(2)
        for value in templates.values()
        for m in re.finditer(r"\{\{\.IMAGE_(REPO|TAG)_(\w+)\}\}", value)
    }

    assert used == images
    assert set(templates) == {
        "image.ingest.repository",
        "image.ingest.tag",
        "image.api.repository",
        "image.api.tag",
    }


def _dev_render(config: dict[str, Any]) -> list[dict[str, Any]]:
    release = _release(config)
    sets = [
        f"{key}={str(value).lower() if isinstance(value, bool) else value}"
        for key, value in release.get("setValues", {}).items()
    ]
    # What the templates become after a build (the tag is an input digest).
    for key in release["setValueTemplates"]:
        component = key.split(".")[1]
        built = f"example-{component}" if key.endswith("repository") else "dev1"
        sets.append(f"{key}={built}")
    return render(
        [REPO / v for v in release["valuesFiles"]],
        sets=sets,
        release=release["name"],
        namespace=release["namespace"],
    )


@pytest.mark.parametrize("profile", [None, "operator"])
def test_port_forwards_reach_services_of_the_dev_release(
    helm: str, profile: str | None
) -> None:
    config = _config() if profile is None else _with_profile(profile)
    docs = _dev_render(config)
    services = {s["metadata"]["name"]: s for s in find(docs, "Service")}

    forwards = config["portForward"]

    assert {f["localPort"] for f in forwards} == {8080, 5027}
    for forward in forwards:
        assert forward["resourceType"] == "service"
        service = services[forward["resourceName"]]
        assert service["metadata"]["namespace"] == forward["namespace"]
        tcp_ports = {
            p["port"] for p in service["spec"]["ports"] if p["protocol"] == "TCP"
        }
        assert forward["port"] in tcp_ports


def test_dev_release_uses_the_built_images(helm: str) -> None:
    docs = _dev_render(_config())

    images = {
        c["image"]
        for d in find(docs, "Deployment")
        for c in d["spec"]["template"]["spec"]["containers"]
    }

    assert images == {"example-ingest:dev1", "example-api:dev1"}


def test_operator_profile_turns_the_operator_on(helm: str) -> None:
    plain = _dev_render(_config())
    with_operator = _dev_render(_with_profile("operator"))

    def names(docs: list[dict[str, Any]]) -> set[str]:
        return {d["metadata"]["name"] for d in find(docs, "Deployment")}

    assert names(with_operator) - names(plain) == {"trackgate-operator"}
