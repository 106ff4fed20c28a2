"""Customers, invoice items and draft invoices (meterline's invoice mode)."""

from __future__ import annotations

import pytest
import stripe


def test_customers_are_retrieved_and_unknown_ones_are_404(fake, client):
    assert client.v1.customers.retrieve("cus_acme").id == "cus_acme"
    created = client.v1.customers.create({"name": "Initech", "metadata": {"consumer": "initech"}})
    assert created.id.startswith("cus_")
    assert client.v1.customers.retrieve(created.id).metadata.consumer == "initech"
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.customers.retrieve("cus_nobody")
    assert info.value.http_status == 404
    assert info.value.code == "resource_missing"


def test_items_on_a_draft_invoice_add_up_credits_included(fake, client):
    invoice = client.v1.invoices.create({"customer": "cus_acme", "currency": "usd"})
    assert invoice.status == "draft"
    assert invoice.total == 0
    for amount, text in [(1234, "gpt-4o input"), (-200, "reprice credit")]:
        client.v1.invoice_items.create(
            {
                "customer": "cus_acme",
                "invoice": invoice.id,
                "amount": amount,
                "currency": "usd",
                "description": text,
                "metadata": {"meterline_invoice": "inv_1", "line": text},
            }
        )
    invoice = client.v1.invoices.retrieve(invoice.id)
    assert [line.amount for line in invoice.lines.data] == [1234, -200]
    assert [line.description for line in invoice.lines.data] == ["gpt-4o input", "reprice credit"]
    assert invoice.total == 1034
    listed = client.v1.invoice_items.list({"invoice": invoice.id})
    assert {i.amount for i in listed.data} == {1234, -200}
    assert client.v1.invoices.list({"customer": "cus_acme"}).data[0].id == invoice.id


def test_pending_items_are_excluded_by_default_and_included_on_request(fake, client):
    item = client.v1.invoice_items.create(
        {"customer": "cus_acme", "amount": 500, "currency": "usd"}
    )
    assert item.invoice is None
    excluded = client.v1.invoices.create({"customer": "cus_acme"})
    assert excluded.total == 0
    included = client.v1.invoices.create(
        {"customer": "cus_acme", "pending_invoice_items_behavior": "include"}
    )
    assert included.total == 500
    assert client.v1.invoice_items.retrieve(item.id).invoice == included.id
    assert client.v1.invoice_items.list({"customer": "cus_acme", "pending": True}).data == []


def test_a_finalised_invoice_takes_no_more_items(fake, client):
    invoice = client.v1.invoices.create({"customer": "cus_acme", "currency": "usd"})
    client.v1.invoice_items.create(
        {"customer": "cus_acme", "invoice": invoice.id, "amount": 100, "currency": "usd"}
    )
    final = client.v1.invoices.finalize_invoice(invoice.id)
    assert final.status == "open"
    assert final.number
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.invoice_items.create(
            {"customer": "cus_acme", "invoice": invoice.id, "amount": 100, "currency": "usd"}
        )
    assert info.value.param == "invoice"
    assert client.v1.invoices.retrieve(invoice.id).total == 100


def test_item_parameters_are_checked(fake, client):
    draft = client.v1.invoices.create({"customer": "cus_globex", "currency": "usd"})
    for params, param in [
        ({"amount": 1, "currency": "usd"}, "customer"),
        ({"customer": "cus_nobody", "amount": 1, "currency": "usd"}, "customer"),
        ({"customer": "cus_acme", "currency": "usd"}, "amount"),
        ({"customer": "cus_acme", "amount": "1.5", "currency": "usd"}, "amount"),
        ({"customer": "cus_acme", "amount": 1}, "currency"),
        ({"customer": "cus_acme", "amount": 1, "currency": "usd", "invoice": "in_x"}, "invoice"),
        ({"customer": "cus_acme", "amount": 1, "currency": "usd", "invoice": draft.id}, "invoice"),
        ({"customer": "cus_acme", "amount": 1, "currency": "usd", "color": "red"}, "color"),
    ]:
        with pytest.raises(stripe.InvalidRequestError) as info:
            client.v1.invoice_items.create(params)
        assert info.value.param == param, params
    assert fake.state.invoice_items == {}


def test_idempotency_keys_protect_invoice_items(fake, client):
    params = {"customer": "cus_acme", "amount": 700, "currency": "usd", "description": "line 1"}
    first = client.v1.invoice_items.create(params, {"idempotency_key": "inv_1-r0-l1"})
    again = client.v1.invoice_items.create(params, {"idempotency_key": "inv_1-r0-l1"})
    assert again.id == first.id
    assert len(fake.state.invoice_items) == 1
    with pytest.raises(stripe.IdempotencyError):
        client.v1.invoice_items.create(params | {"amount": 701}, {"idempotency_key": "inv_1-r0-l1"})
