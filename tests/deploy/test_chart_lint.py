"""helm lint on the chart with its default values, the dev values and every
example values file."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.deploy.render import CHART, EXAMPLES, run_helm

VALUE_FILES = [None, CHART / "values-dev.yaml", *EXAMPLES]


def _id(path: Path | None) -> str:
    return "defaults" if path is None else path.name


@pytest.mark.parametrize("values", VALUE_FILES, ids=_id)
def test_chart_lints_without_warnings(helm: str, values: Path | None) -> None:
    args = ["lint", str(CHART), "--strict"]
    if values is not None:
        args += ["--values", str(values)]

    result = run_helm(*args)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout
    assert "[WARNING]" not in result.stdout


def test_every_example_file_is_covered() -> None:
    names = {p.name for p in EXAMPLES}

    assert {
        "minimal.yaml",
        "production.yaml",
        "bundled-redis.yaml",
        "nodeport.yaml",
    } <= (names)
