"""Where to look while the demo's servers run: URLs checked before they are shown.

Contract: :func:`links` returns only links that answered 200 just now (a required one
that did not is returned with its status, so a broken route shows instead of hiding);
optional ones (the overview page, once a later version serves it) appear only when they
answer. Standard library only; requests carry the admin key when one is set.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass


def _first_admin_key() -> str:
    """The first of ``METERLINE_ADMIN_KEY``'s comma-separated admin keys ('' if none)."""
    keys = [k.strip() for k in os.environ.get("METERLINE_ADMIN_KEY", "").split(",")]
    return next((k for k in keys if k), "")


def api_headers() -> dict[str, str]:
    """``Authorization`` for the API when ``METERLINE_ADMIN_KEY`` is set."""
    key = _first_admin_key()
    return {"Authorization": f"Bearer {key}"} if key else {}


def _clickhouse_password() -> tuple[str, str] | None:
    """:8123's password as ``serve`` chooses it, and how a shell names it."""
    password = os.environ.get("METERLINE_CLICKHOUSE_HTTP_PASSWORD")
    if password:
        return password, "$METERLINE_CLICKHOUSE_HTTP_PASSWORD"
    key = _first_admin_key()
    if not key:
        return None
    # any admin key is the password; the shell's ${VAR%%,*} is the first of several
    many = "," in os.environ.get("METERLINE_ADMIN_KEY", "")
    return key, "${METERLINE_ADMIN_KEY%%,*}" if many else "$METERLINE_ADMIN_KEY"


def key_note() -> str:
    """How the printed API URLs are authorised, for the line above them."""
    if not _first_admin_key():
        return "open to anyone on this machine; set METERLINE_ADMIN_KEY to require a key"
    return "send Authorization: Bearer <an admin key of METERLINE_ADMIN_KEY>"


@dataclass(frozen=True)
class Reply:
    status: int
    """The HTTP status; 0 when the server could not be reached."""
    text: str
    headers: dict[str, str]


def request(url: str, params: dict[str, str] | None = None) -> Reply:
    """GET ``url`` (with ``params``), with the API's or :8123's credentials when set."""
    if params:
        url += ("&" if "?" in url else "?") + urllib.parse.urlencode(params)
    headers = api_headers()
    password = _clickhouse_password()
    if password and "/v1/" not in url and not url.endswith("/docs"):
        headers = {"X-ClickHouse-User": "meterline", "X-ClickHouse-Key": password[0]}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
            return Reply(r.status, r.read().decode(errors="replace"), dict(r.headers.items()))
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, exc.read().decode(errors="replace"), dict(exc.headers.items()))
    except OSError as exc:
        return Reply(0, str(exc), {})


def get(url: str, params: dict[str, str] | None = None) -> tuple[int, str]:
    """:func:`request`'s ``(status, body)``."""
    reply = request(url, params)
    return reply.status, reply.text


@dataclass(frozen=True)
class Link:
    label: str
    url: str
    status: int
    note: str = ""


def clickhouse_query(start: str, end: str) -> str:
    """The example query: each consumer's calls and tokens, counted once, in [start, end)."""
    return (
        "SELECT ConsumerId AS consumer, count() AS calls, sum(InputTokens + OutputTokens) "
        f"AS tokens FROM llm_usage_counted(start='{start}', end='{end}') "
        "GROUP BY consumer ORDER BY consumer FORMAT PrettyCompact"
    )


def curl_command(clickhouse_url: str, query: str) -> str:
    """A shell command that runs ``query`` on :8123 (the password by its variable).

    The query goes in double quotes, so it may hold no ``"``, ``$``, backquote or
    backslash (the shell would read them).
    """
    if any(c in query for c in '"$`\\'):
        raise ValueError(f"query {query!r} cannot be shown in double quotes")
    password = _clickhouse_password()
    auth = f' -u "meterline:{password[1]}"' if password else ""
    return f'curl -sG{auth} {clickhouse_url}/ --data-urlencode "query={query}"'


def links(
    api_url: str,
    clickhouse_url: str | None,
    *,
    consumer: str,
    period: dict[str, str],
    counted: tuple[str, str],
) -> tuple[list[Link], str | None]:
    """The links to show while serving, each requested once, and the curl example.

    Args:
        api_url: the aggregator's base URL.
        clickhouse_url: the ClickHouse-HTTP endpoint, if served.
        consumer: whose invoice to link.
        period: the invoice's query (``{"period": "YYYY-MM"}`` or ``from``/``to``).
        counted: ``(start, end)`` of the example query's range.

    Returns:
        ``(links, curl)``: ``curl`` is a command running an example query on :8123,
        ``None`` when :8123 is not served or the query did not answer 200.
    """
    query = urllib.parse.urlencode(period)
    wanted = [
        ("invoice", f"{api_url}/v1/invoices/{urllib.parse.quote(consumer)}?{query}", True),
        ("export", f"{api_url}/v1/export?{query}&format=csv", True),
        ("overview", f"{api_url}/", False),
        ("API docs", f"{api_url}/docs", True),
    ]
    if clickhouse_url:
        wanted.append(("ClickHouse", clickhouse_url + "/", True))
    found: list[Link] = []
    for label, url, required in wanted:
        status, _ = get(url)
        if status == 200 or required:
            found.append(Link(label, url, status))
    curl = None
    if clickhouse_url:
        sql = clickhouse_query(*counted)
        status, body = get(clickhouse_url + "/", {"query": sql})
        if status == 200:
            curl = curl_command(clickhouse_url, sql)
        else:
            found.append(Link("ClickHouse query", clickhouse_url + "/", status, body[:200]))
    return found, curl
