"""Settings of the ingest service (``TRACKGATE_*`` environment variables)."""

from __future__ import annotations

from pydantic import Field, model_validator

from trackgate.core.settings import CommonSettings
from trackgate.core.store import DEFAULT_DEDUP_TTL_S, DEFAULT_DEDUP_WINDOW
from trackgate.protocol import DEFAULT_MAX_PACKET_SIZE


class IngestSettings(CommonSettings):
    """Everything ``trackgate ingest`` can be told."""

    host: str = Field("0.0.0.0", description="Address of the tracker port.")
    port: int = Field(5027, ge=1, le=65535, description="Tracker port, TCP and UDP.")
    udp: bool = Field(True, description="Serve UDP datagrams on the same port.")
    admin_host: str = Field("0.0.0.0", description="Address of the admin HTTP port.")
    admin_port: int = Field(
        9464, ge=0, le=65535, description="/metrics, /healthz, /readyz; 0 = off."
    )
    workers: int = Field(0, ge=0, le=256, description="Worker processes; 0 = CPUs.")
    backlog: int = Field(
        0, ge=0, description="listen() backlog; 0 = net.core.somaxconn, followed."
    )
    max_packet_size: int = Field(
        DEFAULT_MAX_PACKET_SIZE,
        ge=64,
        le=1 << 20,
        description="Largest frame accepted; a longer length field closes the link.",
    )
    max_connections: int = Field(
        50_000, ge=1, description="Open TCP connections per worker."
    )
    max_connections_per_ip: int = Field(
        2_000,
        ge=1,
        description="Per source address and worker; carriers' NAT puts many "
        "devices behind one address, so keep it generous.",
    )
    handshake_timeout_s: float = Field(
        15.0, gt=0, description="Close a connection that sent no IMEI by then."
    )
    idle_timeout_s: float = Field(
        1800.0,
        gt=0,
        description="Close a session silent this long; above the devices' open "
        "link timeout and keep-alive period.",
    )
    keepalive_idle_s: int = Field(60, ge=1, description="TCP_KEEPIDLE")
    keepalive_interval_s: int = Field(15, ge=1, description="TCP_KEEPINTVL")
    keepalive_count: int = Field(4, ge=1, description="TCP_KEEPCNT")
    user_timeout_s: int = Field(
        0,
        ge=0,
        description="TCP_USER_TIMEOUT in s; 0 = idle + interval x count, so one "
        "bound covers idle links and unacknowledged data alike.",
    )
    store_timeout_s: float = Field(
        20.0,
        gt=0,
        description="How long a packet waits for Redis before the link is closed "
        "unACKed (the device resends it).",
    )
    drain_seconds: float = Field(
        20.0, ge=0, description="Grace period on SIGTERM before sessions are cut."
    )
    worker_hang_timeout_s: float = Field(
        10.0,
        ge=1,
        le=600,
        description="A worker whose event loop has not turned for this long is "
        "hung: /healthz fails (far above the longest pause seen under load, "
        "about 0.5 s).",
    )
    worker_hang_restart: bool = Field(
        True,
        description="The supervisor kills a hung worker (after a stack dump to "
        "the log) and starts it again; false leaves it to the liveness probe.",
    )
    heartbeat_s: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="How often a worker renews its alive key in Redis and marks "
        "the devices of gone workers disconnected.",
    )
    heartbeat_ttl_s: float = Field(
        45.0,
        gt=0,
        le=86400,
        description="How long a worker's alive key outlives its last renewal: "
        "a worker silent for longer is taken for gone.",
    )
    burst_threshold_s: int = Field(
        600,
        ge=1,
        description="A reconnect followed by records older than this "
        "is counted as a burst.",
    )
    dedup_window: int = Field(
        DEFAULT_DEDUP_WINDOW,
        ge=255,
        le=65536,
        description="Record digests remembered per device to recognise resends "
        "(at least 255, the most records a packet holds).",
    )
    dedup_ttl_s: int = Field(
        DEFAULT_DEDUP_TTL_S,
        ge=60,
        description="A silent device's dedup window expires after this.",
    )
    retention: str = Field(
        "age",
        pattern="^(age|length|none)$",
        description="How streams are trimmed: by age, by length, or never.",
    )
    retention_age_s: int = Field(
        7 * 86400, ge=60, description="Age retention: entries older than this go."
    )
    retention_length: int = Field(
        10_000_000, ge=1000, description="Length retention: entries kept per shard."
    )
    wait_aof: str = Field(
        "",
        pattern=r"^(|\d+,\d+,\d+)$",
        description="'numlocal,numreplicas,timeout_ms': WAITAOF before ACKing.",
    )
    write_batch: int = Field(
        256, ge=1, le=10_000, description="Packets per Redis write"
    )
    command_codec14: bool = Field(
        False, description="Send queued commands as Codec 14 (IMEI-checked)."
    )
    command_response_timeout_s: float = Field(
        30.0, gt=0, description="Wait this long for a device's command answer."
    )
    command_retry_delay_s: float = Field(
        10.0, ge=0, description="Pause before a command's next attempt."
    )
    otlp_endpoint: str = Field("", description="OTLP/HTTP traces endpoint; empty = off")
    trace_ratio: float = Field(
        0.01, ge=0, le=1, description="Share of packets traced when OTLP is on."
    )

    @model_validator(mode="after")
    def _heartbeat_outlives_its_period(self) -> IngestSettings:
        if self.heartbeat_ttl_s <= 2 * self.heartbeat_s:
            raise ValueError(
                "TRACKGATE_HEARTBEAT_TTL_S must exceed twice TRACKGATE_HEARTBEAT_S "
                f"(got {self.heartbeat_ttl_s} and {self.heartbeat_s}): a live "
                "worker would be taken for gone"
            )
        return self

    def wait_aof_args(self) -> tuple[int, int, int] | None:
        if not self.wait_aof:
            return None
        local, replicas, timeout = (int(v) for v in self.wait_aof.split(","))
        return local, replicas, timeout
