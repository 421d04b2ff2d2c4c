"""`make demo`: the whole pipeline on one machine, with the real handlers, then every query in sql/.

1. moto's S3 server starts on 127.0.0.1 (a free port) and the bucket is created;
2. a simulated EventBridge schedule invokes the generator handler with real "Scheduled Event" events,
   every five minutes of the window (by default the last complete UTC day); each object it writes
   raises a real-format S3 ObjectCreated:Put event that invokes the transformer handler; a few
   hand-uploaded files with bad lines show quarantine;
3. replacement: a user fixes one of those files and uploads it again under the same key; its event
   reaches the transformer, which removes the outputs of the old content (its quarantine file, and the
   day partition its rows no longer fall on);
4. replay: tools/replay.py, run in this process against the embedded S3 (--local-endpoint), rebuilds
   one finished day of raw/ and has the compactor compact the days its outputs are in;
5. orphans: a person deletes a raw file, and the tool's orphan step removes its outputs, its rows in a
   compacted day and its state;
6. the bucket is copied to local/out/bucket/, every query in sql/queries/ runs on DuckDB (translated
   from Athena's dialect by sqlglot), results are printed, the reconciliation is checked (the SQL, the
   transformer's own counts from its state objects, and the rows in the table) and the main results are
   drawn as PNG charts in local/out/charts/. The demo exits with status 1 if any check fails.

The compactor runs with COMPACT_AFTER_HOURS=0: once the schedule has run, every file of a simulated day
has arrived. Everything the demo writes is under local/out/ (git-ignored): a run leaves the repository as
it was. The same seed and window give the same data, so the same numbers (a window that ends in the
future has no finished day to replay: that phase is skipped). Each phase is one function, called in
order by run().

Usage: python -m local.demo [--days 1] [--end 2026-11-25T00:00Z] [--transactions-per-run 10] [--seed 42]
"""

# pandas, matplotlib, duckdb, boto3 and moto are imported only once the arguments are parsed, so that
# --help and a usage error answer at once (they take seconds to import).
# ruff: noqa: PLC0415

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import shutil
import sys
import textwrap
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from local.lambdas import handler_environment
from local.pipeline import HandlerError, RunSummary, Window, last_midnight
from local.server import PortError

if TYPE_CHECKING:
    from types import ModuleType

    import pandas as pd
    from mypy_boto3_s3 import S3Client

    from local.bucket import OutputFile, StateTotals

_logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "local" / "out"
BUCKET = "ecommerce-demo-bucket"
REGION = "us-east-1"
MARKER = ".demo-output"  # marks a folder this demo created, so a later run may replace it


class DemoError(RuntimeError):
    """The demo cannot run as asked (unusable folder, port or option); the message says why."""


@dataclass(frozen=True)
class Options:
    window: Window
    transactions_per_run: int
    seed: int
    bad_files: int
    port: int
    out: Path
    charts: Path


@dataclass
class Session:
    """The running pipeline a phase works on: the embedded S3, the handlers and what they reported."""

    options: Options
    s3: S3Client
    endpoint: str
    generator: ModuleType
    transformer: ModuleType
    today: date  # the UTC date now: days before it are over, so the compactor may act on them
    summary: RunSummary = field(default_factory=RunSummary)
    replayed: date | None = None  # the day the replay phase rebuilt
    failures: list[str] = field(default_factory=list)  # checks a phase found false: the demo exits 1


def _end_time(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r} (e.g. 2026-11-25T00:00Z)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def parse_args(argv: Sequence[str] | None, now: datetime | None = None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m local.demo", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--days", type=float, default=1.0, help="length of the window in days, fractions allowed (default 1)"
    )
    parser.add_argument(
        "--end",
        type=_end_time,
        default=None,
        help="end of the window, ISO 8601 UTC (default: the last midnight UTC, so the window is the last "
        "complete UTC day); days the window covers only in part are labelled partial",
    )
    parser.add_argument(
        "--transactions-per-run", type=int, default=10, help="generator TRANSACTIONS_PER_RUN (default 10)"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=42,
        help="generator RANDOM_SEED: the same seed and window give the same data",
    )
    parser.add_argument(
        "--bad-files", type=int, default=3, help="hand-uploaded files with bad lines (default 3)"
    )
    parser.add_argument("--port", type=int, default=0, help="port for the embedded S3 (default: a free one)")
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="output folder, replaced by each run (default local/out)",
    )
    parser.add_argument("--charts", type=Path, help="folder for the PNG charts (default: <out>/charts)")
    args = parser.parse_args(argv)
    if args.days <= 0:
        parser.error(f"--days must be positive, got {args.days}")
    if not 1 <= args.transactions_per_run <= 100_000:
        parser.error(f"--transactions-per-run must be between 1 and 100000, got {args.transactions_per_run}")
    if args.bad_files < 0:
        parser.error(f"--bad-files cannot be negative, got {args.bad_files}")
    end = args.end if args.end is not None else last_midnight(now or datetime.now(UTC))
    try:
        window = Window.ending(end, args.days)
    except ValueError as e:
        parser.error(f"--days: {e}")
    out = args.out.resolve()
    return Options(
        window=window,
        transactions_per_run=args.transactions_per_run,
        seed=args.seed,
        bad_files=args.bad_files,
        port=args.port,
        out=out,
        charts=(args.charts or out / "charts").resolve(),
    )


def prepare_out(out: Path) -> None:
    """Empty `out` for a new run: only a folder this demo made (it holds MARKER) is ever deleted."""
    if out.exists() and not out.is_dir():
        raise DemoError(f"output folder {out} exists and is not a folder; choose another with --out")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise DemoError(
                f"output folder {out} is not empty and was not made by the demo; refusing to delete it. "
                "Empty it, or choose another with --out"
            )
        try:
            shutil.rmtree(out)
        except OSError as e:
            raise DemoError(f"cannot clear the previous run's output in {out}: {e.strerror or e}") from e
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / MARKER).write_text(
            "made by python -m local.demo; deleted and rebuilt by each run\n", encoding="utf-8"
        )
    except OSError as e:
        raise DemoError(
            f"cannot write to output folder {out}: {e.strerror or e}; choose another with --out"
        ) from e


@contextlib.contextmanager
def handler_logs(path: Path) -> Iterator[None]:
    """The handlers' log lines go to a file, as they would go to CloudWatch Logs, not to the terminal."""
    root = logging.getLogger()
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.setLevel(logging.INFO)
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


@contextlib.contextmanager
def embedded_pipeline(options: Options) -> Iterator[Session]:
    """moto's S3 on 127.0.0.1 with the bucket, and the real handlers configured to use it, as on Lambda.

    The handlers' log lines go to <out>/handlers.log (their metric lines: see metric_lines). The
    server stops when the block ends, however it ends.
    """
    import boto3

    from local.lambdas import load_lambda
    from local.server import moto_s3

    generator = load_lambda("generator")
    transformer = load_lambda("transformer")
    with moto_s3(options.port) as endpoint:
        print(f"Embedded S3 (moto) on {endpoint}, bucket {BUCKET}")
        env = {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "demo",
            "AWS_SECRET_ACCESS_KEY": "demo",
            "AWS_DEFAULT_REGION": REGION,
            "AWS_EC2_METADATA_DISABLED": "true",
            "BUCKET_NAME": BUCKET,
            "TRANSACTIONS_PER_RUN": str(options.transactions_per_run),
            "RANDOM_SEED": str(options.seed),
            # Every file of a simulated day has arrived once the schedule has run: the compactor need not
            # wait its usual two hours after midnight (COMPACT_AFTER_HOURS) before it takes a day.
            "COMPACT_AFTER_HOURS": "0",
        }
        with handler_environment(env, [generator, transformer]), handler_logs(options.out / "handlers.log"):
            s3: S3Client = boto3.client("s3", endpoint_url=endpoint, region_name=REGION)
            s3.create_bucket(Bucket=BUCKET)
            yield Session(
                options=options,
                s3=s3,
                endpoint=endpoint,
                generator=generator,
                transformer=transformer,
                today=datetime.now(UTC).date(),
            )
    print("Embedded S3 stopped.")


@contextlib.contextmanager
def metric_lines(options: Options) -> Iterator[None]:
    """While handlers run: their stdout (the EMF metric lines CloudWatch would read) goes to a file."""
    with (
        (options.out / "metrics.jsonl").open("a", encoding="utf-8") as log,
        contextlib.redirect_stdout(log),
    ):
        yield


# --- Phases: each takes the session and prints what it did ------------------------------------------


def simulate_schedule(session: Session) -> None:
    """Phase 1: the generator on every tick of the window, the transformer on every object written."""
    from tqdm import tqdm

    from local.pipeline import run_schedule

    options = session.options
    ticks = options.window.ticks()
    print(
        f"Window: {options.window.describe()}; {len(ticks)} runs every 5 minutes, "
        f"{options.transactions_per_run} transactions per run, seed {options.seed}, "
        f"{options.bad_files} hand-uploaded files with bad lines"
    )
    with (
        tqdm(total=len(ticks), unit="tick", desc="pipeline", file=sys.stderr) as bar,
        metric_lines(options),
    ):

        def progress(summary: RunSummary) -> None:
            bar.update(1)
            bar.set_postfix(rows=summary.rows_written, quarantined=summary.quarantined, refresh=False)

        session.summary = run_schedule(
            session.s3,
            BUCKET,
            session.generator,
            session.transformer,
            ticks,
            bad_files=options.bad_files,
            seed=options.seed,
            on_tick=progress,
        )
    summary = session.summary
    print(
        f"Handlers: {summary.raw_files} raw files, {summary.records_read} records read, "
        f"{summary.rows_written} rows written, {summary.quarantined} quarantined"
    )


def _show_files(files: Sequence[OutputFile], indent: str = "    ") -> None:
    width = max((len(f.key) for f in files), default=0)
    for f in files:
        print(f"{indent}{f.line(width)}")
    if not files:
        print(f"{indent}(none)")


def replace_a_file(session: Session) -> None:
    """Phase 2: a user fixes a hand-uploaded file and uploads it again under the same key; its S3 event
    reaches the transformer as every other did, and the outputs of the old content are gone."""
    from local.bucket import exists, outputs_named, state_counts
    from local.pipeline import FIX_DESCRIPTION, invoke, s3_event_for

    summary = session.summary
    if not summary.bad_files:
        print("\nReplacement: no hand-uploaded file to fix (--bad-files 0), skipped")
        return
    s3, key = session.s3, summary.bad_files[0]
    name = session.transformer.output_name(key)
    print(f"\nReplacement: a user fixes {key} and uploads it again under the same key")
    print(textwrap.fill(FIX_DESCRIPTION, 110, initial_indent="  the fix: ", subsequent_indent="    "))
    before = outputs_named(s3, BUCKET, name)
    read, written, quarantined = state_counts(s3, BUCKET, key) or (0, 0, 0)
    print(f"  before: {read} records read, {written} rows written, {quarantined} quarantined")
    _show_files(before)
    s3.put_object(Bucket=BUCKET, Key=key, Body=summary.fixed[key])
    with metric_lines(session.options):
        result = invoke(
            session.transformer,
            "transformer",
            s3_event_for(s3, BUCKET, key, session.options.window.end),
            f"{key} (fixed)",
        )
    if len(result["processed"]) != 1:
        session.failures.append(f"the transformer did not process the fixed {key}: {result}")
        return
    done = result["processed"][0]
    after = outputs_named(s3, BUCKET, name)
    print(
        f"  after (ObjectCreated:Put -> transformer): {done['records_read']} records read, "
        f"{done['rows_written']} rows written, {done['quarantined']} quarantined"
    )
    _show_files(after)
    if {f.key for f in after} != set(done["outputs"]):
        session.failures.append(
            f"S3 holds {[f.key for f in after]} for {key}, not its outputs {done['outputs']}"
        )
    stale = sorted({f.key for f in before} - set(done["outputs"]))
    print(f"  stale outputs of the old content, deleted by the transformer ({len(stale)}):")
    for stale_key in stale:
        there = exists(s3, BUCKET, stale_key)
        print(f"    {stale_key}: {'STILL IN S3' if there else 'gone from S3'}")
        if there:
            session.failures.append(f"stale output {stale_key} of the replaced {key} is still in S3")


def replay_day(window: Window, today: date) -> date | None:
    """The day the replay phase rebuilds: the window's last complete day that is over (UTC), else its last
    day that is over; None when no day of the window is over yet (a window ending in the future)."""
    over = [d for d in window.dates() if d < today]
    complete = [d for d in over if d in window.complete_dates()]
    return max(complete or over, default=None)


def run_tool(session: Session, argv: list[str]) -> None:
    """Run tools/replay.py in this process, as a user would against the embedded S3; print its output."""
    import shlex

    from tools import replay

    command = ["python", "-m", "tools.replay", *argv, "--local-endpoint", session.endpoint]
    print(f"  $ {shlex.join(command)}")
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        code = replay.main([*argv, "--local-endpoint", session.endpoint])
    for line in captured.getvalue().splitlines():
        print(f"    {line}")
    if code != 0:
        session.failures.append(f"python -m tools.replay {argv[0]} exited with status {code}")


def replay_a_day(session: Session) -> None:
    """Phase 3: tools/replay.py rebuilds one finished day of raw/ (the transformer on each of its files,
    with "force") and has the compactor compact it."""
    from local.bucket import day_files, raw_keys

    day = replay_day(session.options.window, session.today)
    if day is None:
        print(f"\nReplay: no day of the window is over yet (today is {session.today} UTC), skipped")
        return
    session.replayed = day
    print(
        f"\nReplay: rebuild {day} from raw/ ({len(raw_keys(session.s3, BUCKET, day))} files) with the replay "
        "tool, which then compacts the days the rebuilt outputs are in"
    )
    run_tool(session, ["rebuild", "--bucket", BUCKET, "--day", day.isoformat(), "--rate", "1000"])
    files = day_files(session.s3, BUCKET, day)
    print(f"  processed/ for {day} now holds:")
    _show_files(files)
    loose = [f.key for f in files if not f.key.rsplit("/", 1)[-1].startswith("compacted-")]
    if loose or not files:
        session.failures.append(f"{day} was not compacted: {len(loose)} loose files, {len(files)} in all")


def orphan_to_make(session: Session) -> str | None:
    """The raw file the orphan phase deletes: the second hand upload, else the replayed day's first file."""
    from local.bucket import raw_keys

    bad = session.summary.bad_files
    if len(bad) > 1:
        return bad[1]
    keys = [k for k in raw_keys(session.s3, BUCKET, session.replayed) if k not in bad]
    return keys[0] if keys else None


def remove_an_orphan(session: Session) -> None:
    """Phase 4: a person deletes a raw file; tools/replay.py's orphan step removes what came of it (its
    outputs, its rows in a compacted day, its state) and has the compactor take the days it marked."""
    from local.bucket import compacted_file, compacted_rows_of, listed_outputs, outputs_named, state_counts
    from tools.replay_aws import day_of

    s3, key = session.s3, orphan_to_make(session)
    if key is None:
        print("\nOrphans: no raw file to delete, skipped")
        return
    name = session.transformer.output_name(key)
    read, written, quarantined = state_counts(s3, BUCKET, key) or (0, 0, 0)
    print(
        f"\nOrphans: a person deletes {key} ({read} records: {written} rows written, {quarantined} "
        "quarantined); its outputs and its state are left without a source"
    )
    present = {f.key: f for f in outputs_named(s3, BUCKET, name)}
    listed = listed_outputs(s3, BUCKET, key)
    compacted = sorted({d for k in listed if k not in present and (d := day_of(k)) is not None})
    width = max((len(k) for k in listed), default=0)
    print("  before: its outputs, as its state lists them")
    for output in listed:
        found = present.get(output)
        day = day_of(output)
        if found is not None:
            print(f"    {found.line(width)}")
        elif day is not None and (rows := compacted_rows_of(s3, BUCKET, day, key)) is not None:
            where = compacted_file(day).rsplit("/", 1)[-1]
            print(f"    {output:<{width}}  {rows:>5} rows, merged into {where} (per its manifest)")
        else:
            print(f"    {output:<{width}}  not in S3")
    s3.delete_object(Bucket=BUCKET, Key=key)
    run_tool(session, ["orphans", "--bucket", BUCKET, "--yes"])
    left = outputs_named(s3, BUCKET, name)
    state = state_counts(s3, BUCKET, key)
    rows_left = {day: compacted_rows_of(s3, BUCKET, day, key) for day in compacted}
    print(
        f"  after: {len(left)} outputs named {name} in S3, {'a state' if state else 'no state'} for it"
        + "".join(
            f", {rows} of its rows in {compacted_file(day).rsplit('/', 1)[-1]}"
            for day, rows in rows_left.items()
        )
    )
    if left or state or any(rows_left.values()):
        session.failures.append(f"the orphan step left outputs, rows or the state of the deleted {key}")


def copy_bucket(session: Session) -> None:
    """Last phase with the server up: the bucket as files under <out>/bucket/, for the queries."""
    from local.pipeline import download_bucket

    dest = session.options.out / "bucket"
    objects = download_bucket(session.s3, BUCKET, dest)
    print(f"\n{objects} objects copied to {dest}")


# --- After the server has stopped -------------------------------------------------------------------


def question(path: Path) -> str:
    """The question a query answers: its opening comment, up to the question mark."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("--"):
            break
        lines.append(line.removeprefix("--").strip())
    text = " ".join(lines)
    end = text.find("?")
    return text[: end + 1] if end >= 0 else text or path.stem


def show(frame: pd.DataFrame, window: Window) -> str:
    """The result as a text table; a row of a day the window covers only in part says so."""
    import pandas as pd

    if frame.empty:
        return "  (no rows)"
    if {"year", "month", "day"} <= set(frame.columns):
        complete = window.complete_dates()
        days = [
            date(int(y), int(m), int(d))
            for y, m, d in zip(frame["year"], frame["month"], frame["day"], strict=True)
        ]
        frame = frame.assign(window=["" if d in complete else "partial day" for d in days])
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.max_colwidth", 40):
        return "\n".join("  " + line for line in frame.to_string(index=False).splitlines())


def run_queries(options: Options) -> tuple[dict[str, pd.DataFrame], int]:
    """Every sql/queries/ file on DuckDB over the bucket copy, printed and saved as CSV; and the number of
    rows in the processed table."""
    from local import catalog

    con = catalog.connect(options.out / "bucket", BUCKET)
    results_dir = options.out / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, pd.DataFrame] = {}
    for path in catalog.query_files():
        frame = catalog.run_query(con, path)
        results[path.stem] = frame
        frame.to_csv(results_dir / f"{path.stem}.csv", index=False)
        print(f"\n== sql/queries/{path.name}\n   {question(path)}\n{show(frame, options.window)}")
    row = con.execute("SELECT COUNT(*) FROM ecommerce_db.transactions").fetchone()
    return results, int(row[0]) if row else 0


def report_reconciliation(totals: StateTotals, results: dict[str, pd.DataFrame], table_rows: int) -> bool:
    """Print the three checks; True when every one holds.

    The SQL counts from the raw side (each raw line is a row or a quarantined line); the transformer's own
    counts are those of each raw key's committed content, from its state object; the table must hold
    exactly the rows written, so that no row of a replaced or deleted file's content is left.
    """
    frame = results["dq_reconciliation_by_day"]
    raw = int(frame["raw_records"].sum())
    processed = int(frame["processed_rows"].sum())
    quarantined = int(frame["quarantined_records"].sum())
    ok = bool((frame["status"] == "OK").all()) and raw == processed + quarantined
    print(
        f"\nReconciliation (SQL): raw records {raw} = processed rows {processed} "
        f"+ quarantined {quarantined}: "
        f"{'OK' if ok else 'MISMATCH'}"
    )
    handlers_ok = (
        not totals.problems
        and totals.states == totals.raw_files
        and (totals.records_read, totals.rows_written, totals.quarantined) == (raw, processed, quarantined)
        and totals.records_read == totals.rows_written + totals.quarantined
    )
    print(
        f"Reconciliation (handlers' own counts, from the transformer's state of each of {totals.states} raw "
        "files): "
        f"read {totals.records_read} = written {totals.rows_written} + quarantined {totals.quarantined}: "
        f"{'OK' if handlers_ok else 'MISMATCH'}"
    )
    for problem in totals.problems[:10]:
        print(f"  {problem}")
    table_ok = table_rows == totals.rows_written
    print(
        f"Processed table: {table_rows} rows = {totals.rows_written} rows written, each once: "
        f"{'OK' if table_ok else 'MISMATCH'}"
    )
    return ok and handlers_ok and table_ok


def write_charts(options: Options, results: dict[str, pd.DataFrame]) -> list[Path]:
    from local import charts

    context = charts.ChartContext(
        subtitle=(
            f"{options.window.describe()}\nlocal demo: {options.transactions_per_run} transactions every "
            f"5 minutes, seed {options.seed}"
        ),
        currency=charts.currency(),
        complete_days=frozenset(options.window.complete_dates()),
    )
    written = []
    try:
        for stem, (draw, name) in charts.CHARTS.items():
            frame = results.get(stem)
            if frame is not None and not frame.empty:
                written.append(draw(frame, options.charts / name, context))
    except OSError as e:
        raise DemoError(
            f"cannot write charts to {options.charts}: {e.strerror or e}; choose another with --charts"
        ) from e
    return written


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def run(options: Options) -> int:
    from local.bucket import state_totals

    started = time.perf_counter()
    prepare_out(options.out)
    with embedded_pipeline(options) as session:
        simulate_schedule(session)
        replace_a_file(session)
        replay_a_day(session)
        remove_an_orphan(session)
        copy_bucket(session)
    results, table_rows = run_queries(options)
    ok = report_reconciliation(state_totals(options.out / "bucket"), results, table_rows)
    written = write_charts(options, results)
    print(f"\nCharts: {', '.join(_shown(p) for p in written)}")
    print(
        f"Results as CSV in {_shown(options.out / 'results')}; the handlers' logs and EMF metric lines in "
        f"{_shown(options.out / 'handlers.log')} and {_shown(options.out / 'metrics.jsonl')}"
    )
    for failure in session.failures:
        print(f"FAILED: {failure}")
    print(f"Done in {time.perf_counter() - started:.1f} s.")
    return 0 if ok and not session.failures else 1


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    # The terminal shows warnings and errors only: the handlers set the root logger to INFO when imported.
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING)
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(console)
    try:
        return run(options)
    except (DemoError, PortError) as e:
        print(f"demo: {e}", file=sys.stderr)
        return 2
    except HandlerError as e:
        print(
            f"demo: {e}\n(the handler's log, with the traceback, is in {options.out / 'handlers.log'}; "
            "the embedded S3 has been stopped)",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print("\ndemo: interrupted; the embedded S3 has been stopped.", file=sys.stderr)
        return 130
    finally:
        logging.getLogger().removeHandler(console)


def _entry(argv: Any = None) -> None:
    sys.exit(main(argv))


if __name__ == "__main__":
    _entry()
