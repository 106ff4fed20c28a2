"""Draft invoices and invoice items over the sync's client (same SDK, retries and keys).

Contract: every call goes through :meth:`MeterEventsClient._call` — 429, 5xx and lost
connections are retried there with the same idempotency key, ``Retry-After`` and
``Stripe-Should-Retry`` honoured. One difference: an invoice item has no identifier
Stripe de-duplicates, so where the meter-event client would move to a fresh key (a 5xx
whose saved answer Stripe would replay, possibly after applying it) this client stops
and answers :data:`UNKNOWN`; the push then lists what Stripe holds before it sends the
item again (:mod:`._push_invoices`). A POST never runs under a second key on its own.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

from meterline.aggregator.stripe._client import UNKNOWN, Answer, MeterEventsClient

__all__ = ["FINAL_5XX", "InvoicesClient", "created_id"]

FINAL_5XX = "final 5xx"
"""How an :data:`UNKNOWN` answer starts when Stripe's saved answer under the key is a 5xx:
that key can only replay it, so a re-send (after listing) needs a new one."""


class _KeyWouldChange(Exception):
    """The retry loop would re-send under a new idempotency key: not for invoice items."""


def created_id(answer: Answer) -> str:
    """The ``id`` of the object an accepted answer created (``''`` when absent)."""
    try:
        return str(json.loads(answer.detail).get("id", ""))
    except (ValueError, AttributeError):
        return ""


def _by_key(objects: list[Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for obj in objects:
        key = (obj.to_dict().get("metadata") or {}).get("meterline_key")
        if key:
            out[str(key)] = str(obj.id)
    return out


class InvoicesClient(MeterEventsClient):
    """:class:`MeterEventsClient` plus customers' draft invoices and invoice items."""

    def _post(self, key: str, create: Callable[[dict[str, str]], Any]) -> Answer:
        def send(idempotency_key: str) -> Any:
            if not idempotency_key.endswith("-g0"):
                raise _KeyWouldChange
            obj = create({"idempotency_key": idempotency_key})
            return {"id": obj.id, "status": getattr(obj, "status", None)}

        try:
            return self._call(key, send, duplicate_ok=False)
        except _KeyWouldChange:
            return Answer(
                UNKNOWN, f"{FINAL_5XX}: Stripe asked not to retry; list before re-sending"
            )

    def create_draft(self, *, key: str, params: dict[str, Any]) -> Answer:
        """``POST /v1/invoices`` (a draft; ``auto_advance`` off)."""
        return self._post(key, lambda o: self.client.v1.invoices.create(params, o))  # type: ignore[arg-type]

    def create_item(self, *, key: str, params: dict[str, Any]) -> Answer:
        """``POST /v1/invoiceitems``."""
        return self._post(key, lambda o: self.client.v1.invoice_items.create(params, o))  # type: ignore[arg-type]

    def invoice_status(self, invoice_id: str) -> str | None:
        """The invoice's ``status`` (``draft``, ``open``, …), ``None`` when Stripe has none
        by that id; retried like any call.

        Raises:
            RuntimeError: Stripe gave no answer after the retries.
        """
        found: dict[str, Any] = {}

        def send(_key: str) -> Any:
            found["status"] = str(self.client.v1.invoices.retrieve(invoice_id).status)
            return {}

        answer = self._call(f"get-{invoice_id}", send, duplicate_ok=False)
        if answer.outcome == "accepted":
            return found["status"]
        if '"resource_missing"' in answer.detail:
            return None
        raise RuntimeError(f"Stripe did not say what invoice {invoice_id} is: {answer.detail}")

    def _listed(self, what: str, pages: Callable[[], Iterator[Any]]) -> list[Any]:
        out: list[Any] = []

        def send(_key: str) -> Any:
            out.clear()
            out.extend(pages())
            return {}

        answer = self._call(f"list-{what}", send, duplicate_ok=False)
        if answer.outcome != "accepted":
            raise RuntimeError(f"Stripe did not list {what}: {answer.detail}")
        return out

    def items_of(self, invoice_id: str) -> dict[str, str]:
        """``metadata.meterline_key`` → invoice item id, for the items on one invoice."""
        items = self._listed(
            f"the items of {invoice_id}",
            lambda: self.client.v1.invoice_items.list(
                {"invoice": invoice_id, "limit": 100}
            ).auto_paging_iter(),
        )
        return _by_key(items)

    def drafts_of(self, customer: str) -> dict[str, str]:
        """``metadata.meterline_key`` → invoice id, for the customer's invoices."""
        invoices = self._listed(
            f"the invoices of {customer}",
            lambda: self.client.v1.invoices.list(
                {"customer": customer, "limit": 100}
            ).auto_paging_iter(),
        )
        return _by_key(invoices)
