"""The ``alerts`` section (docs/alerts.md): webhooks, rolling-window rules, timing.

Checked with the rest of the file, so ``meterline serve`` refuses a bad one at start with
one line naming the field: a webhook ``url`` that is not an absolute ``http(s)://`` URL
with a host, a ``secret`` written in the file instead of named from the environment
(``${VARIABLE}``, as every secret of meterline) or naming a variable that is not set, an
unknown event, a rolling window shorter than 1s or longer than 31 days.
"""

from __future__ import annotations

import os
import re
from datetime import timedelta
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BeforeValidator, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from meterline.config._base import Money, Section, none_as_empty_list
from meterline.config._stripe import duration

EVENTS = ("budget.threshold", "rolling.threshold", "rate_limit.repeated")
"""Alert kinds a webhook may subscribe to."""

_SECRET_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _duration(value: Any) -> timedelta:
    try:
        return duration(value)
    except ValueError as exc:
        raise PydanticCustomError("duration", "{error}", {"error": str(exc)}) from None


Duration = Annotated[timedelta, BeforeValidator(_duration)]


class WebhookSection(Section):
    """``alerts.webhooks[i]``: where alerts are POSTed, signed with the secret."""

    url: str
    """An absolute ``http://`` or ``https://`` URL."""
    secret: str
    """``${VARIABLE}``: the environment variable holding the signing secret."""
    events: list[Literal["budget.threshold", "rolling.threshold", "rate_limit.repeated"]] = Field(
        default_factory=lambda: list(EVENTS)
    )
    """The alert kinds sent here (default: all)."""

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        try:
            parts = urlsplit(value)
            port = parts.port
        except ValueError:
            parts, port = None, None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise PydanticCustomError(
                "webhook_url",
                "{value} is not an absolute http:// or https:// URL with a host",
                {"value": repr(value)},
            )
        if port == 0:
            raise PydanticCustomError("webhook_url", "{value}: port 0", {"value": repr(value)})
        if parts.username is not None or parts.password is not None:
            raise PydanticCustomError(
                "webhook_url",
                "the URL holds credentials (user:password@): secrets are never kept in the "
                "configuration file; the receiver checks the signature instead",
                {},
            )
        return value

    @field_validator("secret")
    @classmethod
    def _secret(cls, value: str) -> str:
        found = _SECRET_REF.fullmatch(value.strip())
        if found is None:
            raise PydanticCustomError(
                "webhook_secret",
                "write ${{VARIABLE}} naming an environment variable: secrets are never "
                "kept in the configuration file",
                {},
            )
        name = found.group(1)
        if not os.environ.get(name):
            raise PydanticCustomError(
                "webhook_secret_unset",
                "the environment variable {name} is not set (or empty): export the "
                "webhook's signing secret",
                {"name": name},
            )
        return value.strip()

    @property
    def secret_variable(self) -> str:
        """The name of the environment variable holding the secret."""
        found = _SECRET_REF.fullmatch(self.secret)
        assert found is not None
        return found.group(1)


class RollingSection(Section):
    """``alerts.rolling[i]``: more than ``limit`` billed in any ``window``, wherever it
    starts (exact to the call, not aligned on hours)."""

    consumer: str = Field(min_length=1)
    feature: str | None = None
    """Only this feature's usage (absent: every call of the consumer)."""
    limit: Money
    """In the pricing currency, plan markup included."""
    window: Duration = timedelta(hours=24)

    @model_validator(mode="after")
    def _window(self) -> RollingSection:
        if not timedelta(seconds=1) <= self.window <= timedelta(days=31):
            raise ValueError(f"window {self.window} must be from 1s to 31d")
        return self

    @property
    def seconds(self) -> int:
        """The window in whole seconds."""
        return int(self.window.total_seconds())


class RetrySection(Section):
    """``alerts.retry``: exponential backoff with jitter between delivery attempts."""

    initial: Duration = timedelta(seconds=1)
    max: Duration = timedelta(minutes=10)
    attempts: int = Field(12, ge=1, le=100)
    """Attempts of one delivery before it is marked failed (listed by ``/v1/alerts``)."""


class AlertsSection(Section):
    """``alerts``: where alerts go, rolling-window rules, how often serve checks."""

    check_interval: Duration = timedelta(seconds=60)
    """The periodic check in ``meterline serve`` (crossings are also checked right after
    each rating run and each reservation settle)."""
    webhooks: Annotated[list[WebhookSection], BeforeValidator(none_as_empty_list)] = Field(
        default_factory=list
    )
    rolling: Annotated[list[RollingSection], BeforeValidator(none_as_empty_list)] = Field(
        default_factory=list
    )
    retry: RetrySection = RetrySection()
    rate_limit_refusals: int = Field(5, ge=1, le=1_000_000)
    """Refusals of one rate limit within one UTC hour that make a ``rate_limit.repeated``
    alert (once per limit and hour)."""

    @model_validator(mode="after")
    def _checks(self) -> AlertsSection:
        if self.check_interval < timedelta(seconds=1):
            raise ValueError("check_interval must be at least 1s")
        urls = [w.url for w in self.webhooks]
        for url in urls:
            if urls.count(url) > 1:
                raise ValueError(f"webhooks: {url!r} appears twice")
        return self
