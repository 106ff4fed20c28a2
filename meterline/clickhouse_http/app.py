"""A ClickHouse-compatible HTTP endpoint (ASGI) over the embedded store.

What a client sees is ClickHouse's HTTP interface, enough of it for clickhouse-connect
and for Grafana's ClickHouse plugin (clickhouse-go) in ``http`` mode:

- ``GET /ping``, ``GET /`` without a query, ``GET /replicas_status`` → ``Ok.``;
- the statement in ``?query=``, in the body, or both (the URL part, a newline, then
  the body — how an INSERT's data follows its statement); ``multipart/form-data``
  bodies with ``query`` and ``param_*`` fields (clickhouse-connect sends those when
  its parameters are long); chunked and gzip/deflate/zstd/lz4-encoded bodies;
- ``database``, ``default_format``, ``param_<name>`` for ``{name:Type}`` placeholders,
  ``query_id``, ``client_protocol_version`` (Native output re-framed, see ``_native``),
  ``enable_http_compression`` with ``Accept-Encoding``; every other URL parameter is
  a setting and goes to the engine, which rejects unknown ones (UNKNOWN_SETTING);
  transport-only parameters (``session_id``, ``wait_end_of_query``, ``buffer_size``,
  progress headers, ...) are accepted and ignored;
- the output format is the statement's ``FORMAT`` clause, else ``default_format``,
  else ``TabSeparated``; any format the engine writes is served;
- response headers ``X-ClickHouse-Query-Id``, ``X-ClickHouse-Format`` (statements with
  a result), ``X-ClickHouse-Timezone``, ``X-ClickHouse-Server-Display-Name``,
  ``X-ClickHouse-Summary``;
- errors as a server reports them: status from the code, ``X-ClickHouse-Exception-Code``
  and ``Code: N. DB::Exception: ... (NAME) (version V)``.

Authentication (when a password is configured): HTTP basic, ``X-ClickHouse-User`` /
``X-ClickHouse-Key``, or ``user`` / ``password`` URL parameters — one method per
request; wrong credentials → 516 AUTHENTICATION_FAILED (403), none → 194
REQUIRED_PASSWORD (401). With no password configured, requests are not authenticated.
``meterline serve`` makes every admin key a password of user ``meterline`` (or
``METERLINE_CLICKHOUSE_HTTP_PASSWORD``): this endpoint is the admin's, and a consumer key
(``/v1/keys``) never authenticates here. Without a password (no admin key, loopback), a
request whose ``Host`` is not the address served is refused (DNS rebinding).

Read-only by default, and the engine is the boundary: a read-only request runs in a
session with ``readonly = 1`` after meterline has set its limits (time, memory, result
size) and the request's allowed settings (``_settings``); the statement that runs is the
engine's own formatting of the text, checked on the engine's own parse tree (``_policy``)
for what ``readonly = 1`` lets through in chdb (``file()``, ``INTO OUTFILE``, table
functions under ``DESCRIBE``, ``KILL``, ``BACKUP``). Only SELECT / WITH / SHOW /
DESCRIBE / EXISTS statements run. ``writable=True`` (tests, migrations through
clickhouse-connect) allows every statement on POST; GET stays read-only, as on a
ClickHouse server.

Request bodies: at most ``max_bodies`` are read at once (others wait ``body_wait``
seconds, then get 202 TOO_MANY_SIMULTANEOUS_QUERIES, HTTP 503), each within
``body_timeout`` seconds (else 209 SOCKET_TIMEOUT, so a trickling client cannot keep
a slot); each is capped, decoded
or not (1 MiB of query text when read-only, :data:`MAX_WRITABLE_BODY` when writable),
and compressed ones are decoded with that budget (``_encoding``).

Known limits: no sessions (each request is its own session, so ``SET`` does not
persist), no external data tables, no ClickHouse block compression (``compress=1``),
results are buffered in memory. Under ``readonly = 1`` ``system.settings`` reports every
setting read-only, so clickhouse-connect sends none (a ``settings=`` argument raises
its ``ProgrammingError`` unless ``invalid_setting_action`` is ``send``); clients that
send settings anyway get the allowed ones. Only the embedded (chdb) store is served:
against a ClickHouse server, point clients at the server.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import email.parser
import email.policy
import hashlib
import hmac
import json
import logging
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from meterline.clickhouse_http._encoding import BodyDecoder, choose_response_encoding, compress
from meterline.clickhouse_http._engine import ChdbEngine, Execution, check_format_name
from meterline.clickhouse_http._errors import ClickHouseError
from meterline.clickhouse_http._native import reframe
from meterline.clickhouse_http._settings import Limits
from meterline.clickhouse_http._sql import parse
from meterline.hosts import host_allowed

if TYPE_CHECKING:
    from meterline.store import Store

logger = logging.getLogger(__name__)

MAX_READ_ONLY_BODY = 1 << 20
"""Largest (decoded) request body accepted by a read-only endpoint: query text only."""
MAX_WRITABLE_BODY = 1 << 30
"""Largest (decoded) request body accepted by a writable endpoint (inserts are buffered)."""

# URL parameters the HTTP layer consumes (or ignores) instead of passing them as settings.
_TRANSPORT_PARAMS = frozenset(
    {
        "query",
        "database",
        "default_format",
        "user",
        "password",
        "quota_key",
        "query_id",
        "session_id",
        "session_timeout",
        "session_check",
        "close_session",
        "buffer_size",
        "wait_end_of_query",
        "client_protocol_version",
        "role",
        "stacktrace",
        "compress",
        "decompress",
        "enable_http_compression",
        "http_zlib_compression_level",
        "http_native_compression_disable_checksumming_on_decompress",
        "send_progress_in_http_headers",
        "http_headers_progress_interval_ms",
        "cancel_http_readonly_queries_on_client_close",
        "add_http_cors_header",
        "http_response_buffer_size",
        "http_wait_end_of_query",
    }
)

_CONTENT_TYPES = {
    "tabseparated": "text/tab-separated-values; charset=UTF-8",
    "tsv": "text/tab-separated-values; charset=UTF-8",
    "csv": "text/csv; charset=UTF-8; header=absent",
    "csvwithnames": "text/csv; charset=UTF-8; header=present",
    "csvwithnamesandtypes": "text/csv; charset=UTF-8; header=present",
    "json": "application/json; charset=UTF-8",
    "jsoncompact": "application/json; charset=UTF-8",
    "jsoneachrow": "application/x-ndjson; charset=UTF-8",
    "native": "application/octet-stream",
    "rowbinary": "application/octet-stream",
    "rowbinarywithnames": "application/octet-stream",
    "rowbinarywithnamesandtypes": "application/octet-stream",
    "parquet": "application/octet-stream",
    "arrow": "application/octet-stream",
    "arrowstream": "application/octet-stream",
}


@dataclass(frozen=True)
class _Config:
    engine: ChdbEngine
    database: str
    passwords: tuple[str, ...] | None
    user: str
    writable: bool
    version: str
    timezone: str
    display_name: str
    limiter: anyio.CapacityLimiter
    bodies: anyio.Semaphore
    body_wait: float
    body_timeout: float
    address: tuple[str, int] | None


def create_app(
    store: Store,
    *,
    password: str | Sequence[str] | None,
    writable: bool = False,
    user: str = "meterline",
    workers: int = 4,
    limits: Limits | None = None,
    max_bodies: int = 16,
    body_wait: float = 10.0,
    body_timeout: float = 60.0,
    address: tuple[str, int] | None = None,
) -> Starlette:
    """Build the ClickHouse-compatible HTTP app over ``store`` (an embedded chdb store).

    Args:
        store: the open store; its ``database`` is the default database.
        password: the password of ``user``, or several (any is accepted: the admin keys
            while one is rotated); ``None`` disables authentication.
        writable: allow every statement on POST (never the default: tests only).
        user: the one user name accepted.
        workers: engine calls running at once (each in a worker thread).
        limits: time, memory and result bounds of each read-only query.
        max_bodies: request bodies read (and held) at once.
        body_wait: seconds a request waits for a body slot before it is refused.
        body_timeout: seconds a request's body may take to arrive.
        address: the (host, port) served; without a password, a request whose ``Host``
            names another address is refused (DNS rebinding: :mod:`meterline.hosts`).

    Raises:
        ValueError: ``store`` is not an embedded store.
    """
    if store.kind != "chdb" or not store.data_dir:
        raise ValueError(
            f"the ClickHouse-HTTP endpoint serves the embedded store only, not {store!r}; "
            "point clients at the ClickHouse server instead"
        )
    engine = ChdbEngine(store.data_dir, limits=limits)
    version, timezone, display_name = engine.server_info()
    try:
        engine.load_policy()
    except ClickHouseError:
        logger.warning("could not read the engine's function catalogue; refusing the built-in list")
    config = _Config(
        engine=engine,
        database=store.database,
        passwords=None
        if password is None
        else ((password,) if isinstance(password, str) else tuple(password)),
        user=user,
        writable=writable,
        version=version,
        timezone=timezone,
        display_name=display_name,
        limiter=anyio.CapacityLimiter(workers),
        bodies=anyio.Semaphore(max_bodies),
        body_wait=body_wait,
        body_timeout=body_timeout,
        address=address,
    )

    async def ping(request: Request) -> Response:
        return PlainTextResponse("Ok.\n")

    async def query(request: Request) -> Response:
        query_id = request.query_params.get("query_id") or str(uuid.uuid4())
        try:
            return await _handle(request, config, query_id)
        except ClickHouseError as error:
            return _error_response(error, config, query_id)
        except Exception:
            logger.exception("ClickHouse-HTTP request failed")
            error = ClickHouseError("UNKNOWN_EXCEPTION", "meterline: internal error")
            return _error_response(error, config, query_id)

    async def not_found(request: Request) -> Response:
        return PlainTextResponse(
            f"There is no handle {request.url.path}\n\nUse / or /ping for health checks.\n"
            "Send queries with POST / or GET /?query=...\n",
            status_code=404,
        )

    routes = [
        Route("/ping", ping, methods=["GET", "HEAD"]),
        Route("/replicas_status", ping, methods=["GET", "HEAD"]),
        Route("/", query, methods=["GET", "HEAD", "POST"]),
        Route("/{path:path}", not_found, methods=["GET", "HEAD", "POST", "PUT", "DELETE"]),
    ]
    app = Starlette(routes=routes)
    app.state.clickhouse_http = config
    logger.debug(
        "ClickHouse-HTTP app over %r (%s, auth %s)",
        store,
        "writable" if writable else "read-only",
        "on" if config.passwords is not None else "off",
    )
    return app


def _headers(config: _Config, query_id: str) -> dict[str, str]:
    return {
        "X-ClickHouse-Query-Id": query_id,
        "X-ClickHouse-Timezone": config.timezone,
        "X-ClickHouse-Server-Display-Name": config.display_name,
    }


def _error_response(error: ClickHouseError, config: _Config, query_id: str) -> Response:
    headers = _headers(config, query_id)
    headers["X-ClickHouse-Exception-Code"] = str(error.code)
    if error.code == 194:
        headers["WWW-Authenticate"] = 'Basic realm="ClickHouse"'
    logger.debug("ClickHouse-HTTP error %d: %s", error.code, error.message)
    return PlainTextResponse(error.body(config.version), status_code=error.status, headers=headers)


def _authenticate(request: Request, config: _Config) -> None:
    params = request.query_params
    given: list[tuple[str, str]] = []
    authorization = request.headers.get("authorization", "")
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "basic":
            raise ClickHouseError(
                "AUTHENTICATION_FAILED",
                f"meterline: Authentication failed: unsupported authorization scheme {scheme!r}",
            )
        try:
            user, _, password = base64.b64decode(value.strip()).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise ClickHouseError(
                "AUTHENTICATION_FAILED",
                "meterline: Authentication failed: malformed basic credentials",
            ) from exc
        given.append((user, password))
    headers = request.headers
    if "x-clickhouse-user" in headers or "x-clickhouse-key" in headers:
        given.append(
            (headers.get("x-clickhouse-user", "default"), headers.get("x-clickhouse-key", ""))
        )
    if "user" in params or "password" in params:
        given.append((params.get("user", "default"), params.get("password", "")))
    if len(given) > 1:
        raise ClickHouseError(
            "AUTHENTICATION_FAILED",
            "meterline: Authentication failed: use one authentication method at a time "
            "(basic authorization, X-ClickHouse-User/Key headers or user/password parameters)",
        )
    if config.passwords is None:
        if config.address is not None and not host_allowed(
            request.headers.get("host"), config.address
        ):
            raise ClickHouseError(
                "AUTHENTICATION_FAILED",
                "meterline: refused: the Host header does not name this server's address "
                "(without a password it answers only requests addressed to it)",
            )
        return
    if not given:
        raise ClickHouseError(
            "REQUIRED_PASSWORD",
            f"meterline: Authentication required: user {config.user!r} needs a password",
        )
    user, password = given[0]
    user_ok = hmac.compare_digest(user.encode(), config.user.encode())
    given_digest = hashlib.sha256(password.encode()).digest()
    password_ok = False
    for expected in config.passwords:  # every one, whatever matched
        password_ok |= hmac.compare_digest(given_digest, hashlib.sha256(expected.encode()).digest())
    if not (user_ok and password_ok):
        raise ClickHouseError(
            "AUTHENTICATION_FAILED",
            f"{user}: Authentication failed: password is incorrect, "
            "or there is no user with such name",
        )


async def _read_body(request: Request, limit: int) -> bytes:
    encoding = request.headers.get("content-encoding", "")
    declared = request.headers.get("content-length", "")
    if not encoding and declared.isdigit() and int(declared) > limit:
        raise ClickHouseError(
            "QUERY_IS_TOO_LARGE",
            f"meterline: request body larger than {limit} bytes is not accepted here",
        )
    decoder = BodyDecoder(encoding, limit)
    body = bytearray()
    async for chunk in request.stream():
        body += decoder.feed(chunk)
    decoder.finish()
    return bytes(body)


@contextlib.asynccontextmanager
async def _body_slot(config: _Config) -> AsyncIterator[None]:
    """Hold one of the ``max_bodies`` slots while a body is read and handled."""
    acquired = False
    with anyio.move_on_after(config.body_wait):
        await config.bodies.acquire()
        acquired = True
    if not acquired:
        raise ClickHouseError(
            "TOO_MANY_SIMULTANEOUS_QUERIES",
            "meterline: too many request bodies are being read at once; waited "
            f"{config.body_wait:g} s for a slot, retry later",
        )
    try:
        yield
    finally:
        config.bodies.release()


def _form_fields(content_type: str, body: bytes) -> dict[str, str]:
    """Plain fields of a ``multipart/form-data`` body; files (external data) are refused."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    fields: dict[str, str] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if part.get_filename() is not None or not isinstance(name, str):
            raise ClickHouseError(
                "NOT_IMPLEMENTED", "meterline: external data (file parts) is not supported"
            )
        payload = part.get_payload(decode=True)
        fields[name] = payload.decode() if isinstance(payload, bytes) else str(payload)
    return fields


async def _handle(request: Request, config: _Config, query_id: str) -> Response:
    _authenticate(request, config)
    if request.method != "POST":
        return await _respond(request, config, query_id, b"")
    async with _body_slot(config):
        read_only = not config.writable
        limit = MAX_READ_ONLY_BODY if read_only else MAX_WRITABLE_BODY
        body = b""
        with anyio.move_on_after(config.body_timeout) as reading:
            body = await _read_body(request, limit)
        if reading.cancelled_caught:
            raise ClickHouseError(
                "SOCKET_TIMEOUT",
                f"meterline: the request body did not arrive within {config.body_timeout:g} s",
            )
        return await _respond(request, config, query_id, body)


async def _respond(request: Request, config: _Config, query_id: str, body: bytes) -> Response:
    params: Mapping[str, str] = request.query_params
    for flag in ("compress", "decompress"):
        if params.get(flag, "0") not in ("", "0", "false"):
            raise ClickHouseError(
                "NOT_IMPLEMENTED",
                f"meterline: ClickHouse block compression ({flag}=1) is not supported; "
                "use HTTP compression (Content-Encoding / Accept-Encoding)",
            )
    read_only = not config.writable or request.method != "POST"
    url_query = params.get("query", "")
    content_type = request.headers.get("content-type", "")
    form: dict[str, str] = {}
    if content_type.lower().startswith("multipart/form-data"):
        form = _form_fields(content_type, body)
        body = b""
        if "query" in form:
            url_query = form["query"]
    if not url_query and not body:
        if request.method == "POST":
            raise ClickHouseError("SYNTAX_ERROR", "Syntax error: Empty query")
        return PlainTextResponse("Ok.\n", headers=_headers(config, query_id))
    text = url_query.encode() + (b"\n" if url_query and body else b"") + body
    all_params = {**params, **{k: v for k, v in form.items() if k != "query"}}
    settings = {
        k: v
        for k, v in all_params.items()
        if k not in _TRANSPORT_PARAMS and not k.startswith("param_")
    }
    bind = {k[len("param_") :]: v for k, v in all_params.items() if k.startswith("param_")}
    default_format = check_format_name(params.get("default_format") or "TabSeparated")
    try:
        revision = int(params.get("client_protocol_version", "0") or 0)
        level = int(params.get("http_zlib_compression_level", "3") or 3)
    except ValueError as exc:
        raise ClickHouseError(
            "BAD_ARGUMENTS",
            "meterline: client_protocol_version and http_zlib_compression_level must be integers",
        ) from exc
    execution = Execution(
        text="",
        database=params.get("database") or config.database,
        default_format=default_format,
        read_only=read_only,
        settings=settings,
        params=bind,
    )
    if read_only:
        execution.text = _utf8(text)
        run = config.engine.run_read_only
    else:
        statement = parse(text.decode("latin-1"))
        execution.statement = statement
        if statement.insert is not None:
            execution.insert_data = text[statement.insert.data_offset :]
        else:
            execution.text = _utf8(statement.text.encode("latin-1"))
        run = config.engine.run_writable
    outcome = await anyio.to_thread.run_sync(run, execution, limiter=config.limiter)
    body_out = outcome.body
    headers = _headers(config, query_id)
    headers["X-ClickHouse-Summary"] = json.dumps(outcome.summary, separators=(",", ":"))
    media_type = "text/plain; charset=UTF-8"
    if outcome.produces_result:
        output_format = outcome.output_format
        headers["X-ClickHouse-Format"] = output_format
        media_type = _CONTENT_TYPES.get(output_format.lower(), media_type)
        if output_format.lower() == "native":
            body_out = reframe(body_out, revision)
    if params.get("enable_http_compression", "0") not in ("", "0", "false") and body_out:
        encoding = choose_response_encoding(request.headers.get("accept-encoding", ""))
        if encoding is not None:
            body_out = compress(body_out, encoding, level=max(1, min(level, 9)))
            headers["Content-Encoding"] = encoding
    if request.method == "HEAD":
        body_out = b""
    return Response(body_out, headers=headers, media_type=media_type)


def _utf8(text: bytes) -> str:
    try:
        return text.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ClickHouseError("SYNTAX_ERROR", "Syntax error: the query is not valid UTF-8") from exc
