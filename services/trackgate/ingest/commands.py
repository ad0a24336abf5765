"""Delivering queued commands to devices over their live TCP sessions.

The ingest session calls a :class:`CommandCourier` at the moments that
matter: the IMEI was accepted (``session_started``), an AVL packet was
ACKed (``packet_acked``), a Codec 12/14 answer arrived
(``response_received``), a ``{"type": "command"}`` event named a device
this worker holds (``wake``), the session ended (``session_ended``).

Rules it keeps:

- one command in flight per session; the device's queue is served in
  order, the next command goes out when the previous one is settled;
- a command is claimed, answered or failed only through the atomic state
  changes of :class:`trackgate.core.commands.CommandStore`, so two
  instances racing on one device cannot both send it, and an answered
  command is never sent again;
- no answer within ``response_timeout`` or a session that ends with the
  command in flight costs one attempt; the command goes back to the head of
  the queue and is sent again ``retry_delay`` later (or at the next packet
  or reconnect) until ``max_attempts``, then it is ``failed``;
- a Codec 14 nACK (type 0x11) fails the command at once with reason
  "imei mismatch": sending it again cannot help;
- a command whose expiry passed before it could be sent ends ``expired``.

Nothing here is the source of truth: what is in flight is remembered per
session only to time it out and to match the answer; after a restart or on
another pod the command hash in Redis says everything. A command left
``sent`` by a pod that died counts as a lost attempt when the device's
next session claims it.

Redis failures are logged and swallowed: the session carries on with its
records, and the command is picked up again at the next trigger.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from redis.exceptions import RedisError

from trackgate.core.commands import (
    BUSY,
    DEFAULT_QUEUE_MAX,
    DEFAULT_RETENTION_S,
    CommandStore,
)
from trackgate.core.keys import Keys
from trackgate.core.logs import LogLimiter
from trackgate.core.redisconn import AsyncClient
from trackgate.protocol import (
    CODEC_12,
    CODEC_14,
    NACK_TYPE,
    RESPONSE_TYPE,
    GprsMessage,
    LocalProtocolError,
    encode_command,
)

log = logging.getLogger("trackgate.ingest.commands")

#: Seconds after which ``packet_acked`` looks at the queue again even if no
#: wake-up event arrived: pub/sub is fire-and-forget, so a lost event delays
#: a command by at most this long for a device that keeps sending.
DEFAULT_RECHECK_S = 60.0

#: Seconds ``close`` waits for state changes still being written to Redis.
CLOSE_TIMEOUT_S = 5.0


class CommandSession(Protocol):
    """What the courier needs from an ingest TCP session."""

    imei: str
    session_id: str
    peer: str

    def send(self, data: bytes) -> None: ...

    @property
    def closed(self) -> bool: ...


@dataclass(slots=True)
class CourierStats:
    """Counters for the ingest service's metrics."""

    sent: int = 0
    answered: int = 0
    attempts_failed: int = 0
    failed: int = 0
    unsolicited: int = 0
    redis_errors: int = 0


@dataclass(slots=True)
class _Flight:
    command_id: str
    codec: int
    attempt: int
    sent_at: float
    timer: asyncio.TimerHandle


class CommandCourier:
    """Sends a device's queued commands over its session; see the module doc."""

    def __init__(
        self,
        redis: AsyncClient,
        keys: Keys,
        *,
        codec14: bool = False,
        response_timeout: float = 30.0,
        retry_delay: float = 10.0,
        recheck_interval: float = DEFAULT_RECHECK_S,
        retention_s: int = DEFAULT_RETENTION_S,
        pod: str = "",
    ) -> None:
        self.store = CommandStore(redis, keys, retention_s=retention_s)
        self.codec14 = codec14
        self.response_timeout = response_timeout
        self.retry_delay = retry_delay
        self.recheck_interval = recheck_interval
        self.pod = pod
        self.stats = CourierStats()
        self._sessions: dict[str, CommandSession] = {}
        self._flights: dict[str, _Flight] = {}
        # A command whose answer timed out on a session: a late answer on
        # that session still settles it.
        self._timed_out: dict[str, str] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._checked_at: dict[str, float] = {}
        self._retries: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        # A device that keeps sending answers nobody asked for is logged a
        # few times a minute, and counted every time.
        self._limiter = LogLimiter()

    # Hooks called by the ingest session ----------------------------------

    async def session_started(self, session: CommandSession) -> None:
        """The device's IMEI was accepted: send what waits for it, in order."""
        self._sessions[session.imei] = session
        await self._deliver(session)

    def due(self, session: CommandSession) -> bool:
        """Whether the queue of ``session``'s device should be looked at again."""
        checked = self._checked_at.get(session.session_id)
        return checked is None or time.monotonic() - checked >= self.recheck_interval

    async def packet_acked(self, session: CommandSession) -> None:
        """An AVL packet was ACKed: a good moment for the next command."""
        if self.due(session):
            await self._deliver(session)

    async def wake(self, imei: str) -> None:
        """A command was queued for ``imei``; deliver it if we hold its session."""
        session = self._sessions.get(imei)
        if session is None:
            return
        self._checked_at.pop(session.session_id, None)
        await self._deliver(session)

    async def response_received(
        self, session: CommandSession, message: GprsMessage
    ) -> None:
        """The device answered (Codec 12/14 type 6) or refused (Codec 14 nACK)."""
        nack = message.codec == CODEC_14 and message.type == NACK_TYPE
        answer = message.codec in (CODEC_12, CODEC_14) and message.type == RESPONSE_TYPE
        if not (nack or answer):
            log.debug(
                "imei=%s peer=%s codec %d type %d message is not a command answer",
                session.imei, session.peer, message.codec, message.type,
            )  # fmt: skip
            return

        flight = self._flights.pop(session.session_id, None)
        if flight is not None:
            flight.timer.cancel()
            command_id = flight.command_id
        else:
            command_id = self._timed_out.pop(session.session_id, "")
        if not command_id:
            self.stats.unsolicited += 1
            allowed, suppressed = self._limiter.allow(f"unsolicited:{session.imei}")
            if allowed:
                log.warning(
                    "imei=%s peer=%s answer with no command in flight (%d bytes) "
                    "suppressed_since=%d",
                    session.imei, session.peer, len(message.payload), suppressed,
                )  # fmt: skip
            return

        try:
            if nack:
                outcome = await self.store.attempt_failed(
                    session.imei, command_id, session.session_id, "imei mismatch",
                    final=True,
                )  # fmt: skip
            else:
                outcome = await self.store.answered(
                    session.imei, command_id, session.session_id, message.payload
                )
        except RedisError as exc:
            self._redis_failed(session, "record the answer", exc)
            return
        if outcome == "answered":
            self.stats.answered += 1
        elif outcome == "failed":
            self.stats.failed += 1
        log.info(
            "imei=%s peer=%s command %s %s", session.imei, session.peer, command_id,
            outcome if not nack else "refused: imei mismatch",
        )  # fmt: skip
        self._checked_at.pop(session.session_id, None)
        await self._deliver(session)

    def session_ended(self, session: CommandSession) -> None:
        """The session closed; a command in flight lost its attempt."""
        if self._sessions.get(session.imei) is session:
            del self._sessions[session.imei]
        sid = session.session_id
        self._timed_out.pop(sid, None)
        self._checked_at.pop(sid, None)
        self._locks.pop(sid, None)
        retry = self._retries.pop(sid, None)
        if retry is not None:
            retry.cancel()
        flight = self._flights.pop(sid, None)
        if flight is None:
            return
        flight.timer.cancel()
        self._spawn(
            self._fail_attempt(
                session, flight.command_id, "session ended before an answer"
            )
        )

    async def close(self) -> None:
        """Stop timers and wait (briefly) for state changes still in progress."""
        self._closed = True
        for flight in self._flights.values():
            flight.timer.cancel()
        for retry in self._retries.values():
            retry.cancel()
        self._retries.clear()
        if self._tasks:
            _done, pending = await asyncio.wait(
                list(self._tasks), timeout=CLOSE_TIMEOUT_S
            )
            for task in pending:
                task.cancel()
            if pending:
                log.warning("%d command updates cancelled at shutdown", len(pending))

    # Internals ------------------------------------------------------------

    async def _deliver(self, session: CommandSession) -> None:
        sid = session.session_id
        if self._closed or session.closed or sid in self._flights:
            return
        lock = self._locks.setdefault(sid, asyncio.Lock())
        async with lock:
            # Each pass settles one command or sends one: the queue bound
            # bounds the loop.
            for _ in range(DEFAULT_QUEUE_MAX):
                if self._closed or session.closed or sid in self._flights:
                    return
                if not await self._send_next(session):
                    return

    async def _send_next(self, session: CommandSession) -> bool:
        """Claim and send the head of the queue; True if another may follow."""
        sid = session.session_id
        try:
            claim = await self.store.claim_next(
                session.imei, sid,
                f"sent on session {sid} (pod {self.pod or '?'}, peer {session.peer})",
            )  # fmt: skip
        except RedisError as exc:
            self._redis_failed(session, "claim a command", exc)
            return False
        if claim == BUSY:
            # Another session of this device still holds the command; check
            # again at the next packet, when this session is the known owner.
            return False
        self._checked_at[sid] = time.monotonic()
        if claim is None:
            return False

        codec = CODEC_14 if self.codec14 or claim.codec == CODEC_14 else CODEC_12
        try:
            frame = encode_command(
                claim.payload, codec=codec,
                imei=session.imei if codec == CODEC_14 else None,
            )  # fmt: skip
        except LocalProtocolError as exc:
            log.warning("imei=%s command %s cannot be encoded: %s",
                        session.imei, claim.command_id, exc)  # fmt: skip
            await self._record_failure(session, claim.command_id, str(exc), final=True)
            return True
        if session.closed:
            await self._record_failure(
                session, claim.command_id, "session closed before sending"
            )
            return False

        session.send(frame)
        self.stats.sent += 1
        self._timed_out.pop(sid, None)
        timer = asyncio.get_running_loop().call_later(
            self.response_timeout, self._on_timeout, session, claim.command_id
        )
        self._flights[sid] = _Flight(
            claim.command_id, codec, claim.attempt, time.monotonic(), timer
        )
        log.info(
            "imei=%s peer=%s command %s sent, codec %d, attempt %d/%d",
            session.imei, session.peer, claim.command_id, codec, claim.attempt,
            claim.max_attempts,
        )  # fmt: skip
        return False

    def _on_timeout(self, session: CommandSession, command_id: str) -> None:
        flight = self._flights.get(session.session_id)
        if flight is None or flight.command_id != command_id:
            return
        del self._flights[session.session_id]
        self._timed_out[session.session_id] = command_id
        reason = f"no answer within {self.response_timeout:g} s"
        self._spawn(self._fail_attempt(session, command_id, reason, retry=True))

    async def _fail_attempt(
        self,
        session: CommandSession,
        command_id: str,
        reason: str,
        *,
        retry: bool = False,
    ) -> None:
        """Count the failed attempt, then retry later or move the queue on."""
        outcome = await self._record_failure(session, command_id, reason)
        if outcome == "queued" and retry:
            self._schedule_retry(session)
        elif outcome == "failed" and not session.closed:
            self._checked_at.pop(session.session_id, None)
            await self._deliver(session)

    async def _record_failure(
        self, session: CommandSession, command_id: str, reason: str, *,
        final: bool = False,
    ) -> str | None:  # fmt: skip
        try:
            outcome = await self.store.attempt_failed(
                session.imei, command_id, session.session_id, reason, final=final
            )
        except RedisError as exc:
            self._redis_failed(session, "record a failed attempt", exc)
            return None
        if outcome not in ("queued", "failed"):
            return None  # settled meanwhile (answered, or taken by a newer session)
        self.stats.attempts_failed += 1
        if outcome == "failed":
            self.stats.failed += 1
        log.info("imei=%s peer=%s command %s attempt failed (%s): %s",
                 session.imei, session.peer, command_id, reason, outcome)  # fmt: skip
        return outcome

    def _schedule_retry(self, session: CommandSession) -> None:
        if self._closed or session.closed:
            return
        sid = session.session_id
        previous = self._retries.pop(sid, None)
        if previous is not None:
            previous.cancel()

        def fire() -> None:
            self._retries.pop(sid, None)
            self._checked_at.pop(sid, None)
            self._spawn(self._deliver(session))

        self._retries[sid] = asyncio.get_running_loop().call_later(
            self.retry_delay, fire
        )

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _redis_failed(
        self, session: CommandSession, doing: str, exc: RedisError
    ) -> None:
        self.stats.redis_errors += 1
        log.warning(
            "imei=%s peer=%s could not %s: %s: %s",
            session.imei, session.peer, doing, type(exc).__name__, exc,
        )  # fmt: skip
