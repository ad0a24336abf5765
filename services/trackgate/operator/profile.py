"""Read a NodeNetworkProfile object into a checked, normalized value.

``parse_profile`` takes the object as the API server returns it (a plain
mapping) and never raises for bad content: every refused value becomes a
line in ``Profile.problems``, which the operator puts into the ``Invalid``
condition and the agent treats as "change nothing". The CRD schema already
refuses most of these at admission; this is the second line, and the only
one for objects stored before a schema change.

Pure functions only; the caller fetches and patches objects.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from trackgate.operator import catalog

# Label syntax as Kubernetes checks it: optional DNS-subdomain prefix and a
# name of at most 63 characters; values at most 63 characters.
_LABEL_NAME = r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)"
_LABEL_PREFIX = r"([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?"
LABEL_KEY_RE = re.compile(f"^{_LABEL_PREFIX}{_LABEL_NAME}$")
LABEL_VALUE_RE = re.compile(f"^{_LABEL_NAME}?$")
NAMESPACE_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


@dataclass(frozen=True)
class PodSysctls:
    """Sysctls for the network namespaces of selected pods on the node."""

    pod_selector: Mapping[str, str]
    namespaces: tuple[str, ...]  # empty: every namespace
    sysctls: Mapping[str, str]

    def selects(self, namespace: str, labels: Mapping[str, str]) -> bool:
        """Whether a pod in ``namespace`` with ``labels`` is selected."""
        if self.namespaces and namespace not in self.namespaces:
            return False
        return matches(self.pod_selector, labels)


@dataclass(frozen=True)
class Profile:
    """A NodeNetworkProfile with its values normalized by ``catalog``.

    Refused values are left out of the maps and described in ``problems``.
    """

    name: str
    generation: int = 0
    node_selector: Mapping[str, str] = field(default_factory=dict)
    priority: int = 0
    node_sysctls: Mapping[str, str] = field(default_factory=dict)
    pod_sysctls: PodSysctls | None = None
    restore_on_delete: bool = True
    deleting: bool = False
    problems: tuple[str, ...] = ()

    @property
    def valid(self) -> bool:
        return not self.problems

    def selects_node(self, labels: Mapping[str, str]) -> bool:
        return matches(self.node_selector, labels)


def matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """matchLabels semantics: every pair present; an empty selector matches all."""
    return all(labels.get(k) == v for k, v in selector.items())


def parse_profile(body: Mapping[str, Any]) -> Profile:
    """Build a :class:`Profile` from an API object; never raises on content."""
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    problems: list[str] = []

    node_selector = _selector(spec.get("nodeSelector"), "nodeSelector", problems)
    priority = spec.get("priority", 0)
    if not isinstance(priority, int) or isinstance(priority, bool):
        problems.append(f"priority must be an integer, got {priority!r}")
        priority = 0
    restore = spec.get("restoreOnDelete", True)
    if not isinstance(restore, bool):
        problems.append(f"restoreOnDelete must be true or false, got {restore!r}")
        restore = True

    node_sysctls = _sysctls(spec.get("nodeSysctls"), "nodeSysctls", problems)
    pod_sysctls = _pod_sysctls(spec.get("podSysctls"), problems)
    if not node_sysctls and pod_sysctls is None and not problems:
        problems.append("the profile sets neither nodeSysctls nor podSysctls")

    return Profile(
        name=str(meta.get("name", "")),
        generation=int(meta.get("generation") or 0),
        node_selector=node_selector,
        priority=priority,
        node_sysctls=node_sysctls,
        pod_sysctls=pod_sysctls,
        restore_on_delete=restore,
        deleting=bool(meta.get("deletionTimestamp")),
        problems=tuple(problems),
    )


def _selector(raw: object, where: str, problems: list[str]) -> dict[str, str]:
    if not isinstance(raw, Mapping) or "matchLabels" not in raw:
        # A bare label map would be pruned by the API server to "select
        # everything"; refuse it rather than guess.
        problems.append(f"{where} must be {{matchLabels: {{...}}}}")
        return {}
    labels = raw.get("matchLabels") or {}
    if not isinstance(labels, Mapping):
        problems.append(f"{where}.matchLabels must be a map of strings")
        return {}
    selector: dict[str, str] = {}
    for key, value in labels.items():
        if not isinstance(key, str) or not LABEL_KEY_RE.match(key):
            problems.append(f"{where}.matchLabels: {key!r} is not a label key")
        elif not isinstance(value, str) or not LABEL_VALUE_RE.match(value):
            problems.append(f"{where}.matchLabels[{key}]: {value!r} is not a value")
        else:
            selector[key] = value
    return selector


def _sysctls(
    raw: object, where: str, problems: list[str], *, pod: bool = False
) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        problems.append(f"{where} must be a map of sysctl name to value")
        return {}
    values: dict[str, str] = {}
    for name, value in raw.items():
        key = catalog.KEYS.get(name)
        if key is None:
            problems.append(f"{where}: {name} is not an allowed sysctl")
            continue
        if pod and key.scope is catalog.Scope.NODE:
            problems.append(
                f"{where}: {name} is global to the node (writable only from its "
                "initial network namespace); set it in nodeSysctls"
            )
            continue
        try:
            values[name] = catalog.normalize(name, value)
        except catalog.ValueRefused as exc:
            problems.append(f"{where}: {exc}")
    problems.extend(f"{where}: {p}" for p in catalog.relation_problems(values))
    return values


def _pod_sysctls(raw: object, problems: list[str]) -> PodSysctls | None:
    if raw is None:
        return None
    where = "podSysctls"
    if not isinstance(raw, Mapping):
        problems.append(f"{where} must be an object")
        return None
    selector = _selector(raw.get("podSelector"), f"{where}.podSelector", problems)

    namespaces = raw.get("namespaces") or []
    if not isinstance(namespaces, list) or not all(
        isinstance(n, str) and NAMESPACE_RE.match(n) for n in namespaces
    ):
        problems.append(f"{where}.namespaces must be a list of namespace names")
        namespaces = []

    sysctls = _sysctls(raw.get("sysctls"), f"{where}.sysctls", problems, pod=True)
    return PodSysctls(selector, tuple(namespaces), sysctls)
