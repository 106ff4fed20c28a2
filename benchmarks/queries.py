"""Benchmark: invoices over many usage rows in the embedded engine.

Generates ``--rows`` usage rows directly in ``llm_usage`` (``INSERT … SELECT FROM
numbers()``, with the copies the view stores for rows within a day of a month
boundary), spread evenly over ``--months`` UTC months — from 2026-01, or from 2026-03
when ``--months`` < 3 — and over ``--consumers`` consumers), then, for the month 2026-03
(it contains a catalogue price change, 2026-03-13, for claude-sonnet-4-6, and calls on
both sides of its 200k-token tier), in one run:

1. *before* — invoices rated on the fly from the counted usage, as every reader did
   before ``rated_usage`` (:func:`rate_invoices_on_the_fly`): one consumer's month and
   all consumers' invoices (the same-run baseline);
2. *rating* — rating the month into ``rated_usage`` from scratch (wall time, the
   process's CPU — chdb runs in-process, so this includes the engine's threads — and CPU
   per counted row), then re-rating it after ``--late-rows`` late rows in random hours (an
   incremental run: only the hours they change; the lag of the rating loop follows);
3. *after* — the same invoices read from the table, through the code the API runs
   (:func:`compute_invoices`: a current month costs a ``system.parts`` look-up), targets
   < 100 ms for one consumer's month and < 2 s for all consumers' invoices; checked equal
   to (1).

Rows per month = rows / months: ``--months 1`` puts every row in the measured month (the
worst case). The late rows stay in the data directory (``--late-rows 0`` to leave the
usage as generated).

Run: ``.venv/bin/python benchmarks/queries.py --rows 100000000 --months 1``; with
``--data-dir D --reads-only`` it measures the reads (and the overview) on what ``D`` holds
without rating it again.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time

from meterline.aggregator.invoices import compute_invoices, month
from meterline.aggregator.invoices._service import rate_invoices_on_the_fly
from meterline.aggregator.pricing import load_pricing
from meterline.aggregator.queries import READ_SETTINGS
from meterline.aggregator.queries.rated import invoice_sql
from meterline.aggregator.rated import RatingLoop, ensure_rated, stale_months
from meterline.aggregator.rated._read import current_monthly_sums
from meterline.aggregator.rated._run import roll_up_months
from meterline.aggregator.routes.overview import get_overview
from meterline.aggregator.tenancy import Scope
from meterline.store import open_store
from meterline.store.usage_schema import COUNTED_VIEW, MONTHS_SQL

MODELS = [
    # provider, request model, response model
    ("openai", "gpt-4o", "gpt-4o-2024-08-06"),
    ("openai", "gpt-4o-mini", "gpt-4o-mini-2024-07-18"),
    ("openai", "o3", "o3-2025-04-16"),
    ("anthropic", "claude-sonnet-4-20250514", "claude-sonnet-4-20250514"),
    ("anthropic", "claude-sonnet-4-6", "claude-sonnet-4-6"),
    ("anthropic", "claude-haiku-4-5", "claude-haiku-4-5-20251001"),
    ("gcp.gemini", "gemini-2.5-pro", "gemini-2.5-pro"),
    ("openai", "in-house-model", "in-house-model"),  # unpriced
]

INSERT = """
INSERT INTO {{db}}.llm_usage (Timestamp, ConsumerId, Feature, ServiceName, Provider, Operation,
    RequestModel, ResponseModel, ResponseId, StatusCode, ErrorType, HttpStatus, Billable,
    InputTokens, OutputTokens, CacheReadInputTokens, CacheCreationInputTokens,
    CacheCreation1hInputTokens, ReasoningOutputTokens, UsageError, DedupKey, Version, Month, Home)
SELECT
    toDateTime64('2026-{first:02d}-01 00:00:00', 9, 'UTC')
        + toIntervalSecond(intDiv(number * {span_seconds}, {rows})) AS Timestamp,
    concat('c', toString(cityHash64(number, 1) % {consumers})) AS ConsumerId,
    ['chat', 'search', 'summary'][1 + number % 3] AS Feature,
    'svc' AS ServiceName,
    {providers}[1 + (cityHash64(number, 2) % {n_models}) AS m] AS Provider,
    'chat' AS Operation,
    {requests}[m] AS RequestModel,
    {responses}[m] AS ResponseModel,
    toString(number) AS ResponseId,
    if(number % 50 = 0, 'STATUS_CODE_ERROR', 'STATUS_CODE_UNSET') AS StatusCode,
    if(number % 50 = 0, '500', '') AS ErrorType,
    if(number % 50 = 0, 500, 200) AS HttpStatus,
    toUInt8(number % 50 != 0) AS Billable,
    if(number % 200 = 7, 200000 + cityHash64(number, 3) % 100000,
       500 + cityHash64(number, 3) % 20000) AS InputTokens,
    50 + cityHash64(number, 4) % 2000 AS OutputTokens,
    if(number % 3 = 0, intDiv(InputTokens, 2), 0) AS CacheReadInputTokens,
    if(Provider = 'anthropic' AND number % 5 = 1, intDiv(InputTokens, 4), 0)
        AS CacheCreationInputTokens,
    if(number % 10 = 1, intDiv(CacheCreationInputTokens, 2), 0) AS CacheCreation1hInputTokens,
    if(m = 3, intDiv(OutputTokens, 2), 0) AS ReasoningOutputTokens,
    '' AS UsageError,
    concat(Provider, '/', ResponseId) AS DedupKey,
    toUInt128('170141183460469231731687303715884105728') + number AS Version,
    arrayJoin({months}) AS Month,
    toUInt8(Month = toYYYYMM(Timestamp, 'UTC')) AS Home
FROM numbers({offset}, {count})
"""


RATED_TABLES = ("rated_usage", "rated_hours", "rated_daily", "rated_days", "rated_monthly",
                "rated_monthly_marks", "rated_months")  # fmt: skip

LATE = """
INSERT INTO {{db}}.llm_usage
SELECT * REPLACE (concat(DedupKey, '-late-{tag}') AS DedupKey)
FROM {{db}}.llm_usage
WHERE Month = 202603 AND Home = 1
ORDER BY cityHash64(DedupKey, {tag})
LIMIT {n}
"""
"""Late rows: copies of random counted rows of 2026-03 as new responses, in their hours."""


def _rate(store, pricing, period) -> tuple[float, float, list]:
    """Rate the period's stale months now: (wall seconds, process CPU seconds, runs)."""
    wall, cpu = time.perf_counter(), time.process_time()
    runs = ensure_rated(store, pricing, period.start, period.end)
    return time.perf_counter() - wall, time.process_time() - cpu, runs


def _loop_lag(store, pricing, period, n: int) -> tuple[float, object]:
    """Insert ``n`` late rows while :class:`RatingLoop` runs (default interval); return the
    seconds from the end of the insert until readers of the table see them (the month is
    current again), and the duration of the loop's last run."""
    loop = RatingLoop(store, lambda: pricing, interval=5.0, start=period.start, end=period.end)
    loop.start()
    try:
        time.sleep(6)  # the loop is idle (the month is current)
        store.command(LATE.format(n=n, tag=time.time_ns()))
        inserted = time.perf_counter()
        while stale_months(store, pricing, period.start, period.end):
            time.sleep(0.05)
        return time.perf_counter() - inserted, loop.last_run_seconds
    finally:
        loop.stop()


def _array(values: list[str]) -> str:
    return "[" + ", ".join(f"'{v}'" for v in values) + "]"


def first_month(months: int) -> int:
    """The first generated month: January, or March when fewer than 3 months are
    generated, so the measured month (2026-03) always holds rows / months rows."""
    return 1 if months >= 3 else 3


def generate(store, *, rows: int, months: int, consumers: int, chunk: int) -> float:
    """Insert ``rows`` usage rows; return the seconds it took."""
    if not 1 <= months <= 12:
        raise SystemExit("--months must be 1 to 12 (the generated year is 2026)")
    first = first_month(months)
    last = month(f"2026-{first + months - 1:02d}")
    span_seconds = int((last.end - month(f"2026-{first:02d}").start).total_seconds())
    started = time.perf_counter()
    for offset in range(0, rows, chunk):
        count = min(chunk, rows - offset)
        sql = INSERT.format(
            first=first,
            span_seconds=span_seconds,
            rows=rows,
            consumers=consumers,
            n_models=len(MODELS),
            providers=_array([m[0] for m in MODELS]),
            requests=_array([m[1] for m in MODELS]),
            responses=_array([m[2] for m in MODELS]),
            offset=offset,
            count=count,
            months=MONTHS_SQL,
        )
        store.command(sql)
        done = offset + count
        rate = done / (time.perf_counter() - started)
        print(f"  generated {done:,} / {rows:,} rows ({rate:,.0f} rows/s)", flush=True)
    return time.perf_counter() - started


def timed(fn, repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000_000)
    parser.add_argument("--months", type=int, default=12, help="months the rows span (≤ 12)")
    parser.add_argument("--consumers", type=int, default=1000)
    parser.add_argument("--chunk", type=int, default=10_000_000, help="rows per INSERT")
    parser.add_argument("--data-dir", help="reuse/keep this engine directory")
    parser.add_argument("--reuse", action="store_true", help="skip generation (data exists)")
    parser.add_argument("--no-optimize", action="store_true", help="skip OPTIMIZE … FINAL")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--config", help="a pricing YAML file (default: catalogue only)")
    parser.add_argument("--late-rows", type=int, default=1000, help="late rows to re-rate")
    parser.add_argument(
        "--lag-rows",
        type=lambda v: [int(x) for x in v.split(",") if x],
        default=[10, 1000],
        help="late-row batches inserted while the rating loop runs: the lag is measured "
        "for each (comma-separated counts; empty: none)",
    )
    parser.add_argument(
        "--reads-only",
        action="store_true",
        help="measure the reads on the rated data as it is (implies --reuse; no rating "
        "from scratch, no late rows; stale months are rated first)",
    )
    args = parser.parse_args()
    if args.reads_only:
        args.reuse, args.late_rows = True, 0
    data_dir = args.data_dir or tempfile.mkdtemp(prefix="meterline-bench-")
    store = open_store(data_dir=data_dir, database="bench")
    store.migrate()
    print(f"engine: {data_dir}")
    if not args.reuse:
        store.command("TRUNCATE TABLE {db}.llm_usage")
        print(f"generating {args.rows:,} rows over {args.months} month(s)…", flush=True)
        seconds = generate(
            store, rows=args.rows, months=args.months, consumers=args.consumers, chunk=args.chunk
        )
        print(f"  {seconds:.1f} s ({args.rows / seconds:,.0f} rows/s)")
        if not args.no_optimize:
            t = time.perf_counter()
            store.command("OPTIMIZE TABLE {db}.llm_usage FINAL")
            print(f"  OPTIMIZE FINAL (steady state after background merges): "
                  f"{time.perf_counter() - t:.1f} s")  # fmt: skip
    _, [(total,)] = store.query("SELECT count() FROM {db}.llm_usage")
    period = month("2026-03")
    _, [(in_month,)] = store.query(
        f"SELECT count() FROM {{db}}.{COUNTED_VIEW}(start = {{s:DateTime64(9, 'UTC')}}, "
        "end = {e:DateTime64(9, 'UTC')})",
        {"s": period.start, "e": period.end},
    )
    pricing = load_pricing(args.config)
    ALL = Scope.ALL
    fly = rate_invoices_on_the_fly
    fly(store, pricing, period, scope=ALL, consumer="c42")  # warm caches
    fly_one, _ = timed(lambda: fly(store, pricing, period, scope=ALL, consumer="c42"), args.repeat)
    fly_every, expected = timed(lambda: fly(store, pricing, period, scope=ALL), args.repeat)

    if not args.reads_only:
        for table in RATED_TABLES:
            store.command(f"TRUNCATE TABLE {{db}}.{table}")
    rate_s, rate_cpu, runs = _rate(store, pricing, period)
    if args.reads_only:
        roll_up_months(store)  # months rated before the monthly sums existed
    _, [(rated_rows,)] = store.query("SELECT count() FROM {db}.rated_usage")
    late_s = late_cpu = 0.0
    late_hours = 0
    late_runs: list = []
    if args.late_rows:
        store.command(LATE.format(n=args.late_rows, tag=time.time_ns()))
        late_s, late_cpu, late_runs = _rate(store, pricing, period)
        late_hours = sum(r.hours_rated for r in late_runs)
        late_added = sum(r.hours_added for r in late_runs)
        _, [(in_month,)] = store.query(
            f"SELECT count() FROM {{db}}.{COUNTED_VIEW}(start = {{s:DateTime64(9, 'UTC')}}, "
            "end = {e:DateTime64(9, 'UTC')})",
            {"s": period.start, "e": period.end},
        )
        expected = fly(store, pricing, period, scope=ALL)

    lags: list[tuple[int, float, object]] = []
    for n in args.lag_rows if not args.reads_only else ():
        lags.append((n, *_loop_lag(store, pricing, period, n)))
    if lags:
        expected = fly(store, pricing, period, scope=ALL)

    compute_invoices(store, pricing, period, scope=ALL, consumer="c42")  # warm caches
    one, _ = timed(
        lambda: compute_invoices(store, pricing, period, scope=ALL, consumer="c42"), args.repeat
    )
    every, invoices = timed(
        lambda: compute_invoices(store, pricing, period, scope=ALL), args.repeat
    )
    months = current_monthly_sums(store, period.start, period.end)
    query, params = invoice_sql(
        period.start, period.end, None, scope=ALL, daily=True, months=months
    )
    sql_s, sql_rows = timed(
        lambda: store.query(query, params, settings=READ_SETTINGS)[1], args.repeat
    )
    overview_s, _ = timed(
        lambda: get_overview(store=store, pricing=pricing, scope=ALL, period=period.label),
        args.repeat,
    )
    if invoices != expected:
        raise SystemExit("MISMATCH: invoices from rated_usage differ from on-the-fly rating")
    lines = sum(len(i.lines) for i in invoices.values())  # type: ignore[union-attr]
    print()
    print(f"rows in store: {total:,}; counted rows in {period.label}: {in_month:,}")
    print(f"before (rated on the fly):  one consumer's month {fly_one * 1000:8.1f} ms, "
          f"all consumers' invoices {fly_every * 1000:8.1f} ms")  # fmt: skip
    if not args.reads_only:
        print(f"rating {period.label} from scratch:   {rate_s:8.1f} s wall, {rate_cpu:8.1f} s CPU, "
              f"{rate_cpu / max(in_month, 1) * 1e6:.2f} µs CPU per counted row, "
              f"{rated_rows:,} rated rows, {sum(r.hours_rated for r in runs)} hours")  # fmt: skip
    for n, lag, run_s in lags:
        print(f"lag of the rating loop (5 s interval) after {n:,} late rows: {lag:8.1f} s "
              f"from the insert until readers see them (its run: {run_s:.1f} s)")  # fmt: skip
    if args.reads_only:
        print("(--reads-only: the month was rated before; not rated again here)")
    if args.late_rows:
        kind = "incremental" if all(r.incremental for r in late_runs) else "FULL"
        print(f"re-rating after {args.late_rows:,} late rows: {late_s:8.1f} s wall, "
              f"{late_cpu:8.1f} s CPU, {late_hours} hours replaced, {late_added} added to "
              f"({kind} run; "
              f"{rate_s / max(late_s, 1e-9):.1f}x faster than from scratch)")  # fmt: skip
        lag = max(5.0, 3 * late_s) + late_s
        print(f"lag bound with the loop's default 5 s interval: max(5, 3 × run) + run = "
              f"{lag:.1f} s (docs/rated-usage.md)")  # fmt: skip
    print(f"after (from rated_usage):   one consumer's month {one * 1000:8.1f} ms   "
          f"target < 100 ms  {'OK' if one < 0.1 else 'MISSED'}  "
          f"({fly_one / one:.1f}x faster)")  # fmt: skip
    print(f"                            all consumers' invoices {every * 1000:8.1f} ms   "
          f"target < 2000 ms {'OK' if every < 2 else 'MISSED'}  "
          f"({fly_every / every:.1f}x faster; {len(invoices):,} invoices, {lines:,} lines, "
          "equal to on-the-fly)")  # type: ignore[arg-type]  # fmt: skip
    source = "rated_monthly" if months else "rated_daily"
    print(f"                            of which the SQL ({source}, {len(sql_rows):,} rows) "
          f"{sql_s * 1000:8.1f} ms, Python {(every - sql_s) * 1000:8.1f} ms")  # fmt: skip
    print(f"overview (GET /v1/overview, without JSON encoding) {overview_s * 1000:8.1f} ms   "
          f"target < 2000 ms {'OK' if overview_s < 2 else 'MISSED'}")  # fmt: skip
    print(f"(median of {args.repeat} runs each, counted reads, 2026-03 has a price change)")
    store.close()
    if args.data_dir is None:
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
