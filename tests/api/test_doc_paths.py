"""Every API path the docs tell people to curl is a route of the app.

The curl lines of README.md, docs/api.md and docs/deploy.md name paths on
``$TG`` or ``http://127.0.0.1:8080``; each must match a route the API
serves (path parameters may be shell variables or example values); the
app's OpenAPI schema lists every route, health and metrics included.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from trackgate.api.main import create_app
from trackgate.api.settings import ApiSettings

REPO = Path(__file__).resolve().parents[2]
DOCS = ["README.md", "docs/api.md", "docs/deploy.md"]
URL = re.compile(r"(?:\$TG|http://127\.0\.0\.1:8080)(/[^\s\"'?]*)")


def documented_paths() -> list[tuple[str, str]]:
    found = []
    for name in DOCS:
        for line in (REPO / name).read_text().splitlines():
            if "curl" in line:
                found += [(name, path) for path in URL.findall(line)]
    return found


def route_patterns(make_settings: Callable[..., ApiSettings]) -> list[re.Pattern[str]]:
    """The served paths as patterns, from the app's own OpenAPI schema."""
    schema = create_app(make_settings()).openapi()
    # A parameter is a shell variable, an example id or "...".
    return [
        re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", path) + "$")
        for path in schema["paths"]
    ]


def test_the_docs_curl_some_paths() -> None:
    paths = {path for _, path in documented_paths()}
    assert {"/v1/diagnostics", "/v1/devices", "/readyz"} <= paths


@pytest.mark.parametrize(("doc", "path"), documented_paths())
def test_documented_path_is_served(
    make_settings: Callable[..., ApiSettings], doc: str, path: str
) -> None:
    patterns = route_patterns(make_settings)
    assert any(p.match(path) for p in patterns), f"{doc}: no route for {path}"
