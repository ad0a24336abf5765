"""A small run of bench/synstorm_netns.py: the silent SYN drop, then the fix.

Two namespaces, a veth pair and an nftables DNAT hop; a listener with
backlog 4 accepting 20 connections a second, then one with backlog 8192
accepting as fast as it can. About 15 seconds.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.diagnostics.netns import netns_unavailable

BENCH = Path(__file__).resolve().parents[2] / "bench" / "synstorm_netns.py"
DEVICES = 40

pytestmark = pytest.mark.netns


@pytest.fixture(scope="module")
def phases() -> dict[str, dict[str, Any]]:
    reason = netns_unavailable()
    if reason is None and shutil.which("nft") is None:
        reason = "needs nft for the DNAT hop (apt-get install nftables)"
    if reason is not None:
        pytest.skip(reason)
    process = subprocess.Popen(
        [
            sys.executable,
            str(BENCH),
            "--devices",
            str(DEVICES),
            "--small-backlog",
            "4",
            "--netcheck-seconds",
            "3",
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    namespaces = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=True
    ).stdout
    assert f"-{process.pid % 100000}" not in namespaces, "namespaces left behind"
    return {phase["phase"]: phase for phase in json.loads(out)}


def test_small_backlog_drops_syns_silently(phases: dict[str, dict[str, Any]]) -> None:
    small = phases["small-backlog"]

    # Devices waited for at least one SYN (or data) retransmission.
    assert small["slow_replies"] > 0
    assert small["reply_max_s"] >= 0.9
    assert small["listen_overflows"] > 0
    assert small["listen_drops"] >= small["listen_overflows"]


def test_netcheck_in_the_gateway_namespace_names_the_overflow(
    phases: dict[str, dict[str, Any]],
) -> None:
    small = phases["small-backlog"]

    assert small["netcheck_exit"] == 1
    assert small["netcheck_status"] == "critical"
    assert "accept_queue_overflow" in small["netcheck_codes"]
    assert "listener_backlog_low" in small["netcheck_codes"]
    # The DNAT hop put every device connection into conntrack.
    assert small["conntrack_count"] >= DEVICES


def test_big_backlog_and_fast_accept_have_no_slow_connects(
    phases: dict[str, dict[str, Any]],
) -> None:
    big = phases["big-backlog"]

    assert big["connected"] == DEVICES
    assert big["slow_connects"] == 0
    assert big["slow_replies"] == 0
    assert big["listen_overflows"] == 0
    assert big["netcheck_status"] == "ok"
    assert big["netcheck_exit"] == 0
