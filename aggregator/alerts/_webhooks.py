"""Signed webhook deliveries, retried with exponential backoff and jitter.

Each request: ``POST <url>`` with the alert as JSON and

- ``Meterline-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``
  (Stripe's scheme: the timestamp is signed with the body, so a captured request cannot
  be replayed later with a fresh timestamp; a receiver refuses old timestamps);
- ``Meterline-Delivery: dlv_…`` — the same on every attempt of one delivery and after a
  restart: the receiver de-duplicates on it (it is also the body's ``id``);
- ``Meterline-Event: budget.threshold`` (the alert's kind).

A 2xx answer delivers; anything else (another status, no answer within the timeout) is
retried after ``min(max, initial × 2^(n-1))`` halved plus a random half of it (equal
jitter: spread out, never immediate), up to ``attempts`` attempts, then the delivery is
``failed`` (listed by ``GET /v1/alerts``). Redirects are not followed.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import random
import time
from collections.abc import Callable
from datetime import timedelta

import httpx

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "Meterline-Signature"
DELIVERY_HEADER = "Meterline-Delivery"
EVENT_HEADER = "Meterline-Event"
TIMEOUT_S = 10.0


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
