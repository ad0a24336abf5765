"""The configuration reference is generated from the settings classes."""

from __future__ import annotations

from pathlib import Path

from trackgate.cli.config import render

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_configuration_doc_matches_the_settings_classes() -> None:
    assert DOC.read_text() == render(), (
        "docs/configuration.md is stale: run `trackgate config > docs/configuration.md`"
    )


def test_every_ingest_setting_is_documented_with_a_meaning() -> None:
    rows = [
        line
        for line in render().split("## api")[0].splitlines()
        if line.startswith("| `")
    ]
    assert len(rows) > 30
    assert all(not line.endswith("|  |") for line in rows)
