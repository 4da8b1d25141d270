"""Settings read once from the environment (and `.env`), validated before anything starts."""

from __future__ import annotations

import enum
from functools import cached_property
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from state_manager.messages.media_urls import DEFAULT_MEDIA_URL_HOSTS, MediaUrlPolicy

DEFAULT_DATA_DIR = Path("./data")


class AuthMode(enum.StrEnum):
    REQUIRED = "required"
    DISABLED = "disabled"


class LogFormat(enum.StrEnum):
    JSON = "json"
    CONSOLE = "console"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    database_url: str | None = Field(
        default=None,
        description="postgresql+asyncpg://… or sqlite+aiosqlite:///…; unset = the embedded SQLite file.",
    )
    redis_url: str | None = Field(default=None, description="redis://…; unset = in-process cache.")
    rabbitmq_url: str | None = Field(default=None, description="amqp://…; unset = no queue consumers.")
    host: str = "127.0.0.1"
    port: int = Field(default=3005, ge=1, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    auth_mode: AuthMode = AuthMode.REQUIRED
    log_level: str = "INFO"
    log_format: LogFormat = LogFormat.JSON
    data_dir: Path = DEFAULT_DATA_DIR
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    db_pool_size: int = Field(default=20, ge=1, le=500)
    db_max_overflow: int = Field(default=0, ge=0, le=500)
    db_pool_timeout_seconds: float = Field(
        default=10.0, gt=0, le=300, description="How long a request waits for a free connection before a 503"
    )
    api_key_cache_seconds: float = Field(default=30.0, ge=0)
    # Rate limits (docs/operations.md, "Rate limits"): token buckets per API key and per client address.
    rate_limit_enabled: bool = Field(default=True, description="false: no request is ever refused with 429")
    rate_limit_per_second: float = Field(
        default=10_000.0,
        ge=0,
        le=10_000_000,
        description="Requests a second per API key, over all instances, unless the key has its own; 0 = none",
    )
    rate_limit_burst: int = Field(
        default=20_000, ge=1, le=100_000_000, description="Requests a key may send at once above its rate"
    )
    rate_limit_auth_failures_per_second: float = Field(
        default=10.0,
        ge=0,
        le=1_000_000,
        description="Failed authentications a second per client address; 0 = not limited",
    )
    rate_limit_auth_failures_burst: int = Field(default=100, ge=1, le=10_000_000)
    rate_limit_sync_seconds: float = Field(
        default=0.1, gt=0, le=10, description="How often each process shares its counts through Redis"
    )
    # The lookup cache (docs/design.md, "Lookup cache"): an in-process LRU in front of Redis.
    cache_local_seconds: float = Field(
        default=30.0,
        ge=0,
        le=3600,
        description="How long a process keeps a lookup (writes drop it at once); 0 = no local tier.",
    )
    cache_local_max_entries: int = Field(default=20_000, ge=0, le=10_000_000)
    # 16 MiB as the tier counts them (its whole cost in the process): issue 8 gives a worker 150 MB in all.
    cache_local_max_bytes: int = Field(default=16 * 1024 * 1024, ge=0, le=16 * 1024**3)
    cache_shared_seconds: float = Field(
        default=300.0, ge=0, le=86_400, description="How long Redis keeps a lookup; 0 = no shared tier."
    )
    cache_timeout_seconds: float = Field(
        default=0.1, gt=0, le=10, description="A Redis call slower than this counts as a failure."
    )
    cache_breaker_failures: int = Field(
        default=3, ge=1, le=1000, description="Failures in a row that open the circuit to Redis."
    )
    cache_breaker_seconds: float = Field(
        default=2.0, gt=0, le=600, description="How long an open circuit skips Redis before one trial call."
    )
    cache_warm_limit: int = Field(
        default=1000, ge=0, le=1_000_000, description="Open conversations warmed at start (0 = none)."
    )
    cache_warm_hours: float = Field(
        default=24.0, gt=0, le=24 * 365, description="Warm conversations active within this many hours."
    )
    # Events (docs/design.md, "Events"): relay, hub and WebSocket subscriptions.
    events_sweep_seconds: float = Field(
        default=5.0, gt=0, le=3600, description="How often every tenant is checked for events left unrelayed"
    )
    events_catchup_seconds: float = Field(
        default=1.0, gt=0, le=60, description="How often a process compares its feeds with the events table"
    )
    events_ws_backlog: int = Field(
        default=1000, ge=1, le=1_000_000, description="Events a WebSocket may fall behind before it is closed"
    )
    events_publish_timeout_seconds: float = Field(default=1.0, gt=0, le=60)
    ws_compression: bool = Field(
        default=False, description="permessage-deflate on WebSockets (saves bandwidth, costs CPU per frame)"
    )
    events_stream_maxlen: int = Field(
        default=100_000,
        ge=1,
        le=100_000_000,
        description="About how many events each tenant's Redis stream keeps",
    )
    # Webhook subscriptions (docs/design.md, "Webhook subscriptions"): signed deliveries of events.
    webhook_timeout_seconds: float = Field(
        default=10.0, gt=0, le=120, description="How long one delivery attempt may take, connecting included"
    )
    webhook_max_attempts: int = Field(
        default=12, ge=1, le=100, description="Attempts before a delivery is dead (listed, retried by hand)"
    )
    webhook_retry_base_seconds: float = Field(
        default=10.0, gt=0, le=3600, description="Wait after the first failure; doubled after each"
    )
    webhook_retry_max_seconds: float = Field(default=3600.0, gt=0, le=86_400, description="Longest wait")
    webhook_poll_seconds: float = Field(
        default=1.0, gt=0, le=60, description="How often tenants with pending deliveries are looked at"
    )
    webhook_sweep_seconds: float = Field(
        default=10.0, gt=0, le=3600, description="How often every tenant is checked for pending deliveries"
    )
    webhook_concurrency: int = Field(
        default=16, ge=1, le=1000, description="Deliveries a process sends at the same time"
    )
    webhook_refuse_private_addresses: bool = Field(
        default=False,
        description="Refuse receivers on loopback, private, link-local or reserved addresses (SSRF guard)",
    )
    webhook_keep_delivered_days: float = Field(
        default=7.0, gt=0, le=3650, description="How long delivered deliveries stay in the delivery log"
    )
    # Scheduled jobs (docs/operations.md, "Scheduled jobs"): one instance at a time runs each, under a lease.
    jobs_enabled: bool = Field(
        default=True, description="Run the scheduled jobs (expiry, retention) from this process"
    )
    expiry_interval_seconds: float = Field(
        default=60.0, gt=0, le=86_400, description="How often inactive conversations are expired"
    )
    retention_interval_seconds: float = Field(
        default=3600.0, gt=0, le=7 * 86_400, description="How often each tenant's retention policy is applied"
    )
    job_lease_seconds: float = Field(
        default=120.0,
        ge=5,
        le=86_400,
        description="How long a job's holder may go silent before another instance takes the job over",
    )
    analytics_sweep_seconds: float = Field(
        default=60.0,
        ge=0,
        le=86_400,
        description="How often this process looks at every tenant's analytics for work another instance left "
        "(the tenants whose events it numbers are projected at once); 0: only when a report asks",
    )
    archive_dir: Path | None = Field(
        default=None, description="Where retention writes archive files; unset = DATA_DIR/archives"
    )
    default_tenant_id: str = Field(default="default", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    media_url_allowed_hosts: str = Field(
        default=",".join(DEFAULT_MEDIA_URL_HOSTS),
        description="Hosts media URLs may name, comma-separated, matched exactly (https only); * = any host",
    )

    # RabbitMQ, as the existing service names it (the same variables override the same queue names).
    rabbitmq_heartbeat: int = Field(default=60, ge=0, le=3600)
    rabbitmq_prefetch_count: int = Field(default=100, ge=1, le=10_000)
    rabbitmq_max_retries: int = Field(
        default=5, ge=0, le=100, description="Retries of a message that failed for a passing reason, then DLQ"
    )
    rabbitmq_retry_base_seconds: float = Field(default=0.5, gt=0, le=60)
    rabbitmq_retry_max_seconds: float = Field(default=30.0, gt=0, le=3600)
    queue_lock_timeout_seconds: float = Field(
        default=5.0,
        gt=0,
        le=600,
        description="How long queue work waits for a locked row before it is retried (PostgreSQL)",
    )
    rabbitmq_standby_retry_seconds: float = Field(
        default=5.0, gt=0, le=600, description="How often a standby instance asks to take over a queue"
    )
    outbox_sweep_seconds: float = Field(
        default=5.0, gt=0, le=3600, description="How often unsent queue output is looked for"
    )
    inbound_queue: str = Field(default="inbound-whatsapp-messages", min_length=1, max_length=255)
    status_queue: str = Field(default="whatsapp-status-updates", min_length=1, max_length=255)
    outbound_queue: str = Field(default="outbound-genesys-messages", min_length=1, max_length=255)
    genesys_status_queue: str = Field(default="genesys-status-updates", min_length=1, max_length=255)
    correlation_queue: str = Field(default="correlation-events", min_length=1, max_length=255)
    inbound_enriched_queue: str = Field(default="inbound.enriched", min_length=1, max_length=255)
    outbound_processed_queue: str = Field(default="outbound-processed", min_length=1, max_length=255)
    genesys_status_processed_queue: str = Field(
        default="genesys-status-processed", min_length=1, max_length=255
    )
    dlq_name: str = Field(default="state-manager-dlq", min_length=1, max_length=255)

    @field_validator("database_url")
    @classmethod
    def _known_database_scheme(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("postgresql+asyncpg://", "sqlite+aiosqlite://")):
            raise ValueError("must start with postgresql+asyncpg:// or sqlite+aiosqlite://")
        return value

    @field_validator("redis_url", "rabbitmq_url")
    @classmethod
    def _empty_is_unset(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("rabbitmq_url")
    @classmethod
    def _known_amqp_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("amqp://", "amqps://")):
            raise ValueError("must start with amqp:// or amqps://")
        return value

    @field_validator("redis_url")
    @classmethod
    def _known_redis_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("media_url_allowed_hosts")
    @classmethod
    def _media_hosts(cls, value: str) -> str:
        MediaUrlPolicy.parse(value)  # a wrong entry stops the start, named
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level

    @cached_property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'state-manager.db').as_posix()}"

    @property
    def is_embedded_database(self) -> bool:
        return self.effective_database_url.startswith("sqlite")

    @property
    def effective_archive_dir(self) -> Path:
        return self.archive_dir if self.archive_dir is not None else self.data_dir / "archives"

    @cached_property
    def media_url_policy(self) -> MediaUrlPolicy:
        return MediaUrlPolicy.parse(self.media_url_allowed_hosts)

    @property
    def admin_key_file(self) -> Path:
        return self.data_dir / "admin-key"
