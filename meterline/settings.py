"""The server's settings: one pydantic-settings class, built by the app factory.

Values come from keyword arguments (the CLI's flags), then ``METERLINE_*``
environment variables, then defaults. Secrets (keys, tokens, passwords) have no
defaults and come only from the environment.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from meterline.errors import MeterlineError


class ServerSettings(BaseSettings):
    """Everything ``meterline serve`` needs; fields map to ``METERLINE_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="METERLINE_", extra="ignore")

    data_dir: Path = Path("meterline-data")
    """Embedded (chdb) data directory, used when ``clickhouse_url`` is unset."""
    clickhouse_url: str | None = None
    """A ClickHouse server, ``http(s)://user:pass@host:port/database``."""
    database: str | None = None
    """Database of meterline's tables (default ``meterline``)."""
    config: Path | None = None
    """The YAML configuration file (prices, plans, …)."""

    host: str = "127.0.0.1"
    otlp_http_port: int = Field(4318, ge=0, le=65535)
    otlp_grpc_port: int = Field(4317, ge=0, le=65535)
    api_port: int = Field(8080, ge=0, le=65535)
    clickhouse_http_port: int = Field(8123, ge=0, le=65535)

    admin_key: str | None = None
    """The admin key, or several separated by commas (to rotate one without downtime).
    When set, every ``/v1`` route requires ``Authorization: Bearer <key>`` (an admin key
    or a consumer key); unset, the API is open to anyone who reaches it (loopback only,
    unless ``allow_open_api``)."""
    allow_open_api: bool = False
    """Serve the API without an admin key on an address other than loopback."""
    budgets_redis_url: str | None = None
    """Share budget reservations with other aggregator replicas through this Redis
    (``redis://host:6379/0``; docs/budgets.md). Unset: this process's own ledger."""
    ingest_token: str | None = None
    """When set, OTLP requests require ``Authorization: Bearer <token>``."""
    clickhouse_http_password: str | None = None
    """Password of user ``meterline`` on :8123 (default: the admin key)."""
    clickhouse_http_writable: bool = False
    """Let the :8123 endpoint write (tests only; never the default)."""

    keep_all_spans: bool = False
    """Store every span, not only GenAI ones."""
    max_pending_spans: int = Field(200_000, gt=0)
    """Spans accepted but not yet written; beyond this the collector answers 503."""
    batch_max_spans: int = Field(50_000, gt=0)
    """Largest insert the writer makes from queued requests."""
    native_ingest: bool = True
    """Let the engine decode OTLP protobuf itself (embedded store only; a server store
    always uses the Python path). About 3× the Python path's throughput."""
    writer_linger_ms: float = Field(50.0, ge=0)
    """How long the writer waits for more requests before a small insert."""
    writer_batch_min_spans: int = Field(16_000, gt=0)
    """An insert of fewer spans waits up to the linger for more (each insert has a fixed
    cost of tens of milliseconds)."""
    writer_threads: int = Field(2, ge=1, le=16)
    """Inserts running at once (one engine insert is mostly single-threaded)."""
    fsync: bool = False
    """fsync each insert's parts (survives power loss; slower)."""
    ingest_stats_interval_s: float = Field(10.0, ge=0)
    """How often the writer's counters (spans written and rejected, the queue, the lag) are
    sampled into ``ingest_stats`` for the pipeline health dashboard; 0 turns it off."""
    grafana_datasource_uid: str = Field("meterline", pattern=r"^[A-Za-z0-9_-]{1,40}$")
    """The Grafana datasource uid the dashboards of ``/v1/grafana/dashboards`` default to
    (the provisioning file's and ``meterline grafana push``'s is ``meterline``)."""
    rating_interval_s: float = Field(5.0, ge=0)
    """How often the rating loop looks for usage or prices that changed and re-rates
    them into ``rated_usage`` (docs/rated-usage.md); 0 turns the loop off (API readers
    still rate what is stale before they read)."""

    @property
    def admin_keys(self) -> tuple[str, ...]:
        """The admin keys of ``admin_key`` (comma-separated, blanks around them dropped)."""
        return tuple(k.strip() for k in (self.admin_key or "").split(",") if k.strip())

    @model_validator(mode="after")
    def _distinct_ports(self) -> ServerSettings:
        ports = {
            "--otlp-http-port": self.otlp_http_port,
            "--otlp-grpc-port": self.otlp_grpc_port,
            "--api-port": self.api_port,
        }
        if not self.clickhouse_url:  # the ClickHouse-HTTP endpoint serves the embedded store
            ports["--clickhouse-http-port"] = self.clickhouse_http_port
        seen: dict[int, str] = {}
        for flag, port in ports.items():
            if port and port in seen:  # 0 (any free port) may repeat
                raise ValueError(
                    f"{seen[port]} and {flag} are both {port}: give each listener its own port"
                )
            seen[port] = flag
        return self


class SettingsError(MeterlineError, ValueError):
    """A flag or ``METERLINE_*`` variable has a value that is not allowed (one line)."""


def settings_from_flags(**given: object) -> ServerSettings:
    """Settings from the CLI flags that were given (not ``None``), then env, then defaults.

    Raises:
        SettingsError: naming the flag, or the environment variable, and the value.
    """
    flags = {k: v for k, v in given.items() if v is not None}
    try:
        return ServerSettings(**flags)  # type: ignore[arg-type]
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        name = str(error["loc"][0]) if error["loc"] else ""
        message = str(error["msg"]).removeprefix("Input ").removeprefix("Value error, ")
        if not name:  # the settings as a whole (two listeners on one port)
            raise SettingsError(message) from None
        if name in flags:
            where = f"--{name.replace('_', '-')} {flags[name]!r}"
        else:
            where = f"{ServerSettings.model_config['env_prefix']}{name.upper()}={error['input']!r}"
        raise SettingsError(f"{where}: {message[0].lower()}{message[1:]}") from None
