"""What the chart renders, checked against the runtime contract of the
processes (ports, paths, environment) and the deployment rules (security,
traffic policy, drain, network policy, operator RBAC from docs/operator.md).
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.render import (
    CHART,
    EXAMPLES,
    REPO,
    Manifest,
    container,
    env_of,
    find,
    ingest_deployment,
    one,
    pod_spec,
    render,
    run_helm,
    template_args,
)

DEV = CHART / "values-dev.yaml"
PRODUCTION = CHART / "examples" / "production.yaml"
NODEPORT = CHART / "examples" / "nodeport.yaml"
BUNDLED = CHART / "examples" / "bundled-redis.yaml"
PROM = "monitoring.coreos.com/v1"
VALUE_FILES = [None, DEV, *EXAMPLES]

TRACKER_PORT = 5027
ADMIN_PORT = 9464
API_PORT = 8080
OPERATOR_HEALTH_PORT = 8080


def _id(path: Path | None) -> str:
    return "defaults" if path is None else path.name


def _files(values: Path | None) -> list[Path]:
    return [] if values is None else [values]


def _service(docs: list[Manifest], suffix: str) -> Manifest:
    found = [s for s in find(docs, "Service") if s["metadata"]["name"].endswith(suffix)]
    assert len(found) == 1, suffix
    return found[0]


def _port_number(c: dict[str, Any], port: int | str, protocol: str = "TCP") -> int:
    """A probe or Service port (name or number) resolved in a container."""
    for p in c["ports"]:
        if port in (p["name"], p["containerPort"]) and p["protocol"] == protocol:
            return int(p["containerPort"])
    raise AssertionError(f"port {port}/{protocol} not declared by {c['name']}")


def _pod_templates(docs: list[Manifest]) -> list[Manifest]:
    kinds = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"}
    return [d for d in docs if d["kind"] in kinds]


# -- the tracker Service -----------------------------------------------------


def test_tracker_service_keeps_client_addresses_on_tcp_and_udp(helm: str) -> None:
    docs = render()
    tracker = _service(docs, "-tracker")
    ingest = container(ingest_deployment(docs), "ingest")

    ports = {(p["protocol"], p["port"]) for p in tracker["spec"]["ports"]}
    targets = [
        _port_number(ingest, p["targetPort"], p["protocol"])
        for p in tracker["spec"]["ports"]
    ]

    assert tracker["spec"]["type"] == "LoadBalancer"
    assert tracker["spec"]["externalTrafficPolicy"] == "Local"
    assert ports == {("TCP", TRACKER_PORT), ("UDP", TRACKER_PORT)}
    assert targets == [TRACKER_PORT, TRACKER_PORT]


def test_nodeport_example_uses_fixed_node_ports_with_local_policy(helm: str) -> None:
    tracker = _service(render([NODEPORT]), "-tracker")

    node_ports = {p["protocol"]: p["nodePort"] for p in tracker["spec"]["ports"]}

    assert tracker["spec"]["type"] == "NodePort"
    assert tracker["spec"]["externalTrafficPolicy"] == "Local"
    assert node_ports == {"TCP": 30527, "UDP": 30527}


def test_udp_can_be_switched_off(helm: str) -> None:
    docs = render(sets=["ingest.udp=false"])

    tracker = _service(docs, "-tracker")
    ingest = container(ingest_deployment(docs), "ingest")

    assert [p["protocol"] for p in tracker["spec"]["ports"]] == ["TCP"]
    assert env_of(ingest)["TRACKGATE_UDP"] == "false"


def test_api_and_metrics_services_reach_the_pod_ports(helm: str) -> None:
    docs = render()
    pod = ingest_deployment(docs)
    api_svc = _service(docs, "-api")
    metrics = _service(docs, "-metrics")

    api_target = _port_number(
        container(pod, "api"), api_svc["spec"]["ports"][0]["targetPort"]
    )
    metric_targets = {
        p["name"]: _port_number(
            container(pod, "ingest" if p["name"] == "metrics" else "api"),
            p["targetPort"],
        )
        for p in metrics["spec"]["ports"]
    }

    assert api_svc["spec"]["type"] == "ClusterIP"
    assert api_svc["spec"]["ports"][0]["port"] == API_PORT
    assert api_target == API_PORT
    assert metrics["spec"]["clusterIP"] == "None"
    assert metric_targets == {"metrics": ADMIN_PORT, "api-metrics": API_PORT}


# -- probes and environment --------------------------------------------------


def _probe(c: dict[str, Any], kind: str) -> tuple[str, int]:
    get = c[kind]["httpGet"]
    return get["path"], _port_number(c, get["port"])


def test_probes_hit_the_real_health_endpoints(helm: str) -> None:
    docs = render()
    pod = ingest_deployment(docs)
    ingest, api = container(pod, "ingest"), container(pod, "api")
    operator = container(one(docs, "Deployment", "tg-trackgate-operator"), "operator")

    assert _probe(ingest, "startupProbe") == ("/healthz", ADMIN_PORT)
    assert _probe(ingest, "livenessProbe") == ("/healthz", ADMIN_PORT)
    assert _probe(ingest, "readinessProbe") == ("/readyz", ADMIN_PORT)
    assert _probe(api, "startupProbe") == ("/healthz", API_PORT)
    assert _probe(api, "livenessProbe") == ("/healthz", API_PORT)
    assert _probe(api, "readinessProbe") == ("/readyz", API_PORT)
    assert _probe(operator, "livenessProbe") == ("/healthz", OPERATOR_HEALTH_PORT)


def test_processes_get_the_documented_environment(helm: str) -> None:
    docs = render()
    pod = ingest_deployment(docs)
    ingest, api = env_of(container(pod, "ingest")), env_of(container(pod, "api"))
    redis_secret = one(docs, "Secret", "tg-trackgate-redis-url")

    assert container(pod, "ingest")["args"] == ["ingest"]
    assert container(pod, "api")["args"] == ["api"]
    for env in (ingest, api):
        assert env["TRACKGATE_REDIS_URL"] == {
            "secretKeyRef": {"name": "tg-trackgate-redis-url", "key": "redis-url"}
        }
        assert env["TRACKGATE_LOG_FORMAT"] == "json"
        assert env["TRACKGATE_POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
        assert {
            "TRACKGATE_KEY_PREFIX",
            "TRACKGATE_STREAM_SHARDS",
            "TRACKGATE_LOG_LEVEL",
        } <= (env.keys())
    assert "redis-url" in redis_secret["stringData"]
    assert ingest["TRACKGATE_PORT"] == str(TRACKER_PORT)
    assert ingest["TRACKGATE_ADMIN_PORT"] == str(ADMIN_PORT)
    assert ingest["TRACKGATE_BACKLOG"] == "0"
    assert {"TRACKGATE_HOST", "TRACKGATE_DRAIN_SECONDS", "TRACKGATE_WORKERS"} <= (
        ingest.keys()
    )
    assert api["TRACKGATE_API_PORT"] == str(API_PORT)
    assert "TRACKGATE_API_HOST" in api


def test_workers_follow_the_cpu_limit_unless_given(helm: str) -> None:
    derived = env_of(container(ingest_deployment(render()), "ingest"))
    given = env_of(
        container(ingest_deployment(render(sets=["ingest.workers=6"])), "ingest")
    )

    assert derived["TRACKGATE_WORKERS"] == {
        "resourceFieldRef": {
            "containerName": "ingest",
            "resource": "limits.cpu",
            "divisor": "1",
        }
    }
    assert given["TRACKGATE_WORKERS"] == "6"


@pytest.mark.parametrize(("drain", "pre_stop"), [(0, 0), (20, 5), (25.5, 5), (120, 0)])
def test_grace_period_exceeds_drain_time(
    helm: str, drain: float, pre_stop: int
) -> None:
    deployment = ingest_deployment(
        render(
            sets=[
                f"ingest.drainSeconds={drain}",
                f"ingest.preStopSleepSeconds={pre_stop}",
            ]
        )
    )
    spec = pod_spec(deployment)
    ingest = container(deployment, "ingest")

    grace = spec["terminationGracePeriodSeconds"]

    assert grace > drain + pre_stop
    assert float(env_of(ingest)["TRACKGATE_DRAIN_SECONDS"]) == drain
    if pre_stop:
        assert ingest["lifecycle"]["preStop"]["exec"]["command"] == [
            "sleep",
            str(pre_stop),
        ]
    else:
        assert "lifecycle" not in ingest


# -- API tokens and Redis URL secrets -----------------------------------------


def _tokens_file(docs: list[Manifest]) -> tuple[str, str]:
    pod = ingest_deployment(docs)
    api = container(pod, "api")
    mount = next(m for m in api["volumeMounts"] if m["name"] == "api-tokens")
    volume = next(v for v in pod_spec(pod)["volumes"] if v["name"] == "api-tokens")
    item = volume["secret"]["items"][0]
    path = f"{mount['mountPath']}/{item['path']}"
    assert env_of(api)["TRACKGATE_API_TOKENS_FILE"] == path
    return volume["secret"]["secretName"], item["key"]


def test_generated_api_tokens_hold_one_token_per_scope(helm: str) -> None:
    docs = render()
    name, key = _tokens_file(docs)

    text = base64.b64decode(one(docs, "Secret", name)["data"][key]).decode()
    lines = [line.split(" ") for line in text.splitlines()]

    assert [scope for scope, _ in lines] == ["read", "commands"]
    assert all(re.fullmatch(r"[A-Za-z0-9]{40}", token) for _, token in lines)


def test_given_api_tokens_are_written_as_scope_token_lines(helm: str) -> None:
    docs = render([DEV])
    name, key = _tokens_file(docs)

    text = one(docs, "Secret", name)["stringData"][key]

    assert text.splitlines() == [
        "read dev-read-token-0001",
        "commands dev-commands-token-0001",
    ]


def test_existing_secrets_are_referenced_not_rendered(helm: str) -> None:
    docs = render([PRODUCTION])
    env = env_of(container(ingest_deployment(docs), "ingest"))

    name, key = _tokens_file(docs)

    assert find(docs, "Secret") == []
    assert (name, key) == ("trackgate-api-tokens", "tokens")
    assert env["TRACKGATE_REDIS_URL"] == {
        "secretKeyRef": {"name": "trackgate-redis", "key": "url"}
    }


# -- security -----------------------------------------------------------------


@pytest.mark.parametrize("values", VALUE_FILES, ids=_id)
def test_every_pod_runs_non_root_without_privileges(
    helm: str, values: Path | None
) -> None:
    docs = render(_files(values), sets=["operator.enabled=true"])

    for workload in _pod_templates(docs):
        spec = pod_spec(workload)
        pod_ctx = spec.get("securityContext", {})
        where = workload["metadata"]["name"]
        assert pod_ctx.get("runAsNonRoot") is True, where
        assert pod_ctx.get("runAsUser", 1) != 0, where
        assert pod_ctx["seccompProfile"]["type"] == "RuntimeDefault", where
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(key), (where, key)
        assert not any("hostPath" in v for v in spec.get("volumes", [])), where
        for c in spec["containers"] + spec.get("initContainers", []):
            ctx = c["securityContext"]
            assert ctx.get("privileged") is not True, (where, c["name"])
            assert ctx["allowPrivilegeEscalation"] is False, (where, c["name"])
            assert ctx["readOnlyRootFilesystem"] is True, (where, c["name"])
            assert ctx["capabilities"]["drop"] == ["ALL"], (where, c["name"])
            assert not ctx["capabilities"].get("add"), (where, c["name"])
            assert ctx.get("runAsUser", 1) != 0, (where, c["name"])


def test_somaxconn_sysctl_is_set_only_when_opted_in(helm: str) -> None:
    default = pod_spec(ingest_deployment(render()))["securityContext"]
    opted = pod_spec(ingest_deployment(render(sets=["ingest.sysctls.somaxconn=8192"])))

    assert "sysctls" not in default
    assert opted["securityContext"]["sysctls"] == [
        {"name": "net.core.somaxconn", "value": "8192"}
    ]


def test_extra_pod_sysctls_are_passed_through(helm: str) -> None:
    spec = pod_spec(ingest_deployment(render([PRODUCTION])))

    assert spec["securityContext"]["sysctls"] == [
        {"name": "net.ipv4.tcp_keepalive_time", "value": "120"}
    ]


def test_only_tmp_is_writable_in_the_ingest_pod(helm: str) -> None:
    pod = ingest_deployment(render())
    volumes = {v["name"]: v for v in pod_spec(pod)["volumes"]}

    for c in pod_spec(pod)["containers"]:
        writable = [m["mountPath"] for m in c["volumeMounts"] if not m.get("readOnly")]
        assert writable == ["/tmp"], c["name"]
    assert "emptyDir" in volumes["tmp"]


# -- network policy -----------------------------------------------------------


def _ingest_policy(docs: list[Manifest]) -> Manifest:
    return one(docs, "NetworkPolicy", "tg-trackgate")


def _rule_for(policy: Manifest, port: str) -> dict[str, Any] | None:
    for rule in policy["spec"]["ingress"]:
        if any(p["port"] == port for p in rule["ports"]):
            return dict(rule)
    return None


def test_trackers_reach_the_tracker_port_from_anywhere(helm: str) -> None:
    policy = _ingest_policy(render())
    rule = _rule_for(policy, "tracker")

    assert rule is not None
    assert "from" not in rule
    assert {(p["port"], p["protocol"]) for p in rule["ports"]} == {
        ("tracker", "TCP"),
        ("tracker-udp", "UDP"),
    }


def test_tracker_sources_can_be_limited_to_cidrs(helm: str) -> None:
    policy = _ingest_policy(render(sets=["networkPolicy.trackerCIDRs={100.64.0.0/10}"]))

    rule = _rule_for(policy, "tracker")

    assert rule is not None
    assert rule["from"] == [{"ipBlock": {"cidr": "100.64.0.0/10"}}]


def test_api_port_is_open_only_to_chosen_namespaces(helm: str) -> None:
    default = _rule_for(_ingest_policy(render()), "api")
    chosen = _rule_for(_ingest_policy(render([PRODUCTION])), "api")
    closed = _rule_for(
        _ingest_policy(render(sets=["networkPolicy.api.allowSameNamespace=false"])),
        "api",
    )

    assert default is not None and default["from"] == [{"podSelector": {}}]
    assert chosen is not None
    assert chosen["from"][1]["namespaceSelector"]["matchExpressions"] == [
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["backend"]}
    ]
    assert closed is None


def test_metrics_are_open_to_the_monitoring_namespace_only(helm: str) -> None:
    policy = _ingest_policy(render([PRODUCTION]))

    rule = _rule_for(policy, "admin")

    assert rule is not None
    assert rule["from"][0]["namespaceSelector"]["matchExpressions"][0]["values"] == [
        "monitoring"
    ]
    assert _rule_for(_ingest_policy(render()), "admin") is None


def test_network_policy_selects_the_ingest_pods(helm: str) -> None:
    docs = render()

    selector = _ingest_policy(docs)["spec"]["podSelector"]["matchLabels"]
    labels = ingest_deployment(docs)["spec"]["template"]["metadata"]["labels"]

    assert selector.items() <= labels.items()


# -- availability and scaling -------------------------------------------------


def test_pods_spread_over_nodes_and_zones_with_a_disruption_budget(helm: str) -> None:
    docs = render()
    spec = pod_spec(ingest_deployment(docs))
    pdb = one(docs, "PodDisruptionBudget")

    keys = {
        c["topologyKey"]: c["whenUnsatisfiable"]
        for c in spec["topologySpreadConstraints"]
    }

    assert keys == {
        "kubernetes.io/hostname": "DoNotSchedule",
        "topology.kubernetes.io/zone": "ScheduleAnyway",
    }
    assert pdb["spec"]["maxUnavailable"] == 1


def test_hpa_scales_on_cpu_and_owns_the_replica_count(helm: str) -> None:
    docs = render()
    hpa = one(docs, "HorizontalPodAutoscaler")

    assert [m["type"] for m in hpa["spec"]["metrics"]] == ["Resource"]
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert (
        hpa["spec"]["scaleTargetRef"]["name"]
        == ingest_deployment(docs)["metadata"]["name"]
    )
    assert "replicas" not in ingest_deployment(docs)["spec"]


def test_hpa_also_scales_on_connections_per_pod_when_enabled(helm: str) -> None:
    hpa = one(render([PRODUCTION]), "HorizontalPodAutoscaler")

    pods = [m["pods"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]

    assert pods == [
        {
            "metric": {"name": "trackgate_connections_active"},
            "target": {"type": "AverageValue", "averageValue": "25000"},
        }
    ]


def test_without_hpa_the_deployment_sets_replicas(helm: str) -> None:
    docs = render([BUNDLED])

    assert find(docs, "HorizontalPodAutoscaler") == []
    assert ingest_deployment(docs)["spec"]["replicas"] == 2


# -- monitoring -----------------------------------------------------------------


def test_service_monitor_follows_the_prometheus_operator_capability(helm: str) -> None:
    absent = render()
    present = render(api_versions=[PROM])
    forced = render(sets=["metrics.serviceMonitor.force=true"])
    disabled = render(
        sets=["metrics.serviceMonitor.enabled=false"], api_versions=[PROM]
    )

    assert find(absent, "ServiceMonitor") == []
    assert len(find(present, "ServiceMonitor")) == 1
    assert len(find(forced, "ServiceMonitor")) == 1
    assert find(disabled, "ServiceMonitor") == []


def test_dashboard_configmap_is_labelled_for_the_grafana_sidecar(helm: str) -> None:
    docs = render([PRODUCTION])
    cm = next(
        c
        for c in find(docs, "ConfigMap")
        if c["metadata"]["name"].endswith("-dashboard")
    )

    dashboard = json.loads(cm["data"]["trackgate.json"])

    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == "monitoring"
    assert dashboard["uid"] == "trackgate-ingest"
    assert dashboard == json.loads(
        (CHART / "dashboards" / "trackgate.json").read_text()
    )


# -- operator -------------------------------------------------------------------

CONTRACT = REPO / "docs" / "operator.md"


def _contract_tables() -> dict[str, list[tuple[str, str, frozenset[str]]]]:
    """RBAC tables of the deployment contract: heading -> (group, resource, verbs)."""
    tables: dict[str, list[tuple[str, str, frozenset[str]]]] = {}
    section = ""
    table = ""
    for line in CONTRACT.read_text().splitlines():
        if line.startswith("### "):
            section = line[4:].strip()
        elif line.startswith(("ClusterRole", "Role in")):
            table = "ClusterRole" if line.startswith("ClusterRole") else "Role"
        elif line.startswith("| `") and section.startswith("RBAC"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            group = cells[0].strip("`").strip('"')
            verbs = frozenset(v.strip() for v in cells[2].split(","))
            tables.setdefault(f"{section}/{table}", []).append(
                (group, cells[1].strip("`"), verbs)
            )
    return tables


def _rules(role: Manifest) -> set[tuple[str, str, frozenset[str]]]:
    return {
        (group, resource, frozenset(rule["verbs"]))
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }


def test_operator_rbac_matches_the_deployment_contract(helm: str) -> None:
    docs = render()
    tables = _contract_tables()

    operator = "RBAC of the operator (ServiceAccount of the Deployment)"
    agent = "RBAC of the agent (`TRACKGATE_AGENT_SERVICE_ACCOUNT`)"
    for section in (operator, agent):
        for kind in ("ClusterRole", "Role"):
            assert f"{section}/{kind}" in tables, (
                f"docs/operator.md lost {section}/{kind}"
            )

    assert _rules(one(docs, "ClusterRole", "tg-trackgate-operator")) == set(
        tables[f"{operator}/ClusterRole"]
    )
    assert _rules(one(docs, "Role", "tg-trackgate-operator")) == set(
        tables[f"{operator}/Role"]
    )
    assert _rules(one(docs, "ClusterRole", "tg-trackgate-agent")) == set(
        tables[f"{agent}/ClusterRole"]
    )
    assert _rules(one(docs, "Role", "tg-trackgate-agent")) == set(
        tables[f"{agent}/Role"]
    )


def test_operator_runs_alone_with_the_contract_environment(helm: str) -> None:
    docs = render([PRODUCTION])
    deployment = one(docs, "Deployment", "tg-trackgate-operator")
    env = env_of(container(deployment, "operator"))
    agent_sa = one(docs, "ServiceAccount", "tg-trackgate-agent")
    ingest_image = container(ingest_deployment(docs), "ingest")["image"]

    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert deployment["metadata"]["namespace"] == "trackgate-system"
    assert container(deployment, "operator")["args"] == ["operator"]
    assert env["TRACKGATE_OPERATOR_NAMESPACE"] == {
        "fieldRef": {"fieldPath": "metadata.namespace"}
    }
    assert env["TRACKGATE_AGENT_IMAGE"] == ingest_image
    assert env["TRACKGATE_AGENT_SERVICE_ACCOUNT"] == agent_sa["metadata"]["name"]
    assert agent_sa["metadata"]["namespace"] == "trackgate-system"


def test_bindings_point_at_the_rendered_service_accounts(helm: str) -> None:
    docs = render([PRODUCTION])
    accounts = {
        (s["metadata"]["namespace"], s["metadata"]["name"])
        for s in find(docs, "ServiceAccount")
    }

    for binding in find(docs, "ClusterRoleBinding") + find(docs, "RoleBinding"):
        kind = "ClusterRole" if binding["kind"] == "ClusterRoleBinding" else "Role"
        assert len(find(docs, kind, binding["roleRef"]["name"])) == 1
        for subject in binding["subjects"]:
            assert (subject["namespace"], subject["name"]) in accounts


def test_disabled_operator_renders_no_operator_objects(helm: str) -> None:
    docs = render(
        [NODEPORT],
        sets=[
            "nodePools[0].name=p",
            "nodePools[0].nodeSelector.a=b",
            "nodePools[0].nodeSysctls.net\\.core\\.somaxconn=4096",
        ],
    )

    components = {
        d["metadata"]["labels"].get("app.kubernetes.io/component") for d in docs
    }

    assert not components & {"operator", "agent"}
    assert find(docs, "ClusterRole") == []


def test_node_pool_pod_sysctls_target_this_releases_ingest_pods(helm: str) -> None:
    docs = render([PRODUCTION])
    trackers = one(docs, "NodeNetworkProfile", "trackers")
    labels = ingest_deployment(docs)["spec"]["template"]["metadata"]["labels"]

    pod_sysctls = trackers["spec"]["podSysctls"]

    assert pod_sysctls["podSelector"]["matchLabels"].items() <= labels.items()
    assert pod_sysctls["namespaces"] == ["trackgate"]
    assert pod_sysctls["sysctls"]["net.core.somaxconn"] == "8192"
    assert trackers["spec"]["nodeSelector"] == {
        "matchLabels": {"trackgate.io/pool": "trackers"}
    }


# -- bundled Redis ----------------------------------------------------------------


def test_bundled_redis_keeps_an_append_only_file_on_a_volume(helm: str) -> None:
    docs = render([BUNDLED])
    sts = one(docs, "StatefulSet")
    redis = container(sts, "redis")
    url = one(docs, "Secret", "tg-trackgate-redis-url")["stringData"]["redis-url"]

    args = dict(zip(redis["args"][::2], redis["args"][1::2], strict=True))

    assert sts["spec"]["replicas"] == 1
    assert args["--appendonly"] == "yes"
    assert args["--appendfsync"] == "everysec"
    assert args["--maxmemory-policy"] == "noeviction"
    assert args["--dir"] == "/data"
    assert {m["mountPath"] for m in redis["volumeMounts"]} == {"/data"}
    claim = sts["spec"]["volumeClaimTemplates"][0]
    assert claim["spec"]["resources"]["requests"]["storage"] == "20Gi"
    assert url == "redis://tg-trackgate-redis:6379/0"
    assert _service(docs, "-redis")["spec"]["ports"][0]["port"] == 6379


def test_external_redis_is_the_default(helm: str) -> None:
    docs = render(sets=["redis.url=rediss://redis.example:6380/2"])

    assert find(docs, "StatefulSet") == []
    assert one(docs, "Secret", "tg-trackgate-redis-url")["stringData"] == {
        "redis-url": "rediss://redis.example:6380/2"
    }


# -- NOTES ------------------------------------------------------------------------


def test_notes_tell_how_to_reach_the_api_tracker_and_netcheck(helm: str) -> None:
    args = template_args()
    args[0] = "install"
    result = run_helm(*args, "--dry-run=client")

    notes = result.stdout.split("NOTES:", 1)[1]

    assert result.returncode == 0, result.stderr
    assert (
        "kubectl -n trackgate port-forward service/tg-trackgate-api 8080:8080" in notes
    )
    assert "get service tg-trackgate-tracker" in notes
    assert "exec deploy/tg-trackgate -c ingest -- trackgate netcheck" in notes


# -- uninstall ----------------------------------------------------------------------


def _selector_matches(selector: str, labels: dict[str, str]) -> bool:
    for term in selector.split(","):
        key, _, value = term.partition("=")
        if key not in labels or (value and labels[key] != value):
            return False
    return True


def test_uninstall_hook_releases_this_releases_profiles_first(helm: str) -> None:
    docs = render([PRODUCTION])
    job = one(docs, "Job", "tg-trackgate-cleanup")
    c = container(job, "cleanup")
    script, selector, wait = c["args"]

    profiles = find(docs, "NodeNetworkProfile")
    other_release = find(render([PRODUCTION], release="other"), "NodeNetworkProfile")
    role = one(docs, "ClusterRole", "tg-trackgate-cleanup")

    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-delete"
    assert c["command"] == ["python", "-c"]
    compile(script, "cleanup-hook", "exec")
    assert profiles and all(
        _selector_matches(selector, p["metadata"]["labels"]) for p in profiles
    )
    assert not any(
        _selector_matches(selector, p["metadata"]["labels"]) for p in other_release
    )
    assert int(wait) > 300
    assert job["spec"]["activeDeadlineSeconds"] > int(wait)
    assert _rules(role) == {
        ("trackgate.io", "nodenetworkprofiles", frozenset({"list", "delete"}))
    }


def test_no_uninstall_hook_without_node_pools(helm: str) -> None:
    assert find(render(), "Job") == []
    assert (
        find(render([PRODUCTION], sets=["operator.cleanupOnUninstall=false"]), "Job")
        == []
    )


def _contract_env() -> dict[str, bool]:
    """Operator variables of the deployment contract -> required."""
    env: dict[str, bool] = {}
    for line in CONTRACT.read_text().splitlines():
        match = re.match(r"^\| `(TRACKGATE_[A-Z_]+)` \| (yes|no) \|", line)
        if match:
            env[match.group(1)] = match.group(2) == "yes"
    return env


def test_operator_environment_uses_only_contract_variables(helm: str) -> None:
    contract = _contract_env()
    deployment = one(render([PRODUCTION]), "Deployment", "tg-trackgate-operator")

    rendered = set(env_of(container(deployment, "operator")))
    shared = {"TRACKGATE_LOG_FORMAT", "TRACKGATE_POD_NAME"}

    assert {name for name, required in contract.items() if required} <= rendered
    assert rendered - shared <= contract.keys()


def _dashboard_metrics() -> set[str]:
    text = (CHART / "dashboards" / "trackgate.json").read_text()
    names = set(re.findall(r"\btrackgate_[a-z_]+", text))
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}


def test_docs_list_exactly_the_metrics_the_dashboard_queries() -> None:
    docs = (REPO / "docs" / "deploy.md").read_text()
    table = docs.split("<!-- dashboard-metrics:start -->")[1]
    table = table.split("<!-- dashboard-metrics:end -->")[0]

    listed = set(re.findall(r"^\| `(trackgate_[a-z_]+)` \|", table, re.M))

    assert listed == _dashboard_metrics()
    assert len(listed) == 15


def test_dashboard_has_the_promised_panels() -> None:
    dashboard = json.loads((CHART / "dashboards" / "trackgate.json").read_text())
    panels = {p["title"]: p for p in dashboard["panels"] if p["type"] != "row"}

    lag = panels["Record lag (device time to server time)"]
    queue = panels["Accept queue: length vs limit"]

    assert lag["type"] == "heatmap"
    assert lag["targets"][0]["format"] == "heatmap"
    assert "trackgate_record_lag_seconds_bucket" in lag["targets"][0]["expr"]
    assert [t["expr"].split("(")[2].split("{")[0] for t in queue["targets"]] == [
        "trackgate_listen_queue_length",
        "trackgate_listen_queue_limit",
    ]
    assert any(
        "histogram_quantile(0.99" in t["expr"]
        for t in panels["ACK latency p50 / p99"]["targets"]
    )
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert {v["name"] for v in dashboard["templating"]["list"]} == {
        "datasource",
        "namespace",
        "pod",
    }
