"""HTTP plumbing shared by the simulated APIs: the per-request context, JSON and SSE
responses, and failure injection.

The SSE response is a plain ASGI callable: it writes one event at a time (with the
optional per-event delay), notices a client that went away (``http.disconnect``) and
stops, and for ``x-simulator-cut-after: N`` drops the connection after N events without
ending the chunked body, as a provider connection that breaks mid-stream does (uvicorn
logs "ASGI callable returned without completing response." for each such cut).
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import string
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from meterline.simulator._failures import (
    AttemptCounter,
    error_body,
    parse_fail_spec,
    status_for_attempt,
)
from meterline.simulator.ledger import Ledger, LedgerEntry

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_ALNUM = string.ascii_letters + string.digits


def random_id(prefix: str, length: int = 24, alphabet: str = _ALNUM) -> str:
    """A unique, provider-looking id such as ``chatcmpl-…`` or ``msg_01…``."""
    return prefix + "".join(secrets.choice(alphabet) for _ in range(length))


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


class BadRequest(Exception):
    """The request is invalid; rendered as the provider's 400."""


def parse_baggage(header: str | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in (header or "").split(","):
        key, sep, value = item.split(";", 1)[0].partition("=")
        if sep and key.strip():
            out[unquote(key.strip())] = unquote(value.strip())
    return out


@dataclass
class Event:
    """One SSE event; ``usage`` marks the event that carries the response's usage."""

    data: str
    name: str | None = None
    usage: bool = False

    def encode(self) -> bytes:
        head = f"event: {self.name}\n" if self.name else ""
        return f"{head}data: {self.data}\n\n".encode()


class EventStream:
    """ASGI response writing ``events`` as ``text/event-stream`` and updating the ledger."""

    def __init__(
        self,
        events: Sequence[Event],
        *,
        ledger: Ledger,
        entry: LedgerEntry,
        headers: dict[str, str],
        delay_s: float = 0.0,
        cut_after: int | None = None,
    ) -> None:
        self.events = events
        self.ledger = ledger
        self.entry = entry
        self.headers = headers
        self.delay_s = delay_s
        self.cut_after = cut_after

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw_headers = [(b"content-type", b"text/event-stream; charset=utf-8")]
        raw_headers += [(b"cache-control", b"no-cache")]
        raw_headers += [(k.encode(), v.encode()) for k, v in self.headers.items()]
        await send({"type": "http.response.start", "status": 200, "headers": raw_headers})
        outcome = {"finished": False}

        async def watch_disconnect(scope_: anyio.CancelScope) -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            scope_.cancel()

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch_disconnect, tg.cancel_scope)
            with contextlib.suppress(OSError):  # the client went away
                outcome["finished"] = await self._write(send)
            tg.cancel_scope.cancel()
        if outcome["finished"]:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        else:
            logger.info("simulator stream %s ended early", self.entry.id)

    async def _write(self, send: Send) -> bool:
        # The ledger is updated before each write (and rolled back if the write fails) so
        # a client that has read the last event never sees a ledger lagging behind it.
        last = len(self.events) - 1
        for n, event in enumerate(self.events):
            if self.cut_after is not None and n >= self.cut_after:
                return False  # the server drops the connection mid-body
            if self.delay_s and n:
                await anyio.sleep(self.delay_s)
            entry = self.entry
            before = {
                "events_sent": entry.events_sent,
                "usage_sent": entry.usage_sent,
                "completed": entry.completed,
            }
            changes: dict[str, Any] = {"events_sent": n + 1}
            if event.usage:
                changes["usage_sent"] = True
            if n == last:
                changes["completed"] = True
            self.ledger.update(entry, **changes)
            try:
                body = event.encode()
                await send({"type": "http.response.body", "body": body, "more_body": True})
            except BaseException:
                self.ledger.update(entry, **before)
                raise
        return True


@dataclass
class Call:
    """What every simulated API handler needs to know about one request."""

    request: Request
    body: dict[str, Any]
    provider: str
    ledger: Ledger
    attempt: int
    request_id: str

    def header_int(self, name: str) -> int | None:
        value = self.request.headers.get(name)
        if value is None:
            return None
        try:
            number = int(value)
        except ValueError as exc:
            raise BadRequest(f"header {name} must be an integer, got {value!r}") from exc
        if number < 0:
            raise BadRequest(f"header {name} must not be negative, got {value!r}")
        return number

    def entry(self, **fields: Any) -> LedgerEntry:
        headers = self.request.headers
        return LedgerEntry(
            attempt=self.attempt,
            tag=headers.get("x-simulator-tag"),
            baggage=parse_baggage(headers.get("baggage")),
            traceparent=headers.get("traceparent"),
            **fields,
        )

    def stream(self, events: Sequence[Event], entry: LedgerEntry, delay_ms: int) -> EventStream:
        self.ledger.record(entry)
        return EventStream(
            events,
            ledger=self.ledger,
            entry=entry,
            headers=self.response_headers(),
            delay_s=(self.header_int("x-simulator-chunk-delay-ms") or delay_ms) / 1000,
            cut_after=self.header_int("x-simulator-cut-after"),
        )

    def json(self, payload: Any, entry: LedgerEntry) -> Response:
        entry.usage_sent = entry.usage is not None
        entry.completed = True
        self.ledger.record(entry)
        return JSONResponse(payload, headers=self.response_headers())

    def response_headers(self) -> dict[str, str]:
        if self.provider == "anthropic":
            return {"request-id": self.request_id}
        if self.provider in ("openai", "azure.ai.openai"):
            return {"x-request-id": self.request_id, "openai-processing-ms": "1"}
        return {}


def error_response(
    provider: str,
    status: int,
    *,
    model: str = "",
    message: str | None = None,
    request_id: str = "",
    retry_after_ms: int | None = None,
) -> JSONResponse:
    """A provider-shaped error response; ``retry_after_ms`` adds the retry headers."""
    body = error_body(
        provider,
        status,
        model=model,
        message=message,
        request_id=request_id,
        retry_after_ms=retry_after_ms or 1000,
    )
    headers: dict[str, str] = {}
    if request_id:
        headers["request-id" if provider == "anthropic" else "x-request-id"] = request_id
    if retry_after_ms is not None:
        headers["retry-after"] = str(max(1, -(-retry_after_ms // 1000)))
        headers["retry-after-ms"] = str(retry_after_ms)
    return JSONResponse(body, status_code=status, headers=headers)


def injected_failure(
    request: Request,
    body_bytes: bytes,
    counter: AttemptCounter,
) -> tuple[int, int | None]:
    """(attempt, status to fail with or None) for this request's ``x-simulator-fail``."""
    spec = request.headers.get("x-simulator-fail")
    retry_count = request.headers.get("x-stainless-retry-count")
    if retry_count is not None and retry_count.isdigit():
        attempt = int(retry_count)
    elif spec:
        attempt = counter.next(request.url.path.encode(), spec.encode(), body_bytes)
    else:
        attempt = 0
    if not spec:
        return attempt, None
    try:
        items = parse_fail_spec(spec)
    except ValueError as exc:
        raise BadRequest(str(exc)) from exc
    return attempt, status_for_attempt(items, attempt)
