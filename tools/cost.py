"""`make cost`: the pipeline's monthly AWS bill, priced from the measured work of a simulated day.

    .venv/bin/python -m tools.cost                     # the bill at 1, 100 and 10,000 transactions per run
    .venv/bin/python -m tools.cost --sample-ticks 288  # every tick of the day run, nothing scaled (slower)

Measured (tools/simulate.py, with the real handler files on moto's S3 server): a sample of the day's
288 ticks at each rate through the generator and the transformer, and the compactor's daily run; every
S3 request by API and prefix, each invocation's CPU time, log bytes and EMF metrics, the objects left
by prefix, the Parquet footers of the files the queries in sql/queries/ read; each handler's INIT CPU.
Read from infra/template.yaml (tools/stack.py): memory, architecture, alarms, dashboard, retention.

Scaled and assumed (printed with the bill, and in docs/cost.md):
- the sampled ticks' requests, CPU, log bytes and stored bytes x 288 / sample; the compactor's from its
  two runs, on the line through them, to a day of 288 files;
- Lambda time = CPU seconds measured here on one core / the function's vCPU share (memory / 1,769 MB),
  rounded up to 1 ms per invocation; time spent waiting on S3 is not in it;
- cold starts (INIT is billed since 2025-08-01): --cold-starts-per-hour for the generator and the
  transformer (default 1), and every compactor run;
- a month is 30 days; month 1 starts from an empty bucket (--month N: N - 1 months of data before);
  raw/ expires after the template's 90 days, logs after 30; logs are stored compressed (gzip's ratio
  on the logs captured here); S3 storage is the bytes held at the end of each day, averaged;
- each sample query runs --queries-per-day times a day (default 1), at noon UTC, over every day of data
  (none filters on year/month/day); with the compactor, every earlier day is one file;
- Athena's own S3 requests, not measurable here, are modelled: one LIST per day partition read, two
  GETs per Parquet file (footer, then columns), one per JSON file, two PUTs per query for its result.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from local.catalog import TableDef, query_files, read_sql, table_defs
from local.lambdas import load_lambda
from tools import athena_scan, bill, metering
from tools import prices as p
from tools.simulate import (
    RAW,
    TICKS_PER_DAY,
    TRANSACTIONS,
    Day,
    measure_init,
    moto_server_process,
    simulate_day,
)
from tools.stack import FUNCTIONS, Stack, read_stack

DAYS_PER_MONTH = 30
HOURS_PER_MONTH = DAYS_PER_MONTH * 24
RATES = (1, 100, 10_000)
ATHENA_RESULT_PUTS = 2  # the result file and its .metadata
Scans = Mapping[str, Sequence[athena_scan.TableScan]]


@dataclass(frozen=True)
class Assumptions:
    month: int = 1
    queries_per_day: int = 1
    cold_starts_per_hour: float = 1.0

    def days(self) -> range:
        """The days of operation (1-based) in the month priced."""
        return range(DAYS_PER_MONTH * (self.month - 1) + 1, DAYS_PER_MONTH * self.month + 1)

    def cold_starts_per_day(self, function: str) -> float:
        if function == "compactor":
            return 1.0
        return min(float(TICKS_PER_DAY), 24 * self.cold_starts_per_hour)


def load_scans(tables: Sequence[TableDef]) -> dict[str, list[athena_scan.TableScan]]:
    return {path.stem: athena_scan.table_scans(read_sql(path), tables, str(path)) for path in query_files()}


def data_days(table: str, t: int, stack: Stack, compactor: bool) -> tuple[float, float]:
    """(compacted days, days of loose files) of a table at noon on day `t` of operation."""
    if table == RAW:
        return 0.0, min(t - 0.5, float(stack.raw_retention_days))
    if table == TRANSACTIONS and compactor:
        return t - 1.0, 0.5
    return 0.0, t - 0.5


def _handler_requests(day: Day, functions: Sequence[str]) -> dict[str, float]:
    """S3 requests a month by price class (tier 1, tier 2, free)."""
    month: dict[str, float] = {metering.TIER1: 0.0, metering.TIER2: 0.0, metering.FREE: 0.0}
    for f in functions:
        for (operation, _), n in day.functions[f].requests.items():
            month[metering.request_class(operation)] += n * DAYS_PER_MONTH
    return month


@dataclass(frozen=True)
class AthenaMonth:
    billed_bytes: float
    queries: int
    gets: float  # Athena's reads of the objects (modelled)
    lists: float  # its LIST of each partition it reads (modelled)


def athena_month(day: Day, stack: Stack, scans: Scans, a: Assumptions, compactor: bool) -> AthenaMonth:
    billed = gets = lists = 0.0
    for t in a.days():
        for query, query_scans in scans.items():
            scanned = 0.0
            for table, loose_bytes in day.athena_per_day[query].items():
                compacted, loose = data_days(table, t, stack, compactor)
                scanned += compacted * day.athena_compacted_per_day[query][table] + loose * loose_bytes
            billed += athena_scan.billed_bytes(int(scanned)) * a.queries_per_day
            for scan in query_scans:
                table = f"{scan.table.database}.{scan.table.name}"
                compacted, loose = data_days(table, t, stack, compactor)
                files = compacted + loose * day.files_per_day[table]
                gets += files * (2 if scan.table.storage == "parquet" else 1) * a.queries_per_day
                lists += math.ceil(compacted + loose) * a.queries_per_day
    return AthenaMonth(billed, len(scans) * a.queries_per_day * len(a.days()), gets, lists)


def storage_gb_months(day: Day, stack: Stack, a: Assumptions, compactor: bool) -> float:
    """S3 Standard GB-months: the bytes held at the end of each day of the month, averaged."""
    total = 0.0
    for t in a.days():
        for prefix, per_day in day.stored_per_day.items():
            if prefix == "raw/":
                total += per_day * min(t, stack.raw_retention_days)
            elif prefix == "processed/" and compactor:
                total += day.compacted_per_day["processed/"] * (t - 1) + per_day  # today's files are loose
            else:
                total += per_day * t
        if compactor:
            total += day.compacted_per_day["compaction/"] * (t - 1)
    return total / len(a.days()) / p.GB


def metric_months(day: Day, functions: Sequence[str]) -> float:
    """Custom metrics are billed by the hour they receive data in: a daily metric is 1/24 of a metric."""
    hours: dict[metering.Metric, int] = {}
    for f in functions:
        for metric in day.functions[f].metrics:
            hours[metric] = max(hours.get(metric, 0), day.functions[f].emit_hours)
    return sum(h * DAYS_PER_MONTH for h in hours.values()) / HOURS_PER_MONTH


def monthly_usage(
    day: Day, stack: Stack, scans: Scans, init_cpu: Mapping[str, float], a: Assumptions, *, compactor: bool
) -> tuple[bill.Usage, AthenaMonth]:
    """The month's usage at this day's rate, with or without the compactor."""
    functions = [f for f in FUNCTIONS if compactor or f != "compactor"]
    requests = _handler_requests(day, functions)
    athena = athena_month(day, stack, scans, a, compactor)
    invocations = gb_s = ephemeral = 0.0
    for f in functions:
        init_ms = metering.billed_ms(init_cpu[f], stack.memory_mb[f]) * a.cold_starts_per_day(f)
        seconds = (day.functions[f].billed_ms + init_ms) / 1000 * DAYS_PER_MONTH
        invocations += day.functions[f].invocations * DAYS_PER_MONTH
        gb_s += seconds * stack.memory_mb[f] / 1024
        ephemeral += seconds * max(0, stack.ephemeral_mb[f] - 512) / 1024
    architectures = {stack.architecture[f] for f in functions}
    if len(architectures) != 1:
        raise ValueError(f"the functions do not share one architecture: {sorted(architectures)}")
    logs_per_day = sum(day.functions[f].log_bytes for f in functions)
    logs_held = sum(logs_per_day * min(t, stack.log_retention_days) for t in a.days()) / len(a.days())
    usage = bill.Usage(
        s3_tier1_requests=requests[metering.TIER1] + athena.lists + athena.queries * ATHENA_RESULT_PUTS,
        s3_tier2_requests=requests[metering.TIER2] + athena.gets,
        s3_delete_requests=requests[metering.FREE],
        s3_gb_months=storage_gb_months(day, stack, a, compactor),
        lambda_requests=invocations,
        lambda_gb_seconds=gb_s,
        lambda_ephemeral_gb_seconds=ephemeral,
        lambda_architecture=architectures.pop(),
        cw_metric_months=metric_months(day, functions),
        cw_alarm_metrics=sum(x.metrics for x in stack.alarms if compactor or x.watches != "compactor"),
        cw_dashboards=stack.dashboards,
        logs_ingested_gb=logs_per_day * DAYS_PER_MONTH / p.GB,
        logs_stored_gb_months=logs_held * day.log_compression / p.GB,
        athena_billed_bytes=athena.billed_bytes,
        # Scheduled events: the generator's ticks and the compactor's daily run (S3 invokes the transformer).
        eventbridge_events=sum(day.functions[f].invocations for f in functions if f != "transformer")
        * DAYS_PER_MONTH,
        glue_objects=stack.glue_objects,
        glue_requests=athena.queries * 2,  # GetDatabase and GetTable per query, about
    )
    return usage, athena


# --- The report ----------------------------------------------------------------------------------------


def usd(x: float) -> str:
    return f"{x:,.2f}" if x >= 0.01 or x == 0 else f"{x:.4f}"


def quantity(x: float) -> str:
    if x == 0:
        return "0"
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """A Markdown table whose first `left` columns are left-aligned and the others right-aligned."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        padded = (
            c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )
        return "| " + " | ".join(padded) + " |"

    rule = (
        "|" + "|".join("-" * (w + 2) if i < left else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|"
    )
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


Bills = Mapping[bool, tuple[bill.Usage, list[bill.Line], list[bill.Line]]]


def rate_table(day: Day, bills: Bills) -> str:
    header = ["line (unit)", "quantity", "USD", "free tier", "w/o compactor", "USD", "free tier"]
    rows = []
    lines = (bills[True][1], bills[True][2], bills[False][1], bills[False][2])
    for full, free, full_without, free_without in zip(*lines, strict=True):
        rows.append(
            [f"{full.service} {full.item} ({full.unit})", quantity(full.quantity), usd(full.usd),
             usd(free.usd), quantity(full_without.quantity), usd(full_without.usd), usd(free_without.usd)]
        )  # fmt: skip
    t = [bill.total(x) for x in lines]
    rows.append(["**total**", "", usd(t[0]), usd(t[1]), "", usd(t[2]), usd(t[3])])
    return markdown_table(header, rows)


def requests_lines(day: Day) -> list[str]:
    out = []
    for function in FUNCTIONS:
        items = sorted(day.functions[function].requests.items(), key=lambda kv: (-kv[1], kv[0]))
        out.append(
            f"  {function:<11} " + ", ".join(f"{op} {prefix} {quantity(n)}" for (op, prefix), n in items)
        )
    return out


def summary_table(results: Sequence[tuple[Day, Bills]]) -> str:
    header = ["per run", "a day", "USD", "free tier", "w/o compactor", "w/o, free tier", "S3 1st-year offer"]
    rows = []
    for day, bills in results:
        t = [bill.total(lines) for c in (True, False) for lines in bills[c][1:]]
        rows.append(
            [f"{day.rate:,}", f"{day.rate * TICKS_PER_DAY:,}", *(usd(x) for x in t),
             "-" + usd(bill.s3_first_year_saving(bills[True][0]))]
        )  # fmt: skip
    return markdown_table(header, rows, left=0)


def athena_table(days: Sequence[Day]) -> str:
    """MB each query reads per day of data held: once compacted / as the transformer's files."""
    header = ["query", *(f"{d.rate:,}/run" for d in days)]
    rows = []
    for query in days[0].athena_per_day:
        cells = []
        for day in days:
            compacted = sum(day.athena_compacted_per_day[query].values()) / p.MB
            loose = sum(day.athena_per_day[query].values()) / p.MB
            cells.append(f"{compacted:.3g} / {loose:.3g}")
        rows.append([query, *cells])
    return markdown_table(header, rows)


def measured_lines(days: Sequence[Day], init_cpu: Mapping[str, float], stack: Stack) -> list[str]:
    out = []
    for day in days:
        per_invocation = ", ".join(
            f"{f} {day.functions[f].cpu_seconds / day.functions[f].invocations * 1000:.1f} ms"
            for f in FUNCTIONS
        )
        runs = " and ".join(f"{files} files ({cpu * 1000:.0f} ms CPU)" for files, cpu in day.compactor_runs)
        logs = sum(f.log_bytes for f in day.functions.values())
        out.append(
            f"- {day.rate:,} per run ({day.seconds:.1f} s): {day.sample} of {TICKS_PER_DAY} ticks run "
            f"(x{day.scale:g}); the compactor on {runs}, extrapolated to {TICKS_PER_DAY} files; CPU per "
            f"invocation: {per_invocation}; log bytes a day {logs:,.0f} "
            f"(gzip ratio {day.log_compression:.2f})"
        )
    out.append(
        "- INIT CPU (imports and the S3 client, in a fresh interpreter): "
        + ", ".join(f"{f} {init_cpu[f] * 1000:.0f} ms" for f in FUNCTIONS)
    )
    out.append(
        f"- from the template: {len(stack.alarms)} alarms ({sum(x.metrics for x in stack.alarms)} alarm "
        f"metrics), {stack.dashboards} dashboard ({stack.dashboard_metrics} metrics), "
        f"{stack.glue_objects} Glue catalog objects"
    )
    return out


def print_report(
    days: Sequence[Day], stack: Stack, scans: Scans, init_cpu: Mapping[str, float], a: Assumptions
) -> None:
    memory = ", ".join(f"{f} {stack.memory_mb[f]} MB" for f in FUNCTIONS)
    print(f"# Monthly AWS bill of the pipeline (us-east-1, on-demand prices of {p.TAKEN})\n")
    print(
        f"Month {a.month} of operation, {DAYS_PER_MONTH} days. Lambda {stack.architecture['transformer']}: "
        f"{memory}; {a.cold_starts_per_hour:g} cold start an hour for the generator and the transformer, "
        f"every compactor run. Each of the {len(scans)} queries in sql/queries/ runs {a.queries_per_day}x "
        "a day."
    )
    results = []
    for day in days:
        bills: dict[bool, tuple[bill.Usage, list[bill.Line], list[bill.Line]]] = {}
        for compactor in (True, False):
            usage, _ = monthly_usage(day, stack, scans, init_cpu, a, compactor=compactor)
            bills[compactor] = (usage, bill.price(usage, free_tier=False), bill.price(usage, free_tier=True))
        results.append((day, bills))
        print(f"\n## {day.rate:,} transactions per run ({day.rate * TICKS_PER_DAY:,} a day): USD a month\n")
        print(rate_table(day, bills))
        print(f"\nS3 requests a day by the handlers (function, API, prefix), x{day.scale:g} from the sample:")
        print("\n".join(requests_lines(day)))
    print("\n## Summary: USD a month, with the compactor unless marked\n")
    print(summary_table(results))
    print("\n## Athena: MB a query reads per day of data (compacted / the transformer's files)\n")
    print(athena_table(days))
    print("\n## Measured, scaled\n")
    print("\n".join(measured_lines(days, init_cpu, stack)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.cost", description=__doc__.splitlines()[0])
    parser.add_argument("--sample-ticks", type=int, default=24, help="ticks run at each rate (2-288; 24)")
    parser.add_argument("--rates", type=int, nargs="+", default=list(RATES), help="per run (1 100 10000)")
    parser.add_argument("--queries-per-day", type=int, default=1, help="runs of each sample query a day (1)")
    parser.add_argument("--month", type=int, default=1, help="month of operation priced (1: from empty)")
    parser.add_argument("--cold-starts-per-hour", type=float, default=1.0, help="generator, transformer (1)")
    parser.add_argument("--seed", type=int, default=42, help="the generator's RANDOM_SEED (42)")
    args = parser.parse_args(argv)
    if not 2 <= args.sample_ticks <= TICKS_PER_DAY:
        parser.error(f"--sample-ticks must be 2 to {TICKS_PER_DAY}, got {args.sample_ticks}")
    if any(not 1 <= r <= 100_000 for r in args.rates):
        parser.error("--rates must each be 1 to 100000 (the generator's limit)")
    if args.month < 1 or args.queries_per_day < 0 or args.cold_starts_per_hour < 0:
        parser.error("--month must be 1 or more; --queries-per-day and --cold-starts-per-hour 0 or more")
    started = time.perf_counter()
    # The handlers log at INFO to the root logger; the meters capture it, the terminal shows warnings.
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING)
    logging.getLogger().addHandler(console)
    stack = read_stack()
    scans = load_scans(table_defs())
    handlers = {f: load_lambda(f) for f in FUNCTIONS}
    with moto_server_process() as endpoint:
        init_cpu = measure_init(endpoint)
        days = [
            simulate_day(
                rate,
                sample=args.sample_ticks,
                endpoint=endpoint,
                stack=stack,
                scans=scans,
                handlers=handlers,
                seed=args.seed,
            )
            for rate in args.rates
        ]
    print_report(
        days, stack, scans, init_cpu, Assumptions(args.month, args.queries_per_day, args.cold_starts_per_hour)
    )
    print(f"\nMade by `make cost` (python -m tools.cost) in {time.perf_counter() - started:.0f} s.")
    return 0


def _entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    _entry()
