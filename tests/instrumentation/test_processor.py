"""SpoolingSpanProcessor: write-ahead within the write interval, delivery, bounded shutdown."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

from meterline.instrumentation.delivery.processor import SpoolingSpanProcessor
from meterline.instrumentation.delivery.records import to_request
from meterline.instrumentation.delivery.spool import Spool, records, unframe

from .fakes import OTLPReceiver, free_port
from .otlp import span_ids

DEAD = f"http://127.0.0.1:{free_port()}/v1/traces"


def provider_with(processor: SpoolingSpanProcessor, **kw: object) -> TracerProvider:
    provider = TracerProvider(shutdown_on_exit=False, **kw)  # type: ignore[arg-type]
    provider.add_span_processor(processor)
    return provider


def end_spans(provider: TracerProvider, n: int) -> list[bytes]:
    tracer = provider.get_tracer("t")
    ids = []
    for _ in range(n):
        span = tracer.start_span("chat gpt-4o")
        span.end()
        ids.append(span.get_span_context().span_id.to_bytes(8, "big"))
    return ids


def on_disk(directory: Path) -> list[bytes]:
    """Every file of the spool (open, sealed or being sent) as an OTLP request."""
    for _ in range(20):  # the sender renames files meanwhile: read again
        out: list[bytes] = []
        try:
            for path in sorted(directory.iterdir()):
                name = path.name
                if not name.startswith(".") and (name.endswith(".open") or ".batch" in name):
                    if name.endswith((".rejected", ".corrupt")):
                        continue
                    good, bad = records(path.read_bytes())
                    assert not bad
                    out.append(to_request(good))
            return out
        except FileNotFoundError:
            time.sleep(0.01)
    raise AssertionError("the spool kept changing")


def wait_for(predicate, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    yield Spool(tmp_path)


def test_an_ended_span_is_on_disk_when_it_has_ended(spool: Spool) -> None:
    processor = SpoolingSpanProcessor(DEAD, spool=spool, export_interval=60)
    provider = provider_with(processor)
    tracer = provider.get_tracer("t")
    for _ in range(3):
        span = tracer.start_span("chat gpt-4o")
        span.end()  # write-ahead: on disk before end() returns, no thread involved
        sid = span.get_span_context().span_id.to_bytes(8, "big")
        assert sid in span_ids(on_disk(spool.directory))
    processor.shutdown()


def test_delivered_then_deleted(spool: Spool) -> None:
    with OTLPReceiver() as receiver:
        processor = SpoolingSpanProcessor(receiver.url, spool=spool, export_interval=0.05)
        provider = provider_with(processor)
        ids = end_spans(provider, 5)
        assert wait_for(lambda: sorted(span_ids(receiver.bodies)) == sorted(ids))
        assert wait_for(lambda: not spool.has_pending())
        processor.shutdown()
    assert sorted(span_ids(receiver.attempts)) == sorted(ids)  # each once


def test_shutdown_delivers_what_the_lazy_sender_held_back(spool: Spool) -> None:
    with OTLPReceiver() as receiver:
        processor = SpoolingSpanProcessor(receiver.url, spool=spool, export_interval=600)
        provider = provider_with(processor)
        end_spans(provider, 1)  # delivered at once; the next ones would wait 10 minutes
        assert wait_for(lambda: len(receiver.bodies) == 1)
        ids = end_spans(provider, 4)
        provider.shutdown()
    assert set(ids) <= set(span_ids(receiver.bodies))
    assert not spool.has_pending()


def test_a_busy_or_unwritable_spool_keeps_records_in_memory_and_sends_them(
    spool: Spool,
    monkeypatch,  # type: ignore[no-untyped-def]
) -> None:
    with OTLPReceiver() as receiver:
        processor = SpoolingSpanProcessor(receiver.url, spool=spool, export_interval=600)
        provider = provider_with(processor)
        monkeypatch.setattr(Spool, "write_many", lambda self, p, **kw: None)
        ids = end_spans(provider, 3)
        assert on_disk(spool.directory) == []
        assert processor.force_flush(2000)
        assert sorted(span_ids(receiver.bodies)) == sorted(ids)
        processor.shutdown()


def test_collector_down_usage_stays_and_the_next_start_delivers_it(spool: Spool) -> None:
    processor = SpoolingSpanProcessor(DEAD, spool=spool)
    provider = provider_with(processor)
    ids = end_spans(provider, 7)
    started = time.monotonic()
    provider.shutdown()
    assert time.monotonic() - started < 3.0
    assert sorted(span_ids(on_disk(spool.directory))) == sorted(ids)
    with OTLPReceiver() as receiver:
        nxt = SpoolingSpanProcessor(receiver.url, spool=Spool(spool.directory))
        assert wait_for(lambda: sorted(span_ids(receiver.bodies)) == sorted(ids))
        nxt.shutdown()
    assert not Spool(spool.directory).has_pending()


def test_shutdown_is_bounded_against_a_hanging_collector(spool: Spool) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)  # connections wait in the backlog, never answered
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1/traces"
        processor = SpoolingSpanProcessor(url, spool=spool, shutdown_timeout=0.5)
        provider = provider_with(processor)
        ids = end_spans(provider, 3)
        time.sleep(0.1)  # the sender is now blocked on its POST
        started = time.monotonic()
        provider.shutdown()
        took = time.monotonic() - started
        # Kept: queued, or claimed by this process (taken over by the next one once it exits).
        kept = [unframe(p.read_bytes()) for p in spool.directory.glob("*.batch*")]
    assert took < 1.5
    assert sorted(span_ids(b for b in kept if b)) == sorted(ids)


def test_force_flush_reports_whether_everything_was_delivered(spool: Spool) -> None:
    down = SpoolingSpanProcessor(DEAD, spool=spool, export_interval=60)
    end_spans(provider_with(down), 2)
    assert down.force_flush(500) is False
    with OTLPReceiver() as receiver:
        up = SpoolingSpanProcessor(receiver.url, spool=spool, export_interval=60)
        end_spans(provider_with(up), 2)
        assert up.force_flush(2000) is True
        assert len(span_ids(receiver.bodies)) == 4
        up.shutdown()
    down.shutdown()


def test_unsampled_spans_are_not_kept(spool: Spool) -> None:
    processor = SpoolingSpanProcessor(DEAD, spool=spool, export_interval=60)
    provider = provider_with(processor, sampler=ALWAYS_OFF)
    end_spans(provider, 3)
    processor.persist()
    assert on_disk(spool.directory) == []
    processor.shutdown()


def test_an_unwritable_spool_sends_from_memory(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("a file where the spool directory should be")
    with OTLPReceiver() as receiver:
        processor = SpoolingSpanProcessor(receiver.url, spool=Spool(blocked / "spool"))
        ids = end_spans(provider_with(processor), 3)
        assert wait_for(lambda: sorted(span_ids(receiver.bodies)) == sorted(ids))
        processor.shutdown()


def test_usage_waiting_in_memory_does_not_wait_for_the_batching_interval(
    tmp_path: Path,
) -> None:
    """Memory survives no crash: a later span goes at once, not export_interval later."""
    blocked = tmp_path / "file"
    blocked.write_text("a file where the spool directory should be")
    with OTLPReceiver() as receiver:
        processor = SpoolingSpanProcessor(
            receiver.url, spool=Spool(blocked / "spool"), export_interval=60
        )
        provider = provider_with(processor)
        first = end_spans(provider, 1)
        assert wait_for(lambda: span_ids(receiver.bodies) == first)
        later = end_spans(provider, 2)
        assert wait_for(lambda: sorted(span_ids(receiver.bodies)) == sorted(first + later))
        processor.shutdown()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX fork")
def test_a_forked_child_writes_its_own_spans(spool: Spool) -> None:
    processor = SpoolingSpanProcessor(DEAD, spool=spool, export_interval=60)
    provider = provider_with(processor)
    end_spans(provider, 1)
    assert wait_for(lambda: len(on_disk(spool.directory)) == 1)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a span, then an exit that runs no exit hooks
        try:
            os.close(read)
            [sid] = end_spans(provider, 1)
            os.write(write, sid)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                if sid in span_ids(on_disk(spool.directory)):
                    break
                time.sleep(0.01)
        finally:
            os._exit(0)
    os.close(write)
    child_sid = os.read(read, 8)
    os.close(read)
    os.waitpid(pid, 0)
    assert child_sid in span_ids(on_disk(spool.directory))
    processor.shutdown()


def test_an_invalid_endpoint_keeps_usage_and_says_so(
    spool: Spool, caplog: pytest.LogCaptureFixture
) -> None:
    processor = SpoolingSpanProcessor("localhost:4318", spool=spool)  # no scheme
    ids = end_spans(provider_with(processor), 2)
    assert wait_for(lambda: "is not an http(s) OTLP endpoint URL" in caplog.text)
    assert "check the endpoint" in caplog.text
    processor.shutdown()
    assert sorted(span_ids(on_disk(spool.directory))) == sorted(ids)


def test_a_spool_directory_removed_while_running(tmp_path: Path) -> None:
    import shutil

    spool = Spool(tmp_path / "spool")
    processor = SpoolingSpanProcessor(DEAD, spool=spool, export_interval=60)
    provider = provider_with(processor)
    end_spans(provider, 1)
    processor.persist()
    while spool.directory.exists():  # the sender may be renaming files meanwhile
        shutil.rmtree(spool.directory, ignore_errors=True)
    time.sleep(1.1)  # the writer looks for a removed segment once a second
    [sid] = end_spans(provider, 1)
    processor.persist()
    assert span_ids(on_disk(spool.directory)) == [sid]
    processor.shutdown()
