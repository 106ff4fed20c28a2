"""The spool's files: torn files never sent, dead processes' files taken over, live ones not."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from meterline.instrumentation.delivery.flush import flush_spool
from meterline.instrumentation.delivery.sender import OtlpHttpSender
from meterline.instrumentation.delivery.spool import Spool, frame

from .fakes import OTLPReceiver
from .otlp import payload, put, span_ids

ROOT = Path(__file__).resolve().parents[2]


def names(directory: Path) -> list[str]:
    return sorted(n for n in os.listdir(directory) if not n.endswith(".owner"))


def deliver(spool: Spool) -> tuple[OTLPReceiver, object]:
    with OTLPReceiver() as receiver:
        report = flush_spool(spool, OtlpHttpSender(receiver.url))
    return receiver, report


def test_torn_and_foreign_files_are_set_aside_and_never_block_the_rest(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    good = [payload(1), payload(2), payload(3)]
    put(spool, good[0])
    torn = frame(payload(4))
    (tmp_path / "00000000000000000001-1x0-000000.batch").write_bytes(torn[: len(torn) // 2])
    (tmp_path / "00000000000000000002-1x0-000000.batch").write_bytes(b"")
    (tmp_path / "00000000000000000003-1x0-000000.batch").write_bytes(b"\x0a\x03not ours")
    flipped = bytearray(frame(payload(5)))
    flipped[-1] ^= 0xFF
    (tmp_path / "00000000000000000004-1x0-000000.batch").write_bytes(bytes(flipped))
    put(spool, good[1], good[2])
    receiver, report = deliver(spool)
    assert receiver.bodies == [b"".join(good)]  # only the intact ones, in order
    assert report.remaining == 0  # type: ignore[attr-defined]
    assert [n.rsplit(".", 2)[-2:] for n in names(tmp_path)] == [["batch", "corrupt"]] * 4
    assert spool.status().corrupt == 4
    assert deliver(spool)[0].attempts == []  # set aside for good


def test_half_written_files_of_a_dead_writer(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    whole, cut = frame(payload(2)), frame(payload(3))
    # Killed after writing, before renaming: whole, so queued; killed mid-write: discarded.
    (tmp_path / ".00000000000000000001-99x0dead-000000.batch.tmp").write_bytes(whole)
    (tmp_path / ".00000000000000000002-99x0dead-000001.batch.tmp").write_bytes(cut[:-3])
    receiver, _ = deliver(spool)
    assert receiver.bodies == [whole[12:]]
    assert names(tmp_path) == []


def test_a_tmp_file_of_a_live_writer_is_left_alone(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.write(payload(1))  # makes this process an owner
    own = next(iter(tmp_path.glob("*.open"))).name.split("-")[1]
    tmp = tmp_path / f".00000000000000000001-{own}-000099.batch.tmp"
    tmp.write_bytes(b"partial")
    deliver(spool)
    assert tmp.exists()


CLAIMER = """
import sys, time
from meterline.instrumentation.delivery.spool import Spool
spool = Spool(sys.argv[1])
claims = spool.claim(max_files=int(sys.argv[2]))
print(len(claims), flush=True)
time.sleep(60)
"""


def test_claims_of_a_live_process_are_not_taken_those_of_a_dead_one_are(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    put(spool, *(payload(i + 1) for i in range(3)))
    proc = subprocess.Popen(
        [sys.executable, "-c", CLAIMER, str(tmp_path), "2"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "2"
        receiver, report = deliver(spool)
        assert len(span_ids(receiver.bodies)) == 3  # only the unclaimed file (3 spans)
        assert report.remaining == 0 and spool.status().in_flight == 2  # type: ignore[attr-defined]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    receiver, _ = deliver(spool)  # its owner is dead: its claims are delivered now
    assert len(span_ids(receiver.bodies)) == 1 + 2
    assert names(tmp_path) == []


def test_a_reused_pid_does_not_keep_dead_claims(tmp_path: Path) -> None:
    """Containers reuse pid 1: the token's random half and its lock tell the owners apart."""
    spool = Spool(tmp_path)
    put(spool, payload(1))
    [path] = tmp_path.glob("*.batch")
    path.rename(tmp_path / f"{path.name}.{os.getpid()}xdeadbeef.sending")
    receiver, _ = deliver(spool)
    assert len(receiver.bodies) == 1


def test_concurrent_processes_send_each_file_once(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    payloads = [payload(1) for _ in range(120)]
    put(spool, *payloads)
    with OTLPReceiver() as receiver:
        flushers = [
            subprocess.Popen(
                [sys.executable, "-m", "meterline", "spool", "flush", "--endpoint", receiver.url,
                 "--dir", str(tmp_path)],
                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )
            for _ in range(4)
        ]  # fmt: skip
        outputs = [f.communicate(timeout=60)[0] for f in flushers]
    assert [f.returncode for f in flushers] == [0] * 4, outputs
    received = Counter(span_ids(receiver.attempts))
    assert sorted(received) == sorted(span_ids(payloads)) and set(received.values()) == {1}
    assert names(tmp_path) == []


def test_bound_drops_set_aside_files_then_the_oldest(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1000)
    spool.write(b"r" * 200, rejected=True)
    put(spool, *(bytes([i]) * 200 for i in range(6)))
    kept = [p.read_bytes()[12:] for p in spool.pending()]
    assert spool.status().rejected == 0  # went first
    assert kept == [bytes([i]) * 200 for i in range(2, 6)]
    assert sum(p.stat().st_size for p in spool.pending()) <= 1000


def test_files_of_the_previous_format_are_still_delivered(tmp_path: Path) -> None:
    raw = payload(2)
    (tmp_path / f"{time.time_ns():020d}-123-000000.otlp").write_bytes(raw)
    receiver, _ = deliver(Spool(tmp_path))
    assert receiver.bodies == [raw]


def test_fsync_option(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real(fd))
    Spool(tmp_path / "a").write(b"x")
    assert synced == []  # page cache only, by default
    monkeypatch.setenv("METERLINE_SPOOL_FSYNC", "1")
    Spool(tmp_path / "b").write(b"x")
    assert len(synced) == 2  # the file, then the directory


def test_a_failed_write_keeps_the_records_before_it_deliverable(
    tmp_path: Path,
    monkeypatch,  # type: ignore[no-untyped-def]
) -> None:
    spool = Spool(tmp_path)
    first = payload(1)
    spool.write(first)
    real = os.write

    def disk_full(fd: int, data: bytes) -> int:
        real(fd, bytes(data)[:10])  # a torn record, then ENOSPC
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", disk_full)
    assert spool.write(payload(2)) is None
    monkeypatch.setattr(os, "write", real)
    receiver, _ = deliver(Spool(tmp_path))
    assert receiver.bodies == [first]
    assert spool.status().corrupt == 1
