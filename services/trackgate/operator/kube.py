"""The few Kubernetes API calls the operator and the agent make.

A thin wrapper over the official ``kubernetes`` client: every call returns
plain data (dicts, label maps) and translates the client's exceptions into
:class:`~trackgate.operator.errors.ClusterError` once, here. No decisions
are made in this module; it is the part that needs an API server and is
therefore not exercised by the test suite (see docs/operator.md).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from trackgate.operator.errors import ClusterError
from trackgate.operator.manifests import (
    GROUP,
    MANAGED_BY_LABEL,
    MANAGER,
    PLURAL,
    VERSION,
    selector_labels,
)
from trackgate.operator.report import REPORT_ANNOTATION

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class PodInfo:
    """The parts of a Pod the agent needs to decide about it."""

    uid: str
    namespace: str
    name: str
    labels: dict[str, str]
    host_network: bool


class ClusterAPI:
    """Calls against the cluster the process runs in (or the kubeconfig's)."""

    def __init__(self) -> None:
        import kubernetes

        config: Any = kubernetes.config
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        client = kubernetes.client.ApiClient()
        self._core = kubernetes.client.CoreV1Api(client)
        self._apps = kubernetes.client.AppsV1Api(client)
        self._custom = kubernetes.client.CustomObjectsApi(client)
        self._exception = kubernetes.client.ApiException

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except self._exception as exc:
            raise ClusterError(f"{what}: {exc.status} {exc.reason}") from exc
        except OSError as exc:
            raise ClusterError(f"{what}: {exc}") from exc

    # -- profiles ----------------------------------------------------------

    def list_profiles(self) -> list[dict[str, Any]]:
        result: Any = self._call(
            "list profiles",
            lambda: self._custom.list_cluster_custom_object(GROUP, VERSION, PLURAL),
        )
        items: list[dict[str, Any]] = result.get("items", [])
        return items

    def get_profile(self, name: str) -> dict[str, Any] | None:
        try:
            body: Any = self._custom.get_cluster_custom_object(
                GROUP, VERSION, PLURAL, name
            )
        except self._exception as exc:
            if exc.status == 404:
                return None
            raise ClusterError(
                f"get profile {name}: {exc.status} {exc.reason}"
            ) from exc
        return dict(body)

    def _plain(self, obj: object) -> Any:
        """A client model as the plain JSON data the API server sent."""
        return self._core.api_client.sanitize_for_serialization(obj)

    # -- nodes and pods ----------------------------------------------------

    def node_labels(self) -> dict[str, dict[str, str]]:
        """Every node's labels by node name."""
        nodes = self._plain(self._call("list nodes", lambda: self._core.list_node()))
        return {
            n["metadata"]["name"]: dict(n["metadata"].get("labels") or {})
            for n in nodes.get("items", [])
        }

    def labels_of_node(self, name: str) -> dict[str, str]:
        node = self._plain(
            self._call(f"get node {name}", lambda: self._core.read_node(name))
        )
        return dict(node["metadata"].get("labels") or {})

    def pods_on_node(self, node: str) -> list[PodInfo]:
        pods = self._plain(
            self._call(
                f"list pods on {node}",
                lambda: self._core.list_pod_for_all_namespaces(
                    field_selector=f"spec.nodeName={node}"
                ),
            )
        )
        return [
            PodInfo(
                uid=p["metadata"]["uid"],
                namespace=p["metadata"]["namespace"],
                name=p["metadata"]["name"],
                labels=dict(p["metadata"].get("labels") or {}),
                host_network=bool(p.get("spec", {}).get("hostNetwork")),
            )
            for p in pods.get("items", [])
        ]

    def agent_pods(
        self, namespace: str, profile: str
    ) -> list[tuple[str, str, str | None]]:
        """(pod name, node name, report annotation) of a profile's agents."""
        selector = ",".join(f"{k}={v}" for k, v in selector_labels(profile).items())
        pods = self._plain(
            self._call(
                f"list agents of {profile}",
                lambda: self._core.list_namespaced_pod(
                    namespace, label_selector=selector
                ),
            )
        )
        return [
            (
                str(p["metadata"]["name"]),
                str(p.get("spec", {}).get("nodeName") or ""),
                (p["metadata"].get("annotations") or {}).get(REPORT_ANNOTATION),
            )
            for p in pods.get("items", [])
        ]

    def annotate_pod(self, namespace: str, name: str, key: str, value: str) -> None:
        body = {"metadata": {"annotations": {key: value}}}
        self._call(
            f"annotate pod {namespace}/{name}",
            lambda: self._core.patch_namespaced_pod(name, namespace, body),
        )

    # -- DaemonSets --------------------------------------------------------

    def managed_daemonsets(self, namespace: str) -> dict[str, dict[str, Any]]:
        found = self._plain(
            self._call(
                "list agent DaemonSets",
                lambda: self._apps.list_namespaced_daemon_set(
                    namespace, label_selector=f"{MANAGED_BY_LABEL}={MANAGER}"
                ),
            )
        )
        return {d["metadata"]["name"]: d for d in found.get("items", [])}

    def apply_daemonset(self, manifest: dict[str, Any], exists: bool) -> None:
        name, namespace = (
            manifest["metadata"]["name"],
            manifest["metadata"]["namespace"],
        )
        body: Any = manifest
        if exists:
            self._call(
                f"patch DaemonSet {name}",
                lambda: self._apps.patch_namespaced_daemon_set(name, namespace, body),
            )
        else:
            self._call(
                f"create DaemonSet {name}",
                lambda: self._apps.create_namespaced_daemon_set(namespace, body),
            )

    def delete_daemonset(self, namespace: str, name: str) -> None:
        self._call(
            f"delete DaemonSet {name}",
            lambda: self._apps.delete_namespaced_daemon_set(name, namespace),
        )

    def patch_profile_status(self, name: str, status: dict[str, Any]) -> None:
        body: Any = {"status": status}
        self._call(
            f"patch status of {name}",
            lambda: self._custom.patch_cluster_custom_object_status(
                GROUP, VERSION, PLURAL, name, body
            ),
        )


def same_spec(existing: dict[str, Any], desired: dict[str, Any]) -> bool:
    """Whether an existing DaemonSet already carries the desired spec.

    Compares only what we render (the API server adds defaults), by
    checking that every field we set has the same value there.
    """
    return _contains(existing.get("spec", {}), desired["spec"]) and _contains(
        existing.get("metadata", {}).get("labels", {}), desired["metadata"]["labels"]
    )


def _contains(actual: Any, wanted: Any) -> bool:
    if isinstance(wanted, dict):
        return isinstance(actual, dict) and all(
            _contains(actual.get(k), v) for k, v in wanted.items()
        )
    if isinstance(wanted, list):
        return (
            isinstance(actual, list)
            and len(actual) == len(wanted)
            and all(_contains(a, w) for a, w in zip(actual, wanted, strict=True))
        )
    return json.dumps(actual) == json.dumps(wanted)
