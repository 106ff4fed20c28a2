"""``POST /v1/billing/meter_events``: required parameters, formats and limits."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import stripe

from tests.stripe_standin.conftest import event

DAY = 86400


def _refused(client, params, param):
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.billing.meter_events.create(params)
    assert info.value.http_status == 400
    assert info.value.param == param, info.value.user_message
    assert info.value.json_body["error"]["type"] == "invalid_request_error"
    return info.value


def test_event_name_is_required(fake, client):
    params = event()
    del params["event_name"]
    error = _refused(client, params, "event_name")
    assert error.code == "parameter_missing"
    assert fake.state.events() == []


def test_payload_customer_and_value_are_required(fake, client):
    _refused(client, {"event_name": "llm_input_tokens"}, "payload")
    _refused(
        client,
        {"event_name": "llm_input_tokens", "payload": {"value": "3"}},
        "payload[stripe_customer_id]",
    )
    _refused(
        client,
        {"event_name": "llm_input_tokens", "payload": {"stripe_customer_id": "cus_acme"}},
        "payload[value]",
    )
    assert fake.state.events() == []


@pytest.mark.parametrize("value", ["1.5", "-3", "1e3", "abc", "", " 7", "0x10", "٣"])
def test_payload_value_must_be_a_whole_number_string(fake, client, value):
    _refused(client, event(value), "payload[value]")
    assert fake.state.totals() == {}


@pytest.mark.parametrize("value", ["0", "7", "123456789012345678901234567890"])
def test_whole_numbers_of_any_size_are_accepted(fake, client, value):
    client.v1.billing.meter_events.create(event(value))
    assert fake.state.totals() == {("cus_acme", "llm_input_tokens"): int(value)}


def test_identifier_is_at_most_100_characters(fake, client):
    client.v1.billing.meter_events.create(event(identifier="i" * 100))
    _refused(client, event(identifier="j" * 101), "identifier")
    assert [e.identifier for e in fake.state.events()] == ["i" * 100]


def test_event_name_is_at_most_100_characters(fake, client):
    _refused(client, event(event_name="e" * 101), "event_name")


def test_unknown_parameters_are_refused(fake, client):
    error = _refused(client, event(quantity="3"), "quantity")
    assert error.code == "parameter_unknown"


def test_timestamp_window_follows_the_standins_clock(fake, client):
    """At most 35 days old, at most 5 minutes ahead — of the stand-in's (moved) clock."""
    now = int(datetime(2026, 3, 1, 12, tzinfo=UTC).timestamp())
    fake.state.clock.set(now)
    # leave a little slack for the clock ticking between set() and the request
    client.v1.billing.meter_events.create(event(timestamp=now - 35 * DAY + 5))
    client.v1.billing.meter_events.create(event(timestamp=now + 300 - 5))
    old = _refused(client, event(timestamp=now - 35 * DAY - 5), "timestamp")
    assert old.code == "timestamp_too_far_in_past"
    ahead = _refused(client, event(timestamp=now + 300 + 5), "timestamp")
    assert ahead.code == "timestamp_in_future"
    assert sorted(e.timestamp for e in fake.state.events()) == [now - 35 * DAY + 5, now + 295]


def test_timestamp_defaults_to_now_and_must_be_an_integer(fake, client):
    fake.state.clock.set(1_800_000_000)
    created = client.v1.billing.meter_events.create(event())
    assert abs(created.timestamp - 1_800_000_000) <= 2
    _refused(client, event(timestamp="yesterday"), "timestamp")


def test_meter_payload_keys_are_the_meters(fake, client):
    client.v1.billing.meters.create(
        {
            "display_name": "Seats",
            "event_name": "seats",
            "default_aggregation": {"formula": "sum"},
            "customer_mapping": {"event_payload_key": "account", "type": "by_id"},
            "value_settings": {"event_payload_key": "count"},
        }
    )
    client.v1.billing.meter_events.create(
        {"event_name": "seats", "payload": {"account": "cus_acme", "count": "4"}}
    )
    _refused(
        client,
        {"event_name": "seats", "payload": {"stripe_customer_id": "cus_acme", "value": "4"}},
        "payload[account]",
    )
    assert fake.state.totals() == {("cus_acme", "seats"): 4}


def test_unknown_customer_or_meter_is_accepted_then_reported_not_counted(fake, client):
    """Stripe finds these while processing: 200 now, an error report later."""
    client.v1.billing.meter_events.create(event(customer="cus_nobody"))
    client.v1.billing.meter_events.create(event(event_name="no_such_meter"))
    assert fake.state.totals() == {}
    assert [r.code for r in fake.state.error_reports] == [
        "meter_event_customer_not_found",
        "no_meter",
    ]
