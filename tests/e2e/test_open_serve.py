"""``meterline serve`` without an admin key (issue 9 §2), as a process on real sockets:
it says so at start, refuses forged browser requests, and will not serve an open API
beyond loopback unless told to."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from meterline.aggregator.auth import OPEN_WARNING
from meterline.launcher import RunningServer, start_server

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    saved = os.environ.pop("METERLINE_ADMIN_KEY", None)
    try:
        with start_server(tmp_path_factory.mktemp("open")) as running:
            yield running
    finally:
        if saved is not None:
            os.environ["METERLINE_ADMIN_KEY"] = saved


def test_open_serve_says_so_and_refuses_forged_requests(open_server: RunningServer) -> None:
    assert [line for line in open_server.log().splitlines() if OPEN_WARNING in line] != []
    assert open_server.log().count(OPEN_WARNING) == 1
    api = open_server.api_url
    port = api.rsplit(":", 1)[1]
    assert httpx.get(f"{api}/v1/usage").status_code == 200
    assert httpx.get(f"http://localhost:{port}/v1/usage").status_code == 200
    for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1:{int(port) + 1}"):
        response = httpx.get(f"{api}/v1/usage", headers={"host": host})
        assert response.status_code == 403, host
    form = httpx.post(f"{api}/v1/periods/2026-03/finalize", data={"x": "1"})
    assert form.status_code == 415
    plain = httpx.post(f"{api}/v1/keys", content='{"consumer": "acme"}',
                       headers={"content-type": "text/plain"})  # fmt: skip
    assert plain.status_code == 415
    made = httpx.post(f"{api}/v1/keys", json={"consumer": "acme"})
    assert made.status_code == 201
    ch = open_server.clickhouse_http_url
    assert ch is not None
    assert httpx.post(ch, content="SELECT 1").text == "1\n"
    evil = httpx.post(ch, content="SELECT 1", headers={"host": "evil.example"})
    assert evil.status_code == 403
    assert httpx.get(f"{api}/v1/usage", headers={"authorization": f"Bearer {made.json()['key']}"}
                     ).status_code == 200  # fmt: skip


def test_serve_with_a_key_does_not_warn(tmp_path) -> None:
    with start_server(tmp_path / "d", env={"METERLINE_ADMIN_KEY": "k1,k2"}) as running:
        assert OPEN_WARNING not in running.log()
        api = running.api_url
        assert httpx.get(f"{api}/v1/usage").status_code == 401
        for key in ("k1", "k2"):
            headers = {"authorization": f"Bearer {key}"}
            assert httpx.get(f"{api}/v1/usage", headers=headers).status_code == 200
        ch = running.clickhouse_http_url
        assert ch is not None
        for key in ("k1", "k2"):
            assert httpx.post(ch, content="SELECT 1", auth=("meterline", key)).text == "1\n"
        made = httpx.post(f"{api}/v1/keys", json={"consumer": "acme"},
                          headers={"authorization": "Bearer k2"}).json()  # fmt: skip
        refused = httpx.post(ch, content="SELECT 1", auth=("meterline", made["key"]))
        assert refused.status_code == 403


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_serve_refuses_an_open_api_beyond_loopback(tmp_path, host: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "METERLINE_ADMIN_KEY"}
    result = subprocess.run(
        [sys.executable, "-m", "meterline", "serve", "--data-dir", str(tmp_path / "d"),
         "--host", host, "--api-port", "0", "--otlp-http-port", "0", "--otlp-grpc-port", "0",
         "--clickhouse-http-port", "0"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "METERLINE_ADMIN_KEY" in lines[0] and "--allow-open-api" in lines[0]
    assert not (tmp_path / "d").exists()  # nothing opened or created
