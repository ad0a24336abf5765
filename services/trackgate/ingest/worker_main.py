"""Entry point of one worker process: ``python -m trackgate.ingest.worker_main``.

The supervisor starts it with the worker's index and loopback admin port as
arguments and the settings in the environment.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from trackgate.core import logs
from trackgate.core.limits import raise_fd_limit
from trackgate.ingest.settings import IngestSettings


def main(argv: list[str]) -> int:
    index, admin_port = int(argv[0]), int(argv[1])
    settings = IngestSettings()
    # Every session is a file descriptor: allow what max_connections needs.
    raise_fd_limit(settings.max_connections + 1024)
    logs.configure(settings.log_level, settings.log_format)
    from trackgate.core.store import StoreError
    from trackgate.ingest.worker import serve

    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    try:
        runner(serve(settings, index, admin_port))
    except (StoreError, OSError) as exc:
        # Bad settings or a taken port: one clear line, no traceback.
        logging.getLogger("trackgate.ingest").error(
            "worker %d cannot start: %s", index, exc
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
