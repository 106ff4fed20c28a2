"""``meterline serve`` killed with -9 mid-insert, then restarted.

- ``otel_traces`` and ``llm_usage`` agree after the restart (the view's part is
  committed after the table's: a kill between the two left spans without usage);
- every acknowledged span is counted, once;
- the killed process left no temporary request file in the system's temporary
  directory, and the restart removes what it left under the data directory.

Each kill lands at a random moment of sustained ingest; the test kills until one kill
left the tables disagreeing (about half do on a quiet machine) or ``ATTEMPTS`` ran out.
On a loaded machine the python path's window can be missed ten times in a row: the
invariants above are then still checked, and the repair itself is proven deterministically
(the view detached mid-insert) in ``tests/store/test_reconcile.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from meterline.launcher import start_server

pytestmark = pytest.mark.e2e

ATTEMPTS = 10
SPANS_PER_BODY = 512

# Run in a separate process once the server is dead (chdb: one process per data dir).
_INSPECT = r"""
import json, sys
from meterline.store import open_store
from meterline.store.migrations import USAGE_MV_QUERY
store = open_store(data_dir=sys.argv[1], database="meterline")
derived = USAGE_MV_QUERY.replace("{db}", store.db)
_, [(missing, extra, traces)] = store.query(
    f"SELECT (SELECT count() FROM ({derived}) WHERE DedupKey NOT IN "
    "(SELECT DedupKey FROM {db}.llm_usage)), "
    f"(SELECT count() FROM {{db}}.llm_usage WHERE DedupKey NOT IN (SELECT DedupKey FROM ({derived}))), "
    "(SELECT count() FROM {db}.otel_traces)"
)
from meterline.store.usage_schema import COUNTED_ALL
_, ids = store.query(f"SELECT ResponseId, count() FROM {COUNTED_ALL} GROUP BY ResponseId")
print(json.dumps({"missing": missing, "extra": extra, "traces": traces,
                  "ids": {i: n for i, n in ids}}))
"""


def inspect(data_dir: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _INSPECT, str(data_dir)],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def body(seed: int) -> bytes:
    now = time.time_ns()
    spans = [
        Span(
            trace_id=(seed * 100_000 + i + 1).to_bytes(16, "big"),
            span_id=(seed * 100_000 + i + 1).to_bytes(8, "big"), name="chat gpt-4o", kind=3,
            start_time_unix_nano=now - 1_000_000, end_time_unix_nano=now,
            attributes=[KeyValue(key=k, value=AnyValue(string_value=v)) for k, v in (
                ("gen_ai.provider.name", "openai"), ("gen_ai.operation.name", "chat"),
                ("gen_ai.request.model", "gpt-4o"), ("gen_ai.response.id", f"k{seed}-{i}"),
                ("meterline.consumer.id", f"c{i % 7}"))]
            + [KeyValue(key="gen_ai.usage.input_tokens", value=AnyValue(int_value=i + 1))],
        )
        for i in range(SPANS_PER_BODY)
    ]  # fmt: skip
    request = ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=spans)])]
    )
    return request.SerializeToString()


async def blast(port: int, seeds: list[int], acked: set[int], clients: int = 16) -> None:
    """POST bodies until the server dies; record the seeds acknowledged (200)."""
    queue = list(seeds)

    async def worker() -> None:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return
        head = "POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
        try:
            while queue:
                seed = queue.pop()
                raw = body(seed)
                writer.write(f"{head}Content-Length: {len(raw)}\r\n\r\n".encode() + raw)
                await writer.drain()
                response = await reader.readuntil(b"\r\n\r\n")
                length = int(response.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                if response.split(b" ", 2)[1] == b"200":
                    acked.add(seed)
        except (OSError, asyncio.IncompleteReadError):
            return  # killed

    await asyncio.gather(*(worker() for _ in range(clients)))


def kill_during_ingest(data_dir: Path, env: dict[str, str], attempt: int, acked: set[int]) -> None:
    server = start_server(data_dir, env=env)
    port = server.endpoints["otlp_http_port"]

    async def run() -> None:
        seeds = list(range(attempt * 1000, attempt * 1000 + 400))
        task = asyncio.create_task(blast(port, seeds, acked))
        await asyncio.sleep(random.uniform(1.0, 3.0))
        os.kill(server.process.pid, signal.SIGKILL)
        await task

    asyncio.run(run())
    server.process.wait(30)


@pytest.mark.parametrize("path", ["native", "python"])
def test_kill_9_mid_insert_then_restart(tmp_path: Path, path: str) -> None:
    data_dir = tmp_path / "data"
    system_tmp = tmp_path / "system-tmp"  # the killed process's TMPDIR
    system_tmp.mkdir()
    env = {"METERLINE_NATIVE_INGEST": str(path == "native").lower(), "TMPDIR": str(system_tmp)}
    acked: set[int] = set()
    disagreed = left_files = 0
    for attempt in range(ATTEMPTS):
        kill_during_ingest(data_dir, env, attempt, acked)
        assert list(system_tmp.iterdir()) == []  # nothing in the system's temporary dir
        left_files += len(list((data_dir / "meterline-tmp").glob("*")))
        state = inspect(data_dir)
        assert state["extra"] == 0  # usage never without its span
        if state["missing"]:
            disagreed += 1
            break
    with start_server(data_dir, env=env) as restarted:  # reconciles at start
        assert list((data_dir / "meterline-tmp").glob("*")) == []
        if disagreed:
            assert "re-derived llm_usage" in restarted.log()
        assert restarted.stop() == 0
    state = inspect(data_dir)
    assert (state["missing"], state["extra"]) == (0, 0), state
    counts = state["ids"]
    for seed in acked:  # every acknowledged span counted, once
        for i in range(SPANS_PER_BODY):
            assert counts.get(f"k{seed}-{i}") == 1, (seed, i)
    assert all(n == 1 for n in counts.values())
    assert left_files  # the killed insert had left its request file there
