"""values.schema.json makes bad values fail before anything is installed."""

from __future__ import annotations

import json

import jsonschema
import pytest
import yaml

from tests.deploy.render import CHART, run_helm, template_args

# (--set arguments, the values path helm must name in its error)
BAD_VALUES = [
    (["ingest.service.type=ClusterIP"], "/ingest/service/type"),
    (["ingest.drainSeconds=-1"], "/ingest/drainSeconds"),
    (
        ["ingest.terminationGraceMarginSeconds=0"],
        "/ingest/terminationGraceMarginSeconds",
    ),
    (["ingest.port=70000"], "/ingest/port"),
    (["ingest.sysctls.somaxconn=-5"], "/ingest/sysctls/somaxconn"),
    (["ingest.workers=many"], "/ingest/workers"),
    (["ingest.hpa.minReplicas=0"], "/ingest/hpa/minReplicas"),
    (["ingest.replicaCount=3"], "/ingest"),
    (["config.logFormat=xml"], "/config/logFormat"),
    (["config.streamShards=0"], "/config/streamShards"),
    (["redis.url=http://redis:6379"], "/redis/url"),
    (["redis.bundled.appendfsync=sometimes"], "/redis/bundled/appendfsync"),
    (["redis.bundled.maxmemoryPolicy=allkeys-lru"], "/redis/bundled/maxmemoryPolicy"),
    (
        [
            "apiTokens.tokens[0].scope=admin",
            "apiTokens.tokens[0].token=abcdefghijklmnopq",
        ],
        "/apiTokens/tokens/0/scope",
    ),
    (
        ["apiTokens.tokens[0].scope=read", "apiTokens.tokens[0].token=short"],
        "/apiTokens/tokens/0/token",
    ),
    (["image.ingest.pullPolicy=Sometimes"], "/image/ingest/pullPolicy"),
    (["image.api.digest=sha256:xyz"], "/image/api/digest"),
    (["podSecurityContext.runAsNonRoot=false"], "/podSecurityContext/runAsNonRoot"),
    (
        ["containerSecurityContext.privileged=true"],
        "/containerSecurityContext/privileged",
    ),
    (
        ["networkPolicy.api.namespaces[0]=Not_A_Namespace"],
        "/networkPolicy/api/namespaces/0",
    ),
    (["nodePools[0].name=pool", "nodePools[0].nodeSelector.a=b"], "/nodePools/0"),
    (
        [
            "nodePools[0].name=Bad_Name",
            "nodePools[0].nodeSelector.a=b",
            "nodePools[0].nodeSysctls.net\\.core\\.somaxconn=4096",
        ],
        "/nodePools/0/name",
    ),
    (["operator.namespace=Bad Namespace"], "/operator/namespace"),
]


@pytest.mark.parametrize(("sets", "path"), BAD_VALUES, ids=[p for _, p in BAD_VALUES])
def test_bad_value_fails_helm_template_naming_the_value(
    helm: str, sets: list[str], path: str
) -> None:
    result = run_helm(*template_args(sets=sets))

    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert f"at '{path}" in result.stderr


def test_hpa_bounds_in_the_wrong_order_fail_with_a_clear_message(helm: str) -> None:
    result = run_helm(
        *template_args(sets=["ingest.hpa.minReplicas=5", "ingest.hpa.maxReplicas=3"])
    )

    assert result.returncode != 0
    assert "minReplicas (5) is above ingest.hpa.maxReplicas (3)" in result.stderr


def test_schema_is_draft_07_and_accepts_the_default_values() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())

    jsonschema.Draft7Validator.check_schema(schema)
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert list(jsonschema.Draft7Validator(schema).iter_errors(defaults)) == []


def test_schema_refuses_unknown_top_level_keys() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())

    errors = list(jsonschema.Draft7Validator(schema).iter_errors({"ingres": {}}))

    assert any("'ingres' was unexpected" in e.message for e in errors)
