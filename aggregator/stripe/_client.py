"""A careful Stripe client for meter events, over the official SDK's ``StripeClient``.

Contract:
- Addresses: ``METERLINE_STRIPE_API_BASE`` / ``METERLINE_STRIPE_METER_EVENTS_BASE``
  (default Stripe's), key ``STRIPE_API_KEY`` (environment only).
- Every POST carries an idempotency key derived from the ledger row
  (``<identifier>-g<n>``; ``n`` moves on only after a 5xx Stripe asked not to retry, whose
  answer it saved under the old key — the identifier still de-duplicates).
- The SDK's own retries are off (``max_network_retries=0``; it would not retry a 429
  anyway): this module retries 429, 5xx and lost connections itself, with full-jitter
  exponential backoff, waiting at least ``Retry-After`` and following
  ``Stripe-Should-Retry``.
- An answer is classified, never guessed: :data:`ACCEPTED` (2xx, or Stripe saying the
  identifier already exists — an earlier attempt counted), :data:`REJECTED` (a 4xx about
  the request: re-sending cannot help), :data:`UNKNOWN` (no answer, or 5xx, after the
  retries — it may have been applied). A bad key raises :class:`StripeAuthError`.
- Customers: :meth:`MeterEventsClient.customer_exists` asks Stripe (``GET
  /v1/customers/{id}``) before usage is sent for a customer; a confirmed one is not asked
  again for an hour (one client), a missing one is asked again every run.
- v2 streams: a session is created on first use and renewed a minute before it expires
  (or when Stripe says it expired); 100 events per request.
- A request without an answer within ``timeout`` (default 20 s; meter events answer in
  milliseconds) counts as a lost connection. The SDK's own INFO lines (one per request)
  are turned down to WARNING.

The caller keeps at most one call in flight per customer and meter (see ``_sync``).
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from meterline.errors import MeterlineError

logger = logging.getLogger(__name__)

__all__ = [
    "ACCEPTED",
    "REJECTED",
    "THROTTLED",
    "UNKNOWN",
    "Answer",
    "MeterEventsClient",
    "Retrying",
    "StripeAuthError",
    "StripeEnv",
]

ACCEPTED = "accepted"
REJECTED = "rejected"
UNKNOWN = "unknown"
THROTTLED = "throttled"
"""Every attempt answered 429: nothing was applied, the row can be sent again later."""

DEFAULT_API_BASE = "https://api.stripe.com"
DEFAULT_METER_EVENTS_BASE = "https://meter-events.stripe.com"
STREAM_MAX_EVENTS = 100
_RENEW_BEFORE = timedelta(seconds=60)
CUSTOMER_KNOWN_FOR_S = 3600.0
"""A customer Stripe confirmed is not asked about again for this long (one client)."""
REQUEST_TIMEOUT_S = 20.0
"""Seconds a request may take before its outcome is unknown (retried, same key)."""

logging.getLogger("stripe").setLevel(logging.WARNING)  # one INFO line per request


class StripeRequestError(MeterlineError):
    """A read Stripe must answer before anything is sent failed (unreachable, refused)."""


class StripeAuthError(StripeRequestError):
    """Stripe refused the key: nothing more can be sent until it is fixed."""


@dataclass(frozen=True)
class StripeEnv:
    """Where Stripe is and the key, from the environment."""

    api_key: str | None
    api_base: str = DEFAULT_API_BASE
    meter_events_base: str = DEFAULT_METER_EVENTS_BASE

    @classmethod
    def from_environ(cls) -> StripeEnv:
        return cls(
            api_key=os.environ.get("STRIPE_API_KEY") or None,
            api_base=os.environ.get("METERLINE_STRIPE_API_BASE") or DEFAULT_API_BASE,
            meter_events_base=os.environ.get("METERLINE_STRIPE_METER_EVENTS_BASE")
            or DEFAULT_METER_EVENTS_BASE,
        )


@dataclass(frozen=True)
class Answer:
    """How one request ended."""

    outcome: str
    """:data:`ACCEPTED`, :data:`REJECTED` or :data:`UNKNOWN`."""
    detail: str
    """Stripe's answer (JSON) or the error."""
    attempts: int = 1
    duplicate: bool = False
    """Accepted because Stripe already had the identifier."""


@dataclass
class Retrying:
    """Backoff: full jitter over ``base × 2^n``, capped; ``Retry-After`` is a floor."""

    attempts: int = 8
    base: float = 0.25
    cap: float = 8.0
    sleep: Callable[[float], None] = time.sleep
    rng: random.Random | None = None

    def delay(self, attempt: int, retry_after: float | None) -> float:
        rng = self.rng or random
        wait = rng.uniform(0, min(self.cap, self.base * 2**attempt))
        return max(wait, retry_after or 0.0)


def _header(exc: Any, name: str) -> str | None:
    headers = getattr(exc, "headers", None) or {}
    for key, value in dict(headers).items():
        if key.lower() == name.lower():
            return str(value)
    return None


def _retry_after(exc: Any) -> float | None:
    value = _header(exc, "Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _describe(exc: Any) -> str:
    body = getattr(exc, "json_body", None)
    status = getattr(exc, "http_status", None)
    if body:
        return json.dumps({"status": status, "error": body.get("error", body)}, default=str)
    return f"{type(exc).__name__}: {exc}"


class MeterEventsClient:
    """Meter events, cancellations, v2 streams and meters, through ``StripeClient``."""

    def __init__(
        self,
        env: StripeEnv,
        *,
        retrying: Retrying | None = None,
        timeout: float = REQUEST_TIMEOUT_S,
        stop: threading.Event | None = None,
    ) -> None:
        """Args:
        timeout: seconds one request may take (no answer: its outcome is unknown).
        stop: once set, nothing more is sent and retries end (``meterline serve``
            shutting down); what was not sent stays pending for the next run.
        """
        import stripe

        if not env.api_key:
            raise StripeAuthError("STRIPE_API_KEY is not set: export the Stripe secret key")
        self.env = env
        self.retrying = retrying or Retrying()
        self._stripe = stripe
        self._stop = stop
        self.client = stripe.StripeClient(
            env.api_key,
            base_addresses={"api": env.api_base, "meter_events": env.meter_events_base},
            max_network_retries=0,
            http_client=stripe.RequestsClient(timeout=timeout),
        )
        self._session_lock = threading.Lock()
        self._session: tuple[str, datetime] | None = None
        self._customers_seen: dict[str, float] = {}

    # -- the retry loop ------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        """Whether the owner asked to stop sending (``stop`` was set)."""
        return self._stop is not None and self._stop.is_set()

    def _call(
        self,
        key: str,
        send: Callable[[str], Any],
        *,
        duplicate_ok: bool,
        attempts: int | None = None,
    ) -> Answer:
        """Run ``send(idempotency_key)`` until it has a definite answer or retries run out
        (or ``stop`` is set: then the outcome is unknown if a try may have been applied).
        ``attempts`` caps the tries (a best-effort read)."""
        stripe = self._stripe
        tries = min(attempts or self.retrying.attempts, self.retrying.attempts)
        generation = 0
        unknown = False
        last = "stopped before sending"
        for attempt in range(tries):
            if self.stopping:
                return Answer(UNKNOWN if unknown else THROTTLED, last, attempt)
            try:
                result = send(f"{key}-g{generation}")
            except stripe.AuthenticationError as exc:
                raise StripeAuthError(
                    f"Stripe refused the key: {exc.user_message or exc}"
                ) from None
            except stripe.RateLimitError as exc:  # 429: nothing applied
                last = _describe(exc)
                wait = self.retrying.delay(attempt, _retry_after(exc))
            except stripe.APIConnectionError as exc:  # no answer: maybe applied
                unknown, last = True, _describe(exc)
                wait = self.retrying.delay(attempt, None)
            except stripe.InvalidRequestError as exc:
                if (
                    duplicate_ok
                    and exc.code == "resource_already_exists"
                    and (exc.param in (None, "identifier"))
                ):
                    return Answer(ACCEPTED, _describe(exc), attempt + 1, duplicate=True)
                if duplicate_ok and "already been cancelled" in str(exc):
                    return Answer(ACCEPTED, _describe(exc), attempt + 1, duplicate=True)
                return Answer(REJECTED, _describe(exc), attempt + 1)
            except stripe.StripeError as exc:
                status = getattr(exc, "http_status", None) or 0
                if status < 500 and status != 409:
                    return Answer(REJECTED, _describe(exc), attempt + 1)
                unknown, last = True, _describe(exc)
                if _header(exc, "Stripe-Should-Retry") == "false":
                    generation += 1  # the old key would replay this answer
                wait = self.retrying.delay(attempt, _retry_after(exc))
            else:
                detail = json.dumps(result, default=str) if result is not None else "{}"
                return Answer(ACCEPTED, detail[:2000], attempt + 1)
            if attempt + 1 < tries:
                logger.debug("stripe: retry %d of %s in %.2fs: %s", attempt + 1, key, wait, last)
                if self._stop is not None:
                    self._stop.wait(wait)
                else:
                    self.retrying.sleep(wait)
        return Answer(UNKNOWN if unknown else THROTTLED, last, tries)

    # -- v1 ----------------------------------------------------------------------------

    def meter_event(
        self, *, event_name: str, customer: str, value: int, identifier: str, timestamp: datetime
    ) -> Answer:
        params = {
            "event_name": event_name,
            "identifier": identifier,
            "timestamp": int(timestamp.timestamp()),
            "payload": {"stripe_customer_id": customer, "value": str(value)},
        }

        def send(key: str) -> Any:
            event = self.client.v1.billing.meter_events.create(
                params,  # type: ignore[arg-type]
                {"idempotency_key": key},
            )
            return {"identifier": event.identifier, "created": event.created}

        return self._call(identifier, send, duplicate_ok=True)

    def cancel(self, *, event_name: str, identifier: str, key: str) -> Answer:
        params = {"event_name": event_name, "type": "cancel", "cancel": {"identifier": identifier}}

        def send(idempotency_key: str) -> Any:
            adjustment = self.client.v1.billing.meter_event_adjustments.create(
                params,  # type: ignore[arg-type]
                {"idempotency_key": idempotency_key},
            )
            return {"status": adjustment.status, "cancel": identifier}

        return self._call(key, send, duplicate_ok=True)

    # -- v2 ----------------------------------------------------------------------------

    def _token(self, *, renew: bool = False) -> str:
        with self._session_lock:
            now = datetime.now(UTC)
            if renew or self._session is None or self._session[1] - _RENEW_BEFORE <= now:
                session = self.client.v2.billing.meter_event_session.create()
                expires = datetime.fromisoformat(str(session.expires_at).replace("Z", "+00:00"))
                self._session = (session.authentication_token, expires)
                logger.debug("stripe: meter event session until %s", expires)
            return self._session[0]

    def stream(self, events: Sequence[dict[str, Any]], *, key: str) -> Answer:
        """Send up to 100 events in one v2 stream request (all or nothing)."""
        if not 1 <= len(events) <= STREAM_MAX_EVENTS:
            raise ValueError(f"a stream request takes 1 to 100 events, not {len(events)}")
        stripe = self._stripe
        renewed = False

        def send(idempotency_key: str) -> Any:
            nonlocal renewed
            try:
                self.client.v2.billing.meter_event_stream.create(
                    {"events": list(events)},  # type: ignore[typeddict-item]
                    {"api_key": self._token(), "idempotency_key": idempotency_key},
                )
            except (stripe.TemporarySessionExpiredError, stripe.AuthenticationError) as exc:
                if renewed or (
                    isinstance(exc, stripe.AuthenticationError) and self._session is None
                ):
                    raise
                renewed = True  # the session expired under us: once, with a new one
                self._token(renew=True)
                self.client.v2.billing.meter_event_stream.create(
                    {"events": list(events)},  # type: ignore[typeddict-item]
                    {"api_key": self._token(), "idempotency_key": idempotency_key},
                )
            return {}

        return self._call(key, send, duplicate_ok=False)

    # -- customers ---------------------------------------------------------------------

    def customer_exists(self, customer_id: str) -> bool | None:
        """Whether Stripe has the customer (``GET /v1/customers/{id}``): ``False`` when it
        answers ``resource_missing`` or the customer was deleted, ``None`` when it gave no
        definite answer within three tries (unreachable, throttled: the caller decides)."""
        found: dict[str, bool] = {}

        def send(_key: str) -> Any:
            customer = self.client.v1.customers.retrieve(customer_id)
            found["deleted"] = bool(customer.to_dict().get("deleted"))
            return {}

        seen = self._customers_seen.get(customer_id)
        if seen is not None and time.monotonic() - seen < CUSTOMER_KNOWN_FOR_S:
            return True
        answer = self._call(f"get-{customer_id}", send, duplicate_ok=False, attempts=3)
        if answer.outcome == ACCEPTED:
            if not found["deleted"]:
                self._customers_seen[customer_id] = time.monotonic()
            return not found["deleted"]
        if answer.outcome == REJECTED and '"resource_missing"' in answer.detail:
            return False
        logger.debug("stripe: customer %s not checked: %s", customer_id, answer.detail)
        return None

    # -- meters ------------------------------------------------------------------------

    def meter_names(self) -> set[str]:
        """Event names of the account's active meters."""
        stripe = self._stripe
        names: set[str] = set()
        try:
            for meter in self.client.v1.billing.meters.list(
                {"status": "active", "limit": 100}
            ).auto_paging_iter():
                names.add(str(meter.event_name))
        except stripe.AuthenticationError as exc:
            raise StripeAuthError(f"Stripe refused the key: {exc.user_message or exc}") from None
        except stripe.StripeError as exc:
            why = " ".join(str(exc.user_message or exc).split())
            raise StripeRequestError(
                f"listing Stripe's meters at {self.env.api_base} failed ({why}): check "
                "METERLINE_STRIPE_API_BASE and the network, then run it again"
            ) from None
        return names

    def meter_ids(self) -> dict[str, str]:
        """Event name → meter id, of the account's active meters."""
        ids: dict[str, str] = {}

        def send(_key: str) -> Any:
            ids.clear()
            for meter in self.client.v1.billing.meters.list(
                {"status": "active", "limit": 100}
            ).auto_paging_iter():
                ids[str(meter.event_name)] = str(meter.id)
            return {}

        answer = self._call("list-meters", send, duplicate_ok=False)
        if answer.outcome != ACCEPTED:
            raise StripeRequestError(f"Stripe did not list its meters: {answer.detail[:300]}")
        return ids

    def meter_total(self, meter_id: str, customer: str, start: datetime, end: datetime) -> int:
        """What Stripe's meter holds for ``customer`` over ``[start, end)`` by its own event
        summaries (``GET /v1/billing/meters/{id}/event_summaries``; Stripe aggregates
        asynchronously, so events of the last minutes may be missing). A customer Stripe
        does not have holds 0.

        Raises:
            StripeRequestError: Stripe gave no answer.
        """
        total: list[float] = []

        def send(_key: str) -> Any:
            total.clear()
            params = {"customer": customer, "start_time": int(start.timestamp()),
                      "end_time": int(end.timestamp()), "limit": 100}  # fmt: skip
            pages = self.client.v1.billing.meters.event_summaries.list(meter_id, params)  # type: ignore[arg-type]
            total.extend(float(s.aggregated_value) for s in pages.auto_paging_iter())
            return {}

        answer = self._call(f"summary-{meter_id}-{customer}", send, duplicate_ok=False)
        if answer.outcome == REJECTED and '"resource_missing"' in answer.detail:
            return 0
        if answer.outcome != ACCEPTED:
            raise StripeRequestError(
                f"Stripe did not summarise meter {meter_id} for {customer}: {answer.detail[:300]}"
            )
        return int(sum(total))

    def create_meter(self, event_name: str, display_name: str) -> Answer:
        params = {
            "display_name": display_name,
            "event_name": event_name,
            "default_aggregation": {"formula": "sum"},
            "customer_mapping": {"event_payload_key": "stripe_customer_id", "type": "by_id"},
            "value_settings": {"event_payload_key": "value"},
        }

        def send(key: str) -> Any:
            meter = self.client.v1.billing.meters.create(
                params,  # type: ignore[arg-type]
                {"idempotency_key": key},
            )
            return {"id": meter.id, "event_name": meter.event_name}

        return self._call(f"ml-meter-{event_name}", send, duplicate_ok=False)
