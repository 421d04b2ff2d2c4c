"""What the demo reads back from its bucket: a raw key's outputs with their sizes, and the transformer's
own counts from its state objects (one per raw key).

Names and the state format come through tools/replay_aws.py, which takes them from the transformer: one
definition.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from tools.replay_aws import (
    PROCESSED_PREFIX,
    QUARANTINE_PREFIX,
    RAW_PREFIX,
    STATE_PREFIX,
    day_prefix,
    list_objects,
    parse_state,
    read_manifest,
    read_state,
    state_key,
)

if TYPE_CHECKING:
    from datetime import date

    from mypy_boto3_s3 import S3Client


@dataclass(frozen=True)
class OutputFile:
    """One object of the processed table or of quarantine, with the records it holds."""

    key: str
    records: int  # rows of a Parquet file, lines of a quarantine file

    def line(self, width: int = 0) -> str:
        unit = "rows" if self.key.endswith(".parquet") else "quarantined lines"
        return f"{self.key:<{width}}  {self.records:>5} {unit}"


def count_records(s3: S3Client, bucket: str, key: str) -> int:
    """Rows of a Parquet file (from its footer), or non-blank lines of a JSON Lines file."""
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    if key.endswith(".parquet"):
        return int(pq.read_metadata(pa.BufferReader(body)).num_rows)
    return sum(1 for line in body.splitlines() if line.strip())


def outputs_named(s3: S3Client, bucket: str, name: str) -> list[OutputFile]:
    """Every object in processed/ and quarantine/ whose file name is `name` (a raw key's output name,
    <stem>-<hash>) plus .parquet or .jsonl: what S3 holds for that raw key, whatever its state says."""
    files = {f"{name}.parquet", f"{name}.jsonl"}
    return [
        OutputFile(obj.key, count_records(s3, bucket, obj.key))
        for prefix in (PROCESSED_PREFIX, QUARANTINE_PREFIX)
        for obj in list_objects(s3, bucket, prefix)
        if obj.key.rsplit("/", 1)[-1] in files
    ]


def day_files(s3: S3Client, bucket: str, day: date) -> list[OutputFile]:
    """The files of one day partition of the processed table."""
    return [
        OutputFile(obj.key, count_records(s3, bucket, obj.key))
        for obj in list_objects(s3, bucket, day_prefix(PROCESSED_PREFIX, day))
    ]


def exists(s3: S3Client, bucket: str, key: str) -> bool:
    return any(obj.key == key for obj in list_objects(s3, bucket, key))


def raw_keys(s3: S3Client, bucket: str, day: date | None = None) -> list[str]:
    """The raw objects the transformer takes (.json), of one day's partition or all, in key order."""
    prefix = RAW_PREFIX if day is None else day_prefix(RAW_PREFIX, day)
    return [obj.key for obj in list_objects(s3, bucket, prefix) if obj.key.endswith(".json")]


@dataclass
class StateTotals:
    """The transformer's own counts: the sums over its state objects, one per raw key it has processed."""

    raw_files: int = 0
    states: int = 0
    records_read: int = 0
    rows_written: int = 0
    quarantined: int = 0
    problems: list[str] = field(default_factory=list)  # raw keys without a finished state, and the reverse


def state_totals(root: Path) -> StateTotals:
    """Sum the counts of every state in a copy of the bucket at `root` (copied: no request per state).

    Each raw key must have one state, complete, and each state a raw key.
    """
    raw = {p.relative_to(root).as_posix() for p in (root / RAW_PREFIX).rglob("*.json") if p.is_file()}
    totals = StateTotals(raw_files=len(raw))
    seen: set[str] = set()
    for path in sorted((root / STATE_PREFIX).glob("*.json")):
        key = path.relative_to(root).as_posix()
        document = parse_state(key, path.read_bytes(), str(path))
        source = str(document["source_key"])
        if source not in raw:
            totals.problems.append(f"a state for {source}, which is not in raw/")
            continue
        if document["lock"] is not None or document["etag"] is None:
            totals.problems.append(f"the state of {source} is not complete (locked, or nothing committed)")
            continue
        seen.add(source)
        totals.states += 1
        totals.records_read += int(document["records_read"])
        totals.rows_written += int(document["rows_written"])
        totals.quarantined += int(document["quarantined"])
    totals.problems += [f"no state for {key}" for key in sorted(raw - seen)]
    return totals


def state_counts(s3: S3Client, bucket: str, raw_key: str) -> tuple[int, int, int] | None:
    """(records read, rows written, quarantined) of a raw key's committed content, from its state."""
    state = read_state(s3, bucket, state_key(raw_key))
    if state is None or not state.complete:
        return None
    doc = state.document
    return int(doc["records_read"]), int(doc["rows_written"]), int(doc["quarantined"])


def compacted_file(day: date) -> str:
    """The key of a day's compacted file (its head: the manifest of every source merged into the day)."""
    return f"{day_prefix(PROCESSED_PREFIX, day)}compacted-{day:%Y%m%d}.parquet"


def compacted_rows_of(s3: S3Client, bucket: str, day: date, raw_key: str) -> int | None:
    """The rows of `raw_key` in the day's compacted file, per its manifest; None when the day has none."""
    head = compacted_file(day)
    found = [obj for obj in list_objects(s3, bucket, head) if obj.key == head]
    if not found:
        return None
    return sum(
        int(e.get("rows", 0)) for e in read_manifest(s3, bucket, found[0]) if e.get("source_key") == raw_key
    )


def listed_outputs(s3: S3Client, bucket: str, raw_key: str) -> list[str]:
    """The outputs a raw key's state lists (those compacted away included)."""
    state = read_state(s3, bucket, state_key(raw_key))
    return [] if state is None else list(state.outputs)
