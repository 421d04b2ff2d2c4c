"""Compactor Lambda: rewrites each finished day of the processed table into one Parquet file, each row once.

Python 3.12 runtime plus the AWSSDKPandas-Python312 layer (boto3, pyarrow); it pastes into the console.
Invoked once a day by an EventBridge schedule. For each day partition
processed/transactions/year=YYYY/month=MM/day=DD/ it merges the transformer's per-raw-file Parquet files
(<raw stem>.parquet) and the day's earlier compacted file into compacted-YYYYMMDD.parquet.

How no row is lost or doubled:
- The compacted file carries a manifest in its Parquet footer (key `compaction_manifest`): every source
  file it holds, in file order, with the source's ETag and row count. Data and manifest are one object,
  so they cannot disagree.
- A source file in the partition whose key and ETag are in the manifest is already inside the compacted
  file: it is only deleted. A source file that is not (a late file, or one rewritten by a redelivered
  event) is merged, and when its key is already in the manifest its new rows replace the old copy.
- Order: read and check every input, write the new compacted file over the old one (a conditional put on
  the old file's ETag, so two runs cannot both win), write the manifest's queryable copy to
  compaction/transactions/year=/month=/day=/manifest.jsonl (outside the table), then delete the merged
  sources with conditional deletes on the ETags that were read (a source rewritten meanwhile is kept and
  merged by the next run).
  A crash at any point leaves a state the next run completes; a run with nothing new writes nothing.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

_logger = logging.getLogger()
_logger.setLevel(os.environ.get("LOG_LEVEL", "INFO"))

PROCESSED_PREFIX = "processed/transactions/"
# Outside the table's location: a queryable copy of each day's manifest (ecommerce_db.compaction_manifest),
# so that SQL can still count processed rows per raw file once they live in the compacted file.
# One line per source: compacted_key, source_key, file_stem, row_count, etag.
SIDECAR_PREFIX = "compaction/transactions/"
COMPACTED_STEM_PREFIX = "compacted-"
MANIFEST_KEY = b"compaction_manifest"
MANIFEST_VERSION = 1
METRICS_NAMESPACE = "EcommercePipeline"
READ_BATCH_ROWS = 65_536

# pyarrow.parquet ships no type hints; these aliases keep mypy --strict honest everywhere else.
_ParquetFile: Any = pq.ParquetFile
_ParquetWriter: Any = pq.ParquetWriter

# The processed table as CONTRACT.md fixes it (year/month/day live only in the key).
SCHEMA = pa.schema(
    [
        ("transaction_id", pa.string()),
        ("timestamp", pa.timestamp("ms", tz="UTC")),
        ("customer_id", pa.string()),
        ("product_id", pa.string()),
        ("product_name", pa.string()),
        ("category", pa.string()),
        ("quantity", pa.int32()),
        ("price", pa.decimal128(10, 2)),
        ("total_amount", pa.decimal128(10, 2)),
        ("hour", pa.int32()),
        ("day_of_week", pa.int32()),
    ]
)


class CompactionError(RuntimeError):
    """The base of every error the compactor raises on purpose."""


class ConfigError(CompactionError, ValueError):
    """An environment variable is missing or has an invalid value."""


class EventError(CompactionError, ValueError):
    """The invoking event cannot be understood."""


class DayNotFinishedError(CompactionError):
    """An explicitly requested day may still receive files, so compacting it now is refused."""


class SchemaMismatchError(CompactionError):
    """A Parquet file in the partition does not have the processed table's schema."""


class ManifestError(CompactionError):
    """The compacted file's manifest is missing, unreadable or disagrees with the file."""


class ConcurrentChangeError(CompactionError):
    """Another writer replaced the compacted file while this run was working; the retry redoes the day."""


@dataclass(frozen=True)
class Config:
    bucket: str
    after_hours: float
    lookback_days: int
    row_group_rows: int


def _env_number(env: Mapping[str, str], name: str, default: str, low: float, high: float) -> float:
    raw = env.get(name, default).strip() or default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low:g} and {high:g}, got {raw!r}")
    return value


def load_config(env: Mapping[str, str]) -> Config:
    """Read and validate the compactor's configuration from the environment, in one place."""
    bucket = env.get("BUCKET_NAME", "").strip()
    if not bucket:
        raise ConfigError("environment variable BUCKET_NAME is required: the bucket holding processed/")
    after_hours = _env_number(env, "COMPACT_AFTER_HOURS", "2", 0, 24 * 7)
    lookback = _env_number(env, "COMPACT_LOOKBACK_DAYS", "7", 1, 366)
    rows = _env_number(env, "COMPACT_ROW_GROUP_ROWS", "1000000", 1_000, 50_000_000)
    if lookback != int(lookback) or rows != int(rows):
        raise ConfigError("COMPACT_LOOKBACK_DAYS and COMPACT_ROW_GROUP_ROWS must be whole numbers")
    return Config(
        bucket=bucket, after_hours=after_hours, lookback_days=int(lookback), row_group_rows=int(rows)
    )


# --- Which days -------------------------------------------------------------------------------------


def _parse_time(value: Any) -> datetime:
    if not isinstance(value, str):
        raise EventError(f"event field 'time' must be an ISO 8601 string, got {type(value).__name__}")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise EventError(f"event field 'time' is not an ISO 8601 timestamp: {value!r}") from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)


def latest_finished_day(now: datetime, after_hours: float) -> date:
    """The last UTC day that ended at least `after_hours` ago: no more files are expected for it."""
    return (now.astimezone(UTC) - timedelta(hours=after_hours)).date() - timedelta(days=1)


def days_to_compact(event: Mapping[str, Any] | None, now: datetime, config: Config) -> list[date]:
    """An explicit {"date": "YYYY-MM-DD"} (a backfill), else the finished days of the lookback window.

    "Now" is the scheduled event's `time` when present, so a replayed schedule picks the same days.
    The window (default 7 days) is what lets a late or redelivered file of an already compacted day
    be merged by a later run; each day with nothing new costs one LIST and writes nothing.
    """
    event = event or {}
    clock = _parse_time(event["time"]) if event.get("time") is not None else now.astimezone(UTC)
    last = latest_finished_day(clock, config.after_hours)
    if event.get("date") is not None:
        raw = event["date"]
        try:
            day = date.fromisoformat(raw) if isinstance(raw, str) else None
        except ValueError:
            day = None
        if day is None:
            raise EventError(f"event field 'date' must be a day as YYYY-MM-DD, got {raw!r}")
        if day > last:
            raise DayNotFinishedError(
                f"day {day} is not finished: days up to {last} are, COMPACT_AFTER_HOURS="
                f"{config.after_hours:g} after midnight UTC at {clock:%Y-%m-%dT%H:%M:%SZ}"
            )
        return [day]
    return [last - timedelta(days=n) for n in range(config.lookback_days - 1, -1, -1)]


def partition_prefix(day: date) -> str:
    return f"{PROCESSED_PREFIX}year={day:%Y}/month={day:%m}/day={day:%d}/"


def compacted_key(day: date) -> str:
    """A normal name (Athena skips names starting with _ or .) that the generator's stems never take."""
    return f"{partition_prefix(day)}{COMPACTED_STEM_PREFIX}{day:%Y%m%d}.parquet"


# --- The plan: pure ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class S3Object:
    key: str
    etag: str
    size: int


@dataclass(frozen=True)
class Source:
    """One manifest entry: a source file's key, the ETag of the version merged, and its row count."""

    key: str
    etag: str
    rows: int


@dataclass(frozen=True)
class Plan:
    keep: tuple[Source, ...]  # manifest entries carried over from the current compacted file
    merge: tuple[S3Object, ...]  # source files to read and add
    delete: tuple[S3Object, ...]  # source files to delete once the compacted file holds them
    write: bool  # whether a new compacted file is written


def plan_partition(manifest: Sequence[Source], sources: Sequence[S3Object]) -> Plan:
    """Decide what one partition needs, from the current manifest and the source files listed.

    A source whose key and ETag are in the manifest is already compacted: delete it only (this finishes
    a run that crashed after writing). Any other source is merged; when its key is in the manifest with
    another ETag (the transformer rewrote it), its new rows replace the manifest's copy.
    """
    in_manifest = {(s.key, s.etag) for s in manifest}
    covered = [o for o in sources if (o.key, o.etag) in in_manifest]
    fresh = sorted((o for o in sources if (o.key, o.etag) not in in_manifest), key=lambda o: o.key)
    fresh_keys = {o.key for o in fresh}
    keep = tuple(s for s in manifest if s.key not in fresh_keys)
    delete = tuple(sorted([*covered, *fresh], key=lambda o: o.key))
    return Plan(keep=keep, merge=tuple(fresh), delete=delete, write=bool(fresh))


def manifest_json(day: date, sources: Sequence[Source]) -> bytes:
    document = {
        "version": MANIFEST_VERSION,
        "partition": partition_prefix(day),
        "rows": sum(s.rows for s in sources),
        "sources": [{"key": s.key, "etag": s.etag, "rows": s.rows} for s in sources],
    }
    return json.dumps(document, separators=(",", ":")).encode("utf-8")


def read_manifest(metadata: Mapping[bytes, bytes] | None, where: str) -> list[Source]:
    """The manifest of a compacted file, from its Parquet footer's key-value metadata."""
    raw = (metadata or {}).get(MANIFEST_KEY)
    if raw is None:
        raise ManifestError(
            f"{where} has the compacted file's name but no {MANIFEST_KEY.decode()} in its footer: it was not "
            "written by the compactor (a raw file with that stem?); rename or remove it"
        )
    try:
        document = json.loads(raw)
        return [Source(str(s["key"]), str(s["etag"]), int(s["rows"])) for s in document["sources"]]
    except (ValueError, KeyError, TypeError) as e:
        raise ManifestError(f"{where}: unreadable {MANIFEST_KEY.decode()}: {e}") from e


def check_schema(schema: pa.Schema, where: str) -> None:
    """Names and types exactly as the contract fixes them, in order; a mismatch names the file."""
    names = [f.name for f in schema]
    if names != SCHEMA.names:
        raise SchemaMismatchError(
            f"{where}: columns {names} differ from the processed table's {SCHEMA.names}"
        )
    for got, want in zip(schema, SCHEMA, strict=True):
        if got.type != want.type:
            raise SchemaMismatchError(
                f"{where}: column {got.name} is {got.type}, the contract says {want.type}"
            )


def kept_ranges(manifest: Sequence[Source], keep: Sequence[Source]) -> list[tuple[int, int]]:
    """Row ranges [start, end) of the current compacted file that belong to the kept sources."""
    kept = {(s.key, s.etag) for s in keep}
    ranges: list[tuple[int, int]] = []
    offset = 0
    for s in manifest:
        if (s.key, s.etag) in kept and s.rows:
            if ranges and ranges[-1][1] == offset:
                ranges[-1] = (ranges[-1][0], offset + s.rows)
            else:
                ranges.append((offset, offset + s.rows))
        offset += s.rows
    return ranges


def slice_batches(
    batches: Iterator[pa.RecordBatch], ranges: Sequence[tuple[int, int]]
) -> Iterator[pa.RecordBatch]:
    """Only the rows of `batches` (numbered from 0 across batches) that fall in `ranges`."""
    start = 0
    for batch in batches:
        end = start + batch.num_rows
        for lo, hi in ranges:
            a, b = max(lo, start), min(hi, end)
            if a < b:
                yield batch.slice(a - start, b - a)
        start = end


@dataclass
class RowGroupWriter:
    """Gathers batches into row groups of `rows` rows: ParquetWriter makes one group per write call."""

    writer: Any  # pyarrow.parquet.ParquetWriter
    rows: int
    pending: list[pa.RecordBatch] = field(default_factory=list)
    pending_rows: int = 0
    written: int = 0

    def add(self, batch: pa.RecordBatch) -> None:
        self.pending.append(batch)
        self.pending_rows += batch.num_rows
        if self.pending_rows >= self.rows:
            self.flush(final=False)

    def flush(self, final: bool = True) -> None:
        if not self.pending:
            return
        table = pa.Table.from_batches(self.pending, schema=self.writer.schema)
        full = table.num_rows if final else (table.num_rows // self.rows) * self.rows
        if full:
            self.writer.write_table(table.slice(0, full), row_group_size=self.rows)
            self.written += full
        rest = table.slice(full)
        self.pending = rest.combine_chunks().to_batches() if rest.num_rows else []
        self.pending_rows = rest.num_rows


# --- S3 edge ----------------------------------------------------------------------------------------


def list_partition(s3: S3Client, bucket: str, day: date) -> tuple[S3Object | None, list[S3Object]]:
    """The day's compacted file (if any) and its source files. Names Athena skips (_x, .x) are ignored."""
    prefix = partition_prefix(day)
    target = compacted_key(day)
    compacted: S3Object | None = None
    sources: list[S3Object] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            key = item["Key"]
            name = key[len(prefix) :]
            obj = S3Object(key=key, etag=item["ETag"].strip('"'), size=item["Size"])
            if key == target:
                compacted = obj
            elif "/" in name or name.startswith(("_", ".")) or not name.endswith(".parquet"):
                _logger.warning("not a table file, left alone", extra={"bucket": bucket, "key": key})
            else:
                sources.append(obj)
    return compacted, sources


def _download(s3: S3Client, bucket: str, obj: S3Object, directory: Path) -> Path:
    path = directory / f"{len(list(directory.iterdir()))}.parquet"
    try:
        body = s3.get_object(Bucket=bucket, Key=obj.key, IfMatch=f'"{obj.etag}"')["Body"]
    except ClientError as e:
        if _precondition_failed(e) or e.response.get("Error", {}).get("Code") in {"NoSuchKey", "404"}:
            raise ConcurrentChangeError(
                f"s3://{bucket}/{obj.key} changed between listing and reading; nothing written"
            ) from e
        raise
    with path.open("wb") as f:
        for chunk in iter(lambda: body.read(1 << 20), b""):
            f.write(chunk)
    return path


def _precondition_failed(e: ClientError) -> bool:
    return e.response.get("Error", {}).get("Code") in {"PreconditionFailed", "412"}


def _put_compacted(s3: S3Client, bucket: str, key: str, path: Path, old: S3Object | None) -> str:
    """Conditional put: creates the file only if absent, replaces it only if it is still the one read."""
    content_type = "application/vnd.apache.parquet"
    try:
        with path.open("rb") as body:
            if old is None:
                response = s3.put_object(
                    Bucket=bucket, Key=key, Body=body, ContentType=content_type, IfNoneMatch="*"
                )
            else:
                response = s3.put_object(
                    Bucket=bucket, Key=key, Body=body, ContentType=content_type, IfMatch=f'"{old.etag}"'
                )
    except ClientError as e:
        if _precondition_failed(e):
            raise ConcurrentChangeError(
                f"s3://{bucket}/{key} changed during this run; nothing deleted"
            ) from e
        raise
    return str(response["ETag"]).strip('"')


def sidecar_key(day: date) -> str:
    return f"{SIDECAR_PREFIX}year={day:%Y}/month={day:%m}/day={day:%d}/manifest.jsonl"


def sidecar_lines(compacted: str, sources: Sequence[Source]) -> bytes:
    """The manifest as JSON Lines: one line per raw file's rows inside the compacted file."""
    lines = [
        json.dumps(
            {
                "compacted_key": compacted,
                "source_key": s.key,
                "file_stem": s.key.rsplit("/", 1)[-1].removesuffix(".parquet"),
                "row_count": s.rows,
                "etag": s.etag,
            }
        )
        for s in sources
    ]
    return "".join(line + "\n" for line in lines).encode("utf-8")


def _put_sidecar(s3: S3Client, bucket: str, day: date, compacted: str, sources: Sequence[Source]) -> None:
    body = sidecar_lines(compacted, sources)
    s3.put_object(Bucket=bucket, Key=sidecar_key(day), Body=body, ContentType="application/x-ndjson")


def _delete_sources(s3: S3Client, bucket: str, objects: Sequence[S3Object]) -> tuple[int, int]:
    """Conditional deletes: a source rewritten since it was read stays, and the next run merges it."""
    deleted = kept = 0
    for obj in objects:
        try:
            s3.delete_object(Bucket=bucket, Key=obj.key, IfMatch=f'"{obj.etag}"')
            deleted += 1
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code")
            if _precondition_failed(e):
                kept += 1
                _logger.warning(
                    "source changed after it was read; kept for the next run", extra={"key": obj.key}
                )
            elif code in {"NoSuchKey", "404"}:
                continue
            else:
                raise
    return deleted, kept


def compact_day(s3: S3Client, config: Config, day: date) -> dict[str, Any]:
    """Bring one day partition to one compacted file holding each source's rows exactly once."""
    bucket = config.bucket
    key = compacted_key(day)
    compacted, sources = list_partition(s3, bucket, day)
    result: dict[str, Any] = {"date": day.isoformat(), "key": key, "action": "noop", "rows": 0}
    result.update(files_merged=0, deleted=0, kept_changed=0)
    if not sources:
        return result
    with tempfile.TemporaryDirectory(prefix="compactor-") as tmp:
        directory = Path(tmp)
        manifest: list[Source] = []
        old_path: Path | None = None
        if compacted is not None:
            old_path = _download(s3, bucket, compacted, directory)
            old_file = _ParquetFile(old_path)
            manifest = read_manifest(old_file.schema_arrow.metadata, f"s3://{bucket}/{key}")
            check_schema(old_file.schema_arrow, f"s3://{bucket}/{key}")
            if sum(s.rows for s in manifest) != old_file.metadata.num_rows:
                raise ManifestError(f"s3://{bucket}/{key}: manifest rows disagree with the file's row count")
        plan = plan_partition(manifest, sources)
        if plan.write:
            inputs: list[tuple[S3Object, Path, int]] = []
            for obj in plan.merge:
                path = _download(s3, bucket, obj, directory)
                info = _ParquetFile(path)
                check_schema(info.schema_arrow, f"s3://{bucket}/{obj.key}")
                inputs.append((obj, path, info.metadata.num_rows))
            new_manifest = [*plan.keep, *(Source(o.key, o.etag, rows) for o, _, rows in inputs)]
            out = directory / "out.parquet"
            schema = SCHEMA.with_metadata({MANIFEST_KEY: manifest_json(day, new_manifest)})
            with _ParquetWriter(out, schema, compression="snappy", coerce_timestamps="ms") as writer:
                groups = RowGroupWriter(writer, config.row_group_rows)
                if old_path is not None and plan.keep:
                    old_batches = _ParquetFile(old_path).iter_batches(batch_size=READ_BATCH_ROWS)
                    for batch in slice_batches(old_batches, kept_ranges(manifest, plan.keep)):
                        groups.add(batch.cast(SCHEMA))
                for _, path, _ in inputs:
                    for batch in _ParquetFile(path).iter_batches(batch_size=READ_BATCH_ROWS):
                        groups.add(batch.cast(SCHEMA))
                groups.flush()
            expected = sum(s.rows for s in new_manifest)
            if groups.written != expected:
                raise ManifestError(f"{key}: wrote {groups.written} rows, the manifest says {expected}")
            _put_compacted(s3, bucket, key, out, compacted)
            result.update(action="compacted", rows=expected, files_merged=len(inputs))
        else:
            new_manifest = manifest
            result.update(action="finished", rows=sum(s.rows for s in manifest))
    # Before the deletes, and again by a run that finishes a crashed one: the sidecar always matches.
    _put_sidecar(s3, bucket, day, key, new_manifest)
    deleted, kept = _delete_sources(s3, bucket, plan.delete)
    result.update(deleted=deleted, kept_changed=kept)
    return result


# --- Handler ----------------------------------------------------------------------------------------


def metrics_line(metrics: Mapping[str, tuple[float, str]], at: datetime) -> str:
    """One CloudWatch Embedded Metric Format record (namespace EcommercePipeline, no dimensions)."""
    document: dict[str, Any] = {
        "_aws": {
            "Timestamp": int(at.timestamp() * 1000),
            "CloudWatchMetrics": [
                {
                    "Namespace": METRICS_NAMESPACE,
                    "Dimensions": [[]],
                    "Metrics": [{"Name": name, "Unit": unit} for name, (_, unit) in metrics.items()],
                }
            ],
        },
    }
    document.update({name: value for name, (value, _) in metrics.items()})
    return json.dumps(document)


@functools.cache
def s3_client() -> S3Client:
    """One client per container, created on first use; standard retry mode for throttling."""
    client: S3Client = boto3.client("s3", config=BotoConfig(retries={"mode": "standard", "max_attempts": 5}))
    return client


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """EventBridge schedule entry point (or {"date": "YYYY-MM-DD"} for a backfill): compact finished days."""
    started = time.perf_counter()
    config = load_config(os.environ)
    now = datetime.now(UTC)
    days = days_to_compact(event, now, config)
    results = []
    for day in days:
        result = compact_day(s3_client(), config, day)
        if result["action"] != "noop":
            _logger.info("compacted partition", extra={"bucket": config.bucket, **result})
        results.append(result)
    totals = {
        "PartitionsCompacted": (sum(r["action"] == "compacted" for r in results), "Count"),
        "FilesCompacted": (sum(r["files_merged"] for r in results), "Count"),
        "RowsCompacted": (sum(r["rows"] for r in results if r["action"] == "compacted"), "Count"),
        "SourcesDeleted": (sum(r["deleted"] for r in results), "Count"),
    }
    sys.stdout.write(metrics_line(totals, now) + "\n")
    _logger.info(
        "compaction run done",
        extra={
            "bucket": config.bucket,
            "days": [d.isoformat() for d in days],
            "duration_ms": round((time.perf_counter() - started) * 1000, 1),
        },
    )
    return {"bucket": config.bucket, "days": results}
