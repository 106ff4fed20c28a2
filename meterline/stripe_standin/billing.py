"""Billing endpoints: meters, v1 meter events, adjustments, v2 sessions and streams.

Where Stripe validates (from its API reference and the SDK's generated parameter types):

* ``POST /v1/billing/meter_events`` checks the request synchronously: ``event_name``
  (≤ 100 chars), ``payload`` with the meter's customer key (default
  ``stripe_customer_id``) and value key (default ``value``, a whole number as a string),
  ``identifier`` (≤ 100 chars), ``timestamp`` (an integer, at most 35 days old and 5 minutes
  ahead of the stand-in's clock) → 400 ``invalid_request_error`` with ``param``. An
  identifier seen within the de-duplication window is refused (400
  ``resource_already_exists``) or, with ``duplicate_identifier="ignore"``, answered 200 and
  not counted. Two calls for one customer and meter at once → 429 ``rate_limit`` for the
  later one (Stripe allows one concurrent call per customer per meter).
* What Stripe only finds while processing (no active meter for ``event_name``, an unknown
  customer) is accepted over the wire and recorded as an error report, counted nowhere —
  as Stripe reports it later through ``v1.billing.meter.error_report_triggered``.
* ``POST /v2/billing/meter_event_stream`` checks only the shape (1-100 events, each with
  ``event_name`` and a string ``payload``; RFC 3339 ``timestamp``) and answers ``{}``;
  everything else ("processed asynchronously, including validation") becomes an error
  report or, for a repeated identifier, a silent duplicate.
* Adjustments cancel one event by identifier, only within 24 hours of Stripe receiving it.

Choices where Stripe's documentation is silent (so a client must not depend on the
opposite): identifiers are unique per account, across meters; a cancelled event's
identifier stays taken for the rest of its window; the de-duplication window is exactly
``dedup_window`` (Stripe promises "at least 24 hours").
"""

from __future__ import annotations

import asyncio
import re
from datetime import datetime
from typing import Any

from meterline.stripe_standin._call import Call
from meterline.stripe_standin._errors import StripeFailure, invalid_request, missing, no_such
from meterline.stripe_standin._state import (
    Adjustment,
    ErrorReport,
    MeterEvent,
    Session,
    list_object,
    new_id,
)

_WHOLE = re.compile(r"^[0-9]+$")
_FORMULAS = ("sum", "count", "last")


# -- meters -------------------------------------------------------------------------------


def create_meter(call: Call) -> dict[str, Any]:
    call.only(
        {
            "display_name",
            "event_name",
            "default_aggregation",
            "customer_mapping",
            "value_settings",
            "event_time_window",
        }
    )
    display_name = call.string("display_name", required=True, max_length=250)
    event_name = call.string("event_name", required=True, max_length=100)
    aggregation = call.hash("default_aggregation", required=True) or {}
    formula = aggregation.get("formula")
    if formula is None:
        raise missing("default_aggregation[formula]")
    if formula not in _FORMULAS:
        raise invalid_request(
            f"Invalid default_aggregation[formula]: must be one of {', '.join(_FORMULAS)}",
            param="default_aggregation[formula]",
        )
    mapping = call.hash("customer_mapping") or {}
    if mapping and ("event_payload_key" not in mapping or "type" not in mapping):
        field = "event_payload_key" if "event_payload_key" not in mapping else "type"
        raise missing(f"customer_mapping[{field}]")
    if mapping and mapping["type"] != "by_id":
        raise invalid_request(
            "Invalid customer_mapping[type]: must be one of by_id", param="customer_mapping[type]"
        )
    values = call.hash("value_settings") or {}
    if values and "event_payload_key" not in values:
        raise missing("value_settings[event_payload_key]")
    window = call.string("event_time_window")
    if window is not None and window not in ("day", "hour"):
        raise invalid_request(
            "Invalid event_time_window: must be one of day or hour", param="event_time_window"
        )
    assert event_name is not None
    if call.standin.active_meter(event_name) is not None:
        raise invalid_request(
            f"An active meter with event_name '{event_name}' already exists.",
            param="event_name",
            code="resource_already_exists",
        )
    meter = call.standin.add_meter(
        event_name,
        display_name=display_name,
        formula=formula,
        customer_key=mapping.get("event_payload_key", "stripe_customer_id"),
        value_key=values.get("event_payload_key", "value"),
        event_time_window=window,
    )
    meter["livemode"] = call.livemode
    return meter


def list_meters(call: Call) -> dict[str, Any]:
    call.only({"status", "limit", "starting_after", "ending_before"})
    status = call.string("status")
    if status is not None and status not in ("active", "inactive"):
        raise invalid_request("Invalid status: must be one of active or inactive", param="status")
    with call.standin.lock:
        meters = [m for m in call.standin.meters.values() if status in (None, m["status"])]
    return list_object(meters, call.params, "/v1/billing/meters")


def retrieve_meter(call: Call) -> dict[str, Any]:
    call.only(())
    meter = call.standin.meters.get(call.path_params["id"])
    if meter is None:
        raise no_such("billing.meter", call.path_params["id"], param="id", status=404)
    return meter


_GROUPING = {"hour": 3600, "day": 86400}


def list_event_summaries(call: Call) -> dict[str, Any]:
    """``GET /v1/billing/meters/{id}/event_summaries``: the meter's aggregate for one
    customer over ``[start_time, end_time)`` (minute-aligned), one summary, or one per
    ``value_grouping_window`` (``hour``/``day``, aligned to it; only windows with events).
    Unlike Stripe's (eventually consistent: aggregated asynchronously) this one is current
    at once."""
    call.only({"customer", "start_time", "end_time", "value_grouping_window", "limit",
               "starting_after", "ending_before"})  # fmt: skip
    standin = call.standin
    meter = standin.meters.get(call.path_params["id"])
    if meter is None:
        raise no_such("billing.meter", call.path_params["id"], param="id", status=404)
    customer = call.string("customer", required=True)
    start = call.integer("start_time", required=True)
    end = call.integer("end_time", required=True)
    assert customer is not None and start is not None and end is not None
    window = call.string("value_grouping_window")
    if window is not None and window not in _GROUPING:
        raise invalid_request(
            "Invalid value_grouping_window: must be one of day or hour",
            param="value_grouping_window",
        )
    step = _GROUPING.get(window or "", 60)
    for name, at in (("start_time", start), ("end_time", end)):
        if at % step:
            raise invalid_request(
                f"Invalid {name}: must be aligned with {window or 'minute'} boundaries",
                param=name,
            )
    if end <= start:
        raise invalid_request("end_time must be after start_time", param="end_time")
    if customer not in standin.customers:
        raise no_such("customer", customer, param="customer")
    customer_key = meter["customer_mapping"]["event_payload_key"]
    value_key = meter["value_settings"]["event_payload_key"]
    formula = meter["default_aggregation"]["formula"]
    buckets: dict[int, list[MeterEvent]] = {}
    with standin.lock:
        for event in sorted(standin.meter_events, key=lambda e: (e.timestamp, e.created)):
            if (
                event.canceled
                or event.event_name != meter["event_name"]
                or event.payload.get(customer_key) != customer
                or not start <= event.timestamp < end
            ):
                continue
            at = start if window is None else event.timestamp - (event.timestamp - start) % step
            buckets.setdefault(at, []).append(event)
    if window is None:
        buckets.setdefault(start, [])

    def value(events: list[MeterEvent]) -> float:
        if formula == "count":
            return float(len(events))
        values = [int(e.payload[value_key]) for e in events]
        if formula == "last":
            return float(values[-1]) if values else 0.0
        return float(sum(values))

    summaries = [
        {
            "id": f"mtrusg_{meter['id']}_{customer}_{at}",
            "object": "billing.meter_event_summary",
            "aggregated_value": value(events),
            "start_time": at,
            "end_time": end if window is None else min(at + step, end),
            "livemode": call.livemode,
            "meter": meter["id"],
        }
        for at, events in buckets.items()
    ]
    url = f"/v1/billing/meters/{meter['id']}/event_summaries"
    return list_object(summaries, call.params, url, created="start_time")


# -- v1 meter events ------------------------------------------------------------------------


def _keys(call: Call, event_name: str) -> tuple[str, str]:
    meter = call.standin.active_meter(event_name)
    if meter is None:
        return "stripe_customer_id", "value"
    return meter["customer_mapping"]["event_payload_key"], meter["value_settings"][
        "event_payload_key"
    ]


def _check_timestamp(call: Call, timestamp: int) -> None:
    config = call.standin.config
    if timestamp < call.now - config.max_past:
        raise invalid_request(
            f"Timestamp {timestamp} is too far in the past: it must be within the past "
            f"{config.max_past / 86400:g} calendar days.",
            param="timestamp",
            code="timestamp_too_far_in_past",
        )
    if timestamp > call.now + config.max_future:
        raise invalid_request(
            f"Timestamp {timestamp} is too far in the future: it can be at most "
            f"{config.max_future / 60:g} minutes ahead.",
            param="timestamp",
            code="timestamp_in_future",
        )


def _process(call: Call, event: MeterEvent) -> None:
    """Stripe's asynchronous half: file the event, or an error report instead."""
    standin = call.standin
    meter = standin.active_meter(event.event_name)
    report = None
    if meter is None:
        report = ("no_meter", f"No active meter was found for event_name '{event.event_name}'.")
    else:
        customer_key = meter["customer_mapping"]["event_payload_key"]
        value_key = meter["value_settings"]["event_payload_key"]
        customer = event.payload.get(customer_key)
        value = event.payload.get(value_key)
        if customer is None:
            report = ("meter_event_no_customer_defined", f"Missing payload key {customer_key}.")
        elif customer not in standin.customers:
            report = ("meter_event_customer_not_found", f"No such customer: '{customer}'")
        elif value is None or not _WHOLE.match(value):
            report = ("meter_event_invalid_value", f"Invalid value {value!r}: not a whole number.")
        elif not call.now - standin.config.max_past <= event.timestamp:
            report = ("timestamp_too_far_in_past", "Timestamp is more than 35 days old.")
        elif event.timestamp > call.now + standin.config.max_future:
            report = ("timestamp_in_future", "Timestamp is more than 5 minutes ahead.")
    with standin.lock:
        if report is not None:
            standin.error_reports.append(
                ErrorReport(report[0], report[1], event.v1(call.livemode), event.api, call.now)
            )
            return
        standin.meter_events.append(event)
        standin.by_identifier.pop(event.identifier, None)  # keep arrival order for prune()
        standin.by_identifier[event.identifier] = event


async def create_meter_event(call: Call) -> dict[str, Any]:
    call.only({"event_name", "payload", "identifier", "timestamp"})
    event_name = call.string("event_name", required=True, max_length=100)
    assert event_name is not None
    payload = call.hash("payload", required=True) or {}
    customer_key, value_key = _keys(call, event_name)
    for key, item in payload.items():
        if not isinstance(item, str):
            raise invalid_request(
                f"Invalid payload[{key}]: must be a string", param=f"payload[{key}]"
            )
    customer = payload.get(customer_key)
    if not customer:
        raise missing(f"payload[{customer_key}]")
    value = payload.get(value_key)
    if value is None:
        raise missing(f"payload[{value_key}]")
    if not _WHOLE.match(value):
        raise invalid_request(
            f"Invalid payload[{value_key}]: {value!r} must be a whole number (an integer "
            "of 0 or more, as a string).",
            param=f"payload[{value_key}]",
        )
    identifier = call.string("identifier", max_length=100)
    if identifier == "":
        raise invalid_request("Invalid identifier: must not be empty", param="identifier")
    timestamp = call.integer("timestamp")
    if timestamp is None:
        timestamp = int(call.now)
    _check_timestamp(call, timestamp)

    standin = call.standin
    slot = (customer, event_name)
    with standin.lock:
        if slot in standin.in_flight:
            raise StripeFailure(
                429,
                "invalid_request_error",
                "Request rate limit exceeded: only one concurrent call per customer per meter "
                f"is allowed (customer {customer}, event_name {event_name}).",
                code="rate_limit",
            )
        standin.in_flight.add(slot)
    try:
        if standin.config.meter_event_latency:
            await asyncio.sleep(standin.config.meter_event_latency)
        event = MeterEvent(
            identifier=identifier or new_id("", 32),
            event_name=event_name,
            payload=dict(payload),
            timestamp=timestamp,
            created=call.now,
            api="v1",
        )
        with standin.lock:
            standin.prune()
            if standin.seen(event.identifier, call.now):
                standin.duplicates.append(event.v1(call.livemode) | {"api": "v1"})
                if standin.config.duplicate_identifier == "error":
                    raise invalid_request(
                        f"A meter event with identifier '{event.identifier}' already exists.",
                        param="identifier",
                        code="resource_already_exists",
                    )
                return event.v1(call.livemode)
            _process(call, event)
        return event.v1(call.livemode)
    finally:
        with standin.lock:
            standin.in_flight.discard(slot)


# -- adjustments ---------------------------------------------------------------------------------


def create_adjustment(call: Call) -> dict[str, Any]:
    call.only({"event_name", "type", "cancel"})
    event_name = call.string("event_name", required=True, max_length=100)
    kind = call.string("type", required=True)
    if kind != "cancel":
        raise invalid_request("Invalid type: must be one of cancel", param="type")
    cancel = call.hash("cancel")
    if cancel is None:
        raise missing("cancel")
    identifier = cancel.get("identifier")
    if not identifier:
        raise missing("cancel[identifier]")
    standin = call.standin
    with standin.lock:
        event = next(
            (
                e
                for e in reversed(standin.meter_events)
                if e.identifier == identifier and e.event_name == event_name
            ),
            None,
        )
        if event is None:
            raise invalid_request(
                f"No meter event with identifier '{identifier}' for event_name "
                f"'{event_name}' was found.",
                param="cancel[identifier]",
                code="resource_missing",
            )
        if call.now - event.created > standin.config.adjustment_window:
            raise invalid_request(
                f"The meter event with identifier '{identifier}' can no longer be cancelled: "
                "events can only be cancelled within 24 hours of Stripe receiving them.",
                param="cancel[identifier]",
            )
        if event.canceled:
            raise invalid_request(
                f"The meter event with identifier '{identifier}' has already been cancelled.",
                param="cancel[identifier]",
            )
        event.canceled = True
        adjustment = Adjustment(new_id("mtradj_", 24), event_name, identifier, call.now)
        standin.adjustments.append(adjustment)
    return adjustment.api(call.livemode)


# -- v2 meter event sessions and streams ---------------------------------------------------------


def create_session(call: Call) -> dict[str, Any]:
    call.only(())
    standin = call.standin
    session = Session(
        id=new_id("mes_test_", 24),
        token="mets_" + new_id("", 40),
        created=call.now,
        expires_at=call.now + standin.config.session_ttl,
    )
    with standin.lock:
        standin.sessions[session.token] = session
    return {
        "id": session.id,
        "object": "v2.billing.meter_event_session",
        "authentication_token": session.token,
        "created": standin.clock.iso(session.created),
        "expires_at": standin.clock.iso(session.expires_at),
        "livemode": call.livemode,
    }


def _parse_time(value: Any, where: str) -> int:
    if not isinstance(value, str):
        raise invalid_request(f"Invalid {where}: must be an RFC 3339 date-time string")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise invalid_request(f"Invalid {where}: {value!r} is not an RFC 3339 date-time") from None
    if moment.tzinfo is None:
        raise invalid_request(f"Invalid {where}: {value!r} has no time zone")
    return int(moment.timestamp())


def meter_event_stream(call: Call) -> dict[str, Any]:
    call.only({"events"})
    events = call.params.get("events")
    if events is None:
        raise missing("events")
    limit = call.standin.config.stream_max_events
    if not isinstance(events, list) or not 1 <= len(events) <= limit:
        raise invalid_request(f"events must be a list of 1 to {limit} meter events")
    parsed: list[MeterEvent] = []
    for i, item in enumerate(events):
        where = f"events[{i}]"
        if not isinstance(item, dict):
            raise invalid_request(f"Invalid {where}: must be an object")
        extra = set(item) - {"event_name", "payload", "identifier", "timestamp"}
        if extra:
            raise invalid_request(f"Received unknown parameter: {where}.{sorted(extra)[0]}")
        name = item.get("event_name")
        if not isinstance(name, str) or not name:
            raise invalid_request(f"Missing required param: {where}.event_name")
        payload = item.get("payload")
        if not isinstance(payload, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in payload.items()
        ):
            raise invalid_request(f"Invalid {where}.payload: must be a map of strings")
        identifier = item.get("identifier")
        if identifier is not None and (not isinstance(identifier, str) or len(identifier) > 100):
            raise invalid_request(f"Invalid {where}.identifier: a string of at most 100 characters")
        timestamp = (
            _parse_time(item["timestamp"], f"{where}.timestamp")
            if "timestamp" in item
            else int(call.now)
        )
        parsed.append(
            MeterEvent(
                identifier=identifier or new_id("", 32),
                event_name=name,
                payload=dict(payload),
                timestamp=timestamp,
                created=call.now,
                api="v2",
            )
        )
    standin = call.standin
    with standin.lock:
        standin.prune()
        for event in parsed:
            if standin.seen(event.identifier, call.now):
                standin.duplicates.append(event.v1(call.livemode) | {"api": "v2"})
                continue
            _process(call, event)
    return {}


def session_for(call_standin: Any, token: str, now: float) -> Session:
    """The live session a stream token names, or the 401 Stripe answers."""
    session = call_standin.sessions.get(token)
    if session is None:
        raise StripeFailure(
            401,
            "invalid_request_error",
            "The meter event session token is not valid: create a meter event session "
            "(POST /v2/billing/meter_event_session) and use its authentication_token.",
            code="invalid_api_key",
        )
    if now >= session.expires_at:
        raise StripeFailure(
            401,
            "temporary_session_expired",
            "The temporary session token has expired.",
            code="billing_meter_event_session_expired",
        )
    return session
