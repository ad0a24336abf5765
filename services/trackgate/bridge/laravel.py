"""Laravel's Redis queue, as a producer sees it: key names, payloads, push.

``JobFactory`` writes the JSON payload of a string job (``Class@method``)
with every field Laravel's worker and its failure handling read, plus the
Redis driver's ``id`` and numeric ``attempts`` (the pop script adds 1 to it
and breaks without it). ``queue_key`` names the list the way Laravel does.
``LaravelQueue`` pushes a batch of payloads with one script call that
appends to ``queues:<name>`` and, as Laravel 5.8+ does, one token per job to
``queues:<name>:notify``. The bridge worker calls these; what goes into
``data`` is its business.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from redis.crc import key_slot
from redis.exceptions import RedisError

from trackgate.bridge.errors import BridgeConfigError, LaravelQueueError
from trackgate.core.redisconn import AsyncClient

# Append the payloads, then one notify token per payload, in one atomic step
# as Laravel's own push does for a single job.
_PUSH_LUA = """
local count = redis.call('rpush', KEYS[1], unpack(ARGV))
if KEYS[2] then
  local tokens = {}
  for i = 1, #ARGV do tokens[i] = '1' end
  redis.call('rpush', KEYS[2], unpack(tokens))
end
return count
"""


def has_hash_tag(key: str) -> bool:
    """True when ``key`` has a non-empty ``{...}`` part that Redis hashes."""
    start = key.find("{")
    end = key.find("}", start + 1) if start >= 0 else -1
    return end > start + 1


def queue_key(prefix: str, queue: str, *, hash_tag: bool) -> str:
    """The list Laravel pops, e.g. ``laravel_database_queues:default``.

    Laravel's Redis connection puts ``prefix`` in front of every key. On a
    cluster, recent Laravel versions wrap a queue name that has no hash tag
    in ``{}`` so that the queue and its ``:notify``, ``:reserved`` and
    ``:delayed`` keys share a slot; ``hash_tag`` does the same.
    """
    name = f"{{{queue}}}" if hash_tag and not has_hash_tag(queue) else queue
    return f"{prefix}queues:{name}"


class JobFactory:
    """Payloads of string jobs for one handler."""

    def __init__(
        self,
        job: str,
        *,
        max_tries: int | None = None,
        timeout: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.job = job
        self.display_name = job.split("@", 1)[0]
        self.max_tries = max_tries
        self.timeout = timeout
        self._clock = clock

    def payload(self, data: Any) -> str:
        """The JSON text Laravel's worker expects for one job with ``data``."""
        body = {
            "uuid": str(uuid.uuid4()),
            "displayName": self.display_name,
            "job": self.job,
            "maxTries": self.max_tries,
            "maxExceptions": None,
            "failOnTimeout": False,
            "backoff": None,
            "timeout": self.timeout,
            "retryUntil": None,
            "data": data,
            "createdAt": int(self._clock()),
            "delay": None,
            # Laravel uses 32 random alphanumerics; hex is a subset of those.
            "id": secrets.token_hex(16),
            "attempts": 0,
        }
        return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


class LaravelQueue:
    """Pushes payloads onto one Laravel Redis queue."""

    def __init__(
        self, client: AsyncClient, key: str, *, notify: bool, cluster: bool
    ) -> None:
        self.key = key
        self.notify_key = f"{key}:notify" if notify else None
        if cluster and key_slot(key.encode()) != key_slot(f"{key}:notify".encode()):
            raise BridgeConfigError(
                f"queue key {key!r} and its :notify list are in different cluster "
                "slots: put a hash tag in the queue name ({default}) or set "
                "TRACKGATE_LARAVEL_HASH_TAG=auto"
            )
        self._client = client
        self._push = client.register_script(_PUSH_LUA)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def push(self, payloads: Sequence[str]) -> int:
        """Append ``payloads`` in order; returns the queue length after.

        Raises ``LaravelQueueError`` when Redis refuses or cannot be reached.
        The script is atomic, but a reply lost on the way back hides a push
        that happened: retrying then pushes the same jobs twice.
        """
        keys = [self.key] if self.notify_key is None else [self.key, self.notify_key]
        try:
            return int(await self._push(keys=keys, args=list(payloads)))
        except RedisError as exc:
            raise LaravelQueueError(f"push to {self.key} failed: {exc}") from exc
