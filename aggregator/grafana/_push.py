"""Install the data source and the dashboards in a running Grafana through its HTTP API.

One run, in order, each step create-or-update so that running it again changes nothing
but the dashboards' version numbers:

1. the folder ``meterline`` (``GET``/``POST /api/folders``, title set again with
   ``PUT /api/folders/{uid}`` and ``overwrite`` if someone renamed it);
2. the data source: found by uid (``GET /api/datasources/uid/{uid}``), else by name
   (``GET /api/datasources/name/{name}``: that one is updated, and the dashboards use its
   uid), and updated with ``PUT /api/datasources/uid/{uid}``; else created with
   ``POST /api/datasources``;
3. each dashboard with ``POST /api/dashboards/db`` (``overwrite: true``, ``folderUid``,
   ``id: null``): the uid names it, so a re-run replaces it, and a dashboard someone
   edited in Grafana is replaced too (``overwrite`` is what skips the version check).

Authentication: ``Authorization: Bearer <token>`` (a service account token with the
Editor role on the folder, Admin for data sources). Only the standard library is used
(urllib): the CLI needs no extra dependency.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from meterline.errors import MeterlineError

logger = logging.getLogger(__name__)

FOLDER_UID = "meterline"
FOLDER_TITLE = "meterline"


class GrafanaError(MeterlineError):
    """Grafana refused a step (one line: the request, Grafana's status and message)."""


@dataclass
class PushResult:
    """What a push did."""

    folder: str = ""
    """``created``, ``updated`` or ``unchanged``."""
    datasource: str = ""
    """``created`` or ``updated``; with the uid the dashboards use."""
    datasource_uid: str = ""
    dashboards: list[dict[str, Any]] = field(default_factory=list)
    """Grafana's answer per dashboard (``uid``, ``url``, ``version``)."""


class _Client:
    def __init__(self, url: str, token: str, *, timeout: float) -> None:
        try:
            parts = urllib.parse.urlsplit(url)
            parts.port  # noqa: B018 -- raises ValueError when out of range
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise GrafanaError(
                f"Grafana URL {url!r}: expected http(s)://host[:port], e.g. http://localhost:3000"
            )
        self.base = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.token}")
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, _json(response.read())
        except urllib.error.HTTPError as exc:
            status, answer = exc.code, _json(exc.read())
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise GrafanaError(f"cannot reach Grafana at {self.base}: {reason}") from None
        if status == 401:
            raise GrafanaError(
                f"Grafana at {self.base} refused the token (401): set GRAFANA_TOKEN to a "
                "service account token (Editor on folders and dashboards, Admin for "
                "data sources)"
            )
        return status, answer

    def expect(self, method: str, path: str, body: Any = None) -> Any:
        status, answer = self.call(method, path, body)
        if status != 200:
            message = answer.get("message") if isinstance(answer, dict) else answer
            raise GrafanaError(f"Grafana answered {status} to {method} {path}: {message}")
        return answer


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return raw.decode("utf-8", "replace")[:200]


def _quoted(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def _folder(client: _Client) -> str:
    status, folder = client.call("GET", f"/api/folders/{FOLDER_UID}")
    if status == 404:
        client.expect("POST", "/api/folders", {"uid": FOLDER_UID, "title": FOLDER_TITLE})
        return "created"
    if status != 200:
        raise GrafanaError(f"Grafana answered {status} to GET /api/folders/{FOLDER_UID}")
    if folder.get("title") == FOLDER_TITLE:
        return "unchanged"
    client.expect("PUT", f"/api/folders/{FOLDER_UID}", {"title": FOLDER_TITLE, "overwrite": True})
    return "updated"


def _datasource(client: _Client, body: dict[str, Any]) -> tuple[str, str]:
    status, found = client.call("GET", f"/api/datasources/uid/{_quoted(body['uid'])}")
    if status == 404:
        status, found = client.call("GET", f"/api/datasources/name/{_quoted(body['name'])}")
    if status == 200:
        uid = found["uid"]
        client.expect("PUT", f"/api/datasources/uid/{_quoted(uid)}", {**body, "uid": uid})
        return "updated", uid
    if status != 404:
        raise GrafanaError(f"Grafana answered {status} looking up data source {body['uid']!r}")
    answer = client.expect("POST", "/api/datasources", body)
    return "created", answer["datasource"]["uid"]


def push(
    url: str,
    token: str,
    *,
    datasource: dict[str, Any],
    dashboards: list[dict[str, Any]],
    timeout: float = 30.0,
) -> PushResult:
    """Install ``datasource`` (:func:`datasource_body`) and ``dashboards`` in the Grafana
    at ``url``.

    Raises:
        GrafanaError: Grafana is unreachable, refused the token, or refused a step.
    """
    client = _Client(url, token, timeout=timeout)
    result = PushResult()
    result.folder = _folder(client)
    result.datasource, result.datasource_uid = _datasource(client, datasource)
    for doc in dashboards:
        doc = _with_datasource(doc, result.datasource_uid)
        answer = client.expect(
            "POST",
            "/api/dashboards/db",
            {
                "dashboard": {**doc, "id": None},
                "folderUid": FOLDER_UID,
                "overwrite": True,
                "message": "meterline grafana push",
            },
        )
        result.dashboards.append(answer)
        logger.info("dashboard %s: version %s", answer.get("uid"), answer.get("version"))
    return result


def _with_datasource(doc: dict[str, Any], uid: str) -> dict[str, Any]:
    """``doc`` with its datasource variable's default set to ``uid``."""
    variables = []
    for var in doc["templating"]["list"]:
        if var.get("type") == "datasource":
            var = {**var, "current": {"text": uid, "value": uid}}
        variables.append(var)
    return {**doc, "templating": {**doc["templating"], "list": variables}}
