"""``trackgate pcap FILE``: what did each device go through, according to tcpdump?

Analysis is ``trackgate.diagnostics.pcap``; this module prints its result as
tables or JSON. Exit status: 0 the capture was analysed (also when the reader
of stdout stops early, as ``| head`` does), 2 bad usage, 3 the file is not a
readable pcap/pcapng capture.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from rich.console import Console

EXIT_UNREADABLE = 3


def register(app: typer.Typer) -> None:
    app.command(name="pcap")(pcap)


def pcap(
    file: Annotated[
        Path, typer.Argument(help="tcpdump capture (pcap or pcapng)", exists=True)
    ],
    port: Annotated[int, typer.Option(help="Gateway port in the capture")] = 5027,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the analysis as JSON")
    ] = False,
) -> None:
    """Per-device handshakes, records, ACKs and lag from a capture of the port.

    Capture on the gateway host or pod, for example:
    tcpdump -i any -w gw.pcap port 5027. Segments are reassembled by
    sequence number; IP fragments are not reassembled.
    """
    import json

    from trackgate.diagnostics import CaptureError
    from trackgate.diagnostics.pcap import analyse_capture

    try:
        result = analyse_capture(file, port)
    except CaptureError as exc:
        typer.echo(f"cannot analyse capture: {exc}", err=True)
        raise typer.Exit(EXIT_UNREADABLE) from exc

    from trackgate.cli._console import closed_stdout_exits, report_console

    with closed_stdout_exits(0):
        if json_output:
            typer.echo(json.dumps(result, indent=2))
        else:
            render(result, report_console())


def render(result: dict[str, Any], console: Console) -> None:
    """Print the analysis for a person: summary, addresses, devices."""
    capture, totals = result["capture"], result["totals"]
    console.print(_header(capture, result["port"]))
    for warning in result["warnings"]:
        console.print(f"  [bold yellow]warning:[/] [yellow]{warning}[/]")
    if not capture["packets"]:
        return
    for line in _summary(totals):
        console.print(f"  {line}")
    _render_addresses(result["addresses"], console)
    _render_devices(result["devices"], console)
    _render_gaps(result["connections"], console)


def _header(capture: dict[str, Any], port: int) -> str:
    line = f"[bold]{capture['file']}[/] ({capture['format']}): "
    line += f"{capture['packets']} packets"
    if capture["packets"]:
        seconds = f"{capture['duration_seconds']:.6f}".rstrip("0").rstrip(".")
        line += f", {capture['packets_on_port']} on port {port}, {seconds} s"
    if capture["truncated"]:
        line += " [yellow](truncated at the end)[/]"
    return line


def _summary(totals: dict[str, Any]) -> list[str]:
    lines = [
        f"{totals['syns']} SYNs, {totals['syn_retransmits']} retransmitted, "
        f"{totals['syns_unanswered']} never answered, {totals['syns_refused']} "
        f"refused; {totals['slow_handshakes']} handshakes took >= 0.9 s",
        f"{totals['connections']} connections, {totals['devices']} devices, "
        f"{totals['packets']} AVL packets with {totals['records']} records, "
        f"{totals['resent_packets']} sent again",
        f"{totals['server_acks']} server ACKs; {totals['acks_missing']} packets "
        f"never acknowledged, {totals['acks_short']} acknowledged short"
        + (
            f", {totals['acks_not_captured']} whose ACK the capture lost"
            if totals["acks_not_captured"]
            else ""
        ),
        f"{totals['udp_datagrams']} UDP datagrams, {totals['udp_unanswered']} "
        "without a reply"
        + (
            f", {totals['udp_cut_short']} cut short by the snap length"
            if totals["udp_cut_short"]
            else ""
        ),
    ]
    if totals["capture_gaps"] or totals["resyncs"] or totals["skipped_bytes"]:
        lines.append(
            f"[yellow]{totals['capture_gaps']} capture gaps "
            f"({totals['gap_bytes']} bytes missing), decoding resumed "
            f"{totals['resyncs']} times, {totals['records_after_resync']} records "
            f"decoded after resuming, {totals['skipped_bytes']} bytes skipped[/]"
        )
    lag = totals["lag_seconds"]
    if lag:
        lines.append(
            f"record lag (capture time - device time): min {_duration(lag['min'])}, "
            f"median {_duration(lag['median'])}, max {_duration(lag['max'])}"
        )
    return lines


def _render_addresses(rows: list[dict[str, Any]], console: Console) -> None:
    from rich.table import Table

    table = Table(
        title="Per client address (rtx = SYN retransmits, SYN-ACK ms = median/max)",
        title_justify="left",
    )
    table.add_column("address", no_wrap=True)
    for column in (
        "SYNs",
        "rtx",
        "no answer",
        "SYN-ACK ms",
        "conns",
        "pkts",
        "recs",
        "ACKs",
        "no ACK",
        "UDP",
    ):
        table.add_column(column, justify="right")
    table.add_column("IMEIs", max_width=48)
    for row in rows:
        syn_ack = row["syn_ack_ms"]
        table.add_row(
            row["address"],
            str(row["syns"]),
            str(row["syn_retransmits"]),
            _alarm(row["syns_unanswered"]),
            "-" if syn_ack is None else f"{syn_ack['median']}/{syn_ack['max']}",
            str(row["connections"]),
            str(row["packets"]),
            str(row["records"]),
            str(row["server_acks"]),
            _alarm(row["acks_missing"]),
            str(row["udp_datagrams"]),
            _imeis(row["imeis"] + _unknown(row["connections_without_imei"])),
        )
    console.print(table)


def _render_devices(rows: list[dict[str, Any]], console: Console) -> None:
    from rich.table import Table

    table = Table(
        title="Per device (lag = capture time - device time)", title_justify="left"
    )
    table.add_column("IMEI", no_wrap=True)
    for column in (
        "conns",
        "UDP",
        "pkts",
        "recs",
        "resent",
        "no ACK",
        "lag min",
        "lag median",
        "lag max",
    ):
        table.add_column(column, justify="right", no_wrap=True)
    for row in rows:
        lag = row["lag_seconds"]
        spread = (
            ["-"] * 3
            if lag is None
            else [_duration(lag[key]) for key in ("min", "median", "max")]
        )
        table.add_row(
            row["imei"],
            str(row["connections"]),
            str(row["udp_datagrams"]),
            str(row["packets"]),
            str(row["records"]),
            str(row["resent_packets"]),
            _alarm(row["acks_missing"]),
            *spread,
        )
    console.print(table)


#: IMEIs named in an address row; a carrier NAT address may carry hundreds.
IMEIS_SHOWN = 3


def _imeis(names: list[str]) -> str:
    if not names:
        return "-"
    shown = " ".join(names[:IMEIS_SHOWN])
    more = len(names) - IMEIS_SHOWN
    return f"{shown} (+{more} more, see --json)" if more > 0 else shown


def _unknown(connections: int) -> list[str]:
    """An IMEI column entry for connections whose login the capture missed."""
    return ["unknown"] if connections else []


def _render_gaps(rows: list[dict[str, Any]], console: Console) -> None:
    from rich.table import Table

    rows = [
        row
        for row in rows
        if row["capture_gaps"]
        or row["skipped_bytes"]
        or row["resyncs"]
        or row["server_capture_gaps"]
    ]
    if not rows:
        return
    table = Table(
        title="Connections with capture gaps (missing = bytes the capture lacks, "
        "skipped = bytes dropped to find the next frame)",
        title_justify="left",
    )
    table.add_column("client", no_wrap=True)
    table.add_column("IMEI", no_wrap=True)
    for column in (
        "gaps",
        "missing",
        "skipped",
        "resumed",
        "recs after",
        "undecoded",
        "server gaps",
    ):
        table.add_column(column, justify="right", no_wrap=True)
    for row in rows:
        table.add_row(
            row["client"],
            row["imei"] or "unknown",
            str(row["capture_gaps"]),
            str(row["gap_bytes"]),
            str(row["skipped_bytes"]),
            str(row["resyncs"]),
            str(row["records_after_resync"]),
            str(row["undecoded_bytes"]),
            str(row["server_capture_gaps"]),
        )
    console.print(table)


def _alarm(value: int) -> str:
    return f"[bold red]{value}[/]" if value else "0"


_UNITS = ((365 * 86400, "y"), (86400, "d"), (3600, "h"), (60, "min"))


def _duration(seconds: float) -> str:
    """Seconds as a person reads them: 4.999 s, 12.5 min, 7.5 y."""
    for size, unit in _UNITS:
        if abs(seconds) >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.3f} s"
