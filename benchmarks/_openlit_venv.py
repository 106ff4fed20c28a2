"""The OpenLIT comparison's own virtualenv: OpenLIT, openai 2.x and this checkout's meterline.

OpenLIT 1.45 (the newest release on the index) pins ``openai < 3`` and ``anthropic < 1``,
so it cannot be installed beside the project's SDKs. This environment holds it with
openai 2.x (which sends through httpx, not httpx2) and meterline's core installed editable
from this checkout (no server extras), so the benchmark measures meterline and OpenLIT in
one process on the same SDK.

It is built on first use under ``benchmarks/.envs/openlit`` (gitignored, ~20 s from the
package index) and reused while what it installs is unchanged (a key over the Python
version, the requirements and meterline's core dependencies); ``--rebuild-openlit-env``
forces a fresh one.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENV_DIR = ROOT / "benchmarks" / ".envs" / "openlit"
REQUIREMENTS = ("openlit==1.45.0", "openai>=2,<3")
# pip cannot resolve openlit 1.45's requirements alone here: the index lacks
# opentelemetry-instrumentation-aiohttp-client 0.66b2, and backtracking through the
# contrib releases ends in ResolutionImpossible. One consistent OpenTelemetry release
# (the newest that has every package OpenLIT requires) resolves at once.
CONSTRAINTS = (
    "opentelemetry-api==1.45.1",
    "opentelemetry-sdk==1.45.1",
    "opentelemetry-proto==1.45.1",
    "opentelemetry-exporter-otlp==1.45.1",
    "opentelemetry-exporter-otlp-proto-common==1.45.1",
    "opentelemetry-exporter-otlp-proto-grpc==1.45.1",
    "opentelemetry-exporter-otlp-proto-http==1.45.1",
    "opentelemetry-instrumentation==0.66b1",
    "opentelemetry-semantic-conventions==0.66b1",
    "opentelemetry-util-http==0.66b1",
)


def python(*, rebuild: bool = False) -> Path:
    """The environment's interpreter, building the environment first if needed.

    Raises:
        SystemExit: pip could not build it (with pip's last words).
    """
    exe = ENV_DIR / "bin" / "python"
    marker = ENV_DIR / ".meterline-key"
    key = _key()
    if not rebuild and exe.exists() and marker.exists() and marker.read_text() == key:
        return exe
    shutil.rmtree(ENV_DIR, ignore_errors=True)
    print(f"building the OpenLIT environment in {ENV_DIR} (once) ...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(ENV_DIR)], check=True)
    constraints = ENV_DIR / "constraints.txt"
    constraints.write_text("\n".join(CONSTRAINTS) + "\n")
    cmd = [str(exe), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    cmd += ["-c", str(constraints), *REQUIREMENTS, "-e", str(ROOT)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")]
        last = errors[-1] if errors else (done.stderr.strip().splitlines() or ["?"])[-1]
        raise SystemExit(
            f"could not build the OpenLIT environment in {ENV_DIR}: {last} "
            "(run again with --rebuild-openlit-env, or --skip-openlit)"
        )
    marker.write_text(key)
    return exe


def _key() -> str:
    with open(ROOT / "pyproject.toml", "rb") as fh:
        core = tomllib.load(fh)["project"]["dependencies"]
    spec = [sys.version, REQUIREMENTS, CONSTRAINTS, core]
    return hashlib.sha256(json.dumps(spec).encode()).hexdigest()
