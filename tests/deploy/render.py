"""Run the real helm binary on charts/trackgate and parse what it renders.

The deploy tests call these helpers; helm comes from ``.ci/install-tools.sh``
(``./.tools/bin/helm``). Nothing here talks to a cluster: ``helm template``
renders offline, with ``--api-versions`` standing in for what a cluster
would announce.
"""

from __future__ import annotations

import functools
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "trackgate"
TOOLS = REPO / ".tools" / "bin"
HELM = TOOLS / "helm"
HADOLINT = TOOLS / "hadolint"
EXAMPLES = sorted((CHART / "examples").glob("*.yaml"))
RELEASE = "tg"
NAMESPACE = "trackgate"

Manifest = dict[str, Any]


@dataclass(frozen=True)
class HelmResult:
    returncode: int
    stdout: str
    stderr: str


def helm_available() -> bool:
    return HELM.is_file()


def run_helm(*args: str) -> HelmResult:
    proc = subprocess.run(
        [str(HELM), *args], capture_output=True, text=True, timeout=120, check=False
    )
    return HelmResult(proc.returncode, proc.stdout, proc.stderr)


def template_args(
    values: Iterable[Path] = (),
    sets: Iterable[str] = (),
    api_versions: Iterable[str] = (),
    release: str = RELEASE,
    namespace: str = NAMESPACE,
) -> list[str]:
    args = ["template", release, str(CHART), "--namespace", namespace]
    for path in values:
        args += ["--values", str(path)]
    for item in sets:
        args += ["--set", item]
    for version in api_versions:
        args += ["--api-versions", version]
    return args


@functools.lru_cache(maxsize=64)
def _render(
    values: tuple[Path, ...],
    sets: tuple[str, ...],
    api_versions: tuple[str, ...],
    release: str,
    namespace: str,
) -> tuple[Manifest, ...]:
    result = run_helm(*template_args(values, sets, api_versions, release, namespace))
    if result.returncode != 0:
        raise AssertionError(f"helm template failed:\n{result.stderr}")
    docs = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    return tuple(docs)


def render(
    values: Iterable[Path] = (),
    sets: Iterable[str] = (),
    api_versions: Iterable[str] = (),
    release: str = RELEASE,
    namespace: str = NAMESPACE,
) -> list[Manifest]:
    """Every object ``helm template`` renders, as dicts (cached per arguments)."""
    docs = _render(tuple(values), tuple(sets), tuple(api_versions), release, namespace)
    return [dict(doc) for doc in docs]


def find(docs: list[Manifest], kind: str, name: str | None = None) -> list[Manifest]:
    return [
        d
        for d in docs
        if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]


def one(docs: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def pod_spec(obj: Manifest) -> dict[str, Any]:
    spec: dict[str, Any] = obj["spec"]["template"]["spec"]
    return spec


def container(obj: Manifest, name: str) -> dict[str, Any]:
    for c in pod_spec(obj)["containers"]:
        if c["name"] == name:
            return dict(c)
    raise AssertionError(f"no container {name} in {obj['metadata']['name']}")


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    """Container env as name -> value (or the valueFrom dict)."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def ingest_deployment(docs: list[Manifest]) -> Manifest:
    for d in find(docs, "Deployment"):
        labels = d["metadata"]["labels"]
        if labels.get("app.kubernetes.io/component") == "ingest":
            return d
    raise AssertionError("no ingest Deployment rendered")
