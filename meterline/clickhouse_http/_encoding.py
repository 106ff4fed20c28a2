"""HTTP compression of request and response bodies, as ClickHouse's HTTP interface does it.

Requests: ``Content-Encoding`` gzip, deflate, zstd, lz4 (frame format) and br (when
``brotli`` is installed), decoded as the body streams in (concatenated frames too).
Responses: compressed only when the client sends ``enable_http_compression=1`` and
lists a supported encoding in ``Accept-Encoding`` (the client's order wins) — that is
what clickhouse-connect does when the server lets it.

Known limit: ClickHouse's own block compression (``compress=1`` / ``decompress=1``,
LZ4 blocks with CityHash checksums) is not implemented; the endpoint refuses it.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable
from typing import Any

from meterline.clickhouse_http._errors import ClickHouseError

try:  # Python 3.14 ships zstd; clickhouse-connect depends on the backport before that
    from compression import zstd as _zstd  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the interpreter
    try:
        from backports import zstd as _zstd  # type: ignore[no-redef]
    except ImportError:
        _zstd = None  # type: ignore[assignment]
try:
    import lz4.frame as _lz4
except ImportError:  # pragma: no cover - lz4 comes with clickhouse-connect
    _lz4 = None  # type: ignore[assignment]
try:
    import brotli as _brotli  # type: ignore[import-not-found]
except ImportError:
    _brotli = None


def _decompressor_factory(encoding: str) -> Callable[[], Any] | None:
    if encoding in ("gzip", "x-gzip"):
        return lambda: zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompressobj
    if encoding == "zstd" and _zstd is not None:
        return _zstd.ZstdDecompressor
    if encoding == "lz4" and _lz4 is not None:
        return _lz4.LZ4FrameDecompressor
    if encoding == "br" and _brotli is not None:
        return _brotli.Decompressor
    return None


class BodyDecoder:
    """Incrementally undo one ``Content-Encoding`` (identity when empty)."""

    def __init__(self, content_encoding: str) -> None:
        self.encoding = content_encoding.strip().lower()
        self._factory = None
        if self.encoding not in ("", "identity"):
            self._factory = _decompressor_factory(self.encoding)
            if self._factory is None:
                raise ClickHouseError(
                    "UNKNOWN_COMPRESSION_METHOD",
                    f"meterline: Unknown HTTP compression method {content_encoding!r} "
                    "(supported: gzip, deflate, zstd, lz4)",
                )
        self._current: Any = None

    def feed(self, chunk: bytes) -> bytes:
        if self._factory is None:
            return chunk
        out = bytearray()
        try:
            while chunk:
                if self._current is None:
                    self._current = self._factory()
                if self.encoding == "br":
                    out += self._current.process(chunk)
                    return bytes(out)
                out += self._current.decompress(chunk)
                if not getattr(self._current, "eof", False):
                    break
                chunk = bytes(getattr(self._current, "unused_data", None) or b"")
                self._current = None
        except ClickHouseError:
            raise
        except Exception as exc:
            raise ClickHouseError(
                "CANNOT_DECOMPRESS", f"meterline: cannot decompress the {self.encoding} body: {exc}"
            ) from exc
        return bytes(out)

    def finish(self) -> None:
        if self._current is not None and not getattr(self._current, "eof", True):
            raise ClickHouseError(
                "CANNOT_DECOMPRESS", f"meterline: the {self.encoding} body ended mid-stream"
            )


def choose_response_encoding(accept_encoding: str) -> str | None:
    """The first encoding in the client's ``Accept-Encoding`` that can be produced."""
    for item in accept_encoding.split(","):
        name = item.split(";")[0].strip().lower()
        if name in ("gzip", "deflate") or (
            (name == "zstd" and _zstd is not None)
            or (name == "lz4" and _lz4 is not None)
            or (name == "br" and _brotli is not None)
        ):
            return name
    return None


def compress(data: bytes, encoding: str, *, level: int = 3) -> bytes:
    """Compress a whole response body (``level`` applies to gzip/deflate, like ClickHouse's
    ``http_zlib_compression_level``)."""
    if encoding == "gzip":
        return gzip.compress(data, compresslevel=level)
    if encoding == "deflate":
        return zlib.compress(data, level)
    if encoding == "zstd":
        return _zstd.compress(data)
    if encoding == "lz4":
        return _lz4.compress(data)
    if encoding == "br":
        return _brotli.compress(data)
    raise ValueError(f"unsupported encoding {encoding!r}")
