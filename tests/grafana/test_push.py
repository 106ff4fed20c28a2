"""``meterline grafana push`` against the Grafana stand-in (meterline.grafana_standin), and
the stand-in's own checks — the ones Grafana makes of these requests."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from typer.testing import CliRunner

from meterline.aggregator.grafana import (
    DASHBOARD_UIDS,
    FOLDER_UID,
    PLUGIN,
    GrafanaError,
    build_dashboards,
    datasource_body,
    push,
)
from meterline.cli import app
from meterline.grafana_standin import GrafanaStandin, serve_in_thread

TOKEN = "glsa_test"


@pytest.fixture
def grafana() -> Iterator[tuple[GrafanaStandin, str]]:
    state = GrafanaStandin(tokens=frozenset({TOKEN}))
    with serve_in_thread(state) as url:
        yield state, url


def call(url: str, method: str, path: str, body: Any = None, token: str | None = TOKEN
         ) -> tuple[int, Any]:  # fmt: skip
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _body(**kwargs: Any) -> dict[str, Any]:
    return datasource_body("http://127.0.0.1:8123", **{"database": "meterline",
                                                       "password": "pw", **kwargs})  # fmt: skip


# --- the stand-in answers as Grafana does --------------------------------------------


def test_standin_refuses_what_grafana_refuses(grafana: tuple[GrafanaStandin, str]) -> None:
    _, url = grafana
    dash = {"dashboard": {"uid": "x", "title": "X"}, "overwrite": False}
    assert call(url, "POST", "/api/dashboards/db", dash, token=None)[0] == 401
    assert call(url, "POST", "/api/dashboards/db", dash, token="wrong")[0] == 401
    status, answer = call(url, "POST", "/api/dashboards/db", {**dash, "folderUid": "nope"})
    assert (status, answer["message"]) == (404, "Folder not found")
    status, answer = call(url, "POST", "/api/dashboards/db", {"dashboard": {"uid": "x"}})
    assert (status, answer["status"]) == (400, "empty-name")
    assert call(url, "POST", "/api/dashboards/db", {"dashboard": {"uid": "a b", "title": "T"}}
                )[0] == 400  # fmt: skip
    assert call(url, "POST", "/api/dashboards/db", {"dashboard": {"uid": "u" * 41, "title": "T"}}
                )[0] == 400  # fmt: skip
    assert call(url, "POST", "/api/dashboards/db", {"nodashboard": 1})[0] == 400
    assert call(url, "POST", "/api/dashboards/db", dash)[1]["version"] == 1
    # the stored version moved on: a save of version 0 without overwrite is refused
    status, answer = call(url, "POST", "/api/dashboards/db", dash)
    assert (status, answer["status"]) == (412, "version-mismatch")
    saved = call(url, "POST", "/api/dashboards/db", {**dash, "overwrite": True})[1]
    assert saved["version"] == 2
    other = {"dashboard": {"uid": "y", "title": "X"}}
    status, answer = call(url, "POST", "/api/dashboards/db", other)
    assert (status, answer["status"]) == (412, "name-exists")
    assert call(url, "POST", "/api/dashboards/db", {"dashboard": {"id": 999, "title": "Z"}}
                )[0] == 404  # fmt: skip


def test_standin_datasources_and_folders(grafana: tuple[GrafanaStandin, str]) -> None:
    _, url = grafana
    assert call(url, "POST", "/api/datasources", {"name": "a"})[0] == 400
    assert call(url, "POST", "/api/datasources", {"name": "a", "type": PLUGIN})[0] == 400
    status, answer = call(url, "POST", "/api/datasources", _body())
    assert status == 200 and answer["message"] == "Datasource added"
    assert "secureJsonData" not in answer["datasource"]
    assert answer["datasource"]["secureJsonFields"] == {"password": True}
    assert call(url, "POST", "/api/datasources", _body())[0] == 409  # same name
    assert call(url, "POST", "/api/datasources", _body(name="other"))[0] == 409  # same uid
    assert call(url, "PUT", "/api/datasources/uid/nope", _body())[0] == 404
    assert call(url, "PUT", "/api/datasources/uid/meterline", {**_body(), "version": 0}
                )[0] == 200  # fmt: skip
    stale = call(url, "PUT", "/api/datasources/uid/meterline", {**_body(), "version": 1})
    assert stale[0] == 409
    assert call(url, "GET", "/api/folders/meterline")[0] == 404
    assert call(url, "POST", "/api/folders", {"uid": "meterline"})[0] == 400
    assert call(url, "POST", "/api/folders", {"uid": "meterline", "title": "m"})[0] == 200
    assert call(url, "POST", "/api/folders", {"uid": "meterline", "title": "n"})[0] == 409
    assert call(url, "PUT", "/api/folders/meterline", {"title": "z", "version": 7})[0] == 412


# --- push ---------------------------------------------------------------------------


def test_push_installs_the_datasource_and_dashboards_in_a_folder_of_their_own(
    grafana: tuple[GrafanaStandin, str],
) -> None:
    state, url = grafana
    docs = build_dashboards(database="meterline_prod", currency="EUR")
    result = push(url, TOKEN, datasource=_body(database="meterline_prod"), dashboards=docs)
    assert (result.folder, result.datasource, result.datasource_uid) == (
        "created", "created", "meterline")  # fmt: skip
    assert set(state.folders) == {FOLDER_UID}
    [ds] = state.datasources.values()
    assert ds["type"] == PLUGIN and ds["access"] == "proxy"
    assert ds["jsonData"] == {"host": "127.0.0.1", "port": 8123, "protocol": "http",
                              "secure": False, "username": "meterline",
                              "defaultDatabase": "meterline_prod"}  # fmt: skip
    assert ds["secureJsonData"] == {"password": "pw"}
    assert sorted(state.dashboards) == sorted(DASHBOARD_UIDS)
    for stored in state.dashboards.values():
        assert stored["folderUid"] == FOLDER_UID and stored["version"] == 1
        variables = {v["name"]: v for v in stored["dashboard"]["templating"]["list"]}
        assert variables["datasource"]["current"]["value"] == "meterline"
        assert variables["database"]["query"] == "meterline_prod"

    # again: the same objects, updated in place
    again = push(url, TOKEN, datasource=_body(database="meterline_prod"), dashboards=docs)
    assert (again.folder, again.datasource) == ("unchanged", "updated")
    assert sorted(state.dashboards) == sorted(DASHBOARD_UIDS)
    assert len(state.datasources) == 1 and len(state.folders) == 1
    assert {d["version"] for d in state.dashboards.values()} == {2}


def test_push_replaces_a_dashboard_edited_in_grafana(grafana: tuple[GrafanaStandin, str]) -> None:
    state, url = grafana
    docs = build_dashboards()
    push(url, TOKEN, datasource=_body(), dashboards=docs)
    edited = state.dashboards["meterline-overview"]["dashboard"]
    call(url, "POST", "/api/dashboards/db",
         {"dashboard": {**edited, "title": "edited"}, "folderUid": FOLDER_UID})  # fmt: skip
    assert state.dashboards["meterline-overview"]["dashboard"]["title"] == "edited"
    push(url, TOKEN, datasource=_body(), dashboards=docs)
    assert state.dashboards["meterline-overview"]["dashboard"]["title"] == docs[0]["title"]


def test_push_updates_a_datasource_of_the_same_name_and_uses_its_uid(
    grafana: tuple[GrafanaStandin, str],
) -> None:
    state, url = grafana
    assert call(url, "POST", "/api/datasources", _body(uid="abc123"))[0] == 200
    result = push(url, TOKEN, datasource=_body(), dashboards=build_dashboards())
    assert (result.datasource, result.datasource_uid) == ("updated", "abc123")
    assert list(state.datasources) == ["abc123"]
    for stored in state.dashboards.values():
        [var] = [v for v in stored["dashboard"]["templating"]["list"] if v["name"] == "datasource"]
        assert var["current"]["value"] == "abc123"


def test_push_says_when_the_token_is_refused(grafana: tuple[GrafanaStandin, str]) -> None:
    state, url = grafana
    with pytest.raises(GrafanaError, match=r"refused the token \(401\): set GRAFANA_TOKEN"):
        push(url, "wrong", datasource=_body(), dashboards=build_dashboards())
    assert not state.dashboards and not state.requests


def test_push_cli(grafana: tuple[GrafanaStandin, str], monkeypatch: pytest.MonkeyPatch) -> None:
    state, url = grafana
    monkeypatch.delenv("METERLINE_API_URL", raising=False)
    monkeypatch.setenv("METERLINE_CLICKHOUSE_HTTP_PASSWORD", "s3cret")
    monkeypatch.setenv("METERLINE_DATABASE", "meter_db")
    runner = CliRunner()
    monkeypatch.delenv("GRAFANA_TOKEN", raising=False)
    missing = runner.invoke(app, ["grafana", "push", "--url", url])
    assert missing.exit_code == 1 and "GRAFANA_TOKEN" in missing.output
    monkeypatch.setenv("GRAFANA_TOKEN", TOKEN)
    for _ in range(2):
        result = runner.invoke(app, ["grafana", "push", "--url", url,
                                     "--datasource-url", "http://host.docker.internal:8123"])  # fmt: skip
        assert result.exit_code == 0, result.output
    assert "dashboard meterline-overview: version 2" in result.output
    [ds] = state.datasources.values()
    assert ds["jsonData"]["host"] == "host.docker.internal"
    assert ds["jsonData"]["defaultDatabase"] == "meter_db"
    assert ds["secureJsonData"] == {"password": "s3cret"}
    monkeypatch.setenv("GRAFANA_TOKEN", "wrong")
    refused = runner.invoke(app, ["grafana", "push", "--url", url])
    assert refused.exit_code == 1 and "401" in refused.output
    assert "Traceback" not in refused.output


def test_push_cli_takes_the_dashboards_from_a_running_server(
    grafana: tuple[GrafanaStandin, str], store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from meterline.aggregator.app import create_app
    from meterline.settings import ServerSettings
    from tests.clickhouse_http.conftest import _serve

    state, url = grafana
    for host, port in _serve(create_app(ServerSettings(admin_key="adm"), store)):
        monkeypatch.setenv("METERLINE_API_URL", f"http://{host}:{port}")
        monkeypatch.setenv("METERLINE_API_KEY", "adm")
        monkeypatch.setenv("GRAFANA_TOKEN", TOKEN)
        result = CliRunner().invoke(app, ["grafana", "push", "--url", url])
        assert result.exit_code == 0, result.output
    assert sorted(state.dashboards) == sorted(DASHBOARD_UIDS)
    for stored in state.dashboards.values():
        [db] = [v for v in stored["dashboard"]["templating"]["list"] if v["name"] == "database"]
        assert db["query"] == store.database  # the server's database, not the default
    [ds] = state.datasources.values()
    assert ds["jsonData"]["defaultDatabase"] == store.database


@pytest.mark.parametrize(
    "url",
    ["notaurl", "http://", "ftp://grafana", "file:///etc/passwd", "http://[::1",
     "http://127.0.0.1:99999", "http://127.0.0.1:1", "http://no-such-host.invalid:3000"],
)  # fmt: skip
def test_push_cli_with_a_bad_url_is_one_line_and_exit_1(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("METERLINE_API_URL", raising=False)
    monkeypatch.setenv("GRAFANA_TOKEN", TOKEN)
    result = CliRunner().invoke(app, ["grafana", "push", "--url", url])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output and TOKEN not in result.output
    reachable_form = (url.startswith("http://127") and "99999" not in url) or "invalid" in url
    expected = "cannot reach Grafana" if reachable_form else "expected http(s)://host[:port]"
    assert expected in lines[0], lines[0]  # no ftp:// or file:// request is ever made


def test_push_cli_to_something_that_is_not_grafana_is_one_line(
    grafana: tuple[GrafanaStandin, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    state, url = grafana
    monkeypatch.delenv("METERLINE_API_URL", raising=False)
    monkeypatch.setenv("GRAFANA_TOKEN", TOKEN)
    runner = CliRunner()
    for args in (["--url", url + "/not-grafana"], ["--url", url, "--datasource-url", "x"]):
        result = runner.invoke(app, ["grafana", "push", *args])
        assert result.exit_code == 1, result.output
        assert len(result.output.strip().splitlines()) == 1, result.output
    assert not state.dashboards


@pytest.mark.parametrize(
    "host,expected",
    [("0.0.0.0", "127.0.0.1"), ("::", "127.0.0.1"), ("::1", "::1"), ("10.1.2.3", "10.1.2.3")],
)
def test_push_cli_default_datasource_url_is_where_serve_listens(
    grafana: tuple[GrafanaStandin, str], monkeypatch: pytest.MonkeyPatch, host: str,
    expected: str,
) -> None:  # fmt: skip
    """Without --datasource-url: serve's :8123 on this machine (a wildcard bind is reached
    at loopback; an IPv6 address is bracketed in the URL)."""
    state, url = grafana
    monkeypatch.delenv("METERLINE_API_URL", raising=False)
    monkeypatch.setenv("GRAFANA_TOKEN", TOKEN)
    monkeypatch.setenv("METERLINE_HOST", host)
    monkeypatch.setenv("METERLINE_CLICKHOUSE_HTTP_PORT", "18123")
    result = CliRunner().invoke(app, ["grafana", "push", "--url", url])
    assert result.exit_code == 0, result.output
    [ds] = state.datasources.values()
    assert (ds["jsonData"]["host"], ds["jsonData"]["port"]) == (expected, 18123)
