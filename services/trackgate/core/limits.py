"""Process limits that a server of many sockets needs raised."""

from __future__ import annotations

import resource


def raise_fd_limit(wanted: int = 1 << 20) -> int:
    """Raise the open-file limit towards ``wanted``; returns the soft limit.

    Every connection is a file descriptor. Root may raise the hard limit
    too (up to fs.nr_open); anyone else gets the soft limit raised to the
    hard one.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for target in (wanted, hard):
        if target <= soft:
            break
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, max(target, hard)))
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
