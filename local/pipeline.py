"""Drive the real handlers as AWS would: a five-minute schedule, then one S3 event per object written."""

from __future__ import annotations

import json
import logging
import random
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from local.events import iso_z, s3_put_event, scheduled_event

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

_logger = logging.getLogger(__name__)

TICK = timedelta(minutes=5)
DAY = timedelta(days=1)


class HandlerError(RuntimeError):
    """A handler raised: on Lambda the invocation would fail, be retried and raise the Errors alarm."""


def invoke(handler: ModuleType, name: str, event: dict[str, Any], what: str) -> dict[str, Any]:
    """Call a handler as Lambda does; a failure says which handler and which input."""
    try:
        result: dict[str, Any] = handler.lambda_handler(event, None)
    except Exception as e:
        raise HandlerError(f"the {name} handler failed on {what}: {type(e).__name__}: {e}") from e
    return result


@dataclass
class RunSummary:
    """What a simulated schedule did, as the handlers reported it."""

    ticks: int = 0
    raw_files: int = 0
    records_generated: int = 0
    records_read: int = 0
    rows_written: int = 0
    quarantined: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    bad_files: list[str] = field(default_factory=list)
    fixed: dict[str, bytes] = field(default_factory=dict)  # bad file's key -> its content once fixed


@dataclass(frozen=True)
class Window:
    """The simulated span [start, end): one generator run every five minutes after `start` up to `end`.

    A run at time t writes transactions stamped in the five minutes before t, so the runs of a window
    cover exactly [start, end). A UTC day is complete when the window covers it whole.
    """

    start: datetime
    end: datetime

    @classmethod
    def ending(cls, end: datetime, days: float) -> Window:
        """The window of `days` days up to `end`, rounded down to the five-minute grid."""
        if days <= 0:
            raise ValueError(f"days must be positive, got {days}")
        end = end.astimezone(UTC).replace(second=0, microsecond=0)
        end -= timedelta(minutes=end.minute % 5)
        count = round(timedelta(days=days) / TICK)
        if count < 1:
            raise ValueError(f"{days} days is shorter than one five-minute tick")
        return cls(start=end - TICK * count, end=end)

    def ticks(self) -> list[datetime]:
        """The schedule's run times: start + 5 minutes, ..., end."""
        count = round((self.end - self.start) / TICK)
        return [self.start + TICK * i for i in range(1, count + 1)]

    def dates(self) -> list[date]:
        """Every UTC date the window's transactions fall on."""
        last = (self.end - timedelta(milliseconds=1)).date()
        return [self.start.date() + timedelta(days=i) for i in range((last - self.start.date()).days + 1)]

    def partial_dates(self) -> list[date]:
        """The dates the window covers only in part (their totals are not a whole day's)."""
        midnights = [(d, datetime.combine(d, time(), UTC)) for d in self.dates()]
        return [d for d, midnight in midnights if not self.start <= midnight < midnight + DAY <= self.end]

    def complete_dates(self) -> list[date]:
        return [d for d in self.dates() if d not in self.partial_dates()]

    def describe(self) -> str:
        """E.g. "2026-11-24 00:00 to 2026-11-25 00:00 UTC (1 complete day)"."""
        complete = len(self.complete_dates())
        parts = [f"{complete} complete day{'s' if complete != 1 else ''}"] if complete else []
        if self.partial_dates():
            parts.append("partial: " + ", ".join(f"{d:%Y-%m-%d}" for d in self.partial_dates()))
        return f"{self.start:%Y-%m-%d %H:%M} to {self.end:%Y-%m-%d %H:%M} UTC ({'; '.join(parts)})"


def last_midnight(now: datetime) -> datetime:
    """The start of the current UTC day: the end of the last complete one."""
    return datetime.combine(now.astimezone(UTC).date(), time(), UTC)


def schedule(end: datetime, days: float) -> list[datetime]:
    """The ticks of a rate(5 minutes) rule over `days` days ending at `end` (both ends on the grid)."""
    return Window.ending(end, days).ticks()


def s3_event_for(s3: S3Client, bucket: str, key: str, at: datetime) -> dict[str, Any]:
    """The notification S3 would send for an object that now exists (size and ETag read back from S3)."""
    head = s3.head_object(Bucket=bucket, Key=key)
    sequencer = f"{int(at.timestamp() * 1_000_000):016X}"
    return s3_put_event(
        bucket,
        key=key,
        size=int(head["ContentLength"]),
        etag=head["ETag"],
        sequencer=sequencer,
        event_time=at,
    )


@dataclass(frozen=True)
class HandUpload:
    """A hand-uploaded file: as first uploaded, with bad lines, and as its user fixes it later."""

    bad: bytes
    fixed: bytes


# What the user's fix does to a hand upload (the demo's replacement phase prints it).
FIX_DESCRIPTION = (
    "the six rejected lines whose intent is clear corrected, the truncated line, the array and the repeated "
    "record dropped, the transaction another file already delivered left out, and every timestamp moved "
    "back a day: the batch was the previous day's sales, as its line 'timestamp: yesterday' said"
)


def hand_upload(tick: datetime, rng: random.Random, earlier: dict[str, Any] | None) -> HandUpload:
    """A hand-uploaded file with one good record, a duplicate of a record from another file, and bad lines;
    and the same file fixed.

    Each bad line fails one rule of the contract, so quarantine shows every common reason. Each bad line
    but the unreadable ones is the good record with one field broken, so the fix mends that field; the
    fixed records are stamped a day earlier, so the fixed file's rows are in another day partition than
    the bad file's (FIX_DESCRIPTION).
    """
    moment = tick - timedelta(minutes=2)

    def new_id() -> str:
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))

    good = {
        "transaction_id": new_id(),
        "timestamp": iso_z(moment, milliseconds=True),
        "customer_id": "CUST-00001",
        "product_id": "PROD-0001",
        "product_name": "Wireless Mouse",
        "category": "Electronics",
        "quantity": 2,
        "price": 24.99,
        "total_amount": 49.98,
    }
    missing = {k: v for k, v in good.items() if k != "customer_id"}
    # The lines that each break one field of the good record (the ids are drawn in this order).
    broken = [
        {**missing, "transaction_id": new_id()},
        {**good, "transaction_id": new_id(), "price": -24.99},
        {**good, "transaction_id": new_id(), "quantity": "two"},
        {**good, "transaction_id": new_id(), "quantity": 0},
        {**good, "transaction_id": new_id(), "total_amount": 50},
        {**good, "transaction_id": new_id(), "timestamp": "yesterday"},
    ]
    lines = [
        json.dumps(good),
        '{"transaction_id": "truncated-by-a-broken-client", "timestamp": "2026-11-',
        json.dumps(["an", "array", "is", "not", "a", "transaction"]),
        *(json.dumps(record) for record in broken),
        json.dumps(good),  # the same transaction twice in one file
    ]
    if earlier is not None:
        lines.append(json.dumps(earlier))  # a transaction another file already delivered
    day_before = iso_z(moment - DAY, milliseconds=True)
    fixed = [
        {**good, "transaction_id": record["transaction_id"], "timestamp": day_before}
        for record in [good, *broken]
    ]
    return HandUpload(bad=_jsonl(lines), fixed=_jsonl(json.dumps(record) for record in fixed))


def _jsonl(lines: Iterable[str]) -> bytes:
    return "".join(f"{line}\n" for line in lines).encode("utf-8")


def first_record(s3: S3Client, bucket: str, key: str) -> dict[str, Any] | None:
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode("utf-8")
    for line in body.splitlines():
        if line.strip():
            record: dict[str, Any] = json.loads(line)
            return record
    return None


def _add(summary: RunSummary, result: dict[str, Any]) -> None:
    for item in result.get("processed", []):
        summary.records_read += int(item["records_read"])
        summary.rows_written += int(item["rows_written"])
        summary.quarantined += int(item["quarantined"])
        for reason, count in item.get("reasons", {}).items():
            summary.reasons[reason] = summary.reasons.get(reason, 0) + int(count)


def bad_file_ticks(ticks: list[datetime], count: int) -> set[datetime]:
    """Spread `count` hand uploads evenly over the schedule (never on the first tick)."""
    if count <= 0 or len(ticks) < 2:
        return set()
    step = len(ticks) / (count + 1)
    return {ticks[max(1, round(step * (i + 1)))] for i in range(count)}


def run_schedule(
    s3: S3Client,
    bucket: str,
    generator: ModuleType,
    transformer: ModuleType,
    ticks: list[datetime],
    *,
    bad_files: int = 0,
    seed: int | None = None,
    on_tick: Callable[[RunSummary], None] | None = None,
) -> RunSummary:
    """Invoke the generator at every tick and the transformer for every object written to raw/.

    The handlers read their configuration (BUCKET_NAME, TRANSACTIONS_PER_RUN, RANDOM_SEED) and
    their S3 endpoint from the environment, exactly as on Lambda; `s3` is only used to read back
    object metadata for the S3 events, and to upload the hand-written bad files.
    """
    summary = RunSummary()
    rng = random.Random(f"bad-files:{seed}")
    bad_at = bad_file_ticks(ticks, bad_files)
    earlier: dict[str, Any] | None = None
    for tick in ticks:
        generated = invoke(
            generator, "generator", scheduled_event(tick), f"the scheduled event of {tick:%Y-%m-%dT%H:%MZ}"
        )
        summary.ticks += 1
        summary.raw_files += 1
        summary.records_generated += int(generated["count"])
        key = str(generated["key"])
        if earlier is None:
            earlier = first_record(s3, bucket, key)
        _add(summary, invoke(transformer, "transformer", s3_event_for(s3, bucket, key, tick), key))
        if tick in bad_at:
            bad_key = (
                f"raw/year={tick:%Y}/month={tick:%m}/day={tick:%d}/hand-upload {tick:%Y%m%dT%H%M%SZ}.json"
            )
            upload = hand_upload(tick, rng, earlier)
            s3.put_object(Bucket=bucket, Key=bad_key, Body=upload.bad)
            summary.raw_files += 1
            summary.bad_files.append(bad_key)
            summary.fixed[bad_key] = upload.fixed
            _add(
                summary, invoke(transformer, "transformer", s3_event_for(s3, bucket, bad_key, tick), bad_key)
            )
        if on_tick is not None:
            on_tick(summary)
    return summary


def iter_keys(s3: S3Client, bucket: str) -> Iterator[str]:
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            yield item["Key"]


def download_bucket(s3: S3Client, bucket: str, dest: Path, workers: int = 4) -> int:
    """Copy every object of the bucket to dest/<key>, a few at a time; returns the number of objects.

    One GET per object, streamed to the file: boto3's download_file adds a HEAD and its own transfer
    threads per object, which doubled the copy's time against the embedded S3 (the demo's objects are
    small and many).
    """
    root = dest.resolve()
    targets = []
    for key in iter_keys(s3, bucket):
        target = (dest / key).resolve()
        if root not in target.parents:
            raise ValueError(f"object key {key!r} would be written outside {dest}")
        target.parent.mkdir(parents=True, exist_ok=True)
        targets.append((key, target))

    def download(key: str, target: Path) -> None:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"]
        with body, target.open("wb") as file:
            shutil.copyfileobj(body, file, 1024 * 1024)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        # list() re-raises the first failed download here.
        list(pool.map(lambda item: download(*item), targets))
    return len(targets)
