"""Mistakes at start, as a user meets them: one line on stderr, no traceback, a set exit code.

Each test runs the real CLI in a subprocess. Before these fixes an invalid configuration
let ``serve`` start (and answer 500 on every /v1 route), and a port in use or a second
``serve`` on one data directory printed a 60-100 line traceback. Exit codes: 2 when what
was given is wrong (flags, ``METERLINE_*`` values, the configuration file), 1 when the
machine refuses it (a port in use, the data directory held by another process or not
writable).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from meterline.launcher import RunningServer, start_server

pytestmark = pytest.mark.e2e

# i9-keys adds a start-up warning when no admin key is set; a key keeps stderr to the error
ENV = {"METERLINE_ADMIN_KEY": "start-errors-key"}
ALL_FREE = ["--otlp-http-port", "0", "--otlp-grpc-port", "0", "--api-port", "0",
            "--clickhouse-http-port", "0"]  # fmt: skip


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60,
        user: int | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """``meterline ARGS`` in a subprocess; a command still running after ``timeout`` (it
    started serving instead of refusing) fails the test."""
    command = [sys.executable, "-m", "meterline", *args]
    if user is not None:  # run as another user (root ignores file permissions)
        command = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *command]
    try:
        return subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **ENV, **(env or {})},
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"meterline {' '.join(args)} did not exit within {timeout}s: it started")


def one_line(result: subprocess.CompletedProcess[str], code: int) -> str:
    """The single stderr line of a failed command with exit ``code``."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert result.returncode == code, (result.returncode, result.stderr)
    assert lines[0].startswith("error: ")
    return lines[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nothing_listens(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


# --- the configuration file ---------------------------------------------------------

PRICE = 'per_million_tokens: {input: "1.00"}'
CONFIGS = {
    "bad YAML": ("models:\n  - provider: openai\n   model: m\n",
                 "not valid YAML: line 3, column 4: "),
    "float price": ("models:\n  - {provider: o, model: m, per_million_tokens: {input: 2.5}}\n",
                    ":2: models[0].per_million_tokens.input: 2.5 is a YAML float, and binary "
                    "floats are not exact money: quote it"),
    "top-level typo": ("model:\n  - provider: openai\n",
                       ":1: model: unknown key `model`: did you mean `models`?"),
    "nested unknown key": (f"models:\n  - {{provider: o, model: m, {PRICE}, tier: []}}\n",
                           ":2: models[0].tier: unknown key `tier`: did you mean `tiers`?"),
    "wrong type": ("plans:\n  default:\n    bill_failed_requests: 'no'\n",
                   ":3: plans.default.bill_failed_requests: expected true or false, got 'no'"),
    "negative price": ('plans:\n  consumers:\n    acme: {markup_percent: "-5"}\n',
                       ":3: plans.consumers.acme.markup_percent: '-5' must be a finite, "
                       "non-negative amount"),
    "bad date": (f"models:\n  - {{provider: o, model: m, effective_from: 2026-13-01, {PRICE}}}\n",
                 ":2: models[0].effective_from: '2026-13-01' is not a date (YYYY-MM-DD)"),
    "duplicate key": ("models: []\ncurrency: USD\nmodels: []\n",
                      "not valid YAML: line 3, column 1: key 'models' is given twice "
                      "(first on line 1): keep one"),
    "bad budget": ("budgets:\n  limits:\n    - {consumer: acme, limit: '25', unit: EUR, period: month}\n",
                   ":1: budgets: limits[0]: unit 'EUR' must be the pricing currency 'USD' or 'tokens'"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_an_invalid_configuration_is_refused_before_listening(tmp_path: Path, case: str) -> None:
    text, expected = CONFIGS[case]
    config = tmp_path / "meterline.yaml"
    config.write_text(text, encoding="utf-8")
    data_dir = tmp_path / "data"
    api_port = free_port()
    result = cli("serve", "--config", str(config), "--data-dir", str(data_dir), *ALL_FREE,
                 "--api-port", str(api_port))  # fmt: skip
    line = one_line(result, 2)
    assert line.startswith(f"error: {config}")
    assert expected in line
    assert not data_dir.exists()  # nothing was created
    # `config check` says the same, starting nothing
    check = cli("config", "check", str(config))
    assert one_line(check, 2) == line and check.stdout == ""


def test_a_missing_or_unreadable_configuration_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    line = one_line(cli("serve", "--config", str(missing), "--data-dir", str(tmp_path / "d")), 2)
    assert line == f"error: {missing}: no such file: check the --config path"
    line = one_line(cli("serve", "--data-dir", str(tmp_path / "d"),
                        env={"METERLINE_CONFIG": str(tmp_path)}), 2)  # fmt: skip
    assert line == f"error: {tmp_path}: is a directory, not a configuration file"
    assert not (tmp_path / "d").exists()


def test_config_check_of_a_valid_file(tmp_path: Path) -> None:
    from tests.aggregator.pricing_config import write_config

    config = write_config(tmp_path)
    result = cli("config", "check", str(config))
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout == f"{config}: valid (currency USD, 4 model prices, 3 plans)\n"
    empty = tmp_path / "empty.yaml"
    empty.write_text("# no prices of our own yet\n")
    assert cli("config", "check", str(empty)).stdout.endswith(": valid (currency USD, 0 model "
                                                              "prices, 0 plans)\n")  # fmt: skip


# --- flags and environment values ---------------------------------------------------


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["--api-port", "abc"], {}, "error: Invalid value for '--api-port': "),
        (["--api-port", "70000"], {}, "error: --api-port 70000: should be less than or equal "
                                      "to 65535"),
        ([], {"METERLINE_OTLP_GRPC_PORT": "x"}, "error: METERLINE_OTLP_GRPC_PORT='x': should "
                                                "be a valid integer"),
        ([], {"METERLINE_WRITER_THREADS": "0"}, "error: METERLINE_WRITER_THREADS='0': should be "
                                                "greater than or equal to 1"),
        (["--no-such-flag"], {}, "error: No such option: --no-such-flag"),
        (["--api-port", "5000", "--clickhouse-http-port", "5000"], {},
         "error: --api-port and --clickhouse-http-port are both 5000: give each listener its "
         "own port"),
    ],
)  # fmt: skip
def test_a_bad_flag_or_environment_value_is_a_usage_error(
    tmp_path: Path, args: list[str], env: dict[str, str], expected: str
) -> None:
    data_dir = tmp_path / "data"
    base = ["serve", "--data-dir", str(data_dir)]
    if "--api-port" not in args:
        base += ["--api-port", "0", "--otlp-http-port", "0"]
    result = cli(*base, *args, env=env)
    assert one_line(result, 2).startswith(expected)
    assert not data_dir.exists()


def test_an_address_that_is_not_local(tmp_path: Path) -> None:
    result = cli("serve", "--data-dir", str(tmp_path / "d"), "--host", "192.0.2.1", *ALL_FREE)
    assert one_line(result, 1).startswith(
        "error: --host 192.0.2.1 is not an address of this machine"
    )


# --- ports in use -------------------------------------------------------------------


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    data_dir = tmp_path_factory.mktemp("running") / "data"
    with start_server(data_dir, env=ENV) as server:
        yield server


@pytest.mark.parametrize(
    "flag", ["--otlp-http-port", "--otlp-grpc-port", "--api-port", "--clickhouse-http-port"]
)
def test_a_port_in_use_names_the_flag(running: RunningServer, tmp_path: Path, flag: str) -> None:
    taken = running.endpoints[flag.removeprefix("--").replace("-", "_")]
    others = {f: str(free_port()) for f in ALL_FREE[::2] if f != flag}
    args = [a for f, p in others.items() for a in (f, p)]
    data_dir = tmp_path / "data"
    result = cli("serve", "--data-dir", str(data_dir), *args, flag, str(taken))
    assert one_line(result, 1) == (
        f"error: {flag} {taken} is in use: another process listens on 127.0.0.1:{taken}; "
        "choose another port (0 picks a free one) or stop the other process"
    )
    assert not data_dir.exists()
    assert all(nothing_listens(int(p)) for p in others.values())


def test_a_port_held_by_another_program(tmp_path: Path) -> None:
    """Not only a second meterline: any listener (here a plain socket) on the gRPC port."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = cli("serve", "--data-dir", str(tmp_path / "d"), *ALL_FREE,
                     "--otlp-grpc-port", str(port))  # fmt: skip
    assert one_line(result, 1).startswith(f"error: --otlp-grpc-port {port} is in use")


def test_a_second_serve_on_one_data_directory(running: RunningServer) -> None:
    data_dir = Path(running.endpoints["extra"]["store"].split("at='")[1].split("'")[0])
    result = cli("serve", "--data-dir", str(data_dir), *ALL_FREE)
    pid = running.process.pid
    assert one_line(result, 1) == (
        f"error: --data-dir {data_dir} is used by another meterline serve (pid {pid}): stop it "
        "or give another --data-dir; to read its data while it runs, set METERLINE_API_URL "
        "to its API"
    )
    # `migrate` on it says the same (the engine would print its own lines first)
    assert one_line(cli("migrate", "--data-dir", str(data_dir)), 1) == one_line(result, 1)
    assert running.process.poll() is None  # and the first one is untouched


def test_the_simulator_port_in_use() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = cli("simulator", "--port", str(port))
    assert one_line(result, 1) == (
        f"error: --port {port} is in use: another process listens on 127.0.0.1:{port}; "
        "choose another port (0 picks a free one) or stop the other process"
    )
    assert one_line(cli("simulator", "--port", "70000"), 2).startswith(
        "error: Invalid value for '--port'"
    )


def test_in_process_a_taken_port_leaves_no_listener_open(tmp_path: Path) -> None:
    """``serve()`` as a library: the ports bound before the taken one are closed again."""
    from meterline.listen import ListenError
    from meterline.server import serve
    from meterline.settings import ServerSettings

    ports = [free_port() for _ in range(3)]
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        settings = ServerSettings(
            data_dir=tmp_path / "data", otlp_http_port=ports[0], api_port=ports[1],
            clickhouse_http_port=ports[2], otlp_grpc_port=taken,
        )  # fmt: skip
        with pytest.raises(ListenError, match=f"--otlp-grpc-port {taken} is in use"):
            asyncio.run(serve(settings))
    for port in ports:  # each can be bound again at once
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
    assert not (tmp_path / "data").exists()


# --- permissions --------------------------------------------------------------------


def _other_user() -> int | None:
    """Who to run as so that file permissions apply (root ignores them)."""
    if os.geteuid() != 0:
        return None
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: permissions cannot be tested")
    return 65534  # nobody


def test_a_data_directory_or_config_this_user_cannot_use() -> None:
    user = _other_user()
    # pytest's tmp_path is private to this user: the other one needs a place it may enter
    shared = Path(os.environ.get("TMPDIR", "/tmp")) / f"meterline-perm-{os.getpid()}"
    shared.mkdir(mode=0o755)
    try:
        shared.chmod(0o755)
        locked = shared / "locked"
        locked.mkdir()
        locked.chmod(0o555)  # nobody (or this user, when not root) cannot write here
        secret = shared / "secret.yaml"
        secret.write_text("currency: USD\n")
        secret.chmod(0o000)
        result = cli("serve", "--data-dir", str(locked), *ALL_FREE, user=user)
        assert one_line(result, 1) == (
            f"error: --data-dir {locked}: permission denied: give a directory this user can write"
        )
        result = cli("serve", "--data-dir", str(locked / "new"), *ALL_FREE, user=user)
        assert one_line(result, 1) == (
            f"error: --data-dir {locked / 'new'}: permission denied (its parent {locked} is not "
            "writable): give a directory this user can write"
        )
        result = cli("config", "check", str(secret), user=user)
        assert one_line(result, 2) == f"error: {secret}: cannot read it: Permission denied"
        result = cli("serve", "--config", str(secret), "--data-dir", str(shared / "d"), user=user)
        assert one_line(result, 2).startswith(  # typer's own check of the flag, also one line
            f"error: Invalid value for '--config': path '{secret}' is not readable."
        )
    finally:
        locked.chmod(0o755)
        shutil.rmtree(shared)


# --- reloading the configuration ----------------------------------------------------


def _price(server: RunningServer) -> str:
    import httpx

    response = httpx.get(
        server.api_url + "/v1/prices",
        params={"provider": "openai", "model": "meterline-reload-test"},
        headers={"Authorization": f"Bearer {ENV['METERLINE_ADMIN_KEY']}"},
    )
    assert response.status_code == 200, response.text
    return response.text


def _reload(server: RunningServer, expected: str, before: int) -> str:
    server.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        lines = [line for line in server.log().splitlines()[before:] if "configuration" in line]
        if any(expected in line for line in lines):
            assert len(lines) == 1, lines
            return lines[0]
        time.sleep(0.05)
    pytest.fail(f"no {expected!r} in the log:\n{server.log()}")


def test_sighup_reloads_and_a_bad_file_keeps_the_one_in_use(tmp_path: Path) -> None:
    config = tmp_path / "meterline.yaml"
    entry = "models:\n  - {{provider: openai, model: meterline-reload-test, " \
            "per_million_tokens: {{input: \"{}\"}}}}\n"  # fmt: skip
    config.write_text(entry.format("1.25"))
    with start_server(tmp_path / "data", args=["--config", str(config)], env=ENV) as server:
        assert '"1.25"' in _price(server)
        config.write_text(entry.format("2.75"))
        line = _reload(server, "configuration reloaded", len(server.log().splitlines()))
        assert f"configuration reloaded from {config}: currency USD, 1 model prices" in line
        assert '"2.75"' in _price(server)
        # an invalid file: refused in one line, the prices in use stay
        config.write_text(entry.format("2.75").replace('"2.75"', "3.5"))
        line = _reload(server, "not reloaded", len(server.log().splitlines()))
        assert line.endswith(
            f"ERROR meterline.aggregator.app: configuration not reloaded, the one in use stays: "
            f"{config}:2: models[0].per_million_tokens.input: 3.5 is a YAML float, and binary "
            'floats are not exact money: quote it as a decimal string ("3.5")'
        )
        assert '"2.75"' in _price(server)
        config.unlink()  # a file gone: the same
        line = _reload(server, "not reloaded", len(server.log().splitlines()))
        assert line.endswith(f"{config}: no such file: check the --config path")
        assert '"2.75"' in _price(server)
        assert server.process.poll() is None
