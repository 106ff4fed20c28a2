"""Compressed bodies cost no more memory than plain ones, in every encoding, at any concurrency.

A "bomb" is a small body that expands to far more than the endpoint's 1 MiB cap. The
decoder must refuse it (413 QUERY_IS_TOO_LARGE) after producing about the cap, not after
expanding a network chunk: the peak of Python allocations (tracemalloc, which sees the
decompressors' output buffers) during the requests stays a few MiB. The last test does the
same against a real ``meterline serve`` process, where the collector lives too, and reads
its peak RSS (VmHWM).
"""

from __future__ import annotations

import threading
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.clickhouse_http.conftest import PASSWORD, Endpoint, _endpoint

AUTH = ("meterline", PASSWORD)
MiB = 1 << 20


def _stream(compressor: Callable[[bytes], bytes], finish: Callable[[], bytes], size: int) -> bytes:
    zeros = b"\0" * MiB
    return b"".join(compressor(zeros) for _ in range(size // MiB)) + finish()


def _bomb(encoding: str, size: int) -> bytes:
    if encoding in ("gzip", "deflate"):
        c = zlib.compressobj(9, zlib.DEFLATED, 31 if encoding == "gzip" else 15)
        return _stream(c.compress, c.flush, size)
    if encoding == "zstd":
        from backports import zstd

        z = zstd.ZstdCompressor(level=1)
        return _stream(z.compress, z.flush, size)
    if encoding == "lz4":
        import lz4.frame

        f = lz4.frame.LZ4FrameCompressor()
        return f.begin() + _stream(f.compress, f.flush, size)
    import brotli

    b = brotli.Compressor(quality=5)
    return _stream(b.process, b.finish, size)


# expanded sizes: each far above the cap, and well above what one network chunk (64-256
# KiB) of it expands to at once in the slowest-expanding encoding (lz4, ~255x)
SIZES = {"gzip": 128 * MiB, "deflate": 128 * MiB, "lz4": 128 * MiB, "zstd": 1024 * MiB,
         "br": 256 * MiB}  # fmt: skip


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    return {encoding: _bomb(encoding, SIZES[encoding]) for encoding in SIZES}


def test_every_encoding_clients_use_is_supported() -> None:
    from meterline.clickhouse_http._encoding import supported_encodings

    assert set(supported_encodings()) == {"gzip", "deflate", "zstd", "lz4", "br"}


def test_a_zstd_frame_cannot_ask_for_a_huge_window(readonly: Endpoint) -> None:
    """A frame header may declare up to a 2 GiB window, which the decoder would allocate."""
    from backports import zstd

    compressor = zstd.ZstdCompressor(options={zstd.CompressionParameter.window_log: 27})
    body = compressor.compress(b"SELECT 1") + compressor.flush()
    assert zstd.ZstdDecompressor().decompress(body) == b"SELECT 1"  # valid zstd
    response = post_bomb(readonly, "zstd", body)
    assert response.headers["X-ClickHouse-Exception-Code"] == "271", response.text
    assert "too much memory" in response.text


class _Peak:
    """Peak of traced Python allocations while the block runs."""

    def __enter__(self) -> _Peak:
        tracemalloc.start()
        tracemalloc.reset_peak()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bytes = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


def post_bomb(ep: Endpoint, encoding: str, body: bytes) -> httpx.Response:
    return httpx.post(
        ep.url, content=body, headers={"Content-Encoding": encoding}, auth=AUTH, timeout=120
    )


@pytest.mark.parametrize("encoding", list(SIZES))
def test_a_bomb_is_refused_before_it_expands(
    readonly: Endpoint, bombs: dict[str, bytes], encoding: str
) -> None:
    with _Peak() as peak:
        response = post_bomb(readonly, encoding, bombs[encoding])
    assert response.status_code == 413, response.text
    assert response.headers["X-ClickHouse-Exception-Code"] == "229"
    assert peak.bytes < 8 * MiB, f"{peak.bytes / MiB:.0f} MiB allocated for a 1 MiB cap"


@pytest.mark.parametrize("encoding", list(SIZES))
def test_concurrent_bombs_stay_bounded(
    readonly: Endpoint, bombs: dict[str, bytes], encoding: str
) -> None:
    with _Peak() as peak, ThreadPoolExecutor(8) as pool:
        responses = list(
            pool.map(lambda _: post_bomb(readonly, encoding, bombs[encoding]), range(8))
        )
    assert [r.status_code for r in responses] == [413] * 8
    assert peak.bytes < 40 * MiB, f"{peak.bytes / MiB:.0f} MiB allocated by 8 bombs"


@pytest.mark.parametrize("encoding", list(SIZES))
def test_a_body_just_under_the_cap_still_decodes(readonly: Endpoint, encoding: str) -> None:
    """A long query parameter in a form (what clickhouse-connect sends for long values):
    about 1 MiB decoded, accepted in every encoding."""
    from meterline.clickhouse_http._encoding import compress

    head = (b'--b0\r\nContent-Disposition: form-data; name="query"\r\n\r\n'
            b"SELECT length({v:String})\r\n"
            b'--b0\r\nContent-Disposition: form-data; name="param_v"\r\n\r\n')  # fmt: skip
    tail = b"\r\n--b0--\r\n"
    value = b"v" * (MiB - len(head) - len(tail))
    response = httpx.post(
        readonly.url,
        content=compress(head + value + tail, encoding),
        headers={"Content-Encoding": encoding, "Content-Type": "multipart/form-data; boundary=b0"},
        auth=AUTH,
        timeout=60,
    )
    assert response.text == f"{len(value)}\n"
    over = httpx.post(
        readonly.url,
        content=compress(head + value + b"v" + tail, encoding),
        headers={"Content-Encoding": encoding, "Content-Type": "multipart/form-data; boundary=b0"},
        auth=AUTH,
        timeout=60,
    )
    assert over.status_code == 413


@pytest.fixture
def two_bodies(ch_store: object) -> Iterator[Endpoint]:
    """An endpoint that reads at most two bodies at once and lets others wait 0.5 s."""
    yield from _endpoint(ch_store, password=PASSWORD, max_bodies=2, body_wait=0.5)  # type: ignore[arg-type]


def test_bodies_read_at_once_are_bounded(two_bodies: Endpoint) -> None:
    release = threading.Event()

    def slow_body() -> Iterator[bytes]:
        yield b"SELECT "
        release.wait(10)
        yield b"1"

    with ThreadPoolExecutor(2) as pool:
        slow = [pool.submit(httpx.post, two_bodies.url, content=slow_body(), auth=AUTH, timeout=30)
                for _ in range(2)]  # fmt: skip
        time.sleep(0.5)  # both are being read
        started = time.monotonic()
        excess = httpx.post(two_bodies.url, content=b"SELECT 2", auth=AUTH, timeout=30)
        waited = time.monotonic() - started
        release.set()
        assert [f.result().text for f in slow] == ["1\n", "1\n"]
    assert excess.status_code == 503, excess.text
    assert excess.headers["X-ClickHouse-Exception-Code"] == "202"
    assert "TOO_MANY_SIMULTANEOUS_QUERIES" in excess.text
    assert 0.4 < waited < 5
    # the slots are free again
    assert httpx.post(two_bodies.url, content=b"SELECT 3", auth=AUTH, timeout=30).text == "3\n"
    # a request without a body (GET) needs no slot
    assert httpx.get(two_bodies.url, params={"query": "SELECT 4"}, auth=AUTH).text == "4\n"


@pytest.fixture
def one_body(ch_store: object) -> Iterator[Endpoint]:
    """One body at a time, which must arrive within 0.5 s; others wait 0.2 s for the slot."""
    yield from _endpoint(  # type: ignore[arg-type]
        ch_store, password=PASSWORD, max_bodies=1, body_wait=0.2, body_timeout=0.5
    )


def test_a_trickling_body_loses_its_slot(one_body: Endpoint) -> None:
    def trickle() -> Iterator[bytes]:
        yield b"SELECT "
        time.sleep(3)
        yield b"1"

    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(httpx.post, one_body.url, content=trickle(), auth=AUTH, timeout=30)
        time.sleep(1.0)  # past body_timeout: the slot is free again
        assert httpx.post(one_body.url, content=b"SELECT 2", auth=AUTH, timeout=30).text == "2\n"
        response = slow.result()
    assert response.status_code == 503, response.text
    assert response.headers["X-ClickHouse-Exception-Code"] == "209"


def _peak_rss(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


@pytest.mark.e2e
def test_bombs_leave_the_server_process_memory_alone(
    tmp_path: Path, bombs: dict[str, bytes]
) -> None:
    """``meterline serve`` (collector, aggregator and :8123 in one process): a round of
    bombs in every encoding, 4 at a time, barely moves its peak RSS."""
    from meterline.launcher import start_server

    with start_server(tmp_path / "data") as server:
        url = server.clickhouse_http_url
        assert url is not None
        pid = int(server.endpoints["extra"]["pid"])
        assert httpx.post(url, content=b"SELECT 1", timeout=30).text == "1\n"
        before = _peak_rss(pid)
        for encoding, body in bombs.items():
            headers = {"Content-Encoding": encoding}
            with ThreadPoolExecutor(4) as pool:
                sent = [pool.submit(httpx.post, url, content=body, headers=headers, timeout=120)
                        for _ in range(4)]  # fmt: skip
                statuses = [f.result().status_code for f in sent]
            assert statuses == [413] * 4, encoding
        growth = _peak_rss(pid) - before
        assert httpx.post(url, content=b"SELECT 1", timeout=30).text == "1\n"
    assert growth < 64 * MiB, f"peak RSS grew by {growth / MiB:.0f} MiB"
