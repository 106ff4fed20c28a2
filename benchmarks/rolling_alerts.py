"""Benchmark: the cost of one check of a rolling-window alert rule (docs/alerts.md).

Generates ``--calls`` calls of one consumer spread evenly over 72 hours (2026-03-20 to
03-23, gpt-4o at 2.00 / 8.00 per million, 20 % markup) in the embedded engine, rates
them, then times (median of ``--repeat``), with "now" at the end of the data:

- *baseline* — the hourly money query alone over the window and the 48 h look-back: what
  a check cost when windows were aligned on whole hours;
- *far* — a 24 h rule whose limit is 10 × the spend of any 24 h: every hour is decided
  by the hourly bounds;
- *in breach* — a limit of a tenth of it: in breach throughout, decided by the bounds;
- *near* — a limit between the spend of 23 and of 25 whole hours: every hour of the
  look-back is near the limit and is swept call by call (the worst case: the calls of
  those hours and of the hours 24 h earlier are rated on the fly, grouped per instant).

Each case: the first check (nothing cached) and the next ones (median of ``--repeat``: the
per-call money of hours whose rating run did not change is kept between checks, as the
alert service keeps it).

Run: ``.venv/bin/python benchmarks/rolling_alerts.py --calls 200000``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

from meterline.aggregator.alerts import _rolling
from meterline.aggregator.pricing import load_pricing
from meterline.aggregator.rated import ensure_rated
from meterline.store import open_store
from meterline.store.usage_schema import MONTHS_SQL

PRICING = """
currency: USD
models:
  - provider: openai
    model: gpt-4o
    per_million_tokens: {input: "2.00", cache_read: "1.00", output: "8.00"}
plans:
  default: {markup_percent: "20"}
"""

START = datetime(2026, 3, 20, tzinfo=UTC)
HOURS = 72

INSERT = """
INSERT INTO {{db}}.llm_usage (Timestamp, ConsumerId, Feature, ServiceName, Provider, Operation,
    RequestModel, ResponseModel, ResponseId, StatusCode, ErrorType, HttpStatus, Billable,
    InputTokens, OutputTokens, CacheReadInputTokens, CacheCreationInputTokens,
    CacheCreation1hInputTokens, ReasoningOutputTokens, UsageError, DedupKey, Version, Month, Home)
SELECT
    toDateTime64('2026-03-20 00:00:00', 9, 'UTC')
        + toIntervalMicrosecond(intDiv(number * {span_us}, {calls})) AS Timestamp,
    'c0' AS ConsumerId, 'chat' AS Feature, 'svc' AS ServiceName, 'openai' AS Provider,
    'chat' AS Operation, 'gpt-4o' AS RequestModel, 'gpt-4o' AS ResponseModel,
    toString(number) AS ResponseId, 'STATUS_CODE_UNSET' AS StatusCode, '' AS ErrorType,
    200 AS HttpStatus, toUInt8(1) AS Billable,
    500 + cityHash64(number, 3) % 20000 AS InputTokens,
    50 + cityHash64(number, 4) % 2000 AS OutputTokens,
    0 AS CacheReadInputTokens, 0 AS CacheCreationInputTokens,
    0 AS CacheCreation1hInputTokens, 0 AS ReasoningOutputTokens, '' AS UsageError,
    concat('openai/', ResponseId) AS DedupKey,
    toUInt128('170141183460469231731687303715884105728') + number AS Version,
    arrayJoin({months}) AS Month,
    toUInt8(Month = toYYYYMM(Timestamp, 'UTC')) AS Home
FROM numbers({calls})
"""


def timed(fn, repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="meterline-rolling-"))
    try:
        (work / "pricing.yaml").write_text(PRICING, encoding="utf-8")
        pricing = load_pricing(work / "pricing.yaml")
        store = open_store(data_dir=work / "data", database="bench")
        store.migrate()
        span_us = HOURS * 3600 * 10**6
        store.command(INSERT.format(span_us=span_us, calls=args.calls, months=MONTHS_SQL))
        end = START + timedelta(hours=HOURS)
        ensure_rated(store, pricing, START - timedelta(days=1), end)
        now = end - timedelta(minutes=1)
        first = _rolling._floor(_rolling.to_ns(now)) + _rolling.HOUR_NS - 49 * _rolling.HOUR_NS
        rule = SimpleNamespace(consumer="c0", feature=None, limit=Decimal(0), seconds=86400)
        hourly = _rolling._hourly(store, rule, first - 86400 * 10**9, first + 49 * 3600 * 10**9)
        per_hour = sorted(hourly.values())
        day = per_hour[len(per_hour) // 2] * 24
        print(f"{args.calls:,} calls over {HOURS} h; a 24 h window holds about {day:.2f} USD")

        def check(limit: Decimal, cache: dict | None):
            r = SimpleNamespace(consumer="c0", feature=None, limit=limit, window=None,
                                seconds=86400)  # fmt: skip
            return _rolling.rolling_crossings(store, pricing, [r], now, currency="USD",
                                              cache=cache)  # fmt: skip

        scan = (first - 86400 * 10**9, first + 49 * 3600 * 10**9)
        base, _ = timed(lambda: _rolling._hourly(store, rule, *scan), args.repeat)
        print(f"baseline (hourly query only): {base * 1000:8.1f} ms")
        cases = [("far", day * 10), ("in breach", day / 10), ("near", day)]
        for name, limit in cases:
            cache: dict = {}
            cold, found = timed(lambda limit=limit, c=cache: check(limit, c), 1)
            warm, _ = timed(lambda limit=limit, c=cache: check(limit, c), args.repeat)
            print(f"{name:>10} (limit {limit:.2f}): first check {cold * 1000:8.1f} ms "
                  f"({cold / base:.1f}× baseline), next checks {warm * 1000:8.1f} ms "
                  f"({warm / base:.1f}×); {len(found)} episode(s) found")  # fmt: skip
        store.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
