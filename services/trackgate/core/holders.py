"""Which ingest workers are alive, and the devices of one that is gone.

Every worker keeps a key of its own alive (``alive:{pod/worker}``, a few
heartbeats long) and names itself in the ``holders`` set. A worker that is
killed restarts under the same name and releases its predecessor's devices
(:meth:`SessionStore.release_all`); a pod that vanishes for good (a node
lost, a scale-down that could not drain) never does. Any live worker sweeps
for holders whose key has expired and marks their devices disconnected, so
a device status says ``connected`` for at most the heartbeat TTL plus one
sweep after its gateway is gone (``TRACKGATE_HEARTBEAT_TTL_S`` and
``TRACKGATE_HEARTBEAT_S``).

A holder's set of devices is claimed by renaming it inside a script that
first checks the alive key (both share the holder's hash slot), so a worker
that comes back under the same name starts a new set that no sweeper
touches; each device is then released only while its hash still names the
gone holder and is connected.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from trackgate.core.keys import Keys
from trackgate.core.redisconn import AsyncClient
from trackgate.core.store import RELEASE_LUA

log = logging.getLogger("trackgate.holders")

#: How long an alive key outlives its last renewal (the worker's setting).
ALIVE_TTL_S = 45.0

#: A claimed holder set not released by then (its sweeper died) is retaken.
CLAIM_TTL_S = 60.0
RETAKE_AFTER_S = 30.0

# KEYS: alive, holder, claimed.  ARGV: claim TTL (ms), retake after (ms).
# Returns ALIVE, CLAIMED (the caller releases the claimed set), BUSY (another
# sweeper claimed it moments ago) or NOTHING (no set left to release).
CLAIM_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return -1
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('SUNIONSTORE', KEYS[3], KEYS[3], KEYS[2])
  redis.call('DEL', KEYS[2])
elseif redis.call('EXISTS', KEYS[3]) == 0 then
  return 0
elseif redis.call('PTTL', KEYS[3]) > tonumber(ARGV[1]) - tonumber(ARGV[2]) then
  return 2
end
redis.call('PEXPIRE', KEYS[3], ARGV[1])
return 1
"""
ALIVE, NOTHING, CLAIMED, BUSY = -1, 0, 1, 2

# KEYS: the device hash.  ARGV: session id.  Connected again only if the
# session is still the device's newest one.
RECLAIM_LUA = """
if redis.call('HGET', KEYS[1], 'session_id') == ARGV[1]
    and redis.call('HGET', KEYS[1], 'connected') == '0' then
  redis.call('HSET', KEYS[1], 'connected', '1')
  return 1
end
return 0
"""


def split_owner(owner: str) -> tuple[str, str]:
    """``pod/worker`` into its parts (the worker is the last segment)."""
    pod, _, worker = owner.rpartition("/")
    if not pod or not worker:
        raise ValueError(f"a holder is named pod/worker, got {owner!r}")
    return pod, worker


@dataclass
class Holders:
    """The alive key of one worker, and the sweep for gone ones."""

    client: AsyncClient
    keys: Keys
    owner: str
    ttl_s: float = ALIVE_TTL_S

    async def beat(self, now_ms: int) -> bool:
        """Say this worker is alive for another TTL.

        Returns False when its alive key had expired: a sweeper may have
        marked this worker's devices disconnected, and the worker announces
        its sessions again.
        """
        previous = await self.client.set(
            self.keys.alive(self.owner),
            str(now_ms),
            px=int(self.ttl_s * 1000),
            get=True,
        )
        await self.client.sadd(self.keys.holders(), self.owner)
        return previous is not None

    async def reclaim(self, imei: str, session_id: str) -> bool:
        """After a lapse: the session is this worker's again, unless the
        device has logged in since on another session."""
        await self.client.sadd(self.keys.holder(self.owner), imei)
        done = await self.client.eval(
            RECLAIM_LUA, 1, self.keys.device(imei), session_id
        )
        return bool(done)

    async def retire(self) -> None:
        """A worker that stops: once its holder set is gone (its devices
        released), no sweeper need take it for gone; with devices left in
        it, the next sweep releases them at once and forgets the worker."""
        await self.client.delete(self.keys.alive(self.owner))
        if not await self.client.exists(self.keys.holder(self.owner)):
            await self.client.srem(self.keys.holders(), self.owner)

    async def sweep(self, now_ms: int) -> dict[str, int]:
        """Release the devices of every holder whose alive key expired.

        Returns how many devices of each gone holder this sweep marked
        disconnected. Sweepers may run at once on many workers: a holder's
        devices are claimed by one of them.
        """
        gone: dict[str, int] = {}
        for raw in await self.client.smembers(self.keys.holders()):
            owner = raw.decode() if isinstance(raw, bytes) else str(raw)
            if owner == self.owner:
                continue
            try:
                pod, worker = split_owner(owner)
            except ValueError:
                await self.client.srem(self.keys.holders(), owner)
                continue
            claimed = self.keys.claimed(owner)
            state = await self.client.eval(
                CLAIM_LUA,
                3,
                self.keys.alive(owner),
                self.keys.holder(owner),
                claimed,
                str(int(CLAIM_TTL_S * 1000)),
                str(int(RETAKE_AFTER_S * 1000)),
            )
            if int(state) in (ALIVE, BUSY):
                continue
            if int(state) == CLAIMED:
                released = await _release_claimed(
                    self.client, self.keys, claimed, pod, worker, now_ms
                )
                gone[owner] = released
                log.warning(
                    "ingest worker %s is gone (its heartbeat expired): marked %d "
                    "devices disconnected",
                    owner,
                    released,
                )
            # Only now: a sweeper that fails above leaves it for the next sweep.
            await self.client.srem(self.keys.holders(), owner)
        return gone


async def _release_claimed(
    client: AsyncClient,
    keys: Keys,
    claimed: str,
    pod: str,
    worker: str,
    now_ms: int,
) -> int:
    released = 0
    members: Any = await client.smembers(claimed)
    for raw in members:
        imei = raw.decode() if isinstance(raw, bytes) else str(raw)
        released += int(
            await client.eval(
                RELEASE_LUA, 1, keys.device(imei), pod, worker, str(now_ms)
            )
        )
    await client.delete(claimed)
    return released
