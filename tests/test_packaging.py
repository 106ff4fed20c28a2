"""Building the package warns about nothing and ships the data files the code reads.

setuptools warned on every ``pip install -e`` that ``meterline.collector.otelcol`` and
``meterline.collector.proto`` (data-only folders) were importable but absent from
``packages``; a wheel must still carry them (the engine reads the ``.proto`` at run time).
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_builds_without_warnings_and_ships_the_data(tmp_path: Path) -> None:
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path),
         str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    output = build.stdout + build.stderr
    assert build.returncode == 0, output
    assert "warning" not in output.lower(), output
    [wheel] = tmp_path.glob("meterline-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for data in (
        "meterline/collector/otelcol/config.yaml",
        "meterline/collector/otelcol/README.md",
        "meterline/collector/proto/otlp_traces.proto",
    ):
        assert data in names
    assert not any(n.startswith(("collector/", "aggregator/", "tests/")) for n in names)
