"""Identifier de-duplication: within 24 h of the stand-in's clock, and only then."""

from __future__ import annotations

import pytest
import stripe

from tests.stripe_standin.conftest import client_for, event

DAY = 86400


def test_a_repeated_identifier_within_24_hours_is_refused_and_not_counted(fake, client):
    client.v1.billing.meter_events.create(event("5", identifier="acme-2026-03-01T10"))
    fake.state.clock.advance(DAY - 60)
    with pytest.raises(stripe.InvalidRequestError) as info:  # a new idempotency key
        client.v1.billing.meter_events.create(event("5", identifier="acme-2026-03-01T10"))
    assert info.value.code == "resource_already_exists"
    assert info.value.param == "identifier"
    assert fake.state.totals() == {("cus_acme", "llm_input_tokens"): 5}
    assert len(fake.state.duplicates) == 1


def test_after_24_hours_the_same_identifier_counts_again(fake, client):
    """Why the sync's ledger, not Stripe, must be the source of truth for "sent once"."""
    client.v1.billing.meter_events.create(event("5", identifier="w"))
    fake.state.clock.advance(DAY + 60)
    client.v1.billing.meter_events.create(event("5", identifier="w"))
    assert fake.state.totals() == {("cus_acme", "llm_input_tokens"): 10}


def test_duplicates_can_be_answered_200_and_ignored(make_standin):
    fake = make_standin(duplicate_identifier="ignore")
    client = client_for(fake)
    client.v1.billing.meter_events.create(event("5", identifier="w"))
    again = client.v1.billing.meter_events.create(event("5", identifier="w"))
    assert again.identifier == "w"
    assert fake.state.totals() == {("cus_acme", "llm_input_tokens"): 5}


def test_stream_duplicates_are_dropped_silently_across_v1_and_v2(fake, client):
    client.v1.billing.meter_events.create(event("5", identifier="w1"))
    session = client.v2.billing.meter_event_session.create()
    stream = client_for(fake, session.authentication_token)
    stream.v2.billing.meter_event_stream.create(
        {
            "events": [
                event("5", identifier="w1"),
                event("7", identifier="w2"),
                event("7", identifier="w2"),
            ]
        }
    )
    assert fake.state.totals() == {("cus_acme", "llm_input_tokens"): 12}
    assert [d["identifier"] for d in fake.state.duplicates] == ["w1", "w2"]


def test_identifiers_are_remembered_per_account_not_per_meter(fake, client):
    client.v1.billing.meter_events.create(event("5", identifier="w"))
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.billing.meter_events.create(
            event("5", identifier="w", event_name="llm_output_tokens")
        )
    assert fake.state.totals() == {("cus_acme", "llm_input_tokens"): 5}


def test_the_window_is_each_identifiers_own_even_when_the_clock_moves_back(fake, client):
    t0 = fake.state.clock.now()
    client.v1.billing.meter_events.create(event("5", identifier="late"))
    fake.state.clock.set(t0 - 10 * DAY)
    client.v1.billing.meter_events.create(event("5", identifier="early"))
    fake.state.clock.set(t0 - 10 * DAY + DAY + 60)
    client.v1.billing.meter_events.create(event("5", identifier="early"))  # 24 h later
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.billing.meter_events.create(event("5", identifier="late"))
    assert fake.state.totals() == {("cus_acme", "llm_input_tokens"): 15}
