"""Libraries meterline instruments. Either is enough; each is instrumented if importable."""

_instruments_httpx = ("httpx >= 0.23.0",)
_instruments_httpx2 = ("httpx2 >= 2.0.0",)

# Neither is required: the instrumentor checks what is importable itself.
_instruments: tuple[str, ...] = ()
_instruments_any = (*_instruments_httpx, *_instruments_httpx2)
