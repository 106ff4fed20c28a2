"""``POST /v1/billing/meter_event_adjustments``: cancel one event, within 24 h only."""

from __future__ import annotations

import pytest
import stripe

from tests.stripe_standin.conftest import client_for, event

DAY = 86400


def _cancel(client, identifier, event_name="llm_input_tokens"):
    return client.v1.billing.meter_event_adjustments.create(
        {"event_name": event_name, "type": "cancel", "cancel": {"identifier": identifier}}
    )


def test_cancel_within_24_hours_removes_the_event_from_the_totals(fake, client):
    client.v1.billing.meter_events.create(event("5", identifier="w1"))
    client.v1.billing.meter_events.create(event("7", identifier="w2"))
    fake.state.clock.advance(DAY - 60)
    adjustment = _cancel(client, "w1")
    assert adjustment.object == "billing.meter_event_adjustment"
    assert adjustment.cancel.identifier == "w1"
    assert fake.state.totals() == {("cus_acme", "llm_input_tokens"): 7}
    assert [e.canceled for e in fake.state.events()] == [True, False]


def test_after_24_hours_an_event_can_no_longer_be_cancelled(fake, client):
    client.v1.billing.meter_events.create(event("5", identifier="w1"))
    fake.state.clock.advance(DAY + 60)
    with pytest.raises(stripe.InvalidRequestError) as info:
        _cancel(client, "w1")
    assert info.value.param == "cancel[identifier]"
    assert "24 hours" in info.value.user_message
    assert fake.state.totals() == {("cus_acme", "llm_input_tokens"): 5}


def test_cancelling_twice_an_unknown_or_another_meters_event_is_refused(fake, client):
    client.v1.billing.meter_events.create(event("5", identifier="w1"))
    _cancel(client, "w1")
    with pytest.raises(stripe.InvalidRequestError):
        _cancel(client, "w1")
    with pytest.raises(stripe.InvalidRequestError):
        _cancel(client, "never-sent")
    client.v1.billing.meter_events.create(event("5", identifier="w2"))
    with pytest.raises(stripe.InvalidRequestError):
        _cancel(client, "w2", event_name="llm_output_tokens")
    assert fake.state.totals() == {("cus_acme", "llm_input_tokens"): 5}
    assert len(fake.state.adjustments) == 1


def test_required_parameters(fake, client):
    for params, param in [
        ({"type": "cancel", "cancel": {"identifier": "w"}}, "event_name"),
        ({"event_name": "llm_input_tokens", "cancel": {"identifier": "w"}}, "type"),
        ({"event_name": "llm_input_tokens", "type": "cancel"}, "cancel"),
        (
            {"event_name": "llm_input_tokens", "type": "cancel", "cancel": {"x": "y"}},
            "cancel[identifier]",
        ),
    ]:
        with pytest.raises(stripe.InvalidRequestError) as info:
            client.v1.billing.meter_event_adjustments.create(params)
        assert info.value.param == param


def test_stream_events_can_be_cancelled_too(fake, client):
    session = client.v2.billing.meter_event_session.create()
    client_for(fake, session.authentication_token).v2.billing.meter_event_stream.create(
        {"events": [event("5", identifier="s1")]}
    )
    _cancel(client, "s1")
    assert fake.state.totals() == {}


def test_a_cancelled_identifier_still_counts_as_seen(fake, client):
    """Cancelling does not free the identifier: a re-send needs a new one."""
    client.v1.billing.meter_events.create(event("5", identifier="w1"))
    _cancel(client, "w1")
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.billing.meter_events.create(event("4", identifier="w1"))
    client.v1.billing.meter_events.create(event("4", identifier="w1-r1"))
    assert fake.state.totals() == {("cus_acme", "llm_input_tokens"): 4}
