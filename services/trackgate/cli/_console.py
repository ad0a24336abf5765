"""The console reports are printed on, and what happens when nobody reads it.

Imported by the report commands (``netcheck``, ``pcap``) when they run, so
other commands start without loading rich.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console

#: Width of a report written to a file or a pipe (no terminal to measure).
REPORT_WIDTH = 160


class _ReportConsole(Console):
    def on_broken_pipe(self) -> None:
        # Rich would exit 1 here; closed_stdout_exits() picks the status.
        self.quiet = True
        raise BrokenPipeError


def report_console() -> Console:
    """A terminal's own width; a file or pipe gets a wide one, so tables
    written to a report keep every column readable (``COLUMNS`` wins)."""
    if sys.stdout.isatty() or "COLUMNS" in os.environ:
        return _ReportConsole()
    return _ReportConsole(width=REPORT_WIDTH)


@contextmanager
def closed_stdout_exits(code: int) -> Iterator[None]:
    """Exit quietly with ``code`` when the reader of stdout goes away.

    ``trackgate pcap gw.pcap | head`` closes the pipe early: the reader's
    choice, not a failure of the command.
    """
    try:
        yield
        sys.stdout.flush()
    except BrokenPipeError:
        # As the Python documentation advises: point stdout at /dev/null, so
        # the flush at interpreter exit cannot fail a second time.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise typer.Exit(code) from None
