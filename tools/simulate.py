"""One simulated day of the pipeline for `make cost`: the real handlers on moto's S3, metered.

For each rate, a sample of the day's 288 five-minute ticks, spread evenly over the day, runs through the
generator (on the tick's scheduled event) and the transformer (on the S3 event of the object written);
every S3 request, the CPU time, the log lines and EMF metrics of each invocation are recorded
(tools/metering.py), and what they leave in the bucket is listed by prefix. The compactor then runs as its
schedule runs it, twice: on the next day at 03:00 UTC for the partition of the sampled transformer files,
and a day earlier for a partition of a quarter as many (copies of the same files). Its requests, CPU
and output grow linearly with a day's files, so the line through the two runs gives a day of 288 files
(with every tick run, the second run is that day). moto's server runs in its own process, so that its
work is not counted as the handlers' CPU.
"""

from __future__ import annotations

import contextlib
import gzip
import math
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from types import ModuleType
from typing import TYPE_CHECKING, Any

import boto3

from local.events import s3_put_event, scheduled_event
from local.lambdas import handler_environment
from tools import athena_scan, metering
from tools.stack import FUNCTIONS, ROOT, Stack

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

HOST = "127.0.0.1"
REGION = "us-east-1"
TICKS_PER_DAY = 288
TICK = timedelta(minutes=5)
PARTITION_KEYS = ("year", "month", "day")
TRANSACTIONS = "ecommerce_db.transactions"
RAW = "ecommerce_db.raw_transactions"
QUARANTINE = "ecommerce_db.quarantine"


class SimulationError(RuntimeError):
    """The simulated day could not run (the S3 server did not start, a handler failed)."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def moto_server_process() -> Iterator[str]:
    """moto's S3 server in its own process (so its CPU is not counted as the handlers'); yields the URL."""
    port = _free_port()
    server = subprocess.Popen(  # noqa: S603 - our own interpreter running moto's module
        [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                if s.connect_ex((HOST, port)) == 0:
                    break
            if server.poll() is not None or time.monotonic() > deadline:
                raise SimulationError(f"moto's S3 server did not start on {endpoint}")
            time.sleep(0.05)
        yield endpoint
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()


def _aws_environment(endpoint: str) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "cost",
        "AWS_SECRET_ACCESS_KEY": "cost",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
    }


@contextlib.contextmanager
def counted_clients(counter: metering.S3RequestCounter, handlers: Sequence[ModuleType]) -> Iterator[None]:
    """Every boto3.client() the handlers create comes from a session the counter is attached to."""
    previous = boto3.DEFAULT_SESSION
    session = boto3.session.Session()
    counter.attach(session.events)
    boto3.DEFAULT_SESSION = session
    for handler in handlers:
        handler.s3_client.cache_clear()
    try:
        yield
    finally:
        boto3.DEFAULT_SESSION = previous
        for handler in handlers:
            handler.s3_client.cache_clear()


def uncounted_client(endpoint: str) -> S3Client:
    """A client of the tool's own (setting up, reading back), from a session no counter is attached to."""
    credentials = _aws_environment(endpoint)  # moto's fake credentials
    client: S3Client = boto3.session.Session(
        aws_access_key_id=credentials["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=credentials["AWS_SECRET_ACCESS_KEY"],
        region_name=REGION,
    ).client("s3", endpoint_url=endpoint)
    return client


_INIT_SCRIPT = """
import sys, time
sys.path.insert(0, sys.argv[2])
started = time.process_time()
from local.lambdas import load_lambda
handler = load_lambda(sys.argv[1])
handler.s3_client()
print(time.process_time() - started)
"""


def measure_init(endpoint: str) -> dict[str, float]:
    """CPU seconds of each handler's INIT phase (imports, client creation), each in a fresh interpreter."""
    env = {**os.environ, **_aws_environment(endpoint)}
    children = {
        f: subprocess.Popen(  # noqa: S603 - our own interpreter and script
            [sys.executable, "-c", _INIT_SCRIPT, f, str(ROOT)], stdout=subprocess.PIPE, env=env, text=True
        )
        for f in FUNCTIONS
    }
    result = {}
    for function, child in children.items():
        out, _ = child.communicate(timeout=120)
        if child.returncode != 0:
            raise SimulationError(
                f"the {function} handler's INIT could not be measured (exit {child.returncode})"
            )
        result[function] = float(out.strip().splitlines()[-1])
    return result


# --- One simulated day ---------------------------------------------------------------------------------


@dataclass
class FunctionDay:
    """One function's work over a day, scaled from what was measured."""

    invocations: int = 0
    billed_ms: float = 0.0
    cpu_seconds: float = 0.0
    log_bytes: float = 0.0
    metrics: set[metering.Metric] = field(default_factory=set)
    emit_hours: int = 0  # distinct hours of the day in which it sends its metrics
    requests: dict[tuple[str, str], float] = field(default_factory=dict)  # (operation, prefix) -> a day


@dataclass
class Day:
    """A day at one rate, as measured and scaled."""

    rate: int
    sample: int
    functions: dict[str, FunctionDay]
    stored_per_day: dict[str, float]  # prefix -> bytes a day adds, without the compactor
    compacted_per_day: dict[str, float]  # processed/, compaction/ -> bytes a compacted day holds
    athena_per_day: dict[str, dict[str, float]]  # query -> table -> bytes read per day of data
    athena_compacted_per_day: dict[str, dict[str, float]]  # the same once the day is compacted
    files_per_day: dict[str, float]  # table -> objects a day adds
    log_compression: float  # gzip's ratio on the day's log lines
    compactor_runs: tuple[tuple[int, float], ...]  # (files, CPU seconds) of each measured run
    seconds: float  # wall time the simulation took

    @property
    def scale(self) -> float:
        return TICKS_PER_DAY / self.sample


def sample_ticks(day: date, sample: int) -> list[datetime]:
    """`sample` of the day's ticks (00:05 ... 24:00 UTC), evenly spread."""
    if not 2 <= sample <= TICKS_PER_DAY:
        raise ValueError(f"the sample must be 2 to {TICKS_PER_DAY} ticks, got {sample}")
    start = datetime(day.year, day.month, day.day, tzinfo=UTC) + TICK
    step = TICKS_PER_DAY / sample
    return [start + TICK * math.floor(i * step) for i in range(sample)]


def partition(day: date) -> str:
    return f"processed/transactions/year={day:%Y}/month={day:%m}/day={day:%d}/"


def extrapolate(small: float, sampled: float, small_files: int, sampled_files: int) -> float:
    """The value for a day of 288 files, on the line through two runs over fewer files.

    Never less than the larger run's: noise in a measured time can tilt the line the wrong way.
    """
    if sampled_files == TICKS_PER_DAY:
        return sampled
    if sampled_files == small_files:
        raise ValueError("two runs over the same number of files give no line")
    slope = (sampled - small) / (sampled_files - small_files)
    return max(sampled, sampled + slope * (TICKS_PER_DAY - sampled_files))


def _list(s3: S3Client, bucket: str) -> list[tuple[str, int]]:
    found: list[tuple[str, int]] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        found.extend((item["Key"], int(item["Size"])) for item in page.get("Contents", []))
    return found


def _invoke(
    handler: ModuleType, label: str, event: dict[str, Any], counter: metering.S3RequestCounter
) -> tuple[dict[str, Any], metering.Invocation]:
    with counter.labelled(label), metering.metered(label) as invocation:
        try:
            result: dict[str, Any] = handler.lambda_handler(event, None)
        except Exception as e:
            raise SimulationError(f"the {label} handler failed: {type(e).__name__}: {e}") from e
    return result, invocation


def _record(day: FunctionDay, invocation: metering.Invocation, memory_mb: int, weight: float) -> None:
    day.billed_ms += metering.billed_ms(invocation.cpu_seconds, memory_mb) * weight
    day.cpu_seconds += invocation.cpu_seconds * weight
    day.log_bytes += invocation.log_bytes * weight
    for line in invocation.log_lines:
        day.metrics |= metering.emf_metrics(line)


def parquet_files(
    s3: S3Client, bucket: str, objects: Sequence[tuple[str, int]]
) -> list[athena_scan.DataFile]:
    """DataFiles of Parquet objects, from the last MiB of each (footer included)."""
    files = []
    for key, size in objects:
        tail = s3.get_object(Bucket=bucket, Key=key, Range=f"bytes=-{min(size, 1 << 20)}")["Body"].read()
        files.append(athena_scan.parquet_file(key, PARTITION_KEYS, size, tail))
    return files


def per_query(
    scans: Mapping[str, Sequence[athena_scan.TableScan]],
    files: Mapping[str, Sequence[athena_scan.DataFile]],
    weight: Mapping[str, float],
) -> dict[str, dict[str, float]]:
    """query -> table -> bytes the query reads of `files` (times the table's weight)."""
    result: dict[str, dict[str, float]] = {}
    for query, scans_of_query in scans.items():
        result[query] = {}
        for table, table_files in files.items():
            mine = [s for s in scans_of_query if f"{s.table.database}.{s.table.name}" == table]
            result[query][table] = athena_scan.bytes_scanned(mine, {table: table_files}) * weight.get(
                table, 1.0
            )
    return result


@dataclass
class _Run:
    """What the handlers did in the bucket during one rate's simulation."""

    bucket: str
    today: date
    counter: metering.S3RequestCounter = field(default_factory=metering.S3RequestCounter)
    logs: list[str] = field(default_factory=list)
    after_ticks: list[tuple[str, int]] = field(default_factory=list)
    loose_files: list[athena_scan.DataFile] = field(default_factory=list)
    compactor_runs: list[tuple[int, metering.Invocation]] = field(default_factory=list)
    after_compaction: list[tuple[str, int]] = field(default_factory=list)


def _run_ticks(
    run: _Run, setup: S3Client, handlers: Mapping[str, ModuleType], stack: Stack, sample: int
) -> dict[str, FunctionDay]:
    functions = {f: FunctionDay() for f in FUNCTIONS}
    scale = TICKS_PER_DAY / sample
    for tick in sample_ticks(run.today, sample):
        generated, inv = _invoke(handlers["generator"], "generator", scheduled_event(tick), run.counter)
        _record(functions["generator"], inv, stack.memory_mb["generator"], scale)
        run.logs.extend(inv.log_lines)
        key = str(generated["key"])
        head = setup.head_object(Bucket=run.bucket, Key=key)
        event = s3_put_event(
            run.bucket, key=key, size=int(head["ContentLength"]), etag=head["ETag"],
            sequencer=f"{int(tick.timestamp() * 1e6):016X}", event_time=tick,
        )  # fmt: skip
        _, inv = _invoke(handlers["transformer"], "transformer", event, run.counter)
        _record(functions["transformer"], inv, stack.memory_mb["transformer"], scale)
        run.logs.extend(inv.log_lines)
    for function in ("generator", "transformer"):
        functions[function].invocations = TICKS_PER_DAY
        functions[function].emit_hours = 24
        for op_prefix, n in run.counter.by("operation", "prefix", function=function).items():
            functions[function].requests[op_prefix] = n * scale
    return functions


def _run_compactor(run: _Run, setup: S3Client, compactor: ModuleType) -> None:
    """The daily run for today's sampled files, and a day earlier for a quarter as many (copies)."""
    loose = [(k, s) for k, s in run.after_ticks if k.startswith(partition(run.today))]
    yesterday = run.today - timedelta(days=1)
    small = max(1, len(loose) // 4)
    for source, _ in loose[:small]:
        copy = partition(yesterday) + source.rsplit("/", 1)[-1]
        setup.copy_object(Bucket=run.bucket, Key=copy, CopySource={"Bucket": run.bucket, "Key": source})
    for label, day, files in (("compactor-small", yesterday, small), ("compactor", run.today, len(loose))):
        run_at = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1, hours=3)
        _, inv = _invoke(compactor, label, scheduled_event(run_at), run.counter)
        run.compactor_runs.append((files, inv))
        run.logs.extend(inv.log_lines)


def _compactor_day(run: _Run, memory_mb: int) -> FunctionDay:
    (small, small_inv), (files, inv) = run.compactor_runs
    day = FunctionDay(invocations=1, emit_hours=1)
    small_requests = run.counter.by("operation", "prefix", function="compactor-small")
    for op_prefix, n in run.counter.by("operation", "prefix", function="compactor").items():
        day.requests[op_prefix] = extrapolate(small_requests.get(op_prefix, 0), n, small, files)
    day.cpu_seconds = extrapolate(small_inv.cpu_seconds, inv.cpu_seconds, small, files)
    day.billed_ms = metering.billed_ms(day.cpu_seconds, memory_mb)
    day.log_bytes = extrapolate(small_inv.log_bytes, inv.log_bytes, small, files)
    for line in inv.log_lines:
        day.metrics |= metering.emf_metrics(line)
    return day


def _compacted_bytes(run: _Run) -> dict[str, float]:
    (small, _), (files, _) = run.compactor_runs
    yesterday = run.today - timedelta(days=1)

    def day_bytes(day: date, where: str) -> int:
        folder = f"year={day:%Y}/month={day:%m}/day={day:%d}/"
        return sum(s for k, s in run.after_compaction if k.startswith(where) and folder in k)

    return {
        prefix: extrapolate(day_bytes(yesterday, where), day_bytes(run.today, where), small, files)
        for prefix, where in (
            ("processed/", "processed/transactions/"),
            ("compaction/", "compaction/transactions/"),
        )
    }


def _athena(
    run: _Run, setup: S3Client, scans: Mapping[str, Sequence[athena_scan.TableScan]], scale: float
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]], dict[str, float]]:
    """Bytes per day of data each query reads, with loose and with compacted files; files per day."""
    (small, _), (files, _) = run.compactor_runs
    text = {
        table: [
            athena_scan.text_file(k, PARTITION_KEYS, s) for k, s in run.after_ticks if k.startswith(prefix)
        ]
        for table, prefix in ((RAW, "raw/"), (QUARANTINE, "quarantine/"))
    }
    weights = {TRANSACTIONS: scale, RAW: scale, QUARANTINE: scale}
    loose = per_query(scans, {TRANSACTIONS: run.loose_files, **text}, weights)
    runs = []
    for day in (run.today - timedelta(days=1), run.today):
        compacted = [(k, s) for k, s in run.after_compaction if k.startswith(partition(day))]
        runs.append(
            per_query(
                scans,
                {TRANSACTIONS: parquet_files(setup, run.bucket, compacted), **text},
                weights | {TRANSACTIONS: 1.0},
            )
        )
    compacted_per_day = {
        query: {
            table: extrapolate(runs[0][query][table], value, small, files) if table == TRANSACTIONS else value
            for table, value in tables.items()
        }
        for query, tables in runs[1].items()
    }
    files_per_day = {
        TRANSACTIONS: len(run.loose_files) * scale,
        **{t: len(f) * scale for t, f in text.items()},
    }
    return loose, compacted_per_day, files_per_day


def simulate_day(
    rate: int,
    *,
    sample: int,
    endpoint: str,
    stack: Stack,
    scans: Mapping[str, Sequence[athena_scan.TableScan]],
    handlers: Mapping[str, ModuleType],
    seed: int,
) -> Day:
    """Run a sample of one day's ticks at `rate` and the compactor; scale what was measured to the day."""
    started = time.perf_counter()
    # The transformer dates its work by the clock (an earlier day gets a compaction marker): simulate today.
    run = _Run(bucket=f"cost-day-{rate}", today=datetime.now(UTC).date())
    setup = uncounted_client(endpoint)
    setup.create_bucket(Bucket=run.bucket)
    env = {**_aws_environment(endpoint), "BUCKET_NAME": run.bucket, "RANDOM_SEED": str(seed)}
    for function in ("generator", "compactor"):
        env.update({k: v for k, v in stack.environment[function].items() if k != "BUCKET_NAME"})
    env["TRANSACTIONS_PER_RUN"] = str(rate)
    with (
        handler_environment(env, list(handlers.values())),
        counted_clients(run.counter, list(handlers.values())),
    ):
        for handler in handlers.values():
            handler.s3_client()  # made on first use; INIT includes it (measure_init)
        functions = _run_ticks(run, setup, handlers, stack, sample)
        run.after_ticks = _list(setup, run.bucket)
        loose = [(k, s) for k, s in run.after_ticks if k.startswith(partition(run.today))]
        run.loose_files = parquet_files(setup, run.bucket, loose)  # before the compactor deletes them
        _run_compactor(run, setup, handlers["compactor"])
        run.after_compaction = _list(setup, run.bucket)
    functions["compactor"] = _compactor_day(run, stack.memory_mb["compactor"])
    scale = TICKS_PER_DAY / sample
    stored: dict[str, float] = {}
    for key, size in run.after_ticks:
        prefix = metering.key_prefix(key)
        stored[prefix] = stored.get(prefix, 0.0) + size * scale
    athena_loose, athena_compacted, files_per_day = _athena(run, setup, scans, scale)
    joined = "\n".join(run.logs).encode("utf-8")
    return Day(
        rate=rate,
        sample=sample,
        functions=functions,
        stored_per_day=stored,
        compacted_per_day=_compacted_bytes(run),
        athena_per_day=athena_loose,
        athena_compacted_per_day=athena_compacted,
        files_per_day=files_per_day,
        log_compression=len(gzip.compress(joined)) / len(joined) if joined else 1.0,
        compactor_runs=tuple((files, inv.cpu_seconds) for files, inv in run.compactor_runs),
        seconds=time.perf_counter() - started,
    )
