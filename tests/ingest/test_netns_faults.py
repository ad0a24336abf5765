"""Network faults between devices and the gateway, in network namespaces.

Redis and ``trackgate ingest`` run in a "gateway" namespace, simulated
devices in a "devices" namespace; the link between them is impaired (loss,
delay, jitter, reordering) or cut silently for one connection. Figures are
printed, so ``pytest -s`` shows them.

- A lossy, slow, reordering link: a fleet that resends unACKed packets
  gets every record stored exactly once.
- A half-open connection: the device vanished without a FIN or RST; the
  gateway's TCP keepalive finds it within the documented bound and the
  device shows disconnected.
- The same device reconnects before that: the new session replaces the
  half-open one at once.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from tests.support.netns import (
    Gateway,
    Impairment,
    Link,
    blackhole,
    blackhole_unavailable,
    gateway,
    netem,
    netem_unavailable,
    netns_unavailable,
    tun_link,
    tun_unavailable,
    veth_link,
)
from trackgate.core.keys import Keys

KEYS = Keys()
pytestmark = [pytest.mark.netns, pytest.mark.slow]

#: The link of the lossy test, in each direction: about what a congested
#: cellular uplink does on a bad day.
LOSSY = Impairment(loss_pct=5, delay_ms=40, jitter_ms=20, reorder_pct=10, seed=7)
FLEET = {"devices": 20, "packets": 25, "records": 4}
#: Time between the kernel giving up on a peer and the device hash saying so:
#: the worker's event loop wakes, then one Redis round trip.
BOOKKEEPING_S = 1.0


@pytest.fixture(autouse=True)
def _needs_namespaces() -> None:
    reason = netns_unavailable()
    if reason is not None:
        pytest.skip(reason)


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, value = line.rsplit(" ", 1)
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def run_fleet(link: Link, first_imei: int) -> dict[str, Any]:
    fleet: dict[str, Any] = link.devices.helper(
        "fleet", "--host", link.gateway_ip,
        "--devices", str(FLEET["devices"]), "--packets", str(FLEET["packets"]),
        "--records", str(FLEET["records"]), "--first-imei", str(first_imei),
        "--response-timeout", "0.6", "--timeout", "150",
        timeout=180,
    )  # fmt: skip
    return fleet


def audit(fleet: dict[str, Any], stored: dict[str, int]) -> dict[str, int]:
    sent = [f"{d['imei']}:{ts}" for d in fleet["devices"] for ts in d["sent"]]
    acked = {f"{d['imei']}:{ts}" for d in fleet["devices"] for ts in d["acked"]}
    return {
        "sent": len(sent),
        "stored": sum(1 for key in sent if stored.get(key, 0) >= 1),
        "duplicated": sum(1 for key in sent if stored.get(key, 0) > 1),
        "lost": sum(1 for key in sent if key not in stored),
        "acked_not_stored": sum(1 for key in acked if key not in stored),
        "resends": sum(d["resends"] for d in fleet["devices"]),
        "reconnects": sum(d["connects"] - 1 for d in fleet["devices"]),
    }


@contextmanager
def impaired(kind: str) -> Iterator[Link]:
    """A devices/gateway pair whose link is impaired by netem or the relay."""
    if kind == "netem":
        reason = netem_unavailable()
        if reason is not None:
            pytest.skip(reason)
        with veth_link() as link:
            netem(link.devices, link.devices_dev, LOSSY)
            netem(link.gateway, link.gateway_dev, LOSSY)
            yield link
        return
    reason = tun_unavailable()
    if reason is not None:
        pytest.skip(reason)
    with tun_link(LOSSY) as relayed:
        yield relayed.link
    print(f"relay {kind}: {json.dumps(relayed.stats)}")
    # The relay really dropped and reordered packets, in both directions.
    assert relayed.stats["dropped"] > 0
    assert relayed.stats["reordered"] > 0


@pytest.mark.parametrize("kind", ["netem", "user-space relay"])
def test_lossy_reordering_link_stores_every_record_exactly_once(kind: str) -> None:
    with impaired(kind) as link, gateway(link.gateway, store_timeout_s="10") as gw:
        fleet = run_fleet(link, first_imei=5000)
        result = audit(fleet, gw.stored())
        metrics = gw.metrics()
    result["gateway_stored"] = int(metric(metrics, "trackgate_records_total"))
    result["gateway_deduplicated"] = int(
        metric(metrics, "trackgate_records_duplicate_total")
    )

    print(
        f"lossy link ({kind}; loss {LOSSY.loss_pct}%, delay {LOSSY.delay_ms}"
        f"±{LOSSY.jitter_ms} ms, reorder {LOSSY.reorder_pct}% each way):",
        json.dumps(result),
        f"ack p50 {fleet['ack_p50_ms']} ms",
        f"p99 {fleet['ack_p99_ms']} ms, {fleet['seconds']} s",
    )
    assert fleet["failed"] == []
    assert result["sent"] == FLEET["devices"] * FLEET["packets"] * FLEET["records"]
    assert result["lost"] == 0
    assert result["duplicated"] == 0
    assert result["stored"] == result["sent"]
    assert result["acked_not_stored"] == 0
    # The gateway's own count agrees: resent records were recognised.
    assert result["gateway_stored"] == result["sent"]
    # Whatever the link did, nothing the devices sent looked malformed.
    assert metric(metrics, "trackgate_decode_errors_total") == 0


def ended_line(gw: Gateway, imei: str) -> str | None:
    for line in gw.log().splitlines():
        if "session ended" in line and f"imei={imei}" in line:
            return line
    return None


def wait_for(predicate: Any, timeout: float, step: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return predicate()


def start_device(link: Link, imei: str, offset_ms: int = 0) -> tuple[
    subprocess.Popen[str], dict[str, Any]
]:  # fmt: skip
    """A device that logged in and had one packet ACKed, connection held."""
    process = link.devices.helper_popen(
        "device", "--host", link.gateway_ip, "--imei", imei,
        "--offset-ms", str(offset_ms),
    )  # fmt: skip
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        process.kill()
        _, err = process.communicate()
        raise AssertionError(f"device failed: {err}")
    report: dict[str, Any] = json.loads(line)
    assert report["login"] == "01"
    assert report["acked"] == 1
    return process, report


def release(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.kill()
        process.communicate()


@dataclass(frozen=True)
class Case:
    """TCP settings of the gateway, and when the kernel should give up.

    ``expected`` counts from the last thing the gateway heard (keepalive) or
    from the first byte it sent into the void (``in_flight``);
    docs/ingest.md explains each.
    """

    idle: int
    interval: int
    count: int
    user_timeout: int
    in_flight: bool
    expected: float


DETECTION_CASES = [
    pytest.param(Case(2, 1, 3, 0, False, 5.0), id="keepalive-2s+3x1s"),
    pytest.param(Case(2, 1, 10, 4, False, 4.0), id="user-timeout-4s-cuts-probes"),
    # Probes alone would take 12 s: the user timeout is what ends it.
    pytest.param(Case(2, 1, 10, 4, True, 4.0), id="command-in-flight-user-timeout"),
]


@pytest.mark.parametrize("case", DETECTION_CASES)
def test_half_open_connection_is_found_within_the_documented_bound(
    case: Case,
) -> None:
    reason = blackhole_unavailable()
    if reason is not None:
        pytest.skip(reason)
    imei = "356307042440001"
    key = KEYS.device(imei)
    with ExitStack() as stack:
        link = stack.enter_context(veth_link())
        gw = stack.enter_context(gateway(
            link.gateway, keepalive_idle_s=str(case.idle),
            keepalive_interval_s=str(case.interval),
            keepalive_count=str(case.count), user_timeout_s=str(case.user_timeout),
        ))  # fmt: skip
        device, report = start_device(link, imei)
        stack.callback(release, device)
        assert wait_for(lambda: gw.hash(key).get("connected") == "1", 5)
        # The device acknowledged everything: only keepalive can probe it.
        assert gw.unacknowledged() == 0

        # From here the device neither sends nor answers: no FIN, no RST.
        stack.enter_context(blackhole(link.devices, report["local_port"]))
        since = report["acked_at"]
        if case.in_flight:
            # The gateway writes a command into the void: while it waits
            # for the device to acknowledge it, keepalive does not run.
            since = gw.command(imei, "getinfo")["queued_at"]
            assert wait_for(lambda: gw.unacknowledged() > 0, 5)
        bound = case.expected + BOOKKEEPING_S
        found = wait_for(lambda: gw.hash(key).get("connected") == "0", bound + 5)
        assert found, (gw.hash(key), gw.sockets(), gw.log()[-3000:])
        status = gw.hash(key)
        line = ended_line(gw, imei)

    took = int(status["disconnected_at"]) / 1000 - since
    print(
        f"half-open found in {took:.2f} s (expected {case.expected:.1f} s; "
        f"keepalive idle {case.idle} s interval {case.interval} s count "
        f"{case.count}, user timeout {case.user_timeout} s, data in flight "
        f"{case.in_flight})"
    )
    assert line is not None and "timed out" in line, line
    # Not before the kernel's schedule (it was TCP giving up, nothing else)...
    assert took >= case.expected - 0.2
    # ...and not later than the schedule plus the bookkeeping.
    assert took <= bound


def test_device_reconnecting_over_a_half_open_session_replaces_it() -> None:
    reason = blackhole_unavailable()
    if reason is not None:
        pytest.skip(reason)
    imei = "356307042440002"
    key = KEYS.device(imei)
    with ExitStack() as stack:
        link = stack.enter_context(veth_link())
        # Keepalive far longer than the test: only the take-over can end it.
        gw = stack.enter_context(gateway(
            link.gateway, keepalive_idle_s="600", user_timeout_s="600",
        ))  # fmt: skip
        old, old_report = start_device(link, imei)
        stack.callback(release, old)
        assert wait_for(lambda: gw.hash(key).get("connected") == "1", 5)
        old_session = gw.hash(key)["session_id"]
        stack.enter_context(blackhole(link.devices, old_report["local_port"]))
        before = gw.metrics()
        assert len(gw.sockets()) == 1

        # The device comes back from a new source port with the same IMEI.
        new, new_report = start_device(link, imei, offset_ms=1)
        stack.callback(release, new)
        status = wait_for(
            lambda: (h := gw.hash(key)).get("session_id") != old_session and h, 5
        )
        after = gw.metrics()
        sockets = gw.sockets()
        log = gw.log()
        stored = gw.stored()

    replaced = metric(after, "trackgate_sessions_replaced_total") - metric(
        before, "trackgate_sessions_replaced_total"
    )
    print(
        f"take-over: old port {old_report['local_port']} -> new port "
        f"{new_report['local_port']}, sessions replaced +{replaced:g}"
    )
    assert new_report["local_port"] != old_report["local_port"]
    assert replaced == 1
    assert metric(after, "trackgate_sessions_closed_total", reason="replaced") == 1
    assert status["connected"] == "1"
    assert status["peer"] == f"{link.devices_ip}:{new_report['local_port']}"
    assert re.search(
        rf"session replaced imei={imei} peer={re.escape(link.devices_ip)}:"
        rf"{old_report['local_port']}\b",
        log,
    )
    # The half-open socket is gone on the gateway; only the new one is left.
    assert len(sockets) == 1
    assert f":{new_report['local_port']}" in sockets[0]
    # Both packets (one per connection) are stored, once each.
    assert sorted(v for k, v in stored.items() if k.startswith(imei)) == [1, 1]
