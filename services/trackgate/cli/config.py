"""``trackgate config``: every setting of every process, as a table.

``docs/configuration.md`` is this command's output; a test keeps the two
equal, so the reference cannot drift from the code.
"""

from __future__ import annotations

import importlib
from typing import Annotated, Any

import typer

#: (process, settings class path, environment prefix)
PROCESSES = (
    ("ingest", "trackgate.ingest.settings:IngestSettings"),
    ("api", "trackgate.api.settings:ApiSettings"),
    ("bridge", "trackgate.bridge.settings:BridgeSettings"),
    ("operator", "trackgate.operator.settings:OperatorSettings"),
    ("agent", "trackgate.operator.settings:AgentSettings"),
)

HEADER = """# Configuration reference

Every trackgate process reads its settings from `TRACKGATE_*` environment
variables (a command-line flag, where one exists, wins). Invalid or missing
values stop the process at start, before it opens a port or a connection:
one line on stderr per problem, naming the variable (and its flag), and exit
status 2. A Redis URL is `redis://` or `rediss://` (TLS), and
`redis+cluster://` or `?cluster=1` for a Redis Cluster, or
`unix:///path/to/redis.sock` for a local socket.
This page is the output of `trackgate config --markdown`.
"""


def register(app: typer.Typer) -> None:
    app.command(name="config")(config)


def _load(path: str) -> Any:
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def _default(field: Any) -> str:
    if field.is_required():
        return "(required)"
    if field.default_factory is not None:
        return "(computed)"
    value = field.default
    if isinstance(value, bool):
        return str(value).lower()
    return "" if value is None else str(value)


def render() -> str:
    lines = [HEADER]
    for process, path in PROCESSES:
        cls = _load(path)
        prefix = cls.model_config.get("env_prefix", "")
        lines += [
            f"## {process}",
            "",
            "| variable | default | meaning |",
            "|---|---|---|",
        ]
        for name, field in cls.model_fields.items():
            meaning = (field.description or "").replace("|", "\\|").replace("\n", " ")
            default = _default(field).replace("|", "\\|")
            lines.append(f"| `{prefix}{name.upper()}` | `{default}` | {meaning} |")
        lines.append("")
    return "\n".join(lines)


def config(
    markdown: Annotated[bool, typer.Option(help="Print the Markdown reference")] = True,
) -> None:
    """Print every setting of every trackgate process with its default."""
    typer.echo(render(), nl=False)
