"""The simulator's ASGI app: routes, authentication, failure injection, the ledger API.

Routes (all JSON):

* OpenAI: ``POST /v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``,
  ``/v1/responses``; ``GET /v1/models``. Azure OpenAI deployment paths
  ``POST /openai/deployments/{deployment}/chat/completions`` (and ``completions``,
  ``embeddings``) answer the same way, recorded as provider ``azure.ai.openai``.
* Anthropic: ``POST /v1/messages``, ``/v1/messages/count_tokens``.
* Gemini: ``POST /v1beta/models/{model}:generateContent`` / ``:streamGenerateContent``.
* Simulator: ``GET /_simulator/ledger`` (``?provider=&tag=&since=``) returns
  ``{"entries": [...], "totals": {...}}``; ``DELETE /_simulator/ledger`` empties it;
  ``POST /_simulator/reset`` empties the ledger and the prompt cache;
  ``GET /_simulator/health``.

Every request to an API route (except ``count_tokens``) gets one ledger entry, failed
attempts included. Request headers understood everywhere: ``x-simulator-fail``,
``x-simulator-retry-after-ms``, ``x-simulator-output-tokens``,
``x-simulator-reasoning-tokens``, ``x-simulator-chunk-delay-ms``,
``x-simulator-cut-after``, ``x-simulator-tag`` (see the package docstring).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from meterline.simulator import anthropic_api, gemini_api, openai_api
from meterline.simulator._http import (
    BadRequest,
    Call,
    error_response,
    injected_failure,
    random_id,
)
from meterline.simulator._state import Simulator, SimulatorConfig
from meterline.simulator.ledger import LedgerEntry, totals

logger = logging.getLogger(__name__)

Handler = Callable[[Simulator, Call], Awaitable[Response]]

_HEX = "0123456789abcdef"


def _request_id(provider: str) -> str:
    if provider == "anthropic":
        return random_id("req_011C", 20)
    return "req_" + random_id("", 32, _HEX)


def _authorized(request: Request, key: str | None) -> bool:
    if key is None:
        return True
    headers = request.headers
    offered = {
        headers.get("authorization", "").removeprefix("Bearer ").strip(),
        headers.get("x-api-key", ""),
        headers.get("api-key", ""),
        headers.get("x-goog-api-key", ""),
        request.query_params.get("key", ""),
    }
    return key in offered


async def _handle(
    request: Request,
    *,
    provider: str,
    api: str,
    operation: str,
    handler: Handler,
    record: bool = True,
    default_model: str = "",
) -> Response:
    sim: Simulator = request.app.state.simulator
    request_id = _request_id(provider)
    kind = "anthropic" if provider == "anthropic" else provider
    if not _authorized(request, sim.config.api_key):
        return error_response(kind, 401, request_id=request_id)
    raw = await request.body()
    model = default_model
    try:
        try:
            body = json.loads(raw or b"{}")
        except ValueError as exc:
            raise BadRequest(f"We could not parse the JSON body of your request: {exc}") from exc
        if not isinstance(body, dict):
            raise BadRequest("The request body must be a JSON object.")
        if default_model and "model" not in body:
            body["model"] = default_model
        model = str(body.get("model") or default_model)
        attempt, fail = injected_failure(request, raw, sim.attempts)
        call = Call(request, body, kind, sim.ledger, attempt, request_id)
        if fail is None:
            return await handler(sim, call)
        retry_ms = call.header_int("x-simulator-retry-after-ms")
        if retry_ms is None and fail == 429:
            retry_ms = sim.config.retry_after_ms
        status, message = fail, None
    except BadRequest as exc:
        attempt, retry_ms, status, message = 0, None, 400, str(exc)
        call = Call(request, {}, kind, sim.ledger, attempt, request_id)
    if record:
        sim.ledger.record(
            call.entry(
                id=request_id,
                provider=provider,
                api=api,
                operation=operation,
                request_model=model,
                response_model=model,
                status=status,
                error_type=str(status),
                completed=True,
            )
        )
    logger.debug("simulator: %s %s -> %s", provider, api, status)
    return error_response(
        kind,
        status,
        model=model,
        message=message,
        request_id=request_id,
        retry_after_ms=retry_ms,
    )


def _route(path: str, provider: str, api: str, operation: str, handler: Handler) -> Route:
    async def endpoint(request: Request) -> Response:
        return await _handle(
            request, provider=provider, api=api, operation=operation, handler=handler
        )

    return Route(path, endpoint, methods=["POST"])


def _azure_route(suffix: str, api: str, operation: str, handler: Any) -> Route:
    async def endpoint(request: Request) -> Response:
        async def azure(sim: Simulator, call: Call) -> Response:
            return await handler(sim, call, provider="azure.ai.openai")

        return await _handle(
            request,
            provider="azure.ai.openai",
            api=api,
            operation=operation,
            handler=azure,
            default_model=request.path_params["deployment"],
        )

    return Route(f"/openai/deployments/{{deployment}}/{suffix}", endpoint, methods=["POST"])


async def _gemini(request: Request) -> Response:
    target = request.path_params["target"]
    model, _, method = target.partition(":")
    if method not in ("generateContent", "streamGenerateContent"):
        return JSONResponse(
            {
                "error": {
                    "code": 404,
                    "message": f"unknown method {method!r}",
                    "status": "NOT_FOUND",
                }
            },
            status_code=404,
        )

    async def handler(sim: Simulator, call: Call) -> Response:
        return await gemini_api.generate_content(
            sim, call, model, stream=method == "streamGenerateContent"
        )

    return await _handle(
        request,
        provider="gcp.gemini",
        api="generate_content",
        operation="generate_content",
        handler=handler,
        default_model=model,
    )


async def _count_tokens(request: Request) -> Response:
    return await _handle(
        request,
        provider="anthropic",
        api="count_tokens",
        operation="count_tokens",
        handler=anthropic_api.count_tokens_endpoint,
        record=False,
    )


async def _models(request: Request) -> Response:
    return JSONResponse(openai_api.models_list())


def _ledger_filters(request: Request) -> dict[str, Any]:
    params = request.query_params
    unknown = set(params) - {"provider", "tag", "since"}
    if unknown:
        raise BadRequest(f"unknown parameters {sorted(unknown)!r}")
    since = params.get("since", "0")
    if not since.isdigit():
        raise BadRequest(f"since must be a whole number, got {since!r}")
    return {"provider": params.get("provider"), "tag": params.get("tag"), "since": int(since)}


async def _ledger(request: Request) -> Response:
    sim: Simulator = request.app.state.simulator
    if request.method == "DELETE":
        sim.ledger.clear()
        return JSONResponse({"cleared": True})
    try:
        filters = _ledger_filters(request)
    except BadRequest as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
    entries: list[LedgerEntry] = sim.ledger.entries(**filters)
    return JSONResponse({"entries": [e.to_dict() for e in entries], "totals": totals(entries)})


async def _reset(request: Request) -> Response:
    sim: Simulator = request.app.state.simulator
    sim.ledger.clear()
    sim.cache.clear()
    return JSONResponse({"reset": True})


async def _health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def create_app(config: SimulatorConfig | None = None) -> Starlette:
    """Build the simulator's ASGI app.

    Args:
        config: settings; the defaults suit tests.

    Returns:
        A Starlette app; ``app.state.simulator`` holds its ledger
        (``app.state.simulator.ledger``), prompt cache and configuration.
    """
    routes = [
        _route("/v1/chat/completions", "openai", "chat.completions", "chat",
               openai_api.chat_completions),
        _route("/v1/completions", "openai", "completions", "text_completion",
               openai_api.completions),
        _route("/v1/embeddings", "openai", "embeddings", "embeddings", openai_api.embeddings),
        _route("/v1/responses", "openai", "responses", "chat", openai_api.responses),
        Route("/v1/models", _models, methods=["GET"]),
        _azure_route("chat/completions", "chat.completions", "chat", openai_api.chat_completions),
        _azure_route("completions", "completions", "text_completion", openai_api.completions),
        _azure_route("embeddings", "embeddings", "embeddings", openai_api.embeddings),
        Route("/v1/messages/count_tokens", _count_tokens, methods=["POST"]),
        _route("/v1/messages", "anthropic", "messages", "chat", anthropic_api.messages),
        Route("/v1beta/models/{target:path}", _gemini, methods=["POST"]),
        Route("/v1/models/{target:path}", _gemini, methods=["POST"]),
        Route("/_simulator/ledger", _ledger, methods=["GET", "DELETE"]),
        Route("/_simulator/reset", _reset, methods=["POST"]),
        Route("/_simulator/health", _health, methods=["GET"]),
    ]  # fmt: skip
    app = Starlette(routes=routes)
    app.state.simulator = Simulator(config or SimulatorConfig())
    return app
