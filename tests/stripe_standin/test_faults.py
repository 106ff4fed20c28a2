"""500s and dropped connections on demand, before and after the request was applied."""

from __future__ import annotations

import pytest
import stripe

from tests.stripe_standin.conftest import client_for, event

KEY = {"idempotency_key": "sync-acme-w1"}


def test_server_error_before_applying_is_saved_under_the_key_as_stripe_does(fake, client):
    fake.state.faults.inject("server_error", path="/v1/billing/meter_events")
    with pytest.raises(stripe.APIError) as info:
        client.v1.billing.meter_events.create(event("3", identifier="w1"), KEY)
    assert info.value.http_status == 500
    assert info.value.headers["Stripe-Should-Retry"] == "false"
    assert fake.state.events() == []
    with pytest.raises(stripe.APIError) as replay:  # same key: the saved 500 again
        client.v1.billing.meter_events.create(event("3", identifier="w1"), KEY)
    assert replay.value.headers["Idempotent-Replayed"] == "true"
    client.v1.billing.meter_events.create(event("3", identifier="w1"), {"idempotency_key": "new"})
    assert fake.state.totals() == {("cus_acme", "llm_input_tokens"): 3}


def test_the_sdk_does_not_retry_a_500_that_says_no(fake):
    client = client_for(fake, max_network_retries=3)
    fake.state.faults.inject("server_error")
    with pytest.raises(stripe.APIError):
        client.v1.billing.meter_events.create(event())
    assert len(fake.state.requests) == 1


def test_server_error_after_applying_hides_that_it_was_applied(fake, client):
    fake.state.faults.inject("server_error_after", path="/v1/billing/meter_events")
    with pytest.raises(stripe.APIError):
        client.v1.billing.meter_events.create(event("3", identifier="w1"), KEY)
    assert fake.state.totals() == {("cus_acme", "llm_input_tokens"): 3}
    with pytest.raises(stripe.APIError):
        client.v1.billing.meter_events.create(event("3", identifier="w1"), KEY)
    with pytest.raises(stripe.InvalidRequestError) as dup:  # a new key meets the identifier
        client.v1.billing.meter_events.create(event("3", identifier="w1"))
    assert dup.value.code == "resource_already_exists"
    assert fake.state.totals() == {("cus_acme", "llm_input_tokens"): 3}


def test_drop_before_loses_the_request_and_applies_nothing(fake, client):
    fake.state.faults.inject("drop_before", path="/v1/billing/meter_events")
    with pytest.raises(stripe.APIConnectionError) as info:
        client.v1.billing.meter_events.create(event("3", identifier="w1"), KEY)
    assert info.value.should_retry is True
    assert fake.state.events() == []
    created = client.v1.billing.meter_events.create(event("3", identifier="w1"), KEY)
    assert "Idempotent-Replayed" not in created.last_response.headers
    assert fake.state.totals() == {("cus_acme", "llm_input_tokens"): 3}


def test_drop_after_applies_then_loses_the_answer_and_the_key_replays_it(fake, client):
    fake.state.faults.inject("drop_after", path="/v1/billing/meter_events")
    with pytest.raises(stripe.APIConnectionError):
        client.v1.billing.meter_events.create(event("3", identifier="w1"), KEY)
    assert fake.state.totals() == {("cus_acme", "llm_input_tokens"): 3}
    replay = client.v1.billing.meter_events.create(event("3", identifier="w1"), KEY)
    assert replay.last_response.headers["Idempotent-Replayed"] == "true"
    assert replay.identifier == "w1"
    assert fake.state.totals() == {("cus_acme", "llm_input_tokens"): 3}


def test_the_sdks_own_retry_after_a_drop_is_replayed_not_applied_twice(fake):
    client = client_for(fake, max_network_retries=2)
    fake.state.faults.inject("drop_after", times=2, path="/v1/billing/meter_events")
    created = client.v1.billing.meter_events.create(event("3"))
    assert created.last_response.headers["Idempotent-Replayed"] == "true"
    assert [s for _, _, s in fake.state.requests] == [0, 0, 200]
    assert fake.state.totals() == {("cus_acme", "llm_input_tokens"): 3}


def test_faults_only_hit_their_path_and_each_fires_once_per_time(fake, client):
    fake.state.faults.inject("server_error", times=2, path="/v1/billing/meter_events")
    client.v1.customers.create({"name": "Acme"})
    for _ in range(2):
        with pytest.raises(stripe.APIError):
            client.v1.billing.meter_events.create(event())
    client.v1.billing.meter_events.create(event())
    assert [k for k, _, _ in fake.state.faults.fired] == ["server_error", "server_error"]
    assert fake.state.faults.pending() == []


def test_v2_server_errors_are_not_saved_so_a_retry_runs_again(fake, client):
    session = client.v2.billing.meter_event_session.create()
    stream = client_for(fake, session.authentication_token)
    fake.state.faults.inject("server_error", path="/v2/billing/meter_event_stream")
    with pytest.raises(stripe.APIError):
        stream.v2.billing.meter_event_stream.create(
            {"events": [event("4", identifier="a")]}, {"idempotency_key": "s"}
        )
    stream.v2.billing.meter_event_stream.create(
        {"events": [event("4", identifier="a")]}, {"idempotency_key": "s"}
    )
    assert fake.state.totals() == {("cus_acme", "llm_input_tokens"): 4}


def test_an_unknown_fault_kind_is_refused(fake):
    with pytest.raises(ValueError, match="unknown fault kind 'explode'"):
        fake.state.faults.inject("explode")


def test_stall_after_applies_then_holds_the_answer_back(fake):
    """A window to kill a client whose request was applied but not yet answered."""
    import threading
    import time

    client = client_for(fake)
    fake.state.faults.inject("stall_after", path="/v1/billing/meter_events", delay=1.0)
    answered = threading.Event()

    def send() -> None:
        client.v1.billing.meter_events.create(event("3"))
        answered.set()

    thread = threading.Thread(target=send)
    started = time.monotonic()
    thread.start()
    deadline = time.monotonic() + 5
    while not fake.state.events() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fake.state.totals() == {("cus_acme", "llm_input_tokens"): 3}
    assert not answered.is_set()
    thread.join(5)
    assert answered.is_set()
    assert time.monotonic() - started >= 1.0


def test_stall_before_holds_the_request_back_unapplied(fake):
    import threading
    import time

    client = client_for(fake)
    fake.state.faults.inject("stall_before", path="/v1/billing/meter_events", delay=0.6)
    thread = threading.Thread(target=lambda: client.v1.billing.meter_events.create(event("3")))
    thread.start()
    time.sleep(0.3)
    assert fake.state.events() == []
    thread.join(5)
    assert fake.state.totals() == {("cus_acme", "llm_input_tokens"): 3}
