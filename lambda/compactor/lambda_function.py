"""Compactor Lambda: rewrites each finished day of the processed table into a few big files, each row once.

Python 3.12 runtime plus the AWSSDKPandas-Python312 layer (boto3, pyarrow); it pastes into the console.
Invoked once a day by an EventBridge schedule, or with {"date": "YYYY-MM-DD"} for one day.

The files of a day partition processed/transactions/year=YYYY/month=MM/day=DD/:
- sources: every other table file, the transformer's `<stem>-<12 hex>.parquet` (or a name an earlier
  version wrote); each carries its raw object's key in its Parquet metadata (`source_key`).
- the head, compacted-YYYYMMDD.parquet, the day's commit record. Its footer (key `compaction_manifest`)
  is the day's manifest: every source it holds, with the source's ETag, rows, raw key and the file its
  rows are in. A day of at most COMPACT_PART_ROWS rows is this one file, rows included.
- parts, compacted-YYYYMMDD-pNN.parquet, only for a bigger day: its rows split evenly into parts of at
  most COMPACT_PART_ROWS rows. The head then holds no rows and lists each part with its ETag; each part's
  footer lists the sources whose rows it holds.

One run, one day:
1. LIST the partition. No source, no dirty-day marker and no part the head does not list: nothing to do.
2. Read footers with ranged GETs (the head's; each new source's: rows, schema, raw key), and on a marked
   day the transformer's state of each raw key (below).
3. Plan: a source whose key and ETag are in the manifest is inside already (only deleted); any other source
   is merged, its rows replacing those of a manifest entry with the same key (a raw file replaced and
   processed again); what the verification of a marked day finds stale leaves the day.
4. Write, streaming: the kept rows of the current files and the merged sources go, one input file in /tmp
   at a time (deleted once read), into the new files, written to /tmp one at a time and uploaded. New
   parts take part numbers no object of the day has (IfNoneMatch), so no committed file is overwritten.
   Then the head is put conditionally (IfMatch the ETag read, IfNoneMatch when absent): that put is the
   commit, the one atomic step, as the single file's put always was. A run whose commit fails (another
   run committed first) deletes its own parts and stops with ConcurrentChangeError, having deleted
   nothing else; a put that raised but landed (a retry answered 412) is found by reading the head back.
5. After the commit: put the manifest's queryable copy (compaction/transactions/year=/month=/day=/
   manifest.jsonl, outside the table), delete the parts the head no longer lists, then the merged
   sources, then the marker, each with IfMatch on the ETag read: a source rewritten meanwhile stays for
   the next run, and so does a marker rewritten meanwhile.

What a query sees (S3 cannot replace several objects at once): every row at least once, at every moment.
From the first new part's put until the last obsolete file is deleted, rows can be seen twice (in a new
part and in the old part or source it came from); a day that fits one file skips the first half of that
window, its head being replaced in one put, as before. A crash leaves one of those states, and the next
run completes it: a part the head does not list is deleted only after a commit (the head's ETag then
changed, so no other run still writing can commit parts listed before it), or, without a write, when the
head names it as replaced. A query that listed a file just before its delete may fail (NoSuchKey); rerun it.

Dirty days (state/compaction/dirty/year=YYYY/month=MM/day=DD.json, written by the transformer before it
deletes a stale output or writes a late one, and by tools/replay.py): listed once per run; a finished
marked day is compacted even outside the lookback window. On it every manifest entry and every new or
covered source is checked against state/transformer/<sha256(raw key)>.json: kept when the state lists the
file among its outputs; dropped (a source: neither merged nor deleted, its owner deletes it) when the state
is absent or no longer lists it; entries and files without a raw key (written before version 2) are kept
unless the marker says drop_unclaimed. A locked state (the transformer is mid-change), including the one of
the marker's own raw key, defers the check: the day is compacted as an unmarked one and the marker kept.
Otherwise the marker is deleted (IfMatch the ETag read, so a newer one survives), unless a refused source
is still there.

Bounded at any rate: /tmp holds one input file and one output file (each at most a part), memory one row
group being read and one being written; neither grows with the day. `python -m bench.compactor_day`
measured a day at the generator's maximum rate (100,000 transactions per run, 28.8M rows) at 411 MiB of
/tmp and 628 MiB RSS, where holding every source and the output in /tmp, as version 1 did, would need
their sum: 1,325 + 1,230 MiB. Footers are read with ranged GETs, never whole files: a run that only
finishes a crashed one downloads nothing, and a day is planned (rows per part, schemas checked) before
anything is written.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
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

PROCESSED_PREFIX = "processed/transactions/"
# Outside the table's location: a queryable copy of each day's manifest, so that SQL can still count
# processed rows per raw file once they live in compacted files. One line per manifest entry.
SIDECAR_PREFIX = "compaction/transactions/"
# Written by the transformer and tools/replay.py, read and deleted here (see the module docstring).
DIRTY_PREFIX = "state/compaction/dirty/"
STATE_PREFIX = "state/transformer/"
COMPACTED_STEM_PREFIX = "compacted-"
MANIFEST_KEY = b"compaction_manifest"
SOURCE_KEY_METADATA = b"source_key"
MANIFEST_VERSION = 2
METRICS_NAMESPACE = "EcommercePipeline"
READ_BATCH_ROWS = 65_536
# One ranged GET reads a whole footer: a transformer file's is a few KiB, a part's grows with its sources.
FOOTER_READ_BYTES = 1 << 16
TMP_PREFIX = "compactor-"  # this run's files in /tmp: one directory per day compacted

# pyarrow.parquet ships no type hints; these aliases keep mypy --strict honest everywhere else.
_ParquetFile: Any = pq.ParquetFile
_ParquetWriter: Any = pq.ParquetWriter
_read_metadata: Any = pq.read_metadata

# The processed table as docs/contract.md fixes it (year/month/day live only in the key).
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
# transaction_id is unique per row: a dictionary for it is built only to be thrown away (as in the
# transformer). Every other column repeats, and its dictionary makes the file smaller.
DICTIONARY_COLUMNS = [name for name in SCHEMA.names if name != "transaction_id"]


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


class NotParquetError(CompactionError):
    """A table file in the partition is not a readable Parquet file."""


class ManifestError(CompactionError):
    """A compactor file's manifest is missing, unreadable or disagrees with the files."""


class MarkerError(CompactionError):
    """An object under state/compaction/dirty/ is not a dirty-day marker the compactor can read."""


class StateError(CompactionError):
    """A transformer state object cannot be read as the shared design defines it."""


class ConcurrentChangeError(CompactionError):
    """Another writer changed the day while this run was working; the retry redoes the day."""


@dataclass(frozen=True)
class Config:
    bucket: str
    after_hours: float
    lookback_days: int
    row_group_rows: int
    part_rows: int
    log_level: int = logging.INFO


# LOG_LEVEL's accepted values, any case; WARN is the name Lambda's own log levels use.
LOG_LEVELS: dict[str, int] = {
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARNING": logging.WARNING,
    "WARN": logging.WARNING,
    "ERROR": logging.ERROR,
    "CRITICAL": logging.CRITICAL,
}
# Lambda's application log levels (AWS_LAMBDA_LOG_LEVEL) that drop a stdout line without a "level"
# field, which Lambda counts as INFO: the metric lines. docs/logging-and-metrics.md says why.
_LAMBDA_LEVELS_THAT_DROP_METRICS = frozenset({"WARN", "ERROR", "FATAL"})


def parse_log_level(value: str | None) -> int:
    """LOG_LEVEL as a `logging` level: any case, unset or blank is INFO, WARN means WARNING."""
    name = (value or "").strip().upper() or "INFO"
    if name not in LOG_LEVELS:
        raise ConfigError(f"LOG_LEVEL must be one of {', '.join(LOG_LEVELS)} (any case), got {value!r}")
    return LOG_LEVELS[name]


def warn_if_lambda_drops_metrics(env: Mapping[str, str]) -> None:
    """Log an error when Lambda's application log level would silently drop the metric lines."""
    level = env.get("AWS_LAMBDA_LOG_LEVEL", "").strip().upper()
    if level in _LAMBDA_LEVELS_THAT_DROP_METRICS:
        _logger.error(
            f"Lambda's application log level is {level}: it drops this function's metric lines (Lambda "
            "counts them as INFO), so the dashboard gets no data. Set the application log level to INFO "
            "(Configuration > Monitoring and operations tools > Logging configuration) and use LOG_LEVEL "
            "to quiet the function's own logs.",
            extra={"application_log_level": level},
        )


def _utc_now() -> datetime:
    """The clock: the days to compact, and the metrics' timestamp (tests replace it)."""
    return datetime.now(UTC)


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
    log_level = parse_log_level(env.get("LOG_LEVEL"))
    bucket = env.get("BUCKET_NAME", "").strip()
    if not bucket:
        raise ConfigError("environment variable BUCKET_NAME is required: the bucket holding processed/")
    after_hours = _env_number(env, "COMPACT_AFTER_HOURS", "2", 0, 24 * 7)
    lookback = _env_number(env, "COMPACT_LOOKBACK_DAYS", "7", 1, 366)
    rows = _env_number(env, "COMPACT_ROW_GROUP_ROWS", "1000000", 1_000, 50_000_000)
    part = _env_number(env, "COMPACT_PART_ROWS", "5000000", 1_000, 1_000_000_000)
    if lookback != int(lookback) or rows != int(rows) or part != int(part):
        raise ConfigError(
            "COMPACT_LOOKBACK_DAYS, COMPACT_ROW_GROUP_ROWS and COMPACT_PART_ROWS must be whole numbers"
        )
    return Config(
        bucket=bucket,
        after_hours=after_hours,
        lookback_days=int(lookback),
        row_group_rows=int(rows),
        part_rows=int(part),
        log_level=log_level,
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


def days_to_compact(
    event: Mapping[str, Any] | None, now: datetime, config: Config, marked: Iterable[date] = ()
) -> list[date]:
    """An explicit {"date": "YYYY-MM-DD"} (a backfill), else the finished days of the lookback window
    and every finished day with a dirty-day marker, oldest first.

    "Now" is the scheduled event's `time` when present, so a replayed schedule picks the same days.
    The window (default 7 days) is what lets a late or redelivered file of an already compacted day
    be merged by a later run; each day with nothing new costs one LIST and writes nothing. A marker for
    a day that is not finished yet waits for it.
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
    window = {last - timedelta(days=n) for n in range(config.lookback_days)}
    return sorted(window | {d for d in marked if d <= last})


# --- Names ------------------------------------------------------------------------------------------


def partition_prefix(day: date) -> str:
    return f"{PROCESSED_PREFIX}year={day:%Y}/month={day:%m}/day={day:%d}/"


def compacted_key(day: date) -> str:
    """The day's head. No transformer output can take it: theirs end in `-` and 12 hex digits."""
    return f"{partition_prefix(day)}{COMPACTED_STEM_PREFIX}{day:%Y%m%d}.parquet"


def part_key(day: date, number: int) -> str:
    return f"{partition_prefix(day)}{COMPACTED_STEM_PREFIX}{day:%Y%m%d}-p{number:02d}.parquet"


def part_number(day: date, key: str) -> int | None:
    """The number of a part of `day` (compacted-YYYYMMDD-pNN.parquet, as part_key writes it), else None."""
    name = key[len(partition_prefix(day)) :]
    match = re.fullmatch(rf"{COMPACTED_STEM_PREFIX}{day:%Y%m%d}-p(\d{{2,}})\.parquet", name)
    if match is None or part_key(day, int(match[1])) != key:
        return None
    return int(match[1])


def marker_key(day: date) -> str:
    return f"{DIRTY_PREFIX}year={day:%Y}/month={day:%m}/day={day:%d}.json"


def marker_day(key: str) -> date:
    """The day a marker key names; any other key under the prefix is a named error, never skipped."""
    match = re.fullmatch(r"year=(\d{4})/month=(\d{2})/day=(\d{2})\.json", key[len(DIRTY_PREFIX) :])
    try:
        if match is None:
            raise ValueError("not year=YYYY/month=MM/day=DD.json")
        return date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError as e:
        raise MarkerError(
            f"{key}: not a dirty-day marker key ({DIRTY_PREFIX}year=YYYY/month=MM/day=DD.json): {e}"
        ) from None


def state_key(source_key: str) -> str:
    """The transformer's state object of one raw key."""
    return f"{STATE_PREFIX}{hashlib.sha256(source_key.encode('utf-8')).hexdigest()}.json"


def sidecar_key(day: date) -> str:
    return f"{SIDECAR_PREFIX}year={day:%Y}/month={day:%m}/day={day:%d}/manifest.jsonl"


# --- Manifests: pure ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class S3Object:
    key: str
    etag: str
    size: int


@dataclass(frozen=True)
class Entry:
    """One manifest entry: `rows` rows of the source file `key` (the version with `etag`), made from the raw
    object `source_key` (None: written before manifest version 2), stored in the compactor file `file`.
    A source whose rows cross a part boundary has one entry in each part."""

    key: str
    etag: str
    rows: int
    source_key: str | None
    file: str = ""


@dataclass(frozen=True)
class PartRef:
    key: str
    etag: str
    rows: int


@dataclass(frozen=True)
class Head:
    """The day's committed state, read from the head's footer."""

    obj: S3Object
    batch: str
    rows: int  # rows of the whole day
    own_rows: int  # rows inside the head file itself (0 for a day split into parts)
    parts: tuple[PartRef, ...]
    entries: tuple[Entry, ...]  # in day order
    replaced: frozenset[tuple[str, str]]  # (key, ETag) of the parts this commit made obsolete


def _entry_json(entry: Entry, with_file: bool) -> dict[str, Any]:
    document: dict[str, Any] = {
        "key": entry.key,
        "etag": entry.etag,
        "rows": entry.rows,
        "source_key": entry.source_key,
    }
    if with_file:
        document["file"] = entry.file
    return document


def head_manifest(
    day: date,
    batch: str,
    entries: Sequence[Entry],
    parts: Sequence[PartRef],
    replaced: Iterable[tuple[str, str]],
) -> bytes:
    """The day's manifest, in the head's footer."""
    document = {
        "version": MANIFEST_VERSION,
        "partition": partition_prefix(day),
        "batch": batch,
        "rows": sum(e.rows for e in entries),
        "parts": [{"key": p.key, "etag": p.etag, "rows": p.rows} for p in parts],
        "replaced": [{"key": k, "etag": e} for k, e in sorted(replaced)],
        "sources": [_entry_json(e, with_file=True) for e in entries],
    }
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def part_manifest(day: date, batch: str, key: str, entries: Sequence[Entry]) -> bytes:
    """One part's own manifest, in its footer: the sources whose rows it holds, in file order."""
    document = {
        "version": MANIFEST_VERSION,
        "partition": partition_prefix(day),
        "batch": batch,
        "part": key,
        "rows": sum(e.rows for e in entries),
        "sources": [_entry_json(e, with_file=False) for e in entries],
    }
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _manifest_document(metadata: Mapping[bytes, bytes] | None, where: str) -> dict[str, Any]:
    raw = (metadata or {}).get(MANIFEST_KEY)
    if raw is None:
        raise ManifestError(
            f"{where} has a compactor file's name but no {MANIFEST_KEY.decode()} in its footer: it was not "
            "written by the compactor; rename or remove it"
        )
    try:
        document = json.loads(raw)
    except ValueError as e:
        raise ManifestError(f"{where}: unreadable {MANIFEST_KEY.decode()}: {e}") from e
    if not isinstance(document, dict):
        raise ManifestError(f"{where}: {MANIFEST_KEY.decode()} is not a JSON object")
    return document


def parse_head(metadata: Mapping[bytes, bytes] | None, num_rows: int, obj: S3Object) -> Head:
    """The head's manifest (version 1, one file written before parts existed, or version 2), checked
    against the file's own row count."""
    where = f"{obj.key} (ETag {obj.etag})"
    document = _manifest_document(metadata, where)
    try:
        version = int(document.get("version", 1))
        parts = tuple(
            PartRef(str(p["key"]), str(p["etag"]), int(p["rows"])) for p in document.get("parts", [])
        )
        entries = tuple(
            Entry(
                key=str(s["key"]),
                etag=str(s["etag"]),
                rows=int(s["rows"]),
                source_key=None if s.get("source_key") is None else str(s["source_key"]),
                file=str(s["file"]) if version >= 2 else obj.key,
            )
            for s in document["sources"]
        )
        replaced = frozenset((str(r["key"]), str(r["etag"])) for r in document.get("replaced", []))
        batch = str(document.get("batch", ""))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ManifestError(f"{where}: unreadable {MANIFEST_KEY.decode()}: {e!r}") from e
    rows = sum(e.rows for e in entries)
    own_rows = rows - sum(p.rows for p in parts)
    files = {obj.key, *(p.key for p in parts)}
    if any(e.rows < 0 or e.file not in files for e in entries) or any(p.rows < 0 for p in parts):
        raise ManifestError(f"{where}: a manifest entry names a file the manifest does not list")
    if own_rows != num_rows or (parts and own_rows != 0):
        raise ManifestError(
            f"{where}: the manifest's rows ({rows}, {sum(p.rows for p in parts)} of them in parts) "
            f"disagree with the file's {num_rows}"
        )
    for part in parts:
        if sum(e.rows for e in entries if e.file == part.key) != part.rows:
            raise ManifestError(f"{where}: the manifest's entries disagree with the rows of {part.key}")
    return Head(obj, batch, rows, own_rows, parts, entries, replaced)


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


# --- The plan: pure -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Loose:
    """A source file not yet in the manifest, with what its footer says."""

    obj: S3Object
    rows: int
    source_key: str | None


@dataclass(frozen=True)
class Plan:
    keep: tuple[Entry, ...]  # manifest entries carried over, in day order
    replaced: tuple[Entry, ...]  # entries whose source was rewritten: a merged source replaces them
    dropped: tuple[Entry, ...]  # entries the verification found stale or unclaimed
    merge: tuple[Loose, ...]  # sources to add, in key order
    delete: tuple[S3Object, ...]  # sources to delete once the commit holds them
    leave: tuple[S3Object, ...]  # sources the verification refused: neither merged nor deleted

    @property
    def changes(self) -> bool:
        return bool(self.merge or self.replaced or self.dropped)


def keep_everything(key: str, source_key: str | None) -> bool:
    """The verdict on a day without a marker (or whose verification is deferred)."""
    return True


def fresh_sources(entries: Sequence[Entry], sources: Sequence[S3Object]) -> list[S3Object]:
    """The sources whose key and ETag are not in the manifest: only these need their footer read."""
    inside = {(e.key, e.etag) for e in entries}
    return [o for o in sources if (o.key, o.etag) not in inside]


def plan_partition(
    entries: Sequence[Entry],
    sources: Sequence[S3Object],
    fresh: Mapping[str, Loose],
    keeps: Callable[[str, str | None], bool] = keep_everything,
) -> Plan:
    """Decide what one partition needs, from the manifest, the sources listed and the verdict `keeps`
    (processed key, raw key) -> whether the file's rows belong to the day.

    A source whose key and ETag are in the manifest is already compacted: delete it only (this finishes
    a run that crashed after its commit). Any other source is merged; when its key is in the manifest
    with another ETag (the transformer rewrote it), its new rows replace the manifest's copy.
    """
    inside = {(e.key, e.etag): e for e in entries}
    merge: list[Loose] = []
    delete: list[S3Object] = []
    leave: list[S3Object] = []
    for obj in sorted(sources, key=lambda o: o.key):
        entry = inside.get((obj.key, obj.etag))
        if entry is not None:
            (delete if keeps(entry.key, entry.source_key) else leave).append(obj)
        elif keeps(obj.key, fresh[obj.key].source_key):
            merge.append(fresh[obj.key])
            delete.append(obj)
        else:
            leave.append(obj)
    merged = {m.obj.key for m in merge}
    keep, replaced, dropped = [], [], []
    for entry in entries:
        if entry.key in merged:
            replaced.append(entry)
        elif keeps(entry.key, entry.source_key):
            keep.append(entry)
        else:
            dropped.append(entry)
    return Plan(tuple(keep), tuple(replaced), tuple(dropped), tuple(merge), tuple(delete), tuple(leave))


def split_rows(total: int, part_rows: int) -> list[int]:
    """Rows per output file: one file up to `part_rows`, else the fewest parts of at most `part_rows`,
    as even as whole rows allow."""
    count = max(1, -(-total // part_rows))
    base, extra = divmod(total, count)
    return [base + (1 if i < extra else 0) for i in range(count)]


def lay_out(entries: Sequence[Entry], sizes: Sequence[int], files: Sequence[str]) -> list[list[Entry]]:
    """The day's entries, in order, cut into files of `sizes` rows; a source crossing a boundary gets an
    entry in each file (adjacent pieces of one source in one file stay one entry)."""
    layout: list[list[Entry]] = [[] for _ in sizes]
    index, room = 0, sizes[0]
    for entry in entries:
        left = entry.rows
        while True:
            while room == 0 and left > 0 and index + 1 < len(sizes):
                index += 1
                room = sizes[index]
            take = min(left, room)
            if left > 0 and take == 0:
                raise ManifestError(f"{entry.key}: more rows than the files laid out hold")
            current = layout[index]
            last = current[-1] if current else None
            if last is not None and (last.key, last.etag, last.source_key) == (
                entry.key,
                entry.etag,
                entry.source_key,
            ):
                current[-1] = Entry(last.key, last.etag, last.rows + take, last.source_key, last.file)
            else:
                current.append(Entry(entry.key, entry.etag, take, entry.source_key, files[index]))
            left -= take
            room -= take
            if left == 0:
                break
    return layout


def kept_ranges(file_entries: Sequence[tuple[Entry, bool]]) -> list[tuple[int, int]]:
    """Row ranges [start, end) of one file whose entries (in file order) are flagged as kept."""
    ranges: list[tuple[int, int]] = []
    offset = 0
    for entry, kept in file_entries:
        if kept and entry.rows:
            if ranges and ranges[-1][1] == offset:
                ranges[-1] = (ranges[-1][0], offset + entry.rows)
            else:
                ranges.append((offset, offset + entry.rows))
        offset += entry.rows
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


class RowStream:
    """The day's rows as one stream of batches, taken `n` rows at a time (one output file each)."""

    def __init__(self, batches: Iterator[pa.RecordBatch]) -> None:
        self._batches = batches
        self._rest: pa.RecordBatch | None = None

    def take(self, n: int) -> Iterator[pa.RecordBatch]:
        while n > 0:
            batch = self._rest if self._rest is not None else next(self._batches, None)
            self._rest = None
            if batch is None:
                raise ManifestError(f"the inputs ended {n} rows before the manifests said they would")
            if batch.num_rows > n:
                self._rest = batch.slice(n)
                batch = batch.slice(0, n)
            n -= batch.num_rows
            yield batch

    def finish(self) -> None:
        """Every input read to its end, and no row left over."""
        extra = (self._rest.num_rows if self._rest is not None else 0) + sum(
            b.num_rows for b in self._batches
        )
        if extra:
            raise ManifestError(f"the inputs held {extra} rows more than their manifests and footers say")


# --- S3 edge: reading ---------------------------------------------------------------------------------


def _code(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


def _precondition_failed(e: ClientError) -> bool:
    return _code(e) in {"PreconditionFailed", "412"}


def _missing(e: ClientError) -> bool:
    return _code(e) in {"NoSuchKey", "404", "NotFound"}


@dataclass(frozen=True)
class Listing:
    head: S3Object | None
    parts: dict[int, S3Object]  # part number -> object
    sources: list[S3Object]


def list_partition(s3: S3Client, bucket: str, day: date) -> Listing:
    """The day's head, its parts and its source files. Names Athena skips (_x, .x) are left alone."""
    prefix = partition_prefix(day)
    head_key = compacted_key(day)
    head: S3Object | None = None
    parts: dict[int, S3Object] = {}
    sources: list[S3Object] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            key = item["Key"]
            name = key[len(prefix) :]
            obj = S3Object(key=key, etag=item["ETag"].strip('"'), size=item["Size"])
            number = part_number(day, key)
            if key == head_key:
                head = obj
            elif number is not None:
                parts[number] = obj
            elif "/" in name or name.startswith(("_", ".")) or not name.endswith(".parquet"):
                _logger.warning("not a table file, left alone", extra={"bucket": bucket, "key": key})
            else:
                sources.append(obj)
    return Listing(head, parts, sources)


def _get(s3: S3Client, bucket: str, obj: S3Object, **extra: Any) -> Any:
    """GET of exactly the version listed: a change since the listing stops the run before it writes."""
    try:
        return s3.get_object(Bucket=bucket, Key=obj.key, IfMatch=f'"{obj.etag}"', **extra)["Body"]
    except ClientError as e:
        if _precondition_failed(e) or _missing(e):
            raise ConcurrentChangeError(
                f"s3://{bucket}/{obj.key} changed since it was listed; this run stops, the next one redoes it"
            ) from e
        raise


def read_footer(s3: S3Client, bucket: str, obj: S3Object) -> Any:
    """A Parquet file's footer (pyarrow FileMetaData) from ranged GETs of its end, never the whole file."""
    where = f"s3://{bucket}/{obj.key}"
    if obj.size < 12:
        raise NotParquetError(f"{where}: {obj.size} bytes is too small to be a Parquet file")
    tail = _get(s3, bucket, obj, Range=f"bytes=-{min(FOOTER_READ_BYTES, obj.size)}").read()
    length = int.from_bytes(tail[-8:-4], "little")
    if tail[-4:] != b"PAR1" or length + 12 > obj.size:
        raise NotParquetError(f"{where}: not a Parquet file (no Parquet footer at its end)")
    if length + 8 > len(tail):
        tail = _get(s3, bucket, obj, Range=f"bytes=-{length + 8}").read()
    try:
        return _read_metadata(pa.BufferReader(tail[-(length + 8) :]))
    except (pa.ArrowException, OSError) as e:
        raise NotParquetError(f"{where}: unreadable Parquet footer: {e}") from e


def read_head(s3: S3Client, bucket: str, obj: S3Object) -> Head:
    meta = read_footer(s3, bucket, obj)
    head = parse_head(meta.metadata, meta.num_rows, obj)
    check_schema(meta.schema.to_arrow_schema(), f"s3://{bucket}/{obj.key}")
    return head


def read_source(s3: S3Client, bucket: str, obj: S3Object) -> Loose:
    """A new source's rows and raw key, and its schema checked, from its footer."""
    where = f"s3://{bucket}/{obj.key}"
    meta = read_footer(s3, bucket, obj)
    check_schema(meta.schema.to_arrow_schema(), where)
    raw = (meta.metadata or {}).get(SOURCE_KEY_METADATA)
    try:
        source_key = None if raw is None else raw.decode("utf-8")
    except UnicodeDecodeError:
        raise NotParquetError(f"{where}: its {SOURCE_KEY_METADATA.decode()} metadata is not UTF-8") from None
    return Loose(obj, int(meta.num_rows), source_key)


def check_ours(s3: S3Client, bucket: str, obj: S3Object) -> None:
    """A part the head does not list is deleted only if the compactor wrote it (its footer says so)."""
    meta = read_footer(s3, bucket, obj)
    document = _manifest_document(meta.metadata, f"s3://{bucket}/{obj.key}")
    if document.get("part") != obj.key:
        raise ManifestError(
            f"s3://{bucket}/{obj.key}: its manifest names another file: {document.get('part')!r}"
        )


@dataclass(frozen=True)
class Marker:
    key: str
    etag: str  # of the version read: the conditional delete removes only that one
    drop_unclaimed: bool
    source_key: str | None


def list_markers(s3: S3Client, bucket: str) -> dict[date, S3Object]:
    """Every dirty-day marker, by day: one listing per run."""
    markers: dict[date, S3Object] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=DIRTY_PREFIX):
        for item in page.get("Contents", []):
            markers[marker_day(item["Key"])] = S3Object(item["Key"], item["ETag"].strip('"'), item["Size"])
    return markers


def read_marker(s3: S3Client, bucket: str, obj: S3Object) -> Marker | None:
    """The marker's body; None if another run deleted it since the listing."""
    try:
        response = s3.get_object(Bucket=bucket, Key=obj.key)
    except ClientError as e:
        if _missing(e):
            return None
        raise
    etag = str(response["ETag"]).strip('"')
    try:
        document = json.loads(response["Body"].read())
        if not isinstance(document, dict):
            raise TypeError("not a JSON object")
        drop = document.get("drop_unclaimed", False)
        source_key = document.get("source_key")
        if not isinstance(drop, bool) or not isinstance(source_key, str | None):
            raise TypeError("drop_unclaimed must be true or false, source_key a string or null")
    except (ValueError, TypeError) as e:
        raise MarkerError(f"s3://{bucket}/{obj.key}: not a dirty-day marker: {e}") from e
    return Marker(obj.key, etag, drop, source_key)


@dataclass(frozen=True)
class TransformerState:
    locked: bool
    outputs: frozenset[str]


def read_state(s3: S3Client, bucket: str, source_key: str) -> TransformerState | None:
    """The transformer's state of one raw key; None when there is none.

    Absence is read from a listing of the one key: a GET of a missing key answers 403 (not 404) to a role
    that may not list the whole bucket, and a denied read must never pass for an absent (stale) state."""
    key = state_key(source_key)
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1).get("Contents", [])
    if not any(item["Key"] == key for item in listed):
        return None
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    try:
        document = json.loads(body)
        outputs = document["outputs"]
        if not isinstance(outputs, list) or not all(isinstance(o, str) for o in outputs):
            raise TypeError("outputs must be a list of keys")
        return TransformerState(locked=document.get("lock") is not None, outputs=frozenset(outputs))
    except (ValueError, KeyError, TypeError) as e:
        raise StateError(f"s3://{bucket}/{key} (state of {source_key}): unreadable: {e!r}") from e


@dataclass(frozen=True)
class Verification:
    keeps: Callable[[str, str | None], bool]
    status: str | None  # None: no marker; "done"; "deferred": a state was locked


def verify(
    s3: S3Client, bucket: str, marker: Marker | None, entries: Sequence[Entry], fresh: Iterable[Loose]
) -> Verification:
    """The verdict on each file of a marked day, from the transformer's state of its raw key."""
    if marker is None:
        return Verification(keep_everything, None)
    raw_keys = {e.source_key for e in entries} | {f.source_key for f in fresh} | {marker.source_key}
    states = {k: read_state(s3, bucket, k) for k in sorted(k for k in raw_keys if k is not None)}
    if any(s is not None and s.locked for s in states.values()):
        return Verification(keep_everything, "deferred")

    def keeps(key: str, source_key: str | None) -> bool:
        if source_key is None:
            return not marker.drop_unclaimed
        state = states[source_key]
        return state is not None and key in state.outputs

    return Verification(keeps, "done")


def _download(s3: S3Client, bucket: str, obj: S3Object, path: Path) -> Path:
    body = _get(s3, bucket, obj)
    with path.open("wb") as f:
        for chunk in iter(lambda: body.read(1 << 20), b""):
            f.write(chunk)
    return path


# --- S3 edge: writing ---------------------------------------------------------------------------------

PARQUET_CONTENT_TYPE = "application/vnd.apache.parquet"


def _put_compacted(s3: S3Client, bucket: str, key: str, path: Path, old: S3Object | None) -> str:
    """A compactor file, created only where no object is (a new part, a first head), or replacing only the
    head this run read (the commit); its ETag. Either way nothing another writer put is overwritten."""
    condition: dict[str, Any] = {"IfNoneMatch": "*"} if old is None else {"IfMatch": f'"{old.etag}"'}
    try:
        with path.open("rb") as body:
            response = s3.put_object(
                Bucket=bucket, Key=key, Body=body, ContentType=PARQUET_CONTENT_TYPE, **condition
            )
    except ClientError as e:
        if _precondition_failed(e):
            raise ConcurrentChangeError(f"s3://{bucket}/{key} changed during this run; it stops") from e
        raise
    return str(response["ETag"]).strip('"')


def sidecar_lines(entries: Sequence[Entry]) -> bytes:
    """The manifest as JSON Lines: one line per source's rows in one compacted file."""
    lines = [
        json.dumps(
            {
                "compacted_key": e.file,
                "processed_key": e.key,
                "source_key": e.source_key,
                "file_stem": e.key.rsplit("/", 1)[-1].removesuffix(".parquet"),
                "row_count": e.rows,
                "etag": e.etag,
            },
            ensure_ascii=False,
        )
        for e in entries
    ]
    return "".join(line + "\n" for line in lines).encode("utf-8")


def _put_sidecar(s3: S3Client, bucket: str, day: date, entries: Sequence[Entry]) -> None:
    body = sidecar_lines(entries)
    s3.put_object(Bucket=bucket, Key=sidecar_key(day), Body=body, ContentType="application/x-ndjson")


def _delete_if_unchanged(s3: S3Client, bucket: str, objects: Iterable[S3Object]) -> tuple[int, int]:
    """Conditional deletes: an object rewritten since it was read stays (the next run sees it)."""
    deleted = kept = 0
    for obj in objects:
        try:
            s3.delete_object(Bucket=bucket, Key=obj.key, IfMatch=f'"{obj.etag}"')
            deleted += 1
        except ClientError as e:
            if _precondition_failed(e):
                kept += 1
                _logger.warning("changed after it was read; kept for the next run", extra={"key": obj.key})
            elif not _missing(e):
                raise
    return deleted, kept


# --- One day ------------------------------------------------------------------------------------------


def _day_batches(
    s3: S3Client, bucket: str, directory: Path, head: Head | None, plan: Plan
) -> Iterator[pa.RecordBatch]:
    """The new day's rows in order: the kept rows of each current file, then each merged source. One
    input file is in /tmp at a time, deleted as soon as it is read."""
    if head is not None:
        kept = set(plan.keep)
        files = {head.obj.key: head.obj} | {p.key: S3Object(p.key, p.etag, 0) for p in head.parts}
        expected = {head.obj.key: head.own_rows} | {p.key: p.rows for p in head.parts}
        for key in dict.fromkeys(e.file for e in head.entries):
            ranges = kept_ranges([(e, e in kept) for e in head.entries if e.file == key])
            if not ranges:
                continue
            path = _download(s3, bucket, files[key], directory / "current.parquet")
            try:
                with _ParquetFile(path) as source:
                    if source.metadata.num_rows != expected[key]:
                        raise ManifestError(f"s3://{bucket}/{key}: rows disagree with the head's manifest")
                    if key != head.obj.key:
                        document = _manifest_document(source.schema_arrow.metadata, f"s3://{bucket}/{key}")
                        if document.get("batch") != head.batch:
                            raise ManifestError(
                                f"s3://{bucket}/{key}: written by another commit than the head's"
                            )
                    batches = source.iter_batches(batch_size=READ_BATCH_ROWS)
                    for batch in slice_batches(batches, ranges):
                        yield batch.cast(SCHEMA)
            finally:
                path.unlink(missing_ok=True)
    for loose in plan.merge:
        where = f"s3://{bucket}/{loose.obj.key}"
        path = _download(s3, bucket, loose.obj, directory / "source.parquet")
        try:
            with _ParquetFile(path) as source:
                check_schema(source.schema_arrow, where)
                if source.metadata.num_rows != loose.rows:
                    raise ManifestError(f"{where}: rows disagree with its footer read earlier")
                for batch in source.iter_batches(batch_size=READ_BATCH_ROWS):
                    yield batch.cast(SCHEMA)
        finally:
            path.unlink(missing_ok=True)


def _write_file(path: Path, batches: Iterable[pa.RecordBatch], manifest: bytes, config: Config) -> int:
    schema = SCHEMA.with_metadata({MANIFEST_KEY: manifest})
    with _ParquetWriter(
        path, schema, compression="snappy", coerce_timestamps="ms", use_dictionary=DICTIONARY_COLUMNS
    ) as writer:
        groups = RowGroupWriter(writer, config.row_group_rows)
        for batch in batches:
            groups.add(batch)
        groups.flush()
    return groups.written


def _head_etag_if_batch(s3: S3Client, bucket: str, key: str, batch: str) -> str | None:
    """The head's ETag if its manifest is `batch`'s (that commit landed), else None; raises if unknown."""
    try:
        found = s3.head_object(Bucket=bucket, Key=key)
    except ClientError as e:
        if _missing(e):
            return None
        raise
    obj = S3Object(key, str(found["ETag"]).strip('"'), int(found["ContentLength"]))
    document = _manifest_document(read_footer(s3, bucket, obj).metadata, f"s3://{bucket}/{key}")
    return obj.etag if document.get("batch") == batch else None


def _head_unknown(s3: S3Client, bucket: str, key: str, batch: str) -> bool:
    """Whether this run cannot tell that its commit did not land: then its parts are left in place."""
    try:
        return _head_etag_if_batch(s3, bucket, key, batch) is not None
    except Exception:
        _logger.exception("cannot read the head back; this run's parts are left for the next run")
        return True


def _commit(s3: S3Client, bucket: str, key: str, path: Path, *, old: S3Object | None, batch: str) -> str:
    """The head's conditional put; its ETag. A put that failed on the way back (a timeout, then a retry
    refused with 412) may have landed: only the head itself tells, and a landed commit must stand."""
    try:
        return _put_compacted(s3, bucket, key, path, old)
    except BaseException:
        landed = _head_etag_if_batch(s3, bucket, key, batch)
        if landed is None:
            raise
        return landed


def _write_outputs(
    s3: S3Client,
    config: Config,
    day: date,
    *,
    batch: str,
    layout: Sequence[tuple[str, int, list[Entry]]],
    stream: RowStream,
    replaced: Iterable[tuple[str, str]],
    written: list[PartRef],
    out: Path,
) -> None:
    """Each part written and put in turn (appended to `written`), then the head file left at `out`."""
    day_entries = [e for _, _, file_entries in layout for e in file_entries]
    if len(layout) == 1:
        ((key, size, _),) = layout
        manifest = head_manifest(day, batch, day_entries, [], replaced)
        rows = _write_file(out, stream.take(size), manifest, config)
        stream.finish()
        if rows != size:
            raise ManifestError(f"{key}: wrote {rows} rows, the plan says {size}")
        return
    for key, size, file_entries in layout:
        rows = _write_file(out, stream.take(size), part_manifest(day, batch, key, file_entries), config)
        if rows != size:
            raise ManifestError(f"{key}: wrote {rows} rows, the plan says {size}")
        written.append(PartRef(key, _put_compacted(s3, config.bucket, key, out, None), size))
        out.unlink()
    stream.finish()
    _write_file(out, [], head_manifest(day, batch, day_entries, written, replaced), config)


def write_day(
    s3: S3Client,
    config: Config,
    day: date,
    *,
    listing: Listing,
    head: Head | None,
    plan: Plan,
    directory: Path,
) -> Head:
    """Write the planned day and commit it with the head's conditional put; the committed head.

    On a failure before the commit, the parts this run put are deleted again (best effort: a crash
    leaves them to the next run, which deletes them after its own commit)."""
    bucket = config.bucket
    head_key = compacted_key(day)
    batch = uuid.uuid4().hex
    entries = [*plan.keep, *(Entry(m.obj.key, m.obj.etag, m.rows, m.source_key) for m in plan.merge)]
    sizes = split_rows(sum(e.rows for e in entries), config.part_rows)
    if len(sizes) == 1:
        files = [head_key]
    else:
        free = (n for n in range(1, len(sizes) + len(listing.parts) + 1) if n not in listing.parts)
        files = [part_key(day, next(free)) for _ in sizes]
    layout = list(zip(files, sizes, lay_out(entries, sizes, files), strict=True))
    stream = RowStream(_day_batches(s3, bucket, directory, head, plan))
    # After this commit every part listed now is obsolete: the old head's, and any no head lists.
    replaced = frozenset((p.key, p.etag) for p in listing.parts.values())
    written: list[PartRef] = []
    out = directory / "out.parquet"
    try:
        _write_outputs(
            s3,
            config,
            day,
            batch=batch,
            layout=layout,
            stream=stream,
            replaced=replaced,
            written=written,
            out=out,
        )
        etag = _commit(s3, bucket, head_key, out, old=listing.head, batch=batch)
    except BaseException:
        if written and not _head_unknown(s3, bucket, head_key, batch):
            _logger.warning("run failed before its commit: deleting its own parts", extra={"date": str(day)})
            try:
                _delete_if_unchanged(s3, bucket, [S3Object(p.key, p.etag, 0) for p in written])
            except Exception:  # the original failure is the one to report; the next run cleans up
                _logger.exception("could not delete this run's parts; the next run will")
        raise
    finally:
        out.unlink(missing_ok=True)
    day_entries = [e for _, _, file_entries in layout for e in file_entries]
    own_rows = 0 if written else sizes[0]
    return Head(
        S3Object(head_key, etag, 0), batch, sum(sizes), own_rows, tuple(written), tuple(day_entries), replaced
    )


def compact_day(
    s3: S3Client, config: Config, day: date, marker_obj: S3Object | None = None
) -> dict[str, Any]:
    """Bring one day partition to its compacted files holding each current source's rows exactly once.

    `marker_obj` is the day's dirty-day marker as the run's listing found it (None: the day has none).
    """
    bucket = config.bucket
    result: dict[str, Any] = {"date": day.isoformat(), "key": compacted_key(day), "action": "noop", "rows": 0}
    result.update(files_merged=0, deleted=0, kept_changed=0, parts=0, parts_deleted=0, rows_dropped=0)
    result.update(verification=None, marker=None, left=[])
    # The marker is read before the partition is listed: the change it announces comes after it.
    marker = read_marker(s3, bucket, marker_obj) if marker_obj is not None else None
    listing = list_partition(s3, bucket, day)
    if not listing.sources and marker is None and not listing.parts:
        return result
    head = read_head(s3, bucket, listing.head) if listing.head is not None else None
    committed = {(p.key, p.etag) for p in head.parts} if head is not None else set()
    present = {(p.key, p.etag) for p in listing.parts.values()}
    if missing := sorted(committed - present):
        raise ManifestError(
            f"s3://{bucket}/{compacted_key(day)} lists parts that are gone or were overwritten: {missing}; "
            "their rows are not in the table until the day is rebuilt from raw/"
        )
    strays = [p for p in listing.parts.values() if (p.key, p.etag) not in committed]
    if not listing.sources and marker is None and not strays:
        result.update(rows=head.rows if head is not None else 0, parts=len(committed))
        return result
    entries = head.entries if head is not None else ()
    fresh = {o.key: read_source(s3, bucket, o) for o in fresh_sources(entries, listing.sources)}
    verification = verify(s3, bucket, marker, entries, fresh.values())
    plan = plan_partition(entries, listing.sources, fresh, verification.keeps)
    known = head.replaced if head is not None else frozenset()
    unknown = [p for p in strays if (p.key, p.etag) not in known]
    for part in unknown:
        check_ours(s3, bucket, part)
    result.update(verification=verification.status, left=[o.key for o in plan.leave])
    if plan.leave:
        _logger.warning(
            "sources the transformer's state no longer claims: neither merged nor deleted",
            extra={"bucket": bucket, "date": day.isoformat(), "keys": result["left"]},
        )
    if plan.changes or unknown:
        # A part no head lists may be another run's, still being written: it is deleted only after this
        # run's commit, which makes that run's commit fail.
        with tempfile.TemporaryDirectory(prefix=TMP_PREFIX) as tmp:
            head = write_day(s3, config, day, listing=listing, head=head, plan=plan, directory=Path(tmp))
        result.update(action="compacted", files_merged=len(plan.merge))
        result.update(rows_dropped=sum(e.rows for e in plan.dropped))
        obsolete = list(listing.parts.values())
    else:
        obsolete = strays  # each named by the head as replaced by its commit
        if plan.delete or strays:
            result.update(action="finished")
    if head is not None and result["action"] != "noop":
        result.update(rows=head.rows, parts=len(head.parts))
        # Before the deletes, and again by a run that finishes a crashed one: the copy always matches.
        _put_sidecar(s3, bucket, day, head.entries)
    result["parts_deleted"], _ = _delete_if_unchanged(s3, bucket, obsolete)
    result["deleted"], result["kept_changed"] = _delete_if_unchanged(s3, bucket, plan.delete)
    if marker is not None:
        result["marker"] = "kept"
        if verification.status == "done" and not plan.leave:
            deleted, newer = _delete_if_unchanged(s3, bucket, [S3Object(marker.key, marker.etag, 0)])
            result["marker"] = "deleted" if deleted else "kept" if newer else "gone"  # gone: another run's
    return result


# --- Handler ----------------------------------------------------------------------------------------


def metrics_line(metrics: Mapping[str, tuple[float, str]], at: datetime) -> str:
    """One CloudWatch Embedded Metric Format record (namespace EcommercePipeline, no dimensions). `at` is the
    time the line is written: CloudWatch drops datapoints older than two weeks."""
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


def compact(
    s3: S3Client, config: Config, event: Mapping[str, Any] | None, now: datetime
) -> tuple[list[date], list[dict[str, Any]]]:
    """The days an event asks for (the window and the marked days, or one date), each compacted."""
    markers = list_markers(s3, config.bucket)
    days = days_to_compact(event, now, config, markers)
    results = []
    for day in days:
        result = compact_day(s3, config, day, markers.get(day))
        if result["action"] != "noop" or result["marker"] is not None:
            _logger.info("compacted partition", extra={"bucket": config.bucket, **result})
        results.append(result)
    return days, results


def remove_stale_tmp() -> None:
    """A container runs one invocation at a time: a compactor directory already in /tmp was left by one
    that was killed (a timeout), and would eat into the next one's space."""
    for stale in Path(tempfile.gettempdir()).glob(f"{TMP_PREFIX}*"):
        _logger.warning("removing a killed invocation's files from /tmp", extra={"path": str(stale)})
        shutil.rmtree(stale, ignore_errors=True)


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """EventBridge schedule entry point (or {"date": "YYYY-MM-DD"} for a backfill): compact finished days."""
    started = time.perf_counter()
    config = load_config(os.environ)
    _logger.setLevel(config.log_level)
    warn_if_lambda_drops_metrics(os.environ)
    remove_stale_tmp()
    now = _utc_now()
    days, results = compact(s3_client(), config, event, now)
    totals = {
        "PartitionsCompacted": (sum(r["action"] == "compacted" for r in results), "Count"),
        "FilesCompacted": (sum(r["files_merged"] for r in results), "Count"),
        "RowsCompacted": (sum(r["rows"] for r in results if r["action"] == "compacted"), "Count"),
        "SourcesDeleted": (sum(r["deleted"] for r in results), "Count"),
    }
    sys.stdout.write(metrics_line(totals, _utc_now()) + "\n")  # stamped when written, never the event's time
    _logger.info(
        "compaction run done",
        extra={
            "bucket": config.bucket,
            "days": [d.isoformat() for d in days],
            "duration_ms": round((time.perf_counter() - started) * 1000, 1),
        },
    )
    return {"bucket": config.bucket, "days": results}
