"""The overview page at ``/``: a month's spend, top consumers, unpriced usage, budgets.

Contract:
- Same auth as ``/v1`` (:func:`~meterline.aggregator.auth.get_principal`): with an admin
  key set, a browser signs in at ``POST /login`` with a key (admin, or a consumer key
  with ``read``), kept in the cookie :data:`~meterline.aggregator.auth.KEY_COOKIE`
  (HttpOnly, SameSite=Strict, Secure over https), which ``/v1`` accepts on GET/HEAD so the
  invoice and export links open too. A consumer key sees only its consumer. With no admin
  key (loopback) the page simply opens.
- The tables are the invoices' figures (:mod:`._data`); the page is rendered on the
  server (readable without JavaScript); the charts' series are embedded in it, drawn by
  Chart.js (vendored in ``static/``, MIT licence beside it) — no build step, no extra
  request per data set.
- Period: ``?period=YYYY-MM``, default the current UTC month.
"""

from __future__ import annotations

import html
import json
import logging
import urllib.parse
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from string import Template
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials
from fastapi.staticfiles import StaticFiles

from meterline.aggregator.auth import KEY_COOKIE, Principal, get_key_cache, get_principal
from meterline.aggregator.invoices import month
from meterline.aggregator.pricing import money_str

logger = logging.getLogger(__name__)

_HERE = Path(__file__).parent
STATIC_DIR = _HERE / "static"
_OVERVIEW = Template((_HERE / "overview.html").read_text(encoding="utf-8"))
_LOGIN = Template((_HERE / "login.html").read_text(encoding="utf-8"))

router = APIRouter(include_in_schema=False)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _consumer_name(consumer: str) -> str:
    return _e(consumer) if consumer else '<span class="empty">(unattributed)</span>'


def _invoice_href(consumer: str, period: str) -> str:
    quoted = urllib.parse.quote(consumer, safe="")
    return f"/v1/invoices/{quoted}?period={period}"


def _login_page(period: str, message: str, status_code: int = 401) -> HTMLResponse:
    body = _LOGIN.substitute(period=_e(period), message=_e(message))
    return HTMLResponse(body, status_code=status_code)


def _principal(request: Request, key: str | None = None) -> Principal:
    """The caller, as ``/v1`` resolves it: ``key``, else Authorization, else the cookie."""
    from fastapi.security.utils import get_authorization_scheme_param

    from meterline.aggregator.deps import get_settings, get_store

    if key is None:
        scheme, token = get_authorization_scheme_param(request.headers.get("authorization"))
        key = token if scheme.lower() == "bearer" and token else None
    credentials = (
        None if key is None else HTTPAuthorizationCredentials(scheme="Bearer", credentials=key)
    )
    cache = get_key_cache(request, get_store(request))
    return get_principal(request, get_settings(request), cache, credentials)


def _rows(cells: list[list[str]], columns: int, empty: str) -> str:
    if not cells:
        return f'<tr><td colspan="{columns}" class="empty">{_e(empty)}</td></tr>'
    return "".join("<tr>" + "".join(row) + "</tr>" for row in cells)


def _num(value: Any, cls: str = "num") -> str:
    return f'<td class="{cls}">{_e(value)}</td>'


def _render(overview: Any, principal: Principal) -> str:
    from meterline.aggregator.budgets import BudgetState

    label = overview.period.label
    views = sorted(overview.views.values(), key=lambda v: (-v.invoice.total, v.invoice.consumer))
    consumer_rows, unpriced_rows = [], []
    grand = Decimal(0)
    unpriced_requests = 0
    for view in views:
        inv = view.invoice
        grand += inv.total
        unpriced = sum(u.requests for u in inv.unpriced)
        unpriced_requests += unpriced
        link = (
            f'<td><a href="{_e(_invoice_href(inv.consumer, label))}">invoice</a></td>'
            if inv.consumer
            else "<td></td>"
        )
        consumer_rows.append(
            [
                f'<td class="consumer">{_consumer_name(inv.consumer)}</td>',
                _num(money_str(inv.subtotal)),
                _num(money_str(inv.markup)),
                _num(money_str(inv.total), "num total"),
                _num(unpriced),
                _num(inv.failed_requests),
                link,
            ]
        )
        for u in inv.unpriced:
            unpriced_rows.append(
                [
                    f"<td>{_consumer_name(inv.consumer)}</td>",
                    f"<td>{_e(u.provider)}</td>",
                    f"<td>{_e(u.model)}</td>",
                    _num(u.requests),
                    _num(u.input_tokens),
                    _num(u.output_tokens),
                ]
            )
    budget_rows = []
    state: BudgetState
    for state in overview.budgets:
        b = state.budget
        used = state.spent + state.reserved
        percent = (used / b.limit * 100) if b.limit else Decimal(0)
        unit = "tokens" if b.in_tokens else b.unit
        over = ' class="over"' if used > b.limit else ""
        budget_rows.append(
            [
                f"<td>{_consumer_name(b.consumer)}</td>",
                f"<td>{_e(b.feature or 'all')}</td>",
                f"<td>{_e(b.period)}</td>",
                _num(f"{money_str(b.limit)} {unit}"),
                _num(money_str(state.spent)),
                _num(money_str(state.reserved)),
                f'<td><meter min="0" max="100" value="{min(percent, Decimal(100)):.1f}"></meter>'
                f"<span{over}> {percent:.1f}%</span></td>",
            ]
        )
    budget_empty = overview.budget_error or "No budgets."
    if principal.open:
        who = "open (no admin key set)"
    else:
        name = "admin" if principal.role == "admin" else f"consumer {principal.consumer}"
        who = (
            f'{_e(name)} <form method="post" action="/logout">'
            '<button type="submit">Sign out</button></form>'
        )
    final = {v.finalization is not None for v in overview.views.values()}
    status = "final" if final == {True} else "open"
    chart = json.dumps(overview.chart_data(), separators=(",", ":"))
    return _OVERVIEW.substitute(
        period=_e(label),
        currency=_e(overview.currency),
        who=who,
        grand_total=_e(money_str(grand)),
        consumer_count=len(views),
        unpriced_requests=unpriced_requests,
        status=status,
        consumer_rows=_rows(consumer_rows, 7, "No usage in this period."),
        unpriced_rows=_rows(unpriced_rows, 6, "None: every call had a price."),
        budget_rows=_rows(budget_rows, 7, budget_empty),
        export_csv=_e(f"/v1/export?period={label}&format=csv"),
        export_json=_e(f"/v1/export?period={label}&format=json"),
        # inside <script>: no "<" can close it early
        chart_data=chart.replace("<", "\\u003c").replace("&", "\\u0026"),
    )


@router.get("/", response_class=HTMLResponse)
def overview_page(request: Request, period: str | None = None) -> Response:
    """The overview page (a login form when a key is needed)."""
    from meterline.aggregator.page._data import build_overview
    from meterline.aggregator.routes._budgets import app_budgets
    from meterline.aggregator.routes._pricing import app_pricing

    label = period or datetime.now(UTC).strftime("%Y-%m")
    try:
        principal = _principal(request)
    except HTTPException as exc:
        if exc.status_code == 401:
            message = (
                "Sign in with an API key."
                if request.cookies.get(KEY_COOKIE) is None
                else ("Your key is no longer valid (revoked or expired): sign in again.")
            )
            return _login_page(label, message)
        return HTMLResponse(f"<p>{_e(exc.detail)}</p>", status_code=exc.status_code)
    if "read" not in principal.scopes:
        return HTMLResponse(
            "<p>This key cannot read usage (it needs scope 'read').</p>", status_code=403
        )
    try:
        resolved = month(label)
    except ValueError as exc:
        return HTMLResponse(f"<p>{_e(exc)}</p>", status_code=422)
    app = request.app
    pricing = app_pricing(app)
    try:
        budgets = app_budgets(app)
    except Exception as exc:  # a bad budgets section must not hide the money
        logger.error("overview page: budgets not shown: %s", exc)
        budgets = None
    overview = build_overview(
        app.state.store, pricing, resolved, scope=principal.scope, budgets=budgets
    )
    body = _render(overview, principal)
    return HTMLResponse(body, headers={"Cache-Control": "no-store"})


def _same_origin(request: Request) -> bool:
    """A browser's POST from another origin (a page on another site or port) is refused."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    return urllib.parse.urlsplit(origin).netloc == request.headers.get("host")


@router.post("/login")
async def login(request: Request) -> Response:
    """Check the key posted by the login form; set it as the cookie; back to ``/``."""
    form = urllib.parse.parse_qs((await request.body()).decode("utf-8", "replace"))
    key = (form.get("key") or [""])[0].strip()
    period = (form.get("period") or [""])[0]
    try:
        month(period)
    except ValueError:
        period = ""
    if not _same_origin(request):
        return HTMLResponse("<p>refused: the form was posted from another origin</p>", 403)
    if not key:
        return _login_page(period, "Enter an API key.")
    try:
        principal = _principal(request, key)
    except HTTPException:
        return _login_page(period, "That key is not valid (unknown, revoked or expired).")
    if "read" not in principal.scopes:
        return _login_page(period, "That key cannot read usage (it needs scope 'read').", 403)
    target = "/" + (f"?period={period}" if period else "")
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        KEY_COOKIE, key, httponly=True, samesite="strict",
        secure=request.url.scheme == "https", path="/",
    )  # fmt: skip
    return response


@router.post("/logout")
def logout(request: Request) -> Response:
    """Forget the cookie."""
    if not _same_origin(request):
        return HTMLResponse("<p>refused: the form was posted from another origin</p>", 403)
    response = RedirectResponse("/", status_code=303)
    response.delete_cookie(KEY_COOKIE, path="/", httponly=True, samesite="strict")
    return response


def mount_page(app: FastAPI) -> None:
    """Serve the page at ``/`` and its static files (Chart.js, CSS, JS) at ``/static``."""
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
