"""Binding listening sockets, with errors that name the flag and say what to do.

Every listener of ``meterline serve`` and ``meterline simulator`` binds through
:func:`bind` before anything else starts, so a port that is taken is reported in one
line (``--api-port 8080 is in use: …``) and leaves nothing behind. gRPC binds its own
sockets and reports only "failed to bind": :func:`explain` probes the address with a
plain socket to find out why.
"""

from __future__ import annotations

import errno
import socket

from meterline.errors import MeterlineError


class ListenError(MeterlineError):
    """A listener could not be bound; ``str()`` is one line for a person."""


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def explain(exc: OSError, *, host: str, port: int, flag: str) -> ListenError:
    """The one-line error for a failed bind of ``host:port`` given by ``flag``."""
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if isinstance(exc, socket.gaierror):
        return ListenError(
            f"--host {host!r} is not an address or a name this machine can resolve "
            f"({exc.strerror}): give an address such as 127.0.0.1"
        )
    if exc.errno == errno.EADDRINUSE:
        return ListenError(
            f"{flag} {port} is in use: another process listens on {address}; "
            "choose another port (0 picks a free one) or stop the other process"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return ListenError(
            f"--host {host} is not an address of this machine ({exc.strerror}): "
            "give one of its addresses, 127.0.0.1 or 0.0.0.0"
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        hint = "ports below 1024 need privileges: " if 0 < port < 1024 else ""
        return ListenError(
            f"{flag} {port}: not allowed to listen on {address} ({exc.strerror}); "
            f"{hint}choose another port"
        )
    return ListenError(f"{flag} {port}: cannot listen on {address}: {exc.strerror or exc}")


def bind(host: str, port: int, *, flag: str, backlog: int = 2048) -> socket.socket:
    """A listening TCP socket on ``host:port`` (0: any free port).

    Raises:
        ListenError: the port is taken, the host is not local, permission denied, …
    """
    try:
        family = _family(host)
        # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say so, and
        # without it each answer's body waits ~40 ms for the client's delayed ACK (Nagle).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    except OSError as exc:
        raise explain(exc, host=host, port=port, flag=flag) from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)  # here, not in uvicorn: a port both bound is refused now
    except OSError as exc:
        sock.close()
        raise explain(exc, host=host, port=port, flag=flag) from None
    sock.set_inheritable(True)
    return sock


def explain_grpc(host: str, port: int, *, flag: str) -> ListenError:
    """Why gRPC could not bind ``host:port``: probed with a plain socket."""
    try:
        probe = bind(host, port, flag=flag)
    except ListenError as exc:
        return exc
    probe.close()
    return ListenError(
        f"{flag} {port}: gRPC could not listen on {host}:{port} "
        "(run with GRPC_VERBOSITY=debug for its reason)"
    )
