"""Listening sockets of a worker: SO_REUSEPORT, backlog, keepalive options.

The keepalive options and TCP_USER_TIMEOUT are set on the listening socket;
Linux copies them to every accepted socket, so sessions pay nothing for them.

Linux lets TCP_USER_TIMEOUT override keepalive: once it is set, a link whose
probes go unanswered is only dropped after the user timeout. So the two are
one bound here: unless set on its own, the user timeout equals
idle + interval x count. With the defaults (60 s idle, 4 probes 15 s apart)
a dead peer is found within 120 s, whether the link was idle or had data
(an ACK, a command) waiting to be acknowledged.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Protocol

SOMAXCONN_PATH = Path("/proc/sys/net/core/somaxconn")
#: Used when /proc cannot be read (not Linux): the kernel's default since 5.4.
FALLBACK_SOMAXCONN = 4096


class KeepaliveSettings(Protocol):
    keepalive_idle_s: int
    keepalive_interval_s: int
    keepalive_count: int
    user_timeout_s: int


def read_somaxconn() -> int:
    """The kernel's cap on listen backlogs in this network namespace."""
    try:
        return int(SOMAXCONN_PATH.read_text().strip())
    except (OSError, ValueError):
        return FALLBACK_SOMAXCONN


def open_listeners(
    host: str, port: int, kind: socket.SocketKind
) -> list[socket.socket]:
    """Bound (not yet listening) sockets for every address ``host`` names."""
    sockets: list[socket.socket] = []
    infos = socket.getaddrinfo(host or None, port, type=kind, flags=socket.AI_PASSIVE)
    seen = set()
    for family, socktype, proto, _name, address in infos:
        if (family, address) in seen:
            continue
        seen.add((family, address))
        sock = socket.socket(family, socktype, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
        except OSError as exc:
            sock.close()
            for other in sockets:
                other.close()
            where = f"{host or '*'}:{port}"
            raise OSError(exc.errno, f"cannot bind {where}: {exc.strerror}") from exc
        sock.setblocking(False)
        sockets.append(sock)
    return sockets


def dead_peer_bound_s(settings: KeepaliveSettings) -> int:
    """Seconds after which a peer that answers nothing is dropped."""
    keepalive = (
        settings.keepalive_idle_s
        + settings.keepalive_interval_s * settings.keepalive_count
    )
    return settings.user_timeout_s or keepalive


def configure_listener(sock: socket.socket, settings: KeepaliveSettings) -> None:
    """Keepalive and user timeout, inherited by accepted connections."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, settings.keepalive_idle_s)
    sock.setsockopt(
        socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, settings.keepalive_interval_s
    )
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, settings.keepalive_count)
    sock.setsockopt(
        socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, dead_peer_bound_s(settings) * 1000
    )
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
