"""The ``trackgate`` command line.

Every module in this package that defines ``register(app)`` adds its commands
to the one Typer application; a command's module imports the service it runs
only when the command is invoked, so ``trackgate decode`` starts fast and does
not need Redis or Kubernetes libraries to be importable.
"""

from __future__ import annotations

import importlib
import pkgutil

import typer

app = typer.Typer(
    name="trackgate",
    help="Gateway for Teltonika GPS trackers: ingest, API, diagnostics, operator.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register_commands() -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(app)


_register_commands()


def main() -> None:
    """Console-script entry point."""
    app()
