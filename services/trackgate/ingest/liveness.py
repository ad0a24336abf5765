"""Whether each worker's event loop still turns, as the supervisor sees it.

A worker process can be alive and useless: a call that blocks its event
loop (a synchronous read, a lock, a C call that never returns) or a stopped
process serves nothing, answers no probe, and is still a running process.
To see it, every worker sends pulses from a task of its event loop: every
:data:`PULSE_INTERVAL_S` it writes its ``CLOCK_MONOTONIC`` time (8 bytes)
into a pipe the supervisor gave it at start. A loop that does not turn
writes nothing. The supervisor reads the latest pulse of each worker when it
looks (the clock is the same for every process of the machine, so the age
of a pulse does not depend on when the supervisor reads it).

The pipe needs no file system, no port and no Redis: it works in a
read-only container and while Redis is down. Writes of 8 bytes to a pipe
are atomic, so a read never sees half a pulse of one write.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import time

#: How often a worker's loop writes a pulse; far below any hang threshold.
PULSE_INTERVAL_S = 0.25
#: A worker's first pulse may come this late (interpreter start, imports,
#: Redis clients) before the worker counts as hung; later pulses must come
#: within the configured threshold.
FIRST_PULSE_GRACE_S = 30.0

_PULSE = struct.Struct("<d")


async def send_pulses(fd: int) -> None:
    """Write a pulse into ``fd`` every :data:`PULSE_INTERVAL_S`, until cancelled.

    A full pipe (the supervisor itself is not reading) skips a pulse; a
    closed one (the supervisor is gone) ends the pulses, and the worker's
    own check of its parent stops it.
    """
    os.set_blocking(fd, False)
    try:
        while True:
            try:
                os.write(fd, _PULSE.pack(time.monotonic()))
            except BlockingIOError:
                pass
            except BrokenPipeError:
                return
            await asyncio.sleep(PULSE_INTERVAL_S)
    finally:
        os.close(fd)


class PulseReader:
    """The supervisor's end of one worker process's pulse pipe."""

    def __init__(self, fd: int, started: float) -> None:
        os.set_blocking(fd, False)
        self.fd: int | None = fd
        #: monotonic time the process was started
        self.started = started
        #: monotonic time of the latest pulse read; None before the first
        self.last: float | None = None
        self._partial = b""

    def read(self) -> None:
        """Take every pulse waiting in the pipe; keep the latest."""
        if self.fd is None:
            return
        data = self._partial
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            if not chunk:  # the worker closed its end: it is exiting
                self.close()
                break
            data += chunk
        whole = len(data) - len(data) % _PULSE.size
        if whole:
            (self.last,) = _PULSE.unpack_from(data, whole - _PULSE.size)
        self._partial = data[whole:]

    def silent_for(self, now: float) -> float:
        """Seconds since the latest pulse (since the start before the first)."""
        return now - (self.started if self.last is None else self.last)

    def hung(self, now: float, threshold_s: float) -> bool:
        """No pulse for longer than allowed (the first one gets a grace)."""
        if self.last is None:
            return self.silent_for(now) > max(threshold_s, FIRST_PULSE_GRACE_S)
        return self.silent_for(now) > threshold_s

    def close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None
