"""Failures on demand, with error bodies shaped like each provider's.

The request header ``x-simulator-fail`` lists statuses by attempt, comma-separated:
``STATUS`` fails every attempt, ``STATUSxN`` fails the next N attempts, so
``500x2`` fails attempts 0 and 1 and then succeeds, ``429x1,500x1`` fails with 429,
then 500, then succeeds, and ``529`` always fails. The attempt number is the SDK's
``x-stainless-retry-count`` header (sent by the openai and anthropic SDKs); other
clients are counted by the simulator per (route, failure spec, body).

429 responses carry ``retry-after`` (whole seconds) and ``retry-after-ms``; the delay
is the server's ``retry_after_ms`` unless the request's ``x-simulator-retry-after-ms``
header overrides it, which also adds the headers to 5xx responses.
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
from collections import OrderedDict
from typing import Any

_ITEM = re.compile(r"^\s*(\d{3})\s*(?:x\s*(\d+))?\s*$")


def parse_fail_spec(spec: str) -> list[tuple[int, int | None]]:
    """``"429x1,500"`` → ``[(429, 1), (500, None)]``; None means every later attempt.

    Raises:
        ValueError: for a malformed spec or a status outside 400–599.
    """
    items: list[tuple[int, int | None]] = []
    for raw in spec.split(","):
        m = _ITEM.match(raw)
        if not m:
            raise ValueError(f"bad x-simulator-fail item {raw!r}, expected STATUS or STATUSxN")
        status = int(m.group(1))
        if not 400 <= status <= 599:
            raise ValueError(f"x-simulator-fail status {status!r} is not an error status")
        items.append((status, int(m.group(2)) if m.group(2) is not None else None))
    return items


def status_for_attempt(items: list[tuple[int, int | None]], attempt: int) -> int | None:
    """The status that attempt ``attempt`` (from 0) fails with, or None to succeed."""
    seen = 0
    for status, count in items:
        if count is None:
            return status
        if attempt < seen + count:
            return status
        seen += count
    return None


class AttemptCounter:
    """Counts attempts of identical requests for clients without a retry-count header."""

    def __init__(self, max_keys: int = 10_000) -> None:
        self._counts: OrderedDict[bytes, int] = OrderedDict()
        self._lock = threading.Lock()
        self._max = max_keys

    def next(self, *parts: bytes) -> int:
        key = hashlib.sha256(b"\x1f".join(parts)).digest()
        with self._lock:
            n = self._counts.get(key, 0)
            self._counts[key] = n + 1
            self._counts.move_to_end(key)
            while len(self._counts) > self._max:
                self._counts.popitem(last=False)
        return n


_OPENAI = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("permission_denied", None, "You are not allowed to sample from this model."),
    404: ("invalid_request_error", "model_not_found", "The model does not exist."),
    409: ("invalid_request_error", None, "Conflict."),
    429: (
        "requests",
        "rate_limit_exceeded",
        "Rate limit reached for {model} in organization org-simulator on requests per min "
        "(RPM): Limit 3, Used 3, Requested 1. Please try again in {seconds}s.",
    ),
    500: (
        "server_error",
        None,
        "The server had an error while processing your request. Sorry about that!",
    ),
    502: ("server_error", None, "Bad gateway."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}

_ANTHROPIC = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    403: (
        "permission_error",
        "Your API key does not have permission to use the specified resource.",
    ),
    404: ("not_found_error", "model: {model}"),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit."),
    500: ("api_error", "Internal server error"),
    529: ("overloaded_error", "Overloaded"),
}

_GEMINI = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def error_body(
    provider: str,
    status: int,
    *,
    model: str = "",
    message: str | None = None,
    request_id: str = "",
    retry_after_ms: int = 1000,
) -> dict[str, Any]:
    """The JSON error body ``provider`` returns with ``status``."""
    seconds = max(1, math.ceil(retry_after_ms / 1000))
    if provider == "anthropic":
        kind, text = _ANTHROPIC.get(
            status, ("api_error" if status >= 500 else "invalid_request_error", "Error")
        )
        return {
            "type": "error",
            "error": {"type": kind, "message": message or text.format(model=model)},
            "request_id": request_id,
        }
    if provider == "gcp.gemini":
        state = _GEMINI.get(status, "INTERNAL" if status >= 500 else "FAILED_PRECONDITION")
        return {
            "error": {
                "code": status,
                "message": message or state.replace("_", " ").lower(),
                "status": state,
            }
        }
    kind, code, text = _OPENAI.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None, "Error.")
    )
    return {
        "error": {
            "message": message or text.format(model=model, seconds=seconds),
            "type": kind,
            "param": None,
            "code": code,
        }
    }
