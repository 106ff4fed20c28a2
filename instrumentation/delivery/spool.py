"""The on-disk queue of usage not yet acknowledged by the collector.

Contract:

* :meth:`Spool.write` stores one serialized ``ExportTraceServiceRequest`` as
  ``<time_ns>-<token>-<n>.batch``: written under a temporary name, then renamed, so a
  reader never sees a file being written. The page cache is enough against a killed
  process (kill -9 included); ``METERLINE_SPOOL_FSYNC=1`` also syncs the file and the
  directory, against power loss. Each file carries a header with the payload's length and
  CRC-32: a file torn by a power cut (or garbage) is never sent — it is set aside as
  ``….corrupt`` with a warning and the rest is delivered.
* :meth:`Spool.claim` takes files oldest first by renaming each to
  ``….batch.<token>.sending`` (atomic: two processes never send the same file at once).
  :meth:`ack` deletes claimed files (only after the collector acknowledged them),
  :meth:`release` puts them back, :meth:`reject` sets them aside as ``….rejected`` (the
  collector refused them as malformed: kept for inspection, never resent).
* Files claimed or half-written by a process that died (``_owners``: a lock the kernel
  drops at death) are taken over by the next flush: claims go back to the queue, a
  completed temporary file is queued, an incomplete one discarded. A crash between the ack
  and the delete sends that file once more, byte for byte the same (same trace/span ids
  and response ids), so the collector counts it once.
* Bounded by ``max_bytes``: beyond it the set-aside files go first, then the oldest batches
  (a warning each: usage is lost only when the operator's bound says so).
* Files of the previous format (``*.otlp``: the raw payload, fsynced) are still read.

Several threads and processes may share one directory.

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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from meterline.instrumentation.delivery import _owners

logger = logging.getLogger(__name__)

ENV_SPOOL_DIR = "METERLINE_SPOOL_DIR"
ENV_SPOOL_MAX_BYTES = "METERLINE_SPOOL_MAX_BYTES"
ENV_SPOOL_FSYNC = "METERLINE_SPOOL_FSYNC"
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
BATCH = ".batch"
LEGACY = ".otlp"
CLAIM = ".sending"
CORRUPT = ".corrupt"
REJECTED = ".rejected"
_TMP = ".tmp"
_MAGIC = b"MLS1"
_HEADER = struct.Struct(">4sII")  # magic, payload length, CRC-32 of the payload
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


def frame(payload: bytes) -> bytes:
    """The file content for ``payload``: header (magic, length, CRC-32) and payload."""
    return _HEADER.pack(_MAGIC, len(payload), zlib.crc32(payload)) + payload


def unframe(data: bytes) -> bytes | None:
    """The payload of a whole, intact file; None if it is torn or not ours."""
    if len(data) < _HEADER.size:
        return None
    magic, length, crc = _HEADER.unpack_from(data)
    payload = data[_HEADER.size :]
    if magic != _MAGIC or len(payload) != length or zlib.crc32(payload) != crc:
        return None
    return payload


@dataclass
class Claimed:
    """A spooled request this process has claimed for sending."""

    path: Path
    """The claimed file (``….<token>.sending``)."""
    name: str
    """Its queued name, to put it back."""
    payload: bytes


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
        self._counter = itertools.count()
        self._room = threading.Lock()  # only ever tried without blocking (signal-safe)
        self._approx_bytes: int | None = None
        self._scanned_at = 0.0

    # -- writing ------------------------------------------------------------------------

    def write(self, payload: bytes, *, rejected: bool = False) -> Path | None:
        """Store one request; returns its file, or None if it could not be written.

        Takes no lock a signal handler could find held by the thread it interrupted.
        ``rejected=True`` stores it set aside (for inspection, never sent).
        """
        data = frame(payload)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            token = _owners.token_for(self.directory)
            self._make_room(len(data))
            name = f"{time.time_ns():020d}-{token}-{next(self._counter):06d}{BATCH}"
            final = self.directory / (name + REJECTED if rejected else name)
            tmp = self.directory / f".{name}{_TMP}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
            if self.fsync:
                self._sync_directory()
            if self._approx_bytes is not None:
                self._approx_bytes += len(data)
            return final
        except OSError:
            logger.warning("meterline: could not spool usage to %s", self.directory, exc_info=True)
            return None

    put = write  # the name of the previous API

    # -- claiming and settling ----------------------------------------------------------

    def claim(self, *, max_bytes: int = 4 * 1024 * 1024, max_files: int = 1000) -> list[Claimed]:
        """Claim queued files, oldest first, until ``max_bytes`` of payload (at least one).

        Torn files met on the way are set aside as ``….corrupt`` and skipped.
        """
        self.recover()
        claimed: list[Claimed] = []
        total = 0
        try:
            token = _owners.token_for(self.directory)
        except OSError:
            logger.warning("meterline: cannot use the spool %s", self.directory, exc_info=True)
            return claimed
        for name in self._queued():
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
            payload = data if name.endswith(LEGACY) else unframe(data)
            if not payload:
                self._rename(path, self.directory / (name + CORRUPT))
                logger.warning(
                    "meterline: spooled batch %s is torn or not a spool file (%d bytes); "
                    "set aside as %s%s, not sent",
                    name,
                    len(data),
                    name,
                    CORRUPT,
                )
                continue
            claimed.append(Claimed(path, name, payload))
            total += len(payload)
            if total >= max_bytes or len(claimed) >= max_files:
                break
        return claimed

    def ack(self, claims: list[Claimed]) -> None:
        """Delete claimed files: the collector acknowledged them."""
        for c in claims:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(c.path)
            if self._approx_bytes is not None:
                self._approx_bytes -= len(c.payload)

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
        """Queued files, oldest first (not counting claimed or set-aside ones)."""
        return [self.directory / n for n in self._queued()]

    def has_pending(self) -> bool:
        """Whether anything is queued or claimed (cheap: stops at the first match)."""
        try:
            with os.scandir(self.directory) as entries:
                return any(_deliverable(e.name) or e.name.endswith(CLAIM) for e in entries)
        except OSError:
            return False

    def status(self) -> SpoolStatus:
        out = SpoolStatus()
        for name in self._names():
            if _deliverable(name):
                out.pending += 1
                out.pending_bytes += _size(self.directory / name)
            elif name.endswith(CLAIM):
                out.in_flight += 1
            elif name.endswith(REJECTED):
                out.rejected += 1
            elif name.endswith(CORRUPT):
                out.corrupt += 1
        return out

    def flush(self, post: Callable[[bytes], bool]) -> tuple[int, int]:
        """Send queued files one by one with ``post`` (True = acknowledged).

        Stops at the first failure. Returns ``(sent, remaining)`` file counts.
        """
        sent = 0
        while True:
            claims = self.claim(max_files=1)
            if not claims:
                return sent, len(self.pending())
            try:
                ok = post(claims[0].payload)
            except Exception:
                logger.debug("meterline: spool post failed", exc_info=True)
                ok = False
            if not ok:
                self.release(claims)
                return sent, len(self.pending())
            self.ack(claims)
            sent += 1

    def close(self) -> None:
        """Drop this process's lock file in the directory (call when done with it)."""
        _owners.release(self.directory)

    # -- recovery -----------------------------------------------------------------------

    def recover(self) -> None:
        """Take over claims and half-written files of processes that died."""
        names = self._names()
        alive: dict[str, bool] = {}

        def owner_alive(token: str) -> bool:
            if token not in alive:
                alive[token] = _owners.is_alive(self.directory, token)
            return alive[token]

        for name in names:
            if name.endswith(CLAIM):
                queued, _, token = name[: -len(CLAIM)].rpartition(".")
                if queued and not owner_alive(token):
                    self._rename(self.directory / name, self.directory / queued)
            elif name.startswith(".") and name.endswith(BATCH + _TMP):
                queued = name[1 : -len(_TMP)]
                if not owner_alive(_writer_token(queued)):
                    self._finish_tmp(name, queued)
            elif name.startswith(".") and name.endswith(_owners.OWNER_SUFFIX + _TMP):
                path = self.directory / name
                token = name[1 : -len(_owners.OWNER_SUFFIX + _TMP)]
                if _age(path) > 60 and not owner_alive(token):
                    path.unlink(missing_ok=True)

    def _finish_tmp(self, name: str, queued: str) -> None:
        path = self.directory / name
        try:
            data = path.read_bytes()
        except OSError:
            return
        if unframe(data):
            self._rename(path, self.directory / queued)  # written whole, not yet renamed
            return
        path.unlink(missing_ok=True)
        logger.warning(
            "meterline: discarded %s, a spool file its process was writing when it died", name
        )

    # -- internals ----------------------------------------------------------------------

    def _names(self) -> list[str]:
        try:
            return os.listdir(self.directory)
        except OSError:
            return []

    def _queued(self) -> list[str]:
        return sorted(n for n in self._names() if _deliverable(n))

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
                if _deliverable(name) or name.endswith((REJECTED, CORRUPT)):
                    aside = not _deliverable(name)
                    files.append((not aside, name, _size(self.directory / name)))
            total = sum(size for _, _, size in files)
            # Set-aside files first, then the oldest batches.
            for _, name, size in sorted(files):
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


def _writer_token(queued: str) -> str:
    parts = queued.split("-")
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
