"""The ``stripe:`` section of meterline's YAML configuration (docs/stripe.md).

Contract: the section is a strict model — an unknown key, a missing ``event_name``, a
YAML float where a decimal is meant, a duplicate event name or a customer id that is
not ``cus_…`` is an error naming the offending path, never silently ignored.
``unit`` (cost meters) is a decimal string; the value sent for a window is
``cost / unit`` rounded half-up to a whole number. ``unpriced: send`` applies to token
meters only (a cost meter has no amount to send for unpriced usage, so it holds it).
Other top-level sections belong to other features and are ignored here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from meterline.aggregator.pricing import TOKEN_TYPES
from meterline.config._stripe import DEFAULT_GRACE, duration
from meterline.errors import MeterlineError

__all__ = [
    "DEFAULT_GRACE",
    "MeterConfig",
    "StripeConfig",
    "StripeConfigError",
    "load_stripe_config",
    "parse_duration",
    "parse_stripe_config",
]


class StripeConfigError(MeterlineError, ValueError):
    """The ``stripe`` section of the configuration file is invalid."""


def parse_duration(value: Any, where: str = "duration") -> timedelta:
    """A duration such as ``1h``, ``90m``, ``1h30m``, ``2d`` or ``0``: the configuration
    file's own rule (:func:`meterline.config._stripe.duration`), with ``where`` named.

    Raises:
        ValueError: anything else (a bare number other than 0 has no unit).
    """
    try:
        return duration(value)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def _duration(value: Any) -> timedelta:
    return parse_duration(value, "duration")


def _unit(value: Any) -> Decimal:
    if isinstance(value, bool | float):
        raise ValueError(f'{value!r} must be a quoted decimal string such as "0.000001"')
    try:
        unit = Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"{value!r} is not a decimal amount") from None
    if not unit.is_finite() or unit <= 0:
        raise ValueError(f"{value!r} must be a finite amount above 0")
    return unit


def _names(value: Any) -> Any:
    if isinstance(value, str):  # a single name is a list of one
        return [value]
    return value


Duration = Annotated[timedelta, BeforeValidator(_duration)]
Unit = Annotated[Decimal, BeforeValidator(_unit)]
TokenType = Literal["input", "cache_read", "cache_write", "cache_write_1h", "output", "reasoning"]
Names = Annotated[tuple[str, ...], BeforeValidator(_names)]


class MeterConfig(BaseModel):
    """One Stripe meter meterline sends to."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_name: str = Field(min_length=1, max_length=100)
    """The meter's event name in Stripe."""
    value: Literal["tokens", "cost"]
    """``tokens``: the quantity of ``token_types``; ``cost``: what the consumer is billed
    (plan markup included), divided by ``unit``."""
    token_types: tuple[TokenType, ...] = ()
    """Token types counted (required for token meters; a cost meter: all when empty)."""
    unit: Unit | None = None
    """Cost meters only: the money one unit of the meter's value stands for."""
    providers: Names | None = None
    """Only usage of these providers (as stored); ``None``: all."""
    models: Names | None = None
    """Only usage of these models (the response model, else the request model)."""
    features: Names | None = None
    """Only usage of these features."""

    @model_validator(mode="after")
    def _check(self) -> MeterConfig:
        if self.value == "tokens":
            if not self.token_types:
                raise ValueError("a token meter needs token_types")
            if self.unit is not None:
                raise ValueError("unit belongs to cost meters only")
        elif self.unit is None:
            raise ValueError('a cost meter needs unit, a decimal string such as "0.000001"')
        if len(set(self.token_types)) != len(self.token_types):
            raise ValueError("token_types lists a type twice")
        return self

    def counts(self, *, token_type: str, provider: str, model: str, feature: str) -> bool:
        """Whether a rated row with these fields belongs to this meter."""
        types = self.token_types or TOKEN_TYPES
        return (
            token_type in types
            and (self.providers is None or provider in self.providers)
            and (self.models is None or model in self.models)
            and (self.features is None or feature in self.features)
        )


class StripeConfig(BaseModel):
    """The ``stripe`` section: customer mapping, windows and meters."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    customers: dict[str, str] = Field(default_factory=dict)
    """Consumer id → Stripe customer id (``PUT /v1/consumers/{consumer}`` wins over it)."""
    window: Literal["hour", "day"] = "hour"
    """One meter event per consumer, meter and UTC hour or day."""
    grace: Duration = DEFAULT_GRACE
    """A window is closed (sent) once its end is this long ago."""
    sync_interval: Duration | None = None
    """How often ``meterline serve`` syncs; ``None``: never (run ``meterline stripe sync``)."""
    unpriced: Literal["hold", "send"] = "hold"
    """Unpriced usage: held back (reported) or, for token meters, sent."""
    meters: tuple[MeterConfig, ...] = ()
    """The meters, each with its own event name."""

    @model_validator(mode="after")
    def _check(self) -> StripeConfig:
        for consumer, customer in self.customers.items():
            if not re.fullmatch(r"cus_[A-Za-z0-9]{1,251}", customer):
                raise ValueError(
                    f"customers.{consumer}: {customer[:60]!r} is not a Stripe customer id "
                    "(cus_…, at most 255 characters)"
                )
        names = [m.event_name for m in self.meters]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"meters: event_name {name!r} appears twice")
        if self.grace < timedelta(0):
            raise ValueError("grace must not be negative")
        if self.sync_interval is not None and self.sync_interval < timedelta(seconds=10):
            raise ValueError("sync_interval must be at least 10s")
        return self

    @property
    def window_length(self) -> timedelta:
        return timedelta(hours=1) if self.window == "hour" else timedelta(days=1)

    def meter(self, event_name: str) -> MeterConfig:
        for m in self.meters:
            if m.event_name == event_name:
                return m
        raise LookupError(f"no meter with event_name {event_name!r} in stripe.meters")


def _where(error: dict[str, Any]) -> str:
    parts = ["stripe"]
    for item in error.get("loc", ()):
        parts.append(f"[{item}]" if isinstance(item, int) else f".{item}")
    return "".join(parts).replace(".[", "[")


def parse_stripe_config(data: Mapping[str, Any] | None) -> StripeConfig | None:
    """The ``stripe`` section of the parsed YAML document (``None`` when absent).

    Raises:
        StripeConfigError: with the path of the offending value.
    """
    if not data or data.get("stripe") is None:
        return None
    raw = data["stripe"]
    if not isinstance(raw, Mapping):
        raise StripeConfigError("stripe: expected a mapping")
    try:
        return StripeConfig.model_validate(dict(raw))
    except ValidationError as exc:
        first = exc.errors()[0]
        message = str(first.get("msg", "invalid")).removeprefix("Value error, ")
        if first.get("type") == "extra_forbidden":
            message = "unknown key"
        raise StripeConfigError(f"{_where(dict(first))}: {message}") from None


def load_stripe_config(path: str | Path | None) -> StripeConfig | None:
    """Read the ``stripe`` section of the YAML file at ``path`` (``None``: no file).

    Raises:
        StripeConfigError: the file cannot be read or the section is invalid.
    """
    if path is None:
        return None
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise StripeConfigError(
            f"cannot read the configuration file {str(path)!r}: {exc}"
        ) from None
    except yaml.YAMLError as exc:
        raise StripeConfigError(f"{str(path)!r} is not valid YAML: {exc}") from None
    if data is not None and not isinstance(data, Mapping):
        raise StripeConfigError(f"{path}: the configuration file must be a YAML mapping")
    try:
        return parse_stripe_config(data)
    except StripeConfigError as exc:
        raise StripeConfigError(f"{path}: {exc}") from None
