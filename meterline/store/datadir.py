"""The embedded store's data directory: usable by this process, and who else holds it.

The engine (ClickHouse inside chdb) takes an exclusive ``flock`` on ``<dir>/status``
while it runs and writes its pid there; that lock, not one of ours, is what keeps a
second process out. :func:`check_data_dir` reads it before anything is started so a
second ``meterline serve`` says which process has the directory instead of failing
inside the engine. Known limit: the check is advisory (the engine's own refusal, which
:func:`holder_message` explains the same way, is what is relied on).
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from meterline.store.backend import StoreError

STATUS_FILE = "status"
"""The engine's lock and pid file inside the data directory."""


class DataDirError(StoreError):
    """The data directory cannot be used; ``str()`` is one line for a person."""


def _command_of(pid: int) -> str | None:
    """``meterline serve`` (or the program's name) of a running ``pid``, if readable."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    words = [w.decode(errors="replace") for w in raw.split(b"\0") if w]
    if not words:
        return None
    if any("meterline" in w for w in words[:3]):
        return "meterline serve" if "serve" in words else "meterline process"
    return Path(words[0]).name


def holder(data_dir: Path) -> tuple[int | None, str | None] | None:
    """``(pid, command)`` of the process holding the engine's lock, or ``None`` if free."""
    status = data_dir / STATUS_FILE
    try:
        fd = os.open(status, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                return None
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        text = os.read(fd, 4096).decode(errors="replace")
    finally:
        os.close(fd)
    pid = None
    for line in text.splitlines():
        if line.startswith("PID:"):
            try:
                pid = int(line.split(":", 1)[1])
            except ValueError:
                pid = None
    return pid, (_command_of(pid) if pid is not None else None)


def holder_message(data_dir: Path, flag: str = "--data-dir") -> str | None:
    """The one-line error for a data directory another process holds, or ``None``.

    This process holding it is fine: chdb shares one engine per process.
    """
    held = holder(data_dir)
    if held is None or held[0] == os.getpid():
        return None
    pid, command = held
    who = f"another {command or 'process'} (pid {pid})" if pid else "another process"
    return (
        f"{flag} {data_dir} is used by {who}: stop it or give another {flag}; "
        "to read its data while it runs, set METERLINE_API_URL to its API"
    )


def check_data_dir(data_dir: Path, *, flag: str = "--data-dir") -> None:
    """Refuse a data directory that is a file, unwritable or held by another process.

    Creates nothing: a directory that does not exist yet is fine if its parent can hold it.

    Raises:
        DataDirError: one line naming the directory and what to do.
    """
    path = Path(data_dir)
    try:
        if path.exists() and not path.is_dir():
            raise DataDirError(f"{flag} {path} is a file, not a directory: give a directory")
        existing = path
        while not existing.exists():
            existing = existing.parent
    except OSError as exc:  # a parent this user may not enter
        raise DataDirError(
            f"{flag} {path}: cannot access it ({exc.strerror}): give a directory this user "
            "can write"
        ) from None
    if not existing.is_dir():
        raise DataDirError(
            f"{flag} {path}: {existing} is a file, not a directory: give a directory"
        )
    if not os.access(existing, os.R_OK | os.W_OK | os.X_OK):
        what = "" if existing == path else f" (its parent {existing} is not writable)"
        raise DataDirError(
            f"{flag} {path}: permission denied{what}: give a directory this user can write"
        )
    message = holder_message(path, flag)
    if message is not None:
        raise DataDirError(message)
