"""The root of meterline's exception tree."""


class MeterlineError(Exception):
    """Base class for meterline's own errors."""
