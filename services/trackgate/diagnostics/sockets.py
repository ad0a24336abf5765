"""Accept-queue length and limit of listening TCP sockets, without ``ss``.

Two views of the same kernel numbers (``sk_ack_backlog`` and
``sk_max_ack_backlog``):

* :func:`listen_queue` asks one socket the caller owns, through
  ``getsockopt(TCP_INFO)``; on a listener the kernel puts the current queue
  length in ``tcpi_unacked`` and the limit in ``tcpi_sacked``. The ingest
  service calls this on its own listeners.
* :func:`listeners` lists every listener on a port in this network
  namespace through netlink ``sock_diag`` (what ``ss -lnt`` uses), so one row
  appears per ``SO_REUSEPORT`` member and per address family. Where netlink
  is refused it falls back to ``/proc/net/tcp{,6}``, which shows the queue
  length but not the limit.

Both are a single syscall or file read and never block for long. Turning the
numbers into advice is ``findings.py``'s job.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import struct
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from trackgate.diagnostics.errors import KernelInterfaceError

log = logging.getLogger(__name__)

TCP_LISTEN = 10  # include/net/tcp_states.h

# struct tcp_info: eight bytes of u8 and bit-field members, then u32 rto, ato,
# snd_mss, rcv_mss, unacked, sacked: unacked sits at byte 24, sacked at 28.
_TCP_INFO_QUEUE = struct.Struct("=II")
_TCP_INFO_QUEUE_OFFSET = 24
# Enough of struct tcp_info to cover the two fields (the kernel copies
# min(len, sizeof) bytes, so asking for less than the full struct is fine).
_TCP_INFO_PREFIX_LEN = 32

NETLINK_SOCK_DIAG = 4  # linux/netlink.h
SOCK_DIAG_BY_FAMILY = 20  # linux/sock_diag.h
_NLM_F_REQUEST = 0x1
_NLM_F_DUMP = 0x300  # NLM_F_ROOT | NLM_F_MATCH
_NLMSG_ERROR = 2
_NLMSG_DONE = 3

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
# inet_diag_req_v2: family, protocol, ext, pad, states, then inet_diag_sockid
# (sport, dport, src[16], dst[16], if, cookie[2]). Ports and addresses are in
# network byte order, the rest in host order, hence ntohs() on the ports.
_INET_DIAG_REQ_V2 = struct.Struct("=BBBxIHH16s16sI8s")
# inet_diag_msg: family, state, timer, retrans, inet_diag_sockid, expires,
# rqueue, wqueue, uid, inode.
_INET_DIAG_MSG = struct.Struct("=BBBBHH16s16sI8sIIIII")

# One netlink dump reply carries a few dozen sockets per datagram; 64 KiB is
# the size ss and the kernel's own examples use, and never truncates a reply.
_NETLINK_RECV_BUFFER = 65536
# A sock_diag dump of listeners answers in microseconds; a second means the
# kernel is not answering and the caller's event loop must not wait longer.
_NETLINK_TIMEOUT_SECONDS = 1.0
# Listening sockets in one namespace: far above any real pod, low enough that
# a runaway dump cannot grow without bound.
_MAX_LISTENERS = 65536

Family = Literal["ipv4", "ipv6"]
Source = Literal["netlink", "proc"]


def listen_queue(sock: socket.socket) -> tuple[int, int]:
    """Return ``(queue_len, backlog_limit)`` of a listening TCP socket.

    ``queue_len`` counts connections that finished the handshake and wait
    for ``accept()``. The kernel drops new SYNs once ``queue_len`` exceeds
    ``backlog_limit`` (so a full queue holds ``backlog_limit + 1``).

    Raises:
        ValueError: ``sock`` is not a TCP socket in the LISTEN state.
    """
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_PREFIX_LEN)
    if len(info) < _TCP_INFO_PREFIX_LEN or info[0] != TCP_LISTEN:
        raise ValueError("listen_queue() needs a TCP socket in the LISTEN state")
    queue_len, limit = _TCP_INFO_QUEUE.unpack_from(info, _TCP_INFO_QUEUE_OFFSET)
    return int(queue_len), int(limit)


@dataclass(frozen=True)
class Listener:
    """One listening TCP socket and its accept queue.

    ``backlog_limit`` is ``None`` when the row came from ``/proc/net/tcp``,
    which does not show it. ``inode`` matches ``os.fstat(fd).st_ino`` of the
    owning process's socket, so a service can pick out its own rows.
    """

    family: Family
    address: str
    port: int
    queue_len: int
    backlog_limit: int | None
    inode: int
    source: Source

    @property
    def is_full(self) -> bool:
        """True when the kernel would drop the next SYN for this listener."""
        return self.backlog_limit is not None and self.queue_len > self.backlog_limit

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view."""
        return {**asdict(self), "is_full": self.is_full}


def listeners(
    port: int | None = None, proc_root: str | Path = "/proc"
) -> list[Listener]:
    """All listening TCP sockets on ``port`` (or every port) in this namespace.

    Uses netlink ``sock_diag``; if the kernel or a sandbox refuses it, reads
    ``/proc/net/tcp`` and ``tcp6`` under ``proc_root`` instead (those rows
    have ``backlog_limit=None``).

    Raises:
        KernelInterfaceError: neither netlink nor ``/proc/net/tcp`` answered.
    """
    try:
        found = _netlink_listeners()
    except OSError as exc:
        log.info("sock_diag netlink unavailable (%s); reading /proc/net/tcp", exc)
        found = _proc_listeners(Path(proc_root))
    if port is not None:
        found = [row for row in found if row.port == port]
    return sorted(found, key=lambda row: (row.port, row.family, row.address, row.inode))


def _netlink_listeners() -> list[Listener]:
    rows: list[Listener] = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as nl:
        nl.settimeout(_NETLINK_TIMEOUT_SECONDS)
        for sequence, family in enumerate((socket.AF_INET, socket.AF_INET6), 1):
            nl.send(_dump_request(family, sequence))
            rows.extend(_read_dump(nl, sequence))
    return rows


def _dump_request(family: int, sequence: int) -> bytes:
    request = _INET_DIAG_REQ_V2.pack(
        family, socket.IPPROTO_TCP, 0, 1 << TCP_LISTEN, 0, 0, b"", b"", 0, b""
    )
    header = _NLMSGHDR.pack(
        _NLMSGHDR.size + len(request),
        SOCK_DIAG_BY_FAMILY,
        _NLM_F_REQUEST | _NLM_F_DUMP,
        sequence,
        0,
    )
    return header + request


def _read_dump(nl: socket.socket, sequence: int) -> list[Listener]:
    rows: list[Listener] = []
    while len(rows) < _MAX_LISTENERS:
        data = nl.recv(_NETLINK_RECV_BUFFER)
        offset = 0
        while offset + _NLMSGHDR.size <= len(data):
            length, kind, _flags, seq, _pid = _NLMSGHDR.unpack_from(data, offset)
            if length < _NLMSGHDR.size:
                raise KernelInterfaceError(f"netlink message length {length}")
            body = offset + _NLMSGHDR.size
            if seq == sequence:
                if kind == _NLMSG_DONE:
                    return rows
                if kind == _NLMSG_ERROR:
                    (errno,) = struct.unpack_from("=i", data, body)
                    raise OSError(-errno, os.strerror(-errno))
                if kind == SOCK_DIAG_BY_FAMILY:
                    rows.append(_parse_diag_msg(data, body))
            offset += (length + 3) & ~3  # NLMSG_ALIGN
    raise KernelInterfaceError(f"more than {_MAX_LISTENERS} listeners in one dump")


def _parse_diag_msg(data: bytes, offset: int) -> Listener:
    fields = _INET_DIAG_MSG.unpack_from(data, offset)
    family, sport, src = fields[0], fields[4], fields[6]
    rqueue, wqueue, inode = fields[11], fields[12], fields[14]
    if family == socket.AF_INET:
        name: Family = "ipv4"
        address = str(ipaddress.IPv4Address(src[:4]))
    else:
        name = "ipv6"
        address = str(ipaddress.IPv6Address(src))
    return Listener(
        name, address, socket.ntohs(sport), rqueue, wqueue, inode, "netlink"
    )


def _proc_listeners(root: Path) -> list[Listener]:
    rows: list[Listener] = []
    readable = 0
    for name, family in (("net/tcp", "ipv4"), ("net/tcp6", "ipv6")):
        try:
            text = (root / name).read_text()
        except OSError:
            continue
        readable += 1
        rows.extend(parse_proc_net_tcp(text, family))  # type: ignore[arg-type]
    if readable == 0:
        raise KernelInterfaceError(f"neither netlink nor {root}/net/tcp is readable")
    return rows


def parse_proc_net_tcp(text: str, family: Family) -> list[Listener]:
    """Listening rows of a ``/proc/net/tcp`` or ``tcp6`` table.

    For a listener the kernel prints the accept-queue length as
    ``rx_queue``; the limit is not shown, so ``backlog_limit`` is ``None``.
    """
    rows: list[Listener] = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10 or fields[3] != f"{TCP_LISTEN:02X}":
            continue
        address_hex, port_hex = fields[1].split(":")
        queue_hex = fields[4].split(":")[1]
        rows.append(
            Listener(
                family=family,
                address=_proc_address(address_hex),
                port=int(port_hex, 16),
                queue_len=int(queue_hex, 16),
                backlog_limit=None,
                inode=int(fields[9]),
                source="proc",
            )
        )
    return rows


def _proc_address(hex_address: str) -> str:
    # The kernel prints each 32-bit word of the address in host byte order.
    raw = bytes.fromhex(hex_address)
    if sys.byteorder == "little":
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw))
    return str(ipaddress.IPv6Address(raw))
