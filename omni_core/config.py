"""Configuration from the environment (and an optional ``.env`` that never overrides real variables).

Invalid values stop start-up with one line naming the variable (:class:`ConfigError`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

import msgspec


class ConfigError(Exception):
    """Raised with a one-line message naming the offending variable."""


class Settings(msgspec.Struct, kw_only=True, frozen=True):
    api_host: str = "0.0.0.0"
    api_port: int = 8882
    api_key: str | None = None
    sqlite_path: str = "./data/automagik-omni.db"
    #: PostgreSQL URL; when set, the hub uses PostgreSQL instead of SQLite (replicas may share it).
    database_url: str | None = None
    db_pool_size: int = 20
    #: FULL syncs the WAL on every commit (survives power loss); NORMAL only survives process crashes.
    sqlite_synchronous: str = "FULL"
    #: "process": SQLite writes run in a writer process of their own (off the hub's GIL);
    #: "thread": on a thread of the hub process (``:memory:`` databases always do).
    sqlite_writer: str = "process"
    base_url: str = "http://localhost:8882"
    evolution_api_base_url: str | None = None
    evolution_api_key: str | None = None
    evolution_webhook_url: str | None = None
    hive_enabled: bool = False
    hive_api_url: str | None = None
    hive_api_key: str | None = None
    hive_timeout_seconds: float = 30.0
    max_body_bytes: int = 1024 * 1024
    #: Outbound HTTP transport under the shared httpx client: "pooled" (omni_core.http_transport)
    #: or "httpx" (httpx's own, also used whenever a proxy is configured in the environment).
    http_transport: str = "pooled"
    #: Jobs running at once. A job holds its slot for the whole agent call, so this bounds how many
    #: agent calls are in flight; 100 is also the outbound pool's connections per host, so every
    #: worker can have its own connection. At 64 conversations against an instant agent, 50 workers
    #: were the bound (1,298 vs 1,576 replies/s with 100, alternating runs on a 2-core machine).
    workers: int = 100
    #: Most jobs of one tenant running at once; 0 means half of ``workers`` (at least 1).
    tenant_concurrency: int = 0
    retry_max_attempts: int = 8
    retry_base_seconds: float = 1.0
    retry_max_seconds: float = 300.0
    lease_seconds: float = 30.0
    poll_interval_seconds: float = 0.5
    #: Seconds between attempts of a tenant webhook delivery; one attempt more than entries.
    webhook_retry_schedule: tuple[float, ...] = (5, 30, 120, 600, 1800, 7200, 21600)
    webhook_timeout_seconds: float = 10.0
    #: A webhook failing for this long (and still failing) is disabled.
    webhook_disable_after_seconds: float = 5 * 24 * 3600
    #: How long the previous secret stays valid after a rotation.
    webhook_secret_overlap_seconds: float = 24 * 3600
    #: Allow webhook URLs that resolve to private, loopback or link-local addresses.
    webhook_allow_private: bool = False
    #: Record each message's pipeline stages (ENABLE_TRACING).
    tracing_enabled: bool = True
    #: Keep message text, numbers and addresses in traces and logs (TRACE_INCLUDE_SENSITIVE).
    trace_include_sensitive: bool = False
    trace_retention_days: float = 30.0
    purge_interval_seconds: float = 3600.0
    #: How long a send's Idempotency-Key is remembered (and replayed to retries).
    idempotency_ttl_seconds: int = 86400
    #: Label metrics by tenant (switch off for very many tenants: bounded cardinality).
    metrics_tenant_label: bool = True
    #: /health/ready fails when the oldest unfinished job is older than this.
    ready_max_queue_age_seconds: float = 300.0
    log_level: str = "info"
    log_format: str = "auto"
    #: Entry-point names of installed plugins not to load; ``("*",)`` loads none.
    plugins_disabled: tuple[str, ...] = ()

    @property
    def data_dir(self) -> Path:
        return Path(self.sqlite_path).expanduser().resolve().parent


def read_dotenv(path: Path) -> dict[str, str]:
    """Parse a ``KEY=value`` file: ``#`` comments, optional ``export``, single or double quotes."""
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        if line.startswith("export "):
            line = line[len("export ") :]
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def _bool(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name}: expected true or false, got {value!r}")


def _int(name: str, value: str, *, low: int, high: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"{name}: expected a whole number, got {value!r}") from None
    if not low <= number <= high:
        raise ConfigError(f"{name}: must be between {low} and {high}, got {number}")
    return number


def _float(name: str, value: str, *, low: float, high: float) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{name}: expected a number, got {value!r}") from None
    if not low <= number <= high:
        raise ConfigError(f"{name}: must be between {low} and {high}, got {number}")
    return number


def _url(name: str, value: str) -> str:
    parsed = urlparse(value)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ConfigError(f"{name}: expected an http(s) URL, got {value!r}")
    return value.rstrip("/")


def load_settings(environ: Mapping[str, str] | None = None, dotenv: Path | None = Path(".env")) -> Settings:
    """Build :class:`Settings` from ``environ`` (default ``os.environ``) over an optional ``.env`` file."""
    env: dict[str, str] = read_dotenv(dotenv) if dotenv is not None else {}
    env.update(os.environ if environ is None else environ)

    def get(name: str) -> str | None:
        value = env.get(name)
        return value if value not in (None, "") else None

    kw: dict[str, object] = {}
    if (v := get("AUTOMAGIK_OMNI_API_HOST")) is not None:
        kw["api_host"] = v
    if (v := get("AUTOMAGIK_OMNI_API_PORT")) is not None:
        kw["api_port"] = _int("AUTOMAGIK_OMNI_API_PORT", v, low=0, high=65535)
    if (v := get("AUTOMAGIK_OMNI_API_KEY")) is not None:
        if len(v) < 16:
            raise ConfigError("AUTOMAGIK_OMNI_API_KEY: must be at least 16 characters")
        kw["api_key"] = v
    if (v := get("AUTOMAGIK_OMNI_SQLITE_DATABASE_PATH")) is not None:
        kw["sqlite_path"] = v
    if (v := get("AUTOMAGIK_OMNI_DATABASE_URL")) is not None:
        parsed = urlparse(v)
        if parsed.scheme not in ("postgresql", "postgres") or not parsed.path.strip("/"):
            raise ConfigError("AUTOMAGIK_OMNI_DATABASE_URL: expected postgresql://user:pass@host:5432/database")
        kw["database_url"] = v
    if (v := get("OMNI_DB_POOL_SIZE")) is not None:
        kw["db_pool_size"] = _int("OMNI_DB_POOL_SIZE", v, low=2, high=1000)
    if (v := get("OMNI_SQLITE_SYNCHRONOUS")) is not None:
        if v.upper() not in ("FULL", "NORMAL"):
            raise ConfigError(f"OMNI_SQLITE_SYNCHRONOUS: expected FULL or NORMAL, got {v!r}")
        kw["sqlite_synchronous"] = v.upper()
    if (v := get("OMNI_SQLITE_WRITER")) is not None:
        if v.lower() not in ("process", "thread"):
            raise ConfigError(f"OMNI_SQLITE_WRITER: expected process or thread, got {v!r}")
        kw["sqlite_writer"] = v.lower()
    port = kw.get("api_port", 8882)
    kw["base_url"] = _url("OMNI_BASE_URL", get("OMNI_BASE_URL") or f"http://localhost:{port}")
    if (v := get("EVOLUTION_API_BASE_URL")) is not None:
        kw["evolution_api_base_url"] = _url("EVOLUTION_API_BASE_URL", v)
    kw["evolution_api_key"] = get("EVOLUTION_API_KEY")
    if (v := get("EVOLUTION_WEBHOOK_URL")) is not None:
        kw["evolution_webhook_url"] = _url("EVOLUTION_WEBHOOK_URL", v)
    if (v := get("OMNI_TO_HIVE_ENABLED")) is not None:
        kw["hive_enabled"] = _bool("OMNI_TO_HIVE_ENABLED", v)
    if (v := get("HIVE_API_URL")) is not None:
        kw["hive_api_url"] = _url("HIVE_API_URL", v)
    kw["hive_api_key"] = get("HIVE_API_KEY")
    if (v := get("HIVE_TIMEOUT_SECONDS")) is not None:
        kw["hive_timeout_seconds"] = _float("HIVE_TIMEOUT_SECONDS", v, low=0.1, high=600)
    if kw.get("hive_enabled") and "hive_api_url" not in kw:
        raise ConfigError("HIVE_API_URL: required when OMNI_TO_HIVE_ENABLED=true")
    if (v := get("OMNI_MAX_BODY_BYTES")) is not None:
        kw["max_body_bytes"] = _int("OMNI_MAX_BODY_BYTES", v, low=1024, high=512 * 1024 * 1024)
    if (v := get("OMNI_HTTP_TRANSPORT")) is not None:
        if v.lower() not in ("pooled", "httpx"):
            raise ConfigError(f"OMNI_HTTP_TRANSPORT: expected pooled or httpx, got {v!r}")
        kw["http_transport"] = v.lower()
    if (v := get("OMNI_WORKERS")) is not None:
        kw["workers"] = _int("OMNI_WORKERS", v, low=0, high=10_000)
    if (v := get("OMNI_TENANT_CONCURRENCY")) is not None:
        kw["tenant_concurrency"] = _int("OMNI_TENANT_CONCURRENCY", v, low=0, high=10_000)
    if (v := get("OMNI_RETRY_MAX_ATTEMPTS")) is not None:
        kw["retry_max_attempts"] = _int("OMNI_RETRY_MAX_ATTEMPTS", v, low=1, high=100)
    if (v := get("OMNI_RETRY_BASE_SECONDS")) is not None:
        kw["retry_base_seconds"] = _float("OMNI_RETRY_BASE_SECONDS", v, low=0.001, high=3600)
    if (v := get("OMNI_RETRY_MAX_SECONDS")) is not None:
        kw["retry_max_seconds"] = _float("OMNI_RETRY_MAX_SECONDS", v, low=0.001, high=86400)
    if (v := get("OMNI_LEASE_SECONDS")) is not None:
        kw["lease_seconds"] = _float("OMNI_LEASE_SECONDS", v, low=1, high=86400)
    if (v := get("OMNI_POLL_INTERVAL_SECONDS")) is not None:
        kw["poll_interval_seconds"] = _float("OMNI_POLL_INTERVAL_SECONDS", v, low=0.01, high=60)
    if (v := get("OMNI_WEBHOOK_RETRY_SCHEDULE")) is not None:
        try:
            schedule = tuple(float(x) for x in v.split(",") if x.strip())
        except ValueError:
            raise ConfigError(f"OMNI_WEBHOOK_RETRY_SCHEDULE: expected seconds separated by commas, got {v!r}") from None
        if not schedule or any(x <= 0 for x in schedule):
            raise ConfigError("OMNI_WEBHOOK_RETRY_SCHEDULE: needs at least one positive number of seconds")
        kw["webhook_retry_schedule"] = schedule
    if (v := get("OMNI_WEBHOOK_TIMEOUT_SECONDS")) is not None:
        kw["webhook_timeout_seconds"] = _float("OMNI_WEBHOOK_TIMEOUT_SECONDS", v, low=0.1, high=300)
    if (v := get("OMNI_WEBHOOK_DISABLE_AFTER_SECONDS")) is not None:
        kw["webhook_disable_after_seconds"] = _float("OMNI_WEBHOOK_DISABLE_AFTER_SECONDS", v, low=1, high=10**8)
    if (v := get("OMNI_WEBHOOK_SECRET_OVERLAP_SECONDS")) is not None:
        kw["webhook_secret_overlap_seconds"] = _float("OMNI_WEBHOOK_SECRET_OVERLAP_SECONDS", v, low=0, high=10**8)
    if (v := get("OMNI_WEBHOOK_ALLOW_PRIVATE")) is not None:
        kw["webhook_allow_private"] = _bool("OMNI_WEBHOOK_ALLOW_PRIVATE", v)
    if (v := get("ENABLE_TRACING")) is not None:
        kw["tracing_enabled"] = _bool("ENABLE_TRACING", v)
    if (v := get("TRACE_INCLUDE_SENSITIVE")) is not None:
        kw["trace_include_sensitive"] = _bool("TRACE_INCLUDE_SENSITIVE", v)
    if (v := get("TRACE_RETENTION_DAYS")) is not None:
        kw["trace_retention_days"] = _float("TRACE_RETENTION_DAYS", v, low=0.00001, high=36500)
    if (v := get("OMNI_PURGE_INTERVAL_SECONDS")) is not None:
        kw["purge_interval_seconds"] = _float("OMNI_PURGE_INTERVAL_SECONDS", v, low=0.1, high=86400)
    if (v := get("OMNI_IDEMPOTENCY_TTL_SECONDS")) is not None:
        kw["idempotency_ttl_seconds"] = _int("OMNI_IDEMPOTENCY_TTL_SECONDS", v, low=1, high=365 * 86400)
    if (v := get("OMNI_METRICS_TENANT_LABEL")) is not None:
        kw["metrics_tenant_label"] = _bool("OMNI_METRICS_TENANT_LABEL", v)
    if (v := get("OMNI_READY_MAX_QUEUE_AGE_SECONDS")) is not None:
        kw["ready_max_queue_age_seconds"] = _float("OMNI_READY_MAX_QUEUE_AGE_SECONDS", v, low=1, high=10**7)
    if (v := get("OMNI_LOG_LEVEL")) is not None:
        if v.lower() not in ("debug", "info", "warning", "error"):
            raise ConfigError(f"OMNI_LOG_LEVEL: expected debug, info, warning or error, got {v!r}")
        kw["log_level"] = v.lower()
    if (v := get("OMNI_LOG_FORMAT")) is not None:
        if v.lower() not in ("auto", "json", "console"):
            raise ConfigError(f"OMNI_LOG_FORMAT: expected auto, json or console, got {v!r}")
        kw["log_format"] = v.lower()
    if (v := get("OMNI_PLUGINS_DISABLED")) is not None:
        kw["plugins_disabled"] = tuple(name.strip() for name in v.split(",") if name.strip())
    return Settings(**kw)  # type: ignore[arg-type]
