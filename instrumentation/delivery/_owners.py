"""Who holds files in a spool directory, and whether that process is still alive.

Each process that writes or claims files in a spool directory has a *token*
(``<pid>x<random>``: pids are reused, notably as pid 1 in containers) and, on POSIX, holds
an exclusive ``flock`` on ``<token>.owner`` in that directory for as long as it lives. The
kernel drops the lock when the process dies, kill -9 included, so another process that can
take the lock knows the owner is gone and may take over its half-written and claimed files.
The lock file is created under a temporary name and renamed only once locked, so nobody
sees it unlocked. Where ``fcntl`` is missing (Windows) liveness falls back to the pid.

After ``fork`` the child gets a new token lazily and closes the inherited lock descriptors
(the parent keeps its own lock).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

OWNER_SUFFIX = ".owner"
_lock = threading.Lock()
_tokens: dict[str, tuple[str, int | None]] = {}  # directory -> (token, fd of the lock file)


def token_for(directory: Path) -> str:
    """This process's token in ``directory``, its lock file created on first use."""
    key = str(directory)
    entry = _tokens.get(key)
    if entry is not None:
        return entry[0]
    with _lock:
        entry = _tokens.get(key)
        if entry is None:
            token = f"{os.getpid()}x{secrets.token_hex(4)}"
            entry = (token, _hold(directory, token))
            _tokens[key] = entry
    return entry[0]


def release(directory: Path) -> None:
    """Give up this process's token in ``directory`` (at shutdown, nothing left claimed)."""
    with _lock:
        entry = _tokens.pop(str(directory), None)
    if entry is None:
        return
    token, fd = entry
    with contextlib.suppress(OSError):
        os.unlink(directory / f"{token}{OWNER_SUFFIX}")
    if fd is not None:
        os.close(fd)


def is_alive(directory: Path, token: str) -> bool:
    """Whether the process that owns ``token`` in ``directory`` is still running."""
    entry = _tokens.get(str(directory))
    if entry is not None and entry[0] == token:
        return True
    pid_text = token.partition("x")[0]
    if fcntl is None or not token.count("x"):
        return _pid_alive(int(pid_text)) if pid_text.isdigit() else False
    path = directory / f"{token}{OWNER_SUFFIX}"
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    except OSError:
        return True  # cannot tell: assume alive, never steal
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        with contextlib.suppress(OSError):
            os.unlink(path)  # dead: its lock file goes (its files are taken over)
        return False
    finally:
        os.close(fd)


def _hold(directory: Path, token: str) -> int | None:
    if fcntl is None:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{token}{OWNER_SUFFIX}.tmp"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.replace(tmp, directory / f"{token}{OWNER_SUFFIX}")
    except OSError:
        os.close(fd)
        raise
    return fd


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()
    for _token, fd in _tokens.values():
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
    _tokens.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
