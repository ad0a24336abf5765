"""Request and response bodies, one family per entity.

Field names follow the data contract (docs/redis-contract.md): the decoder,
the stream entry and these bodies use one vocabulary. Times are
milliseconds since the epoch, as everywhere in trackgate.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from trackgate.core.commands import (
    COMMAND_MAX_BYTES,
    MAX_ATTEMPTS_LIMIT,
    Command,
    CommandState,
)
from trackgate.core.devices import DeviceStatus, Position, Record

#: Text commands: printable ASCII (space to tilde), as typed in an SMS.
PRINTABLE_ASCII = r"^[\x20-\x7e]+$"

#: Longest time a command may wait for its device: 30 days.
MAX_EXPIRY_S = 30 * 24 * 3600

#: Largest page a list call returns.
PAGE_MAX = 500


# Errors ----------------------------------------------------------------------


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable code (docs/api.md).")
    message: str = Field(description="What went wrong, for people.")
    details: Any = Field(None, description="Extra facts; shape depends on code.")


class ErrorBody(BaseModel):
    error: ErrorDetail


# Devices ---------------------------------------------------------------------


class PositionPublic(BaseModel):
    timestamp: int = Field(description="Device time of the position, ms.")
    latitude: float
    longitude: float
    altitude: int
    angle: int
    speed: int
    satellites: int

    @classmethod
    def of(cls, position: Position | None) -> PositionPublic | None:
        if position is None:
            return None
        return cls(
            timestamp=position.timestamp,
            latitude=position.latitude,
            longitude=position.longitude,
            altitude=position.altitude,
            angle=position.angle,
            speed=position.speed,
            satellites=position.satellites,
        )


class DevicePublic(BaseModel):
    imei: str
    connected: bool = Field(description="A TCP session is open now.")
    seen_at: int | None = Field(description="Last time anything arrived, ms.")
    session_id: str | None
    session_start: int | None = Field(description="Start of that session, ms.")
    pod: str | None
    worker: str | None
    peer: str | None = Field(description="ip:port of the device as seen here.")
    transport: str | None
    last_lag_ms: int | None = Field(
        description="received_at - timestamp of the newest record last packet."
    )
    records_received: int
    records_stored: int | None = Field(
        description="Records stored; 0 before the first one, null when the "
        "counters expired (a week after the device's last packet)."
    )
    duplicates: int | None = Field(
        description="Resent records recognised and not stored again; 0 when "
        "none, null when the counters expired (as records_stored)."
    )
    bursts_total: int
    position: PositionPublic | None = Field(
        description="Latest position by device time."
    )

    @classmethod
    def of(cls, status: DeviceStatus) -> DevicePublic:
        return cls(
            imei=status.imei,
            connected=status.connected,
            seen_at=status.seen_at,
            session_id=status.session_id,
            session_start=status.session_start,
            pod=status.pod,
            worker=status.worker,
            peer=status.peer,
            transport=status.transport,
            last_lag_ms=status.last_lag_ms,
            records_received=status.records_received,
            records_stored=status.records_stored,
            duplicates=status.duplicates,
            bursts_total=status.bursts_total,
            position=PositionPublic.of(status.position),
        )


class DevicesPublic(BaseModel):
    items: list[DevicePublic]
    next_cursor: str | None = Field(
        description="Pass as cursor for the next page; null at the end."
    )


# Records ---------------------------------------------------------------------


class RecordPublic(BaseModel):
    """One AVL record as stored; unknown stream fields are passed through."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(description="Stream entry id.")
    imei: str
    timestamp: int | None = None
    received_at: int | None = None
    priority: int | None = None
    longitude: float | None = None
    latitude: float | None = None
    altitude: int | None = None
    angle: int | None = None
    satellites: int | None = None
    speed: int | None = None
    event_id: int | None = None
    io: dict[str, Any] = Field(
        default_factory=dict,
        description="IO id -> unsigned int, or lower-case hex for NX values.",
    )
    codec: int | None = None
    generation_type: int | None = None
    transport: str | None = None

    @classmethod
    def of(cls, record: Record) -> RecordPublic:
        return cls.model_validate({**record.fields, "id": record.id})


class RecordsPublic(BaseModel):
    items: list[RecordPublic]
    next_before: str | None = Field(
        description="Pass as before for older records; null when the range is "
        "exhausted."
    )
    scanned: int = Field(description="Stream entries read to answer (the cost).")


# Commands --------------------------------------------------------------------


class _CommandOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    codec: Literal[12, 14] | None = Field(
        default=None, description="12, or 14 to address the device by IMEI."
    )
    expires_in_s: int | None = Field(
        default=None,
        ge=1,
        le=MAX_EXPIRY_S,
        description="Give up if not sent within this many seconds.",
    )
    max_attempts: int | None = Field(default=None, ge=1, le=MAX_ATTEMPTS_LIMIT)


class TextCommandCreate(_CommandOptions):
    """A text command, as typed in an SMS but without login and password."""

    text: str = Field(
        min_length=1,
        max_length=COMMAND_MAX_BYTES,
        pattern=PRINTABLE_ASCII,
        description="Printable ASCII, e.g. getinfo.",
        examples=["getinfo"],
    )


class BinaryCommandCreate(_CommandOptions):
    """A binary payload (a Modbus frame, serial pass-through data)."""

    payload_hex: str = Field(
        min_length=2,
        max_length=2 * COMMAND_MAX_BYTES,
        pattern=r"^(?:[0-9a-fA-F]{2})+$",
        description="The payload bytes as hex.",
        examples=["010300010015D5C5"],
    )


def _command_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "binary" if "payload_hex" in value and "text" not in value else "text"
    return "binary" if isinstance(value, BinaryCommandCreate) else "text"


#: A command to queue: exactly one of ``text`` and ``payload_hex``.
CommandCreate = Annotated[
    Annotated[TextCommandCreate, Tag("text")]
    | Annotated[BinaryCommandCreate, Tag("binary")],
    Discriminator(_command_kind),
]


class HistoryEntryPublic(BaseModel):
    state: str
    at: int
    detail: str
    attempt: int | None = None
    session_id: str | None = None


class CommandPublic(BaseModel):
    id: str
    imei: str
    codec: int
    state: CommandState
    text: str | None
    payload_hex: str | None
    created_at: int
    updated_at: int
    expires_at: int | None
    attempts: int
    max_attempts: int
    idempotency_key: str | None
    session_id: str | None = Field(description="Session of the last attempt.")
    sent_at: int | None
    answered_at: int | None
    response: str | None = Field(description="The device's answer, as text.")
    response_hex: str | None = Field(
        description="The answer's bytes in hex when they are not printable."
    )
    reason: str | None = Field(description="Why the command failed.")
    history: list[HistoryEntryPublic]

    @classmethod
    def of(cls, command: Command) -> CommandPublic:
        return cls(
            id=command.id,
            imei=command.imei,
            codec=command.codec,
            state=command.state,
            text=command.text,
            payload_hex=command.payload_hex,
            created_at=command.created_at,
            updated_at=command.updated_at,
            expires_at=command.expires_at,
            attempts=command.attempts,
            max_attempts=command.max_attempts,
            idempotency_key=command.idempotency_key,
            session_id=command.session_id,
            sent_at=command.sent_at,
            answered_at=command.answered_at,
            response=command.response,
            response_hex=command.response_hex,
            reason=command.reason,
            history=[
                HistoryEntryPublic(
                    state=entry.state,
                    at=entry.at,
                    detail=entry.detail,
                    attempt=entry.attempt,
                    session_id=entry.session_id,
                )
                for entry in command.history
            ],  # fmt: skip
        )


class CommandsPublic(BaseModel):
    items: list[CommandPublic]
    next_cursor: str | None


# Health ----------------------------------------------------------------------


class HealthPublic(BaseModel):
    status: Literal["ok", "ready"]
