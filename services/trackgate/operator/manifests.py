"""What a NodeNetworkProfile turns into: the agent DaemonSet manifest.

:func:`render_daemonset` is a pure function of the profile, the other
profiles (for node affinity, see ``placement.py``) and the operator's
:class:`AgentTemplate`. The handlers create, patch or delete whatever it
returns; tests validate its output against the Kubernetes schemas.

The agent's privileges, and why each is needed:

- ``hostNetwork``: the agent's own namespace is the node's, so the node's
  counters are read without joining anything and reports name the node.
- ``hostPID``: the processes of the node's pods are visible, which is how a
  pod UID leads to ``/proc/<pid>/ns/net`` (``podprocs.py``) and how PID 1
  names the node's namespace.
- ``privileged`` (default): container runtimes mount ``/proc/sys``
  read-only in any unprivileged container, and joining another pod's
  namespace with ``setns`` needs CAP_SYS_ADMIN. The alternative
  (``privileged: false``) adds only CAP_SYS_ADMIN (setns), CAP_NET_ADMIN
  (net sysctls in namespaces owned by other user namespaces) and
  CAP_SYS_PTRACE (open other users' ``/proc/<pid>/ns/net``) and mounts the
  host's ``/proc`` at ``/host/proc`` to write sysctls through it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from trackgate.operator import placement
from trackgate.operator.profile import Profile

GROUP = "trackgate.io"
VERSION = "v1alpha1"
KIND = "NodeNetworkProfile"
PLURAL = "nodenetworkprofiles"

PROFILE_LABEL = "trackgate.io/profile"
NAME_LABEL = "app.kubernetes.io/name"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
AGENT_NAME = "trackgate-agent"
MANAGER = "trackgate-operator"

# Longest profile name: "trackgate-agent-" (16) + name must stay a valid
# label value and DaemonSet name (63). The CRD refuses longer names.
MAX_PROFILE_NAME = 47

HOST_PROC = "/host/proc"


@dataclass(frozen=True)
class AgentTemplate:
    """The operator's settings that shape every agent DaemonSet."""

    namespace: str
    image: str
    service_account: str = "trackgate-agent"
    image_pull_policy: str = "IfNotPresent"
    privileged: bool = True
    priority_class_name: str = ""
    state_dir: str = "/var/lib/trackgate"
    interval_seconds: int = 30
    log_level: str = "INFO"


def daemonset_name(profile_name: str) -> str:
    """``trackgate-agent-<profile>``, shortened with a hash if ever too long."""
    name = f"{AGENT_NAME}-{profile_name}"
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(profile_name.encode()).hexdigest()[:8]
    return f"{name[:54]}-{digest}"


def selector_labels(profile_name: str) -> dict[str, str]:
    """Labels that find the agent pods of one profile."""
    return {NAME_LABEL: AGENT_NAME, PROFILE_LABEL: _label_value(profile_name)}


def _label_value(name: str) -> str:
    return name if len(name) <= 63 else daemonset_name(name)[len(AGENT_NAME) + 1 :]


def render_daemonset(
    profile: Profile,
    profiles: list[Profile],
    template: AgentTemplate,
    owner_uid: str,
) -> dict[str, Any] | None:
    """The agent DaemonSet for ``profile``, or ``None`` when it owns no node.

    Raises:
        ProfileError: see :func:`placement.node_affinity`.
    """
    terms = placement.node_affinity(profile, profiles)
    if terms is None:
        return None
    labels = selector_labels(profile.name) | {MANAGED_BY_LABEL: MANAGER}
    pod_spec: dict[str, Any] = {
        "serviceAccountName": template.service_account,
        "hostNetwork": True,
        "hostPID": True,
        "dnsPolicy": "ClusterFirstWithHostNet",
        "nodeSelector": {"kubernetes.io/os": "linux", **profile.node_selector},
        "tolerations": [{"operator": "Exists"}],
        # Time to restore originals when the node leaves the profile.
        "terminationGracePeriodSeconds": 30,
        "containers": [_container(profile, template)],
        "volumes": _volumes(template),
    }
    if terms:
        pod_spec["affinity"] = {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": terms
                }
            }
        }
    if template.priority_class_name:
        pod_spec["priorityClassName"] = template.priority_class_name

    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {
            "name": daemonset_name(profile.name),
            "namespace": template.namespace,
            "labels": labels,
            "annotations": {f"{GROUP}/profile-name": profile.name},
            "ownerReferences": [
                {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": KIND,
                    "name": profile.name,
                    "uid": owner_uid,
                    "controller": True,
                }
            ],
        },
        "spec": {
            "selector": {"matchLabels": selector_labels(profile.name)},
            "updateStrategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": "25%"},
            },
            "template": {"metadata": {"labels": dict(labels)}, "spec": pod_spec},
        },
    }


def _container(profile: Profile, template: AgentTemplate) -> dict[str, Any]:
    proc_root = "/proc" if template.privileged else HOST_PROC
    env = [
        _env("TRACKGATE_AGENT_PROFILE", profile.name),
        _field_env("TRACKGATE_AGENT_NODE_NAME", "spec.nodeName"),
        _field_env("TRACKGATE_AGENT_POD_NAME", "metadata.name"),
        _field_env("TRACKGATE_AGENT_POD_NAMESPACE", "metadata.namespace"),
        _env("TRACKGATE_AGENT_INTERVAL", str(template.interval_seconds)),
        _env("TRACKGATE_AGENT_STATE_DIR", template.state_dir),
        _env("TRACKGATE_AGENT_PROC_ROOT", proc_root),
        _env("TRACKGATE_LOG_LEVEL", template.log_level),
    ]
    mounts = [{"name": "state", "mountPath": template.state_dir}]
    security: dict[str, Any]
    if template.privileged:
        security = {"privileged": True}
    else:
        security = {
            "privileged": False,
            "capabilities": {
                "drop": ["ALL"],
                "add": ["SYS_ADMIN", "NET_ADMIN", "SYS_PTRACE"],
            },
        }
        mounts.append({"name": "host-proc", "mountPath": HOST_PROC})
    return {
        "name": "agent",
        "image": template.image,
        "imagePullPolicy": template.image_pull_policy,
        "command": ["trackgate", "agent"],
        "env": env,
        "securityContext": {**security, "readOnlyRootFilesystem": True},
        "resources": {
            "requests": {"cpu": "10m", "memory": "48Mi"},
            "limits": {"memory": "128Mi"},
        },
        "volumeMounts": mounts,
    }


def _volumes(template: AgentTemplate) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [
        {
            "name": "state",
            "hostPath": {"path": template.state_dir, "type": "DirectoryOrCreate"},
        }
    ]
    if not template.privileged:
        volumes.append(
            {"name": "host-proc", "hostPath": {"path": "/proc", "type": "Directory"}}
        )
    return volumes


def _env(name: str, value: str) -> dict[str, Any]:
    return {"name": name, "value": value}


def _field_env(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}
