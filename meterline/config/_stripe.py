"""The ``stripe`` section: so far only ``grace`` (when a month may be finalised).

The Stripe issue declares its other keys here; until then any other key is an error.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError

from meterline.config._base import Section

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
