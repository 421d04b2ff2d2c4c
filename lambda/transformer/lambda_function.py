"""Transformer Lambda: validates raw JSON Lines from S3; writes Parquet to processed/, rejects to quarantine/.

Runs on Python 3.12 with the AWSSDKPandas layer for pyarrow and numpy; it imports nothing else outside
the standard library and boto3, so it pastes into the Lambda console as it is.

Design: the object is streamed in blocks of whole lines. Each block is parsed by pyarrow's JSON reader
and validated with vectorised compute (the fast path). In a block that pyarrow cannot read as the
contract's types, the lines that look like flat JSON objects stay on the fast path and the others are
handled line by line by the exact path, which is the reference for every rule (a block of a few lines goes
there directly); rows the fast path rejects are re-checked by it, so both paths give the same reasons.
Duplicate transaction_ids are found across the whole file from 128-bit fingerprints. Valid rows are
written to one Parquet file per UTC date of their timestamp, in row groups (big blocks on a background
thread), and uploaded; rejects go to one JSON Lines file.
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
from concurrent.futures import Future, ThreadPoolExecutor
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
_logger.setLevel(os.environ.get("LOG_LEVEL", "INFO"))

RAW_PREFIX = "raw/"
PROCESSED_PREFIX = "processed/transactions/"
QUARANTINE_PREFIX = "quarantine/"
METRICS_NAMESPACE = "EcommercePipeline"

# Lines are read from S3 and validated in blocks of about this many bytes: memory stays flat however big
# the object is, and each block is big enough for pyarrow's reader to run at full speed (16 MiB was
# measured 10% faster and 50 MiB heavier on a 1M-record file).
BLOCK_BYTES = 8 * 1024 * 1024
# A file that is one JSON document (an array, or one pretty-printed object) has to be parsed whole;
# beyond this size it is read as JSON Lines instead.
MAX_DOCUMENT_BYTES = 64 * 1024 * 1024
# Outputs of a raw object up to this size are built in memory; bigger ones in a temporary directory (/tmp).
IN_MEMORY_BYTES = 8 * 1024 * 1024
# A block of fewer lines than this goes straight to the exact path: pyarrow's reader has a fixed cost of
# about 0.7 ms per call, more than validating a few lines one by one (measured by bench/micro.py).
SMALL_BLOCK_LINES = 32
# Blocks with at least this many valid rows are written to Parquet by a background thread.
BACKGROUND_WRITE_ROWS = 10_000
# The duplicate check keeps this many transaction_id fingerprints in memory (16 bytes each); beyond that a
# big object's are spilled to its working directory in sorted runs, read back a page at a time.
SEEN_IN_MEMORY = 125_000
SPILL_PAGE = 1024

# ---------------------------------------------------------------------------------------------------
# The contract's schema (CONTRACT.md). The generator and the DDL in sql/ carry the same lists; a test
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
# What the fast path asks pyarrow to read: anything that does not fit these types sends the block to the
# exact path. Timestamps are read as text and parsed below, so that both paths accept the same forms.
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

# ISO 8601 as both paths accept it: date, T or space, hh:mm[:ss[.fraction]], then Z, ±hh, ±hhmm, ±hh:mm or
# nothing (read as UTC). [0-9] rather than \d: Python's \d also matches non-ASCII digits.
_TIMESTAMP_PATTERN = (
    r"^([1-9][0-9]{3})-([0-9]{2})-([0-9]{2})[T ]([01][0-9]|2[0-3]):([0-5][0-9])"
    r"(?::([0-5][0-9])(?:\.([0-9]{1,9}))?)?"
    r"(Z|[+-](?:[01][0-9]|2[0-3])(?::?[0-5][0-9])?)?$"
)
_TIMESTAMP_RE = re.compile(_TIMESTAMP_PATTERN)
_HAS_OFFSET_PATTERN = r"(Z|[+-][0-9]{2}(:?[0-9]{2})?)$"
# Money given as a string: the decimal forms pyarrow's decimal reader accepts ("24.99", "+5", ".5", "1e2").
_MONEY_STRING_RE = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
# A line that is one flat JSON object (string, number, true, false or null values). Only used to route the
# lines of a block pyarrow could not read: matching lines go to the fast path, the rest to the exact path.
_JSON_STRING = r'"(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*"'
_JSON_VALUE = rf"(?:{_JSON_STRING}|-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?|true|false|null)"
_JSON_PAIR = rf"{_JSON_STRING}[ \t\r]*:[ \t\r]*{_JSON_VALUE}[ \t\r]*"
_FLAT_OBJECT_PATTERN = rf"^[ \t\r]*\{{[ \t\r]*(?:{_JSON_PAIR}(?:,[ \t\r]*{_JSON_PAIR})*)?\}}[ \t\r\n]*$"
_PARTITION_RE = re.compile(r"(?:^|/)year=([0-9]{4})/month=([0-9]{2})/day=([0-9]{2})/")


class TransformerError(RuntimeError):
    """A failure that is not a bad record: it raises out of the handler so that Lambda retries."""


class EventError(TransformerError):
    """The invoking event is not an S3 notification this function understands."""


class _NeedsExactPathError(Exception):
    """pyarrow could not read a block as the contract's types: handle it line by line instead."""


# ---------------------------------------------------------------------------------------------------
# Configuration: read from the environment in one place.


@dataclass(frozen=True)
class Config:
    output_bucket: str | None


def load_config(env: Mapping[str, str]) -> Config:
    """BUCKET_NAME is optional: without it, output goes to the bucket the event came from."""
    bucket = env.get("BUCKET_NAME", "").strip()
    if bucket and not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
        raise TransformerError(f"BUCKET_NAME is not a valid S3 bucket name: {bucket!r}")
    return Config(output_bucket=bucket or None)


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
    """`<stem>-<first 12 hex of SHA-256 of the raw key>`, the stem without leading _ or . (CONTRACT.md)."""
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


def plan_outputs(raw_key: str, last_modified: datetime) -> OutputPlan:
    """The quarantine date is the raw key's year=/month=/day=, else the object's LastModified UTC date:
    never the processing date, so a retry on another day writes the same key."""
    quarantine_date = last_modified.astimezone(UTC).date()
    match = _PARTITION_RE.search(raw_key)
    if match:
        with contextlib.suppress(ValueError):
            quarantine_date = date(int(match[1]), int(match[2]), int(match[3]))
    return OutputPlan(name=output_name(raw_key), quarantine_date=quarantine_date)


# ---------------------------------------------------------------------------------------------------
# The exact path: one record at a time. It defines every rule; the fast path must agree with it.


@dataclass(frozen=True)
class Reject:
    reason: str
    detail: str


Row = tuple[str, datetime, str, str, str, str, int, Decimal, Decimal]


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
    raise ValueError(f"{name} is not valid JSON")


def parse_timestamp(text: str) -> datetime | None:
    """An ISO 8601 timestamp as a UTC datetime floored to the millisecond, or None if it does not parse."""
    match = _TIMESTAMP_RE.match(text)
    if not match:
        return None
    year, month, day, hour, minute = (int(match[i]) for i in range(1, 6))
    second = int(match[6] or 0)
    millis = int((match[7] or "0").ljust(3, "0")[:3])
    zone = match[8]
    offset = timedelta(0)
    if zone and zone != "Z":
        digits = zone[1:].replace(":", "")
        offset = timedelta(hours=int(digits[:2]), minutes=int(digits[2:4] or 0))
        if zone[0] == "-":
            offset = -offset
    try:
        local = datetime(year, month, day, hour, minute, second, millis * 1000, tzinfo=timezone(offset))
        return local.astimezone(UTC)
    except (ValueError, OverflowError):
        return None


def _money(name: str, value: Any) -> Decimal | Reject:
    if isinstance(value, bool) or not isinstance(value, int | Decimal | str):
        return Reject("invalid_type", f"{name} must be a number or a numeric string, got {_json_type(value)}")
    if isinstance(value, str):
        if not _MONEY_STRING_RE.fullmatch(value):
            return Reject("invalid_type", f"{name} is a string that is not a number: {value[:40]!r}")
        value = Decimal(value)
    amount = Decimal(value)
    if amount < 0:
        return Reject("invalid_price", f"{name} is negative: {amount}")
    try:
        exact = amount == amount.quantize(CENT)
    except InvalidOperation:
        exact = False
    if not exact or amount > MONEY_MAX:
        problem = "has more than two decimals" if amount <= MONEY_MAX else "does not fit decimal(10,2)"
        return Reject("invalid_price", f"{name} {problem}: {value}")
    return amount.quantize(CENT)


def _presence_and_types(obj: Mapping[str, Any]) -> Reject | None:
    """Every field present and not blank (missing_field), then of a JSON type it may have (invalid_type)."""
    for name in RAW_FIELDS:
        value = obj.get(name)
        if value is None:
            return Reject("missing_field", f"{name} is {'null' if name in obj else 'absent'}")
        if isinstance(value, str) and name not in MONEY_FIELDS and not value.strip():
            return Reject("missing_field", f"{name} is empty")
    for name in (*STRING_FIELDS, "timestamp"):
        if not isinstance(obj[name], str):
            return Reject("invalid_type", f"{name} must be a string, got {_json_type(obj[name])}")
    quantity = obj["quantity"]
    if isinstance(quantity, bool) or not isinstance(quantity, int | Decimal):
        return Reject("invalid_type", f"quantity must be a number, got {_json_type(quantity)}")
    for name in MONEY_FIELDS:
        value = obj[name]
        if isinstance(value, bool) or not isinstance(value, int | Decimal | str):
            return Reject(
                "invalid_type", f"{name} must be a number or a numeric string, got {_json_type(value)}"
            )
    return None


def validate_record(obj: Mapping[str, Any]) -> Row | Reject:
    """Check one parsed object against the contract; the first failing rule gives the reason."""
    problem = _presence_and_types(obj)
    if problem is not None:
        return problem
    timestamp = parse_timestamp(obj["timestamp"])
    if timestamp is None:
        return Reject("invalid_timestamp", f"timestamp does not parse as ISO 8601: {obj['timestamp'][:60]!r}")
    quantity = obj["quantity"]
    if quantity != int(quantity) or not 1 <= quantity <= INT32_MAX:
        return Reject(
            "invalid_quantity", f"quantity must be a whole number from 1 to {INT32_MAX}: {quantity}"
        )
    price = _money("price", obj["price"])
    if isinstance(price, Reject):
        return price
    total = _money("total_amount", obj["total_amount"])
    if isinstance(total, Reject):
        return total
    if total != price * int(quantity):
        expected = price * int(quantity)
        return Reject(
            "total_mismatch", f"total_amount {total} != price {price} x quantity {int(quantity)} = {expected}"
        )
    return (
        obj["transaction_id"],
        timestamp,
        obj["customer_id"],
        obj["product_id"],
        obj["product_name"],
        obj["category"],
        int(quantity),
        price,
        total,
    )


def validate_line(text: str) -> Row | Reject:
    """One JSON Lines line through every rule of the contract."""
    try:
        obj = json.loads(text, parse_float=Decimal, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as e:
        return Reject("malformed_json", f"not valid JSON: {e}")
    return validate_value(obj)


def validate_value(value: Any) -> Row | Reject:
    """One parsed JSON value (a line, or an element of a file that is one array) through every rule."""
    if not isinstance(value, dict):
        return Reject("not_an_object", f"a JSON {_json_type(value)}, not an object")
    return validate_record(value)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)


def _buffer_array(type_: pa.DataType, values: bytes) -> pa.Array:
    """A fixed-width array from its raw little-endian values."""
    width = type_.bit_width // 8
    return pa.Array.from_buffers(type_, len(values) // width, [None, pa.py_buffer(values)])


def _bool_array(mask: np.ndarray) -> pa.Array:
    return pa.Array.from_buffers(
        pa.bool_(), len(mask), [None, pa.py_buffer(np.packbits(mask, bitorder="little").tobytes())]
    )


def _numpy_bools(array: pa.Array) -> np.ndarray:
    """A boolean Arrow array without nulls as numpy bools, unpacked from its bitmap (to_numpy would go
    through pyarrow's Python conversion, see rows_to_table)."""
    bits = np.unpackbits(np.frombuffer(array.buffers()[1], dtype=np.uint8), bitorder="little")
    return bits[array.offset : array.offset + len(array)].astype(bool)


def _index_array(indices: np.ndarray) -> pa.Array:
    return _buffer_array(pa.int64(), np.asarray(indices, dtype=np.int64).tobytes())


def _string_array(values: Sequence[str]) -> pa.Array:
    encoded = [value.encode("utf-8") for value in values]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int32)
    np.cumsum([len(value) for value in encoded], out=offsets[1:])
    return pa.Array.from_buffers(
        pa.string(), len(encoded), [None, pa.py_buffer(offsets.tobytes()), pa.py_buffer(b"".join(encoded))]
    )


_FALSE = _bool_array(np.zeros(1, dtype=bool))[0]
_EMPTY_BINARY = pa.Array.from_buffers(pa.binary(), 1, [None, pa.py_buffer(bytes(8)), pa.py_buffer(b"")])[0]


def rows_to_table(rows: list[Row]) -> pa.Table:
    """Validated rows as a table of the contract's types (before the derived columns).

    Built from buffers rather than with pa.array: pyarrow's conversion of Python objects first looks for
    pandas types, and so imports pandas (about 0.2 s and 34 MiB on a cold start) when it is installed.
    """
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in RAW_FIELDS]
    tid, ts, customer, product, name, category, quantity, price, total = columns
    millis = np.array([(moment - _EPOCH) // _MILLISECOND for moment in ts], dtype=np.int64)  # exact
    arrays = [
        _string_array(tid),
        _buffer_array(TIMESTAMP, millis.tobytes()),
        *(_string_array(column) for column in (customer, product, name, category)),
        _buffer_array(pa.int32(), np.array(quantity, dtype=np.int32).tobytes()),
        *(
            _buffer_array(
                MONEY, b"".join(int(amount * 100).to_bytes(16, "little", signed=True) for amount in c)
            )
            for c in (price, total)
        ),
    ]
    return pa.Table.from_arrays(arrays, names=list(RAW_FIELDS))


# ---------------------------------------------------------------------------------------------------
# Blocks: lines in, (valid table, rejects) out.


@dataclass
class RejectedLine:
    line: int
    reason: str
    detail: str
    record: str


@dataclass
class BlockResult:
    table: pa.Table  # RAW_FIELDS with the contract's types, valid rows only, in input order
    lines: np.ndarray  # the file line number of each row of `table` (int64)
    rejects: list[RejectedLine]
    fast: bool
    text_of: Callable[[int], str]  # the original text of a file line (or array element), by its number


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace").rstrip("\r")


def _line_lookup(
    block: bytes, first_line: int, index: Mapping[int, int] | None = None
) -> Callable[[int], str]:
    """Original line text by file line number, splitting the block only if a line is asked for. `index`
    maps line numbers to positions in the block when its lines are not consecutive."""
    split: list[list[bytes]] = []

    def text_of(number: int) -> str:
        if not split:
            split.append(block.split(b"\n"))
        position = index[number] if index is not None else number - first_line
        return _decode(split[0][position])

    return text_of


def _nonblank_lines(block: bytes, first_line: int) -> list[tuple[int, bytes]]:
    return [(first_line + i, raw) for i, raw in enumerate(block.split(b"\n")) if raw.strip()]


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


def _check_line(number: int, raw: bytes) -> tuple[int, Row | Reject, str]:
    try:
        text = raw.decode("utf-8").rstrip("\r")
    except UnicodeDecodeError as e:
        return number, Reject("malformed_json", f"not valid UTF-8: {e}"), _decode(raw)
    return number, validate_line(text), text


def exact_lines(lines: Iterable[tuple[int, bytes]], text_of: Callable[[int], str]) -> BlockResult:
    """Each (line number, raw line) through validate_line: slower, and the reference for every rule."""
    return _collect((_check_line(number, raw) for number, raw in lines), text_of)


def exact_block(block: bytes, first_line: int) -> BlockResult:
    """Every non-blank line of the block through the exact path."""
    return exact_lines(_nonblank_lines(block, first_line), _line_lookup(block, first_line))


def _parse_timestamps(text: pa.Array) -> pa.Array:
    """Timestamp strings to timestamp(ms, UTC); null where a value does not parse."""
    syntax_ok = pc.match_substring_regex(text, _TIMESTAMP_PATTERN)
    if text.null_count == 0 and syntax_ok.false_count == 0:
        try:
            # The usual case, every value with an offset and at most milliseconds: one exact cast.
            return pc.cast(text, TIMESTAMP)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
    has_offset = pc.match_substring_regex(text, _HAS_OFFSET_PATTERN)
    with_zone = pc.if_else(has_offset, text, pc.binary_join_element_wise(text, "Z", ""))
    candidates = pc.if_else(syntax_ok, with_zone, pa.scalar(None, pa.string()))
    try:
        parsed = pc.cast(candidates, pa.timestamp("ns", tz="UTC"))
        return pc.cast(pc.floor_temporal(parsed, unit="millisecond"), TIMESTAMP)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        # A calendar error (Feb 30) or a year past 2262 (nanoseconds overflow): parse this block's
        # timestamps one by one; the rest of the block stays vectorised.
        return pa.array([parse_timestamp(v) if v is not None else None for v in text.to_pylist()], TIMESTAMP)


def _min_max(values: pa.ChunkedArray) -> tuple[Any, Any]:
    result = pc.min_max(values)
    return result["min"].as_py(), result["max"].as_py()


def _valid_rows(table: pa.Table, timestamps: pa.Array) -> pa.Array | None:
    """Which rows pass every rule, or None when all do. Each rule is checked on the whole column first (a
    cheap aggregate); a row mask is built only for a rule that some row breaks, in clean data none."""
    quantity = table["quantity"]
    price = table["price"]
    total = table["total_amount"]
    masks = [pc.is_valid(table[name]) for name in RAW_FIELDS if table[name].null_count]
    for name in (*STRING_FIELDS, "timestamp"):
        column = table[name]
        length = pc.binary_length(column)
        spaces = pc.utf8_is_space(column)  # true for whitespace-only strings, false for ""
        if (pc.min(length).as_py() or 0) == 0 or pc.any(spaces).as_py():
            masks.append(pc.and_kleene(pc.greater(length, 0), pc.invert(spaces)))
    if timestamps.null_count:
        masks.append(pc.is_valid(timestamps))
    low, high = _min_max(quantity)
    if low is not None and (low < 1 or high > INT32_MAX):
        masks.append(pc.and_kleene(pc.greater_equal(quantity, 1), pc.less_equal(quantity, INT32_MAX)))
    for money in (price, total):
        low, high = _min_max(money)
        if low is not None and (low < 0 or high > MONEY_MAX):
            # pyarrow's reader can put 123456789.00 in a decimal(10,2) column without complaint.
            zero, top = pa.scalar(Decimal(0), MONEY), pa.scalar(MONEY_MAX, MONEY)
            masks.append(pc.and_kleene(pc.greater_equal(money, zero), pc.less_equal(money, top)))
    totals_match = pc.equal(total, pc.multiply(price, pc.cast(quantity, pa.decimal128(19, 0))))
    if not pc.all(totals_match).as_py():
        masks.append(totals_match)
    if not masks:
        return None
    valid = pc.fill_null(functools.reduce(pc.and_kleene, masks), _FALSE)
    return valid.combine_chunks() if isinstance(valid, pa.ChunkedArray) else valid


def fast_block(
    block: bytes, first_line: int, newlines: int | None = None, numbers: np.ndarray | None = None
) -> BlockResult:
    """pyarrow's JSON reader and vectorised checks; _NeedsExactPathError when a block needs the exact path.

    `numbers` gives the file line number of each line of `block` when they are not consecutive from
    `first_line` (a block rebuilt from the good lines of a dirty one); such a block has no blank lines.
    """
    try:
        table = pa_json.read_json(
            pa.BufferReader(block),
            parse_options=pa_json.ParseOptions(
                explicit_schema=_READ_SCHEMA, unexpected_field_behavior="ignore"
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise _NeedsExactPathError(str(e)) from None
    text_of = _line_lookup(block, first_line)
    if numbers is not None:
        if table.num_rows != len(numbers):
            raise _NeedsExactPathError("row count differs from line count")
        lookup = {int(n): i for i, n in enumerate(numbers)} if table.num_rows else {}
        text_of = _line_lookup(block, 0, lookup)
    else:
        if newlines is None:
            newlines = _count_newlines(block)
        line_count = newlines + (0 if block.endswith(b"\n") else 1)
        if table.num_rows == line_count:
            numbers = np.arange(first_line, first_line + table.num_rows, dtype=np.int64)
        else:
            # Blank lines (pyarrow skips them) or several objects on one line (the exact path rejects that).
            nonblank = _nonblank_lines(block, first_line)
            if table.num_rows != len(nonblank):
                raise _NeedsExactPathError("row count differs from non-blank line count")
            numbers = np.array([number for number, _ in nonblank], dtype=np.int64)
    table = table.combine_chunks()

    timestamps = _parse_timestamps(
        table["timestamp"].chunk(0) if table.num_rows else pa.array([], pa.string())
    )
    valid = _valid_rows(table, timestamps)

    rejects: list[RejectedLine] = []
    bad = [] if valid is None else pc.indices_nonzero(pc.invert(valid)).to_pylist()
    for index in bad:
        number = int(numbers[index])
        text = text_of(number)
        result = validate_line(text)
        if not isinstance(result, Reject):
            # The paths disagree on this row: trust the exact path for the whole block.
            _logger.warning("fast and exact validation disagree", extra={"line": number})
            raise _NeedsExactPathError(f"line {number}: fast path rejected a row the exact path accepts")
        rejects.append(RejectedLine(number, result.reason, result.detail, text))

    good = pa.table(
        [
            table["transaction_id"],
            timestamps,
            *(table[name] for name in STRING_FIELDS[1:]),
            pc.cast(table["quantity"], pa.int32(), safe=False),
            table["price"],
            table["total_amount"],
        ],
        names=list(RAW_FIELDS),
    )
    if valid is not None and valid.false_count:
        good = good.filter(valid)
        numbers = numbers[_numpy_bools(valid)]
    return BlockResult(good, numbers, rejects, True, text_of)


def _split_lines(block: bytes) -> pa.Array:
    """The block's lines, each with its newline, as a binary array over the block's own bytes: no copy and no
    Python object per line."""
    data = np.frombuffer(block, dtype=np.uint8)
    ends = np.flatnonzero(data == 10).astype(np.int32) + 1
    offsets = np.concatenate([np.zeros(1, np.int32), ends])
    if offsets[-1] != len(block):  # a last line without a newline
        offsets = np.append(offsets, np.int32(len(block)))
    return pa.Array.from_buffers(
        pa.binary(), len(offsets) - 1, [None, pa.py_buffer(offsets.tobytes()), pa.py_buffer(block)]
    )


def salvage_block(block: bytes, first_line: int) -> BlockResult | None:
    """A block pyarrow could not read: send the lines that do not look like flat JSON objects to the exact
    path and the rest, still vectorised, to the fast path. None when that does not help either."""
    lines = _split_lines(block)
    looks_ok = pc.fill_null(pc.match_substring_regex(lines, _FLAT_OBJECT_PATTERN), _FALSE)
    blank = pc.fill_null(pc.match_substring_regex(lines, r"^[ \t\r\n]*$"), _FALSE)
    suspect = np.flatnonzero(~(_numpy_bools(looks_ok) | _numpy_bools(blank)))
    good = np.flatnonzero(_numpy_bools(looks_ok))
    if len(good) == 0 or len(suspect) == 0 or len(suspect) * 5 > len(lines):
        return None
    good_lines = lines.take(_index_array(good))
    list_offsets = _buffer_array(pa.int32(), np.array([0, len(good)], dtype=np.int32).tobytes())
    rebuilt = pc.binary_join(pa.ListArray.from_arrays(list_offsets, good_lines), _EMPTY_BINARY)
    try:
        fast = fast_block(rebuilt[0].as_py(), first_line, numbers=good + first_line)
    except _NeedsExactPathError:
        return None
    text_of = _line_lookup(block, first_line)
    exact = exact_lines(
        [(int(i) + first_line, lines[int(i)].as_py().rstrip(b"\n")) for i in suspect], text_of
    )
    rejects = sorted(fast.rejects + exact.rejects, key=lambda r: r.line)
    table, numbers = fast.table, fast.lines
    if exact.table.num_rows:
        table = pa.concat_tables([table, exact.table])
        numbers = np.concatenate([numbers, exact.lines])
        order = np.argsort(numbers, kind="stable")
        table, numbers = table.take(_index_array(order)), numbers[order]
    return BlockResult(table, numbers, rejects, True, text_of)


def validate_block(block: bytes, first_line: int, newlines: int | None = None) -> BlockResult:
    """The fast path when pyarrow can read the block as the contract's types; else the fast path for the
    lines that look right and the exact path for the others; else the exact path for the whole block."""
    if newlines is None:
        newlines = _count_newlines(block)
    if newlines < SMALL_BLOCK_LINES:
        return exact_block(block, first_line)
    try:
        return fast_block(block, first_line, newlines)
    except _NeedsExactPathError:
        pass
    salvaged = salvage_block(block, first_line)
    if salvaged is not None:
        return salvaged
    return exact_block(block, first_line)


def derive_columns(table: pa.Table) -> pa.Table:
    """Add hour (0-23) and day_of_week (0 = Monday) of the UTC timestamp, in the contract's column order."""
    ts = table["timestamp"]
    hour = pc.cast(pc.hour(ts), pa.int32())
    weekday = pc.cast(pc.day_of_week(ts, count_from_zero=True, week_start=1), pa.int32())
    return table.append_column("hour", hour).append_column("day_of_week", weekday).cast(PROCESSED_SCHEMA)


# ---------------------------------------------------------------------------------------------------
# The whole object: stream of bytes in, Parquet and quarantine files out.


def _count_newlines(block: bytes) -> int:
    # numpy compares 8 MiB in under a millisecond, about three times faster than bytes.count.
    return int(np.count_nonzero(np.frombuffer(block, dtype=np.uint8) == 10))


def iter_blocks(chunks: Iterable[bytes], block_bytes: int = BLOCK_BYTES) -> Iterator[tuple[int, bytes, int]]:
    """Regroup byte chunks into blocks of whole lines: (first line number, block, newlines in it)."""
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
    for length in np.unique(lengths):
        rows = np.flatnonzero(lengths == length)
        width = int(-(-int(length) // 8) * 8) or 8
        padded = np.zeros((len(rows), width), dtype=np.uint8)
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


class _SpilledIds:
    """Fingerprint runs written to local disk, with a Bloom filter in memory (under 2 bytes per expected id)
    so that nearly every lookup of an id that is not there is answered without reading the disk."""

    def __init__(self, directory: Path, expected: int) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._words = np.zeros(max(expected // 5, 1 << 16), dtype=np.uint64)  # ~13 bits per expected id
        self._runs: list[tuple[int, int, np.ndarray, int]] = []  # h1 and h2 file descriptors, fence, length
        self.count = 0

    def close(self) -> None:
        for first, second, _, _ in self._runs:
            os.close(first)
            os.close(second)
        self._runs = []

    def _bloom(self, h1: np.ndarray, h2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A blocked Bloom filter: one 64-bit word per id, 8 of its bits set from the second hash."""
        word = (h1 % np.uint64(len(self._words))).astype(np.int64)
        mask = np.zeros(len(h1), dtype=np.uint64)
        for j in range(8):
            mask |= np.uint64(1) << ((h2 >> np.uint64(6 * j)) & np.uint64(63))
        return word, mask

    def add(self, h1: np.ndarray, h2: np.ndarray) -> None:
        """Write a run whose h1 is sorted ascending."""
        index = len(self._runs)
        first, second = self.directory / f"run-{index}.h1", self.directory / f"run-{index}.h2"
        h1.tofile(first)
        h2.tofile(second)
        descriptors = os.open(first, os.O_RDONLY), os.open(second, os.O_RDONLY)
        self._runs.append((*descriptors, h1[::SPILL_PAGE].copy(), len(h1)))
        for start in range(0, len(h1), 65_536):  # in slices: small temporaries
            word, mask = self._bloom(h1[start : start + 65_536], h2[start : start + 65_536])
            np.bitwise_or.at(self._words, word, mask)
        self.count += len(h1)

    def contains(self, h1: np.ndarray, h2: np.ndarray) -> np.ndarray:
        found = np.zeros(len(h1), dtype=bool)
        if not self._runs:
            return found
        word, mask = self._bloom(h1, h2)
        for index in np.flatnonzero((self._words[word] & mask) == mask):
            found[index] = any(self._in_run(run, h1[index], h2[index]) for run in self._runs)
        return found

    @staticmethod
    def _in_run(run: tuple[int, int, np.ndarray, int], a: np.uint64, b: np.uint64) -> bool:
        """Binary search of one run on disk: the fence (every SPILL_PAGE-th h1) picks the page to read."""
        first, second, fence, length = run
        start = max(int(np.searchsorted(fence, a, side="left")) - 1, 0) * SPILL_PAGE
        while start < length:
            count = min(SPILL_PAGE, length - start)
            values = np.frombuffer(os.pread(first, count * 8, start * 8), dtype=np.uint64)
            pos = int(np.searchsorted(values, a))
            while pos < count and values[pos] == a:
                if np.frombuffer(os.pread(second, 8, (start + pos) * 8), dtype=np.uint64)[0] == b:
                    return True
                pos += 1
            if pos < count:
                return False
            start += count
        return False


class SeenIds:
    """The transaction_ids accepted so far in one file, as 128-bit fingerprints: sorted runs of the first
    hash, merged as they grow, with the second hash confirming a match (two different ids would have to
    agree on all 128 bits to be taken for each other). Up to SEEN_IN_MEMORY fingerprints (2 MB) stay in
    memory; with a spill directory, more go to disk behind a Bloom filter, so memory stays flat however
    long the file."""

    def __init__(self, spill_dir: Path | None = None, expected: int = 0) -> None:
        self._runs: list[tuple[np.ndarray, np.ndarray]] = []
        self._in_memory = 0
        self._spill_dir = spill_dir
        self._expected = expected
        self._spilled: _SpilledIds | None = None

    def __len__(self) -> int:
        return self._in_memory + (self._spilled.count if self._spilled else 0)

    def close(self) -> None:
        """Close the spilled runs' files (the working directory that holds them is removed by its owner)."""
        if self._spilled is not None:
            self._spilled.close()

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
        if self._spilled is not None:
            found |= self._spilled.contains(h1, h2)
        return found

    def _add(self, h1: np.ndarray, h2: np.ndarray) -> None:
        """Add pairs whose h1 is sorted ascending, as a new run; merge runs of similar size."""
        self._runs.append((h1, h2))
        self._in_memory += len(h1)
        while len(self._runs) > 1 and len(self._runs[-1][0]) * 2 >= len(self._runs[-2][0]):
            self._merge_last(2)
        if self._spill_dir is not None and self._in_memory > SEEN_IN_MEMORY:
            self._merge_last(len(self._runs))
            if self._spilled is None:
                self._spilled = _SpilledIds(self._spill_dir, self._expected)
            self._spilled.add(*self._runs[0])
            self._runs = []
            self._in_memory = 0

    def _merge_last(self, count: int) -> None:
        if count < 2:
            return
        merged1 = np.concatenate([run for run, _ in self._runs[-count:]])
        order = np.argsort(merged1, kind="stable")
        merged2 = np.concatenate([run for _, run in self._runs[-count:]])[order]
        self._runs[-count:] = [(merged1[order], merged2)]

    def split(self, table: pa.Table) -> tuple[pa.Table, np.ndarray, np.ndarray]:
        """Drop rows whose transaction_id was accepted before. Returns the kept rows, a mask of the dropped
        rows, and for each dropped row the index of the row of this table it repeats (-1: earlier block)."""
        count = table.num_rows
        dropped = np.zeros(count, dtype=bool)
        repeats = np.full(count, -1, dtype=np.int64)
        if count == 0:
            return table, dropped, repeats
        h1, h2 = fingerprints(table["transaction_id"].combine_chunks())
        order = np.argsort(h1, kind="stable")  # stable: among equal ids, the first row comes first
        s1, s2 = h1[order], h2[order]
        same = np.flatnonzero(s1[1:] == s1[:-1])
        for i in same:  # rare: two rows of this block share the first hash
            j = i + 1
            for k in range(i, -1, -1):
                if s1[k] != s1[j]:
                    break
                if s2[k] == s2[j] and not dropped[order[k]]:
                    dropped[order[j]] = True
                    repeats[order[j]] = order[k]
                    break
        earlier = self._seen_before(s1, s2)
        dropped[order[earlier]] = True
        new_sorted = ~dropped[order]
        self._add(s1[new_sorted], s2[new_sorted])
        if not dropped.any():
            return table, dropped, repeats
        return table.filter(_bool_array(~dropped)), dropped, repeats


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
        self.schema = schema
        self.result = result
        self._writers: dict[date, pq.ParquetWriter] = {}
        self._quarantine: Any = None
        self._pool: ThreadPoolExecutor | None = None
        self._pending: Future[None] | None = None

    def write_rows(self, table: pa.Table) -> None:
        """Write valid rows to the file of their date. A big block is written by a background thread while
        the next block is read and validated (pyarrow releases the GIL): at most one block in flight."""
        if table.num_rows == 0:
            return
        jobs = self._parts(table)
        if table.num_rows < BACKGROUND_WRITE_ROWS:
            _write_parts(jobs)
            return
        self.wait()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="parquet-writer")
        self._pending = self._pool.submit(_write_parts, jobs)

    def wait(self) -> None:
        """Wait for the block being written, raising what its write raised."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def _parts(self, table: pa.Table) -> list[tuple[pq.ParquetWriter, pa.Table]]:
        jobs = []
        days = pc.cast(table["timestamp"], pa.date32())
        unique = pc.unique(days)
        for index, day in enumerate(unique.to_pylist()):
            # Arrow scalars only: a Python value here would make pyarrow import pandas (see rows_to_table).
            part = table if len(unique) == 1 else table.filter(pc.equal(days, unique[index]))
            writer = self._writers.get(day)
            if writer is None:
                output = Output(self.workdir / f"{day.isoformat()}.parquet" if self.workdir else None)
                writer = pq.ParquetWriter(
                    output.sink(),
                    self.schema,
                    compression="snappy",
                    coerce_timestamps="ms",
                    version="2.6",
                    # transaction_id is unique per row: a dictionary for it is built only to be thrown away.
                    use_dictionary=["customer_id", "product_id", "product_name", "category"],
                )
                self._writers[day] = writer
                self.result.processed_files[day] = output
                self.result.processed_rows[day] = 0
            jobs.append((writer, part))
            self.result.processed_rows[day] += part.num_rows
            self.result.rows_written += part.num_rows
        return jobs

    def write_reject(self, line: int, reason: str, detail: str, record: str) -> None:
        if self._quarantine is None:
            output = Output(self.workdir / "quarantine.jsonl" if self.workdir else None)
            self._quarantine = pa.output_stream(output.sink(), compression=None)
            self.result.quarantine_file = output
        entry = {
            "source_key": self.source_key,
            "line": line,
            "reason": reason,
            "detail": detail,
            "record": record,
        }
        self._quarantine.write((json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8"))
        self.result.quarantined += 1
        self.result.reasons[reason] = self.result.reasons.get(reason, 0) + 1

    def close(self) -> None:
        try:
            self.wait()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
            for writer in self._writers.values():
                writer.close()
            if self._quarantine is not None:
                self._quarantine.close()


def _write_parts(jobs: list[tuple[pq.ParquetWriter, pa.Table]]) -> None:
    for writer, part in jobs:
        writer.write_table(part)


def _document_records(document: bytes) -> list[Any] | None:
    """The records of a file that is one JSON array or one JSON object, or None if it is not one."""
    try:
        parsed = json.loads(document, parse_float=Decimal, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return None
    if isinstance(parsed, list):
        return parsed
    if isinstance(parsed, dict):
        return [parsed]
    return None


def _is_json(text: bytes) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def transform_stream(
    chunks: Iterable[bytes],
    source_key: str,
    workdir: Path | None,
    size_hint: int | None = None,
    *,
    block_bytes: int | None = None,
    source_etag: str = "",
) -> TransformResult:
    """Validate and convert one raw object, read as a stream of byte chunks, into files under `workdir`.

    JSON Lines is streamed block by block. A file whose first line is not a JSON value by itself but that
    starts like one ("[" or a pretty-printed "{") is read whole as one JSON document (files uploaded by
    hand); if that fails too, it is read as JSON Lines and its bad lines are quarantined.
    """
    block_bytes = block_bytes or BLOCK_BYTES
    result = TransformResult()
    # Lineage in every Parquet footer; the compactor reads source_key to check a file against the state.
    schema = PROCESSED_SCHEMA.with_metadata({"source_key": source_key, "source_etag": source_etag})
    outputs = _Outputs(workdir, source_key, result, schema)
    # A big object (one processed in a working directory) may spill its duplicate check to disk.
    seen = SeenIds(workdir / "seen-ids" if workdir else None, expected=(size_hint or 0) // 256)
    rest = iter(chunks)
    try:
        head = b""
        for chunk in rest:
            head += chunk
            content = head.lstrip()
            if (content and b"\n" in content) or len(head) >= block_bytes:
                break
        content = head.lstrip()
        first_line = content.split(b"\n", 1)[0]
        small = size_hint is None or size_hint <= MAX_DOCUMENT_BYTES
        if small and content[:1] in (b"[", b"{") and (content[:1] == b"[" or not _is_json(first_line)):
            head += b"".join(rest)
            rest = iter(())
            records = _document_records(head)
            if records is not None:
                _transform_records(records, outputs, seen, result)
                return result
        _transform_lines(_prepend(head, rest), outputs, seen, result, block_bytes)
        return result
    finally:
        try:
            outputs.close()
        finally:
            seen.close()


def _prepend(head: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if head:
        yield head
    yield from rest


def _transform_lines(
    chunks: Iterable[bytes], outputs: _Outputs, seen: SeenIds, result: TransformResult, block_bytes: int
) -> None:
    for first_line, block, newlines in iter_blocks(chunks, block_bytes):
        block_result = validate_block(block, first_line, newlines)
        if block_result.fast:
            result.fast_blocks += 1
        else:
            result.exact_blocks += 1
        _emit(block_result, outputs, seen, result)
        # Hand the block's buffers back to the OS now rather than when the allocator decides: peak memory
        # then stays near one block's working set (the transformer runs in 512 MB).
        pa.default_memory_pool().release_unused()


def _transform_records(records: list[Any], outputs: _Outputs, seen: SeenIds, result: TransformResult) -> None:
    """A hand-uploaded file holding one object or one array: element n is reported as line n."""
    texts = [json.dumps(element, ensure_ascii=False, default=str) for element in records]
    checked = (
        (number, validate_value(element), text)
        for number, (element, text) in enumerate(zip(records, texts, strict=True), start=1)
    )
    result.exact_blocks += 1
    _emit(_collect(checked, lambda number: texts[number - 1]), outputs, seen, result)


def _emit(block: BlockResult, outputs: _Outputs, seen: SeenIds, result: TransformResult) -> None:
    result.records_read += block.table.num_rows + len(block.rejects)
    kept, dropped, repeats = seen.split(block.table)
    rejects = list(block.rejects)
    if dropped.any():
        ids = block.table["transaction_id"]
        for index in np.flatnonzero(dropped):
            number = int(block.lines[index])
            tid = ids[int(index)].as_py()
            where = f"line {int(block.lines[repeats[index]])}" if repeats[index] >= 0 else "an earlier line"
            detail = f"transaction_id {tid!r} already appears on {where} of this file"
            rejects.append(RejectedLine(number, "duplicate_transaction_id", detail, block.text_of(number)))
        rejects.sort(key=lambda r: r.line)
    for reject in rejects:
        outputs.write_reject(reject.line, reject.reason, reject.detail, reject.record)
    outputs.write_rows(derive_columns(kept))


# ---------------------------------------------------------------------------------------------------
# S3 edge. The outputs of a raw key are exactly those of its current content (CONTRACT.md, bucket layout).
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


def _day_of(key: str) -> date | None:
    match = _PARTITION_RE.search(key)
    if not match:
        return None
    try:
        return date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError:
        return None


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
            dirty |= {day for key in stale if key.startswith(PROCESSED_PREFIX) and (day := _day_of(key))}
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
    in every marker gives it a new ETag, so the compactor's conditional delete never removes a newer one."""
    body = {
        "token": uuid.uuid4().hex,
        "reason": "transformer changed the day's files",
        "source_key": source_key,
        "drop_unclaimed": False,
    }
    key = dirty_marker_key(day)
    try:
        s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(body).encode(), ContentType="application/json")
    except ClientError as e:
        raise TransformerError(f"cannot write s3://{bucket}/{key}: {_error_code(e) or e}") from e


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
    """One CloudWatch Embedded Metric Format record (namespace EcommercePipeline, no dimensions)."""
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
