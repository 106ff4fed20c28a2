"""The ``stripe`` section: ``grace`` (when a month may be finalised and a window is
closed) and the Stripe export's keys (docs/stripe.md).

One source of truth: the keys are declared here (so an unknown key gets the file's
"did you mean"), and their rules are the export's own model
(:class:`meterline.aggregator.stripe.StripeConfig`), which checks the section once, when
the file is read; :meth:`StripeSection.export` hands that checked model to the sync
(``meterline serve``, the ``/v1/stripe`` routes) instead of reading the file again.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BeforeValidator, Field, PrivateAttr, model_validator
from pydantic_core import PydanticCustomError

from meterline.config._base import Section

if TYPE_CHECKING:
    from meterline.aggregator.stripe import StripeConfig

DEFAULT_GRACE = timedelta(hours=1)
"""``stripe.grace``'s default: how long after a month's end late usage is waited for
before the month may be finalised (Stripe's own invoices wait 1 h by default)."""

_DURATION = re.compile(r"(?:([0-9]+)d)?(?:([0-9]+)h)?(?:([0-9]+)m)?(?:([0-9]+)s)?")


def duration(value: Any) -> timedelta:
    """``1h``, ``90m``, ``1h30m``, ``2d`` or ``0`` (units d, h, m, s).

    Raises:
        ValueError: anything else (a bare number other than 0 has no unit).
    """
    if isinstance(value, timedelta):
        return value
    if value == 0 and not isinstance(value, bool | float):
        return timedelta(0)
    found = _DURATION.fullmatch(value.strip()) if isinstance(value, str) else None
    if found is None or not any(found.groups()):
        raise ValueError(f"{value!r} is not a duration such as '1h', '30m' or '1h30m'")
    days, hours, minutes, seconds = (int(g or 0) for g in found.groups())
    return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)


def _duration(value: Any) -> timedelta:
    try:
        return duration(value)
    except ValueError as exc:
        raise PydanticCustomError("duration", "{error}", {"error": str(exc)}) from None


class StripeSection(Section):
    """``stripe``: billing through Stripe."""

    grace: Annotated[timedelta, BeforeValidator(_duration)] = DEFAULT_GRACE
    """A month may be finalised once it ended this long ago."""

    customers: dict[str, str] = Field(default_factory=dict)
    """Consumer id → Stripe customer id."""
    window: Literal["hour", "day"] = "hour"
    """One meter event per consumer, meter and UTC hour or day."""
    sync_interval: Annotated[timedelta, BeforeValidator(_duration)] | None = None
    """How often ``meterline serve`` syncs (absent: never)."""
    unpriced: Literal["hold", "send"] = "hold"
    """Unpriced usage: held back, or (token meters) sent."""
    meters: list[dict[str, Any]] = Field(default_factory=list)
    """The meters; each checked by :class:`meterline.aggregator.stripe.MeterConfig`."""

    _export: StripeConfig | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _export_checks(self) -> StripeSection:
        if not self.model_fields_set - {"grace"}:  # nothing of the export's (and no import
            return self  # at class definition, when the default instance is built)
        from meterline.aggregator.stripe import StripeConfigError, parse_stripe_config

        raw = self.model_dump(exclude_unset=True)
        try:
            self._export = parse_stripe_config({"stripe": raw})
        except StripeConfigError as exc:
            raise ValueError(str(exc).removeprefix("stripe")) from None
        return self

    def export(self) -> StripeConfig | None:
        """The section as the export's checked model; ``None`` when only ``grace`` (or
        nothing) is set: there is nothing to sync."""
        return self._export
