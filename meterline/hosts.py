"""Whether a request's ``Host`` header names the address a listener serves.

Used by the listeners that answer without authentication (no admin key): a page in a
browser on this machine can reach them, and with DNS rebinding (``evil.example``
resolving to 127.0.0.1) it could read their answers; its requests carry
``Host: evil.example``. The rule: the served port (80 when the header has none) and
either the served host or, when that is loopback or every address, a loopback name
(``localhost``, ``127.0.0.1``, ``[::1]``); served on every address (``0.0.0.0``, ``::``),
any IP literal too — never another name.

Standard library only.
"""

from __future__ import annotations

import ipaddress

__all__ = ["host_allowed", "is_loopback"]


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _is_unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return host == ""


def _split_host(value: str) -> tuple[str, int | None] | None:
    """``host[:port]`` of a Host header (``[v6]:port`` too), or ``None`` if malformed."""
    value = value.strip()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        host, rest = value[1:end], value[end + 1 :]
    else:
        host, sep, rest = value.partition(":")
        rest = sep + rest
    if not rest:
        return host.lower(), None
    if not rest.startswith(":") or not rest[1:].isdigit() or len(rest) > 6:
        return None
    return host.lower(), int(rest[1:])


def host_allowed(header: str | None, served: tuple[str, int]) -> bool:
    """Whether ``header`` (a ``Host`` value) names ``served`` (host, port)."""
    if not header:
        return False
    parsed = _split_host(header)
    if parsed is None:
        return False
    host, port = parsed
    served_host, served_port = served
    if (port or 80) != served_port:
        return False
    served_host = served_host.strip("[]").lower()
    if host == served_host:
        return True
    if (is_loopback(served_host) or _is_unspecified(served_host)) and is_loopback(host):
        return True
    if _is_unspecified(served_host):  # every address of the machine: IP literals only
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return False
        return True
    return False
