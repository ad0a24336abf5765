"""Entry point of one worker process: ``python -m trackgate.ingest.worker_main``.

The supervisor starts it with the worker's index, loopback admin port, the
descriptor of its pulse pipe (:mod:`trackgate.ingest.liveness`) and its own
pid as arguments and the settings in the environment. SIGUSR1 makes the process
write every thread's Python stack to stderr, even while its event loop is
blocked: the supervisor sends it before it kills a hung worker.
"""

from __future__ import annotations

import asyncio
import faulthandler
import gc
import logging
import signal
import sys
from collections.abc import Coroutine
from typing import Any

from trackgate.core import logs
from trackgate.core.limits import raise_fd_limit
from trackgate.ingest.liveness import send_pulses
from trackgate.ingest.settings import IngestSettings

#: Cyclic GC thresholds of a worker. Per packet a worker allocates dozens of
#: objects (records, IO maps, futures) that reference counting frees, but a
#: batch in flight keeps thousands alive at once, and with the default
#: (700, 10, 10) the collector then ran every few packets and took about a
#: tenth of a worker's time. Cycles are rare here; these bounds still
#: collect them within a few seconds under load.
GC_THRESHOLDS = (50_000, 20, 20)


def main(argv: list[str]) -> int:
    index, admin_fd = int(argv[0]), int(argv[1])
    pulse_fd = int(argv[2]) if len(argv) > 2 else None
    supervisor_pid = int(argv[3]) if len(argv) > 3 else None
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    settings = IngestSettings()
    # Every session is a file descriptor: allow what max_connections needs.
    raise_fd_limit(settings.max_connections + 1024)
    logs.configure(settings.log_level, settings.log_format)
    from trackgate.core.store import StoreError
    from trackgate.ingest.worker import serve

    # What start-up built lives as long as the process: out of the collector.
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)

    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    try:
        runner(_with_pulses(serve(settings, index, admin_fd, supervisor_pid), pulse_fd))
    except (StoreError, OSError) as exc:
        # Bad settings or a taken port: one clear line, no traceback.
        logging.getLogger("trackgate.ingest").error(
            "worker %d cannot start: %s", index, exc
        )
        return 2
    return 0


async def _with_pulses(serving: Coroutine[Any, Any, None], fd: int | None) -> None:
    """Run ``serving`` with pulses written into ``fd`` from the loop's first turn."""
    pulses = None if fd is None else asyncio.create_task(send_pulses(fd))
    try:
        await serving
    finally:
        if pulses is not None:
            pulses.cancel()
            await asyncio.gather(pulses, return_exceptions=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
