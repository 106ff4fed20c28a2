"""The errors of invoice operations (the API answers each with 409)."""

from __future__ import annotations

from meterline.errors import MeterlineError


class InvoiceError(MeterlineError):
    """An invoice operation is not possible in the current state (e.g. not finalised)."""


class PeriodOpenError(InvoiceError):
    """The month has not ended plus the grace for late usage: it cannot be finalised yet."""


class PeriodBusyError(InvoiceError):
    """Another writer holds (or just won) the period's claim; nothing was written."""
