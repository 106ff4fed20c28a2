"""Customers, invoice items and invoices: enough of Stripe for meterline's invoice mode.

* ``POST /v1/customers``, ``GET /v1/customers/{id}`` (404 ``resource_missing``).
* ``POST /v1/invoiceitems``: ``customer`` (must exist), ``amount`` (integer in the
  currency's minor unit, negative for a credit), ``currency`` (or the customer's),
  ``description``, ``invoice`` (a draft of the same customer), ``metadata``, ``period``,
  ``quantity``, ``discountable``. ``GET /v1/invoiceitems/{id}``, ``GET /v1/invoiceitems``
  (``customer``, ``invoice``, ``pending``).
* ``POST /v1/invoices``: a draft for ``customer``; ``pending_invoice_items_behavior``
  ``exclude`` (the default since API 2022-08-01) or ``include``; ``POST
  /v1/invoices/{id}/finalize`` (draft → open; a finalised invoice takes no more items);
  ``GET /v1/invoices/{id}``, ``GET /v1/invoices`` (``customer``, ``status``).
"""

from __future__ import annotations

from typing import Any

from meterline.stripe_standin._call import Call
from meterline.stripe_standin._errors import invalid_request, missing, no_such
from meterline.stripe_standin._state import list_object, new_id


def _metadata(call: Call) -> dict[str, str]:
    metadata = call.hash("metadata") or {}
    for key, value in metadata.items():
        if not isinstance(value, str):
            raise invalid_request(f"Invalid metadata[{key}]: must be a string", param="metadata")
    return dict(metadata)


def _customer(call: Call, name: str = "customer") -> dict[str, Any]:
    ident = call.string(name, required=True)
    assert ident is not None
    customer = call.standin.customers.get(ident)
    if customer is None:
        raise no_such("customer", ident, param=name)
    return customer


# -- customers ---------------------------------------------------------------------------


def create_customer(call: Call) -> dict[str, Any]:
    call.only({"name", "email", "description", "metadata", "phone"})
    fields = {k: call.string(k) for k in ("name", "email", "description", "phone")}
    return call.standin.add_customer(
        None,
        livemode=call.livemode,
        metadata=_metadata(call),
        **{k: v for k, v in fields.items() if v is not None},
    )


def retrieve_customer(call: Call) -> dict[str, Any]:
    call.only(())
    customer = call.standin.customers.get(call.path_params["id"])
    if customer is None:
        raise no_such("customer", call.path_params["id"], param="id", status=404)
    return customer


# -- invoice items --------------------------------------------------------------------------


def _refresh(invoice: dict[str, Any], items: list[dict[str, Any]]) -> None:
    lines = [
        {
            "id": "il_" + item["id"][3:],
            "object": "line_item",
            "amount": item["amount"],
            "currency": item["currency"],
            "description": item["description"],
            "discountable": item["discountable"],
            "invoice": invoice["id"],
            "livemode": item["livemode"],
            "metadata": item["metadata"],
            "period": item["period"],
            "quantity": item["quantity"],
            "parent": {
                "type": "invoice_item_details",
                "invoice_item_details": {"invoice_item": item["id"], "proration": False},
            },
        }
        for item in items
    ]
    total = sum(line["amount"] for line in lines)
    invoice["lines"] = {
        "object": "list",
        "data": lines,
        "has_more": False,
        "total_count": len(lines),
        "url": f"/v1/invoices/{invoice['id']}/lines",
    }
    invoice.update(
        subtotal=total, total=total, amount_due=max(total, 0), amount_remaining=max(total, 0)
    )


def _items_of(call: Call, invoice_id: str) -> list[dict[str, Any]]:
    items = [i for i in call.standin.invoice_items.values() if i["invoice"] == invoice_id]
    return sorted(items, key=lambda i: (i["date"], i["_seq"]))


def create_invoice_item(call: Call) -> dict[str, Any]:
    call.only(
        {
            "customer",
            "amount",
            "currency",
            "description",
            "invoice",
            "metadata",
            "period",
            "quantity",
            "discountable",
            "unit_amount_decimal",
        }
    )
    customer = _customer(call)
    if "unit_amount_decimal" in call.params:
        raise invalid_request(
            "The stand-in does not model unit_amount_decimal: send amount (minor units).",
            param="unit_amount_decimal",
        )
    amount = call.integer("amount")
    if amount is None:
        raise missing("amount")
    currency = (call.string("currency") or customer["currency"] or "").lower()
    if not currency:
        raise missing("currency")
    quantity = call.integer("quantity")
    quantity = 1 if quantity is None else quantity
    if quantity < 0:
        raise invalid_request("Invalid quantity: must be 0 or more", param="quantity")
    now = int(call.now)
    period = call.hash("period") or {}
    try:
        start = int(period.get("start", now))
        end = int(period.get("end", now))
    except (TypeError, ValueError):
        raise invalid_request(
            "Invalid period: start and end are integers", param="period"
        ) from None
    if end < start:
        raise invalid_request("Invalid period: end must be after start", param="period[end]")
    standin = call.standin
    invoice_id = call.string("invoice")
    with standin.lock:
        if invoice_id is not None:
            invoice = standin.invoices.get(invoice_id)
            if invoice is None:
                raise no_such("invoice", invoice_id, param="invoice")
            if invoice["customer"] != customer["id"]:
                raise invalid_request(
                    f"Invoice {invoice_id} belongs to another customer.", param="invoice"
                )
            if invoice["status"] != "draft":
                raise invalid_request(
                    f"You can only add invoice items to draft invoices; {invoice_id} is "
                    f"{invoice['status']}.",
                    param="invoice",
                    code="invoice_not_editable",
                )
            if invoice["currency"] != currency:
                raise invalid_request(
                    f"The currency {currency} does not match the invoice's currency "
                    f"{invoice['currency']}.",
                    param="currency",
                )
        if customer["currency"] is None:
            customer["currency"] = currency
        item = {
            "id": new_id("ii_", 24),
            "object": "invoiceitem",
            "amount": amount,
            "currency": currency,
            "customer": customer["id"],
            "date": now,
            "description": call.string("description"),
            "discountable": call.params.get("discountable", "true") != "false",
            "discounts": [],
            "invoice": invoice_id,
            "livemode": call.livemode,
            "metadata": _metadata(call),
            "period": {"start": start, "end": end},
            "proration": False,
            "quantity": quantity,
            "tax_rates": [],
            "test_clock": None,
            "_seq": len(standin.invoice_items),
        }
        standin.invoice_items[item["id"]] = item
        if invoice_id is not None:
            _refresh(standin.invoices[invoice_id], _items_of(call, invoice_id))
    return _public(item)


def _public(item: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in item.items() if not k.startswith("_")}


def retrieve_invoice_item(call: Call) -> dict[str, Any]:
    call.only(())
    item = call.standin.invoice_items.get(call.path_params["id"])
    if item is None:
        raise no_such("invoiceitem", call.path_params["id"], param="id", status=404)
    return _public(item)


def list_invoice_items(call: Call) -> dict[str, Any]:
    call.only({"customer", "invoice", "pending", "limit", "starting_after", "ending_before"})
    customer = call.string("customer")
    invoice = call.string("invoice")
    pending = call.string("pending")
    with call.standin.lock:
        items = [
            _public(i)
            for i in call.standin.invoice_items.values()
            if customer in (None, i["customer"])
            and invoice in (None, i["invoice"])
            and (pending is None or (i["invoice"] is None) == (pending == "true"))
        ]
    return list_object(items, call.params, "/v1/invoiceitems", created="date")


# -- invoices ----------------------------------------------------------------------------------


def create_invoice(call: Call) -> dict[str, Any]:
    call.only(
        {
            "customer",
            "auto_advance",
            "collection_method",
            "days_until_due",
            "currency",
            "description",
            "metadata",
            "pending_invoice_items_behavior",
        }
    )
    customer = _customer(call)
    method = call.string("collection_method") or "charge_automatically"
    if method not in ("charge_automatically", "send_invoice"):
        raise invalid_request(
            "Invalid collection_method: must be one of charge_automatically or send_invoice",
            param="collection_method",
        )
    days = call.integer("days_until_due")
    if method == "send_invoice" and days is None:
        raise missing("days_until_due")
    behavior = call.string("pending_invoice_items_behavior") or "exclude"
    if behavior not in ("exclude", "include"):
        raise invalid_request(
            "Invalid pending_invoice_items_behavior: must be one of exclude or include",
            param="pending_invoice_items_behavior",
        )
    currency = (call.string("currency") or customer["currency"] or "usd").lower()
    now = int(call.now)
    standin = call.standin
    with standin.lock:
        invoice: dict[str, Any] = {
            "id": new_id("in_", 24),
            "object": "invoice",
            "auto_advance": call.params.get("auto_advance", "false") == "true",
            "billing_reason": "manual",
            "collection_method": method,
            "created": now,
            "currency": currency,
            "customer": customer["id"],
            "days_until_due": days,
            "description": call.string("description"),
            "livemode": call.livemode,
            "metadata": _metadata(call),
            "number": None,
            "period_start": now,
            "period_end": now,
            "status": "draft",
            "status_transitions": {"finalized_at": None},
        }
        standin.invoices[invoice["id"]] = invoice
        if behavior == "include":
            for item in standin.invoice_items.values():
                if (
                    item["customer"] == customer["id"]
                    and item["invoice"] is None
                    and item["currency"] == currency
                ):
                    item["invoice"] = invoice["id"]
        _refresh(invoice, _items_of(call, invoice["id"]))
    return invoice


def _invoice(call: Call) -> dict[str, Any]:
    invoice = call.standin.invoices.get(call.path_params["id"])
    if invoice is None:
        raise no_such("invoice", call.path_params["id"], param="id", status=404)
    return invoice


def retrieve_invoice(call: Call) -> dict[str, Any]:
    call.only(())
    return _invoice(call)


def finalize_invoice(call: Call) -> dict[str, Any]:
    call.only({"auto_advance"})
    with call.standin.lock:
        invoice = _invoice(call)
        if invoice["status"] != "draft":
            raise invalid_request(
                f"This invoice is already finalized (status {invoice['status']}).",
                code="invoice_not_editable",
            )
        customer = call.standin.customers[invoice["customer"]]
        sequence = customer["next_invoice_sequence"]
        customer["next_invoice_sequence"] = sequence + 1
        invoice["number"] = f"{customer['invoice_prefix']}-{sequence:04d}"
        invoice["status"] = "open" if invoice["total"] > 0 else "paid"
        invoice["status_transitions"] = {"finalized_at": int(call.now)}
    return invoice


def list_invoices(call: Call) -> dict[str, Any]:
    call.only({"customer", "status", "limit", "starting_after", "ending_before"})
    customer = call.string("customer")
    status = call.string("status")
    with call.standin.lock:
        invoices = [
            i
            for i in call.standin.invoices.values()
            if customer in (None, i["customer"]) and status in (None, i["status"])
        ]
    return list_object(invoices, call.params, "/v1/invoices")
