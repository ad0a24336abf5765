"""Commands for devices: the model, its states and every Redis write to them.

A command is a hash ``cmd:{imei}:<id>``; the device's queue ``cmdq:{imei}``
lists the ids still to be delivered, oldest first, and ``cmdlog:{imei}``
indexes every command of the device by creation time. The API queues and
cancels (:meth:`CommandStore.enqueue`, :meth:`CommandStore.cancel`); the
ingest courier claims the head of the queue for a session and records the
outcome (:meth:`CommandStore.claim_next`, :meth:`CommandStore.answered`,
:meth:`CommandStore.attempt_failed`).

Every state change is one Lua script over the keys of one device (one hash
slot), checked against the state it expects, so two instances that race on
the same command cannot both win: a command is never sent again once it is
answered, and is cancelled only while queued. Each change is then announced
on the events channel as ``{"type": "command_state", ...}`` for live feeds;
the announcement only wakes readers, the hash is the truth.

This module does not talk to devices and does not decide when to retry:
that is the courier's job (``trackgate.ingest.commands``).
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from contextlib import aclosing
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from trackgate.core.keys import Keys
from trackgate.core.paging import ScoreCursor, as_text, newest_first
from trackgate.core.redisconn import AsyncClient

log = logging.getLogger("trackgate.commands")

#: Largest command payload accepted, in bytes. Devices take AVL packets of at
#: most 1280 bytes and nothing documents a larger buffer for commands;
#: 1024 keeps the whole Codec 12/14 frame (payload + 23 bytes) under that.
COMMAND_MAX_BYTES = 1024

#: Upper bound of ``max_attempts``: each attempt adds history entries, and a
#: device that did not answer ten times will not answer the eleventh.
MAX_ATTEMPTS_LIMIT = 10

DEFAULT_MAX_ATTEMPTS = 3

#: How long finished commands (and idempotency keys) stay readable.
DEFAULT_RETENTION_S = 30 * 24 * 3600

#: Commands a device may have waiting at once; a device that is offline for
#: weeks should not collect an unbounded queue.
DEFAULT_QUEUE_MAX = 100


class CommandState(StrEnum):
    QUEUED = "queued"
    SENT = "sent"
    ANSWERED = "answered"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


FINAL_STATES = frozenset(
    {CommandState.ANSWERED, CommandState.FAILED, CommandState.EXPIRED,
     CommandState.CANCELLED}
)  # fmt: skip


class CommandError(Exception):
    """Base of the errors of the command store."""


class UnknownCommand(CommandError):
    """No command with that id for that device (or it has been retired)."""


class CommandStateConflict(CommandError):
    """The command is not in a state that allows the change."""

    def __init__(self, state: str, wanted: str) -> None:
        super().__init__(f"command is {state}; {wanted} needs it queued")
        self.state = state


class CommandRateLimited(CommandError):
    """The device's command window is full."""

    def __init__(self, retry_after_ms: int) -> None:
        super().__init__(
            f"too many commands for this device; retry in {retry_after_ms} ms"
        )
        self.retry_after_ms = retry_after_ms


class CommandQueueFull(CommandError):
    """The device already has the maximum number of commands waiting."""


class IdempotencyConflict(CommandError):
    """An idempotency key was reused for a different command."""

    def __init__(self, existing: Command) -> None:
        super().__init__("idempotency key already used for a different command")
        self.existing = existing


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    state: str
    at: int
    detail: str
    attempt: int | None = None
    session_id: str | None = None


@dataclass(frozen=True, slots=True)
class Command:
    """One command as stored; see docs/redis-contract.md for the fields."""

    id: str
    imei: str
    codec: int
    state: CommandState
    created_at: int
    updated_at: int
    attempts: int
    max_attempts: int
    text: str | None = None
    payload_hex: str | None = None
    expires_at: int | None = None
    idempotency_key: str | None = None
    session_id: str | None = None
    sent_at: int | None = None
    answered_at: int | None = None
    response: str | None = None
    response_hex: str | None = None
    reason: str | None = None
    history: list[HistoryEntry] = field(default_factory=list)

    @property
    def payload(self) -> bytes:
        """The bytes to put in the Codec 12/14 message."""
        if self.payload_hex is not None:
            return bytes.fromhex(self.payload_hex)
        return (self.text or "").encode("ascii")

    @classmethod
    def from_hash(cls, raw: dict[Any, Any]) -> Command:
        values = {as_text(k): as_text(v) for k, v in raw.items()}

        def opt_int(name: str) -> int | None:
            value = values.get(name)
            return int(value) if value else None

        history = [
            HistoryEntry(
                state=str(item["state"]),
                at=int(item["at"]),
                detail=str(item.get("detail", "")),
                attempt=item.get("attempt"),
                session_id=item.get("session_id"),
            )
            for item in json.loads(values.get("history") or "[]")
        ]
        return cls(
            id=values["id"] or "",
            imei=values["imei"] or "",
            codec=int(values.get("codec") or 12),
            state=CommandState(values.get("state") or "queued"),
            created_at=int(values.get("created_at") or 0),
            updated_at=int(values.get("updated_at") or values.get("created_at") or 0),
            attempts=int(values.get("attempts") or 0),
            max_attempts=int(values.get("max_attempts") or DEFAULT_MAX_ATTEMPTS),
            text=values.get("text"),
            payload_hex=values.get("payload_hex"),
            expires_at=opt_int("expires_at"),
            idempotency_key=values.get("idempotency_key") or None,
            session_id=values.get("session_id") or None,
            sent_at=opt_int("sent_at"),
            answered_at=opt_int("answered_at"),
            response=values.get("response"),
            response_hex=values.get("response_hex"),
            reason=values.get("reason") or None,
            history=history,
        )


@dataclass(frozen=True, slots=True)
class NewCommand:
    """What a client asks to send; exactly one of ``text`` and ``payload``."""

    imei: str
    text: str | None = None
    payload: bytes | None = None
    codec: int = 12
    expires_at: int | None = None
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    idempotency_key: str | None = None

    def __post_init__(self) -> None:
        if (self.text is None) == (self.payload is None):
            raise ValueError("give exactly one of text and payload")
        size = len(self.payload) if self.payload is not None else len(self.text or "")
        if not 0 < size <= COMMAND_MAX_BYTES:
            raise ValueError(f"command must be 1..{COMMAND_MAX_BYTES} bytes")
        if self.codec not in (12, 14):
            raise ValueError("codec must be 12 or 14")
        if not 1 <= self.max_attempts <= MAX_ATTEMPTS_LIMIT:
            raise ValueError(f"max_attempts must be 1..{MAX_ATTEMPTS_LIMIT}")

    def same_as(self, command: Command) -> bool:
        """Whether ``command`` is what this request would have created."""
        payload_hex = self.payload.hex() if self.payload is not None else None
        return (
            command.text == self.text
            and command.payload_hex == payload_hex
            and command.codec == self.codec
        )


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``limit`` commands per device per ``window_s``; 0 disables."""

    limit: int = 10
    window_s: float = 60.0


@dataclass(frozen=True, slots=True)
class Claim:
    """A command the caller now holds in flight on its session."""

    command_id: str
    imei: str
    codec: int
    payload: bytes
    attempt: int
    max_attempts: int


#: What :meth:`CommandStore.claim_next` returns while another session holds
#: the head of the queue.
BUSY: Literal["busy"] = "busy"


def now_ms() -> int:
    return int(time.time() * 1000)


# Shared by the state-change scripts: append one entry to the JSON history
# list without decoding it, and retire a command that reached a final state.
_PRELUDE = """
local function push_history(key, state, at, detail, attempt, session)
  local entry = {state = state, at = tonumber(at), detail = detail}
  if attempt then entry.attempt = tonumber(attempt) end
  if session and session ~= '' then entry.session_id = session end
  local item = cjson.encode(entry)
  local history = redis.call('HGET', key, 'history')
  if (not history) or history == '' or history == '[]' then
    history = '[' .. item .. ']'
  else
    history = string.sub(history, 1, -2) .. ',' .. item .. ']'
  end
  redis.call('HSET', key, 'history', history)
end
local function retire(cmd, queue, id, retention_ms)
  redis.call('LREM', queue, 0, id)
  if tonumber(retention_ms) > 0 then redis.call('PEXPIRE', cmd, retention_ms) end
end
"""

# KEYS: cmd, cmdq, cmdlog, idempotency, rate
# ARGV: has_idem, rate_limit, rate_window_ms, queue_max, idem_ttl_ms, id,
#       created_at, field, value, ...
_ENQUEUE = """
if ARGV[1] == '1' then
  local existing = redis.call('GET', KEYS[4])
  if existing then return {'existing', existing} end
end
local limit = tonumber(ARGV[2])
if limit > 0 then
  local used = redis.call('INCR', KEYS[5])
  if used == 1 then redis.call('PEXPIRE', KEYS[5], ARGV[3]) end
  if used > limit then
    return {'rate_limited', tostring(redis.call('PTTL', KEYS[5]))}
  end
end
if redis.call('LLEN', KEYS[2]) >= tonumber(ARGV[4]) then return {'queue_full', ''} end
redis.call('HSET', KEYS[1], unpack(ARGV, 8))
redis.call('RPUSH', KEYS[2], ARGV[6])
redis.call('ZADD', KEYS[3], ARGV[7], ARGV[6])
if ARGV[1] == '1' then redis.call('SET', KEYS[4], ARGV[6], 'PX', ARGV[5]) end
return {'created', ARGV[6]}
"""

# KEYS: cmd, cmdq   ARGV: id, now, retention_ms
_CANCEL = (
    _PRELUDE
    + """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 'missing' end
if state ~= 'queued' then return 'was:' .. state end
redis.call('HSET', KEYS[1], 'state', 'cancelled', 'updated_at', ARGV[2])
push_history(KEYS[1], 'cancelled', ARGV[2], 'cancelled by a client')
retire(KEYS[1], KEYS[2], ARGV[1], ARGV[3])
return 'cancelled'
"""
)

# KEYS: cmd, cmdq   ARGV: id, now, retention_ms
_EXPIRE = (
    _PRELUDE
    + """
local f = redis.call('HMGET', KEYS[1], 'state', 'expires_at')
if not f[1] then return 'missing' end
local expires = tonumber(f[2])
if f[1] ~= 'queued' or (not expires) or tonumber(ARGV[2]) < expires then
  return 'unchanged'
end
redis.call('HSET', KEYS[1], 'state', 'expired', 'updated_at', ARGV[2])
push_history(KEYS[1], 'expired', ARGV[2], 'not delivered before it expired')
retire(KEYS[1], KEYS[2], ARGV[1], ARGV[3])
return 'expired'
"""
)

# KEYS: cmd, cmdq, device   ARGV: id, session, now, retention_ms, detail
# The head of the queue goes out only if it is queued (or was sent by a
# session that is gone, which costs that attempt), not expired, and has
# attempts left. A session is gone when the device hash names another
# session as the device's current one, or names it and says disconnected;
# while it may still be alive the command is 'busy' there. Replies:
# {outcome, ...}; 'sent' carries what to send.
_CLAIM = (
    _PRELUDE
    + """
local id, session, now, retention = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if redis.call('LINDEX', KEYS[2], 0) ~= id then return {'moved'} end
local f = redis.call('HMGET', KEYS[1], 'state', 'attempts', 'max_attempts',
  'expires_at', 'session_id', 'codec', 'text', 'payload_hex')
local state = f[1]
if not state then
  redis.call('LREM', KEYS[2], 0, id)
  return {'missing'}
end
local attempts = tonumber(f[2]) or 0
local max_attempts = tonumber(f[3]) or 1
if state == 'sent' then
  if f[5] == session then return {'inflight'} end
  local owner = redis.call('HMGET', KEYS[3], 'session_id', 'connected')
  local gone = (owner[1] and owner[1] ~= f[5]) or
    (owner[1] == f[5] and owner[2] == '0')
  if not gone then return {'busy'} end
  local lost = 'session ' .. (f[5] or '?') .. ' ended before an answer'
  if attempts >= max_attempts then
    redis.call('HSET', KEYS[1], 'state', 'failed', 'updated_at', now,
      'reason', 'no answer after ' .. attempts .. ' attempts')
    push_history(KEYS[1], 'failed', now, lost .. '; no attempts left', attempts, f[5])
    retire(KEYS[1], KEYS[2], id, retention)
    return {'failed'}
  end
  push_history(KEYS[1], 'queued', now, lost .. '; will retry', attempts, f[5])
  state = 'queued'
elseif state ~= 'queued' then
  redis.call('LREM', KEYS[2], 0, id)
  return {'skipped', state}
end
local expires = tonumber(f[4])
if expires and tonumber(now) >= expires then
  redis.call('HSET', KEYS[1], 'state', 'expired', 'updated_at', now)
  push_history(KEYS[1], 'expired', now, 'not delivered before it expired')
  retire(KEYS[1], KEYS[2], id, retention)
  return {'expired'}
end
if attempts >= max_attempts then
  redis.call('HSET', KEYS[1], 'state', 'failed', 'updated_at', now,
    'reason', 'no answer after ' .. attempts .. ' attempts')
  push_history(KEYS[1], 'failed', now, 'no attempts left', attempts)
  retire(KEYS[1], KEYS[2], id, retention)
  return {'failed'}
end
attempts = attempts + 1
redis.call('HSET', KEYS[1], 'state', 'sent', 'attempts', attempts,
  'session_id', session, 'sent_at', now, 'updated_at', now)
push_history(KEYS[1], 'sent', now, ARGV[5], attempts, session)
return {'sent', tostring(attempts), tostring(max_attempts), f[6] or '12',
  f[7] or '', f[8] or ''}
"""
)

# KEYS: cmd, cmdq   ARGV: id, session, now, retention_ms, response, response_hex
# An answer is taken while the command is sent, or when it came back from
# this same session after a timeout (a late answer: the device did run it).
_ANSWERED = (
    _PRELUDE
    + """
local f = redis.call('HMGET', KEYS[1], 'state', 'session_id', 'attempts')
local late = f[1] == 'queued' and f[2] == ARGV[2]
if f[1] ~= 'sent' and not late then return 'unchanged' end
redis.call('HSET', KEYS[1], 'state', 'answered', 'response', ARGV[5],
  'answered_at', ARGV[3], 'updated_at', ARGV[3])
if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'response_hex', ARGV[6]) end
local detail = 'answered'
if late then detail = 'answered after the response timeout' end
push_history(KEYS[1], 'answered', ARGV[3], detail, f[3], ARGV[2])
retire(KEYS[1], KEYS[2], ARGV[1], ARGV[4])
return 'answered'
"""
)

# KEYS: cmd, cmdq   ARGV: id, session, now, retention_ms, reason, final
# Only the session that holds the attempt may fail it; the command goes back
# to the head of the queue while attempts are left, unless ``final``.
_ATTEMPT_FAILED = (
    _PRELUDE
    + """
local f = redis.call('HMGET', KEYS[1], 'state', 'session_id', 'attempts',
  'max_attempts')
if f[1] ~= 'sent' or f[2] ~= ARGV[2] then return 'unchanged' end
local attempts = tonumber(f[3]) or 0
if ARGV[6] == '1' or attempts >= (tonumber(f[4]) or 1) then
  redis.call('HSET', KEYS[1], 'state', 'failed', 'reason', ARGV[5],
    'updated_at', ARGV[3])
  push_history(KEYS[1], 'failed', ARGV[3], ARGV[5], attempts, ARGV[2])
  retire(KEYS[1], KEYS[2], ARGV[1], ARGV[4])
  return 'failed'
end
redis.call('HSET', KEYS[1], 'state', 'queued', 'updated_at', ARGV[3])
push_history(KEYS[1], 'queued', ARGV[3], ARGV[5] .. '; will retry', attempts, ARGV[2])
return 'queued'
"""
)


def new_command_id(created_at: int) -> str:
    """32 hex digits: creation time (ms, 12 digits) then 80 random bits.

    Ids sort by creation time to the millisecond; within one millisecond
    their order is random.
    """
    return f"{created_at:012x}{secrets.token_hex(10)}"


class CommandStore:
    """Reads and changes commands in Redis; one instance per process."""

    def __init__(
        self,
        client: AsyncClient,
        keys: Keys,
        *,
        retention_s: int = DEFAULT_RETENTION_S,
    ) -> None:
        self.client = client
        self.keys = keys
        self.retention_ms = retention_s * 1000
        self._enqueue = client.register_script(_ENQUEUE)
        self._cancel = client.register_script(_CANCEL)
        self._expire = client.register_script(_EXPIRE)
        self._claim = client.register_script(_CLAIM)
        self._answered = client.register_script(_ANSWERED)
        self._attempt_failed = client.register_script(_ATTEMPT_FAILED)

    def _pair(self, imei: str, command_id: str) -> list[str]:
        return [self.keys.command(imei, command_id), self.keys.command_queue(imei)]

    async def _announce(self, imei: str, command_id: str, state: str) -> None:
        message = {"type": "command_state", "imei": imei, "id": command_id,
                   "state": state}  # fmt: skip
        await self.client.publish(self.keys.events(), json.dumps(message))

    async def enqueue(
        self,
        new: NewCommand,
        *,
        rate: RateLimit = RateLimit(),
        queue_max: int = DEFAULT_QUEUE_MAX,
        at: int | None = None,
    ) -> tuple[Command, bool]:
        """Queue ``new``; returns the command and whether it was created now.

        With an idempotency key that was seen before, returns the command it
        created then (``created`` False) or raises
        :class:`IdempotencyConflict` if that one differs. Raises
        :class:`CommandRateLimited` and :class:`CommandQueueFull`.
        """
        created_at = now_ms() if at is None else at
        command_id = new_command_id(created_at)
        imei = new.imei
        fields: dict[str, str] = {
            "id": command_id,
            "imei": imei,
            "codec": str(new.codec),
            "state": CommandState.QUEUED.value,
            "created_at": str(created_at),
            "updated_at": str(created_at),
            "attempts": "0",
            "max_attempts": str(new.max_attempts),
            "history": json.dumps(
                [{"state": "queued", "at": created_at, "detail": "queued"}]
            ),
        }
        if new.payload is not None:
            fields["payload_hex"] = new.payload.hex()
        else:
            fields["text"] = new.text or ""
        if new.expires_at is not None:
            fields["expires_at"] = str(new.expires_at)
        if new.idempotency_key is not None:
            fields["idempotency_key"] = new.idempotency_key

        idem_key = self.keys.command_idempotency(imei, new.idempotency_key or "-")
        args: list[str] = [
            "1" if new.idempotency_key is not None else "0",
            str(rate.limit),
            str(max(1, int(rate.window_s * 1000))),
            str(queue_max),
            str(max(1, self.retention_ms)),
            command_id,
            str(created_at),
        ]
        for name, value in fields.items():
            args += (name, value)
        keys = [
            self.keys.command(imei, command_id),
            self.keys.command_queue(imei),
            self.keys.command_log(imei),
            idem_key,
            self.keys.command_rate(imei),
        ]
        outcome, value = (as_text(v) or "" for v in await self._enqueue(keys, args))

        if outcome == "existing":
            existing = await self.get(imei, value)
            if not new.same_as(existing):
                raise IdempotencyConflict(existing)
            return existing, False
        if outcome == "rate_limited":
            raise CommandRateLimited(max(0, int(value)))
        if outcome == "queue_full":
            raise CommandQueueFull(f"device already has {queue_max} commands waiting")
        log.info("command %s queued for imei=%s codec=%d", command_id, imei, new.codec)
        await self.client.publish(
            self.keys.events(), json.dumps({"type": "command", "imei": imei})
        )
        return Command.from_hash(fields), True

    async def get(self, imei: str, command_id: str) -> Command:
        """The command, with a queued one past its expiry marked expired."""
        raw = await self.client.hgetall(self.keys.command(imei, command_id))
        if not raw:
            raise UnknownCommand(f"no command {command_id} for device {imei}")
        command = Command.from_hash(raw)
        return await self._expire_if_due(command)

    async def _expire_if_due(self, command: Command) -> Command:
        if (
            command.state is not CommandState.QUEUED
            or command.expires_at is None
            or now_ms() < command.expires_at
        ):
            return command
        outcome = as_text(
            await self._expire(
                self._pair(command.imei, command.id),
                [command.id, str(now_ms()), str(self.retention_ms)],
            )
        )
        if outcome == "expired":
            await self._announce(command.imei, command.id, "expired")
        raw = await self.client.hgetall(self.keys.command(command.imei, command.id))
        return Command.from_hash(raw) if raw else command

    async def page(
        self, imei: str, *, after: ScoreCursor | None, limit: int
    ) -> tuple[list[Command], ScoreCursor | None]:
        """The device's commands, newest first, and the cursor of the next page."""
        log_key = self.keys.command_log(imei)
        positions: list[ScoreCursor] = []
        walk = newest_first(self.client, log_key, after=after)
        async with aclosing(walk):
            async for position in walk:
                positions.append(position)
                if len(positions) > limit:
                    break
        more = len(positions) > limit
        positions = positions[:limit]
        pipe = self.client.pipeline(transaction=False)
        for position in positions:
            pipe.hgetall(self.keys.command(imei, position.member))
        replies = await pipe.execute() if positions else []

        commands: list[Command] = []
        retired: list[str] = []
        for position, raw in zip(positions, replies, strict=True):
            if not raw:
                retired.append(position.member)
                continue
            commands.append(await self._expire_if_due(Command.from_hash(raw)))
        if retired:
            # Finished commands expire after the retention time; drop their
            # ids from the log as they are met.
            await self.client.zrem(log_key, *retired)
        next_cursor = positions[-1] if more and positions else None
        return commands, next_cursor

    async def cancel(self, imei: str, command_id: str) -> Command:
        """Cancel a queued command; raises :class:`CommandStateConflict`."""
        outcome = as_text(
            await self._cancel(
                self._pair(imei, command_id),
                [command_id, str(now_ms()), str(self.retention_ms)],
            )
        )
        if outcome == "missing":
            raise UnknownCommand(f"no command {command_id} for device {imei}")
        if outcome != "cancelled":
            raise CommandStateConflict((outcome or "").removeprefix("was:"), "cancel")
        log.info("command %s cancelled for imei=%s", command_id, imei)
        await self._announce(imei, command_id, "cancelled")
        return await self.get(imei, command_id)

    async def claim_next(
        self, imei: str, session_id: str, detail: str
    ) -> Claim | Literal["busy"] | None:
        """Take the head of the device's queue for ``session_id``.

        Commands met on the way that expired, ran out of attempts or were
        finished elsewhere leave the queue. Returns None when nothing can be
        sent now (empty queue, or the head is already in flight here), and
        :data:`BUSY` when the head is in flight on another session that may
        still be alive (the device hash does not name a newer one yet).
        """
        # Every pass removes one id from the queue or returns, so the queue
        # bound is also the bound of this loop.
        for _ in range(DEFAULT_QUEUE_MAX + 1):
            head = as_text(await self.client.lindex(self.keys.command_queue(imei), 0))
            if head is None:
                return None
            reply = [
                as_text(v) or ""
                for v in await self._claim(
                    [*self._pair(imei, head), self.keys.device(imei)],
                    [head, session_id, str(now_ms()), str(self.retention_ms), detail],
                )
            ]
            outcome = reply[0]
            if outcome == "sent":
                attempt, max_attempts, codec, body, payload_hex = reply[1:6]
                payload = bytes.fromhex(payload_hex) if payload_hex else body.encode()
                await self._announce(imei, head, "sent")
                return Claim(head, imei, int(codec), payload, int(attempt),
                             int(max_attempts))  # fmt: skip
            if outcome == "inflight":
                return None
            if outcome == "busy":
                return BUSY
            if outcome in ("expired", "failed"):
                log.info(
                    "command %s for imei=%s %s before delivery", head, imei, outcome
                )
                await self._announce(imei, head, outcome)
        return None

    async def answered(
        self, imei: str, command_id: str, session_id: str, response: bytes
    ) -> str:
        """Record the device's answer: ``answered``, or ``unchanged`` if the
        command was not waiting for one from this session (settled already)."""
        printable = all(32 <= b < 127 or b in (9, 10, 13) for b in response)
        outcome = as_text(
            await self._answered(
                self._pair(imei, command_id),
                [
                    command_id, session_id, str(now_ms()), str(self.retention_ms),
                    response.decode("ascii", "replace"),
                    "" if printable else response.hex(),
                ],
            )
        ) or "missing"  # fmt: skip
        if outcome == "answered":
            await self._announce(imei, command_id, outcome)
        return outcome

    async def attempt_failed(
        self,
        imei: str,
        command_id: str,
        session_id: str,
        reason: str,
        *,
        final: bool = False,
    ) -> str:
        """Count a failed attempt; returns ``queued`` (will retry) or ``failed``.

        ``unchanged`` means the attempt was no longer this session's to fail
        (answered meanwhile, or claimed by a newer session).
        """
        outcome = as_text(
            await self._attempt_failed(
                self._pair(imei, command_id),
                [command_id, session_id, str(now_ms()), str(self.retention_ms),
                 reason, "1" if final else "0"],
            )
        ) or "missing"  # fmt: skip
        if outcome in ("queued", "failed"):
            await self._announce(imei, command_id, outcome)
        return outcome
