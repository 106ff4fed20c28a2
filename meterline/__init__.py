"""meterline: exact LLM usage metering on OpenTelemetry and ClickHouse.

This package is the shared kernel (configuration, store, CLI). Importing it imports
nothing of the server's dependencies.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
