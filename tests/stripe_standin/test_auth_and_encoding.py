"""The key header and the body encodings, checked as Stripe checks them."""

from __future__ import annotations

import base64

import httpx
import pytest
import stripe

from tests.stripe_standin.conftest import client_for, event


def test_an_unknown_key_is_refused_with_stripes_error_object(fake):
    wrong = client_for(fake, "sk_test_not_a_key_1234")
    with pytest.raises(stripe.AuthenticationError) as info:
        wrong.v1.billing.meter_events.create(event())
    assert info.value.http_status == 401
    error = info.value.json_body["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"] == "Invalid API Key provided: sk_test_" + "*" * 10 + "1234"
    assert "sk_test_not_a_key" not in error["message"]  # the key is masked
    assert fake.state.events() == []


def test_no_authorization_header_is_a_401_naming_bearer_auth(fake):
    response = httpx.post(
        fake.api_base + "/v1/billing/meter_events",
        data={"event_name": "llm_input_tokens"},
    )
    assert response.status_code == 401
    assert response.headers["request-id"].startswith("req_")
    body = response.json()
    assert body["error"]["type"] == "invalid_request_error"
    assert "Authorization: Bearer" in body["error"]["message"]


def test_basic_auth_with_the_key_as_user_is_accepted(fake):
    """curl -u sk_test_…: — how Stripe's own examples authenticate."""
    token = base64.b64encode(f"{fake.api_key}:".encode()).decode()
    response = httpx.post(
        fake.api_base + "/v1/billing/meter_events",
        content="event_name=llm_input_tokens&payload[stripe_customer_id]=cus_acme"
        "&payload[value]=25",
        headers={
            "Authorization": f"Basic {token}",
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    assert response.status_code == 200, response.text
    assert fake.state.totals() == {("cus_acme", "llm_input_tokens"): 25}


def test_v1_takes_form_encoding_with_nested_brackets_not_json(fake):
    headers = {"Authorization": f"Bearer {fake.api_key}"}
    as_json = httpx.post(
        fake.api_base + "/v1/billing/meter_events",
        json=event("25"),
        headers=headers,
    )
    assert as_json.status_code == 400
    assert as_json.json()["error"]["type"] == "invalid_request_error"
    assert "application/x-www-form-urlencoded" in as_json.json()["error"]["message"]
    assert fake.state.events() == []

    # urlencoded brackets (what strict encoders send) decode like the SDK's literal ones
    as_form = httpx.post(
        fake.api_base + "/v1/billing/meter_events",
        data={
            "event_name": "llm_input_tokens",
            "payload[stripe_customer_id]": "cus_acme",
            "payload[value]": "25",
        },
        headers=headers,
    )
    assert as_form.status_code == 200, as_form.text
    assert as_form.json()["payload"] == {"stripe_customer_id": "cus_acme", "value": "25"}


def test_the_sdk_sends_v1_as_a_form_and_v2_as_json(fake, client):
    created = client.v1.billing.meter_events.create(event("7", identifier="a"))
    assert created.payload.value == "7"  # the nested payload reached the stand-in
    session = client.v2.billing.meter_event_session.create()
    stream = client_for(fake, session.authentication_token)
    stream.v2.billing.meter_event_stream.create({"events": [event("3", identifier="b")]})
    assert fake.state.totals() == {("cus_acme", "llm_input_tokens"): 10}
    assert [e.api for e in fake.state.events()] == ["v1", "v2"]


def test_v2_refuses_a_form_body(fake):
    response = httpx.post(
        fake.api_base + "/v2/billing/meter_event_session",
        content="a=b",
        headers={
            "Authorization": f"Bearer {fake.api_key}",
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    assert response.status_code == 400
    assert "JSON" in response.json()["error"]["message"]


def test_an_unknown_path_answers_stripes_404(fake, client):
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.raw_request("post", "/v1/billing/usage_records", foo="bar")
    assert info.value.http_status == 404
    assert "Unrecognized request URL" in info.value.user_message


def test_live_keys_answer_livemode_true(make_standin):
    fake = make_standin(api_keys=("sk_live_standin",))
    live = client_for(fake)
    assert live.v1.billing.meter_events.create(event()).livemode is True


# stripe's async client passes its body to httpx as data=, which httpx deprecates
@pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")
def test_the_async_client_works_too_drops_included(fake):
    import asyncio

    async def main() -> None:
        client = client_for(fake)
        await client.v1.billing.meter_events.create_async(event("2", identifier="a"))
        session = await client.v2.billing.meter_event_session.create_async()
        stream = client_for(fake, session.authentication_token)
        await stream.v2.billing.meter_event_stream.create_async(
            {"events": [event("3", identifier="b")]}
        )
        fake.state.faults.inject("drop_after", path="/v1/billing/meter_events")
        with pytest.raises(stripe.APIConnectionError):
            await client.v1.billing.meter_events.create_async(
                event("4", identifier="c"), {"idempotency_key": "k"}
            )
        replay = await client.v1.billing.meter_events.create_async(
            event("4", identifier="c"), {"idempotency_key": "k"}
        )
        assert replay.last_response.headers["Idempotent-Replayed"] == "true"

    asyncio.run(main())
    assert fake.state.totals() == {("cus_acme", "llm_input_tokens"): 9}
