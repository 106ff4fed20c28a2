"""Stripe's error object, and the exception that carries it out of a handler.

v1 bodies are ``{"error": {"type", "code", "message", "param", "doc_url",
"request_log_url"}}``; v2 bodies ``{"error": {"type", "code", "message", "doc_url"}}``. The SDK
picks its exception class from the status and these fields (``stripe._api_requestor``):
400/404 → ``InvalidRequestError`` (``IdempotencyError`` for type ``idempotency_error``),
401 → ``AuthenticationError``, 429 → ``RateLimitError``, other → ``APIError``; v2 adds
``TemporarySessionExpiredError`` for type ``temporary_session_expired``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DOCS = "https://stripe.com/docs/error-codes/"


@dataclass
class StripeFailure(Exception):
    """An error answer: status, Stripe's error fields, and extra response headers."""

    status: int
    type: str
    message: str
    code: str | None = None
    param: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def body(self, *, request_id: str, api_mode: str) -> dict[str, Any]:
        error: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.code is not None:
            error["code"] = self.code
            error["doc_url"] = DOCS + self.code.replace("_", "-")
        if api_mode == "v1":
            if self.param is not None:
                error["param"] = self.param
            error["request_log_url"] = f"https://dashboard.stripe.com/test/logs/{request_id}?t=0"
        return {"error": error}


def invalid_request(
    message: str, *, param: str | None = None, code: str | None = None, status: int = 400
) -> StripeFailure:
    return StripeFailure(status, "invalid_request_error", message, code=code, param=param)


def missing(param: str) -> StripeFailure:
    return invalid_request(
        f"Missing required param: {param}.", param=param, code="parameter_missing"
    )


def unknown(param: str) -> StripeFailure:
    return invalid_request(
        f"Received unknown parameter: {param}", param=param, code="parameter_unknown"
    )


def no_such(kind: str, ident: str, *, param: str | None = None, status: int = 400) -> StripeFailure:
    return invalid_request(
        f"No such {kind}: '{ident}'", param=param, code="resource_missing", status=status
    )
