"""meterline's zero-code instrumentation (placeholder until the instrumentation lands)."""

__all__: list[str] = []
