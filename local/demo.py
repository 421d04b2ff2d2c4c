"""`make demo`: the whole pipeline on one machine, with the real handlers, then every query in sql/.

1. moto's S3 server starts on 127.0.0.1 (a free port) and the bucket is created;
2. a simulated EventBridge schedule invokes the generator handler with real "Scheduled Event" events,
   every five minutes of simulated time; each object it writes raises a real-format S3 ObjectCreated:Put
   event that invokes the transformer handler; a few hand-uploaded files with bad lines show quarantine;
3. the bucket is copied to local/out/bucket/, every query in sql/queries/ runs on DuckDB (translated
   from Athena's dialect by sqlglot), results are printed, the reconciliation is checked and the main
   results are drawn as PNG charts in images/.

Usage: python -m local.demo [--days 1] [--transactions-per-run 10] [--seed 42] [--end 2026-11-25T00:00Z]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import pandas as pd
from tqdm import tqdm

from local import catalog, charts
from local.lambdas import load_lambda
from local.pipeline import HandlerError, RunSummary, download_bucket, run_schedule, schedule
from local.server import PortError, moto_s3

if TYPE_CHECKING:
    from types import ModuleType

    from mypy_boto3_s3 import S3Client

_logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "local" / "out"
DEFAULT_IMAGES = ROOT / "images"
BUCKET = "ecommerce-demo-bucket"
REGION = "us-east-1"
MARKER = ".demo-output"  # marks a folder this demo created, so a later run may replace it


class DemoError(RuntimeError):
    """The demo cannot run as asked (unusable folder, port or option); the message says why."""


@dataclass(frozen=True)
class Options:
    days: float
    transactions_per_run: int
    seed: int
    end: datetime
    bad_files: int
    port: int
    out: Path
    images: Path


def _end_time(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r} (e.g. 2026-11-25T00:00Z)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m local.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=float, default=1.0, help="simulated days of schedule (default 1)")
    parser.add_argument(
        "--transactions-per-run", type=int, default=10, help="generator TRANSACTIONS_PER_RUN (default 10)"
    )
    parser.add_argument("--seed", type=int, default=42, help="generator RANDOM_SEED (default 42)")
    parser.add_argument(
        "--end",
        type=_end_time,
        default=datetime.now(UTC),
        help="last tick of the schedule, ISO 8601 UTC (default: now); with --seed, a fixed --end "
        "reproduces the same data",
    )
    parser.add_argument(
        "--bad-files", type=int, default=3, help="hand-uploaded files with bad lines (default 3)"
    )
    parser.add_argument("--port", type=int, default=0, help="port for the embedded S3 (default: a free one)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default local/out)")
    parser.add_argument(
        "--images", type=Path, default=DEFAULT_IMAGES, help="folder for the charts (default images)"
    )
    args = parser.parse_args(argv)
    if args.days <= 0:
        parser.error(f"--days must be positive, got {args.days}")
    if not 1 <= args.transactions_per_run <= 100_000:
        parser.error(f"--transactions-per-run must be between 1 and 100000, got {args.transactions_per_run}")
    if args.bad_files < 0:
        parser.error(f"--bad-files cannot be negative, got {args.bad_files}")
    return Options(
        days=args.days,
        transactions_per_run=args.transactions_per_run,
        seed=args.seed,
        end=args.end,
        bad_files=args.bad_files,
        port=args.port,
        out=args.out.resolve(),
        images=args.images.resolve(),
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
def handler_environment(values: dict[str, str], handlers: Sequence[ModuleType]) -> Iterator[None]:
    """Set the handlers' environment (as Lambda would), and put the previous one back afterwards."""
    removed = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")
    saved = {k: os.environ.get(k) for k in (*values, *removed)}
    for key in removed:
        os.environ.pop(key, None)
    os.environ.update(values)
    for handler in handlers:
        handler.s3_client.cache_clear()  # a client made earlier points elsewhere
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        for handler in handlers:
            handler.s3_client.cache_clear()


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


def show(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "  (no rows)"
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.max_colwidth", 40):
        return "\n".join("  " + line for line in frame.to_string(index=False).splitlines())


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


def run_pipeline(options: Options, endpoint: str, metrics_log: Path) -> RunSummary:
    generator = load_lambda("generator")
    transformer = load_lambda("transformer")
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "demo",
        "AWS_SECRET_ACCESS_KEY": "demo",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
        "BUCKET_NAME": BUCKET,
        "TRANSACTIONS_PER_RUN": str(options.transactions_per_run),
        "RANDOM_SEED": str(options.seed),
    }
    ticks = schedule(options.end, options.days)
    with handler_environment(env, [generator, transformer]):
        s3: S3Client = boto3.client("s3", endpoint_url=endpoint, region_name=REGION)
        s3.create_bucket(Bucket=BUCKET)
        first, last = ticks[0], ticks[-1]
        print(
            f"Schedule: {len(ticks)} ticks every 5 minutes, "
            f"{first:%Y-%m-%d %H:%M} to {last:%Y-%m-%d %H:%M} UTC; "
            f"{options.transactions_per_run} transactions per run, seed {options.seed}, "
            f"{options.bad_files} hand-uploaded files with bad lines"
        )
        with (
            tqdm(total=len(ticks), unit="tick", desc="pipeline", file=sys.stderr) as bar,
            metrics_log.open("w", encoding="utf-8") as log,
            handler_logs(options.out / "handlers.log"),
            contextlib.redirect_stdout(log),  # the handlers' EMF metric lines, kept in a file
        ):

            def progress(summary: RunSummary) -> None:
                bar.update(1)
                bar.set_postfix(rows=summary.rows_written, quarantined=summary.quarantined, refresh=False)

            summary = run_schedule(
                s3,
                BUCKET,
                generator,
                transformer,
                ticks,
                bad_files=options.bad_files,
                seed=options.seed,
                on_tick=progress,
            )
        objects = download_bucket(s3, BUCKET, options.out / "bucket")
    print(
        f"Handlers: {summary.raw_files} raw files, {summary.records_read} records read, "
        f"{summary.rows_written} rows written, {summary.quarantined} quarantined; "
        f"{objects} objects copied to {options.out / 'bucket'}"
    )
    return summary


def run_queries(options: Options) -> dict[str, pd.DataFrame]:
    con = catalog.connect(options.out / "bucket", BUCKET)
    results_dir = options.out / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, pd.DataFrame] = {}
    for path in catalog.query_files():
        frame = catalog.run_query(con, path)
        results[path.stem] = frame
        frame.to_csv(results_dir / f"{path.stem}.csv", index=False)
        print(f"\n== sql/queries/{path.name}\n   {question(path)}\n{show(frame)}")
    return results


def report_reconciliation(summary: RunSummary, results: dict[str, pd.DataFrame]) -> bool:
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
    handlers_ok = summary.records_read == summary.rows_written + summary.quarantined == raw
    print(
        f"Reconciliation (handlers' own counts): read {summary.records_read} "
        f"= written {summary.rows_written} "
        f"+ quarantined {summary.quarantined}: {'OK' if handlers_ok else 'MISMATCH'}"
    )
    return ok and handlers_ok


def write_charts(options: Options, results: dict[str, pd.DataFrame]) -> list[Path]:
    subtitle = (
        f"local demo: {options.days:g} day(s) of 5-minute runs, {options.transactions_per_run} transactions "
        f"per run, seed {options.seed}"
    )
    written = []
    for stem, (draw, name) in charts.CHARTS.items():
        frame = results.get(stem)
        if frame is not None and not frame.empty:
            written.append(draw(frame, options.images / name, subtitle))
    return written


def run(options: Options) -> int:
    started = time.perf_counter()
    prepare_out(options.out)
    with moto_s3(options.port) as endpoint:
        print(f"Embedded S3 (moto) on {endpoint}, bucket {BUCKET}")
        summary = run_pipeline(options, endpoint, options.out / "metrics.jsonl")
    print("Embedded S3 stopped.")
    results = run_queries(options)
    ok = report_reconciliation(summary, results)
    try:
        written = write_charts(options, results)
    except OSError as e:
        raise DemoError(
            f"cannot write charts to {options.images}: {e.strerror or e}; choose another with --images"
        ) from e
    rel = [str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p) for p in written]
    print(f"\nCharts: {', '.join(rel)}")
    print(
        f"Results as CSV in {options.out / 'results'}; the handlers' logs and EMF metric lines in "
        f"{options.out / 'handlers.log'} and {options.out / 'metrics.jsonl'}"
    )
    print(f"Done in {time.perf_counter() - started:.1f} s.")
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    # The terminal shows warnings and errors only: the handlers set the root logger to INFO when imported.
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING)
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(console)
    options = parse_args(argv)
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


def _entry(argv: Any = None) -> None:
    sys.exit(main(argv))


if __name__ == "__main__":
    _entry()
