"""Transformer Lambda: validates raw JSON Lines from S3; writes Parquet to processed/, rejects to quarantine/.

Runs on Python 3.12 with the AWSSDKPandas layer for pyarrow and numpy; it imports nothing else outside
the standard library and boto3, so it pastes into the Lambda console as it is.

One semantics, two paths. The exact path reads one line at a time with Python's json module and is the
definition of every rule in docs/contract.md. The fast path reads a block of lines with pyarrow and checks the
same rules on whole columns, but it only ever ACCEPTS rows: a row it is not sure of goes to the exact path,
which decides and gives the reason. So the fast path can make the work faster, never different; a
property-based test (tests/test_transformer_paths.py) checks that on generated, damaged input.

The mechanisms, each with what it bought when measured (`make bench ARGS="--only mechanisms"`: min of
several runs on one core against the same code with the mechanism switched off; docs/performance.md):
- Blocks of about 8 MiB of whole lines: a file is never held whole. Memory still grows by 16 bytes a
  record for the duplicate check (below): a cold invocation peaks at 209 MiB on 1M records, 409 MiB on 7M.
- The fast path: pyarrow's JSON reader told the contract's nine fields and their types, and to fail on any
  other field; numpy for the rules. 8.3x less CPU than the exact path alone on 1M clean records. It
  accepts a row only if its quantity and amounts are JSON numbers: pyarrow reads numbers in strings by a
  looser grammar than the contract's (money strings, rare, go to the exact path; found by `make fuzz`).
- Line routing: in a block pyarrow cannot read, a regular expression picks the lines shaped like a clean
  record; those stay on the fast path, the others go line by line. 5.7x less CPU on a 1M-record file with
  1% bad lines, which then costs 1.2x the clean file instead of 6.8x.
- Blocks under 32 lines skip pyarrow: 0.7 to 0.8 ms less per call on the usual one-to-three-record file.
- Duplicate transaction_ids: 128-bit fingerprints in sorted runs, 16 bytes a record where a Python set of
  the strings holds 119 (1M ids: 35 MiB peak against 113), and 3x less CPU.
- Outputs of objects up to 8 MiB are built in memory, bigger ones in /tmp: 0.5 ms less per small call.
Records with fields the contract does not name are valid, and read line by line: the generator writes none.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus

import boto3
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json
import pyarrow.parquet as pq
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

_logger = logging.getLogger()

RAW_PREFIX = "raw/"
PROCESSED_PREFIX = "processed/transactions/"
QUARANTINE_PREFIX = "quarantine/"
METRICS_NAMESPACE = "EcommercePipeline"

# Lines are read from S3 and validated in blocks of about this many bytes: the object is never held whole,
# and each block is big enough for pyarrow's reader to run at full speed.
BLOCK_BYTES = 8 * 1024 * 1024
# A file that is one JSON document (an array, or one pretty-printed object) is parsed whole, which takes
# about 12 times its size in memory (measured: a 30 MiB array peaks at 386 MiB); beyond this size it is
# read as JSON Lines instead, so that the function fits in 512 MB.
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024
# Outputs of a raw object up to this size are built in memory; bigger ones in a temporary directory (/tmp).
IN_MEMORY_BYTES = 8 * 1024 * 1024
# A block of fewer lines than this goes straight to the exact path (pyarrow's reader costs 0.7-0.8 ms a call).
SMALL_BLOCK_LINES = 32
# RFC 8259 lets a parser limit nesting; Python's json module would hit its recursion limit not far above.
MAX_DEPTH = 512

# ---------------------------------------------------------------------------------------------------
# The contract's schema (docs/contract.md). The generator and the DDL in sql/ carry the same lists; a test
# checks that the three agree.

RAW_FIELDS: tuple[str, ...] = (
    "transaction_id",
    "timestamp",
    "customer_id",
    "product_id",
    "product_name",
    "category",
    "quantity",
    "price",
    "total_amount",
)
STRING_FIELDS: tuple[str, ...] = ("transaction_id", "customer_id", "product_id", "product_name", "category")
MONEY_FIELDS: tuple[str, ...] = ("price", "total_amount")
MONEY = pa.decimal128(10, 2)
TIMESTAMP = pa.timestamp("ms", tz="UTC")
INT32_MAX = 2**31 - 1
MONEY_MAX = Decimal("99999999.99")
MONEY_MAX_CENTS = 9_999_999_999
CENT = Decimal("0.01")

PROCESSED_SCHEMA = pa.schema(
    [
        pa.field("transaction_id", pa.string()),
        pa.field("timestamp", TIMESTAMP),
        pa.field("customer_id", pa.string()),
        pa.field("product_id", pa.string()),
        pa.field("product_name", pa.string()),
        pa.field("category", pa.string()),
        pa.field("quantity", pa.int32()),
        pa.field("price", MONEY),
        pa.field("total_amount", MONEY),
        pa.field("hour", pa.int32()),
        pa.field("day_of_week", pa.int32()),
    ]
)
# What the fast path asks pyarrow to read. Timestamps are read as text and parsed below, so that both
# paths accept the same forms; any other field, or a value of another JSON type, fails the read.
_READ_SCHEMA = pa.schema(
    [
        pa.field(name, pa.int64() if name == "quantity" else MONEY if name in MONEY_FIELDS else pa.string())
        for name in RAW_FIELDS
    ]
)

REASONS: tuple[str, ...] = (
    "malformed_json",
    "not_an_object",
    "missing_field",
    "invalid_type",
    "invalid_timestamp",
    "invalid_quantity",
    "invalid_price",
    "total_mismatch",
    "duplicate_transaction_id",
)

# --- Rules both paths apply with one pattern: Python's re (exact path) and RE2 in pyarrow (fast path). ---

# ISO 8601: date, T or space, hh:mm[:ss[.fraction]], then Z, ±hh, ±hhmm, ±hh:mm or nothing (read as UTC).
# [0-9] rather than \d: Python's \d also matches non-ASCII digits. Matched whole (fullmatch, ^...$ in RE2).
TIMESTAMP_PATTERN = (
    r"(?P<year>[0-9]{4})-(?P<month>[0-9]{2})-(?P<day>[0-9]{2})"
    r"[T ](?P<hour>[01][0-9]|2[0-3]):(?P<minute>[0-5][0-9])"
    r"(?::(?P<second>[0-5][0-9])(?:\.(?P<fraction>[0-9]{1,9}))?)?"
    r"(?:Z|(?P<sign>[+-])(?P<zone_hour>[01][0-9]|2[0-3])(?::?(?P<zone_minute>[0-5][0-9]))?)?"
)
_TIMESTAMP_RE = re.compile(TIMESTAMP_PATTERN)
# A blank string: nothing but characters with Unicode's White_Space property.
WHITESPACE = (
    "\t\n\v\f\r \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + "\u2028\u2029\u202f\u205f\u3000"
)
_BLANK_RE = re.compile(f"[{WHITESPACE}]*")
# Money given as a string: the text of a number, with an optional sign and exponent ("24.99", "+5", ".5",
# "1e2"), as docs/contract.md says. Only the exact path reads money strings (see numbers_unquoted).
_MONEY_STRING_RE = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
# A block whose first value is null (after JSON whitespace): see read_block.
_LEADING_NULL_RE = re.compile(rb"[ \t\r\n]*null")
# A JSON string escape that may stand for half a surrogate pair (\uD800-\uDFFF).
_SURROGATE_ESCAPE_RE = re.compile(r"\\u[dD][89a-fA-F]")
_PARTITION_RE = re.compile(r"(?:^|/)year=([0-9]{4})/month=([0-9]{2})/day=([0-9]{2})/")

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


class TransformerError(RuntimeError):
    """A failure that is not a bad record: it raises out of the handler so that Lambda retries."""


class ConfigError(TransformerError, ValueError):
    """An environment variable has an invalid value."""


class EventError(TransformerError):
    """The invoking event is not an S3 notification this function understands."""


class _NeedsExactPathError(Exception):
    """pyarrow could not read a block as the contract's fields and types: route its lines instead."""


# ---------------------------------------------------------------------------------------------------
# Configuration: read from the environment in one place.


@dataclass(frozen=True)
class Config:
    output_bucket: str | None
    log_level: int = logging.INFO


def parse_log_level(value: str | None) -> int:
    """LOG_LEVEL as a `logging` level: any case, unset or blank is INFO, WARN means WARNING."""
    name = (value or "").strip().upper() or "INFO"
    if name not in LOG_LEVELS:
        raise ConfigError(f"LOG_LEVEL must be one of {', '.join(LOG_LEVELS)} (any case), got {value!r}")
    return LOG_LEVELS[name]


def load_config(env: Mapping[str, str]) -> Config:
    """BUCKET_NAME is optional: without it, output goes to the bucket the event came from."""
    log_level = parse_log_level(env.get("LOG_LEVEL"))
    bucket = env.get("BUCKET_NAME", "").strip()
    if bucket and not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
        raise ConfigError(f"BUCKET_NAME is not a valid S3 bucket name: {bucket!r}")
    return Config(output_bucket=bucket or None, log_level=log_level)


def warn_if_lambda_drops_metrics(env: Mapping[str, str]) -> None:
    """Log an error when Lambda's application log level would silently drop the metric lines."""
    level = env.get("AWS_LAMBDA_LOG_LEVEL", "").strip().upper()
    if level in _LAMBDA_LEVELS_THAT_DROP_METRICS:
        _logger.error(
            f"Lambda's application log level is {level}: it drops this function's metric lines (Lambda "
            "counts them as INFO), so the dashboard and the stalled alarm get no data. Set the application "
            "log level to INFO (Configuration > Monitoring and operations tools > Logging configuration) "
            "and use LOG_LEVEL to quiet the function's own logs.",
            extra={"application_log_level": level},
        )


# ---------------------------------------------------------------------------------------------------
# Events and keys


@dataclass(frozen=True)
class S3Object:
    bucket: str
    key: str


def objects_from_event(event: Mapping[str, Any]) -> tuple[list[S3Object], list[dict[str, str]]]:
    """The raw objects an S3 notification asks to process, and what it asks that is skipped (and why)."""
    if event.get("Event") == "s3:TestEvent":
        return [], [{"reason": "s3:TestEvent", "key": ""}]
    records = event.get("Records")
    if not isinstance(records, list):
        raise EventError(
            "event has no 'Records' list: this function expects an S3 ObjectCreated notification "
            f"(top-level fields: {sorted(event)[:10]})"
        )
    objects: list[S3Object] = []
    skipped: list[dict[str, str]] = []
    for index, record in enumerate(records):
        try:
            source = record.get("eventSource")
            name = str(record.get("eventName", ""))
            bucket = record["s3"]["bucket"]["name"]
            key = unquote_plus(record["s3"]["object"]["key"])
        except (AttributeError, KeyError, TypeError) as e:
            raise EventError(f"event record {index} lacks s3.bucket.name or s3.object.key") from e
        if source != "aws:s3" or not name.startswith("ObjectCreated:"):
            skipped.append({"reason": f"not an S3 ObjectCreated event ({source}, {name})", "key": key})
        elif not key.startswith(RAW_PREFIX):
            skipped.append({"reason": f"key outside {RAW_PREFIX}", "key": key})
        elif not key.endswith(".json"):
            skipped.append({"reason": "key does not end in .json", "key": key})
        else:
            objects.append(S3Object(bucket=bucket, key=key))
    return objects, skipped


# Every output key derives only from the raw key (and, for an undated key, the raw object's LastModified).
# <stem>-<h>: two raw files with one file name in different folders never share an output, a raw name can
# never produce a hidden name (Athena skips _x and .x) nor the compactor's compacted-YYYYMMDD[-pNN].
STEM_MAX_BYTES = 150  # keeps every output key far below S3's 1,024-byte limit, whatever the raw key


def output_name(raw_key: str) -> str:
    """`<stem>-<first 12 hex of SHA-256 of the raw key>`, stem without leading _ or . (docs/contract.md)."""
    stem = raw_key.rsplit("/", 1)[-1].removesuffix(".json").lstrip("_.")
    stem = stem.encode("utf-8")[:STEM_MAX_BYTES].decode("utf-8", errors="ignore")
    return f"{stem}-{hashlib.sha256(raw_key.encode('utf-8')).hexdigest()[:12]}"


def _partition(day: date) -> str:
    return f"year={day.year:04d}/month={day.month:02d}/day={day.day:02d}"


@dataclass(frozen=True)
class OutputPlan:
    """Where one raw object's outputs go."""

    name: str
    quarantine_date: date

    def processed_key(self, day: date) -> str:
        return f"{PROCESSED_PREFIX}{_partition(day)}/{self.name}.parquet"

    def quarantine_key(self) -> str:
        return f"{QUARANTINE_PREFIX}{_partition(self.quarantine_date)}/{self.name}.jsonl"


def partition_day(key: str) -> date | None:
    """The date of a key's year=/month=/day= partition, when it has one and it is a real date."""
    match = _PARTITION_RE.search(key)
    if not match:
        return None
    try:
        return date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError:
        return None


def plan_outputs(raw_key: str, last_modified: datetime) -> OutputPlan:
    """The quarantine date is the raw key's year=/month=/day=, else the object's LastModified UTC date:
    never the processing date, so a retry on another day writes the same key."""
    quarantine_date = partition_day(raw_key) or last_modified.astimezone(UTC).date()
    return OutputPlan(name=output_name(raw_key), quarantine_date=quarantine_date)


# ---------------------------------------------------------------------------------------------------
# The exact path: one record at a time. It defines every rule; the fast path must agree with it.


@dataclass(frozen=True)
class Reject:
    reason: str
    detail: str


# transaction_id, UTC milliseconds since the epoch, customer_id, product_id, product_name, category,
# quantity, price, total_amount
Row = tuple[str, int, str, str, str, str, int, Decimal, Decimal]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float | Decimal):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        twice = next(key for key, _ in pairs if key in seen or seen.add(key))  # type: ignore[func-returns-value]
        raise ValueError(f"the key {twice[:60]!r} appears twice in one object")
    return obj


def _depth(value: Any) -> int:
    """How deeply arrays and objects nest in a parsed JSON value (1 for a flat object), without recursion."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        current, level = stack.pop()
        children = current.values() if isinstance(current, dict) else current
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in children if isinstance(child, dict | list))
    return deepest if isinstance(value, dict | list) else 0


def parse_json(raw: bytes) -> Any | Reject:
    """One record's bytes as a JSON value (RFC 8259, UTF-8), or why they are not one (malformed_json).

    Stricter than json.loads: no NaN or Infinity, no key twice in an object, no lone surrogate escape,
    nesting at most MAX_DEPTH. Numbers become Decimal (exact, and no limit on an integer's digits).
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return Reject("malformed_json", f"not valid UTF-8: byte 0x{raw[e.start]:02x} at offset {e.start}")
    if text.startswith("\ufeff"):
        return Reject("malformed_json", "not valid JSON: a byte order mark inside the file")
    too_deep = Reject("malformed_json", f"arrays and objects nested deeper than {MAX_DEPTH} levels")
    try:
        value = json.loads(
            text,
            object_pairs_hook=_unique_keys,
            parse_constant=_reject_constant,
            parse_float=Decimal,
            parse_int=Decimal,
        )
    except RecursionError:  # Python's own limit, well above MAX_DEPTH
        return too_deep
    except ValueError as e:
        return Reject("malformed_json", f"not valid JSON: {e}")
    # Nesting can only pass the limit where there are more brackets than that: not worth a walk else.
    if text.count("[") + text.count("{") > MAX_DEPTH and _depth(value) > MAX_DEPTH:
        return too_deep
    if _SURROGATE_ESCAPE_RE.search(text):
        try:
            json.dumps(value, ensure_ascii=False, default=str).encode("utf-8")
        except UnicodeEncodeError:
            return Reject("malformed_json", "not valid JSON: a \\u escape of half a surrogate pair")
    return value


def is_blank(value: str) -> bool:
    return _BLANK_RE.fullmatch(value) is not None


def parse_timestamp(text: str) -> int | None:
    """An ISO 8601 timestamp as UTC milliseconds since the epoch (sub-millisecond digits dropped), or None
    if it does not parse, is not a real date, or its UTC instant is outside years 0001-9999."""
    match = _TIMESTAMP_RE.fullmatch(text)
    if not match:
        return None
    parts = match.groupdict()
    offset = timedelta(hours=int(parts["zone_hour"] or 0), minutes=int(parts["zone_minute"] or 0))
    try:
        local = datetime(
            int(parts["year"]),
            int(parts["month"]),
            int(parts["day"]),
            int(parts["hour"]),
            int(parts["minute"]),
            int(parts["second"] or 0),
            int((parts["fraction"] or "0").ljust(3, "0")[:3]) * 1000,
            tzinfo=timezone(-offset if parts["sign"] == "-" else offset),
        )
        moment = local.astimezone(UTC)
    except (ValueError, OverflowError):
        return None
    return (moment - _EPOCH) // _MILLISECOND


def _money(name: str, value: Any) -> Decimal | Reject:
    if isinstance(value, str):
        if not _MONEY_STRING_RE.fullmatch(value):
            return Reject("invalid_type", f"{name} is a string that is not a number: {value[:40]!r}")
        value = Decimal(value)
    amount: Decimal = value
    if amount < 0:
        return Reject("invalid_price", f"{name} is negative: {_short(amount)}")
    if amount > MONEY_MAX:
        return Reject("invalid_price", f"{name} does not fit decimal(10,2): {_short(amount)}")
    try:
        exact = amount == amount.quantize(CENT)
    except InvalidOperation:
        exact = False
    if not exact:
        return Reject("invalid_price", f"{name} has more than two decimals: {_short(amount)}")
    return amount.quantize(CENT)


def _short(value: Decimal) -> str:
    text = str(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def _presence_and_types(obj: Mapping[str, Any]) -> Reject | None:
    """Every field present and not blank (missing_field), then of a JSON type it may have (invalid_type)."""
    for name in RAW_FIELDS:
        value = obj.get(name)
        if value is None:
            return Reject("missing_field", f"{name} is {'null' if name in obj else 'absent'}")
        if isinstance(value, str) and is_blank(value):
            return Reject("missing_field", f"{name} is {'empty' if not value else 'blank'}")
    for name in (*STRING_FIELDS, "timestamp"):
        if not isinstance(obj[name], str):
            return Reject("invalid_type", f"{name} must be a string, got {_json_type(obj[name])}")
    if not isinstance(obj["quantity"], Decimal):
        return Reject("invalid_type", f"quantity must be a number, got {_json_type(obj['quantity'])}")
    for name in MONEY_FIELDS:
        if not isinstance(obj[name], Decimal | str):
            return Reject(
                "invalid_type", f"{name} must be a number or a numeric string, got {_json_type(obj[name])}"
            )
    return None


def validate_record(obj: Mapping[str, Any]) -> Row | Reject:
    """Check one parsed object against the contract; the first failing rule gives the reason."""
    problem = _presence_and_types(obj)
    if problem is not None:
        return problem
    millis = parse_timestamp(obj["timestamp"])
    if millis is None:
        return Reject(
            "invalid_timestamp",
            f"timestamp is not an ISO 8601 instant within years 0001-9999: {obj['timestamp'][:60]!r}",
        )
    quantity: Decimal = obj["quantity"]
    # The range first: to_integral_value and int() of 1e999999999 would take forever.
    if not 1 <= quantity <= INT32_MAX or quantity != quantity.to_integral_value():
        return Reject(
            "invalid_quantity", f"quantity must be a whole number from 1 to {INT32_MAX}: {_short(quantity)}"
        )
    price = _money("price", obj["price"])
    if isinstance(price, Reject):
        return price
    total = _money("total_amount", obj["total_amount"])
    if isinstance(total, Reject):
        return total
    count = int(quantity)
    if total != price * count:
        return Reject(
            "total_mismatch", f"total_amount {total} != price {price} x quantity {count} = {price * count}"
        )
    return (
        obj["transaction_id"],
        millis,
        obj["customer_id"],
        obj["product_id"],
        obj["product_name"],
        obj["category"],
        count,
        price,
        total,
    )


def validate_value(value: Any) -> Row | Reject:
    """One parsed JSON value (a line, or an element of a file that is one array) through every rule."""
    if isinstance(value, Reject):
        return value
    if not isinstance(value, dict):
        return Reject("not_an_object", f"a JSON {_json_type(value)}, not an object")
    return validate_record(value)


def validate_line(raw: bytes) -> Row | Reject:
    """One line of JSON Lines (without its line ending) through every rule of the contract."""
    return validate_value(parse_json(raw))


# ---------------------------------------------------------------------------------------------------
# Arrow arrays built from buffers, never from Python values: pyarrow's conversion of Python objects looks
# for pandas types first and so imports pandas (about 0.3 s and 47 MiB on a cold start).


def _buffer_array(type_: pa.DataType, values: np.ndarray) -> pa.Array:
    """A fixed-width array without nulls from a numpy array of the same width."""
    return pa.Array.from_buffers(type_, len(values), [None, pa.py_buffer(np.ascontiguousarray(values))])


def _bool_array(mask: np.ndarray) -> pa.Array:
    return pa.Array.from_buffers(
        pa.bool_(), len(mask), [None, pa.py_buffer(np.packbits(mask, bitorder="little").tobytes())]
    )


def _bits(buffer: pa.Buffer | None, offset: int, length: int) -> np.ndarray:
    """A bitmap as numpy bools (all true where there is none)."""
    if buffer is None:
        return np.ones(length, dtype=bool)
    bits = np.unpackbits(np.frombuffer(buffer, dtype=np.uint8), bitorder="little")
    return bits[offset : offset + length].astype(bool)


def _present(array: pa.Array) -> np.ndarray:
    return _bits(array.buffers()[0], array.offset, len(array))


def _string_array(values: Sequence[str]) -> pa.Array:
    encoded = [value.encode("utf-8") for value in values]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int32)
    np.cumsum([len(value) for value in encoded], out=offsets[1:])
    return pa.Array.from_buffers(
        pa.string(), len(encoded), [None, pa.py_buffer(offsets.tobytes()), pa.py_buffer(b"".join(encoded))]
    )


def _cents(array: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A decimal128(10,2) array as int64 cents, and where that is exact (the high word is only the sign)."""
    words = np.frombuffer(array.buffers()[1], dtype=np.int64)[
        2 * array.offset : 2 * (array.offset + len(array))
    ]
    low, high = words[0::2], words[1::2]
    return low, high == (low >> 63)


def _money_array(cents: np.ndarray) -> pa.Array:
    """decimal128(10,2) from int64 cents: each value is 16 little-endian bytes, the high word the sign."""
    words = np.empty(2 * len(cents), dtype=np.int64)
    words[0::2] = cents
    words[1::2] = cents >> 63
    return pa.Array.from_buffers(MONEY, len(cents), [None, pa.py_buffer(words)])


def _table(columns: Sequence[pa.Array], millis: np.ndarray) -> pa.Table:
    """The processed table from the validated columns (transaction_id, customer_id, product_id,
    product_name, category, quantity, price, total_amount) and the UTC milliseconds; hour and day of week
    are derived here, once for both paths (1970-01-01 was a Thursday: day 3, counting Monday as 0)."""
    days = np.floor_divide(millis, 86_400_000)
    hour = np.floor_divide(millis, 3_600_000) % 24
    arrays = [
        columns[0],
        _buffer_array(TIMESTAMP, millis.astype(np.int64)),
        *columns[1:],
        _buffer_array(pa.int32(), hour.astype(np.int32)),
        _buffer_array(pa.int32(), ((days + 3) % 7).astype(np.int32)),
    ]
    return pa.Table.from_arrays(arrays, schema=PROCESSED_SCHEMA)


def rows_to_table(rows: Sequence[Row]) -> pa.Table:
    """Rows from the exact path as the processed table."""
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in RAW_FIELDS]
    tid, millis, customer, product, name, category, quantity, price, total = columns
    return _table(
        [
            *(_string_array(column) for column in (tid, customer, product, name, category)),
            _buffer_array(pa.int32(), np.array(quantity, dtype=np.int32)),
            *(
                _money_array(np.array([int(a * 100) for a in column], dtype=np.int64))
                for column in (price, total)
            ),
        ],
        np.array(millis, dtype=np.int64),
    )


# ---------------------------------------------------------------------------------------------------
# The fast path: pyarrow reads a block, numpy checks the rules on whole columns. It only accepts: a row
# that fails a check here goes to the exact path, which decides it.

_PARSE_OPTIONS = pa_json.ParseOptions(explicit_schema=_READ_SCHEMA, unexpected_field_behavior="error")
_DAYS_IN_MONTH = np.array([31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], dtype=np.int64)
# The first byte of every whitespace character in WHITESPACE (ASCII ones, and the lead bytes of the others).
_BLANK_LEADS = np.array(sorted({ch.encode("utf-8")[0] for ch in WHITESPACE}), dtype=np.uint8)


def _days_from_civil(year: np.ndarray, month: np.ndarray, day: np.ndarray) -> np.ndarray:
    """Days since 1970-01-01 of proleptic Gregorian dates (H. Hinnant's algorithm), for years >= 0."""
    y = year - (month <= 2)
    era = y // 400
    year_of_era = y - era * 400
    day_of_year = (153 * ((month + 9) % 12) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    days: np.ndarray = era * 146_097 + day_of_era - 719_468
    return days


_MIN_MILLIS = int(_days_from_civil(np.array([1]), np.array([1]), np.array([1]))[0]) * 86_400_000
_MAX_MILLIS = int(_days_from_civil(np.array([9999]), np.array([12]), np.array([31]))[0] + 1) * 86_400_000 - 1


def _int64s(array: pa.Array) -> np.ndarray:
    """An int64 array's values (whatever is in the slots of its nulls: the callers mask those)."""
    return np.frombuffer(array.buffers()[1], dtype=np.int64)[array.offset : array.offset + len(array)]


def _first_bytes(strings: pa.Array) -> np.ndarray:
    """The first byte of each string (0 for an empty one)."""
    offsets = np.frombuffer(strings.buffers()[1], dtype=np.int32)[
        strings.offset : strings.offset + len(strings) + 1
    ]
    data = strings.buffers()[2]
    if data is None or len(data) == 0:
        return np.zeros(len(strings), dtype=np.uint8)
    values = np.frombuffer(data, dtype=np.uint8)
    starts = np.minimum(offsets[:-1], len(values) - 1)
    return np.where(offsets[1:] > offsets[:-1], values[starts], 0).astype(np.uint8)


def _utc_millis(
    year: np.ndarray, month: np.ndarray, day: np.ndarray, local: np.ndarray, offset: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """UTC milliseconds from a date, the milliseconds into that day and the zone's offset, and where they
    make a real date and a UTC instant within years 0001-9999 (as datetime and astimezone decide)."""
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    month_days = _DAYS_IN_MONTH[np.clip(month, 1, 12) - 1] + (leap & (month == 2))
    ok = (month >= 1) & (month <= 12) & (day >= 1) & (day <= month_days) & (year >= 1)
    millis = _days_from_civil(year, np.clip(month, 1, 12), day) * 86_400_000 + local - offset
    ok &= (millis >= _MIN_MILLIS) & (millis <= _MAX_MILLIS)
    return millis, ok


# The generator's form, 2026-11-25T14:03:27.512Z: 24 bytes, digits but for these separators.
_CANONICAL_SEPARATORS = {4: "-", 7: "-", 10: "T", 13: ":", 16: ":", 19: ".", 23: "Z"}
_CANONICAL_DIGITS = np.array([i for i in range(24) if i not in _CANONICAL_SEPARATORS])


def _canonical_timestamps(text: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The timestamps in the generator's exact form, parsed with numpy on the bytes: the regular
    expression costs about 25 ms per block, this about 2. Returns UTC milliseconds, where they parsed,
    and which rows have that form (the others are left to _pattern_timestamps)."""
    count = len(text)
    millis, parsed = np.zeros(count, dtype=np.int64), np.zeros(count, dtype=bool)
    offsets = np.frombuffer(text.buffers()[1], dtype=np.int32)[text.offset : text.offset + count + 1]
    data = text.buffers()[2]
    shaped = (np.diff(offsets) == 24) & _present(text)
    if data is None or not shaped.any():
        return millis, parsed, shaped
    rows = np.flatnonzero(shaped)
    values = np.frombuffer(data, dtype=np.uint8)
    if len(rows) == count:  # all 24 bytes long, one after the other: the data is a rows x 24 matrix
        chars = values[offsets[0] : offsets[0] + 24 * count].reshape(count, 24)
    else:
        chars = values[offsets[rows][:, None] + np.arange(24)]
    form = ((chars[:, _CANONICAL_DIGITS] - ord("0")) <= 9).all(axis=1)  # uint8: a byte below "0" wraps
    for position, separator in _CANONICAL_SEPARATORS.items():
        form &= chars[:, position] == ord(separator)

    def number(start: int, width: int) -> np.ndarray:
        value = np.zeros(len(rows), dtype=np.int64)
        for i in range(start, start + width):
            value = value * 10 + chars[:, i].astype(np.int64) - ord("0")
        return value

    hour, minute, second = number(11, 2), number(14, 2), number(17, 2)
    local = ((hour * 60 + minute) * 60 + second) * 1000 + number(20, 3)
    utc, ok = _utc_millis(number(0, 4), number(5, 2), number(8, 2), local, np.zeros(len(rows), np.int64))
    millis[rows] = utc
    # The pattern's [01][0-9]|2[0-3] and [0-5][0-9]: a clock out of range does not match it at all.
    parsed[rows] = form & ok & (hour <= 23) & (minute <= 59) & (second <= 59)
    shaped[rows] = form
    return millis, parsed, shaped


def _pattern_timestamps(text: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """TIMESTAMP_PATTERN on a column (RE2): UTC milliseconds, and where the value parsed."""
    parts = pc.extract_regex(text, f"^{TIMESTAMP_PATTERN}$")  # null where the pattern does not match

    def number(name: str) -> np.ndarray:
        # An optional group that did not match is "": padded to "0" (or "000" for the fraction).
        digits = parts.field(name)
        if name == "fraction":
            digits = pc.utf8_rpad(pc.utf8_slice_codeunits(digits, 0, 3), width=3, padding="0")
        else:
            digits = pc.utf8_lpad(digits, width=1, padding="0")
        return _int64s(pc.cast(digits, pa.int64()))

    local = ((number("hour") * 60 + number("minute")) * 60 + number("second")) * 1000 + number("fraction")
    offset = (number("zone_hour") * 60 + number("zone_minute")) * 60_000
    offset = np.where(_first_bytes(parts.field("sign")) == ord("-"), -offset, offset)
    millis, ok = _utc_millis(number("year"), number("month"), number("day"), local, offset)
    return millis, ok & _present(parts)


def parse_timestamps(text: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """parse_timestamp for a whole column: UTC milliseconds, and where the value parsed."""
    millis, parsed, done = _canonical_timestamps(text)
    rest = np.flatnonzero(~done)
    if len(rest):
        others = text if len(rest) == len(text) else text.take(_buffer_array(pa.int64(), rest))
        millis[rest], parsed[rest] = _pattern_timestamps(others)
    return millis, parsed


def read_block(block: bytes) -> pa.Table:
    """The block's records with the contract's types, one row per non-blank line; _NeedsExactPathError if
    pyarrow cannot read it so (bad JSON, another field, a value of another type or out of range)."""
    if _LEADING_NULL_RE.match(block):
        # pyarrow 24's reader kills the process (segmentation fault) when the first value it reads is null
        # (found by `make fuzz`): such a block never reaches it, and the routing gives it the other lines.
        raise _NeedsExactPathError("the block's first value is null")
    try:
        table = pa_json.read_json(
            pa.BufferReader(block),
            # One chunk on one thread: Lambda at 512 MB has a third of a core, and rows keep line order.
            read_options=pa_json.ReadOptions(use_threads=False, block_size=max(len(block) + 1, 1 << 20)),
            parse_options=_PARSE_OPTIONS,
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise _NeedsExactPathError(str(e)) from None
    return table.combine_chunks()


def fast_rules(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Which rows surely pass every rule (the exact path decides the others), and their UTC milliseconds."""
    columns = {name: table[name].chunk(0) for name in RAW_FIELDS}  # read_block's table has one chunk
    ok = np.ones(table.num_rows, dtype=bool)
    for name in RAW_FIELDS:
        ok &= _present(columns[name])
    for name in (*STRING_FIELDS, "timestamp"):
        # A string whose first byte may start a whitespace character may be blank: the exact path decides.
        first = _first_bytes(columns[name])
        ok &= ~np.isin(first, _BLANK_LEADS) & (first != 0)
    millis, parsed = parse_timestamps(columns["timestamp"])
    ok &= parsed
    quantity = _int64s(columns["quantity"])
    ok &= (quantity >= 1) & (quantity <= INT32_MAX)
    price, price_exact = _cents(columns["price"])
    total, total_exact = _cents(columns["total_amount"])
    # A zero amount goes to the exact path: pyarrow reads a number whose exponent is below about -40
    # ("1E-41") as 0.00 instead of refusing its precision (found by `make fuzz`). Zero prices are rare.
    ok &= price_exact & total_exact & (price > 0) & (total > 0)
    count = np.where(ok, quantity, 1)
    # Both amounts within decimal(10,2) (pyarrow does not check a money string's precision) and no
    # int64 overflow: the price times the quantity must fit, since the total must equal it.
    fits = price <= MONEY_MAX_CENTS // count
    ok &= fits & (np.where(fits, price, 0) * count == total)
    return ok, millis


# ---------------------------------------------------------------------------------------------------
# Blocks: lines in, (valid rows, rejects) out.


@dataclass
class RejectedLine:
    line: int
    reason: str
    detail: str
    record: str


@dataclass
class BlockResult:
    table: pa.Table  # PROCESSED_SCHEMA, the valid rows in line order
    lines: np.ndarray  # the line number of each row of `table` (int64)
    rejects: list[RejectedLine]
    fast: bool  # whether pyarrow read (some of) the block
    text_of: Callable[[int], str]  # the original text of a line (or array element), by its number


class Lines:
    """A block of whole lines (LF-terminated, the last one perhaps not) and where each line is in it."""

    def __init__(self, block: bytes, first_line: int, newlines: int | None = None) -> None:
        self.block = block
        self.first_line = first_line
        newlines = _count_newlines(block) if newlines is None else newlines
        self.count = newlines + (0 if block.endswith(b"\n") or not block else 1)

    @functools.cached_property
    def ends(self) -> np.ndarray:
        """Where each line ends (its LF, or the end of the block): only found when a line is looked at."""
        ends = np.flatnonzero(np.frombuffer(self.block, dtype=np.uint8) == 10)
        return ends if len(ends) == self.count else np.append(ends, len(self.block))

    @functools.cached_property
    def starts(self) -> np.ndarray:
        return np.concatenate([[0], self.ends[:-1] + 1]).astype(np.int64)

    def raw(self, index: int) -> bytes:
        return self.block[int(self.starts[index]) : int(self.ends[index])]

    def text(self, number: int) -> str:
        """The line's original text, invalid UTF-8 shown as U+FFFD."""
        return self.raw(number - self.first_line).decode("utf-8", errors="replace")

    def nonblank(self) -> np.ndarray:
        """Which lines hold more than spaces and tabs (the others are not records)."""
        data = np.frombuffer(self.block, dtype=np.uint8)
        content = np.zeros(len(data) + 1, dtype=np.int32)
        np.cumsum((data != 32) & (data != 9) & (data != 10), out=content[1:])
        result: np.ndarray = content[self.ends] > content[self.starts]
        return result

    def as_binary(self) -> pa.Array:
        """The lines, each with its LF, as a binary array over the block's own bytes: no copy."""
        offsets = np.append(self.starts, len(self.block)).astype(np.int32)
        return pa.Array.from_buffers(
            pa.binary(), self.count, [None, pa.py_buffer(offsets), pa.py_buffer(self.block)]
        )


def _is_blank_line(raw: bytes) -> bool:
    return not raw.strip(b" \t")


def _collect(checked: Iterable[tuple[int, Row | Reject, str]], text_of: Callable[[int], str]) -> BlockResult:
    """(number, result, original text) from the exact path, sorted into valid rows and rejects."""
    rows: list[Row] = []
    numbers: list[int] = []
    rejects: list[RejectedLine] = []
    for number, result, text in checked:
        if isinstance(result, Reject):
            rejects.append(RejectedLine(number, result.reason, result.detail, text))
        else:
            rows.append(result)
            numbers.append(number)
    return BlockResult(rows_to_table(rows), np.array(numbers, dtype=np.int64), rejects, False, text_of)


def exact_lines(lines: Lines, indices: Iterable[int]) -> BlockResult:
    """The given lines of a block (indices into it) through validate_line, blank ones skipped."""
    checked = (
        (lines.first_line + int(index), validate_line(raw), raw.decode("utf-8", errors="replace"))
        for index in indices
        if not _is_blank_line(raw := lines.raw(index))
    )
    return _collect(checked, lines.text)


def exact_block(block: bytes, first_line: int) -> BlockResult:
    """Every line of the block through the exact path: slower, and the reference for every rule."""
    lines = Lines(block, first_line)
    return exact_lines(lines, range(lines.count))


# A line holding the nine fields, the six text ones as strings, has exactly this many quote characters when
# quantity, price and total_amount are JSON numbers; a string among those (or an escaped quote) adds more.
QUOTES_PER_RECORD = 2 * len(RAW_FIELDS) + 2 * (len(STRING_FIELDS) + 1)


def numbers_unquoted(block: bytes, lines: Lines, indexes: np.ndarray, all_ok: bool) -> np.ndarray:
    """Which of the lines at `indexes` (the table's rows) hold quantity, price and total_amount as JSON
    numbers. The fast path accepts only those: pyarrow's reader also takes a money value given as a string,
    through a decimal parser looser than the contract's grammar ("7e+-0" read as 7, "13e0x1" as 130), so
    money strings are left to the exact path. Every row of a table whose rows all passed the rules has at
    least QUOTES_PER_RECORD quotes, so when the block's total is exactly that many a row, each row has it:
    one count over the block (about 1 ms per 8 MiB) in the usual case, a count per line otherwise."""
    quotes = np.frombuffer(block, dtype=np.uint8) == ord('"')
    if all_ok and int(np.count_nonzero(quotes)) == QUOTES_PER_RECORD * len(indexes):
        return np.ones(len(indexes), dtype=bool)
    at = np.flatnonzero(quotes)
    per_line = np.searchsorted(at, lines.ends[indexes]) - np.searchsorted(at, lines.starts[indexes])
    return np.asarray(per_line == QUOTES_PER_RECORD)


def fast_block(lines: Lines, keep: np.ndarray | None = None) -> BlockResult:
    """pyarrow and vectorised rules for the block's lines (only those in `keep`, if given; the others are
    left out of this result); the rows they do not accept go through the exact path.

    _NeedsExactPathError when pyarrow cannot read the lines, or reads more rows than there are lines
    (two objects on one line).
    """
    block = lines.block
    if keep is not None:
        blanked = bytearray(block)
        for index in np.flatnonzero(~keep):
            start, end = int(lines.starts[index]), int(lines.ends[index])
            blanked[start:end] = b" " * (end - start)  # pyarrow skips a line of spaces
        block = bytes(blanked)
    table = read_block(block)
    if keep is None and table.num_rows == lines.count:
        numbers = np.arange(lines.first_line, lines.first_line + lines.count, dtype=np.int64)
    else:
        readable = lines.nonblank() if keep is None else keep  # a kept line is never blank
        numbers = lines.first_line + np.flatnonzero(readable).astype(np.int64)
        if len(numbers) != table.num_rows:
            raise _NeedsExactPathError("more rows than lines: several objects on one line")
    if table.num_rows == 0:
        return BlockResult(rows_to_table([]), numbers, [], True, lines.text)
    ok, millis = fast_rules(table)
    ok &= numbers_unquoted(block, lines, numbers - lines.first_line, bool(ok.all()))
    accepted = _bool_array(ok)
    columns = [table[name].chunk(0).filter(accepted) for name in STRING_FIELDS]
    quantity = _int64s(table["quantity"].chunk(0))[ok].astype(np.int32)
    fast = _table(
        [
            *columns,
            _buffer_array(pa.int32(), quantity),
            table["price"].chunk(0).filter(accepted),
            table["total_amount"].chunk(0).filter(accepted),
        ],
        millis[ok],
    )
    fast_numbers = numbers[ok]
    if ok.all():
        return BlockResult(fast, fast_numbers, [], True, lines.text)
    exact = exact_lines(lines, numbers[~ok] - lines.first_line)
    return _merge(fast, fast_numbers, exact, lines)


def _merge(table: pa.Table, numbers: np.ndarray, exact: BlockResult, lines: Lines) -> BlockResult:
    """Rows from the fast path and results from the exact path, in line order."""
    if exact.table.num_rows:
        table = pa.concat_tables([table, exact.table])
        numbers = np.concatenate([numbers, exact.lines])
        order = np.argsort(numbers, kind="stable")
        table, numbers = table.take(_buffer_array(pa.int64(), order.astype(np.int64))), numbers[order]
    return BlockResult(table, numbers, sorted(exact.rejects, key=lambda r: r.line), True, lines.text)


# A line shaped like a clean record: one flat object whose keys are among the contract's fields, each
# with a value of a type (and a size) pyarrow reads as the contract's. Only used to route the lines of a
# block pyarrow could not read: a line that matches but still fails sends the whole block line by line.
_WS = r"[ \t]*"
_STRING = r'"(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u(?:[0-9a-cA-CefEF][0-9a-fA-F]{3}|[dD][0-7][0-9a-fA-F]{2}))*"'
_CENTS = r"-?(?:0|[1-9][0-9]{0,7})(?:\.[0-9]{1,2})?"
_PAIR = (
    rf'"(?:transaction_id|timestamp|customer_id|product_id|product_name|category)"{_WS}:{_WS}(?:{_STRING}|null)'
    rf'|"quantity"{_WS}:{_WS}(?:-?(?:0|[1-9][0-9]{{0,17}})|null)'
    rf'|"(?:price|total_amount)"{_WS}:{_WS}(?:{_CENTS}|"{_CENTS}"|null)'
)
CLEAN_RECORD_PATTERN = rf"^{_WS}\{{{_WS}(?:(?:{_PAIR}){_WS}(?:,{_WS}(?:{_PAIR}){_WS})*)?\}}{_WS}\n?$"


def route_lines(lines: Lines, utf8: bool) -> np.ndarray:
    """Which lines of a block pyarrow could not read look like clean records (see CLEAN_RECORD_PATTERN)."""
    matched = pc.match_substring_regex(lines.as_binary(), CLEAN_RECORD_PATTERN)
    clean = _bits(matched.buffers()[1], matched.offset, len(matched))
    if not utf8:  # the pattern runs on bytes: check the text of the lines it kept
        for index in np.flatnonzero(clean):
            try:
                lines.raw(int(index)).decode("utf-8")
            except UnicodeDecodeError:
                clean[index] = False
    return clean


def _valid_utf8(block: bytes) -> bool:
    try:
        block.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


BOM = b"\xef\xbb\xbf"


def validate_block(block: bytes, first_line: int, newlines: int | None = None) -> BlockResult:
    """The fast path for the whole block if pyarrow reads it; else the fast path for the lines that look
    like clean records and the exact path for the others; else the exact path for the whole block."""
    lines = Lines(block, first_line, newlines)
    if lines.count < SMALL_BLOCK_LINES:
        return exact_lines(lines, range(lines.count))
    utf8 = _valid_utf8(block)
    # pyarrow would skip a byte order mark at the start of what it reads: not a record's start here.
    if utf8 and not block.startswith(BOM):
        try:
            return fast_block(lines)
        except _NeedsExactPathError:
            pass
    keep = route_lines(lines, utf8)
    if keep.any():
        try:
            fast = fast_block(lines, keep)
        except _NeedsExactPathError:
            pass
        else:
            exact = exact_lines(lines, np.flatnonzero(~keep))
            merged = _merge(fast.table, fast.lines, exact, lines)
            merged.rejects = sorted(fast.rejects + exact.rejects, key=lambda r: r.line)
            return merged
    return exact_lines(lines, range(lines.count))


# ---------------------------------------------------------------------------------------------------
# Duplicate transaction_ids, across the whole file.

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 arrays (numpy wraps on overflow, as the algorithm wants)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    mixed: np.ndarray = x ^ (x >> np.uint64(31))
    return mixed


def fingerprints(strings: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Two independent 64-bit hashes of each (non-null) string, computed on pyarrow's buffers with numpy:
    no Python object per row. Strings are grouped by length and hashed eight bytes at a time."""
    count = len(strings)
    h1 = np.zeros(count, dtype=np.uint64)
    h2 = np.zeros(count, dtype=np.uint64)
    if count == 0:
        return h1, h2
    buffers = strings.buffers()
    offsets = np.frombuffer(buffers[1], dtype=np.int32)[strings.offset : strings.offset + count + 1]
    data = np.frombuffer(buffers[2], dtype=np.uint8) if buffers[2] is not None else np.zeros(0, np.uint8)
    starts = offsets[:-1].astype(np.int64)
    lengths = np.diff(offsets).astype(np.int64)
    uniform = bool((lengths == lengths[0]).all())
    for length in lengths[:1] if uniform else np.unique(lengths):
        rows = np.arange(count) if uniform else np.flatnonzero(lengths == length)
        width = int(-(-int(length) // 8) * 8) or 8
        padded = np.zeros((len(rows), width), dtype=np.uint8)
        if uniform:  # every id as long as the others (UUIDs): the data is already a rows x length matrix
            padded[:, : int(length)] = data[starts[0] : starts[0] + count * int(length)].reshape(count, -1)
        else:
            row_starts = starts[rows]
            for k in range(int(length)):  # column by column: no index matrix of rows x length
                padded[:, k] = data[row_starts + k]
        words = padded.view(np.uint64)
        a = np.full(len(rows), length, dtype=np.uint64) * _GOLDEN
        b = np.full(len(rows), length, dtype=np.uint64) ^ np.uint64(0xD6E8FEB86659FD93)
        for k in range(words.shape[1]):
            a = _mix(a ^ words[:, k] + _GOLDEN)
            b = _mix((b + words[:, k]) * np.uint64(0xFF51AFD7ED558CCD) + _GOLDEN)
        h1[rows] = a
        h2[rows] = b
    return h1, h2


class SeenIds:
    """The transaction_ids accepted so far in one file, as 128-bit fingerprints (16 bytes each): sorted runs
    of the first hash, merged when a run grows as big as the one before it, with the second hash
    confirming a match (two different ids would have to agree on all 128 bits to be taken for each other)."""

    def __init__(self) -> None:
        self._runs: list[tuple[np.ndarray, np.ndarray]] = []

    def __len__(self) -> int:
        return sum(len(run) for run, _ in self._runs)

    def _seen_before(self, h1: np.ndarray, h2: np.ndarray) -> np.ndarray:
        """For h1 sorted ascending: which (h1, h2) pairs are already in a run."""
        found = np.zeros(len(h1), dtype=bool)
        for run1, run2 in self._runs:
            pos = np.searchsorted(run1, h1)
            inside = pos < len(run1)
            hit = np.zeros(len(h1), dtype=bool)
            hit[inside] = run1[pos[inside]] == h1[inside]
            for index in np.flatnonzero(hit):
                # Rare: the first hash matches; scan its equal range for the second.
                p = pos[index]
                while p < len(run1) and run1[p] == h1[index]:
                    if run2[p] == h2[index]:
                        found[index] = True
                        break
                    p += 1
        return found

    def _add(self, h1: np.ndarray, h2: np.ndarray) -> None:
        """Add pairs whose h1 is sorted ascending, as a new run; merge runs of similar size."""
        self._runs.append((h1, h2))
        while len(self._runs) > 1 and len(self._runs[-1][0]) * 2 >= len(self._runs[-2][0]):
            (a1, a2), (b1, b2) = self._runs[-2:]
            # Two sorted runs merged by inserting one into the other: no sort, no index array.
            at = np.searchsorted(a1, b1)
            self._runs[-2:] = [(np.insert(a1, at, b1), np.insert(a2, at, b2))]

    def split(self, ids: pa.Array) -> np.ndarray:
        """Which of `ids` were accepted before (earlier in this array, or in an earlier call); the others
        are added."""
        dropped = np.zeros(len(ids), dtype=bool)
        if len(ids) == 0:
            return dropped
        h1, h2 = fingerprints(ids)
        order = np.argsort(h1, kind="stable")  # stable: among equal ids, the first row comes first
        s1, s2 = h1[order], h2[order]
        for i in np.flatnonzero(s1[1:] == s1[:-1]):  # rare: two rows of this block share the first hash
            j = i + 1
            for k in range(i, -1, -1):
                if s1[k] != s1[j]:
                    break
                if s2[k] == s2[j] and not dropped[order[k]]:
                    dropped[order[j]] = True
                    break
        dropped[order[self._seen_before(s1, s2)]] = True
        self._add(s1[~dropped[order]], s2[~dropped[order]])
        return dropped


# ---------------------------------------------------------------------------------------------------
# The whole object: a stream of bytes in, Parquet and quarantine files out.


def normalize_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The object's bytes with every line ending (CRLF, or a lone CR) as one LF, as Athena's text reader
    splits lines, and without a byte order mark at the start."""
    carry = b""
    start = True
    for chunk in chunks:
        data = carry + chunk
        carry = b""
        if start:
            if len(data) < len(BOM) and BOM.startswith(data):
                carry = data  # too short to tell yet
                continue
            data = data.removeprefix(BOM)
            start = False
        if data.endswith(b"\r"):  # it may be the CR of a CRLF split across chunks
            data, carry = data[:-1], b"\r"
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if data:
            yield data
    if carry:
        yield b"\n" if carry == b"\r" else carry.removeprefix(BOM) if start else carry


def _count_newlines(block: bytes) -> int:
    # numpy compares 8 MiB in under a millisecond, about three times faster than bytes.count.
    return int(np.count_nonzero(np.frombuffer(block, dtype=np.uint8) == 10))


def iter_blocks(chunks: Iterable[bytes], block_bytes: int = BLOCK_BYTES) -> Iterator[tuple[int, bytes, int]]:
    """Regroup byte chunks (LF line endings) into blocks of whole lines: (first line number, block, LFs)."""
    parts: list[bytes] = []
    size = 0
    line = 1
    for chunk in chunks:
        size += len(chunk)
        cut = chunk.rfind(b"\n") + 1 if size >= block_bytes else 0
        if not cut:
            parts.append(chunk)
            continue
        # One copy into the block; the tail of the chunk starts the next one.
        parts.append(chunk[:cut])
        block = b"".join(parts)
        rest = chunk[cut:]
        parts, size = ([rest], len(rest)) if rest else ([], 0)
        newlines = _count_newlines(block)
        yield line, block, newlines
        line += newlines
    if size:
        block = b"".join(parts)
        yield line, block, _count_newlines(block)


@dataclass
class TransformResult:
    records_read: int = 0
    rows_written: int = 0
    quarantined: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    processed_files: dict[date, Output] = field(default_factory=dict)
    processed_rows: dict[date, int] = field(default_factory=dict)
    quarantine_file: Output | None = None
    fast_blocks: int = 0
    exact_blocks: int = 0


class Output:
    """One output object being written: a file in a working directory, or memory for small objects (the
    usual one-to-a-few-record file, where a temporary directory costs more than the work)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._buffer: Any = pa.BufferOutputStream() if path is None else None

    def sink(self) -> str | pa.BufferOutputStream:
        return str(self.path) if self.path is not None else self._buffer

    def body(self) -> Any:
        """What to upload: the bytes, or an open binary file (the caller closes it)."""
        if self.path is not None:
            return self.path.open("rb")
        return self._buffer.getvalue().to_pybytes()


class _Outputs:
    """Parquet writers, one per UTC date, and the quarantine file: in `workdir`, or in memory if None."""

    def __init__(
        self, workdir: Path | None, source_key: str, result: TransformResult, schema: pa.Schema
    ) -> None:
        self.workdir = workdir
        self.source_key = source_key
        self.result = result
        self.schema = schema
        self._writers: dict[date, pq.ParquetWriter] = {}
        self._quarantine: Any = None

    def write_rows(self, table: pa.Table) -> None:
        """Write valid rows to the file of the UTC date of their timestamp."""
        if table.num_rows == 0:
            return
        days = np.floor_divide(_int64s(table["timestamp"].combine_chunks()), 86_400_000)
        unique = np.unique(days)
        for day in unique:
            part = table if len(unique) == 1 else table.filter(_bool_array(days == day))
            when = _EPOCH.date() + timedelta(days=int(day))
            writer = self._writers.get(when)
            if writer is None:
                output = Output(self.workdir / f"{when.isoformat()}.parquet" if self.workdir else None)
                writer = pq.ParquetWriter(
                    output.sink(),
                    self.schema,
                    compression="snappy",
                    version="2.6",
                    # transaction_id is unique per row: a dictionary for it is built only to be thrown away.
                    use_dictionary=["customer_id", "product_id", "product_name", "category"],
                )
                self._writers[when] = writer
                self.result.processed_files[when] = output
                self.result.processed_rows[when] = 0
            writer.write_table(part)
            self.result.processed_rows[when] += part.num_rows
            self.result.rows_written += part.num_rows

    def write_reject(self, reject: RejectedLine) -> None:
        if self._quarantine is None:
            output = Output(self.workdir / "quarantine.jsonl" if self.workdir else None)
            self._quarantine = pa.output_stream(output.sink(), compression=None)
            self.result.quarantine_file = output
        entry = {
            "source_key": self.source_key,
            "line": reject.line,
            "reason": reject.reason,
            "detail": reject.detail,
            "record": reject.record,
        }
        self._quarantine.write((json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8"))
        self.result.quarantined += 1
        self.result.reasons[reject.reason] = self.result.reasons.get(reject.reason, 0) + 1

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        if self._quarantine is not None:
            self._quarantine.close()


def _emit(block: BlockResult, outputs: _Outputs, seen: SeenIds, result: TransformResult) -> None:
    """A block's results to the outputs: a row whose transaction_id came earlier in the file is rejected."""
    result.records_read += block.table.num_rows + len(block.rejects)
    ids = block.table["transaction_id"].combine_chunks() if block.table.num_rows else None
    rejects = list(block.rejects)
    table = block.table
    if ids is not None:
        dropped = seen.split(ids)
        if dropped.any():
            for index in np.flatnonzero(dropped):
                number = int(block.lines[index])
                # Not which line: that would depend on where blocks start, and cost memory for every id.
                detail = (
                    f"transaction_id {ids[int(index)].as_py()[:60]!r} already appears earlier in this file"
                )
                rejects.append(
                    RejectedLine(number, "duplicate_transaction_id", detail, block.text_of(number))
                )
            rejects.sort(key=lambda r: r.line)
            table = table.filter(_bool_array(~dropped))
    for reject in rejects:
        outputs.write_reject(reject)
    outputs.write_rows(table)


def _parse_document(document: bytes) -> tuple[list[Any], list[str]] | None:
    """The records of a file that is one JSON array or one JSON object, with each one's text; None if the
    file is not one JSON value under the exact path's rules."""
    value = parse_json(document)
    if isinstance(value, dict):
        return [value], [document.decode("utf-8").strip()]
    if not isinstance(value, list):
        return None
    # Each element's own text, for quarantine: decode them once more, one at a time, noting where they end.
    text = document.decode("utf-8")
    decoder = json.JSONDecoder(parse_float=Decimal, parse_int=Decimal)
    texts = []
    position = text.index("[") + 1
    for _ in value:
        gap = _BETWEEN_ELEMENTS.match(text, position)
        position = gap.end() if gap else position
        _, end = decoder.raw_decode(text, position)
        texts.append(text[position:end])
        position = end
    return value, texts


_BETWEEN_ELEMENTS = re.compile(r"[ \t\n\r,]*")


def _looks_like_one_document(head: bytes) -> bool:
    """Whether the object starts like one JSON document (an array, or an object spread over lines)."""
    content = head.lstrip(b" \t\n")
    if content[:1] == b"[":
        return True
    if content[:1] != b"{":
        return False
    try:
        json.loads(content.split(b"\n", 1)[0])
    except ValueError:
        return True  # its first line alone is not JSON: a pretty-printed object
    return False


def transform_stream(
    chunks: Iterable[bytes],
    source_key: str,
    workdir: Path | None,
    size_hint: int | None = None,
    *,
    block_bytes: int | None = None,
    source_etag: str = "",
    exact_only: bool = False,
) -> TransformResult:
    """Validate and convert one raw object, read as a stream of byte chunks, into files under `workdir`.

    JSON Lines is streamed block by block. A file that starts like one JSON document ("[" or a
    pretty-printed "{") is read whole (files uploaded by hand), as long as it is not over
    MAX_DOCUMENT_BYTES; if it is not one valid JSON value, it is read as JSON Lines and its bad lines are
    quarantined. `exact_only` sends every line through the exact path (the reference, for tests).
    """
    block_bytes = block_bytes or BLOCK_BYTES
    result = TransformResult()
    # Lineage in every Parquet footer; the compactor reads source_key to check a file against the state.
    schema = PROCESSED_SCHEMA.with_metadata({"source_key": source_key, "source_etag": source_etag})
    outputs = _Outputs(workdir, source_key, result, schema)
    seen = SeenIds()
    rest = iter(normalize_lines(chunks))
    try:
        head = b""
        for chunk in rest:
            head += chunk
            if b"\n" in head.lstrip(b" \t\n") or len(head) >= block_bytes:
                break
        if (size_hint is None or size_hint <= MAX_DOCUMENT_BYTES) and _looks_like_one_document(head):
            head += b"".join(rest)
            rest = iter(())
            document = _parse_document(head)
            if document is not None:
                records, texts = document
                checked = (
                    (number, validate_value(record), texts[number - 1])
                    for number, record in enumerate(records, start=1)
                )
                result.exact_blocks += 1
                _emit(_collect(checked, lambda number: texts[number - 1]), outputs, seen, result)
                return result
        for first_line, block, newlines in iter_blocks(_prepend(head, rest), block_bytes):
            if exact_only:
                block_result = exact_block(block, first_line)
            else:
                block_result = validate_block(block, first_line, newlines)
            if block_result.fast:
                result.fast_blocks += 1
            else:
                result.exact_blocks += 1
            _emit(block_result, outputs, seen, result)
        return result
    finally:
        outputs.close()


def _prepend(head: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if head:
        yield head
    yield from rest


# S3 edge. The outputs of a raw key are exactly those of its current content (docs/contract.md, layout).
#
# state/transformer/<SHA-256 of the raw key>.json records the ETag whose outputs are in place, every
# output that may exist for the key, and a lock. Every write of it is conditional (If-Match or
# If-None-Match), so two invocations never both believe they changed it. One pass over a raw key:
#   1. read the raw object and transform it into local files;
#   2. lock the state, adding this pass's outputs to its list (wait while another live invocation holds
#      the lock; the lock of one that died expires at that invocation's deadline);
#   3. mark for the compactor each day this pass changes that may be compacted already, upload the
#      outputs, delete every listed output this content does not produce;
#   4. commit: this ETag, exactly these outputs, no lock;
#   5. read the raw object's ETag again: if the content changed meanwhile, run another pass.
# Content whose state is committed is skipped on redelivery, so a redelivery after compaction writes
# nothing; an event with "force": true (tools/replay.py) processes it again.

STATE_PREFIX = "state/transformer/"
DIRTY_PREFIX = "state/compaction/dirty/"
MAX_PASSES = 3
LOCK_POLL_SECONDS = 0.5
# The lock's lifetime when the invocation's deadline is unknown (no Lambda context): Lambda's longest timeout.
DEFAULT_LEASE_SECONDS = 900.0
PARQUET_TYPE = "application/vnd.apache.parquet"
JSONL_TYPE = "application/x-ndjson"


class LockBusyError(TransformerError):
    """Another live invocation holds the raw key's lock for longer than this one may wait."""


def state_key(raw_key: str) -> str:
    return f"{STATE_PREFIX}{hashlib.sha256(raw_key.encode('utf-8')).hexdigest()}.json"


def dirty_marker_key(day: date) -> str:
    return f"{DIRTY_PREFIX}{_partition(day)}.json"


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@dataclass(frozen=True)
class State:
    """The bookkeeping of one raw key (the format is in docs/; the compactor and tools/replay.py read it)."""

    source_key: str
    etag: str | None = None
    outputs: tuple[str, ...] = ()
    lock: Mapping[str, str] | None = None  # {"token": ..., "expires": ISO 8601 UTC}
    records_read: int = 0
    rows_written: int = 0
    quarantined: int = 0

    @property
    def complete(self) -> bool:
        """Committed: `outputs` are exactly those of content `etag`, and nobody is changing them."""
        return self.lock is None and self.etag is not None

    def lock_expires(self) -> datetime | None:
        if self.lock is None:
            return None
        return datetime.fromisoformat(self.lock["expires"].replace("Z", "+00:00"))

    def to_json(self) -> bytes:
        document = {
            "version": 1,
            "source_key": self.source_key,
            "etag": self.etag,
            "outputs": sorted(self.outputs),
            "lock": dict(self.lock) if self.lock is not None else None,
            "records_read": self.records_read,
            "rows_written": self.rows_written,
            "quarantined": self.quarantined,
        }
        return json.dumps(document, ensure_ascii=False, indent=1).encode("utf-8")

    @classmethod
    def from_json(cls, raw: bytes, where: str) -> State:
        try:
            document = json.loads(raw)
            lock = document["lock"]
            state = cls(
                source_key=str(document["source_key"]),
                etag=None if document["etag"] is None else str(document["etag"]),
                outputs=tuple(str(key) for key in document["outputs"]),
                lock=None if lock is None else {"token": str(lock["token"]), "expires": str(lock["expires"])},
                records_read=int(document["records_read"]),
                rows_written=int(document["rows_written"]),
                quarantined=int(document["quarantined"]),
            )
            state.lock_expires()
        except (ValueError, KeyError, TypeError) as e:
            raise TransformerError(
                f"{where} is not a state object this function wrote ({e}); delete it and replay the raw key "
                "with tools/replay.py"
            ) from e
        return state


def _error_code(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


class StateStore:
    """Conditional reads and writes of one raw key's state object."""

    def __init__(self, s3: S3Client, bucket: str, raw_key: str) -> None:
        self.s3 = s3
        self.bucket = bucket
        self.raw_key = raw_key
        self.key = state_key(raw_key)
        self.where = f"s3://{bucket}/{self.key}"

    def read(self) -> tuple[State | None, str | None]:
        """The state and its ETag, or (None, None) when the key was never processed."""
        try:
            response = self.s3.get_object(Bucket=self.bucket, Key=self.key)
        except ClientError as e:
            if _error_code(e) in ("NoSuchKey", "404"):
                return None, None
            raise TransformerError(f"cannot read {self.where}: {_error_code(e) or e}") from e
        return State.from_json(response["Body"].read(), self.where), str(response["ETag"])

    def write(self, state: State, etag: str | None) -> str | None:
        """Replace the state if it is still the version `etag` (None: if there is none). Returns the new
        ETag, or None when another invocation changed it first."""
        condition: dict[str, str] = {"IfMatch": etag} if etag is not None else {"IfNoneMatch": "*"}
        try:
            response = self.s3.put_object(
                Bucket=self.bucket,
                Key=self.key,
                Body=state.to_json(),
                ContentType="application/json",
                **condition,  # type: ignore[arg-type]
            )
        except ClientError as e:
            # 409 ConditionalRequestConflict: a concurrent conditional write to the same key was in progress.
            if _error_code(e) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                return None
            raise TransformerError(f"cannot write {self.where}: {_error_code(e) or e}") from e
        return str(response["ETag"])


@dataclass(frozen=True)
class Lock:
    previous: State  # the state before this lock: its outputs may be stale
    etag: str  # the ETag of the locked state, which only this invocation may replace
    token: str


def acquire_lock(
    store: StateStore,
    outputs: Iterable[str],
    *,
    expires: datetime,
    clock: Callable[[], datetime],
    sleep: Callable[[float], None],
    wait_until: datetime,
) -> Lock:
    """Lock the raw key's state, adding `outputs` to its list before any of them is written."""
    token = uuid.uuid4().hex
    while True:
        previous, etag = store.read()
        state = previous or State(source_key=store.raw_key)
        holder_expires = state.lock_expires()
        now = clock()
        if holder_expires is not None and holder_expires > now:
            if now >= wait_until:
                raise LockBusyError(
                    f"s3://{store.bucket}/{store.raw_key} is being processed by another invocation (lock "
                    f"until {_iso(holder_expires)}, {store.where}); Lambda retries this one later"
                )
            sleep(LOCK_POLL_SECONDS)
            continue
        locked = replace(
            state,
            lock={"token": token, "expires": _iso(expires)},
            outputs=tuple(sorted(set(state.outputs) | set(outputs))),
        )
        new_etag = store.write(locked, etag)
        if new_etag is not None:
            if holder_expires is not None:
                _logger.warning(
                    "broke an expired lock: its invocation died; its outputs are cleaned up now",
                    extra={"source_key": store.raw_key, "expired": _iso(holder_expires)},
                )
            return Lock(previous=state, etag=new_etag, token=token)


def release_lock(store: StateStore, lock: Lock) -> None:
    """After a failure: unlock and mark the content unprocessed, keeping every listed output (the next
    invocation deletes what its content does not produce). Best effort: a lock left behind expires."""
    try:
        current, etag = store.read()
        if current is not None and current.lock is not None and current.lock["token"] == lock.token:
            store.write(replace(current, lock=None, etag=None), etag)
    except Exception:  # the original failure is the one to report
        _logger.warning("could not release the lock; it expires", extra={"state_key": store.key})


@functools.cache
def s3_client() -> S3Client:
    """One client per container, created on first use. Standard retry mode retries throttling (503
    SlowDown) and transient errors with backoff; anything still failing raises so that Lambda retries."""
    client: S3Client = boto3.client(
        "s3",
        config=BotoConfig(
            retries={"mode": "standard", "max_attempts": 5}, connect_timeout=5, read_timeout=60
        ),
    )
    return client


def _chunks(body: Any, chunk_bytes: int = 1024 * 1024) -> Iterator[bytes]:
    yield from body.iter_chunks(chunk_bytes)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def process_object(
    s3: S3Client,
    obj: S3Object,
    output_bucket: str,
    *,
    force: bool = False,
    deadline: datetime | None = None,
    clock: Callable[[], datetime] = _utc_now,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any] | None:
    """Bring the raw key's outputs to those of its current content. None when the object no longer exists.

    `deadline` is when this invocation ends (Lambda's context); a lock this invocation leaves behind by
    dying expires then. Passes run until the content read is still the current one after the commit.
    """
    job = _Job(s3, obj, output_bucket, StateStore(s3, output_bucket, obj.key), deadline, clock, sleep)
    for _ in range(MAX_PASSES):
        summary = job.run_pass(force)
        if summary is None or summary.get("skipped"):
            return summary
        current = job.current_etag()
        if current is None:
            _logger.warning(
                "raw object deleted after it was processed: its outputs stay until tools/replay.py "
                "removes orphans",
                extra={"source_key": obj.key, "bucket": obj.bucket},
            )
            return summary
        if current == summary["etag"]:
            return summary
        _logger.info(
            "raw object replaced while it was processed: processing its new content",
            extra={"source_key": obj.key, "processed_etag": summary["etag"], "current_etag": current},
        )
        force = False  # a replay asked for the content it listed; the new content is simply unprocessed
    raise TransformerError(
        f"{job.where} changed during each of {MAX_PASSES} passes; failing so that Lambda retries later"
    )


@dataclass
class _Job:
    """One raw key being brought up to date: the passes of process_object."""

    s3: S3Client
    obj: S3Object
    bucket: str  # the output bucket
    store: StateStore
    deadline: datetime | None
    clock: Callable[[], datetime]
    sleep: Callable[[float], None]

    @property
    def where(self) -> str:
        return f"s3://{self.obj.bucket}/{self.obj.key}"

    def current_etag(self) -> str | None:
        try:
            return str(self.s3.head_object(Bucket=self.obj.bucket, Key=self.obj.key)["ETag"]).strip('"')
        except ClientError as e:
            if _error_code(e) in ("NoSuchKey", "404"):
                return None
            raise TransformerError(f"cannot read {self.where}: {_error_code(e) or e}") from e

    def run_pass(self, force: bool) -> dict[str, Any] | None:
        started = time.perf_counter()
        key = self.obj.key
        try:
            response = self.s3.get_object(Bucket=self.obj.bucket, Key=key)
        except ClientError as e:
            if _error_code(e) in ("NoSuchKey", "404"):
                _logger.warning(
                    "raw object is gone, skipped", extra={"source_key": key, "bucket": self.obj.bucket}
                )
                return None
            raise TransformerError(f"cannot read {self.where}: {_error_code(e) or e}") from e
        etag = str(response["ETag"]).strip('"')
        size = int(response.get("ContentLength", 0))
        plan = plan_outputs(key, response["LastModified"])
        skipped = {"source_key": key, "etag": etag, "skipped": "content already processed", "raw_bytes": size}
        state, _ = self.store.read()
        if not force and state is not None and state.complete and state.etag == etag:
            response["Body"].close()
            return skipped
        with contextlib.ExitStack() as stack:
            workdir = None
            if size > IN_MEMORY_BYTES:
                workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="transform-")))
            try:
                result = transform_stream(
                    _chunks(response["Body"]), key, workdir, size_hint=size, source_etag=etag
                )
            except ClientError as e:
                raise TransformerError(f"failed while reading {self.where}: {e}") from e
            if result.rows_written + result.quarantined != result.records_read:
                raise TransformerError(
                    f"record count does not reconcile for {self.where}: {result.records_read} read, "
                    f"{result.rows_written} written, {result.quarantined} quarantined"
                )
            files: dict[str, tuple[Output, str]] = {
                plan.processed_key(day): (out, PARQUET_TYPE) for day, out in result.processed_files.items()
            }
            if result.quarantine_file is not None:
                files[plan.quarantine_key()] = (result.quarantine_file, JSONL_TYPE)
            removed = self._publish(files, etag, result, force)
        if removed is None:
            return skipped
        return {
            "source_key": key,
            "etag": etag,
            "records_read": result.records_read,
            "rows_written": result.rows_written,
            "quarantined": result.quarantined,
            "reasons": dict(sorted(result.reasons.items())),
            "outputs": sorted(files),
            "removed": removed,
            "raw_bytes": size,
            "fast_blocks": result.fast_blocks,
            "exact_blocks": result.exact_blocks,
            "duration_ms": round((time.perf_counter() - started) * 1000, 1),
        }

    def _publish(
        self, files: Mapping[str, tuple[Output, str]], etag: str, result: TransformResult, force: bool
    ) -> list[str] | None:
        """Steps 2 to 4 under the lock; the outputs removed, or None when another invocation committed this
        content meanwhile (nothing written)."""
        now = self.clock()
        expires = self.deadline or now + timedelta(seconds=DEFAULT_LEASE_SECONDS)
        lock = acquire_lock(
            self.store,
            files,
            expires=expires,
            clock=self.clock,
            sleep=self.sleep,
            wait_until=now + (expires - now) / 4,
        )
        try:
            previous = lock.previous
            if not force and previous.complete and previous.etag == etag:
                self.store.write(previous, lock.etag)
                return None
            stale = sorted(set(previous.outputs) - set(files))
            dirty = {day for day in result.processed_files if day < now.date()}
            stale_days = (partition_day(key) for key in stale if key.startswith(PROCESSED_PREFIX))
            dirty |= {day for day in stale_days if day}
            for day in sorted(dirty):  # before the change it announces (the compactor's rule)
                _mark_dirty(self.s3, self.bucket, day, self.obj.key)
            for key, (output, content_type) in sorted(files.items()):
                _upload(self.s3, output, self.bucket, key, content_type)
            for key in stale:
                _delete(self.s3, self.bucket, key)
            committed = State(
                source_key=self.obj.key,
                etag=etag,
                outputs=tuple(sorted(files)),
                records_read=result.records_read,
                rows_written=result.rows_written,
                quarantined=result.quarantined,
            )
            if self.store.write(committed, lock.etag) is None:
                raise TransformerError(
                    f"{self.store.where} changed while this invocation held its lock (held past "
                    f"{_iso(expires)}?); failing so that Lambda retries"
                )
        except BaseException:
            release_lock(self.store, lock)
            raise
        return stale


def _mark_dirty(s3: S3Client, bucket: str, day: date, source_key: str) -> None:
    """Tell the compactor to check `day` against the state again (state/compaction/dirty/...). A fresh token
    in every marker gives it a new ETag, so the compactor's conditional delete never removes a newer one.
    A marker that asks the compactor to drop unclaimed entries (tools/replay.py's orphans step) keeps
    asking: the marker is replaced only if it is still the one read."""
    key = dirty_marker_key(day)
    where = f"s3://{bucket}/{key}"
    for _ in range(5):
        condition: dict[str, str] = {"IfNoneMatch": "*"}
        drop_unclaimed = False
        try:
            current = s3.get_object(Bucket=bucket, Key=key)
        except ClientError as e:
            if _error_code(e) not in ("NoSuchKey", "404"):
                raise TransformerError(f"cannot read {where}: {_error_code(e) or e}") from e
        else:
            condition = {"IfMatch": str(current["ETag"])}
            with contextlib.suppress(ValueError, AttributeError):
                drop_unclaimed = json.loads(current["Body"].read()).get("drop_unclaimed") is True
        body = {
            "token": uuid.uuid4().hex,
            "reason": "transformer changed the day's files",
            "source_key": source_key,
            "drop_unclaimed": drop_unclaimed,
        }
        try:
            s3.put_object(
                Bucket=bucket,
                Key=key,
                Body=json.dumps(body).encode(),
                ContentType="application/json",
                **condition,  # type: ignore[arg-type]
            )
        except ClientError as e:
            if _error_code(e) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                continue  # written or deleted meanwhile: read it again
            raise TransformerError(f"cannot write {where}: {_error_code(e) or e}") from e
        return
    raise TransformerError(f"{where} kept changing while this invocation wrote it; Lambda retries")


def _upload(s3: S3Client, output: Output, bucket: str, key: str, content_type: str) -> None:
    body = output.body()
    try:
        s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type)
    except ClientError as e:
        raise TransformerError(f"cannot write s3://{bucket}/{key}: {_error_code(e) or e}") from e
    finally:
        if not isinstance(body, bytes):
            body.close()


def _delete(s3: S3Client, bucket: str, key: str) -> None:
    try:
        s3.delete_object(Bucket=bucket, Key=key)
    except ClientError as e:
        where = f"s3://{bucket}/{key}"
        raise TransformerError(f"cannot delete stale output {where}: {_error_code(e) or e}") from e


def metrics_line(summary: Mapping[str, Any], at: datetime) -> str:
    """One CloudWatch Embedded Metric Format record (namespace EcommercePipeline, no dimensions). `at` is the
    time the line is written: CloudWatch drops datapoints older than two weeks."""
    metrics = {
        "RecordsRead": (summary["records_read"], "Count"),
        "RecordsWritten": (summary["rows_written"], "Count"),
        "RecordsQuarantined": (summary["quarantined"], "Count"),
        "RawBytes": (summary["raw_bytes"], "Bytes"),
        "FilesProcessed": (1, "Count"),
    }
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
        "source_key": summary["source_key"],
    }
    document.update({name: value for name, (value, _) in metrics.items()})
    return json.dumps(document)


def _deadline(context: Any, now: datetime) -> datetime | None:
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    return now + timedelta(milliseconds=remaining()) if callable(remaining) else None


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """S3 ObjectCreated entry point: every record of the event is processed, or the invocation raises."""
    config = load_config(os.environ)
    _logger.setLevel(config.log_level)
    warn_if_lambda_drops_metrics(os.environ)
    deadline = _deadline(context, _utc_now())
    objects, skipped = objects_from_event(event)
    force = event.get("force") is True
    for skip in skipped:
        _logger.info("skipped", extra=skip)
    processed: list[dict[str, Any]] = []
    for obj in objects:
        try:
            summary = process_object(
                s3_client(), obj, config.output_bucket or obj.bucket, force=force, deadline=deadline
            )
        except Exception:
            _logger.exception("transform failed", extra={"source_key": obj.key, "bucket": obj.bucket})
            raise
        if summary is None:
            skipped.append({"reason": "object no longer exists", "key": obj.key})
        elif summary.get("skipped"):
            _logger.info("skipped", extra=summary)
            skipped.append({"reason": str(summary["skipped"]), "key": obj.key})
        else:
            _logger.info("transformed", extra=summary)
            sys.stdout.write(metrics_line(summary, _utc_now()) + "\n")
            processed.append(summary)
    return {"processed": processed, "skipped": skipped}
