"""``trackgate netcheck``: why are devices not getting through?

Runs on a host or inside a pod with nothing but Python (no ss, nstat or
conntrack binaries): kernel limits, the listeners on the gateway port with
their accept queues, counter deltas over a few seconds, conntrack fill, and
plain-language findings. The numbers come from ``trackgate.diagnostics``;
this module only prints them.

Exit status: 0 nothing at warning level or worse, 1 at least one warning or
critical finding (``status`` in the JSON tells which), 2 bad usage, 3 the
kernel counters could not be read. A reader of stdout that stops early (as
``| head`` does) leaves the status as it was.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from rich.console import Console

EXIT_FINDINGS = 1
EXIT_UNREADABLE = 3

# Conntrack statistics always printed; the others only when they moved.
_CONNTRACK_SHOWN = frozenset(
    {"insert_failed", "drop", "early_drop", "invalid", "clash_resolve", "clashres"}
)
_SEVERITY_STYLE = {"critical": "bold red", "warning": "yellow", "info": "cyan"}


def register(app: typer.Typer) -> None:
    app.command(name="netcheck")(netcheck)


def netcheck(
    port: Annotated[
        int,
        typer.Option(
            min=1, max=65535, help="Gateway TCP port whose listeners to inspect"
        ),
    ] = 5027,
    seconds: Annotated[
        float,
        typer.Option(min=0, max=300, help="How long to watch the counters"),
    ] = 5.0,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the report as JSON")
    ] = False,
) -> None:
    """Diagnose accept-queue overflows, SYN drops and conntrack trouble.

    Reads the network namespace netcheck runs in: run it inside the pod
    (kubectl exec) or under `ip netns exec` / `nsenter -n -t PID`. Exits 1
    when a warning or critical finding is reported.
    """
    import json

    from trackgate.diagnostics import KernelInterfaceError, collect_report

    try:
        report = collect_report(port, seconds)
    except KernelInterfaceError as exc:
        typer.echo(f"cannot read kernel counters: {exc}", err=True)
        raise typer.Exit(EXIT_UNREADABLE) from exc

    from trackgate.cli._console import closed_stdout_exits, report_console

    code = 0 if report["status"] == "ok" else EXIT_FINDINGS
    with closed_stdout_exits(code):
        if json_output:
            typer.echo(json.dumps(report, indent=2))
        else:
            render(report, report_console())
    if code:
        raise typer.Exit(code)


def render(report: dict[str, Any], console: Console) -> None:
    """Print a report as a person wants to read it: findings first."""
    console.print(
        f"[bold]trackgate netcheck[/] port {report['port']}, "
        f"{report['interval_seconds']} s, namespace {report['network_namespace']}: "
        f"[{_status_style(report['status'])}]{report['status'].upper()}[/]"
    )
    _render_findings(report["findings"], console)
    _render_listeners(report["listeners"], report["port"], console)
    _render_counters(report["counters"], report["interval_seconds"], console)
    _render_conntrack(report["conntrack"], console)
    _render_limits(report["limits"], console)


def _status_style(status: str) -> str:
    return _SEVERITY_STYLE.get(status, "bold green")


def _render_findings(found: list[dict[str, str]], console: Console) -> None:
    from rich.table import Table

    if not found:
        console.print("No findings: no drops, overflows or conntrack trouble seen.")
        return
    table = Table(title="Findings", title_justify="left", show_lines=True)
    table.add_column("severity")
    table.add_column("what happened")
    table.add_column("what to do")
    for finding in found:
        style = _SEVERITY_STYLE[finding["severity"]]
        table.add_row(
            f"[{style}]{finding['severity']}[/]", finding["message"], finding["advice"]
        )
    console.print(table)


def _render_listeners(
    rows: list[dict[str, Any]] | None, port: int | None, console: Console
) -> None:
    from rich.table import Table

    if rows is None:
        console.print("[yellow]Listening sockets could not be read.[/]")
        return
    if not rows:
        console.print(f"[bold red]Listeners: nothing listens on port {port}.[/]")
        return
    table = Table(title="Listeners", title_justify="left")
    for column in ("address", "port", "accept queue", "limit", "inode", "via"):
        table.add_column(column, justify="right" if column != "address" else "left")
    for row in rows:
        limit = "?" if row["backlog_limit"] is None else str(row["backlog_limit"])
        queue = str(row["queue_len"])
        if row["is_full"]:
            queue = f"[bold red]{queue} FULL[/]"
        table.add_row(
            row["address"],
            str(row["port"]),
            queue,
            limit,
            str(row["inode"]),
            row["source"],
        )
    console.print(table)


def _render_counters(
    counters: dict[str, dict[str, int]], seconds: float, console: Console
) -> None:
    from rich.table import Table

    table = Table(
        title="Counters (this network namespace, all ports)", title_justify="left"
    )
    table.add_column("counter")
    table.add_column("total", justify="right")
    table.add_column(f"delta in {seconds} s", justify="right")
    for name, values in counters.items():
        delta = str(values["delta"])
        if values["delta"]:
            delta = f"[bold]{delta}[/]"
        table.add_row(name, str(values["total"]), delta)
    console.print(table)


def _render_conntrack(conntrack: dict[str, Any] | None, console: Console) -> None:
    from rich.table import Table

    if conntrack is None:
        console.print("Conntrack: not loaded in this namespace.")
        return
    ratio = conntrack["fill_ratio"]
    fill = "?" if ratio is None else f"{ratio:.1%}"
    table = Table(
        title=f"Conntrack: {conntrack['count']} of {conntrack['max']} entries ({fill})",
        title_justify="left",
    )
    table.add_column("statistic")
    table.add_column("total", justify="right")
    table.add_column("delta", justify="right")
    for name, values in conntrack["counters"].items():
        if name in _CONNTRACK_SHOWN or values["delta"]:
            table.add_row(name, str(values["total"]), str(values["delta"]))
    console.print(table)


def _render_limits(limits: dict[str, int | None], console: Console) -> None:
    from rich.table import Table

    table = Table(title="Kernel limits", title_justify="left")
    table.add_column("sysctl")
    table.add_column("value", justify="right")
    for name, value in limits.items():
        table.add_row(name, "absent" if value is None else str(value))
    console.print(table)
