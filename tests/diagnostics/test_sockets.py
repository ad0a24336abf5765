"""Accept-queue length and limit, read from real listening sockets."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from trackgate.diagnostics import listen_queue, listeners
from trackgate.diagnostics.sockets import parse_proc_net_tcp


def _connect_many(stack: ExitStack, address: tuple[str, int], count: int) -> None:
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    for _ in range(count):
        client = stack.enter_context(socket.socket(family))
        client.setblocking(False)
        client.connect_ex(address)


def _wait_for_queue(server: socket.socket, expected: int) -> tuple[int, int]:
    deadline = time.monotonic() + 2
    while True:
        queue = listen_queue(server)
        if queue[0] >= expected or time.monotonic() > deadline:
            return queue
        time.sleep(0.02)


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


def _listener(
    stack: ExitStack,
    backlog: int,
    host: str = "127.0.0.1",
    port: int = 0,
    reuse_port: bool = False,
) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server = stack.enter_context(socket.socket(family))
    if reuse_port:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    server.bind((host, port))
    server.listen(backlog)
    return server


def test_listen_queue_reports_waiting_connections_and_limit(stack: ExitStack) -> None:
    server = _listener(stack, backlog=5)
    assert listen_queue(server) == (0, 5)

    _connect_many(stack, server.getsockname(), 9)

    # A full queue holds backlog + 1; the other three SYNs were dropped.
    assert _wait_for_queue(server, 6) == (6, 5)


def test_accepting_empties_the_queue(stack: ExitStack) -> None:
    server = _listener(stack, backlog=8)
    _connect_many(stack, server.getsockname(), 3)
    _wait_for_queue(server, 3)

    stack.enter_context(server.accept()[0])

    assert listen_queue(server) == (2, 8)


def test_listen_queue_refuses_a_socket_that_does_not_listen(stack: ExitStack) -> None:
    server = _listener(stack, backlog=1)
    client = stack.enter_context(socket.create_connection(server.getsockname()))

    with pytest.raises(ValueError, match="LISTEN"):
        listen_queue(client)


def test_listeners_read_queue_and_limit_like_ss(stack: ExitStack) -> None:
    server = _listener(stack, backlog=4)
    port = server.getsockname()[1]
    _connect_many(stack, server.getsockname(), 2)
    _wait_for_queue(server, 2)

    (row,) = listeners(port)

    assert (row.family, row.address, row.port) == ("ipv4", "127.0.0.1", port)
    assert (row.queue_len, row.backlog_limit) == (2, 4)
    assert row.source == "netlink"
    assert row.inode == os.fstat(server.fileno()).st_ino
    assert not row.is_full


def test_each_reuseport_member_is_a_row_with_its_own_queue(stack: ExitStack) -> None:
    # The kernel hashes each connection to a member: either one may get all
    # six, so each backlog holds six (a full queue would drop SYNs instead).
    first = _listener(stack, backlog=6, reuse_port=True)
    port = first.getsockname()[1]
    second = _listener(stack, backlog=9, port=port, reuse_port=True)
    _connect_many(stack, ("127.0.0.1", port), 6)
    deadline = time.monotonic() + 2
    while (
        listen_queue(first)[0] + listen_queue(second)[0] < 6
        and time.monotonic() < deadline
    ):
        time.sleep(0.02)

    rows = listeners(port)

    assert sorted(row.backlog_limit or 0 for row in rows) == [6, 9]
    by_inode = {row.inode: row for row in rows}
    for server in (first, second):
        row = by_inode[os.fstat(server.fileno()).st_ino]
        assert row.queue_len == listen_queue(server)[0]
    assert sum(row.queue_len for row in rows) == 6


def test_ipv6_listeners_are_listed(stack: ExitStack) -> None:
    server = _listener(stack, backlog=9, host="::1")
    port = server.getsockname()[1]
    _connect_many(stack, ("::1", port), 1)
    _wait_for_queue(server, 1)

    (row,) = listeners(port)

    assert (row.family, row.address, row.queue_len, row.backlog_limit) == (
        "ipv6",
        "::1",
        1,
        9,
    )


def test_other_ports_are_left_out(stack: ExitStack) -> None:
    first = _listener(stack, backlog=1)
    second = _listener(stack, backlog=1)

    ports = {row.port for row in listeners(first.getsockname()[1])}

    assert ports == {first.getsockname()[1]}
    assert second.getsockname()[1] in {row.port for row in listeners()}


def test_proc_fallback_shows_the_queue_but_not_the_limit(stack: ExitStack) -> None:
    server = _listener(stack, backlog=4)
    port = server.getsockname()[1]
    _connect_many(stack, server.getsockname(), 3)
    _wait_for_queue(server, 3)

    rows = parse_proc_net_tcp(Path("/proc/net/tcp").read_text(), "ipv4")
    (row,) = [row for row in rows if row.port == port]

    assert (row.address, row.queue_len, row.backlog_limit) == ("127.0.0.1", 3, None)
    assert row.source == "proc"
    assert row.inode == os.fstat(server.fileno()).st_ino


def test_proc_fallback_reads_ipv6_addresses(stack: ExitStack) -> None:
    server = _listener(stack, backlog=2, host="::1")
    port = server.getsockname()[1]

    rows = parse_proc_net_tcp(Path("/proc/net/tcp6").read_text(), "ipv6")

    assert [row.address for row in rows if row.port == port] == ["::1"]
