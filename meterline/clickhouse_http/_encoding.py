"""HTTP compression of request and response bodies, as ClickHouse's HTTP interface does it.

Requests: ``Content-Encoding`` gzip, deflate (zlib-wrapped, as ClickHouse means it), zstd,
lz4 (frame format) and br, decoded as the body streams in (concatenated frames too).
Responses: compressed only when the client sends ``enable_http_compression=1`` and lists
a supported encoding in ``Accept-Encoding`` (the client's order wins).

Contract (a compressed body must cost no more memory than a plain one):
- :class:`BodyDecoder` has a budget of decoded bytes (the endpoint's body cap). Every
  decompressor call is told how much output it may produce (``max_length`` for zlib, zstd
  and lz4, ``output_buffer_limit`` for brotli), so a bomb is refused after at most the
  budget (+ one call's overshoot: brotli may return up to twice its limit) has been
  produced, never after expanding a whole network chunk. The compressed input is capped
  too (the budget plus 1/64 plus 64 KiB: incompressible data grows a little when
  "compressed").
- zstd frames may not ask for a window larger than :data:`ZSTD_WINDOW_LOG_MAX` (16 MiB),
  so a frame header cannot make the decompressor allocate up to the format's 2 GiB.
- An encoding whose decompressor cannot bound its output per call is not offered: ``br``
  needs brotli >= 1.2 (``output_buffer_limit``).

Known limit: ClickHouse's own block compression (``compress=1`` / ``decompress=1``, LZ4
blocks with CityHash checksums) is not implemented; the endpoint refuses it.
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

    _brotli.Decompressor().process(b"", output_buffer_limit=1)
except ImportError:  # pragma: no cover - brotli is a server dependency
    _brotli = None
except TypeError:  # pragma: no cover - brotli < 1.2 cannot bound its output: not offered
    _brotli = None

ZSTD_WINDOW_LOG_MAX = 24
"""Largest zstd window a request body may use (2**24 bytes; zstd's default limit is 2**27)."""


def supported_encodings() -> list[str]:
    """The request encodings this build decodes (``identity`` aside)."""
    names = ["gzip", "deflate"]
    names += ["zstd"] if _zstd is not None else []
    names += ["lz4"] if _lz4 is not None else []
    names += ["br"] if _brotli is not None else []
    return names


def _too_large(limit: int) -> ClickHouseError:
    return ClickHouseError(
        "QUERY_IS_TOO_LARGE",
        f"meterline: request body larger than {limit} bytes (decoded) is not accepted here",
    )


class _Stream:
    """One compressed stream (a gzip member, a zstd or lz4 frame, a brotli stream)."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        if encoding in ("gzip", "x-gzip"):
            self._d: Any = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            self._d = zlib.decompressobj()
        elif encoding == "zstd":
            options = {_zstd.DecompressionParameter.window_log_max: ZSTD_WINDOW_LOG_MAX}
            self._d = _zstd.ZstdDecompressor(options=options)
        elif encoding == "lz4":
            self._d = _lz4.LZ4FrameDecompressor()
        else:
            self._d = _brotli.Decompressor()
        self._pending = b""
        """zlib: input not yet consumed because the output limit was reached."""

    @property
    def eof(self) -> bool:
        if self.encoding == "br":
            return bool(self._d.is_finished())
        return bool(self._d.eof)

    @property
    def unused_data(self) -> bytes:
        """Input after the end of this stream (the next member or frame)."""
        return b"" if self.encoding == "br" else bytes(self._d.unused_data or b"")

    def has_more_output(self) -> bool:
        """Whether output is pending without more input (the last call hit its limit)."""
        if self.encoding in ("gzip", "x-gzip", "deflate"):
            return bool(self._pending)
        if self.encoding == "br":
            return not self.eof and not self._d.can_accept_more_data()
        return not self.eof and not self._d.needs_input

    def decompress(self, data: bytes, limit: int) -> bytes:
        """At most ``limit`` bytes (brotli: at most about ``2 * limit``)."""
        limit = max(limit, 1)
        if self.encoding in ("gzip", "x-gzip", "deflate"):
            out = self._d.decompress(self._pending + data, limit)
            self._pending = self._d.unconsumed_tail
            return bytes(out)
        if self.encoding == "br":
            return bytes(self._d.process(data, output_buffer_limit=limit))
        if self.eof:
            raise EOFError("data after the end of the frame")
        return bytes(self._d.decompress(data, max_length=limit))


class BodyDecoder:
    """Incrementally undo one ``Content-Encoding`` with a budget of ``limit`` decoded bytes.

    Raises:
        ClickHouseError: UNKNOWN_COMPRESSION_METHOD for an encoding not supported here,
            QUERY_IS_TOO_LARGE as soon as the body exceeds ``limit`` (decoded or not),
            CANNOT_DECOMPRESS for corrupt data.
    """

    def __init__(self, content_encoding: str, limit: int) -> None:
        self.encoding = content_encoding.strip().lower()
        self.limit = limit
        self.raw_limit = limit + (limit >> 6) + (64 << 10)
        self.decoded = 0
        self.received = 0
        self._current: _Stream | None = None
        if self.encoding in ("", "identity"):
            self.encoding = ""
        elif self.encoding.replace("x-gzip", "gzip") not in supported_encodings():
            raise ClickHouseError(
                "UNKNOWN_COMPRESSION_METHOD",
                f"meterline: Unknown HTTP compression method {content_encoding!r} "
                f"(supported: {', '.join(supported_encodings())})",
            )

    def feed(self, chunk: bytes) -> bytes:
        self.received += len(chunk)
        if not self.encoding:
            self.decoded += len(chunk)
            if self.decoded > self.limit:
                raise _too_large(self.limit)
            return chunk
        if self.received > self.raw_limit:
            raise _too_large(self.limit)
        out = bytearray()
        try:
            data = chunk
            while data or (self._current is not None and self._current.has_more_output()):
                if self._current is None:
                    self._current = _Stream(self.encoding)
                piece = self._current.decompress(data, self.limit - self.decoded + 1)
                data = b""
                self.decoded += len(piece)
                if self.decoded > self.limit:
                    raise _too_large(self.limit)
                out += piece
                if self._current.eof:
                    data = self._current.unused_data
                    self._current = None
        except ClickHouseError:
            raise
        except Exception as exc:
            raise ClickHouseError(
                "CANNOT_DECOMPRESS", f"meterline: cannot decompress the {self.encoding} body: {exc}"
            ) from exc
        return bytes(out)

    def finish(self) -> None:
        if self._current is not None and not self._current.eof:
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
    compressors: dict[str, Callable[[bytes], bytes]] = {
        "gzip": lambda d: gzip.compress(d, compresslevel=level),
        "deflate": lambda d: zlib.compress(d, level),
    }
    if _zstd is not None:
        compressors["zstd"] = _zstd.compress
    if _lz4 is not None:
        compressors["lz4"] = _lz4.compress
    if _brotli is not None:
        compressors["br"] = _brotli.compress
    if encoding not in compressors:
        raise ValueError(f"unsupported encoding {encoding!r}")
    return compressors[encoding](data)
