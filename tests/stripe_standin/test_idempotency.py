"""Idempotency keys: replay, misuse, what is not saved, and pruning after 24 h."""

from __future__ import annotations

import threading

import pytest
import stripe

from tests.stripe_standin.conftest import client_for, event

DAY = 86400


def test_same_key_same_body_replays_the_same_answer_once_applied(fake, client):
    first = client.v1.billing.meter_events.create(
        event("5", identifier="w1"), {"idempotency_key": "k1"}
    )
    again = client.v1.billing.meter_events.create(
        event("5", identifier="w1"), {"idempotency_key": "k1"}
    )
    assert again.to_dict() == first.to_dict()
    headers = again.last_response.headers
    assert headers["Idempotent-Replayed"] == "true"
    assert headers["Original-Request"] == first.last_response.request_id
    assert "Idempotent-Replayed" not in first.last_response.headers
    assert fake.state.totals() == {("cus_acme", "llm_input_tokens"): 5}


def test_same_key_other_body_is_an_idempotency_error(fake, client):
    client.v1.billing.meter_events.create(event("5", identifier="w1"), {"idempotency_key": "k1"})
    with pytest.raises(stripe.IdempotencyError) as info:
        client.v1.billing.meter_events.create(
            event("6", identifier="w1"), {"idempotency_key": "k1"}
        )
    assert info.value.http_status == 400
    assert info.value.json_body["error"]["type"] == "idempotency_error"
    with pytest.raises(stripe.IdempotencyError):  # another endpoint is another request too
        client.v1.customers.create({}, {"idempotency_key": "k1"})
    assert fake.state.totals() == {("cus_acme", "llm_input_tokens"): 5}


def test_parameter_order_does_not_make_another_request(fake):
    import httpx

    headers = {"Authorization": f"Bearer {fake.api_key}", "Idempotency-Key": "k"}
    one = "event_name=llm_input_tokens&payload[value]=3&payload[stripe_customer_id]=cus_acme"
    two = "payload[stripe_customer_id]=cus_acme&payload[value]=3&event_name=llm_input_tokens"
    for body in (one, two):
        response = httpx.post(
            fake.api_base + "/v1/billing/meter_events",
            content=body,
            headers=headers | {"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert response.status_code == 200, response.text
    assert response.headers["idempotent-replayed"] == "true"
    assert fake.state.totals() == {("cus_acme", "llm_input_tokens"): 3}


def test_v2_same_key_other_body_is_an_idempotency_error(fake, client):
    session = client.v2.billing.meter_event_session.create()
    stream = client_for(fake, session.authentication_token)
    stream.v2.billing.meter_event_stream.create(
        {"events": [event("1", identifier="a")]}, {"idempotency_key": "s1"}
    )
    with pytest.raises(stripe.IdempotencyError):
        stream.v2.billing.meter_event_stream.create(
            {"events": [event("2", identifier="b")]}, {"idempotency_key": "s1"}
        )
    assert fake.state.totals() == {("cus_acme", "llm_input_tokens"): 1}


def test_a_request_that_failed_validation_saves_nothing_under_its_key(fake, client):
    """Stripe saves answers only once the endpoint ran: the corrected retry may reuse it."""
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.billing.meter_events.create(event("1.5"), {"idempotency_key": "k"})
    created = client.v1.billing.meter_events.create(event("2"), {"idempotency_key": "k"})
    assert "Idempotent-Replayed" not in created.last_response.headers
    assert fake.state.totals() == {("cus_acme", "llm_input_tokens"): 2}


def test_keys_are_pruned_after_24_hours_of_the_standins_clock(fake, client):
    client.v1.billing.meter_events.create(event("5", identifier="w1"), {"idempotency_key": "k"})
    fake.state.clock.advance(DAY - 60)
    with pytest.raises(stripe.IdempotencyError):
        client.v1.billing.meter_events.create(event("6", identifier="w2"), {"idempotency_key": "k"})
    fake.state.clock.advance(120)
    created = client.v1.billing.meter_events.create(
        event("6", identifier="w2"), {"idempotency_key": "k"}
    )
    assert "Idempotent-Replayed" not in created.last_response.headers
    assert fake.state.totals() == {("cus_acme", "llm_input_tokens"): 11}


def test_a_key_whose_first_request_is_still_running_answers_409(make_standin):
    fake = make_standin(meter_event_latency=0.5)
    client = client_for(fake)
    errors: list[Exception] = []

    def send() -> None:
        try:
            client.v1.billing.meter_events.create(event("5"), {"idempotency_key": "busy"})
        except stripe.StripeError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=send) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(errors) == 1
    assert errors[0].http_status == 409
    assert errors[0].error.code == "idempotency_key_in_use"
    assert fake.state.totals() == {("cus_acme", "llm_input_tokens"): 5}


def test_an_idempotency_key_over_255_characters_is_refused(fake, client):
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.billing.meter_events.create(event(), {"idempotency_key": "k" * 256})
    assert fake.state.events() == []
