"""Settings of a command, or one line per problem and exit status 2.

Every command that reads ``TRACKGATE_*`` variables builds its settings
here, so an invalid or missing setting is reported the same way
everywhere: one line on stderr per problem, naming the environment
variable (and the option that overrides it, where there is one), and
exit status 2. Nothing is started before the settings are valid.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NoReturn, TypeVar

import typer
from pydantic import ValidationError
from pydantic_settings import BaseSettings

EXIT_INVALID_SETTINGS = 2

S = TypeVar("S", bound=BaseSettings)


def load(
    cls: type[S],
    command: str,
    given: Mapping[str, Any] | None = None,
    options: Mapping[str, str] | None = None,
) -> S:
    """``cls`` from the environment and the ``given`` flags (None = not given).

    ``options`` maps a field to the option that sets it (``--redis-url``),
    named in the message next to the variable. Exits with status 2 when
    the settings do not validate.
    """
    flags = {name: value for name, value in (given or {}).items() if value is not None}
    try:
        return cls(**flags)
    except ValidationError as exc:
        refuse(command, problems(exc, cls, options or {}))


def refuse(command: str, lines: list[str]) -> NoReturn:
    """Print ``lines`` as invalid settings of ``command`` and exit with 2."""
    for line in lines:
        typer.echo(f"trackgate {command}: invalid settings: {line}", err=True)
    raise typer.Exit(EXIT_INVALID_SETTINGS)


def problems(
    exc: ValidationError, cls: type[BaseSettings], options: Mapping[str, str]
) -> list[str]:
    """One line per error of ``exc``, named by environment variable."""
    prefix = str(cls.model_config.get("env_prefix") or "")
    lines = []
    for error in exc.errors(include_url=False):
        message = str(error["msg"]).removeprefix("Value error, ")
        if not error["loc"]:
            lines.append(message)
            continue
        field = str(error["loc"][0])
        name = f"{prefix}{field.upper()}"
        if field in options:
            name += f" ({options[field]})"
        if error["type"] == "missing":
            lines.append(f"{name} is not set")
        elif field.endswith("url"):
            # A URL can carry a password: describe it, never repeat it.
            lines.append(f"{name}: {message}")
        else:
            lines.append(f"{name}: {message}, got {error['input']!r}")
    return lines
