"""``trackgate operator`` and ``trackgate agent``: the node network tuning pair.

``trackgate operator`` runs the kopf operator (settings from TRACKGATE_*,
see docs/operator.md); ``trackgate operator crd`` prints the CRD and
``trackgate operator render PROFILE.yaml`` prints the DaemonSet a profile
turns into, without a cluster. ``trackgate agent`` runs on each node inside
the DaemonSet the operator renders. Kubernetes libraries are imported only
when a command runs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

operator_app = typer.Typer(
    help="Node network tuning: the NodeNetworkProfile operator.",
    invoke_without_command=True,
    no_args_is_help=False,
)


def _logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )


@operator_app.callback()
def operator(
    ctx: typer.Context,
    liveness_port: Annotated[
        int, typer.Option(help="Port of the /healthz endpoint.")
    ] = 8080,
) -> None:
    """Run the operator (standalone kopf, one replica, cluster-wide)."""
    if ctx.invoked_subcommand is not None:
        return
    from trackgate.cli import _settings
    from trackgate.operator.control import Control
    from trackgate.operator.handlers import run
    from trackgate.operator.kube import ClusterAPI
    from trackgate.operator.settings import OperatorSettings

    settings = _settings.load(OperatorSettings, "operator")
    _logging(settings.log_level)
    run(Control(settings, ClusterAPI()), liveness_port)


@operator_app.command("crd")
def crd() -> None:
    """Print the NodeNetworkProfile CRD (the chart's crds/ file)."""
    from trackgate.operator.crd import render_yaml

    typer.echo(render_yaml(), nl=False)


@operator_app.command("render")
def render(
    profile_file: Annotated[Path, typer.Argument(help="NodeNetworkProfile YAML.")],
    image: Annotated[str, typer.Option(help="Agent image.")] = "trackgate:dev",
    namespace: Annotated[str, typer.Option(help="Operator namespace.")] = "trackgate",
    privileged: Annotated[
        bool, typer.Option(help="Privileged agent, or capabilities only.")
    ] = True,
) -> None:
    """Validate a profile and print its agent DaemonSet, as if it were alone."""
    import yaml

    from trackgate.operator.manifests import AgentTemplate, render_daemonset
    from trackgate.operator.profile import parse_profile

    body = yaml.safe_load(profile_file.read_text())
    profile = parse_profile(body)
    for problem in profile.problems:
        typer.echo(f"invalid: {problem}", err=True)
    template = AgentTemplate(namespace=namespace, image=image, privileged=privileged)
    manifest = render_daemonset(profile, [profile], template, owner_uid="<uid>")
    typer.echo(yaml.safe_dump(manifest, sort_keys=False), nl=False)
    if profile.problems:
        raise typer.Exit(1)


def agent() -> None:
    """Run the node agent for one profile (inside the agent DaemonSet)."""
    from trackgate.cli import _settings
    from trackgate.operator.agent import Agent
    from trackgate.operator.kube import ClusterAPI
    from trackgate.operator.settings import AgentSettings

    settings = _settings.load(AgentSettings, "agent")
    _logging(settings.log_level)
    Agent(settings, ClusterAPI()).run()


def register(app: typer.Typer) -> None:
    app.add_typer(operator_app, name="operator")
    app.command("agent")(agent)
