"""What every broker backend's settings share: one or more URLs held as secrets (never
printed, not even in a validation error), one or more queues, and invalid settings raised
as one `ConfigurationError` that says what to change."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, SecretStr, ValidationError

from .._redact import redact_url
from ..errors import ConfigurationError

__all__ = ["BrokerConfig"]


class BrokerConfig(BaseModel):
    """Base of `RabbitMQConsumerConfig` and `RedisStreamsConfig`."""

    url: SecretStr | list[SecretStr]
    queue: str | list[str]

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigurationError(_explain(type(self).__name__, exc)) from None

    @property
    def urls(self) -> list[str]:
        """The URLs, secrets included: for connecting only, never for output."""
        urls = self.url if isinstance(self.url, list) else [self.url]
        return [u.get_secret_value() for u in urls]

    @property
    def queues(self) -> tuple[str, ...]:
        return (self.queue,) if isinstance(self.queue, str) else tuple(self.queue)

    def __repr_args__(self) -> Any:
        for key, value in super().__repr_args__():
            if key == "url":
                yield key, [redact_url(u) for u in self.urls]
            else:
                yield key, value


def _explain(name: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors(include_url=False):
        field = ".".join(str(p) for p in err["loc"]) or "config"
        message = err["msg"].removeprefix("Value error, ")
        if not err["loc"]:
            lines.append(message)  # a whole-model check: its input holds the URL, not shown
        elif field.startswith("url"):
            lines.append(f"url: {message}")  # the input is the URL: never shown
        else:
            lines.append(f"{field}={err.get('input')!r}: {message}")
    return f"invalid {name}: " + "; ".join(lines)
