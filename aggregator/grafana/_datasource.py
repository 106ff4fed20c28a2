"""The ``grafana-clickhouse-datasource`` data source, as Grafana's HTTP API and its
provisioning files take it.

The plugin reads ``jsonData.host``, ``port``, ``protocol`` (``http`` for meterline's
:8123 endpoint or a server's HTTP port; ``native`` for a server's 9000), ``secure``
(TLS), ``username`` and ``defaultDatabase`` (not ``database``: that field is the old
plugin's), and the password from ``secureJsonData.password`` (Grafana stores it
encrypted and never returns it).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from meterline.aggregator.grafana._panels import PLUGIN

DEFAULT_UID = "meterline"
DEFAULT_NAME = "meterline"


def datasource_body(
    url: str,
    *,
    database: str,
    password: str | None,
    username: str = "meterline",
    uid: str = DEFAULT_UID,
    name: str = DEFAULT_NAME,
) -> dict[str, Any]:
    """The body of ``POST /api/datasources`` (and ``PUT /api/datasources/uid/{uid}``).

    Args:
        url: where *Grafana* reaches ClickHouse over HTTP: ``http://host:8123`` for
            ``meterline serve`` (from a container: ``http://host.docker.internal:8123``),
            ``https://…`` for TLS.

    Raises:
        ValueError: ``url`` is not ``http(s)://host[:port]``.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"datasource URL {url!r}: expected http(s)://host[:port]")
    secure = parts.scheme == "https"
    body: dict[str, Any] = {
        "name": name,
        "uid": uid,
        "type": PLUGIN,
        "access": "proxy",
        "isDefault": False,
        "jsonData": {
            "host": parts.hostname,
            "port": parts.port or (443 if secure else 8123),
            "protocol": "http",
            "secure": secure,
            "username": username,
            "defaultDatabase": database,
        },
    }
    if parts.path not in ("", "/"):
        body["jsonData"]["path"] = parts.path
    if password:
        body["secureJsonData"] = {"password": password}
    return body
