"""``meterline keys create|list|revoke``: consumer-scoped API keys.

Through the API when ``METERLINE_API_URL`` is set (an admin key in
``METERLINE_API_KEY``), else on the store (``--data-dir`` / ``--clickhouse-url``), like
the other commands of :mod:`meterline.aggregator.cli`. The secret of a new key is
printed once and never again.
"""

from __future__ import annotations

import urllib.parse
from datetime import datetime
from typing import Annotated, Any

import typer

from meterline.aggregator.cli import (
    ClickhouseUrl,
    Config,
    Database,
    DataDir,
    _emit,
    _instant,
    _Local,
    _Remote,
    _run,
    table,
)

_COLUMNS = ("id", "consumer", "scopes", "name", "status", "created_at", "expires_at",
            "revoked_at")  # fmt: skip


def _row(key: dict[str, Any]) -> dict[str, Any]:
    return {c: ",".join(key[c]) if c == "scopes" else key.get(c) or "" for c in _COLUMNS}


def register(app: typer.Typer) -> None:
    """Add ``keys`` to the ``meterline`` CLI."""
    keys = typer.Typer(help="Consumer-scoped API keys: create, list, revoke.",
                       no_args_is_help=True)  # fmt: skip
    app.add_typer(keys, name="keys")

    @keys.command("create")
    def create(
        consumer: Annotated[str, typer.Option("--consumer", help="The consumer the key reads.")],
        scope: Annotated[
            list[str] | None,
            typer.Option("--scope", help="read or reserve; repeat for both (default: read)."),
        ] = None,
        name: Annotated[str, typer.Option("--name", help="A label for people.")] = "",
        expires_at: Annotated[
            datetime | None,
            typer.Option("--expires-at", parser=_instant, help="ISO 8601 (default: never)."),
        ] = None,
        fmt: Annotated[str, typer.Option("--format", help="table or json")] = "table",
        data_dir: DataDir = None,
        clickhouse_url: ClickhouseUrl = None,
        database: Database = None,
        config: Config = None,
    ) -> None:
        """Create a key for one consumer and print it (shown this once only)."""
        body = {"consumer": consumer, "scopes": scope or ["read"], "name": name,
                "expires_at": expires_at and expires_at.isoformat()}  # fmt: skip

        def remote(api: _Remote) -> dict[str, Any]:
            return api.call("POST", "/v1/keys", body=body)

        def local(b: _Local) -> dict[str, Any]:
            from meterline.aggregator.keys import create_key

            key, secret = create_key(b.store, consumer=consumer, scopes=body["scopes"],
                                     name=name, expires_at=expires_at)  # fmt: skip
            return {"id": key.id, "key": secret} | {
                k: v for k, v in key.to_dict().items() if k != "id"
            }

        # a key may be made before the first serve: a store named explicitly is created
        data = _run((data_dir, clickhouse_url, database, config), remote, local, creates=True)

        def render(d: dict[str, Any]) -> str:
            return (
                f"{d['key']}\n\nAPI key {d['id']} for consumer {d['consumer']!r}, scopes "
                f"{', '.join(d['scopes'])}, expires {d['expires_at'] or 'never'}.\n"
                "Store it now: only its hash is kept, it cannot be shown again."
            )

        _emit(data, fmt, render, lambda d: ([_row(d) | {"key": d["key"]}], ("key", *_COLUMNS)))

    @keys.command("list")
    def list_(
        consumer: Annotated[str | None, typer.Option("--consumer", help="One consumer's.")] = None,
        fmt: Annotated[str, typer.Option("--format", help="table, json or csv")] = "table",
        data_dir: DataDir = None,
        clickhouse_url: ClickhouseUrl = None,
        database: Database = None,
        config: Config = None,
    ) -> None:
        """List keys (never their secrets), revoked and expired ones included."""

        def local(b: _Local) -> dict[str, Any]:
            from meterline.aggregator.keys import list_keys

            return {"keys": [k.to_dict() for k in list_keys(b.store, consumer=consumer)]}

        def remote(api: _Remote) -> dict[str, Any]:
            return api.call("GET", "/v1/keys", {"consumer": consumer})

        data = _run((data_dir, clickhouse_url, database, config), remote, local)
        rows = [_row(k) for k in data["keys"]]
        _emit(data, fmt, lambda d: table(rows, _COLUMNS), lambda d: (rows, _COLUMNS))

    @keys.command("revoke")
    def revoke(
        key_id: Annotated[str, typer.Argument(help="The key's id (key_…), from 'keys list'.")],
        fmt: Annotated[str, typer.Option("--format", help="table or json")] = "table",
        data_dir: DataDir = None,
        clickhouse_url: ClickhouseUrl = None,
        database: Database = None,
        config: Config = None,
    ) -> None:
        """Revoke a key: refused from the next request on."""

        def local(b: _Local) -> dict[str, Any]:
            from meterline.aggregator.keys import revoke_key

            return revoke_key(b.store, key_id).to_dict()

        def remote(api: _Remote) -> dict[str, Any]:
            return api.call("DELETE", f"/v1/keys/{urllib.parse.quote(key_id, safe='')}")

        data = _run((data_dir, clickhouse_url, database, config), remote, local)
        render = f"API key {data['id']} of consumer {data['consumer']!r} revoked at " + str(
            data["revoked_at"]
        )
        _emit(data, fmt, lambda d: render, lambda d: ([_row(d)], _COLUMNS))
