"""The stand-in's ASGI app: authentication, faults, idempotency, then the endpoint.

Each API request goes through, in order (as Stripe's layers meet it):

1. the key: ``Authorization: Bearer sk_…`` (or HTTP Basic with the key as user name);
   none or an unknown one → 401. The v2 stream takes a session token instead.
2. an injected fault, if one is pending for the path (``_faults``).
3. decoding: v1 bodies are form-encoded (``payload[value]=25``), v2 bodies JSON.
4. the ``Idempotency-Key`` (POST): a finished key with the same method, path and
   parameters replays the saved answer with ``Idempotent-Replayed: true`` and
   ``Original-Request``; other parameters → 400 ``idempotency_error``; a key whose first
   request is still running → 409 ``idempotency_key_in_use``. Answers are saved once the
   endpoint ran: 2xx always, v1 5xx too; 4xx are not saved (Stripe saves nothing when
   validation fails or a request conflicts), so a corrected retry may reuse the key.
   Saved answers are pruned after 24 h of the stand-in's clock.
5. the endpoint (``billing``, ``invoicing``).

Every answer carries ``Request-Id`` and ``Stripe-Version``. Unknown paths → 404
"Unrecognized request URL". ``/_standin/…`` routes (no key needed) let a test or a
person read the state and steer the clock and faults over HTTP.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import inspect
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from meterline.stripe_standin import _forms, billing, invoicing
from meterline.stripe_standin._call import Call
from meterline.stripe_standin._errors import StripeFailure, invalid_request
from meterline.stripe_standin._faults import Fault
from meterline.stripe_standin._state import Saved, Standin, StandinConfig, new_id

logger = logging.getLogger(__name__)

Dropper = Callable[[tuple[str, int] | None], bool]

_NO_KEY = (
    "You did not provide an API key. You need to provide your API key in the Authorization "
    "header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY'). See "
    "https://stripe.com/docs/api#authentication for details, or we can help at "
    "https://support.stripe.com/."
)


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    handler: Callable[[Call], Any]
    api_mode: str = "v1"
    auth: str = "secret"
    """``secret`` (an API key) or ``session`` (a v2 meter event session token)."""


ENDPOINTS = (
    Endpoint("POST", "/v1/billing/meter_events", billing.create_meter_event),
    Endpoint("POST", "/v1/billing/meter_event_adjustments", billing.create_adjustment),
    Endpoint("POST", "/v1/billing/meters", billing.create_meter),
    Endpoint("GET", "/v1/billing/meters", billing.list_meters),
    Endpoint("GET", "/v1/billing/meters/{id}", billing.retrieve_meter),
    Endpoint("GET", "/v1/billing/meters/{id}/event_summaries", billing.list_event_summaries),
    Endpoint("POST", "/v2/billing/meter_event_session", billing.create_session, "v2"),
    Endpoint("POST", "/v2/billing/meter_event_stream", billing.meter_event_stream, "v2", "session"),
    Endpoint("POST", "/v1/customers", invoicing.create_customer),
    Endpoint("GET", "/v1/customers/{id}", invoicing.retrieve_customer),
    Endpoint("POST", "/v1/invoiceitems", invoicing.create_invoice_item),
    Endpoint("GET", "/v1/invoiceitems", invoicing.list_invoice_items),
    Endpoint("GET", "/v1/invoiceitems/{id}", invoicing.retrieve_invoice_item),
    Endpoint("POST", "/v1/invoices", invoicing.create_invoice),
    Endpoint("GET", "/v1/invoices", invoicing.list_invoices),
    Endpoint("GET", "/v1/invoices/{id}", invoicing.retrieve_invoice),
    Endpoint("POST", "/v1/invoices/{id}/finalize", invoicing.finalize_invoice),
)


class _Drop(Response):
    """Close the connection without an answer (the client sees it reset, no status)."""

    def __init__(self, dropper: Dropper | None) -> None:
        super().__init__()
        self._dropper = dropper

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._dropper is not None and self._dropper(scope.get("client")):
            await asyncio.sleep(0.01)  # let the server see the connection lost
            return
        # No handle on the transport (another ASGI server): promise a body, send none;
        # the server then closes the connection mid-answer.
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", b"1000"), (b"content-type", b"application/json")],
            }
        )


def _credential(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        return value.strip() or None
    if scheme.lower() == "basic":
        try:
            user = base64.b64decode(value.strip()).decode().partition(":")[0]
        except (binascii.Error, UnicodeDecodeError):
            return None
        return user or None
    return None


def _mask(key: str) -> str:
    prefix = key[: key.find("_", 3) + 1] if key.count("_") >= 2 else ""
    return f"{prefix}{'*' * max(len(key) - len(prefix) - 4, 0)}{key[-4:]}"


def _authenticate(standin: Standin, endpoint: Endpoint, request: Request, now: float) -> bool:
    """Livemode of the credential, or the 401 Stripe answers."""
    token = _credential(request)
    if token is None:
        raise StripeFailure(401, "invalid_request_error", _NO_KEY)
    if endpoint.auth == "session":
        billing.session_for(standin, token, now)
        return False
    if token not in standin.config.api_keys:
        raise StripeFailure(
            401, "invalid_request_error", f"Invalid API Key provided: {_mask(token)}"
        )
    return token.startswith(("sk_live_", "rk_live_"))


def _fault_failure(fault: Fault, api_mode: str) -> StripeFailure:
    headers: dict[str, str] = {}
    if fault.kind in ("rate_limit", "lock_timeout"):
        if fault.kind == "rate_limit":
            failure = StripeFailure(
                429,
                "invalid_request_error",
                "Request rate limit exceeded. Learn more about rate limits here "
                "https://stripe.com/docs/rate-limits.",
                code="rate_limit",
            )
            should_retry = fault.should_retry
        else:
            failure = StripeFailure(
                429,
                "invalid_request_error",
                "This object cannot be accessed right now because another API request or "
                "Stripe process is currently accessing it. If you see this error "
                "intermittently, retry the request.",
                code="lock_timeout",
            )
            should_retry = True if fault.should_retry is None else fault.should_retry
    else:
        failure = StripeFailure(
            500,
            "api_error",
            "An unknown error occurred: injected by the stand-in.",
        )
        default = False if api_mode == "v1" else None
        should_retry = default if fault.should_retry is None else fault.should_retry
    if should_retry is not None:
        headers["Stripe-Should-Retry"] = "true" if should_retry else "false"
    if fault.retry_after is not None:
        headers["Retry-After"] = str(fault.retry_after)
    failure.headers = headers
    return failure


def _parse(endpoint: Endpoint, request: Request, body: bytes) -> dict[str, Any]:
    if request.method == "GET":
        return _forms.decode(request.url.query)
    if endpoint.api_mode == "v2":
        if not body.strip():
            return {}
        try:
            params = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise invalid_request("The request body is not valid JSON.") from None
        if not isinstance(params, dict):
            raise invalid_request("The request body must be a JSON object.")
        return params
    content_type = request.headers.get("content-type", "")
    if body and not content_type.startswith("application/x-www-form-urlencoded"):
        raise invalid_request(
            "Invalid request: v1 POST bodies must be application/x-www-form-urlencoded "
            f"(got {content_type or 'no content type'!r})."
        )
    try:
        text = body.decode()
    except UnicodeDecodeError:
        raise invalid_request("The request body is not valid UTF-8.") from None
    return _forms.decode(text)


class _Pipeline:
    def __init__(self, standin: Standin, endpoint: Endpoint) -> None:
        self.standin = standin
        self.endpoint = endpoint

    def _answer(
        self, request: Request, rid: str, status: int, body: Any, headers: dict[str, str]
    ) -> Response:
        self.standin.requests.append((request.method, request.url.path, status))
        version = request.headers.get("stripe-version")
        out = {"Request-Id": rid, **headers}
        if version:
            out["Stripe-Version"] = version
        key = request.headers.get("idempotency-key")
        if key and request.method == "POST":
            out["Idempotency-Key"] = key
        return JSONResponse(body, status_code=status, headers=out)

    def _fail(self, request: Request, rid: str, failure: StripeFailure) -> Response:
        body = failure.body(request_id=rid, api_mode=self.endpoint.api_mode)
        return self._answer(request, rid, failure.status, body, failure.headers)

    async def __call__(self, request: Request) -> Response:
        standin, endpoint = self.standin, self.endpoint
        rid = new_id("req_", 14)
        now = standin.clock.now()
        try:
            livemode = _authenticate(standin, endpoint, request, now)
        except StripeFailure as failure:
            return self._fail(request, rid, failure)
        fault = standin.faults.take(request.method, request.url.path)
        dropper: Dropper | None = getattr(request.app.state, "dropper", None)
        if fault is not None and fault.kind in ("rate_limit", "lock_timeout"):
            return self._fail(request, rid, _fault_failure(fault, endpoint.api_mode))
        if fault is not None and fault.kind == "drop_before":
            standin.requests.append((request.method, request.url.path, 0))
            return _Drop(dropper)
        body = await request.body()
        try:
            params = _parse(endpoint, request, body)
            slot = self._claim(request, params, rid, livemode, now)
        except StripeFailure as failure:
            return self._fail(request, rid, failure)
        if isinstance(slot, Saved):  # answered from the idempotency key
            if fault is not None and fault.kind == "drop_after":
                standin.requests.append((request.method, request.url.path, 0))
                return _Drop(dropper)
            if fault is not None and fault.kind.startswith("server_error"):
                # a 500 on the way back; the saved answer stays
                return self._fail(request, rid, _fault_failure(fault, endpoint.api_mode))
            if fault is not None:  # stall_*
                await asyncio.sleep(fault.delay)
            assert slot.status is not None
            headers = {
                **slot.headers,
                "Idempotent-Replayed": "true",
                "Original-Request": slot.request_id,
            }
            return self._answer(request, rid, slot.status, slot.body, headers)
        call = Call(standin, params, dict(request.path_params), endpoint.api_mode, livemode, now)
        if fault is not None and fault.kind == "stall_before":
            await asyncio.sleep(fault.delay)
        try:
            if fault is not None and fault.kind == "server_error":
                raise _fault_failure(fault, endpoint.api_mode)
            result = endpoint.handler(call)
            if inspect.isawaitable(result):
                result = await result
        except StripeFailure as failure:
            self._settle(slot, failure.status, failure, rid)
            return self._fail(request, rid, failure)
        except Exception:
            logger.exception("stand-in endpoint %s %s failed", request.method, request.url.path)
            failure = StripeFailure(500, "api_error", "The stand-in failed: see its log.")
            self._settle(slot, 400, failure, rid)  # not saved: a retry may succeed
            return self._fail(request, rid, failure)
        if fault is not None and fault.kind == "server_error_after":
            failure = _fault_failure(fault, endpoint.api_mode)
            self._settle(slot, 500, failure, rid)
            return self._fail(request, rid, failure)
        self._settle(slot, 200, result, rid)
        if fault is not None and fault.kind == "stall_after":
            await asyncio.sleep(fault.delay)
        if fault is not None and fault.kind == "drop_after":
            standin.requests.append((request.method, request.url.path, 0))
            return _Drop(dropper)
        return self._answer(request, rid, 200, result, {})

    def _claim(
        self, request: Request, params: dict[str, Any], rid: str, livemode: bool, now: float
    ) -> tuple[bool, str] | Saved | None:
        """Reserve the idempotency key (its slot), or the finished answer saved under it."""
        if request.method != "POST":
            return None
        key = request.headers.get("idempotency-key")
        if key is None:
            return None
        if len(key) > 255:
            raise invalid_request(
                "Invalid Idempotency-Key: keys can be at most 255 characters long.",
                param="Idempotency-Key",
            )
        fingerprint = (request.method, request.url.path, json.dumps(params, sort_keys=True))
        standin = self.standin
        with standin.lock:
            standin.prune()
            saved = standin.idempotency.get((livemode, key))
            if saved is not None and saved.created < now - standin.config.idempotency_ttl:
                del standin.idempotency[(livemode, key)]  # pruned: the key is new again
                saved = None
            if saved is None:
                standin.idempotency[(livemode, key)] = Saved(fingerprint, rid, now)
                return (livemode, key)
        if saved.fingerprint != fingerprint:
            raise StripeFailure(
                400,
                "idempotency_error",
                "Keys for idempotent requests can only be used with the same parameters they "
                f"were first used with. Try using a key other than '{key}' if you meant to "
                "execute a different request.",
            )
        if saved.status is None:
            raise StripeFailure(
                409,
                "invalid_request_error",
                "There is currently another in-progress request using this Idempotent Key "
                "(that probably means you submitted twice, and the other request is still "
                f"going through): {key}. Please try again later.",
                code="idempotency_key_in_use",
            )
        return saved

    def _settle(self, slot: tuple[bool, str] | None, status: int, outcome: Any, rid: str) -> None:
        """Save the answer under the key (2xx; 5xx on v1), or free the key."""
        if slot is None:
            return
        standin = self.standin
        keep = status < 400 or (status >= 500 and self.endpoint.api_mode == "v1")
        with standin.lock:
            saved = standin.idempotency.get(slot)
            if saved is None:
                return
            if not keep:
                del standin.idempotency[slot]
                return
            if isinstance(outcome, StripeFailure):
                saved.status = outcome.status
                saved.body = outcome.body(request_id=rid, api_mode=self.endpoint.api_mode)
                saved.headers = dict(outcome.headers)
            else:
                saved.status, saved.body = status, outcome


def _endpoint(pipeline: _Pipeline) -> Callable[[Request], Any]:
    async def endpoint(request: Request) -> Response:
        return await pipeline(request)

    return endpoint


async def _unrecognized(request: Request) -> Response:
    failure = invalid_request(
        f"Unrecognized request URL ({request.method}: {request.url.path}). Please see "
        "https://stripe.com/docs or we can help at https://support.stripe.com/.",
        status=404,
    )
    rid = new_id("req_", 14)
    return JSONResponse(
        failure.body(request_id=rid, api_mode="v1"),
        status_code=404,
        headers={"Request-Id": rid},
    )


# -- introspection ----------------------------------------------------------------------------


def _standin(request: Request) -> Standin:
    return request.app.state.standin


async def _state(request: Request) -> Response:
    return JSONResponse(_standin(request).snapshot())


async def _clock(request: Request) -> Response:
    data = await request.json()
    clock = _standin(request).clock
    if "now" in data:
        clock.set(float(data["now"]))
    if "advance" in data:
        clock.advance(float(data["advance"]))
    return JSONResponse({"now": clock.now()})


async def _faults(request: Request) -> Response:
    data = await request.json()
    try:
        fault = _standin(request).faults.inject(**data)
    except (TypeError, ValueError) as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
    return JSONResponse(fault.__dict__)


async def _reset(request: Request) -> Response:
    _standin(request).reset()
    return JSONResponse({"reset": True})


async def _customer(request: Request) -> Response:
    data = await request.json()
    return JSONResponse(_standin(request).add_customer(data.get("id")))


async def _health(request: Request) -> Response:
    return JSONResponse({"ok": True})


def create_app(config: StandinConfig | None = None, *, standin: Standin | None = None) -> Starlette:
    """The ASGI app over ``standin`` (a fresh one from ``config`` when not given)."""
    standin = standin or Standin(config)
    routes = [
        Route(e.path, _endpoint(_Pipeline(standin, e)), methods=[e.method]) for e in ENDPOINTS
    ]
    routes += [
        Route("/_standin/state", _state, methods=["GET"]),
        Route("/_standin/clock", _clock, methods=["POST"]),
        Route("/_standin/faults", _faults, methods=["POST"]),
        Route("/_standin/reset", _reset, methods=["POST"]),
        Route("/_standin/customers", _customer, methods=["POST"]),
        Route("/_standin/health", _health, methods=["GET"]),
        Route(
            "/{rest:path}",
            _unrecognized,
            methods=["GET", "POST", "DELETE", "PUT", "PATCH"],
        ),
    ]
    app = Starlette(routes=routes)
    app.state.standin = standin
    app.state.dropper = None
    return app
