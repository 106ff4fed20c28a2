"""v2 meter event sessions (15-minute tokens) and streams (≤ 100 events, async checks)."""

from __future__ import annotations

from datetime import datetime

import pytest
import stripe

from tests.stripe_standin.conftest import client_for, event


def _stream(fake, client):
    session = client.v2.billing.meter_event_session.create()
    return session, client_for(fake, session.authentication_token)


def test_a_session_token_lives_15_minutes(fake, client):
    session = client.v2.billing.meter_event_session.create()
    assert session.object == "v2.billing.meter_event_session"
    created = datetime.fromisoformat(session.created)
    expires = datetime.fromisoformat(session.expires_at)
    assert (expires - created).total_seconds() == 15 * 60


def test_up_to_100_events_a_request(fake, client):
    _, stream = _stream(fake, client)
    stream.v2.billing.meter_event_stream.create(
        {"events": [event("1", identifier=f"e{i}") for i in range(100)]}
    )
    assert fake.state.totals() == {("cus_acme", "llm_input_tokens"): 100}
    with pytest.raises(stripe.InvalidRequestError):
        stream.v2.billing.meter_event_stream.create(
            {"events": [event("1", identifier=f"f{i}") for i in range(101)]}
        )
    with pytest.raises(stripe.InvalidRequestError):
        stream.v2.billing.meter_event_stream.create({"events": []})
    assert fake.state.totals() == {("cus_acme", "llm_input_tokens"): 100}


def test_an_expired_session_is_refused_with_temporary_session_expired(fake, client):
    _, stream = _stream(fake, client)
    fake.state.clock.advance(15 * 60 - 5)
    stream.v2.billing.meter_event_stream.create({"events": [event("1", identifier="a")]})
    fake.state.clock.advance(10)
    with pytest.raises(stripe.TemporarySessionExpiredError) as info:
        stream.v2.billing.meter_event_stream.create({"events": [event("1", identifier="b")]})
    assert info.value.http_status == 401
    assert info.value.code == "billing_meter_event_session_expired"
    _, renewed = _stream(fake, client)
    renewed.v2.billing.meter_event_stream.create({"events": [event("1", identifier="b")]})
    assert fake.state.totals() == {("cus_acme", "llm_input_tokens"): 2}


def test_the_stream_takes_session_tokens_not_secret_keys(fake, client):
    with pytest.raises(stripe.AuthenticationError):
        client.v2.billing.meter_event_stream.create({"events": [event()]})
    forged = client_for(fake, "mets_forged")
    with pytest.raises(stripe.AuthenticationError):
        forged.v2.billing.meter_event_stream.create({"events": [event()]})
    assert fake.state.events() == []


def test_sessions_need_a_secret_key(fake):
    with pytest.raises(stripe.AuthenticationError):
        client_for(fake, "sk_test_wrong").v2.billing.meter_event_session.create()


def test_stream_events_are_validated_asynchronously(fake, client):
    """The stream answers {} and drops bad events later, as error reports."""
    now = fake.state.clock.now()
    _, stream = _stream(fake, client)
    old = datetime.fromtimestamp(now - 36 * 86400).astimezone().isoformat()
    ahead = datetime.fromtimestamp(now + 600).astimezone().isoformat()
    stream.v2.billing.meter_event_stream.create(
        {
            "events": [
                event("1.5", identifier="a"),
                event("2", identifier="b", timestamp=old),
                event("2", identifier="c", timestamp=ahead),
                event("2", identifier="d", customer="cus_nobody"),
                event("2", identifier="e", event_name="no_meter_here"),
                event("9", identifier="f"),
            ]
        }
    )
    assert fake.state.totals() == {("cus_acme", "llm_input_tokens"): 9}
    assert [r.code for r in fake.state.error_reports] == [
        "meter_event_invalid_value",
        "timestamp_too_far_in_past",
        "timestamp_in_future",
        "meter_event_customer_not_found",
        "no_meter",
    ]


def test_stream_shape_errors_are_refused_at_once(fake, client):
    _, stream = _stream(fake, client)
    bad = [
        {"payload": {"stripe_customer_id": "cus_acme", "value": "1"}},
        {"event_name": "llm_input_tokens", "payload": {"value": 1}},
        {**event(), "timestamp": "yesterday"},
        {**event(), "identifier": "x" * 101},
        {**event(), "quantity": "2"},
    ]
    for item in bad:
        with pytest.raises(stripe.InvalidRequestError):
            stream.v2.billing.meter_event_stream.create({"events": [item]})
    assert fake.state.events() == []
    assert fake.state.error_reports == []
