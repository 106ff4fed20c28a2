"""The aggregator: usage, prices, invoices and billing over the store (FastAPI)."""

__all__ = ["create_app"]


def __getattr__(name: str):  # lazy: `meterline.aggregator.cli` must stay light
    if name == "create_app":
        from meterline.aggregator.app import create_app

        return create_app
    raise AttributeError(name)
