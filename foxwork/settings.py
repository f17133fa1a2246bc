"""`Settings`: everything `foxwork run` (and `App`) needs to reach a broker and serve, in one
pydantic model that reads code, `FOXWORK_*` environment variables and command-line flags.

Each setting has one name in each place, and one precedence: a flag beats an environment
variable, which beats a value given in code (`App(settings=Settings(...))`), which beats the
default. The flag, the variable and the code name of every setting are in `SETTINGS_TABLE`
(`render_settings_table()` writes it as Markdown for the README).

Example:
    settings = Settings(url="amqp://guest:guest@127.0.0.1/", heartbeat=30)
    effective = resolve_settings(settings, flags={"prefetch": 50})  # + $FOXWORK_* on top

Environment variables hold plain text: a list (`FOXWORK_URL` for a cluster,
`FOXWORK_BINDING_KEYS`) is separated by commas or spaces.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, NoDecode, SettingsConfigDict

from ._redact import redact_url
from .backends.rabbitmq.config import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_HEARTBEAT,
    QueueType,
    TopologyMode,
)
from .errors import ConfigurationError
from .pool import DEFAULT_SHUTDOWN_TIMEOUT

# ENV_PREFIX, env_var, flag, render_settings_table and resolve_settings are used as
# foxwork.settings.<name>.
__all__ = ["Settings"]

#: Prefix of every environment variable `Settings` reads.
ENV_PREFIX = "FOXWORK_"
#: Interface `foxwork run` serves /health, /ready and /metrics on unless told otherwise.
DEFAULT_HTTP_HOST = "127.0.0.1"

_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _split(value: Any) -> Any:
    # A list from the environment or a single value from code: "a,b c" → ["a", "b", "c"].
    if isinstance(value, str):
        return [part for part in value.replace(",", " ").split() if part]
    return value


class Settings(BaseSettings):
    """Broker and serving settings of `foxwork run` and `App`.

    Built in code, a `Settings` also reads `$FOXWORK_*` (the environment wins over the
    arguments; see `resolve_settings`). Every field's flag and variable are listed by
    `render_settings_table()`. URLs are held as secrets: never printed.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        frozen=True,
        validate_default=True,
    )

    url: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description=(
            "broker URL: amqp:// or amqps:// (RabbitMQ), redis:// or rediss:// (Redis "
            "Streams); several for a RabbitMQ cluster, or a Redis Cluster's startup nodes"
        ),
        json_schema_extra={"flag": "--url"},
    )
    redis_cluster: bool = Field(
        False,
        description=(
            "Redis Streams on a Redis Cluster: the URLs are startup nodes, each queue lives "
            "on the master of its hash tag"
        ),
        json_schema_extra={"flag": "--redis-cluster"},
    )
    queue_type: QueueType = Field(
        QueueType.CLASSIC,
        description="classic or quorum: the type of the queues foxwork declares",
        json_schema_extra={"flag": "--queue-type"},
    )
    topology: TopologyMode = Field(
        TopologyMode.DECLARE,
        description=(
            "declare the queues with foxwork's arguments, or attach passive(ly) to queues "
            "that must exist, as they were declared"
        ),
        json_schema_extra={"flag": "--topology"},
    )
    exchange: str | None = Field(
        None,
        description="an exchange to bind the queues to (declared durable); none: the default",
        json_schema_extra={"flag": "--exchange"},
    )
    exchange_type: Literal["direct", "topic", "fanout", "headers"] = Field(
        "topic",
        description="direct, topic, fanout or headers",
        json_schema_extra={"flag": "--exchange-type"},
    )
    binding_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="routing keys binding the queues to the exchange (default: the queue name)",
        json_schema_extra={"flag": "--binding-key"},
    )
    heartbeat: int = Field(
        DEFAULT_HEARTBEAT,
        ge=0,
        le=3600,
        description="AMQP heartbeat in seconds (0 turns it off)",
        json_schema_extra={"flag": "--heartbeat"},
    )
    connection_name: str | None = Field(
        None,
        description="the name the broker shows for the connection",
        json_schema_extra={"flag": "--connection-name"},
    )
    tls_ca: Path | None = Field(
        None,
        description="CA certificates (PEM) to verify an amqps:// broker with",
        json_schema_extra={"flag": "--tls-ca"},
    )
    tls_cert: Path | None = Field(
        None,
        description="client certificate (PEM) for amqps://",
        json_schema_extra={"flag": "--tls-cert"},
    )
    tls_key: Path | None = Field(
        None,
        description="the client certificate's private key (PEM)",
        json_schema_extra={"flag": "--tls-key"},
    )
    connect_timeout: float = Field(
        DEFAULT_CONNECT_TIMEOUT,
        gt=0,
        description="seconds one connect attempt may take",
        json_schema_extra={"flag": "--connect-timeout"},
    )
    prefetch: int | None = Field(
        None,
        ge=1,
        description="unsettled deliveries per queue (default: each pool's own)",
        json_schema_extra={"flag": "--prefetch"},
    )
    concurrency: int | None = Field(
        None,
        ge=1,
        description="messages each pool processes at once (default: each pool's own)",
        json_schema_extra={"flag": "--concurrency"},
    )
    shutdown_timeout: float = Field(
        DEFAULT_SHUTDOWN_TIMEOUT,
        ge=0,
        description="seconds in-flight messages get to finish after SIGTERM",
        json_schema_extra={"flag": "--shutdown-timeout"},
    )
    http_host: str = Field(
        DEFAULT_HTTP_HOST,
        min_length=1,
        description="interface of /health, /ready and /metrics",
        json_schema_extra={"flag": "--http-host"},
    )
    http_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="port of /health, /ready and /metrics (0: any free one; none: no server)",
        json_schema_extra={"flag": "--http-port"},
    )
    memory: bool = Field(
        False,
        description="run on the in-memory backend (no broker; for trying things out)",
        json_schema_extra={"flag": "--memory"},
    )
    log_level: str = Field(
        "INFO",
        description=f"one of {', '.join(_LOG_LEVELS)}",
        json_schema_extra={"flag": "--log-level"},
    )

    _split_lists = field_validator("url", "binding_keys", mode="before")(_split)

    @field_validator("exchange_type")
    @classmethod
    def _check_exchange_type(cls, value: str) -> str:
        if value not in ("direct", "topic", "fanout", "headers"):
            raise ValueError(
                f"{value!r} is not an exchange type: use direct, topic, fanout or headers"
            )
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _check_log_level(cls, value: Any) -> Any:
        if isinstance(value, str) and value.upper() in _LOG_LEVELS:
            return value.upper()
        raise ValueError(f"{value!r} is not a log level: use one of {', '.join(_LOG_LEVELS)}")

    @model_validator(mode="after")
    def _check_combinations(self) -> Settings:
        if self.binding_keys and self.exchange is None:
            raise ValueError("binding_keys need an exchange: set exchange as well")
        if self.tls_key is not None and self.tls_cert is None:
            raise ValueError("tls_key is the key of tls_cert: give tls_cert as well")
        if self.memory and self.url:
            raise ValueError(
                "memory=true and a broker URL: choose one (unset the URL to run in memory)"
            )
        return self

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigurationError(_explain(exc)) from None

    # -- derived -------------------------------------------------------------------------

    @property
    def urls(self) -> list[str]:
        """The URLs, secrets included: for connecting only, never for output."""
        return [url.get_secret_value() for url in self.url]

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context of `tls_ca`, `tls_cert` and `tls_key`; None when none is set
        (an amqps:// URL then verifies against the system's CA store).

        Raises:
            ConfigurationError: a file cannot be read.
        """
        if self.tls_ca is None and self.tls_cert is None:
            return None
        try:
            context = ssl.create_default_context(cafile=self.tls_ca)
            if self.tls_cert is not None:
                context.load_cert_chain(self.tls_cert, self.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(f"cannot load the TLS files: {exc}") from None
        return context

    def redacted(self) -> dict[str, Any]:
        """Every setting as JSON-ready values, URLs with their password replaced by `***`."""
        shown = self.model_dump(mode="json", exclude={"url"})
        return {"url": [redact_url(url) for url in self.urls], **shown}

    def __repr_args__(self) -> Any:
        for key, value in super().__repr_args__():
            yield key, ([redact_url(u) for u in self.urls] if key == "url" else value)


def env_var(field: str) -> str:
    """The environment variable of a setting: `heartbeat` → `FOXWORK_HEARTBEAT`."""
    return ENV_PREFIX + field.upper()


def flag(field: str) -> str:
    """The `foxwork run` flag of a setting: `binding_keys` → `--binding-key`."""
    extra = Settings.model_fields[field].json_schema_extra
    assert isinstance(extra, dict)
    name = extra["flag"]
    assert isinstance(name, str)
    return name


def resolve_settings(
    code: Settings | Mapping[str, Any] | None = None,
    *,
    flags: Mapping[str, Any] | None = None,
) -> Settings:
    """The effective settings: `flags` over the environment over `code` over the defaults.

    Args:
        code: settings given in code; only the ones given explicitly count (a default
            never hides an environment variable).
        flags: settings from the command line, by field name (None means not given).

    Raises:
        ConfigurationError: a setting is invalid, naming it and where it came from.
    """
    if isinstance(code, Settings):
        given = {name: getattr(code, name) for name in code.model_fields_set}
    else:
        given = dict(code or {})
    from_env = _read_env()
    from_flags = {k: v for k, v in (flags or {}).items() if v is not None}
    merged = {**given, **from_env, **from_flags}
    # The arguments of `Settings(...)` win over the environment it reads again, and every
    # variable set is among them.
    return Settings(**merged)


def _read_env() -> dict[str, Any]:
    source = EnvSettingsSource(Settings, env_prefix=ENV_PREFIX)
    try:
        return {k: v for k, v in source().items() if k in Settings.model_fields}
    except ValueError as exc:  # a SettingsError: a value it could not decode
        raise ConfigurationError(f"invalid {ENV_PREFIX}* variable: {exc}") from None


def _explain(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors(include_url=False):
        field = str(err["loc"][0]) if err["loc"] else ""
        message = err["msg"].removeprefix("Value error, ")
        if not field:
            lines.append(message)
        elif field == "url":
            lines.append(f"url: {message}")  # the input is a URL: never shown
        else:
            lines.append(f"{field}={err.get('input')!r}: {message}")
    return "invalid settings: " + "; ".join(lines)


# -- the table in the README --------------------------------------------------------------


def _default(field: str) -> str:
    info = Settings.model_fields[field]
    value = info.get_default(call_default_factory=True)
    if value is None or value == []:
        return "none"
    if isinstance(value, bool):
        return json.dumps(value)
    return f"`{value}`"


def render_settings_table() -> str:
    """The Markdown table of every setting: flag, environment variable, code name, default
    and meaning, in the model's order (the README holds exactly this)."""
    rows = [
        "| flag | environment variable | code (`Settings(...)`) | default | meaning |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, info in Settings.model_fields.items():
        rows.append(
            f"| `{flag(name)}` | `{env_var(name)}` | `{name}` | {_default(name)} "
            f"| {info.description} |"
        )
    return "\n".join(rows) + "\n"
