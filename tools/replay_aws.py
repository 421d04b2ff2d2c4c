"""The bucket as tools/replay.py sees it: names, state objects and their locks, dirty-day markers, manifests.

The names and the state object's format are the transformer's own (this module imports the handler file,
as the tests and the demo do): one definition. The compacted file's manifest is read as the compactor
writes it, and tests/test_replay.py checks that against the real compactor. AWS errors become ReplayError
with what was being done, where, and for an access denial the IAM action missing from
infra/iam/operator-replay-policy.json.
"""

from __future__ import annotations

import io
import json
import logging
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

from local.lambdas import load_lambda

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

_logger = logging.getLogger(__name__)
_transformer = load_lambda("transformer")

RAW_PREFIX = "raw/"
PROCESSED_PREFIX = "processed/transactions/"
QUARANTINE_PREFIX = "quarantine/"
STATE_PREFIX: str = _transformer.STATE_PREFIX
MARKER_PREFIX: str = _transformer.DIRTY_PREFIX
MANIFEST_KEY = b"compaction_manifest"  # the compacted file's footer entry (lambda/compactor)
POLICY_FILE = "infra/iam/operator-replay-policy.json"

# How long a lock taken by this tool holds off the transformer. The tool's critical section is a few
# requests; if the tool dies inside it, the transformer breaks the lock once it has expired.
LOCK_TTL = timedelta(minutes=5)

_COMPACTED_RE = re.compile(r"compacted-[0-9]{8}(?:-p[0-9]{2,})?\.parquet")
_HASHED_NAME_RE = re.compile(r"-([0-9a-f]{12})\.(?:parquet|jsonl)$")

# The IAM actions each API call needs: the error messages name them, and a test checks that the operator
# policy grants exactly the actions of the calls this tool makes. A conditional delete (If-Match) also
# needs s3:GetObject on the object.
IAM_ACTIONS: dict[str, tuple[str, ...]] = {
    "ListObjectsV2": ("s3:ListBucket",),
    "GetBucketLifecycleConfiguration": ("s3:GetLifecycleConfiguration",),
    "GetObject": ("s3:GetObject",),
    "PutObject": ("s3:PutObject",),
    "DeleteObject": ("s3:DeleteObject", "s3:GetObject"),
    "Invoke": ("lambda:InvokeFunction",),
    "GetQueueUrl": ("sqs:GetQueueUrl",),
    "ReceiveMessage": ("sqs:ReceiveMessage",),
    "DeleteMessage": ("sqs:DeleteMessage",),
    "ChangeMessageVisibility": ("sqs:ChangeMessageVisibility",),
}
_DENIED = {"AccessDenied", "AccessDeniedException", "403", "Forbidden", "AuthorizationError"}


class ReplayError(RuntimeError):
    """The operation cannot go on; the message says what was being done, where, and what to do."""


def error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def describe(error: ClientError, what: str) -> str:
    """One line for an AWS error: what was being done, the service's code, and the fix when known."""
    code = error_code(error)
    message = str(error.response.get("Error", {}).get("Message", "")) or str(error)
    operation = error.operation_name
    if code in _DENIED:
        actions = " and ".join(IAM_ACTIONS.get(operation, (operation,)))
        return f"{what}: access denied: this needs {actions} (see {POLICY_FILE}): {message}"
    if code == "NoSuchBucket":
        return f"{what}: the bucket does not exist (check --bucket and --region)"
    if code == "ResourceNotFoundException":
        return f"{what}: function not found (check --stack, --transformer-function, --compactor-function)"
    if code in ("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"):
        return f"{what}: the queue does not exist (check --stack, --queue-url, --region)"
    return f"{what}: {code or 'error'}: {message}"


@contextmanager
def aws_errors(what: str) -> Iterator[None]:
    """Turn an AWS or connection error inside the block into a ReplayError that says `what` failed."""
    try:
        yield
    except ClientError as e:
        raise ReplayError(describe(e, what)) from e
    except EndpointConnectionError as e:
        raise ReplayError(f"{what}: {e} (nothing answers there: for --local-endpoint, is it running?)") from e
    except BotoCoreError as e:  # no credentials, a timeout after retries
        raise ReplayError(f"{what}: {e}") from e


# --- Names ------------------------------------------------------------------------------------------


def state_key(raw_key: str) -> str:
    key: str = _transformer.state_key(raw_key)
    return key


def name_hash(raw_key: str) -> str:
    """The 12 hex digits every output name of `raw_key` ends with."""
    name: str = _transformer.output_name(raw_key)
    return name.rsplit("-", 1)[1]


def hashed_suffix(output_key: str) -> str | None:
    """The 12 hex digits at the end of an output name (the raw key's hash), or None for an older name."""
    match = _HASHED_NAME_RE.search(output_key)
    return match[1] if match else None


def output_stem(key: str) -> str:
    """An output's file name without .parquet or .jsonl."""
    return key.rsplit("/", 1)[-1].removesuffix(".parquet").removesuffix(".jsonl")


def old_stem(raw_key: str) -> str:
    """The name the transformer gave a raw key's outputs before issue 9: the file name without .json."""
    return raw_key.rsplit("/", 1)[-1].removesuffix(".json")


def day_of(key: str) -> date | None:
    """The year=/month=/day= date in a key, when it has one and it is a real date (the transformer's rule)."""
    day: date | None = _transformer.partition_day(key)
    return day


def day_prefix(prefix: str, day: date) -> str:
    return f"{prefix}year={day:%Y}/month={day:%m}/day={day:%d}/"


def marker_key(day: date) -> str:
    key: str = _transformer.dirty_marker_key(day)
    return key


def is_compacted(key: str) -> bool:
    return key.startswith(PROCESSED_PREFIX) and bool(_COMPACTED_RE.fullmatch(key.rsplit("/", 1)[-1]))


def iso_ms(moment: datetime) -> str:
    """UTC as YYYY-MM-DDTHH:MM:SS.mmmZ, the state object's time format."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


# --- Listing ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class S3Obj:
    key: str
    size: int
    etag: str  # without quotes
    last_modified: datetime


def list_objects(s3: S3Client, bucket: str, prefix: str) -> Iterator[S3Obj]:
    """Every object under `prefix`, in key order; folder placeholders (keys ending in /) left out."""
    with aws_errors(f"listing s3://{bucket}/{prefix}"):
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                if item["Key"].endswith("/"):
                    continue
                yield S3Obj(
                    key=item["Key"],
                    size=int(item["Size"]),
                    etag=item["ETag"].strip('"'),
                    last_modified=item["LastModified"].astimezone(UTC),
                )


def raw_retention_days(s3: S3Client, bucket: str) -> int | None:
    """After how many days a lifecycle rule expires objects under raw/ (the fewest, if several rules may
    apply; 0 for a rule with a fixed date), or None when no rule expires them."""
    try:
        rules = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    except ClientError as e:
        if error_code(e) == "NoSuchLifecycleConfiguration":
            return None
        raise ReplayError(describe(e, f"reading the lifecycle rules of s3://{bucket}")) from e
    except BotoCoreError as e:
        raise ReplayError(f"reading the lifecycle rules of s3://{bucket}: {e}") from e
    days: list[int] = []
    for rule in rules:
        expiration = rule.get("Expiration") or {}
        if rule.get("Status") != "Enabled" or not ("Days" in expiration or "Date" in expiration):
            continue
        selector: Any = rule.get("Filter") or {}
        prefix = str(
            rule.get("Prefix") or selector.get("Prefix") or (selector.get("And") or {}).get("Prefix") or ""
        )
        # A rule for part of raw/ (or with tags or sizes) may expire any raw object: counted, to be safe.
        if RAW_PREFIX.startswith(prefix) or prefix.startswith(RAW_PREFIX):
            days.append(int(expiration["Days"]) if "Days" in expiration else 0)
    return min(days) if days else None


def object_exists(s3: S3Client, bucket: str, key: str) -> bool:
    """Whether `key` exists, by listing (s3:ListBucket): this tool never reads raw data."""
    with aws_errors(f"checking s3://{bucket}/{key}"):
        page = s3.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1)
    return any(item["Key"] == key for item in page.get("Contents", []))


def delete_if_unchanged(s3: S3Client, bucket: str, obj: S3Obj) -> Literal["deleted", "gone", "changed"]:
    """Delete the version listed, only that one: an object rewritten since the listing is kept."""
    try:
        s3.delete_object(Bucket=bucket, Key=obj.key, IfMatch=f'"{obj.etag}"')
    except ClientError as e:
        if error_code(e) in ("NoSuchKey", "404"):
            return "gone"
        if error_code(e) in ("PreconditionFailed", "412"):
            return "changed"
        raise ReplayError(describe(e, f"deleting s3://{bucket}/{obj.key}")) from e
    except BotoCoreError as e:
        raise ReplayError(f"deleting s3://{bucket}/{obj.key}: {e}") from e
    return "deleted"


# --- State objects ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class State:
    """One raw key's state object, as read, with the object's ETag for conditional writes."""

    key: str
    object_etag: str
    last_modified: datetime
    document: dict[str, Any]

    @property
    def source_key(self) -> str:
        return str(self.document["source_key"])

    @property
    def etag(self) -> str | None:
        value = self.document["etag"]
        return None if value is None else str(value)

    @property
    def outputs(self) -> tuple[str, ...]:
        return tuple(self.document["outputs"])

    @property
    def lock(self) -> dict[str, Any] | None:
        lock: dict[str, Any] | None = self.document["lock"]
        return lock

    @property
    def complete(self) -> bool:
        return self.lock is None and self.etag is not None

    def locked_at(self, now: datetime) -> bool:
        """Whether a live lock is held (an expired one means its holder is dead)."""
        lock = self.lock
        return lock is not None and datetime.fromisoformat(str(lock["expires"])) > now

    def committed_since(self, moment: datetime) -> bool:
        """A commit (complete state) written at or after `moment` (S3 times have whole seconds)."""
        return self.complete and self.last_modified >= moment.replace(microsecond=0)


def parse_state(key: str, body: bytes, where: str) -> dict[str, Any]:
    """The state document, read by the transformer's own parser; anything else is a named error."""
    try:
        state = _transformer.State.from_json(body, where)
    except _transformer.TransformerError as e:
        raise ReplayError(str(e)) from e
    if state_key(state.source_key) != key:
        raise ReplayError(
            f"{where}: its source_key {state.source_key!r} belongs to another state key; fix or delete it by "
            "hand, then run again"
        )
    document: dict[str, Any] = json.loads(state.to_json())
    return document


def read_state(s3: S3Client, bucket: str, key: str) -> State | None:
    """The state object at `key`, or None when there is none."""
    where = f"s3://{bucket}/{key}"
    try:
        response = s3.get_object(Bucket=bucket, Key=key)
        body = response["Body"].read()
    except ClientError as e:
        if error_code(e) in ("NoSuchKey", "404"):
            return None
        raise ReplayError(describe(e, f"reading {where}")) from e
    except BotoCoreError as e:
        raise ReplayError(f"reading {where}: {e}") from e
    return State(
        key=key,
        object_etag=str(response["ETag"]).strip('"'),
        last_modified=response["LastModified"].astimezone(UTC),
        document=parse_state(key, body, where),
    )


def _put_state(s3: S3Client, bucket: str, key: str, document: dict[str, Any], if_match: str) -> str | None:
    """A conditional write of a state object; its new ETag, or None when someone changed it first (412)."""
    body = json.dumps(document, sort_keys=True, separators=(",", ":")).encode("utf-8")
    try:
        response = s3.put_object(
            Bucket=bucket, Key=key, Body=body, IfMatch=f'"{if_match}"', ContentType="application/json"
        )
    except ClientError as e:
        if error_code(e) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
            return None
        raise ReplayError(describe(e, f"writing s3://{bucket}/{key}")) from e
    except BotoCoreError as e:
        raise ReplayError(f"writing s3://{bucket}/{key}: {e}") from e
    return str(response["ETag"]).strip('"')


def lock_state(s3: S3Client, bucket: str, state: State, now: datetime) -> str | None:
    """Take the state's lock, as the transformer does, so that no invocation for its raw key runs meanwhile.

    Returns the ETag of the locked state, or None when a live lock is held or the state changed since it
    was read (the caller leaves that key for the next run).
    """
    if state.locked_at(now):
        return None
    lock = {"token": uuid.uuid4().hex, "expires": iso_ms(now + LOCK_TTL)}
    return _put_state(s3, bucket, state.key, {**state.document, "lock": lock}, state.object_etag)


def release_state(s3: S3Client, bucket: str, state: State, lock_etag: str) -> bool:
    """Put the state back as it was read (lock null); False when the lock was broken meanwhile."""
    return _put_state(s3, bucket, state.key, {**state.document, "lock": None}, lock_etag) is not None


def delete_state(s3: S3Client, bucket: str, state: State, lock_etag: str) -> bool:
    """Delete a state this tool has locked; False when the lock was broken meanwhile."""
    return delete_if_unchanged(s3, bucket, S3Obj(state.key, 0, lock_etag, state.last_modified)) != "changed"


# --- Dirty-day markers and manifests ----------------------------------------------------------------


def write_marker(
    s3: S3Client, bucket: str, day: date, reason: str, source_key: str | None, *, drop_unclaimed: bool
) -> None:
    """Ask the compactor to verify `day` against the states; a new token makes every write a new ETag."""
    body = {
        "token": uuid.uuid4().hex,
        "reason": reason,
        "source_key": source_key,
        "drop_unclaimed": drop_unclaimed,
    }
    key = marker_key(day)
    with aws_errors(f"writing the dirty-day marker s3://{bucket}/{key}"):
        s3.put_object(
            Bucket=bucket, Key=key, Body=json.dumps(body).encode("utf-8"), ContentType="application/json"
        )


def marked_days(s3: S3Client, bucket: str) -> list[date]:
    """The days that have a dirty-day marker (markers with another name are ignored: not the compactor's)."""
    days = []
    for obj in list_objects(s3, bucket, MARKER_PREFIX):
        day = day_of(obj.key.removesuffix(".json") + "/")
        if day is not None and obj.key == marker_key(day):
            days.append(day)
    return sorted(set(days))


class _RangeFile(io.RawIOBase):
    """A read-only file over one S3 object that fetches only the byte ranges read (a Parquet footer)."""

    def __init__(self, s3: S3Client, bucket: str, obj: S3Obj) -> None:
        super().__init__()
        self._s3, self._bucket, self._obj, self._pos = s3, bucket, obj, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._obj.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        end = min(self._pos + len(view), self._obj.size)
        if end <= self._pos:
            return 0
        response = self._s3.get_object(
            Bucket=self._bucket,
            Key=self._obj.key,
            Range=f"bytes={self._pos}-{end - 1}",
            IfMatch=f'"{self._obj.etag}"',
        )
        data = response["Body"].read()
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)


def read_manifest(s3: S3Client, bucket: str, obj: S3Obj) -> list[dict[str, Any]]:
    """The manifest entries ({key, etag, rows, source_key?}) in a compacted file's Parquet footer."""
    where = f"s3://{bucket}/{obj.key}"
    try:
        metadata = pq.read_metadata(_RangeFile(s3, bucket, obj)).metadata or {}
    except ClientError as e:
        if error_code(e) in ("NoSuchKey", "404", "PreconditionFailed", "412"):
            raise ReplayError(f"{where} changed since it was listed (the compactor ran?): run again") from e
        raise ReplayError(describe(e, f"reading the footer of {where}")) from e
    except BotoCoreError as e:
        raise ReplayError(f"reading the footer of {where}: {e}") from e
    except (OSError, pa.ArrowException) as e:
        raise ReplayError(f"{where} is not a readable Parquet file: {e}") from e
    raw = metadata.get(MANIFEST_KEY)
    if raw is None:
        raise ReplayError(f"{where} has a compacted file's name but no {MANIFEST_KEY.decode()} in its footer")
    try:
        sources = json.loads(raw)["sources"]
        entries = [dict(s) for s in sources]
        if not all(isinstance(e.get("key"), str) for e in entries):
            raise TypeError("an entry has no key")
    except (ValueError, KeyError, TypeError) as e:
        raise ReplayError(f"{where}: unreadable {MANIFEST_KEY.decode()}: {e}") from e
    return entries
