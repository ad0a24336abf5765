"""The console reports are printed on."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

#: Width of a report written to a file or a pipe (no terminal to measure).
REPORT_WIDTH = 160


def report_console() -> Console:
    """A terminal's own width; a file or pipe gets a wide one, so tables
    written to a report keep every column readable (``COLUMNS`` wins)."""
    from rich.console import Console

    if sys.stdout.isatty() or "COLUMNS" in os.environ:
        return Console()
    return Console(width=REPORT_WIDTH)
