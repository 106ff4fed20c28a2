r"""The on-disk queue of usage not yet acknowledged by the collector.

Contract:

* :meth:`Spool.write` appends one serialized ``ExportTraceServiceRequest`` as a record to
  this process's open *segment*, ``<time_ns>-<token>-<n>.open`` (one ``write`` call: no
  file is created per record — creating files is what costs here). The page cache is
  enough against a killed process (kill -9 included); ``METERLINE_SPOOL_FSYNC=1`` also
  syncs every record, against power loss. Each record has a header with its length and
  CRC-32.
* Delivery :meth:`seal`\ s the open segment first (renamed ``….batch``; the next record
  opens a new one), and a segment is sealed once it holds 1 MiB. :meth:`claim` takes
  sealed files oldest first by renaming each to ``….batch.<token>.sending`` (atomic: two
  processes never send the same file at once); :meth:`ack` deletes claimed files (only
  after the collector acknowledged them), :meth:`release` puts them back, :meth:`reject`
  sets them aside as ``….rejected`` (refused by the collector as malformed: kept for
  inspection, never resent).
* A record torn by a kill during its write or by a power cut, or bytes that are not ours,
  are never sent: the intact records of the file are delivered and the rest is set aside
  as ``….corrupt`` with a warning; nothing blocks the files after it.
* Segments, claims and half-written files of a process that died (``_owners``: a lock the
  kernel drops at death) are taken over by the next flush: its open segment is sealed, its
  claims go back to the queue. A crash between the ack and the delete sends that file once
  more, byte for byte the same (same trace/span ids and response ids), so the collector
  counts it once. A live process's open segment is its own to deliver.
* Bounded by ``max_bytes``: beyond it the set-aside files go first, then the oldest sealed
  batches (a warning each: usage is lost only when the operator's bound says so).
* Files of the previous format (``*.otlp``: one raw payload, fsynced) are still read.

Several threads and processes may share one directory; every :class:`Spool` of a process
shares that process's open segment in a directory.

Directory: ``METERLINE_SPOOL_DIR``, else ``<user cache dir>/meterline/spool``
(``$XDG_CACHE_HOME`` or ``~/.cache`` on Linux, ``~/Library/Caches`` on macOS,
``%LOCALAPPDATA%`` on Windows). Bound: ``METERLINE_SPOOL_MAX_BYTES`` (default 256 MiB).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import struct
import sys
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from meterline.instrumentation.delivery import _owners

logger = logging.getLogger(__name__)

ENV_SPOOL_DIR = "METERLINE_SPOOL_DIR"
ENV_SPOOL_MAX_BYTES = "METERLINE_SPOOL_MAX_BYTES"
ENV_SPOOL_FSYNC = "METERLINE_SPOOL_FSYNC"
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
SEGMENT_MAX_BYTES = 1024 * 1024
BATCH = ".batch"
OPEN = ".open"
LEGACY = ".otlp"
CLAIM = ".sending"
CORRUPT = ".corrupt"
REJECTED = ".rejected"
_TMP = ".tmp"
OTLP = b"MLS1"
"""Record kind: one serialized ``ExportTraceServiceRequest``."""
SPAN = b"MLS2"
"""Record kind: one span record (:func:`~.records.span_record`)."""
_KINDS = (OTLP, SPAN)
_HEADER = struct.Struct(">4sII")  # kind, payload length, CRC-32 of the payload
Record = tuple[bytes, bytes]
"""``(kind, payload)``."""
_RESCAN_SECONDS = 10.0


def default_dir() -> Path:
    """The spool directory from the environment or the user's cache directory."""
    configured = os.environ.get(ENV_SPOOL_DIR)
    if configured:
        return Path(configured).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "meterline" / "spool"


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def frame(payload: bytes, kind: bytes = OTLP) -> bytes:
    """One record: header (kind, length, CRC-32) and payload."""
    return _HEADER.pack(kind, len(payload), zlib.crc32(payload)) + payload


def records(data: bytes) -> tuple[list[Record], bytes]:
    """The intact records of a file, and the bytes that are not (torn or foreign).

    After a bad stretch, reading resumes at the next header whose record is intact.
    """
    out: list[Record] = []
    bad = bytearray()
    pos, end = 0, len(data)
    while pos < end:
        record = _record_at(data, pos)
        if record is not None:
            out.append(record)
            pos += _HEADER.size + len(record[1])
            continue
        nxt = data.find(b"MLS", pos + 1)
        while nxt != -1 and _record_at(data, nxt) is None:
            nxt = data.find(b"MLS", nxt + 1)
        stop = end if nxt == -1 else nxt
        bad += data[pos:stop]
        pos = stop
    return out, bytes(bad)


def unframe(data: bytes) -> bytes | None:
    """A file's records as one OTLP request; None if nothing in it is intact."""
    from meterline.instrumentation.delivery.records import to_request

    good, _ = records(data)
    return to_request(good) if good else None


def _record_at(data: bytes, pos: int) -> Record | None:
    if len(data) - pos < _HEADER.size:
        return None
    kind, length, crc = _HEADER.unpack_from(data, pos)
    start = pos + _HEADER.size
    payload = data[start : start + length]
    if kind not in _KINDS or len(payload) != length or zlib.crc32(payload) != crc:
        return None
    return kind, payload


class _Segment:
    """A process's open segment in one directory (shared by its Spool objects)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.fd: int | None = None
        self.path: Path | None = None
        self.size = 0
        self.checked = 0.0


_segments: dict[str, _Segment] = {}
_segments_lock = threading.Lock()
_counter = itertools.count()


def _segment(directory: Path) -> _Segment:
    key = str(directory)
    seg = _segments.get(key)
    if seg is None:
        with _segments_lock:
            seg = _segments.setdefault(key, _Segment())
    return seg


def _after_fork_in_child() -> None:
    """The parent's open segments are the parent's: the child starts its own."""
    global _segments_lock
    _segments_lock = threading.Lock()
    for seg in _segments.values():
        if seg.fd is not None:
            with contextlib.suppress(OSError):
                os.close(seg.fd)
    _segments.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


@dataclass
class Claimed:
    """A spooled file this process has claimed for sending."""

    path: Path
    """The claimed file (``….<token>.sending``)."""
    name: str
    """Its queued name, to put it back."""
    records: list[Record] = field(default_factory=list)
    """What it holds."""

    @property
    def size(self) -> int:
        return sum(len(payload) for _, payload in self.records)


@dataclass
class SpoolStatus:
    pending: int = 0
    pending_bytes: int = 0
    in_flight: int = 0
    rejected: int = 0
    corrupt: int = 0


class Spool:
    """The on-disk queue (see the module docstring); safe across threads and processes."""

    def __init__(
        self,
        directory: Path | str | None = None,
        *,
        max_bytes: int | None = None,
        fsync: bool | None = None,
    ) -> None:
        self.directory = Path(directory) if directory is not None else default_dir()
        self.max_bytes = (
            max_bytes if max_bytes is not None else _env_int(ENV_SPOOL_MAX_BYTES, DEFAULT_MAX_BYTES)
        )
        self.fsync = _env_flag(ENV_SPOOL_FSYNC) if fsync is None else fsync
        self._room = threading.Lock()  # only ever tried without blocking
        self._approx_bytes: int | None = None
        self._scanned_at = 0.0

    # -- writing ------------------------------------------------------------------------

    def write(
        self,
        payload: bytes,
        *,
        kind: bytes = OTLP,
        rejected: bool = False,
        lock_timeout: float = -1,
    ) -> Path | None:
        """Store one record; returns its file, or None if it could not be written.

        Args:
            payload: a serialized ``ExportTraceServiceRequest`` (``kind=OTLP``) or a span
                record (``kind=SPAN``).
            rejected: store it set aside (for inspection, never sent), in a file of its own.
            lock_timeout: seconds to wait for another thread's write (-1: as long as it
                takes); a signal handler passes a bound, as it may have interrupted that
                very write.
        """
        if rejected:
            return self.write_rejected([(kind, payload)])
        return self.write_many([payload], kind=kind, lock_timeout=lock_timeout)

    def write_many(
        self, payloads: list[bytes], *, kind: bytes = SPAN, lock_timeout: float = -1
    ) -> Path | None:
        """Append several records of one kind with a single ``write`` call."""
        data = b"".join(frame(p, kind) for p in payloads)
        seg = _segment(self.directory)
        if not seg.lock.acquire(timeout=lock_timeout):
            return None
        try:
            now = time.monotonic()
            if seg.fd is not None and now - seg.checked > 1.0:
                seg.checked = now  # at most once a second: a syscall the write can skip
                if os.fstat(seg.fd).st_nlink == 0:
                    logger.warning(
                        "meterline: the spool segment %s was deleted while open (the "
                        "directory removed?); writing a new one",
                        seg.path,
                    )
                    self._drop_segment(seg)
            if seg.fd is None:
                self._open_segment(seg, len(data))
                seg.checked = now
            assert seg.fd is not None and seg.path is not None
            written = os.write(seg.fd, data)
            if written < len(data):  # a short write (rare, e.g. a signal): the rest
                view = memoryview(data)[written:]
                while view:
                    view = view[os.write(seg.fd, view) :]
            if self.fsync:
                os.fsync(seg.fd)
            seg.size += len(data)
            path = seg.path
            if self._approx_bytes is not None:
                self._approx_bytes += len(data)
            if seg.size >= SEGMENT_MAX_BYTES:
                self._seal_locked(seg)
                path = path.with_name(path.name[: -len(OPEN)] + BATCH)
            return path
        except OSError:
            logger.warning("meterline: could not spool usage to %s", self.directory, exc_info=True)
            # Seal what the segment holds (a torn last record is set aside when read): the
            # records before it stay deliverable, and the next write starts a new segment.
            self._seal_locked(seg)
            return None
        finally:
            seg.lock.release()

    def write_rejected(self, refused: list[Record]) -> Path | None:
        """Keep records the collector refused in a ``….rejected`` file of their own."""
        return self._write_file(b"".join(frame(p, k) for k, p in refused), REJECTED)

    put = write  # the name of the previous API

    def seal(self, *, lock_timeout: float = -1) -> bool:
        """Make this process's open segment deliverable; False if its lock was not had."""
        seg = _segment(self.directory)
        if not seg.lock.acquire(timeout=lock_timeout):
            return False
        try:
            self._seal_locked(seg)
            return True
        finally:
            seg.lock.release()

    # -- claiming and settling ----------------------------------------------------------

    def claim(self, *, max_bytes: int = 4 * 1024 * 1024, max_files: int = 1000) -> list[Claimed]:
        """Claim sealed files, oldest first, until ``max_bytes`` of payload (at least one).

        Torn records met on the way are set aside as ``….corrupt`` and skipped.
        """
        names = self.recover()
        claimed: list[Claimed] = []
        total = 0
        try:
            token = _owners.token_for(self.directory)
        except OSError:
            logger.warning("meterline: cannot use the spool %s", self.directory, exc_info=True)
            return claimed
        for name in sorted(n for n in names if _deliverable(n)):
            path = self.directory / f"{name}.{token}{CLAIM}"
            try:
                os.rename(self.directory / name, path)
            except FileNotFoundError:
                continue  # another process took it
            except OSError:
                logger.debug("meterline: cannot claim %s", name, exc_info=True)
                continue
            try:
                data = path.read_bytes()
            except OSError:
                logger.debug("meterline: cannot read %s", name, exc_info=True)
                self._rename(path, self.directory / name)
                continue
            if name.endswith(LEGACY):
                good, bad = ([(OTLP, data)] if data else []), b""
            else:
                good, bad = records(data)
            if not good:  # nothing intact (an empty file too): the whole file goes aside
                self._set_aside_corrupt(name, bad, whole=True, claimed=path)
                continue
            if bad:
                self._set_aside_corrupt(name, bad, whole=False, claimed=path)
            claim = Claimed(path, name, good)
            claimed.append(claim)
            total += claim.size
            if total >= max_bytes or len(claimed) >= max_files:
                break
        return claimed

    def ack(self, claims: list[Claimed]) -> None:
        """Delete claimed files: the collector acknowledged them."""
        for c in claims:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(c.path)
            if self._approx_bytes is not None:
                self._approx_bytes -= c.size

    def set_aside(self, claim: Claimed, record: Record) -> None:
        """Keep an intact but unreadable record (not a span record of this version) as
        ``….corrupt``, with a warning."""
        self._set_aside_corrupt(claim.name, frame(record[1], record[0]), whole=False,
                                claimed=claim.path)  # fmt: skip

    def release(self, claims: list[Claimed]) -> None:
        """Put claimed files back in the queue (not delivered)."""
        for c in claims:
            self._rename(c.path, self.directory / c.name)

    def reject(self, claims: list[Claimed]) -> None:
        """Set claimed files aside as ``….rejected``: never resent, kept for inspection."""
        for c in claims:
            self._rename(c.path, self.directory / (c.name + REJECTED))

    # -- reading the queue --------------------------------------------------------------

    def pending(self) -> list[Path]:
        """Files waiting for delivery, oldest first: sealed ones and any open segment
        (this process's or a dead one's; not those claimed or set aside)."""
        names = self._names()
        return [self.directory / n for n in sorted(names) if _deliverable(n) or n.endswith(OPEN)]

    def queued(self) -> int:
        """How many sealed files wait for delivery (not claimed, not set aside)."""
        return sum(1 for n in self._names() if _deliverable(n))

    def has_pending(self) -> bool:
        """Whether anything waits or is being sent (cheap: stops at the first match)."""
        try:
            with os.scandir(self.directory) as entries:
                return any(_deliverable(e.name) or e.name.endswith((CLAIM, OPEN)) for e in entries)
        except OSError:
            return False

    def status(self) -> SpoolStatus:
        out = SpoolStatus()
        for name in self._names():
            if _deliverable(name) or name.endswith(OPEN):
                out.pending += 1
                out.pending_bytes += _size(self.directory / name)
            elif name.endswith(CLAIM):
                out.in_flight += 1
            elif name.endswith(REJECTED):
                out.rejected += 1
            elif name.endswith(CORRUPT):
                out.corrupt += 1
        return out

    def close(self) -> None:
        """Seal the open segment and drop this process's lock file in the directory."""
        self.seal(lock_timeout=1.0)
        _owners.release(self.directory)

    # -- recovery -----------------------------------------------------------------------

    def recover(self) -> list[str]:
        """Take over the files of processes that died; returns the directory's names."""
        names = self._names()
        alive: dict[str, bool] = {}

        def owner_alive(token: str) -> bool:
            if token not in alive:
                alive[token] = _owners.is_alive(self.directory, token)
            return alive[token]

        changed = False
        for name in names:
            if name.endswith(OPEN) and not name.startswith("."):
                if not owner_alive(_writer_token(name)):
                    self._rename(
                        self.directory / name, self.directory / (name[: -len(OPEN)] + BATCH)
                    )
                    changed = True
            elif name.endswith(CLAIM):
                queued, _, token = name[: -len(CLAIM)].rpartition(".")
                if queued and not owner_alive(token):
                    self._rename(self.directory / name, self.directory / queued)
                    changed = True
            elif name.startswith(".") and name.endswith(_TMP):
                inner = name[1 : -len(_TMP)]
                path = self.directory / name
                if inner.endswith(_owners.OWNER_SUFFIX):
                    token = inner[: -len(_owners.OWNER_SUFFIX)]
                    if _age(path) > 60 and not owner_alive(token):
                        path.unlink(missing_ok=True)
                elif not owner_alive(_writer_token(inner)):
                    self._finish_tmp(name, inner)
                    changed = True
        return self._names() if changed else names

    def _finish_tmp(self, name: str, final: str) -> None:
        path = self.directory / name
        try:
            data = path.read_bytes()
        except OSError:
            return
        good, bad = records(data)
        if good and not bad:
            self._rename(path, self.directory / final)  # written whole, not yet renamed
            return
        path.unlink(missing_ok=True)
        logger.warning(
            "meterline: discarded %s, a spool file its process was writing when it died", name
        )

    # -- internals ----------------------------------------------------------------------

    def _open_segment(self, seg: _Segment, incoming: int) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        token = _owners.token_for(self.directory)
        self._make_room(incoming)
        name = f"{time.time_ns():020d}-{token}-{next(_counter):06d}{OPEN}"
        path = self.directory / name
        seg.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        seg.path = path
        seg.size = 0
        if self.fsync:
            self._sync_directory()

    def _seal_locked(self, seg: _Segment) -> None:
        if seg.fd is None or seg.path is None:
            return
        path = seg.path
        self._drop_segment(seg)
        self._rename(path, path.with_name(path.name[: -len(OPEN)] + BATCH))
        if self.fsync:
            self._sync_directory()

    @staticmethod
    def _drop_segment(seg: _Segment) -> None:
        if seg.fd is not None:
            with contextlib.suppress(OSError):
                os.close(seg.fd)
        seg.fd, seg.path, seg.size = None, None, 0

    def _write_file(self, data: bytes, suffix: str) -> Path | None:
        """A file of its own, written under a temporary name, then renamed."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            token = _owners.token_for(self.directory)
            name = f"{time.time_ns():020d}-{token}-{next(_counter):06d}{BATCH}"
            final = self.directory / (name + suffix)
            tmp = self.directory / f".{name}{_TMP}"
            with open(tmp, "wb") as fh:
                fh.write(data)
                if self.fsync:
                    fh.flush()
                    os.fsync(fh.fileno())
            os.replace(tmp, final)
            return final
        except OSError:
            logger.warning("meterline: could not write to %s", self.directory, exc_info=True)
            return None

    def _set_aside_corrupt(self, name: str, bad: bytes, *, whole: bool, claimed: Path) -> None:
        target = self.directory / (name + CORRUPT)
        if whole:
            self._rename(claimed, target)
        else:
            try:
                with open(target, "ab") as fh:
                    fh.write(bad)
            except OSError:
                logger.debug("meterline: cannot write %s", target, exc_info=True)
        logger.warning(
            "meterline: %d byte(s) of spooled batch %s are torn or not a spool record; "
            "set aside as %s, not sent",
            len(bad),
            name,
            target.name,
        )

    def _names(self) -> list[str]:
        try:
            return os.listdir(self.directory)
        except OSError:
            return []

    def _rename(self, src: Path, dst: Path) -> None:
        try:
            os.rename(src, dst)
        except OSError:
            logger.debug("meterline: cannot rename %s to %s", src, dst, exc_info=True)

    def _sync_directory(self) -> None:
        try:
            fd = os.open(self.directory, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)

    def _make_room(self, incoming: int) -> None:
        now = time.monotonic()
        approx = self._approx_bytes
        if (
            approx is not None
            and approx + incoming <= self.max_bytes
            and now - self._scanned_at < _RESCAN_SECONDS
        ):
            return
        if not self._room.acquire(blocking=False):
            return  # another thread is making room
        try:
            self._scanned_at = now
            files = []
            for name in self._names():
                if _deliverable(name) or name.endswith((REJECTED, CORRUPT, OPEN)):
                    files.append((name, _size(self.directory / name)))
            total = sum(size for _, size in files)
            # Set-aside files first, then the oldest sealed batches; never an open segment.
            droppable = sorted(
                ((not n.endswith((REJECTED, CORRUPT)), n, size) for n, size in files
                 if not n.endswith(OPEN))
            )  # fmt: skip
            for _, name, size in droppable:
                if total + incoming <= self.max_bytes:
                    break
                try:
                    os.unlink(self.directory / name)
                except FileNotFoundError:
                    continue
                total -= size
                logger.warning(
                    "meterline: spool %s is over its bound (%d bytes), dropped %s",
                    self.directory,
                    self.max_bytes,
                    name,
                )
            self._approx_bytes = total
        finally:
            self._room.release()


def _deliverable(name: str) -> bool:
    return not name.startswith(".") and name.endswith((BATCH, LEGACY))


def _writer_token(name: str) -> str:
    parts = name.split("-")
    return parts[1] if len(parts) == 3 else ""


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0
