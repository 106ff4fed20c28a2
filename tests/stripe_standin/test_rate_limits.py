"""429s: overlapping calls for one customer and meter, and 429s on demand."""

from __future__ import annotations

import threading

import pytest
import stripe

from tests.stripe_standin.conftest import client_for, event


def _parallel(client, params_list):
    results: list[object] = [None] * len(params_list)
    barrier = threading.Barrier(len(params_list))

    def send(i: int) -> None:
        barrier.wait()
        try:
            results[i] = client.v1.billing.meter_events.create(params_list[i])
        except stripe.StripeError as exc:
            results[i] = exc

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(params_list))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_two_overlapping_calls_for_one_customer_and_meter_get_a_429(make_standin):
    fake = make_standin(meter_event_latency=0.4)
    results = _parallel(client_for(fake), [event("1", identifier="a"), event("2", identifier="b")])
    limited = [r for r in results if isinstance(r, stripe.RateLimitError)]
    assert len(limited) == 1, results
    assert limited[0].http_status == 429
    assert limited[0].error.code == "rate_limit"
    assert "Stripe-Should-Retry" not in (limited[0].headers or {})
    assert sum(fake.state.totals().values()) in (1, 2)
    assert len(fake.state.events()) == 1


def test_other_customers_or_meters_do_not_overlap(make_standin):
    fake = make_standin(meter_event_latency=0.3)
    results = _parallel(
        client_for(fake),
        [
            event("1", customer="cus_acme"),
            event("2", customer="cus_globex"),
            event("3", customer="cus_acme", event_name="llm_output_tokens"),
        ],
    )
    assert not [r for r in results if isinstance(r, Exception)], results
    assert fake.state.totals() == {
        ("cus_acme", "llm_input_tokens"): 1,
        ("cus_globex", "llm_input_tokens"): 2,
        ("cus_acme", "llm_output_tokens"): 3,
    }


def test_injected_rate_limit_carries_retry_after_and_the_sdk_does_not_retry_it(fake):
    client = client_for(fake, max_network_retries=3)
    fake.state.faults.inject("rate_limit", times=2, path="/v1/billing/meter_events", retry_after=7)
    with pytest.raises(stripe.RateLimitError) as info:
        client.v1.billing.meter_events.create(event())
    assert info.value.headers["Retry-After"] == "7"
    assert info.value.json_body["error"]["code"] == "rate_limit"
    assert fake.state.requests == [("POST", "/v1/billing/meter_events", 429)]
    assert fake.state.events() == []


def test_a_rate_limit_can_say_stripe_should_retry(fake):
    client = client_for(fake, max_network_retries=2)
    fake.state.faults.inject("rate_limit", path="/v1/billing/meter_events", should_retry=True)
    client.v1.billing.meter_events.create(event())  # the SDK honours the header
    assert [s for _, _, s in fake.state.requests] == [429, 200]


def test_lock_timeout_says_retry_and_the_sdk_retries_with_the_same_key(fake):
    client = client_for(fake, max_network_retries=2)
    fake.state.faults.inject("lock_timeout", path="/v1/billing/meter_events")
    created = client.v1.billing.meter_events.create(event("4"))
    assert "Idempotent-Replayed" not in created.last_response.headers
    assert [s for _, _, s in fake.state.requests] == [429, 200]
    assert fake.state.totals() == {("cus_acme", "llm_input_tokens"): 4}


def test_without_retries_lock_timeout_is_a_rate_limit_error(fake, client):
    fake.state.faults.inject("lock_timeout")
    with pytest.raises(stripe.RateLimitError) as info:
        client.v1.billing.meter_events.create(event())
    assert info.value.headers["Stripe-Should-Retry"] == "true"
    assert info.value.error.code == "lock_timeout"
