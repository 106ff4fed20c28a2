"""``POST/GET /v1/billing/meters``: what ``meterline stripe setup`` needs."""

from __future__ import annotations

import pytest
import stripe


def _meter(event_name, **extra):
    return {
        "display_name": event_name.replace("_", " "),
        "event_name": event_name,
        "default_aggregation": {"formula": "sum"},
        **extra,
    }


def test_create_list_and_retrieve(make_standin):
    from tests.stripe_standin.conftest import client_for

    fake = make_standin(meters=())
    client = client_for(fake)
    created = [client.v1.billing.meters.create(_meter(f"m{i}")) for i in range(12)]
    assert created[0].object == "billing.meter"
    assert created[0].status == "active"
    assert created[0].customer_mapping.event_payload_key == "stripe_customer_id"
    assert created[0].value_settings.event_payload_key == "value"
    listed = [m.event_name for m in client.v1.billing.meters.list({"limit": 5}).auto_paging_iter()]
    assert sorted(listed) == sorted(f"m{i}" for i in range(12))
    assert client.v1.billing.meters.retrieve(created[3].id).event_name == "m3"
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.billing.meters.retrieve("mtr_missing")
    assert info.value.http_status == 404


def test_a_second_active_meter_for_an_event_name_is_refused(fake, client):
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.billing.meters.create(_meter("llm_input_tokens"))
    assert info.value.param == "event_name"
    assert len(fake.state.meters) == 2


def test_required_and_checked_parameters(fake, client):
    for params, param in [
        ({"event_name": "x", "default_aggregation": {"formula": "sum"}}, "display_name"),
        ({"display_name": "x", "default_aggregation": {"formula": "sum"}}, "event_name"),
        ({"display_name": "x", "event_name": "x"}, "default_aggregation"),
        (_meter("x", default_aggregation={"formula": "avg"}), "default_aggregation[formula]"),
        (_meter("x", event_time_window="week"), "event_time_window"),
        (_meter("x", customer_mapping={"event_payload_key": "c"}), "customer_mapping[type]"),
    ]:
        with pytest.raises(stripe.InvalidRequestError) as info:
            client.v1.billing.meters.create(params)
        assert info.value.param == param


def test_list_filters_by_status(fake, client):
    assert len(client.v1.billing.meters.list({"status": "active"}).data) == 2
    assert client.v1.billing.meters.list({"status": "inactive"}).data == []
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.billing.meters.list({"limit": 101})
