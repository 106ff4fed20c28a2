"""Signed webhook deliveries, retried with exponential backoff and jitter.

Each request: ``POST <url>`` with the alert as JSON and

- ``Meterline-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``
  (Stripe's scheme: the timestamp is signed with the body, so a captured request cannot
  be replayed later with a fresh timestamp; a receiver refuses old timestamps);
- ``Meterline-Delivery: dlv_…`` — the same on every attempt of one delivery and after a
  restart: the receiver de-duplicates on it (it is also the body's ``id``);
- ``Meterline-Event: budget.threshold`` (the alert's kind).

A 2xx answer delivers; anything else (another status, no complete answer within
:data:`TIMEOUT_S` — a total deadline, so a receiver that trickles bytes cannot hold an
attempt longer) is retried after ``min(max, initial × 2^(n-1))`` halved plus a random
half of it (equal jitter: spread out, never immediate), up to ``attempts`` attempts, then
the delivery is ``failed`` (listed by ``GET /v1/alerts``). Redirects are not followed.
One webhook that fails does not hold up the others: its other deliveries wait for its
retry (:class:`~meterline.aggregator.alerts.AlertService`). A URL pointing at this
aggregator's own listeners (:func:`points_at`) is never sent to.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Collection
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "Meterline-Signature"
DELIVERY_HEADER = "Meterline-Delivery"
EVENT_HEADER = "Meterline-Event"
TIMEOUT_S = 10.0
"""The most one attempt may take, from connecting to the whole answer."""


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The ``Meterline-Signature`` header value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(secret: str, body: bytes, header: str, *, tolerance: float = 300.0,
           now: float | None = None) -> bool:  # fmt: skip
    """Whether ``header`` signs ``body`` with ``secret`` within ``tolerance`` seconds
    (what a receiver does; docs/alerts.md shows the same in a few lines)."""
    try:
        fields = dict(item.split("=", 1) for item in header.split(","))
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    expected = sign(secret, body, timestamp).split("v1=", 1)[1]
    return hmac.compare_digest(expected, fields.get("v1", ""))


def backoff(attempt: int, *, initial: timedelta, most: timedelta,
            rng: Callable[[float, float], float] = random.uniform) -> timedelta:  # fmt: skip
    """The wait after failed attempt number ``attempt`` (1, 2, …): equal jitter."""
    ceiling = min(most.total_seconds(), initial.total_seconds() * 2 ** (attempt - 1))
    return timedelta(seconds=ceiling / 2 + rng(0, ceiling / 2))


def post(client: httpx.Client, url: str, *, secret: str, body: bytes, delivery: str,
         kind: str) -> str | None:  # fmt: skip
    """One attempt; ``None`` when delivered, else why not (one line)."""
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: sign(secret, body, int(time.time())),
        DELIVERY_HEADER: delivery,
        EVENT_HEADER: kind,
        "User-Agent": "meterline-alerts",
    }
    try:
        answer = client.post(url, content=body, headers=headers, timeout=TIMEOUT_S)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"[:500]
    if 200 <= answer.status_code < 300:
        return None
    return f"HTTP {answer.status_code}: {answer.text[:200]}"


def post_within(client: httpx.Client, url: str, **kw: Any) -> tuple[str | None, threading.Event]:
    """:func:`post` with a total deadline of :data:`TIMEOUT_S` (httpx's timeouts are per
    read). An attempt still running at the deadline is abandoned (its daemon thread ends
    with the connection) and counts as failed. Returns the outcome and an event set when
    the attempt's thread has ended (no second attempt to that URL before)."""
    outcome: list[str | None] = []
    ended = threading.Event()

    def attempt() -> None:
        try:
            outcome.append(post(client, url, **kw))
        except Exception as exc:  # never kill the alert thread
            outcome.append(f"{type(exc).__name__}: {exc}"[:500])
        finally:
            ended.set()

    threading.Thread(target=attempt, name="meterline-webhook", daemon=True).start()
    if not ended.wait(TIMEOUT_S):
        return f"no complete answer within {TIMEOUT_S:g} s", ended
    return outcome[0], ended


def _local_addresses() -> set[str]:
    names = {"localhost", socket.gethostname()}
    found: set[str] = set()
    for name in names:
        try:
            found |= {str(info[4][0]) for info in socket.getaddrinfo(name, None)}
        except OSError:
            continue
    return found


def points_at(url: str, ports: Collection[int]) -> int | None:
    """The port of this aggregator's own listener ``url`` points at (its host resolves to
    a loopback, unspecified or this machine's address, and its port is one of ``ports``),
    else ``None``."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if port not in ports or not parts.hostname:
        return None
    try:
        addresses = {str(i[4][0]) for i in socket.getaddrinfo(parts.hostname, port)}
    except OSError:
        return None  # cannot resolve: not ours to decide (the attempt reports it)
    local = _local_addresses()
    for a in addresses:
        ip = ipaddress.ip_address(a.split("%", 1)[0])
        if ip.is_loopback or ip.is_unspecified or a in local:
            return port
    return None
