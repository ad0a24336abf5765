"""A loopback port that answers no connect, as a black-holed address does.

Linux drops the SYN of a connect to a listener whose accept queue is full,
and the client retransmits it until it gives up, as it would to an address
where every packet is lost. With a backlog of 0 the queue holds one
connection, and a listener that never accepts keeps it full. Unlike a
non-routable address, this works offline and the same on every machine.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

HOST = "127.0.0.1"


@contextmanager
def unanswered_port(*, room: int = 0) -> Iterator[int]:
    """Yield a port on which, after ``room`` (0 or 1) connects complete,
    no connect is ever answered."""
    with ExitStack() as stack:
        listener = stack.enter_context(socket.create_server((HOST, 0), backlog=0))
        port = int(listener.getsockname()[1])
        for _ in range(1 - room):
            stack.enter_context(socket.create_connection((HOST, port), timeout=5))
        yield port
