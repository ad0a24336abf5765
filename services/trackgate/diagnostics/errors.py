"""The diagnostics exception family, split by blame.

``CaptureError`` means the input handed to us is at fault (a file that is not
a capture, a truncated capture); ``KernelInterfaceError`` means this host
would not tell us what we asked (``/proc`` unreadable, netlink refused). Both
derive from ``DiagnosticsError`` so a caller that only wants "diagnostics did
not work" catches one class. Missing *optional* kernel facilities (conntrack
not loaded, a sysctl absent in this kernel) are not errors: the readers
return ``None`` for them.
"""

from __future__ import annotations


class DiagnosticsError(Exception):
    """Base class of every error raised by ``trackgate.diagnostics``."""


class KernelInterfaceError(DiagnosticsError):
    """The kernel interface we read from is missing, unreadable or malformed."""


class CaptureError(DiagnosticsError):
    """A packet capture file cannot be read as pcap or pcapng."""
