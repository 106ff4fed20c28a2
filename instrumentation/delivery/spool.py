"""A bounded on-disk queue of OTLP export requests that could not be delivered.

Contract:

* ``put(payload)`` writes one serialized ``ExportTraceServiceRequest`` atomically (temp
  file + rename) as ``<time_ns>-<pid>-<n>.otlp``; when the queue would exceed
  ``max_bytes`` the oldest files are dropped (logged as a warning — usage is lost only
  when the operator's bound says so).
* ``flush(post)`` sends queued files oldest first. A file is *claimed* by renaming it to
  ``….otlp.<pid>.sending`` (atomic, so two processes never send the same file), and
  deleted only after ``post`` reports a 2xx; on failure it is renamed back and flushing
  stops. Claims left by a dead process are returned to the queue on the next flush.
  A crash between the ack and the delete re-sends that file once more; the collector
  dedupes by response id, so it is still counted once.

Directory: ``METERLINE_SPOOL_DIR``, else ``<user cache dir>/meterline/spool``
(``$XDG_CACHE_HOME`` or ``~/.cache`` on Linux, ``~/Library/Caches`` on macOS,
``%LOCALAPPDATA%`` on Windows). Bound: ``METERLINE_SPOOL_MAX_BYTES`` (default 256 MiB).
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

ENV_SPOOL_DIR = "METERLINE_SPOOL_DIR"
ENV_SPOOL_MAX_BYTES = "METERLINE_SPOOL_MAX_BYTES"
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
_SUFFIX = ".otlp"
_CLAIM = ".sending"


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


def _max_bytes() -> int:
    try:
        return int(os.environ.get(ENV_SPOOL_MAX_BYTES, DEFAULT_MAX_BYTES))
    except ValueError:
        return DEFAULT_MAX_BYTES


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


class Spool:
    """The on-disk queue; safe to share between threads and processes."""

    def __init__(self, directory: Path | str | None = None, *, max_bytes: int | None = None):
        self.directory = Path(directory) if directory is not None else default_dir()
        self.max_bytes = max_bytes if max_bytes is not None else _max_bytes()
        self._counter = itertools.count()
        self._lock = threading.Lock()

    def put(self, payload: bytes) -> Path | None:
        """Queue one export request; returns its file, or None if it could not be written."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with self._lock:
                self._make_room(len(payload))
                name = f"{time.time_ns():020d}-{os.getpid()}-{next(self._counter):06d}{_SUFFIX}"
                final = self.directory / name
                tmp = self.directory / f".{name}.tmp"
                with open(tmp, "wb") as fh:
                    fh.write(payload)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, final)
            return final
        except OSError:
            logger.warning("meterline: could not spool usage to %s", self.directory, exc_info=True)
            return None

    def pending(self) -> list[Path]:
        """Queued files, oldest first."""
        try:
            names = sorted(n for n in os.listdir(self.directory) if n.endswith(_SUFFIX))
        except FileNotFoundError:
            return []
        return [self.directory / n for n in names]

    def has_pending(self) -> bool:
        try:
            with os.scandir(self.directory) as entries:
                return any(e.name.endswith((_SUFFIX, _CLAIM)) for e in entries)
        except FileNotFoundError:
            return False

    def flush(self, post: Callable[[bytes], bool]) -> tuple[int, int]:
        """Send queued files with ``post`` (True = acknowledged with a 2xx).

        Returns:
            ``(sent, remaining)`` file counts.
        """
        self._recover_stale_claims()
        sent = 0
        files = self.pending()
        for index, path in enumerate(files):
            claim = path.with_name(f"{path.name}.{os.getpid()}{_CLAIM}")
            try:
                os.rename(path, claim)
            except FileNotFoundError:
                continue  # another process took it
            try:
                payload = claim.read_bytes()
                ok = post(payload)
            except Exception:
                logger.debug("meterline: spool post failed", exc_info=True)
                ok = False
            if ok:
                claim.unlink(missing_ok=True)
                sent += 1
            else:
                os.rename(claim, path)
                return sent, len(files) - index
        return sent, len(self.pending())

    def _recover_stale_claims(self) -> None:
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return
        for name in names:
            if not name.endswith(_CLAIM):
                continue
            original, _, rest = name[: -len(_CLAIM)].rpartition(".")
            try:
                pid = int(rest)
            except ValueError:
                continue
            if not _pid_alive(pid):
                try:
                    os.rename(self.directory / name, self.directory / original)
                except OSError:
                    logger.debug("meterline: could not recover %s", name, exc_info=True)

    def _make_room(self, incoming: int) -> None:
        files = self.pending()
        sizes = []
        total = incoming
        for path in files:
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                size = 0
            sizes.append(size)
            total += size
        for path, size in zip(files, sizes, strict=True):
            if total <= self.max_bytes:
                break
            try:
                path.unlink()
                total -= size
                logger.warning("meterline: spool full, dropped the oldest usage batch %s", path)
            except FileNotFoundError:
                pass
